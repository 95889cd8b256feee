"""The GPU campaign: everything a short GPU loan should buy, in one command, within a hard deadline.

Stages (each timed; ``campaign.json`` in ``--out`` is rewritten after every stage, so a run cut short
still reports what it did):

1. ``env``      Python, torch, CUDA, GPU, and which of our dependencies import.
2. ``train``    resume the GPU lineage's trainer checkpoint (``checkpoints/gpu_<preset>.pt``; a new run
                when absent) at the GPU size in bf16 (torch.compile with ``--compile``) with the
                on-device block pipeline, for the training budget; the checkpoint goes to ``--out``
                (commit it back to ``checkpoints/`` so the next loan continues it).
3. ``build``    ONNX + manifest (+ parity check) of the new checkpoint into ``--out/model``.
4. ``tests``    the GPU tests (``pytest -m gpu``): CUDA-graph sampler vs CPU sampler, bf16 training.
5. ``quality``  four 100³ volumes at ``fast`` on the torch-CUDA backend, KL against validation
                SPPARKS 1019-1023 (with the floor and the paper's Table 1 beside it), samples/s of training.
6. ``paper``    one 100³ volume at ``paper`` settings: wall time and voxels/min (paper: ~25k voxels/min
                on two A100s), and its statistics.

    bash bench/gpu_carry.sh                                   # here: wheels + data into .gpu_carry/
    device run: bash bench/gpu_campaign.sh                    # there: ≤ 9 minutes, results in $OUT
    python bench/gpu_campaign.py --dry-run --out /tmp/dry     # CPU: every stage in seconds (CI runs it)

The dry run uses the shipped sample volumes, the ``tiny`` preset, a few seconds of training, 32³
boxes and the onnxruntime backend: it checks that the script cannot rot, not any figure.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/
from stats_floor import PAPER_R10  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
KEYS = ("kl_volume", "kl_aspect", "kl_centroid")
VALIDATION_SEEDS = range(1019, 1024)


class Campaign:
    """Stage runner with a global deadline; results rewritten to ``out/campaign.json`` after each stage."""

    def __init__(self, out: Path, deadline_s: float, meta: dict):
        self.out, self.t0, self.deadline = out, time.time(), deadline_s
        self.result = {**meta, "stages": {}}
        out.mkdir(parents=True, exist_ok=True)

    def left(self) -> float:
        return self.deadline - (time.time() - self.t0)

    def stage(self, name: str, fn, *, need_s: float = 0.0):
        if self.left() < need_s:
            self.result["stages"][name] = {"status": "skipped", "why": f"{self.left():.0f} s left < {need_s:.0f} s"}
            self.save()
            print(f"[campaign] {name}: skipped ({self.left():.0f} s left)", flush=True)
            return None
        print(f"[campaign] {name}: start ({self.left():.0f} s left)", flush=True)
        t = time.time()
        try:
            info = fn() or {}
            rec = {"status": "ok", **info}
        except Exception as exc:  # a failed stage is recorded; later stages may still run
            rec = {"status": "failed", "error": f"{type(exc).__name__}: {exc}",
                   "traceback": traceback.format_exc()[-3000:]}
            info = None
        rec["seconds"] = round(time.time() - t, 2)
        self.result["stages"][name] = rec
        self.save()
        print(f"[campaign] {name}: {rec['status']} in {rec['seconds']} s", flush=True)
        return info

    def save(self) -> None:
        self.result["elapsed_s"] = round(time.time() - self.t0, 1)
        tmp = self.out / "campaign.json.tmp"
        tmp.write_text(json.dumps(self.result, indent=1, default=str))
        os.replace(tmp, self.out / "campaign.json")


def env_info() -> dict:
    info = {"python": platform.python_version(), "machine": platform.machine()}
    try:
        import torch

        info.update(torch=torch.__version__, cuda=torch.version.cuda, gpu_available=torch.cuda.is_available(),
                    gpu=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                    cc=shutil.which("cc") or shutil.which("gcc"))
    except ImportError as exc:
        info["torch"] = f"missing: {exc}"
    mods = {}
    for m in ("numpy", "numba", "onnx", "onnxruntime", "cc3d", "trimesh", "scipy", "sklearn", "matplotlib",
              "tqdm", "pytest", "tensorrt", "gp_engine"):
        try:
            mod = importlib.import_module(m)
            mods[m] = getattr(mod, "__version__", "ok")
        except Exception as exc:  # noqa: BLE001 - report whatever fails to import
            mods[m] = f"missing ({type(exc).__name__})"
    info["modules"] = mods
    return info


def quality(model_dir: Path, data: Path, out: Path, preset: str, volumes: int, shape, backend: str,
            batch: int, progress: bool, segmentation: dict | None = None, steps: int | None = None) -> dict:
    from gp_engine.generate import generate
    from gp_engine.stats import summarize
    from gp_engine.volume_io import read_volume

    grains, runs = [], []
    for i in range(volumes):
        o = out / f"seed{i}"
        plan = {"version": 1, "geometry": {"shape": list(shape)}, "model": str(model_dir),
                "sampler": {"preset": preset, **({"steps": steps} if steps else {})}, "batch_size": batch, "backend": backend, "seed": i,
                "outputs": {"dir": str(o), "formats": ["npy", "png"]}}
        if segmentation:
            plan["segmentation"] = segmentation
        res = generate(plan, out_dir=o, force=True, progress=progress)
        runs.append({k: res["timing"][k] for k in ("seconds", "voxels_per_min", "backend",
                                                   "evaluations_per_block", "blocks")})
        grains.append(np.load(o / "grains.npy"))
    refs = [read_volume(p) for p in sorted(data.glob("potts_iso_100_seed*.npz"))
            if int(p.stem.split("seed")[1]) in VALIDATION_SEEDS]
    if not refs:
        raise RuntimeError(f"no validation volumes (seeds 1019-1023) in {data}")
    s = summarize(grains, refs)
    return {"preset": preset, "volumes": volumes, "shape": list(shape), "runs": runs,
            "summary": {k: s[k] for k in KEYS + ("grains", "mean_volume", "median_volume")},
            "reference_grains": s["reference"]["grains"], "reference_median_volume": s["reference"]["median_volume"],
            "ratio_to_paper": {k: s[k] / PAPER_R10[k] for k in KEYS}, "paper_table1_r10": PAPER_R10}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="results folder (the device tool's $OUT)")
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "spparks"),
                   help="SPPARKS volumes: seeds 1001-1018 train, 1019-1023 validate")
    p.add_argument("--deadline", type=float, default=540.0, help="seconds for everything (default 540 = 9 min)")
    p.add_argument("--train-min", type=float, default=4.0, help="training wall minutes (default 4)")
    p.add_argument("--preset", default="small", help="U-Net preset of the GPU lineage (default small)")
    # a new lineage starts from the best CPU configuration (bench/results/quality_per_compute.md)
    p.add_argument("--encoding", default="bits", help="encoding of a new lineage (default bits)")
    p.add_argument("--bits", type=int, default=4, help="analog-bits channels of a new lineage (default 4)")
    p.add_argument("--target", default="eps", help="prediction target of a new lineage (default eps)")
    p.add_argument("--weighting", default="uniform", help="loss weighting of a new lineage (default uniform)")
    p.add_argument("--batch-size", type=int, default=64, help="training blocks per step (default 64)")
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--compile", action="store_true", help="torch.compile the training step (needs a C compiler)")
    p.add_argument("--checkpoint", help="trainer checkpoint to resume (default checkpoints/gpu_<preset>.pt, "
                   "or gpu_conditional_<preset>.pt with --conditional)")
    p.add_argument("--conditional", action="store_true",
                   help="the conditional (outpainting) lineage: a new one starts from the unconditional GPU "
                        "checkpoint (widened); quality at the 'conditional' preset, 'paper' stage at 100 steps")
    p.add_argument("--skip", default="", help="comma-separated stages to skip")
    p.add_argument("--dry-run", action="store_true", help="CPU smoke run in seconds (CI)")
    a = p.parse_args(argv)

    out = Path(a.out)
    skip = {s.strip() for s in a.skip.split(",") if s.strip()}
    dry = a.dry_run
    if dry:
        a.data = str(ROOT / "gp_engine" / "data")
        a.preset, a.batch_size, a.train_min, a.deadline = "tiny", 2, 0.05, min(a.deadline, 300.0)
    data = Path(a.data)
    commit = os.environ.get("GP_COMMIT") or _git_commit()
    camp = Campaign(out, a.deadline, {"bench": "gpu_campaign", "dry_run": dry, "commit": commit,
                                      "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                      "args": vars(a)})
    env = camp.stage("env", env_info)
    camp.result["device"] = (env or {}).get("gpu") or f"cpu: {platform.processor() or platform.machine()}"
    cuda = bool((env or {}).get("gpu_available")) and not dry
    device = "cuda" if cuda else "cpu"
    backend = "torch-cuda" if cuda else "onnxruntime"

    lineage = f"gpu_conditional_{a.preset}.pt" if a.conditional else f"gpu_{a.preset}.pt"
    ckpt_src = Path(a.checkpoint) if a.checkpoint else ROOT / "checkpoints" / lineage
    parent = ROOT / "checkpoints" / f"gpu_{a.preset}.pt"  # a new conditional lineage starts from it
    ckpt = out / ckpt_src.name

    def train_stage():
        from gp_engine.train import TrainOptions, train

        resume = ckpt_src.is_file() and not dry
        if resume:
            shutil.copy2(ckpt_src, ckpt)
        files = sorted(data.glob("*seed10*.npz"))
        if not files:
            raise RuntimeError(f"no SPPARKS volumes in {data}")
        init = str(parent) if (a.conditional and not resume and parent.is_file() and not dry) else None
        opts = TrainOptions(data=[str(f) for f in files], out=str(ckpt), preset=a.preset, steps=10**9,
                            conditional=a.conditional, init_from=init,
                            batch_size=a.batch_size, device=device, precision="bf16" if cuda else "fp32",
                            lr=a.lr, target=a.target, weighting=a.weighting, time_limit_min=a.train_min,
                            encoding=a.encoding, bits=a.bits,
                            resume=resume, force=not resume, compile=a.compile and cuda, val_every=200,
                            val_blocks=8 if dry else 64, checkpoint_every=500, progress=False,
                            threads=None if cuda else 1)
        t = time.time()
        compile_error = None
        try:
            meta = train(opts)
        except Exception as exc:  # Inductor needs a C compiler and headers: fall back to eager once
            if not opts.compile:
                raise
            compile_error = f"{type(exc).__name__}: {str(exc)[:300]}"
            print(f"[campaign] torch.compile failed ({compile_error}); training eagerly", flush=True)
            opts.compile, opts.resume, opts.force = False, ckpt.is_file(), not ckpt.is_file()
            meta = train(opts)
        wall = time.time() - t
        hist = meta.get("history") or {}
        return {"resumed_from": str(ckpt_src) if resume else None, "checkpoint": str(ckpt),
                "compiled": bool(opts.compile), "compile_error": compile_error,
                "steps": meta["steps"], "samples_seen": meta["samples_seen"], "wall_s_this_run": wall,
                "samples_per_s": (meta["samples_seen"] - (0 if not resume else _samples_before(ckpt_src))) / wall,
                "final_train_loss": meta["final_train_loss"], "final_val_loss": meta["final_val_loss"],
                "final_val_x0w": meta.get("final_val_x0w"), "precision": meta["precision"],
                "val_x0w_history": hist.get("val_x0w", [])[-10:]}

    if "train" not in skip:
        camp.stage("train", train_stage, need_s=60)
    model_dir = out / "model"

    def build_stage():
        from gp_engine.export import build_model

        if not ckpt.is_file():
            raise RuntimeError(f"{ckpt} was not written (training failed)")
        m = build_model(ckpt, model_dir, batch_sizes=[1, 8, 64], log=lambda *x: None)
        return {"name": m["name"], "target": m.get("target"), "encoding": m["encoding"],
                "verification": m["verification"]}

    if "build" not in skip:
        camp.stage("build", build_stage, need_s=20)

    def tests_stage():
        if dry:
            return {"note": "dry run: GPU tests not run"}
        r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-x", str(ROOT / "tests")],
                           capture_output=True, text=True, timeout=max(30, min(150, camp.left() - 200)))
        tail = (r.stdout + r.stderr).strip().splitlines()[-15:]
        return {"returncode": r.returncode, "tail": tail}

    if "tests" not in skip:
        camp.stage("tests", tests_stage, need_s=240)

    def speed_stage():  # bench/regress.py on this device: network per batch, sampler, segmentation
        sys.path.insert(0, str(ROOT / "bench"))
        import regress

        rc = regress.main(["--smoke" if dry else "--quick", "--model", str(model_dir), "--out", str(out / "regress.json")])
        return {"returncode": rc, **{k: v for k, v in json.loads((out / "regress.json").read_text()).items()
                                     if k in ("figures", "gflop_per_block_eval", "device")}}

    if "speed" not in skip:
        camp.stage("speed", speed_stage, need_s=120)

    shape = [32] * 3 if dry else [100] * 3
    # dry run: a model trained for seconds paints noise; keep every fragment so the statistics exist
    seg = {"method": "levels", "min_size": 1} if dry else None
    # conditional lineage: 'quality' at the conditional preset (50 steps), 'paper' at 100 steps
    q_preset = "conditional" if a.conditional else "fast"
    p_preset, p_steps = ("conditional", 100) if a.conditional else ("fast" if dry else "paper", None)
    if "quality" not in skip:
        camp.stage("quality", lambda: quality(model_dir, data, out / "quality_fast", q_preset, 1 if dry else 4,
                                              shape, backend, 2 if dry else 64, progress=not dry,
                                              segmentation=seg, steps=4 if dry and a.conditional else None),
                   need_s=60)
    if "paper" not in skip:
        camp.stage("paper", lambda: quality(model_dir, data, out / "paper", p_preset, 1, shape,
                                            backend, 2 if dry else 64, progress=not dry, segmentation=seg,
                                            steps=4 if dry and a.conditional else p_steps),
                       need_s=150)
    for key in ("quality", "paper"):  # the bulky volumes stay on the device; keep PNGs and results
        d = out / ("quality_fast" if key == "quality" else key)
        if d.is_dir() and not dry:
            for f in d.rglob("*.npy"):
                f.unlink()
            shutil.rmtree(d / "model", ignore_errors=True)
    camp.save()
    failed = [k for k, v in camp.result["stages"].items() if v.get("status") == "failed"]
    print(json.dumps({k: {kk: vv for kk, vv in v.items() if kk not in ("traceback", "runs")}
                      for k, v in camp.result["stages"].items()}, indent=1, default=str))
    return 1 if failed else 0


def _samples_before(path: Path) -> int:
    from gp_engine.checkpoint import load_checkpoint

    return int(load_checkpoint(path)["training"]["samples_seen"])


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


if __name__ == "__main__":
    sys.exit(main())

"""The GPU campaign: everything a short GPU loan should buy, in one command, within a hard deadline.

Several model lineages train side by side on the one GPU (each in its own process, for the same wall
minutes), then each is built, scored and brought back:

- ``mini3``       (not run by default since the sixth session) 16/32/64 channels, three levels on the
                  T = 250 schedule: continues ``checkpoints/gpu_mini3.pt``, or, the first time, the CPU
                  lineage ``mini3_minsnr_cpu.pt`` (in git history: ``git show 8063285:checkpoints/mini3_minsnr_cpu.pt``);
- ``mini``        (not run by default since the first loan) the 16/32 lineage ``checkpoints/gpu_mini.pt``;
- ``small``       (not run by default since the fifth session; its 3.75 H200-minutes are in git history:
                  ``git show c5c9f8f:checkpoints/gpu_small.pt``) the GPU size, 32/64 channels, torch.compile'd:
                  ``checkpoints/gpu_small.pt`` (a new Min-SNR analog-bits lineage when absent);
- ``conditional`` (not run by default since the fifth session) the outpainting model of the T = 250
                  schedule, TD-Paint clean-known convention: ``checkpoints/gpu_conditional_mini.pt``;
- ``ext500``      the schedule continued to T = 500 (a walk's first step is pure noise, docs/model.md):
                  ``checkpoints/gpu_mini3_ext500.pt``, or the first time the CPU lineage
                  ``checkpoints/mini3_ext500_cpu.pt`` (else the ``mini3`` CPU lineage, if restored, with
                  ``--extend-schedule 500``);
- ``conditional_ext500`` the outpainting model on that schedule: ``checkpoints/gpu_conditional_ext500.pt``,
                  or the first time the CPU lineage ``checkpoints/conditional_ext500_cpu.pt``.

Stages (each timed; ``campaign.json`` in ``--out`` is rewritten after every stage, so a run cut short
still reports what it did):

1. ``env``        Python, torch, CUDA, GPU, and which of our dependencies import.
2. ``train``      every lineage for ``--train-min`` wall minutes in bf16 with the on-device block pipeline
                  (a CPU lineage continues on the GPU: weights, optimizer and counters; its random stream is
                  reseeded); the GPU tests (``pytest -m gpu``) run beside them. Checkpoints go to ``--out``
                  (commit them back to ``checkpoints/`` so the next loan continues them).
3. ``tests``      the GPU tests' result (CUDA-graph sampler vs CPU sampler, bf16 training, ...).
4. ``build``      ONNX + manifest (+ parity check) of each new checkpoint into ``--out/model_<lineage>``.
5. ``quality_<lineage>``  four 100³ volumes (``fast``; the conditional lineage at its ``conditional``
                  preset) on the torch-CUDA backend, KL against validation SPPARKS 1019-1023 (with the
                  paper's Table 1 beside it).
6. ``paper``      one 32³ block of the ``ext500`` lineage at ``paper`` settings (2,490 evaluations): seconds
                  per block against the paper's 83 s on an A100, and the 100³ time it implies (8 stages,
                  each one batched walk). A whole 100³ volume at paper settings takes ~5 min on an H200
                  with ``small`` (measured: more than 270 s), more than a loan can spare.
7. ``speed``      ``bench/regress.py`` on this device with the first lineage's model.

    bash bench/gpu_carry.sh                                   # here: wheels + data into .gpu_carry/
    device run: bash bench/gpu_campaign.sh                    # there: ≤ 10 minutes, results in $OUT
    python bench/gpu_campaign.py --dry-run --out /tmp/dry     # CPU: every stage in seconds (CI runs it)

The dry run uses the shipped sample volumes, the ``tiny`` preset for every lineage (new runs), a few
seconds of training, 32³ boxes and the onnxruntime backend: it checks that the script cannot rot, not
any figure.
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
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/
from provenance import git_commit  # noqa: E402
from quality_generate import KEYS, VALIDATION_SEEDS  # noqa: E402
from quality_per_compute import grain_figures  # noqa: E402
from stats_floor import PAPER_R10  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Lineage:
    """One model lineage the campaign trains: where it is kept, where it starts, how it trains."""

    name: str
    checkpoint: str            # the GPU lineage's trainer checkpoint in checkpoints/ (resumed when present)
    seed: str | None           # else: a CPU lineage in checkpoints/ to continue (copied, then resumed)
    preset: str                # U-Net preset of a new lineage
    conditional: bool = False
    compile: bool = False      # torch.compile the training step (pays on the larger net)
    lr: float = 1e-3
    weighting: str = "min-snr"  # of a new lineage: the best CPU configuration (quality_per_compute.md)
    parent: str | None = None  # a new conditional lineage without a seed starts widened from this one
    extend_schedule: int | None = None  # a new lineage without a seed starts from ``parent`` with its
    #                                    linear β ramp continued to this T (gp-engine train --extend-schedule)
    sampler: str = "fast"      # preset of its quality stage
    min_size: int | None = None  # its build's segmentation_defaults.min_size (None: the build's default)

    def source(self, checkpoints: Path) -> Path | None:
        for name in (self.checkpoint, self.seed):
            if name and (checkpoints / name).is_file():
                return checkpoints / name
        return None


LINEAGES = {
    # 16/32/64: the depth that got grain sizes and spacing right on the CPU (quality_per_compute.md)
    "mini3": Lineage("mini3", "gpu_mini3.pt", "mini3_minsnr_cpu.pt", "mini3"),
    "mini": Lineage("mini", "gpu_mini.pt", "mini_minsnr_cpu.pt", "mini"),
    "small": Lineage("small", "gpu_small.pt", None, "small", compile=True, lr=6e-4),
    "conditional": Lineage("conditional", "gpu_conditional_mini.pt", "conditional_clean_cpu.pt", "mini",
                           conditional=True, lr=5e-4, parent="gpu_mini3.pt", sampler="conditional"),
    # the schedule continued to T = 500, so that a walk's first step is pure noise (docs/model.md); the
    # first time from its CPU lineage, else (restored from history) the mini3 lineage extended
    "ext500": Lineage("ext500", "gpu_mini3_ext500.pt", "mini3_ext500_cpu.pt", "mini3",
                      parent="mini3_minsnr_cpu.pt", extend_schedule=500, min_size=20),  # v6's (docs/model.md)
    "conditional_ext500": Lineage("conditional_ext500", "gpu_conditional_ext500.pt", "conditional_ext500_cpu.pt",
                                  "mini3", conditional=True, lr=5e-4, parent="gpu_mini3_ext500.pt",
                                  sampler="conditional", min_size=20),  # its parent's since the fifteenth session
}


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
        try:
            (self.out / "campaign.md").write_text(report_md(json.loads(json.dumps(self.result, default=str))) + "\n")
        except Exception as exc:  # noqa: BLE001 - the summary must never cost the results
            print(f"[campaign] campaign.md not written: {type(exc).__name__}: {exc}", flush=True)


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


def plan_for(model_dir: Path, shape, preset: str, steps: int | None, batch: int, backend: str, seed: int,
             out: Path, segmentation: dict | None, margin: int | None = None) -> dict:
    """The generation plan of one campaign volume (PNG pictures and the .npy volumes, which stay behind);
    ``margin``: geometry.margin (None: the engine's default)."""
    geometry = {"shape": list(shape)} | ({} if margin is None else {"margin": margin})
    plan = {"version": 1, "geometry": geometry, "model": str(model_dir),
            "sampler": {"preset": preset, **({"steps": steps} if steps else {})}, "batch_size": batch,
            "backend": backend, "seed": seed, "outputs": {"dir": str(out), "formats": ["npy", "png"]}}
    if segmentation:
        plan["segmentation"] = segmentation
    return plan


def quality(model_dir: Path, data: Path, out: Path, preset: str, volumes: int, shape, backend: str,
            batch: int, progress: bool, segmentation: dict | None = None, steps: int | None = None) -> dict:
    from gp_engine.generate import generate
    from gp_engine.stats import summarize
    from gp_engine.volume_io import read_volume
    from seams import block_seams, box_block_corners, plane_report

    grains, runs, seams = [], [], []
    for i in range(volumes):
        o = out / f"seed{i}"
        res = generate(plan_for(model_dir, shape, preset, steps, batch, backend, i, o, segmentation),
                       out_dir=o, force=True, progress=progress)
        corners = box_block_corners(tuple(shape), res["stats"]["painted"]["margin"])
        runs.append({k: res["timing"][k] for k in ("seconds", "voxels_per_min", "backend",
                                                   "evaluations_per_block", "blocks")})
        grains.append(np.load(o / "grains.npy"))
        if len(corners) > 1:  # one block (the dry run's 32³): no block faces inside the volume
            seams.append(plane_report(grains[-1], block_seams(corners, shape)))
    refs = [read_volume(p) for p in sorted(data.glob("potts_iso_100_seed*.npz"))
            if int(p.stem.split("seed")[1]) in VALIDATION_SEEDS]
    if not refs:
        raise RuntimeError(f"no validation volumes (seeds 1019-1023) in {data}")
    s = summarize(grains, refs)
    return {"preset": preset, "volumes": volumes, "shape": list(shape), "runs": runs,
            "summary": {k: s[k] for k in KEYS + ("grains", "mean_volume", "median_volume")},
            "share_voxels_small_grains": grain_figures(grains)["share_voxels_small_grains"],
            "seams": {k: float(np.mean([r[k] for r in seams])) for k in seams[0]} if seams else None,
            "reference_grains": s["reference"]["grains"], "reference_median_volume": s["reference"]["median_volume"],
            "ratio_to_paper": {k: s[k] / PAPER_R10[k] for k in KEYS}, "paper_table1_r10": PAPER_R10}


def train_lineage(lin: Lineage, out: Path, data: Path, minutes: float, batch: int, device: str,
                  dry: bool, allow_compile: bool) -> dict:
    """Train one lineage for ``minutes`` (run in its own process by the ``train`` stage)."""
    from gp_engine.train import TrainOptions, train

    checkpoints = ROOT / "checkpoints"
    src = None if dry else lin.source(checkpoints)
    ckpt = out / lin.checkpoint
    if src is not None:
        shutil.copy2(src, ckpt)
    files = sorted(data.glob("*seed10*.npz")) or sorted(data.glob("*.np[yz]"))
    if not files:
        raise RuntimeError(f"no SPPARKS volumes in {data}")
    parent = checkpoints / lin.parent if lin.parent else None
    fresh_from_parent = (lin.conditional or lin.extend_schedule) and src is None and not dry
    init = str(parent) if (fresh_from_parent and parent and parent.is_file()) else None
    cuda = device == "cuda"
    opts = TrainOptions(data=[str(f) for f in files], out=str(ckpt), preset="tiny" if dry else lin.preset,
                        steps=10**9, conditional=lin.conditional, init_from=init, batch_size=batch,
                        device=device, precision="bf16" if cuda else "fp32", lr=lin.lr, target="eps",
                        weighting=lin.weighting, encoding="bits", bits=4, time_limit_min=minutes,
                        resume=src is not None, force=src is None, compile=lin.compile and allow_compile and cuda,
                        val_every=200, val_blocks=8 if dry else 64, checkpoint_every=500, progress=False,
                        threads=None if cuda else 1,
                        extend_schedule=lin.extend_schedule if init and lin.extend_schedule else None)
    before = _samples_before(ckpt) if src is not None else 0
    t = time.time()
    compile_error = None
    try:
        meta = train(opts)
    except Exception as exc:  # Inductor needs a C compiler and headers: fall back to eager once
        if not opts.compile:
            raise
        compile_error = f"{type(exc).__name__}: {str(exc)[:300]}"
        print(f"[campaign] {lin.name}: torch.compile failed ({compile_error}); training eagerly", flush=True)
        opts.compile, opts.resume, opts.force = False, ckpt.is_file(), not ckpt.is_file()
        opts.time_limit_min = max(0.05, minutes - (time.time() - t) / 60.0)
        meta = train(opts)
    wall = time.time() - t
    hist = meta.get("history") or {}
    return {"lineage": asdict(lin), "resumed_from": str(src.relative_to(ROOT)) if src else None,
            "init_from": init, "checkpoint": str(ckpt), "compiled": bool(opts.compile),
            "compile_error": compile_error, "steps": meta["steps"], "samples_seen": meta["samples_seen"],
            "samples_this_run": meta["samples_seen"] - before, "wall_s_this_run": round(wall, 1),
            "samples_per_s": round((meta["samples_seen"] - before) / wall, 1), "batch_size": batch,
            "final_train_loss": meta["final_train_loss"], "final_val_loss": meta["final_val_loss"],
            "final_val_x0w": meta.get("final_val_x0w"), "precision": meta["precision"],
            "val_x0w_history": hist.get("val_x0w", [])[-12:]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="results folder (checkpoints, campaign.json, models, volumes)")
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "spparks"),
                   help="SPPARKS volumes: seeds 1001-1018 train, 1019-1023 validate")
    p.add_argument("--deadline", type=float, default=540.0, help="seconds for everything (default 540 = 9 min)")
    p.add_argument("--train-min", type=float, default=3.75, help="training wall minutes (default 3.75)")
    p.add_argument("--lineages", default="ext500,conditional_ext500",
                   help=f"comma-separated lineages to train, build and score (of {', '.join(LINEAGES)})")
    p.add_argument("--paper-lineage", default="ext500", help="lineage timed at paper settings (default ext500)")
    p.add_argument("--batch-size", type=int, default=64, help="training blocks per step (default 64)")
    p.add_argument("--no-compile", action="store_true", help="never torch.compile (even the small lineage)")
    p.add_argument("--skip", default="", help="comma-separated stages to skip (train, tests, build, quality, paper, speed)")
    p.add_argument("--dry-run", action="store_true", help="CPU smoke run in seconds (CI)")
    p.add_argument("--train-lineage", help=argparse.SUPPRESS)  # internal: one lineage's training process
    p.add_argument("--report", metavar="CAMPAIGN_JSON", help="only write the Markdown summary of a campaign.json "
                   "(next to it, .md) and print it")
    a = p.parse_args(argv)
    if a.report:
        src = Path(a.report)
        text = report_md(json.loads(src.read_text()))
        src.with_suffix(".md").write_text(text + "\n")
        print(text)
        return 0

    out = Path(a.out)
    skip = {s.strip() for s in a.skip.split(",") if s.strip()}
    dry = a.dry_run
    names = [n.strip() for n in a.lineages.split(",") if n.strip()]
    unknown = [n for n in names + [a.paper_lineage] if n not in LINEAGES]
    if unknown:
        p.error(f"unknown lineage {unknown[0]!r}; use {', '.join(LINEAGES)}")
    if dry:
        a.data = str(ROOT / "gp_engine" / "data")
        a.batch_size, a.train_min, a.deadline = 2, 0.05, min(a.deadline, 300.0)
    data = Path(a.data)

    if a.train_lineage:  # the child process of the train stage
        import torch

        device = "cuda" if torch.cuda.is_available() and not dry else "cpu"
        res = train_lineage(LINEAGES[a.train_lineage], out, data, a.train_min, a.batch_size, device, dry,
                            allow_compile=not a.no_compile)
        (out / f"train_{a.train_lineage}.json").write_text(json.dumps(res, indent=1, default=str))
        return 0

    commit = git_commit()
    camp = Campaign(out, a.deadline, {"bench": "gpu_campaign", "dry_run": dry, "commit": commit,
                                      "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                      "args": vars(a)})
    env = camp.stage("env", env_info)
    camp.result["device"] = (env or {}).get("gpu") or f"cpu: {platform.processor() or platform.machine()}"
    cuda = bool((env or {}).get("gpu_available")) and not dry
    backend = "torch-cuda" if cuda else "onnxruntime"
    tests_proc = None

    def start_tests():
        if dry or "tests" in skip:
            return None
        log = open(out / "tests.log", "w")
        return subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-m", "gpu", str(ROOT / "tests")],
                                stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)

    def train_stage():
        nonlocal tests_proc
        procs = {}
        for n in names:  # one process per lineage, side by side on the one GPU
            cmd = [sys.executable, __file__, "--train-lineage", n, "--out", str(out), "--data", str(data),
                   "--train-min", str(a.train_min), "--batch-size", str(a.batch_size)]
            cmd += ["--dry-run"] if dry else []
            cmd += ["--no-compile"] if a.no_compile else []
            procs[n] = subprocess.Popen(cmd, stdout=open(out / f"train_{n}.log", "w"), stderr=subprocess.STDOUT)
        tests_proc = start_tests()  # the GPU tests share the GPU with the training (recorded)
        limit = time.time() + 60.0 * a.train_min + 120.0  # start-up, compile, validation, final checkpoint
        res = {"lineages_side_by_side": len(procs), "gpu_tests_alongside": tests_proc is not None}
        for n, proc in procs.items():
            try:
                proc.wait(timeout=max(1.0, limit - time.time()))
            except subprocess.TimeoutExpired:  # SIGTERM: the trainer finishes its step and checkpoints
                proc.terminate()
                proc.wait(timeout=60)
            f = out / f"train_{n}.json"
            res[n] = (json.loads(f.read_text()) if f.is_file() else
                      {"status": "failed", "returncode": proc.returncode,
                       "log_tail": (out / f"train_{n}.log").read_text()[-2000:]})
        failed = [n for n in names if "steps" not in res[n]]
        if failed and len(failed) == len(names):
            raise RuntimeError(f"every lineage failed to train: {res[failed[0]].get('log_tail', '')[-600:]}")
        return res

    if "train" not in skip:
        camp.stage("train", train_stage, need_s=60)
    else:
        tests_proc = start_tests()

    def tests_stage():
        if dry:
            return {"note": "dry run: GPU tests not run"}
        if tests_proc is None:
            raise RuntimeError("the GPU tests did not start")
        try:
            tests_proc.wait(timeout=max(10.0, min(180.0, camp.left() - 240)))
        except subprocess.TimeoutExpired:
            tests_proc.kill()
            tests_proc.wait()
        tail = (out / "tests.log").read_text().strip().splitlines()[-15:]
        return {"returncode": tests_proc.returncode, "tail": tail}

    if "tests" not in skip:
        camp.stage("tests", tests_stage)

    def model_dir(n: str) -> Path:
        return out / f"model_{n}"

    def build_stage():
        from gp_engine.export import build_model

        built = {}
        for n in names:
            ckpt = out / LINEAGES[n].checkpoint
            if not ckpt.is_file():
                built[n] = {"status": "failed", "error": f"{ckpt} was not written (training failed)"}
                continue
            m = build_model(ckpt, model_dir(n), batch_sizes=[1, 8, 64], log=lambda *x: None,
                            min_size=LINEAGES[n].min_size)
            built[n] = {"name": m["name"], "model_kind": m.get("model_kind"), "target": m.get("target"),
                        "encoding": m["encoding"], "verification": m["verification"],
                        "schedule": m["schedule"], "sampler_defaults": m.get("sampler_defaults"),
                        "segmentation_defaults": m.get("segmentation_defaults")}
        if not any("name" in b for b in built.values()):
            raise RuntimeError("no lineage could be built")
        return built

    if "build" not in skip:
        camp.stage("build", build_stage, need_s=20)

    # dry run: a 28³ box, painted with the default 2-voxel margin as one 32³ block
    shape = [28] * 3 if dry else [100] * 3
    # dry run: a model trained for seconds paints noise; keep every fragment so the statistics exist
    seg = {"method": "levels", "min_size": 1} if dry else None
    for n in names:
        lin = LINEAGES[n]
        if "quality" in skip or not (model_dir(n) / "manifest.json").is_file():
            continue
        steps = 4 if dry and lin.conditional else None
        camp.stage(f"quality_{n}", lambda n=n, lin=lin, steps=steps: quality_with_fallback(
            model_dir(n), data, out / f"quality_{n}", lin.sampler, 1 if dry else 4, shape, backend,
            2 if dry else 64, progress=not dry, segmentation=seg, steps=steps), need_s=45)

    pl = a.paper_lineage if a.paper_lineage in names else names[0]

    def paper_stage():
        # one 32³ block at paper settings: the paper's own unit (83 s per block on an A100); a 100³ volume
        # is 8 stages of 8 blocks, each stage one batched walk, so it takes about 8 such walks
        from gp_engine.generate import generate, plan_blocks

        p_preset = "fast" if dry else ("conditional" if LINEAGES[pl].conditional else "paper")
        o = out / "paper"
        steps = 4 if dry and LINEAGES[pl].conditional else None
        res = generate(plan_for(model_dir(pl), [32] * 3, p_preset, steps, 8, backend, 0, o, seg, margin=0),
                       out_dir=o, force=True, progress=not dry)
        tm = res["timing"]
        stages = len({b.stage for b in plan_blocks("grid", (100, 100, 100), 32)})
        return {"lineage": pl, "preset": p_preset, "evaluations_per_block": tm["evaluations_per_block"],
                "backend": tm["backend"], "seconds_per_block": round(tm["seconds"], 2),
                "paper_seconds_per_block_a100": 83.0, "stages_of_a_100_cubed_volume": stages,
                "projected_100_cubed_s": round(tm["seconds"] * stages, 1),
                "projected_100_cubed_voxels_per_min": round(1e6 / (tm["seconds"] * stages) * 60)}

    if "paper" not in skip and (model_dir(pl) / "manifest.json").is_file():
        camp.stage("paper", paper_stage, need_s=75)

    def speed_stage():  # bench/regress.py on this device: network per batch, sampler, segmentation
        import regress

        m = model_dir(names[0])
        rc = regress.main(["--smoke" if dry else "--quick", "--model", str(m), "--out", str(out / "regress.json")])
        return {"returncode": rc, "model": names[0], **{k: v for k, v in json.loads((out / "regress.json").read_text()).items()
                                                        if k in ("figures", "gflop_per_block_eval", "device")}}

    if "speed" not in skip and (model_dir(names[0]) / "manifest.json").is_file():
        camp.stage("speed", speed_stage, need_s=90)

    if tests_proc is not None and tests_proc.poll() is None:
        tests_proc.kill()
    if not dry:  # the bulky volumes stay on the device; keep PNGs and results
        for d in [out / f"quality_{n}" for n in names] + [out / "paper"]:
            if d.is_dir():
                for f in d.rglob("*.npy"):
                    f.unlink()
                for m in d.rglob("model"):
                    shutil.rmtree(m, ignore_errors=True)
    camp.save()
    failed = [k for k, v in camp.result["stages"].items() if v.get("status") == "failed"]
    print(json.dumps({k: {kk: vv for kk, vv in v.items() if kk not in ("traceback", "runs")}
                      for k, v in camp.result["stages"].items()}, indent=1, default=str))
    return 1 if failed else 0


def report_md(res: dict) -> str:
    """A Markdown summary of a campaign.json: lineages trained, quality beside the floor and Table 1, speed."""
    st = res.get("stages", {})
    lines = [f"# GPU campaign {res.get('date', '?')} on {res.get('device', '?')}",
             "", f"Commit `{str(res.get('commit'))[:10]}`, {'dry run, ' if res.get('dry_run') else ''}"
             f"{res.get('elapsed_s', '?')} s in all. Stages: "
             + ", ".join(f"{k} {v.get('status')}" + (f" ({v.get('seconds')} s)" if v.get("seconds") is not None else "")
                         for k, v in st.items()) + ".", ""]
    tr = st.get("train") or {}
    rows = [(k, v) for k, v in tr.items() if isinstance(v, dict) and "steps" in v]
    if rows:
        lines += [f"## Training ({tr.get('lineages_side_by_side')} lineages side by side on the one GPU"
                  f"{', GPU tests alongside' if tr.get('gpu_tests_alongside') else ''})", "",
                  "| lineage | started from | compiled | steps (total) | samples this run | samples/s (wall, incl. start-up) | val x̂₀ err |",
                  "|---|---|---|---|---|---|---|"]
        for k, v in rows:
            x0w = v.get("final_val_x0w")
            lines.append(f"| {k} | {v.get('resumed_from') or v.get('init_from') or 'new'} | {v.get('compiled')} | "
                         f"{v['steps']} | {v['samples_this_run']:,} | {v['samples_per_s']:.0f} | "
                         + (f"{x0w:.4f} |" if x0w is not None else "– |"))
        lines.append("")
    q = [(k[len("quality_"):], v) for k, v in st.items() if k.startswith("quality_") and v.get("status") == "ok"]
    if q:
        lines += ["## Quality (KL against validation SPPARKS 1019-1023; Gaussian-KDE estimator of gp_engine.stats)", "",
                  f"Paper's Table 1 (r = 10): {PAPER_R10['kl_volume']} / {PAPER_R10['kl_aspect']} / "
                  f"{PAPER_R10['kl_centroid']}. SPPARKS median grain 361 voxels.", "",
                  "| lineage | sampler | volumes | backend | voxels/min | KL volume | KL aspect | KL centroid | grains | "
                  "median vol | voxels in < 20 | seam / interior boundary density |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for k, v in q:
            sm, runs = v["summary"], v.get("runs") or [{}]
            vpm = [r["voxels_per_min"] for r in runs if r.get("voxels_per_min")]
            seam = v.get("seams")
            lines.append(f"| {k} | {v['preset']} | {v['volumes']}×{'x'.join(map(str, v['shape']))} | "
                         f"{runs[-1].get('backend')}{' (fallback)' if v.get('fallback_from') else ''} | "
                         f"{(np.median(vpm) if vpm else 0):,.0f} | {sm['kl_volume']:.3f} | {sm['kl_aspect']:.3f} | "
                         f"{sm['kl_centroid']:.3f} | {sm['grains']} | {sm['median_volume']:.0f} | "
                         f"{100 * v.get('share_voxels_small_grains', 0):.1f} % | "
                         + (f"{seam['seam_boundary_density']:.3f} / {seam['interior_boundary_density']:.3f} |" if seam else "– |"))
        lines.append("")
    pp = st.get("paper") or {}
    if pp.get("status") == "ok" and "seconds_per_block" in pp:
        lines += [f"## `{pp['preset']}` settings, one 32³ block ({pp['lineage']} lineage, {pp['backend']})", "",
                  f"{pp['evaluations_per_block']} network evaluations in {pp['seconds_per_block']} s (the paper: "
                  f"{pp['paper_seconds_per_block_a100']:.0f} s per block on an A100). A 100³ volume is "
                  f"{pp['stages_of_a_100_cubed_volume']} such batched walks: about {pp['projected_100_cubed_s']:.0f} s, "
                  f"{pp['projected_100_cubed_voxels_per_min']:,} voxels/min (projected).", ""]
    t = st.get("tests") or {}
    if t.get("tail"):
        lines += ["## GPU tests", "", f"exit {t.get('returncode')}: `{t['tail'][-1]}`", ""]
    sp = st.get("speed") or {}
    figs = [f for f in sp.get("figures") or [] if "cuda" in f["label"] or f["label"].startswith("sampler")]
    if figs:
        lines += ["## Speed (bench/regress.py on this device)", "", "| figure | value | unit |", "|---|---|---|"]
        lines += [f"| {f['label']} | {f['value']:.4g} | {f['unit']} |" for f in figs]
        lines.append("")
    return "\n".join(lines)


def quality_with_fallback(model_dir: Path, data: Path, out: Path, preset: str, volumes: int, shape, backend: str,
                          batch: int, **kw) -> dict:
    """``quality`` on ``backend``; if the torch-CUDA backend fails, one 64³ volume on onnxruntime instead,
    so that the lineage still gets a (smaller, recorded) score."""
    try:
        return quality(model_dir, data, out, preset, volumes, shape, backend, batch, **kw)
    except Exception as exc:
        if backend == "onnxruntime":
            raise
        error = f"{type(exc).__name__}: {exc}"
        print(f"[campaign] {backend} failed ({error[:200]}); scoring one 64³ volume on onnxruntime", flush=True)
        res = quality(model_dir, data, out, preset, 1, [64] * 3, "onnxruntime", 8, **kw)
        return {**res, "fallback_from": backend, "fallback_error": error[:2000]}


def _samples_before(path: Path) -> int:
    from gp_engine.checkpoint import load_checkpoint

    return int(load_checkpoint(path)["training"]["samples_seen"])


if __name__ == "__main__":
    sys.exit(main())

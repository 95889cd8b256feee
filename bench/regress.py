"""Speed regression runner: network, sampler and segmentation, compared with the last committed result
of the same device.

    python bench/regress.py               # measure, compare, write bench/results/regress/<device>.json
    python bench/regress.py --quick       # fewer rounds (CI-sized; the spread is then wider)
    python bench/regress.py --no-write    # compare only

What it times (every label comes from the code: backend names from gp_engine.runtime, the model's name
from its manifest, the presets from gp_engine.plan_config):

* ``network/<backend>/b<B>/<precision>``: milliseconds per block-evaluation of the shipped model
  (one call = one batch of B blocks), median over calls;
* ``sampler/<engine>/<preset>/b<B>``: block-evaluations per second of :func:`gp_engine.repaint.sample_batch`
  (the CPU walk, also with a GPU engine: the on-device CUDA-graph sampler is timed by the GPU
  campaign's quality stages) on a grid-plan-like batch (55 % known voxels), and ``overhead_share``: the share of a sampler step
  that is not the network, both from the same run (a ratio within one run, so a loaded machine
  moves it little);
* ``segment/<method>``: voxels per second and peak bytes per voxel (tracemalloc) of
  :func:`gp_engine.segment.segment` on a 100³ field.

Each figure is measured in ``--rounds`` rounds; its spread is (max - min) / median over the rounds. A
figure is flagged as a slowdown when it is worse than the committed one by more than the larger of
the two runs' spreads (and at least 5 %). The committed result is read with ``git show HEAD:<path>``,
so an uncommitted run never becomes its own baseline. Exit status 1 when something slowed down.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from provenance import device, header  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "regress"
#: H200 dense bf16 tensor-core peak (the issue's arithmetic floor), FLOP/s
GPU_PEAK_BF16 = 790e12
MIN_TOLERANCE = 0.05
#: figures where larger is better (the others: smaller is better)
HIGHER_IS_BETTER = ("block_evals_per_s", "voxels_per_s")


def device_slug(dev: dict) -> str:
    name = dev.get("gpu") or f"{dev['cpu']}-{dev['cores']}cores"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def spread(values: list[float]) -> float:
    v = np.asarray(values, float)
    return float((v.max() - v.min()) / np.median(v)) if len(v) > 1 else float("nan")


def _batch(b: int, channels: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    x0 = np.sign(rng.normal(size=(b, channels, 32, 32, 32))).astype(np.float32)
    mask = np.zeros((b, channels, 32, 32, 32), np.uint8)
    mask[:, :, :18] = 1  # 18/32 = 56 % known, like a grid-plan block
    return x0, mask


def flops_per_block(model_dir: Path) -> float | None:
    """FLOPs of one block-evaluation of the model (torch's FlopCounterMode: 2 per multiply-add), or None
    without torch or a model.pt."""
    try:
        import torch
        from torch.utils.flop_counter import FlopCounterMode

        from gp_engine.checkpoint import load_model
    except ImportError:
        return None
    if not (Path(model_dir) / "model.pt").is_file():
        return None
    model, ck = load_model(Path(model_dir) / "model.pt")
    cfg = ck["config"]
    x = torch.zeros(1, int(cfg.get("in_channels", 1)), 32, 32, 32)
    args = [x, torch.zeros(1)]
    if int(cfg.get("cond_channels", 0) or 0):
        args.append(torch.zeros(1, int(cfg["cond_channels"]), 32, 32, 32))
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(*args)
    return float(fc.get_total_flops())


def time_network(model_dir, manifest, backend: str, b: int, rounds: int, calls: int,
                 precision: str | None = None) -> dict:
    from gp_engine.conditional import make_cond, model_kind
    from gp_engine.generate import _channels
    from gp_engine.runtime import load_engine

    eng = load_engine(model_dir, backend, b, precision=precision)
    ch = _channels(manifest)
    x0, mask = _batch(b, ch)
    x = np.random.default_rng(1).normal(size=x0.shape).astype(np.float32)
    t = np.full(b, 100.0, np.float32)
    cond = make_cond(x0, mask) if model_kind(manifest) == "conditional" else None
    call = (lambda: eng.predict_eps(x, t)) if cond is None else (lambda: eng.predict_eps(x, t, cond))
    call()
    per_round = []
    for _ in range(rounds):
        ts = []
        for _ in range(calls):
            t0 = time.perf_counter()
            call()
            ts.append(time.perf_counter() - t0)
        per_round.append(1e3 * float(np.median(ts)) / b)
    prec = getattr(eng, "precision", None) or manifest.get("precision", "fp32")
    return {"label": f"network/{eng.name}/b{b}/{prec}", "unit": "ms per block-evaluation",
            "value": float(np.median(per_round)), "rounds": per_round, "spread": spread(per_round),
            "engine": eng}


def time_sampler(eng, manifest, b: int, rounds: int, steps: int) -> list[dict]:
    from types import SimpleNamespace

    from gp_engine import repaint
    from gp_engine.conditional import model_kind
    from gp_engine.diffusion import Schedule
    from gp_engine.generate import _channels
    from gp_engine.self_cond import uses_self_cond

    cond = model_kind(manifest) == "conditional"
    preset = "conditional" if cond else "fast"
    setup = repaint.make_setup(Schedule.from_dict(manifest["schedule"]),
                               SimpleNamespace(steps=steps, resample=0, jump=1, tail=0), clip_x0=True,
                               conditional=cond, self_cond=uses_self_cond(manifest))
    x0, mask = _batch(b, _channels(manifest), seed=2)
    ids = np.arange(b)

    class Timed:  # the engine, with the time spent inside the network counted
        batch_size, name = eng.batch_size, eng.name

        def __init__(self):
            self.net = 0.0

        def predict_eps(self, *args):
            t0 = time.perf_counter()
            out = eng.predict_eps(*args)
            self.net += time.perf_counter() - t0
            return out

    repaint.sample_batch(Timed(), x0, mask, ids, 0, setup)  # warm-up (numba compile cache)
    rate, share = [], []
    for r in range(rounds):
        timed = Timed()
        t0 = time.perf_counter()
        repaint.sample_batch(timed, x0, mask, ids, r, setup)
        total = time.perf_counter() - t0
        rate.append(b * setup.evaluations / total)
        share.append((total - timed.net) / total)
    return [{"label": f"sampler/{eng.name}/{preset}/b{b}", "unit": "block_evals_per_s", "value": float(np.median(rate)),
             "rounds": rate, "spread": spread(rate)},
            {"label": f"sampler/{eng.name}/{preset}/b{b}/overhead_share", "unit": "share of the step outside the network",
             "value": float(np.median(share)), "rounds": share, "spread": spread(share)}]


def time_segment(rounds: int, side: int = 100) -> list[dict]:
    from gp_engine.segment import segment

    spins = np.load(ROOT / "gp_engine" / "data" / "potts_iso_100_seed1001.npz")["spins"]  # shipped sample
    levels = 10
    field = (np.asarray(spins[:side, :side, :side], np.int64) % levels) * (2.0 / (levels - 1)) - 1.0
    field = np.ascontiguousarray(field + np.random.default_rng(0).normal(0, 0.02, field.shape), np.float32)
    out = []
    for method, kw in (("levels", {"levels": levels}), ("dbscan", {})):
        segment(field, method, **kw)  # warm-up
        vps, bpv = [], []
        for _ in range(rounds):
            tracemalloc.start()
            t0 = time.perf_counter()
            segment(field, method, **kw)
            dt = time.perf_counter() - t0
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            vps.append(field.size / dt)
            bpv.append(peak / field.size)
        out.append({"label": f"segment/{method}", "unit": "voxels_per_s", "value": float(np.median(vps)),
                    "rounds": vps, "spread": spread(vps)})
        out.append({"label": f"segment/{method}/bytes_per_voxel", "unit": "peak bytes per voxel (tracemalloc)",
                    "value": float(np.median(bpv)), "rounds": bpv, "spread": spread(bpv)})
    return out


def committed(path: Path) -> dict | None:
    """The version of ``path`` in the last commit (None if never committed)."""
    rel = path.relative_to(ROOT).as_posix()
    r = subprocess.run(["git", "show", f"HEAD:{rel}"], cwd=ROOT, capture_output=True, text=True)
    return json.loads(r.stdout) if r.returncode == 0 and r.stdout.strip() else None


def compare(new: list[dict], old: dict | None) -> list[dict]:
    """Per label: ratio new/old, the tolerance used and whether it is a slowdown."""
    if not old:
        return []
    prev = {r["label"]: r for r in old.get("figures", [])}
    rows = []
    for r in new:
        o = prev.get(r["label"])
        if o is None or not o.get("value"):
            continue
        higher = r["unit"] in HIGHER_IS_BETTER
        worse = (o["value"] / r["value"] - 1.0) if higher else (r["value"] / o["value"] - 1.0)
        tol = max(MIN_TOLERANCE, np.nan_to_num(r.get("spread", 0.0)), np.nan_to_num(o.get("spread", 0.0)))
        if "share" in r["unit"]:  # a share: compare the difference, not the ratio
            worse = r["value"] - o["value"]
        rows.append({"label": r["label"], "old": o["value"], "new": r["value"], "worse_by": float(worse),
                     "tolerance": float(tol), "slowdown": bool(worse > tol), "old_commit": old.get("commit")})
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="model folder (default: the shipped model)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="3 rounds, fewer calls")
    ap.add_argument("--smoke", action="store_true", help="seconds: 2 rounds, batch 1, small fields (CI dry runs)")
    ap.add_argument("--no-write", action="store_true", help="compare only; do not write the result")
    ap.add_argument("--out", help="write the result here instead of bench/results/regress/<device>.json")
    a = ap.parse_args(argv)
    rounds = 2 if a.smoke else 3 if a.quick else a.rounds
    from gp_engine.runtime import read_model

    model_dir, manifest = read_model(a.model)
    dev = device()
    cuda = bool(dev.get("gpu"))
    # (backend, precision): on a GPU the torch sampler in fp32 (TF32 off) and bf16
    backends = [("onnxruntime", None)] + ([("torch-cuda", "fp32"), ("torch-cuda", "bf16")] if cuda else [])
    batches = [8, 64] if cuda else [1, 8]
    if a.smoke:
        batches = [1]
    figures = []
    flops = flops_per_block(Path(model_dir))
    for backend, precision in backends:
        for b in batches:
            net = time_network(model_dir, manifest, backend, b, rounds, 1 if a.smoke else 3 if a.quick else 5,
                               precision)
            eng = net.pop("engine")
            if flops:  # achieved arithmetic rate, and on a GPU the share of the bf16 peak
                net["gflop_per_s"] = flops / (net["value"] * 1e-3) / 1e9
                if cuda:
                    net["share_of_bf16_peak"] = net["gflop_per_s"] * 1e9 / GPU_PEAK_BF16
            figures.append(net)
            print(f"{net['label']}: {net['value']:.2f} ms (spread {net['spread']:.0%})"
                  + (f", {net['gflop_per_s']:.1f} GFLOP/s" if flops else ""), flush=True)
            if b == batches[-1]:
                for f in time_sampler(eng, manifest, b, rounds, 2 if a.smoke else 5 if a.quick else 10):
                    figures.append(f)
                    print(f"{f['label']}: {f['value']:.3g} {f['unit']} (spread {f['spread']:.0%})", flush=True)
    for f in time_segment(rounds, 48 if a.smoke else 100):
        figures.append(f)
        print(f"{f['label']}: {f['value']:.3g} {f['unit']} (spread {f['spread']:.0%})", flush=True)
    res = {**header("regress", cuda=cuda), "model": manifest.get("name"), "rounds": rounds,
           "gflop_per_block_eval": flops / 1e9 if flops else None,
           "threads": {"GP_ENGINE_THREADS": os.environ.get("GP_ENGINE_THREADS"),
                       "NUMBA_NUM_THREADS": os.environ.get("NUMBA_NUM_THREADS")},
           "figures": figures}
    path = RESULTS / f"{device_slug(dev)}{'-smoke' if a.smoke else ''}.json"
    cmp_rows = compare(figures, committed(path))
    res["comparison"] = cmp_rows
    for c in cmp_rows:
        flag = "SLOWER" if c["slowdown"] else "ok"
        print(f"{flag:>6} {c['label']}: {c['old']:.4g} -> {c['new']:.4g} (worse by {c['worse_by']:+.1%}, "
              f"tolerance {c['tolerance']:.0%}, baseline {str(c['old_commit'])[:8]})")
    if not cmp_rows:
        print(f"no committed baseline for this device ({path.relative_to(ROOT)}): this run becomes it once committed")
    if not a.no_write:
        dest = Path(a.out) if a.out else path
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(json.dumps(res, indent=1) + "\n")
        print(f"wrote {dest}")
    return 1 if any(c["slowdown"] for c in cmp_rows) else 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark `gp-engine generate`: voxels/min end to end, and seconds per network evaluation.

CPU (default): the ``fast`` preset on the README demo box (examples/demo_cpu.json, 48³) with the
shipped model on onnxruntime; target: the demo finishes in < 10 min on 2 cores.
CUDA (when available, ``--cuda``): the ``paper`` preset (2490 evaluations per block) on a 100³ box,
compared with the paper's 25.3k voxels/min on 2× A100.

Writes bench/results/generate.json (or ``--out``). Uses only the shipped model and data.

    python bench/bench_generate.py                 # CPU demo
    python bench/bench_generate.py --cuda          # GPU, paper settings
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/, for provenance.py
from provenance import header  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEMO_TARGET_S = 600.0            # README demo: < 10 min on 2 cores
PAPER_VOXELS_PER_MIN = 25.3e3    # paper: 224³ in 7 h 23 min on 2× A100


def time_evaluations(model_dir, backend: str, batch_size: int, n: int = 5) -> dict:
    """Seconds per network evaluation (whole batch) after one warm-up call."""
    from gp_engine.runtime import load_engine

    eng = load_engine(model_dir, backend, batch_size)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch_size, 1, 32, 32, 32)).astype(np.float32)
    t = np.full(batch_size, 100.0, np.float32)
    eng.predict_eps(x, t)
    t0 = time.perf_counter()
    for _ in range(n):
        eng.predict_eps(x, t)
    s = (time.perf_counter() - t0) / n
    return {"backend": eng.name, "batch_size": batch_size, "s_per_eval": s,
            "ms_per_block_eval": 1e3 * s / batch_size}


def run_generate(shape, preset: str, backend: str, batch_size: int, seed: int = 0,
                 model=None, overrides: dict | None = None) -> dict:
    from gp_engine.generate import generate

    with tempfile.TemporaryDirectory(prefix="gp-bench-") as tmp:
        plan = {"version": 1, "geometry": {"shape": list(shape)}, "model": model,
                "sampler": {"preset": preset, **(overrides or {})}, "batch_size": batch_size,
                "backend": backend, "seed": seed,
                "outputs": {"dir": tmp, "formats": ["npy", "png"]}}
        t0 = time.perf_counter()
        res = generate(plan, out_dir=tmp, force=True, progress=True)
        total = time.perf_counter() - t0
    timing = res["timing"]
    return {"shape": list(shape), "preset": preset, "total_s": total,
            "sampling_s": timing["seconds"], "voxels_per_min": timing["voxels_per_min"],
            "end_to_end_voxels_per_min": float(np.prod(shape)) * 60.0 / total,
            "blocks": timing["blocks"], "batches": timing["batches"],
            "evaluations_per_block": timing["evaluations_per_block"],
            "backend": timing["backend"], "grains": res["stats"]["summary"].get("grains")}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cuda", action="store_true", help="GPU run at paper settings")
    p.add_argument("--shape", type=int, nargs=3, help="box (default 48³ CPU, 100³ CUDA)")
    p.add_argument("--preset", help="sampler preset (default fast CPU, paper CUDA)")
    p.add_argument("--steps", type=int, help="override sampler steps")
    p.add_argument("--resample", type=int, help="override r")
    p.add_argument("--backend", help="backend (default onnxruntime CPU, auto CUDA)")
    p.add_argument("--batch-size", type=int, help="default 8 CPU, 64 CUDA")
    p.add_argument("--model", help="model dir (default: the shipped model)")
    p.add_argument("--eval-only", action="store_true", help="only time network evaluations")
    p.add_argument("--out", default=str(ROOT / "bench/results/generate.json"))
    a = p.parse_args(argv)
    shape = a.shape or ([100, 100, 100] if a.cuda else [48, 48, 48])
    preset = a.preset or ("paper" if a.cuda else "fast")
    backend = a.backend or ("auto" if a.cuda else "onnxruntime")
    bs = a.batch_size or (64 if a.cuda else 8)
    overrides = {k: v for k, v in (("steps", a.steps), ("resample", a.resample)) if v is not None}

    from gp_engine.runtime import read_model

    model_dir, manifest = read_model(a.model)
    result = header("generate", model=str(model_dir),
                    model_placeholder=bool(manifest.get("placeholder", False)),
                    threads=os.environ.get("GP_ENGINE_THREADS", "all cores"))
    # the box may be shared (other jobs inflate timings): the load at the start, under its old name too
    result["loadavg_1min_at_start"] = result["loadavg_1min"]
    result["evaluation"] = [time_evaluations(model_dir, backend, b) for b in sorted({1, bs})]
    for e in result["evaluation"]:
        print(f"{e['backend']}: batch {e['batch_size']}: {e['s_per_eval']:.3f} s per evaluation "
              f"({e['ms_per_block_eval']:.1f} ms per block)")
    if not a.eval_only:
        g = run_generate(shape, preset, backend, bs, model=a.model, overrides=overrides)
        result["generate"] = g
        print(f"{preset} preset, {g['shape']} box, {g['blocks']} blocks x {g['evaluations_per_block']} "
              f"evaluations on {g['backend']}: {g['total_s']:.1f} s end to end, "
              f"{g['voxels_per_min']:,.0f} voxels/min sampling")
        if a.cuda:
            ratio = g["voxels_per_min"] / PAPER_VOXELS_PER_MIN
            result["ratio_to_paper_2xA100"] = ratio
            print(f"ratio to the paper's {PAPER_VOXELS_PER_MIN:,.0f} voxels/min (2x A100): {ratio:.2f}x")
        else:
            ratio = DEMO_TARGET_S / g["total_s"]
            result["ratio_to_demo_target"] = ratio
            print(f"demo target {DEMO_TARGET_S:.0f} s: {ratio:.2f}x "
                  f"({'meets' if ratio >= 1 else 'misses'} the target)")
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

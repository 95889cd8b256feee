"""Voxelizing a CAD part: gp_engine.geometry (scanline parity, numba) vs trimesh's own voxelizer
(surface subdivision + fill), same part and pitch, same run.

    python bench/bench_voxelize.py [--part examples/parts/gear.stl] [--size 320]

Prints wall time and peak memory (tracemalloc, numpy arrays included) of each, the ratio, and how far
each voxel volume is from the mesh volume; writes bench/results/voxelize.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))


def measure(fn):
    tracemalloc.start()
    t = time.perf_counter()
    out = fn()
    dt = time.perf_counter() - t
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return out, dt, peak


BASELINE = """
import json, resource, sys, time, tracemalloc
import numpy as np, trimesh
resource.setrlimit(resource.RLIMIT_AS, (int(sys.argv[3]) << 30, int(sys.argv[3]) << 30))
mesh = trimesh.load(sys.argv[1]); pitch = float(sys.argv[2])
tracemalloc.start(); t = time.perf_counter()
try:
    n = int(mesh.voxelized(pitch).fill().matrix.sum())
    print(json.dumps({"s": time.perf_counter() - t, "peak": tracemalloc.get_traced_memory()[1], "voxels": n}))
except MemoryError:
    print(json.dumps({"s": time.perf_counter() - t, "error": "out of memory"}))
"""


def baseline(path: str, pitch: float, limit_gib: int) -> dict:
    """trimesh's voxelizer in a child process capped at ``limit_gib`` of address space (at 320 voxels it
    needs more than 22 GiB and would take the machine down with it)."""
    import subprocess

    r = subprocess.run([sys.executable, "-c", BASELINE, path, repr(pitch), str(limit_gib)],
                       capture_output=True, text=True)
    try:
        return json.loads(r.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return {"error": f"exit {r.returncode}: {r.stderr.strip().splitlines()[-1:]}"}


def main(argv=None) -> int:
    import trimesh

    from gp_engine.geometry import load_part, voxelize
    from provenance import header

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--part", default=str(ROOT / "examples" / "parts" / "gear.stl"))
    ap.add_argument("--size", type=int, default=320, help="voxels along the longest axis (default 320)")
    ap.add_argument("--baseline-gib", type=int, default=8, help="memory cap of the trimesh baseline (GiB)")
    args = ap.parse_args(argv)

    part = load_part(args.part, size=args.size)
    voxelize(load_part(args.part, size=16))            # compile the kernels outside the timing
    mask, t_ours, m_ours = measure(lambda: voxelize(part))
    mesh = trimesh.load(args.part)
    vol = abs(mesh.volume)
    ours_err = mask.sum() * part.pitch ** 3 / vol - 1
    tm = baseline(args.part, part.pitch, args.baseline_gib)
    res = {**header("voxelize", cuda=False), "part": Path(args.part).name, "shape": list(part.shape),
           "voxels": int(np.prod(part.shape)), "gp_engine_s": t_ours, "gp_engine_peak_mib": m_ours / 2**20,
           "gp_engine_volume_error": ours_err, "trimesh": tm}
    line = (f"{res['part']} at {'x'.join(map(str, part.shape))} voxels: gp_engine {t_ours:.2f} s, peak "
            f"{m_ours / 2**20:.0f} MiB, volume error {ours_err:+.2%}; trimesh voxelized+fill: ")
    if "error" in tm:
        line += f"{tm['error']} (capped at {args.baseline_gib} GiB) after {tm.get('s', float('nan')):.1f} s"
    else:
        res["speedup_vs_trimesh"] = tm["s"] / t_ours
        res["trimesh_volume_error"] = tm["voxels"] * part.pitch ** 3 / vol - 1
        line += (f"{tm['s']:.2f} s, peak {tm['peak'] / 2**20:.0f} MiB, volume error "
                 f"{res['trimesh_volume_error']:+.2%}; ratio {res['speedup_vs_trimesh']:.1f}x")
    print(line)
    out = ROOT / "bench" / "results" / f"voxelize_{Path(args.part).stem}_{args.size}.json"
    out.write_text(json.dumps(res, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

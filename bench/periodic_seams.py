"""Do periodic volumes tile seamlessly? Generate a box with and without ``geometry.periodic`` (same
model, seed, sampler), tile each field 2×2×2, segment the tiled field as one ordinary volume, and
compare the planes at the tile seams with the planes inside the tiles; SPPARKS volumes (periodic by
construction) tiled the same way are the reference.

Per plane (between x = i and i + 1, and likewise along y and z):

* boundary density: share of voxel pairs across the plane that belong to different grains;
* straddling grains: share of the grains touching the plane that continue across it.

A seamless volume has the same figures on seam planes as inside; a non-periodic one has a wall of
grain boundaries at every seam. Also reports the cost of the periodic plan against the plain one.

    python bench/periodic_seams.py [--size 96] [--preset fast]

Writes bench/results/periodic_seams.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from seams import plane_report, tile_seams  # noqa: E402  (one definition of the seam figures)


def seam_report(ids: np.ndarray, n: tuple[int, int, int]) -> dict:
    """Mean figures on seam planes (i = n - 1 of each tile) and on every other plane, all three axes."""
    return plane_report(ids, tile_seams(n))


def main(argv=None) -> int:
    from gp_engine.encoding import bits_display
    from gp_engine.generate import generate, model_min_size, plan_blocks, segmentation_kwargs
    from gp_engine.grains import split_grains
    from gp_engine.runtime import read_model
    from gp_engine.segment import segment
    from provenance import header

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--preset", default="fast")
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--spparks", default=str(ROOT.parent / "shared" / "data" / "spparks"))
    args = ap.parse_args(argv)

    n = (args.size,) * 3
    _, manifest = read_model(None)
    enc = manifest["encoding"]
    seg = segmentation_kwargs({"method": "auto"}, enc.get("levels"), enc.get("kind"), model_min_size(manifest))
    rows = {}
    for periodic in (True, False):
        out = ROOT / "bench" / "out" / f"periodic_seams_{'periodic' if periodic else 'plain'}"
        plan = {"version": 1, "geometry": {"shape": list(n), "periodic": periodic},
                "sampler": {"preset": args.preset}, "batch_size": 8, "backend": "onnxruntime",
                "seed": args.seed, "outputs": {"dir": str(out), "formats": ["npy"]}}
        t = time.perf_counter()
        res = generate(plan, force=True, progress=False)
        wall = time.perf_counter() - t
        raw = np.load(out / "field.npy")
        field = bits_display(raw) if raw.ndim == 4 else raw
        tiled = segment(np.ascontiguousarray(np.tile(field, (2, 2, 2))), **seg)
        rows["periodic" if periodic else "plain"] = {
            **seam_report(tiled, n), "blocks": res["timing"]["blocks"], "wall_s": wall,
            "grains": res["stats"]["summary"]["grains"]}
        print(f"{'periodic' if periodic else 'plain':>9}: {rows['periodic' if periodic else 'plain']}", flush=True)
    spparks = sorted(Path(args.spparks).glob("*seed10[12]?.npz"))[-3:]
    if spparks:
        figs = []
        for p in spparks:
            spins = np.load(p)["spins"]
            figs.append(seam_report(split_grains(np.tile(spins, (2, 2, 2))), spins.shape))
        rows["spparks"] = {k: float(np.mean([f[k] for f in figs])) for k in figs[0]} | {
            "files": [p.name for p in spparks]}
        print(f"  spparks: {rows['spparks']}")
    plain_blocks = len(plan_blocks("grid", n, 32))
    per_blocks = len(plan_blocks("grid", n, 32, periodic=(True,) * 3))
    res = {**header("periodic_seams", cuda=False), "size": args.size, "preset": args.preset,
           "model": manifest.get("name"), "segmentation": seg, "rows": rows,
           "cost": {"blocks_periodic": per_blocks, "blocks_plain": plain_blocks,
                    "ratio": per_blocks / plain_blocks}}
    out = ROOT / "bench" / "results"
    (out / "periodic_seams.json").write_text(json.dumps(res, indent=1) + "\n")
    lines = ["# Periodic volumes: seams of a 2×2×2 tiling (bench/periodic_seams.py)", "",
             f"{args.size}³ at `{args.preset}`, shipped model {res['model']}, segmentation {seg}; "
             f"commit {res['commit']}, {res['device']['cpu']}, {res['date']}.", "",
             "| volume | boundary density: seam planes | interior planes | grains crossing: seam | interior |",
             "|---|---|---|---|---|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['seam_boundary_density']:.3f} | {r['interior_boundary_density']:.3f} ± "
                     f"{r['interior_boundary_density_sd']:.3f} | {r['seam_straddling']:.3f} | "
                     f"{r['interior_straddling']:.3f} |")
    lines += ["", f"Cost: the periodic plan has {per_blocks} blocks, the plain one {plain_blocks} "
              f"({per_blocks / plain_blocks:.2f}×) for {args.size}³ (periodic axes are cheapest at "
              "multiples of 48 voxels)."]
    (out / "periodic_seams.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`gp-engine generate plan.json`: RePaint a volume block by block, segment it, write the results."""

from __future__ import annotations

import argparse


def register(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "generate", help="generate a microstructure from a plan file",
        description="Generate a grain microstructure from a plan (JSON): RePaint outpainting of "
                    "32³ blocks on the chosen backend, checkpointed after every batch, then "
                    "segmentation, output files and grain statistics.")
    p.add_argument("plan", help="plan JSON file (see examples/)")
    p.add_argument("--out", help="output directory (default: the plan's outputs.dir)")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run in the output directory")
    p.add_argument("--force", action="store_true",
                   help="replace an existing run's outputs (they are kept until the new run has "
                        "written its own; folders gp-engine did not make are never touched)")
    p.add_argument("--backend", choices=["auto", "onnxruntime", "torch-cuda", "tensorrt"],
                   help="inference backend (default: the plan's, else auto)")
    p.add_argument("--batch-size", type=int, help="blocks per batch (default: the plan's)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def run(args) -> int:
    from ..generate import generate

    result = generate(args.plan, out_dir=args.out, resume=args.resume, force=args.force,
                      backend=args.backend, batch_size=args.batch_size, progress=not args.quiet)
    t = result["timing"]
    vpm = t.get("voxels_per_min")
    print(f"generated on {t['backend']} (batch {t['batch_size']}, {t['blocks']} blocks, "
          f"{t['evaluations_per_block']} evaluations per block) in {t['seconds']:.1f} s"
          + (f", {vpm:,.0f} voxels/min" if vpm else ""))
    summary = result["stats"].get("summary", {})
    if "grains" in summary:
        cut = summary.get("cut_by_surface")
        print(f"grains: {summary['grains']}" + (f" inside the part, {cut['grains']} more cut by its surface"
                                                if cut else ""))
    part = result["stats"].get("part")
    if part:
        print(f"part: {part['voxels_inside']:,} voxels inside, {part['blocks']} of {part['blocks_full_box']} "
              "blocks of the full box generated" + (f"; mesh repairs: {', '.join(part['repairs'])}"
                                                      if part["repairs"] else ""))
    for label, path in result["outputs"].items():
        print(f"  {label}: {path}")
    png = result["outputs"].get("slices (PNG)")
    if png is not None:
        print(f"look at {png} first: grains (top) and raw field (bottom) on three mid-planes")
    return 0

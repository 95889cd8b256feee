"""`gp-engine stats`: grain statistics of volumes, and KL divergence against reference volumes."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def register(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "stats",
        help="grain statistics (volume, aspect ratios, centroid distance) and KL against references",
        description=(
            "Measure grain statistics of one or more volumes (.npy, .npz, .vti or SPPARKS dump; raw "
            "spins are split into 26-connected grains) and, with --reference, the KL divergence "
            "KL(volumes ‖ reference) of their KDE-smoothed distributions."
        ),
    )
    p.add_argument("volumes", nargs="+", metavar="VOL", help="volumes to measure (pooled)")
    p.add_argument("--reference", nargs="+", metavar="REF", default=None, help="reference volumes (pooled)")
    p.add_argument("--json", metavar="OUT", default=None, help="write the summary as JSON here")
    p.add_argument("--plots", metavar="DIR", default=None, help="write PNG overlays of the distributions here")
    p.add_argument("--split", action=argparse.BooleanOptionalAction, default=True,
                   help="split labels into 26-connected grains first (default: on; --no-split if the "
                        "volumes already hold one id per grain)")
    p.add_argument("--zero-is-grain", action="store_true",
                   help="count label 0 as a grain label (default: 0 marks voxels outside the part)")
    p.add_argument("--force", action="store_true", help="replace existing --json / --plots files")
    p.add_argument("--periodic", action="store_true",
                   help="the volumes wrap round (a grain crossing a face is one grain): generated with "
                        "geometry.periodic, or SPPARKS volumes")
    p.add_argument("--reference-periodic", action="store_true",
                   help="the reference volumes wrap round (SPPARKS volumes do)")
    p.add_argument("--log-volume", action="store_true",
                   help="compare log10 grain volumes instead of raw voxel counts (paper: raw)")
    return p


def _table(summary: dict) -> str:
    rows = [("", "input", "reference")]
    ref = summary.get("reference", {})
    for k in ("volumes", "grains", "mean_volume", "median_volume", "mean_b_a", "mean_c_a", "mean_nn_dist"):
        fmt = (lambda v: f"{v:d}") if k in ("volumes", "grains") else (lambda v: f"{v:.3f}")
        rows.append((k, fmt(summary[k]), fmt(ref[k]) if k in ref else ""))
    for k in ("kl_volume", "kl_aspect", "kl_centroid"):
        if k in summary:
            rows.append((k, f"{summary[k]:.4f}", ""))
    w = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join(f"{r[0]:<{w[0]}}  {r[1]:>{w[1]}}  {r[2]:>{w[2]}}".rstrip() for r in rows)


def run(args) -> int:
    from ..atomic_write import atomic_open
    from ..errors import refuse_overwrite
    from ..stats import PLOT_FILES, plot_distributions, summarize
    from ..volume_io import read_volume

    refuse_overwrite(([args.json] if args.json else [])
                     + ([Path(args.plots) / f for f in PLOT_FILES] if args.plots else []), args.force)

    vols = [read_volume(p) for p in args.volumes]
    refs = [read_volume(p) for p in args.reference] if args.reference else None
    summary, gen, ref = summarize(vols, refs, split=args.split, log_volume=args.log_volume, return_stats=True,
                                  zero_is_outside=not args.zero_is_grain,
                                  periodic=(True,) * 3 if args.periodic else None,
                                  ref_periodic=(True,) * 3 if args.reference_periodic else None)
    summary["inputs"] = [str(p) for p in args.volumes]
    if args.reference:
        summary["reference"]["inputs"] = [str(p) for p in args.reference]
    print(_table(summary))
    if args.json:
        out = Path(args.json)
        if not out.parent.exists():
            from ..errors import GPEngineError

            raise GPEngineError(f"--json: directory '{out.parent}' does not exist: create it first")
        with atomic_open(out, "w") as fh:
            json.dump(summary, fh, indent=2)
            fh.write("\n")
        print(f"wrote {out}", file=sys.stderr)
    if args.plots:
        for p in plot_distributions(gen, ref, args.plots):
            print(f"wrote {p}", file=sys.stderr)
    return 0

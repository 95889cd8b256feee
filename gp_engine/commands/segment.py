"""`gp-engine segment IN OUT`: label a generated float field with grain ids.

IN is any volume ``gp_engine.volume_io.read_volume`` reads (.npy, .npz, .vti, SPPARKS dump);
OUT is written by suffix with ``write_volume`` (.npy, .vti, SPPARKS dump), atomically. With
``--tile`` and .npy files on both sides the work is out-of-core: IN is memory-mapped and OUT
is written through a memory-mapped temporary .npy that is renamed into place at the end.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def _levels_arg(text: str) -> int | list[float]:
    """``--levels 12`` (K evenly spaced in [-1, 1]) or ``--levels -1,0,1`` (explicit values)."""
    try:
        if "," in text:
            return [float(t) for t in text.split(",") if t.strip()]
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--levels wants an integer K or comma-separated values, got {text!r}") from None


def register(sub):
    from ..segment import (DEFAULT_EPS, DEFAULT_MIN_SAMPLES, DEFAULT_MIN_SIZE,
                           DEFAULT_VALUE_SCALE, METHODS)

    p = sub.add_parser(
        "segment", help="segment a generated field into grains (exact grid DBSCAN or levels)",
        description="Label every voxel of a float field with an int32 grain id 1..n.")
    p.add_argument("input", metavar="IN", help="field volume (.npy, .npz, .vti, SPPARKS dump)")
    p.add_argument("output", metavar="OUT", help="grain-id volume to write (.npy, .vti, .dump)")
    p.add_argument("--method", choices=METHODS, default="dbscan",
                   help="dbscan: exact grid DBSCAN (paper); levels: snap to encoding levels + "
                        "26-connected components (default: %(default)s)")
    p.add_argument("--eps", type=float, default=DEFAULT_EPS,
                   help="DBSCAN radius in voxels, must be < 2 (default: %(default)s)")
    p.add_argument("--min-samples", type=int, default=DEFAULT_MIN_SAMPLES,
                   help="DBSCAN core threshold, the voxel itself included (default: %(default)s)")
    p.add_argument("--value-scale", type=float, default=DEFAULT_VALUE_SCALE,
                   help="S in the points (x, y, z, S*value) (default: %(default)s)")
    p.add_argument("--levels", type=_levels_arg, default=None,
                   help="levels method: K evenly spaced levels in [-1, 1] or a comma list "
                        "(default: the encoding's default K); write --levels=-1,0,1 when the list "
                        "starts with a minus sign")
    p.add_argument("--min-size", type=int, default=None,
                   help="clusters smaller than this are refilled from their neighbours "
                        f"(default: {DEFAULT_MIN_SIZE} for levels, 1 = keep all for dbscan)")
    p.add_argument("--tile", type=int, default=None,
                   help="process in N^3 tiles (out-of-core for .npy); same result as untiled")
    p.add_argument("--split-necks", action="store_true",
                   help="then cut grains at thin necks (gp_engine.necks; what gp-engine generate does "
                        "unless the plan says \"segmentation\": {\"split_necks\": false})")
    p.add_argument("--progress", action="store_true", help="show a progress bar per pass")
    p.add_argument("--force", action="store_true", help="replace an existing OUT")
    return p


def run(args) -> int:
    import numpy as np

    from ..atomic_write import atomic_path
    from ..errors import GPEngineError, refuse_overwrite
    from ..necks import split_necks
    from ..segment import segment
    from ..volume_io import open_npy_memmap, read_volume, write_volume

    src, dst = Path(args.input), Path(args.output)
    refuse_overwrite([dst], args.force)
    out_of_core = args.tile is not None and src.suffix.lower() == ".npy"
    if out_of_core:
        if not src.is_file():
            raise GPEngineError(f"volume file '{src}' does not exist: check the path")
        try:
            field = np.load(src, mmap_mode="r", allow_pickle=False)
        except Exception as exc:
            raise GPEngineError(f"'{src}' is not a readable .npy file ({exc})") from exc
    else:
        field = read_volume(src)

    kwargs = dict(method=args.method, eps=args.eps, min_samples=args.min_samples,
                  value_scale=args.value_scale, levels=args.levels, min_size=args.min_size,
                  tile=args.tile, progress=args.progress)
    t0 = time.perf_counter()
    if args.tile is not None and dst.suffix.lower() == ".npy":
        # out-of-core: an int32 .npy memmap beside OUT, renamed into place when the labels are done
        with atomic_path(dst, suffix=".tmp.npy") as tmp:
            # disk bytes reserved up front: a full disk is an OSError here, not a SIGBUS later
            out = open_npy_memmap(tmp, np.int32, field.shape)
            ids = segment(field, out=out, **kwargs)
            if args.split_necks:
                ids = split_necks(ids, tile=args.tile, out=ids, progress=args.progress)
            n = int(ids.max())
            out.flush()
            del ids, out
    else:
        ids = segment(field, **kwargs)
        if args.split_necks:
            ids = split_necks(ids, tile=args.tile, out=ids, progress=args.progress)
        n = int(ids.max())
        write_volume(dst, ids)
    dt = time.perf_counter() - t0
    size = int(np.prod(field.shape))
    print(f"segment: {n} grains in {'x'.join(map(str, field.shape))} voxels "
          f"({args.method}) in {dt:.2f} s ({size / dt / 1e6:.1f} M voxels/s) -> {dst}")
    return 0

"""Seam figures of a labelled volume: do grain statistics change on chosen planes?

One definition shared by ``bench/periodic_seams.py`` (the seams of a 2×2×2 tiling) and
``bench/conditional_vs_repaint.py`` (the faces of the blocks of a plan). Per plane between slices i and
i + 1 along an axis:

* boundary density: share of voxel pairs across the plane that belong to different grains;
* straddling grains: share of the grains touching the plane that continue across it (1 − the share
  cut by the plane).

A seamless volume has the same figures on seam planes as on the others. A block plan's seam is not one
plane thick: a block's last painted layer has too few boundaries and the first layers painted next to
it too many (thirteenth session), so the report also sums, over the planes within ``reach`` of each
seam, the boundary density above that of the planes farther away (``seam_window_excess``: extra
boundary per seam, as a share of one plane's voxel pairs (a plane inside holds ~0.13); 0 for a seamless volume, whichever side of the
face plane the excess sits on) and the absolute deviation (a dip beside a spike counts too).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np


def plane_figures(ids: np.ndarray, axis: int, i: int) -> tuple[float, float]:
    """(boundary density, straddling share) of the plane between slices i and i + 1 along ``axis``."""
    a = np.take(ids, i, axis=axis)
    b = np.take(ids, i + 1, axis=axis)
    density = float(np.mean(a != b))
    ga, gb = np.unique(a), np.unique(b)
    touching = np.union1d(ga, gb)
    straddle = float(np.intersect1d(ga, gb).size / max(touching.size, 1))
    return density, straddle


def plane_profile(ids: np.ndarray, axis: int) -> np.ndarray:
    """Boundary density of every plane along ``axis``: entry i is the plane between slices i and i + 1."""
    a = np.moveaxis(ids, axis, 0)
    return (a[1:] != a[:-1]).mean(axis=(1, 2))


def window_excess(profiles: list[np.ndarray], seams: list[list[int]], reach: int) -> dict:
    """Boundary around seams against the planes far from them, pooled over the axes.

    "Far" planes lie more than ``reach`` planes from every seam of their axis and from the volume's faces
    (a box face has an edge effect of its own). Per seam plane s, over the planes s − reach … s + reach:
    ``excess`` Σ (density − far mean) (net extra boundary, as a share of one plane's voxel pairs) and
    ``deviation`` Σ |density − far mean| (a dip beside a spike counts too; a seamless volume keeps only
    its noise); both averaged over the seam planes. Windows that overlap count shared planes per seam."""
    far = []
    for p, ss in zip(profiles, seams):
        f = np.ones(len(p), bool)
        f[:reach], f[len(p) - reach:] = False, False
        for s in ss:
            f[max(s - reach, 0):s + reach + 1] = False
        far.append(f)
    far_values = np.concatenate([p[f] for p, f in zip(profiles, far)])
    nan = float("nan")
    if not len(far_values) or not any(seams):
        return {"seam_window_excess": nan, "seam_window_deviation": nan, "far_boundary_density": nan}
    base = float(far_values.mean())
    wins = [p[max(s - reach, 0):s + reach + 1] - base for p, ss in zip(profiles, seams) for s in ss]
    return {"seam_window_excess": float(np.mean([w.sum() for w in wins])),
            "seam_window_deviation": float(np.mean([np.abs(w).sum() for w in wins])),
            "far_boundary_density": base}


def plane_report(ids: np.ndarray, is_seam: Callable[[int, int], bool], reach: int = 3) -> dict:
    """Mean figures over the planes ``is_seam(axis, i)`` picks and over every other plane (all axes), and the
    boundary the planes within ``reach`` of the seams hold above the planes beyond (:func:`window_excess`)."""
    seam, inner = [], []
    seams: list[list[int]] = [[], [], []]
    for axis in range(3):
        for i in range(ids.shape[axis] - 1):
            if is_seam(axis, i):
                seams[axis].append(i)
            (seam if is_seam(axis, i) else inner).append(plane_figures(ids, axis, i))
    if not seam or not inner:
        raise ValueError(f"no {'seam' if not seam else 'interior'} planes in a volume of {ids.shape}: "
                         "seam figures need both")
    s, t = np.array(seam), np.array(inner)
    return {"seam_boundary_density": float(s[:, 0].mean()), "interior_boundary_density": float(t[:, 0].mean()),
            "seam_straddling": float(s[:, 1].mean()), "interior_straddling": float(t[:, 1].mean()),
            "interior_boundary_density_sd": float(t[:, 0].std()), "seam_planes": len(s), "interior_planes": len(t),
            "seam_window_reach": reach} | window_excess([plane_profile(ids, a) for a in range(3)], seams, reach)


def tile_seams(n: tuple[int, int, int]) -> Callable[[int, int], bool]:
    """Seam planes of a tiling with tiles of ``n``: the last plane of each tile."""
    return lambda axis, i: (i + 1) % n[axis] == 0


def box_block_corners(shape, margin: int, block: int = 32) -> list[tuple[int, int, int]]:
    """Corners of the grid plan's blocks in the coordinates of a box painted with ``margin`` voxels beyond
    its faces (``geometry.margin``; gp_engine.planner.painted_box): the plan lies on the painted box and
    the box is cut out at the margin, so its block faces sit ``margin`` lower."""
    from gp_engine.generate import plan_blocks
    from gp_engine.planner import painted_box

    painted, off = painted_box(shape, margin)
    return [tuple(int(c) - o for c, o in zip(b.corner, off)) for b in plan_blocks("grid", painted, block)]


def block_seams(corners: Iterable, shape, block: int = 32) -> Callable[[int, int], bool]:
    """Seam planes of a block plan: every block face inside the volume (between slices c-1 | c and
    c+block-1 | c+block for each block corner c along each axis)."""
    planes: list[set[int]] = [set(), set(), set()]
    for c in corners:
        for a in range(3):
            for i in (int(c[a]) - 1, int(c[a]) + block - 1):
                if 0 <= i < int(shape[a]) - 1:
                    planes[a].add(i)
    return lambda axis, i: i in planes[axis]


__all__ = ["plane_figures", "plane_profile", "window_excess", "plane_report", "tile_seams", "box_block_corners", "block_seams"]

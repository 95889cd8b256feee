"""Seam figures of a labelled volume: do grain statistics change on chosen planes?

One definition shared by ``bench/periodic_seams.py`` (the seams of a 2×2×2 tiling) and
``bench/conditional_vs_repaint.py`` (the faces of the blocks of a plan). Per plane between slices i and
i + 1 along an axis:

* boundary density: share of voxel pairs across the plane that belong to different grains;
* straddling grains: share of the grains touching the plane that continue across it (1 − the share
  cut by the plane).

A seamless volume has the same figures on seam planes as on the others.
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


def plane_report(ids: np.ndarray, is_seam: Callable[[int, int], bool]) -> dict:
    """Mean figures over the planes ``is_seam(axis, i)`` picks and over every other plane (all axes)."""
    seam, inner = [], []
    for axis in range(3):
        for i in range(ids.shape[axis] - 1):
            (seam if is_seam(axis, i) else inner).append(plane_figures(ids, axis, i))
    if not seam or not inner:
        raise ValueError(f"no {'seam' if not seam else 'interior'} planes in a volume of {ids.shape}: "
                         "seam figures need both")
    s, t = np.array(seam), np.array(inner)
    return {"seam_boundary_density": float(s[:, 0].mean()), "interior_boundary_density": float(t[:, 0].mean()),
            "seam_straddling": float(s[:, 1].mean()), "interior_straddling": float(t[:, 1].mean()),
            "interior_boundary_density_sd": float(t[:, 0].std()), "seam_planes": len(s), "interior_planes": len(t)}


def tile_seams(n: tuple[int, int, int]) -> Callable[[int, int], bool]:
    """Seam planes of a tiling with tiles of ``n``: the last plane of each tile."""
    return lambda axis, i: (i + 1) % n[axis] == 0


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


__all__ = ["plane_figures", "plane_report", "tile_seams", "block_seams"]

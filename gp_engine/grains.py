"""Split label volumes into grains: each distinct value becomes one grain per connected region.

SPPARKS spins recur (Q = 1000 spins over ~2,500 grains in 100³), so a spin value is not a grain id:
grains are the 26-connected regions of equal value. ``mask`` (True = inside the part) excludes voxels
outside a CAD shape; they get id 0 and never join a grain.
"""

from __future__ import annotations

import cc3d
import numpy as np

from .errors import GPEngineError


def split_grains(labels: np.ndarray, connectivity: int = 26, mask: np.ndarray | None = None) -> np.ndarray:
    """Return int32 grain ids ``1..n`` (``0`` only where ``mask`` is False), numbered in scan order.

    ``labels`` is any integer volume ``[x, y, z]`` (spins or already-split ids; all values, including
    0 and negatives, are ordinary labels). ``connectivity`` is 6, 18 or 26.
    """
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise GPEngineError(f"labels must be a 3D array [x, y, z], got shape {labels.shape}")
    if connectivity not in (6, 18, 26):
        raise GPEngineError(f"connectivity must be 6, 18 or 26, got {connectivity}")
    if labels.dtype.kind == "f":
        if not np.all(labels == np.rint(labels)):
            raise GPEngineError("labels hold non-integer values: segment the float field first (gp-engine segment)")
        labels = labels.astype(np.int64)
    elif labels.dtype.kind not in "iub":
        raise GPEngineError(f"labels must be integers, got dtype {labels.dtype}")
    if labels.dtype == np.bool_:
        labels = labels.astype(np.uint8)
    # cc3d treats 0 as background: shift the labels so every value is >= 1, then mask to 0.
    lo = int(labels.min())
    hi = int(labels.max())
    work_dtype = np.uint16 if hi - lo + 1 < 2**16 else (np.uint32 if hi - lo + 1 < 2**32 else np.uint64)
    work = (labels.astype(np.int64) - (lo - 1)).astype(work_dtype)
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != labels.shape:
            raise GPEngineError(f"mask shape {mask.shape} differs from labels shape {labels.shape}")
        work = np.where(mask, work, 0).astype(work_dtype)
    ids = cc3d.connected_components(np.asfortranarray(work), connectivity=connectivity, out_dtype=np.uint32)
    return np.ascontiguousarray(ids.astype(np.int32, copy=False))


def cut_out(ids: np.ndarray, box, periodic=None, mask: np.ndarray | None = None) -> np.ndarray:
    """Grain ids of the sub-box ``box`` (slices) of ``ids``, relabelled 1..n: a grain the cut splits into
    pieces becomes one grain per piece, a grain crossing a periodic face stays one (periodic axes are
    never cut), and voxels outside ``mask`` (on the sub-box) get 0."""
    sub = np.asarray(ids[tuple(box)])
    periodic = tuple(bool(p) for p in (periodic or (False, False, False)))
    if any(periodic):
        if mask is not None:
            raise GPEngineError("a masked part cannot be periodic")
        return label_periodic(split_grains, sub, periodic, pad=1)
    return split_grains(sub, mask=mask)


def count_grains(ids: np.ndarray) -> int:
    """Number of grains in an id volume (ids ``1..n``, ``0`` = outside)."""
    return int(np.unique(ids[ids > 0]).size)


def label_periodic(label_fn, vol: np.ndarray, periodic, pad: int = 2) -> np.ndarray:
    """Labels of ``vol`` that treat the periodic axes as a ring: a region crossing a face is one label.

    ``label_fn(volume) -> int labels`` (0 = unlabelled) runs on ``vol`` padded by ``pad`` wrapped voxels
    on each periodic axis, so every voxel near a face sees its neighbours across it; then the labels
    of each core voxel and of its copies in the padding are merged (union-find over the label pairs)
    and the core is renumbered 1..n in scan order. ``pad`` must cover the labeller's neighbourhood
    (1 for 26-connected components; 2 leaves margin for the grid DBSCAN's eps < 2).
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    periodic = tuple(bool(p) for p in periodic)
    if not any(periodic):
        return label_fn(vol)
    for n, p in zip(vol.shape, periodic):
        if p and n < 2 * pad:
            raise GPEngineError(f"a periodic axis of {n} voxels is too short to wrap (needs ≥ {2 * pad})")
    pads = [(pad, pad) if p else (0, 0) for p in periodic]
    big = np.asarray(label_fn(np.pad(np.asarray(vol), pads, mode="wrap")), np.int64)
    core = tuple(slice(pad, big.shape[a] - pad) if p else slice(None) for a, p in enumerate(periodic))
    a_list, b_list = [], []
    for axis, p in enumerate(periodic):
        if not p:
            continue
        n = vol.shape[axis]
        for copy, orig in ((slice(0, pad), slice(n, n + pad)), (slice(n + pad, n + 2 * pad), slice(pad, 2 * pad))):
            ca = [slice(None)] * 3
            oa = [slice(None)] * 3
            ca[axis], oa[axis] = copy, orig
            a_list.append(big[tuple(ca)].ravel())
            b_list.append(big[tuple(oa)].ravel())
    a = np.concatenate(a_list)
    b = np.concatenate(b_list)
    keep = (a > 0) & (b > 0) & (a != b)
    m = int(big.max()) + 1
    graph = coo_matrix((np.ones(int(keep.sum()), np.int8), (a[keep], b[keep])), shape=(m, m))
    _, comp = connected_components(graph, directed=False)
    lab = big[core]
    fg = lab > 0
    roots = comp[lab[fg]]
    uniq, first = np.unique(roots, return_index=True)  # renumber 1..n in scan order of the core
    rank = np.empty(uniq.size, np.int32)
    rank[np.argsort(first)] = np.arange(1, uniq.size + 1, dtype=np.int32)
    out = np.zeros(lab.shape, np.int32)
    out[fg] = rank[np.searchsorted(uniq, roots)]
    return out

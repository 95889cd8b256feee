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


#: tile side of :func:`split_grains_tiled` when :func:`cut_out` gets a memmap (the large-volume path)
TILE = 256


def cut_out(ids: np.ndarray, box, periodic=None, mask: np.ndarray | None = None,
            out: np.ndarray | None = None, tile: int | None = None) -> np.ndarray:
    """Grain ids of the sub-box ``box`` (slices) of ``ids``, relabelled 1..n: a grain the cut splits into
    pieces becomes one grain per piece, a grain crossing a periodic face stays one (periodic axes are
    never cut, in RAM), and voxels outside ``mask`` (on the sub-box) get 0.

    ``tile`` (default: in RAM unless ``ids`` is a memmap, then ``TILE``) relabels tile by tile
    (:func:`split_grains_tiled`) into ``out`` (int32, the sub-box's shape, e.g. a memmap), so that memory
    stays bounded for volumes larger than RAM."""
    sub = ids[tuple(box)]
    periodic = tuple(bool(p) for p in (periodic or (False, False, False)))
    if any(periodic):
        if mask is not None:
            raise GPEngineError("a masked part cannot be periodic")
        return label_periodic(split_grains, np.asarray(sub), periodic, pad=1)
    if tile is None and isinstance(ids, np.memmap):
        tile = TILE
    if tile is not None:
        return split_grains_tiled(sub, tile, out=out, mask=mask)
    return split_grains(np.asarray(sub), mask=mask)


def tile_boxes(shape, tile: int):
    """(lo, hi) corners of the ``tile``³ tiles covering ``shape``, in C order: the one tiling of the
    out-of-core steps (segmentation, the cut-out, the neck cut)."""
    import itertools

    for lo in itertools.product(*[range(0, n, tile) for n in shape]):
        yield tuple(lo), tuple(min(a + tile, n) for a, n in zip(lo, shape))


def split_grains_tiled(labels: np.ndarray, tile: int, out: np.ndarray | None = None,
                       mask: np.ndarray | None = None) -> np.ndarray:
    """:func:`split_grains` (26-connected) tile by tile, for volumes larger than RAM: the same grains.

    Each ``tile``³ tile is split on its own (ids offset past the previous tiles'); then every pair of
    26-neighbours with equal labels on either side of a tile's high face (edges and corners included:
    the plane beyond a face is read one voxel wider) joins their ids (union-find), and a last pass
    renumbers the grains 1..n in the order of their first tile. Memory: one tile, the faces and
    an int64 per provisional id. ``out`` (int32, the shape of ``labels``) receives the ids."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if int(tile) < 1:
        raise GPEngineError(f"tile must be >= 1, got {tile}")
    shape = tuple(labels.shape)
    if len(shape) != 3:
        raise GPEngineError(f"labels must be a 3D array [x, y, z], got shape {shape}")
    if mask is not None and tuple(mask.shape) != shape:
        raise GPEngineError(f"mask shape {tuple(mask.shape)} differs from labels shape {shape}")
    if out is None:
        out = np.empty(shape, np.int32)
    elif out.shape != shape or out.dtype != np.int32:
        raise GPEngineError(f"out must be int32 of shape {shape}, got {out.dtype} {out.shape}")
    boxes = list(tile_boxes(shape, int(tile)))
    base = 0
    for lo, hi in boxes:  # pass 1: each tile on its own
        sl = tuple(slice(a, b) for a, b in zip(lo, hi))
        loc = split_grains(np.asarray(labels[sl]), mask=None if mask is None else np.asarray(mask[sl]))
        out[sl] = np.where(loc > 0, loc + base, 0)
        base += int(loc.max(initial=0))
    a_ids, b_ids = [], []
    for lo, hi in boxes:  # pass 2: pairs across each tile's high faces (every cross-tile pair has one)
        for axis in range(3):
            plane = hi[axis] - 1
            if plane + 1 >= shape[axis]:
                continue
            o = [a for a in range(3) if a != axis]
            inner = [slice(lo[a], hi[a]) for a in range(3)]
            inner[axis] = slice(plane, plane + 1)
            # the plane beyond the face, one voxel wider on both other axes where the volume goes on,
            # padded to exactly one wider (out 0 there: "no voxel")
            wlo = [max(lo[a] - 1, 0) for a in o]
            whi = [min(hi[a] + 1, shape[a]) for a in o]
            outer = [slice(None)] * 3
            outer[axis] = slice(plane + 1, plane + 2)
            outer[o[0]], outer[o[1]] = slice(wlo[0], whi[0]), slice(wlo[1], whi[1])
            face = (hi[o[0]] - lo[o[0]], hi[o[1]] - lo[o[1]])
            li = np.asarray(labels[tuple(inner)]).reshape(face)
            oi = np.asarray(out[tuple(inner)]).reshape(face)
            pad = [(1 - (lo[a] - w0), 1 - (w1 - hi[a])) for a, w0, w1 in zip(o, wlo, whi)]
            wide = (whi[0] - wlo[0], whi[1] - wlo[1])
            lw = np.pad(np.asarray(labels[tuple(outer)]).reshape(wide), pad)
            ow = np.pad(np.asarray(out[tuple(outer)]).reshape(wide), pad)
            keys = []
            for d0 in (0, 1, 2):
                for d1 in (0, 1, 2):
                    nl, no = lw[d0:d0 + face[0], d1:d1 + face[1]], ow[d0:d0 + face[0], d1:d1 + face[1]]
                    hit = (li == nl) & (oi > 0) & (no > 0)
                    if hit.any():  # one int64 key per (id here, id there) pair
                        keys.append(np.unique((oi[hit].astype(np.int64) << 32) | no[hit].astype(np.int64)))
            if keys:  # each pair once per face: memory grows with the grains, not the face area
                k = np.unique(np.concatenate(keys))
                a_ids.append(k >> 32)
                b_ids.append(k & 0xFFFFFFFF)
    n = base + 1
    if a_ids:
        a, b = np.concatenate(a_ids), np.concatenate(b_ids)
        _, comp = connected_components(coo_matrix((np.ones(a.size, np.int8), (a, b)), shape=(n, n)), directed=False)
    else:
        comp = np.arange(n)
    # renumber 1..n in the order of each grain's smallest provisional id (its first tile); 0 stays 0
    _, first, which = np.unique(comp[1:], return_index=True, return_inverse=True)
    rank = np.empty(first.size, np.int32)
    rank[np.argsort(first)] = np.arange(1, first.size + 1, dtype=np.int32)
    lut = np.zeros(n, np.int32)
    lut[1:] = rank[which.ravel()]
    for lo, hi in boxes:
        sl = tuple(slice(a, b) for a, b in zip(lo, hi))
        out[sl] = lut[np.asarray(out[sl])]
    return out


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

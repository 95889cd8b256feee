"""Split grains at thin necks: the step after segmentation.

Grains grown by curvature-driven coarsening (SPPARKS Potts at T = 0) are close to convex polyhedra,
and for a convex body the points deeper than r from its surface form one connected piece. Generated
grains are not always like that: two lobes painted in the same colour (analog bits reuse 16 codes, and
DSatur leaves 62 % of SPPARKS grains one voxel from a grain of their own colour,
bench/results/colouring_probe.md) join through a thin neck into one lumpy, elongated grain.

:func:`split_necks` finds, in every grain, its *cores*: the voxels with no boundary voxel within
``core_radius`` (a boundary voxel has a face neighbour of another id), 6-connected. A core counts only
if it is *deep*: one of its voxels has no boundary voxel nearer than ``deep_radius``. A grain with two
or more deep cores is cut into one grain per core, each of its voxels going to the core that reaches it
nearest to it inside the grain (breadth-first from all cores at once, so a neck is cut at its middle),
and two pieces whose common face is wide (more than ``neck_ratio`` × the smaller one's volume^(2/3)
voxel faces: a thin plate pinched by the voxel grid, not a neck) are joined again. The defaults (1.5 /
2.0 / 1.5: a neck at most four voxels wide between lobes at least five voxels thick) cut 5 of 6,443
grains of four SPPARKS volumes (KL against validation unchanged) and none of 600 Voronoi cells
(convex), and cut the lumps of generated volumes (bench/results/necks.md).

The volume edge is not a boundary (a grain cut by it is cut by the sampling box, not by a neighbour);
id 0 (outside a CAD part) is never a grain. On ``periodic`` axes, grains touching the faces are left
whole. Large volumes (memmaps) are processed in tiles with a halo of ``HALO`` voxels; a grain is cut by
the first tile that holds it whole with its halo (the same cut as untiled), so grains reaching more than
``HALO`` voxels past every tile are left whole (generated grains are ~9 voxels across).
"""

from __future__ import annotations

from typing import Iterator

import cc3d
import numpy as np
from scipy import ndimage as ndi

from .errors import GPEngineError
from .grains import tile_boxes

CORE_RADIUS = 1.5
DEEP_RADIUS = 2.0
NECK_RATIO = 1.5
#: tile halo in voxels: the largest grain extent past a tile that a tiled run still cuts
HALO = 32
#: voxels of the tile core in tiled runs (memmaps): about 50 MB of working arrays per tile
TILE = 192
_MARGIN = 4  # voxels between a grain and the edge of its padded tile (boundary + dilation + watershed)


def _ball(radius: float, strict: bool) -> np.ndarray:
    r = int(np.floor(radius))
    g = np.mgrid[-r:r + 1, -r:r + 1, -r:r + 1]
    d2 = (g ** 2).sum(0)
    return d2 < radius ** 2 if strict else d2 <= radius ** 2


def _check_radii(core_radius: float, deep_radius: float, neck_ratio: float) -> None:
    if not (neck_ratio > 0):
        raise GPEngineError(f"split_necks: neck_ratio must be > 0; got {neck_ratio}")
    if not (np.isfinite(core_radius) and core_radius >= 1.0):
        raise GPEngineError(f"split_necks: core_radius must be >= 1 voxel; got {core_radius}")
    if not (np.isfinite(deep_radius) and deep_radius > core_radius):
        raise GPEngineError(f"split_necks: deep_radius must be larger than core_radius ({core_radius}); "
                            f"got {deep_radius}")


def boundary_voxels(ids: np.ndarray) -> np.ndarray:
    """True where a voxel has a face neighbour (inside the array) of another id."""
    b = np.zeros(ids.shape, bool)
    for ax in range(3):
        d = np.diff(ids, axis=ax) != 0
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[ax] = slice(0, -1)
        hi[ax] = slice(1, None)
        b[tuple(lo)] |= d
        b[tuple(hi)] |= d
    return b


def split_necks(ids: np.ndarray, core_radius: float = CORE_RADIUS, deep_radius: float = DEEP_RADIUS,
                neck_ratio: float = NECK_RATIO,
                periodic=None, tile: int | None = None, out: np.ndarray | None = None,
                progress: bool = False, report: dict | None = None) -> np.ndarray:
    """Cut the grains of ``ids`` (int grain ids ``[x, y, z]``, each grain one connected region, 0 =
    outside) at their thin necks; returns int32 ids where each cut grain keeps its id for the piece of
    its first core and the other pieces get new ids after the largest one.

    ``tile=T`` (default: whole volume in RAM unless ``ids`` is a memmap, then ``TILE``) works tile by
    tile; ``out`` (int32, the shape of ``ids``; may be ``ids`` itself) receives the result.
    ``report`` (a dict) receives ``grains_cut`` and ``grains_added``.
    """
    _check_radii(core_radius, deep_radius, neck_ratio)
    if not isinstance(ids, np.ndarray) or ids.ndim != 3:
        raise GPEngineError(f"split_necks: grain ids must be a 3D array [x, y, z]; got {getattr(ids, 'shape', type(ids))}")
    if ids.dtype.kind not in "iu":
        raise GPEngineError(f"split_necks: grain ids must be integers; got dtype {ids.dtype}: segment the field first")
    if out is None:
        out = np.array(ids, dtype=np.int32, order="C")
    else:
        if not isinstance(out, np.ndarray) or out.shape != ids.shape or out.dtype != np.int32:
            raise GPEngineError(f"split_necks: out must be an int32 array of shape {ids.shape}")
        if out is not ids:
            for sl in _slabs(ids.shape):
                out[sl] = ids[sl]
    periodic = tuple(bool(p) for p in (periodic or (False, False, False)))
    if tile is None and isinstance(ids, np.memmap):
        tile = TILE
    shape = ids.shape
    first_new = int(max(int(np.max(out[sl])) for sl in _slabs(shape))) + 1 if out.size else 1
    counter = [first_new]
    done: set = set()
    boxes = list(_tiles(shape, tile))
    it = boxes
    if progress and len(boxes) > 1:
        from tqdm import tqdm

        it = tqdm(boxes, desc="split necks", unit="tile")
    for core_lo, core_hi in it:
        _split_tile(out, core_lo, core_hi, first_new, counter, done, core_radius, deep_radius, neck_ratio, periodic,
                    halo=HALO if tile is not None else 0)
    if report is not None:
        report.update(grains_cut=len(done), grains_added=counter[0] - first_new)
    return out


def _slabs(shape) -> Iterator[tuple[slice, ...]]:
    step = max(1, (1 << 24) // max(shape[1] * shape[2], 1))
    for x0 in range(0, shape[0], step):
        yield (slice(x0, x0 + step),)


def _tiles(shape, tile: int | None) -> Iterator[tuple[tuple[int, ...], tuple[int, ...]]]:
    if tile is None:
        yield (0, 0, 0), tuple(shape)
        return
    if int(tile) != tile or tile < 1:
        raise GPEngineError(f"split_necks: tile must be a positive integer; got {tile}")
    yield from tile_boxes(shape, int(tile))


def _grow(ws: np.ndarray, m: np.ndarray) -> None:
    """Grow the labelled cores ``ws`` (> 0) through the grain ``m`` one 26-neighbour step at a time
    (a multi-source breadth-first search: each voxel joins the core nearest to it inside the grain;
    a voxel reached by two cores in the same step joins the higher label)."""
    cube = np.ones((3, 3, 3), bool)
    todo = m & (ws == 0)
    while todo.any():
        grown = ndi.grey_dilation(ws, footprint=cube)
        new = todo & (grown > 0)
        if not new.any():  # not reachable inside the grain (cannot happen for a connected grain)
            break
        ws[new] = grown[new]
        todo &= ~new


def _merge_wide_contacts(ws: np.ndarray, k: int, ratio: float) -> int:
    """Join pieces ``1..k`` of ``ws`` back together where the face between two of them is wide: more
    than ``ratio`` × (the smaller piece's volume)^(2/3) voxel faces (a thin plate pinched by the
    voxel grid is not a neck). Renumbers ``ws`` in place to 1..k' and returns k'."""
    vol = np.bincount(ws.ravel(), minlength=k + 1).astype(np.float64)
    parent = list(range(k + 1))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    contact = {}
    for ax in range(3):
        a = np.moveaxis(ws, ax, 0)
        lo, hi = a[:-1].ravel(), a[1:].ravel()
        sel = (lo > 0) & (hi > 0) & (lo != hi)
        pairs = np.minimum(lo[sel], hi[sel]) * (k + 1) + np.maximum(lo[sel], hi[sel])
        for key, n in zip(*np.unique(pairs, return_counts=True)):
            contact[int(key)] = contact.get(int(key), 0) + int(n)
    for key, n in contact.items():
        i, j = divmod(key, k + 1)
        if n > ratio * min(vol[i], vol[j]) ** (2.0 / 3.0):
            parent[find(i)] = find(j)
    roots = sorted({find(i) for i in range(1, k + 1)}, key=lambda r: min(i for i in range(1, k + 1) if find(i) == r))
    new = np.zeros(k + 1, np.int32)
    for n_new, r in enumerate(roots, start=1):
        for i in range(1, k + 1):
            if find(i) == r:
                new[i] = n_new
    ws[...] = new[ws]
    return len(roots)


def _split_tile(out: np.ndarray, core_lo, core_hi, first_new: int, counter: list, done: set, core_radius: float,
                deep_radius: float, neck_ratio: float, periodic, halo: int) -> None:
    shape = out.shape
    lo = [max(0, c - halo) for c in core_lo]
    hi = [min(s, c + halo) for s, c in zip(shape, core_hi)]
    region = tuple(slice(a, b) for a, b in zip(lo, hi))
    ids = np.ascontiguousarray(out[region])
    b = boundary_voxels(ids)
    inside = ids > 0
    core = inside & ~ndi.binary_dilation(b, structure=_ball(core_radius, strict=False))
    if not core.any():
        return
    deep = inside & ~ndi.binary_dilation(b, structure=_ball(deep_radius, strict=True))
    # cores of one grain: 6-connected components of core voxels of equal id
    comp = cc3d.connected_components(np.where(core, ids, 0).astype(np.int64), connectivity=6,
                                     out_dtype=np.uint32)
    kept = np.zeros(int(comp.max()) + 1, bool)
    kept[np.unique(comp[deep])] = True
    kept[0] = False
    if kept.sum() < 2:
        return
    labels = np.flatnonzero(kept)
    # the grain of each kept core (any of its voxels)
    grain_of = np.zeros(kept.size, np.int64)
    grain_of[comp.ravel()] = ids.ravel()
    grains, counts = np.unique(grain_of[labels], return_counts=True)
    # ids made by this run, and grains another tile has cut, are never cut again
    cand = [g for g in grains[(counts >= 2) & (grains < first_new)].tolist() if g not in done]
    if not cand:
        return
    # bounding boxes of the candidates only (find_objects on the ids themselves would list every id up
    # to the largest, millions in a big volume, for each tile)
    cand_arr = np.asarray(cand, np.int64)
    sel = np.isin(ids, cand_arr)
    small = np.zeros(ids.shape, np.int32)
    small[sel] = np.searchsorted(cand_arr, ids[sel]) + 1
    objs = ndi.find_objects(small)
    for i_cand, g in enumerate(cand):
        sl = objs[i_cand]
        # the whole grain must lie inside the padded tile, _MARGIN voxels from a cut edge (the first
        # tile that holds it so cuts it; the cut depends only on the grain and its surroundings)
        ok = True
        for ax in range(3):
            a, z = sl[ax].start, sl[ax].stop
            if (a < _MARGIN and lo[ax] > 0) or (z > ids.shape[ax] - _MARGIN and hi[ax] < shape[ax]):
                ok = False
            if periodic[ax] and (lo[ax] + a == 0 or lo[ax] + z == shape[ax]):
                ok = False
        if not ok:
            continue
        crop = tuple(slice(max(0, s.start - 1), s.stop + 1) for s in sl)
        m = ids[crop] == g
        c = np.where(m, comp[crop], 0)
        mine = [k for k in np.unique(c).tolist() if k and kept[k]]
        if len(mine) < 2:
            continue
        ws = np.zeros(m.shape, np.int32)
        for i, k in enumerate(mine):
            ws[c == k] = i + 1
        _grow(ws, m)
        n_pieces = _merge_wide_contacts(ws, len(mine), neck_ratio)
        if n_pieces < 2:
            continue
        mine = mine[:n_pieces]
        piece = ids[crop].copy()
        for i in range(2, len(mine) + 1):
            piece[m & (ws == i)] = counter[0]
            counter[0] += 1
        ids[crop] = piece
        done.add(g)
        gcrop = tuple(slice(lo[ax] + crop[ax].start, lo[ax] + crop[ax].stop) for ax in range(3))
        out[gcrop] = np.where(m, piece, out[gcrop])

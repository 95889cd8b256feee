"""Segment a generated float field into grains: exact grid DBSCAN or level snapping.

Two methods, both ending with every voxel labelled by an int32 grain id 1..n:

* ``dbscan`` (the paper's method): DBSCAN over the points (i, j, k, S·value) of the voxel grid.
  With eps < 2 only a voxel and its 26 neighbours can lie within eps, so the C++ kernel
  (``gp_engine._segment``, ``csrc/grid_dbscan.hpp``) is exact DBSCAN in O(N) with 3 bytes per
  voxel besides input and output: count neighbours (core test, the voxel itself included as in
  sklearn), union-find over core–core edges, then each border voxel joins the cluster of its
  within-eps core neighbour with the smallest linear index (sklearn allows any reachable
  cluster; this fixed rule makes tiled and untiled runs identical). Clusters are numbered in
  C order of their first core voxel.
* either method may then drop clusters under ``min_size`` voxels (``levels`` by default: 5; a
  speckled field from an imperfect model is better cut with a larger value, see
  bench/results/segmentation_compare.md) for the noise fill to absorb.
* ``levels`` (for grain-separable encodings): snap each voxel to the nearest encoding level,
  take 26-connected components of equal level, drop components smaller than ``min_size``
  voxels (default 5: isolated mis-snapped voxels and pairs are what snapping noise produces;
  in the shipped SPPARKS volumes grains under 5 voxels are ~3 % of grains by count and 0.01 %
  of the volume) and let the noise fill absorb them.
  Components are numbered in C order of their first voxel.

Unlabelled voxels (DBSCAN noise, dropped fragments) are then filled by :func:`fill_noise`, a
synchronous majority vote over the 26 neighbours repeated until nothing is left (the paper's
code votes over the 6 face neighbours; 26 matches the stencil, and the synchronous update makes
the result independent of scan and tile order).

Large volumes: ``tile=T`` processes T³ tiles with a 2-voxel halo (the core test of a halo voxel
needs its own neighbours), merges tile-local clusters with a global union-find over the halo's
core voxels, and fills noise per tile with a halo of ``FILL_HALO`` steps, finishing any voxel the
halo could not reach with a global pass. Input and output may be ``np.memmap`` arrays; the result
equals the untiled one exactly (same ids, not only the same partition).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from . import _segment
from .errors import GPEngineError
from .grains import tile_boxes

DEFAULT_EPS = 1.9
DEFAULT_MIN_SAMPLES = 15
DEFAULT_VALUE_SCALE = 32.0
DEFAULT_MIN_SIZE = 5
FALLBACK_LEVELS = 12
FILL_HALO = 4
AUTO_TILE = 256
METHODS = ("dbscan", "levels")

# 26-connected components of equal level = DBSCAN with min_samples 1 on the level index:
# sqrt(3) <= eps < 2 reaches every 26-neighbour, and a level step (scaled to 4) is beyond eps.
_LEVEL_EPS = 1.75
_LEVEL_SCALE = 4.0
_INT32_MAX = np.iinfo(np.int32).max
_Slices = tuple[slice, slice, slice]


# ----------------------------------------------------------------------------- checks


def _check_field(field: np.ndarray, name: str = "field") -> None:
    if not isinstance(field, np.ndarray):
        raise GPEngineError(f"{name} must be a numpy array, got {type(field).__name__}")
    if field.ndim != 3 or field.size == 0:
        raise GPEngineError(f"{name} must be a non-empty 3D array, got shape {field.shape}")
    if not (np.issubdtype(field.dtype, np.floating) or np.issubdtype(field.dtype, np.integer)
            or field.dtype == np.bool_):
        raise GPEngineError(f"{name} has dtype {field.dtype}; give a float32/float64 array")


def _check_params(eps: float, min_samples: int, value_scale: float) -> None:
    if not eps < 2.0:
        raise GPEngineError(
            f"eps must be < 2 for the exact grid stencil; got eps={eps}. Only a voxel's 26 "
            "neighbours are searched, so larger eps would silently miss neighbours: use eps < 2 "
            "(the paper uses 1.9) and scale the value axis with value_scale instead")
    if not eps > 0.0:
        raise GPEngineError(f"eps must be > 0; got eps={eps}")
    if int(min_samples) != min_samples or min_samples < 1:
        raise GPEngineError(f"min_samples must be a positive integer; got {min_samples}")
    if not (np.isfinite(value_scale) and value_scale >= 0):
        raise GPEngineError(f"value_scale must be a finite number >= 0; got {value_scale}")


def _kernel_input(block: np.ndarray) -> np.ndarray:
    """C-contiguous float32/float64 view or copy of ``block`` for the C++ kernel."""
    if block.dtype in (np.float32, np.float64):
        return np.ascontiguousarray(block)
    return np.ascontiguousarray(block, dtype=np.float64)


def _run_dbscan(block: np.ndarray, eps: float, min_samples: int,
                value_scale: float) -> tuple[np.ndarray, np.ndarray, int]:
    arr = _kernel_input(block)
    kernel = _segment.dbscan_f32 if arr.dtype == np.float32 else _segment.dbscan_f64
    try:
        labels, core, n = kernel(arr, float(eps), int(min_samples), float(value_scale))
    except ValueError as exc:
        if "NaN" in str(exc):
            raise GPEngineError(
                "field contains NaN or inf values; segmentation needs a finite field "
                "(check the generator output, e.g. with np.isfinite)") from None
        raise
    return labels, core, int(n)


# ----------------------------------------------------------------------------- public API


def dbscan_grid(field: np.ndarray, eps: float = DEFAULT_EPS,
                min_samples: int = DEFAULT_MIN_SAMPLES,
                value_scale: float = DEFAULT_VALUE_SCALE) -> tuple[np.ndarray, np.ndarray]:
    """Exact DBSCAN of the points (i, j, k, value_scale·field[i, j, k]) of a 3D voxel grid.

    Same core and noise sets and the same partition of core points as
    ``sklearn.cluster.DBSCAN(eps, min_samples)`` on those points; border points join the
    within-eps core neighbour with the smallest linear index. Returns ``(labels, is_core)``:
    int32 labels (0 = noise, clusters 1..n in C order of their first core voxel) and a bool
    core mask. Raises GPEngineError for eps >= 2, NaN/inf values or a non-3D field.
    """
    _check_field(field)
    _check_params(eps, min_samples, value_scale)
    if field.size >= _INT32_MAX:
        raise GPEngineError(f"field has {field.size} voxels (>= 2^31): use segment(..., tile=256)")
    labels, core, _ = _run_dbscan(field, eps, min_samples, value_scale)
    return labels, core.view(np.bool_)


def fill_noise(labels: np.ndarray) -> np.ndarray:
    """Give every 0 (noise) voxel a label; returns a new int32 array.

    Deterministic synchronous (Jacobi) iteration: at each step every unlabelled voxel with a
    labelled 26-neighbour takes the most common label among its labelled neighbours as they
    were before the step (ties: smallest label), until no zero is left. Because each step reads
    only the previous state, the result does not depend on voxel or tile order. A volume with no
    label at all becomes a single grain (all 1).
    """
    _check_field(labels, "labels")
    if not np.issubdtype(labels.dtype, np.integer):
        raise GPEngineError(f"labels must be an integer array, got {labels.dtype}")
    if labels.size and labels.min() < 0:
        raise GPEngineError("labels must be >= 0 (0 = noise)")
    out = np.array(labels, dtype=np.int32, order="C", copy=True)
    _segment.fill_noise(out, -1, True)
    return out


def resolve_levels(levels: int | Sequence[float] | np.ndarray | None) -> np.ndarray:
    """Encoding levels as a sorted float64 array: K evenly spaced in [-1, 1] or an explicit list.

    ``None`` uses ``gp_engine.encoding.DEFAULT_LEVELS`` when that module exists, else 12.
    """
    if levels is None:
        try:
            from .encoding import DEFAULT_LEVELS
            levels = int(DEFAULT_LEVELS)
        except ImportError:
            levels = FALLBACK_LEVELS
    if np.isscalar(levels):
        k = int(levels)  # type: ignore[arg-type]
        if k != levels or k < 2:
            raise GPEngineError(f"levels must be an integer >= 2 or a list of values; got {levels}")
        return np.linspace(-1.0, 1.0, k)
    arr = np.asarray(levels, dtype=np.float64).ravel()
    if arr.size < 2 or not np.all(np.isfinite(arr)) or np.unique(arr).size != arr.size:
        raise GPEngineError(f"levels must be >= 2 distinct finite values; got {list(arr)}")
    return np.sort(arr)


def snap_levels(field: np.ndarray, levels: np.ndarray, dtype: type = np.int16) -> np.ndarray:
    """Index of the nearest level for every voxel (ties go to the lower level).

    Works slab by slab so the int64 index temporary stays small (volumes may be memmaps).
    """
    mids = (levels[1:] + levels[:-1]) / 2.0
    out = np.empty(field.shape, dtype=dtype)
    step = max(1, (1 << 18) // max(1, field[0].size))
    for i in range(0, field.shape[0], step):
        block = np.asarray(field[i:i + step])
        if np.issubdtype(block.dtype, np.floating) and not np.all(np.isfinite(block)):
            raise GPEngineError(
                "field contains NaN or inf values; segmentation needs a finite field "
                "(check the generator output, e.g. with np.isfinite)")
        out[i:i + step] = np.searchsorted(mids, block, side="left")
    return out


def segment(field: np.ndarray, method: str = "dbscan", eps: float = DEFAULT_EPS,
            min_samples: int = DEFAULT_MIN_SAMPLES, value_scale: float = DEFAULT_VALUE_SCALE,
            levels: int | Sequence[float] | None = None, tile: int | None = None,
            out: np.ndarray | None = None, progress: bool = False,
            min_size: int | None = None) -> np.ndarray:
    """Label every voxel of a generated field with a grain id (int32, 1..n).

    ``method="dbscan"``: exact grid DBSCAN (eps, min_samples, value_scale) then
    :func:`fill_noise`. ``method="levels"``: snap to ``levels`` (K or a list), 26-connected
    components of equal level. Either way, clusters under ``min_size`` voxels (default: 5 for
    ``levels``, 1 = keep all for ``dbscan``) are refilled by :func:`fill_noise`. ``tile=T`` runs out-of-core in T³ tiles (field and ``out`` may be
    ``np.memmap``) with a result identical to the untiled run; volumes of 2^31 voxels or more
    are always tiled (T = 256). ``out`` (int32, C-contiguous, field's shape) receives the result
    and is returned.
    """
    _check_field(field)
    if method not in METHODS:
        raise GPEngineError(f"method must be one of {METHODS}; got {method!r}")
    if method == "dbscan":
        _check_params(eps, min_samples, value_scale)
    lv = resolve_levels(levels) if method == "levels" else None
    if min_size is None:
        min_size = DEFAULT_MIN_SIZE if method == "levels" else 1
    if int(min_size) != min_size or min_size < 1:
        raise GPEngineError(f"min_size must be a positive integer; got {min_size}")
    if out is not None:
        _check_out(out, field.shape)
    if tile is None and field.size >= _INT32_MAX:
        tile = AUTO_TILE
    if tile is not None:
        if int(tile) != tile or tile < 1:
            raise GPEngineError(f"tile must be a positive integer; got {tile}")
        return _segment_tiled(field, method, eps, min_samples, value_scale, lv, int(min_size),
                              int(tile), out, progress)
    labels = _label_block(field, method, eps, min_samples, value_scale, lv)
    if min_size > 1:
        labels = _drop_small(labels, min_size)
    _segment.fill_noise(labels, -1, True)
    if out is None:
        return labels
    out[...] = labels
    return out


# ----------------------------------------------------------------------------- internals


def _check_out(out: np.ndarray, shape: tuple[int, ...]) -> None:
    if not isinstance(out, np.ndarray) or out.shape != tuple(shape) or out.dtype != np.int32:
        raise GPEngineError(
            f"out must be an int32 array of shape {tuple(shape)}; got "
            f"{getattr(out, 'dtype', type(out).__name__)} {getattr(out, 'shape', '')}")
    if not out.flags.c_contiguous or not out.flags.writeable:
        raise GPEngineError(
            "out must be C-contiguous and writable (e.g. np.lib.format.open_memmap)")


def _label_block(block: np.ndarray, method: str, eps: float, min_samples: int,
                 value_scale: float, lv: np.ndarray | None) -> np.ndarray:
    """Pre-fill labels of one block (0 = noise); core flags are discarded."""
    return _label_block_core(block, method, eps, min_samples, value_scale, lv)[0]


def _label_block_core(block: np.ndarray, method: str, eps: float, min_samples: int,
                      value_scale: float,
                      lv: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, int]:
    if method == "dbscan":
        return _run_dbscan(block, eps, min_samples, value_scale)
    assert lv is not None
    idx = snap_levels(block, lv, np.float32)
    return _run_dbscan(idx, _LEVEL_EPS, 1, _LEVEL_SCALE)


def _drop_small(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Set components under min_size voxels to 0 and renumber the rest in the same order."""
    sizes = np.bincount(labels.ravel())
    keep = sizes >= min_size
    keep[0] = False
    new_id = (np.cumsum(keep) * keep).astype(np.int32)
    return new_id[labels]


def _grow(lo: Sequence[int], hi: Sequence[int], halo: int,
          shape: Sequence[int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    return (tuple(max(a - halo, 0) for a in lo), tuple(min(b + halo, n) for b, n in zip(hi, shape)))


def _sl(lo: Sequence[int], hi: Sequence[int], origin: Sequence[int] = (0, 0, 0)) -> _Slices:
    return tuple(slice(a - o, b - o)  # type: ignore[return-value]
                 for a, b, o in zip(lo, hi, origin))


def _shell_boxes(olo: Sequence[int], ohi: Sequence[int], ilo: Sequence[int],
                 ihi: Sequence[int]) -> Iterator[tuple[list[int], list[int]]]:
    """Disjoint boxes covering the outer box minus the inner box (inner inside outer)."""
    lo, hi = list(olo), list(ohi)
    for axis in range(3):
        if lo[axis] < ilo[axis]:
            blo, bhi = list(lo), list(hi)
            bhi[axis] = ilo[axis]
            yield blo, bhi
        if ihi[axis] < hi[axis]:
            blo, bhi = list(lo), list(hi)
            blo[axis] = ihi[axis]
            yield blo, bhi
        lo[axis], hi[axis] = ilo[axis], ihi[axis]


def _progress(it, total: int, desc: str, enabled: bool):
    if not enabled:
        return it
    from tqdm import tqdm
    return tqdm(it, total=total, desc=desc, unit="tile", leave=False)


def _segment_tiled(field: np.ndarray, method: str, eps: float, min_samples: int,
                   value_scale: float, lv: np.ndarray | None, min_size: int, tile: int,
                   out: np.ndarray | None, progress: bool) -> np.ndarray:
    """Tiled segmentation identical to the untiled one; see the module docstring."""
    shape = field.shape
    if out is None:
        out = np.empty(shape, dtype=np.int32)
    boxes = list(tile_boxes(shape, tile))
    flat = out.reshape(-1)

    # Pass 1: label each tile with a 2-voxel halo; write provisional ids (tile base + local
    # id) into out and remember, for each core voxel of the 1-voxel halo ring, its provisional
    # id here -- it is the same voxel as in its owner tile, so the two ids are one cluster.
    base = 1
    firsts: list[np.ndarray] = [np.array([-1], dtype=np.int64)]
    counts: list[np.ndarray] = [np.array([0], dtype=np.int64)]
    ring_ids: list[np.ndarray] = []
    ring_pos: list[np.ndarray] = []
    for lo, hi in _progress(boxes, len(boxes), "segment: label", progress):
        flo, fhi = _grow(lo, hi, 2, shape)
        labels, core, m = _label_block_core(field[_sl(flo, fhi)], method, eps, min_samples,
                                            value_scale, lv)
        if base + m >= _INT32_MAX:
            raise GPEngineError("too many provisional clusters for int32 ids; use a larger tile")
        centre = np.ascontiguousarray(labels[_sl(lo, hi, flo)])
        first, count = _segment.first_and_count(
            centre, np.ascontiguousarray(core[_sl(lo, hi, flo)]), m)
        csh = centre.shape
        ok = first[1:] >= 0
        g = np.full(m, -1, dtype=np.int64)
        if ok.any():
            loc = np.unravel_index(first[1:][ok], csh)
            g[ok] = np.ravel_multi_index(tuple(l + o for l, o in zip(loc, lo)), shape)
        firsts.append(g)
        counts.append(count[1:])
        np.add(centre, np.int32(base - 1), out=centre, where=centre > 0)  # provisional ids
        out[_sl(lo, hi)] = centre

        rlo, rhi = _grow(lo, hi, 1, shape)
        for blo, bhi in _shell_boxes(rlo, rhi, lo, hi):
            pos = np.nonzero(core[_sl(blo, bhi, flo)])
            if pos[0].size:
                ring_ids.append(labels[_sl(blo, bhi, flo)][pos].astype(np.int64) + (base - 1))
                ring_pos.append(np.ravel_multi_index(tuple(p + o for p, o in zip(pos, blo)),
                                                     shape))
        base += m

    # Global union-find over provisional ids, then number clusters by first core voxel.
    parent = np.arange(base, dtype=np.int64)
    if ring_ids:
        a = np.concatenate(ring_ids)
        gpos = np.concatenate(ring_pos)
        del ring_ids, ring_pos
        order = np.argsort(gpos, kind="stable")
        b = flat[gpos[order]].astype(np.int64)
        if b.size and b.min() <= 0:  # a core voxel is always labelled by its owner tile
            raise RuntimeError("internal error: unlabelled core voxel in tile merge")
        _segment.union_pairs(parent, a[order], b)
        del a, b, gpos, order
    _segment.flatten(parent)
    first_all = np.concatenate(firsts)
    count_all = np.concatenate(counts)
    del firsts, counts
    big = np.iinfo(np.int64).max
    root_first = np.full(base, big, dtype=np.int64)
    np.minimum.at(root_first, parent, np.where(first_all >= 0, first_all, big))
    roots = np.nonzero((parent == np.arange(base)) & (root_first < big))[0]
    if min_size > 1:
        root_size = np.bincount(parent, weights=count_all, minlength=base)
        roots = roots[root_size[roots] >= min_size]
    roots = roots[np.argsort(root_first[roots], kind="stable")]
    comp = np.zeros(base, dtype=np.int32)
    comp[roots] = np.arange(1, roots.size + 1, dtype=np.int32)
    mapping = comp[parent]
    del parent, root_first, first_all, count_all, comp

    # Pass 2: provisional -> final ids (0 = noise).
    for lo, hi in _progress(boxes, len(boxes), "segment: relabel", progress):
        s = _sl(lo, hi)
        out[s] = mapping[out[s]]
    del mapping
    if roots.size == 0:
        out[...] = 1
        return out

    # Pass 3: fill noise per tile, FILL_HALO synchronous steps with a FILL_HALO halo, which is
    # exact in the tile. Filled voxels are stored negated so that later tiles still read the
    # pre-fill state (negative -> 0) in their halo.
    leftover = filled_any = False
    for lo, hi in _progress(boxes, len(boxes), "segment: fill", progress):
        was_zero = out[_sl(lo, hi)] == 0  # this tile is not filled yet: zeros are noise
        if not was_zero.any():
            continue
        filled_any = True
        hlo, hhi = _grow(lo, hi, FILL_HALO, shape)
        work = np.ascontiguousarray(np.maximum(out[_sl(hlo, hhi)], 0))
        c = _sl(lo, hi, hlo)
        _segment.fill_noise(work, FILL_HALO, False)
        filled = work[c]
        leftover = leftover or not filled.all()
        np.negative(filled, out=filled, where=was_zero)
        out[_sl(lo, hi)] = filled
    for lo, hi in boxes if filled_any else []:
        s = _sl(lo, hi)
        np.abs(out[s], out=out[s])
    if leftover:  # voxels further than FILL_HALO from any label: continue the same iteration
        _segment.fill_noise(out, -1, True)
    return out

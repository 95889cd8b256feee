"""Block plans: where the 32³ blocks go, in which order, and which blocks each one waits for.

Two plans, both for any box size ≥ 1 voxel per axis:

* :func:`grid_plan` — GrainPaint's 8-stage grid (paper Alg. 1–2, Table 3). Along each axis, "A"
  blocks sit every 1.5 blocks (48 voxels; 16-voxel gaps) and "B" blocks are shifted by 0.75 blocks
  (24 voxels) to fill the gaps with 8 voxels of overlap on each side. Stage s takes A or B per axis
  according to Table 3: stage 1 = (A, A, A), stage 2 = (A, A, B), … For box sides that are not
  48·n + 32 the last block on an axis is clamped to end at the box edge (see :func:`grid_axis`).
* :func:`center_plan` — the centre-out plan used for anisotropic data: the centre block, then a
  cross along the three axes with 16-voxel overlap, then everything else on an 8-voxel-overlap grid
  in rings of growing Chebyshev distance from the centre (see :func:`center_plan`).

In both, each block depends on every *earlier* block whose corner is within Chebyshev distance one
block (|Δ| ≤ 32 voxels on every axis), as in Alg. 1; so blocks that share voxels are always ordered
by a dependency. :func:`make_batches` then groups blocks into batches that never contain two
dependent or overlapping blocks.

Boxes thinner than one block on an axis are planned on a canvas padded to one block on that axis
(:func:`canvas_shape`); the generator crops the result back to the requested shape.

The box is painted with a margin (:func:`painted_box`, ``geometry.margin``, default
:data:`DEFAULT_MARGIN`): a block's outermost layers are painted with context on one side only, and
grains there end at the face instead of being cut by it (generated 48³ boxes had no grains under 20
voxels touching their faces where SPPARKS crops of the same box have 12 %), so the requested box is
cut out of a box ``margin`` voxels larger on every non-periodic face, and segmented before the cut.
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from .errors import GPEngineError

BLOCK = 32
#: voxels painted beyond each non-periodic face of a box and cropped away (``geometry.margin``); 0 before
#: the thirteenth session. On eight 48³ boxes (the T = 500 lineage at 17,853 steps, `fast`) KL of grain
#: aspect against SPPARKS crops of the same box 0.324 → 0.132 (docs/model.md)
DEFAULT_MARGIN = 2

#: Paper Table 3: per stage, which axes take the 0.75-block offset (1 = B positions, 0 = A).
#: The limit reductions of Table 3 are implied: an axis with the offset has one grid point fewer.
STAGE_PATTERNS: tuple[tuple[int, int, int], ...] = (
    (0, 0, 0), (0, 0, 1), (1, 1, 1), (1, 1, 0), (1, 0, 1), (0, 1, 1), (1, 0, 0), (0, 1, 0),
)


@dataclass(frozen=True)
class Block:
    """One block of a plan: ``corner`` is its lowest voxel (x, y, z) on the canvas; ``deps`` are the
    indices of earlier blocks that must be generated before it; ``stage`` is for display (grid:
    paper stage 1–8; centre: 1 = centre, 2 = cross, 2 + r = fill ring r)."""

    index: int
    corner: tuple[int, int, int]
    stage: int
    deps: tuple[int, ...]


# --------------------------------------------------------------------------- geometry helpers


def _check_block(block: int) -> int:
    if not isinstance(block, (int, np.integer)) or block < 4 or block % 4:
        raise GPEngineError(f"block size {block!r} must be a positive multiple of 4 (the model uses 32)")
    return int(block)


def canvas_shape(shape: Sequence[int], block: int = BLOCK, periodic: Sequence[bool] | None = None
                 ) -> tuple[int, int, int]:
    """The shape actually planned and generated: ``shape`` with each axis padded up to ``block``
    (periodic axes are never padded: they must be ≥ ``block`` already).

    The generator allocates this canvas and crops ``[:nx, :ny, :nz]`` at the end.
    """
    block = _check_block(block)
    if len(shape) != 3 or any(int(n) < 1 for n in shape):
        raise GPEngineError(f"box shape {tuple(shape)} must be three integers ≥ 1")
    periodic = periodic or (False, False, False)
    return tuple(int(n) if p else max(int(n), block) for n, p in zip(shape, periodic))  # type: ignore[return-value]


def painted_box(shape: Sequence[int], margin: int, periodic: Sequence[bool] | None = None
                ) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """(shape painted, offset of the requested box in it): ``margin`` voxels more beyond each face of a
    non-periodic axis (a periodic axis has no face). Plans, canvases and part masks live on the painted
    box (padded further by :func:`canvas_shape` where thinner than a block); the outputs are cut out at
    ``offset``."""
    if not isinstance(margin, (int, np.integer)) or margin < 0:
        raise GPEngineError(f"margin {margin!r} must be an integer ≥ 0")
    periodic = periodic or (False, False, False)
    off = tuple(0 if p else int(margin) for p in periodic)
    return tuple(int(n) + 2 * o for n, o in zip(shape, off)), off  # type: ignore[return-value]


def grid_axis(length: int, block: int = BLOCK) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Corner positions (A, B) along one axis of ``length`` voxels (padded to ``block``).

    Ideal positions are k·step with step = 0.75 block (24 voxels), A for even k and B for odd k, as
    in the paper. Keep k = 0 … k*-1 where k* is the first position whose block reaches the edge, and
    put a final block at ``length - block`` (clamped to the edge). With s = the final block's distance
    past position k*-1 (0 < s ≤ step):

    * s = step: the final block is ideal position k* (sides 48·n + 32 give exactly the paper grid);
    * k* odd (position k*-1 is A): the final block is B, overlapping that A block by ≥ 8 voxels;
    * k* even, s ≥ block/2: the final block is A; the B block at k*-1 fills a gap of s - 8 ≥ 8;
    * k* even, s < block/2: the gap would be under 8 voxels, so the final block is B instead and is
      generated after the B block at k*-1 (overlap 32 - s), i.e. a short chain.
    """
    block = _check_block(block)
    length = max(int(length), block)
    step = 3 * block // 4
    if length == block:
        return (0,), ()
    kstar = -(-(length - block) // step)  # ceil
    s = (length - block) - step * (kstar - 1)
    final = length - block
    if s == step:
        final_class = kstar % 2
    elif kstar % 2 == 1:
        final_class = 1
    else:
        final_class = 0 if s >= block // 2 else 1
    a = [k * step for k in range(kstar) if k % 2 == 0]
    b = [k * step for k in range(kstar) if k % 2 == 1]
    (a if final_class == 0 else b).append(final)
    return tuple(sorted(set(a))), tuple(sorted(set(b)))


def ring_axis(length: int, block: int, stride: int) -> list[tuple[int, int]]:
    """(corner, ring) positions along one axis, centred: the centre block at (length-block)//2, then
    ``stride`` steps outwards on both sides; the last block on each side is clamped to the edge.
    Sorted by ring, then corner; ring = number of steps from the centre."""
    length = max(int(length), block)
    c0 = (length - block) // 2
    out = [(c0, 0)]
    for sign, edge in ((-1, 0), (1, length - block)):
        p, j = c0, 0
        while p != edge:
            j += 1
            p = max(c0 - stride * j, 0) if sign < 0 else min(c0 + stride * j, edge)
            out.append((p, j))
    return sorted(set(out), key=lambda pr: (pr[1], pr[0]))


# --------------------------------------------------------------------------- dependencies


def chebyshev_dependencies(corners: Sequence[Sequence[int]], block: int = BLOCK) -> list[tuple[int, ...]]:
    """For each corner, the indices of EARLIER corners within Chebyshev distance ``block``.

    This is Alg. 1's ``max(|Δx|, |Δy|, |Δz|) ≤ 1`` (in block units) applied to list order: it
    covers every pair of blocks that overlap (|Δ| < block on all axes) and those that touch.
    Vectorised with a cell hash (cells of ``block`` voxels; neighbours lie in the 27 cells around),
    so it is O(n) and takes well under a second for 10⁵ blocks.
    """
    c = np.asarray(corners, np.int64).reshape(-1, 3)
    n = len(c)
    if n == 0:
        return []
    cell = c // block
    cell -= cell.min(axis=0)
    dims = cell.max(axis=0) + 3  # room for the -1/+1 neighbours

    def linear(k: np.ndarray) -> np.ndarray:
        return ((k[:, 0] + 1) * dims[1] + (k[:, 1] + 1)) * dims[2] + (k[:, 2] + 1)

    order = np.argsort(linear(cell), kind="stable")
    sorted_keys = linear(cell)[order]
    rows, cols = [], []
    for d in itertools.product((-1, 0, 1), repeat=3):
        keys = linear(cell + np.array(d))
        lo = np.searchsorted(sorted_keys, keys, "left")
        hi = np.searchsorted(sorted_keys, keys, "right")
        for k in range(int((hi - lo).max())):
            i = np.nonzero(lo + k < hi)[0]
            j = order[lo[i] + k]
            keep = (j < i) & (np.abs(c[j] - c[i]).max(axis=1) <= block)
            rows.append(i[keep])
            cols.append(j[keep])
    i = np.concatenate(rows)
    j = np.concatenate(cols)
    o = np.lexsort((j, i))
    i, j = i[o], j[o]
    bounds = np.searchsorted(i, np.arange(n + 1))
    jl = j.tolist()
    return [tuple(jl[bounds[k]:bounds[k + 1]]) for k in range(n)]


def new_voxels(corners: Sequence[Sequence[int]], block: int = BLOCK) -> np.ndarray:
    """Voxels each block generates that no earlier block covered (the RePaint "unknown" count).

    Works on a compressed grid whose cells are cut at every block boundary, so it needs memory
    ~ (2 × blocks per axis)³, not the box size.
    """
    if len(corners) == 0:
        return np.zeros(0, np.int64)
    arr = np.asarray(corners, np.int64).reshape(-1, 3)
    cuts = [np.unique(np.concatenate([arr[:, a], arr[:, a] + block])) for a in range(3)]
    widths = [np.diff(c) for c in cuts]
    covered = np.zeros(tuple(len(w) for w in widths), bool)
    cell_vol = widths[0][:, None, None] * widths[1][None, :, None] * widths[2][None, None, :]
    lo = np.stack([np.searchsorted(cuts[a], arr[:, a]) for a in range(3)], axis=1).tolist()
    hi = np.stack([np.searchsorted(cuts[a], arr[:, a] + block) for a in range(3)], axis=1).tolist()
    out = np.empty(len(arr), np.int64)
    for n, (l, h) in enumerate(zip(lo, hi)):
        sl = (slice(l[0], h[0]), slice(l[1], h[1]), slice(l[2], h[2]))
        view = covered[sl]
        out[n] = int(cell_vol[sl][~view].sum())
        view[...] = True
    return out


def _finish(corners: list[tuple[int, int, int]], stages: list[int], block: int) -> list[Block]:
    """Dedupe coincident corners (keep the first), drop blocks that would add no voxel, number the
    rest and attach their dependencies."""
    seen: set[tuple[int, int, int]] = set()
    keep_c, keep_s = [], []
    for c, s in zip(corners, stages):
        if c not in seen:
            seen.add(c)
            keep_c.append(c)
            keep_s.append(s)
    useful = new_voxels(keep_c, block) > 0
    keep_c = [c for c, u in zip(keep_c, useful) if u]
    keep_s = [s for s, u in zip(keep_s, useful) if u]
    deps = chebyshev_dependencies(keep_c, block)
    return [Block(i, c, s, d) for i, (c, s, d) in enumerate(zip(keep_c, keep_s, deps))]


# --------------------------------------------------------------------------- plans


def grid_plan(shape: Sequence[int], block: int = BLOCK) -> list[Block]:
    """The paper's 8-stage grid plan over ``canvas_shape(shape, block)``.

    Stage by stage (Table 3), corners are the product of the per-axis A/B lists of
    :func:`grid_axis` in x-major order (Alg. 1's i, j, k loops). Every block depends on all earlier
    blocks within Chebyshev distance ``block``. For sides 48·n + 32 this is exactly Alg. 1–2.
    """
    canvas = canvas_shape(shape, block)
    axes = [grid_axis(n, block) for n in canvas]
    corners: list[tuple[int, int, int]] = []
    stages: list[int] = []
    for stage, pattern in enumerate(STAGE_PATTERNS, start=1):
        lists = [axes[a][pattern[a]] for a in range(3)]
        for c in itertools.product(*lists):
            corners.append(c)  # type: ignore[arg-type]
            stages.append(stage)
    return _finish(corners, stages, block)


def center_plan(shape: Sequence[int], block: int = BLOCK) -> list[Block]:
    """Centre-out plan (paper §3.3, anisotropic data) over ``canvas_shape(shape, block)``.

    1. Stage 1: the centre block, corner ``(n - block) // 2`` per axis.
    2. Stage 2: the cross — blocks along each axis line through the centre every ``block/2`` voxels
       (16-voxel overlap, so grain rows stay aligned), outwards ring by ring (ring 1 on all three
       axes, then ring 2, …); the last block of each arm is clamped to the edge.
    3. Stage 2 + r: the fill — every other block of the grid with stride ``0.75·block`` (8-voxel
       overlap) centred on the centre block, in rings r = Chebyshev distance from the centre in grid
       steps, inside a ring by Manhattan distance (faces before edges before corners), then corner.
       Grid blocks on a cross line (two indices zero) are skipped: the cross already covers them.

    Dependencies: every earlier block within Chebyshev distance ``block`` (overlapping or touching).
    """
    block = _check_block(block)
    canvas = canvas_shape(shape, block)
    cross_axes = [ring_axis(n, block, block // 2) for n in canvas]
    fill_axes = [ring_axis(n, block, 3 * block // 4) for n in canvas]
    centre = tuple(ax[0][0] for ax in fill_axes)

    corners: list[tuple[int, int, int]] = [centre]  # type: ignore[list-item]
    stages = [1]
    cross: list[tuple[int, int, tuple[int, int, int]]] = []
    for a in range(3):
        for pos, ring in cross_axes[a][1:]:
            c = list(centre)
            c[a] = pos
            cross.append((ring, a, tuple(c)))  # type: ignore[arg-type]
    for ring, a, c in sorted(cross):
        corners.append(c)
        stages.append(2)

    fill = []
    for (px, rx), (py, ry), (pz, rz) in itertools.product(*fill_axes):
        if (rx == 0) + (ry == 0) + (rz == 0) >= 2:
            continue
        fill.append((max(rx, ry, rz), rx + ry + rz, (px, py, pz)))
    for ring, _, c in sorted(fill):
        corners.append(c)
        stages.append(2 + ring)
    return _finish(corners, stages, block)


def periodic_axis(length: int, block: int = BLOCK) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Corner positions (A, B) along a periodic axis of ``length`` ≥ ``block`` voxels: m positions
    evenly spread round the ring, m the smallest even number with spacing ≤ 0.75 block (so
    neighbours overlap by ≥ block/4, as on the paper grid), A at even k, B at odd k. The last B
    block wraps past the end onto the first A block."""
    block = _check_block(block)
    length = int(length)
    if length < block:
        raise GPEngineError(f"a periodic axis needs at least {block} voxels, got {length}")
    step = 3 * block // 4
    m = max(2, -(-length // step))
    m += m % 2
    pos = [round(k * length / m) for k in range(m)]
    return tuple(pos[0::2]), tuple(pos[1::2])


def periodic_dependencies(corners: Sequence[Sequence[int]], shape: Sequence[int],
                          periodic: Sequence[bool], block: int = BLOCK) -> list[tuple[int, ...]]:
    """For each corner, the EARLIER corners whose blocks overlap it (|Δ| < ``block`` on every axis), with
    distances measured round the ring on periodic axes. Unlike :func:`chebyshev_dependencies`, blocks
    that only touch are independent: on a ring of 2·block voxels every block would touch every other
    one and the plan would run one block at a time."""
    c = np.asarray(corners, np.int64).reshape(-1, 3)
    n = np.asarray(shape, np.int64)
    per = np.asarray(periodic, bool)
    out: list[tuple[int, ...]] = []
    for lo in range(0, len(c), 128):
        d = np.abs(c[lo:lo + 128, None, :] - c[None, :, :])
        d = np.where(per, np.minimum(d, n - d), d)
        near = d.max(axis=2) < block
        for r, row in enumerate(near):
            i = lo + r
            out.append(tuple(int(j) for j in np.flatnonzero(row[:i])))
    return out


def periodic_grid_plan(shape: Sequence[int], periodic: Sequence[bool], block: int = BLOCK) -> list[Block]:
    """The 8-stage grid plan with periodic axes: positions from :func:`periodic_axis` there (blocks
    near a face outpaint against the opposite face), :func:`grid_axis` elsewhere; dependencies with
    distances round the ring. The canvas is not padded on periodic axes (each needs ≥ ``block``)."""
    block = _check_block(block)
    canvas = tuple(int(n) if p else max(int(n), block) for n, p in zip(shape, periodic))
    axes = [periodic_axis(n, block) if p else grid_axis(n, block) for n, p in zip(canvas, periodic)]
    corners: list[tuple[int, int, int]] = []
    stages: list[int] = []
    seen = set()
    for stage, pattern in enumerate(STAGE_PATTERNS, start=1):
        for c in itertools.product(*[axes[a][pattern[a]] for a in range(3)]):
            if c not in seen:
                seen.add(c)
                corners.append(c)  # type: ignore[arg-type]
                stages.append(stage)
    deps = periodic_dependencies(corners, canvas, periodic, block)
    return [Block(i, c, s, d) for i, (c, s, d) in enumerate(zip(corners, stages, deps))]


PLANNERS = {"grid": grid_plan, "center": center_plan}


def restrict_to_mask(blocks: Sequence[Block], mask: np.ndarray, block: int = BLOCK) -> list[Block]:
    """The blocks a CAD part needs: every block that holds a part voxel, plus every earlier block that
    overlaps one of those (so each part block finds, in its own region, exactly the known voxels it
    would have found in the full box). Renumbered 0..m-1 in the original order, dependencies kept
    between kept blocks only. ``mask``: [x, y, z] bool over the canvas (False = outside the part)."""
    mask = np.asarray(mask, bool)
    integral = np.zeros(tuple(n + 1 for n in mask.shape), np.int64)  # summed-area table: O(1) per block
    integral[1:, 1:, 1:] = mask.cumsum(0).cumsum(1).cumsum(2)

    def holds_part(c) -> bool:
        lo = [max(int(v), 0) for v in c]
        hi = [min(int(v) + block, n) for v, n in zip(c, mask.shape)]
        if any(h <= l_ for l_, h in zip(lo, hi)):
            return False
        x0, y0, z0 = lo
        x1, y1, z1 = hi
        t = integral
        total = (t[x1, y1, z1] - t[x0, y1, z1] - t[x1, y0, z1] - t[x1, y1, z0]
                 + t[x0, y0, z1] + t[x0, y1, z0] + t[x1, y0, z0] - t[x0, y0, z0])
        return total > 0

    def overlaps(a, b) -> bool:
        return all(abs(int(p) - int(q)) < block for p, q in zip(a, b))

    keep = np.zeros(len(blocks), bool)
    for b in blocks:
        if holds_part(b.corner):
            keep[b.index] = True
            for d in b.deps:
                if overlaps(blocks[d].corner, b.corner):
                    keep[d] = True
    new_index = {int(b.index): k for k, b in enumerate(b for b in blocks if keep[b.index])}
    return [Block(new_index[int(b.index)], b.corner, b.stage,
                  tuple(new_index[d] for d in b.deps if d in new_index))
            for b in blocks if keep[b.index]]


def estimate_blocks(kind: str, shape: Sequence[int], block: int = BLOCK,
                    periodic: Sequence[bool] | None = None) -> int:
    """An upper bound on the number of blocks ``make_plan(kind, shape)`` returns, from the per-axis
    positions alone (microseconds for any box): the limit checks run it before anything is planned."""
    canvas = canvas_shape(shape, block)
    if kind == "grid":
        periodic = periodic or (False, False, False)
        axes = [periodic_axis(n, block) if p and n >= block else grid_axis(n, block)
                for n, p in zip(canvas, periodic)]
        return sum(int(np.prod([len(axes[a][p[a]]) for a in range(3)], dtype=np.int64))
                   for p in STAGE_PATTERNS)
    if kind in ("center", "centre"):
        fill = [len(ring_axis(n, block, 3 * block // 4)) for n in canvas]
        cross = [len(ring_axis(n, block, block // 2)) for n in canvas]
        return int(np.prod(fill, dtype=np.int64)) + sum(cross)
    raise GPEngineError(f"plan kind {kind!r} is unknown; use one of {', '.join(PLANNERS)}")


def make_plan(kind: str, shape: Sequence[int], block: int = BLOCK) -> list[Block]:
    """Dispatch on a plan kind (plan.json ``plan.kind``)."""
    if kind not in PLANNERS:
        raise GPEngineError(f"plan kind {kind!r} is unknown; use one of {', '.join(PLANNERS)}")
    return PLANNERS[kind](shape, block)


# --------------------------------------------------------------------------- batching


def validate_blocks(blocks: Sequence[Block]) -> None:
    """Raise GPEngineError unless indices are 0..n-1 in order and deps point to earlier blocks."""
    for i, b in enumerate(blocks):
        if b.index != i:
            raise GPEngineError(f"block list position {i} holds block index {b.index}: indices must be 0..n-1 in order")
        for d in b.deps:
            if not 0 <= d < i:
                raise GPEngineError(f"block {i} depends on block {d}, which is not an earlier block")


def make_batches(blocks: Sequence[Block], batch_size: int, block: int = BLOCK) -> list[list[int]]:
    """Group block indices into batches of at most ``batch_size`` (paper §2.5).

    Repeatedly walk the pending blocks in list order and take each block whose dependencies are all
    in earlier batches and that neither overlaps nor depends on a block already in this batch, until
    the batch is full. Every block lands in exactly one batch; batches run in order.
    """
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise GPEngineError(f"batch_size = {batch_size!r} must be an integer ≥ 1")
    validate_blocks(blocks)
    n = len(blocks)
    waiting = [len(b.deps) for b in blocks]
    dependents: list[list[int]] = [[] for _ in range(n)]
    for b in blocks:
        for d in b.deps:
            dependents[d].append(b.index)
    corners = np.array([b.corner for b in blocks], np.int64).reshape(-1, 3)
    in_batch = np.empty((batch_size, 3), np.int64)
    ready = [i for i in range(n) if waiting[i] == 0]
    heapq.heapify(ready)
    batches: list[list[int]] = []
    while ready:
        batch: list[int] = []
        skipped: list[int] = []
        while ready and len(batch) < batch_size:
            i = heapq.heappop(ready)
            # blocks that overlap are dependency-ordered in our plans; this guards hand-made lists
            if batch and (np.abs(in_batch[:len(batch)] - corners[i]) < block).all(axis=1).any():
                skipped.append(i)
            else:
                in_batch[len(batch)] = corners[i]
                batch.append(i)
        for i in skipped:
            heapq.heappush(ready, i)
        for i in batch:
            for k in dependents[i]:
                waiting[k] -= 1
                if waiting[k] == 0:
                    heapq.heappush(ready, k)
        batches.append(batch)
    done = sum(len(b) for b in batches)
    if done != n:  # pragma: no cover - validate_blocks makes the graph acyclic
        raise GPEngineError(f"plan has a dependency cycle: only {done} of {n} blocks can be scheduled")
    return batches


# --------------------------------------------------------------------------- cost


def evaluations_per_block(steps: int, resample: int, jump: int = 1, tail: int = 0) -> int:
    """Network evaluations RePaint spends on one block with these sampler settings.

    Uses :func:`gp_engine.repaint.count_evaluations` (the generator's own schedule) when present;
    otherwise the same closed form: ``steps`` reverse steps plus ``resample·jump`` extra reverse
    steps at each jump point j = tail, tail + jump, … < steps - jump. Paper preset: 2490.
    """
    try:
        from .repaint import count_evaluations
    except ImportError:  # pragma: no cover - repaint ships with the package
        count_evaluations = None
    if count_evaluations is not None:
        return int(count_evaluations(int(steps), int(resample), int(jump), int(tail)))
    return int(steps) + int(resample) * int(jump) * len(range(int(tail), int(steps) - int(jump), int(jump)))


def stage_counts(blocks: Iterable[Block]) -> dict[int, int]:
    """Number of blocks per stage, in stage order."""
    counts: dict[int, int] = {}
    for b in blocks:
        counts[b.stage] = counts.get(b.stage, 0) + 1
    return dict(sorted(counts.items()))

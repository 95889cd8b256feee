"""Planner properties over many box sizes, and the grid plan against a direct transcription of
the paper's Alg. 1–2 (Table 3)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from gp_engine.errors import GPEngineError
from gp_engine.planner import (
    BLOCK,
    Block,
    canvas_shape,
    center_plan,
    evaluations_per_block,
    grid_axis,
    grid_plan,
    make_batches,
    make_plan,
    new_voxels,
    stage_counts,
)

SHAPES = [
    (1, 1, 1), (31, 31, 31), (32, 32, 32), (33, 33, 33), (64, 64, 64), (100, 100, 100),
    (100, 64, 40), (200, 200, 200), (5, 70, 33), (57, 81, 129),
]
# a fixed sample of odd sizes (every residue of the 24-voxel step, thin and long axes)
_rng = np.random.default_rng(7)
SHAPES += [tuple(int(v) for v in _rng.integers(1, 160, size=3)) for _ in range(12)]
PLANS = {"grid": grid_plan, "center": center_plan}


def _corners(blocks: list[Block]) -> np.ndarray:
    return np.array([b.corner for b in blocks], np.int64).reshape(-1, 3)


def _pairwise(c: np.ndarray) -> np.ndarray:
    """Chebyshev distance between every pair of corners."""
    return np.abs(c[:, None, :] - c[None, :, :]).max(axis=2)


@pytest.fixture(scope="module", params=[(k, s) for k in PLANS for s in SHAPES],
                ids=lambda p: f"{p[0]}-{'x'.join(map(str, p[1]))}")
def plan(request):
    kind, shape = request.param
    return kind, shape, PLANS[kind](shape)


def test_corners_in_bounds_and_every_voxel_covered(plan):
    _, shape, blocks = plan
    canvas = canvas_shape(shape)
    c = _corners(blocks)
    assert len(blocks) >= 1
    assert (c >= 0).all() and (c + BLOCK <= np.array(canvas)).all()
    covered = np.zeros(canvas, bool)
    for x, y, z in c:
        covered[x:x + BLOCK, y:y + BLOCK, z:z + BLOCK] = True
    assert covered.all()
    assert len({tuple(v) for v in c}) == len(c), "coincident blocks were not deduplicated"


def test_deps_are_exactly_earlier_blocks_within_one_block(plan):
    _, _, blocks = plan
    c = _corners(blocks)
    d = _pairwise(c)
    for i, b in enumerate(blocks):
        assert b.index == i
        expected = tuple(int(j) for j in np.nonzero(d[i, :i] <= BLOCK)[0])
        assert b.deps == expected


def test_overlapping_blocks_are_ordered_by_a_dependency(plan):
    _, _, blocks = plan
    c = _corners(blocks)
    overlap = _pairwise(c) < BLOCK
    for i, j in zip(*np.nonzero(np.triu(overlap, 1))):
        assert i in blocks[j].deps


def test_every_block_generates_new_voxels(plan):
    """No block is wasted: each one has voxels no earlier block covered (checked voxel by voxel)."""
    _, shape, blocks = plan
    canvas = np.zeros(canvas_shape(shape), bool)
    fresh = []
    for x, y, z in _corners(blocks):
        view = canvas[x:x + BLOCK, y:y + BLOCK, z:z + BLOCK]
        fresh.append(int((~view).sum()))
        view[...] = True
    assert min(fresh) > 0
    np.testing.assert_array_equal(new_voxels([b.corner for b in blocks]), fresh)
    assert sum(fresh) == int(np.prod(canvas_shape(shape)))


@pytest.mark.parametrize("batch_size", [1, 3, 16, 64])
def test_batches_respect_dependencies_and_never_overlap(plan, batch_size):
    _, _, blocks = plan
    batches = make_batches(blocks, batch_size)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(blocks)))
    assert all(1 <= len(b) <= batch_size for b in batches)
    batch_of = {i: n for n, b in enumerate(batches) for i in b}
    c = _corners(blocks)
    for n, batch in enumerate(batches):
        for i in batch:
            assert all(batch_of[d] < n for d in blocks[i].deps)
        for i, j in itertools.combinations(batch, 2):
            assert np.abs(c[i] - c[j]).max() >= BLOCK  # no shared voxel
            assert i not in blocks[j].deps and j not in blocks[i].deps
    if batch_size == 1:
        assert flat == list(range(len(blocks)))  # batch 1 walks the list in order


def _alg12_transcription(shape_blocks):
    """Paper Alg. 1–2 as printed, in block units (1 = 32 voxels): Δ = 1.5, Table 3 offsets and limit
    reductions, initialLimit = number of Δ steps that fit, deps = every point of earlier stages with
    Chebyshev distance ≤ 1."""
    table3 = [((0, 0, 0), (0, 0, 0)), ((0, 0, .75), (0, 0, 1)), ((.75, .75, .75), (1, 1, 1)),
              ((.75, .75, 0), (1, 1, 0)), ((.75, 0, .75), (1, 0, 1)), ((0, .75, .75), (0, 1, 1)),
              ((.75, 0, 0), (1, 0, 0)), ((0, .75, 0), (0, 1, 0))]
    delta = 1.5
    initial = [int((n - 1) / delta) for n in shape_blocks]
    prev: list[tuple[float, float, float]] = []
    out = []
    for stage, (off, red) in enumerate(table3, start=1):
        limit = [initial[a] - red[a] for a in range(3)]
        grid = [(i * delta + off[0], j * delta + off[1], k * delta + off[2])
                for i in range(limit[0] + 1) for j in range(limit[1] + 1) for k in range(limit[2] + 1)]
        for p in grid:
            deps = [q for q in prev if max(abs(q[0] - p[0]), abs(q[1] - p[1]), abs(q[2] - p[2])) <= 1]
            out.append((p, stage, deps))
        prev = prev + grid
    to_vox = lambda p: tuple(int(round(v * 32)) for v in p)  # noqa: E731
    return [(to_vox(p), s, {to_vox(q) for q in d}) for p, s, d in out]


@pytest.mark.parametrize("shape", [(80, 80, 80), (128, 128, 128), (224, 128, 80), (176, 32, 80)])
def test_grid_plan_matches_paper_algorithm(shape):
    """Sides 48·n + 32 (e.g. the paper's 224): same corners, stages, order and dependencies."""
    blocks = grid_plan(shape)
    ref = _alg12_transcription([n / 32 for n in shape])
    assert [(b.corner, b.stage) for b in blocks] == [(c, s) for c, s, _ in ref]
    for b, (_, _, deps) in zip(blocks, ref):
        assert {blocks[d].corner for d in b.deps} == deps


def test_grid_axis_rules():
    # paper sides: A every 48, B in between
    assert grid_axis(224) == ((0, 48, 96, 144, 192), (24, 72, 120, 168))
    # thin axes are padded to one block
    assert grid_axis(1) == grid_axis(32) == ((0,), ())
    # clamped final block ends at the edge and overlaps its neighbour by ≥ 8
    for n in range(33, 400):
        a, b = grid_axis(n)
        allpos = sorted(a + b)
        assert allpos[-1] == n - 32
        assert all(q - p <= 24 for p, q in zip(allpos, allpos[1:]))  # ≥ 8 voxels of overlap
        assert all(q - p >= 32 for p, q in zip(a, a[1:]))  # stage-1 (A) blocks never overlap


def test_canvas_shape_pads_thin_axes():
    assert canvas_shape((1, 31, 100)) == (32, 32, 100)
    with pytest.raises(GPEngineError):
        canvas_shape((0, 10, 10))


def test_counts_for_100_cube():
    """100³: 2 A + 2 B positions per axis -> 4³ = 64 blocks, 8 per stage; all 8 of a stage are
    independent, so batch 8 gives one batch per stage."""
    blocks = grid_plan((100, 100, 100))
    assert grid_axis(100) == ((0, 48), (24, 68))
    assert len(blocks) == 64
    assert stage_counts(blocks) == {s: 8 for s in range(1, 9)}
    assert len(make_batches(blocks, 8)) == 8
    center = center_plan((100, 100, 100))
    assert center[0].corner == (34, 34, 34) and center[0].deps == ()


def test_center_plan_structure():
    shape = (128, 96, 160)
    blocks = center_plan(shape)
    centre = tuple((n - 32) // 2 for n in shape)
    assert blocks[0].corner == centre and blocks[0].stage == 1
    cross = [b for b in blocks if b.stage == 2]
    fill = [b for b in blocks if b.stage > 2]
    assert cross and fill and len(cross) + len(fill) + 1 == len(blocks)
    assert max(b.index for b in cross) < min(b.index for b in fill)  # cross first
    for b in cross:  # on an axis line through the centre
        assert sum(b.corner[a] != centre[a] for a in range(3)) == 1
    for a in range(3):  # arms step 16 voxels (16-voxel overlap), last one clamped to the edge
        arm = sorted({b.corner[a] for b in cross + [blocks[0]]
                      if all(b.corner[k] == centre[k] for k in range(3) if k != a)})
        steps = np.diff(arm)
        assert (steps <= 16).all() and arm[0] == 0 and arm[-1] == shape[a] - 32
    rings = [b.stage for b in fill]
    assert rings == sorted(rings)  # rings grow outwards


def test_make_batches_greedy_walk_on_a_hand_made_plan():
    # 0 and 2 are independent; 1 depends on 0; 3 depends on 1 and 2; 4 is far away.
    blocks = [Block(0, (0, 0, 0), 1, ()), Block(1, (16, 0, 0), 2, (0,)), Block(2, (64, 0, 0), 1, ()),
              Block(3, (40, 0, 0), 2, (1, 2)), Block(4, (200, 0, 0), 1, ())]
    assert make_batches(blocks, 8) == [[0, 2, 4], [1], [3]]
    assert make_batches(blocks, 2) == [[0, 2], [1, 4], [3]]
    # a hand-made list whose overlapping blocks carry no dependency still never shares a batch
    loose = [Block(0, (0, 0, 0), 1, ()), Block(1, (16, 0, 0), 1, ()), Block(2, (32, 0, 0), 1, ())]
    assert make_batches(loose, 8) == [[0, 2], [1]]
    with pytest.raises(GPEngineError):
        make_batches(blocks, 0)
    with pytest.raises(GPEngineError):
        make_batches([Block(0, (0, 0, 0), 1, (1,)), Block(1, (0, 0, 40), 1, ())], 4)


def test_evaluations_per_block_matches_walk():
    # paper: (T - 26)(1 + r) + 26 = 2490 (NOTES), and plain DDPM = steps
    assert evaluations_per_block(250, 10, 1, 25) == 2490
    assert evaluations_per_block(50, 0, 1, 5) == 50
    try:
        from gp_engine.repaint import build_schedule
    except ImportError:  # pragma: no cover
        return
    for steps, r, jump, tail in [(50, 2, 1, 5), (30, 3, 2, 4), (250, 10, 1, 25)]:
        walk = build_schedule(steps, r, jump, tail)
        assert evaluations_per_block(steps, r, jump, tail) == int((walk[:, 1] < walk[:, 0]).sum())


def test_make_plan_dispatch():
    assert make_plan("grid", (40, 40, 40)) == grid_plan((40, 40, 40))
    with pytest.raises(GPEngineError):
        make_plan("spiral", (40, 40, 40))


def test_owner_slice_matches_first_covering_block():
    from gp_engine.plan_render import owner_slice

    shape = (70, 50, 90)
    blocks = grid_plan(shape)
    canvas = canvas_shape(shape)
    owner = np.zeros(canvas, np.int32)
    for b in blocks:
        x, y, z = b.corner
        view = owner[x:x + BLOCK, y:y + BLOCK, z:z + BLOCK]
        view[view == 0] = b.stage
    np.testing.assert_array_equal(owner_slice(blocks, canvas, 2, 45), owner[:, :, 45])
    np.testing.assert_array_equal(owner_slice(blocks, canvas, 0, 3), owner[3, :, :])

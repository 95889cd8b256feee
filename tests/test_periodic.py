"""Periodic volumes: the wrapped plan, blocks that wrap on the canvas, labels and statistics round the
ring (checked against a brute-force torus labelling and against rolled copies), and a periodic run."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from gp_engine.canvas import Canvas
from gp_engine.errors import GPEngineError
from gp_engine.grains import label_periodic, split_grains
from gp_engine.planner import make_batches, periodic_axis, periodic_grid_plan


def ring_distance(a, b, n):
    d = abs(a - b) % n
    return min(d, n - d)


@pytest.mark.parametrize("n", [32, 40, 64, 96, 100, 150])
def test_periodic_axis_overlaps_at_least_a_quarter_block_round_the_ring(n):
    a, b = periodic_axis(n)
    pos = sorted(a + b)
    assert len(pos) % 2 == 0 and len(a) == len(b)
    gaps = [(pos[(k + 1) % len(pos)] - pos[k]) % n for k in range(len(pos))]
    assert max(gaps) <= 24 and sum(gaps) == n          # overlap ≥ 8 everywhere, the wrap included
    classes = ["A" if p in a else "B" for p in pos]
    assert all(classes[k] != classes[(k + 1) % len(pos)] for k in range(len(pos)))  # alternate round the ring


def test_periodic_plan_covers_the_torus_and_orders_every_overlap():
    shape, per = (64, 100, 40), (True, True, False)
    blocks = periodic_grid_plan(shape, per)
    covered = np.zeros(shape, int)
    for b in blocks:
        ix = [np.arange(c, c + 32) % n if p else np.arange(c, min(c + 32, n)) for c, n, p in zip(b.corner, shape, per)]
        covered[np.ix_(*ix)] += 1
    assert covered.min() >= 1
    for i, bi in enumerate(blocks):   # every earlier overlapping block (ring distance) is a dependency
        for j in range(i):
            bj = blocks[j]
            overlap = all((ring_distance(p, q, n) if pp else abs(p - q)) < 32
                          for p, q, n, pp in zip(bi.corner, bj.corner, shape, per))
            assert overlap == (j in bi.deps), (i, j)
    for batch in make_batches(blocks, 8):   # so no batch holds two overlapping blocks
        for i, j in itertools.combinations(batch, 2):
            assert j not in blocks[i].deps and i not in blocks[j].deps


def test_a_block_wraps_round_the_canvas(tmp_path):
    shape = (40, 36, 33)
    c = Canvas.create(tmp_path / "run", shape, {"m": 1}, periodic=(True, True, False))
    rng = np.random.default_rng(0)
    res = rng.normal(size=(1, 32, 32, 32)).astype(np.float32)
    c.commit(0, [(30, 20, 1)], res)
    v = np.asarray(c.values)
    xs, ys = (np.arange(30, 62) % 40), (np.arange(20, 52) % 36)
    np.testing.assert_array_equal(v[np.ix_(xs, ys, np.arange(1, 33))], res[0])
    assert c.known.sum() == 32 * 32 * 32
    x0, mask = c.read_block((30, 20, 1), 32)
    np.testing.assert_array_equal(x0[0], res[0])
    assert mask.all()
    assert c.state["digest"] == c.full_digest() != 0
    again = Canvas.resume(tmp_path / "run", {"m": 1}, layout=[[(30, 20, 1)]])
    assert again.periodic == (True, True, False)


def torus_components(labels, periodic):
    """Brute force: BFS over the 26-neighbour graph with wrapped neighbours; returns a partition."""
    shape = labels.shape
    seen = np.zeros(shape, bool)
    parts = []
    for start in itertools.product(*[range(n) for n in shape]):
        if seen[start]:
            continue
        comp, stack = [], [start]
        seen[start] = True
        while stack:
            v = stack.pop()
            comp.append(v)
            for d in itertools.product((-1, 0, 1), repeat=3):
                w = []
                for a in range(3):
                    k = v[a] + d[a]
                    if periodic[a]:
                        k %= shape[a]
                    elif not 0 <= k < shape[a]:
                        break
                    w.append(k)
                else:
                    w = tuple(w)
                    if not seen[w] and labels[w] == labels[v]:
                        seen[w] = True
                        stack.append(w)
        parts.append(frozenset(comp))
    return set(parts)


@pytest.mark.parametrize("seed", range(3))
def test_label_periodic_matches_brute_force_on_the_torus(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, (7, 6, 5))
    per = (True, bool(seed % 2), False)
    ids = label_periodic(lambda a: split_grains(a), labels, per, pad=1)
    got = {frozenset(map(tuple, np.argwhere(ids == k))) for k in np.unique(ids)}
    assert got == torus_components(labels, per)
    assert set(np.unique(ids)) == set(range(1, len(got) + 1))


def test_periodic_statistics_do_not_move_when_the_volume_is_rolled():
    from gp_engine.stats import stats_of_volumes

    rng = np.random.default_rng(1)
    coarse = rng.integers(1, 200, (6, 6, 6))
    vol = np.repeat(np.repeat(np.repeat(coarse, 8, 0), 8, 1), 8, 2)   # 48³ of 8³ cubes
    rolled = np.roll(vol, (13, 5, 29), axis=(0, 1, 2))
    a = stats_of_volumes([vol], periodic=(True,) * 3)
    b = stats_of_volumes([rolled], periodic=(True,) * 3)
    for k in ("volume", "b_a", "c_a", "nn_dist"):
        np.testing.assert_allclose(np.sort(a[k]), np.sort(b[k]), rtol=1e-9)
    assert np.all(a["volume"] % 512 == 0)       # cubes merged across faces stay whole multiples
    plain = stats_of_volumes([rolled])
    assert len(plain["volume"]) > len(a["volume"])   # split at the faces when not periodic


def test_periodic_plan_fields_are_validated():
    from gp_engine.plan_config import load_plan

    with pytest.raises(GPEngineError, match="at least 32 voxels on a periodic axis"):
        load_plan({"version": 1, "geometry": {"shape": [96, 20, 96], "periodic": True}})
    with pytest.raises(GPEngineError, match="periodic geometry is planned on the grid only"):
        load_plan({"version": 1, "geometry": {"shape": [96, 96, 96], "periodic": True},
                   "plan": {"kind": "center"}})
    with pytest.raises(GPEngineError, match="geometry.periodic"):
        load_plan({"version": 1, "geometry": {"shape": [96, 96, 96], "periodic": "yes"}})


def test_periodic_run_end_to_end(tmp_path):
    from test_runtime import make_model_dir

    from gp_engine.generate import generate

    model = make_model_dir(tmp_path / "model")
    out = tmp_path / "out"
    plan = {"version": 1, "geometry": {"shape": [48, 40, 36], "periodic": [True, True, False]},
            "model": str(model), "sampler": {"preset": "fast", "steps": 3, "resample": 1, "jump": 1,
                                             "no_resample_tail": 1},
            "batch_size": 4, "backend": "onnxruntime", "seed": 2, "segmentation": {"method": "levels"},
            "outputs": {"dir": str(out), "formats": ["npy"]}}
    res = generate(plan, progress=False)
    ids = np.load(out / "grains.npy")
    assert ids.shape == (48, 40, 36) and np.load(out / "canvas/known.npy").all()
    # the ids are the torus components of the snapped levels: relabelling round the ring changes nothing
    same = label_periodic(lambda a: split_grains(a), ids, (True, True, False), pad=1)
    assert len(np.unique(same)) == len(np.unique(ids))
    assert res["stats"]["periodic"] == [True, True, False]


def test_cut_out_splits_what_the_cut_separates_and_keeps_grains_whole_round_the_ring():
    from gp_engine.grains import cut_out

    ids = np.ones((8, 6, 10), np.int32)
    ids[2, 2, 0:6] = ids[5, 2, 0:6] = 2      # two columns of grain 2 ...
    ids[2:6, 2, 0] = 2                        # ... joined only at z = 0, which the cut removes
    ids[0, 4, 4] = ids[7, 4, 4] = 3           # grain 3 crosses the x face
    box = (slice(None), slice(None), slice(2, 8))
    ring = cut_out(ids, box, (True, False, False))
    assert ring.shape == (8, 6, 6) and len(np.unique(ring)) == 4     # 1, two pieces of 2, one 3
    assert ring[2, 2, 0] != ring[5, 2, 0] and ring[0, 4, 2] == ring[7, 4, 2]
    flat = cut_out(ids, box)
    assert len(np.unique(flat)) == 5 and flat[0, 4, 2] != flat[7, 4, 2]
    mask = np.ones((8, 6, 6), bool)
    mask[:, :, 5] = False
    masked = cut_out(ids, box, mask=mask)
    assert (masked[:, :, 5] == 0).all() and (masked[:, :, :5] > 0).all()


@pytest.mark.parametrize("with_mask", [False, True])
def test_tiled_split_gives_the_grains_of_connected_components_3d(with_mask):
    # reference: split_grains, i.e. connected-components-3d on the whole volume; three labels at random
    # make grains that cross tile faces, edges and corners, some only through a diagonal neighbour
    from test_segment import assert_same_partition

    from gp_engine.grains import split_grains, split_grains_tiled

    rng = np.random.default_rng(7)
    for _ in range(8):
        shape = tuple(int(n) for n in rng.integers(6, 20, 3))
        labels = rng.integers(0, 3, shape)
        mask = rng.random(shape) > 0.25 if with_mask else None
        ref = split_grains(labels, mask=mask)
        got = split_grains_tiled(labels, int(rng.integers(3, 9)), mask=mask)
        assert got.dtype == np.int32 and got.max() == ref.max()
        np.testing.assert_array_equal(got == 0, ref == 0)
        assert_same_partition(ref, got)


def test_tiled_split_joins_grains_touching_only_at_a_tile_corner():
    from gp_engine.grains import split_grains_tiled

    labels = np.zeros((4, 4, 4), np.int32)
    labels[1, 1, 1] = labels[2, 2, 2] = 5     # one grain: two voxels meeting at a corner of the 2³ tiles
    ids = split_grains_tiled(labels, 2)
    assert ids[1, 1, 1] == ids[2, 2, 2] and ids.max() == 2
    out = np.zeros((4, 4, 4), np.int32)
    assert split_grains_tiled(labels, 2, out=out) is out
    with pytest.raises(GPEngineError, match="out must be int32"):
        split_grains_tiled(labels, 2, out=np.zeros((4, 4, 4), np.int64))

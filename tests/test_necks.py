"""gp_engine.necks: grains cut at thin necks, convex grains never cut, tiles give the same partition."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial import cKDTree

from gp_engine.errors import GPEngineError
from gp_engine.necks import split_necks


def dumbbell(neck: int, shape=(34, 16, 16), gid: int = 7) -> np.ndarray:
    """Two 8³ lobes (x 3..11 and 23..31) joined along x by a bar ``neck`` voxels square; 0 outside."""
    v = np.zeros(shape, np.int32)
    v[3:11, 4:12, 4:12] = gid
    v[23:31, 4:12, 4:12] = gid
    a = 8 - neck // 2
    v[11:23, a:a + neck, a:a + neck] = gid
    return v


def canonical(ids: np.ndarray) -> np.ndarray:
    """Ids renamed by the first voxel (scan order) of each: equal partitions give equal arrays."""
    flat = ids.ravel()
    _, first, inv = np.unique(flat, return_index=True, return_inverse=True)
    return first[inv].reshape(ids.shape)


def voronoi(shape, n, seed) -> np.ndarray:
    rng = np.random.default_rng(seed)
    pts = rng.uniform(0, 1, (n, 3)) * np.array(shape)
    grid = np.stack(np.meshgrid(*[np.arange(s) + 0.5 for s in shape], indexing="ij"), -1).reshape(-1, 3)
    return (cKDTree(pts).query(grid)[1] + 1).reshape(shape).astype(np.int32)


@pytest.mark.parametrize("neck", [1, 2, 3, 4])
def test_thin_neck_cuts_the_dumbbell_in_two(neck):
    v = dumbbell(neck)
    report = {}
    out = split_necks(v, report=report)
    assert report == {"grains_cut": 1, "grains_added": 1}
    left, right = out[7, 8, 8], out[27, 8, 8]
    assert left != right and {int(left), int(right)} == {7, 8}  # the first piece keeps the id, then max + 1
    assert (out[v == 0] == 0).all() and (out[v > 0] > 0).all()   # outside stays outside
    assert (out[3:11, 4:12, 4:12] == left).all() and (out[23:31, 4:12, 4:12] == right).all()
    bar = out[11:23][v[11:23] > 0]                                # the bar is shared at its middle
    assert abs(int((bar == left).sum()) - int((bar == right).sum())) <= 2 * neck * neck


def test_only_deep_cores_count():
    """A 5³ bud on a thin stalk is cut off with the default depth (its core is 2 voxels from the
    boundary) but not when cores must be 3 voxels deep."""
    v = dumbbell(2)
    v[23:31] = 0
    v[23:28, 6:11, 6:11] = 7
    assert split_necks(v).max() == 8
    np.testing.assert_array_equal(split_necks(v, deep_radius=3.0), v)


@pytest.mark.parametrize("neck", [5, 6, 8])
def test_thick_neck_is_not_a_neck(neck):
    v = dumbbell(neck)
    report = {}
    np.testing.assert_array_equal(split_necks(v, report=report), v)
    assert report["grains_cut"] == 0


def test_convex_grains_are_never_cut():
    """Spheres, boxes, a long thin ellipsoid and the cells of Voronoi tessellations (convex; the voxel
    grid pinches the cores of a few thin cells, which the wide-contact rule joins again): untouched."""
    x, y, z = np.meshgrid(*[np.arange(40)] * 3, indexing="ij")
    v = np.zeros((40, 40, 40), np.int32)
    v[((x - 10) ** 2 + (y - 10) ** 2 + (z - 10) ** 2) <= 36] = 1
    v[20:38, 2:8, 2:11] = 2
    v[((x - 20) / 18.0) ** 2 + ((y - 30) / 4.0) ** 2 + ((z - 30) / 4.0) ** 2 <= 1] = 3
    np.testing.assert_array_equal(split_necks(v), v)
    for seed in range(6):
        vor = voronoi((48, 48, 48), 100, seed=seed)
        np.testing.assert_array_equal(split_necks(vor), vor)


def test_tiles_give_the_untiled_partition_and_memmaps_work_in_place(tmp_path):
    """Dumbbells scattered in a Voronoi volume, cut in 16³ tiles (halo 32: every grain fits) and in
    place on a memmap: the same partition as the whole volume at once."""
    vol = voronoi((72, 48, 40), 80, seed=1)
    gid = int(vol.max()) + 1
    for i, (x, y, z) in enumerate([(0, 0, 0), (36, 20, 10), (38, 0, 24)]):
        d = dumbbell(2 + i % 3, gid=gid + i)
        sub = vol[x:x + 34, y:y + 16, z:z + 16]
        sub[d > 0] = d[d > 0]
    from gp_engine.grains import split_grains

    vol = split_grains(vol)  # each grain one connected region (Voronoi cells cut by the dumbbells)
    report = {}
    whole = split_necks(vol, report=report)
    assert report["grains_cut"] >= 3
    tiled = split_necks(vol, tile=16)
    np.testing.assert_array_equal(canonical(tiled), canonical(whole))
    mm = np.lib.format.open_memmap(tmp_path / "ids.npy", mode="w+", dtype=np.int32, shape=vol.shape)
    mm[...] = vol
    res = split_necks(mm, out=mm)   # a memmap is tiled by default
    assert res is mm
    np.testing.assert_array_equal(canonical(np.asarray(mm)), canonical(whole))


def test_periodic_faces_leave_touching_grains_whole():
    v = dumbbell(2, shape=(30, 16, 16))[4:]   # the left lobe touches x = 0
    assert split_necks(v, periodic=(False, False, False)).max() == 8
    np.testing.assert_array_equal(split_necks(v, periodic=(True, False, False)), v)


@pytest.mark.parametrize("kwargs, match", [
    ({"core_radius": 0.5}, "core_radius"),
    ({"deep_radius": 1.0}, "deep_radius"),
    ({"tile": 0}, "tile"),
    ({"neck_ratio": 0.0}, "neck_ratio"),
])
def test_bad_arguments_are_named(kwargs, match):
    with pytest.raises(GPEngineError, match=match):
        split_necks(dumbbell(2), **kwargs)


def test_float_ids_are_refused():
    with pytest.raises(GPEngineError, match="segment the field first"):
        split_necks(dumbbell(2).astype(np.float32))


def _ball(shape, centre, r):
    g = np.indices(shape).astype(float)
    return sum((g[i] - centre[i]) ** 2 for i in range(3)) <= r * r


def test_two_balls_on_a_thin_rod_in_a_matrix():
    """Two balls joined by a 2-voxel rod, inside a matrix grain: two grains; the matrix stays one."""
    shape = (48, 24, 24)
    ids = np.full(shape, 1, np.int32)
    dumb = _ball(shape, (12, 12, 12), 7) | _ball(shape, (36, 12, 12), 7)
    dumb[12:36, 11:13, 11:13] = True
    ids[dumb] = 2
    out = split_necks(ids)
    assert out[12, 12, 12] != out[36, 12, 12]
    matrix = np.unique(out[~dumb])
    assert matrix.size == 1 and matrix[0] not in np.unique(out[dumb])


def test_a_ball_and_two_broadly_fused_balls_stay_whole():
    shape = (40, 24, 24)
    for blob in (_ball(shape, (20, 12, 12), 8), _ball(shape, (16, 12, 12), 8) | _ball(shape, (24, 12, 12), 8)):
        ids = np.full(shape, 1, np.int32)
        ids[blob] = 2
        np.testing.assert_array_equal(split_necks(ids), ids)


def test_the_shipped_spparks_volume_is_left_almost_alone():
    """The shipped SPPARKS sample (100³, ~2,500 grains): at most 0.2 % of its grains are cut."""
    from pathlib import Path

    from gp_engine.grains import split_grains

    spins = np.load(Path(__file__).resolve().parents[1] / "gp_engine" / "data" / "potts_iso_100_seed1001.npz")["spins"]
    ids = split_grains(spins)
    report = {}
    split_necks(ids, report=report)
    assert report["grains_cut"] <= 0.002 * ids.max()

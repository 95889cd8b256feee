"""bench/segmentation_compare.py's neck split on analytic shapes (a benchmark method, tested like one:
two balls joined by a thin rod become two grains; one ball, two broadly fused balls and the matrix
around them stay whole; real SPPARKS grains are left alone)."""

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from segmentation_compare import split_necks  # noqa: E402


def _ball(shape, centre, r):
    g = np.indices(shape).astype(float)
    return sum((g[i] - centre[i]) ** 2 for i in range(3)) <= r * r


def test_two_balls_joined_by_a_thin_rod_are_split():
    shape = (48, 24, 24)
    ids = np.full(shape, 1, np.int32)  # the matrix around them: one more grain
    dumbbell = _ball(shape, (12, 12, 12), 7) | _ball(shape, (36, 12, 12), 7)
    dumbbell[12:36, 11:13, 11:13] = True  # a 2-voxel rod
    ids[dumbbell] = 2
    out = split_necks(ids)
    assert out[12, 12, 12] != out[36, 12, 12]  # the two lobes are two grains
    matrix = np.unique(out[~dumbbell])
    assert matrix.size == 1 and matrix[0] not in np.unique(out[dumbbell])  # the matrix stays one grain


def test_a_ball_and_two_broadly_fused_balls_stay_whole():
    shape = (40, 24, 24)
    for blob in (_ball(shape, (20, 12, 12), 8), _ball(shape, (16, 12, 12), 8) | _ball(shape, (24, 12, 12), 8)):
        ids = np.full(shape, 1, np.int32)
        ids[blob] = 2
        out = split_necks(ids)
        assert len(np.unique(out[blob])) == 1 and len(np.unique(out)) == 2


def test_spparks_grains_are_left_almost_alone():
    import cc3d

    spins = np.load(Path(__file__).resolve().parents[1] / "gp_engine" / "data" / "potts_iso_100_seed1001.npz")["spins"]
    ids = cc3d.connected_components(np.asarray(spins[:48, :48, :48], np.int64), connectivity=26)
    n = len(np.unique(ids))
    assert n <= len(np.unique(split_necks(ids))) <= 1.02 * n

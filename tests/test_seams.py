"""bench/seams.py: plane figures against direct counts, and the seam-window excess on hand-made volumes."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import seams  # noqa: E402


def test_plane_profile_counts_pairs_that_differ():
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 3, size=(5, 6, 7))
    for axis in range(3):
        n = ids.shape[axis]
        want = [np.count_nonzero(np.take(ids, i, axis) != np.take(ids, i + 1, axis)) / np.take(ids, i, axis).size
                for i in range(n - 1)]
        assert np.allclose(seams.plane_profile(ids, axis), want)
        assert np.allclose([seams.plane_figures(ids, axis, i)[0] for i in range(n - 1)], want)


def _slabs(n: int, boundaries: list[int]) -> np.ndarray:
    """An n³ volume of slabs along x: a grain boundary on each plane in ``boundaries`` (between slices i,
    i + 1), none on y or z planes."""
    ids = np.zeros((n, n, n), np.int32)
    for b in boundaries:
        ids[b + 1:] += 1
    return ids


def test_window_excess_by_hand():
    # x planes 0..22; boundaries on 5, 11, 12, 17; the seam is plane 11 with reach 3: window 8..14 holds
    # two boundaries. Far planes: x 3..7 and 15..19 (2 boundaries in 10) plus y and z planes 3..19
    # (17 each, none): base = 2 / 44.
    ids = _slabs(24, [5, 11, 12, 17])
    r = seams.plane_report(ids, lambda axis, i: axis == 0 and i == 11, reach=3)
    base = 2 / 44
    assert r["far_boundary_density"] == pytest.approx(base)
    assert r["seam_window_excess"] == pytest.approx(2 - 7 * base)
    assert r["seam_window_deviation"] == pytest.approx(2 * (1 - base) + 5 * base)
    assert r["seam_boundary_density"] == 1.0
    assert r["seam_planes"] == 1 and r["interior_planes"] == 3 * 23 - 1


def test_window_excess_ignores_box_faces_and_sees_a_dip_beside_a_spike():
    # flat 0.1 profile; the box's first and last planes dip to 0 (an edge effect, not a seam); around the
    # seam plane 10: a dip to 0 on 9 and a spike to 0.6 on 11
    p = np.full(20, 0.1)
    p[0] = p[-1] = 0.0
    p[9], p[11] = 0.0, 0.6
    r = seams.window_excess([p, np.full(20, 0.1), np.full(20, 0.1)], [[10], [], []], reach=2)
    assert r["far_boundary_density"] == pytest.approx(0.1)
    assert r["seam_window_excess"] == pytest.approx(0.5 - 0.1)
    assert r["seam_window_deviation"] == pytest.approx(0.5 + 0.1)


"""bench/colouring_probe.py: near misses of one colour, and the shape of the grains when they merge."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from colouring_probe import generated_near_misses, merge_near_misses, near_misses, shape_summary  # noqa: E402

from gp_engine.encoding import bit_codes  # noqa: E402


def _slab_pair(gap: int):
    """Grains 1 and 3 of colour 0 along x with a wall (grain 2, colour 1) ``gap`` voxels thick between."""
    ids = np.full((12, 5, 5), 2, np.int32)
    ids[:4] = 1
    ids[4 + gap:] = 3
    return ids, np.where(ids == 2, 1, 0)


@pytest.mark.parametrize("gap, merged", [(1, True), (2, True), (3, False)])
def test_grains_of_one_colour_merge_across_walls_up_to_two_voxels(gap, merged):
    ids, colour = _slab_pair(gap)
    out = merge_near_misses(ids, colour)
    assert (len(np.unique(out[ids != 2])) == 1) is merged
    assert near_misses(ids, colour)[0] == int(merged)
    # the wall keeps its own grain, and no voxel is left without one
    assert not np.isin(np.unique(out[ids == 2]), np.unique(out[ids != 2])).any()
    assert out.min() == 1


def test_different_colours_never_merge():
    ids, _ = _slab_pair(1)
    colour = np.array([0, 0, 1, 2])[ids]  # grains 1, 2, 3 coloured 0, 1, 2
    np.testing.assert_array_equal(np.unique(merge_near_misses(ids, colour), return_counts=True)[1],
                                  np.unique(ids, return_counts=True)[1])


def _ellipsoid(axes, n=40):
    """Grain 1: a voxelised solid ellipsoid of semi-axes ``axes``; id 0 (no grain) around it."""
    x, y, z = np.indices((n, n, n)) - (n - 1) / 2
    return ((x / axes[0]) ** 2 + (y / axes[1]) ** 2 + (z / axes[2]) ** 2 <= 1).astype(np.int32)


def test_shape_summary_measures_large_grains_and_needles_by_their_axes():
    # semi-axes 18, 8, 7 (about 4,200 voxels): a solid ellipsoid's b/a = 8/18, c/a = 7/18, a needle
    s = shape_summary([_ellipsoid((18, 8, 7))])
    assert s["grains"] == 1 and s["large"] == 1 and s["needles"] == 1
    assert abs(s["large_b_a"] - 8 / 18) < 0.01 and abs(s["large_c_a"] - 7 / 18) < 0.01
    # a sphere of radius 10 (about 4,200 voxels): large, round, no needle
    r = shape_summary([_ellipsoid((10, 10, 10))])
    assert r["large"] == 1 and r["needles"] == 0 and r["large_c_a"] > 0.97
    # semi-axes 12, 5, 4 (about 1,000 voxels): needle-shaped but under NEEDLE_MIN, so neither
    t = shape_summary([_ellipsoid((12, 5, 4))])
    assert t["large"] == 0 and t["needles"] == 0


def _field(code_of_voxel: np.ndarray, n_bits: int = 4) -> np.ndarray:
    """A raw analog-bits field [B, ...] that decodes to ``code_of_voxel`` (values ±0.7, as a model paints)."""
    return np.moveaxis(0.7 * bit_codes(n_bits)[code_of_voxel], -1, 0)


def test_a_models_own_near_misses_count_walls_and_touching_pieces_apart():
    # x: grain 1 (code 5) | wall grain 2 (code 9, one voxel) | grain 3 (code 5) | grain 4 (code 5, touching 3)
    # | grain 5 (code 2, three voxels) | grain 6 (code 5)
    ids = np.zeros((16, 4, 4), np.int32)
    for g, (a, b) in enumerate([(0, 4), (4, 5), (5, 8), (8, 10), (10, 13), (13, 16)], start=1):
        ids[a:b] = g
    code = np.array([0, 5, 9, 5, 5, 2, 5])[ids]
    code[1, 0, 0] = 7  # a stray voxel of another code inside grain 1: the grain keeps its most common code
    r = generated_near_misses(ids, _field(code))
    assert r["grains"] == 6
    assert r["touching"] == 1      # grains 3 and 4 touch with one code: one merge
    assert r["near_misses"] == 1   # grain 1 joins 3-4 across the one-voxel wall; 6 is three voxels away
    assert abs(r["near_miss_share"] - 1 / 6) < 1e-12
    with pytest.raises(ValueError, match="differ in shape"):
        generated_near_misses(ids, _field(code)[:, :8])

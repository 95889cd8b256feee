"""Encodings: paper per-block normalisation, DSatur colouring checked by brute force, determinism."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gp_engine.encoding import (
    DEFAULT_LEVELS,
    chromatic_number_dsatur,
    colour_grains,
    encoding_levels,
    grain_adjacency,
    paper_encode,
    separable_encode,
)
from gp_engine.errors import GPEngineError
from gp_engine.grains import split_grains

DATA = Path(__file__).resolve().parents[1] / "gp_engine" / "data"


@pytest.fixture(scope="module")
def crop_ids() -> np.ndarray:
    spins = np.load(DATA / "potts_iso_100_seed1001.npz")["spins"][:20, :20, :20]
    return split_grains(spins)


def brute_force_pairs(ids: np.ndarray) -> set[tuple[int, int]]:
    """Touching grain pairs by looping over every voxel and every one of its 26 neighbours."""
    pairs = set()
    nx, ny, nz = ids.shape
    for x in range(nx):
        for y in range(ny):
            for z in range(nz):
                a = ids[x, y, z]
                for dx in (-1, 0, 1):
                    for dy in (-1, 0, 1):
                        for dz in (-1, 0, 1):
                            u, v, w = x + dx, y + dy, z + dz
                            if 0 <= u < nx and 0 <= v < ny and 0 <= w < nz:
                                b = ids[u, v, w]
                                if a != b and a > 0 and b > 0:
                                    pairs.add((min(a, b), max(a, b)))
    return pairs


def test_split_grains_recurring_spins_and_mask():
    labels = np.ones((6, 3, 3), dtype=np.int16)
    labels[2:4] = 7  # a slab of spin 7 splits the spin-1 region in two
    ids = split_grains(labels)
    assert ids.dtype == np.int32 and ids.max() == 3
    assert len({ids[0, 0, 0], ids[2, 0, 0], ids[5, 0, 0]}) == 3
    diag = np.zeros((2, 2, 2), dtype=np.int32)
    diag[0, 0, 0] = diag[1, 1, 1] = 5  # corner contact: one grain with 26-, two with 6-connectivity
    assert (split_grains(diag)[0, 0, 0] == split_grains(diag)[1, 1, 1])
    assert split_grains(diag, connectivity=6).max() == 3  # two 5-grains + the 0 region
    mask = np.ones_like(labels, dtype=bool)
    mask[:, 0, :] = False
    masked = split_grains(labels, mask=mask)
    assert (masked[:, 0, :] == 0).all() and (masked[mask] > 0).all()


def test_adjacency_matches_brute_force(crop_ids):
    edges = grain_adjacency(crop_ids)
    assert set(map(tuple, edges.tolist())) == brute_force_pairs(crop_ids)


def test_no_touching_pair_shares_a_colour(crop_ids):
    k = chromatic_number_dsatur(crop_ids)
    colour, conflicts = colour_grains(crop_ids, k)
    assert conflicts == 0
    assert colour.dtype == np.int16 and colour.min() >= 0 and colour.max() < k
    per_grain = {}
    for g, c in zip(crop_ids.ravel(), colour.ravel()):
        assert per_grain.setdefault(g, c) == c  # one colour per grain
    for a, b in brute_force_pairs(crop_ids):
        assert per_grain[a] != per_grain[b]


def test_too_few_levels_counts_conflicts(crop_ids):
    k = chromatic_number_dsatur(crop_ids)
    colour, conflicts = colour_grains(crop_ids, 2)
    per_grain = dict(zip(crop_ids.ravel().tolist(), colour.ravel().tolist()))
    expected = sum(per_grain[a] == per_grain[b] for a, b in brute_force_pairs(crop_ids))
    assert k > 2 and conflicts == expected > 0
    assert colour.max() <= 1


def test_separable_encode_values_and_determinism(crop_ids):
    f1 = separable_encode(crop_ids, DEFAULT_LEVELS, np.random.default_rng(3))
    f2 = separable_encode(crop_ids, DEFAULT_LEVELS, np.random.default_rng(3))
    f3 = separable_encode(crop_ids, DEFAULT_LEVELS, np.random.default_rng(4))
    assert f1.dtype == np.float32 and f1.shape == crop_ids.shape
    np.testing.assert_array_equal(f1, f2)
    assert not np.array_equal(f1, f3)
    levels = encoding_levels(DEFAULT_LEVELS)
    assert f1.min() >= -1 and f1.max() <= 1
    assert np.isin(f1, levels.astype(np.float32)).all()
    # touching grains are at least one level spacing apart
    val = dict(zip(crop_ids.ravel().tolist(), f1.ravel().tolist()))
    gaps = [abs(val[a] - val[b]) for a, b in grain_adjacency(crop_ids).tolist()]
    assert min(gaps) >= 2 / (DEFAULT_LEVELS - 1) - 1e-6


def test_paper_encode_properties():
    rng = np.random.default_rng(0)
    block = rng.integers(1, 1001, size=(8, 8, 8))
    enc = paper_encode(block)
    assert enc.dtype == np.float32
    centred = block - block.mean()
    np.testing.assert_allclose(enc, centred / np.abs(centred).max(), rtol=1e-6, atol=1e-7)
    assert abs(np.abs(enc).max() - 1.0) < 1e-6
    assert abs(float(enc.astype(np.float64).mean())) < 1e-6
    np.testing.assert_array_equal(paper_encode(np.full((4, 4, 4), 9)), np.zeros((4, 4, 4), np.float32))


def test_levels_and_errors():
    np.testing.assert_allclose(encoding_levels(5), [-1, -0.5, 0, 0.5, 1])
    with pytest.raises(GPEngineError, match="n_levels"):
        encoding_levels(1)
    with pytest.raises(GPEngineError, match="integers"):
        colour_grains(np.zeros((2, 2, 2), np.float32), 4)


def _same_colour_pairs_within_one_voxel(ids: np.ndarray, colour: np.ndarray) -> int:
    """Grains that merge with another grain of their colour when each colour's voxels are dilated by one
    voxel (26-neighbourhood): pairs of same-coloured grains one voxel apart, counted by scipy."""
    from scipy import ndimage

    st = np.ones((3, 3, 3), bool)
    merged = 0
    for c in np.unique(colour):
        m = colour == c
        _, k = ndimage.label(ndimage.binary_dilation(m, st), st)
        merged += len(np.unique(ids[m])) - k
    return merged


def test_spread_colouring_uses_all_colours_and_keeps_same_colours_apart():
    """On a whole shipped SPPARKS volume DSatur's fewest-colours choice leaves most grains one voxel from a
    grain of their own colour (a thin wall the model must paint exactly); "spread" uses all 16 colours,
    still without a touching pair of one colour, and nearly no such near misses."""
    spins = np.load(DATA / "potts_iso_100_seed1001.npz")["spins"][:60, :60, :60]
    ids = split_grains(spins)
    pairs = grain_adjacency(ids)
    near = {}
    for mode in ("dsatur", "spread"):
        colour, conflicts = colour_grains(ids, 16, mode)
        per_grain = np.full(ids.max() + 1, -1)
        per_grain[ids.ravel()] = colour.ravel()
        assert conflicts == 0 and not np.any(per_grain[pairs[:, 0]] == per_grain[pairs[:, 1]])
        near[mode] = (len(np.unique(colour)), _same_colour_pairs_within_one_voxel(ids, colour))
    assert near["dsatur"][0] <= 9 and near["spread"][0] == 16
    assert near["spread"][1] * 10 < near["dsatur"][1], near


def test_spread_colouring_falls_back_like_dsatur_when_colours_run_out(crop_ids):
    k = chromatic_number_dsatur(crop_ids)
    colour, conflicts = colour_grains(crop_ids, 2, "spread")
    per_grain = dict(zip(crop_ids.ravel().tolist(), colour.ravel().tolist()))
    assert k > 2 and conflicts == sum(per_grain[a] == per_grain[b] for a, b in brute_force_pairs(crop_ids)) > 0
    with pytest.raises(GPEngineError, match="colouring 'random' is unknown"):
        colour_grains(crop_ids, 4, "random")

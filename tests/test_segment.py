"""Exact grid DBSCAN against sklearn, level segmentation against cc3d, tiled == untiled,
the deterministic noise fill against a plain numpy reference, and the CLI round trip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gp_engine.errors import GPEngineError
from gp_engine.segment import (DEFAULT_VALUE_SCALE, FILL_HALO, dbscan_grid, fill_noise,
                                resolve_levels, segment, snap_levels)

DATA = Path(__file__).resolve().parents[1] / "gp_engine" / "data"


def spparks_field(shape: tuple[int, int, int], colours: int = 7, sigma: float = 0.03,
                  seed: int = 0) -> np.ndarray:
    """A crop of the shipped SPPARKS volume encoded as (spin % colours) / colours + noise."""
    spins = np.load(DATA / "potts_iso_100_seed1001.npz")["spins"]
    crop = spins[tuple(slice(5, 5 + n) for n in shape)]
    rng = np.random.default_rng(seed)
    return ((crop % colours) / colours + rng.normal(0.0, sigma, crop.shape)).astype(np.float32)


def random_field(n: int, seed: int) -> np.ndarray:
    """Few distinct values in blobs plus noise: gives cores, borders and noise points."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 4, (n // 3 + 1,) * 3)
    blocks = np.kron(coarse, np.ones((3, 3, 3)))[:n, :n, :n] / 4
    return (blocks + rng.normal(0.0, 0.06, (n, n, n))).astype(np.float32)


def sklearn_dbscan(field: np.ndarray, eps: float, min_samples: int, scale: float):
    from sklearn.cluster import DBSCAN

    idx = np.indices(field.shape).reshape(3, -1).T.astype(np.float64)
    pts = np.c_[idx, scale * field.ravel().astype(np.float64)]
    db = DBSCAN(eps=eps, min_samples=min_samples).fit(pts)
    core = np.zeros(len(pts), dtype=bool)
    core[db.core_sample_indices_] = True
    return pts, db.labels_, core


def assert_same_partition(a: np.ndarray, b: np.ndarray) -> None:
    """a and b label the same sets (a bijection between ids), compared via a contingency map."""
    pairs = np.unique(np.c_[a.ravel(), b.ravel()], axis=0)
    assert len(pairs) == len(np.unique(a)) == len(np.unique(b))


def check_against_sklearn(field: np.ndarray, eps: float, min_samples: int, scale: float) -> None:
    labels, core = dbscan_grid(field, eps, min_samples, scale)
    pts, sk, sk_core = sklearn_dbscan(field, eps, min_samples, scale)
    ours, our_core = labels.ravel(), core.ravel()
    border = (ours > 0) & ~our_core
    # The case must exercise all three kinds of points, else it proves little.
    assert our_core.any() and border.any() and (ours == 0).any()
    np.testing.assert_array_equal(our_core, sk_core)
    np.testing.assert_array_equal(ours == 0, sk == -1)
    assert_same_partition(ours[our_core], sk[sk_core])
    assert ours.max() == len(np.unique(sk[sk_core]))
    # Border points: their cluster holds a core point within eps, and it is the within-eps
    # core neighbour with the smallest index (the documented, tile-independent rule).
    core_idx = np.nonzero(our_core)[0]
    for b in np.nonzero(border)[0]:
        d = np.sqrt(((pts[core_idx] - pts[b]) ** 2).sum(axis=1))
        near = core_idx[d <= eps]
        assert near.size and ours[b] == ours[near.min()]
    # Clusters are numbered in C order of their first core voxel.
    first = [np.nonzero(ours == k)[0][our_core[ours == k]].min() for k in range(1, ours.max() + 1)]
    assert np.all(np.diff(first) > 0)


@pytest.mark.parametrize("seed,eps,min_samples,scale", [
    (0, 1.9, 17, 8.0), (1, 1.5, 10, 8.0), (2, 1.42, 8, 10.0), (3, 1.99, 22, 6.0),
    (4, 1.75, 14, 7.0)])
def test_dbscan_matches_sklearn_random(seed, eps, min_samples, scale):
    check_against_sklearn(random_field(12, seed), eps, min_samples, scale)


@pytest.mark.parametrize("eps,min_samples", [(1.0, 3), (np.sqrt(2), 6), (np.sqrt(3), 7)])
def test_dbscan_matches_sklearn_on_exact_boundaries(eps, min_samples):
    """Integer values with scale 1 put many pairs exactly at distance eps (sklearn: <= eps)."""
    f = np.random.default_rng(0).integers(0, 3, (10, 10, 10)).astype(np.float32)
    check_against_sklearn(f, eps, min_samples, 1.0)


@pytest.mark.parametrize("min_samples,scale", [(15, 32.0), (20, 32.0), (10, 12.0)])
def test_dbscan_matches_sklearn_spparks(min_samples, scale):
    check_against_sklearn(spparks_field((20, 20, 20)), 1.9, min_samples, scale)


@pytest.mark.parametrize("shape", [(1, 1, 1), (1, 12, 13), (12, 1, 13), (13, 12, 1), (1, 1, 30)])
def test_thin_volumes(shape):
    """Slabs, rods and single voxels: stencil offsets alias there, so check against sklearn."""
    f = spparks_field((13, 13, 30), sigma=0.05)[tuple(slice(0, n) for n in shape)].copy()
    labels, core = dbscan_grid(f, 1.9, 4, 32.0)
    _, sk, sk_core = sklearn_dbscan(f, 1.9, 4, 32.0)
    np.testing.assert_array_equal(core.ravel(), sk_core)
    np.testing.assert_array_equal(labels.ravel() == 0, sk == -1)
    assert_same_partition(labels.ravel()[sk_core], sk[sk_core])
    for method in ("dbscan", "levels"):
        ref = segment(f, method=method, min_samples=4)
        assert ref.min() == 1
        for tile in (1, 3):
            np.testing.assert_array_equal(segment(f, method=method, min_samples=4, tile=tile), ref)


def test_dbscan_accepts_float64_and_non_contiguous():
    f = spparks_field((14, 16, 18))
    ref, ref_core = dbscan_grid(f, 1.9, 15, 32.0)
    lab, core = dbscan_grid(np.asfortranarray(f.astype(np.float64)), 1.9, 15, 32.0)
    np.testing.assert_array_equal(lab, ref)
    t, _ = dbscan_grid(f.transpose(2, 0, 1), 1.9, 15, 32.0)  # a strided view, copied inside
    t_ref, _ = dbscan_grid(np.ascontiguousarray(f.transpose(2, 0, 1)), 1.9, 15, 32.0)
    np.testing.assert_array_equal(t, t_ref)


@pytest.mark.parametrize("eps", [2.0, 2.5])
def test_eps_two_or_more_raises(eps):
    f = random_field(6, 0)
    with pytest.raises(GPEngineError, match="eps must be < 2"):
        dbscan_grid(f, eps, 5, 1.0)
    with pytest.raises(GPEngineError, match="eps must be < 2"):
        segment(f, eps=eps, tile=4)


@pytest.mark.parametrize("method,tile", [("dbscan", None), ("dbscan", 4), ("levels", None),
                                         ("levels", 4)])
def test_nan_raises(method, tile):
    f = random_field(9, 0)
    f[3, 4, 5] = np.nan
    with pytest.raises(GPEngineError, match="NaN"):
        segment(f, method=method, tile=tile)


def test_bad_arguments_raise():
    f = random_field(6, 0)
    with pytest.raises(GPEngineError, match="method"):
        segment(f, method="kmeans")
    with pytest.raises(GPEngineError, match="3D"):
        segment(f[0])
    with pytest.raises(GPEngineError, match="out must be an int32"):
        segment(f, out=np.zeros(f.shape, np.int64))
    with pytest.raises(GPEngineError, match="levels"):
        segment(f, method="levels", levels=[0.5])


# ----------------------------------------------------------------------------- noise fill


def fill_reference(labels: np.ndarray) -> np.ndarray:
    """Plain numpy Jacobi majority fill: the rule fill_noise documents, written the slow way."""
    cur = labels.astype(np.int64).copy()
    if not cur.any():
        return np.ones_like(cur)
    pad = np.pad(cur, 1)
    n = cur.shape
    while (cur == 0).any():
        nxt = cur.copy()
        for z, y, x in zip(*np.nonzero(cur == 0)):
            nb = pad[z:z + 3, y:y + 3, x:x + 3].ravel()
            nb = nb[nb > 0]
            if nb.size:
                vals, cnt = np.unique(nb, return_counts=True)
                nxt[z, y, x] = vals[np.argmax(cnt)]  # argmax: first max = smallest label
        cur = nxt
        pad = np.pad(cur, 1)
        assert cur.shape == n
    return cur


@pytest.mark.parametrize("zero_fraction", [0.3, 0.9])
def test_fill_noise_matches_reference(zero_fraction):
    rng = np.random.default_rng(7)
    lab = rng.integers(1, 5, (9, 10, 11)).astype(np.int32)
    lab[rng.random(lab.shape) < zero_fraction] = 0
    got = fill_noise(lab)
    assert got.dtype == np.int32 and (got > 0).all()
    np.testing.assert_array_equal(got, fill_reference(lab))
    np.testing.assert_array_equal(lab[lab > 0], got[lab > 0])  # labels never change


def test_fill_noise_rules():
    lab = np.zeros((3, 3, 3), np.int32)
    lab[0] = 2
    lab[2] = 1  # 9 neighbours of each label around the centre: tie -> smallest label
    lab[1] = 0
    got = fill_noise(lab)
    assert got[1, 1, 1] == 1
    assert (fill_noise(np.zeros((4, 5, 6), np.int32)) == 1).all()  # no label: one grain
    with pytest.raises(GPEngineError):
        fill_noise(-np.ones((2, 2, 2), np.int32))


def test_segment_leaves_no_zeros_and_compact_ids():
    f = spparks_field((24, 24, 24), sigma=0.05)
    labels, _ = dbscan_grid(f, 1.9, 20, 32.0)
    assert (labels == 0).mean() > 0.1  # plenty of noise to fill
    ids = segment(f, min_samples=20)
    assert ids.dtype == np.int32 and ids.min() == 1
    np.testing.assert_array_equal(np.unique(ids), np.arange(1, ids.max() + 1))
    np.testing.assert_array_equal(ids[labels > 0], labels[labels > 0])


# ----------------------------------------------------------------------------- levels


def test_levels_matches_cc3d_components():
    import cc3d

    f = spparks_field((22, 21, 20), sigma=0.05)
    lv = resolve_levels([k / 7 for k in range(7)])
    snapped = snap_levels(f, lv)
    ref = cc3d.connected_components(snapped.astype(np.int32) + 1, connectivity=26)
    ids1 = segment(f, method="levels", levels=lv, min_size=1)
    assert_same_partition(ids1, ref)
    # min_size: fragments below it are refilled; the big components are untouched.
    ids5 = segment(f, method="levels", levels=lv, min_size=5)
    sizes = np.bincount(ref.ravel())
    small = sizes[ref] < 5
    assert small.any() and (ids5 > 0).all()
    assert_same_partition(ids5[~small], ref[~small])
    assert ids5.max() == (sizes[1:] >= 5).sum()


def test_resolve_levels():
    np.testing.assert_allclose(resolve_levels(5), np.linspace(-1, 1, 5))
    np.testing.assert_allclose(resolve_levels([0.5, -0.5, 0.0]), [-0.5, 0.0, 0.5])
    with pytest.raises(GPEngineError):
        resolve_levels(1)
    with pytest.raises(GPEngineError):
        resolve_levels([0.0, 0.0])


# ----------------------------------------------------------------------------- tiled


@pytest.mark.parametrize("method,kw,hole", [
    ("dbscan", dict(min_samples=15), False),
    ("dbscan", dict(min_samples=18, eps=1.8), True),
    ("levels", dict(levels=[k / 7 for k in range(7)], min_size=6), False),
    ("dbscan", dict(min_samples=15, min_size=30), False),
])
def test_tiled_equals_untiled_memmap(tmp_path, method, kw, hole):
    f = spparks_field((29, 23, 26), sigma=0.05)
    if hole:  # a 14^3 block of pure noise: filling it takes more steps than the tile halo
        f[4:18, 5:19, 6:20] = np.random.default_rng(5).random((14, 14, 14)) * 10
    ref = segment(f, method=method, **kw)
    assert ref.max() > 10
    if hole:
        from scipy.ndimage import distance_transform_cdt

        pre, _ = dbscan_grid(f, kw["eps"], kw["min_samples"], DEFAULT_VALUE_SCALE)
        assert distance_transform_cdt(pre == 0, metric="chessboard").max() > FILL_HALO
    src = np.lib.format.open_memmap(tmp_path / "f.npy", mode="w+", dtype=np.float32,
                                    shape=f.shape)
    src[...] = f
    src.flush()
    field = np.load(tmp_path / "f.npy", mmap_mode="r")
    for tile in (5, 7, 10, 64):
        out = np.lib.format.open_memmap(tmp_path / f"o{tile}.npy", mode="w+", dtype=np.int32,
                                        shape=f.shape)
        got = segment(field, method=method, tile=tile, out=out, **kw)
        assert got is out
        out.flush()
        np.testing.assert_array_equal(np.load(tmp_path / f"o{tile}.npy"), ref)


def test_dbscan_min_size_keeps_exactly_the_big_clusters():
    """dbscan with min_size m: one grain per DBSCAN cluster of >= m voxels (sklearn reference), each
    grain containing its cluster's core; the smaller clusters and the noise are absorbed by the fill."""
    from sklearn.cluster import DBSCAN

    f = spparks_field((24, 22, 20), sigma=0.05)
    pts = np.argwhere(np.ones(f.shape, bool)).astype(np.float64)
    pts = np.column_stack([pts, DEFAULT_VALUE_SCALE * f.reshape(-1)])
    db = DBSCAN(eps=1.9, min_samples=15).fit(pts)
    ref = db.labels_.reshape(f.shape)
    core = np.zeros(f.size, bool)
    core[db.core_sample_indices_] = True
    core = core.reshape(f.shape)
    sizes = np.bincount(ref[ref >= 0].ravel())
    big = np.nonzero(sizes >= 30)[0]
    assert 5 < big.size < sizes.size  # the case has both kinds
    got = segment(f, "dbscan", min_size=30)
    assert got.max() == big.size
    for c in big:  # border voxels may join another reachable cluster (module doc): compare cores
        assert len(np.unique(got[(ref == c) & core])) == 1


def test_tiled_all_noise_is_one_grain():
    f = np.random.default_rng(3).random((10, 11, 12)).astype(np.float32)
    ref = segment(f, min_samples=27, value_scale=100.0)
    assert (ref == 1).all()
    np.testing.assert_array_equal(segment(f, min_samples=27, value_scale=100.0, tile=4), ref)


# ----------------------------------------------------------------------------- CLI


@pytest.mark.parametrize("tile", [None, 6])
def test_cli_round_trip(tmp_path, capsys, tile):
    from gp_engine.cli import main

    f = spparks_field((16, 15, 14))
    np.save(tmp_path / "field.npy", f)
    argv = ["segment", str(tmp_path / "field.npy"), str(tmp_path / "ids.npy"),
            "--eps", "1.9", "--min-samples", "15", "--value-scale", "32"]
    if tile:
        argv += ["--tile", str(tile)]
    assert main(argv) == 0
    got = np.load(tmp_path / "ids.npy")
    np.testing.assert_array_equal(got, segment(f))
    assert f"{got.max()} grains" in capsys.readouterr().out
    assert not list(tmp_path.glob(".*tmp*"))  # no temporary left behind

    argv = ["segment", str(tmp_path / "field.npy"), str(tmp_path / "lv.npy"), "--method",
            "levels", "--levels", "0,0.142857,0.285714,0.428571,0.571429,0.714286,0.857143"]
    assert main(argv) == 0
    lv = np.load(tmp_path / "lv.npy")
    np.testing.assert_array_equal(lv, segment(f, method="levels", levels=[k / 7 for k in range(7)]))


@pytest.mark.parametrize("tile", [None, 12])
def test_cli_split_necks(tmp_path, tile):
    """--split-necks: the segmentation, then gp_engine.necks (in RAM or in tiles on memmaps)."""
    from gp_engine.cli import main
    from gp_engine.necks import split_necks

    ids = np.zeros((34, 16, 16), np.int32)       # a dumbbell (two 8³ lobes, a 2×2 neck) in another grain
    ids[3:11, 4:12, 4:12] = 1
    ids[23:31, 4:12, 4:12] = 1
    ids[11:23, 7:9, 7:9] = 1
    np.save(tmp_path / "field.npy", np.where(ids == 1, 0.8, -0.8).astype(np.float32))
    argv = ["segment", str(tmp_path / "field.npy"), str(tmp_path / "ids.npy"), "--method", "levels",
            "--levels", "2", "--split-necks"] + (["--tile", str(tile)] if tile else [])
    assert main(argv) == 0
    got = np.load(tmp_path / "ids.npy")
    plain = segment(np.load(tmp_path / "field.npy"), method="levels", levels=2)
    assert plain.max() == 2 and got.max() == 3
    np.testing.assert_array_equal(got, split_necks(plain))


def test_cli_errors_exit_2(tmp_path, capsys):
    from gp_engine.cli import main

    np.save(tmp_path / "field.npy", random_field(6, 0))
    assert main(["segment", str(tmp_path / "field.npy"), str(tmp_path / "o.npy"),
                 "--eps", "2.5"]) == 2
    assert "eps must be < 2" in capsys.readouterr().err
    assert main(["segment", str(tmp_path / "missing.npy"), str(tmp_path / "o.npy")]) == 2

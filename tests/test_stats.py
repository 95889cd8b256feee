"""Grain statistics on analytic shapes, KL against closed forms, and the `gp-engine stats` command."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from gp_engine.cli import main
from gp_engine.errors import GPEngineError
from gp_engine.stats import grain_stats, kl_divergences, kl_kde, summarize

DATA = Path(__file__).resolve().parents[1] / "gp_engine" / "data"


def gauss_kl(mu1, cov1, mu2, cov2) -> float:
    """Closed-form KL(N1 ‖ N2)."""
    mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
    cov1, cov2 = np.atleast_2d(cov1), np.atleast_2d(cov2)
    inv2 = np.linalg.inv(cov2)
    d = mu2 - mu1
    k = mu1.size
    return 0.5 * (np.trace(inv2 @ cov1) + d @ inv2 @ d - k + np.log(np.linalg.det(cov2) / np.linalg.det(cov1)))


def test_box_grain_aspect_ratios():
    # A box of a×b×c voxels: per-axis variance (n² - 1)/12, so b/a = sqrt((nb² - 1)/(na² - 1)).
    vol = np.full((30, 20, 16), 2, dtype=np.int32)
    vol[2:22, 3:13, 4:8] = 1  # 20 × 10 × 4 box
    s = grain_stats(vol)
    i = int(np.flatnonzero(s["grain_id"] == 1)[0])
    assert s["volume"][i] == 20 * 10 * 4
    np.testing.assert_allclose(s["b_a"][i], np.sqrt((10**2 - 1) / (20**2 - 1)), rtol=1e-9)
    np.testing.assert_allclose(s["c_a"][i], np.sqrt((4**2 - 1) / (20**2 - 1)), rtol=1e-9)
    np.testing.assert_allclose(s["centroid"][i], [11.5, 7.5, 5.5])
    # the SVD definition agrees on the surrounding (non-convex) grain
    j = int(np.flatnonzero(s["grain_id"] == 2)[0])
    pts = np.argwhere(vol == 2).astype(float)
    sv = np.linalg.svd(pts - pts.mean(0), compute_uv=False)
    np.testing.assert_allclose([s["b_a"][j], s["c_a"][j]], [sv[1] / sv[0], sv[2] / sv[0]], rtol=1e-9)


def test_centroid_distances_and_single_voxel():
    vol = np.zeros((20, 10, 10), dtype=np.int32)
    vol[0:4, 0:4, 0:4] = 1  # centroid (1.5, 1.5, 1.5)
    vol[10:14, 0:4, 0:4] = 2  # centroid (11.5, 1.5, 1.5): 10 apart
    vol[19, 9, 9] = 3  # single voxel: no aspect
    s = grain_stats(vol)
    by_id = {g: k for k, g in enumerate(s["grain_id"])}
    assert set(by_id) == {1, 2, 3}  # 0 = outside, ignored
    np.testing.assert_allclose(s["nn_dist"][by_id[1]], 10.0)
    np.testing.assert_allclose(s["nn_dist"][by_id[3]], np.linalg.norm([19 - 11.5, 9 - 1.5, 9 - 1.5]))
    assert np.isnan(s["b_a"][by_id[3]]) and np.isnan(s["c_a"][by_id[3]])
    np.testing.assert_allclose(s["b_a"][by_id[1]], 1.0)


def test_kl_1d_gaussians_match_closed_form():
    rng = np.random.default_rng(0)
    p = rng.normal(0.0, 1.0, 5000)
    q = rng.normal(1.0, 1.5, 5000)
    exact = gauss_kl(0.0, 1.0, 1.0, 2.25)
    assert kl_kde(p, q) == pytest.approx(exact, rel=0.1)
    assert kl_kde(p, rng.normal(0.0, 1.0, 5000)) < 0.01  # same distribution, other draw
    assert kl_kde(p, p) == pytest.approx(0.0, abs=1e-9)
    assert kl_kde(p, p + 0.5) > 0.08


@pytest.mark.parametrize("dim", [1, 2])
def test_binned_kde_matches_scipy_gaussian_kde(dim):
    rng = np.random.default_rng(5)
    if dim == 1:
        p, q = rng.gamma(2.0, 300.0, 1500), rng.gamma(2.2, 280.0, 1500)  # grain-volume-like, skewed
    else:
        p = rng.beta([8, 4], [2, 4], size=(1500, 2))
        q = rng.beta([7, 4], [2, 3], size=(1500, 2))
    npts = 512 if dim == 1 else 64
    exact = kl_kde(p, q, npts=npts, exact=True)
    assert kl_kde(p, q, npts=npts) == pytest.approx(exact, rel=0.03)


def test_kl_2d_gaussians_match_closed_form():
    rng = np.random.default_rng(1)
    c1 = np.array([[1.0, 0.3], [0.3, 0.5]])
    c2 = np.array([[1.5, -0.2], [-0.2, 0.8]])
    p = rng.multivariate_normal([0, 0], c1, 3000)
    q = rng.multivariate_normal([0.5, -0.3], c2, 3000)
    assert kl_kde(p, q) == pytest.approx(gauss_kl([0, 0], c1, [0.5, -0.3], c2), rel=0.15)
    assert kl_kde(p, p) == pytest.approx(0.0, abs=1e-9)


def test_summarize_splits_and_compares():
    spins = np.load(DATA / "potts_iso_100_seed1001.npz")["spins"][:50, :50, :50]
    other = np.load(DATA / "potts_iso_100_seed1019.npz")["spins"][:50, :50, :50]
    out = summarize([spins], [other])
    assert out["grains"] > 100 and out["grains"] > len(np.unique(spins))  # recurring spins were split
    assert out["mean_volume"] == pytest.approx(spins.size / out["grains"])
    for k in ("kl_volume", "kl_aspect", "kl_centroid"):
        assert 0 < out[k] < 0.5
    same = summarize([spins], [spins])
    assert all(abs(same[k]) < 1e-9 for k in ("kl_volume", "kl_aspect", "kl_centroid"))
    json.dumps(out)
    assert "kl_volume" not in summarize([spins])


def test_kl_needs_spread():
    one = {"volume": np.array([5.0]), "b_a": np.array([0.5]), "c_a": np.array([0.2]), "nn_dist": np.array([3.0])}
    with pytest.raises(GPEngineError, match="grain"):
        kl_divergences(one, one)


def test_cli_stats(tmp_path, capsys):
    a = np.load(DATA / "potts_iso_100_seed1001.npz")["spins"][:40, :40, :40]
    b = np.load(DATA / "potts_iso_100_seed1019.npz")["spins"][:40, :40, :40]
    np.save(tmp_path / "a.npy", a)
    np.save(tmp_path / "b.npy", b)
    out_json = tmp_path / "s.json"
    rc = main(["stats", str(tmp_path / "a.npy"), "--reference", str(tmp_path / "b.npy"),
               "--json", str(out_json), "--plots", str(tmp_path / "plots")])
    assert rc == 0
    res = json.loads(out_json.read_text())
    for k in ("grains", "mean_volume", "kl_volume", "kl_aspect", "kl_centroid"):
        assert k in res
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["aspect.png", "centroid_distance.png", "volume.png"]
    assert "kl_volume" in capsys.readouterr().out
    assert main(["stats", str(tmp_path / "missing.npy")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_zero_is_outside_by_default():
    vol = np.zeros((12, 12, 12), dtype=np.int32)
    vol[1:5, 1:5, 1:5] = 3
    vol[6:10, 6:10, 6:10] = 3  # same label, two grains
    vol[6:10, 1:5, 1:5] = 4
    assert summarize([vol])["grains"] == 3
    assert summarize([vol], zero_is_outside=False)["grains"] == 4
    assert summarize([vol], split=False)["grains"] == 2  # ids taken as given: label 3 is one "grain"

"""RePaint schedule as data, respacing, counter-based noise and the CPU sampler (analytic checks)."""

from types import SimpleNamespace

import numpy as np
import pytest

from gp_engine import mixing, noise, repaint
from gp_engine.diffusion import linear_schedule
from gp_engine.errors import GPEngineError


def walk_ok(tr: np.ndarray, steps: int) -> bool:
    return (tr[0, 0] == steps - 1 and tr[-1, 0] == 0 and tr[-1, 1] == -1
            and np.all(np.abs(tr[:, 1] - tr[:, 0]) == 1) and np.all(tr[1:, 0] == tr[:-1, 1]))


@pytest.mark.parametrize("steps,r,jump,tail", [
    (250, 10, 1, 25),   # paper
    (250, 0, 1, 0),     # plain DDPM
    (50, 4, 1, 5),      # a fast preset
    (25, 3, 2, 4),      # jumps of 2
    (100, 9, 10, 0),    # RePaint's own jump-10 style
    (5, 1, 1, 1),
])
def test_schedule_valid_and_count_matches(steps, r, jump, tail):
    tr = repaint.build_schedule(steps, r, jump, tail, T=250)
    assert walk_ok(tr, steps)
    reverse = int(np.sum(tr[:, 1] < tr[:, 0]))
    forward = int(np.sum(tr[:, 1] > tr[:, 0]))
    assert reverse == repaint.count_evaluations(steps, r, jump, tail, T=250)
    assert reverse - forward == steps  # net descent from steps-1 to -1
    # no resampling inside the tail: once below `tail`, the walk only descends
    below = np.nonzero(tr[:, 0] < tail)[0]
    if len(below):
        assert np.all(tr[below[0]:, 1] < tr[below[0]:, 0])


def test_paper_preset_count():
    # (T-26)(1+r)+26 with T = 250, r = 10 (NOTES "RePaint as used")
    assert repaint.count_evaluations(250, 10, 1, 25) == (250 - 26) * 11 + 26 == 2490


def test_paper_walk_shape():
    tr = repaint.build_schedule(250, 10, 1, 25)
    # first moves: 249->248, then 10x (248->249, 249->248), then 248->247
    assert tr[0].tolist() == [249, 248]
    assert tr[1:21].tolist() == [[248, 249], [249, 248]] * 10
    assert tr[21].tolist() == [248, 247]


@pytest.mark.parametrize("bad", [dict(steps=1, resample=0), dict(steps=300, resample=0),
                                 dict(steps=10, resample=-1), dict(steps=10, resample=1, jump=0),
                                 dict(steps=10, resample=1, tail=11)])
def test_bad_params_raise(bad):
    args = dict(jump=1, tail=0) | bad
    with pytest.raises(GPEngineError):
        repaint.build_schedule(args["steps"], args["resample"], args["jump"], args["tail"], T=250)


def test_validate_rejects_broken_walks():
    good = repaint.build_schedule(10, 2, 1, 2)
    for broken in (good[1:], good[:-1], np.vstack([good[:3], [[9, 7]], good[3:]])):
        with pytest.raises(GPEngineError):
            repaint.validate_schedule(broken, 10)


def test_respacing_keeps_marginals():
    s = linear_schedule(250)
    full = repaint.respace(s, 250)
    np.testing.assert_allclose(full.betas, s.betas, rtol=1e-10)
    rs = repaint.respace(s, 50)
    assert rs.timesteps[0] == 0 and rs.timesteps[-1] == 249 and len(rs.timesteps) == 50
    np.testing.assert_allclose(rs.alphas_cumprod, s.alphas_cumprod[rs.timesteps])
    np.testing.assert_allclose(np.cumprod(1 - rs.betas), rs.alphas_cumprod, rtol=1e-12)
    assert np.all((rs.betas > 0) & (rs.betas < 1))
    c = rs.coefficients()
    assert c["sigma"][0] == 0.0 and abs(c["c_x0"][0] - 1.0) < 1e-12 and abs(c["c_xt"][0]) < 1e-12


def test_counter_noise_is_standard_normal_and_keyed():
    out = np.empty((3, 32768), np.float32)
    noise.fill_normal(out, np.array([0, 1, 2]), seed=5, counter=7, stream=1)
    flat = out.ravel()
    assert abs(flat.mean()) < 0.02 and abs(flat.std() - 1) < 0.02
    kurt = np.mean(flat ** 4) / flat.var() ** 2
    assert abs(kurt - 3) < 0.1
    assert abs(np.corrcoef(out[0], out[1])[0, 1]) < 0.03          # blocks independent
    assert abs(np.corrcoef(flat[:-1], flat[1:])[0, 1]) < 0.02     # voxels independent
    again = np.empty((1, 32768), np.float32)
    noise.fill_normal(again, np.array([1]), seed=5, counter=7, stream=1)
    np.testing.assert_array_equal(again[0], out[1])                  # pure function of keys
    noise.fill_normal(again, np.array([1]), seed=5, counter=8, stream=1)
    assert abs(np.corrcoef(again[0], out[1])[0, 1]) < 0.03           # next step differs


class GaussianOracle:
    """Exact ε-prediction for data x0 ~ N(mu, s²) i.i.d. per voxel (the analytic score)."""

    def __init__(self, schedule, mu, s, batch_size=1):
        self.ab = schedule.alphas_cumprod
        self.mu, self.s, self.batch_size, self.name = mu, s, batch_size, "gaussian-oracle"

    def predict_eps(self, x, t):
        ab = self.ab[np.asarray(t).astype(int)].reshape(-1, 1, 1, 1, 1)
        return (np.sqrt(1 - ab) * (x - np.sqrt(ab) * self.mu) / (ab * self.s**2 + 1 - ab)).astype(np.float32)


@pytest.mark.parametrize("steps,r,tail,std_tol", [(250, 0, 0, 0.015), (100, 2, 10, 0.025)])
def test_sampler_reproduces_gaussian_data_and_keeps_known(steps, r, tail, std_tol):
    """With the exact score of Gaussian data the sampler must return N(mu, s²) in the unknown voxels.

    The "fixed small" posterior variance under-disperses slightly when few steps are used
    (measured std 0.43 at 20 steps, 0.49 at 250 for s = 0.5), hence the step-dependent tolerance.
    """
    sched = linear_schedule(250)
    mu, s = 0.3, 0.5
    eng = GaussianOracle(sched, mu, s, batch_size=2)
    setup = repaint.make_setup(sched, SimpleNamespace(steps=steps, resample=r, jump=1, tail=tail))
    rng = np.random.default_rng(0)
    x0 = rng.uniform(-1, 1, (2, 1, 16, 32, 16)).astype(np.float32)  # any block shape works here
    mask = np.zeros(x0.shape, np.uint8)
    mask[:, :, :6] = 1
    x = repaint.sample_batch(eng, x0, mask, np.array([0, 1]), 3, setup)
    m = mask.astype(bool)
    np.testing.assert_array_equal(x[m], x0[m])   # known voxels exactly x0
    free = x[~m]
    assert abs(free.mean() - mu) < 0.02, free.mean()
    assert abs(free.std() - s) < std_tol, free.std()


class LinearFake:
    """A fake network: ε = 0.1·x (batch-independent, deterministic)."""

    def __init__(self, batch_size, nan_block_row=None):
        self.batch_size, self.name, self.nan_row = batch_size, "fake", nan_block_row

    def predict_eps(self, x, t):
        out = 0.1 * x
        if self.nan_row is not None:
            out[self.nan_row, 0, 3, 3, 3] = np.nan
        return out


def test_batch_size_does_not_change_results():
    setup = repaint.make_setup(linear_schedule(250), SimpleNamespace(steps=8, resample=2, jump=1, tail=2))
    rng = np.random.default_rng(1)
    x0 = rng.uniform(-1, 1, (4, 1, 32, 32, 32)).astype(np.float32)
    mask = (rng.uniform(size=x0.shape) < 0.3).astype(np.uint8)
    ids = np.array([5, 6, 7, 8])
    together = repaint.sample_batch(LinearFake(4), x0, mask, ids, 9, setup)
    alone = np.concatenate([repaint.sample_batch(LinearFake(1), x0[i:i + 1], mask[i:i + 1],
                                                 ids[i:i + 1], 9, setup) for i in range(4)])
    np.testing.assert_array_equal(together, alone)
    padded = repaint.sample_batch(LinearFake(8), x0[:3], mask[:3], ids[:3], 9, setup)
    np.testing.assert_array_equal(padded, together[:3])
    other_seed = repaint.sample_batch(LinearFake(4), x0, mask, ids, 10, setup)
    assert not np.allclose(other_seed, together)


def test_nan_output_names_the_block():
    setup = repaint.make_setup(linear_schedule(250), SimpleNamespace(steps=4, resample=0, jump=1, tail=0))
    x0 = np.zeros((2, 1, 32, 32, 32), np.float32)
    with pytest.raises(GPEngineError, match=r"block\(s\) \[42\].*backend"):
        repaint.sample_batch(LinearFake(2, nan_block_row=1), x0, np.zeros_like(x0, np.uint8),
                             np.array([41, 42]), 0, setup)


def test_mid_range_shift():
    x = np.array([[-0.2, 0.6], [0.1, 0.4]], np.float32)
    y = repaint.shift_mid_range(x)
    assert y.min() == pytest.approx(-y.max())


def test_posterior_and_renoise_skip_known_voxels_without_changing_the_others():
    """The sampler passes the known mask as ``skip``: those voxels are left alone (the next mix or
    the final paste overwrites them) and every other voxel gets exactly the value it gets without it."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(3, 4096)).astype(np.float32)
    eps = rng.normal(size=(3, 4096)).astype(np.float32)
    z = rng.normal(size=(3, 4096)).astype(np.float32)
    skip = (rng.random((3, 4096)) < 0.5).astype(np.uint8)
    a, b = x.copy(), x.copy()
    mixing.posterior_step(a, eps, 0.6, 0.8, 0.3, 0.7, 0.2, True, z)
    mixing.posterior_step(b, eps, 0.6, 0.8, 0.3, 0.7, 0.2, True, z, skip=skip)
    keep = skip.astype(bool)
    np.testing.assert_array_equal(b[~keep], a[~keep])
    np.testing.assert_array_equal(b[keep], x[keep])
    # the arithmetic itself, written out here: x̂0 = clip((x - 0.8 ε) / 0.6), y = 0.3 x̂0 + 0.7 x + 0.2 z
    x0 = np.clip((x.astype(np.float64) - 0.8 * eps) / 0.6, -1, 1)
    np.testing.assert_allclose(a, 0.3 * x0 + 0.7 * x + 0.2 * z, rtol=1e-6, atol=1e-6)
    a, b = x.copy(), x.copy()
    mixing.renoise(a, 0.9, 0.4, z)
    mixing.renoise(b, 0.9, 0.4, z, skip=skip)
    np.testing.assert_array_equal(b[~keep], a[~keep])
    np.testing.assert_array_equal(b[keep], x[keep])
    np.testing.assert_allclose(a, 0.9 * x + 0.4 * z, rtol=1e-6, atol=1e-6)


def test_noise_integers_are_identical_in_numpy_numba_and_torch():
    """One noise definition, three implementations: the hashes agree bit for bit."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(11)
    pairs = rng.integers(0, 2**20, 5000).astype(np.uint64)
    for seed, block, counter, stream in ((0, 0, 0, 0), (7, 123456, 2489, 2), (2**32 - 1, 2**31 + 5, 0xFFFFFF, 1)):
        k1, k2 = noise.row_keys(np.array([block]), seed, counter, stream)
        ref = noise.pair_hashes_np(pairs, int(k1[0]), int(k2[0]))
        nb = noise.pair_hashes_numba(pairs, int(k1[0]), int(k2[0]))
        tk1, tk2 = noise.row_keys_torch(torch.tensor([noise.seed_key(seed)]), torch.tensor([block]),
                                        torch.tensor([counter]), stream)
        assert (int(tk1), int(tk2)) == (int(k1[0]), int(k2[0]))
        th = noise.pair_hashes_torch(torch.from_numpy(pairs.astype(np.int64)), tk1[0], tk2[0])
        for r, n_, t_ in zip(ref, nb, th):
            np.testing.assert_array_equal(n_, r)
            np.testing.assert_array_equal(t_.numpy().astype(np.uint64), r)
    # and the normals agree to float32 rounding
    out = np.empty((2, 4096), np.float32)
    noise.fill_normal(out, np.array([3, 4]), 9, 5, 2)
    k1, k2 = noise.row_keys_torch(torch.tensor([noise.seed_key(9)]), torch.tensor([3, 4]), torch.tensor([5]), 2)
    tz = noise.counter_normal_torch(k1, k2, torch.arange(2048)).numpy()
    np.testing.assert_allclose(tz, out, rtol=1e-5, atol=1e-5)


def test_fill_normal_where_computes_only_the_needed_pairs():
    base = np.empty((2, 4096), np.float32)
    noise.fill_normal(base, np.array([1, 2]), 3, 4, 1)
    where = np.zeros((2, 4096), np.uint8)
    where[:, 100:300] = 1
    out = np.full((2, 4096), 7.0, np.float32)
    noise.fill_normal(out, np.array([1, 2]), 3, 4, 1, where)
    np.testing.assert_array_equal(out[:, 100:300], base[:, 100:300])
    assert np.all(out[:, :100] == 7.0) and np.all(out[:, 300:] == 7.0)


def test_sampler_noise_is_injectable():
    """A recording noise sampler: the walk asks for the initial noise once, the mix noise only where
    voxels are known and the step noise only where they are not, one call per transition."""
    calls = []

    def zeros(out, ids, seed, counter, stream, where=None):
        calls.append((counter, stream, None if where is None else where.copy()))
        out[...] = 0.0

    setup = repaint.make_setup(linear_schedule(250), SimpleNamespace(steps=6, resample=1, jump=1, tail=2))
    x0 = np.ones((2, 1, 32, 32, 32), np.float32)
    mask = np.zeros_like(x0, np.uint8)
    mask[:, :, :10] = 1
    eng = GaussianOracle(linear_schedule(250), 0.0, 1.0, batch_size=2)
    repaint.sample_batch(eng, x0, mask, np.array([0, 1]), 0, setup, noise=zeros)
    assert calls[0][:2] == (repaint.INIT_COUNTER, repaint.STREAM_INIT) and calls[0][2] is None
    m = mask.reshape(2, -1)
    for counter, stream, where in calls[1:]:
        want = m if stream == repaint.STREAM_MIX else 1 - m
        np.testing.assert_array_equal(where, want)
    n_rev = setup.evaluations
    assert sum(1 for c in calls if c[1] == repaint.STREAM_MIX) == n_rev
    # step noise: every reverse step but the last (σ = 0 at i = 0), plus every forward step
    assert sum(1 for c in calls if c[1] == repaint.STREAM_STEP) == n_rev - 1 + (len(setup.transitions) - n_rev)


def test_sharpened_x0_projection():
    """sharpen κ > 0: x̂0 ← tanh(κ·x̂0) in place of the clip (written out here), in both samplers."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=(2, 4096)).astype(np.float32)
    eps = rng.normal(size=(2, 4096)).astype(np.float32)
    z = rng.normal(size=(2, 4096)).astype(np.float32)
    a = x.copy()
    mixing.posterior_step(a, eps, 0.6, 0.8, 0.3, 0.7, 0.2, True, z, sharpen=4.0)
    x0 = np.tanh(4.0 * (x.astype(np.float64) - 0.8 * eps) / 0.6)
    np.testing.assert_allclose(a, 0.3 * x0 + 0.7 * x + 0.2 * z, rtol=1e-6, atol=1e-6)
    with pytest.raises(GPEngineError, match="sharpen"):
        repaint.make_setup(linear_schedule(250), SimpleNamespace(steps=4, resample=0, jump=1, tail=0, sharpen=-1))


def test_torch_sampler_sharpens_like_the_cpu_sampler():
    torch = pytest.importorskip("torch")
    from gp_engine.runtime.torch_backend import TorchEngine

    class Net(torch.nn.Module):
        def forward(self, x, t):
            return 0.3 * torch.tanh(x) + 0.001 * t.reshape(-1, 1, 1, 1, 1)

    class CpuNet:
        batch_size, name = 2, "cpu-net"

        def predict_eps(self, x, t):
            return (0.3 * np.tanh(x) + 0.001 * t.reshape(-1, 1, 1, 1, 1)).astype(np.float32)

    setup = repaint.make_setup(linear_schedule(250), SimpleNamespace(steps=5, resample=1, jump=1, tail=1, sharpen=4.0))
    rng = np.random.default_rng(0)
    x0 = np.sign(rng.normal(size=(2, 1, 32, 32, 32))).astype(np.float32)
    mask = np.zeros_like(x0, np.uint8)
    mask[:, :, :12] = 1
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        dev = TorchEngine(Net(), batch_size=2, device="cpu").sample_batch(x0, mask, np.array([1, 2]), 3, setup)
    finally:
        torch.set_num_threads(n)
    cpu = repaint.sample_batch(CpuNet(), x0, mask, np.array([1, 2]), 3, setup)
    np.testing.assert_allclose(dev, cpu, atol=2e-4)
    assert np.median(np.abs(cpu[mask == 0])) > 0.9  # the sharpened walk lands near ±1

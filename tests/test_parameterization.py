"""Prediction targets (ε, x₀, v) and loss weighting: analytic identities, training on a toy
distribution, and the round trip through build (ONNX outputs ε) and the CPU sampler."""


import numpy as np
import pytest
import torch
from conftest import write_crops

from gp_engine.checkpoint import load_checkpoint, load_model
from gp_engine.diffusion import linear_schedule
from gp_engine.errors import GPEngineError
from gp_engine.parameterization import (TARGETS, EpsAdapter, loss_weight, to_eps, to_x0,
                                        training_target)
from gp_engine.train import TrainOptions, diffusion_loss, train



def _state(seed=0, n=6):
    g = torch.Generator().manual_seed(seed)
    ab = torch.tensor(linear_schedule(250).alphas_cumprod, dtype=torch.float64)
    t = torch.randint(0, 250, (n,), generator=g)
    a, s = ab[t].sqrt(), (1 - ab[t]).sqrt()
    x0 = torch.rand(n, 1, 4, 4, 4, generator=g, dtype=torch.float64) * 2 - 1
    eps = torch.randn(n, 1, 4, 4, 4, generator=g, dtype=torch.float64)
    xt = a.view(-1, 1, 1, 1, 1) * x0 + s.view(-1, 1, 1, 1, 1) * eps
    return x0, eps, xt, a, s


@pytest.mark.parametrize("target", TARGETS)
def test_exact_target_gives_back_eps_and_x0(target):
    x0, eps, xt, a, s = _state()
    want = training_target(target, x0, eps, a, s)
    torch.testing.assert_close(to_eps(target, want, xt, a, s), eps, rtol=0, atol=1e-9)
    torch.testing.assert_close(to_x0(target, want, xt, a, s), x0, rtol=0, atol=1e-9)


def test_v_is_the_textbook_velocity():
    x0, eps, xt, a, s = _state(1)
    # v = dx_t/dφ with x_t = cos φ·x0 + sin φ·ε (Salimans & Ho 2022): cos φ·ε − sin φ·x0
    phi = torch.atan2(s, a).view(-1, 1, 1, 1, 1)
    torch.testing.assert_close(training_target("v", x0, eps, a, s),
                               torch.cos(phi) * eps - torch.sin(phi) * x0, rtol=0, atol=1e-12)


@pytest.mark.parametrize("target", TARGETS)
def test_min_snr_weight_equals_clipped_snr_times_x0_error(target):
    """Min-SNR-γ: every target's weighted MSE equals min(SNR, γ)·MSE(x̂₀, x₀) for the same prediction."""
    x0, eps, xt, a, s = _state(2)
    g = torch.Generator().manual_seed(5)
    pred = training_target(target, x0, eps, a, s) + 0.1 * torch.randn(x0.shape, generator=g, dtype=torch.float64)
    mse = ((pred - training_target(target, x0, eps, a, s)) ** 2).flatten(1).mean(1)
    x0_mse = ((to_x0(target, pred, xt, a, s) - x0) ** 2).flatten(1).mean(1)
    snr = a ** 2 / s ** 2
    torch.testing.assert_close(loss_weight("min-snr", target, a, s, 5.0) * mse,
                               torch.clamp(snr, max=5.0) * x0_mse, rtol=1e-9, atol=1e-12)
    assert torch.equal(loss_weight("uniform", target, a, s), torch.ones_like(a))


def test_unknown_names_raise():
    x0, eps, xt, a, s = _state()
    with pytest.raises(GPEngineError, match="target"):
        training_target("score", x0, eps, a, s)
    with pytest.raises(GPEngineError, match="weighting"):
        loss_weight("p2", "eps", a, s)


class _Oracle(torch.nn.Module):
    """A 'network' that knows the clean block: predicts the exact target from (x_t, t)."""

    def __init__(self, x0, target, ab):
        super().__init__()
        self.x0, self.target, self.ab = x0, target, ab

    def forward(self, xt, t):
        a = self.ab[t.long()].sqrt()
        s = (1 - self.ab[t.long()]).sqrt()
        eps = (xt - a.view(-1, 1, 1, 1, 1) * self.x0) / s.view(-1, 1, 1, 1, 1)
        return training_target(self.target, self.x0, eps, a, s)


@pytest.mark.parametrize("target", TARGETS)
def test_eps_adapter_turns_any_exact_prediction_into_the_true_noise(target):
    x0, eps, xt, a, s = _state(3)
    ab = torch.tensor(linear_schedule(250).alphas_cumprod, dtype=torch.float32)
    # recover each sample's t from a (the table is strictly decreasing)
    t = torch.tensor([int(torch.argmin((ab.double().sqrt() - ai).abs())) for ai in a], dtype=torch.float32)
    ad = EpsAdapter(_Oracle(x0.float(), target, ab), target, linear_schedule(250).alphas_cumprod)
    got = ad(xt.float(), t)
    torch.testing.assert_close(got.double(), eps, rtol=0, atol=2e-3)


# ------------------------------------------------------------------------------------------ training


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_crops(tmp_path_factory.mktemp("vols"), (48, 48, 48))


def _opts(data_dir, out, **kw):
    base = dict(data=[str(data_dir)], out=str(out), preset="tiny", steps=60, batch_size=4, device="cpu",
                val_every=60, val_blocks=8, checkpoint_every=1000, log_every=10, progress=False, seed=0,
                threads=1, lr=3e-3)
    base.update(kw)
    return TrainOptions(**base)


def _val_err(data_dir, ckpt_path, trivial=False):
    """Error of a checkpoint's exported (ε-output) model on fixed validation blocks, computed here (not by
    the trainer): MSE of the implied x̂₀ = (x_t − s·ε̂)/a weighted by min(SNR, 5)."""
    from gp_engine.blocks import BlockSource, load_volume

    src = BlockSource([load_volume(data_dir / "crop_seed1019.npy")], "separable", 10)
    g = torch.Generator().manual_seed(11)
    x0 = src.tiling_blocks(g, limit=8)
    ab = torch.tensor(linear_schedule(250).alphas_cumprod, dtype=torch.float32)
    t = torch.randint(0, 250, (x0.shape[0],), generator=g)
    eps = torch.randn(x0.shape, generator=g)
    a, s = ab[t].sqrt().view(-1, 1, 1, 1, 1), (1 - ab[t]).sqrt().view(-1, 1, 1, 1, 1)
    w = torch.clamp(a ** 2 / s ** 2, max=5.0)
    if trivial:  # the error of predicting x̂₀ = 0
        return float((w * x0 ** 2).mean())
    model, _ = load_model(ckpt_path)
    xt = a * x0 + s * eps
    with torch.no_grad():
        x0_hat = (xt - s * model(xt, t.float())) / a
    return float((w * (x0_hat - x0) ** 2).mean())


@pytest.mark.parametrize("target,weighting", [("eps", "uniform"), ("x0", "uniform"), ("v", "min-snr")])
def test_training_lowers_validation_error(data_dir, tmp_path, target, weighting):
    """A few dozen steps on grain blocks must lower the x̂₀ error of the exported (ε-output) model well
    below that of predicting x̂₀ = 0. A swapped coefficient in the target or the adapter
    breaks this."""
    out = tmp_path / "m.pt"
    train(_opts(data_dir, out, steps=1, target=target, weighting=weighting))
    before = _val_err(data_dir, out)
    train(_opts(data_dir, out, steps=80, target=target, weighting=weighting, resume=True))
    after = _val_err(data_dir, out)
    ck = load_checkpoint(out)
    assert ck["prediction"] == target and ck["objective"]["weighting"] == weighting
    trivial = _val_err(data_dir, out, trivial=True)   # ≈ 0.9 on these blocks
    assert after < 0.6 * before and after < 0.5 * trivial, (before, after, trivial)


def test_diffusion_loss_uses_the_target(data_dir):
    """The trainer's loss is zero for an oracle of the right target and not for another target."""
    x0, eps, xt, a, s = _state(4)
    ab = torch.tensor(linear_schedule(250).alphas_cumprod, dtype=torch.float32)
    t = torch.randint(0, 250, (x0.shape[0],), generator=torch.Generator().manual_seed(0))
    x0f, epsf = x0.float(), eps.float()
    for target in TARGETS:
        oracle = _Oracle(x0f, target, ab)
        loss = diffusion_loss(oracle, x0f, t, epsf, ab.sqrt(), (1 - ab).sqrt(), target=target,
                              weighting="min-snr")
        assert float(loss) < 1e-6
        wrong = "x0" if target != "x0" else "v"
        assert float(diffusion_loss(_Oracle(x0f, wrong, ab), x0f, t, epsf, ab.sqrt(), (1 - ab).sqrt(),
                                    target=target)) > 1e-3


# ------------------------------------------------------------------------------------------ build


@pytest.mark.parametrize("target", ["x0", "v"])
def test_built_model_outputs_eps_computed_from_the_raw_net(data_dir, tmp_path, target):
    """ONNX of an x0/v model = ε derived here by hand from the raw U-Net output (numpy schedule)."""
    from gp_engine.export import build_model
    from gp_engine.export.onnx_export import onnx_session
    from gp_engine.unet import build_unet

    out = tmp_path / "m.pt"
    train(_opts(data_dir, out, steps=2, target=target))
    manifest = build_model(out, tmp_path / "model", batch_sizes=[1, 2], log=lambda *a: None)
    assert manifest["prediction"] == "eps" and manifest["target"] == target
    ck = load_checkpoint(out)
    net = build_unet(ck["config"])
    net.load_state_dict(ck["ema"])
    net.eval()
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 1, 32, 32, 32, generator=g)
    t = torch.tensor([3.0, 200.0])
    with torch.no_grad():
        raw = net(x, t).double().numpy()
    ab = linear_schedule(250).alphas_cumprod[[3, 200]]
    a, s = np.sqrt(ab).reshape(-1, 1, 1, 1, 1), np.sqrt(1 - ab).reshape(-1, 1, 1, 1, 1)
    xd = x.double().numpy()
    want = (xd - a * raw) / s if target == "x0" else s * xd + a * raw
    got = onnx_session(tmp_path / "model" / "model.onnx").run(["eps"], {"x": x.numpy(), "t": t.numpy()})[0]
    assert np.abs(got - want).max() / np.abs(want).max() < 1e-4


# ------------------------------------------------------------------------------------------ sampler


class _BayesTwoPoint(torch.nn.Module):
    """The Bayes-optimal network for voxels drawn independently from {-c, +c}: E[x0 | x_t] =
    c·tanh(a·c·x_t / s²), returned in the form of ``target``."""

    def __init__(self, target, c, alphas_cumprod):
        super().__init__()
        self.target, self.c = target, c
        ab = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
        self.register_buffer("a", ab.sqrt().float())
        self.register_buffer("s", (1 - ab).sqrt().float())

    def forward(self, x, t):
        idx = t.round().long()
        a, s = self.a[idx].view(-1, 1, 1, 1, 1), self.s[idx].view(-1, 1, 1, 1, 1)
        x0 = self.c * torch.tanh(a * self.c * x / (s * s))
        eps = (x - a * x0) / s
        return {"eps": eps, "x0": x0, "v": a * eps - s * x0}[self.target]


class _OnnxEngine:
    def __init__(self, path, batch_size):
        from gp_engine.export.onnx_export import onnx_session

        self.sess, self.batch_size, self.name = onnx_session(path), batch_size, "onnx-test"

    def predict_eps(self, x, t):
        return self.sess.run(["eps"], {"x": x, "t": t})[0]


@pytest.mark.parametrize("target", TARGETS)
def test_sampler_through_onnx_reaches_the_two_points(tmp_path, target):
    """ε/x0/v networks of the same Bayes-optimal denoiser, converted to ε inside the exported graph,
    make the CPU RePaint sampler land every free voxel on ±c with balanced signs, and keep known voxels."""
    from types import SimpleNamespace

    from gp_engine import repaint
    from gp_engine.export.onnx_export import export_onnx

    sched = linear_schedule(250)
    net = _BayesTwoPoint(target, 0.6, sched.alphas_cumprod)
    model = net if target == "eps" else EpsAdapter(net, target, sched.alphas_cumprod)
    export_onnx(model, tmp_path / "m.onnx", dynamic_batch=True, batch=2)
    setup = repaint.make_setup(sched, SimpleNamespace(steps=50, resample=1, jump=1, tail=5), clip_x0=True)
    x0 = np.full((2, 1, 32, 32, 32), 0.6, np.float32)
    mask = np.zeros_like(x0, np.uint8)
    mask[:, :, :8] = 1
    x = repaint.sample_batch(_OnnxEngine(tmp_path / "m.onnx", 2), x0, mask, np.array([0, 1]), 4, setup)
    free = x[mask == 0]
    assert np.mean(np.abs(np.abs(free) - 0.6) < 0.05) > 0.99
    assert abs(np.mean(free > 0) - 0.5) < 0.05
    np.testing.assert_array_equal(x[mask == 1], x0[mask == 1])

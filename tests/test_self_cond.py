"""Self-conditioning: warm start, the trainer's two passes, the sampler's feedback of x̂0, export and
the backends (onnxruntime vs torch), generation end to end and the errors for a missing input."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import bits_runs, outpaint_batch, perturbed

from gp_engine import repaint
from gp_engine.checkpoint import load_checkpoint, load_model
from gp_engine.diffusion import linear_schedule
from gp_engine.errors import GPEngineError
from gp_engine.self_cond import uses_self_cond, widen_stem
from gp_engine.train import TrainOptions, diffusion_loss, train
from gp_engine.unet import build_unet, preset_config




def test_widened_model_computes_the_parent_function_and_checks_its_input():
    parent = perturbed(build_unet({**preset_config("tiny"), "in_channels": 2, "out_channels": 2}))
    child = build_unet({**parent.config, "self_cond": True})
    child.load_state_dict(widen_stem(parent.state_dict(), 2, 2))
    child.eval()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 2, 16, 16, 16, generator=g)
    est = torch.rand(2, 2, 16, 16, 16, generator=g) * 2 - 1
    t = torch.tensor([3.0, 120.0])
    with torch.no_grad():
        want = parent(x, t)
        torch.testing.assert_close(child(x, t, x0_prev=est), want, rtol=0, atol=1e-6)
        torch.testing.assert_close(child(x, t), want, rtol=0, atol=1e-6)  # omitted = zero
        # once the new weights move, the estimate matters
        child.stem.weight[:, 2:] += 0.1
        assert float((child(x, t, x0_prev=est) - want).abs().max()) > 1e-3
    assert uses_self_cond(child.config) and not uses_self_cond(parent.config)
    with pytest.raises(GPEngineError, match="no self-conditioning"):
        parent(x, t, x0_prev=est)
    with pytest.raises(GPEngineError, match="cannot widen"):
        widen_stem(parent.state_dict(), 3, 2)
    with pytest.raises(GPEngineError, match="self_cond"):
        build_unet({**parent.config, "self_cond": "yes"})


class _Recorder(torch.nn.Module):
    """ε = 0.5·x + a learnable offset; records each call's x0_prev."""

    def __init__(self):
        super().__init__()
        self.b = torch.nn.Parameter(torch.tensor(0.1))
        self.seen = []

    def forward(self, x, t, x0_prev=None):
        self.seen.append(None if x0_prev is None else x0_prev.detach().clone())
        return 0.5 * x + self.b


def test_training_loss_feeds_the_models_own_clipped_estimate():
    sched = linear_schedule(250)
    ab = torch.tensor(sched.alphas_cumprod, dtype=torch.float32)
    sab, s1 = ab.sqrt(), (1 - ab).sqrt()
    g = torch.Generator().manual_seed(0)
    x0 = torch.sign(torch.randn(2, 2, 8, 8, 8, generator=g))
    noise = torch.randn(x0.shape, generator=g)
    t = torch.tensor([5, 240])
    m = _Recorder()
    diffusion_loss(m, x0, t, noise, sab, s1)
    assert m.seen == [None]  # a model without self-conditioning gets no x0_prev
    m.seen.clear()
    diffusion_loss(m, x0, t, noise, sab, s1, self_cond=False)
    assert len(m.seen) == 1 and float(m.seen[0].abs().max()) == 0.0
    m.seen.clear()
    loss = diffusion_loss(m, x0, t, noise, sab, s1, self_cond=True)
    assert len(m.seen) == 2 and float(m.seen[0].abs().max()) == 0.0
    a, s = sab[t].view(-1, 1, 1, 1, 1), s1[t].view(-1, 1, 1, 1, 1)
    xt = a * x0 + s * noise
    want = ((xt - s * (0.5 * xt + 0.1)) / a).clamp(-1, 1)  # x̂0 of an ε-model, clipped
    torch.testing.assert_close(m.seen[1], want, rtol=1e-5, atol=1e-5)
    assert float(want.abs().max()) == 1.0 and float((want.abs() < 1).float().mean()) > 0.1
    loss.backward()  # no gradient through the first pass: only the second's
    assert m.b.grad is not None and torch.isfinite(m.b.grad)


class _Engine:
    """ε = 0.3·x; records (x, t, x0_prev) of every call."""

    batch_size, name = 4, "fake"

    def __init__(self):
        self.calls = []

    def predict_eps(self, x, t, x0_prev=None):
        assert x0_prev is not None
        self.calls.append((x.copy(), t.copy(), x0_prev.copy()))
        return 0.3 * x




def test_sampler_feeds_back_each_evaluations_estimate_through_resampling():
    sched = linear_schedule(250)
    setup = repaint.make_setup(sched, SimpleNamespace(steps=10, resample=2, jump=2, tail=2), self_cond=True)
    assert setup.self_cond and setup.evaluations > 10  # the walk re-noises in between
    x0, mask = outpaint_batch()
    eng = _Engine()
    repaint.sample_batch(eng, x0, mask, np.array([0, 1, 2]), 5, setup)
    assert len(eng.calls) == setup.evaluations
    assert float(np.abs(eng.calls[0][2]).max()) == 0.0  # nothing to feed at the first evaluation
    ab = sched.alphas_cumprod
    for (x, t, _), (_, _, fed) in zip(eng.calls[:-1], eng.calls[1:]):
        a, s = np.sqrt(ab[int(t[0])]), np.sqrt(1 - ab[int(t[0])])
        want = np.clip((x - s * 0.3 * x) / a, -1, 1)
        np.testing.assert_allclose(fed, want, rtol=1e-5, atol=1e-5)
    plain = repaint.make_setup(sched, SimpleNamespace(steps=10, resample=0, jump=1, tail=0))
    with pytest.raises(AssertionError):  # a setup without self-conditioning feeds nothing
        repaint.sample_batch(_Engine(), x0, mask, np.array([0, 1, 2]), 5, plain)


@pytest.fixture(scope="module")
def sc_run(tmp_path_factory):
    """A tiny bits model, and a self-conditioning run warm-started from it."""
    d = tmp_path_factory.mktemp("sc")
    opts = bits_runs(d, "sc.pt", 4, self_cond=True)
    return d, opts


def test_self_cond_training_warm_starts_and_refuses_mismatches(sc_run):
    d, opts = sc_run
    ck = load_checkpoint(d / "sc.pt")
    assert ck["config"]["self_cond"] and ck["objective"]["self_cond_share"] == 0.5
    assert ck["config"]["in_channels"] == 2 and ck["model"]["stem.weight"].shape[1] == 4
    parent = load_checkpoint(d / "plain.pt")["ema"]["stem.weight"]
    assert float((ck["model"]["stem.weight"][:, :2] - parent).abs().max()) < 0.05 < float(parent.abs().max())
    assert np.isfinite(ck["training"]["final_val_loss"])
    # resuming a run without self-conditioning with --self-cond is refused (the model would change)
    with pytest.raises(GPEngineError, match="without self-conditioning"):
        train(TrainOptions(out=str(d / "plain.pt"), **{**opts, "steps": 3, "init_from": None}, resume=True))
    # a self-conditioning parent gives a self-conditioning run (its U-Net is kept), flag or not
    train(TrainOptions(out=str(d / "z.pt"), **{**opts, "steps": 1, "self_cond": False, "init_from": str(d / "sc.pt")}))
    assert load_checkpoint(d / "z.pt")["config"]["self_cond"]
    # ... and cannot be widened into a conditional one (its stem channels would move)
    with pytest.raises(GPEngineError, match="cannot be made conditional"):
        train(TrainOptions(out=str(d / "c.pt"), **{**opts, "steps": 1, "conditional": True,
                                                   "init_from": str(d / "sc.pt")}))


def test_self_cond_build_onnx_and_backends_agree(sc_run, tmp_path):
    from gp_engine.export import build_model
    from gp_engine.runtime import load_engine
    from gp_engine.runtime.torch_backend import TorchEngine

    from gp_engine.checkpoint import save_checkpoint

    d, _ = sc_run
    ck = load_checkpoint(d / "sc.pt")  # weights on the estimate well away from their zero start
    ck["ema"]["stem.weight"][:, 2:] += 0.05
    save_checkpoint(tmp_path / "sc.pt", ck)
    manifest = build_model(tmp_path / "sc.pt", tmp_path / "m", batch_sizes=[1, 3], log=lambda *a: None)
    assert "x0_prev" in manifest["onnx"]["inputs"] and uses_self_cond(manifest)
    assert manifest["verification"]["onnxruntime_vs_torch_rel_err"] < 1e-4
    eng = load_engine(tmp_path / "m", "onnxruntime", 3)
    x0, mask = outpaint_batch(3, 2, seed=4)
    model, _ = load_model(tmp_path / "sc.pt")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        setup = repaint.make_setup(linear_schedule(250), SimpleNamespace(steps=6, resample=1, jump=1, tail=1),
                                   self_cond=True)
        dev = TorchEngine(model, batch_size=4, device="cpu").sample_batch(x0, mask, np.array([5, 6, 7]), 11, setup)
        blind = TorchEngine(model, batch_size=4, device="cpu").sample_batch(
            x0, mask, np.array([5, 6, 7]), 11, repaint.make_setup(
                linear_schedule(250), SimpleNamespace(steps=6, resample=1, jump=1, tail=1)))
        assert float(np.abs(dev - blind).max()) > 1e-3  # the torch sampler does feed the estimate

        class Torch:  # the same torch weights driven by the CPU sampler through predict_eps
            batch_size, name = 3, "torch-cpu"
            predict_eps = TorchEngine(model, batch_size=3, device="cpu").predict_eps

        cpu = repaint.sample_batch(Torch(), x0, mask, np.array([5, 6, 7]), 11, setup)
        np.testing.assert_allclose(dev, cpu, atol=5e-4)
        np.testing.assert_allclose(repaint.sample_batch(eng, x0, mask, np.array([5, 6, 7]), 11, setup), cpu,
                                   atol=5e-4)
    finally:
        torch.set_num_threads(n)
    with pytest.raises(GPEngineError, match="self-conditioning"):
        eng.predict_eps(x0, np.zeros(3, np.float32))


def test_generate_with_a_self_cond_model(sc_run, tmp_path):
    from gp_engine.export import build_model
    from gp_engine.generate import generate

    d, _ = sc_run
    build_model(d / "sc.pt", tmp_path / "m", batch_sizes=[1], log=lambda *a: None)
    plan = {"version": 1, "geometry": {"shape": [36, 36, 36]}, "model": str(tmp_path / "m"), "batch_size": 2,
            "sampler": {"preset": "fast", "steps": 6}, "outputs": {"dir": str(tmp_path / "o"), "formats": ["npy"]}}
    generate(plan, progress=False)
    ids = np.load(tmp_path / "o" / "grains.npy")
    assert ids.shape == (36, 36, 36) and ids.min() >= 1
    used = json.loads((tmp_path / "o" / "stats.json").read_text())["timing"]["sampler"]
    assert used["self_cond"] and used["jump"] == 1


def test_extended_schedule_keeps_the_parents_timesteps(sc_run):
    from gp_engine.diffusion import Schedule, extend_linear

    base = linear_schedule(250)
    ext = extend_linear(base, 500)
    np.testing.assert_allclose(ext.betas[:250], base.betas, rtol=0, atol=1e-15)
    assert abs(base.alphas_cumprod[-1] - 0.0797) < 1e-3  # the flaw: x_249 still holds 28 % of x0
    assert ext.alphas_cumprod[-1] < 1e-4 and ext.T == 500
    np.testing.assert_array_equal(Schedule.from_dict(ext.to_dict()).betas, ext.betas)
    with pytest.raises(GPEngineError, match="above the parent"):
        extend_linear(base, 250)
    d, opts = sc_run
    train(TrainOptions(out=str(d / "ext.pt"), **{**opts, "steps": 1, "self_cond": False,
                                                 "init_from": str(d / "plain.pt")}, extend_schedule=400))
    ck = load_checkpoint(d / "ext.pt")
    assert ck["schedule"]["T"] == 400 and ck["schedule"]["extended_from_T"] == 250
    np.testing.assert_allclose(Schedule.from_dict(ck["schedule"]).betas[:250], base.betas, rtol=0, atol=1e-15)
    with pytest.raises(GPEngineError, match="needs --init-from"):
        train(TrainOptions(out=str(d / "ext2.pt"), **{**opts, "init_from": None}, extend_schedule=400))

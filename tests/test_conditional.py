"""Conditional (outpainting) models: condition, warm start, masked loss, DDIM steps, export and backends,
sampler presets and the errors for a model/preset mismatch."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import bits_runs, outpaint_batch, perturbed

from gp_engine import repaint
from gp_engine.checkpoint import load_checkpoint, load_model
from gp_engine.conditional import check_sampler_fits, make_cond, model_kind, widen_state_dict
from gp_engine.diffusion import linear_schedule
from gp_engine.errors import GPEngineError
from gp_engine.train import TrainOptions, diffusion_loss, train
from gp_engine.unet import build_unet, preset_config




def test_make_cond_is_known_values_then_mask():
    rng = np.random.default_rng(0)
    x0 = rng.normal(size=(2, 3, 4, 4, 4)).astype(np.float32)
    mask = rng.random((2, 4, 4, 4)) < 0.5
    cond = make_cond(x0, np.repeat(mask[:, None], 3, axis=1))
    assert cond.shape == (2, 4, 4, 4, 4) and cond.dtype == np.float32
    for c in range(3):
        np.testing.assert_array_equal(cond[:, c], np.where(mask, x0[:, c], 0.0))
    np.testing.assert_array_equal(cond[:, 3], mask.astype(np.float32))
    np.testing.assert_array_equal(make_cond(x0, mask), cond)  # mask with or without channel axis


def test_widened_model_computes_the_unconditional_function():
    """Warm start: zero weights on the condition channels, so the conditional net equals its
    unconditional parent for any condition (the reference is the parent itself)."""
    parent = perturbed(build_unet({**preset_config("tiny"), "in_channels": 2, "out_channels": 2}))
    cfg = {**parent.config, "cond_channels": 3}
    child = build_unet(cfg)
    child.load_state_dict(widen_state_dict(parent.state_dict(), cfg))
    child.eval()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 2, 16, 16, 16, generator=g)
    cond = torch.randn(2, 3, 16, 16, 16, generator=g)
    t = torch.tensor([3.0, 120.0])
    with torch.no_grad():
        torch.testing.assert_close(child(x, t, cond), parent(x, t), rtol=0, atol=1e-6)
    assert model_kind(cfg) == "conditional" and model_kind(parent.config) == "unconditional"
    with pytest.raises(GPEngineError, match="needs cond"):
        child(x, t)
    with pytest.raises(GPEngineError, match="unconditional"):
        parent(x, t, cond)
    with pytest.raises(GPEngineError, match="encoding differs"):
        widen_state_dict(parent.state_dict(), {**cfg, "in_channels": 1})


class _Spy(torch.nn.Module):
    """Returns a fixed prediction and records what it was given."""

    def __init__(self, out):
        super().__init__()
        self.out, self.seen = out, None

    def forward(self, x, t, cond=None):
        self.seen = cond
        return self.out


def test_conditional_loss_ignores_known_voxels_and_feeds_the_condition():
    sched = linear_schedule(250)
    ab = torch.tensor(sched.alphas_cumprod, dtype=torch.float32)
    sa, s1 = ab.sqrt(), (1 - ab).sqrt()
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(2, 2, 8, 8, 8, generator=g)
    noise = torch.randn(2, 2, 8, 8, 8, generator=g)
    known = (torch.rand(2, 1, 8, 8, 8, generator=g) < 0.6).float()
    t = torch.tensor([10, 200])
    # ε target: the exact noise on unknown voxels, nonsense on known ones -> zero loss
    pred = torch.where(known.bool().expand_as(noise), torch.full_like(noise, 100.0), noise)
    spy = _Spy(pred)
    loss = diffusion_loss(spy, x0, t, noise, sa, s1, known=known)
    assert float(loss) == 0.0
    np.testing.assert_array_equal(spy.seen.numpy(), make_cond(x0.numpy(), known.numpy()))
    # an error of 1 on every unknown voxel: mean over unknown voxels is exactly 1
    loss = diffusion_loss(_Spy(torch.where(known.bool().expand_as(noise), noise, noise + 1.0)), x0, t, noise,
                          sa, s1, known=known)
    assert float(loss) == pytest.approx(1.0, abs=1e-6)
    # without a mask the same prediction is scored on every voxel
    loss = diffusion_loss(_Spy(pred), x0, t, noise, sa, s1)
    assert float(loss) > 100.0


def test_ddim_coefficients():
    rs = repaint.respace(linear_schedule(250), 25)
    ab, abp = rs.alphas_cumprod, rs.alphas_cumprod_prev
    ddpm = rs.coefficients(1.0)
    # η = 1 through the general DDIM formula (written here independently) is the DDPM posterior
    sig = np.sqrt((1 - abp) / (1 - ab) * (1 - ab / abp))
    c_xt = np.sqrt(1 - abp - sig ** 2) / np.sqrt(1 - ab)
    np.testing.assert_allclose(ddpm["sigma"], sig, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(ddpm["c_xt"], c_xt, rtol=1e-7, atol=1e-12)
    np.testing.assert_allclose(ddpm["c_x0"], np.sqrt(abp) - c_xt * np.sqrt(ab), rtol=1e-7, atol=1e-12)
    # η = 0: deterministic; with the true x0 and ε the step lands on √ᾱ_prev·x0 + √(1-ᾱ_prev)·ε
    d = rs.coefficients(0.0)
    assert np.all(d["sigma"] == 0)
    x0, eps = 0.7, -1.3
    xt = d["sqrt_ab"] * x0 + d["sqrt_1mab"] * eps
    np.testing.assert_allclose(d["c_x0"] * x0 + d["c_xt"] * xt, np.sqrt(abp) * x0 + np.sqrt(1 - abp) * eps,
                               rtol=1e-10)
    with pytest.raises(GPEngineError, match="eta"):
        rs.coefficients(1.5)


class _CondEngine:
    """A fake conditional engine: ε = 0.2·x + 0.1·(mask channel), records every condition."""

    batch_size, name = 4, "fake"

    def __init__(self):
        self.conds = []

    def predict_eps(self, x, t, cond=None):
        assert cond is not None
        self.conds.append(cond.copy())
        return 0.2 * x + 0.1 * cond[:, -1:]




def test_conditional_sampler_walk_condition_and_known_voxels():
    setup = repaint.make_setup(linear_schedule(250), SimpleNamespace(steps=12, resample=0, jump=1, tail=0, eta=0.5),
                               conditional=True)
    assert setup.evaluations == 12 and setup.conditional
    x0, mask = outpaint_batch()
    eng = _CondEngine()
    x = repaint.sample_batch(eng, x0, mask, np.array([0, 1, 2]), 3, setup)
    assert len(eng.conds) == 12
    want = make_cond(x0, mask)
    for c in eng.conds:  # the same condition at every step: the known values and the mask
        np.testing.assert_array_equal(c, want)
    known = mask.astype(bool)
    np.testing.assert_array_equal(x[known], x0[known])
    assert np.isfinite(x).all() and not np.array_equal(x[~known], x0[~known])
    # resampling: RePaint's re-noise/denoise repeats on the unknown voxels; with clean known voxels the
    # network sees them exact at every evaluation, and the walk costs what count_evaluations says
    rs = repaint.make_setup(linear_schedule(250), SimpleNamespace(steps=12, resample=2, jump=1, tail=0),
                            conditional=True, known_clean=True)
    assert rs.evaluations == repaint.count_evaluations(12, 2, 1, 0) == 12 + 2 * 11

    class Seeing(_CondEngine):
        def __init__(self):
            super().__init__()
            self.xs = []

        def predict_eps(self, x, t, cond=None):
            self.xs.append(x.copy())
            return super().predict_eps(x, t, cond)

    eng = Seeing()
    xr = repaint.sample_batch(eng, x0, mask, np.array([0, 1, 2]), 3, rs)
    assert len(eng.xs) == rs.evaluations and all(np.array_equal(x[known], x0[known]) for x in eng.xs)
    np.testing.assert_array_equal(xr[known], x0[known])
    assert np.isfinite(xr).all() and float(np.abs(xr[~known] - x[~known]).max()) > 1e-2


def test_sampler_presets_and_model_kind_errors():
    from gp_engine.plan_config import load_plan

    plan = load_plan({"version": 1, "geometry": {"shape": [40, 40, 40]},
                      "sampler": {"preset": "conditional", "steps": 25, "resample": 0, "eta": 0}})
    s = plan.sampler
    assert (s.steps, s.resample, s.eta) == (25, 0, 0.0)
    assert repaint.count_evaluations(s.steps, s.resample, s.jump, s.tail) == 25
    r1 = load_plan({"version": 1, "geometry": {"shape": [40, 40, 40]},
                    "sampler": {"preset": "conditional", "steps": 50, "resample": 1}}).sampler
    assert repaint.count_evaluations(r1.steps, r1.resample, r1.jump, r1.tail) == 50 + 49
    d = load_plan({"version": 1, "geometry": {"shape": [40, 40, 40]}, "sampler": {"preset": "conditional"}}).sampler
    assert (d.steps, d.resample, d.tail) == (34, 2, 0)
    assert repaint.count_evaluations(d.steps, d.resample, d.jump, d.tail) == 100  # the budget per block
    for bad, field in (({"preset": "conditional", "resample": 2, "eta": 0}, "sampler.eta"),
                       ({"preset": "conditional", "eta": 2}, "sampler.eta"),
                       ({"preset": "fast", "eta": 0.0}, "sampler.eta")):
        with pytest.raises(GPEngineError, match=field.replace(".", r"\.")):
            load_plan({"version": 1, "geometry": {"shape": [40, 40, 40]}, "sampler": bad})
    with pytest.raises(GPEngineError, match="preset 'fast' is for unconditional"):
        check_sampler_fits("conditional", "fast")
    with pytest.raises(GPEngineError, match="needs a conditional model"):
        check_sampler_fits("unconditional", "conditional")
    check_sampler_fits("conditional", "conditional")
    check_sampler_fits("unconditional", "paper")


# ------------------------------------------------------------------ trainer, export, backends


@pytest.fixture(scope="module")
def cond_run(tmp_path_factory):
    """A tiny unconditional bits model, and a conditional run warm-started from it."""
    d = tmp_path_factory.mktemp("cond")
    opts = bits_runs(d, "cond.pt", 4, conditional=True)
    return d, opts


def test_conditional_training_warm_starts_and_resumes_exactly(cond_run):
    d, opts = cond_run
    ck = load_checkpoint(d / "cond.pt")
    assert ck["config"]["cond_channels"] == 3 and ck["config"]["in_channels"] == 2
    assert ck["training"]["init_from"]["path"] == str(d / "plain.pt")
    assert ck["training"]["init_from"]["samples_seen"] == 4
    assert np.isfinite(ck["training"]["final_val_loss"])
    # the stem's original channels started from the parent's EMA weights: still close after 4 steps
    parent = load_checkpoint(d / "plain.pt")["ema"]["stem.weight"]
    stem = ck["model"]["stem.weight"]
    assert float((stem[:, :2] - parent).abs().max()) < 0.05 < float(parent.abs().max())
    # resume: 2 + 2 steps == 4 steps
    train(TrainOptions(out=str(d / "part.pt"), **{**opts, "steps": 2}))
    train(TrainOptions(out=str(d / "part.pt"), **{**opts, "steps": 4, "init_from": None}, resume=True))
    b = load_checkpoint(d / "part.pt")
    for name, ta in ck["model"].items():
        torch.testing.assert_close(b["model"][name], ta, rtol=0, atol=1e-7, msg=name)
    # a conditional parent gives a conditional run (its U-Net is kept), with or without --conditional
    train(TrainOptions(out=str(d / "x.pt"), **{**opts, "steps": 1, "conditional": False,
                                                "init_from": str(d / "cond.pt")}))
    assert load_checkpoint(d / "x.pt")["config"]["cond_channels"] == 3
    # the command line refuses model options that --init-from would override
    from gp_engine.cli import main

    assert main(["train", "--data", opts["data"][0], "--out", str(d / "y.pt"), "--init-from", str(d / "cond.pt"),
                 "--preset", "mini", "--steps", "1"]) == 2
    assert not (d / "y.pt").exists()


def test_conditional_build_onnx_and_backends_agree(cond_run, tmp_path):
    from gp_engine.export import build_model
    from gp_engine.export.manifest import read_manifest
    from gp_engine.runtime import load_engine
    from gp_engine.runtime.torch_backend import TorchEngine

    d, _ = cond_run
    manifest = build_model(d / "cond.pt", tmp_path / "m", batch_sizes=[1, 3], log=lambda *a: None)
    assert manifest["model_kind"] == "conditional" and "cond" in manifest["onnx"]["inputs"]
    assert manifest["verification"]["onnxruntime_vs_torch_rel_err"] < 1e-4
    read_manifest(tmp_path / "m")
    eng = load_engine(tmp_path / "m", "onnxruntime", 3)
    assert eng.conditional
    x0, mask = outpaint_batch(3, 2, seed=4)
    model, _ = load_model(d / "cond.pt")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for clean, r in ((True, 0), (False, 0), (True, 1), (False, 1)):
            setup = repaint.make_setup(linear_schedule(250), SimpleNamespace(steps=6, resample=r, jump=1, tail=0),
                                       conditional=True, known_clean=clean)
            cpu = repaint.sample_batch(eng, x0, mask, np.array([5, 6, 7]), 11, setup)
            dev = TorchEngine(model, batch_size=4, device="cpu").sample_batch(
                x0, mask, np.array([5, 6, 7]), 11, setup)
            np.testing.assert_allclose(dev, cpu, atol=5e-4)
    finally:
        torch.set_num_threads(n)
    with pytest.raises(GPEngineError, match="conditional"):
        eng.predict_eps(x0, np.zeros(3, np.float32))


def test_generate_refuses_a_preset_that_does_not_fit_the_model(cond_run, tmp_path):
    from gp_engine.export import build_model
    from gp_engine.generate import generate

    d, _ = cond_run
    build_model(d / "cond.pt", tmp_path / "m", batch_sizes=[1], log=lambda *a: None)
    plan = {"version": 1, "geometry": {"shape": [36, 36, 36]}, "model": str(tmp_path / "m"), "batch_size": 2,
            "sampler": {"preset": "fast"}, "outputs": {"dir": str(tmp_path / "o"), "formats": ["npy"]}}
    with pytest.raises(GPEngineError, match="preset 'fast' is for unconditional"):
        generate(plan, progress=False)
    plan["sampler"] = {"preset": "conditional", "steps": 4}
    plan["outputs"]["dir"] = str(tmp_path / "o2")
    res = generate(plan, progress=False)
    assert res["timing"]["evaluations_per_block"] == 4 + 2 * 3  # the preset resamples twice per step
    ids = np.load(tmp_path / "o2" / "grains.npy")
    assert ids.shape == (36, 36, 36) and ids.min() >= 1
    import json

    used = json.loads((tmp_path / "o2" / "stats.json").read_text())["timing"]["sampler"]
    assert used["conditional"] and used["sharpen_x0"] == 4.0  # a bits model: sharpened by default
    # and the shipped (unconditional) default refuses the conditional preset
    plan["model"] = None
    plan["outputs"]["dir"] = str(tmp_path / "o3")
    with pytest.raises(GPEngineError, match="needs a conditional model"):
        generate(plan, progress=False)


def test_manifest_kind_must_match_the_unet(cond_run, tmp_path):
    from gp_engine.export import build_model
    from gp_engine.export.manifest import validate_manifest

    d, _ = cond_run
    m = build_model(d / "cond.pt", tmp_path / "m", batch_sizes=[1], log=lambda *a: None)
    with pytest.raises(GPEngineError, match="model_kind"):
        validate_manifest({**m, "model_kind": "unconditional"})
    with pytest.raises(GPEngineError, match="model_kind"):
        validate_manifest({**m, "model_kind": "outpainting"})
    older = {k: v for k, v in m.items() if k != "model_kind"}
    older["unet"] = {**m["unet"], "cond_channels": 0}
    validate_manifest(older)  # older manifests (no model_kind) stay valid


def test_clean_known_voxels_convention():
    """known_in_xt = clean (TD-Paint's t = 0 for known voxels): the network sees the known voxels'
    clean values in x_t, in training and at every sampler step; noisy ones otherwise."""
    sched = linear_schedule(250)
    ab = torch.tensor(sched.alphas_cumprod, dtype=torch.float32)
    g = torch.Generator().manual_seed(0)
    x0 = torch.sign(torch.randn(2, 2, 8, 8, 8, generator=g))
    noise_ = torch.randn(2, 2, 8, 8, 8, generator=g)
    known = (torch.rand(2, 1, 8, 8, 8, generator=g) < 0.5).float()

    class SeeX(_Spy):
        def forward(self, x, t, cond=None):
            self.x = x.clone()
            return super().forward(x, t, cond)

    spy = SeeX(noise_)
    diffusion_loss(spy, x0, torch.tensor([200, 200]), noise_, ab.sqrt(), (1 - ab).sqrt(), known=known, known_clean=True)
    k = known.bool().expand_as(x0)
    assert torch.equal(spy.x[k], x0[k]) and not torch.equal(spy.x[~k], x0[~k])
    diffusion_loss(spy, x0, torch.tensor([200, 200]), noise_, ab.sqrt(), (1 - ab).sqrt(), known=known)
    assert not torch.equal(spy.x[k], x0[k])

    seen = []

    class Eng(_CondEngine):
        def predict_eps(self, x, t, cond=None):
            seen.append(x.copy())
            return super().predict_eps(x, t, cond)

    xb, mask = outpaint_batch()
    m = mask.astype(bool)
    for clean in (True, False):
        seen.clear()
        setup = repaint.make_setup(sched, SimpleNamespace(steps=5, resample=0, jump=1, tail=0), conditional=True,
                                   known_clean=clean)
        repaint.sample_batch(Eng(), xb, mask, np.array([0, 1, 2]), 1, setup)
        assert all(np.array_equal(x[m], xb[m]) for x in seen) == clean
    with pytest.raises(GPEngineError, match="conditional"):
        repaint.make_setup(sched, SimpleNamespace(steps=5, resample=0, jump=1, tail=0), known_clean=True)


def test_new_conditional_runs_default_to_clean_known_voxels(cond_run):
    d, opts = cond_run
    assert load_checkpoint(d / "cond.pt")["objective"]["known_in_xt"] == "clean"

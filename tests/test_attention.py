"""Self-attention at the U-Net's coarsest level: the layer against torch's own attention, the identity
start that lets a lineage grow it (--init-from and --resume), the optimizer moments that move with the
parameters, and the ONNX export against torch."""

import numpy as np
import pytest
import torch
from conftest import bits_runs, perturbed

from gp_engine.checkpoint import load_checkpoint, load_model, save_checkpoint
from gp_engine.errors import GPEngineError
from gp_engine.train import TrainOptions, train, with_attention_added, with_fresh_attention
from gp_engine.unet import MidAttention, build_unet, preset_config


def _reference_attention(layer: MidAttention, x: torch.Tensor) -> torch.Tensor:
    """The same layer through torch's scaled_dot_product_attention (queries, keys, values: thirds of qkv)."""
    b, c = x.shape[:2]
    h = layer.heads
    qkv = layer.qkv(layer.norm(x)).flatten(2)  # [B, 3C, N]
    q, k, v = (part.reshape(b, h, c // h, -1).transpose(2, 3) for part in qkv.chunk(3, dim=1))  # [B, h, N, d]
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v)  # [B, h, N, d]
    return x + layer.proj(out.transpose(2, 3).reshape(x.shape))


def test_mid_attention_matches_torch_attention():
    layer = perturbed(MidAttention(16, heads=4), seed=2)
    x = torch.randn(2, 16, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = _reference_attention(layer, x)
        torch.testing.assert_close(layer(x), want, rtol=1e-5, atol=1e-5)
        assert float((want - x).abs().max()) > 1e-2  # the layer does something once its projection moved
        # every position sees every other: a change at one corner moves the output at the opposite one
        y = x.clone()
        y[:, :, 0, 0, 0] += 1.0
        assert float((layer(y) - layer(x))[:, :, 3, 3, 3].abs().max()) > 1e-4


def test_fresh_attention_starts_as_the_identity_and_config_is_checked():
    parent = perturbed(build_unet({**preset_config("tiny"), "in_channels": 2, "out_channels": 2}))
    config = {**parent.config, "attention": True}
    child = build_unet(config)
    child.load_state_dict(with_fresh_attention(parent.state_dict(), config))
    child.eval()
    g = torch.Generator().manual_seed(1)
    x, t = torch.randn(2, 2, 16, 16, 16, generator=g), torch.tensor([3.0, 120.0])
    with torch.no_grad():
        torch.testing.assert_close(child(x, t), parent(x, t), rtol=0, atol=1e-6)
        child.mid_attn.proj.weight += 0.1
        assert float((child(x, t) - parent(x, t)).abs().max()) > 1e-3
    assert "attention" not in parent.config  # configs from before the option compare as before
    assert child.config["attention_heads"] == 4
    with pytest.raises(GPEngineError, match="'attention'"):
        build_unet({**parent.config, "attention": "yes"})
    with pytest.raises(GPEngineError, match="attention_heads"):
        build_unet({**parent.config, "attention": True, "attention_heads": 3})


@pytest.fixture(scope="module")
def attn_runs(tmp_path_factory):
    """A tiny bits parent ``plain.pt`` and a run warm-started from it with --attention."""
    d = tmp_path_factory.mktemp("attn")
    opts = bits_runs(d, "attn.pt", 4, attention=True)
    return d, opts


def test_init_from_with_attention_warm_starts(attn_runs):
    d, _ = attn_runs
    ck = load_checkpoint(d / "attn.pt")
    assert ck["config"]["attention"] and "mid_attn.proj.weight" in ck["model"]
    parent = load_checkpoint(d / "plain.pt")["ema"]["out_conv.weight"]
    assert float((ck["model"]["out_conv.weight"] - parent).abs().max()) < 0.05 < float(parent.abs().max())
    assert np.isfinite(ck["training"]["final_val_loss"])


def test_resume_with_attention_grows_the_lineage_in_place(attn_runs, tmp_path):
    d, opts = attn_runs
    parent = load_checkpoint(d / "plain.pt")
    grown = with_attention_added(parent)
    # every trained parameter keeps its Adam moments under its new position; the new ones start without
    old = [n for n, _ in build_unet(parent["config"]).named_parameters()]
    new = [n for n, _ in build_unet(grown["config"]).named_parameters()]
    assert new.index("up_blocks.0.conv1.weight") != old.index("up_blocks.0.conv1.weight")  # the order did move
    for name in old:
        a = parent["optimizer"]["state"][old.index(name)]["exp_avg_sq"]
        torch.testing.assert_close(grown["optimizer"]["state"][new.index(name)]["exp_avg_sq"], a, rtol=0, atol=0)
    assert all(new.index(n) not in grown["optimizer"]["state"] for n in new if n.startswith("mid_attn."))
    # the grown EMA computes the parent's function
    save_checkpoint(tmp_path / "grown.pt", grown)
    a_model, _ = load_model(d / "plain.pt")
    b_model, _ = load_model(tmp_path / "grown.pt")
    x, t = torch.randn(1, 2, 32, 32, 32, generator=torch.Generator().manual_seed(4)), torch.tensor([40.0])
    with torch.no_grad():
        torch.testing.assert_close(b_model(x, t), a_model(x, t), rtol=0, atol=1e-6)
    # the CLI path: --resume --attention on a lineage without it continues its steps and records the growth
    save_checkpoint(tmp_path / "lineage.pt", parent)
    base = {k: v for k, v in opts.items() if k not in ("init_from", "attention")}
    train(TrainOptions(out=str(tmp_path / "lineage.pt"), **{**base, "steps": 4}, resume=True, attention=True))
    ck = load_checkpoint(tmp_path / "lineage.pt")
    assert ck["step"] == 4 and ck["config"]["attention"]
    assert ck["training"]["history"]["runs"][-1].get("attention_added") is True
    assert ck["training"]["history"]["runs"][-1]["from_step"] == parent["step"]
    # and a resumed attention lineage stays one (the flag is a no-op there)
    train(TrainOptions(out=str(tmp_path / "lineage.pt"), **{**base, "steps": 5}, resume=True, attention=True))
    assert "attention_added" not in load_checkpoint(tmp_path / "lineage.pt")["training"]["history"]["runs"][-1]


def test_attention_model_builds_and_onnx_matches_torch(attn_runs, tmp_path):
    from gp_engine.export import build_model
    from gp_engine.runtime import load_engine

    d, _ = attn_runs
    ck = load_checkpoint(d / "attn.pt")  # the layer's projection well away from its zero start
    g = torch.Generator().manual_seed(5)
    ck["ema"]["mid_attn.proj.weight"] += 0.2 * torch.randn(ck["ema"]["mid_attn.proj.weight"].shape, generator=g)
    save_checkpoint(tmp_path / "a.pt", ck)
    manifest = build_model(tmp_path / "a.pt", tmp_path / "m", batch_sizes=[1, 3], log=lambda *a: None)
    assert manifest["unet"]["attention"] is True
    assert manifest["verification"]["onnxruntime_vs_torch_rel_err"] < 1e-4
    eng = load_engine(tmp_path / "m", "onnxruntime", 3)
    model, _ = load_model(tmp_path / "a.pt")
    x = np.random.default_rng(0).standard_normal((3, 2, 32, 32, 32)).astype(np.float32)
    t = np.array([2, 90, 200], np.float32)
    with torch.no_grad():
        want = model(torch.from_numpy(x), torch.from_numpy(t)).numpy()
        without = load_model(d / "plain.pt")[0](torch.from_numpy(x), torch.from_numpy(t)).numpy()
    got = eng.predict_eps(x, t)
    np.testing.assert_allclose(got, want, atol=1e-4)
    assert float(np.abs(want - without).max()) > 1e-2  # the exported layer is not the identity here

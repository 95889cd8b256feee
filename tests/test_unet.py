"""3D U-Net: shapes, GroupNorm groups, time conditioning, config errors."""

import pytest
import torch

from gp_engine.errors import GPEngineError
from gp_engine.unet import PRESETS, build_unet, norm_groups, preset_config


def test_tiny_forward_shape_and_dtype():
    torch.manual_seed(0)
    m = build_unet({"preset": "tiny"}).eval()
    x = torch.randn(2, 1, 32, 32, 32)
    out = m(x, torch.tensor([0.0, 249.0]))
    assert out.shape == x.shape and out.dtype == torch.float32
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("preset", list(PRESETS))
def test_presets_build_with_grouped_norms(preset):
    m = build_unet(preset_config(preset))
    norms = [mod for mod in m.modules() if isinstance(mod, torch.nn.GroupNorm)]
    assert norms, "the U-Net uses GroupNorm"
    for n in norms:
        assert n.num_groups > 1 and n.num_channels % n.num_groups == 0
    assert m.config["channels"] == PRESETS[preset]["channels"]


def test_small_preset_forward_on_a_small_block():
    m = build_unet(preset_config("small")).eval()
    with torch.no_grad():
        out = m(torch.randn(1, 1, 16, 16, 16), torch.tensor([5.0]))
    assert out.shape == (1, 1, 16, 16, 16)


def test_norm_groups_rule():
    assert norm_groups(8) == 2 and norm_groups(16) == 4 and norm_groups(32) == 8 and norm_groups(256) == 8
    assert norm_groups(12) == 3  # min(8, 12 // 4) = 3 divides 12
    with pytest.raises(GPEngineError):
        norm_groups(7)


def test_timestep_conditions_the_output():
    torch.manual_seed(1)
    m = build_unet({"preset": "tiny"}).eval()
    x = torch.randn(1, 1, 16, 16, 16).repeat(2, 1, 1, 1, 1)
    with torch.no_grad():
        out = m(x, torch.tensor([3.0, 200.0]))
    assert not torch.allclose(out[0], out[1])
    # batch items are independent: the same input and t gives the same output in any batch position
    with torch.no_grad():
        single = m(x[:1], torch.tensor([200.0]))
    torch.testing.assert_close(single[0], out[1], rtol=1e-4, atol=1e-5)


def test_half_model_keeps_exact_time_phases():
    """The sinusoid is computed in float32 even in a half model (t up to 249 would lose the phase in fp16)."""
    torch.manual_seed(2)
    m = build_unet({"preset": "tiny"})
    t = torch.tensor([249.0, 17.0])
    ref = m.time_embed(t)
    half = build_unet({"preset": "tiny"})
    half.load_state_dict(m.state_dict())
    got = half.half().time_embed(t).float()
    assert (got - ref).abs().max() < 2e-2 * ref.abs().max()


@pytest.mark.parametrize("bad", [{"channels": []}, {"channels": [3, 8]}, {"channels": "8"},
                                 {"channels": [8], "time_dim": 31}, {"preset": "huge"}])
def test_bad_config_raises(bad):
    with pytest.raises(GPEngineError):
        build_unet(bad) if "preset" not in bad else preset_config(bad["preset"])

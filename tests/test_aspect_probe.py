"""bench/aspect_probe.py: the octants it scores and the big-inner-grain shape figure."""

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from aspect_probe import octants, shape_figures  # noqa: E402


def _ellipsoid_box(axes, n=32):
    """A box of grain 2 with one ellipsoid grain 1 of semi-axes ``axes`` at its centre."""
    x, y, z = np.indices((n, n, n)) - (n - 1) / 2
    inside = (x / axes[0]) ** 2 + (y / axes[1]) ** 2 + (z / axes[2]) ** 2 <= 1
    return np.where(inside, 1, 2).astype(np.int32)


def test_octants_tile_the_volume():
    v = np.arange(64 ** 3).reshape(64, 64, 64)
    parts = octants(v)
    assert len(parts) == 8 and all(p.shape == (32, 32, 32) for p in parts)
    np.testing.assert_array_equal(np.sort(np.concatenate([p.ravel() for p in parts])), v.ravel())


def test_big_inner_grains_are_measured_by_their_axes():
    # an ellipsoid with semi-axes 10, 6, 5 (2,500 voxels): b/a = 0.6 for a solid ellipsoid
    _, figs = shape_figures([_ellipsoid_box((10, 6, 5))])
    assert figs["big_inner_grains"] == 1
    assert abs(figs["big_inner_b_a"] - 0.6) < 0.02
    # the same grain cut by a box face is left out; a small one (under 300 voxels) too
    cut = _ellipsoid_box((10, 6, 5))[6:]
    assert shape_figures([cut])[1]["big_inner_grains"] == 0
    assert shape_figures([_ellipsoid_box((4, 4, 4))])[1]["big_inner_grains"] == 0


def test_single_blocks_are_painted_as_one_block(tmp_path, monkeypatch):
    # the probe's "single" row must be one painted 32³ block; the engine's default margin would paint
    # 36³ (eight blocks) and score outpainted grains as single-block ones
    import aspect_probe

    from gp_engine import generate as gen_mod
    from gp_engine.plan_config import load_plan
    from gp_engine.planner import grid_plan

    plans = []

    def fake_generate(plan, progress=False):
        plans.append(plan)
        d = Path(plan["outputs"]["dir"])
        d.mkdir(parents=True)
        np.save(d / "grains.npy", np.ones((32, 32, 32), np.int32))

    monkeypatch.setattr(gen_mod, "generate", fake_generate)
    boxes = aspect_probe.single_blocks(None, 2, {"preset": "fast"}, tmp_path)
    assert len(boxes) == 2 and len(plans) == 2
    for plan in plans:
        cfg = load_plan(plan)
        painted, _, canvas, _, _ = gen_mod.painted_layout(cfg, cfg.geometry.painted_margin)
        assert tuple(painted) == (32, 32, 32) and len(grid_plan(canvas)) == 1

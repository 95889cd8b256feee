"""bench/conditional_vs_repaint.py: setting names become the plan's sampler section."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from conditional_vs_repaint import sampler_for  # noqa: E402

from gp_engine import repaint  # noqa: E402
from gp_engine.plan_config import load_plan  # noqa: E402


def _evaluations(setting: str) -> int:
    s = load_plan({"version": 1, "geometry": {"shape": [40, 40, 40]}, "sampler": sampler_for(setting)}).sampler
    return repaint.count_evaluations(s.steps, s.resample, s.jump, s.tail)


def test_setting_names():
    assert sampler_for("fast") == {"preset": "fast"}
    assert sampler_for("paper-k4") == {"preset": "paper", "sharpen_x0": 4.0}
    assert sampler_for("cond50-eta0.5") == {"preset": "conditional", "steps": 50, "resample": 0, "eta": 0.5}
    assert sampler_for("cond34-r2") == {"preset": "conditional", "steps": 34, "resample": 2}
    assert _evaluations("cond50") == 50 and _evaluations("cond34-r2") == 34 + 2 * 33
    assert sampler_for("fast-r4-j10-k2") == {"preset": "fast", "resample": 4, "jump": 10, "sharpen_x0": 2.0}
    # fast: 50 steps, tail 5; jump points j = 5, 15, 25, 35 for jump 10 (j + 10 <= 49), each walked r times
    assert _evaluations("fast") == 50 + 2 * 1 * 44
    assert _evaluations("fast-j10") == 50 + 2 * 10 * 4
    assert _evaluations("fast-r4-j10") == 50 + 4 * 10 * 4
    assert _evaluations("fast-s100-r0") == 100
    for bad in ("cond50-j10", "cond50-s20", "slow", "fast-j"):
        with pytest.raises(SystemExit, match="unknown"):
            sampler_for(bad)


def test_schedule_probe_figures():
    import numpy as np
    from schedule_probe import x0_figures

    rng = np.random.default_rng(0)
    x0 = np.sign(rng.standard_normal((2, 4, 8, 8, 8))).astype(np.float32)
    f = x0_figures(x0, x0)
    assert abs(f["corr_with_x0"] - 1) < 1e-6 and f["share_committed"] == 1.0 and abs(f["std"] - x0.std()) < 1e-6
    g = x0_figures(rng.standard_normal(x0.shape) * 0.1, x0)  # noise: uncorrelated, uncommitted, no structure
    assert abs(g["corr_with_x0"]) < 0.05 and g["share_committed"] == 0.0 and abs(g["neighbour_corr"]) < 0.05
    smooth = np.repeat(rng.standard_normal((2, 4, 8, 8, 4)), 2, axis=-1)  # pairs of equal x-neighbours
    assert x0_figures(smooth, x0)["neighbour_corr"] > 0.4


def test_same_box_crops_are_the_corner_boxes_relabelled(tmp_path, monkeypatch):
    import numpy as np

    import conditional_vs_repaint as cvr
    from gp_engine.grains import split_grains

    rng = np.random.default_rng(0)
    vol = rng.integers(0, 4, (10, 12, 9)).astype(np.int16)
    np.savez(tmp_path / "potts_iso_100_seed7.npz", spins=vol)
    monkeypatch.setattr(cvr, "SHARED", tmp_path)
    boxes = cvr.same_box_crops((6, 12, 5), [7])
    # x starts 0 and 4, y only 0 (the whole axis), z 0 and 4: four boxes, in that order
    assert len(boxes) == 4 and all(b.shape == (6, 12, 5) for b in boxes)
    for b, (x, z) in zip(boxes, [(0, 0), (0, 4), (4, 0), (4, 4)]):
        np.testing.assert_array_equal(b, split_grains(vol[x:x + 6, :, z:z + 5]))
    assert len(cvr.same_box_crops((10, 12, 9), [7])) == 1


def test_volume_tags_keep_margin_runs_apart():
    from conditional_vs_repaint import volume_tag

    assert volume_tag("m", "fast", (48, 48, 48), 0) == "m_fast_48x48x48"
    assert volume_tag("m", "fast", (48, 48, 48), 2) == "m_fast_48x48x48_m2"


def test_paint_seeds_paints_only_those_boxes_and_writes_no_row(tmp_path, monkeypatch):
    import conditional_vs_repaint as cvr
    import numpy as np

    import numba

    # main() sets these with setdefault; pin them here so that the process keeps numba's thread count
    monkeypatch.setenv("NUMBA_NUM_THREADS", str(numba.config.NUMBA_NUM_THREADS))
    monkeypatch.setenv("GP_ENGINE_THREADS", "1")
    monkeypatch.setattr(cvr, "ROWS_JSON", tmp_path / "rows.json")
    monkeypatch.setattr(cvr, "ROWS_MD", tmp_path / "rows.md")
    work = tmp_path / "work"
    assert cvr.main(["--settings", "fast-s2-r1", "--shape", "12", "12", "12", "--paint-seeds", "1",
                     "--work", str(work), "--quiet"]) == 0
    painted = sorted(p.name for p in work.iterdir() if p.name.endswith(("_seed0", "_seed1")))
    assert len(painted) == 1 and painted[0].endswith("_fast-s2-r1_12x12x12_m2_seed1")
    assert np.load(work / painted[0] / "grains.npy").shape == (12, 12, 12)
    assert not (tmp_path / "rows.json").exists() and not (tmp_path / "rows.md").exists()

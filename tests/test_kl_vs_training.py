"""bench/kl_vs_training.py: which rows make the curve, how many blocks a model has seen, the power-law fit."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import kl_vs_training as kvt  # noqa: E402


def _row(model, steps, kl_aspect, *, kl_volume=0.05, setting="fast", necks=True, min_size=20, kind="unconditional", parent=None,
         volumes=8, shape=(48, 48, 48)):
    training = {"steps": steps, "samples_seen": 8 * steps, "init_from": parent}
    return {"model": model, "model_kind": kind, "setting": setting, "split_necks": necks,
            "segmentation": {"method": "dbscan", "min_size": min_size}, "volumes": volumes, "shape": list(shape),
            "model_training": training,
            "summary": {"kl_volume": kl_volume, "kl_aspect": kl_aspect, "kl_centroid": 0.08}}


PARENT = {"path": "v5.pt", "step": 5379, "samples_seen": 43032}


def test_blocks_seen_adds_the_parent_of_a_warm_start_only():
    # a lineage warm-started from v5 counts its own steps from zero: v6 = 7,618 own steps + v5's blocks
    assert kvt.blocks_seen({"steps": 7618, "samples_seen": 60944, "init_from": PARENT}) == 60944 + 43032
    assert kvt.blocks_seen({"steps": 100, "samples_seen": 800, "init_from": None}) == 800
    assert kvt.blocks_seen({}) is None


def test_select_keeps_the_lineage_setting_and_segmentation_only():
    rows = [_row("ext500-7618", 7618, 0.42, parent=PARENT),
            _row("mini3-ext500-15218-cooled", 15218, 0.37, parent=PARENT),
            _row("ext500-7618", 7618, 0.33, setting="balanced", parent=PARENT),       # another sampler
            _row("ext500-7618", 7618, 0.45, necks=False, parent=PARENT),              # no neck cut
            _row("ext500-7618", 7618, 0.41, min_size=80, parent=PARENT),              # another segmentation
            _row("cond-ext500-6565", 6565, 0.52, kind="conditional", parent=PARENT),  # conditional twin
            _row("mini3-plain-7458", 7458, 0.49),                                      # another lineage
            _row("ext500-7618", 7618, 0.385, volumes=4, shape=(100, 100, 100), parent=PARENT),
            _row("ext500-7618", 7618, 0.399, volumes=1, shape=(100, 100, 100), parent=PARENT),  # one volume
            _row("ext500-7618", 7618, 0.31, parent=PARENT) | {"margin": 2}]          # painted with a margin
    groups = kvt.select(rows, "fast", 20, "ext500")
    assert list(groups) == ["4×100x100x100", "8×48x48x48"]
    assert [(n, m) for n, m, _ in groups["8×48x48x48"]] == [(103976, "ext500-7618"),
                                                            (164776, "mini3-ext500-15218-cooled")]
    assert [kl["kl_aspect"] for *_, kl in groups["8×48x48x48"]] == [0.42, 0.37]
    assert [kl["kl_aspect"] for *_, kl in kvt.select(rows, "fast", 20, "ext500", margin=2)["8×48x48x48"]] == [0.31]


def test_power_fit_matches_numpy_polyfit_on_logs():
    rng = np.random.default_rng(0)
    xs = [1e5, 1.6e5, 2.2e5, 3e5]
    ys = list(0.9 * np.power(xs, -0.3) * np.exp(rng.normal(0, 0.05, 4)))
    b, log_a = np.polyfit(np.log(xs), np.log(ys), 1)
    a_fit, b_fit = kvt.power_fit(xs, ys)
    assert b_fit == pytest.approx(b, rel=1e-9) and a_fit == pytest.approx(np.exp(log_a), rel=1e-9)
    assert kvt.power_fit(xs[:2], ys[:2]) is None
    # an exact power law: 0.4 at 1e5 falling as blocks^-0.5 reaches 0.1 at 16x the blocks
    assert kvt.blocks_to_reach((0.4 * 1e5 ** 0.5, -0.5), 0.1) == pytest.approx(1.6e6)
    assert kvt.blocks_to_reach((1.0, 0.1), 0.1) is None


def test_main_writes_table_and_plot(tmp_path):
    rows = [_row("ext500-7618", 7618, 0.42, kl_volume=0.02, parent=PARENT),
            _row("ext500-12000", 12000, 0.39, kl_volume=0.04, parent=PARENT),
            _row("ext500-17853", 17853, 0.35, kl_volume=0.05, parent=PARENT)]
    src = tmp_path / "rows.json"
    src.write_text(json.dumps(rows))
    md, png = tmp_path / "k.md", tmp_path / "k.png"
    assert kvt.main(["--rows", str(src), "--md", str(md), "--plot", str(png)]) == 0
    text = md.read_text()
    assert "| 8×48x48x48 | ext500-17853 | 185,856 | 0.050 | 0.350 | 0.080 |" in text
    assert "kl aspect: b = -" in text and "kl volume: b = +" in text and "does not fall" in text
    assert png.stat().st_size > 10_000
    with pytest.raises(SystemExit, match="no rows of setting 'paper'"):
        kvt.main(["--rows", str(src), "--setting", "paper", "--md", str(md), "--plot", str(png)])

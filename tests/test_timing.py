"""`gp-engine plan` says how long a run takes here: from the last run's measured speed, or a probe."""

from __future__ import annotations

import json

import pytest

from gp_engine import timing


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GP_ENGINE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_a_run_records_its_speed_and_plan_uses_it(tmp_path, cache, capsys):
    from test_runtime import make_model_dir

    from gp_engine.cli import main
    from gp_engine.commands.plan import describe
    from gp_engine.generate import generate
    from gp_engine.plan_config import load_plan

    model = make_model_dir(tmp_path / "model")
    plan = {"version": 1, "geometry": {"shape": [64, 64, 64]}, "model": str(model),
            "sampler": {"preset": "fast", "steps": 40, "resample": 2}, "batch_size": 2,
            "backend": "onnxruntime", "seed": 1, "segmentation": {"method": "levels"},
            "outputs": {"dir": str(tmp_path / "out"), "formats": ["npy"]}}
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan))
    assert main(["plan", str(path)]) == 0
    assert "no run of this model" in capsys.readouterr().out
    res = generate(str(path), progress=False)
    t = res["timing"]
    assert t["seconds"] > 1.0, "the run must be long enough to be recorded; make the plan bigger"
    records = json.loads((cache / "speed.json").read_text())
    (rec,) = records.values()
    assert rec["block_evaluations_per_s"] == pytest.approx(t["block_evaluations_per_s"])
    assert rec["network_calls_per_s"] == pytest.approx(t["batches_run"] * t["evaluations_per_block"] / t["seconds"])
    assert main(["plan", str(path)]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    _, figures = describe(load_plan(str(path)))
    # onnxruntime on the CPU runs only the real rows: the estimate is block-evaluations / measured rate
    want = timing.human(figures["block_evaluations"] / rec["block_evaluations_per_s"])
    assert line.startswith(f"time: about {want} on onnxruntime"), line


def test_probe_gives_a_lower_bound(tmp_path, cache, capsys):
    from test_runtime import make_model_dir

    from gp_engine.cli import main

    model = make_model_dir(tmp_path / "model")
    path = tmp_path / "plan.json"
    path.write_text(json.dumps({"version": 1, "geometry": {"shape": [64, 64, 64]}, "model": str(model),
                                "sampler": {"preset": "fast"}, "batch_size": 2, "backend": "onnxruntime",
                                "outputs": {"dir": str(tmp_path / "out")}}))
    assert main(["plan", str(path), "--probe"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("time: at least") and "block-evaluations/s at batch 2" in line


def test_padding_engines_pay_per_call():
    assert timing.pays_per_call("tensorrt", {"onnx": {"dynamic_batch": True}})
    assert timing.pays_per_call("onnxruntime", {"onnx": {"dynamic_batch": False}})
    assert not timing.pays_per_call("onnxruntime", {"onnx": {"dynamic_batch": True}})


@pytest.mark.parametrize("s,text", [(5, "5 s"), (600, "10 min"), (7200, "2.0 h"), (5 * 86400, "5.0 days")])
def test_human(s, text):
    assert timing.human(s) == text

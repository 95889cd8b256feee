"""plan.json parsing: defaults, presets, path resolution, and errors that name the field."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from gp_engine.errors import GPEngineError
from gp_engine.plan_config import DEFAULTS, SAMPLER_PRESETS, load_plan

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
MINIMAL = {"version": 1, "geometry": {"shape": [64, 48, 40]}}


def _with(**changes):
    d = copy.deepcopy(MINIMAL)
    for key, value in changes.items():
        node = d
        parts = key.split("__")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return d


def test_minimal_plan_takes_documented_defaults(tmp_path):
    plan = load_plan(MINIMAL, base_dir=tmp_path)
    assert plan.geometry.shape == (64, 48, 40)
    assert plan.model is None
    paper = SAMPLER_PRESETS["paper"]
    assert (plan.sampler.preset, plan.sampler.steps, plan.sampler.resample, plan.sampler.jump,
            plan.sampler.tail) == ("auto", paper["steps"], paper["resample"], paper["jump"], paper["tail"])
    assert plan.sampler.clip_x0 is True
    assert plan.plan_kind == "grid"
    assert plan.batch_size == DEFAULTS["batch_size"] and plan.backend == "auto" and plan.seed == 0
    assert plan.segmentation.method == "auto" and plan.segmentation.eps == 1.9
    assert plan.segmentation.min_samples == 15 and plan.segmentation.value_scale == 32.0
    assert plan.segmentation.split_necks is True
    assert plan.outputs.dir == (tmp_path / "out").resolve()
    assert plan.outputs.formats == ("npy", "vti", "png")
    assert plan.reference is None and plan.checkpoint_every == 1


def test_paper_preset_is_the_paper():
    # paper/NOTES: T = 250 (all timesteps), r = 10, jump 1, no resampling in the last 25 steps
    assert SAMPLER_PRESETS["paper"] == {"steps": 250, "resample": 10, "jump": 1, "tail": 25, "eta": 1.0}
    fast = SAMPLER_PRESETS["fast"]
    assert fast["steps"] < 250 and fast["resample"] < 10


def test_balanced_preset_costs_twice_fast():
    from gp_engine.planner import evaluations_per_block

    plan = load_plan(_with(sampler={"preset": "balanced"}))
    s = plan.sampler
    assert (s.preset, s.steps, s.resample, s.jump, s.tail) == ("balanced", 100, 2, 1, 10)
    # RePaint's count written out: every step once, plus r repeats at each jump point 10, 11, ..., 98
    assert evaluations_per_block(s.steps, s.resample, s.jump, s.tail) == 100 + 2 * len(range(10, 99)) == 278
    fast = load_plan(_with(sampler={"preset": "fast"})).sampler
    assert evaluations_per_block(fast.steps, fast.resample, fast.jump, fast.tail) == 50 + 2 * len(range(5, 49)) == 138
    # a plan that overrides the steps keeps balanced's tail fraction (10 of 100 -> 20 of 200)
    assert load_plan(_with(sampler={"preset": "balanced", "steps": 200})).sampler.tail == 20


def test_sampler_overrides_and_tail_scaling():
    plan = load_plan(_with(sampler={"preset": "fast", "resample": 4, "no_resample_tail": 7}))
    assert (plan.sampler.steps, plan.sampler.resample, plan.sampler.tail) == (50, 4, 7)
    assert plan.sampler.no_resample_tail == 7
    # overriding steps alone keeps the preset's tail fraction (25/250 -> 10/100)
    plan = load_plan(_with(sampler={"preset": "paper", "steps": 100}))
    assert (plan.sampler.steps, plan.sampler.tail, plan.sampler.resample) == (100, 10, 10)


def test_relative_paths_resolve_against_the_plan_file(tmp_path, monkeypatch):
    sub = tmp_path / "plans"
    sub.mkdir()
    f = sub / "p.json"
    f.write_text(json.dumps(_with(model="../models/m", outputs={"dir": "res"},
                                  reference=["ref/a.npz", str(tmp_path / "abs.npz")])))
    monkeypatch.chdir(tmp_path.parent)
    plan = load_plan(str(f))
    assert plan.model == (tmp_path / "models" / "m").resolve()
    assert plan.outputs.dir == (sub / "res").resolve()
    assert plan.reference == ((sub / "ref" / "a.npz").resolve(), tmp_path / "abs.npz")
    assert plan.source == f.resolve()


def test_to_dict_round_trips(tmp_path):
    plan = load_plan(_with(sampler={"preset": "fast", "steps": 40, "clip_x0": False}, plan={"kind": "center"},
                           reference=["r.npz"], seed=7, outputs={"formats": ["npy", "npy", "field"]}),
                     base_dir=tmp_path)
    assert plan.outputs.formats == ("npy", "field")  # duplicates dropped, order kept
    d = plan.to_dict()
    json.dumps(d)  # JSON-able
    again = load_plan(d)
    assert again == plan and again.sampler.clip_x0 is False


@pytest.mark.parametrize("changes, path, allowed", [
    ({"geometry__shape": [64, 0, 64]}, "geometry.shape[1]", "≥ 1"),
    ({"geometry__shape": [64, 64]}, "geometry.shape", "3 integers"),
    ({"geometry__shape": "64x64x64"}, "geometry.shape", "3 integers"),
    ({"geometry__shape": [64, 64.5, 64]}, "geometry.shape[1]", "integer"),
    ({"geometry__shape": [64, True, 64]}, "geometry.shape[1]", "integer"),
    ({"geometry__margin": -1}, "geometry.margin", "from 0 to 16"),
    ({"geometry__margin": 2.5}, "geometry.margin", "integer"),
    ({"batch_size": 0}, "batch_size", "≥ 1"),
    ({"batch_size": "8"}, "batch_size", "integer"),
    ({"sampler__preset": "turbo"}, "sampler.preset", '"paper"'),
    ({"sampler__resample": -1}, "sampler.resample", "≥ 0"),
    ({"sampler__steps": 1}, "sampler.steps", "≥ 2"),
    ({"sampler__jump": 0}, "sampler.jump", "≥ 1"),
    ({"sampler__no_resample_tail": 250}, "sampler.no_resample_tail", "less than steps"),
    ({"sampler__clip_x0": "yes"}, "sampler.clip_x0", "true or false"),
    ({"backend": "tensort"}, "backend", "did you mean \"tensorrt\""),
    ({"plan__kind": "spiral"}, "plan.kind", '"center"'),
    ({"outputs__formats": ["npy", "tiff"]}, "outputs.formats[1]", '"spparks"'),
    ({"outputs__formats": []}, "outputs.formats", "non-empty"),
    ({"segmentation__eps": 2.0}, "segmentation.eps", "< 2"),
    ({"segmentation__method": "kmeans"}, "segmentation.method", '"levels"'),
    ({"segmentation__min_samples": 0}, "segmentation.min_samples", "≥ 1"),
    ({"segmentation__split_necks": "yes"}, "segmentation.split_necks", "true or false"),
    ({"seed": -3}, "seed", "integer from 0"),
    ({"reference": "a.npz"}, "reference", "list"),
    ({"checkpoint_every": -1}, "checkpoint_every", "≥ 0"),
    ({"model": 5}, "model", "path"),
    ({"version": 2}, "version", "version 1"),
])
def test_bad_values_name_the_field_value_and_fix(changes, path, allowed):
    d = _with(**changes)
    with pytest.raises(GPEngineError) as info:
        load_plan(d)
    msg = str(info.value)
    assert f"{path} = " in msg and allowed in msg and "Example fix:" in msg
    value = changes[next(iter(changes))]
    if path.endswith("]"):
        value = value[int(path[-2])]
    assert json.dumps(value) in msg


def test_eps_above_two_is_fine_for_levels():
    plan = load_plan(_with(segmentation={"method": "levels", "eps": 2.5}))
    assert plan.segmentation.eps == 2.5


@pytest.mark.parametrize("changes, key", [
    ({"batchsize": 4}, "batchsize"),
    ({"sampler__stepz": 10}, "sampler.stepz"),
    ({"outputs__directory": "x"}, "outputs.directory"),
])
def test_unknown_keys_are_named(changes, key):
    with pytest.raises(GPEngineError, match=f"unknown key '{key}'.*Allowed keys"):
        load_plan(_with(**changes))


def test_missing_and_reserved_fields():
    with pytest.raises(GPEngineError, match='"version" is missing'):
        load_plan({"geometry": {"shape": [8, 8, 8]}})
    with pytest.raises(GPEngineError, match='"geometry" is missing'):
        load_plan({"version": 1})
    with pytest.raises(GPEngineError, match="exactly one of pitch .* or size"):
        load_plan({"version": 1, "geometry": {"stl": "part.stl"}})
    with pytest.raises(GPEngineError, match="geometry.stl = .*part.stl does not exist"):
        load_plan({"version": 1, "geometry": {"stl": "part.stl", "size": 40}})


def test_malformed_json_reports_line_and_column(tmp_path):
    f = tmp_path / "bad.json"
    f.write_text('{\n  "version": 1,\n  "geometry": {"shape": [8, 8, 8]}\n  "seed": 3\n}\n')
    with pytest.raises(GPEngineError, match=r"line 4, column 3"):
        load_plan(f)
    with pytest.raises(GPEngineError, match="not found"):
        load_plan(tmp_path / "missing.json")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(GPEngineError, match="JSON object"):
        load_plan(tmp_path / "list.json")


@pytest.mark.parametrize("name", ["demo_cpu.json", "paper_100.json", "anisotropic_center.json"])
def test_examples_load(name):
    plan = load_plan(EXAMPLES / name)
    assert plan.source == (EXAMPLES / name).resolve()
    for ref in plan.reference or ():
        assert ref.is_file(), f"{name}: reference {ref} must be a shipped file"


def test_example_kinds():
    assert load_plan(EXAMPLES / "demo_cpu.json").sampler.preset == "fast"
    assert load_plan(EXAMPLES / "demo_cpu.json").backend == "onnxruntime"
    assert load_plan(EXAMPLES / "paper_100.json").geometry.shape == (100, 100, 100)
    assert load_plan(EXAMPLES / "anisotropic_center.json").plan_kind == "center"


def test_plan_command_prints_cost_and_draws(tmp_path, capsys):
    from gp_engine.cli import main

    png = tmp_path / "plan.png"
    assert main(["plan", str(EXAMPLES / "paper_100.json"), "--png", str(png)]) == 0
    out = capsys.readouterr().out
    # 100³ is cut out of a 104³ painted box (the default 2-voxel margin), planned with the same 64 blocks
    assert "painted with a 2-voxel margin beyond its faces: 104 x 104 x 104, cut out at the end" in out
    assert "blocks: 64" in out and "batches: 8 at batch size 8" in out
    assert f"{64 * 2490:,} block-evaluations" in out
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(_with(batch_size=0)))
    assert main(["plan", str(bad)]) == 2
    assert "batch_size = 0" in capsys.readouterr().err


def test_margin_is_recorded_only_when_given():
    from gp_engine.planner import DEFAULT_MARGIN

    plain = load_plan(_with())
    assert plain.geometry.margin is None and plain.geometry.painted_margin == DEFAULT_MARGIN
    assert "margin" not in plain.to_dict()["geometry"]
    given = load_plan(_with(geometry__margin=0))
    assert given.geometry.painted_margin == 0 and given.to_dict()["geometry"]["margin"] == 0
    assert load_plan(given.to_dict()).geometry == given.geometry


def test_auto_sampler_preset_follows_the_model_kind():
    from gp_engine.plan_config import resolve_sampler

    plan = load_plan(_with(sampler={"steps": 100}))
    assert plan.sampler.preset == "auto"
    cond = resolve_sampler(plan.sampler, "conditional")
    assert (cond.preset, cond.steps, cond.resample) == ("conditional", 100, 2)
    unc = resolve_sampler(plan.sampler, "unconditional")
    assert (unc.preset, unc.steps, unc.resample, unc.tail) == ("paper", 100, 10, 10)
    assert resolve_sampler(load_plan(_with(sampler={"preset": "fast"})).sampler, "conditional").preset == "fast"
    assert resolve_sampler(load_plan(_with(sampler={"resample": 3})).sampler, "conditional").resample == 3
    with pytest.raises(GPEngineError, match="sampler.eta"):  # checked once the model is known
        resolve_sampler(load_plan(_with(sampler={"eta": 0.0})).sampler, "conditional")
    assert resolve_sampler(load_plan(_with(sampler={"eta": 0.0, "resample": 0})).sampler, "conditional").eta == 0.0


def test_sharpen_x0_field():
    assert load_plan(_with(sampler={"preset": "fast"})).sampler.sharpen_x0 is None
    assert load_plan(_with(sampler={"preset": "fast", "sharpen_x0": 2})).sampler.sharpen_x0 == 2.0
    for bad in (-1, "4", True, 1e9):
        with pytest.raises(GPEngineError, match=r"sampler\.sharpen_x0"):
            load_plan(_with(sampler={"preset": "fast", "sharpen_x0": bad}))

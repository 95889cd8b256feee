"""The model's own defaults: the x̂0 sharpening κ and the segmentation min_size a plan gets when it names none."""

import json

import numpy as np
import pytest

from conftest import bits_runs
from gp_engine.errors import GPEngineError


def _alpha_bar_top(T, beta_end):
    """ᾱ_T of a linear β ramp from 1e-4, written out (not through gp_engine.diffusion)."""
    return float(np.prod(1.0 - np.linspace(1e-4, beta_end, T)))


def test_default_sharpen_follows_encoding_and_schedule():
    from gp_engine.generate import DEFAULT_SHARPEN, default_sharpen, model_sharpen, sharpen_for

    t250 = {"kind": "linear", "T": 250, "beta_start": 1e-4, "beta_end": 0.02}
    t500 = {"kind": "linear", "T": 500, "beta_start": 1e-4, "beta_end": 0.02 + 250 * (0.02 - 1e-4) / 249}
    assert _alpha_bar_top(250, 0.02) > 0.05 and _alpha_bar_top(500, t500["beta_end"]) < 1e-4
    assert default_sharpen("bits", t250) == DEFAULT_SHARPEN > 0  # the top still shows the data
    assert default_sharpen("bits", t500) == 0.0  # starts from noise: no sharpening
    assert default_sharpen("separable", t250) == 0.0 and default_sharpen("paper", t250) == 0.0
    old = {"encoding": {"kind": "bits", "bits": 4, "levels": 16}, "schedule": t250}  # no sampler_defaults
    assert model_sharpen(old) == DEFAULT_SHARPEN
    assert model_sharpen({**old, "schedule": t500}) == 0.0
    assert model_sharpen({**old, "sampler_defaults": {"sharpen_x0": 1.5}}) == 1.5  # the manifest wins
    assert sharpen_for({**old, "sampler_defaults": {"sharpen_x0": 1.5}}, 3) == 3.0  # and the plan over it
    assert sharpen_for(old, 0) == 0.0


def test_manifest_rejects_a_bad_sampler_default():
    from gp_engine.export.manifest import read_manifest, validate_manifest

    m = read_manifest(None)  # the shipped default
    validate_manifest({**m, "sampler_defaults": {"sharpen_x0": 2}})
    for bad in (-1, "4", True, 1e9, [1]):
        with pytest.raises(GPEngineError, match=r"sampler_defaults\.sharpen_x0"):
            validate_manifest({**m, "sampler_defaults": {"sharpen_x0": bad}})
    with pytest.raises(GPEngineError, match=r"sampler_defaults"):
        validate_manifest({**m, "sampler_defaults": [4]})


def test_model_min_size_follows_the_manifest():
    from gp_engine.generate import AUTO_BITS_MIN_SIZE, model_min_size

    old = {"encoding": {"kind": "bits", "bits": 4, "levels": 16}}  # built before segmentation_defaults
    assert AUTO_BITS_MIN_SIZE == 80 and model_min_size(old) == 80
    assert model_min_size({**old, "segmentation_defaults": {"min_size": 7}}) == 7
    assert model_min_size({**old, "segmentation_defaults": {"min_size": None}}) == 80
    assert model_min_size({"encoding": {"kind": "separable", "levels": 10}}) is None  # levels' own default


def test_manifest_rejects_a_bad_segmentation_default():
    from gp_engine.export.manifest import read_manifest, validate_manifest

    m = read_manifest(None)  # the shipped default names its own
    assert m["segmentation_defaults"] == {"min_size": 20}
    validate_manifest({**m, "segmentation_defaults": {"min_size": 1}})
    for bad in (0, -3, "20", True, 2.5, [20]):
        with pytest.raises(GPEngineError, match=r"segmentation_defaults\.min_size"):
            validate_manifest({**m, "segmentation_defaults": {"min_size": bad}})
    with pytest.raises(GPEngineError, match=r"segmentation_defaults"):
        validate_manifest({**m, "segmentation_defaults": 20})


@pytest.fixture(scope="module")
def ext_run(tmp_path_factory):
    """A tiny T = 250 bits parent and its child on the schedule extended to T = 500."""
    d = tmp_path_factory.mktemp("ext")
    bits_runs(d, "ext.pt", 1, extend_schedule=500)
    return d


def _generate(model, out):
    from gp_engine.generate import generate

    plan = {"version": 1, "geometry": {"shape": [36, 36, 36]}, "model": str(model), "batch_size": 2,
            "sampler": {"preset": "fast", "steps": 3}, "outputs": {"dir": str(out), "formats": ["npy"]}}
    generate(plan, progress=False)
    stats = json.loads((out / "stats.json").read_text())
    return stats["timing"]["sampler"]["sharpen_x0"]


def test_build_writes_the_models_sharpening_and_generate_uses_it(ext_run, tmp_path):
    from gp_engine.export import build_model

    d, quiet = ext_run, (lambda *a: None)
    plain = build_model(d / "plain.pt", tmp_path / "plain", batch_sizes=[2], log=quiet)
    ext = build_model(d / "ext.pt", tmp_path / "ext", batch_sizes=[2], log=quiet)
    assert plain["sampler_defaults"] == {"sharpen_x0": 4.0}
    assert ext["schedule"]["T"] == 500 and ext["sampler_defaults"] == {"sharpen_x0": 0.0}
    assert _generate(tmp_path / "ext", tmp_path / "o_ext") == 0.0
    assert _generate(tmp_path / "plain", tmp_path / "o_plain") == 4.0
    chosen = build_model(d / "ext.pt", tmp_path / "ext2", batch_sizes=[2], log=quiet, sharpen_x0=1.5)
    assert chosen["sampler_defaults"] == {"sharpen_x0": 1.5}
    assert _generate(tmp_path / "ext2", tmp_path / "o_ext2") == 1.5
    with pytest.raises(GPEngineError, match="--sharpen-x0"):
        build_model(d / "ext.pt", tmp_path / "ext3", batch_sizes=[2], log=quiet, sharpen_x0=-1)
    assert not (tmp_path / "ext3").exists()


def test_build_writes_the_models_min_size_and_generate_uses_it(ext_run, tmp_path):
    from gp_engine.export import build_model

    d, quiet = ext_run, (lambda *a: None)
    own = build_model(d / "ext.pt", tmp_path / "own", batch_sizes=[2], log=quiet)
    assert own["segmentation_defaults"] == {"min_size": 80}  # not told: the conservative default
    chosen = build_model(d / "ext.pt", tmp_path / "m5", batch_sizes=[2], log=quiet, min_size=5)
    assert chosen["segmentation_defaults"] == {"min_size": 5}
    _generate(tmp_path / "m5", tmp_path / "o5")
    assert json.loads((tmp_path / "o5" / "stats.json").read_text())["segmentation"]["min_size"] == 5
    with pytest.raises(GPEngineError, match="--min-size"):
        build_model(d / "ext.pt", tmp_path / "m0", batch_sizes=[2], log=quiet, min_size=0)
    assert not (tmp_path / "m0").exists()

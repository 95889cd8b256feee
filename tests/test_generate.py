"""Canvas checkpoints, resume, overwrite refusal, NaN detection, and `gp-engine generate` end to end."""

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from gp_engine import repaint
from gp_engine.canvas import Canvas, check_disk_space
from gp_engine.diffusion import linear_schedule
from gp_engine.errors import GPEngineError
from gp_engine.generate import Interrupted, sample_canvas

SHAPE = (96, 32, 40)


def fake_blocks():
    """Two independent stage-1 blocks and one overlapping both (8-voxel overlaps)."""
    B = SimpleNamespace
    return [B(index=0, corner=(0, 0, 0), stage=1, deps=()),
            B(index=1, corner=(64, 0, 8), stage=1, deps=()),
            B(index=2, corner=(24, 0, 4), stage=2, deps=(0, 1)),
            B(index=3, corner=(48, 0, 8), stage=3, deps=(1, 2))]


BATCHES = {1: [[0], [1], [2], [3]], 2: [[0, 1], [2], [3]], 4: [[0, 1], [2], [3]]}


class LinearFake:
    """ε = 0.1·x + 0.001·t: deterministic and batch-independent."""

    name = "fake"

    def __init__(self, batch_size, nan_block=None):
        self.batch_size, self.nan_block = batch_size, nan_block
        self.calls = 0

    def predict_eps(self, x, t):
        self.calls += 1
        out = 0.1 * x + 0.001 * t.reshape(-1, 1, 1, 1, 1)
        if self.nan_block is not None:
            out[0, 0, 1, 2, 3] = np.inf
        return out.astype(np.float32)


def setup():
    return repaint.make_setup(linear_schedule(250), SimpleNamespace(steps=5, resample=1, jump=1, tail=1))


META = {"plan_hash": "abc", "seed": 3, "model": "m1", "shape": list(SHAPE)}


def run_all(canvas, bs, **kw):
    return sample_canvas(LinearFake(bs), fake_blocks(), BATCHES[bs], canvas, setup(), seed=3,
                         progress=False, **kw)


def test_stitching_known_mask_and_mid_range():
    c = Canvas.in_memory(SHAPE)
    run_all(c, 2)
    assert c.known[:, :, :].sum() == np.count_nonzero(c.known)
    # union of the four blocks clipped to the canvas is known, the rest is not
    expect = np.zeros(SHAPE, bool)
    for b in fake_blocks():
        x, y, z = b.corner
        expect[x:x + 32, y:y + 32, z:z + 32] = True
    np.testing.assert_array_equal(c.known.astype(bool), expect)
    first = c.values[0:24, :, 0:32]   # block 0's voxels not overwritten by later blocks
    blk0 = np.asarray(c.values[0:32, 0:32, 0:32])
    assert np.isfinite(first).all()
    # stage-1 blocks were shifted by their mid-range before later blocks read them
    block1 = c.values[64:96, 0:32, 8:40]
    assert block1.shape == (32, 32, 32) and np.isfinite(blk0).all()
    # later blocks keep the already-known voxels exactly (block 3 overlaps block 1 at x 64..80)
    c2 = Canvas.in_memory(SHAPE)
    sample_canvas(LinearFake(1), fake_blocks()[:2], [[0], [1]], c2, setup(), seed=3, progress=False)
    b1_alone = np.asarray(c2.values[64:96, 0:32, 8:40])
    assert 0.5 * (b1_alone.min() + b1_alone.max()) == pytest.approx(0.0, abs=1e-6)
    np.testing.assert_array_equal(np.asarray(c.values[80:96, 0:32, 8:40]), b1_alone[16:])


def test_batch_grouping_does_not_change_voxels():
    ref = Canvas.in_memory(SHAPE)
    run_all(ref, 1)
    other = Canvas.in_memory(SHAPE)
    run_all(other, 2)
    np.testing.assert_array_equal(ref.values, other.values)
    padded = Canvas.in_memory(SHAPE)
    run_all(padded, 4)          # partial batches padded to 4
    np.testing.assert_array_equal(ref.values, padded.values)


def test_resume_after_interrupt_gives_same_voxels(tmp_path):
    ref = Canvas.in_memory(SHAPE)
    run_all(ref, 1)
    c = Canvas.create(tmp_path / "run", SHAPE, META)
    with pytest.raises(Interrupted):
        run_all(c, 1, stop_after=2)
    state = json.loads((tmp_path / "run/canvas/state.json").read_text())
    assert state["completed"] == [0, 1]
    del c
    c = Canvas.resume(tmp_path / "run", META)
    eng = LinearFake(1)
    sample_canvas(eng, fake_blocks(), BATCHES[1], c, setup(), seed=3, progress=False)
    assert eng.calls == 2 * setup().evaluations          # only the two missing batches ran
    np.testing.assert_array_equal(np.asarray(c.values), ref.values)
    np.testing.assert_array_equal(np.load(tmp_path / "run/canvas/values.npy"), ref.values)


def test_journal_is_replayed_on_resume(tmp_path):
    """A kill between writing the journal and the state file: resume applies the journal."""
    c = Canvas.create(tmp_path / "run", SHAPE, META)
    res = np.full((1, 32, 32, 32), 0.25, np.float32)
    np.savez(tmp_path / "run/canvas/pending.npz", batch=np.int64(0),
             corners=np.array([[0, 0, 0]]), results=res)
    del c
    c = Canvas.resume(tmp_path / "run", META)
    assert c.completed == {0}
    assert np.all(np.asarray(c.values[:32, :, :32]) == 0.25) and c.known[:32, :, :32].all()
    assert not (tmp_path / "run/canvas/pending.npz").exists()


def test_refuses_overwrite_and_mismatched_resume(tmp_path):
    Canvas.create(tmp_path / "run", SHAPE, META)
    with pytest.raises(GPEngineError, match="--force"):
        Canvas.create(tmp_path / "run", SHAPE, META)
    Canvas.create(tmp_path / "run", SHAPE, META, force=True)
    with pytest.raises(GPEngineError, match="seed: run has 3, now 4"):
        Canvas.resume(tmp_path / "run", META | {"seed": 4})
    with pytest.raises(GPEngineError, match="nothing to resume"):
        Canvas.resume(tmp_path / "other", META)


def test_disk_space_check(tmp_path):
    with pytest.raises(GPEngineError, match="disk space"):
        check_disk_space(tmp_path, 10**15)
    check_disk_space(tmp_path, 1000)


def test_nan_in_network_output_names_block():
    c = Canvas.in_memory(SHAPE)
    with pytest.raises(GPEngineError, match=r"batch 0: .*block\(s\) \[0\]"):
        sample_canvas(LinearFake(1, nan_block=True), fake_blocks(), BATCHES[1], c, setup(),
                      seed=3, progress=False)


# ------------------------------------------------------------------ end to end (CLI)


def write_plan(tmp_path: Path) -> Path:
    from test_runtime import make_model_dir

    model = make_model_dir(tmp_path / "model")
    plan = {"version": 1, "geometry": {"shape": [40, 40, 40]}, "model": str(model),
            "sampler": {"preset": "fast", "steps": 4, "resample": 1, "jump": 1, "no_resample_tail": 1},
            "batch_size": 4, "backend": "onnxruntime", "seed": 11,
            "segmentation": {"method": "dbscan", "eps": 1.9, "min_samples": 5, "value_scale": 32.0},
            "outputs": {"dir": str(tmp_path / "out"), "formats": ["npy", "vti", "spparks", "png"]}}
    p = tmp_path / "plan.json"
    p.write_text(json.dumps(plan))
    return p


def cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "gp_engine.cli", "generate", *args, "--quiet"],
                          capture_output=True, text=True, env=env, timeout=120)


def test_generate_end_to_end_with_kill_and_resume(tmp_path):
    from gp_engine.generate import generate

    plan = write_plan(tmp_path)
    out = tmp_path / "out"
    res = generate(str(plan), out_dir=tmp_path / "ref", progress=False)
    assert {p.name for p in res["outputs"].values()} == {
        "grains.npy", "field.npy", "grains.vti", "grains.dump", "slices.png", "render.png", "stats.json"}
    ref_field = np.load(tmp_path / "ref/field.npy")
    ids = np.load(tmp_path / "ref/grains.npy")
    assert ref_field.shape == ids.shape == (40, 40, 40) and np.isfinite(ref_field).all()
    assert ids.min() >= 1
    stats = json.loads((tmp_path / "ref/stats.json").read_text())  # strict JSON (no NaN)
    assert stats["summary"]["grains"] >= 1 and stats["timing"]["blocks"] == 8
    # the plan's segmentation of the painted box (the default 2-voxel margin: 44³, kept in the canvas),
    # the 40³ box cut out of it and relabelled, then the cut at thin necks (on by default)
    from gp_engine.grains import split_grains
    from gp_engine.necks import split_necks
    from gp_engine.segment import segment

    painted = np.load(tmp_path / "ref/canvas/values.npy")
    assert painted.shape == (44, 44, 44) and stats["painted"] == {"shape": [44, 44, 44], "margin": 2}
    np.testing.assert_array_equal(painted[2:42, 2:42, 2:42], ref_field)
    plain = split_grains(segment(painted, method="dbscan", eps=1.9, min_samples=5, value_scale=32.0)[2:42, 2:42, 2:42])
    np.testing.assert_array_equal(ids, split_necks(plain))
    assert stats["split_necks"]["grains_cut"] >= 1 and not np.array_equal(ids, plain)
    off = json.loads(plan.read_text())
    off["segmentation"]["split_necks"] = False
    generate(off, out_dir=tmp_path / "plain", progress=False)
    np.testing.assert_array_equal(np.load(tmp_path / "plain/grains.npy"), plain)
    assert "split_necks" not in json.loads((tmp_path / "plain/stats.json").read_text())
    with pytest.raises(GPEngineError, match="--force"):       # refuses to overwrite
        generate(str(plan), out_dir=tmp_path / "ref", progress=False)
    # the CLI killed (SIGKILL) after its first batch, then resumed: identical voxels
    env = dict(os.environ, GP_ENGINE_KILL_AFTER_BATCHES="1")
    r = cli(str(plan), env=env)
    assert r.returncode != 0 and not (out / "field.npy").exists()
    state = json.loads((out / "canvas/state.json").read_text())
    assert state["completed"] == [0]
    r = cli(str(plan), "--resume")
    assert r.returncode == 0, r.stderr
    assert "slices.png" in r.stdout
    np.testing.assert_array_equal(np.load(out / "field.npy"), ref_field)
    np.testing.assert_array_equal(np.load(out / "grains.npy"), ids)
    # resume with another seed is refused with a clear message
    plan.write_text(json.dumps(json.loads(plan.read_text()) | {"seed": 12}))
    with pytest.raises(GPEngineError, match="seed"):
        generate(str(plan), resume=True, progress=False)


@pytest.mark.parametrize("model", ["tiny", "shipped"])
def test_large_volumes_cut_the_painted_box_out_tile_by_tile(tmp_path, monkeypatch, model):
    # a volume over IN_RAM_VOXELS is segmented into a memmap; its box must then be cut out and
    # relabelled tile by tile on disk too (not loaded whole), giving the grains of the in-RAM path;
    # the shipped model's analog bits are decoded slab by slab into a memmap first
    import gp_engine.encoding as enc_mod
    import gp_engine.generate as gen_mod
    import gp_engine.grains as grains_mod

    plan = write_plan(tmp_path)
    if model == "shipped":
        d = json.loads(plan.read_text())
        d["model"], d["geometry"]["shape"] = None, [28, 28, 28]   # painted as one 32³ block
        plan.write_text(json.dumps(d))
        decoded = []
        real_display = enc_mod.bits_display
        monkeypatch.setattr(enc_mod, "bits_display",
                            lambda f, out=None: decoded.append(type(out)) or real_display(f, out=out))
    gen_mod.generate(str(plan), out_dir=tmp_path / "ram", progress=False)
    monkeypatch.setattr(gen_mod, "IN_RAM_VOXELS", 1000)
    monkeypatch.setattr(grains_mod, "TILE", 16)
    tiled = []
    real = grains_mod.split_grains_tiled
    monkeypatch.setattr(grains_mod, "split_grains_tiled",
                        lambda labels, tile, **kw: tiled.append((type(labels), tile)) or real(labels, tile, **kw))
    gen_mod.generate(str(plan), out_dir=tmp_path / "big", progress=False)
    assert tiled == [(np.memmap, 16)]
    assert (tmp_path / "big/canvas/grains_box.npy").is_file()
    np.testing.assert_array_equal(np.load(tmp_path / "ram/field.npy"), np.load(tmp_path / "big/field.npy"))
    if model == "shipped":
        assert decoded == [type(None), np.memmap] and (tmp_path / "big/canvas/display.npy").is_file()
    from test_segment import assert_same_partition

    a, b = np.load(tmp_path / "ram/grains.npy"), np.load(tmp_path / "big/grains.npy")
    assert a.shape == b.shape == ((28,) * 3 if model == "shipped" else (40,) * 3) and a.max() > 20
    assert_same_partition(a, b)


def test_painted_box_adds_the_margin_beyond_non_periodic_faces():
    from gp_engine.planner import painted_box

    assert painted_box((40, 10, 7), 2) == ((44, 14, 11), (2, 2, 2))
    assert painted_box((40, 48, 7), 3, (False, True, False)) == ((46, 48, 13), (3, 0, 3))
    assert painted_box((40, 40, 40), 0) == ((40, 40, 40), (0, 0, 0))
    with pytest.raises(GPEngineError, match="margin"):
        painted_box((40, 40, 40), -1)


def test_a_canvas_from_before_margins_resumes_without_one(tmp_path):
    """A run started by a gp-engine without margins (canvas meta without "margin", plan without the key)
    finishes as it began, with no margin; asking for a margin on resume is refused naming it."""
    from gp_engine.generate import generate, plan_hash
    from gp_engine.plan_config import load_plan

    plan = write_plan(tmp_path)
    base = json.loads(plan.read_text())
    zero = json.loads(json.dumps(base))
    zero["geometry"]["margin"] = 0
    ref = generate(zero, out_dir=tmp_path / "ref", progress=False)
    assert ref["stats"]["painted"] == {"shape": [40, 40, 40], "margin": 0}
    out = tmp_path / "out"
    zero_plan = tmp_path / "zero.json"
    zero_plan.write_text(json.dumps(zero))
    r = cli(str(zero_plan), env=dict(os.environ, GP_ENGINE_KILL_AFTER_BATCHES="1"))
    assert r.returncode != 0
    # what the older gp-engine would have written: no margin in the meta, the hash of the plan as given
    state_path = out / "canvas/state.json"
    state = json.loads(state_path.read_text())
    assert state["meta"].pop("margin") == 0
    state["meta"]["plan_hash"] = plan_hash(load_plan(plan))
    state_path.write_text(json.dumps(state))
    explicit = json.loads(json.dumps(base))
    explicit["geometry"]["margin"] = 2
    with pytest.raises(GPEngineError, match="margin"):
        generate(explicit, resume=True, progress=False)
    r = cli(str(plan), "--resume")
    assert r.returncode == 0, r.stderr
    np.testing.assert_array_equal(np.load(out / "field.npy"), np.load(tmp_path / "ref/field.npy"))
    np.testing.assert_array_equal(np.load(out / "grains.npy"), np.load(tmp_path / "ref/grains.npy"))
    assert json.loads((out / "stats.json").read_text())["painted"]["margin"] == 0


def test_auto_segmentation_follows_the_model_encoding():
    """method "auto" = levels for a separable-encoded model (K levels), dbscan for the paper encoding,
    dbscan with min_size 80 on the decoded codes for analog bits."""
    from gp_engine.encoding import separable_encode
    from gp_engine.generate import segment_field
    from gp_engine.segment import segment

    rng = np.random.default_rng(3)
    ids = np.repeat(np.repeat(np.repeat(rng.integers(1, 40, (4, 4, 4)), 6, 0), 6, 1), 6, 2)
    field = separable_encode(ids, 10, rng=0)
    field = (field + rng.normal(0, 0.03, field.shape)).astype(np.float32)
    auto_sep = segment_field(field, {"method": "auto"}, levels=10)
    np.testing.assert_array_equal(auto_sep, segment(field, method="levels", levels=10))
    auto_paper = segment_field(field, {"method": "auto"}, levels=None)
    np.testing.assert_array_equal(auto_paper, segment(field, method="dbscan"))
    assert not np.array_equal(auto_sep, auto_paper)
    # analog bits: DBSCAN on the decoded codes with clusters under 80 voxels refilled
    from gp_engine.encoding import bits_display, bits_encode

    small = ids.copy()
    small[:3, :3, :3] = 99  # a 27-voxel grain: kept by plain dbscan, refilled with min_size 80
    bits = bits_encode(small, 3, rng=0) + rng.normal(0, 0.3, (3,) + ids.shape).astype(np.float32)
    disp = bits_display(bits)
    auto_bits = segment_field(disp, {"method": "auto"}, levels=8, encoding_kind="bits")
    np.testing.assert_array_equal(auto_bits, segment(disp, method="dbscan", min_size=80))
    assert not np.array_equal(auto_bits, segment(disp, method="dbscan"))
    # a model that names its own min_size (manifest segmentation_defaults): the 27-voxel grain stays
    own = segment_field(disp, {"method": "auto"}, levels=8, encoding_kind="bits", auto_min_size=20)
    np.testing.assert_array_equal(own, segment(disp, method="dbscan", min_size=20))
    assert len(np.unique(own)) == len(np.unique(auto_bits)) + 1
    # and a plan's min_size wins over the model's
    planned = segment_field(disp, {"method": "auto", "min_size": 80}, levels=8, encoding_kind="bits", auto_min_size=20)
    np.testing.assert_array_equal(planned, auto_bits)


def test_shipped_model_same_voxels_for_any_batch_size_and_thread_count(tmp_path, monkeypatch):
    """Determinism on the real U-Net: batch 1 on one thread and batch 4 on two give identical voxels."""
    from gp_engine.generate import generate

    def run(bs, threads):
        monkeypatch.setenv("GP_ENGINE_THREADS", str(threads))
        out = tmp_path / f"b{bs}t{threads}"
        plan = {"version": 1, "geometry": {"shape": [40, 40, 36]},
                "sampler": {"preset": "fast", "steps": 8, "resample": 1}, "batch_size": bs,
                "backend": "onnxruntime", "seed": 5, "outputs": {"dir": str(out), "formats": ["npy"]}}
        generate(plan, out_dir=out, force=True, progress=False)
        return np.load(out / "field.npy"), np.load(out / "grains.npy")

    f1, g1 = run(1, 1)
    f4, g4 = run(4, 2)
    assert np.isfinite(f1).all() and f1.std() > 0.05
    np.testing.assert_array_equal(f1, f4)
    np.testing.assert_array_equal(g1, g4)


def test_plan_may_name_a_trainer_checkpoint(tmp_path):
    """model = model.pt: built once into OUT/model/ and giving the same voxels as the built model."""
    from gp_engine.export.manifest import DEFAULT_MODEL_DIR
    from gp_engine.generate import generate

    def run(model, name):
        out = tmp_path / name
        plan = {"version": 1, "geometry": {"shape": [36, 32, 32]}, "model": model,
                "sampler": {"preset": "fast", "steps": 6, "resample": 1}, "backend": "onnxruntime",
                "seed": 2, "outputs": {"dir": str(out), "formats": ["npy"]}}
        generate(plan, out_dir=out, force=True, progress=False)
        return out

    ref = run(None, "shipped")
    ckpt = DEFAULT_MODEL_DIR / "model.pt"
    got = run(str(ckpt), "from_pt")
    manifest = json.loads((got / "model" / "manifest.json").read_text())
    assert manifest["built_from_sha256"] and (got / "model" / "model.onnx").is_file()
    # the same weights, but not the same ONNX bytes when the shipped graph was exported on another machine:
    # onnxruntime's CPU kernels then round differently (measured on an AVX-512 Xeon after this 6-step walk:
    # max 1.4e-4, mean 2.7e-6 of fields ~0.7); another model would differ by O(0.1) everywhere
    a, b = np.load(got / "field.npy"), np.load(ref / "field.npy")
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-3)
    assert float(np.abs(a - b).mean()) < 1e-4
    onnx_mtime = (got / "model" / "model.onnx").stat().st_mtime_ns
    run(str(ckpt), "from_pt")  # unchanged checkpoint: the build is reused
    assert (got / "model" / "model.onnx").stat().st_mtime_ns == onnx_mtime

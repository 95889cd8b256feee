"""Lose nothing: forced runs replace results only once the new ones exist, foreign folders are never
written into or removed, resume refuses a damaged canvas, limits are checked before any work, outputs
come before statistics, one run per folder. Plus the fault test: kill -9 at a random batch, damage a
canvas file, resume -> byte-identical output or a one-line refusal, never silent corruption."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gp_engine.errors import GPEngineError
from gp_engine.generate import generate

SHAPE = [40, 40, 40]  # 8 blocks; at batch 2: 8 batches (grid stages 1-8 hold one block each here)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from test_runtime import make_model_dir

    return make_model_dir(tmp_path_factory.mktemp("model") / "m")


def plan_dict(model_dir, out, **over):
    d = {"version": 1, "geometry": {"shape": SHAPE}, "model": str(model_dir),
         "sampler": {"preset": "fast", "steps": 3, "resample": 1, "jump": 1, "no_resample_tail": 1},
         "batch_size": 2, "backend": "onnxruntime", "seed": 7,
         "segmentation": {"method": "levels"},
         "outputs": {"dir": str(out), "formats": ["npy", "png"]}}
    d.update(over)
    return d


def write(tmp_path, d, name="plan.json") -> Path:
    p = tmp_path / name
    p.write_text(json.dumps(d))
    return p


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every regular file under ``folder`` (relative path -> bytes)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def outputs_of(folder: Path) -> dict[str, bytes]:
    return {k: v for k, v in snapshot(folder).items() if k in ("grains.npy", "field.npy", "slices.png")}


# ------------------------------------------------------------------ forced runs and foreign folders


def test_forced_run_that_fails_at_once_keeps_previous_results(tmp_path, model):
    out = tmp_path / "out"
    generate(plan_dict(model, out), progress=False)
    before = snapshot(out)
    for bad in ({"model": str(tmp_path / "no-such-model")},             # model does not resolve
                {"reference": [str(tmp_path / "typo.npz")]},            # mistyped reference
                {"backend": "tensorrt"}):                               # backend missing here
        with pytest.raises(GPEngineError):
            generate(plan_dict(model, out, **bad), force=True, progress=False)
        after = snapshot(out)
        assert {k: v for k, v in after.items() if k != ".gp-engine.lock"} == \
               {k: v for k, v in before.items() if k != ".gp-engine.lock"}, bad


def test_forced_run_interrupted_keeps_previous_results_then_resume_swaps(tmp_path, model):
    from gp_engine.generate import Interrupted

    out = tmp_path / "out"
    generate(plan_dict(model, out), progress=False)
    old = outputs_of(out)
    new_plan = plan_dict(model, out, seed=8)
    with pytest.raises(Interrupted):
        generate(new_plan, force=True, progress=False, stop_after=3)
    assert outputs_of(out) == old                          # the previous results are untouched
    assert (out / "canvas").is_dir() and (out / "canvas.new").is_dir()
    # --resume continues the forced run (its canvas.new) and swaps it in when complete
    generate(new_plan, resume=True, progress=False)
    ref = generate(new_plan, out_dir=tmp_path / "ref", progress=False)
    got = outputs_of(out)
    assert got["field.npy"] == (tmp_path / "ref/field.npy").read_bytes() != old["field.npy"]
    assert not (out / "canvas.new").exists() and (out / "canvas/state.json").is_file()
    assert ref["stats"]["seed"] == 8 and json.loads((out / "stats.json").read_text())["seed"] == 8


def test_formats_of_the_previous_run_are_removed_only_after_the_swap(tmp_path, model):
    out = tmp_path / "out"
    generate(plan_dict(model, out, outputs={"dir": str(out), "formats": ["npy", "png", "spparks"]}),
             progress=False)
    assert (out / "grains.dump").is_file()
    generate(plan_dict(model, out, seed=9), force=True, progress=False)   # formats npy, png
    assert not (out / "grains.dump").exists()         # stale result of the replaced run
    assert not list(out.glob(".staging-*"))


def test_foreign_output_folder_is_never_written_even_with_force(tmp_path, model):
    home = tmp_path / "home"
    home.mkdir()
    (home / "grains.npy").write_bytes(b"my thesis data")
    (home / "notes.txt").write_text("keep")
    before = snapshot(home)
    for force in (False, True):
        with pytest.raises(GPEngineError, match="did not write"):
            generate(plan_dict(model, home), force=force, progress=False)
    assert snapshot(home) == before


def test_foreign_canvas_folder_is_not_removed_by_force(tmp_path, model):
    out = tmp_path / "out"
    generate(plan_dict(model, out), progress=False)
    user = out / "canvas" / "my_results.csv"   # a user's file inside our canvas folder
    user.write_text("1,2,3")
    with pytest.raises(GPEngineError, match="not a gp-engine canvas"):
        generate(plan_dict(model, out, seed=8), force=True, progress=False)
    assert user.read_text() == "1,2,3"


def test_second_run_on_a_folder_in_use_is_refused(tmp_path, model):
    from gp_engine import run_dir

    out = tmp_path / "out"
    run_dir.claim(out)
    with run_dir.RunLock(out):
        with pytest.raises(GPEngineError, match="in use by another gp-engine run"):
            generate(plan_dict(model, out), progress=False)
    generate(plan_dict(model, out), progress=False)   # the lock is gone with its holder


def test_lock_is_released_by_a_killed_process(tmp_path):
    """flock dies with its process, even on SIGKILL: a stale lock file never blocks a later run."""
    from gp_engine import run_dir

    out = tmp_path / "out"
    run_dir.claim(out)
    code = ("import sys, os, signal; from gp_engine import run_dir; l = run_dir.RunLock(sys.argv[1]);"
            " l.__enter__(); os.kill(os.getpid(), signal.SIGKILL)")
    r = subprocess.run([sys.executable, "-c", code, str(out)], timeout=60)
    assert r.returncode == -9 and (out / ".gp-engine.lock").exists()
    with run_dir.RunLock(out):
        pass


# ------------------------------------------------------------------ limits before work


def test_limits_are_checked_before_anything_is_written(tmp_path, model, capsys):
    from gp_engine.cli import main

    for over, field in (({"geometry": {"shape": [100000, 100000, 100000]}}, "geometry.shape"),
                        ({"batch_size": 10 ** 6}, "batch_size"),
                        ({"reference": ["nope.npz"]}, "reference[0]")):
        out = tmp_path / f"out_{field}"
        plan = write(tmp_path, plan_dict(model, out, **over), f"{field}.json")
        for cmd in ("plan", "generate"):
            assert main([cmd, str(plan)] + (["--quiet"] if cmd == "generate" else [])) == 2
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and field in err[0] and str(plan) in err[0], err
        assert not out.exists()


def test_unreadable_reference_is_refused_before_generation(tmp_path, model):
    bad = tmp_path / "ref.npz"
    bad.write_bytes(b"not a zip file")
    out = tmp_path / "out"
    with pytest.raises(GPEngineError, match="ref.npz"):
        generate(plan_dict(model, out, reference=[str(bad)]), progress=False)
    assert not (out / "canvas").exists()


def test_non_finite_numbers_are_refused_in_the_plan(tmp_path, model):
    from gp_engine.plan_config import load_plan

    for key, value in (("eps", float("nan")), ("value_scale", float("inf"))):
        with pytest.raises(GPEngineError, match=f"segmentation.{key}.*finite"):
            load_plan(plan_dict(model, tmp_path, segmentation={"method": "dbscan", key: value}))


def test_disk_space_is_checked_before_work(tmp_path, model, monkeypatch):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10 ** 9, 10 ** 9 - 10 ** 6, 10 ** 6))
    out = tmp_path / "out"
    with pytest.raises(GPEngineError, match="outputs.dir .* needs about"):
        generate(plan_dict(model, out), progress=False)
    assert not out.exists()


# ------------------------------------------------------------------ outputs first, statistics after


def test_outputs_are_written_before_statistics(tmp_path, model, monkeypatch):
    import gp_engine.generate as g

    def boom(*a, **k):
        raise MemoryError("statistics ran out of memory")

    monkeypatch.setattr(g, "compute_stats", boom)
    out = tmp_path / "out"
    with pytest.raises(MemoryError):
        generate(plan_dict(model, out), progress=False)
    assert (out / "grains.npy").is_file() and (out / "field.npy").is_file()
    stats = json.loads((out / "stats.json").read_text())
    assert stats["summary"] is None and stats["status"] == "statistics pending"


def test_statistics_memory_does_not_grow_with_the_volume(tmp_path, monkeypatch):
    """grain_stats streams a memmap slab by slab: its peak memory stays far below the volume's size
    (slabs of 2^16 voxels here), and the result equals the in-RAM one."""
    import tracemalloc

    from gp_engine import stats

    rng = np.random.default_rng(0)
    coarse = rng.integers(1, 500, (24, 24, 24)).astype(np.int32)
    ids = np.repeat(np.repeat(np.repeat(coarse, 8, 0), 8, 1), 8, 2)   # 192³ = 7M voxels, 28 MB
    np.save(tmp_path / "ids.npy", ids)
    mm = np.load(tmp_path / "ids.npy", mmap_mode="r")
    want = stats.grain_stats(ids)
    monkeypatch.setattr(stats, "SLAB_VOXELS", 1 << 16)
    tracemalloc.start()
    got = stats.grain_stats(mm)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < ids.nbytes / 4, f"peak {peak / 2**20:.0f} MiB for a {ids.nbytes / 2**20:.0f} MiB volume"
    for k in ("volume", "b_a", "c_a", "nn_dist"):
        np.testing.assert_allclose(got[k], want[k], rtol=1e-9)


def test_cutting_the_box_out_of_a_large_volume_does_not_load_it(tmp_path):
    """cut_out of a memmap relabels tile by tile into a memmap: peak memory far below the volume's
    size, the grains those of connected-components-3d on the whole sub-box."""
    import tracemalloc

    from gp_engine.grains import cut_out, split_grains
    from gp_engine.volume_io import open_npy_memmap

    rng = np.random.default_rng(1)
    coarse = rng.integers(1, 40, (25, 25, 25)).astype(np.int32)
    ids = np.repeat(np.repeat(np.repeat(coarse, 8, 0), 8, 1), 8, 2)   # 200³ = 8M voxels, 32 MB
    np.save(tmp_path / "ids.npy", ids)
    mm = np.load(tmp_path / "ids.npy", mmap_mode="r")
    box = (slice(4, 196), slice(4, 196), slice(4, 196))
    out = open_npy_memmap(tmp_path / "box.npy", np.int32, (192, 192, 192))
    cut_out(ids[:8, :8, :8], box, tile=4)  # imports (scipy.sparse) before measuring
    tracemalloc.start()
    got = cut_out(mm, box, out=out, tile=48)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert got is out and peak < ids.nbytes / 4, f"peak {peak / 2**20:.0f} MiB for a {ids.nbytes / 2**20:.0f} MiB volume"
    want = split_grains(ids[box])
    pairs = np.unique((want.ravel().astype(np.int64) << 32) | np.asarray(got).ravel())  # one key per (want, got)
    assert pairs.size == want.max() == got.max()


def test_preflight_counts_the_tiled_cut_out_of_a_large_painted_box():
    # above IN_RAM_VOXELS the box is cut out tile by tile: memory bounded by a tile, one more int32
    # volume on disk; below, the whole box in RAM
    from gp_engine.grains import TILE
    from gp_engine.preflight import SPLIT_BYTES_PER_VOXEL, estimate

    big, big0 = estimate((1000, 1000, 1000), "grid", 8, margin=2), estimate((1000, 1000, 1000), "grid", 8, margin=0)
    assert big["memory"]["segmentation"] <= max(288 ** 3 * 48, TILE ** 3 * SPLIT_BYTES_PER_VOXEL)
    assert big["disk"] - big0["disk"] >= 4 * 1000 ** 3
    small = estimate((100, 100, 100), "grid", 8, margin=2)
    assert small["memory"]["segmentation"] >= 100 ** 3 * SPLIT_BYTES_PER_VOXEL


# ------------------------------------------------------------------ resume verifies what it trusts


def _interrupted(tmp_path, model, after=3):
    from gp_engine.generate import Interrupted

    out = tmp_path / "out"
    plan = plan_dict(model, out)
    with pytest.raises(Interrupted):
        generate(plan, progress=False, stop_after=after)
    return out, plan


def test_truncated_canvas_is_refused(tmp_path, model):
    out, plan = _interrupted(tmp_path, model)
    values = out / "canvas/values.npy"
    with open(values, "r+b") as f:
        f.truncate(values.stat().st_size - 4096)
    with pytest.raises(GPEngineError, match="values.npy.*truncated"):
        generate(plan, resume=True, progress=False)


def test_wrong_shape_canvas_is_refused(tmp_path, model):
    out, plan = _interrupted(tmp_path, model)
    np.save(out / "canvas/known.npy", np.zeros((40, 40, 41), np.uint8))
    with pytest.raises(GPEngineError, match="known.npy holds uint8 \\(40, 40, 41\\)"):
        generate(plan, resume=True, progress=False)


def test_changed_voxel_is_refused(tmp_path, model):
    out, plan = _interrupted(tmp_path, model)
    v = np.load(out / "canvas/values.npy", mmap_mode="r+")
    v[5, 5, 5] = np.nextafter(v[5, 5, 5], np.float32(2))   # one ulp, one voxel
    v.flush()
    del v
    with pytest.raises(GPEngineError, match="does not match the checksum"):
        generate(plan, resume=True, progress=False)


def test_completed_list_disagreeing_with_known_mask_is_refused(tmp_path, model):
    out, plan = _interrupted(tmp_path, model)
    state_path = out / "canvas/state.json"
    state = json.loads(state_path.read_text())
    state["completed"].append(5)              # claims a batch that never ran
    state_path.write_text(json.dumps(state))
    with pytest.raises(GPEngineError, match="known.npy disagrees with the completed batches"):
        generate(plan, resume=True, progress=False)


def test_tampered_journal_is_refused(tmp_path, model):
    out, plan = _interrupted(tmp_path, model)
    (out / "canvas/pending.npz").write_bytes(b"PK\x03\x04 garbage")
    with pytest.raises(GPEngineError, match="pending.npz cannot be read"):
        generate(plan, resume=True, progress=False)


def test_journal_replay_keeps_the_checksum(tmp_path, model):
    """A kill between journal and state: the journal carries the checksum after the batch."""
    from gp_engine.canvas import Canvas

    out, plan = _interrupted(tmp_path, model, after=2)
    state = json.loads((out / "canvas/state.json").read_text())
    c = Canvas.resume(out, state["meta"])
    x0, _ = c.read_block((8, 8, 8), 32)
    digest_after = c._batch_digest(np.array([[8, 8, 8]]), x0[None] + 0.5)
    np.savez(out / "canvas/pending.npz", batch=np.int64(2), corners=np.array([[8, 8, 8]]),
             results=x0[None] + 0.5, digest=np.uint64(digest_after))
    del c
    c = Canvas.resume(out, state["meta"])
    assert 2 in c.completed and c.state["digest"] == c.full_digest() == digest_after


# ------------------------------------------------------------------ the fault test

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import fault_campaign  # noqa: E402  (bench/fault_campaign.py: the catalogue of faults)

#: the CI subset of fault_campaign.FAULTS (the full campaign: python bench/fault_campaign.py)
CI_FAULTS = ("none", "flip_value_byte", "flip_known_byte", "truncate_values", "zero_slab",
             "drop_completed", "add_completed", "garbage_journal")


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, model):
    work = tmp_path_factory.mktemp("fault_ref")
    generate(fault_campaign.plan_dict(model, work / "ref"), progress=False)
    return work / "ref"


@pytest.mark.parametrize("fault", CI_FAULTS)
def test_fault_kill_damage_resume(tmp_path, model, reference_run, fault, capsys):
    """kill -9 after a random batch, one kind of damage, resume: byte-identical results or exit 2
    with one line naming a canvas file; never a finished run with other voxels."""
    from gp_engine.cli import main

    rng = np.random.default_rng(CI_FAULTS.index(fault))
    out = tmp_path / "out"
    plan = write(tmp_path, fault_campaign.plan_dict(model, out))
    env = dict(os.environ, GP_ENGINE_KILL_AFTER_BATCHES=str(int(rng.integers(1, 8))))
    r = subprocess.run([sys.executable, "-m", "gp_engine.cli", "generate", str(plan), "--quiet"],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == -9, r.stderr
    fault_campaign.FAULTS[fault][1](out / "canvas", rng)
    code = main(["generate", str(plan), "--resume", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    if fault == "none":
        assert code == 0
        for name in ("field.npy", "grains.npy"):
            assert (out / name).read_bytes() == (reference_run / name).read_bytes(), name
    else:   # every fault here changes bytes that matter: refused, one line naming the canvas file
        assert code == 2 and len(err) == 1 and "canvas" in err[0], (fault, err)


# ------------------------------------------------------------------ other commands' outputs


def test_segment_and_stats_refuse_to_overwrite_without_force(tmp_path, capsys):
    from gp_engine.cli import main

    rng = np.random.default_rng(0)
    ids = np.repeat(rng.integers(1, 30, (5, 5, 5)), 6, 0).repeat(6, 1).repeat(6, 2).astype(np.int32)
    np.save(tmp_path / "field.npy", (ids % 7 / 3.0 - 1).astype(np.float32))
    np.save(tmp_path / "ids.npy", ids)
    mine = tmp_path / "mine.npy"
    mine.write_bytes(b"precious")
    report = tmp_path / "report.json"
    report.write_text("{}")
    assert main(["segment", str(tmp_path / "field.npy"), str(mine), "--method", "levels"]) == 2
    assert main(["stats", str(tmp_path / "ids.npy"), "--json", str(report)]) == 2
    (tmp_path / "plots").mkdir()
    (tmp_path / "plots" / "aspect.png").write_bytes(b"my figure")
    assert main(["stats", str(tmp_path / "ids.npy"), "--plots", str(tmp_path / "plots")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all("--force" in e for e in err)
    assert mine.read_bytes() == b"precious" and report.read_text() == "{}"
    assert (tmp_path / "plots" / "aspect.png").read_bytes() == b"my figure"
    assert main(["segment", str(tmp_path / "field.npy"), str(mine), "--method", "levels", "--force"]) == 0
    assert np.load(mine).shape == ids.shape
    assert main(["stats", str(tmp_path / "ids.npy"), "--json", str(report), "--force"]) == 0
    assert json.loads(report.read_text())["grains"] > 0


def test_resume_refuses_another_backend_or_noise_stream(tmp_path):
    """The backend (with its precision) and the noise stream fix a volume's arithmetic: a resume with
    another one is a one-line refusal naming it; a canvas from before they were recorded was painted
    with the first noise stream and is refused too."""
    import json

    from gp_engine.canvas import Canvas

    from gp_engine.noise import LEGACY_STREAM, NOISE_STREAM

    meta = {"plan_hash": "h", "seed": 0, "model": "m", "shape": [32, 32, 32], "batch_size": 1, "batches": 1,
            "backend": "onnxruntime-cpu", "noise": NOISE_STREAM}
    Canvas.create(tmp_path, (32, 32, 32), meta)
    Canvas.resume(tmp_path, dict(meta))
    with pytest.raises(GPEngineError, match=r"backend: run has 'onnxruntime-cpu', now 'torch-cuda-bf16'.*--backend"):
        Canvas.resume(tmp_path, {**meta, "backend": "torch-cuda-bf16"})
    with pytest.raises(GPEngineError, match="noise"):
        Canvas.resume(tmp_path, {**meta, "noise": "other/2"})
    state_path = Canvas.path(tmp_path) / "state.json"
    state = json.loads(state_path.read_text())
    state["meta"] = {k: v for k, v in meta.items() if k != "backend"}  # no backend recorded: accepted
    state_path.write_text(json.dumps(state))
    Canvas.resume(tmp_path, dict(meta))
    state["meta"] = {k: v for k, v in meta.items() if k not in ("backend", "noise")}  # an older canvas
    state_path.write_text(json.dumps(state))
    with pytest.raises(GPEngineError, match=f"noise stream '{LEGACY_STREAM}'"):
        Canvas.resume(tmp_path, dict(meta))


def test_generate_records_the_backend_and_refuses_to_resume_on_another(tmp_path, model):
    out, plan = _interrupted(tmp_path, model, after=1)
    state = json.loads((out / "canvas" / "state.json").read_text())
    assert state["meta"]["backend"] == "onnxruntime-cpu" and state["meta"]["noise"]
    from gp_engine.runtime import load_engine

    other = load_engine(model, "onnxruntime", 2)
    other.name = "torch-cuda-bf16"  # what a GPU machine's auto backend would be
    with pytest.raises(GPEngineError, match="backend"):
        generate(plan, resume=True, progress=False, engine=other)
    generate(plan, resume=True, progress=False)  # the original backend finishes it

"""ONNX export vs torch, manifest round trip and validation, TensorRT path without TensorRT, shipped model."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from gp_engine.checkpoint import load_model, save_checkpoint
from gp_engine.diffusion import linear_schedule
from gp_engine.errors import GPEngineError
from gp_engine.export import build_model
from gp_engine.export.manifest import (DEFAULT_MODEL_DIR, FORMAT_VERSION, read_manifest, resolve_model,
                                       sha256_file, validate_manifest, write_manifest)
from gp_engine.export.onnx_export import compare_with_torch, export_onnx, graph_ops, onnx_session
from gp_engine.export.tensorrt_build import build_engines, plan_name, profile_shapes, tensorrt_status
from gp_engine.unet import build_unet, preset_config


def _ckpt(path, seed=0):
    torch.manual_seed(seed)
    model = build_unet(preset_config("tiny"))
    with torch.no_grad():  # move the output layer off its init so the check is not trivially small
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    save_checkpoint(path, {"config": model.config, "schedule": linear_schedule().to_dict(), "prediction": "eps",
                           "encoding": {"kind": "separable", "levels": 12, "colouring": "spread"},
                           "ema": model.state_dict(),
                           "model": model.state_dict(), "optimizer": None, "step": 0,
                           "training": {"steps": 0, "samples_seen": 0, "train_files": ["/x/a_seed1001.npz"],
                                        "val_files": [], "history": {"train": [[1, 1.0], [2, 0.9]], "val": []}}})
    return model.eval()


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    d = tmp_path_factory.mktemp("built")
    model = _ckpt(d / "ck.pt")
    manifest = build_model(d / "ck.pt", d / "model", batch_sizes=[1, 4], log=lambda *a: None)
    return d / "model", model, manifest


def test_fp32_onnx_matches_torch_with_standard_ops(built):
    model_dir, model, _ = built
    onnx_path = model_dir / "model.onnx"
    assert compare_with_torch(model, onnx_path, batch=2, seed=1) < 1e-4
    ops = graph_ops(onnx_path)
    assert "GroupNormalization" not in ops and not any("::" in op for op in ops)
    assert "Conv" in ops and "InstanceNormalization" in ops
    sess = onnx_session(onnx_path)  # dynamic batch: any batch runs
    for b in (1, 3):
        out = sess.run(["eps"], {"x": np.zeros((b, 1, 32, 32, 32), np.float32), "t": np.ones(b, np.float32)})[0]
        assert out.shape == (b, 1, 32, 32, 32) and out.dtype == np.float32


def test_fp16_onnx_close_to_fp32_torch(tmp_path, built):
    _, model, _ = built
    path = tmp_path / "h.onnx"  # 16³ blocks: tracing a half model on CPU is slow, the graph is the same
    info = export_onnx(model, path, precision="fp16", block=16)
    assert info["inputs"]["x"]["dtype"] == "float32"         # fp32 I/O around a half graph
    rel = compare_with_torch(model, path, batch=2, seed=2, block=16)
    assert 1e-6 < rel < 1e-2                                   # really computed in half, and close


def test_static_batch_export(tmp_path, built):
    _, model, _ = built
    info = export_onnx(model, tmp_path / "s.onnx", dynamic_batch=False, batch=2)
    assert info["inputs"]["x"]["shape"][0] == 2
    assert onnx_session(tmp_path / "s.onnx").get_inputs()[0].shape[0] == 2
    with pytest.raises(GPEngineError):
        export_onnx(model, tmp_path / "bad.onnx", opset=21)


def test_manifest_round_trip(built):
    model_dir, model, manifest = built
    assert read_manifest(model_dir) == json.loads(json.dumps(manifest))
    assert manifest["onnx"]["sha256"] == sha256_file(model_dir / "model.onnx")
    assert manifest["format_version"] == FORMAT_VERSION and manifest["batch_sizes"] == [1, 4]
    assert manifest["training"]["train_files"] == ["a_seed1001.npz"]
    assert manifest["tensorrt"] is None and manifest["checkpoint"] == "model.pt"
    assert manifest["checkpoint_sha256"] == sha256_file(model_dir / "model.pt")
    copy, meta = load_model(model_dir / "model.pt")           # EMA-only copy for the torch backend
    assert meta["optimizer"] is None and meta["model"] is None
    for k, v in model.state_dict().items():
        assert torch.equal(copy.state_dict()[k], v)
    assert (model_dir / "loss_curve.png").is_file()
    assert resolve_model(model_dir / "manifest.json") == model_dir


def test_manifest_validation_errors(built, tmp_path):
    model_dir, _, manifest = built
    with pytest.raises(GPEngineError, match="format_version"):
        validate_manifest({**manifest, "format_version": FORMAT_VERSION + 1})
    with pytest.raises(GPEngineError, match="not a gp-engine model"):
        validate_manifest({**manifest, "format": "other"})
    broken = dict(manifest)
    del broken["schedule"]
    with pytest.raises(GPEngineError, match="schedule"):
        validate_manifest(broken)
    with pytest.raises(GPEngineError, match="levels"):
        validate_manifest({**manifest, "encoding": {"kind": "separable"}})
    with pytest.raises(GPEngineError, match="encoding colouring 'random' is unknown"):
        validate_manifest({**manifest, "encoding": {**manifest["encoding"], "colouring": "random"}})
    assert manifest["encoding"]["colouring"] == "spread"  # the checkpoint's, carried into the manifest
    with pytest.raises(GPEngineError, match="does not exist"):
        resolve_model(tmp_path / "missing")
    with pytest.raises(GPEngineError, match="no manifest.json"):
        resolve_model(tmp_path)
    with pytest.raises(GPEngineError, match="trainer checkpoint"):
        resolve_model(model_dir / "model.pt")
    d = tmp_path / "no_onnx"
    write_manifest(d, manifest)
    with pytest.raises(GPEngineError, match="missing"):
        read_manifest(d)
    (d / "manifest.json").write_text("{not json")
    with pytest.raises(GPEngineError, match="JSON"):
        read_manifest(d)


def test_build_rejects_bad_input(tmp_path):
    with pytest.raises(GPEngineError, match="does not exist"):
        build_model(tmp_path / "nope.pt", tmp_path / "o", log=lambda *a: None)
    _ckpt(tmp_path / "c.pt")
    with pytest.raises(GPEngineError, match="static"):
        build_model(tmp_path / "c.pt", tmp_path / "o", batch_sizes=[1, 8], dynamic_batch=False, log=lambda *a: None)


def test_manifest_module_imports_without_torch():
    code = ("import sys; import gp_engine.export.manifest as m; import gp_engine.export; "
            "assert 'torch' not in sys.modules, 'torch imported'; print(m.DEFAULT_MODEL_DIR)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_tensorrt_profiles_and_skip_message(tmp_path, built):
    assert profile_shapes(16) == {"x": ((16, 1, 32, 32, 32),) * 3, "t": ((16,),) * 3}
    assert plan_name(64) == "model_b64.plan"
    with pytest.raises(GPEngineError):
        profile_shapes(0)
    ok, reason = tensorrt_status()
    if ok:
        pytest.skip("tensorrt is usable here; the skip path is not taken")
    messages = []
    assert build_engines(built[0] / "model.onnx", tmp_path, [1], log=messages.append) is None
    assert "skipped" in messages[0] and reason in messages[0]


@pytest.mark.skipif(not tensorrt_status()[0], reason="needs tensorrt and a CUDA GPU")
def test_tensorrt_engines_build(tmp_path, built):  # pragma: no cover - GPU machines only
    info = build_engines(built[0] / "model.onnx", tmp_path, [1, 2], log=lambda *a: None)
    assert set(info["plans"]) == {"1", "2"} and (tmp_path / "model_b2.plan").stat().st_size > 0


def test_shipped_default_model_runs_and_matches_its_checkpoint():
    m = read_manifest(None)
    assert resolve_model(None) == DEFAULT_MODEL_DIR
    assert isinstance(m["placeholder"], bool) and m["name"]
    assert m["onnx"]["sha256"] == sha256_file(DEFAULT_MODEL_DIR / m["onnx"]["file"])
    model, _ = load_model(DEFAULT_MODEL_DIR / m["checkpoint"])
    assert compare_with_torch(model, DEFAULT_MODEL_DIR / m["onnx"]["file"], batch=1) < 1e-4


# ----------------------------------------------------------------------------- build never loses a model


def _quiet_build(ck, out, **kw):
    return build_model(ck, out, batch_sizes=[1], log=lambda *a: None, **kw)


def _snapshot(d):
    return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if p.is_file()}


def _one_line(capsys):
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("gp-engine build: error: "), err
    return err.strip()


def test_build_refuses_to_overwrite_a_model_unless_forced(tmp_path, capsys):
    from gp_engine.cli import main

    _ckpt(tmp_path / "a.pt", seed=0)
    out = tmp_path / "model"
    _quiet_build(tmp_path / "a.pt", out)
    (out / "model_b64.plan").write_bytes(b"old plan")  # an engine of the old model
    before = _snapshot(out)
    assert main(["build", str(tmp_path / "a.pt"), "--out", str(out), "--batch-sizes", "1"]) == 2
    line = _one_line(capsys)
    assert str(out) in line and "--force" in line and "manifest.json" in line
    assert _snapshot(out) == before

    _ckpt(tmp_path / "b.pt", seed=1)  # other weights: every file changes
    assert main(["build", str(tmp_path / "b.pt"), "--out", str(out), "--batch-sizes", "1", "--force"]) == 0
    after = _snapshot(out)
    assert set(after) == {"manifest.json", "model.onnx", "model.pt", "loss_curve.png"}  # stale plan removed
    assert after["model.onnx"] != before["model.onnx"] and after["model.pt"] != before["model.pt"]
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []  # no staging folder left
    m = read_manifest(out)
    assert m["onnx"]["sha256"] == sha256_file(out / "model.onnx")


def test_build_never_overwrites_the_checkpoint_it_builds_from(tmp_path, capsys):
    from gp_engine.cli import main

    run = tmp_path / "run"
    run.mkdir()
    _ckpt(run / "model.pt")  # a trainer checkpoint (raw weights, optimizer slot, history)
    before = (run / "model.pt").read_bytes()
    for out in (run, tmp_path / "run" / ".." / "run"):
        for extra in ([], ["--force"]):
            assert main(["build", str(run / "model.pt"), "--out", str(out), "--batch-sizes", "1", *extra]) == 2
            line = _one_line(capsys)
            assert "model.pt is the checkpoint being built" in line and "choose another --out" in line
    os.symlink(run / "model.pt", tmp_path / "link.pt")  # the same file under another name
    with pytest.raises(GPEngineError, match="checkpoint being built"):
        _quiet_build(tmp_path / "link.pt", run, force=True)
    assert (run / "model.pt").read_bytes() == before and sorted(p.name for p in run.iterdir()) == ["model.pt"]


def test_failed_forced_build_keeps_the_old_model(tmp_path, monkeypatch):
    import gp_engine.export.onnx_export as onnx_export

    _ckpt(tmp_path / "a.pt")
    out = tmp_path / "model"
    _quiet_build(tmp_path / "a.pt", out)
    before = _snapshot(out)
    monkeypatch.setattr(onnx_export, "compare_with_torch", lambda *a, **k: 1.0)
    with pytest.raises(GPEngineError, match="disagrees"):
        _quiet_build(tmp_path / "a.pt", out, force=True)
    assert _snapshot(out) == before and sorted(p.name for p in out.iterdir()) == sorted(before)
    with pytest.raises(GPEngineError, match="disagrees"):  # a new folder is not left behind either
        _quiet_build(tmp_path / "a.pt", tmp_path / "new")
    assert not (tmp_path / "new").exists()


# ----------------------------------------------------------------------------- model integrity on load


def _copy_model(built, tmp_path):
    d = tmp_path / "copy"
    shutil.copytree(built[0], d)
    return d, json.loads((d / "manifest.json").read_text())


@pytest.mark.parametrize("field, value", [
    ("onnx", "../x.onnx"), ("onnx", "/abs/model.onnx"), ("onnx", "sub/../../model.onnx"),
    ("checkpoint", "../../model.pt"), ("checkpoint", "/etc/passwd"), ("plan", "../model_b1.plan"),
])
def test_manifest_file_names_stay_inside_the_model_folder(built, tmp_path, field, value):
    d, m = _copy_model(built, tmp_path)
    if field == "onnx":
        m["onnx"]["file"] = value
    elif field == "checkpoint":
        m["checkpoint"] = value
    else:
        m["tensorrt"] = {"plans": {"1": value}, "precision": "fp32"}
    (d / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(GPEngineError, match="not a file inside the model folder"):
        read_manifest(d)


def test_symlink_out_of_the_model_folder_is_refused(built, tmp_path):
    d, m = _copy_model(built, tmp_path)
    outside = tmp_path / "elsewhere.onnx"
    (d / "model.onnx").rename(outside)
    os.symlink(outside, d / "model.onnx")
    with pytest.raises(GPEngineError, match="outside the model folder"):
        read_manifest(d)


def test_onnx_and_checkpoint_sha256_are_checked(built, tmp_path):
    from gp_engine.runtime import load_engine
    from gp_engine.runtime.torch_backend import TorchEngine

    d, m = _copy_model(built, tmp_path)
    assert read_manifest(d) == m
    eng = TorchEngine.from_model_dir(d, m, 1, device="cpu")
    assert eng.batch_size == 1
    onnx_bytes = (d / "model.onnx").read_bytes()
    (d / "model.onnx").write_bytes(onnx_bytes[:-1] + bytes([onnx_bytes[-1] ^ 1]))  # one flipped bit
    for load in (lambda: read_manifest(d), lambda: load_engine(d, "onnxruntime", 1)):
        with pytest.raises(GPEngineError, match=r"model\.onnx does not match the sha256 recorded in .*manifest"
                                                r"\.json \(the file is corrupt or was replaced\); rebuild"):
            load()
    (d / "model.onnx").write_bytes(onnx_bytes)
    assert load_engine(d, "onnxruntime", 1).batch_size == 1
    with open(d / "model.pt", "ab") as f:  # a replaced checkpoint: the torch backend must not load it
        f.write(b"\0")
    with pytest.raises(GPEngineError, match=r"model\.pt does not match the sha256"):
        TorchEngine.from_model_dir(d, m, 1, device="cpu")

"""One error style for every command: errors a user can cause print one line, exit 2, no traceback."""

from __future__ import annotations

import errno
import os
import sys

import numpy as np
import pytest
import torch

from gp_engine.checkpoint import export_copy, load_checkpoint, save_checkpoint
from gp_engine.cli import main
from gp_engine.diffusion import linear_schedule
from gp_engine.errors import GPEngineError, require, user_message
from gp_engine.unet import build_unet, preset_config


def one_error_line(capsys, command: str) -> str:
    """The single stderr line of a failed command (asserts there is exactly one, in the CLI style)."""
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"gp-engine {command}: error: "), err
    assert "Traceback" not in err
    return lines[0]


def tiny_checkpoint(path) -> None:
    torch.manual_seed(0)
    model = build_unet(preset_config("tiny"))
    save_checkpoint(path, {"config": model.config, "schedule": linear_schedule().to_dict(), "prediction": "eps",
                           "encoding": {"kind": "separable", "levels": 12}, "ema": model.state_dict(),
                           "model": model.state_dict(), "optimizer": None, "step": 0,
                           "training": {"steps": 0, "samples_seen": 0, "train_files": [], "val_files": []}})


# --------------------------------------------------------------------------- OS errors, memory


@pytest.mark.parametrize("code, hint", [
    (errno.EACCES, "choose a folder you can write to or fix its permissions"),
    (errno.EPERM, "choose a folder you can write to or fix its permissions"),
    (errno.EROFS, "read-only; choose another output location"),
    (errno.ENOSPC, "free some space"),
    (errno.EDQUOT, "free some space"),
    (errno.ENOTDIR, "a part of the path is a file, not a folder"),
    (errno.EISDIR, "folder where a file is expected"),
    (errno.EEXIST, "already exists"),
    (errno.ENOENT, "check the path"),
])
def test_user_message_names_file_problem_and_fix(code, hint):
    msg = user_message(OSError(code, os.strerror(code), "/data/out/x.npy"))
    assert "'/data/out/x.npy'" in msg and os.strerror(code) in msg and hint in msg
    assert "\n" not in msg
    assert user_message(GPEngineError("a\nb")) == "a b"
    assert user_message(ValueError("bug")) is None and user_message(KeyError("k")) is None


def test_write_permission_denied_is_one_line(tmp_path, capsys, monkeypatch):
    np.save(tmp_path / "field.npy", np.zeros((6, 6, 6), np.float32))
    out = tmp_path / "ids.npy"

    def denied(src, dst):  # what os.replace gives in a folder the user cannot write to
        raise PermissionError(errno.EACCES, "Permission denied", str(src), None, str(dst))

    monkeypatch.setattr(os, "replace", denied)
    assert main(["segment", str(tmp_path / "field.npy"), str(out), "--method", "levels"]) == 2
    line = one_error_line(capsys, "segment")
    assert str(out) in line and "Permission denied" in line and "fix its permissions" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["field.npy"]  # no temporary left behind


def test_read_only_stats_json_is_one_line(tmp_path, capsys, monkeypatch):
    vol = tmp_path / "v.npy"
    np.save(vol, np.arange(4 * 4 * 4, dtype=np.int32).reshape(4, 4, 4) // 16)

    def read_only(src, dst):
        raise OSError(errno.EROFS, "Read-only file system", str(src), None, str(dst))

    monkeypatch.setattr(os, "replace", read_only)
    assert main(["stats", str(vol), "--json", str(tmp_path / "s.json")]) == 2
    line = one_error_line(capsys, "stats")
    assert "s.json" in line and "read-only" in line


def test_out_under_a_regular_file_is_one_line(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    tiny_checkpoint(tmp_path / "ck.pt")
    assert main(["build", str(tmp_path / "ck.pt"), "--out", str(tmp_path / "file" / "sub")]) == 2
    line = one_error_line(capsys, "build")
    assert str(tmp_path / "file" / "sub") in line and "not a folder" in line
    out = tmp_path / "file" / "sub" / "m.pt"  # train: before any data is read, not at the first checkpoint
    assert main(["train", "--out", str(out), "--data", str(tmp_path), "--device", "cpu"]) == 2
    line = one_error_line(capsys, "train")
    assert str(out) in line and "not a folder" in line


def test_memory_error_is_one_line(tmp_path, capsys, monkeypatch):
    import gp_engine.segment

    np.save(tmp_path / "field.npy", np.zeros((6, 6, 6), np.float32))

    def too_big(*a, **k):
        raise MemoryError("Unable to allocate 64.0 GiB for an array")

    monkeypatch.setattr(gp_engine.segment, "segment", too_big)
    assert main(["segment", str(tmp_path / "field.npy"), str(tmp_path / "o.npy")]) == 2
    line = one_error_line(capsys, "segment")
    assert "more memory than this machine has" in line and "--tile" in line


def test_programming_errors_keep_their_traceback(tmp_path, monkeypatch):
    import gp_engine.segment

    np.save(tmp_path / "field.npy", np.zeros((6, 6, 6), np.float32))

    def bug(*a, **k):
        raise TypeError("a bug")

    monkeypatch.setattr(gp_engine.segment, "segment", bug)
    with pytest.raises(TypeError, match="a bug"):
        main(["segment", str(tmp_path / "field.npy"), str(tmp_path / "o.npy")])
    monkeypatch.setattr(gp_engine.segment, "segment", lambda *a, **k: (_ for _ in ()).throw(
        ModuleNotFoundError("No module named 'nosuchmod'", name="nosuchmod")))
    with pytest.raises(ModuleNotFoundError):  # not an optional dependency of gp-engine: a bug
        main(["segment", str(tmp_path / "field.npy"), str(tmp_path / "o.npy")])


def test_tiled_segment_on_a_full_disk_is_one_line_and_leaves_no_temp(tmp_path, capsys, monkeypatch):
    np.save(tmp_path / "field.npy", np.random.default_rng(0).uniform(-1, 1, (12, 12, 12)).astype(np.float32))
    out = tmp_path / "ids.npy"

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full, raising=False)
    assert main(["segment", str(tmp_path / "field.npy"), str(out), "--tile", "6"]) == 2
    line = one_error_line(capsys, "segment")
    assert str(out) in line and "No space left on device" in line and "free some space" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["field.npy"]


# --------------------------------------------------------------------------- missing optional modules


def test_require_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(GPEngineError, match=r'pip install torch==2\.13\.0 && pip install "gp-engine\[train\]"'):
        require("torch", "train", "training")
    assert require("json", "train", "x").dumps(1) == "1"


@pytest.mark.parametrize("argv", [["build", "{ck}", "--out", "{d}/m"],
                                  ["train", "--out", "{d}/t.pt", "--data", "{d}", "--device", "cpu"]])
def test_commands_without_torch_say_which_extra_to_install(tmp_path, capsys, monkeypatch, argv):
    tiny_checkpoint(tmp_path / "ck.pt")
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now fails as if it were not installed
    assert main([a.format(ck=tmp_path / "ck.pt", d=tmp_path) for a in argv]) == 2
    line = one_error_line(capsys, argv[0])
    assert "'torch'" in line and "not installed" in line and '"gp-engine[train]"' in line
    assert not (tmp_path / "m").exists()


def test_build_model_without_torch_is_a_gp_engine_error(tmp_path, monkeypatch):
    """What generate's plan with a trainer checkpoint (model.pt) runs into on a machine without torch."""
    from gp_engine.export import build_model

    tiny_checkpoint(tmp_path / "ck.pt")
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(GPEngineError, match=r"ck\.pt needs the Python module 'torch'.*gp-engine\[train\]"):
        build_model(tmp_path / "ck.pt", tmp_path / "m", log=lambda *a: None)
    assert user_message(ModuleNotFoundError("No module named 'torch'", name="torch")).endswith(
        'pip install torch==2.13.0 && pip install "gp-engine[train]"')


# --------------------------------------------------------------------------- resume of a built copy


def test_resume_of_a_built_model_copy_is_one_line(tmp_path, capsys):
    tiny_checkpoint(tmp_path / "ck.pt")
    copy = tmp_path / "model.pt"
    save_checkpoint(copy, export_copy(load_checkpoint(tmp_path / "ck.pt")))
    before = copy.read_bytes()
    assert main(["train", "--out", str(copy), "--resume", "--data", str(tmp_path), "--device", "cpu"]) == 2
    line = one_error_line(capsys, "train")
    assert str(copy) in line and "built model copy" in line and "original trainer checkpoint" in line
    assert copy.read_bytes() == before

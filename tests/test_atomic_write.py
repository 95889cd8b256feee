"""gp_engine.atomic_write: whole files appear at once, with the mode a plain open() would give."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from gp_engine.atomic_write import atomic_open, atomic_path
from gp_engine.errors import GPEngineError
from gp_engine.volume_io import write_npy


@pytest.fixture()
def umask_022():
    old = os.umask(0o022)
    try:
        yield 0o666 & ~0o022
    finally:
        os.umask(old)


def mode_of(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_atomic_open_writes_content_with_public_mode(tmp_path, umask_022):
    target = tmp_path / "out.bin"
    with atomic_open(target) as fh:
        fh.write(b"hello")
        assert not target.exists()  # nothing visible until the block ends
    assert target.read_bytes() == b"hello"
    assert mode_of(target) == umask_022 == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]


def test_atomic_open_text_mode_replaces_existing(tmp_path, umask_022):
    target = tmp_path / "out.json"
    target.write_text("old")
    with atomic_open(target, "w") as fh:
        fh.write("new\n")
    assert target.read_text() == "new\n"
    assert mode_of(target) == umask_022


def test_atomic_path_keeps_suffix_and_directory(tmp_path, umask_022):
    target = tmp_path / "plot.png"
    with atomic_path(target, suffix=".tmp.png") as tmp:
        assert tmp.parent == tmp_path
        assert tmp.name.startswith(".plot.png.") and tmp.name.endswith(".tmp.png")
        tmp.write_bytes(b"png")
    assert target.read_bytes() == b"png"
    assert mode_of(target) == umask_022
    assert not tmp.exists()


@pytest.mark.parametrize("helper", ["open", "path"])
def test_exception_keeps_old_content_and_leaves_no_temp(tmp_path, helper):
    target = tmp_path / "data.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="boom"):
        if helper == "open":
            with atomic_open(target) as fh:
                fh.write(b"half-written")
                raise RuntimeError("boom")
        else:
            with atomic_path(target) as tmp:
                tmp.write_bytes(b"half-written")
                raise RuntimeError("boom")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.bin"]


def test_missing_parent_directory_raises(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(GPEngineError, match="nope"):
        with atomic_open(missing / "out.bin") as fh:
            fh.write(b"x")
    assert not missing.exists()  # nothing is created


def test_atomic_open_rejects_read_modes(tmp_path):
    with pytest.raises(ValueError):
        with atomic_open(tmp_path / "x", "rb"):
            pass


def test_umask_is_left_unchanged(tmp_path, umask_022):
    with atomic_open(tmp_path / "x") as fh:
        fh.write(b"x")
    assert os.umask(0o022) == 0o022


def test_volume_npy_writer_gives_public_mode(tmp_path, umask_022):
    vol = np.arange(24, dtype=np.int32).reshape(2, 3, 4)
    path = write_npy(tmp_path / "grains.npy", vol)
    np.testing.assert_array_equal(np.load(path), vol)
    assert mode_of(path) == umask_022
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grains.npy"]


def test_os_errors_name_the_target_not_the_temporary(tmp_path, monkeypatch):
    """A full disk while writing (no file in the OSError) or a failed rename names the file asked for."""
    import errno

    target = tmp_path / "out.bin"
    with pytest.raises(OSError) as info:
        with atomic_open(target) as fh:
            raise OSError(errno.ENOSPC, "No space left on device")  # what fh.write raises on a full disk
    assert info.value.filename == str(target) and info.value.errno == errno.ENOSPC

    def denied(src, dst):
        raise PermissionError(errno.EACCES, "Permission denied", str(src), None, str(dst))

    monkeypatch.setattr(os, "replace", denied)
    with pytest.raises(PermissionError) as info:
        with atomic_open(target) as fh:
            fh.write(b"x")
    assert info.value.filename == str(target) and info.value.filename2 is None
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(GPEngineError, match="is a file, not a folder"):
        with atomic_open(tmp_path / "file" / "x.bin"):
            pass

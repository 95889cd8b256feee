"""Write files so that readers never see a half-written file.

Every output of gp-engine goes through :func:`atomic_path` (or :func:`atomic_open`, built on it): the
data is written to a temporary file in the target's own directory (same file system, so the rename is
atomic), which then gets the mode a plain ``open()`` would have given it (``0o666 & ~umask``:
``tempfile.mkstemp`` makes ``0o600`` files) and is moved onto the target with ``os.replace``. On an exception
the temporary file is removed and the target keeps its old content.

Temporary names are ``.{name}.XXXXXXXX{suffix}`` (hidden). Give a ``suffix`` that ends with the real
extension where a library picks the format from the file name (``".tmp.png"`` for matplotlib's
``savefig``, ``".onnx"``).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from .errors import GPEngineError


def _current_umask() -> int:
    """The process umask (there is no getter: set a value, read the old one back, restore it).

    The probe value is the restrictive 0o077, not 0: a file another thread creates in this instant
    comes out private rather than world-writable.
    """
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on normal exit it gets public mode and replaces ``path``.

    The temporary file exists (empty) when the block starts. Nothing else is created: a missing parent
    directory raises :class:`GPEngineError` (create it first). On an exception in the block (or in the
    final chmod/rename) the temporary file is removed and the exception re-raised; an OSError that
    named the temporary file (or no file) names ``path`` instead.
    """
    path = Path(path)
    parent = path.parent
    if not parent.is_dir():
        if parent.exists():
            raise GPEngineError(f"cannot write '{path}': '{parent}' is a file, not a folder; check the path")
        raise GPEngineError(f"output directory '{parent}' does not exist: create it first")
    try:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=parent)
    except OSError as exc:  # e.g. EACCES/EROFS on the folder: name the file the user asked for
        exc.filename, exc.filename2 = str(path), None
        raise
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_current_umask())
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.filename in (None, str(tmp), tmp):
            # name the file the user asked for, not the hidden temporary (a failed write, e.g. on
            # a full disk, names no file at all)
            exc.filename, exc.filename2 = str(path), None
        raise


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", suffix: str = ".tmp",
                **open_kwargs: Any) -> Iterator[IO]:
    """Yield an open file (``mode``, e.g. ``"wb"`` or ``"w"``) that becomes ``path`` atomically on close.

    Built on :func:`atomic_path`; ``open_kwargs`` (``encoding``, ``newline``, ...) go to ``open()``.
    """
    if not mode.startswith("w"):
        raise ValueError(f"atomic_open writes a new file: mode must start with 'w', got {mode!r}")
    with atomic_path(path, suffix=suffix) as tmp:
        with open(tmp, mode, **open_kwargs) as fh:
            yield fh


def save_figure(fig: Any, path: str | os.PathLike, dpi: float | None = None) -> Path:
    """Save a matplotlib figure to ``path`` (PNG) atomically and close it, even on error."""
    import matplotlib.pyplot as plt

    path = Path(path)
    try:
        with atomic_path(path, suffix=".tmp.png") as tmp:
            fig.savefig(tmp, dpi=dpi)
    finally:
        plt.close(fig)
    return path


__all__ = ["atomic_path", "atomic_open", "save_figure"]

"""The one exception type users see: a message that names the problem and the fix.

- :class:`GPEngineError`: raised for every error a user can cause; the CLI prints its message as one
  line (no traceback) and exits with status 2.
- :func:`user_message`: the one-line message for an exception the user caused without gp-engine
  raising a GPEngineError (an ``OSError`` on a path: permission denied, read-only file system, disk
  full, ...; ``MemoryError``; a missing optional module), or None for a programming error, which
  keeps its traceback. ``gp_engine.cli.main`` uses it; library callers can too.
- :func:`require`: import an optional dependency or raise a GPEngineError naming the extra to install.
"""

from __future__ import annotations

import errno
import importlib
from types import ModuleType


class GPEngineError(Exception):
    """A user-facing error. The CLI prints its message (no traceback) and exits with status 2."""


#: errno name -> what to do about it (the strerror says what is wrong); names missing on this platform
#: (EDQUOT on Windows) are skipped
_HINTS_BY_NAME = {
    "EACCES": "choose a folder you can write to or fix its permissions",
    "EPERM": "choose a folder you can write to or fix its permissions",
    "EROFS": "the file system is read-only; choose another output location",
    "ENOSPC": "free some space or choose another output location",
    "EDQUOT": "free some space (disk quota exceeded) or choose another output location",
    "EFBIG": "the file is too large for this file system; choose another output location",
    "ENOTDIR": "a part of the path is a file, not a folder; check the path",
    "EISDIR": "the path is a folder where a file is expected; give a file name",
    "EEXIST": "something already exists at that path; remove it or choose another name",
    "ENOENT": "check the path (create missing folders first)",
    "ENAMETOOLONG": "the path is too long; choose a shorter one",
    "EIO": "the storage device reported an I/O error; check the disk or choose another location",
}
OS_ERROR_HINTS = {getattr(errno, k): v for k, v in _HINTS_BY_NAME.items() if hasattr(errno, k)}

#: pip commands that install each optional extra (pyproject.toml [project.optional-dependencies])
EXTRA_INSTALL = {
    "train": 'pip install torch==2.13.0 && pip install "gp-engine[train]"',
    "tensorrt": 'pip install "gp-engine[tensorrt]"',
}

#: optional modules -> (extra, what they are needed for)
OPTIONAL_MODULES = {
    "torch": ("train", "training, building a model and the torch-cuda backend"),
    "onnx": ("train", "building a model"),
    "onnxscript": ("train", "the dynamo ONNX exporter"),
    "tensorrt": ("tensorrt", "the TensorRT backend"),
}


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def missing_module_message(module: str, extra: str, purpose: str, detail: str | None = None) -> str:
    """'PURPOSE needs the MODULE module, which is not installed; install it with: PIP'."""
    install = EXTRA_INSTALL.get(extra, f'pip install "gp-engine[{extra}]"')
    what = "which is not installed" if detail is None else f"which cannot be imported ({_one_line(detail)})"
    return f"{purpose} needs the Python module '{module}', {what}; install it with: {install}"


def require(module: str, extra: str, purpose: str) -> ModuleType:
    """Import and return ``module``; GPEngineError naming the extra to install when it cannot be imported.

    ``extra`` is the gp-engine extra that brings the module (``"train"`` for torch and onnx,
    ``"tensorrt"``), ``purpose`` what needs it (``"gp-engine build"``), the subject of the message.
    """
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        top = module.split(".")[0]
        if exc.name is not None and exc.name.split(".")[0] != top:
            # the module is there but one of its own dependencies is missing
            raise GPEngineError(missing_module_message(module, extra, purpose, str(exc))) from None
        raise GPEngineError(missing_module_message(module, extra, purpose)) from None
    except ImportError as exc:  # installed but broken (e.g. a shared library that does not load)
        raise GPEngineError(missing_module_message(module, extra, purpose, str(exc))) from None


def os_error_message(exc: OSError) -> str:
    """One line for an OSError: the path(s), what is wrong (strerror) and the errno-specific fix."""
    names = [str(n) for n in (exc.filename, exc.filename2) if n is not None]
    where = " -> ".join(f"'{n}'" for n in names)
    what = exc.strerror or _one_line(str(exc)) or type(exc).__name__
    hint = OS_ERROR_HINTS.get(exc.errno) if exc.errno is not None else None
    if hint is None:
        hint = "check the path, its permissions and the free space"
    return _one_line(f"{where + ': ' if where else ''}{what}; {hint}")


def memory_error_message(exc: MemoryError) -> str:
    detail = _one_line(str(exc))
    return ("the run needs more memory than this machine has" + (f" ({detail})" if detail else "")
            + "; use a smaller volume or --batch-size, segment with --tile, or run on a machine with "
              "more memory")


def user_message(exc: BaseException) -> str | None:
    """The one-line message for an error the user caused, or None for a programming error.

    GPEngineError -> its message; OSError -> path, strerror and a fix for its errno; MemoryError ->
    what to reduce; ModuleNotFoundError of an optional dependency (torch, onnx, onnxscript, tensorrt)
    -> the extra to install. Anything else -> None (let it raise with its traceback).
    """
    if isinstance(exc, GPEngineError):
        return _one_line(str(exc))
    if isinstance(exc, ModuleNotFoundError):
        top = (exc.name or "").split(".")[0]
        if top in OPTIONAL_MODULES:
            extra, purpose = OPTIONAL_MODULES[top]
            return missing_module_message(top, extra, purpose[0].upper() + purpose[1:])
        return None
    if isinstance(exc, OSError):
        return os_error_message(exc)
    if isinstance(exc, MemoryError):
        return memory_error_message(exc)
    return None


__all__ = ["GPEngineError", "OS_ERROR_HINTS", "EXTRA_INSTALL", "OPTIONAL_MODULES", "require",
           "missing_module_message", "os_error_message", "memory_error_message", "user_message"]


def refuse_overwrite(paths, force: bool, what: str = "output") -> None:
    """Raise a GPEngineError naming the first of ``paths`` that exists, unless ``force``.

    Every command that writes a user-named file calls this first: nothing the user made is
    overwritten without ``--force`` (and with it the file is replaced atomically, after the new
    content exists).
    """
    from pathlib import Path

    if force:
        return
    for p in paths:
        if Path(p).exists():
            raise GPEngineError(f"{what} {p} already exists; add --force to replace it (the new file is "
                                "written first) or choose another name")

"""The output folder of a generation run: who owns it, who is using it, how results replace results.

* **Ownership.** gp-engine writes only into a folder that is new, empty, or carries its marker file
  ``.gp-engine-output.json`` (folders of runs made before the marker existed are recognised by their
  canvas). Any other folder is refused, even with ``--force``: a plan whose ``outputs.dir`` points at
  a home or project folder can never overwrite files there.
* **One run at a time.** :class:`RunLock` holds an exclusive ``flock`` on ``.gp-engine.lock`` for the
  whole run; a second run on the same folder is refused at once (the kernel drops the lock when a
  process dies, even by SIGKILL, so a stale lock file never blocks).
* **Replace only after the replacement exists.** Results are written into a staging folder inside
  the output folder and moved into place with ``os.replace`` (:func:`swap_in`); only then are files of
  the previous run that the new one does not produce removed. A run that fails before that point
  leaves the previous results as they were.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from .errors import GPEngineError

MARKER = ".gp-engine-output.json"
LOCK = ".gp-engine.lock"
STAGING_PREFIX = ".staging-"


def _ours_legacy(out: Path) -> bool:
    from .canvas import Canvas, is_canvas_dir

    return is_canvas_dir(Canvas.path(out))


def inspect(out: Path) -> str:
    """"missing", "empty" or "ours"; raises for a folder gp-engine must not write into."""
    out = Path(out)
    if not out.exists():
        return "missing"
    if not out.is_dir():
        raise GPEngineError(f"output folder {out} is a file, not a folder; choose another --out")
    if (out / MARKER).is_file() or _ours_legacy(out):
        return "ours"
    entries = [p.name for p in out.iterdir()]
    if not entries:
        return "empty"
    shown = ", ".join(sorted(entries)[:3]) + (", ..." if len(entries) > 3 else "")
    raise GPEngineError(f"output folder {out} already holds files gp-engine did not write ({shown}; no "
                        f"{MARKER} marker): it is never written into, even with --force; choose a new "
                        "or empty --out (or outputs.dir)")


def claim(out: Path, plan_source=None) -> None:
    """Create ``out`` if needed and mark it as a gp-engine output folder (refuses foreign folders)."""
    out = Path(out)
    state = inspect(out)
    out.mkdir(parents=True, exist_ok=True)
    if state != "ours" or not (out / MARKER).is_file():
        from .canvas import write_json_atomic

        write_json_atomic(out / MARKER, {"format": "gp-engine-output", "version": 1,
                                         "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                         "plan": None if plan_source is None else str(plan_source)})


class RunLock:
    """Exclusive lock on ``out/.gp-engine.lock`` for the life of a run (a context manager)."""

    def __init__(self, out: Path):
        self.path = Path(out) / LOCK
        self.fd: int | None = None

    def __enter__(self) -> "RunLock":
        import fcntl

        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            finally:
                os.close(fd)
            raise GPEngineError(f"output folder {self.path.parent} is in use by another gp-engine run "
                                f"(process {holder}, lock {self.path}); wait for it to finish or choose "
                                "another --out") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self.fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing drops the flock; the file stays (harmless, reused next time)
            self.fd = None


def new_staging(out: Path) -> Path:
    """A fresh staging folder inside ``out`` (same file system: ``os.replace`` is atomic)."""
    return Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=out))


def remove_stale_staging(out: Path) -> None:
    """Staging folders left by runs that died before their swap (only names gp-engine uses)."""
    for p in Path(out).glob(STAGING_PREFIX + "*"):
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)


def swap_in(out: Path, staging: Path, previous: list[Path]) -> list[Path]:
    """Move every file of ``staging`` into ``out`` (each by ``os.replace``), then delete the files in
    ``previous`` (outputs of the run being replaced) that the new run did not produce, then the
    staging folder. Returns the new paths."""
    out, staging = Path(out), Path(staging)
    moved = []
    for src in sorted(staging.iterdir()):
        dst = out / src.name
        os.replace(src, dst)
        moved.append(dst)
    names = {p.name for p in moved}
    for old in previous:
        if Path(old).name not in names and Path(old).is_file():
            Path(old).unlink()
    staging.rmdir()
    return moved


def read_marker(out: Path) -> dict:
    try:
        return json.loads((Path(out) / MARKER).read_text())
    except (OSError, ValueError):
        return {}


__all__ = ["MARKER", "LOCK", "inspect", "claim", "RunLock", "new_staging", "swap_in",
           "remove_stale_staging", "read_marker"]

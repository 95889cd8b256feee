"""Where and when a benchmark ran: CPU, cores, GPU, commit, UTC date, load.

Shared by the scripts in bench/ so that every result file carries the same header:

    from provenance import header
    result = header("generate", model=...)   # {bench, date, commit, device, loadavg_1min, model}

The scripts run as ``python bench/<script>.py``, so bench/ is on ``sys.path`` and this module
imports as ``provenance``. Nothing here imports torch unless a GPU is asked about and torch is
installed.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import os
import platform
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def cpu_name() -> str:
    """CPU model name from /proc/cpuinfo (``platform.processor()`` elsewhere), or "unknown"."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cores() -> int | None:
    """Logical CPU count (``os.cpu_count()``)."""
    return os.cpu_count()


def gpu_name() -> str | None:
    """Name of CUDA device 0 when torch is installed and sees a GPU, else None."""
    if importlib.util.find_spec("torch") is None:
        return None
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except (ImportError, OSError, RuntimeError, AssertionError):
        pass
    return None


def git_commit(root: str | Path = ROOT) -> str:
    """``$GP_COMMIT`` when set (a copy of the tree on another machine, whose ``.git`` may be stale: the
    GPU campaign sets it), else ``git rev-parse HEAD`` of the repository at ``root``, or "unknown"."""
    if os.environ.get("GP_COMMIT"):
        return os.environ["GP_COMMIT"]
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                              check=True).stdout.strip() or "unknown"
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def utc_now(timespec: str = "seconds") -> str:
    """Current UTC time, ISO 8601 with offset, e.g. ``2026-11-25T06:04:15+00:00``."""
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec=timespec)


def loadavg_1min() -> float | None:
    """1-minute load average (the box may be shared: other jobs inflate timings), None if unknown."""
    try:
        return os.getloadavg()[0]
    except (OSError, AttributeError):
        return None


def device(cuda: bool | None = None) -> dict:
    """{cpu, cores, machine} plus ``gpu``.

    ``cuda=None``: ``gpu`` only when torch is installed and CUDA is available; ``True``: ``gpu`` always
    present (None without a GPU); ``False``: no ``gpu`` and torch is not imported.
    """
    info: dict = {"cpu": cpu_name(), "cores": cores(), "machine": platform.machine()}
    if cuda is not False:
        gpu = gpu_name()
        if gpu is not None or cuda:
            info["gpu"] = gpu
    return info


def header(bench_name: str, *, cuda: bool | None = None, legacy_keys: bool = False, **extra) -> dict:
    """The common JSON header {bench, date, commit, device, loadavg_1min}, then ``extra``.

    ``extra`` is added after the common keys and may override them (e.g. a script whose results keep
    ``device`` as a string). ``legacy_keys`` also writes ``benchmark`` and ``git_commit``, the names
    the older result files use, so that new results stay comparable with them.
    """
    h = {"bench": bench_name, "date": utc_now(), "commit": git_commit(), "device": device(cuda),
         "loadavg_1min": loadavg_1min()}
    if legacy_keys:
        h["benchmark"] = bench_name
        h["git_commit"] = h["commit"]
    h.update(extra)
    return h

"""How long will a plan take here? Speed records of past runs on this machine, and a short probe.

Every finished ``generate`` records its measured rates under a key of (machine, backend, model,
batch size) in ``$XDG_CACHE_HOME/gp-engine/speed.json`` (default ``~/.cache``; ``GP_ENGINE_CACHE``
overrides the folder): batched network calls per second (engines that pad every call to their fixed
batch pay per call) and block-evaluations per second (onnxruntime on the CPU runs only the real rows,
so it pays per block). ``gp-engine plan`` turns the plan's cost into a time with the latest matching
record, or, with ``--probe``, times a few full network calls at the plan's batch size (the network
alone: the RePaint arithmetic around it adds 10-25 % on the CPU, so the probe's figure is a lower
bound and is labelled as such).
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import numpy as np

SPEED_FILE = "speed.json"


def cache_dir() -> Path:
    base = os.environ.get("GP_ENGINE_CACHE")
    if base:
        return Path(base)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gp-engine"


def machine() -> str:
    """This machine in words: CPU model and core count (records are only reused on the same kind)."""
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{name} ({os.cpu_count()} cores)"


def _key(backend: str, model: str, batch_size: int) -> str:
    return f"{machine()} | {backend} | model {model} | batch {int(batch_size)}"


def _load() -> dict:
    try:
        return json.loads((cache_dir() / SPEED_FILE).read_text())
    except (OSError, ValueError):
        return {}


def record(backend: str, model: str, batch_size: int, calls_per_s: float, block_evals_per_s: float) -> None:
    """Remember measured rates: batched network calls/s (what a padding engine pays for) and
    block-evaluations/s (what onnxruntime on the CPU, which runs only the real rows, pays for).
    Best effort: a read-only cache folder is not an error."""
    if not calls_per_s or not np.isfinite(calls_per_s) or calls_per_s <= 0:
        return
    data = _load()
    data[_key(backend, model, batch_size)] = {"network_calls_per_s": float(calls_per_s),
                                              "block_evaluations_per_s": float(block_evals_per_s),
                                              "date": time.strftime("%Y-%m-%d")}
    try:
        from .canvas import write_json_atomic

        cache_dir().mkdir(parents=True, exist_ok=True)
        write_json_atomic(cache_dir() / SPEED_FILE, data)
    except OSError:
        pass


def lookup(backend: str, model: str, batch_size: int) -> dict | None:
    return _load().get(_key(backend, model, batch_size))


def probe(engine, channels: int = 1, calls: int = 3) -> float:
    """Batched network calls per second of the network alone at the engine's batch size."""
    B = int(engine.batch_size)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((B, channels, 32, 32, 32)).astype(np.float32)
    t = np.full(B, 100.0, np.float32)
    engine.predict_eps(x, t)  # warm-up (allocations, first-call compilation)
    start = time.perf_counter()
    for _ in range(calls):
        engine.predict_eps(x, t)
    return calls / (time.perf_counter() - start)


def pays_per_call(backend: str, manifest: dict) -> bool:
    """True when every network call costs a full batch (padded engines), False when it costs its rows
    (onnxruntime on the CPU with a dynamic-batch graph)."""
    dynamic = bool((manifest.get("onnx") or {}).get("dynamic_batch", True))
    return not (backend == "onnxruntime" and dynamic)


def human(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


__all__ = ["record", "lookup", "probe", "pays_per_call", "human", "machine", "cache_dir"]

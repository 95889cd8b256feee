"""The generation canvas: float32 values + an explicit known-mask, checkpointed after every batch.

On disk (``OUT/canvas/``): ``values.npy`` and ``known.npy`` are ``np.memmap`` views (``.npy``
format, so they open with ``np.load(mmap_mode="r")``), ``state.json`` lists the completed batches,
the plan hash, seed and model id. A batch is committed in three atomic steps:

1. its results go to ``pending.npz`` (tmp + ``os.replace``),
2. they are written into the memmaps, which are flushed,
3. ``state.json`` gains the batch (tmp + ``os.replace``) and the journal is removed.

A kill at any point leaves either an uncommitted batch (recomputed from an untouched canvas — its
blocks never read their own output) or a journal that ``resume`` re-applies (idempotent). Either way
the resumed run gives the same voxels as an uninterrupted one. Small targets live in the page cache
anyway; :meth:`Canvas.in_memory` gives a file-less canvas for library use.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

from .atomic_write import atomic_open
from .errors import GPEngineError

STATE_VERSION = 1
#: bytes per voxel reserved when checking free disk space: canvas (4 + 1) + grain ids (4)
#: + raw field copy (4) + slack for vti/dump outputs.
BYTES_PER_VOXEL = 24


def json_safe(obj):
    """Strict-JSON version of ``obj``: NaN/inf -> null, numpy scalars/arrays -> Python, paths -> str."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    if isinstance(obj, (np.integer, np.bool_)):
        return obj.item()
    if isinstance(obj, (float, np.floating)):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_json_atomic(path: Path, data: dict) -> None:
    """Write strict JSON via a temporary file and ``os.replace`` (never a half-written file)."""
    with atomic_open(path, "w") as f:
        json.dump(json_safe(data), f, indent=1, sort_keys=True, allow_nan=False)
        f.flush()
        os.fsync(f.fileno())


def check_disk_space(directory: Path, n_voxels: int, bytes_per_voxel: int = BYTES_PER_VOXEL) -> None:
    """Clear error when the output disk cannot hold the canvas and outputs."""
    need = int(n_voxels) * bytes_per_voxel + (64 << 20)
    free = shutil.disk_usage(directory).free
    if free < need:
        raise GPEngineError(f"not enough free disk space in {directory}: need about "
                            f"{need / 2**30:.2f} GiB for {n_voxels} voxels, have {free / 2**30:.2f} "
                            "GiB; choose another --out directory or a smaller geometry")


class Canvas:
    """values (float32) + known (uint8) over the target shape, plus the checkpoint state.

    A model with C > 1 channels (analog bits) keeps values as [C, x, y, z]; one channel as [x, y, z].
    """

    def __init__(self, values: np.ndarray, known: np.ndarray, directory: Path | None, state: dict):
        self.values, self.known, self.dir, self.state = values, known, directory, state
        self.channels = 1 if values.ndim == 3 else int(values.shape[0])

    # ------------------------------------------------------------------ construction
    @classmethod
    def in_memory(cls, shape: tuple[int, int, int], channels: int = 1) -> "Canvas":
        shape = tuple(int(s) for s in shape)
        vshape = shape if channels == 1 else (int(channels),) + shape
        return cls(np.zeros(vshape, np.float32), np.zeros(shape, np.uint8), None,
                   {"completed": [], "meta": {}})

    @staticmethod
    def path(out_dir: Path) -> Path:
        return Path(out_dir) / "canvas"

    @classmethod
    def create(cls, out_dir: Path, shape: tuple[int, int, int], meta: dict,
               force: bool = False, channels: int = 1) -> "Canvas":
        """Allocate a fresh on-disk canvas; refuses to overwrite a previous run unless ``force``."""
        out_dir = Path(out_dir)
        cdir = cls.path(out_dir)
        if cdir.exists():
            if not force:
                raise GPEngineError(f"{out_dir} already holds a generation run; pass --resume to "
                                    "continue it, --force to overwrite it, or choose another --out")
            shutil.rmtree(cdir)
        out_dir.mkdir(parents=True, exist_ok=True)
        shape = tuple(int(s) for s in shape)
        check_disk_space(out_dir, int(np.prod(shape)), BYTES_PER_VOXEL + 4 * (int(channels) - 1))
        cdir.mkdir()
        vshape = shape if channels == 1 else (int(channels),) + shape
        values = np.lib.format.open_memmap(cdir / "values.npy", "w+", np.float32, vshape)
        known = np.lib.format.open_memmap(cdir / "known.npy", "w+", np.uint8, shape)
        state = {"version": STATE_VERSION, "meta": meta, "completed": []}
        canvas = cls(values, known, cdir, state)
        canvas.flush()
        return canvas

    @classmethod
    def resume(cls, out_dir: Path, meta: dict) -> "Canvas":
        """Reopen an interrupted run; its plan hash, seed, model and shape must match ``meta``."""
        cdir = cls.path(Path(out_dir))
        state_path = cdir / "state.json"
        if not state_path.is_file():
            raise GPEngineError(f"nothing to resume in {out_dir} (no canvas/state.json); run "
                                "without --resume to start")
        try:
            state = json.loads(state_path.read_text())
        except json.JSONDecodeError as exc:
            raise GPEngineError(f"{state_path} is corrupt ({exc}); rerun with --force") from None
        old = state.get("meta", {})
        diff = sorted(k for k in set(old) | set(meta) if old.get(k) != meta.get(k))
        if diff:
            detail = "; ".join(f"{k}: run has {old.get(k)!r}, now {meta.get(k)!r}" for k in diff)
            raise GPEngineError(f"cannot resume {out_dir}: the run was started with different "
                                f"settings ({detail}); use the original plan/seed/model or --force")
        values = np.load(cdir / "values.npy", mmap_mode="r+")
        known = np.load(cdir / "known.npy", mmap_mode="r+")
        canvas = cls(values, known, cdir, state)
        canvas._replay_journal()
        return canvas

    # ------------------------------------------------------------------ block I/O
    @property
    def shape(self) -> tuple[int, int, int]:
        """Spatial shape (x, y, z), without the channel axis."""
        return tuple(self.known.shape)

    @property
    def completed(self) -> set[int]:
        return set(self.state["completed"])

    def _slices(self, corner, size: int):
        """Canvas slices and block-local slices of a block clipped to the canvas."""
        cs, bs = [], []
        for c, n in zip(corner, self.shape):
            lo, hi = max(int(c), 0), min(int(c) + size, n)
            if hi <= lo:
                raise GPEngineError(f"block at corner {tuple(corner)} lies outside the canvas {self.shape}")
            cs.append(slice(lo, hi))
            bs.append(slice(lo - int(c), hi - int(c)))
        return tuple(cs), tuple(bs)

    def read_block(self, corner, size: int) -> tuple[np.ndarray, np.ndarray]:
        """(x0 [C, s, s, s], mask [s, s, s]) of a size³ block; voxels outside the canvas are unknown."""
        x0 = np.zeros((self.channels,) + (size,) * 3, np.float32)
        mask = np.zeros((size,) * 3, np.uint8)
        cs, bs = self._slices(corner, size)
        if self.channels == 1:
            x0[0][bs] = self.values[cs]
        else:
            x0[(slice(None),) + bs] = self.values[(slice(None),) + cs]
        mask[bs] = self.known[cs]
        return x0, mask

    def _apply(self, corners, results: np.ndarray) -> None:
        """results: [B, C, s, s, s] (or [B, s, s, s] for one channel)."""
        size = results.shape[-1]
        for corner, res in zip(corners, results):
            cs, bs = self._slices(corner, size)
            res = res.reshape((self.channels,) + (size,) * 3)
            if self.channels == 1:
                self.values[cs] = res[0][bs]
            else:
                self.values[(slice(None),) + cs] = res[(slice(None),) + bs]
            self.known[cs] = 1

    def commit(self, batch: int, corners, results: np.ndarray) -> None:
        """Stitch a finished batch (whole blocks, marked known) and checkpoint atomically."""
        corners = np.asarray(corners, np.int64).reshape(-1, 3)
        results = np.asarray(results, np.float32)
        if self.dir is None:
            self._apply(corners, results)
            self.state["completed"].append(int(batch))
            return
        journal = self.dir / "pending.npz"
        with atomic_open(journal, "wb", suffix=".tmp.npz") as f:
            np.savez(f, batch=np.int64(batch), corners=corners, results=results)
        self._apply(corners, results)
        self.values.flush()
        self.known.flush()
        self.state["completed"].append(int(batch))
        self.flush()
        journal.unlink()

    def _replay_journal(self) -> None:
        journal = self.dir / "pending.npz"
        if not journal.is_file():
            return
        try:
            with np.load(journal) as z:
                batch, corners, results = int(z["batch"]), z["corners"], z["results"]
        except Exception:  # a torn journal cannot exist (os.replace), but be safe: drop it
            journal.unlink()
            return
        if batch not in self.completed:
            self._apply(corners, results)
            self.values.flush()
            self.known.flush()
            self.state["completed"].append(batch)
            self.flush()
        journal.unlink()

    def flush(self) -> None:
        """Write the state file atomically (memmaps are flushed by ``commit``)."""
        if self.dir is not None:
            write_json_atomic(self.dir / "state.json", self.state)

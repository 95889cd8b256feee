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

Resume trusts nothing it can check (:meth:`Canvas.resume`): ``state.json`` must carry the canvas
marker, the run's settings and a consistent ``completed`` list; both ``.npy`` files must have the
recorded dtype and shape and exactly the size their header implies (a truncated file is refused,
never zero-filled); the known mask must equal the union of the completed batches' blocks; and the
values must hash to ``state["digest"]``, an XOR of one 64-bit hash per (position, value bits) that
every commit updates from the voxels it replaces (so a changed, zeroed or swapped voxel anywhere is
caught with one read of the file). Anything else is a one-line refusal that names the file.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
from pathlib import Path

import numpy as np

from .atomic_write import atomic_open
from .errors import GPEngineError
from .volume_io import open_npy_memmap

STATE_VERSION = 1
#: ``state.json["format"]``: marks a folder as a gp-engine canvas (only such folders are ever removed)
CANVAS_FORMAT = "gp-engine-canvas"
CANVAS_FILES = ("values.npy", "known.npy", "state.json", "pending.npz", "grains.npy", "grains_box.npy", "display.npy")
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


# ------------------------------------------------------------------------------- integrity


def _digest_kernel():
    """The numba kernel behind :func:`box_digest` (compiled on first use)."""
    global _DIGEST
    if _DIGEST is None:
        import numba

        @numba.njit(cache=True, nogil=True)
        def kernel(bits, c0, x0, y0, z0, nx, ny, nz):
            h = np.uint64(0)
            C, X, Y, Z = bits.shape
            for c in range(C):
                for x in range(X):
                    for y in range(Y):
                        base = ((np.uint64(c0 + c) * np.uint64(nx) + np.uint64(x0 + x)) * np.uint64(ny)
                                + np.uint64(y0 + y)) * np.uint64(nz) + np.uint64(z0)
                        for z in range(Z):
                            v = bits[c, x, y, z]
                            if v != 0:  # zero bits contribute nothing: a fresh canvas hashes to 0
                                k = (base + np.uint64(z)) * np.uint64(0x9E3779B97F4A7C15) ^ np.uint64(v)
                                k ^= k >> np.uint64(30)
                                k *= np.uint64(0xBF58476D1CE4E5B9)
                                k ^= k >> np.uint64(27)
                                k *= np.uint64(0x94D049BB133111EB)
                                k ^= k >> np.uint64(31)
                                h ^= k
            return h

        _DIGEST = kernel
    return _DIGEST


_DIGEST = None


def box_digest(values: np.ndarray, origin, full_shape) -> int:
    """XOR of splitmix64(global position, float32 bits) over a box of the canvas values.

    ``values``: [C, x, y, z] float32 (or [x, y, z] for one channel) holding the box whose lowest
    corner is ``origin`` = (c0, x0, y0, z0) in an array of ``full_shape`` = (C, X, Y, Z). XOR makes the
    digest of the whole canvas the XOR of the digests of disjoint boxes, so a commit updates it from the
    boxes it rewrites: ``d ^= box_digest(old) ^ box_digest(new)``.
    """
    v = np.ascontiguousarray(values, np.float32)
    if v.ndim == 3:
        v = v[None]
    c0, x0, y0, z0 = (int(o) for o in origin)
    _, nx, ny, nz = (int(n) for n in full_shape)
    return int(_digest_kernel()(v.view(np.uint32), c0, x0, y0, z0, nx, ny, nz))


def _intersect(a, b):
    """Intersection of two tuples of slices (None when empty)."""
    out = []
    for sa, sb in zip(a, b):
        lo, hi = max(sa.start, sb.start), min(sa.stop, sb.stop)
        if hi <= lo:
            return None
        out.append(slice(lo, hi))
    return tuple(out)


def _shift(sl, origin):
    return tuple(slice(s.start - o, s.stop - o) for s, o in zip(sl, origin))


def read_npy_header(path: Path) -> tuple[np.dtype, tuple[int, ...], bool, int]:
    """(dtype, shape, fortran_order, data offset) of a .npy file, without reading its data."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        return np.dtype(dtype), tuple(int(n) for n in shape), bool(fortran), f.tell()


def _open_checked(path: Path, dtype, shape: tuple[int, ...], fix: str) -> np.ndarray:
    """Memory-map an existing .npy read-write after checking its dtype, shape and byte size."""
    if not path.is_file():
        raise GPEngineError(f"{path} is missing; the canvas is incomplete: {fix}")
    try:
        got_dtype, got_shape, fortran, offset = read_npy_header(path)
    except (ValueError, OSError, EOFError) as exc:
        raise GPEngineError(f"{path} is not a readable .npy file ({exc}); {fix}") from None
    if got_dtype != np.dtype(dtype) or got_shape != tuple(shape) or fortran:
        raise GPEngineError(f"{path} holds {got_dtype} {got_shape}{' (Fortran order)' if fortran else ''}, "
                            f"the run needs {np.dtype(dtype)} {tuple(shape)}: it is not this run's canvas; {fix}")
    want = offset + int(np.prod(shape)) * np.dtype(dtype).itemsize
    size = path.stat().st_size
    if size != want:
        raise GPEngineError(f"{path} has {size} bytes, its header implies {want}: the file was "
                            f"{'truncated' if size < want else 'extended'}; {fix}")
    return np.load(path, mmap_mode="r+", allow_pickle=False)


def is_canvas_dir(path: Path) -> bool:
    """True when ``path`` is a canvas folder written by gp-engine (marker in state.json, or the state
    layout of canvases written before the marker existed) and holds nothing but canvas files."""
    path = Path(path)
    state_path = path / "state.json"
    if not path.is_dir() or path.is_symlink() or not state_path.is_file():
        return False
    try:
        state = json.loads(state_path.read_text())
    except (OSError, ValueError):
        return False
    ours = isinstance(state, dict) and (state.get("format") == CANVAS_FORMAT
                                        or {"meta", "completed", "version"} <= set(state))
    stray = [p.name for p in path.iterdir()
             if p.name not in CANVAS_FILES and not (p.name.startswith(".") and ".tmp" in p.name)]
    return ours and not stray


def remove_canvas_dir(path: Path) -> None:
    """Delete a canvas folder, after checking it is one (anything else is refused, never removed)."""
    path = Path(path)
    if not path.exists():
        return
    if not is_canvas_dir(path):
        raise GPEngineError(f"{path} is not a gp-engine canvas folder (no canvas state.json, or files "
                            "gp-engine did not write): it was left untouched; move it away or choose another --out")
    shutil.rmtree(path)


class Canvas:
    """values (float32) + known (uint8) over the target shape, plus the checkpoint state.

    A model with C > 1 channels (analog bits) keeps values as [C, x, y, z]; one channel as [x, y, z].
    """

    def __init__(self, values: np.ndarray, known: np.ndarray, directory: Path | None, state: dict):
        self.values, self.known, self.dir, self.state = values, known, directory, state
        self.channels = 1 if values.ndim == 3 else int(values.shape[0])
        self.state.setdefault("digest", 0)
        #: axes on which blocks wrap round to the opposite face (recorded in the state)
        self.periodic = tuple(bool(p) for p in self.state.get("periodic") or (False, False, False))

    # ------------------------------------------------------------------ construction
    @classmethod
    def in_memory(cls, shape: tuple[int, int, int], channels: int = 1, periodic=None) -> "Canvas":
        shape = tuple(int(s) for s in shape)
        vshape = shape if channels == 1 else (int(channels),) + shape
        return cls(np.zeros(vshape, np.float32), np.zeros(shape, np.uint8), None,
                   {"completed": [], "meta": {}, "periodic": list(periodic or (False, False, False))})

    @staticmethod
    def path(out_dir: Path) -> Path:
        return Path(out_dir) / "canvas"

    @classmethod
    def create(cls, out_dir: Path, shape: tuple[int, int, int], meta: dict,
               force: bool = False, channels: int = 1, directory: Path | None = None,
               periodic=None) -> "Canvas":
        """Allocate a fresh on-disk canvas in ``directory`` (default ``OUT/canvas``); refuses an existing
        canvas unless ``force``, and even then removes only a folder that is a gp-engine canvas."""
        out_dir = Path(out_dir)
        cdir = Path(directory) if directory is not None else cls.path(out_dir)
        if cdir.exists():
            if not force:
                raise GPEngineError(f"{out_dir} already holds a generation run; pass --resume to "
                                    "continue it, --force to overwrite it, or choose another --out")
            remove_canvas_dir(cdir)
        out_dir.mkdir(parents=True, exist_ok=True)
        shape = tuple(int(s) for s in shape)
        check_disk_space(out_dir, int(np.prod(shape)), BYTES_PER_VOXEL + 4 * (int(channels) - 1))
        cdir.mkdir()
        vshape = shape if channels == 1 else (int(channels),) + shape
        values = open_npy_memmap(cdir / "values.npy", np.float32, vshape)
        known = open_npy_memmap(cdir / "known.npy", np.uint8, shape)
        state = {"format": CANVAS_FORMAT, "version": STATE_VERSION, "meta": meta, "completed": [],
                 "channels": int(channels), "digest": 0,
                 "periodic": [bool(p) for p in (periodic or (False, False, False))]}
        canvas = cls(values, known, cdir, state)
        canvas.flush()
        return canvas

    @classmethod
    def resume(cls, out_dir: Path, meta: dict, layout=None, block_size: int = 32,
               directory: Path | None = None, progress: bool = False) -> "Canvas":
        """Reopen an interrupted run after checking everything it can (see the module docstring).

        ``meta`` (plan hash, seed, model, shape, ...) must equal the run's. ``layout``: the corners of
        every batch's blocks (``layout[k]`` = list of corners); when given, the completed list and the
        known mask are checked against it. Raises GPEngineError naming the file for any mismatch.
        """
        cdir = Path(directory) if directory is not None else cls.path(Path(out_dir))
        fix = f"rerun with --force to start over (the damaged canvas is {cdir})"
        state_path = cdir / "state.json"
        if not state_path.is_file():
            if cdir.is_dir():
                raise GPEngineError(f"{state_path} is missing: the canvas was damaged; {fix}")
            raise GPEngineError(f"nothing to resume in {out_dir} (no canvas/state.json); run "
                                "without --resume to start")
        try:
            state = json.loads(state_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise GPEngineError(f"{state_path} is corrupt ({exc}); {fix}") from None
        if not isinstance(state, dict) or not isinstance(state.get("meta"), dict) \
                or not isinstance(state.get("completed"), list):
            raise GPEngineError(f"{state_path} is not a gp-engine canvas state (needs 'meta' and "
                                f"'completed'); {fix}")
        if state.get("version", STATE_VERSION) > STATE_VERSION:
            raise GPEngineError(f"{state_path} was written by a newer gp-engine (state version "
                                f"{state['version']}); upgrade gp-engine to resume it")
        old = dict(state["meta"])
        # canvases from before the noise stream and backend were recorded: painted with the first
        # stream (refused now: mixing two streams in one volume), backend unknown (accepted)
        from .noise import LEGACY_STREAM

        if "noise" in meta:
            old.setdefault("noise", LEGACY_STREAM)
        if "backend" in meta:
            old.setdefault("backend", meta["backend"])
        if "margin" in meta:  # canvases from before margins were painted without one
            old.setdefault("margin", 0)
        diff = sorted(k for k in set(old) | set(meta) if old.get(k) != meta.get(k))
        if diff:
            detail = "; ".join(f"{k}: run has {old.get(k)!r}, now {meta.get(k)!r}" for k in diff)
            hint = ""
            if "noise" in diff:
                hint = (f"; the canvas was painted with noise stream {old.get('noise')!r} and this gp-engine "
                        f"draws {meta.get('noise')!r}: finish it with the gp-engine that started it")
            if "backend" in diff:
                hint = (f"; the backend and precision fix the arithmetic of a volume: resume on the "
                        f"backend it started on ({old.get('backend')!r}, see --backend)")
            raise GPEngineError(f"cannot resume {out_dir}: the run was started with different "
                                f"settings ({detail}){hint}; use the original plan/seed/model or --force")
        done = state["completed"]
        if not all(isinstance(k, int) and not isinstance(k, bool) and k >= 0 for k in done) \
                or len(set(done)) != len(done):
            raise GPEngineError(f"{state_path}: 'completed' must list distinct batch numbers, got "
                                f"{done[:10]}{'...' if len(done) > 10 else ''}; {fix}")
        if layout is not None and done and max(done) >= len(layout):
            raise GPEngineError(f"{state_path}: 'completed' names batch {max(done)} but the plan has "
                                f"{len(layout)} batches; {fix}")
        shape = tuple(int(n) for n in (meta.get("shape") or old.get("shape") or ()))
        known_path = cdir / "known.npy"
        if len(shape) != 3:  # library callers without a recorded shape: take the known mask's
            try:
                shape = read_npy_header(known_path)[1]
            except (ValueError, OSError, EOFError) as exc:
                raise GPEngineError(f"{known_path} is not a readable .npy file ({exc}); {fix}") from None
        channels = int(state.get("channels") or 0)
        if not channels:  # canvases written before "channels" was recorded: the values file says
            try:
                vshape = read_npy_header(cdir / "values.npy")[1]
            except (ValueError, OSError, EOFError) as exc:
                raise GPEngineError(f"{cdir / 'values.npy'} is not a readable .npy file ({exc}); {fix}") from None
            channels = 1 if len(vshape) == 3 else int(vshape[0])
        vshape = shape if channels == 1 else (channels,) + shape
        values = _open_checked(cdir / "values.npy", np.float32, vshape, fix)
        known = _open_checked(known_path, np.uint8, shape, fix)
        legacy_digest = "digest" not in state
        canvas = cls(values, known, cdir, state)
        canvas._replay_journal()
        if layout is not None:
            canvas._verify_known(layout, block_size, fix)
        if legacy_digest:  # written before digests: nothing to compare with, start recording now
            canvas.state["digest"] = canvas.full_digest()
            canvas.flush()
        else:
            got = canvas.full_digest(progress)
            if got != int(canvas.state["digest"]):
                raise GPEngineError(f"{cdir / 'values.npy'} does not match the checksum in {state_path}: "
                                    f"the canvas was changed or damaged after it was written; {fix}")
        return canvas

    # ------------------------------------------------------------------ integrity
    def _vshape4(self) -> tuple[int, int, int, int]:
        return (self.channels,) + self.shape

    def full_digest(self, progress: bool = False, slab: int = 16) -> int:
        """The digest of every value in the canvas (one read of the values, ``slab`` x-planes at a time)."""
        from tqdm import tqdm

        d = 0
        nx = self.shape[0]
        for x in tqdm(range(0, nx, slab), desc="verify canvas", unit="slab", disable=not progress):
            hi = min(x + slab, nx)
            box = self.values[x:hi] if self.channels == 1 else self.values[:, x:hi]
            d ^= box_digest(np.asarray(box), (0, x, 0, 0), self._vshape4())
        return d

    def _verify_known(self, layout, block_size: int, fix: str, slab: int = 64) -> None:
        """The known mask must be exactly the union of the completed batches' blocks."""
        boxes = []
        for k in sorted(self.completed):
            for corner in layout[k]:
                boxes.extend(cs for cs, _ in self._pieces(corner, block_size))
        nx = self.shape[0]
        for x in range(0, nx, slab):
            hi = min(x + slab, nx)
            want = np.zeros((hi - x,) + self.shape[1:], np.uint8)
            for b in boxes:
                lo_, hi_ = max(b[0].start, x), min(b[0].stop, hi)
                if hi_ > lo_:
                    want[(slice(lo_ - x, hi_ - x),) + b[1:]] = 1
            got = np.asarray(self.known[x:hi])
            if not np.array_equal(got, want):  # exactly 0/1: any other byte is damage
                bad = np.argwhere(got != want)[0] + (x, 0, 0)
                raise GPEngineError(f"{self.dir / 'known.npy'} disagrees with the completed batches in "
                                    f"{self.dir / 'state.json'} (first at voxel {tuple(int(i) for i in bad)}): "
                                    f"parts of the volume would never be generated; {fix}")

    def _batch_digest(self, corners, results: np.ndarray) -> int:
        """The digest after writing ``results`` at ``corners`` (computed before anything is written:
        the old voxels of each block, with earlier blocks of the same batch overlaid, are hashed out and
        the new ones hashed in)."""
        d = int(self.state.get("digest", 0))
        size = results.shape[-1]
        full = self._vshape4()
        written = []
        for corner, res in zip(corners, results):
            res = res.reshape((self.channels,) + (size,) * 3)
            for cs, bs in self._pieces(corner, size):
                old = np.array(self._region(cs), np.float32).reshape(
                    (self.channels,) + tuple(s.stop - s.start for s in cs))
                origin = tuple(s.start for s in cs)
                for cs2, new2 in written:
                    inter = _intersect(cs, cs2)
                    if inter is not None:
                        old[(slice(None),) + _shift(inter, origin)] = \
                            new2[(slice(None),) + _shift(inter, tuple(s.start for s in cs2))]
                new = np.ascontiguousarray(res[(slice(None),) + bs])
                d ^= box_digest(old, (0,) + origin, full) ^ box_digest(new, (0,) + origin, full)
                written.append((cs, new))
        return d

    # ------------------------------------------------------------------ block I/O
    @property
    def shape(self) -> tuple[int, int, int]:
        """Spatial shape (x, y, z), without the channel axis."""
        return tuple(self.known.shape)

    @property
    def completed(self) -> set[int]:
        return set(self.state["completed"])

    def _pieces(self, corner, size: int) -> list[tuple[tuple[slice, ...], tuple[slice, ...]]]:
        """(canvas slices, block-local slices) of the contiguous pieces of a size³ block: one piece
        clipped to the canvas, or up to 8 where the block wraps round periodic axes."""
        per_axis = []
        for c, n, p in zip(corner, self.shape, self.periodic):
            c = int(c)
            if p:
                start = c % n
                if start + size <= n:
                    per_axis.append([(slice(start, start + size), slice(0, size))])
                else:
                    cut = n - start
                    per_axis.append([(slice(start, n), slice(0, cut)), (slice(0, size - cut), slice(cut, size))])
            else:
                lo, hi = max(c, 0), min(c + size, n)
                if hi <= lo:
                    raise GPEngineError(f"block at corner {tuple(corner)} lies outside the canvas {self.shape}")
                per_axis.append([(slice(lo, hi), slice(lo - c, hi - c))])
        return [(tuple(a[0] for a in combo), tuple(a[1] for a in combo))
                for combo in itertools.product(*per_axis)]

    def _region(self, cs) -> np.ndarray:
        return self.values[cs] if self.channels == 1 else self.values[(slice(None),) + cs]

    def read_block(self, corner, size: int) -> tuple[np.ndarray, np.ndarray]:
        """(x0 [C, s, s, s], mask [s, s, s]) of a size³ block; voxels outside the canvas are unknown
        (on periodic axes the block wraps round to the opposite face)."""
        x0 = np.zeros((self.channels,) + (size,) * 3, np.float32)
        mask = np.zeros((size,) * 3, np.uint8)
        for cs, bs in self._pieces(corner, size):
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
            res = res.reshape((self.channels,) + (size,) * 3)
            for cs, bs in self._pieces(corner, size):
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
        digest = self._batch_digest(corners, results)
        journal = self.dir / "pending.npz"
        with atomic_open(journal, "wb", suffix=".tmp.npz") as f:
            np.savez(f, batch=np.int64(batch), corners=corners, results=results,
                     digest=np.uint64(digest))
        self._apply(corners, results)
        self.values.flush()
        self.known.flush()
        self.state["completed"].append(int(batch))
        self.state["digest"] = digest
        self.flush()
        journal.unlink()

    def _replay_journal(self) -> None:
        """Re-apply a batch whose journal was written but whose state update was not (a kill in
        between). The journal is written atomically, so it is whole or absent."""
        journal = self.dir / "pending.npz"
        if not journal.is_file():
            return
        try:
            with np.load(journal) as z:
                batch, corners, results = int(z["batch"]), z["corners"], z["results"]
                digest = int(z["digest"]) if "digest" in z.files else None
        except Exception as exc:  # os.replace makes a torn journal impossible: this is damage
            raise GPEngineError(f"{journal} cannot be read ({type(exc).__name__}: {exc}); rerun with "
                                f"--force to start over (the damaged canvas is {self.dir})") from None
        if batch not in self.completed:
            if digest is None:  # journals written before digests: hash the voxels it replaces
                digest = self._batch_digest(corners, results)
            self._apply(corners, results)
            self.values.flush()
            self.known.flush()
            self.state["completed"].append(batch)
            self.state["digest"] = digest
            self.flush()
        journal.unlink()

    def flush(self) -> None:
        """Write the state file atomically (memmaps are flushed by ``commit``)."""
        if self.dir is not None:
            write_json_atomic(self.dir / "state.json", self.state)

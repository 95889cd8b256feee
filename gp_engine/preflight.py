"""Limits a plan implies, checked from the plan alone before any work starts.

``gp-engine plan`` prints :func:`estimate`; ``gp-engine plan`` and ``generate`` both call :func:`check`,
which refuses (one line naming the plan field and the fix) a run that would run out of memory or disk,
or whose reference volumes cannot be read, before a block is planned or a byte is written.

The figures are deliberately generous upper bounds (measured on the CPU backend):

* planning: about 2 KB of Python bookkeeping per block (``PLAN_BYTES_PER_BLOCK``);
* a batch: the sampler's arrays (``SAMPLER_ARRAYS`` float32 copies of a C-channel 32³ block) plus the
  network's activations, ``ACTIVATION_COPIES`` live tensors per U-Net level of width w at (32/2^l)³;
* segmentation: in RAM up to ``generate.IN_RAM_VOXELS`` voxels (``SEGMENT_BYTES_PER_VOXEL``), tiled
  in 256³ tiles above; the cut-out of a box painted with a margin is relabelled in RAM
  (``SPLIT_BYTES_PER_VOXEL`` of the box), or, above ``IN_RAM_VOXELS``, tile by tile
  (``grains.TILE``³ voxels at a time) into one more int32 volume on disk; an analog-bits field that
  large is decoded for segmentation slab by slab into one more float32 volume on disk;
* disk: the canvas and every output (``canvas.BYTES_PER_VOXEL``, 4 more per extra channel); a forced
  run keeps the previous run until its replacement exists, so it needs the space of both.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from .errors import GPEngineError

PLAN_BYTES_PER_BLOCK = 2048
SAMPLER_ARRAYS = 12
ACTIVATION_COPIES = 8
SEGMENT_BYTES_PER_VOXEL = 48
SPLIT_BYTES_PER_VOXEL = 24
#: the share of the available memory a run may plan to use
MEMORY_HEADROOM = 0.8
#: channel widths assumed for a model whose manifest does not say (the ``small`` preset)
DEFAULT_WIDTHS = (32, 64)


def available_memory() -> int | None:
    """Bytes of memory available to a new process (``MemAvailable`` of /proc/meminfo), None if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def free_disk(path: Path) -> tuple[Path, int]:
    """(nearest existing folder at or above ``path``, its free bytes)."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p, shutil.disk_usage(p).free


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def estimate(shape, plan_kind: str, batch_size: int, channels: int = 1, widths=None,
             block: int = 32, periodic=None, margin: int = 0) -> dict:
    """Blocks, voxels, memory (bytes, by part) and disk (bytes) a plan needs (the box painted with
    ``margin`` voxels more beyond each non-periodic face, :func:`gp_engine.planner.painted_box`)."""
    from .canvas import BYTES_PER_VOXEL
    from .generate import IN_RAM_VOXELS
    from .grains import TILE
    from .planner import canvas_shape, estimate_blocks, painted_box

    painted, _ = painted_box(shape, margin, periodic)
    canvas = canvas_shape(painted, block, periodic)
    voxels = canvas[0] * canvas[1] * canvas[2]
    blocks = estimate_blocks(plan_kind, painted, block, periodic)
    widths = tuple(int(w) for w in (widths or DEFAULT_WIDTHS))
    per_block = SAMPLER_ARRAYS * channels * block ** 3 * 4
    per_block += sum(ACTIVATION_COPIES * w * (block >> level) ** 3 * 4 for level, w in enumerate(widths))
    seg_voxels = voxels if voxels <= IN_RAM_VOXELS else 288 ** 3  # a 256³ tile with its halo
    box_voxels = int(shape[0]) * int(shape[1]) * int(shape[2])
    tiled = painted[0] * painted[1] * painted[2] > IN_RAM_VOXELS  # generate segments a memmap then
    split_voxels = 0 if not margin else (min(box_voxels, TILE ** 3) if tiled else box_voxels)
    memory = {"plan": blocks * PLAN_BYTES_PER_BLOCK, "batch": int(batch_size) * per_block,
              "segmentation": max(seg_voxels * SEGMENT_BYTES_PER_VOXEL, split_voxels * SPLIT_BYTES_PER_VOXEL)}
    return {"canvas": canvas, "voxels": voxels, "blocks": blocks, "memory": memory,
            "memory_total": sum(memory.values()), "bytes_per_block": per_block,
            "disk": voxels * (BYTES_PER_VOXEL + 4 * (channels - 1)) + (4 * box_voxels if margin and tiled else 0)
                    + (4 * painted[0] * painted[1] * painted[2] if channels > 1 and tiled else 0) + (64 << 20)}


def check(plan, out_dir: Path | None = None, batch_size: int | None = None, channels: int = 1,
          widths=None, where: str | None = None, keep_previous: bool = False) -> dict:
    """Refuse a plan whose limits this machine cannot meet; returns :func:`estimate`'s figures.

    ``keep_previous``: a forced run over an existing one (both must fit on the disk until the swap).
    """
    where = where or str(getattr(plan, "source", None) or "plan")
    B = int(batch_size or plan.batch_size)
    if B < 1:
        raise GPEngineError(f"{where}: batch_size {B} must be ≥ 1")
    est = estimate(plan.geometry.shape, plan.plan_kind, B, channels, widths,
                   periodic=getattr(plan.geometry, "periodic", None),
                   margin=getattr(plan.geometry, "painted_margin", 0))
    have = available_memory()
    if have is not None and est["memory_total"] > MEMORY_HEADROOM * have:
        parts = ", ".join(f"{k} {_gib(v)}" for k, v in est["memory"].items())
        fixed = est["memory_total"] - est["memory"]["batch"]
        fit = int((MEMORY_HEADROOM * have - fixed) // est["bytes_per_block"])
        fix = (f"lower batch_size to {fit} or less" if fit >= 1 and est["memory"]["batch"] > fixed
               else "make geometry.shape smaller or use a machine with more memory")
        raise GPEngineError(f"{where}: the run needs about {_gib(est['memory_total'])} of memory ({parts}) "
                            f"but this machine has {_gib(have)} available; {fix}")
    if out_dir is not None:
        need = est["disk"]
        folder, free = free_disk(out_dir)
        if free < need:
            extra = " (a forced run keeps the previous run until the new one is complete)" if keep_previous else ""
            raise GPEngineError(f"{where}: outputs.dir {out_dir} needs about {_gib(need)} free for "
                                f"{est['voxels']:,} voxels{extra}, {folder} has {_gib(free)}; choose another "
                                "--out or a smaller geometry.shape")
    for i, ref in enumerate(getattr(plan, "reference", None) or ()):
        check_readable(Path(ref), f"{where}: reference[{i}]")
    return est


def check_readable(path: Path, field: str) -> None:
    """A one-line error unless ``path`` is a file this process can open for reading."""
    if not path.exists():
        raise GPEngineError(f"{field} = {path} does not exist; check the path (relative paths are "
                            "relative to the plan file)")
    if not path.is_file():
        raise GPEngineError(f"{field} = {path} is not a file; name a volume file (.npz, .npy, .vti, dump)")
    if not os.access(path, os.R_OK):
        raise GPEngineError(f"{field} = {path} is not readable; fix its permissions")


__all__ = ["estimate", "check", "check_readable", "available_memory", "free_disk"]

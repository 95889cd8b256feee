"""The known-voxel masks a block really meets when it is painted, collected from real plans.

A conditional (outpainting) model must be trained on the masks the planner produces: faces, edges and
corners of 8-16 voxels, several at once, and the empty mask of first blocks. :func:`plan_masks` walks a
plan (grid or centre-out, any box, periodic or not) and returns, for each block in order, the 32³
boolean mask of the voxels already known when its turn comes (the union of the earlier blocks that
overlap it, clipped to the canvas; outside the canvas nothing is known). :func:`mask_bank` keeps the
distinct masks with how often they occur over several box shapes, and :func:`sample_masks` draws
training masks from it in those proportions, with the 48 symmetries of the cube applied.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .planner import BLOCK


def plan_masks(blocks: Sequence, shape: Sequence[int], periodic: Sequence[bool] | None = None,
               block: int = BLOCK) -> np.ndarray:
    """[n_blocks, block, block, block] bool: the known mask each block of ``blocks`` sees at its turn."""
    shape = tuple(int(n) for n in shape)
    periodic = tuple(bool(p) for p in (periodic or (False, False, False)))
    corners = np.array([b.corner for b in blocks], np.int64).reshape(-1, 3)
    out = np.zeros((len(blocks), block, block, block), bool)
    for i, b in enumerate(blocks):
        ci = corners[i]
        for d in b.deps:
            cd = corners[d]
            delta = cd - ci
            for a in range(3):  # nearest image round the ring on periodic axes
                if periodic[a]:
                    n = shape[a]
                    delta[a] = (delta[a] + n // 2) % n - n // 2
            lo = np.maximum(delta, 0)
            hi = np.minimum(delta + block, block)
            if np.any(hi <= lo):
                continue  # touching, not overlapping
            # clip to the canvas on non-periodic axes (voxels outside are never known)
            for a in range(3):
                if not periodic[a]:
                    lo[a] = max(lo[a], -ci[a])
                    hi[a] = min(hi[a], shape[a] - ci[a])
            if np.all(hi > lo):
                out[i, lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = True
    return out


def mask_bank(shapes: Sequence[Sequence[int]] = ((100, 100, 100), (200, 96, 64), (64, 64, 150)),
              kinds: Sequence[str] = ("grid", "center"), block: int = BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """(distinct masks [m, b, b, b] bool, their frequencies [m] summing to 1) over the given plans."""
    from .generate import plan_blocks

    counts: dict[bytes, list] = {}
    for kind in kinds:
        for shape in shapes:
            blocks = plan_blocks(kind, shape, block)
            for m in plan_masks(blocks, shape, None, block):
                key = np.packbits(m).tobytes()
                entry = counts.setdefault(key, [m, 0])
                entry[1] += 1
    masks = np.stack([v[0] for v in counts.values()])
    freq = np.array([v[1] for v in counts.values()], np.float64)
    return masks, freq / freq.sum()


def sample_masks(bank: tuple[np.ndarray, np.ndarray], n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` training masks drawn from ``bank`` by frequency, each under a random cube symmetry
    (axis permutation and flips: the planner's masks come in every orientation)."""
    masks, freq = bank
    idx = rng.choice(len(masks), size=int(n), p=freq)
    out = np.empty((int(n),) + masks.shape[1:], bool)
    for k, i in enumerate(idx):
        m = np.transpose(masks[i], rng.permutation(3))
        flips = tuple(a for a in range(3) if rng.random() < 0.5)
        out[k] = np.flip(m, flips) if flips else m
    return out


__all__ = ["plan_masks", "mask_bank", "sample_masks"]

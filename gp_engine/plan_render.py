"""A picture of a block plan: which stage paints each voxel, and how full the batches are.

Four panels: the x–y mid-plane and the x–z mid-plane coloured by the stage of the block that first
paints each voxel (with the outlines of the blocks that cut the plane), the block corners in 3D
coloured by stage, and the number of blocks per batch. Matplotlib's Agg backend is used so it works
without a display; the PNG is written atomically.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from .atomic_write import save_figure
from .planner import BLOCK, Block


def owner_slice(blocks: Sequence[Block], canvas: Sequence[int], axis: int, position: int,
                block: int = BLOCK) -> np.ndarray:
    """Stage of the first block that covers each voxel of the plane ``axis = position``
    (0 where none). Plane axes are the two remaining axes in order."""
    keep = [a for a in range(3) if a != axis]
    out = np.zeros((canvas[keep[0]], canvas[keep[1]]), np.int32)
    for b in blocks:
        c = b.corner
        if not c[axis] <= position < c[axis] + block:
            continue
        view = out[c[keep[0]]:c[keep[0]] + block, c[keep[1]]:c[keep[1]] + block]
        view[view == 0] = b.stage
    return out


def _draw_slice(ax, blocks, canvas, axis, block, cmap, norm, title):
    import matplotlib.patches as patches

    keep = [a for a in range(3) if a != axis]
    pos = canvas[axis] // 2
    img = owner_slice(blocks, canvas, axis, pos, block)
    ax.imshow(np.ma.masked_equal(img, 0).T, origin="lower", cmap=cmap, norm=norm,
              interpolation="nearest")
    for b in blocks:
        c = b.corner
        if c[axis] <= pos < c[axis] + block:
            ax.add_patch(patches.Rectangle((c[keep[0]] - 0.5, c[keep[1]] - 0.5), block, block,
                                           fill=False, lw=0.6, ec="k", alpha=0.5))
    names = "xyz"
    ax.set_xlabel(names[keep[0]])
    ax.set_ylabel(names[keep[1]])
    ax.set_title(f"{title}: {names[axis]} = {pos}")


def draw_plan(blocks: Sequence[Block], canvas: Sequence[int], batches: Sequence[Sequence[int]],
              out_png: str | os.PathLike, block: int = BLOCK, title: str = "") -> Path:
    """Draw ``blocks`` on a canvas of shape ``canvas`` into ``out_png``; returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import colors

    stages = sorted({b.stage for b in blocks})
    n_st = max(stages) if stages else 1
    cmap = plt.get_cmap("tab10" if n_st <= 10 else "viridis", n_st)
    norm = colors.BoundaryNorm(np.arange(0.5, n_st + 1.5), cmap.N)

    fig = plt.figure(figsize=(12, 10))
    ax1 = fig.add_subplot(2, 2, 1)
    _draw_slice(ax1, blocks, canvas, 2, block, cmap, norm, "stage per voxel")
    ax2 = fig.add_subplot(2, 2, 2)
    _draw_slice(ax2, blocks, canvas, 1, block, cmap, norm, "stage per voxel")
    sm = plt.cm.ScalarMappable(cmap=cmap, norm=norm)
    fig.colorbar(sm, ax=[ax1, ax2], ticks=stages, label="stage", shrink=0.8)

    ax3 = fig.add_subplot(2, 2, 3, projection="3d")
    c = np.array([b.corner for b in blocks], float).reshape(-1, 3) + block / 2
    st = np.array([b.stage for b in blocks])
    ax3.scatter(c[:, 0], c[:, 1], c[:, 2], c=st, cmap=cmap, norm=norm, s=12, depthshade=False)
    ax3.set_xlabel("x")
    ax3.set_ylabel("y")
    ax3.set_zlabel("z")
    ax3.set_title(f"{len(blocks)} block centres by stage")

    ax4 = fig.add_subplot(2, 2, 4)
    sizes = [len(b) for b in batches]
    ax4.bar(np.arange(1, len(sizes) + 1), sizes, width=1.0, color="tab:blue")
    ax4.set_xlabel("batch")
    ax4.set_ylabel("blocks in batch")
    ax4.set_title(f"{len(sizes)} batches (max {max(sizes) if sizes else 0})")
    if title:
        fig.suptitle(title)

    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    return save_figure(fig, out, dpi=90)

"""Training masks for conditional outpainting are exactly what the canvas shows each block."""

import numpy as np
import pytest

from gp_engine.canvas import Canvas
from gp_engine.generate import plan_blocks
from gp_engine.outpaint_masks import mask_bank, plan_masks, sample_masks
from gp_engine.planner import canvas_shape


@pytest.mark.parametrize("kind,shape,periodic", [("grid", (100, 70, 40), None), ("center", (90, 64, 50), None),
                                                 ("grid", (64, 96, 40), (True, True, False)), ("grid", (20, 50, 33), None)])
def test_plan_masks_equal_what_the_canvas_shows(kind, shape, periodic):
    blocks = plan_blocks(kind, shape, 32, periodic=periodic)
    canvas_dims = canvas_shape(shape, 32, periodic)
    masks = plan_masks(blocks, canvas_dims, periodic)
    c = Canvas.in_memory(canvas_dims, periodic=periodic)
    ones = np.ones((1, 32, 32, 32), np.float32)
    for i, b in enumerate(blocks):
        _, seen = c.read_block(b.corner, 32)
        np.testing.assert_array_equal(masks[i], seen.astype(bool), err_msg=f"block {i} at {b.corner}")
        c.commit(i, [b.corner], ones)
    assert not masks[0].any() and masks[1:].any(axis=(1, 2, 3)).mean() > 0.5


def test_bank_frequencies_and_symmetric_samples():
    masks, freq = mask_bank(shapes=((100, 100, 100),), kinds=("grid",))
    assert np.isclose(freq.sum(), 1.0) and len(masks) == len({m.tobytes() for m in masks})
    assert any(not m.any() for m in masks)                       # first blocks: nothing known
    drawn = sample_masks((masks, freq), 200, np.random.default_rng(0))
    known = drawn.mean(axis=(1, 2, 3))
    bank_known = {round(float(m.mean()), 6) for m in masks}
    assert {round(float(k), 6) for k in known} <= bank_known      # symmetries keep each mask's size
    assert drawn.shape == (200, 32, 32, 32)

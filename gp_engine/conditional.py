"""Conditional (outpainting) models: what the network is told about the voxels already painted.

One definition of the condition, used by the trainer, the exporter, the CPU sampler and the torch
backend: for a block with known values ``x0`` [B, C, s, s, s] and known mask ``m`` (1 = known),

    cond = concat(m · x0, m[:, :1])        # [B, C + 1, s, s, s], constant over the sampler's steps

The network's noisy input ``x_t`` is noisy everywhere, known voxels included (their re-noised values
q(x_t | x0), as training draws them and as :func:`gp_engine.mixing.mix_known` sets them at every
step), so the empty mask turns a conditional model back into an unconditional one: a conditional
model warm-starts from an unconditional checkpoint with zero weights on the new input channels
(:func:`widen_state_dict`) and computes exactly the same function at step 0.

The loss is taken on unknown voxels only (the known ones are pasted back exactly at the end). The
sampler needs no resampling to see the known voxels, but RePaint's repeats on the unknown ones still
improve the grains, so the plan preset ``conditional`` walks 34 DDPM steps with two resamples each
(100 evaluations per block; ``"resample": 0`` gives the plain strided DDPM/DDIM chain, ``steps``
evaluations per block).
"""

from __future__ import annotations

import numpy as np

from .errors import GPEngineError

KINDS = ("unconditional", "conditional")


def cond_channels(channels: int) -> int:
    """Condition channels for a C-channel encoding: C known values + 1 mask."""
    return int(channels) + 1


def make_cond(x0: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """cond [B, C+1, ...] float32 from known values ``x0`` [B, C, ...] and mask [B, C, ...] or [B, ...]."""
    x0 = np.asarray(x0, np.float32)
    m = np.asarray(mask)
    if m.ndim == x0.ndim - 1:
        m = m[:, None]
    m1 = m[:, :1].astype(np.float32)
    return np.ascontiguousarray(np.concatenate([x0 * m1, m1], axis=1), np.float32)


def make_cond_torch(x0, known):
    """Torch version of :func:`make_cond` (``known`` [B, 1, ...] float or bool)."""
    import torch

    k = known[:, :1].to(x0.dtype)
    return torch.cat([x0 * k, k], dim=1)


def model_kind(manifest_or_config: dict) -> str:
    """``conditional`` when the U-Net takes condition channels (manifest or U-Net config), else ``unconditional``."""
    cfg = manifest_or_config.get("unet", manifest_or_config) or {}
    return "conditional" if int(cfg.get("cond_channels", 0) or 0) > 0 else "unconditional"


def check_sampler_fits(kind: str, preset: str, where: str = "plan") -> None:
    """A conditional preset needs a conditional model, and the reverse; one line naming the fix."""
    if kind == "conditional" and preset != "conditional":
        raise GPEngineError(f"{where}: sampler.preset {preset!r} is for unconditional models (RePaint), but the "
                            "model is conditional; use \"sampler\": {\"preset\": \"conditional\"} or an "
                            "unconditional model")
    if kind != "conditional" and preset == "conditional":
        raise GPEngineError(f"{where}: sampler.preset 'conditional' needs a conditional model (manifest "
                            "unet.cond_channels > 0), but this model is unconditional; use \"preset\": "
                            "\"fast\" or \"paper\", or a conditional model")


def widen_state_dict(state: dict, config: dict) -> dict:
    """An unconditional U-Net's weights for the conditional ``config``: the stem gets zero weights on
    the condition channels (the widened net computes the same function when cond is zero)."""
    from .self_cond import widen_stem

    return widen_stem(state, int(config["in_channels"]), int(config["cond_channels"]))


__all__ = ["KINDS", "cond_channels", "make_cond", "make_cond_torch", "model_kind", "check_sampler_fits",
           "widen_state_dict"]

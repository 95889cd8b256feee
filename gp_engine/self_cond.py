"""Self-conditioning (Chen et al. 2023, "Analog Bits"): the network also sees its previous estimate of x₀.

One definition of the extra input, used by the trainer, the exporter, the CPU sampler and the torch
backend. A U-Net whose config has ``self_cond: true`` takes a fourth input ``x0_prev`` [B, C, s, s, s]
(after ``x``, ``t`` and, for a conditional model, ``cond``):

* **training** — for a random half of the steps, ``x0_prev`` is the model's own estimate of x₀ from a
  first pass with ``x0_prev = 0`` (no gradient through it); otherwise it is zero. The network thus
  learns both to start from nothing and to refine an estimate.
* **sampling** — ``x0_prev`` starts at zero for every block and after each network evaluation becomes
  (in the same pass as the posterior step, :func:`gp_engine.mixing.posterior_step`) that evaluation's x̂₀ = (x_t − √(1−ᾱ)·ε̂)/√ᾱ (before any sharpening). A RePaint re-noising step keeps
  it: the estimate is still the best guess of the clean block.

Either way the estimate is clipped to [−1, 1] (:data:`CLIP`), the range of every encoding, so the
division by a small √ᾱ at the noisiest steps cannot feed the network huge values.

A self-conditioning model warm-starts from a checkpoint without it: its stem gets zero weights on the
new channels (:func:`widen_stem`), so it computes exactly the parent's function until training moves
them.
"""

from __future__ import annotations


from .errors import GPEngineError

#: x̂₀ fed back to the network is clipped to [-CLIP, CLIP]
CLIP = 1.0


def uses_self_cond(manifest_or_config: dict) -> bool:
    """True when the U-Net (manifest ``unet`` section or config dict) takes ``x0_prev``."""
    cfg = manifest_or_config.get("unet", manifest_or_config) or {}
    return bool(cfg.get("self_cond", False))


def check_x0_prev(x0_prev, self_cond: bool) -> None:
    """A backend's check that the sampler feeds ``x0_prev`` exactly to a self-conditioning model."""
    if self_cond and x0_prev is None:
        raise GPEngineError("this model is self-conditioning: it needs its previous estimate x0_prev (the sampler "
                            "feeds it when the manifest's unet.self_cond is true); rebuild the model with "
                            "'gp-engine build' if the manifest lost it")
    if x0_prev is not None and not self_cond:
        raise GPEngineError("this model has no self-conditioning: it takes no x0_prev input")


def x0_prev_torch(x0_hat):
    """The torch version: the clipped estimate (``x0_hat`` from :func:`gp_engine.parameterization.to_x0`
    or :func:`gp_engine.mixing.x0_from_eps`), detached."""
    return x0_hat.detach().clamp(-CLIP, CLIP)


def call_net(net, x, t, cond=None, x0_prev=None):
    """``net(x, t[, cond][, x0_prev=...])``: the optional inputs only when given, so networks that take
    just (x, t) (adapters, test models) keep working; every caller (trainer, exporter, torch backend) uses it."""
    args = (x, t) if cond is None else (x, t, cond)
    return net(*args) if x0_prev is None else net(*args, x0_prev=x0_prev)


def widen_stem(state: dict, in_channels: int, extra: int) -> dict:
    """A parent U-Net's weights with ``extra`` zero-weight input channels appended to its stem.

    ``in_channels`` is what the parent's stem must take now (the channels that stay, in order); the
    new channels come after them (the U-Net's input order is x, cond, x0_prev).
    """
    import torch

    out = dict(state)
    w = state["stem.weight"]
    if w.shape[1] != int(in_channels):
        raise GPEngineError(f"cannot widen a stem with {w.shape[1]} input channels: expected {in_channels} "
                            "(the checkpoint's encoding differs, or its condition inputs)")
    out["stem.weight"] = torch.cat([w, torch.zeros(w.shape[0], int(extra), *w.shape[2:], dtype=w.dtype)], dim=1)
    return out


__all__ = ["CLIP", "uses_self_cond", "check_x0_prev", "call_net", "x0_prev_torch", "widen_stem"]

"""What the network predicts (ε, x₀ or v), how its loss is weighted, and how its output becomes ε.

One definition used by the trainer (training target, loss weight), the validator, the exporter and the
torch backend (:class:`EpsAdapter`): every built model's ONNX graph outputs ε whatever it was trained
to predict, so the samplers (numba, CUDA graphs, TensorRT) run the same arithmetic for every target.

With x_t = √ᾱ·x₀ + √(1-ᾱ)·ε (a = √ᾱ, s = √(1-ᾱ), a² + s² = 1):

========  ====================  ==================  ==================
target    network predicts      ε from prediction   x₀ from prediction
========  ====================  ==================  ==================
``eps``   ε                     p                   (x_t - s·p) / a
``x0``    x₀                    (x_t - a·p) / s     p
``v``     v = a·ε - s·x₀        s·x_t + a·p         a·x_t - s·p
========  ====================  ==================  ==================

Loss weights (per sample, SNR = a²/s²): ``uniform`` = 1; ``min-snr`` (Hang et al. 2023, γ = 5) makes
each target's loss equal to min(SNR, γ)·‖x̂₀ - x₀‖², i.e. weight min(SNR, γ)/SNR for ε, min(SNR, γ) for
x₀ and min(SNR, γ)/(SNR + 1) for v.
"""

from __future__ import annotations

import torch
from torch import nn

from .errors import GPEngineError

TARGETS = ("eps", "x0", "v")
WEIGHTINGS = ("uniform", "min-snr")
DEFAULT_GAMMA = 5.0


def check_target(target: str) -> str:
    if target not in TARGETS:
        raise _unknown_target(target)
    return target


def _unknown_target(target: str) -> GPEngineError:
    return GPEngineError(f"prediction target {target!r} is unknown; use one of {', '.join(TARGETS)}")


def check_weighting(weighting: str) -> str:
    if weighting not in WEIGHTINGS:
        raise GPEngineError(f"loss weighting {weighting!r} is unknown; use one of {', '.join(WEIGHTINGS)}")
    return weighting


def _bcast(c: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return c.reshape((-1,) + (1,) * (like.dim() - 1))


def training_target(target: str, x0: torch.Tensor, noise: torch.Tensor, a: torch.Tensor,
                    s: torch.Tensor) -> torch.Tensor:
    """What the network should output for clean ``x0`` and noise ``noise`` at per-sample (a, s)."""
    if target == "eps":
        return noise
    if target == "x0":
        return x0
    if target == "v":
        return _bcast(a, x0) * noise - _bcast(s, x0) * x0
    raise _unknown_target(target)


def loss_weight(weighting: str, target: str, a: torch.Tensor, s: torch.Tensor,
                gamma: float = DEFAULT_GAMMA) -> torch.Tensor:
    """Per-sample loss weight [B] (see the module doc)."""
    if weighting == "uniform":
        return torch.ones_like(a)
    if weighting != "min-snr":
        raise GPEngineError(f"loss weighting {weighting!r} is unknown; use one of {', '.join(WEIGHTINGS)}")
    snr = (a * a) / (s * s)
    clipped = torch.clamp(snr, max=gamma)
    if target == "eps":
        return clipped / snr
    if target == "x0":
        return clipped
    if target == "v":
        return clipped / (snr + 1.0)
    raise _unknown_target(target)


def to_eps(target: str, pred: torch.Tensor, xt: torch.Tensor, a: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """ε implied by the network output ``pred`` at x_t."""
    if target == "eps":
        return pred
    a, s = _bcast(a, xt), _bcast(s, xt)
    if target == "x0":
        return (xt - a * pred) / s
    if target == "v":
        return s * xt + a * pred
    raise _unknown_target(target)


def to_x0(target: str, pred: torch.Tensor, xt: torch.Tensor, a: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """x₀ implied by the network output ``pred`` at x_t."""
    if target == "x0":
        return pred
    a, s = _bcast(a, xt), _bcast(s, xt)
    if target == "eps":
        return (xt - s * pred) / a
    if target == "v":
        return a * xt - s * pred
    raise _unknown_target(target)


class EpsAdapter(nn.Module):
    """forward(x, t[, cond][, x0_prev]) -> ε for a network trained on ``target``: what the exporter and the
    torch backend run.

    ``t`` holds float model timestep indices (as the network takes them); √ᾱ and √(1-ᾱ) are looked up
    from float32 tables of the model's schedule (one Gather each in the ONNX graph). For ``eps`` the
    network's output passes through unchanged.
    """

    def __init__(self, net: nn.Module, target: str, alphas_cumprod):
        super().__init__()
        self.net = net
        self.target = check_target(target)
        ab = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
        self.register_buffer("sqrt_ab", ab.sqrt().float(), persistent=False)
        self.register_buffer("sqrt_1mab", (1.0 - ab).sqrt().float(), persistent=False)

    @property
    def config(self) -> dict:
        return self.net.config

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None,
                x0_prev: torch.Tensor | None = None) -> torch.Tensor:
        from .self_cond import call_net

        pred = call_net(self.net, x, t, cond, x0_prev)
        if self.target == "eps":
            return pred
        idx = t.round().long().clamp(0, self.sqrt_ab.shape[0] - 1)
        a = self.sqrt_ab.to(pred.dtype)[idx]
        s = self.sqrt_1mab.to(pred.dtype)[idx]
        return to_eps(self.target, pred, x.to(pred.dtype), a, s)


__all__ = ["TARGETS", "WEIGHTINGS", "DEFAULT_GAMMA", "check_target", "check_weighting", "training_target",
           "loss_weight", "to_eps", "to_x0", "EpsAdapter"]

"""DDPM noise schedule shared by the trainer, the exporter's manifest and the sampler.

Plain numpy (no torch): generation on CPU reads it from the manifest.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import GPEngineError


@dataclass(frozen=True)
class Schedule:
    """Linear-β DDPM schedule: β_t for t = 0..T-1, α_t = 1-β_t, ᾱ_t = Π α."""

    betas: np.ndarray  # float64, shape (T,)

    @property
    def T(self) -> int:
        return int(self.betas.shape[0])

    @property
    def alphas(self) -> np.ndarray:
        return 1.0 - self.betas

    @property
    def alphas_cumprod(self) -> np.ndarray:
        return np.cumprod(self.alphas)

    def to_dict(self) -> dict:
        return {"kind": "linear", "T": self.T, "beta_start": float(self.betas[0]),
                "beta_end": float(self.betas[-1])}

    @classmethod
    def from_dict(cls, d: dict) -> "Schedule":
        if d.get("kind", "linear") != "linear":
            raise GPEngineError(f"schedule kind {d.get('kind')!r} is not supported; use 'linear'")
        try:
            return linear_schedule(int(d["T"]), float(d["beta_start"]), float(d["beta_end"]))
        except KeyError as exc:
            raise GPEngineError(f"schedule is missing the field {exc.args[0]!r} "
                                "(need T, beta_start, beta_end)") from None


def linear_schedule(T: int = 250, beta_start: float = 1e-4, beta_end: float = 0.02) -> Schedule:
    if T < 2:
        raise GPEngineError(f"schedule T must be at least 2, got {T}")
    if not (0.0 < beta_start <= beta_end < 1.0):
        raise GPEngineError(f"need 0 < beta_start <= beta_end < 1, got {beta_start}, {beta_end}")
    return Schedule(np.linspace(beta_start, beta_end, T, dtype=np.float64))


def extend_linear(schedule: Schedule, T: int) -> Schedule:
    """The same linear β ramp continued to ``T`` steps: β_t unchanged for t < schedule.T, so a model
    trained on ``schedule`` still knows every timestep it knew, and the new ones are noisier.

    Why: T = 250 with β up to 0.02 ends at ᾱ = 0.08 (√ᾱ = 0.28). For 32³ blocks of grains of ~400 voxels
    that is no noise at all at the scale of a grain (the shipped model recovers x₀ from x_249 with
    correlation 0.87), so a walk that starts from pure noise asks the network for a regime it never saw,
    and the grain layout is read off the starting noise. Continued to T = 500, ᾱ_T ≈ 4·10⁻⁵.
    """
    T0 = schedule.T
    if int(T) != T or T <= T0:
        raise GPEngineError(f"--extend-schedule {T} must be an integer above the parent's T = {T0}")
    b0, b1 = float(schedule.betas[0]), float(schedule.betas[-1])
    ext = linear_schedule(int(T), b0, b0 + (b1 - b0) * (int(T) - 1) / (T0 - 1))
    if not np.allclose(ext.betas[:T0], schedule.betas, rtol=0, atol=1e-12):  # pragma: no cover - arithmetic
        raise GPEngineError("the extended schedule does not continue the parent's; its schedule is not linear")
    return ext


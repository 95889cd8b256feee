"""The arithmetic of one sampler step, defined once: scalar formulas and the CPU (numba) kernels built on them.

The formulas (:func:`q_sample`, :func:`x0_from_eps`, :func:`reverse_mean`) are numba functions whose
plain-Python originals (``.py_func``) the torch backend applies to device tensors, so the CPU and GPU
samplers compute the same expressions. The kernels update ``x`` in place, flattened to ``[B, n]``
float32 rows, parallel over voxels, and take their Gaussian noise ``z`` as an argument (drawn by
:mod:`gp_engine.noise` or injected by a test); the numbers in ``z`` are read only where used.

A reverse step (RePaint / the conditional sampler):

1. known voxels ← q_sample(x0, z, √ᾱ_i, √(1-ᾱ_i))                    (:func:`mix_known`)
2. ε̂ = network(x, t_i[, condition])
3. unknown voxels ← reverse_mean(x̂0, x, c_x0, c_xt) + σ_i·z, x̂0 = x0_from_eps(x, ε̂), projected:
   clipped to [-1, 1], or sharpened to tanh(κ·x̂0) (analog bits: a bit commits to ±1, see ``sharpen``)
   (:func:`posterior_step`; coefficients from :meth:`gp_engine.repaint.RespacedSchedule.coefficients`)

and a forward (re-noise) step: unknown voxels ← q_sample(x, z, √α, √(1-α)) (:func:`renoise`). Known
voxels are skipped by steps 3 and the re-noise: the next mix or the final paste overwrites them.
"""

from __future__ import annotations

import math

import numba
import numpy as np


# ------------------------------------------------------------------ the formulas (numba and torch)


@numba.njit(inline="always", cache=True)
def q_sample(x0, z, a, s):
    """x_t = a·x0 + s·z (a = √ᾱ, s = √(1-ᾱ)); also one forward step with a = √α, s = √(1-α)."""
    return a * x0 + s * z


@numba.njit(inline="always", cache=True)
def x0_from_eps(xt, eps, sqrt_ab, sqrt_1mab):
    """x̂0 = (x_t - √(1-ᾱ)·ε̂) / √ᾱ."""
    return (xt - sqrt_1mab * eps) / sqrt_ab


@numba.njit(inline="always", cache=True)
def sharpen_x0(x0, kappa):
    """tanh(κ·x̂0): pulls an analog bit's estimate to ±1 (κ = 0 is not used: the caller clips instead)."""
    return math.tanh(kappa * x0)


@numba.njit(inline="always", cache=True)
def reverse_mean(x0, xt, c_x0, c_xt):
    """Mean of x_{i-1} given x_i and x̂0 (DDPM posterior or DDIM, by the coefficients)."""
    return c_x0 * x0 + c_xt * xt


# ------------------------------------------------------------------ CPU kernels


@numba.njit(parallel=True, cache=True)
def _mix_known(x, x0, mask, a, s, z):
    B, n = x.shape
    for f in numba.prange(B * n):
        r = f // n
        v = f - r * n
        if mask[r, v]:
            x[r, v] = np.float32(q_sample(np.float64(x0[r, v]), np.float64(z[r, v]), a, s))


@numba.njit(parallel=True, cache=True)
def _posterior(x, eps, sab, s1mab, c_x0, c_xt, sigma, clip, sharpen, z, skip, x0_out, out_clip):
    B, n = x.shape
    write_out = x0_out.shape[0] > 0
    for f in numba.prange(B * n):
        r = f // n
        v = f - r * n
        if skip[r, v] and not write_out:  # a known voxel: the next mix (or the final paste) overwrites it
            continue
        xt = np.float64(x[r, v])
        x0 = x0_from_eps(xt, np.float64(eps[r, v]), sab, s1mab)
        if write_out:  # the raw estimate, clipped (self-conditioning's next input)
            x0_out[r, v] = np.float32(min(out_clip, max(-out_clip, x0)))
            if skip[r, v]:
                continue
        if sharpen > 0.0:
            x0 = sharpen_x0(x0, sharpen)
        elif clip:
            x0 = min(1.0, max(-1.0, x0))
        y = reverse_mean(x0, xt, c_x0, c_xt)
        if sigma > 0.0:
            y += sigma * np.float64(z[r, v])
        x[r, v] = np.float32(y)


@numba.njit(parallel=True, cache=True)
def _renoise(x, a, s, z, skip):
    B, n = x.shape
    for f in numba.prange(B * n):
        r = f // n
        v = f - r * n
        if skip[r, v]:
            continue
        x[r, v] = np.float32(q_sample(np.float64(x[r, v]), np.float64(z[r, v]), a, s))


def _skip_mask(x: np.ndarray, skip: np.ndarray | None) -> np.ndarray:
    if skip is None:
        return np.zeros(x.shape, np.uint8)
    if skip.shape != x.shape:
        raise ValueError(f"skip mask shape {skip.shape} != x shape {x.shape}")
    return np.ascontiguousarray(skip, np.uint8)


def mix_known(x: np.ndarray, x0: np.ndarray, mask: np.ndarray, sqrt_ab: float, sqrt_1mab: float,
              z: np.ndarray) -> None:
    """Known voxels ← √ᾱ·x0 + √(1-ᾱ)·z; unknown voxels untouched. In place."""
    _mix_known(x, x0, mask, float(sqrt_ab), float(sqrt_1mab), z)


def posterior_step(x: np.ndarray, eps: np.ndarray, sqrt_ab: float, sqrt_1mab: float, c_x0: float,
                   c_xt: float, sigma: float, clip: bool, z: np.ndarray, skip: np.ndarray | None = None,
                   sharpen: float = 0.0, x0_out: np.ndarray | None = None, x0_out_clip: float = 1.0) -> None:
    """x ← c_x0·x̂0 + c_xt·x + σ·z with x̂0 = (x - √(1-ᾱ)·ε)/√ᾱ, sharpened to tanh(κ·x̂0) when
    ``sharpen`` = κ > 0, else optionally clipped to [-1, 1]. In place.

    ``skip`` [B, n] (1 = leave the voxel as it is): the sampler passes the known mask, whose voxels
    the next mix or the final paste overwrites, so their arithmetic is not spent. The other voxels
    get exactly the values they would get without it. ``x0_out`` [B, n] float32, if given, receives
    the raw x̂0 of every voxel (known ones too) clipped to ±``x0_out_clip``, in the same pass.
    """
    out = np.empty((0, 0), np.float32) if x0_out is None else x0_out
    _posterior(x, eps, float(sqrt_ab), float(sqrt_1mab), float(c_x0), float(c_xt), float(sigma),
               bool(clip), float(sharpen), z, _skip_mask(x, skip), out, float(x0_out_clip))


def renoise(x: np.ndarray, sqrt_a: float, sqrt_1ma: float, z: np.ndarray, skip: np.ndarray | None = None) -> None:
    """One forward diffusion step x ← √α·x + √(1-α)·z. In place (``skip``: as in :func:`posterior_step`)."""
    _renoise(x, float(sqrt_a), float(sqrt_1ma), z, _skip_mask(x, skip))


__all__ = ["q_sample", "x0_from_eps", "sharpen_x0", "reverse_mean", "mix_known", "posterior_step", "renoise"]

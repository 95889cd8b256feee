"""CPU kernels (numba) for the RePaint step arithmetic, with counter-based noise.

Every Gaussian number is a pure function of (seed, block id, transition counter, stream, voxel):
a 32-bit integer hash (Wellons' "lowbias32" mixer) of those keys gives two uniforms per voxel and
Box–Muller turns them into one normal. No generator state is carried between steps, so

* a block's result does not depend on the batch size or on its neighbours in the batch,
* an interrupted run resumes to the same voxels, and
* the CUDA backend computes the *same* noise on the device with the same integer ops
  (``gp_engine.runtime.torch_backend.counter_normal``) — no host→device noise traffic.

The kernels update ``x`` in place, flattened to ``[B, n]`` float32 rows, parallel over voxels.
"""

from __future__ import annotations

import math

import numba
import numpy as np

#: The noise stream's name and version, recorded in every canvas: a resume refuses a canvas painted
#: with another stream (a changed hash or normal generator would mix two streams in one volume).
NOISE_STREAM = "lowbias32-boxmuller-f64/1"

M32 = np.uint64(0xFFFFFFFF)
C1, C2 = 0x7FEB352D, 0x846CA68B
GOLDEN = 0x9E3779B9


def hash32_np(x: np.ndarray) -> np.ndarray:
    """lowbias32 on uint64 arrays holding 32-bit values (numpy; used for per-row keys)."""
    x = np.asarray(x, np.uint64) & M32
    x ^= x >> np.uint64(16)
    x = (x * np.uint64(C1)) & M32
    x ^= x >> np.uint64(15)
    x = (x * np.uint64(C2)) & M32
    x ^= x >> np.uint64(16)
    return x


def row_keys(block_ids: np.ndarray, seed: int, counter: int, stream: int) -> tuple[np.ndarray, np.ndarray]:
    """Two 32-bit keys per row from (seed, block id, transition counter, stream)."""
    blocks = np.asarray(block_ids, np.int64) % (1 << 32)
    s = hash32_np(np.uint64(int(seed) % (1 << 32)))
    k = hash32_np(s ^ blocks.astype(np.uint64))
    k = hash32_np(k ^ np.uint64(int(counter) % (1 << 32)))
    k = hash32_np(k ^ np.uint64(int(stream) % (1 << 32)))
    k2 = hash32_np(k ^ np.uint64(GOLDEN))
    return k.astype(np.uint64), k2.astype(np.uint64)


@numba.njit(inline="always", cache=True)
def _h32(x):
    x = x & np.uint64(0xFFFFFFFF)
    x ^= x >> np.uint64(16)
    x = (x * np.uint64(0x7FEB352D)) & np.uint64(0xFFFFFFFF)
    x ^= x >> np.uint64(15)
    x = (x * np.uint64(0x846CA68B)) & np.uint64(0xFFFFFFFF)
    x ^= x >> np.uint64(16)
    return x


@numba.njit(inline="always", cache=True)
def _normal(v, k1, k2):
    """Standard normal for voxel v under row keys (k1, k2)."""
    a = np.uint64(2) * np.uint64(v)
    h1 = _h32(_h32(a ^ k1) ^ k2)
    h2 = _h32(_h32((a + np.uint64(1)) ^ k1) ^ k2)
    u1 = (np.float64(h1 >> np.uint64(8)) + 0.5) * (1.0 / 16777216.0)
    u2 = np.float64(h2 >> np.uint64(8)) * (1.0 / 16777216.0)
    return math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * u2)


@numba.njit(parallel=True, cache=True)
def _fill_normal(out, k1, k2):
    B, n = out.shape
    for f in numba.prange(B * n):
        r = f // n
        v = f - r * n
        out[r, v] = np.float32(_normal(v, k1[r], k2[r]))


@numba.njit(parallel=True, cache=True)
def _mix_known(x, x0, mask, a, s, k1, k2):
    B, n = x.shape
    for f in numba.prange(B * n):
        r = f // n
        v = f - r * n
        if mask[r, v]:
            x[r, v] = np.float32(a * x0[r, v] + s * _normal(v, k1[r], k2[r]))


@numba.njit(parallel=True, cache=True)
def _posterior(x, eps, sab, s1mab, c_x0, c_xt, sigma, clip, k1, k2, skip):
    B, n = x.shape
    for f in numba.prange(B * n):
        r = f // n
        v = f - r * n
        if skip[r, v]:  # a known voxel: the next mix (or the final paste) overwrites it anyway
            continue
        xt = np.float64(x[r, v])
        x0 = (xt - s1mab * eps[r, v]) / sab
        if clip:
            x0 = min(1.0, max(-1.0, x0))
        y = c_x0 * x0 + c_xt * xt
        if sigma > 0.0:
            y += sigma * _normal(v, k1[r], k2[r])
        x[r, v] = np.float32(y)


@numba.njit(parallel=True, cache=True)
def _renoise(x, a, s, k1, k2, skip):
    B, n = x.shape
    for f in numba.prange(B * n):
        r = f // n
        v = f - r * n
        if skip[r, v]:
            continue
        x[r, v] = np.float32(a * x[r, v] + s * _normal(v, k1[r], k2[r]))


def fill_normal(out: np.ndarray, block_ids: np.ndarray, seed: int, counter: int, stream: int) -> None:
    """Fill ``out`` [B, n] float32 with the counter-based normals of each row's block."""
    k1, k2 = row_keys(block_ids, seed, counter, stream)
    _fill_normal(out, k1, k2)


def mix_known(x: np.ndarray, x0: np.ndarray, mask: np.ndarray, sqrt_ab: float, sqrt_1mab: float,
              block_ids: np.ndarray, seed: int, counter: int, stream: int) -> None:
    """Known voxels ← √ᾱ·x0 + √(1-ᾱ)·ε (fresh noise); unknown voxels untouched. In place."""
    k1, k2 = row_keys(block_ids, seed, counter, stream)
    _mix_known(x, x0, mask, float(sqrt_ab), float(sqrt_1mab), k1, k2)


def _skip_mask(x: np.ndarray, skip: np.ndarray | None) -> np.ndarray:
    if skip is None:
        return np.zeros(x.shape, np.uint8)
    if skip.shape != x.shape:
        raise ValueError(f"skip mask shape {skip.shape} != x shape {x.shape}")
    return np.ascontiguousarray(skip, np.uint8)


def posterior_step(x: np.ndarray, eps: np.ndarray, sqrt_ab: float, sqrt_1mab: float, c_x0: float,
                   c_xt: float, sigma: float, clip: bool, block_ids: np.ndarray, seed: int,
                   counter: int, stream: int, skip: np.ndarray | None = None) -> None:
    """x ← c_x0·x̂_0 + c_xt·x + σ·z with x̂_0 = (x - √(1-ᾱ)·ε)/√ᾱ (optionally clipped). In place.

    ``skip`` [B, n] (1 = leave the voxel as it is): the sampler passes the known mask, whose voxels
    the next mix or the final paste overwrites, so their arithmetic and noise are not spent. The
    other voxels get exactly the values they would get without it.
    """
    k1, k2 = row_keys(block_ids, seed, counter, stream)
    _posterior(x, eps, float(sqrt_ab), float(sqrt_1mab), float(c_x0), float(c_xt), float(sigma),
               bool(clip), k1, k2, _skip_mask(x, skip))


def renoise(x: np.ndarray, sqrt_a: float, sqrt_1ma: float, block_ids: np.ndarray, seed: int,
            counter: int, stream: int, skip: np.ndarray | None = None) -> None:
    """One forward diffusion step x ← √α·x + √(1-α)·z. In place (``skip``: as in :func:`posterior_step`)."""
    k1, k2 = row_keys(block_ids, seed, counter, stream)
    _renoise(x, float(sqrt_a), float(sqrt_1ma), k1, k2, _skip_mask(x, skip))

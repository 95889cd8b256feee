"""The sampler's Gaussian noise: counter-based, defined once, in three implementations of one function.

Every normal number is a pure function of (seed, block id, transition counter, stream, voxel). Per row
(one block at one transition and stream) two 32-bit keys come from hashing (seed, block, counter,
stream) with Wellons' "lowbias32" mixer (:func:`row_keys`, host side). Voxels are taken in pairs
p = (2j, 2j + 1): two hashes of (2j, 2j + 1) under the row keys give two 24-bit uniforms, and one
Box–Muller transform gives both voxels' normals (r·cos θ for 2j, r·sin θ for 2j + 1), in float32.
No generator state is carried between steps, so

* a block's result does not depend on the batch size or on its neighbours in the batch,
* an interrupted run resumes to the same voxels, and
* the torch backend draws the same noise on the device (:func:`counter_normal_torch`) with the same
  integer arithmetic: the hashes are bit-identical across numpy, numba and torch (tested); the
  normals agree to float32 rounding of log/sqrt/cos/sin.

:data:`NOISE_STREAM` names this definition; every canvas records it, and a resume refuses a canvas
painted with another stream.

The sampler takes its noise as an argument (``noise(out, block_ids, seed, counter, stream, where)``),
so tests can inject their own; :class:`CounterNoise` is the default.
"""

from __future__ import annotations

import math

import numba
import numpy as np

#: name/version of the stream
NOISE_STREAM = "lowbias32-pairs-boxmuller-f32/2"
#: the first stream (one float64 Box–Muller output per voxel, the other thrown away): canvases that
#: record no stream were painted with it
LEGACY_STREAM = "lowbias32-boxmuller-f64/1"

M32 = np.uint64(0xFFFFFFFF)
C1, C2 = 0x7FEB352D, 0x846CA68B
GOLDEN = 0x9E3779B9
TWO_PI = 6.283185307179586


# ------------------------------------------------------------------ numpy: row keys and the reference


def hash32_np(x: np.ndarray) -> np.ndarray:
    """lowbias32 on uint64 arrays holding 32-bit values (numpy reference)."""
    x = np.asarray(x, np.uint64) & M32
    x ^= x >> np.uint64(16)
    x = (x * np.uint64(C1)) & M32
    x ^= x >> np.uint64(15)
    x = (x * np.uint64(C2)) & M32
    x ^= x >> np.uint64(16)
    return x


def seed_key(seed: int) -> int:
    """hash(seed): the first key of every row."""
    return int(hash32_np(np.uint64(int(seed) % (1 << 32))))


def row_keys(block_ids: np.ndarray, seed: int, counter: int, stream: int) -> tuple[np.ndarray, np.ndarray]:
    """Two 32-bit keys per row from (seed, block id, transition counter, stream)."""
    blocks = np.asarray(block_ids, np.int64) % (1 << 32)
    k = hash32_np(np.uint64(seed_key(seed)) ^ blocks.astype(np.uint64))
    k = hash32_np(k ^ np.uint64(int(counter) % (1 << 32)))
    k = hash32_np(k ^ np.uint64(int(stream) % (1 << 32)))
    k2 = hash32_np(k ^ np.uint64(GOLDEN))
    return k.astype(np.uint64), k2.astype(np.uint64)


def pair_hashes_np(pairs: np.ndarray, k1: int, k2: int) -> tuple[np.ndarray, np.ndarray]:
    """(h1, h2) of voxel pairs ``pairs`` under one row's keys (numpy reference of the numba/torch code)."""
    a = 2 * np.asarray(pairs, np.uint64)
    h1 = hash32_np(hash32_np(a ^ np.uint64(k1)) ^ np.uint64(k2))
    h2 = hash32_np(hash32_np((a + np.uint64(1)) ^ np.uint64(k1)) ^ np.uint64(k2))
    return h1, h2


# ------------------------------------------------------------------ numba (CPU sampler)


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
def _pair_hashes(p, k1, k2):
    a = np.uint64(2) * np.uint64(p)
    return _h32(_h32(a ^ k1) ^ k2), _h32(_h32((a + np.uint64(1)) ^ k1) ^ k2)


@numba.njit(inline="always", cache=True)
def _normal_pair(p, k1, k2):
    """Both Box–Muller normals (float32) of voxel pair ``p`` under row keys (k1, k2)."""
    h1, h2 = _pair_hashes(p, k1, k2)
    u1 = (np.float32(h1 >> np.uint64(8)) + np.float32(0.5)) * np.float32(1.0 / 16777216.0)
    u2 = np.float32(h2 >> np.uint64(8)) * np.float32(1.0 / 16777216.0)
    r = math.sqrt(np.float32(-2.0) * math.log(u1))
    th = np.float32(TWO_PI) * u2
    return np.float32(r * math.cos(th)), np.float32(r * math.sin(th))


@numba.njit(parallel=True, cache=True)
def _fill(out, k1, k2, where, use_where):
    B, n = out.shape
    half = (n + 1) // 2
    for f in numba.prange(B * half):
        r = f // half
        p = f - r * half
        v = 2 * p
        if use_where and not where[r, v] and (v + 1 >= n or not where[r, v + 1]):
            continue
        z0, z1 = _normal_pair(p, k1[r], k2[r])
        out[r, v] = z0
        if v + 1 < n:
            out[r, v + 1] = z1


@numba.njit(parallel=True, cache=True)
def _pair_hashes_kernel(pairs, k1, k2, h1, h2):
    for i in numba.prange(pairs.shape[0]):
        h1[i], h2[i] = _pair_hashes(pairs[i], k1, k2)


def pair_hashes_numba(pairs: np.ndarray, k1: int, k2: int) -> tuple[np.ndarray, np.ndarray]:
    """(h1, h2) of voxel pairs through the numba code the CPU sampler runs (for the bit-for-bit test)."""
    pairs = np.ascontiguousarray(pairs, np.uint64)
    h1, h2 = np.empty(pairs.shape, np.uint64), np.empty(pairs.shape, np.uint64)
    _pair_hashes_kernel(pairs, np.uint64(k1), np.uint64(k2), h1, h2)
    return h1, h2


def fill_normal(out: np.ndarray, block_ids: np.ndarray, seed: int, counter: int, stream: int,
                where: np.ndarray | None = None) -> None:
    """Fill ``out`` [B, n] float32 with the counter-based normals of each row's block; with ``where``
    ([B, n], nonzero = needed) only the pairs holding a needed voxel are computed (others untouched)."""
    k1, k2 = row_keys(block_ids, seed, counter, stream)
    if where is None:
        _fill(out, k1, k2, np.zeros((1, 1), np.uint8), False)
    else:
        _fill(out, k1, k2, np.ascontiguousarray(where, np.uint8), True)


class CounterNoise:
    """The default noise of the samplers: :func:`fill_normal` (counter-based, :data:`NOISE_STREAM`)."""

    name = NOISE_STREAM

    def __call__(self, out: np.ndarray, block_ids: np.ndarray, seed: int, counter: int, stream: int,
                 where: np.ndarray | None = None) -> None:
        fill_normal(out, block_ids, seed, counter, stream, where)


# ------------------------------------------------------------------ torch (device sampler)


def _mul32_torch(x, c: int):
    """(x·c) mod 2³² for 32-bit values held in int64, split in 16-bit halves so nothing overflows."""
    lo, hi = c & 0xFFFF, c >> 16
    return (x * lo + (((x * hi) & 0xFFFF) << 16)) & 0xFFFFFFFF


def hash32_torch(x):
    """lowbias32 on int64 tensors (the same function as :func:`hash32_np`)."""
    x = x & 0xFFFFFFFF
    x = x ^ (x >> 16)
    x = _mul32_torch(x, C1)
    x = x ^ (x >> 15)
    x = _mul32_torch(x, C2)
    return x ^ (x >> 16)


def row_keys_torch(seed_key_t, block_ids, counter, stream):
    """Per-row keys [B, 1] from hash(seed) (tensor), block ids [B], counter (tensor): device side, so a
    captured CUDA graph advances the counter without the host."""
    k = hash32_torch(seed_key_t ^ (block_ids & 0xFFFFFFFF))
    k = hash32_torch(k ^ (counter & 0xFFFFFFFF))
    k = hash32_torch(k ^ stream)
    k2 = hash32_torch(k ^ GOLDEN)
    return k[:, None], k2[:, None]


def pair_hashes_torch(pairs, k1, k2):
    """(h1, h2) int64 tensors of voxel pairs ``pairs`` (int64) under keys k1, k2 (broadcasting)."""
    a = 2 * pairs
    return hash32_torch(hash32_torch(a ^ k1) ^ k2), hash32_torch(hash32_torch((a + 1) ^ k1) ^ k2)


def counter_normal_torch(k1, k2, pairs):
    """Normals [B, 2·len(pairs)] (float32) under row keys [B, 1]: pair j gives voxels 2j and 2j + 1."""
    import torch

    h1, h2 = pair_hashes_torch(pairs[None, :], k1, k2)
    u1 = ((h1 >> 8).to(torch.float32) + 0.5) * (1.0 / 16777216.0)
    u2 = (h2 >> 8).to(torch.float32) * (1.0 / 16777216.0)
    r = torch.sqrt(-2.0 * torch.log(u1))
    th = TWO_PI * u2
    return torch.stack([r * torch.cos(th), r * torch.sin(th)], dim=-1).reshape(k1.shape[0], -1)


__all__ = ["NOISE_STREAM", "hash32_np", "seed_key", "row_keys", "pair_hashes_np", "pair_hashes_numba",
           "fill_normal", "CounterNoise", "hash32_torch", "row_keys_torch", "pair_hashes_torch",
           "counter_normal_torch"]

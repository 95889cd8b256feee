"""Grain volumes -> float fields in [-1, 1], the values the diffusion model learns to generate.

Three encodings:

- **paper** (:func:`paper_encode`): the spin number itself is the value; each 32³ block is shifted by
  its mean and divided by its max |·|. With ~1000 spins squeezed into [-1, 1], touching grains often
  differ by ~0.01 and the segmentation merges them.
- **grain-separable** (:func:`separable_encode`): the grains are coloured so that no two touching
  (26-adjacent) grains share a colour (DSatur graph colouring), and the K colours are mapped onto K
  evenly spaced levels ``linspace(-1, 1, K)`` through a random permutation. Touching grains are then at
  least ``2 / (K - 1)`` apart, which a segmentation can separate under noise.
- **analog bits** (:func:`bits_encode`, Chen et al. 2023): the same DSatur colours, at most 2^B of them,
  written as B channels of ±1 (colour c → bit b of c, through a random permutation of the 2^B codes per
  block) and read back by thresholding each channel at 0 (:func:`bits_decode`). Touching grains differ in
  at least one bit, and an error has to reach 1.0 on a channel to flip a grain (0.11 for K = 10 levels).
"""

from __future__ import annotations

import heapq

import numba
import numpy as np

from .errors import GPEngineError

#: Number of encoding levels K of the grain-separable encoding, chosen with bench/roundtrip_fidelity.py
#: (bench/results/roundtrip.md). DSatur needs at most 7 colours on the 32³ blocks of the shared SPPARKS
#: volumes and exactly 8 on every whole 100³ volume, so K >= 8 colours without conflicts. Fewer levels
#: survive more noise (levels segmentation, σ = 0.05: ARI 0.999 at K = 8, 0.99 at K = 10, 0.97 at
#: K = 12, 0.76 at K = 16; σ = 0.07: 0.98 at K = 8, 0.91 at K = 10). More levels leave the model free
#: colours when it outpaints a grain next to grains it already placed: a local random-greedy colourer
#: finds no free colour for ~2.5 % of grains at K = 8, ~0.2 % at K = 10, none at K = 12. K = 10 is the
#: balance of the two.
DEFAULT_LEVELS = 10

# 13 offsets: one of each +/- pair of the 26-neighbourhood.
HALF_STENCIL = tuple(
    (dx, dy, dz)
    for dx in (-1, 0, 1)
    for dy in (-1, 0, 1)
    for dz in (-1, 0, 1)
    if (dx, dy, dz) > (0, 0, 0)
)


def paper_encode(labels: np.ndarray) -> np.ndarray:
    """The paper's per-block normalisation: ``(labels - mean) / max|labels - mean|`` as float32.

    Apply it to one block (32³ as the model sees it). A block of a single value maps to zeros.
    """
    labels = np.asarray(labels)
    if labels.size == 0:
        raise GPEngineError("paper_encode: empty block")
    x = labels.astype(np.float64)
    x -= x.mean()
    m = np.abs(x).max()
    if m > 0:
        x /= m
    return x.astype(np.float32)


def encoding_levels(n_levels: int) -> np.ndarray:
    """The K evenly spaced values ``linspace(-1, 1, K)`` of the grain-separable encoding."""
    n_levels = _check_levels(n_levels)
    return np.linspace(-1.0, 1.0, n_levels)


def _check_levels(n_levels: int) -> int:
    if int(n_levels) != n_levels or n_levels < 2:
        raise GPEngineError(f"n_levels must be an integer >= 2, got {n_levels!r}")
    return int(n_levels)


def grain_adjacency(grain_ids: np.ndarray) -> np.ndarray:
    """Unique pairs ``(i, j)``, ``i < j``, of grain ids that touch (26-neighbourhood); id 0 is ignored.

    Vectorised: for each of the 13 half-stencil offsets compare the volume with its shifted copy.
    """
    ids = np.asarray(grain_ids)
    if ids.ndim != 3:
        raise GPEngineError(f"grain_ids must be a 3D array [x, y, z], got shape {ids.shape}")
    ids = ids.astype(np.int64, copy=False)
    n = int(ids.max()) + 1 if ids.size else 1
    keys = []
    for d in HALF_STENCIL:
        a_sl = tuple(slice(max(-k, 0), ids.shape[ax] - max(k, 0)) for ax, k in enumerate(d))
        b_sl = tuple(slice(max(k, 0), ids.shape[ax] - max(-k, 0)) for ax, k in enumerate(d))
        a = ids[a_sl]
        b = ids[b_sl]
        sel = (a != b) & (a > 0) & (b > 0)
        if not sel.any():
            continue
        lo = np.minimum(a[sel], b[sel])
        hi = np.maximum(a[sel], b[sel])
        keys.append(np.unique(lo * n + hi))
    if not keys:
        return np.zeros((0, 2), dtype=np.int64)
    k = np.unique(np.concatenate(keys))
    return np.stack([k // n, k % n], axis=1)


def _csr(n_nodes: int, edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    both = np.concatenate([edges, edges[:, ::-1]]) if edges.size else np.zeros((0, 2), np.int64)
    order = np.lexsort((both[:, 1], both[:, 0]))
    both = both[order]
    indptr = np.zeros(n_nodes + 1, dtype=np.int64)
    np.add.at(indptr, both[:, 0] + 1, 1)
    return np.cumsum(indptr), both[:, 1].astype(np.int64)


@numba.njit(cache=True)
def _dsatur(indptr, indices, n_levels, valid, spread):  # pragma: no cover - compiled
    """DSatur on a CSR graph with at most ``n_levels`` colours.

    Picks the uncoloured node with the most distinct neighbour colours (ties: highest degree, then
    lowest index); gives it the smallest colour no neighbour has (``spread`` False), or the free colour
    that the fewest nodes two steps away already have (``spread`` True: each counted once per path, so
    nodes sharing many neighbours weigh more; ties: the smallest colour). When all K are taken it gets
    the colour the fewest neighbours have (least conflicting). A lazy max-heap keeps it O(E log V)
    (O(E·degree) with ``spread``).
    """
    n = indptr.size - 1
    colour = np.full(n, -1, np.int64)
    counts = np.zeros((n, n_levels), np.int64)  # neighbours of node having each colour
    sat = np.zeros(n, np.int64)
    second = np.zeros(n_levels, np.int64)  # spread: colours of the nodes two steps away
    heap = [(0, 0, 0)]
    heap.pop()
    for v in range(n):
        if valid[v]:
            heapq.heappush(heap, (0, -(indptr[v + 1] - indptr[v]), v))
    while len(heap) > 0:
        negsat, negdeg, v = heapq.heappop(heap)
        if colour[v] >= 0 or -negsat != sat[v]:
            continue
        best = -1
        best_count = 1 << 62
        for c in range(n_levels):
            if counts[v, c] < best_count:
                best_count = counts[v, c]
                best = c
                if best_count == 0:
                    break
        if spread and best_count == 0:
            second[:] = 0
            for p in range(indptr[v], indptr[v + 1]):
                u = indices[p]
                for q in range(indptr[u], indptr[u + 1]):
                    w = indices[q]
                    if w != v and colour[w] >= 0:
                        second[colour[w]] += 1
            best_second = 1 << 62
            for c in range(n_levels):
                if counts[v, c] == 0 and second[c] < best_second:
                    best_second = second[c]
                    best = c
        colour[v] = best
        for p in range(indptr[v], indptr[v + 1]):
            u = indices[p]
            if colour[u] < 0:
                if counts[u, best] == 0:
                    sat[u] += 1
                    heapq.heappush(heap, (-sat[u], -(indptr[u + 1] - indptr[u]), u))
                counts[u, best] += 1
    return colour


#: How grains are given colours: "dsatur" uses as few colours as it can (the smallest free colour; ~8 on
#: the shared SPPARKS volumes, so most grains have a same-coloured grain one voxel away), "spread" uses all
#: K and gives each grain the free colour rarest two steps away (bench/colouring_probe.py).
COLOURINGS = ("dsatur", "spread")


def check_colouring(colouring: str) -> str:
    if colouring not in COLOURINGS:
        raise GPEngineError(f"colouring {colouring!r} is unknown; use {' or '.join(COLOURINGS)}")
    return colouring


def colour_graph(n_nodes: int, edges: np.ndarray, n_levels: int,
                 valid: np.ndarray | None = None, colouring: str = "dsatur") -> tuple[np.ndarray, int]:
    """DSatur colouring of nodes ``0..n_nodes-1`` with at most ``n_levels`` colours (``colouring``: see
    :data:`COLOURINGS`).

    Returns ``(colour per node, -1 for nodes not in valid, number of edges whose ends share a colour)``.
    """
    n_levels = _check_levels(n_levels)
    spread = check_colouring(colouring) == "spread"
    edges = np.asarray(edges, dtype=np.int64).reshape(-1, 2)
    indptr, indices = _csr(n_nodes, edges)
    if valid is None:
        valid = np.ones(n_nodes, dtype=np.bool_)
    colour = _dsatur(indptr, indices, n_levels, np.asarray(valid, dtype=np.bool_), spread)
    conflicts = int(np.count_nonzero(colour[edges[:, 0]] == colour[edges[:, 1]])) if edges.size else 0
    return colour, conflicts


def colour_grains(grain_ids: np.ndarray, n_levels: int,
                  colouring: str = "dsatur") -> tuple[np.ndarray, int]:
    """Colour grains so that touching grains differ: ``(int16 colour per voxel in 0..K-1, n_conflicts)``.

    ``grain_ids`` must be split grains (ids ``1..n``, see :func:`gp_engine.grains.split_grains`); id 0
    (outside a mask) gets colour -1. ``n_conflicts`` counts touching grain pairs forced onto one colour
    because K was too small (0 when DSatur managed with K colours). ``colouring``: "dsatur" (fewest
    colours) or "spread" (all K, same colours kept apart; :data:`COLOURINGS`).
    """
    ids = np.asarray(grain_ids)
    if ids.ndim != 3:
        raise GPEngineError(f"grain_ids must be a 3D array [x, y, z], got shape {ids.shape}")
    if ids.dtype.kind not in "iu":
        raise GPEngineError(f"grain_ids must be integers, got dtype {ids.dtype}")
    if ids.size and ids.min() < 0:
        raise GPEngineError("grain_ids must be >= 0 (0 = outside the part)")
    n_nodes = int(ids.max()) + 1 if ids.size else 1
    edges = grain_adjacency(ids)
    present = np.zeros(n_nodes, dtype=bool)
    present[np.unique(ids)] = True
    present[0] = False
    colour, conflicts = colour_graph(n_nodes, edges, n_levels, present, colouring)
    return colour.astype(np.int16)[ids], conflicts


def chromatic_number_dsatur(grain_ids: np.ndarray) -> int:
    """Colours DSatur needs to colour the grains without conflicts (an upper bound of the chromatic number)."""
    ids = np.asarray(grain_ids)
    n_nodes = int(ids.max()) + 1
    edges = grain_adjacency(ids)
    present = np.zeros(n_nodes, dtype=bool)
    present[np.unique(ids)] = True
    present[0] = False
    colour, _ = colour_graph(n_nodes, edges, max(2, n_nodes), present)
    return int(colour.max()) + 1


def separable_encode(grain_ids: np.ndarray, n_levels: int = DEFAULT_LEVELS,
                     rng: np.random.Generator | int | None = None) -> np.ndarray:
    """Grain-separable encoding: DSatur colours mapped onto ``linspace(-1, 1, K)`` by a random permutation.

    Deterministic given ``rng`` (a Generator or a seed). Voxels with id 0 (outside a mask) get 0.0.
    """
    n_levels = _check_levels(n_levels)
    rng = np.random.default_rng(rng)
    colour, _ = colour_grains(grain_ids, n_levels)
    lut = encoding_levels(n_levels)[rng.permutation(n_levels)].astype(np.float32)
    lut = np.concatenate([lut, np.zeros(1, np.float32)])  # colour -1 -> 0.0
    return lut[colour]


#: Channels of the analog-bits encoding: 4 bits = 16 codes (DSatur needs at most 8 colours on the shared
#: SPPARKS volumes; the spare codes give the model free colours when it outpaints next to placed grains).
DEFAULT_BITS = 4


def bit_codes(n_bits: int) -> np.ndarray:
    """[2^B, B] float32 table: row c holds the bits of c (least significant first) as -1/+1."""
    if int(n_bits) != n_bits or not 1 <= n_bits <= 8:
        raise GPEngineError(f"bits must be an integer in 1..8, got {n_bits!r}")
    c = np.arange(1 << int(n_bits))[:, None]
    return np.where((c >> np.arange(int(n_bits))[None, :]) & 1, 1.0, -1.0).astype(np.float32)


def bits_encode(grain_ids: np.ndarray, n_bits: int = DEFAULT_BITS,
                rng: np.random.Generator | int | None = None) -> np.ndarray:
    """Analog-bits encoding [B, x, y, z] float32 of split grain ids (DSatur with 2^B colours, random
    code permutation). Voxels with id 0 (outside a mask) get 0.0 in every channel."""
    codes = bit_codes(n_bits)
    rng = np.random.default_rng(rng)
    colour, _ = colour_grains(grain_ids, codes.shape[0])
    lut = np.concatenate([codes[rng.permutation(codes.shape[0])], np.zeros((1, codes.shape[1]), np.float32)])
    return np.moveaxis(lut[colour], -1, 0)


def bits_decode(field: np.ndarray) -> np.ndarray:
    """Code (0..2^B-1, uint8) of every voxel of a [B, ...] analog-bits field: bit b = (channel b > 0)."""
    f = np.asarray(field)
    if f.ndim < 2 or not 1 <= f.shape[0] <= 8:
        raise GPEngineError(f"an analog-bits field must be [B, ...] with 1 <= B <= 8, got shape {f.shape}")
    code = np.zeros(f.shape[1:], np.uint8)
    for b in range(f.shape[0]):
        code |= (f[b] > 0).astype(np.uint8) << b
    return code


def bits_display(field: np.ndarray, out: np.ndarray | None = None, slab_voxels: int = 1 << 24) -> np.ndarray:
    """One float32 value per voxel for pictures and level segmentation: the decoded code c mapped to
    ``linspace(-1, 1, 2^B)[c]``, so ``levels`` segmentation with K = 2^B recovers the codes exactly.

    ``out`` (float32, ``field.shape[1:]``, e.g. a memmap) is filled slab by slab along the first
    spatial axis (about ``slab_voxels`` voxels at a time), so memory stays bounded for a memmapped field."""
    lut = np.linspace(-1.0, 1.0, 1 << field.shape[0]).astype(np.float32)
    if out is None:
        return lut[bits_decode(np.asarray(field))]
    if out.shape != tuple(field.shape[1:]) or out.dtype != np.float32:
        raise GPEngineError(f"bits_display: out must be float32 of shape {tuple(field.shape[1:])}, "
                            f"got {out.dtype} {out.shape}")
    plane = int(np.prod(field.shape[2:], dtype=np.int64)) or 1
    step = max(1, slab_voxels // plane)
    for x0 in range(0, field.shape[1], step):
        out[x0:x0 + step] = lut[bits_decode(np.asarray(field[:, x0:x0 + step]))]
    return out


__all__ = [
    "DEFAULT_BITS", "bit_codes", "bits_encode", "bits_decode", "bits_display",
    "DEFAULT_LEVELS", "paper_encode", "encoding_levels", "grain_adjacency", "colour_graph",
    "colour_grains", "chromatic_number_dsatur", "separable_encode", "COLOURINGS", "check_colouring",
]

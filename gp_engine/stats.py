"""Grain statistics and their KL divergence against a reference set (the paper's quality measure).

Per grain (ids ``1..n``; id 0 = outside the part, ignored):

- ``volume``: voxel count.
- ``b_a``, ``c_a``: aspect ratios from the singular values a >= b >= c of the grain's centred voxel
  coordinates. The singular values are ``sqrt(N * eigenvalues)`` of the grain's 3×3 coordinate
  covariance, so ``b/a = sqrt(λ2/λ1)`` and ``c/a = sqrt(λ3/λ1)``; the covariances of all grains come
  from a handful of ``np.bincount`` sums and one batched ``eigvalsh``. A single-voxel grain has no
  shape: its aspect ratios are NaN and it is left out of the aspect distribution (it still counts for
  volume and centroid distance).
- ``nn_dist``: distance from the grain's centroid to the nearest other centroid (``cKDTree``, k = 2).

Grains are not wrapped across periodic boundaries: a grain cut by the box face counts as one grain
per side, as it does for a generated volume.

KL(generated ‖ reference) is computed, as in the paper, between Gaussian-KDE-smoothed distributions
(Scott bandwidth, as ``scipy.stats.gaussian_kde``): 1D for the grain volume (raw voxel counts, as the
paper; ``log_volume=True`` uses log10 volume instead) and for the centroid distance, 2D for the pair
(b/a, c/a). Both densities live on one grid covering both samples plus 3 kernel widths on each side
(``GRID_1D`` points in 1D, ``GRID_2D``² in 2D); they are turned into probabilities per grid cell,
floored at ``EPS`` and renormalised, and ``KL = Σ p log(p / q)``. The densities are computed by linear
binning + FFT convolution with the KDE kernel (milliseconds for any number of grains; exact
``gaussian_kde`` evaluation is kept as ``exact=True`` and the tests compare the two).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .atomic_write import save_figure
from .errors import GPEngineError

GRID_1D = 2048
GRID_2D = 256
EPS = 1e-10
STAT_KEYS = ("volume", "b_a", "c_a", "nn_dist")
#: voxels per slab when accumulating per-grain moments (memory does not grow with the volume)
SLAB_VOXELS = 1 << 20
#: the files :func:`plot_distributions` writes
PLOT_FILES = ("volume.png", "centroid_distance.png", "aspect.png")


def _max_id(ids: np.ndarray) -> int:
    """Largest id, slab by slab (a memmap is never loaded whole)."""
    m = 0
    step = max(1, SLAB_VOXELS // max(int(np.prod(ids.shape[1:])), 1))
    for x0 in range(0, ids.shape[0], step):
        part = np.asarray(ids[x0:x0 + step])
        if part.size:
            m = max(m, int(part.max()))
    return m


def grain_stats(ids: np.ndarray, periodic=None) -> dict[str, np.ndarray]:
    """Per-grain statistics of a split grain-id volume ``[x, y, z]`` (see the module docstring).

    Returns ``volume``, ``b_a``, ``c_a``, ``nn_dist``, ``centroid`` (n×3) and ``grain_id``; one entry per
    grain id present (ids that do not occur are skipped). ``periodic`` (three booleans): on those axes
    a grain may cross the face; its coordinates are unwrapped round its circular mean first (one more
    pass over the volume), and nearest-centroid distances are measured round the ring.
    """
    from scipy.spatial import cKDTree

    if not isinstance(ids, np.ndarray):
        ids = np.asarray(ids)
    if ids.ndim != 3:
        raise GPEngineError(f"grain ids must be a 3D array [x, y, z], got shape {ids.shape}")
    if ids.dtype.kind not in "iu":
        raise GPEngineError(f"grain ids must be integers, got dtype {ids.dtype}: segment the field first")
    n = _max_id(ids) + 1
    nx, ny, nz = ids.shape
    # per-grain sums of 1, x, y, z and the six products, accumulated over x-slabs so that memory is
    # O(slab + grains) whatever the volume (ids may be a memmap of a volume larger than RAM)
    sums = np.zeros((10, n))
    slab = max(1, SLAB_VOXELS // max(ny * nz, 1))
    yy = np.repeat(np.arange(ny, dtype=np.float64), nz)
    zz = np.tile(np.arange(nz, dtype=np.float64), ny)
    periodic = tuple(bool(p) for p in (periodic or (False, False, False)))
    dims = (nx, ny, nz)

    def slabs():
        for x0 in range(0, nx, slab):
            part = np.asarray(ids[x0:x0 + slab])
            flat = part.ravel().astype(np.int64, copy=False)
            if flat.size and flat.min() < 0:
                raise GPEngineError("grain ids must be >= 0 (0 = outside the part)")
            k = part.shape[0]
            xs = np.repeat(np.arange(x0, x0 + k, dtype=np.float64), ny * nz)
            yield flat, (xs, np.tile(yy, k), np.tile(zz, k))

    centre = {}
    if any(periodic):  # pass 1: each grain's circular mean on the periodic axes
        trig = {a: np.zeros((2, n)) for a in range(3) if periodic[a]}
        for flat, coords in slabs():
            for a, acc in trig.items():
                ang = coords[a] * (2 * np.pi / dims[a])
                acc[0] += np.bincount(flat, weights=np.cos(ang), minlength=n)
                acc[1] += np.bincount(flat, weights=np.sin(ang), minlength=n)
        for a, acc in trig.items():
            centre[a] = np.mod(np.arctan2(acc[1], acc[0]) * dims[a] / (2 * np.pi), dims[a])
    for flat, coords in slabs():
        if centre:  # unwrap every voxel to within half a period of its grain's centre
            coords = tuple(c - dims[a] * np.round((c - centre[a][flat]) / dims[a]) if a in centre else c
                           for a, c in enumerate(coords))
        sums[0] += np.bincount(flat, minlength=n)
        for i in range(3):
            sums[1 + i] += np.bincount(flat, weights=coords[i], minlength=n)
        j = 4
        for a in range(3):
            for b in range(a, 3):
                sums[j] += np.bincount(flat, weights=coords[a] * coords[b], minlength=n)
                j += 1
    count = sums[0]
    present = np.flatnonzero(count)
    present = present[present > 0]
    vol = count[present]
    mean = np.stack([sums[1 + i][present] / vol for i in range(3)], axis=1)
    cov = np.empty((present.size, 3, 3))
    j = 4
    for a in range(3):
        for b in range(a, 3):
            cov[:, a, b] = cov[:, b, a] = sums[j][present] / vol - mean[:, a] * mean[:, b]
            j += 1
    lam = np.clip(np.linalg.eigvalsh(cov), 0.0, None)  # ascending: c², b², a² (up to the factor N)
    with np.errstate(invalid="ignore", divide="ignore"):
        b_a = np.sqrt(lam[:, 1] / lam[:, 2])
        c_a = np.sqrt(lam[:, 0] / lam[:, 2])
    single = vol < 2
    b_a[single] = np.nan
    c_a[single] = np.nan
    if present.size >= 2:
        if any(periodic):
            box = np.array([d if p else 3 * d for d, p in zip(dims, periodic)], np.float64)
            pts = np.where(periodic, np.mod(mean, box), mean)
            pts = np.where(pts >= box, 0.0, pts)  # mod can round up to the box size itself
            dist, _ = cKDTree(pts, boxsize=box).query(pts, k=2)
        else:
            dist, _ = cKDTree(mean).query(mean, k=2)
        nn = dist[:, 1]
    else:
        nn = np.full(present.size, np.nan)
    return {
        "grain_id": present.astype(np.int64),
        "volume": vol,
        "b_a": b_a,
        "c_a": c_a,
        "nn_dist": nn,
        "centroid": mean,
    }


def concat_stats(stats_list: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Pool the per-grain statistics of several volumes into one sample."""
    if not stats_list:
        raise GPEngineError("no volumes to pool statistics over")
    return {k: np.concatenate([s[k] for s in stats_list]) for k in STAT_KEYS}


def _kernel_covariances(samples: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Scott-rule Gaussian kernel covariance of each sample (rows = dimensions), as gaussian_kde uses."""
    out = []
    for s in samples:
        if s.shape[1] < 2 or np.any(np.ptp(s, axis=1) == 0):
            raise GPEngineError(
                f"cannot estimate a distribution from {s.shape[1]} grain(s) with no spread: "
                "give volumes with more grains"
            )
        d, n = s.shape
        factor = n ** (-1.0 / (d + 4))  # Scott's rule, as scipy.stats.gaussian_kde
        out.append(np.atleast_2d(np.cov(s)) * factor**2)
    return out


def _grid_axes(samples: Sequence[np.ndarray], covs: Sequence[np.ndarray], npts: int) -> list[np.ndarray]:
    """Per dimension: ``npts`` points spanning both samples plus 3 kernel widths on each side."""
    axes = []
    for d in range(samples[0].shape[0]):
        lo = min(s[d].min() for s in samples)
        hi = max(s[d].max() for s in samples)
        width = max(np.sqrt(c[d, d]) for c in covs)
        axes.append(np.linspace(lo - 3 * width, hi + 3 * width, npts))
    return axes


def _binned_kde(sample: np.ndarray, cov: np.ndarray, axes: Sequence[np.ndarray]) -> np.ndarray:
    """Gaussian KDE on a regular grid by linear binning + FFT convolution (unnormalised).

    Exact KDE costs O(n_samples × n_grid); this costs O(n_samples + n_grid log n_grid) and differs from
    ``gaussian_kde`` evaluation by the linear-binning error, O((grid step / bandwidth)²) — the grids
    are chosen with several points per bandwidth (tests compare with scipy).
    """
    from scipy.signal import fftconvolve

    dim = sample.shape[0]
    shape = tuple(a.size for a in axes)
    steps = np.array([a[1] - a[0] for a in axes])
    u = (sample - np.array([a[0] for a in axes])[:, None]) / steps[:, None]
    i0 = np.clip(np.floor(u).astype(np.int64), 0, np.array(shape)[:, None] - 2)
    frac = u - i0
    hist = np.zeros(int(np.prod(shape)))
    for corner in range(2**dim):
        w = np.ones(sample.shape[1])
        idx = np.zeros(sample.shape[1], dtype=np.int64)
        for d in range(dim):
            bit = (corner >> d) & 1
            w = w * (frac[d] if bit else 1.0 - frac[d])
            idx = idx * shape[d] + i0[d] + bit
        hist += np.bincount(idx, weights=w, minlength=hist.size)
    hist = hist.reshape(shape)
    half = [int(min(np.ceil(4.0 * np.sqrt(cov[d, d]) / steps[d]), shape[d] - 1)) for d in range(dim)]
    offs = np.meshgrid(*[np.arange(-h, h + 1) * steps[d] for d, h in enumerate(half)], indexing="ij")
    pts = np.stack([o.ravel() for o in offs])
    inv = np.linalg.inv(cov)
    kernel = np.exp(-0.5 * np.einsum("in,ij,jn->n", pts, inv, pts)).reshape(offs[0].shape)
    dens = fftconvolve(hist, kernel, mode="same")
    return np.clip(dens, 0.0, None).ravel()


def _kde_grid_probs(samples: Sequence[np.ndarray], npts: int, exact: bool = False) -> list[np.ndarray]:
    """One Gaussian KDE per sample (rows = dimensions) on a shared grid, as cell probabilities."""
    covs = _kernel_covariances(samples)
    axes = _grid_axes(samples, covs, npts)
    out = []
    for s, c in zip(samples, covs):
        if exact:
            from scipy.stats import gaussian_kde

            mesh = np.meshgrid(*axes, indexing="ij")
            p = gaussian_kde(s)(np.stack([m.ravel() for m in mesh]))
        else:
            p = _binned_kde(s, c, axes)
        p = p / p.sum()
        p = np.maximum(p, EPS)
        out.append(p / p.sum())
    return out


def kl_kde(gen: np.ndarray, ref: np.ndarray, npts: int | None = None, exact: bool = False) -> float:
    """KL(gen ‖ ref) of Gaussian-KDE-smoothed samples; 1D arrays or (n, d) arrays (d = 1 or 2).

    ``exact=True`` evaluates ``scipy.stats.gaussian_kde`` at every grid point (O(n × grid), slow for
    large sets); the default bins the samples linearly and convolves with the same kernel by FFT.
    """
    g = np.asarray(gen, dtype=np.float64)
    r = np.asarray(ref, dtype=np.float64)
    g = g[None, :] if g.ndim == 1 else g.T
    r = r[None, :] if r.ndim == 1 else r.T
    g = g[:, np.all(np.isfinite(g), axis=0)]
    r = r[:, np.all(np.isfinite(r), axis=0)]
    if g.shape[0] not in (1, 2):
        raise GPEngineError(f"kl_kde handles 1D or 2D samples, got {g.shape[0]} dimensions")
    if npts is None:
        npts = GRID_1D if g.shape[0] == 1 else GRID_2D
    p, q = _kde_grid_probs([g, r], npts, exact=exact)
    return float(np.sum(p * np.log(p / q)))


def kl_divergences(gen: dict[str, np.ndarray], ref: dict[str, np.ndarray], log_volume: bool = False
                   ) -> dict[str, float]:
    """``kl_volume``, ``kl_aspect`` (2D b/a, c/a) and ``kl_centroid`` of generated vs reference stats."""
    vg, vr = gen["volume"], ref["volume"]
    if log_volume:
        vg, vr = np.log10(vg), np.log10(vr)
    return {
        "kl_volume": kl_kde(vg, vr),
        "kl_aspect": kl_kde(np.stack([gen["b_a"], gen["c_a"]], 1), np.stack([ref["b_a"], ref["c_a"]], 1)),
        "kl_centroid": kl_kde(gen["nn_dist"], ref["nn_dist"]),
    }


def _describe(pooled: dict[str, np.ndarray], n_volumes: int) -> dict[str, float | int]:
    return {
        "volumes": n_volumes,
        "grains": int(pooled["volume"].size),
        "mean_volume": float(pooled["volume"].mean()),
        "median_volume": float(np.median(pooled["volume"])),
        "mean_b_a": float(np.nanmean(pooled["b_a"])),
        "mean_c_a": float(np.nanmean(pooled["c_a"])),
        "mean_nn_dist": float(np.nanmean(pooled["nn_dist"])),
    }


def stats_of_volumes(volumes: Sequence[np.ndarray], split: bool = True, zero_is_outside: bool = True,
                     periodic=None) -> dict[str, np.ndarray]:
    """Pooled per-grain statistics of label volumes (split into 26-connected grains first if ``split``).

    ``zero_is_outside``: label 0 marks voxels outside the part (CAD-shaped outputs) and is never a
    grain. SPPARKS spins and segmented ids are >= 1, so this only matters for masked volumes.
    ``periodic`` (three booleans): grains crossing those faces are one grain (SPPARKS volumes are
    periodic; so are generated volumes with ``geometry.periodic``).
    """
    from .grains import label_periodic, split_grains

    periodic = tuple(bool(p) for p in (periodic or (False, False, False)))

    out = []
    for v in volumes:
        v = np.asarray(v)
        if split:
            mask = (v != 0) if zero_is_outside else None
            if mask is not None and mask.all():
                mask = None
            ids = label_periodic(lambda a, m=mask: split_grains(a, mask=None if m is None else a != 0),
                                 v, periodic, pad=1) if any(periodic) else split_grains(v, mask=mask)
        else:
            ids = v
            if not zero_is_outside and ids.dtype.kind in "iu" and ids.size and ids.min() == 0:
                ids = ids.astype(np.int64) + 1
        out.append(grain_stats(ids, periodic))
    pooled = concat_stats(out)
    if pooled["volume"].size == 0:
        raise GPEngineError("the volumes hold no grains (every voxel is 0 = outside): check the input files")
    return pooled


def summarize(ids_list: Sequence[np.ndarray], ref_list: Sequence[np.ndarray] | None = None,
              split: bool = True, log_volume: bool = False, return_stats: bool = False,
              zero_is_outside: bool = True, periodic=None, ref_periodic=None) -> dict:
    """JSON-able summary of label volumes, with KL against ``ref_list`` when given.

    Volumes are split into 26-connected grains first (``split=True``: raw SPPARKS spins, or segmented
    ids, which splitting leaves unchanged up to numbering); label 0 is "outside the part" unless
    ``zero_is_outside=False``. Keys: ``volumes``, ``grains``,
    ``mean_volume``, ``median_volume``, ``mean_b_a``, ``mean_c_a``, ``mean_nn_dist`` and, with a
    reference, ``reference`` (the same keys for it) and ``kl_volume``, ``kl_aspect``, ``kl_centroid``.
    ``return_stats=True`` also returns the pooled per-grain arrays: ``(summary, gen, ref_or_None)``.
    ``periodic`` / ``ref_periodic``: axes on which the volumes / references wrap (see
    :func:`stats_of_volumes`).
    """
    gen = stats_of_volumes(ids_list, split, zero_is_outside, periodic)
    out: dict = _describe(gen, len(ids_list))
    ref = None
    if ref_list:
        ref = stats_of_volumes(ref_list, split, zero_is_outside, ref_periodic)
        out["reference"] = _describe(ref, len(ref_list))
        out.update(kl_divergences(gen, ref, log_volume=log_volume))
        out["kl_volume_axis"] = "log10 voxels" if log_volume else "voxels"
    return (out, gen, ref) if return_stats else out


def plot_distributions(gen: dict[str, np.ndarray], ref: dict[str, np.ndarray] | None, out_dir: str | os.PathLike,
                       labels: tuple[str, str] = ("generated", "reference")) -> list[Path]:
    """PNG overlays of generated vs reference: ``volume.png``, ``centroid_distance.png``, ``aspect.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy.stats import gaussian_kde

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    sets = [(gen, labels[0], "tab:blue")] + ([(ref, labels[1], "tab:orange")] if ref is not None else [])
    for key, title, fname in (("volume", "grain volume (voxels)", "volume.png"),
                              ("nn_dist", "nearest-centroid distance (voxels)", "centroid_distance.png")):
        fig, ax = plt.subplots(figsize=(6, 4))
        allv = np.concatenate([s[key][np.isfinite(s[key])] for s, _, _ in sets])
        bins = np.linspace(allv.min(), np.percentile(allv, 99.5), 60)
        xs = np.linspace(bins[0], bins[-1], 400)
        for s, name, colour in sets:
            v = s[key][np.isfinite(s[key])]
            ax.hist(v, bins=bins, density=True, alpha=0.35, color=colour, label=f"{name} (n={v.size})")
            if v.size > 1 and np.ptp(v) > 0:
                ax.plot(xs, gaussian_kde(v)(xs), color=colour)
        ax.set_xlabel(title)
        ax.set_ylabel("density")
        ax.legend()
        fig.tight_layout()
        written.append(save_figure(fig, out_dir / fname, dpi=110))
    fig, ax = plt.subplots(figsize=(5.5, 5))
    axes = [np.linspace(0.0, 1.0, 101)] * 2
    handles = []
    for s, name, colour in sets:
        ok = np.isfinite(s["b_a"]) & np.isfinite(s["c_a"])
        pts = np.stack([s["b_a"][ok], s["c_a"][ok]])
        if pts.shape[1] > 2 and np.all(np.ptp(pts, axis=1) > 0):
            dens = _binned_kde(pts, _kernel_covariances([pts])[0], axes).reshape(101, 101)
            ax.contour(axes[0], axes[1], dens.T / dens.max(), levels=[0.1, 0.3, 0.5, 0.7, 0.9], colors=colour)
        ax.scatter(pts[0], pts[1], s=2, alpha=0.15, color=colour)
        handles.append(plt.Line2D([], [], color=colour, label=f"{name} (n={pts.shape[1]})"))
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("b/a")
    ax.set_ylabel("c/a")
    ax.set_title("aspect ratios (KDE contours at 10–90 % of the peak)")
    ax.legend(handles=handles, loc="upper left")
    fig.tight_layout()
    written.append(save_figure(fig, out_dir / "aspect.png", dpi=110))
    return written


__all__ = [
    "grain_stats", "concat_stats", "kl_kde", "kl_divergences", "stats_of_volumes", "summarize",
    "plot_distributions", "GRID_1D", "GRID_2D", "EPS",
]

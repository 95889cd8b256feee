"""Segmentation of imperfect generated fields: which method gives grain statistics closest to SPPARKS?

Scores every method on the *same* generated raw fields (``field.npy`` of generated runs) by the KL of
grain volume / aspect / nearest-centroid distance against the validation SPPARKS volumes 1019-1023
(gp_engine.stats, the estimator of bench/stats_floor.py), plus grain count, median grain volume and the
share of voxels in grains under 20 voxels. Methods:

- ``dbscan``            the paper's exact grid DBSCAN (eps 1.9, min_samples 15, value scale 32);
                        ``dbscan/m`` then refills clusters under m voxels from their neighbours
- ``levels/m``          snap to the nearest level, 26-connected components, components under m voxels
                        refilled by the neighbour majority vote (m = 5 is the engine's historical default)
- ``smooth+levels/m``   the same after a Gaussian filter (σ = 0.7 voxel) of the field
- ``watershed/m``       components of ``levels/m`` as markers, every dropped voxel flooded from them
                        along the field's gradient magnitude (scipy.ndimage.watershed_ift): fragments join
                        the grain they are not separated from by a jump of the field
- ``<method>+necks``    then segments split at necks (:func:`split_necks`): generated grains over 1,000
                        voxels have ~6 distance-transform maxima where SPPARKS grains have ~1.7 (two
                        touching grains painted with the same code are one segment)

    python bench/segmentation_compare.py bench/out/qpc/v/gen_*/field.npy --levels 10 --name v

Writes bench/results/segmentation_compare.{json,md} (rows accumulate per --name).
"""

from __future__ import annotations

import argparse
import heapq
import json
import sys
from pathlib import Path

import numba
import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import header  # noqa: E402
from quality_generate import KEYS, VALIDATION_SEEDS, floor_figures  # noqa: E402
from quality_per_compute import grain_figures  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "spparks"
OUT_JSON = ROOT / "bench" / "results" / "segmentation_compare.json"
OUT_MD = ROOT / "bench" / "results" / "segmentation_compare.md"


def levels_markers(field: np.ndarray, levels: int, min_size: int) -> np.ndarray:
    """levels components with those under min_size set to 0 (not refilled)."""
    from gp_engine.segment import _drop_small, _label_block, resolve_levels

    lab = _label_block(np.ascontiguousarray(field, np.float32), "levels", 0, 0, 0, resolve_levels(levels))
    return _drop_small(lab, min_size)


def _display(field: np.ndarray) -> np.ndarray:
    """One value per voxel: the field itself, or the decoded code of an analog-bits field [B, x, y, z]."""
    from gp_engine.encoding import bits_display

    return bits_display(field) if field.ndim == 4 else field


def watershed(field: np.ndarray, levels: int, min_size: int) -> np.ndarray:
    markers = levels_markers(_display(field), levels, min_size).astype(np.int32)
    chans = field if field.ndim == 4 else field[None]
    grad2 = 0.0
    for ch in chans:  # gradient magnitude over all channels
        f = ndimage.gaussian_filter(np.asarray(ch, np.float64), 0.5)
        grad2 = grad2 + sum(g * g for g in np.gradient(f))
    grad = np.sqrt(grad2)
    img = np.clip(grad / max(grad.max(), 1e-12) * 65535, 0, 65535).astype(np.uint16)
    st = np.ones((3, 3, 3), bool)
    return ndimage.watershed_ift(img, markers, structure=st).astype(np.int32)


@numba.njit(cache=True)
def _push_neighbours(ids, dist, queued, heap, x, y, z):
    """Queue the unqueued 26-neighbours of (x, y, z) in its segment, highest distance first."""
    nx, ny, nz = ids.shape
    for dx in range(-1, 2):
        for dy in range(-1, 2):
            for dz in range(-1, 2):
                a, b, c = x + dx, y + dy, z + dz
                if 0 <= a < nx and 0 <= b < ny and 0 <= c < nz and not queued[a, b, c] \
                        and ids[a, b, c] == ids[x, y, z]:
                    queued[a, b, c] = True
                    heapq.heappush(heap, (-np.float64(dist[a, b, c]), np.int64((a * ny + b) * nz + c)))


@numba.njit(cache=True)
def _flood(ids, dist, lobe):
    """Priority flood (highest distance first) of every segment from its markers, 26-neighbourhood:
    each voxel takes the lobe of its highest labelled neighbour in the same segment."""
    nx, ny, nz = ids.shape
    queued = lobe > 0
    heap = [(0.0, np.int64(0))]
    heapq.heappop(heap)
    for x in range(nx):
        for y in range(ny):
            for z in range(nz):
                if lobe[x, y, z] > 0:
                    _push_neighbours(ids, dist, queued, heap, x, y, z)
    while len(heap) > 0:
        i = heapq.heappop(heap)[1]
        x, y, z = i // (ny * nz), (i // nz) % ny, i % nz
        best, lab = -1.0, 0
        for dx in range(-1, 2):
            for dy in range(-1, 2):
                for dz in range(-1, 2):
                    a, b, c = x + dx, y + dy, z + dz
                    if 0 <= a < nx and 0 <= b < ny and 0 <= c < nz and lobe[a, b, c] > 0 \
                            and ids[a, b, c] == ids[x, y, z] and dist[a, b, c] > best:
                        best, lab = dist[a, b, c], lobe[a, b, c]
        lobe[x, y, z] = lab
        _push_neighbours(ids, dist, queued, heap, x, y, z)
    return lobe


def split_necks(ids: np.ndarray, ratio: float = 0.7, min_peak: float = 2.0) -> np.ndarray:
    """Split segments at necks: one marker per maximum plateau (≥ ``min_peak``) of the distance to the
    segment's boundary, a priority flood of each segment from its markers, then neighbouring lobes
    merged back (widest crossing first) unless the widest crossing between them is narrower than
    ``ratio`` × the smaller lobe's radius. Returns 26-connected ids 1..n."""
    import cc3d

    ids = np.ascontiguousarray(ids, dtype=np.int64)
    edge = np.zeros(ids.shape, bool)
    pairs = []
    for ax in range(3):
        a, b = [slice(None)] * 3, [slice(None)] * 3
        a[ax], b[ax] = slice(0, -1), slice(1, None)
        a, b = tuple(a), tuple(b)
        pairs.append((a, b))
        d = ids[a] != ids[b]
        edge[a] |= d
        edge[b] |= d
    dist = ndimage.distance_transform_edt(~edge).astype(np.float32)
    peak = (dist >= min_peak) & (dist == ndimage.maximum_filter(dist, size=3))
    lobe = _flood(ids, dist, cc3d.connected_components(np.where(peak, ids, 0), connectivity=26).astype(np.int64))
    part = np.unique((ids * (int(lobe.max()) + 1) + lobe).ravel(), return_inverse=True)[1].reshape(ids.shape)
    n = int(part.max()) + 1
    radius = np.asarray(ndimage.maximum(dist, part, index=np.arange(n)), np.float32)
    lo, hi, width = [], [], []
    for a, b in pairs:  # crossings between lobes of one segment: the smaller distance of the two voxels
        pa, pb = part[a], part[b]
        same = (ids[a] == ids[b]) & (pa != pb)
        lo.append(np.minimum(pa[same], pb[same]))
        hi.append(np.maximum(pa[same], pb[same]))
        width.append(np.minimum(dist[a][same], dist[b][same]))
    key = np.concatenate(lo).astype(np.int64) * n + np.concatenate(hi)
    width = np.concatenate(width)
    order = np.argsort(key, kind="stable")
    key, width = key[order], width[order]
    uk, start = np.unique(key, return_index=True)
    widest = np.maximum.reduceat(width, start) if width.size else np.zeros(0, np.float32)
    parent = np.arange(n)

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for i in np.argsort(-widest):
        u, v = int(uk[i] // n), int(uk[i] % n)
        if widest[i] >= ratio * min(radius[u], radius[v]):
            ru, rv = find(u), find(v)
            if ru != rv:
                parent[max(ru, rv)] = min(ru, rv)
    roots = np.array([find(x) for x in range(n)])
    return cc3d.connected_components(roots[part] + 1, connectivity=26).astype(np.int32)


def run_method(name: str, field: np.ndarray, levels: int) -> np.ndarray:
    from gp_engine.segment import segment

    if name.endswith("+necks"):
        return split_necks(run_method(name[: -len("+necks")], field, levels))
    kind, _, m = name.partition("/")
    m = int(m) if m else 5
    if kind == "dbscan":
        lab = segment(_display(field), "dbscan")
        if m > 5:  # then clusters under m voxels refilled by the neighbour vote, as levels/m does
            from gp_engine import _segment
            from gp_engine.segment import _drop_small

            lab = _drop_small(lab, m)
            _segment.fill_noise(lab, -1, True)
        return lab
    if kind == "levels":
        return segment(_display(field), "levels", levels=levels, min_size=m)
    if kind == "smooth+levels":  # analog bits: each channel smoothed, then decoded
        sigma = (0, 0.7, 0.7, 0.7) if field.ndim == 4 else 0.7
        return segment(_display(ndimage.gaussian_filter(np.asarray(field, np.float32), sigma)), "levels",
                       levels=levels, min_size=m)
    if kind == "watershed":
        return watershed(field, levels, m)
    raise ValueError(name)


METHODS = ("dbscan", "dbscan/40", "dbscan/80", "levels/5", "levels/20", "levels/40", "levels/80", "smooth+levels/5", "smooth+levels/20",
           "watershed/20", "watershed/40")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("fields", nargs="+", help="raw field .npy files of generated volumes")
    p.add_argument("--levels", type=int, default=10, help="encoding levels (analog bits: 2^B)")
    p.add_argument("--name", required=True, help="row name (e.g. the model's config)")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--data", default=str(SHARED))
    a = p.parse_args(argv)

    from gp_engine.stats import summarize
    from gp_engine.volume_io import read_volume

    fields = [np.load(f) for f in a.fields]
    refs = [read_volume(Path(a.data) / f"potts_iso_100_seed{s}.npz") for s in VALIDATION_SEEDS]
    rows = []
    for meth in a.methods.split(","):
        from gp_engine.errors import GPEngineError

        labs = [run_method(meth, f, a.levels) for f in fields]
        try:
            s = summarize(labs, refs)
        except GPEngineError as exc:  # e.g. one grain only: no distribution to compare
            print(f"{meth:18s} no statistics: {exc}")
            continue
        row = {"method": meth, **{k: s[k] for k in KEYS}, **grain_figures(labs)}
        rows.append(row)
        print(f"{meth:18s} KL vol {row['kl_volume']:.3f} asp {row['kl_aspect']:.3f} cen {row['kl_centroid']:.3f} "
              f"grains {row['grains']} median {row['median_volume']:.0f} small {100 * row['share_voxels_small_grains']:.1f} %",
              flush=True)
    res = {**header("segmentation_compare", cuda=False), "name": a.name, "fields": [str(f) for f in a.fields],
           "levels": a.levels, "rows": rows, "floor_spparks_5v5": floor_figures()}
    allres = json.loads(OUT_JSON.read_text()) if OUT_JSON.is_file() else []
    allres = [r for r in allres if r["name"] != a.name] + [res]
    OUT_JSON.write_text(json.dumps(allres, indent=1))
    lines = ["# Segmentation of generated fields", "",
             "`bench/segmentation_compare.py`: the same generated raw fields cut by each method; KL(generated ‖ "
             "SPPARKS validation 1019-1023), gp_engine.stats' KDE estimator. SPPARKS median grain: 361 voxels.", ""]
    for r in allres:
        lines += [f"## {r['name']} ({len(r['fields'])} fields; {r['date'][:10]}, commit {r['commit'][:8]})", "",
                  "| method | KL volume | KL aspect | KL centroid | grains | median vol | voxels in < 20 |",
                  "|---|---|---|---|---|---|---|"]
        for x in r["rows"]:
            lines.append(f"| {x['method']} | {x['kl_volume']:.3f} | {x['kl_aspect']:.3f} | {x['kl_centroid']:.3f} "
                         f"| {x['grains']} | {x['median_volume']:.0f} | {100 * x['share_voxels_small_grains']:.1f} % |")
        lines.append("")
    OUT_MD.write_text("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())

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
- ``<method>+necks``    then grains cut at thin necks (``gp_engine.necks.split_necks``, the step
                        ``gp-engine generate`` runs; rows before the eighth session used an earlier
                        bench-only splitter: one marker per distance maximum, lobes merged back unless
                        the crossing was narrower than 0.7 × the smaller lobe's radius)

    python bench/segmentation_compare.py bench/out/qpc/v/gen_*/field.npy --levels 10 --name v

Writes bench/results/segmentation_compare.{json,md} (rows accumulate per --name).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

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


def run_method(name: str, field: np.ndarray, levels: int) -> np.ndarray:
    from gp_engine.segment import segment

    if name.endswith("+necks"):
        from gp_engine.grains import split_grains
        from gp_engine.necks import split_necks

        return split_necks(split_grains(run_method(name[: -len("+necks")], field, levels)))
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

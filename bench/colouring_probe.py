"""How close do grains of one colour sit in the training data, for each grain colouring?

The model learns colour fields, and the segmentation reads a grain as one connected region of one colour.
Where two grains of the same colour are one voxel apart, the wall between them is one voxel thick: the
model must paint it exactly, or the two grains merge into one lumpy, elongated region (the aspect error
of every model up to the sixth session). This probe colours whole SPPARKS volumes with each colouring of
``gp_engine.encoding.COLOURINGS`` (2^4 = 16 colours, the analog-bits default) and counts, per volume:

* colours used and conflicts (touching grains of one colour; must be 0);
* **near misses**: grains that merge with another grain of their colour when each colour's voxels are
  dilated by one voxel (26-neighbourhood, scipy.ndimage), i.e. pairs with a wall of one or two voxels
  between them (the dilated grains overlap or touch);
* the mean distance in voxels from a grain to the nearest voxel of another grain of its colour;
* **the shape of a miss**: the grains when every near-miss pair is merged (each colour's grains that a
  one-voxel dilation joins become one grain; the wall voxels stay with their own grain), summarised by
  the large grains (≥ 3,000 voxels: count and mean b/a, c/a) and the needles (≥ 1,500 voxels with
  c/a < 0.5 and b/a < 0.6), next to the same summary of generated volumes (``--generated``: run folders
  holding ``grains.npy``). If a model's large grains look like merged SPPARKS grains of its colouring,
  the walls it failed to paint are the aspect error;
* **a model's own near misses**: where a generated run folder also holds its raw analog-bits field
  (``field.npy``, [B, x, y, z]), each generated grain takes its most common code and the same count is
  made on it (:func:`generated_near_misses`), split into same-code grains that touch (pieces of one code
  region that the segmentation cut apart, e.g. at a neck) and true near misses (a wall of one or two
  voxels between). A model that has learnt its colouring paints near misses about as often as its
  training data holds them (SPPARKS 1019: spread 0.6 %, DSatur 60 %).

    python bench/colouring_probe.py [--data ../shared/data/spparks] [--colours 16] \
        [--generated bench/out/conditional/mini3-ext500-31465_fast_100x100x100_m2_seed{0,1,2,3}]

Writes bench/results/colouring_probe.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from gp_engine.encoding import COLOURINGS, colour_grains  # noqa: E402
from gp_engine.grains import split_grains  # noqa: E402

RESULTS = ROOT / "bench" / "results"
SHARED = ROOT.parent / "shared" / "data" / "spparks"
STRUCT = np.ones((3, 3, 3), bool)


def near_misses(ids: np.ndarray, colour: np.ndarray, merged_ids: np.ndarray | None = None) -> tuple[int, float]:
    """(grains merged away by a one-voxel dilation of each colour, mean distance to the nearest voxel of
    another grain of the same colour). ``merged_ids``: :func:`merge_near_misses` of the same volume, if
    already made."""
    if merged_ids is None:
        merged_ids = merge_near_misses(ids, colour)
    merged = len(np.unique(ids)) - len(np.unique(merged_ids))
    dists = []
    for c in np.unique(colour):
        m = colour == c
        grains = np.unique(ids[m])
        for g in grains[:: max(1, len(grains) // 40)]:  # a sample of grains per colour: exact EDT each
            other = m & (ids != g)
            if other.any():
                d = ndimage.distance_transform_edt(~other)
                dists.append(float(d[ids == g].min()))
    return merged, float(np.mean(dists)) if dists else float("nan")


def merge_near_misses(ids: np.ndarray, colour: np.ndarray, dilate: bool = True) -> np.ndarray:
    """Grain ids (1..n) where each colour's grains that a one-voxel dilation of the colour joins are one
    grain: what the segmentation reads when the model leaves out every wall of one or two voxels. The
    wall voxels keep their own grain, so a merged grain need not be connected (its moments are still its
    shape). ``dilate=False``: only grains of one colour that touch are joined."""
    out = np.zeros(ids.shape, np.int64)
    nxt = 0
    for c in np.unique(colour):
        m = colour == c
        lab, k = ndimage.label(ndimage.binary_dilation(m, STRUCT) if dilate else m, STRUCT)
        out[m] = lab[m] + nxt
        nxt += k
    return (np.unique(out, return_inverse=True)[1].reshape(ids.shape) + 1).astype(np.int32)


def grain_codes(ids: np.ndarray, code: np.ndarray) -> np.ndarray:
    """Every voxel of a grain gets the grain's most common ``code`` (ties: the smallest code); id 0 keeps
    its own voxels' codes out of every grain and gets code 0."""
    ids = np.asarray(ids, np.int64)
    n, m = int(ids.max()) + 1, int(code.max()) + 1
    counts = np.bincount((ids * m + code.astype(np.int64)).ravel(), minlength=n * m).reshape(n, m)
    major = counts.argmax(1)
    major[0] = 0
    return major[ids]


def generated_near_misses(ids: np.ndarray, field: np.ndarray) -> dict:
    """A generated volume's own near misses: grains (``ids``, 1..n, no id 0) coloured by their most common code in
    the raw analog-bits ``field`` [B, ...] (gp_engine.encoding.bits_decode). ``touching``: grains merged
    with a touching grain of the same code (one code region cut apart by the segmentation);
    ``near_misses``: further grains merged across a wall of one or two voxels; shares of all grains."""
    from gp_engine.encoding import bits_decode

    if field.shape[1:] != ids.shape:
        raise ValueError(f"field {field.shape} and grains {ids.shape} differ in shape")
    colour = grain_codes(ids, bits_decode(field))
    n = len(np.unique(ids))
    touching = n - len(np.unique(merge_near_misses(ids, colour, dilate=False)))
    near = n - touching - len(np.unique(merge_near_misses(ids, colour)))
    return {"grains": n, "touching": touching, "near_misses": near,
            "touching_share": touching / max(n, 1), "near_miss_share": near / max(n, 1)}


LARGE, NEEDLE_MIN = 3000, 1500


def shape_summary(volumes) -> dict:
    """Grain count, large grains (≥ LARGE voxels: count, mean b/a and c/a) and needles (≥ NEEDLE_MIN
    voxels, c/a < 0.5 and b/a < 0.6) over grain-id volumes (gp_engine.stats.grain_stats moments)."""
    from gp_engine.stats import grain_stats

    st = [grain_stats(v) for v in volumes]
    vol, ba, ca = (np.concatenate([x[k] for x in st]) for k in ("volume", "b_a", "c_a"))
    big = vol >= LARGE
    mean = (lambda a: float(np.nanmean(a))) if big.any() else (lambda a: float("nan"))
    return {"grains": int(len(vol)), "large": int(big.sum()), "large_b_a": mean(ba[big]), "large_c_a": mean(ca[big]),
            "needles": int(((vol >= NEEDLE_MIN) & (ca < 0.5) & (ba < 0.6)).sum())}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(SHARED), help="folder of SPPARKS .npz volumes ('spins')")
    ap.add_argument("--colours", type=int, default=16, help="colours available (default 16 = 4 analog bits)")
    ap.add_argument("--volumes", type=int, default=4, help="volumes to probe (default 4)")
    ap.add_argument("--generated", nargs="*", default=[],
                    help="run folders with grains.npy (generated volumes) to summarise next to the merges; "
                         "folders named <tag>_seed<N> are summarised together per tag")
    ap.add_argument("--out", default=str(RESULTS / "colouring_probe"))
    args = ap.parse_args(argv)
    gen = [Path(g) / "grains.npy" for g in args.generated]
    for g in gen:
        if not g.is_file():
            raise SystemExit(f"--generated: {g} does not exist; give run folders that hold grains.npy")
    files = sorted(Path(args.data).glob("*.npz"))[: args.volumes]
    if not files:
        files = sorted((ROOT / "gp_engine" / "data").glob("*.npz"))
    rows = []
    volumes, merged_volumes = [], {mode: [] for mode in COLOURINGS}
    for f in files:
        ids = split_grains(np.load(f)["spins"])
        volumes.append(ids)
        for mode in COLOURINGS:
            t = time.perf_counter()
            colour, conflicts = colour_grains(ids, args.colours, mode)
            took = time.perf_counter() - t
            merged_volumes[mode].append(merge_near_misses(ids, colour))
            merged, mean_d = near_misses(ids, colour, merged_volumes[mode][-1])
            rows.append({"volume": f.name, "colouring": mode, "grains": int(ids.max()),
                         "colours_used": int(len(np.unique(colour))), "conflicts": int(conflicts),
                         "near_misses": int(merged), "near_miss_share": merged / int(ids.max()),
                         "mean_distance_same_colour": mean_d, "seconds": took})
            print(f"{f.name} {mode:7s} grains {ids.max()} colours {rows[-1]['colours_used']} conflicts "
                  f"{conflicts} near misses {merged} ({merged / ids.max():.1%}) mean distance {mean_d:.2f}")
    summary = {}
    for mode in COLOURINGS:
        r = [x for x in rows if x["colouring"] == mode]
        summary[mode] = {k: float(np.mean([x[k] for x in r])) for k in
                         ("colours_used", "conflicts", "near_miss_share", "mean_distance_same_colour")}
    shapes = {"SPPARKS": shape_summary(volumes)}
    for mode in COLOURINGS:
        shapes[f"SPPARKS, {mode} near misses merged"] = shape_summary(merged_volumes[mode])
    groups: dict[str, list[Path]] = {}  # run folders named <tag>_seed<N> are grouped by tag
    for g in gen:
        groups.setdefault(re.sub(r"_seed\d+$", "", g.parent.name), []).append(g)
    own = {}
    for tag, paths in groups.items():
        vols = [np.load(g) for g in paths]
        shapes[f"generated: {tag} ({len(paths)} volumes)"] = shape_summary(vols)
        fields = [g.parent / "field.npy" for g in paths]
        if all(f.is_file() for f in fields):
            raws = [np.load(f, mmap_mode="r") for f in fields]
            per = [generated_near_misses(v, np.asarray(r)) for v, r in zip(vols, raws) if r.ndim == 4]
            if per:
                own[tag] = {k: int(sum(p[k] for p in per)) for k in ("grains", "touching", "near_misses")}
                own[tag] |= {"touching_share": own[tag]["touching"] / own[tag]["grains"],
                             "near_miss_share": own[tag]["near_misses"] / own[tag]["grains"],
                             "volumes": len(per)}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = {"date": date.today().isoformat(), "colours": args.colours, "rows": rows, "summary": summary,
           "shapes": shapes, "generated_near_misses": own}
    out.with_suffix(".json").write_text(json.dumps(doc, indent=1))
    lines = [f"# Grain colouring: how close grains of one colour sit ({date.today().isoformat()})", "",
             f"`python bench/colouring_probe.py`: {len(files)} whole SPPARKS 100³ volumes, {args.colours} colours. "
             "Near miss: a grain that merges with another grain of its colour when each colour is dilated by "
             "one voxel (a wall of one or two voxels that the model has to paint exactly).", "",
             "| colouring | colours used | conflicts | near misses (share of grains) | mean distance to the same colour (voxels) |",
             "|---|---|---|---|---|"]
    for mode, s in summary.items():
        lines.append(f"| {mode} | {s['colours_used']:.1f} | {s['conflicts']:.0f} | {s['near_miss_share']:.1%} | "
                     f"{s['mean_distance_same_colour']:.2f} |")
    lines += ["", f"The shape of a miss ({len(volumes)} volumes each): large = at least {LARGE:,} voxels, needle = at "
              f"least {NEEDLE_MIN:,} voxels with c/a < 0.5 and b/a < 0.6 (gp_engine.stats moments).", "",
              "| volumes | grains | large grains | large: mean b/a | large: mean c/a | needles |",
              "|---|---|---|---|---|---|"]
    for name, r in shapes.items():
        lines.append(f"| {name} | {r['grains']:,} | {r['large']} | {r['large_b_a']:.3f} | {r['large_c_a']:.3f} | "
                     f"{r['needles']} |")
    if own:
        lines += ["", "A model's own near misses: each generated grain coloured by its most common code in the raw "
                  "field; touching = same-code grains that touch (one code region cut apart by the segmentation), "
                  "near misses = further grains joined across a wall of one or two voxels.", "",
                  "| generated | volumes | grains | touching same code | near misses |", "|---|---|---|---|---|"]
        for tag, r in own.items():
            lines.append(f"| {tag} | {r['volumes']} | {r['grains']:,} | {r['touching_share']:.1%} | "
                         f"{r['near_miss_share']:.1%} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

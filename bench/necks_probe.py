"""Does cutting grains at thin necks (gp_engine.necks) bring generated grains closer to SPPARKS,
and does it leave real grains alone?

For each set of generated volumes (``--generated NAME=GLOB``, GLOB matching ``grains.npy`` files written
by ``gp-engine generate`` *without* the cut, e.g. the volumes bench/conditional_vs_repaint.py keeps) and
for SPPARKS training volumes 1001-1004 (the control: convex-ish grains that must not be cut), scores
KL(· ‖ SPPARKS validation 1019-1023) of grain volume / aspect / nearest-centroid distance
(gp_engine.stats' Gaussian-KDE estimator, the one of every other fidelity table), grain count and median
volume, before and after :func:`gp_engine.necks.split_necks`, for the default ``neck_ratio`` and each of
``--ratios``; also the number of cells cut in six Voronoi tessellations (100 convex cells in 48³ each).

    python bench/necks_probe.py --generated "ext500-6770 64³=bench/out/conditional/ext500*_64x64x64_*/grains.npy"

Writes bench/results/necks.{json,md} (rows accumulate; a set scored again replaces its rows) and
bench/plots/necks_slices.png (the slice of the first generated volume that the cut changes most).
"""

from __future__ import annotations

import argparse
import glob
import json
import sys
from pathlib import Path

import numpy as np
from scipy.spatial import cKDTree

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from gp_engine.grains import split_grains  # noqa: E402
from gp_engine.necks import CORE_RADIUS, DEEP_RADIUS, NECK_RATIO, split_necks  # noqa: E402
from gp_engine.stats import summarize  # noqa: E402
from gp_engine.volume_io import read_volume  # noqa: E402
from provenance import header  # noqa: E402

RESULTS = ROOT / "bench" / "results"
PLOT = ROOT / "bench" / "plots" / "necks_slices.png"
SHARED = ROOT.parent / "shared" / "data" / "spparks"
TRAIN, VALIDATION = range(1001, 1005), range(1019, 1024)


def voronoi(shape, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    pts = rng.uniform(0, 1, (n, 3)) * np.array(shape)
    grid = np.stack(np.meshgrid(*[np.arange(s) + 0.5 for s in shape], indexing="ij"), -1).reshape(-1, 3)
    return (cKDTree(pts).query(grid)[1] + 1).reshape(shape).astype(np.int32)


def score(vols, refs) -> dict:
    s = summarize(vols, refs)
    return {k: s[k] for k in ("kl_volume", "kl_aspect", "kl_centroid", "grains", "median_volume", "mean_b_a")}


def cut(vols, ratio: float) -> tuple[list, int]:
    out, n = [], 0
    for v in vols:
        rep: dict = {}
        out.append(split_necks(v, neck_ratio=ratio, report=rep))
        n += rep["grains_cut"]
    return out, n


def slices_png(before: np.ndarray, after: np.ndarray, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    new_walls = [(np.diff(after[:, :, k], axis=0) != 0).sum() - (np.diff(before[:, :, k], axis=0) != 0).sum()
                 for k in range(before.shape[2])]
    z = int(np.argmax(new_walls))  # the slice where the cut adds the most walls
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.6))
    lut = np.random.default_rng(0).uniform(0.3, 1.0, (int(after.max()) + 1, 3))

    def edges(sl):
        e = np.zeros(sl.shape, bool)
        e[:-1] |= sl[:-1] != sl[1:]
        e[:, :-1] |= sl[:, :-1] != sl[:, 1:]
        return e

    b, a = before[:, :, z], after[:, :, z]
    for ax, sl, title in ((axes[0], b, "as segmented"), (axes[1], a, "cut at thin necks (new walls red)")):
        img = lut[sl]
        img[edges(sl)] = 0.0
        if sl is a:
            img[edges(a) & ~edges(b)] = (0.9, 0.05, 0.05)
        ax.imshow(img.transpose(1, 0, 2), origin="lower", interpolation="nearest")
        ax.set_title(f"{title}, z = {z}")
        ax.axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def render_md(rows: list[dict]) -> str:
    lines = ["# Cutting grains at thin necks", "",
             "`bench/necks_probe.py`: KL(· ‖ SPPARKS validation 1019-1023), gp_engine.stats' Gaussian-KDE "
             "estimator, before and after `gp_engine.necks.split_necks` (core radius "
             f"{CORE_RADIUS}, deep radius {DEEP_RADIUS}; neck ratio per row, default {NECK_RATIO}). "
             "SPPARKS 1001-1004 are the control (their grains should stay whole: the KL there is the floor "
             "at this sample size); Voronoi: cells cut of 600 convex cells.", "",
             "| set | volumes | neck ratio | KL volume | KL aspect | KL centroid | grains | median vol | grains cut "
             "| SPPARKS control KL (vol / asp / cen) | SPPARKS cut | Voronoi cut | date | commit |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    seen = set()
    for r in rows:
        first = r["set"] not in seen
        seen.add(r["set"])
        for label, k in (("as segmented", "before"), (None, "after")):
            if label and not first:
                continue
            s, c = r[k], r["control_" + k]
            ratio = "–" if label else f"{r['neck_ratio']:g}"
            cut_n = "–" if label else r["grains_cut"]
            lines.append(
                f"| {r['set']} | {r['volumes']} | {label or ratio} | {s['kl_volume']:.3f} | {s['kl_aspect']:.3f} | "
                f"{s['kl_centroid']:.3f} | {s['grains']} | {s['median_volume']:.0f} | {cut_n} | "
                f"{c['kl_volume']:.3f} / {c['kl_aspect']:.3f} / {c['kl_centroid']:.3f} | "
                f"{'–' if label else r['control_cut']} | {'–' if label else r['voronoi_cut']} | "
                f"{r['date'][:10]} | {r['commit'][:8]} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--generated", action="append", required=True, metavar="NAME=GLOB",
                    help="a set of generated grains.npy files (repeatable)")
    ap.add_argument("--ratios", type=float, nargs="*", default=[], help="neck ratios besides the default")
    ap.add_argument("--data", default=str(SHARED))
    a = ap.parse_args(argv)
    data = Path(a.data)
    refs = [read_volume(data / f"potts_iso_100_seed{s}.npz") for s in VALIDATION]
    control = [split_grains(read_volume(data / f"potts_iso_100_seed{s}.npz")) for s in TRAIN]
    control_before = score(control, refs)
    vor = [voronoi((48, 48, 48), 100, seed=s) for s in range(6)]
    rows_json = RESULTS / "necks.json"
    rows = json.loads(rows_json.read_text()) if rows_json.is_file() else []
    ratios = [NECK_RATIO] + [r for r in a.ratios if r != NECK_RATIO]
    control_after = {r: cut(control, r) for r in ratios}
    voronoi_cut = {r: cut(vor, r)[1] for r in ratios}
    for spec in a.generated:
        if "=" not in spec:
            raise SystemExit(f"necks_probe: --generated wants NAME=GLOB; got {spec!r}")
        name, pattern = spec.split("=", 1)
        files = sorted(glob.glob(pattern))
        if not files:
            raise SystemExit(f"necks_probe: no files match {pattern!r}")
        gen = [np.load(f) for f in files]
        before = score(gen, refs)
        rows = [r for r in rows if r["set"] != name]
        for ratio in ratios:
            after_vols, n_cut = cut(gen, ratio)
            ca, cn = control_after[ratio]
            row = {**header("necks_probe", cuda=False), "set": name, "files": files, "volumes": len(gen),
                   "shape": list(gen[0].shape), "neck_ratio": ratio, "core_radius": CORE_RADIUS,
                   "deep_radius": DEEP_RADIUS, "before": before, "after": score(after_vols, refs),
                   "grains_cut": n_cut, "control_before": control_before, "control_after": score(ca, refs),
                   "control_cut": cn, "voronoi_cut": voronoi_cut[ratio]}
            rows.append(row)
            s = row["after"]
            print(f"{name} ratio {ratio:g}: KL {before['kl_volume']:.3f} / {before['kl_aspect']:.3f} / "
                  f"{before['kl_centroid']:.3f} -> {s['kl_volume']:.3f} / {s['kl_aspect']:.3f} / {s['kl_centroid']:.3f}"
                  f", {n_cut} grains cut; SPPARKS {cn} cut, Voronoi {voronoi_cut[ratio]} cut", flush=True)
            if ratio == NECK_RATIO and spec == a.generated[0]:
                slices_png(gen[0], after_vols[0], PLOT)
    RESULTS.mkdir(parents=True, exist_ok=True)
    rows_json.write_text(json.dumps(rows, indent=1) + "\n")
    (RESULTS / "necks.md").write_text(render_md(rows))
    print(f"wrote {rows_json} and {RESULTS / 'necks.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

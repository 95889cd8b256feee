"""Quality against cost: RePaint (unconditional model) vs the conditional sampler (conditional model).

For each sampler setting, generates ``--volumes`` boxes (seeds 0, 1, ...; the same seeds for every
setting) and scores them against the validation SPPARKS volumes 1019-1023 (never trained on):

* KL(generated ‖ SPPARKS) of grain volume / aspect / nearest-centroid distance (gp_engine.stats,
  Gaussian-KDE, the estimator of bench/stats_floor.py, whose SPPARKS-vs-SPPARKS floor is printed
  beside), grain count, median grain volume, share of voxels in grains under 20 voxels;
* network evaluations per block and voxels/min of the run (its own timing);
* seams (bench/seams.py): boundary density and share of grains crossing, on the planes of the block
  faces of the plan against every other plane, next to the same planes in the SPPARKS volumes.

Settings: ``fast`` and ``paper`` (RePaint on ``--unconditional``, default the shipped model) and
``condN`` / ``condN-etaE`` (the conditional preset with N steps and η = E, on ``--conditional``, a
model folder or a trainer checkpoint, built on first use). Generated volumes are kept under
bench/out/conditional/ and reused (an interrupted one resumes); rows accumulate in
bench/results/conditional.{json,md} (a row is replaced when the same model, setting and box are
scored again; rows say whether grains were cut at thin necks, ``+necks``, the default since the eighth
session, and, since the ninth, the clusters DBSCAN refilled, ``min N``: the model's own
``segmentation_defaults``, volumes painted under an older default are segmented again from their field) with the plot bench/plots/conditional_kl_vs_evaluations.png.

    python bench/conditional_vs_repaint.py --conditional checkpoints/gpu_conditional_mini.pt \\
        --settings fast cond25 cond50 cond100 --shape 100 100 100 --volumes 4
    python bench/conditional_vs_repaint.py --conditional checkpoints/gpu_conditional_mini.pt \\
        --settings paper cond50 --shape 48 48 48 --volumes 2
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from provenance import header  # noqa: E402
from quality_generate import KEYS, SHARED, VALIDATION_SEEDS, floor_figures  # noqa: E402
from quality_per_compute import grain_figures  # noqa: E402
from seams import block_seams, box_block_corners, plane_report  # noqa: E402
from stats_floor import PAPER_R10  # noqa: E402

from gp_engine.planner import DEFAULT_MARGIN  # noqa: E402

RESULTS = ROOT / "bench" / "results"
ROWS_JSON, ROWS_MD = RESULTS / "conditional.json", RESULTS / "conditional.md"
PLOT = ROOT / "bench" / "plots" / "conditional_kl_vs_evaluations.png"


def sampler_for(setting: str) -> dict:
    """The plan's sampler section for a setting name: fast, balanced or paper, optionally with -sS (steps), -rR
    (resamples) and -jJ (jump length) overriding the preset's; condN (optionally -rR: a conditional walk that
    resamples its unknown voxels); each optionally with -etaE (η) and
    -kK (x̂0 sharpening κ = K; default: the model's, gp_engine.generate.model_sharpen)."""
    m = re.fullmatch(r"(fast|balanced|paper|cond(\d+))(?:-s(\d+))?(?:-r(\d+))?(?:-j(\d+))?(?:-eta([0-9.]+))?"
                     r"(?:-k([0-9.]+))?", setting)
    if not m or (m.group(2) is not None and (m.group(3) or m.group(5))):
        raise SystemExit(f"conditional_vs_repaint: setting {setting!r} is unknown; use fast, balanced or paper (with optional "
                         "-sSTEPS -rRESAMPLE -jJUMP), condN (optional -rRESAMPLE), each with optional -etaE and -kK")
    # condN is N steps without resampling unless -rR says otherwise (the preset itself resamples since the
    # eleventh session; the rows' names keep their meaning)
    out = ({"preset": m.group(1)} if m.group(2) is None
           else {"preset": "conditional", "steps": int(m.group(2)), "resample": 0})
    for group, key in ((3, "steps"), (4, "resample"), (5, "jump")):
        if m.group(group) is not None:
            out[key] = int(m.group(group))
    if m.group(6) is not None:
        out["eta"] = float(m.group(6))
    if m.group(7) is not None:
        out["sharpen_x0"] = float(m.group(7))
    return out


def model_dir_for(path: str | None, work: Path) -> Path | None:
    """A model folder; a trainer checkpoint is built (once per step count) under ``work``."""
    if path is None:
        return None
    p = Path(path)
    if p.is_dir():
        return p
    from gp_engine.checkpoint import load_checkpoint
    from gp_engine.export import build_model

    ck = load_checkpoint(p)
    d = work / f"model_{p.stem}_{ck['step']}steps"
    if not (d / "manifest.json").is_file():
        build_model(p, d, batch_sizes=[1, 8], log=lambda *_: None)
    return d


def spparks_seams(shape, corners) -> dict:
    """The seam figures of the validation SPPARKS volumes cropped to ``shape``, on the same planes."""
    from gp_engine.grains import split_grains

    figs = []
    for s in VALIDATION_SEEDS:
        spins = np.load(SHARED / f"potts_iso_100_seed{s}.npz")["spins"][:shape[0], :shape[1], :shape[2]]
        figs.append(plane_report(split_grains(np.ascontiguousarray(spins)), block_seams(corners, shape)))
    return {k: float(np.mean([f[k] for f in figs])) for k in figs[0]} | {
        "seam_boundary_density_sd": float(np.std([f["seam_boundary_density"] for f in figs]))}


def volume_tag(model_name: str, setting: str, shape, margin: int) -> str:
    """The cache folder name of a setting's volumes (``<tag>_seed<i>``): boxes painted with a margin
    (``geometry.margin``, the default since the thirteenth session) end in ``_m<margin>``, so volumes
    painted without one, kept from before, are never mistaken for them."""
    return f"{model_name}_{setting}_{'x'.join(map(str, shape))}" + (f"_m{margin}" if margin else "")


def same_box_crops(shape, seeds) -> list:
    """SPPARKS volumes of ``seeds`` cut into boxes of ``shape`` (the 8 corner boxes of each; one box when the
    shape is the volume's), relabelled: what a generated box of that size should look like. Grains cut by a
    box face are a larger share of a small box than of a 100³ volume, so a 48³ box is compared with 48³
    SPPARKS boxes here, beside the 100³ comparison of the issue's targets."""
    from gp_engine.grains import split_grains
    from gp_engine.volume_io import read_volume

    out = []
    for s in seeds:
        v = read_volume(SHARED / f"potts_iso_100_seed{s}.npz")
        starts = [sorted({0, v.shape[a] - shape[a]}) for a in range(3)]
        for o in ((x, y, z) for x in starts[0] for y in starts[1] for z in starts[2]):
            box = v[o[0]:o[0] + shape[0], o[1]:o[1] + shape[1], o[2]:o[2] + shape[2]]
            out.append(split_grains(np.ascontiguousarray(box)))
    return out


def same_box_summary(grains: list, shape) -> dict | None:
    """KL against validation boxes of the generated shape (:func:`same_box_crops`) and its floor: the first
    box of each of as many training volumes (1001, ...) against the same. None above 100³."""
    from gp_engine.stats import summarize

    if any(n > 100 for n in shape):
        return None
    refs = same_box_crops(shape, VALIDATION_SEEDS)
    floor = summarize([same_box_crops(shape, [1001 + i])[0] for i in range(len(grains))], refs)
    got = summarize(grains, refs)
    return {"reference_boxes": len(refs), **{k: got[k] for k in KEYS},
            "floor": {k: floor[k] for k in KEYS}, "floor_median_volume": floor["median_volume"]}


def paint_volume(sampler: dict, mdir: Path, tag: str, shape, seed: int, work: Path, batch: int, quiet: bool,
                 necks: bool, margin: int) -> Path:
    """The run folder ``<work>/<tag>_seed<seed>`` of one generated box, painted unless it is there (an
    interrupted one resumes)."""
    from gp_engine.generate import generate

    out = work / f"{tag}_seed{seed}"
    if not (out / "grains.npy").is_file():
        plan = {"version": 1, "geometry": {"shape": list(shape), "margin": margin}, "model": str(mdir), "sampler": sampler,
                "batch_size": batch, "backend": "onnxruntime", "seed": seed,
                "segmentation": {"split_necks": necks},
                "outputs": {"dir": str(out), "formats": ["npy", "png"]}}
        resume = (out / "canvas").is_dir()
        generate(plan, out_dir=out, resume=resume, force=not resume, progress=not quiet)
    return out


def paint_only(setting: str, model: Path | None, shape, seeds, work: Path, batch: int, quiet: bool,
               necks: bool, margin: int) -> None:
    """Paint (or finish) the boxes of ``seeds`` and score nothing: one process per core, each with its own
    seeds, then one scoring run that finds them all painted."""
    from gp_engine.runtime import read_model

    mdir, manifest = read_model(model)
    tag = volume_tag(manifest["name"], setting, shape, margin)
    for seed in seeds:
        out = paint_volume(sampler_for(setting), mdir, tag, shape, seed, work, batch, quiet, necks, margin)
        print(f"  {setting} seed {seed}: painted {out}", flush=True)


def run_setting(setting: str, model: Path | None, shape, volumes: int, work: Path, batch: int, quiet: bool,
                necks: bool = True, margin: int = DEFAULT_MARGIN) -> dict:
    from gp_engine.generate import model_min_size, segment_field, segmentation_kwargs
    from gp_engine.necks import split_necks
    from gp_engine.runtime import read_model
    from gp_engine.stats import summarize
    from gp_engine.volume_io import read_volume

    mdir, manifest = read_model(model)
    enc = manifest.get("encoding") or {}
    seg_now = segmentation_kwargs(None, enc.get("levels"), enc.get("kind"), model_min_size(manifest))
    sampler = sampler_for(setting)
    tag = volume_tag(manifest["name"], setting, shape, margin)
    grains, timings, seams = [], [], []
    corners = box_block_corners(shape, margin)
    for seed in range(volumes):
        out = paint_volume(sampler, mdir, tag, shape, seed, work, batch, quiet, necks, margin)
        st = json.loads((out / "stats.json").read_text())
        if (st.get("painted") or {}).get("margin", 0) != margin:
            raise SystemExit(f"conditional_vs_repaint: {out} was painted with margin "
                             f"{(st.get('painted') or {}).get('margin', 0)}, not {margin}: move it away")
        timings.append(st["timing"])
        used = {k: (st.get("segmentation") or {}).get(k) for k in ("method", "min_size")}
        if used != {k: seg_now.get(k) for k in ("method", "min_size")}:  # an older default: segment again
            from gp_engine.encoding import bits_display

            raw = np.load(out / "field.npy")
            ids = segment_field(bits_display(raw) if raw.ndim == 4 else raw, None, levels=enc.get("levels"),
                                encoding_kind=enc.get("kind"), auto_min_size=model_min_size(manifest))
            ids = split_necks(ids) if necks else ids
        else:
            ids = np.load(out / "grains.npy")
            if necks and "split_necks" not in st:  # kept from a run without the cut: the same step, here
                ids = split_necks(ids, out=ids)
            elif not necks and "split_necks" in st:
                raise SystemExit(f"conditional_vs_repaint: {out} was cut at necks; move it away to score without")
        grains.append(ids)
        seams.append(plane_report(ids, block_seams(corners, shape)))
        print(f"  {setting} seed {seed}: {st['timing'].get('voxels_per_min') or 0:,.0f} vox/min", flush=True)
    refs = [read_volume(SHARED / f"potts_iso_100_seed{s}.npz") for s in VALIDATION_SEEDS]
    summary = summarize(grains, refs)
    small = grain_figures(grains)["share_voxels_small_grains"]
    vpm = [t["voxels_per_min"] for t in timings if t.get("voxels_per_min")]
    return {
        "setting": setting, "margin": margin, "split_necks": bool(necks), "segmentation": seg_now, "sampler": sampler, "model": manifest["name"], "model_kind": manifest.get("model_kind", "unconditional"),
        "model_training": {k: (manifest.get("training") or {}).get(k) for k in ("steps", "samples_seen", "cpu_time_s", "init_from")},
        # what the runs really used (runs from before the x̂0 sharpening existed record no sampler: κ = 0)
        "sharpen_x0": (timings[0].get("sampler") or {}).get("sharpen_x0", 0.0),
        "eta": (timings[0].get("sampler") or {}).get("eta", sampler.get("eta", 1.0)),
        "shape": list(shape), "volumes": volumes, "evaluations_per_block": timings[0]["evaluations_per_block"],
        "blocks": timings[0].get("blocks"), "voxels_per_min_mean": float(np.mean(vpm)) if vpm else None,
        "backend": timings[0].get("backend"), "threads": os.environ.get("GP_ENGINE_THREADS"),
        "summary": {k: summary[k] for k in KEYS + ("grains", "mean_volume", "median_volume")},
        "share_voxels_small_grains": small,
        "seams": {k: float(np.mean([s[k] for s in seams])) for k in seams[0]},
        "same_box": same_box_summary(grains, shape),
    }


def _seg_label(seg: dict | None) -> str:
    """`` min 20`` for a row segmented by DBSCAN with clusters under 20 voxels refilled (rows from before
    the model named its own min_size: empty, which was 80 for analog bits)."""
    return f" min {seg['min_size']}" if seg and seg.get("min_size") else ""


def _window(seams: dict) -> str:
    """``net / abs`` seam-window figures of a row's seams (rows from before the thirteenth session: –)."""
    if not seams or "seam_window_excess" not in seams:
        return "–"
    return f"{seams['seam_window_excess']:+.3f} / {seams['seam_window_deviation']:.3f}"


def _same_box(sb: dict | None) -> str:
    """``v / a / c (floor v / a / c)`` of a row's same-box comparison (older rows: –)."""
    if not sb:
        return "–"
    f = sb["floor"]
    return (f"{sb['kl_volume']:.3f} / {sb['kl_aspect']:.3f} / {sb['kl_centroid']:.3f} "
            f"({f['kl_volume']:.3f} / {f['kl_aspect']:.3f} / {f['kl_centroid']:.3f})")


def render_md(rows: list[dict], floor: dict | None) -> str:
    fl = (f"SPPARKS-vs-SPPARKS floor (same estimator, 5 vs 5): volume {floor['kl_volume']:.4f}, aspect "
          f"{floor['kl_aspect']:.4f}, centroid {floor['kl_centroid']:.4f}; " if floor else "")
    lines = ["# Conditional sampler vs RePaint: quality against network evaluations per block", "",
             "Rows from `bench/conditional_vs_repaint.py`. KL(generated ‖ SPPARKS validation 1019-1023), "
             "gp_engine.stats Gaussian-KDE estimator. " + fl +
             f"paper Table 1 (r = 10): {PAPER_R10['kl_volume']} / {PAPER_R10['kl_aspect']} / {PAPER_R10['kl_centroid']}. "
             "Seams: boundary density (share of voxel pairs in different grains) and share of grains crossing, on "
             "the planes of the plan's block faces vs all other planes; SPPARKS: the same planes of the validation "
             "volumes cropped to the box (no seams there: their spread is the noise). KL vs SPPARKS boxes of this "
             "size (rows from the thirteenth session on): against the 8 corner boxes of each validation volume, "
             "floor = one box of as many training volumes against the same (a small box holds more grains cut by "
             "its faces than a 100³ volume). Seam window (±3 planes; rows "
             "from the thirteenth session on): the boundary density the planes within 3 of each block face hold "
             "above the planes farther from faces and box faces, net / absolute (bench/seams.py), generated vs "
             "SPPARKS on the same planes. vox/min: each run's own "
             "timing on the machine named (other work may have shared it).", "",
             "| model | kind | setting | κ | evals/block | box | KL volume | KL aspect | KL centroid | grains | median vol "
             "| voxels in < 20 | seam density | interior density | SPPARKS seam / interior | crossing seam / interior "
             "| seam window net / abs | SPPARKS window net / abs | KL vs SPPARKS boxes of this size (floor) | vox/min | device | date | commit |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        s, sm, sp = r["summary"], r["seams"], r.get("spparks_seams") or {}
        box = f"{r['volumes']}×{'x'.join(map(str, r['shape']))}"
        spp = (f"{sp['seam_boundary_density']:.3f} / {sp['interior_boundary_density']:.3f}" if sp else "–")
        lines.append(
            f"| {r['model']} | {r['model_kind']} | {r['setting']}{' +necks' if r.get('split_necks') else ''}"
            f"{f' margin {m}' if (m := r.get('margin', 0)) else ''}"
            f"{_seg_label(r.get('segmentation'))} | "
            f"{r.get('sharpen_x0', 0.0):g} | "
            f"{r['evaluations_per_block']} | {box} | "
            f"{s['kl_volume']:.3f} | {s['kl_aspect']:.3f} | {s['kl_centroid']:.3f} | {s['grains']} | "
            f"{s['median_volume']:.0f} | {100 * r['share_voxels_small_grains']:.1f} % | "
            f"{sm['seam_boundary_density']:.3f} | {sm['interior_boundary_density']:.3f} | {spp} | "
            f"{sm['seam_straddling']:.3f} / {sm['interior_straddling']:.3f} | "
            f"{_window(sm)} | {_window(sp)} | {_same_box(r.get('same_box'))} | "
            f"{r['voxels_per_min_mean'] or 0:,.0f} | {r['device']['cpu'] if not r['device'].get('gpu') else r['device']['gpu']} | "
            f"{r['date'][:10]} | {r['commit'][:8]} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6), dpi=100)
    for ax, k in zip(axes, KEYS):
        groups: dict[str, list] = {}
        for r in rows:
            key = f"{r['model_kind']} {'x'.join(map(str, r['shape']))}"
            groups.setdefault(key, []).append((r["evaluations_per_block"], r["summary"][k], r["setting"]))
        for key, pts in groups.items():
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=key, ms=4)
            for e, v, name in pts:
                ax.annotate(name, (e, v), fontsize=6, xytext=(2, 2), textcoords="offset points")
        ax.axhline(PAPER_R10[k], color="k", ls="--", lw=0.8, label="paper Table 1")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("network evaluations per block")
        ax.set_title(k.replace("_", " "))
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    from gp_engine.atomic_write import save_figure

    PLOT.parent.mkdir(parents=True, exist_ok=True)
    save_figure(fig, PLOT)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--settings", nargs="+", default=["fast", "cond25", "cond50", "cond100"])
    ap.add_argument("--unconditional", help="model folder for RePaint settings (default: the shipped model)")
    ap.add_argument("--conditional", help="conditional model folder or trainer checkpoint (for condN settings)")
    ap.add_argument("--shape", type=int, nargs=3, default=[64, 64, 64])
    ap.add_argument("--volumes", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1, help="onnxruntime / numba threads (default 1)")
    ap.add_argument("--work", default=str(ROOT / "bench" / "out" / "conditional"))
    ap.add_argument("--no-split-necks", dest="split_necks", action="store_false",
                    help="score the segmentation without the cut at thin necks (gp_engine.necks; on by default "
                         "as in plans; volumes kept from a run without it are cut here, the same step)")
    ap.add_argument("--margin", type=int, default=DEFAULT_MARGIN,
                    help=f"geometry.margin of the plans (default {DEFAULT_MARGIN}, the engine's; 0 = the boxes of the "
                         "rows before the thirteenth session)")
    ap.add_argument("--paint-seeds", type=int, nargs="+", metavar="SEED",
                    help="only paint the boxes of these seeds (kept under --work) and score nothing: run one such "
                         "process per core with different seeds, then once without it to score --volumes")
    ap.add_argument("--no-row", action="store_true")
    ap.add_argument("--quiet", action="store_true")
    a = ap.parse_args(argv)
    os.environ.setdefault("GP_ENGINE_THREADS", str(a.threads))
    os.environ.setdefault("NUMBA_NUM_THREADS", str(a.threads))
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    cond_dir = model_dir_for(a.conditional, work)
    shape = tuple(a.shape)
    scoring = not a.paint_seeds
    spp = spparks_seams(shape, box_block_corners(shape, a.margin)) if scoring and max(shape) <= 100 else None
    floor = floor_figures() if scoring else None
    for setting in a.settings:
        t0 = time.time()
        model = cond_dir if setting.startswith("cond") else (Path(a.unconditional) if a.unconditional else None)
        if setting.startswith("cond") and model is None:
            raise SystemExit("conditional_vs_repaint: condN settings need --conditional MODEL_OR_CHECKPOINT")
        if a.paint_seeds:
            paint_only(setting, model, shape, a.paint_seeds, work, a.batch_size, a.quiet, a.split_necks, a.margin)
            continue
        row = {**header("conditional_vs_repaint", cuda=False),
               **run_setting(setting, model, shape, a.volumes, work, a.batch_size, a.quiet, a.split_necks, a.margin),
               "spparks_seams": spp, "floor_spparks_5v5": floor, "paper_table1_r10": PAPER_R10,
               "wall_s": time.time() - t0}
        s = row["summary"]
        print(f"{setting}: {row['evaluations_per_block']} evals/block, KL {s['kl_volume']:.3f} / {s['kl_aspect']:.3f} / "
              f"{s['kl_centroid']:.3f}, median {s['median_volume']:.0f}, seams {row['seams']['seam_boundary_density']:.3f}"
              f" vs {row['seams']['interior_boundary_density']:.3f}", flush=True)
        if not a.no_row:  # read the rows just before writing: another run may have added some meanwhile
            rows = json.loads(ROWS_JSON.read_text()) if ROWS_JSON.is_file() else []
            def key(r):
                return (r["model"], r["setting"], tuple(r["shape"]), r["volumes"], bool(r.get("split_necks")),
                        (r.get("segmentation") or {}).get("min_size"), r.get("margin", 0))
            rows = [r for r in rows if key(r) != key(row)] + [row]
            RESULTS.mkdir(parents=True, exist_ok=True)
            ROWS_JSON.write_text(json.dumps(rows, indent=1) + "\n")
            ROWS_MD.write_text(render_md(rows, floor))
            plot(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())

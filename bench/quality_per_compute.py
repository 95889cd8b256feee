"""Fidelity per unit of training compute: train a named configuration for a fixed budget, build it,
generate, and add one row to bench/results/quality_per_compute.{json,md}.

One row = config, device, budget (process CPU minutes on the CPU; wall minutes on a GPU), samples seen,
final losses (the training objective, and the error of the implied x̂₀ weighted by min(SNR, 5),
comparable across targets and weightings), and on
the volumes generated at the ``fast`` preset (CPU default: two 64³; GPU default: four 100³) against the
validation SPPARKS volumes 1019-1023 (never trained on): KL of grain volume / aspect / nearest-centroid
distance (gp_engine.stats: Gaussian-KDE KL(generated ‖ SPPARKS), the estimator of
bench/stats_floor.py, whose SPPARKS-vs-SPPARKS floor each row carries), grain count, median grain
volume (SPPARKS: 361), share of voxels in grains under 20 voxels, and how far the raw field sits from
its nearest encoding level (mean |f - level| in units of the level spacing, and the share of voxels
more than a quarter spacing off). Rows accumulate: losing configurations keep theirs.

    # 20 CPU-minutes of one thread, from scratch (the budget is process CPU time, so other work on the
    # machine slows the run down but does not change what it buys)
    python bench/quality_per_compute.py --config v-minsnr --target v --weighting min-snr --budget 20
    # continue a configuration's checkpoint for another 20 minutes, as a new row
    python bench/quality_per_compute.py --config v-minsnr --budget 20 --resume
    # rescore an already trained checkpoint (no training)
    python bench/quality_per_compute.py --config eps --budget 0 --resume

Training hyper-parameters shared by every row unless set: batch 8, lr 1e-3, EMA 0.998, seed 0, one
thread (the CPU figures are for one core).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/, for provenance.py
from provenance import header  # noqa: E402
from quality_generate import KEYS, VALIDATION_SEEDS, floor_figures  # noqa: E402
from stats_floor import PAPER_R10  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "spparks"
RESULTS = ROOT / "bench" / "results"
ROWS_JSON = RESULTS / "quality_per_compute.json"
ROWS_MD = RESULTS / "quality_per_compute.md"
SMALL_GRAIN = 20          # voxels: "fragments"
SPPARKS_MEDIAN = 361      # median 26-connected grain volume of the SPPARKS validation volumes


def field_level_distance(field: np.ndarray, encoding: dict) -> dict:
    """Mean distance of the raw field to its nearest level or bit value (±1), in level spacings (2 for
    bits), and the share of values more than 1/4 spacing off."""
    kind, levels = encoding.get("kind"), encoding.get("levels")
    if kind not in ("separable", "bits"):
        return {"mean_level_distance": None, "share_off_level": None}
    f = np.clip(np.asarray(field, np.float64), -1.0, 1.0)
    if kind == "bits":
        levels = 2
    spacing = 2.0 / (levels - 1)
    d = np.abs(f - (np.round((f + 1.0) / spacing) * spacing - 1.0)) / spacing
    return {"mean_level_distance": float(d.mean()), "share_off_level": float((d > 0.25).mean())}


def grain_figures(grain_ids: list[np.ndarray]) -> dict:
    """Grain count, median volume and share of voxels in grains under SMALL_GRAIN voxels (26-connected)."""
    from gp_engine.grains import split_grains

    vols = []
    for g in grain_ids:
        ids = split_grains(np.asarray(g))
        vols.append(np.bincount(ids.ravel())[1:])
    v = np.concatenate(vols)
    v = v[v > 0]
    return {"grains": int(v.size), "median_volume": float(np.median(v)),
            "share_voxels_small_grains": float(v[v < SMALL_GRAIN].sum() / v.sum())}


def train_config(a, ckpt: Path) -> dict:
    from gp_engine.train import TrainOptions, train

    opts = TrainOptions(
        data=[str(a.data)], out=str(ckpt), preset=a.preset, steps=10**9, batch_size=a.batch_size,
        device=a.device, lr=a.lr, ema_decay=a.ema_decay, target=a.target, weighting=a.weighting,
        encoding=a.encoding, bits=a.bits, aux_ce=a.aux_ce, colouring=a.colouring,
        crop=a.crop, seed=a.seed, threads=a.threads, resume=a.resume, force=not a.resume,
        val_every=a.val_every, checkpoint_every=250, progress=not a.quiet,
        cpu_time_limit_min=a.budget if a.device_kind == "cpu" else None,
        time_limit_min=a.budget if a.device_kind != "cpu" else None,
        compile=a.compile)
    return train(opts)


def _fmt(v, spec=".4f") -> str:
    return "–" if v is None else format(v, spec)


def _enc(e) -> str:
    e = e or {}
    spread = "/spread" if e.get("colouring") == "spread" else ""
    if e.get("kind") == "bits":
        return f"bits{e.get('bits')}{spread}"
    return f"{e.get('kind', '?')}{e.get('levels') or ''}{spread}"


def render_md(rows: list[dict]) -> str:
    floor = next((r["floor_spparks_5v5"] for r in reversed(rows) if r.get("floor_spparks_5v5")), None)
    lines = ["# Fidelity per unit of training compute", "",
             "Rows from `bench/quality_per_compute.py` (one per run; losing configurations keep theirs). "
             "KL(generated ‖ SPPARKS validation 1019-1023) with gp_engine.stats' Gaussian-KDE estimator; "
             "generated at the `fast` preset. Budget: process CPU minutes (CPU) or wall minutes (GPU), "
             "with the training precision after the device where recorded (bf16 on an AMX CPU: ~1.9× the "
             "fp32 steps per CPU minute), "
             "cumulative over resumed runs. x̂₀ err: validation error of the implied x̂₀ weighted by "
             "min(SNR, 5), comparable across targets (rows before it existed show the ε-MSE in the next column). "
             "Level distance: mean |field - nearest level| in level spacings.", ""]
    if floor:
        lines += [f"SPPARKS-vs-SPPARKS floor (same estimator, 5 vs 5 volumes): volume {floor['kl_volume']:.4f}, "
                  f"aspect {floor['kl_aspect']:.4f}, centroid {floor['kl_centroid']:.4f}; paper Table 1 (r = 10): "
                  f"{PAPER_R10['kl_volume']} / {PAPER_R10['kl_aspect']} / {PAPER_R10['kl_centroid']}. "
                  f"SPPARKS median grain: {SPPARKS_MEDIAN} voxels.", ""]
    lines += ["| config | encoding | target | weighting | net | crop | device | sampler | segmentation | budget (min, total) | samples | val x̂₀ err | val ε-MSE "
              "| volumes | KL volume | KL aspect | KL centroid | grains | median vol | voxels in < 20 | "
              "level dist | date | commit |",
              "|" + "---|" * 23]
    for r in rows:
        c, s = r["config"], r["summary"]
        lines.append(
            f"| {c['name']} | {_enc(c.get('encoding'))} | {c['target']} | {c['weighting']} | {c['preset']} | {c['crop']} | {r['device_kind']}{' ' + c['precision'] if c.get('precision') else ''} "
            f"| {r.get('sampler_preset', 'fast')} κ{r.get('sharpen_x0', 0):g} | {r.get('segmentation', 'levels/5')} "
            f"| {r['budget_min_total']:.0f} | {r['samples_seen']} | {_fmt(r.get('final_val_x0w'))} "
            f"| {_fmt(r.get('final_val_eps_mse'))} "
            f"| {r['volumes']}×{'x'.join(map(str, r['shape']))} | {s['kl_volume']:.3f} | {s['kl_aspect']:.3f} "
            f"| {s['kl_centroid']:.3f} | {r['grains']} | {r['median_volume']:.0f} "
            f"| {100 * r['share_voxels_small_grains']:.1f} % "
            f"| {r['mean_level_distance']:.3f} | {r['date'][:10]} | {r['commit'][:8]} |")
    return "\n".join(lines) + "\n"


def plot_rows(rows: list[dict], path: Path = ROOT / "bench" / "plots" / "quality_per_compute.png") -> Path:
    """KL of volume / aspect / centroid against training budget, one line per configuration (log y),
    with the SPPARKS floor and the paper's Table 1 as horizontal lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from gp_engine.atomic_write import save_figure

    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    def key(r):  # one line per configuration and segmentation (a change of method is not progress)
        return f"{r['config']['name']} [{r.get('segmentation', 'levels/5')}, {r.get('sampler_preset', 'fast')}]"

    names = list(dict.fromkeys(key(r) for r in rows))
    floor = next((r["floor_spparks_5v5"] for r in reversed(rows) if r.get("floor_spparks_5v5")), None)
    for ax, k in zip(axes, KEYS):
        for n in names:
            rs = sorted((r for r in rows if key(r) == n), key=lambda r: r["budget_min_total"])
            ax.plot([r["budget_min_total"] for r in rs], [r["summary"][k] for r in rs], "o-", label=n, ms=4)
        ax.axhline(PAPER_R10[k], color="k", ls="--", lw=1, label="paper Table 1")
        if floor:
            ax.axhline(floor[k], color="grey", ls=":", lw=1, label="SPPARKS floor")
        ax.set_yscale("log")
        ax.set_xlabel("training budget (CPU min, or GPU wall min)")
        ax.set_title(f"KL {k[3:]}")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_figure(fig, path)


def append_row(row: dict) -> None:
    from gp_engine.atomic_write import atomic_open

    rows = json.loads(ROWS_JSON.read_text()) if ROWS_JSON.is_file() else []
    rows.append(row)
    RESULTS.mkdir(parents=True, exist_ok=True)
    with atomic_open(ROWS_JSON, "w") as f:
        json.dump(rows, f, indent=1)
    with atomic_open(ROWS_MD, "w") as f:
        f.write(render_md(rows))
    plot_rows(rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="row name; its run lives in bench/out/qpc/<config>/")
    p.add_argument("--target", default="eps", choices=["eps", "x0", "v"])
    p.add_argument("--weighting", default="uniform", choices=["uniform", "min-snr"])
    p.add_argument("--aux-ce", type=float, default=0.0,
                   help="analog bits: weight of the auxiliary cross-entropy on the predicted bits")
    p.add_argument("--preset", default="tiny", help="U-Net preset (tiny, mini, mini3, small, base)")
    p.add_argument("--crop", type=int, default=32, choices=[16, 32])
    p.add_argument("--encoding", default="separable", choices=["separable", "bits", "paper"])
    p.add_argument("--bits", type=int, help="analog-bits channels (--encoding bits; default 4)")
    p.add_argument("--colouring", metavar="{dsatur,spread}",  # checked by gp_engine.encoding.check_colouring
                   help="grain colouring of the training data (default: the checkpoint's, dsatur for a new run)")
    p.add_argument("--budget", type=float, default=20.0,
                   help="training minutes for this run: process CPU time on the CPU, wall time on a GPU")
    p.add_argument("--resume", action="store_true", help="continue the configuration's checkpoint")
    p.add_argument("--checkpoint", help="train into (or resume) this checkpoint instead of bench/out/qpc/<config>/model.pt")
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto (default cpu)")
    p.add_argument("--threads", type=int, default=1, help="torch / onnxruntime / numba threads (default 1)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--ema-decay", type=float, default=0.998)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val-every", type=int, default=250)
    p.add_argument("--compile", action="store_true", help="torch.compile (CUDA)")
    p.add_argument("--volumes", type=int, help="generated volumes (default: 2 on CPU, 4 on a GPU)")
    p.add_argument("--shape", type=int, nargs=3, help="generated box (default: 64³ on CPU, 100³ on a GPU)")
    p.add_argument("--preset-sampler", default="fast", help="sampler preset for generation (default fast)")
    p.add_argument("--backend", default="onnxruntime", help="generation backend (default onnxruntime)")
    p.add_argument("--data", default=str(SHARED), help="SPPARKS volumes (train 1001-1018, validate 1019+)")
    p.add_argument("--work", default=str(ROOT / "bench" / "out" / "qpc"))
    p.add_argument("--no-row", action="store_true", help="do not append the row (dry runs)")
    p.add_argument("--quiet", action="store_true")
    a = p.parse_args(argv)

    os.environ.setdefault("GP_ENGINE_THREADS", str(a.threads))
    os.environ.setdefault("NUMBA_NUM_THREADS", str(a.threads))
    import torch

    from gp_engine.export import build_model
    from gp_engine.generate import generate
    from gp_engine.stats import summarize
    from gp_engine.volume_io import read_volume

    a.device_kind = "cuda" if (a.device == "cuda" or (a.device == "auto" and torch.cuda.is_available())) else "cpu"
    a.data = Path(a.data)
    refs_paths = [a.data / f"potts_iso_100_seed{s}.npz" for s in VALIDATION_SEEDS]
    missing = [str(q) for q in refs_paths if not q.is_file()]
    if missing:
        sys.exit(f"quality_per_compute: validation volumes missing ({', '.join(missing[:2])}); pass --data DIR")
    volumes = a.volumes or (2 if a.device_kind == "cpu" else 4)
    shape = a.shape or ([64] * 3 if a.device_kind == "cpu" else [100] * 3)
    work = Path(a.work) / a.config
    ckpt = Path(a.checkpoint) if a.checkpoint else work / "model.pt"
    if a.resume and not ckpt.is_file():
        sys.exit(f"quality_per_compute: --resume but {ckpt} does not exist; drop --resume to start the configuration")
    if not a.resume and ckpt.exists():
        sys.exit(f"quality_per_compute: {ckpt} exists; pass --resume to continue it or another --config")
    work.mkdir(parents=True, exist_ok=True)

    t0 = time.time()
    if a.budget > 0 or not a.resume:
        meta = train_config(a, ckpt)
    else:
        from gp_engine.checkpoint import load_checkpoint
        meta = load_checkpoint(ckpt)["training"]
    from gp_engine.checkpoint import load_checkpoint
    ck = load_checkpoint(ckpt)
    t_train = time.time() - t0

    tag = f"{meta['steps']}steps"
    model_dir = work / f"model_{tag}"
    if not (model_dir / "manifest.json").is_file():
        build_model(ckpt, model_dir, batch_sizes=[1, 8], log=lambda *_: None)
    grains, fields, gen_s = [], [], 0.0
    from gp_engine.export.manifest import read_manifest
    from gp_engine.generate import model_sharpen

    # the x̂0 sharpening κ the runs use (the model's default): part of the cache key, since volumes
    # painted before it existed (κ = 0) must not be reused for a row that names today's sampler
    built = read_manifest(model_dir)
    kappa = model_sharpen(built)
    for i in range(volumes):
        out = work / f"gen_{tag}_{a.preset_sampler}_k{kappa:g}_{'x'.join(map(str, shape))}_seed{i}"
        if not (out / "grains.npy").is_file():
            plan = {"version": 1, "geometry": {"shape": list(shape)}, "model": str(model_dir),
                    "sampler": {"preset": a.preset_sampler}, "batch_size": 8, "backend": a.backend,
                    "seed": i, "outputs": {"dir": str(out), "formats": ["npy", "png"]}}
            resume = (out / "canvas").is_dir()
            res = generate(plan, out_dir=out, resume=resume, force=not resume, progress=not a.quiet)
            gen_s += float(res["timing"]["seconds"])
        fields.append(np.load(out / "field.npy", mmap_mode="r"))
        # segment here with today's `auto` settings: a reused volume's grains.npy may come from an
        # older default, and the row must carry the segmentation it names
        from gp_engine.encoding import bits_display
        from gp_engine.generate import model_min_size, segment_field

        enc_ = ck.get("encoding") or {}
        f = np.asarray(fields[-1])
        grains.append(segment_field(bits_display(f) if f.ndim == 4 else f, None, levels=enc_.get("levels"),
                                    encoding_kind=enc_.get("kind"), auto_min_size=model_min_size(built)))

    refs = [read_volume(q) for q in refs_paths]
    summary = summarize(grains, refs)
    enc = ck.get("encoding") or {}
    levels = enc.get("kind") in ("separable", "bits")
    lvl = [field_level_distance(f, enc) for f in fields]
    from gp_engine.generate import model_min_size, segmentation_kwargs

    sk = segmentation_kwargs(None, enc.get("levels"), enc.get("kind"), model_min_size(built))
    seg_name = f"{sk['method']}/{sk.get('min_size') or (5 if sk['method'] == 'levels' else 1)}"
    obj = ck.get("objective") or {}
    config = {"name": a.config, "target": ck.get("prediction", "eps"), "weighting": obj.get("weighting", "uniform"),
              "preset": ck["config"].get("preset"), "channels": ck["config"]["channels"],
              "crop": obj.get("crop", 32), "encoding": ck["encoding"], "batch_size": meta.get("batch_size"),
              "aux_ce": obj.get("aux_ce", 0.0),
              # the rate the run used (recorded per run since --lr became optional on resume)
              "lr": (((meta.get("history") or {}).get("runs") or [{}])[-1].get("lr")
                     or (meta.get("options") or {}).get("lr")),
              "precision": meta.get("precision"), "parameters": meta.get("parameters")}
    budget_total = (meta.get("cpu_time_s", 0.0) if a.device_kind == "cpu" else meta.get("wall_time_s", 0.0)) / 60
    row = {**header("quality_per_compute", cuda=a.device_kind == "cuda"),
           "config": config, "device_kind": a.device_kind, "threads": a.threads,
           "budget_min_this_run": a.budget, "budget_min_total": budget_total,
           "budget_unit": "process CPU minutes" if a.device_kind == "cpu" else "wall minutes",
           "train_wall_s_this_run": t_train, "generate_s": gen_s,
           "steps": meta["steps"], "samples_seen": meta["samples_seen"],
           "final_train_loss": meta.get("final_train_loss"), "final_val_loss": meta.get("final_val_loss"),
           "final_val_x0w": meta.get("final_val_x0w"),
           "sampler_preset": a.preset_sampler, "sharpen_x0": kappa, "segmentation": seg_name, "volumes": volumes, "shape": shape,
           "reference": [q.name for q in refs_paths],
           "summary": {k: summary[k] for k in KEYS + ("grains", "mean_volume", "median_volume")},
           **grain_figures(grains),
           "mean_level_distance": float(np.mean([x["mean_level_distance"] for x in lvl])) if levels else float("nan"),
           "share_off_level": float(np.mean([x["share_off_level"] for x in lvl])) if levels else None,
           "floor_spparks_5v5": floor_figures(), "paper_table1_r10": PAPER_R10,
           "checkpoint": str(ckpt)}
    print(json.dumps({k: row[k] for k in ("config", "budget_min_total", "samples_seen", "final_val_x0w",
                                           "summary", "grains", "median_volume", "share_voxels_small_grains",
                                           "mean_level_distance")}, indent=1))
    if not a.no_row:
        append_row(row)
        print(f"row added to {ROWS_JSON} and {ROWS_MD}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

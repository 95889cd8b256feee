"""Where does the aspect error come from: one block, or the block plan that joins blocks?

Generated grains have the right volumes but are too elongated (aspect KL ~0.5 for every model so far).
Two suspects: the network paints elongated grains inside a single block, or the outpainting that
continues a grain across a block face (RePaint) makes it lumpy. This probe scores, against SPPARKS
32³ crops of the validation volumes (1019-1023) and with the same estimator (gp_engine.stats):

* **single**: volumes of exactly one 32³ block (no outpainting at all);
* **plan**: the eight 32³ octants of 64³ volumes generated with the 8-stage block plan (every octant
  holds block faces and outpainted voxels);
* **SPPARKS**: the same number of 32³ crops of other SPPARKS volumes (training seeds), the floor at this
  sample size;

by KL of aspect and volume, and the mean b/a of grains of over 300 voxels that touch no crop face.

    python bench/aspect_probe.py --model mymodel --name ext500 --sampler fast-k0
    python bench/aspect_probe.py --model mymodel --name s15218 --single 24 --volumes 0   # single blocks only

Each record also keeps the model's training (steps, blocks seen, validation x̂₀ error), so the single-block
rows of one lineage draw a curve of shape error against training: bench/plots/aspect_single_vs_training.png.

Writes bench/results/aspect_probe.{json,md} (rows accumulate per --name).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from datetime import date
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from conditional_vs_repaint import sampler_for  # noqa: E402
from provenance import cpu_name  # noqa: E402
from quality_generate import SHARED, VALIDATION_SEEDS  # noqa: E402

RESULTS = ROOT / "bench" / "results"
TRAIN_SEEDS = range(1001, 1019)
BIG = 300  # voxels: the grains whose shape is scored one by one


def crops(volume: np.ndarray, n: int, rng, block: int = 32) -> list[np.ndarray]:
    out = []
    for _ in range(n):
        o = rng.integers(0, np.array(volume.shape) - block + 1)
        out.append(volume[o[0]:o[0] + block, o[1]:o[1] + block, o[2]:o[2] + block])
    return out


def octants(volume: np.ndarray, block: int = 32) -> list[np.ndarray]:
    return [volume[i:i + block, j:j + block, k:k + block] for i in (0, block) for j in (0, block) for k in (0, block)]


def shape_figures(boxes: list[np.ndarray]) -> tuple[dict, dict]:
    """Pooled grain statistics of the boxes (each relabelled into connected grains) and the mean b/a
    of the grains of over BIG voxels that touch no face of their box."""
    from gp_engine.grains import split_grains
    from gp_engine.stats import concat_stats, grain_stats

    stats, inner = [], []
    for box in boxes:
        ids = split_grains(np.ascontiguousarray(box))
        s = grain_stats(ids)
        stats.append(s)
        faces = np.unique(np.concatenate([ids[0].ravel(), ids[-1].ravel(), ids[:, 0].ravel(), ids[:, -1].ravel(),
                                          ids[:, :, 0].ravel(), ids[:, :, -1].ravel()]))
        keep = (s["volume"] > BIG) & ~np.isin(s["grain_id"], faces)
        inner.append(s["b_a"][keep])
    inner = np.concatenate(inner)
    return concat_stats(stats), {"big_inner_grains": int(inner.size),
                                 "big_inner_b_a": float(inner.mean()) if inner.size else None}


def row(name: str, boxes: list[np.ndarray], ref: dict) -> dict:
    from gp_engine.stats import kl_divergences

    s, figs = shape_figures(boxes)
    kl = kl_divergences(s, ref)
    return {"source": name, "boxes": len(boxes), "grains": int(s["volume"].size),
            "kl_volume": kl["kl_volume"], "kl_aspect": kl["kl_aspect"], **figs}


def generate_boxes(model: str | None, shape: int, n: int, sampler: dict, work: Path, seed0: int,
                   margin: int | None = None) -> list[np.ndarray]:
    """``n`` generated boxes of ``shape``³; ``margin``: geometry.margin (None: the engine's default; 0 for
    the single blocks, which must be exactly one painted block)."""
    from gp_engine.generate import generate

    out = []
    for i in range(n):
        d = work / (f"gen{shape}_{seed0 + i}" + ("" if margin is None else f"_m{margin}"))
        geometry = {"shape": [shape] * 3} | ({} if margin is None else {"margin": margin})
        plan = {"version": 1, "geometry": geometry, "model": model, "sampler": sampler,
                "batch_size": 8, "seed": seed0 + i,
                "outputs": {"dir": str(d), "formats": ["npy"]}}
        if not (d / "grains.npy").is_file():  # a kept --work folder is reused
            generate(plan, progress=False)
        out.append(np.load(d / "grains.npy"))
    return out


def single_blocks(model: str | None, n: int, sampler: dict, work: Path) -> list[np.ndarray]:
    """``n`` boxes of one painted 32³ block each: no margin (the default would paint 36³, eight blocks,
    and score outpainted grains as single-block ones)."""
    return generate_boxes(model, 32, n, sampler, work, 100, margin=0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="built model folder (default: the shipped one)")
    ap.add_argument("--name", default="shipped")
    ap.add_argument("--sampler", default="fast", help="a setting of conditional_vs_repaint.py: fast, fast-k0, ...")
    ap.add_argument("--single", type=int, default=16, help="single 32³ blocks (default 16)")
    ap.add_argument("--volumes", type=int, default=2, help="64³ volumes for the plan octants (default 2; 0: single "
                                                            "blocks only, the quick curve against training)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--work", default=None, help="keep generated volumes here (default: a temporary folder)")
    a = ap.parse_args(argv)
    import os

    os.environ.setdefault("GP_ENGINE_THREADS", str(a.threads))
    os.environ.setdefault("NUMBA_NUM_THREADS", str(a.threads))

    rng = np.random.default_rng(0)
    val = [np.load(SHARED / f"potts_iso_100_seed{s}.npz")["spins"] for s in VALIDATION_SEEDS]
    ref, ref_figs = shape_figures([c for v in val for c in crops(v, 40, rng)])
    n_plan = 8 * a.volumes
    sampler = sampler_for(a.sampler)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(a.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        single = single_blocks(a.model, a.single, sampler, work)
        plan = [o for v in generate_boxes(a.model, 64, a.volumes, sampler, work, 200) for o in octants(v)]
    floor_rng = np.random.default_rng(2)
    train = [np.load(SHARED / f"potts_iso_100_seed{s}.npz")["spins"] for s in TRAIN_SEEDS[:4]]
    rows = [row("SPPARKS crops (train seeds)", [c for v in train for c in crops(v, max(a.single, n_plan) // 4 + 1,
                                                                             floor_rng)], ref),
            row("single 32³ blocks", single, ref)] + ([row("plan: octants of 64³", plan, ref)] if plan else [])
    commit = subprocess.run(["git", "rev-parse", "--short=8", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    rec = {"name": a.name, "model": a.model or "shipped", "sampler": a.sampler, "date": date.today().isoformat(),
           "commit": commit, "reference_big_inner_b_a": ref_figs["big_inner_b_a"], "rows": rows,
           "training": model_training(a.model), "device": cpu_name()}
    for r in rows:
        print(f"{r['source']:30s} boxes {r['boxes']:3d} grains {r['grains']:5d}  KL volume {r['kl_volume']:.3f} "
              f"aspect {r['kl_aspect']:.3f}  big inner grains {r['big_inner_grains']:4d} b/a "
              f"{r['big_inner_b_a'] if r['big_inner_b_a'] is None else round(r['big_inner_b_a'], 3)}")
    print(f"SPPARKS validation crops: big inner b/a {ref_figs['big_inner_b_a']:.3f}")
    path = RESULTS / "aspect_probe.json"
    allrec = json.loads(path.read_text()) if path.is_file() else []
    allrec = [r for r in allrec if (r["name"], r["sampler"]) != (a.name, a.sampler)] + [rec]
    path.write_text(json.dumps(allrec, indent=1) + "\n")
    write_md(allrec)
    plot_curve(allrec)
    return 0


def write_md(allrec: list[dict]) -> None:
    lines = ["# Aspect: one block or the block plan?", "",
             "`bench/aspect_probe.py`: grains of 32³ boxes (each relabelled into connected grains) against 200 "
             "32³ crops of SPPARKS validation 1019-1023, gp_engine.stats' KDE estimator; *big inner b/a*: mean "
             f"b/a of grains over {BIG} voxels touching no box face. SPPARKS crops of training seeds: the floor "
             "at the same sample size.", ""]
    for r0 in allrec:
        tr = r0.get("training")
        trained = (f"; {tr['steps']:,} steps, {tr['blocks_seen']:,} blocks seen, val x̂₀ err {tr['val_x0w']:.4f}"
                   if tr and tr.get("val_x0w") else "")
        lines += [f"## {r0['name']}, `{r0['sampler']}` ({r0['date']}, commit {r0['commit']}"
                  f"{', ' + r0['device'] if r0.get('device') else ''}{trained}; SPPARKS validation "
                  f"big inner b/a {r0['reference_big_inner_b_a']:.3f})", "",
                  "| source | boxes | grains | KL volume | KL aspect | big inner grains | big inner b/a |",
                  "|---|---|---|---|---|---|---|"]
        for r in r0["rows"]:
            ba = "–" if r["big_inner_b_a"] is None else f"{r['big_inner_b_a']:.3f}"
            lines.append(f"| {r['source']} | {r['boxes']} | {r['grains']} | {r['kl_volume']:.3f} | "
                         f"{r['kl_aspect']:.3f} | {r['big_inner_grains']} | {ba} |")
        lines.append("")
    (RESULTS / "aspect_probe.md").write_text("\n".join(lines))


def model_training(model: str | None) -> dict | None:
    """Steps, blocks seen (with the warm start's) and validation x̂₀ error of the model's training."""
    from gp_engine.runtime import read_model

    _, manifest = read_model(Path(model) if model else None)
    t = manifest.get("training") or {}
    if not t.get("steps"):
        return None
    init = t.get("init_from") or {}
    return {"model": manifest.get("name"), "steps": int(t["steps"]),
            "blocks_seen": int(t.get("samples_seen") or 0) + int(init.get("samples_seen") or 0),
            "val_x0w": t.get("final_val_x0w"), "precision": t.get("precision")}


def plot_curve(records: list[dict]) -> None:
    """Single-block KL (aspect, volume) against the blocks the model had seen, one line per sampler."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    from gp_engine.atomic_write import save_figure

    pts = [(r["sampler"], r["training"]["blocks_seen"], r["rows"][1], r["rows"][0], r["name"]) for r in records
           if r.get("training") and r["training"].get("blocks_seen")]
    if not pts:
        return
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), dpi=100)
    for ax, key in zip(axes, ("kl_aspect", "kl_volume")):
        for sampler in sorted({p[0] for p in pts}):
            line = sorted((b, g[key], name) for s_, b, g, _, name in pts if s_ == sampler)
            ax.plot([x[0] for x in line], [x[1] for x in line], "o-", ms=4, label=f"generated, `{sampler}`")
            for b, v, name in line:
                ax.annotate(name, (b, v), fontsize=6, xytext=(2, 2), textcoords="offset points")
        ax.axhline(float(np.mean([p[3][key] for p in pts])), color="k", ls=":", lw=0.8,
                   label="SPPARKS crops (floor)")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x / 1000:.0f}k"))
        ax.set_xlabel("training blocks seen")
        ax.set_title(f"single 32³ blocks: {key.replace('_', ' ')}")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, ROOT / "bench" / "plots" / "aspect_single_vs_training.png")


if __name__ == "__main__":
    raise SystemExit(main())

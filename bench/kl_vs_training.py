"""KL against training compute for the shipped model's lineage: the curve that says how far the targets are.

Reads the rows of bench/results/conditional.json (written by bench/conditional_vs_repaint.py) for one
sampler setting and segmentation (default: RePaint ``fast``, cut at thin necks, DBSCAN clusters under 20
voxels refilled: how the shipped model generates), keeps the unconditional models whose name matches
``--lineage`` (default: the T = 500 lineage, ``ext500``) and plots KL volume / aspect / centroid against
the training blocks the lineage had seen, one line per box (volumes × shape: a 48³ box cuts more grains
than a 100³ one, so boxes are not mixed). Beside the points: the issue's targets for the CPU-trained model,
the paper's Table 1, and the SPPARKS-vs-SPPARKS floor of the same estimator. A power law
KL = a · blocks^b fitted per box (least squares in log-log, at least three models) says how many blocks
the trend would need to reach the target; with few, noisy points it is a rough guide, printed as such.

    python bench/kl_vs_training.py             # -> bench/plots/kl_vs_training.png, bench/results/kl_vs_training.md
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from quality_generate import KEYS  # noqa: E402  (the three KL statistics, one definition)
from stats_floor import PAPER_R10  # noqa: E402

ROWS_JSON = ROOT / "bench" / "results" / "conditional.json"
PLOT = ROOT / "bench" / "plots" / "kl_vs_training.png"
MD = ROOT / "bench" / "results" / "kl_vs_training.md"
#: issue #7's targets for the shipped CPU-trained model (fast, four 100³)
TARGETS = {"kl_volume": 0.5, "kl_aspect": 0.10, "kl_centroid": 0.20}


def blocks_seen(training: dict) -> int | None:
    """Training blocks behind a model: its lineage's own count plus, for a lineage warm-started from another
    checkpoint (``--init-from``: its counters start at zero), the parent's."""
    if not training or training.get("samples_seen") is None:
        return None
    parent = training.get("init_from") or {}
    return int(training["samples_seen"]) + int(parent.get("samples_seen") or 0)


def select(rows: list[dict], setting: str, min_size: int, lineage: str, min_volumes: int = 4,
           margin: int = 0) -> dict[str, list[tuple]]:
    """``{box: [(blocks, model, {kl...}), ...]}`` sorted by blocks, for the matching rows scored on at least
    ``min_volumes`` volumes (one or two volumes differ by more than a step of training moves the KL) and
    painted with ``margin`` (``geometry.margin``; rows from before it: 0)."""
    pat = re.compile(lineage)
    out: dict[str, list[tuple]] = {}
    for r in rows:
        if (r.get("model_kind", "unconditional") != "unconditional" or r["setting"] != setting
                or not r.get("split_necks") or (r.get("segmentation") or {}).get("min_size") != min_size
                or not pat.search(r["model"]) or int(r["volumes"]) < min_volumes or r.get("margin", 0) != margin):
            continue
        n = blocks_seen(r.get("model_training") or {})
        if n is None:
            continue
        box = f"{r['volumes']}×{'x'.join(map(str, r['shape']))}"
        out.setdefault(box, []).append((n, r["model"], {k: float(r["summary"][k]) for k in KEYS}))
    return {box: sorted(pts) for box, pts in sorted(out.items())}


def power_fit(xs: list[float], ys: list[float]) -> tuple[float, float] | None:
    """(a, b) of y = a·x^b by least squares on logs; None with fewer than three points."""
    if len(xs) < 3:
        return None
    lx, ly = [math.log(x) for x in xs], [math.log(y) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    sxx = sum((x - mx) ** 2 for x in lx)
    if sxx == 0:
        return None
    b = sum((x - mx) * (y - my) for x, y in zip(lx, ly)) / sxx
    return math.exp(my - b * mx), b


def blocks_to_reach(fit: tuple[float, float] | None, target: float) -> float | None:
    """Blocks at which the fitted power law reaches ``target`` (None if it does not fall)."""
    if fit is None or fit[1] >= 0:
        return None
    a, b = fit
    return (target / a) ** (1.0 / b)


def render_md(groups: dict[str, list[tuple]], setting: str, min_size: int, floor: dict | None) -> str:
    lines = ["# KL against training compute: the shipped model's lineage", "",
             f"Rows of `bench/results/conditional.json` with setting `{setting}`, cut at thin necks, clusters under "
             f"{min_size} voxels refilled (`bench/kl_vs_training.py`). KL(generated ‖ SPPARKS validation 1019-1023), "
             "gp_engine.stats Gaussian-KDE. Targets (issue #7): " +
             " / ".join(f"{TARGETS[k]}" for k in KEYS) + "; paper Table 1: " +
             " / ".join(f"{PAPER_R10[k]}" for k in KEYS) +
             ("; SPPARKS-vs-SPPARKS floor: " + " / ".join(f"{floor[k]:.4f}" for k in KEYS) if floor else "") + ".", "",
             "| box | model | training blocks | KL volume | KL aspect | KL centroid |", "|---|---|---|---|---|---|"]
    for box, pts in groups.items():
        for n, model, kl in pts:
            lines.append(f"| {box} | {model} | {n:,} | " + " | ".join(f"{kl[k]:.3f}" for k in KEYS) + " |")
    lines += ["", "Power-law fits KL = a·blocks^b per box (rough: few models, each scored on a handful of volumes):", ""]
    for box, pts in groups.items():
        for k in KEYS:
            fit = power_fit([p[0] for p in pts], [p[2][k] for p in pts])
            if fit is None:
                continue
            reach = blocks_to_reach(fit, TARGETS[k])
            last = pts[-1][2][k]
            if fit[1] >= 0:
                when = f"does not fall with training (last {last:.3f}, target {TARGETS[k]})"
            elif last <= TARGETS[k]:
                when = f"under the target (last {last:.3f}, target {TARGETS[k]})"
            else:
                when = f"reaches {TARGETS[k]} at ~{reach:,.0f} blocks ({reach / pts[-1][0]:.0f}x the last model's)"
            lines.append(f"- {box}, {k.replace('_', ' ')}: b = {fit[1]:+.3f} ({len(pts)} models); {when}")
    return "\n".join(lines) + "\n"


def plot(groups: dict[str, list[tuple]], floor: dict | None, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker  # noqa: F401  (matplotlib.ticker below)

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), dpi=100)
    for ax, k in zip(axes, KEYS):
        for box, pts in groups.items():
            xs, ys = [p[0] for p in pts], [p[2][k] for p in pts]
            (line,) = ax.plot(xs, ys, "o-", ms=4, label=box)
            fit = power_fit(xs, ys)
            if fit is not None:
                gx = [xs[0] * (4 * xs[-1] / xs[0]) ** (i / 40) for i in range(41)]
                ax.plot(gx, [fit[0] * x ** fit[1] for x in gx], ":", color=line.get_color(), lw=1)
        ax.axhline(TARGETS[k], color="tab:red", lw=1, label="target (issue #7)")
        ax.axhline(PAPER_R10[k], color="k", ls="--", lw=0.8, label="paper Table 1")
        if floor:
            ax.axhline(floor[k], color="gray", ls=":", lw=0.8, label="SPPARKS floor")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        lo, hi = ax.get_xlim()
        ticks = [m * 10 ** e for e in range(4, 9) for m in (1, 2, 5) if lo <= m * 10 ** e <= hi]
        ax.set_xticks(ticks, [f"{t / 1e3:,.0f}k" for t in ticks])
        ax.set_xlabel("training blocks seen by the lineage")
        ax.set_title(k.replace("_", " ") + " (dotted: power-law fit)", fontsize=9)
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    from gp_engine.atomic_write import save_figure

    path.parent.mkdir(parents=True, exist_ok=True)
    save_figure(fig, path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default=str(ROWS_JSON))
    ap.add_argument("--setting", default="fast")
    ap.add_argument("--min-size", type=int, default=20)
    ap.add_argument("--min-volumes", type=int, default=4, help="rows scored on fewer volumes are left out")
    ap.add_argument("--lineage", default="ext500", help="regular expression the model names must match")
    ap.add_argument("--margin", type=int, default=0,
                    help="rows painted with this geometry.margin (default 0: the curve's rows, all from before margins)")
    ap.add_argument("--plot", default=str(PLOT))
    ap.add_argument("--md", default=str(MD))
    a = ap.parse_args(argv)
    rows = json.loads(Path(a.rows).read_text())
    groups = select(rows, a.setting, a.min_size, a.lineage, a.min_volumes, a.margin)
    if not groups:
        raise SystemExit(f"kl_vs_training: {a.rows} has no rows of setting {a.setting!r} with min_size {a.min_size} "
                         f"for models matching {a.lineage!r}; score some with bench/conditional_vs_repaint.py")
    floor = next((r.get("floor_spparks_5v5") for r in rows if r.get("floor_spparks_5v5")), None)
    text = render_md(groups, a.setting, a.min_size, floor)
    Path(a.md).write_text(text)
    plot(groups, floor, Path(a.plot))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

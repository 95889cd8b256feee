"""SPPARKS-vs-SPPARKS KL divergence: the floor any generator is judged against.

Reads the shared SPPARKS volumes in ../shared/data/spparks (not shipped with the package), splits
them into 26-connected grains and computes KL(group A ‖ group B) of the grain statistics for:

- training seeds 1001-1011 vs 1012-1018 + validation 1019-1023 (11 vs 12 volumes);
- validation 1019-1023 vs training 1001-1005, and vs training 1006-1010 (5 vs 5);
- single volumes: 1019..1023 each vs 1001 (1 vs 1), the noise of a one-volume comparison.

Prints the figures and the paper's Table 1 (r = 10) for comparison, writes
bench/results/stats_floor.json. Usage: python bench/stats_floor.py [--data DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))  # for provenance.py

from gp_engine.grains import split_grains  # noqa: E402
from gp_engine.stats import concat_stats, grain_stats, kl_divergences  # noqa: E402
from provenance import cores, cpu_name, header  # noqa: E402

PAPER_R10 = {"kl_volume": 0.056, "kl_aspect": 0.0384, "kl_centroid": 0.033}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "spparks"))
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "stats_floor.json"))
    args = ap.parse_args()
    data = Path(args.data)
    seeds = list(range(1001, 1024))
    t0 = time.time()
    per = {}
    for s in seeds:
        spins = np.load(data / f"potts_iso_100_seed{s}.npz")["spins"]
        per[s] = grain_stats(split_grains(spins))
    t_stats = (time.time() - t0) / len(seeds)
    print(f"grain statistics: {t_stats:.2f} s per 100^3 volume (split + stats)")

    def pooled(group):
        return concat_stats([per[s] for s in group])

    comparisons = [
        ("train 1001-1011 vs 1012-1023", list(range(1001, 1012)), list(range(1012, 1024))),
        ("val 1019-1023 vs train 1001-1005", list(range(1019, 1024)), list(range(1001, 1006))),
        ("val 1019-1023 vs train 1006-1010", list(range(1019, 1024)), list(range(1006, 1011))),
    ] + [(f"{s} vs 1001", [s], [1001]) for s in range(1019, 1024)]
    rows = []
    for name, ga, gb in comparisons:
        a, b = pooled(ga), pooled(gb)
        t = time.time()
        kl = kl_divergences(a, b)
        kl_log = kl_divergences(a, b, log_volume=True)["kl_volume"]
        row = {"comparison": name, "group_a": ga, "group_b": gb, "grains_a": int(a["volume"].size),
               "grains_b": int(b["volume"].size), "mean_volume_a": float(a["volume"].mean()),
               "mean_volume_b": float(b["volume"].mean()), **kl, "kl_log10_volume": kl_log,
               "kl_seconds": time.time() - t}
        rows.append(row)
        print(f"{name:36s} grains {row['grains_a']:6d}/{row['grains_b']:6d}  KL volume {kl['kl_volume']:.4f} "
              f"(log {kl_log:.4f})  aspect {kl['kl_aspect']:.4f}  centroid {kl['kl_centroid']:.4f}")
    singles = [r for r in rows if len(r["group_a"]) == 1]
    single_range = {k: [min(r[k] for r in singles), max(r[k] for r in singles)]
                    for k in ("kl_volume", "kl_aspect", "kl_centroid", "kl_log10_volume")}
    print("paper Table 1 (GrainPaint r=10 vs SPPARKS): " + ", ".join(f"{k} {v}" for k, v in PAPER_R10.items()))
    main_row = rows[0]
    ratios = {k: main_row[k] / v for k, v in PAPER_R10.items()}
    print("floor (11 vs 12 volumes) / paper r=10: " + ", ".join(f"{k} {v:.2f}" for k, v in ratios.items()))
    result = {
        **header("stats_floor", cuda=False, legacy_keys=True, device=f"CPU: {cpu_name()}", cores=cores()),
        "data": str(data),
        "method": "split_grains (26-conn) -> grain_stats -> kl_divergences (Gaussian KDE, Scott bandwidth, "
                  "grid 1024 (1D) / 128x128 (2D) over both samples + 3 kernel widths, eps 1e-10)",
        "seconds_per_volume_stats": t_stats,
        "comparisons": rows,
        "single_volume_range": single_range,
        "paper_table1_r10": PAPER_R10,
        "floor_over_paper_r10": ratios,
    }
    out = Path(args.out)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

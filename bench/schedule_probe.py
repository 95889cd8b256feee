"""Is the top of the schedule noise? What a model makes of x_t from real blocks and of pure noise.

For a built model (default: the shipped one) and timesteps near the top of its schedule, draws validation
blocks (SPPARKS 1019-1023, encoded as the model was trained), and compares the network's x̂0 from

* **data**: x_t = √ᾱ·x0 + √(1-ᾱ)·ε, what training shows it at t, and
* **noise**: x_t = ε, what a sampler starts from at the top,

by the correlation of x̂0 with the true x0, the standard deviation of x̂0 and the correlation of
neighbouring x̂0 values (spatial structure). If the model recovers x0 well from data x_t at the top, the
schedule never reaches noise for grain-sized structure: training never showed the network the start of
a walk, and the layout it paints is read off the starting noise.

    python bench/schedule_probe.py                      # the shipped model
    python bench/schedule_probe.py --model mymodel --name ext500

Writes bench/results/schedule_probe.{json,md} (rows accumulate per --name).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from datetime import date
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from quality_generate import SHARED, VALIDATION_SEEDS  # noqa: E402

RESULTS = ROOT / "bench" / "results"


def validation_blocks(encoding: dict, n: int, seed: int = 0, block: int = 32) -> np.ndarray:
    """``n`` random 32³ crops of the validation volumes, encoded like the model's training data."""
    from gp_engine.encoding import bits_encode, paper_encode, separable_encode
    from gp_engine.grains import split_grains

    def encode_block(ids, enc, rng):
        if enc["kind"] == "bits":
            return bits_encode(ids, int(enc["bits"]), rng)
        if enc["kind"] == "separable":
            return separable_encode(ids, int(enc["levels"]), rng)[None]
        return paper_encode(ids)[None]

    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        spins = np.load(SHARED / f"potts_iso_100_seed{VALIDATION_SEEDS[k % len(VALIDATION_SEEDS)]}.npz")["spins"]
        o = rng.integers(0, np.array(spins.shape) - block + 1)
        crop = spins[o[0]:o[0] + block, o[1]:o[1] + block, o[2]:o[2] + block]
        out.append(encode_block(split_grains(np.ascontiguousarray(crop)), encoding, rng))
    return np.stack(out).astype(np.float32)


def x0_figures(x0_hat: np.ndarray, x0: np.ndarray) -> dict:
    """corr(x̂0, x0), std of x̂0, share |x̂0| > 0.5, correlation of x-neighbours of x̂0."""
    a, b = x0_hat.ravel() - x0_hat.mean(), x0.ravel() - x0.mean()
    nb = np.corrcoef(x0_hat[..., 1:].ravel(), x0_hat[..., :-1].ravel())[0, 1]
    return {"corr_with_x0": float(a @ b / np.sqrt((a @ a) * (b @ b))), "std": float(x0_hat.std()),
            "share_committed": float((np.abs(x0_hat) > 0.5).mean()), "neighbour_corr": float(nb)}


def probe(model_dir: Path, timesteps: list[int] | None, blocks: int, seed: int = 0) -> dict:
    from gp_engine.diffusion import Schedule
    from gp_engine.runtime import load_engine, read_model

    path, manifest = read_model(model_dir)
    sched = Schedule.from_dict(manifest["schedule"])
    ab = sched.alphas_cumprod
    T = sched.T
    ts = timesteps or sorted({T - 1, int(0.8 * T), int(0.6 * T), 249, 150} & set(range(T)), reverse=True)
    eng = load_engine(path, "onnxruntime", blocks)
    x0 = validation_blocks(manifest["encoding"], blocks, seed)
    rng = np.random.default_rng(seed + 1)
    rows = []
    for t in ts:
        a, s = np.sqrt(ab[t]), np.sqrt(1 - ab[t])
        eps = rng.standard_normal(x0.shape).astype(np.float32)
        for kind, xt in (("data", a * x0 + s * eps), ("noise", eps)):
            e = eng.predict_eps(xt.astype(np.float32), np.full(blocks, t, np.float32))
            rows.append({"t": int(t), "sqrt_ab": float(a), "input": kind, **x0_figures((xt - s * e) / a, x0)})
    return {"model": manifest.get("name") or str(model_dir), "T": T, "alpha_bar_T": float(ab[-1]), "rows": rows}


def render_md(results: dict) -> str:
    lines = ["# Is the top of the schedule noise?", "",
             "`bench/schedule_probe.py`: the network's x̂0 from x_t of real validation blocks (`data`) and from "
             "pure noise (`noise`, where a walk starts). corr: correlation of x̂0 with the true x0; std and the "
             "share abs(x̂0) > 0.5: how much it commits; neighbour corr: spatial structure of x̂0.", ""]
    for name, r in results.items():
        lines += [f"## {name}: {r['model']} (T = {r['T']}, ᾱ_T = {r['alpha_bar_T']:.2g}; {r['date']}, commit "
                  f"{r['commit']})", "", "| t | √ᾱ | input | corr with x0 | std x̂0 | share abs(x̂0) > 0.5 | neighbour corr |",
                  "|---|---|---|---|---|---|---|"]
        for row in r["rows"]:
            lines.append(f"| {row['t']} | {row['sqrt_ab']:.3f} | {row['input']} | {row['corr_with_x0']:.3f} | "
                         f"{row['std']:.3f} | {row['share_committed']:.3f} | {row['neighbour_corr']:.3f} |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="built model folder (default: the shipped model)")
    p.add_argument("--name", default="shipped")
    p.add_argument("--t", type=int, nargs="*", help="timesteps (default: a few near the top)")
    p.add_argument("--blocks", type=int, default=4)
    a = p.parse_args(argv)
    from gp_engine.export.manifest import resolve_model

    res = probe(Path(resolve_model(a.model)), a.t, a.blocks)
    res["date"] = date.today().isoformat()
    res["commit"] = subprocess.run(["git", "rev-parse", "--short=8", "HEAD"], cwd=ROOT, capture_output=True,
                                   text=True).stdout.strip()
    path = RESULTS / "schedule_probe.json"
    allres = json.loads(path.read_text()) if path.is_file() else {}
    allres[a.name] = res
    path.write_text(json.dumps(allres, indent=1))
    (RESULTS / "schedule_probe.md").write_text(render_md(allres))
    print(render_md({a.name: res}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

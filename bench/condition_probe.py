"""Does a conditional model use what it is told? x̂0 error next to the known region, with and without it.

On validation SPPARKS blocks (1020) with planner-shaped masks (20-80 % known), at a few timesteps: the
mean squared error of x̂0 on unknown voxels within 2 voxels of a known one ("near") and more than 6
away ("far"), for

* the conditional model as it is sampled (its condition, and the known voxels of x_t clean or noisy by
  its convention),
* the same model told nothing (condition zeroed, every voxel of x_t noisy),
* the unconditional parent (``--parent``, default checkpoints/default_cpu.pt).

A model that uses its condition has a much lower near error with it than without; the far error
barely changes. Writes bench/results/condition_probe.json (rows accumulate).

    python bench/condition_probe.py checkpoints/gpu_conditional_mini.pt
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from provenance import header  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--parent", default=str(ROOT / "checkpoints" / "default_cpu.pt"))
    ap.add_argument("--blocks", type=int, default=24)
    ap.add_argument("--timesteps", type=int, nargs="+", default=[50, 150, 240])
    a = ap.parse_args(argv)
    import torch
    from scipy import ndimage

    from gp_engine.blocks import BlockSource, load_volume
    from gp_engine.checkpoint import load_model
    from gp_engine.conditional import make_cond_torch
    from gp_engine.diffusion import Schedule
    from gp_engine.train import MaskSampler

    torch.set_num_threads(1)
    model, ck = load_model(a.checkpoint)
    parent, _ = load_model(a.parent)
    clean = (ck.get("objective") or {}).get("known_in_xt") == "clean"
    enc = ck["encoding"]
    ab = torch.tensor(Schedule.from_dict(ck["schedule"]).alphas_cumprod, dtype=torch.float32)
    vol = ROOT.parent / "shared" / "data" / "spparks" / "potts_iso_100_seed1020.npz"
    src = BlockSource([load_volume(vol)], enc["kind"], enc.get("levels"), torch.device("cpu"), bits=enc.get("bits"))
    g = torch.Generator().manual_seed(1)
    x0 = src.sample(a.blocks, g, 0.5)
    known = MaskSampler(torch.device("cpu")).draw(a.blocks, g)
    frac = known.flatten(1).mean(1)
    keep = (frac > 0.2) & (frac < 0.8)
    x0, known = x0[keep], known[keep]
    dist = np.stack([ndimage.distance_transform_edt(~k) for k in known[:, 0].numpy().astype(bool)])
    near, far = torch.from_numpy((dist > 0) & (dist <= 2)), torch.from_numpy(dist > 6)
    rows = []
    for t in a.timesteps:
        sa, s1 = ab[t].sqrt(), (1 - ab[t]).sqrt()
        xt = sa * x0 + s1 * torch.randn(x0.shape, generator=g)
        tt = torch.full((x0.shape[0],), float(t))
        cond = make_cond_torch(x0, known)
        xin = torch.where(known > 0, x0, xt) if clean else xt
        with torch.no_grad():
            outs = {"with_condition": (model(xin, tt, cond), xin), "told_nothing": (model(xt, tt, torch.zeros_like(cond)), xt),
                    "parent": (parent(xt, tt), xt)}
        row = {"t": t}
        for name, (eps, x_in) in outs.items():
            err = (((x_in - s1 * eps) / sa - x0) ** 2).mean(1)
            row[name] = {"near": float(err[near].mean()), "far": float(err[far].mean())}
        rows.append(row)
        print(f"t={t}: " + ", ".join(f"{k} near {v['near']:.3f} far {v['far']:.3f}" for k, v in row.items() if k != "t"))
    out = ROOT / "bench" / "results" / "condition_probe.json"
    prev = json.loads(out.read_text()) if out.is_file() else []
    prev.append({**header("condition_probe", cuda=False), "checkpoint": a.checkpoint, "known_in_xt": "clean" if clean else "noisy",
                 "steps": ck.get("step"), "blocks": int(x0.shape[0]), "rows": rows})
    out.write_text(json.dumps(prev, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

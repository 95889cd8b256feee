"""Training precision on the CPU: is bf16 autocast faster here, and does it compute the same step?

Runs trainer steps of a real lineage (its raw weights, schedule, encoding and loss options from the
checkpoint) on real SPPARKS blocks, in fp32 and in bf16 autocast, from identical weights and batches:

* speed: s/step and blocks/s of each, and the bf16 / fp32 ratio measured in the same run;
* fidelity of one step: relative difference of the loss, and cosine similarity of the bf16 gradient
  with the fp32 one on the same batch (1.0 = the same direction), per batch.

`gp_engine.train.pick_precision("auto")` picks bf16 on a CPU only where it has AMX bf16 tiles
(`cpu_has_bf16_matrix_units`); elsewhere bf16 is emulated. Rows accumulate per CPU model.

    python bench/train_precision.py [--checkpoint checkpoints/mini3_ext500_cpu.pt] [--steps 4] [--threads 1]

Writes bench/results/train_precision.{json,md}.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

from gp_engine.blocks import BlockSource
from gp_engine.checkpoint import load_checkpoint
from gp_engine.diffusion import Schedule
from gp_engine.train import cpu_has_bf16_matrix_units, diffusion_loss, loss_options
from gp_engine.unet import build_unet, count_parameters

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/, for provenance.py
from bench_train import volumes  # noqa: E402
from provenance import header  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def source(encoding: dict) -> tuple[BlockSource, list[str]]:
    vols, names = volumes()  # bench_train's: two training volumes (the package's sample without ../shared)
    return BlockSource(vols, encoding["kind"], encoding.get("levels"), torch.device("cpu"),
                       bits=encoding.get("bits"), colouring=encoding.get("colouring", "dsatur")), names


def measure(ck: dict, src: BlockSource, batch: int, steps: int) -> dict:
    model = build_unet(ck["config"])
    model.load_state_dict(ck["model"])
    model.train()
    sched = Schedule.from_dict(ck["schedule"])
    ab = torch.tensor(sched.alphas_cumprod, dtype=torch.float32)
    sab, s1ab = ab.sqrt(), (1 - ab).sqrt()
    # the trainer's loss options for this lineage (unconditional, no self-conditioning: not handled here)
    _, opts = loss_options(ck["objective"], ck.get("prediction", "eps"))
    g = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(steps + 1):  # the first one warms both paths up
        x0 = src.sample(batch, g)
        t = torch.randint(0, sched.T, (batch,), generator=g)
        batches.append((x0, t, torch.randn(x0.shape, generator=g)))

    def run(prec: str, x0, t, noise):
        m = copy.deepcopy(model)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=prec == "bf16"):
            loss = diffusion_loss(m, x0, t, noise, sab, s1ab, **opts)
        loss.backward()
        return float(loss.detach()), torch.cat([p.grad.flatten().float() for p in m.parameters()])

    times = {"fp32": [], "bf16": []}
    rows = []
    prev = None
    for i, b in enumerate(batches):
        out = {}
        for prec in ("fp32", "bf16"):
            t0 = time.perf_counter()
            out[prec] = run(prec, *b)
            if i:
                times[prec].append(time.perf_counter() - t0)
        if i:
            (l32, g32), (l16, g16) = out["fp32"], out["bf16"]
            rows.append({"loss_fp32": l32, "loss_bf16": l16, "loss_rel_diff": abs(l16 - l32) / abs(l32),
                         "grad_cosine": float(torch.nn.functional.cosine_similarity(g32, g16, dim=0)),
                         "grad_norm_ratio": float(g16.norm() / g32.norm()),
                         # the scale of SGD's own noise: fp32 gradients of this batch and the previous one
                         "batch_to_batch_cosine": None if prev is None else
                         float(torch.nn.functional.cosine_similarity(g32, prev, dim=0))})
            prev = g32
    s32, s16 = (sum(times[p]) / len(times[p]) for p in ("fp32", "bf16"))
    return {"parameters": count_parameters(model), "step": int(ck.get("step", 0)), "batch_size": batch,
            "steps": steps, "s_per_step_fp32": s32, "s_per_step_bf16": s16,
            "blocks_per_s_fp32": batch / s32, "blocks_per_s_bf16": batch / s16, "speedup_bf16": s32 / s16,
            "min_grad_cosine": min(r["grad_cosine"] for r in rows),
            "mean_grad_cosine": sum(r["grad_cosine"] for r in rows) / len(rows),
            "max_loss_rel_diff": max(r["loss_rel_diff"] for r in rows),
            "mean_batch_to_batch_cosine": float(torch.tensor([r["batch_to_batch_cosine"] for r in rows[1:]]).mean())
            if len(rows) > 1 else None, "batches": rows}


def _f3(x: float | None) -> str:
    return "–" if x is None else f"{x:.3f}"


def write_md(rows: list[dict], path: Path) -> None:
    lines = ["# Training precision on the CPU: fp32 vs bf16 autocast (bench/train_precision.py)", "",
             "Trainer steps (forward + backward, no optimizer) of a real lineage from identical weights and "
             "batches of SPPARKS blocks. grad cosine: cosine similarity of the bf16 gradient with the fp32 "
             "one on the same batch; batch vs batch: the fp32 gradients of consecutive batches, the scale of SGD's own noise. `auto` precision picks bf16 on a CPU only where it has AMX bf16 tiles.", "",
             "| date | CPU | AMX bf16 | threads | checkpoint | batch | fp32 s/step | bf16 s/step | bf16 speed-up"
             " | grad cosine bf16 vs fp32 (min / mean) | grad cosine batch vs batch, fp32 | loss rel. diff (max) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        m = r["result"]
        lines.append(f"| {r['date'][:10]} | {r['device']['cpu']} | {'yes' if r['amx_bf16'] else 'no'} | "
                     f"{r['threads']} | {r['checkpoint']} (step {m['step']}) | {m['batch_size']} | "
                     f"{m['s_per_step_fp32']:.2f} | {m['s_per_step_bf16']:.2f} | {m['speedup_bf16']:.2f}× | "
                     f"{m['min_grad_cosine']:.3f} / {m['mean_grad_cosine']:.3f} | "
                     f"{_f3(m['mean_batch_to_batch_cosine'])} | {m['max_loss_rel_diff']:.1e} |")
    path.write_text("\n".join(lines) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", default=str(ROOT / "checkpoints" / "mini3_ext500_cpu.pt"))
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(RESULTS / "train_precision.json"))
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    ck = load_checkpoint(a.checkpoint)
    src, files = source(ck["encoding"])
    result = measure(ck, src, a.batch_size, a.steps)
    row = {**header("train_precision", cuda=False), "threads": a.threads, "amx_bf16": cpu_has_bf16_matrix_units(),
           "checkpoint": Path(a.checkpoint).name, "volumes": files, "result": result}
    out = Path(a.out)
    rows = json.loads(out.read_text())["rows"] if out.is_file() else []
    rows = [r for r in rows if r["device"]["cpu"] != row["device"]["cpu"] or r["threads"] != a.threads] + [row]
    out.write_text(json.dumps({"bench": "train_precision", "rows": rows}, indent=1) + "\n")
    write_md(rows, out.with_suffix(".md"))
    print(f"{row['device']['cpu']}, {a.threads} thread(s): fp32 {result['s_per_step_fp32']:.2f} s/step, "
          f"bf16 {result['s_per_step_bf16']:.2f} s/step ({result['speedup_bf16']:.2f}× fp32); grad cosine "
          f"min {result['min_grad_cosine']:.4f} (batch vs batch {_f3(result['mean_batch_to_batch_cosine'])}), loss rel. diff max {result['max_loss_rel_diff']:.1e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Training throughput: samples/s of the trainer step (tiny and small presets on CPU; small bf16 on CUDA
when available) and blocks/s of the data pipeline alone. Reads two training volumes from
../shared/data/spparks (falls back to the package's sample volume). Writes bench/results/train.json.

Baseline: the steering probe in NOTES.md fed an H100 at ~700 blocks/s with a per-sample crop loop
(32/64 channels, bf16, batch 64); the CUDA figures are reported as a ratio to it.

    python bench/bench_train.py [--steps 6] [--threads N] [--out bench/results/train.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

import torch

from gp_engine.blocks import BlockSource, default_levels, load_volume
from gp_engine.diffusion import linear_schedule
from gp_engine.train import diffusion_loss, ema_update
from gp_engine.unet import build_unet, count_parameters, preset_config

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/, for provenance.py
from provenance import header  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data" / "spparks"
H100_PROBE_BLOCKS_S = 700.0


def volumes() -> tuple[list, list[str]]:
    files = sorted(SHARED.glob("potts_iso_100_seed10*.npz"))[:2] if SHARED.is_dir() else []
    if not files:
        files = [ROOT / "gp_engine" / "data" / "potts_iso_100_seed1001.npz"]
    return [load_volume(f) for f in files], [f.name for f in files]


def bench_pipeline(src: BlockSource, batch: int, reps: int) -> float:
    g = torch.Generator(device=src.device).manual_seed(0)
    src.sample(batch, g)
    sync(src.device)
    t0 = time.perf_counter()
    for _ in range(reps):
        src.sample(batch, g)
    sync(src.device)
    return batch * reps / (time.perf_counter() - t0)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench_train_step(src: BlockSource, preset: str, batch: int, steps: int, precision: str = "fp32",
                     warmup: int = 2) -> dict:
    """Trainer steps of ``preset`` on ``src``'s blocks (as many channels as its encoding)."""
    dev = src.device
    torch.manual_seed(0)
    channels = src.bits or 1  # bits: one channel per bit; separable and paper: one
    cfg = {**preset_config(preset), "in_channels": channels, "out_channels": channels}
    model = build_unet(cfg).to(dev)
    ema = copy.deepcopy(model).requires_grad_(False)  # as the trainer: the EMA in the model's layout
    opt = torch.optim.AdamW(model.parameters(), lr=2e-4)
    ab = torch.tensor(linear_schedule().alphas_cumprod, dtype=torch.float32, device=dev)
    sab, s1ab = ab.sqrt(), (1 - ab).sqrt()
    g = torch.Generator(device=dev).manual_seed(0)
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)

    def step():
        x0 = src.sample(batch, g)
        t = torch.randint(0, 250, (batch,), device=dev, generator=g)
        noise = torch.randn(x0.shape, device=dev, generator=g)
        with torch.autocast(dev.type, dtype=amp, enabled=amp is not None):
            loss = diffusion_loss(model, x0, t, noise, sab, s1ab)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema_update(ema, model, 0.999)
        return loss

    for _ in range(warmup):
        step()
    sync(dev)
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = step()
    sync(dev)
    wall = time.perf_counter() - t0
    return {"preset": preset, "parameters": count_parameters(model), "batch_size": batch, "steps": steps,
            "precision": precision, "device": str(dev), "samples_per_s": batch * steps / wall,
            "s_per_step": wall / steps, "final_loss": float(loss.detach())}


def bench_default_model_ort(threads: int, reps: int = 5) -> dict:
    """ONNX Runtime CPU latency of the shipped default model (ms per block-evaluation) at batch 1 and 8:
    the figure that sizes the sampler's ``fast`` preset for the README demo."""
    import numpy as np

    from gp_engine.export.manifest import DEFAULT_MODEL_DIR, read_manifest
    from gp_engine.export.onnx_export import onnx_session

    m = read_manifest(None)
    sess = onnx_session(DEFAULT_MODEL_DIR / m["onnx"]["file"], threads=threads)
    out = {"model": m["name"], "threads": threads}
    channels = int(m["onnx"]["inputs"]["x"]["shape"][1])
    for b in (1, 8):
        x = np.random.default_rng(0).standard_normal((b, channels, 32, 32, 32)).astype(np.float32)
        t = np.full(b, 100.0, np.float32)
        sess.run(["eps"], {"x": x, "t": t})
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            sess.run(["eps"], {"x": x, "t": t})
            times.append(time.perf_counter() - t0)
        out[f"batch{b}_ms_per_call"] = 1e3 * float(np.median(times))
        out[f"batch{b}_ms_per_block"] = out[f"batch{b}_ms_per_call"] / b
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--cuda-steps", type=int, default=50)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "train.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    vols, names = volumes()
    results: dict = {"volumes": names, "cpu": [], "cuda": []}

    ort_lat = bench_default_model_ort(args.threads)
    results["default_model_onnxruntime_cpu"] = ort_lat
    print(f"default model ({ort_lat['model']}) onnxruntime CPU, {args.threads} threads: "
          f"{ort_lat['batch1_ms_per_block']:.1f} ms/block at batch 1, "
          f"{ort_lat['batch8_ms_per_block']:.1f} ms/block at batch 8")
    cpu = torch.device("cpu")
    src = BlockSource(vols, "separable", default_levels(), cpu)
    results["pipeline_cpu_blocks_per_s"] = bench_pipeline(src, 64, 4)
    results["pipeline_cpu_ratio_to_h100_probe"] = results["pipeline_cpu_blocks_per_s"] / H100_PROBE_BLOCKS_S
    print(f"pipeline (CPU, batch 64): {results['pipeline_cpu_blocks_per_s']:.0f} blocks/s "
          f"(x{results['pipeline_cpu_ratio_to_h100_probe']:.2f} the {H100_PROBE_BLOCKS_S:.0f} blocks/s the naive "
          "loop fed an H100: crops, symmetries and encoding are not the bottleneck even on 2 CPU cores)")
    bits = BlockSource(vols, "bits", 16, cpu, bits=4)
    r = bench_train_step(bits, "mini3", 8, args.steps)
    results["cpu"].append({**r, "encoding": "bits4"})
    print(f"train mini3 bits4 CPU fp32 batch 8 (the shipped model's configuration): {r['s_per_step']:.2f} s/step, "
          f"{args.threads} threads")
    for preset, batch in (("tiny", 8), ("small", 4)):
        r = bench_train_step(src, preset, batch, args.steps)
        r["ratio_to_h100_probe"] = r["samples_per_s"] / H100_PROBE_BLOCKS_S
        results["cpu"].append(r)
        print(f"train {preset:5s} CPU fp32 batch {batch}: {r['samples_per_s']:.2f} samples/s "
              f"({r['s_per_step']:.2f} s/step, {args.threads} threads; x{r['ratio_to_h100_probe']:.3f} "
              f"the H100 probe's {H100_PROBE_BLOCKS_S:.0f} blocks/s)")
    if torch.cuda.is_available():
        gpu = torch.device("cuda")
        gsrc = BlockSource(vols, "separable", default_levels(), gpu)
        results["pipeline_cuda_blocks_per_s"] = bench_pipeline(gsrc, 256, 20)
        print(f"pipeline (CUDA, batch 256): {results['pipeline_cuda_blocks_per_s']:.0f} blocks/s")
        r = bench_train_step(gsrc, "small", 64, args.cuda_steps, "bf16", warmup=5)
        r["ratio_to_h100_probe"] = r["samples_per_s"] / H100_PROBE_BLOCKS_S
        results["cuda"].append(r)
        print(f"train small CUDA bf16 batch 64: {r['samples_per_s']:.0f} samples/s "
              f"(x{r['ratio_to_h100_probe']:.2f} vs the {H100_PROBE_BLOCKS_S:.0f} blocks/s probe)")
    else:
        print("CUDA not available: GPU figures skipped")
    doc = {**header("train", cuda=True, legacy_keys=True), "torch": str(torch.__version__), **results}
    doc["device"]["threads"] = args.threads
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    os.replace(tmp, out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

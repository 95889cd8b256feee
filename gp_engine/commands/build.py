"""`gp-engine build model.pt --out DIR`: export a trained checkpoint to ONNX (+ TensorRT) with a manifest."""

from __future__ import annotations

import argparse


def _batch_sizes(text: str) -> list[int]:
    try:
        sizes = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--batch-sizes must be integers separated by commas, got {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"--batch-sizes must be positive integers, got {text!r}")
    return sizes


def register(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "build", help="export a trained checkpoint to a runnable model directory",
        description="Export a checkpoint's EMA weights to DIR/model.onnx (checked against torch with "
                    "onnxruntime), write DIR/manifest.json and DIR/model.pt, and with --tensorrt build one "
                    "TensorRT engine per batch size (skipped with a message when tensorrt is missing). "
                    "A DIR that already holds a built model is replaced only with --force.")
    p.add_argument("checkpoint", help="model.pt written by 'gp-engine train'")
    p.add_argument("--out", default="model", help="output directory (default ./model)")
    p.add_argument("--batch-sizes", type=_batch_sizes, default=[1, 16, 64],
                   help="comma-separated batch sizes (default 1,16,64)")
    p.add_argument("--precision", choices=["fp32", "fp16"], default="fp32",
                   help="compute precision of the graph; I/O stays float32 (default fp32)")
    p.add_argument("--tensorrt", action="store_true", help="also build TensorRT engines model_b{B}.plan")
    batch = p.add_mutually_exclusive_group()
    batch.add_argument("--dynamic-batch", dest="dynamic_batch", action="store_true", default=True,
                       help="ONNX with a dynamic batch axis (default)")
    batch.add_argument("--static-batch", dest="dynamic_batch", action="store_false",
                       help="ONNX with a fixed batch (needs exactly one --batch-sizes value)")
    p.add_argument("--opset", type=int, choices=[18, 19, 20], default=18, help="ONNX opset (default 18)")
    p.add_argument("--exporter", choices=["legacy", "dynamo"], default="legacy",
                   help="torch.onnx exporter (default legacy: faster, same op set)")
    p.add_argument("--weights", choices=["ema", "model"], default="ema", help="which weights (default ema)")
    p.add_argument("--name", help="model name for the manifest")
    p.add_argument("--placeholder", action="store_true", default=None,
                   help="mark the model as a stand-in (e.g. CPU-trained) in the manifest")
    p.add_argument("--sharpen-x0", type=float, default=None, metavar="K",
                   help="the x̂0 sharpening κ plans get unless they name one (default: 4 for analog bits on "
                        "a schedule whose top is not noise, else 0)")
    p.add_argument("--min-size", type=int, default=None, metavar="N",
                   help="analog-bits models: `auto` segmentation refills clusters under N voxels unless a plan "
                        "names segmentation.min_size (default 80; the shipped v6 uses 20: "
                        "pick it with bench/segmentation_compare.py on the model's fields)")
    p.add_argument("--force", action="store_true",
                   help="replace a model already in --out (the new files are written first; the "
                        "checkpoint being built is never overwritten)")
    return p


def run(args) -> int:
    from ..export import build_model

    m = build_model(args.checkpoint, args.out, batch_sizes=args.batch_sizes, precision=args.precision,
                    tensorrt=args.tensorrt, dynamic_batch=args.dynamic_batch, opset=args.opset,
                    weights=args.weights, name=args.name, placeholder=args.placeholder, exporter=args.exporter,
                    force=args.force, sharpen_x0=args.sharpen_x0,
                    min_size=args.min_size)
    print(f"built {m['name']} in {args.out}")
    return 0

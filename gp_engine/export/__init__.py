"""Trainer checkpoint -> deployable model directory (``gp-engine build``).

- ``manifest``        the manifest.json of a built model (no torch: the runtime reads it)
- ``onnx_export``     U-Net -> model.onnx (fp32, or fp16 compute with fp32 I/O), checked against torch
- ``tensorrt_build``  model.onnx -> one TensorRT engine per batch size, when ``tensorrt`` is installed

Importing this package imports no torch (``build_model`` imports it when called).
"""

from __future__ import annotations

import os
from pathlib import Path


def build_model(checkpoint: str | os.PathLike, out_dir: str | os.PathLike, batch_sizes: list[int] = (1, 16, 64),
                precision: str = "fp32", tensorrt: bool = False, dynamic_batch: bool = True,
                opset: int | None = None, weights: str = "ema", name: str | None = None,
                placeholder: bool | None = None, exporter: str = "legacy", log=print) -> dict:
    """Write out_dir/{model.onnx, manifest.json, model.pt, loss_curve.png[, model_b*.plan]}; return the manifest.

    The ONNX graph is checked against the torch model on random inputs (relative error recorded in the
    manifest's ``verification``); ``placeholder`` defaults to the checkpoint's training metadata.
    """
    import torch

    from ..checkpoint import export_copy, load_model, save_checkpoint
    from ..errors import GPEngineError
    from ..train import plot_loss_curve
    from .manifest import FORMAT, FORMAT_VERSION, sha256_file, write_manifest
    from .onnx_export import DEFAULT_OPSET, check_standard_ops, compare_with_torch, export_onnx
    from .tensorrt_build import build_engines

    batch_sizes = sorted({int(b) for b in batch_sizes})
    if not batch_sizes or batch_sizes[0] < 1:
        raise GPEngineError(f"--batch-sizes must be positive integers, got {batch_sizes}")
    if not dynamic_batch and len(batch_sizes) != 1:
        raise GPEngineError("a static-batch ONNX export holds one batch size; give exactly one --batch-sizes "
                            "value or use --dynamic-batch")
    model, ckpt = load_model(checkpoint, "cpu", weights=weights)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    onnx_path = out / "model.onnx"
    log(f"gp-engine build: exporting ONNX ({precision}) to {onnx_path}")
    onnx_info = export_onnx(model, onnx_path, precision=precision, dynamic_batch=dynamic_batch,
                            batch=batch_sizes[0], opset=opset or DEFAULT_OPSET, exporter=exporter)
    check_standard_ops(onnx_path)
    rel = compare_with_torch(model, onnx_path, batch=2 if dynamic_batch else batch_sizes[0])
    tol = 1e-4 if precision == "fp32" else 1e-2
    if not rel < tol:
        raise GPEngineError(f"the exported ONNX model disagrees with torch (relative error {rel:.2e} >= {tol}); "
                            "try --precision fp32 or the other exporter")
    log(f"gp-engine build: onnxruntime vs torch relative error {rel:.2e} (tolerance {tol})")
    onnx_info["sha256"] = sha256_file(onnx_path)

    trt_info = build_engines(onnx_path, out, batch_sizes, fp16=precision == "fp16", log=log,
                             channels=int(ckpt["config"].get("in_channels", 1))) if tensorrt else None
    if not tensorrt:
        log("gp-engine build: TensorRT engines not requested (add --tensorrt on a GPU machine)")

    save_checkpoint(out / "model.pt", export_copy(ckpt))
    meta = dict(ckpt.get("training") or {})
    history = meta.pop("history", None) or {}
    if history.get("train"):
        plot_loss_curve(history, out / "loss_curve.png",
                        f"{ckpt['config'].get('preset')} {ckpt['encoding']['kind']}: {meta.get('steps')} steps")
    elif (out / "loss_curve.png").exists():
        os.unlink(out / "loss_curve.png")
    meta.pop("options", None)
    for key in ("train_files", "val_files"):  # file names only: the manifest travels to other machines
        meta[key] = [Path(f).name for f in meta.get(key, [])]
    is_placeholder = bool(meta.get("placeholder", False)) if placeholder is None else bool(placeholder)
    enc = ckpt["encoding"]
    preset = ckpt["config"].get("preset") or "custom"
    target = ckpt.get("prediction", "eps")
    default_name = (f"{preset}-{enc['kind']}{enc.get('levels') or ''}{'' if target == 'eps' else '-' + target}"
                    f"-{meta.get('steps', 0)}steps")
    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "name": name or (default_name + ("-cpu-placeholder" if is_placeholder else "")),
        "block_size": 32, "schedule": ckpt["schedule"],
        # the ONNX graph outputs ε whatever the network was trained on (parameterization.EpsAdapter)
        "prediction": "eps", "target": ckpt.get("prediction", "eps"),
        "objective": ckpt.get("objective") or {"loss": "mse", "weighting": "uniform", "crop": 32},
        "encoding": {"kind": enc["kind"], "levels": enc.get("levels"),
                     **({"bits": enc["bits"]} if enc.get("bits") else {})},
        "onnx": onnx_info, "batch_sizes": batch_sizes, "precision": precision,
        "tensorrt": trt_info, "checkpoint": "model.pt", "weights": weights,
        "unet": ckpt["config"], "training": meta, "placeholder": is_placeholder,
        "verification": {"onnxruntime_vs_torch_rel_err": rel, "tolerance": tol},
        "torch": str(torch.__version__),
    }
    write_manifest(out, manifest)
    log(f"gp-engine build: wrote {out}/manifest.json")
    return manifest


__all__ = ["build_model"]

"""Trainer checkpoint -> deployable model directory (``gp-engine build``).

- ``manifest``        the manifest.json of a built model (no torch: the runtime reads it)
- ``onnx_export``     U-Net -> model.onnx (fp32, or fp16 compute with fp32 I/O), checked against torch
- ``tensorrt_build``  model.onnx -> one TensorRT engine per batch size, when ``tensorrt`` is installed

Importing this package imports no torch (``build_model`` imports it when called).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

#: the files ``build_model`` writes into a model folder, besides the TensorRT plans ``model_b<B>.plan``
BUILD_FILES = ("manifest.json", "model.onnx", "model.pt", "loss_curve.png")


def existing_build_files(out_dir: str | os.PathLike) -> list[Path]:
    """The files of a built model already in ``out_dir``: what a new build would replace or remove."""
    out = Path(out_dir)
    if not out.is_dir():
        return []
    found = [out / n for n in BUILD_FILES if (out / n).exists() or (out / n).is_symlink()]
    return found + sorted(out.glob("model_b*.plan"))


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist
        return a.resolve() == b.resolve()


def _check_out_dir(checkpoint: Path, out: Path, batch_sizes: list[int], force: bool) -> list[Path]:
    """Refuse to overwrite: the checkpoint being built (ever) or an existing model (without ``force``).

    Returns the existing build files of ``out`` (replaced or removed once the new build is in place).
    """
    from ..errors import GPEngineError
    from .tensorrt_build import plan_name

    if out.exists() and not out.is_dir():
        raise GPEngineError(f"--out {out} is a file, not a folder; choose a folder for the built model")
    existing = existing_build_files(out)
    targets = [out / n for n in BUILD_FILES] + [out / plan_name(b) for b in batch_sizes] + existing
    if checkpoint.exists() and any(_same_file(checkpoint, t) for t in targets):
        raise GPEngineError(f"{checkpoint} is the checkpoint being built: building into {out} would replace it "
                            "with an EMA-only copy and lose its optimizer state (so 'gp-engine train --resume' "
                            f"could not continue it); choose another --out, e.g. --out {out / 'built'}")
    if existing and not force:
        names = ", ".join(p.name for p in existing)
        raise GPEngineError(f"{out} already holds a built model ({names}); add --force to replace it (the new "
                            "files are written first) or choose another --out")
    return existing


def _install(staging: Path, out: Path, existing: list[Path]) -> None:
    """Move the staged files into ``out`` one by one (manifest.json last), then remove stale old files."""
    produced = sorted((p.name for p in staging.iterdir() if p.is_file()),
                      key=lambda n: (n == "manifest.json", n))
    for name in produced:
        os.replace(staging / name, out / name)
    for old in existing:  # e.g. plans of other batch sizes, a loss curve the new checkpoint has no data for
        if old.name not in produced:
            old.unlink(missing_ok=True)


def build_model(checkpoint: str | os.PathLike, out_dir: str | os.PathLike, batch_sizes: list[int] = (1, 16, 64),
                precision: str = "fp32", tensorrt: bool = False, dynamic_batch: bool = True,
                opset: int | None = None, weights: str = "ema", name: str | None = None,
                placeholder: bool | None = None, exporter: str = "legacy", log=print,
                force: bool = False, sharpen_x0: float | None = None, min_size: int | None = None) -> dict:
    """Write out_dir/{model.onnx, manifest.json, model.pt, loss_curve.png[, model_b*.plan]}; return the manifest.

    The ONNX graph is checked against the torch model on random inputs (relative error recorded in the
    manifest's ``verification``); ``placeholder`` defaults to the checkpoint's training metadata;
    ``sharpen_x0`` (the sampler's x̂0 sharpening κ when a plan names none) defaults to
    :func:`gp_engine.generate.default_sharpen` of the checkpoint's encoding and schedule; ``min_size``
    (the clusters ``auto`` segmentation refills, analog-bits models only; choose it with
    bench/segmentation_compare.py on the model's fields) to ``gp_engine.generate.AUTO_BITS_MIN_SIZE``.

    Overwriting: a folder that already holds any of those files is refused unless ``force``; the
    checkpoint being built is never overwritten (refused even with ``force``). The new files are built
    in a hidden staging folder ``out_dir/.build-XXXX`` and moved into place one by one (manifest.json
    last); old files the new build does not produce are removed after that. A failed build leaves
    ``out_dir`` as it was.
    """
    from ..errors import GPEngineError, require

    purpose = f"building a model from the trainer checkpoint {checkpoint}"
    torch = require("torch", "train", purpose)
    require("onnx", "train", purpose)
    if exporter == "dynamo":
        require("onnxscript", "train", "the dynamo ONNX exporter (--exporter dynamo)")

    from ..checkpoint import load_model

    batch_sizes = sorted({int(b) for b in batch_sizes})
    if not batch_sizes or batch_sizes[0] < 1:
        raise GPEngineError(f"--batch-sizes must be positive integers, got {batch_sizes}")
    if not dynamic_batch and len(batch_sizes) != 1:
        raise GPEngineError("a static-batch ONNX export holds one batch size; give exactly one --batch-sizes "
                            "value or use --dynamic-batch")
    if sharpen_x0 is not None and not 0.0 <= float(sharpen_x0) <= 100.0:
        raise GPEngineError(f"--sharpen-x0 {sharpen_x0:g} is out of range; give a number from 0 (off) to 100")
    if min_size is not None and (int(min_size) != min_size or min_size < 1):
        raise GPEngineError(f"--min-size {min_size} is not a positive whole number of voxels; give e.g. --min-size 20")
    out = Path(out_dir)
    existing = _check_out_dir(Path(checkpoint), out, batch_sizes, force)
    model, ckpt = load_model(checkpoint, "cpu", weights=weights)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".build-", dir=out))
    try:
        manifest = _build_into(staging, out, model, ckpt, str(torch.__version__), batch_sizes=batch_sizes,
                               precision=precision, tensorrt=tensorrt, dynamic_batch=dynamic_batch,
                               opset=opset, weights=weights, name=name, placeholder=placeholder,
                               exporter=exporter, log=log, sharpen_x0=sharpen_x0, min_size=min_size)
        _install(staging, out, existing)
        staging.rmdir()
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if created:
            with contextlib.suppress(OSError):
                out.rmdir()
        raise
    log(f"gp-engine build: wrote {out}/manifest.json")
    return manifest


def _build_into(staging: Path, out: Path, model, ckpt: dict, torch_version: str, *, batch_sizes: list[int],
                precision: str, tensorrt: bool, dynamic_batch: bool, opset: int | None, weights: str,
                name: str | None, placeholder: bool | None, exporter: str, log,
                sharpen_x0: float | None = None, min_size: int | None = None) -> dict:
    """Write every file of the built model into ``staging`` (messages name their final place in ``out``)."""
    from ..checkpoint import export_copy, save_checkpoint
    from ..errors import GPEngineError
    from ..train import plot_loss_curve
    from .manifest import FORMAT, FORMAT_VERSION, sha256_file, write_manifest
    from .onnx_export import DEFAULT_OPSET, check_standard_ops, compare_with_torch, export_onnx
    from .tensorrt_build import build_engines

    onnx_path = staging / "model.onnx"
    log(f"gp-engine build: exporting ONNX ({precision}) to {out / onnx_path.name}")
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

    trt_info = build_engines(onnx_path, staging, batch_sizes, fp16=precision == "fp16", log=log,
                             channels=int(ckpt["config"].get("in_channels", 1)),
                             cond_channels=int(ckpt["config"].get("cond_channels", 0) or 0),
                             self_cond=bool(ckpt["config"].get("self_cond", False))) if tensorrt else None
    if not tensorrt:
        log("gp-engine build: TensorRT engines not requested (add --tensorrt on a GPU machine)")

    save_checkpoint(staging / "model.pt", export_copy(ckpt))
    meta = dict(ckpt.get("training") or {})
    history = meta.pop("history", None) or {}
    if history.get("train"):
        plot_loss_curve(history, staging / "loss_curve.png",
                        f"{ckpt['config'].get('preset')} {ckpt['encoding']['kind']}: {meta.get('steps')} steps")
    meta.pop("options", None)
    for key in ("train_files", "val_files"):  # file names only: the manifest travels to other machines
        meta[key] = [Path(f).name for f in meta.get(key, [])]
    is_placeholder = bool(meta.get("placeholder", False)) if placeholder is None else bool(placeholder)
    enc = ckpt["encoding"]
    preset = ckpt["config"].get("preset") or "custom"
    target = ckpt.get("prediction", "eps")
    from ..conditional import model_kind
    from ..generate import AUTO_BITS_MIN_SIZE, default_sharpen

    kind = model_kind(ckpt["config"])
    if sharpen_x0 is None:
        sharpen_x0 = default_sharpen(enc["kind"], ckpt["schedule"])
    default_name = (f"{'conditional-' if kind == 'conditional' else ''}{preset}-{enc['kind']}{enc.get('levels') or ''}{'' if target == 'eps' else '-' + target}"
                    f"-{meta.get('steps', 0)}steps")
    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "name": name or (default_name + ("-cpu-placeholder" if is_placeholder else "")),
        "block_size": 32, "schedule": ckpt["schedule"],
        # conditional: the graph takes a third input "cond" (known values and mask) and is sampled with
        # the preset "conditional"; absent in older manifests = unconditional
        "model_kind": kind,
        # the ONNX graph outputs ε whatever the network was trained on (parameterization.EpsAdapter)
        "prediction": "eps", "target": ckpt.get("prediction", "eps"),
        "objective": ckpt.get("objective") or {"loss": "mse", "weighting": "uniform", "crop": 32},
        "encoding": {"kind": enc["kind"], "levels": enc.get("levels"),
                     **({"bits": enc["bits"]} if enc.get("bits") else {}),
                     **({"colouring": enc["colouring"]} if enc.get("colouring") else {})},
        # what a plan that names no sampler setting gets for this model (generate.model_sharpen)
        "sampler_defaults": {"sharpen_x0": float(sharpen_x0)},
        # what `auto` segmentation refills for this model (generate.model_min_size; analog bits only)
        **({"segmentation_defaults": {"min_size": int(AUTO_BITS_MIN_SIZE if min_size is None else min_size)}}
           if enc["kind"] == "bits" else {}),
        "onnx": onnx_info, "batch_sizes": batch_sizes, "precision": precision,
        "tensorrt": trt_info, "checkpoint": "model.pt", "checkpoint_sha256": sha256_file(staging / "model.pt"),
        "weights": weights,
        "unet": ckpt["config"], "training": meta, "placeholder": is_placeholder,
        "verification": {"onnxruntime_vs_torch_rel_err": rel, "tolerance": tol},
        "torch": torch_version,
    }
    write_manifest(staging, manifest)
    return manifest


__all__ = ["BUILD_FILES", "build_model", "existing_build_files"]

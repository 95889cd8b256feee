"""Trainer checkpoints (``model.pt``): one dict saved with torch.save, written atomically.

Layout (format_version 1)::

    format          "gp-engine-checkpoint"
    format_version  1
    config          U-Net config dict (gp_engine.unet)
    schedule        Schedule.to_dict()
    prediction      what the network predicts: "eps" | "x0" | "v" (gp_engine.parameterization)
    objective       {"loss": "mse"|"l1", "weighting": "uniform"|"min-snr", "gamma", "crop"} (absent in
                    older checkpoints: mse, uniform, 32)
    encoding        {"kind": "separable"|"paper", "levels": K or None}
    ema             EMA state_dict (the weights that are exported by default)
    model           raw model state_dict (None in an EMA-only export copy)
    optimizer       AdamW state_dict (None in an export copy)
    scaler          GradScaler state_dict or None
    rng             {"generator": ByteTensor, "device": str}: the pipeline/noise generator state
    step            optimizer steps done
    training        metadata: train/val files, steps, samples seen, wall time, device, final losses,
                    loss history, trainer options
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import torch

from .atomic_write import atomic_open
from .errors import GPEngineError

FORMAT = "gp-engine-checkpoint"
FORMAT_VERSION = 1


def save_checkpoint(path: str | os.PathLike, ckpt: dict) -> Path:
    """Atomically write ``ckpt`` (tmp file in the same folder, then os.replace)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ckpt = {"format": FORMAT, "format_version": FORMAT_VERSION, **ckpt}
    with atomic_open(path, "wb") as f:
        torch.save(ckpt, f)
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Read and validate a gp-engine checkpoint; GPEngineError for a missing/foreign/newer file."""
    path = Path(path)
    if not path.is_file():
        raise GPEngineError(f"checkpoint {path} does not exist; train one with 'gp-engine train --out {path}'")
    try:
        with open(path, "rb") as f:
            data = f.read()
        ckpt = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as exc:  # unpickling errors come in many types
        raise GPEngineError(f"{path} is not a readable gp-engine checkpoint ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0][:200] if str(exc) else ''}); give a model.pt "
                            "written by 'gp-engine train'") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        what = "a plain state_dict" if isinstance(ckpt, dict) and ckpt and all(
            isinstance(v, torch.Tensor) for v in ckpt.values()) else f"a {type(ckpt).__name__}"
        raise GPEngineError(f"{path} is {what}, not a gp-engine checkpoint (no format "
                            f"{FORMAT!r}); give a model.pt written by 'gp-engine train'")
    v = ckpt.get("format_version")
    if not isinstance(v, int) or v < 1:
        raise GPEngineError(f"{path}: checkpoint format_version {v!r} is invalid")
    if v > FORMAT_VERSION:
        raise GPEngineError(f"{path} has checkpoint format_version {v}, newer than this gp-engine "
                            f"supports ({FORMAT_VERSION}); upgrade gp-engine")
    missing = [k for k in ("config", "schedule", "encoding", "ema") if ckpt.get(k) is None]
    if missing:
        raise GPEngineError(f"{path}: checkpoint lacks {', '.join(missing)}; it is truncated or foreign")
    return ckpt


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu", weights: str = "ema"
               ) -> tuple[torch.nn.Module, dict]:
    """(ε-predicting module in eval mode on ``device`` with the EMA (or raw ``"model"``) weights, checkpoint).

    A network trained on x₀ or v comes wrapped in :class:`gp_engine.parameterization.EpsAdapter`, so
    what the exporter and the torch backend run always outputs ε.
    """
    from .diffusion import Schedule
    from .parameterization import EpsAdapter, check_target
    from .unet import build_unet

    ckpt = load_checkpoint(path)
    if weights not in ("ema", "model") or ckpt.get(weights) is None:
        raise GPEngineError(f"{path} has no {weights!r} weights; use weights='ema'")
    model = build_unet(ckpt["config"])
    try:
        model.load_state_dict(ckpt[weights])
    except RuntimeError as exc:
        raise GPEngineError(f"{path}: weights do not match the stored U-Net config ({exc}); the file is corrupt") from None
    target = ckpt.get("prediction", "eps")
    try:
        check_target(target)
    except GPEngineError:
        raise GPEngineError(f"{path}: prediction {target!r} is unknown to this gp-engine (eps, x0, v); "
                            "upgrade gp-engine") from None
    if target != "eps":
        model = EpsAdapter(model, target, Schedule.from_dict(ckpt["schedule"]).alphas_cumprod)
    return model.to(device).eval(), ckpt


def export_copy(ckpt: dict) -> dict:
    """EMA-only copy for a built model directory: no raw weights, optimizer or RNG state (smaller)."""
    keep = {k: v for k, v in ckpt.items() if k not in ("model", "optimizer", "scaler", "rng", "format",
                                                          "format_version")}
    keep["model"] = None
    keep["optimizer"] = None
    return keep


__all__ = ["FORMAT", "FORMAT_VERSION", "save_checkpoint", "load_checkpoint", "load_model", "export_copy"]

"""The manifest of a built model directory: what the runtime needs to run ``model.onnx``.

A built model directory holds ``manifest.json``, ``model.onnx``, optionally ``model.pt`` (the EMA
checkpoint, for the torch-CUDA backend) and ``model_b{B}.plan`` TensorRT engines. This module is plain
Python + json (no torch, no onnx): generation on CPU reads manifests with onnxruntime only.

manifest.json keys (format_version 1)::

    format          "gp-engine-model"
    format_version  1
    name            free text (e.g. "tiny-separable12-cpu-placeholder")
    block_size      32
    schedule        Schedule.to_dict(): {"kind": "linear", "T", "beta_start", "beta_end"}
    prediction      "eps": what the ONNX graph outputs (always ε; the samplers rely on it)
    target          what the network was trained to predict: "eps" | "x0" | "v" (converted to ε inside
                    the graph); absent in older manifests = "eps"
    objective       {"loss", "weighting", "gamma", "crop"} of training (informational)
    encoding        {"kind": "separable"|"paper"|"bits", "levels": K or null, "bits": B (bits only)}
    onnx            {"file": "model.onnx", "opset": int, "dynamic_batch": bool, "sha256": hex,
                     "inputs": {"x": {"shape": [B, 1, 32, 32, 32], "dtype": "float32"},
                                "t": {"shape": [B], "dtype": "float32"}},   # B = "batch" if dynamic
                     "output": "eps"}
    batch_sizes     [int, ...]
    precision       "fp32" | "fp16"   (the ONNX graph's compute precision; I/O is always float32)
    tensorrt        null or {"plans": {"<B>": "model_b<B>.plan"}, "precision": ...}
    checkpoint      "model.pt" or null
    unet            the U-Net config dict (informational)
    training        {"train_files", "val_files", "steps", "samples_seen", "wall_time_s", "device",
                     "final_train_loss", "final_val_loss", ...}
    placeholder     bool: true for a CPU-trained stand-in model
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from ..atomic_write import atomic_open
from ..errors import GPEngineError

FORMAT = "gp-engine-model"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent.parent / "models" / "default"

_REQUIRED = ("format", "format_version", "block_size", "schedule", "prediction", "encoding", "onnx",
             "batch_sizes", "precision")


def resolve_model(path: str | os.PathLike | None = None) -> Path:
    """Built model directory for ``path``: None -> the shipped default; a manifest.json -> its folder.

    Raises GPEngineError when there is no manifest there (e.g. a trainer checkpoint was given).
    """
    if path is None:
        model_dir = DEFAULT_MODEL_DIR
    else:
        p = Path(path).expanduser()
        if p.is_file() and p.name == MANIFEST_NAME:
            model_dir = p.parent
        elif p.is_file() and p.suffix == ".pt":
            raise GPEngineError(f"{p} is a trainer checkpoint, not a built model; run "
                                f"'gp-engine build {p} --out DIR' and pass DIR")
        elif p.is_dir():
            model_dir = p
        else:
            raise GPEngineError(f"model {p} does not exist; give a directory made by 'gp-engine build' "
                                "(or omit it for the shipped default model)")
    if not (model_dir / MANIFEST_NAME).is_file():
        raise GPEngineError(f"{model_dir} has no {MANIFEST_NAME}; build a model into it with "
                            "'gp-engine build model.pt --out DIR'")
    return model_dir


def validate_manifest(m: dict, where: str = "manifest") -> dict:
    """Check the fields the runtime relies on; return ``m`` unchanged or raise GPEngineError."""
    if not isinstance(m, dict):
        raise GPEngineError(f"{where} must be a JSON object, got {type(m).__name__}")
    if m.get("format") != FORMAT:
        raise GPEngineError(f"{where} is not a gp-engine model manifest (format={m.get('format')!r}, "
                            f"expected {FORMAT!r}); rebuild it with 'gp-engine build'")
    missing = [k for k in _REQUIRED if k not in m]
    if missing:
        raise GPEngineError(f"{where} lacks the field(s) {', '.join(missing)}; rebuild it with 'gp-engine build'")
    v = m["format_version"]
    if not isinstance(v, int) or v < 1:
        raise GPEngineError(f"{where}: format_version {v!r} is invalid (expected an integer >= 1)")
    if v > FORMAT_VERSION:
        raise GPEngineError(f"{where} has format_version {v}, newer than this gp-engine supports "
                            f"({FORMAT_VERSION}); upgrade gp-engine")
    if m["block_size"] != 32:
        raise GPEngineError(f"{where}: block_size {m['block_size']!r} is not supported (only 32)")
    if m["prediction"] != "eps":
        raise GPEngineError(f"{where}: prediction {m['prediction']!r} is not supported (only 'eps')")
    if m.get("target", "eps") not in ("eps", "x0", "v"):
        raise GPEngineError(f"{where}: target {m.get('target')!r} is unknown (eps, x0, v); upgrade gp-engine")
    enc = m["encoding"]
    if not isinstance(enc, dict) or enc.get("kind") not in ("separable", "paper", "bits"):
        raise GPEngineError(f"{where}: encoding {enc!r} must be {{'kind': 'separable'|'bits'|'paper', 'levels': K}}")
    if enc["kind"] == "bits":
        b = enc.get("bits")
        if not (isinstance(b, int) and 1 <= b <= 8 and enc.get("levels") == 1 << b):
            raise GPEngineError(f"{where}: bits encoding needs an integer 'bits' in 1..8 and 'levels' = 2^bits, "
                                f"got {enc!r}")
    if enc["kind"] == "separable" and not (isinstance(enc.get("levels"), int) and enc["levels"] >= 2):
        raise GPEngineError(f"{where}: separable encoding needs an integer 'levels' >= 2, got {enc.get('levels')!r}")
    sched = m["schedule"]
    if not isinstance(sched, dict) or not {"T", "beta_start", "beta_end"} <= set(sched):
        raise GPEngineError(f"{where}: schedule {sched!r} needs T, beta_start, beta_end")
    onnx = m["onnx"]
    if not isinstance(onnx, dict) or not isinstance(onnx.get("file"), str):
        raise GPEngineError(f"{where}: onnx must be an object with a 'file' name")
    bs = m["batch_sizes"]
    if not (isinstance(bs, list) and bs and all(isinstance(b, int) and b >= 1 for b in bs)):
        raise GPEngineError(f"{where}: batch_sizes {bs!r} must be a non-empty list of positive integers")
    if m["precision"] not in ("fp32", "fp16"):
        raise GPEngineError(f"{where}: precision {m['precision']!r} must be 'fp32' or 'fp16'")
    trt = m.get("tensorrt")
    if trt is not None and not (isinstance(trt, dict) and isinstance(trt.get("plans"), dict)):
        raise GPEngineError(f"{where}: tensorrt must be null or {{'plans': {{'<B>': file}}}}")
    return m


def read_manifest(model_dir: str | os.PathLike | None = None) -> dict:
    """Read and validate ``<model_dir>/manifest.json`` (None = the shipped default model)."""
    d = resolve_model(model_dir)
    path = d / MANIFEST_NAME
    try:
        m = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise GPEngineError(f"{path} is not valid JSON ({exc}); rebuild the model with 'gp-engine build'") from None
    except OSError as exc:
        raise GPEngineError(f"cannot read {path}: {exc}") from None
    validate_manifest(m, str(path))
    onnx_file = d / m["onnx"]["file"]
    if not onnx_file.is_file():
        raise GPEngineError(f"{path} names {m['onnx']['file']} but {onnx_file} is missing; rebuild the model")
    return m


def write_manifest(model_dir: str | os.PathLike, manifest: dict) -> Path:
    """Validate and atomically write ``<model_dir>/manifest.json``."""
    validate_manifest(manifest, "manifest to write")
    d = Path(model_dir)
    d.mkdir(parents=True, exist_ok=True)
    path = d / MANIFEST_NAME
    with atomic_open(path, "w") as f:
        json.dump(manifest, f, indent=2, sort_keys=False)
        f.write("\n")
    return path


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file (the manifest records the ONNX file's, to detect a mismatched copy)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


__all__ = ["FORMAT", "FORMAT_VERSION", "MANIFEST_NAME", "DEFAULT_MODEL_DIR", "resolve_model",
           "validate_manifest", "read_manifest", "write_manifest", "sha256_file"]

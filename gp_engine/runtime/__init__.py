"""Inference backends behind one small protocol.

``load_engine(model_dir, backend="auto", batch_size=...)`` returns an object with

* ``predict_eps(x [B,1,32,32,32] float32, t [B] float32) -> np.ndarray`` for the engine's fixed
  ``batch_size`` B (callers pad partial batches: big fixed batches keep compiled engines and CUDA
  graphs static),
* ``batch_size`` and ``name``,
* optionally ``sample_batch(x0, mask, block_ids, seed, setup, on_step)`` when the backend runs the
  whole RePaint step itself (torch-cuda: one CUDA graph per step kind). Otherwise
  :func:`gp_engine.repaint.sample_batch` drives ``predict_eps`` with the numba CPU kernels.

``auto`` picks torch-cuda (CUDA available and a ``model.pt``: the whole sampler step stays on the
device, captured in CUDA graphs), else tensorrt (module + plan files in the manifest: the network on the
GPU, the step arithmetic on the host, two transfers and a sync per step), else onnxruntime.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from ..errors import GPEngineError
from ..repaint import EpsModel

BACKENDS = ("auto", "onnxruntime", "torch-cuda", "tensorrt")


#: what a backend provides: the sampler's protocol (one definition, in gp_engine.repaint)
Engine = EpsModel


def read_model(model_dir) -> tuple[Path, dict]:
    """Resolve a model directory and read its validated manifest (engineer C's module)."""
    try:
        from ..export.manifest import read_manifest, resolve_model
    except ImportError:  # exporter not installed in this tree: plain read of manifest.json
        path = Path(model_dir) if model_dir is not None else None
        if path is None or not (path / "manifest.json").is_file():
            raise GPEngineError(f"no model manifest at {path}/manifest.json; build a model with "
                                "'gp-engine build' or pass a model directory") from None
        return path, json.loads((path / "manifest.json").read_text())
    path = resolve_model(model_dir)
    return Path(path), read_manifest(path)


def _cuda_available() -> bool:
    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return bool(torch.cuda.is_available())


def choose_backend(model_dir: Path, manifest: dict, backend: str = "auto",
                   batch_size: int | None = None) -> str:
    """Resolve ``auto`` to a concrete backend name; validate explicit choices.

    ``auto``: torch-cuda first (the whole step on the device), TensorRT only without a torch
    checkpoint and when a plan exists for ``batch_size`` (any plan if None), else onnxruntime.
    """
    if backend not in BACKENDS:
        raise GPEngineError(f"backend {backend!r} is unknown; use one of {', '.join(BACKENDS)}")
    if backend != "auto":
        return backend
    if not _cuda_available():
        return "onnxruntime"
    if manifest.get("checkpoint") and (model_dir / manifest["checkpoint"]).is_file():
        return "torch-cuda"
    trt = manifest.get("tensorrt") or {}
    plans = trt.get("plans") or {}
    has_plan = bool(plans) if batch_size is None else str(batch_size) in plans
    if has_plan and importlib.util.find_spec("tensorrt") is not None:
        return "tensorrt"
    return "onnxruntime"


def load_engine(model_dir=None, backend: str = "auto", batch_size: int = 1,
                precision: str | None = None, device: str | None = None) -> Engine:
    """Load a model directory on the chosen backend with a fixed batch size."""
    if int(batch_size) < 1:
        raise GPEngineError(f"batch size {batch_size} must be ≥ 1")
    path, manifest = read_model(model_dir)
    name = choose_backend(path, manifest, backend, int(batch_size))
    if name == "onnxruntime":
        from .onnx_backend import OnnxEngine

        return OnnxEngine(path, manifest, int(batch_size))
    if name == "torch-cuda":
        from ..errors import require

        require("torch", "train", "backend torch-cuda")
        from .torch_backend import TorchEngine

        return TorchEngine.from_model_dir(path, manifest, int(batch_size), device=device or "cuda",
                                          precision=precision)
    from .tensorrt_backend import TensorRTEngine

    return TensorRTEngine(path, manifest, int(batch_size))

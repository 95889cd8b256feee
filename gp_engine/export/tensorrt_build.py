"""model.onnx -> TensorRT engines, one per batch size (``model_b{B}.plan``), when ``tensorrt`` imports.

Each engine has a single optimisation profile with min = opt = max = the batch size (static shapes let
TensorRT pick its fastest 3D-conv tactics, and the sampler runs fixed batches anyway). Without the
``tensorrt`` module (or without a GPU) the build is skipped with a message saying why; the ONNX model
and the other backends keep working.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..atomic_write import atomic_open
from ..errors import GPEngineError

BLOCK = 32


def tensorrt_status() -> tuple[bool, str]:
    """(available, reason): whether ``import tensorrt`` works and a CUDA device is visible."""
    try:
        import tensorrt as trt  # noqa: F401
    except Exception as exc:  # ImportError, or a broken CUDA install raising OSError
        return False, (f"the 'tensorrt' Python module is not importable ({type(exc).__name__}: {exc}); "
                       "install it (pip install 'gp-engine[tensorrt]') on a machine with an NVIDIA GPU")
    try:
        import torch

        if not torch.cuda.is_available():
            return False, "tensorrt is installed but no CUDA GPU is visible"
    except ImportError:
        pass
    return True, f"tensorrt {trt.__version__}"


def profile_shapes(batch_size: int, block: int = BLOCK, channels: int = 1,
                   cond_channels: int = 0, self_cond: bool = False) -> dict[str, tuple[tuple[int, ...], ...]]:
    """The (min, opt, max) shapes requested for each input of the engine for ``batch_size``
    (a conditional model's ``cond`` input when ``cond_channels`` > 0, a self-conditioning model's
    ``x0_prev`` when ``self_cond``)."""
    if batch_size < 1:
        raise GPEngineError(f"TensorRT batch size must be >= 1, got {batch_size}")
    x = (batch_size, int(channels), block, block, block)
    t = (batch_size,)
    out = {"x": (x, x, x), "t": (t, t, t)}
    if cond_channels:
        c = (batch_size, int(cond_channels), block, block, block)
        out["cond"] = (c, c, c)
    if self_cond:
        out["x0_prev"] = (x, x, x)
    return out


def plan_name(batch_size: int) -> str:
    return f"model_b{batch_size}.plan"


def build_engines(onnx_path: str | os.PathLike, out_dir: str | os.PathLike, batch_sizes: list[int],
                  fp16: bool = False, workspace_gib: float = 4.0, block: int = BLOCK,
                  log=print, channels: int = 1, cond_channels: int = 0, self_cond: bool = False) -> dict | None:
    """Build one engine per batch size; return the manifest's ``tensorrt`` section, or None if skipped."""
    ok, reason = tensorrt_status()
    if not ok:
        log(f"gp-engine build: TensorRT engines skipped: {reason}")
        return None
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    out_dir = Path(out_dir)
    plans: dict[str, str] = {}
    for b in batch_sizes:
        builder = trt.Builder(logger)
        network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(onnx_path)):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise GPEngineError(f"TensorRT could not parse {onnx_path}: {errors}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
        if fp16:
            config.set_flag(trt.BuilderFlag.FP16)
        profile = builder.create_optimization_profile()
        for name, (mn, opt, mx) in profile_shapes(b, block, channels, cond_channels, self_cond).items():
            profile.set_shape(name, mn, opt, mx)
        config.add_optimization_profile(profile)
        log(f"gp-engine build: building TensorRT engine for batch {b} ({'fp16' if fp16 else 'fp32'})...")
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise GPEngineError(f"TensorRT failed to build an engine for batch {b}; see the log above")
        path = out_dir / plan_name(b)
        with atomic_open(path, "wb") as f:
            f.write(bytes(serialized))
        plans[str(b)] = path.name
    return {"plans": plans, "precision": "fp16" if fp16 else "fp32", "version": trt.__version__}


__all__ = ["tensorrt_status", "profile_shapes", "plan_name", "build_engines"]

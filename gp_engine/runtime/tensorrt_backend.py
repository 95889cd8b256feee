"""TensorRT backend: runs the serialized engine (``*.plan``) built for the requested batch size.

The manifest lists plans per batch size: ``"tensorrt": {"plans": {"64": "model_b64.plan"}}``. Device
buffers are torch CUDA tensors (torch is already a dependency of the CUDA path), bound by name with
the TensorRT ≥ 10 tensor API and run with ``execute_async_v3`` on torch's current stream.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import GPEngineError
from ..self_cond import check_x0_prev


def plan_for_batch(manifest: dict, batch_size: int) -> str:
    """File name of the plan compiled for ``batch_size``; clear error listing the available ones."""
    plans = (manifest.get("tensorrt") or {}).get("plans") or {}
    if str(batch_size) not in plans:
        have = ", ".join(sorted(plans, key=int)) or "none"
        raise GPEngineError(f"no TensorRT plan for batch size {batch_size} (available: {have}); "
                            "use --batch-size with one of those, or --backend torch-cuda")
    return plans[str(batch_size)]


class TensorRTEngine:
    """``predict_eps`` through a deserialized TensorRT engine with fixed batch size."""

    def __init__(self, model_dir: Path, manifest: dict, batch_size: int):
        try:
            import tensorrt as trt
            import torch
        except ImportError as exc:
            raise GPEngineError(f"backend tensorrt needs the tensorrt and torch modules ({exc}); "
                                "install gp-engine[tensorrt] or use --backend torch-cuda") from None
        if not torch.cuda.is_available():
            raise GPEngineError("backend tensorrt needs a CUDA GPU; use --backend onnxruntime")
        from ..export.manifest import model_file

        path = model_file(model_dir, plan_for_batch(manifest, batch_size), f"tensorrt.plans['{batch_size}']")
        if not path.is_file():
            raise GPEngineError(f"TensorRT plan {path} is missing; rebuild with 'gp-engine build'")
        self.torch, self.batch_size = torch, int(batch_size)
        logger = trt.Logger(trt.Logger.WARNING)
        runtime = trt.Runtime(logger)
        self.engine = runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise GPEngineError(f"TensorRT could not deserialize {path} (built for another TensorRT "
                                "version or GPU?); rebuild the plan on this machine")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self.x_name = "x" if "x" in inputs else inputs[0]
        self.t_name = "t" if "t" in inputs else inputs[1]
        self.out_name = outputs[0]
        block = int(manifest.get("block_size", 32))
        channels = int(((manifest.get("onnx") or {}).get("inputs") or {}).get("x", {}).get("shape", [0, 1])[1])
        shape = (self.batch_size, channels, block, block, block)
        self.context.set_input_shape(self.x_name, shape)
        self.context.set_input_shape(self.t_name, (self.batch_size,))
        self.x = torch.zeros(shape, device="cuda")
        self.t = torch.zeros(self.batch_size, device="cuda")
        self.out = torch.zeros(shape, device="cuda",
                               dtype=torch.float16 if self.engine.get_tensor_dtype(self.out_name)
                               == trt.DataType.HALF else torch.float32)
        self.cond_name = "cond" if "cond" in inputs else None
        self.conditional = self.cond_name is not None
        bufs = [(self.x_name, self.x), (self.t_name, self.t), (self.out_name, self.out)]
        if self.conditional:  # known values and mask (gp_engine.conditional)
            cshape = (self.batch_size, int(self.engine.get_tensor_shape(self.cond_name)[1]), block, block, block)
            self.context.set_input_shape(self.cond_name, cshape)
            self.cond = torch.zeros(cshape, device="cuda")
            bufs.append((self.cond_name, self.cond))
        self.self_cond = "x0_prev" in inputs
        if self.self_cond:  # the previous estimate of x0 (gp_engine.self_cond)
            self.context.set_input_shape("x0_prev", shape)
            self.x0_prev = torch.zeros(shape, device="cuda")
            bufs.append(("x0_prev", self.x0_prev))
        for name, buf in bufs:
            self.context.set_tensor_address(name, buf.data_ptr())
        prec = (manifest.get("tensorrt") or {}).get("precision") or "fp32"
        self.name = f"tensorrt-{prec}-b{self.batch_size}"

    def predict_eps(self, x: np.ndarray, t: np.ndarray, cond: np.ndarray | None = None,
                    x0_prev: np.ndarray | None = None) -> np.ndarray:
        torch, b = self.torch, x.shape[0]
        if b > self.batch_size:
            raise GPEngineError(f"batch of {b} blocks exceeds the engine batch size {self.batch_size}")
        if (cond is None) == self.conditional:
            raise GPEngineError("the model's condition input does not match the sampler (conditional model "
                                "needs the preset 'conditional', and the reverse)")
        check_x0_prev(x0_prev, self.self_cond)
        if cond is not None:
            self.cond.zero_()
            self.cond[:b].copy_(torch.from_numpy(np.ascontiguousarray(cond, np.float32)))
        if x0_prev is not None:
            self.x0_prev.zero_()
            self.x0_prev[:b].copy_(torch.from_numpy(np.ascontiguousarray(x0_prev, np.float32)))
        self.x.zero_()
        self.x[:b].copy_(torch.from_numpy(np.ascontiguousarray(x, np.float32)))
        self.t.fill_(float(t[0]))
        self.t[:b].copy_(torch.from_numpy(np.ascontiguousarray(t, np.float32)))
        stream = torch.cuda.current_stream()
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise GPEngineError("TensorRT execution failed; try --backend torch-cuda")
        stream.synchronize()
        return self.out[:b].float().cpu().numpy()

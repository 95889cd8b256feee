"""onnxruntime backend: CPU everywhere, CUDA execution provider when onnxruntime-gpu is present."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import GPEngineError
from ..self_cond import check_x0_prev


def session_providers(available: list[str], prefer_cuda: bool = True) -> list:
    """CUDA EP first when present (cuDNN conv search HEURISTIC: the default can pick a slow path)."""
    if prefer_cuda and "CUDAExecutionProvider" in available:
        return [("CUDAExecutionProvider", {"cudnn_conv_algo_search": "HEURISTIC"}),
                "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class OnnxEngine:
    """``predict_eps`` on an ONNX model with a fixed batch size (partial batches are padded)."""

    def __init__(self, model_dir: Path, manifest: dict, batch_size: int,
                 threads: int | None = None, prefer_cuda: bool = True):
        import onnxruntime as ort

        from ..export.manifest import verify_model_file

        onnx_info = {"file": "model.onnx", **(manifest.get("onnx") or {})}
        # inside the model folder, present, and the bytes the manifest recorded (sha256; cached)
        path = verify_model_file(model_dir, {**manifest, "onnx": onnx_info}, "onnx")
        self.batch_size = int(batch_size)
        self.block = int(manifest.get("block_size", 32))
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        n = threads or int(os.environ.get("GP_ENGINE_THREADS", "0")) or (os.cpu_count() or 1)
        opts.intra_op_num_threads = n
        opts.inter_op_num_threads = 1
        # one thread pool at a time: the sampler's numba kernels run between network calls, so the
        # intra-op pool must not spin on the cores after a run (bench/results/ort_options.json: with
        # another process on the 2 cores, 8.12 vs 7.91 block-evaluations/s, non-network share 7.2 vs 7.9 %)
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(
                str(path), opts, providers=session_providers(ort.get_available_providers(), prefer_cuda))
        except Exception as exc:  # onnxruntime raises its own exception types
            raise GPEngineError(f"onnxruntime could not load {path}: {exc}; rebuild the model") from None
        inputs = {i.name: i for i in self.session.get_inputs()}
        self.x_name = "x" if "x" in inputs else list(inputs)[0]
        self.t_name = "t" if "t" in inputs else list(inputs)[1]
        self.out_name = self.session.get_outputs()[0].name
        # a conditional model's third input: known values and mask (gp_engine.conditional)
        self.cond_name = "cond" if "cond" in inputs else None
        self.conditional = self.cond_name is not None
        # a self-conditioning model's last input: its previous estimate of x0 (gp_engine.self_cond)
        self.self_cond = "x0_prev" in inputs
        dim0 = inputs[self.x_name].shape[0]
        if isinstance(dim0, int) and dim0 != self.batch_size:
            raise GPEngineError(f"{path} has a fixed batch of {dim0}, not {self.batch_size}; "
                                f"use --batch-size {dim0} or export with a dynamic batch")
        self.name = "onnxruntime-" + self.session.get_providers()[0].replace("ExecutionProvider", "").lower()
        # Pad partial batches to the fixed size where shapes must be static (fixed-batch export,
        # GPU provider); on CPU a dynamic-batch model just runs the real rows (padding would
        # multiply the cost of the many 1-block batches of small boxes).
        self.pad = not isinstance(dim0, str) and dim0 is not None or self.name != "onnxruntime-cpu"

    def predict_eps(self, x: np.ndarray, t: np.ndarray, cond: np.ndarray | None = None,
                    x0_prev: np.ndarray | None = None) -> np.ndarray:
        b = x.shape[0]
        if b > self.batch_size:
            raise GPEngineError(f"batch of {b} blocks exceeds the engine batch size {self.batch_size}")
        if (cond is None) == self.conditional:
            raise GPEngineError("this model is conditional: it needs the known values and mask (sampler preset "
                                "'conditional')" if self.conditional else
                                "this model is unconditional: it takes no condition; use a RePaint preset")
        check_x0_prev(x0_prev, self.self_cond)
        if b < self.batch_size and self.pad:  # big fixed batches: pad with zeros
            pad = self.batch_size - b
            x = np.concatenate([x, np.zeros((pad,) + x.shape[1:], np.float32)])
            t = np.concatenate([t, np.full(pad, t[0] if b else 0, np.float32)])
            if cond is not None:
                cond = np.concatenate([cond, np.zeros((pad,) + cond.shape[1:], np.float32)])
            if x0_prev is not None:
                x0_prev = np.concatenate([x0_prev, np.zeros((pad,) + x0_prev.shape[1:], np.float32)])
        feeds = {self.x_name: np.ascontiguousarray(x, np.float32), self.t_name: np.ascontiguousarray(t, np.float32)}
        if cond is not None:
            feeds[self.cond_name] = np.ascontiguousarray(cond, np.float32)
        if x0_prev is not None:
            feeds["x0_prev"] = np.ascontiguousarray(x0_prev, np.float32)
        out = self.session.run([self.out_name], feeds)[0]
        return out[:b]

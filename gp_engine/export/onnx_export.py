"""U-Net -> ONNX (standard ops only), fp32 or fp16 compute with float32 inputs/outputs, and its check.

GroupNorm is exported at opset 18 by torch's exporter as Reshape + InstanceNormalization (+ affine
Mul/Add): standard ops that TensorRT and onnxruntime run; there is no opset-21 GroupNormalization (on
which TensorRT failed) and no custom domain. :func:`graph_ops` lists what a graph contains so tests
can assert it.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..atomic_write import atomic_path
from ..errors import GPEngineError
from ..self_cond import call_net

DEFAULT_OPSET = 18
BLOCK = 32


class ExportWrapper(nn.Module):
    """forward(x float32 [B,C,n,n,n], t float32 [B], *extra) -> eps float32, computing in ``dtype`` inside.

    ``extra`` holds the model's further inputs in order: ``cond`` (conditional models) then ``x0_prev``
    (self-conditioning models), float32 like ``x``.
    """

    def __init__(self, model: nn.Module, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.model = model.to(dtype).eval()
        self.dtype = dtype
        self.has_cond = bool(model_cond_channels(model))
        self.has_x0_prev = model_self_cond(model)

    def forward(self, x: torch.Tensor, t: torch.Tensor, *extra: torch.Tensor) -> torch.Tensor:
        extra = [e.to(self.dtype) for e in extra]
        cond = extra.pop(0) if self.has_cond else None
        x0_prev = extra.pop(0) if self.has_x0_prev else None
        return call_net(self.model, x.to(self.dtype), t, cond, x0_prev).float()


def export_onnx(model: nn.Module, path: str | os.PathLike, precision: str = "fp32",
                dynamic_batch: bool = True, batch: int = 1, opset: int = DEFAULT_OPSET,
                block: int = BLOCK, exporter: str = "legacy") -> dict:
    """Write ``path`` (atomically) and return the manifest's ``onnx`` section (without sha256).

    ``exporter``: "legacy" (TorchScript-based, fast, default) or "dynamo" (torch.export based); both give
    the same standard op set here. fp16 exports a half copy of the model with fp32 I/O casts.
    """
    if precision not in ("fp32", "fp16"):
        raise GPEngineError(f"precision {precision!r} is unknown; use fp32 or fp16")
    if not 18 <= opset <= 20:
        raise GPEngineError(f"ONNX opset {opset} is not supported; use 18..20 (TensorRT fails on opset-21 GroupNorm)")
    import copy

    dtype = torch.float16 if precision == "fp16" else torch.float32
    wrapper = ExportWrapper(copy.deepcopy(model).cpu(), dtype)
    ch, cc, sc = model_channels(model), model_cond_channels(model), model_self_cond(model)
    x = torch.randn(batch, ch, block, block, block)
    t = torch.full((batch,), 10.0)
    # a conditional model takes the known values and mask (gp_engine.conditional), a self-conditioning
    # one its previous estimate of x0 (gp_engine.self_cond)
    args = (x, t) + ((torch.rand(batch, cc, block, block, block).round(),) if cc else ()) \
        + ((torch.rand(batch, ch, block, block, block) * 2 - 1,) if sc else ())
    names = ["x", "t"] + (["cond"] if cc else []) + (["x0_prev"] if sc else [])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, suffix=".onnx") as tmp_path:
        tmp = str(tmp_path)
        try:
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")
                if exporter == "legacy":
                    axes = ({n: {0: "batch"} for n in names + ["eps"]}) if dynamic_batch else None
                    torch.onnx.export(wrapper, args, tmp, input_names=names, output_names=["eps"],
                                      opset_version=opset, dynamic_axes=axes, dynamo=False,
                                      do_constant_folding=True)
                elif exporter == "dynamo":
                    shapes = None
                    if dynamic_batch:
                        b = torch.export.Dim("batch", min=1, max=4096)
                        shapes = {n: {0: b} for n in names}
                    torch.onnx.export(wrapper, args, tmp, input_names=names, output_names=["eps"],
                                      opset_version=opset, dynamic_shapes=shapes, dynamo=True, verbose=False)
                else:
                    raise GPEngineError(f"exporter {exporter!r} is unknown; use legacy or dynamo")
            _inline_external_data(tmp)
        except BaseException:
            if os.path.exists(tmp + ".data"):  # the dynamo exporter's side file (atomic_path removes tmp)
                os.unlink(tmp + ".data")
            raise
    b = "batch" if dynamic_batch else int(batch)
    return {"file": path.name, "opset": int(opset), "dynamic_batch": bool(dynamic_batch),
            "inputs": {"x": {"shape": [b, ch, block, block, block], "dtype": "float32"},
                       "t": {"shape": [b], "dtype": "float32"},
                       **({"cond": {"shape": [b, cc, block, block, block], "dtype": "float32"}} if cc else {}),
                       **({"x0_prev": {"shape": [b, ch, block, block, block], "dtype": "float32"}} if sc else {})},
            "output": "eps", "exporter": exporter}


def model_channels(model: nn.Module) -> int:
    """Input channels of a U-Net (or an adapter around one): 1, or B for analog bits."""
    return int((getattr(model, "config", None) or {}).get("in_channels", 1))


def model_cond_channels(model: nn.Module) -> int:
    """Condition channels of a conditional U-Net (0: unconditional)."""
    return int((getattr(model, "config", None) or {}).get("cond_channels", 0) or 0)


def model_self_cond(model: nn.Module) -> bool:
    """True for a self-conditioning U-Net (it takes ``x0_prev``)."""
    return bool((getattr(model, "config", None) or {}).get("self_cond", False))


def _inline_external_data(path: str) -> None:
    """Keep the model in one file (the dynamo exporter may write weights to path + '.data')."""
    side = path + ".data"
    if os.path.exists(side):
        import onnx

        m = onnx.load(path)
        onnx.save_model(m, path, save_as_external_data=False)
        os.unlink(side)


def graph_ops(path: str | os.PathLike) -> dict[str, int]:
    """Op type counts of an ONNX graph, keyed "domain::op" for non-default domains."""
    import collections

    import onnx

    g = onnx.load(str(path)).graph
    return dict(collections.Counter(n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}::{n.op_type}"
                                    for n in g.node))


def check_standard_ops(path: str | os.PathLike) -> None:
    """GPEngineError when the graph holds a custom-domain op or a GroupNormalization node."""
    ops = graph_ops(path)
    bad = [op for op in ops if "::" in op or op == "GroupNormalization"]
    if bad:
        raise GPEngineError(f"{path} contains non-portable ops {bad}; export at opset 18-20 with the legacy exporter")


def onnx_session(path: str | os.PathLike, threads: int = 1):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def compare_with_torch(model: nn.Module, onnx_path: str | os.PathLike, batch: int = 2, seed: int = 0,
                       block: int = BLOCK, reference_dtype: torch.dtype = torch.float32) -> float:
    """max |onnx - torch| / max |torch| on random inputs (torch fp32 reference, CPU)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, model_channels(model), block, block, block, generator=g)
    t = torch.randint(0, 250, (batch,), generator=g).float()
    cc = model_cond_channels(model)
    import copy

    ref_model = copy.deepcopy(model).cpu().to(reference_dtype).eval()
    feeds = {"x": x.numpy(), "t": t.numpy()}
    cond = x0_prev = None
    if cc:  # known values where a random mask is set, the mask in the last channel
        from ..conditional import make_cond

        known = torch.rand(batch, 1, block, block, block, generator=g) < 0.5
        cond = torch.from_numpy(make_cond(torch.randn(batch, cc - 1, block, block, block, generator=g).numpy(),
                                          known.numpy()))
        feeds["cond"] = cond.numpy()
        cond = cond.to(reference_dtype)
    if model_self_cond(model):  # an estimate of x0 in [-1, 1]
        x0_prev = torch.rand(x.shape, generator=g) * 2 - 1
        feeds["x0_prev"] = x0_prev.numpy()
        x0_prev = x0_prev.to(reference_dtype)
    with torch.no_grad():
        ref = call_net(ref_model, x.to(reference_dtype), t, cond, x0_prev).float().numpy()
    out = onnx_session(onnx_path).run(["eps"], feeds)[0]
    return float(np.abs(out - ref).max() / max(np.abs(ref).max(), 1e-12))


__all__ = ["DEFAULT_OPSET", "ExportWrapper", "model_channels", "model_cond_channels", "model_self_cond", "export_onnx", "graph_ops", "check_standard_ops",
           "onnx_session", "compare_with_torch"]

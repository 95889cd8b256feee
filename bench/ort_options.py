"""onnxruntime on the CPU: does reduced precision or a session option pay, for our 3D U-Net?

Same input, same session settings otherwise, ratios within one run (a shared machine moves absolute
times, much less the ratios):

* precision: the shipped model's fp32 graph vs an fp16 build (``gp-engine build --precision fp16``,
  fp32 inputs/outputs) vs onnxruntime's dynamic int8 quantization (``quantize_dynamic``, QInt8 weights):
  ms per block-evaluation and max relative error of ε against fp32 on the same input. A variant that
  is not faster, or whose ε is off by more than 1 %, is not worth a KL measurement;
* thread hand-off: the sampler alternates onnxruntime (intra-op pool) with numba kernels; with
  spinning on (onnxruntime's default) the pool's idle threads keep the cores busy after each run. The
  share of a sampler step outside the network, with ``session.intra_op.allow_spinning`` 1 and 0.

    python bench/ort_options.py [--threads 2] [--batch 8]

Writes bench/results/ort_options.json (device, date, commit).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from provenance import header  # noqa: E402


def session(path, threads: int, spinning: bool = True):
    import onnxruntime as ort

    o = ort.SessionOptions()
    o.intra_op_num_threads = threads
    o.inter_op_num_threads = 1
    o.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    o.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    return ort.InferenceSession(str(path), o, providers=["CPUExecutionProvider"])


def time_calls(sess, feeds, calls: int) -> tuple[float, np.ndarray]:
    out = sess.run(None, feeds)[0]
    ts = []
    for _ in range(calls):
        t0 = time.perf_counter()
        sess.run(None, feeds)
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts)), out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--calls", type=int, default=5)
    a = ap.parse_args(argv)
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from gp_engine.export import build_model
    from gp_engine.generate import _channels
    from gp_engine.runtime import read_model

    model_dir, manifest = read_model(None)
    ch = _channels(manifest)
    rng = np.random.default_rng(0)
    feeds = {"x": rng.normal(size=(a.batch, ch, 32, 32, 32)).astype(np.float32),
             "t": np.full(a.batch, 100.0, np.float32)}
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        build_model(model_dir / "model.pt", tmp / "fp16", batch_sizes=[a.batch], precision="fp16", log=lambda *_: None)
        quantize_dynamic(str(model_dir / "model.onnx"), str(tmp / "int8.onnx"), weight_type=QuantType.QInt8)
        ref_s, ref = time_calls(session(model_dir / "model.onnx", a.threads), feeds, a.calls)
        for name, path in (("fp32", model_dir / "model.onnx"), ("fp16", tmp / "fp16" / "model.onnx"),
                           ("int8-dynamic", tmp / "int8.onnx")):
            s, out = time_calls(session(path, a.threads), feeds, a.calls)
            rows[name] = {"ms_per_block_eval": 1e3 * s / a.batch, "speed_vs_fp32": ref_s / s,
                          "max_rel_err_vs_fp32": float(np.abs(out - ref).max() / np.abs(ref).max())}
            print(f"{name:>13}: {rows[name]}", flush=True)
        # thread hand-off: sampler step overhead share with spinning on / off
        sys.path.insert(0, str(ROOT / "bench"))
        from regress import time_sampler

        from gp_engine.runtime.onnx_backend import OnnxEngine

        spin = {}
        for spinning in (True, False):
            eng = OnnxEngine(model_dir, manifest, a.batch, threads=a.threads)
            eng.session = session(model_dir / "model.onnx", a.threads, spinning)
            figs = time_sampler(eng, manifest, a.batch, 3, 6)
            spin["on" if spinning else "off"] = {f["label"].rsplit("/", 1)[-1]: f["value"] for f in figs}
            print(f"spinning {'on ' if spinning else 'off'}: {spin['on' if spinning else 'off']}", flush=True)
    res = {**header("ort_options", cuda=False), "model": manifest.get("name"), "threads": a.threads,
           "batch": a.batch, "precision": rows, "spinning": spin}
    out = ROOT / "bench" / "results" / "ort_options.json"
    out.write_text(json.dumps(res, indent=1) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

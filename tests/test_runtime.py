"""Runtime backends: onnxruntime engine, torch sampler math (CPU) vs the numba sampler, CUDA graphs."""

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from gp_engine import repaint
from gp_engine.diffusion import linear_schedule
from gp_engine.errors import GPEngineError
from gp_engine.runtime import choose_backend, load_engine

onnx = pytest.importorskip("onnx")
torch = pytest.importorskip("torch")


def tiny_weights(seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.normal(0, 0.2, (1, 1, 3, 3, 3)).astype(np.float32), np.array([0.05], np.float32)


def build_tiny_onnx(path: Path, seed: int = 0) -> None:
    """ε(x, t) = 0.3·tanh(conv3(x)) + 0.001·t, as a hand-made ONNX graph with a dynamic batch."""
    from onnx import TensorProto, helper, numpy_helper

    w, b = tiny_weights(seed)
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1] * 6),
        helper.make_node("Tanh", ["c"], ["th"]),
        helper.make_node("Mul", ["th", "k03"], ["a"]),
        helper.make_node("Reshape", ["t", "shape5"], ["t5"]),
        helper.make_node("Mul", ["t5", "k0001"], ["tb"]),
        helper.make_node("Add", ["a", "tb"], ["eps"]),
    ]
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b"),
             numpy_helper.from_array(np.array(0.3, np.float32), "k03"),
             numpy_helper.from_array(np.array(0.001, np.float32), "k0001"),
             numpy_helper.from_array(np.array([-1, 1, 1, 1, 1], np.int64), "shape5")]
    graph = helper.make_graph(
        nodes, "tiny_eps",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 1, 32, 32, 32]),
         helper.make_tensor_value_info("t", TensorProto.FLOAT, ["B"])],
        [helper.make_tensor_value_info("eps", TensorProto.FLOAT, ["B", 1, 32, 32, 32])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


class TinyTorch(torch.nn.Module):
    """The same function as build_tiny_onnx, in torch."""

    def __init__(self, seed: int = 0):
        super().__init__()
        w, b = tiny_weights(seed)
        self.conv = torch.nn.Conv3d(1, 1, 3, padding=1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.from_numpy(w))
            self.conv.bias.copy_(torch.from_numpy(b))

    def forward(self, x, t):
        return 0.3 * torch.tanh(self.conv(x)) + 0.001 * t.reshape(-1, 1, 1, 1, 1)


def make_model_dir(d: Path, seed: int = 0) -> Path:
    """A model directory with the agreed manifest and the tiny ONNX network."""
    d.mkdir(parents=True, exist_ok=True)
    build_tiny_onnx(d / "model.onnx", seed)
    manifest = {
        "format": "gp-engine-model", "format_version": 1, "block_size": 32,
        "schedule": linear_schedule(250).to_dict(), "prediction": "eps",
        "encoding": {"kind": "separable", "levels": 12},
        "onnx": {"file": "model.onnx", "inputs": {"x": ["B", 1, 32, 32, 32], "t": ["B"]},
                 "output": "eps", "dynamic_batch": True, "opset": 18},
        "batch_sizes": [1, 2, 4], "precision": "fp32", "tensorrt": None, "checkpoint": None,
        "training": {}, "placeholder": True,
    }
    (d / "manifest.json").write_text(json.dumps(manifest))
    return d


@pytest.fixture
def torch_one_thread():
    """Small int64 tensor ops on a loaded 2-core box: threads only add contention."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("model"))


def test_auto_picks_onnxruntime_without_gpu(model_dir):
    manifest = json.loads((model_dir / "manifest.json").read_text())
    if not torch.cuda.is_available():
        assert choose_backend(model_dir, manifest, "auto") == "onnxruntime"
    with pytest.raises(GPEngineError, match="unknown"):
        choose_backend(model_dir, manifest, "tpu")


def test_onnx_engine_matches_torch_and_pads(model_dir):
    eng = load_engine(model_dir, "onnxruntime", batch_size=4)
    assert eng.batch_size == 4 and eng.name.startswith("onnxruntime")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 1, 32, 32, 32)).astype(np.float32)
    t = np.array([10, 100, 249], np.float32)
    out = eng.predict_eps(x, t)            # partial batch: padded to 4, trimmed back
    assert out.shape == x.shape
    with torch.no_grad():
        ref = TinyTorch()(torch.from_numpy(x), torch.from_numpy(t)).numpy()
    np.testing.assert_allclose(out, ref, atol=2e-6)


def test_missing_onnx_file_is_a_clear_error(tmp_path):
    d = make_model_dir(tmp_path / "m")
    (d / "model.onnx").unlink()
    with pytest.raises(GPEngineError, match="missing"):
        load_engine(d, "onnxruntime", 1)


def test_onnx_engine_checks_the_model_file_against_the_manifest(tmp_path):
    """Even when built from a manifest dict directly (no read_manifest): path inside the folder, sha256."""
    from gp_engine.export.manifest import sha256_file
    from gp_engine.runtime.onnx_backend import OnnxEngine

    d = make_model_dir(tmp_path / "m")
    manifest = json.loads((d / "manifest.json").read_text())
    manifest["onnx"]["sha256"] = sha256_file(d / "model.onnx")
    assert OnnxEngine(d, manifest, 1).batch_size == 1
    with pytest.raises(GPEngineError, match="model.onnx does not match the sha256"):
        OnnxEngine(d, {**manifest, "onnx": {**manifest["onnx"], "sha256": "0" * 64}}, 1)
    make_model_dir(tmp_path / "other", seed=1)
    with pytest.raises(GPEngineError, match="not a file inside the model folder"):
        OnnxEngine(d, {**manifest, "onnx": {**manifest["onnx"], "file": "../other/model.onnx"}}, 1)


SETUP_ARGS = SimpleNamespace(steps=4, resample=1, jump=1, tail=1)


def random_batch(b, seed=3, channels=1):
    rng = np.random.default_rng(seed)
    x0 = rng.uniform(-1, 1, (b, channels, 32, 32, 32)).astype(np.float32)
    mask = np.zeros(x0.shape, np.uint8)
    mask[:, :, :10] = 1
    mask[0] = 0  # one block without known voxels
    return x0, mask


def test_onnx_batch_size_1_vs_4(model_dir):
    """Same voxels whatever the batch size. onnxruntime's CPU conv gives identical floats per sample
    here; we still compare with a tight tolerance since kernels may block differently per batch."""
    setup = repaint.make_setup(linear_schedule(250), SETUP_ARGS)
    x0, mask = random_batch(4)
    ids = np.array([0, 1, 2, 3])
    four = repaint.sample_batch(load_engine(model_dir, "onnxruntime", 4), x0, mask, ids, 7, setup)
    e1 = load_engine(model_dir, "onnxruntime", 1)
    one = np.concatenate([repaint.sample_batch(e1, x0[i:i + 1], mask[i:i + 1], ids[i:i + 1], 7, setup)
                          for i in range(4)])
    np.testing.assert_allclose(one, four, rtol=0, atol=1e-5)
    assert np.array_equal(four[mask.astype(bool)], x0[mask.astype(bool)])


def test_torch_sampler_math_matches_numba_sampler(model_dir, torch_one_thread):
    """The device sampler (run eagerly on CPU) draws the same counter noise and computes the same
    steps as the numba CPU sampler with onnxruntime: results agree to float32 rounding."""
    from gp_engine.runtime.torch_backend import TorchEngine

    setup = repaint.make_setup(linear_schedule(250), SETUP_ARGS)
    x0, mask = random_batch(2)
    ids = np.array([4, 9])
    cpu = repaint.sample_batch(load_engine(model_dir, "onnxruntime", 2), x0, mask, ids, 5, setup)
    teng = TorchEngine(TinyTorch(), batch_size=3, device="cpu")  # one padding row
    dev = teng.sample_batch(x0, mask, ids, 5, setup)
    assert dev.shape == cpu.shape
    np.testing.assert_allclose(dev, cpu, atol=2e-4)
    assert np.array_equal(dev[mask.astype(bool)], x0[mask.astype(bool)])
    # and the plain predict_eps path of the torch engine equals the network
    x = x0[:2]
    np.testing.assert_allclose(teng.predict_eps(x, np.array([3, 4], np.float32)),
                               load_engine(model_dir, "onnxruntime", 2).predict_eps(
                                   x, np.array([3, 4], np.float32)), atol=2e-6)


def test_torch_sampler_reports_nan_blocks(torch_one_thread):
    from gp_engine.runtime.torch_backend import TorchEngine

    class NanNet(torch.nn.Module):
        def forward(self, x, t):
            out = 0.1 * x
            out[1] = float("nan")
            return out

    setup = repaint.make_setup(linear_schedule(250), SimpleNamespace(steps=3, resample=0, jump=1, tail=0))
    x0, mask = random_batch(2)
    with pytest.raises(GPEngineError, match=r"\[8\]"):
        TorchEngine(NanNet(), 2, "cpu").sample_batch(x0, mask, np.array([7, 8]), 0, setup)


def test_auto_prefers_the_whole_step_on_the_device(model_dir, tmp_path, monkeypatch):
    """With a GPU, auto picks torch-cuda (model.pt present) over TensorRT plans; TensorRT only without
    a checkpoint; without a GPU always onnxruntime."""
    import gp_engine.runtime as rt

    manifest = json.loads((model_dir / "manifest.json").read_text())
    (tmp_path / "model.pt").write_bytes(b"x")
    (tmp_path / "model_b4.plan").write_bytes(b"x")
    m = {**manifest, "checkpoint": "model.pt", "tensorrt": {"plans": {"4": "model_b4.plan"}}}
    monkeypatch.setattr(rt, "_cuda_available", lambda: True)
    monkeypatch.setattr(rt.importlib.util, "find_spec", lambda name: object() if name == "tensorrt" else None)
    assert choose_backend(tmp_path, m, "auto", 4) == "torch-cuda"
    assert choose_backend(tmp_path, {**m, "checkpoint": None}, "auto", 4) == "tensorrt"
    assert choose_backend(tmp_path, {**m, "checkpoint": None}, "auto", 8) == "onnxruntime"  # no plan for 8
    monkeypatch.setattr(rt, "_cuda_available", lambda: False)
    assert choose_backend(tmp_path, m, "auto", 4) == "onnxruntime"


def test_tensorrt_plan_lookup_error():
    from gp_engine.runtime.tensorrt_backend import plan_for_batch

    assert plan_for_batch({"tensorrt": {"plans": {"8": "b8.plan"}}}, 8) == "b8.plan"
    with pytest.raises(GPEngineError, match="available: 8"):
        plan_for_batch({"tensorrt": {"plans": {"8": "b8.plan"}}}, 4)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("precision,atol", [("fp32", 1e-3), ("bf16", 5e-2)])
def test_cuda_graph_sampler_matches_cpu(model_dir, precision, atol):
    from gp_engine.runtime.torch_backend import TorchEngine

    setup = repaint.make_setup(linear_schedule(250), SETUP_ARGS)
    x0, mask = random_batch(3)
    ids = np.array([4, 9, 11])
    cpu = repaint.sample_batch(load_engine(model_dir, "onnxruntime", 4), x0, mask, ids, 5, setup)
    eng = TorchEngine(TinyTorch(), batch_size=4, device="cuda", precision=precision)
    a = eng.sample_batch(x0, mask, ids, 5, setup)
    sampler = next(iter(eng._samplers.values()))
    assert sampler.captured, f"no CUDA graph was captured: {sampler.capture_error}"
    b = eng.sample_batch(x0, mask, ids, 5, setup)      # graph replay is repeatable
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(a, cpu, atol=atol)
    assert np.array_equal(a[mask.astype(bool)], x0[mask.astype(bool)])


def test_shipped_model_torch_vs_onnxruntime(torch_one_thread):
    """The shipped model through both backends (torch on CPU here): same ε, same RePaint result."""
    from gp_engine.runtime import read_model
    from gp_engine.runtime.torch_backend import TorchEngine

    try:
        model_dir, manifest = read_model(None)
    except GPEngineError as exc:
        pytest.skip(f"no shipped model yet: {exc}")
    teng = TorchEngine.from_model_dir(model_dir, manifest, 2, device="cpu")
    oeng = load_engine(model_dir, "onnxruntime", 2)
    x0, mask = random_batch(2, channels=int(manifest["unet"].get("in_channels", 1)))
    t = np.array([0, 200], np.float32)
    np.testing.assert_allclose(teng.predict_eps(x0, t), oeng.predict_eps(x0, t), atol=1e-4)
    setup = repaint.make_setup(linear_schedule(250), SimpleNamespace(steps=3, resample=1, jump=1, tail=0))
    ids = np.array([1, 2])
    a = teng.sample_batch(x0, mask, ids, 0, setup)
    b = repaint.sample_batch(oeng, x0, mask, ids, 0, setup)
    np.testing.assert_allclose(a, b, atol=1e-3)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (Inductor takes minutes on a CPU)")
def test_compiled_noise_equals_the_eager_noise():
    """torch.compile fuses the noise ops (the default on CUDA): the same walk as the eager ops."""
    from gp_engine.runtime.torch_backend import TorchSampler

    setup = repaint.make_setup(linear_schedule(250), SimpleNamespace(steps=3, resample=1, jump=1, tail=0))
    x0, mask = random_batch(2)
    ids = np.array([3, 8])
    # the sampler runs the model where it is (TorchEngine moves it): on the GPU here
    eager = TorchSampler(TinyTorch().cuda(), setup, 2, device="cuda", compile_noise=False, use_graphs=False).run(
        x0, mask, ids, 4)
    fused = TorchSampler(TinyTorch().cuda(), setup, 2, device="cuda", compile_noise=True)
    out = fused.run(x0, mask, ids, 4)
    assert fused.noise_compile_error is None, fused.noise_compile_error
    np.testing.assert_allclose(out, eager, rtol=0, atol=1e-5)

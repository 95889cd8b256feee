"""torch backend: the whole RePaint step on the device, captured in CUDA graphs.

One step = mix known voxels + network + DDPM posterior (+ noise), or one forward re-noise. Both
kinds read their coefficients from device tables indexed by a device-side step index and advance a
device-side transition counter, so each is captured once as a CUDA graph and the host loop only
replays graphs (no per-kernel launches, no host→device copies, one sync per batch for the NaN flag).

The step formulas are :mod:`gp_engine.mixing`'s and the noise is :mod:`gp_engine.noise`'s counter-based
stream computed with int64 tensor ops on the device (the same integers as the CPU sampler's, normals
to float32 rounding), which is what makes ``device="cpu"`` a meaningful test of this module's
arithmetic.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .. import mixing, noise
from ..errors import GPEngineError
from ..self_cond import call_net, x0_prev_torch
from ..repaint import INIT_COUNTER, STREAM_INIT, STREAM_MIX, STREAM_STEP, SamplerSetup

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

# the step formulas, defined once in gp_engine.mixing (numba); their Python originals work on tensors
q_sample = mixing.q_sample.py_func
x0_from_eps = mixing.x0_from_eps.py_func
reverse_mean = mixing.reverse_mean.py_func


def _noise_block(seed_key, ids, k, pairs, stream):
    """The batch's normals [B, 2·len(pairs)] for transition counter ``k`` and ``stream``."""
    k1, k2 = noise.row_keys_torch(seed_key, ids, k, stream)
    return noise.counter_normal_torch(k1, k2, pairs)


class TorchSampler:
    """Static-shape RePaint sampler for one (model, setup, batch size); CUDA graphs on CUDA."""

    def __init__(self, model: torch.nn.Module, setup: SamplerSetup, batch_size: int,
                 block_shape: tuple[int, ...] = (1, 32, 32, 32), device: str = "cuda",
                 precision: str = "fp32", use_graphs: bool | None = None, compile_noise: bool | None = None):
        self.model, self.setup, self.B = model, setup, int(batch_size)
        self.shape, self.device = tuple(block_shape), torch.device(device)
        self.dtype = DTYPES[precision]
        self.n = int(np.prod(self.shape))
        dev = self.device
        tab = {k: torch.tensor(v, dtype=torch.float32, device=dev)
               for k, v in setup.coefficients().items()}
        self.tab = tab
        if self.n % 2:
            raise GPEngineError(f"block of {self.n} values: the noise stream draws voxel pairs, need an even count")
        self.pairs = torch.arange(self.n // 2, dtype=torch.int64, device=dev)
        self.x = torch.zeros(self.B, self.n, device=dev)
        self.x0 = torch.zeros(self.B, self.n, device=dev)
        self.mask = torch.zeros(self.B, self.n, dtype=torch.bool, device=dev)
        # conditional models: known values and mask as network inputs, loaded once per batch
        self.cond = (torch.zeros((self.B, self.shape[0] + 1) + self.shape[1:], device=dev)
                     if setup.conditional else None)
        # self-conditioning models: the previous evaluation's clipped x̂0, zero at a batch's start
        self.x0_prev = torch.zeros(self.B, self.n, device=dev) if setup.self_cond else None
        self.ids = torch.full((self.B,), -1, dtype=torch.int64, device=dev)
        # shape-[1] device scalars: gathered with index_select, never read back (.item() would
        # sync the host and break graph capture)
        self.seed_key = torch.zeros(1, dtype=torch.int64, device=dev)
        self.i = torch.zeros(1, dtype=torch.int64, device=dev)   # current respaced index
        self.k = torch.zeros(1, dtype=torch.int64, device=dev)   # transition counter
        self.bad = torch.zeros(self.B, dtype=torch.bool, device=dev)
        self.use_graphs = (self.device.type == "cuda") if use_graphs is None else use_graphs
        self.graphs: dict[str, torch.cuda.CUDAGraph] = {}
        self.capture_error: str | None = None
        # the counter noise is ~180 small integer ops; torch.compile fuses them into one kernel (on
        # CUDA by default). Compiled at the first (eager, warm-up) call, never inside a capture; a
        # failed compile falls back to the eager ops and says why (noise_compile_error).
        self.compile_noise = (self.device.type == "cuda") if compile_noise is None else bool(compile_noise)
        self._noise_fn = _noise_block
        self.noise_compile_error: str | None = None
        if self.compile_noise:
            self._noise_fn = torch.compile(_noise_block, dynamic=False, fullgraph=True)
        # streams as device tensors: one compiled noise function serves all three
        self._streams = {st: torch.tensor([st], dtype=torch.int64, device=dev)
                         for st in (STREAM_INIT, STREAM_MIX, STREAM_STEP)}

    @property
    def captured(self) -> bool:
        """True once both step kinds run as CUDA graphs (GPU tests assert it)."""
        return bool(self.graphs)

    # ---- the two step kinds (pure tensor code, capture-safe: no host syncs)
    def _noise(self, stream: int) -> torch.Tensor:
        try:
            return self._noise_fn(self.seed_key, self.ids, self.k, self.pairs, self._streams[stream])
        except Exception as exc:  # Inductor/Triton unavailable or failing: the same numbers, eagerly
            if self._noise_fn is _noise_block:
                raise
            import warnings

            self.noise_compile_error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
            warnings.warn(f"torch.compile of the sampler noise failed ({self.noise_compile_error}); eager noise ops")
            self._noise_fn = _noise_block
            return _noise_block(self.seed_key, self.ids, self.k, self.pairs, self._streams[stream])

    def _eps(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        xin = x.view((self.B,) + self.shape)
        x0_prev = None if self.x0_prev is None else self.x0_prev.view_as(xin)
        if self.dtype != torch.float32:
            with torch.autocast(self.device.type, dtype=self.dtype, cache_enabled=False):
                out = call_net(self.model, xin, t, self.cond, x0_prev)
        else:
            out = call_net(self.model, xin, t, self.cond, x0_prev)
        return out.reshape(self.B, self.n).float()

    def _at(self, name: str, index: torch.Tensor) -> torch.Tensor:
        """Coefficient ``name`` at a device index, shape [1] (broadcasts over [B, n])."""
        return self.tab[name].index_select(0, index)

    def reverse_step(self) -> None:
        i = self.i
        sab, s1 = self._at("sqrt_ab", i), self._at("sqrt_1mab", i)
        mixed = self.x0 if self.setup.known_clean else q_sample(self.x0, self._noise(STREAM_MIX), sab, s1)
        x = torch.where(self.mask, mixed, self.x)
        eps = self._eps(x, self._at("t_model", i).expand(self.B))
        self.bad |= ~torch.isfinite(eps).all(dim=1)
        x0p = x0_from_eps(x, eps, sab, s1)
        if self.x0_prev is not None:  # this evaluation's estimate, for the next one
            self.x0_prev.copy_(x0_prev_torch(x0p))
        if self.setup.sharpen > 0:
            x0p = torch.tanh(self.setup.sharpen * x0p)
        elif self.setup.clip_x0:
            x0p = x0p.clamp(-1.0, 1.0)
        y = (reverse_mean(x0p, x, self._at("c_x0", i), self._at("c_xt", i))
             + self._at("sigma", i) * self._noise(STREAM_STEP))
        self.x.copy_(y)
        self.i.sub_(1)
        self.k.add_(1)

    def forward_step(self) -> None:
        j = self.i + 1
        y = q_sample(self.x, self._noise(STREAM_STEP), self._at("sqrt_a", j), self._at("sqrt_1ma", j))
        self.x.copy_(y)
        self.i.add_(1)
        self.k.add_(1)

    # ---- graph capture
    def _warm_up(self) -> None:
        """Both step kinds run eagerly on a side stream (cuDNN autotune, allocator): outside the
        capture, so out-of-memory and model errors surface here with their own message."""
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            self.i.fill_(1)
            for _ in range(2):
                self.reverse_step()
                self.forward_step()
        torch.cuda.current_stream().wait_stream(s)
        torch.cuda.synchronize()

    def _capture(self) -> None:
        for name, fn in (("reverse", self.reverse_step), ("forward", self.forward_step)):
            self.i.fill_(1)
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                fn()
            self.graphs[name] = g
        torch.cuda.synchronize()

    def _load(self, x0: np.ndarray, mask: np.ndarray, block_ids: np.ndarray, seed: int) -> int:
        b = x0.shape[0]
        if b > self.B:
            raise GPEngineError(f"batch of {b} blocks exceeds the engine batch size {self.B}")
        ids = np.full(self.B, -1, np.int64)
        ids[:b] = block_ids
        x0p = np.zeros((self.B, self.n), np.float32)
        mp = np.zeros((self.B, self.n), bool)
        x0p[:b] = x0.reshape(b, self.n)
        mp[:b] = mask.reshape(b, self.n).astype(bool)
        self.x0.copy_(torch.from_numpy(x0p))
        self.mask.copy_(torch.from_numpy(mp))
        if self.cond is not None:
            from ..conditional import make_cond

            self.cond.copy_(torch.from_numpy(make_cond(x0p.reshape((self.B,) + self.shape),
                                                       mp.reshape((self.B,) + self.shape))))
        if self.x0_prev is not None:
            self.x0_prev.zero_()
        self.ids.copy_(torch.from_numpy(ids))
        self.seed_key.fill_(noise.seed_key(seed))
        self.k.fill_(INIT_COUNTER)
        self.x.copy_(self._noise(STREAM_INIT))
        self.k.fill_(0)
        self.i.fill_(self.setup.respaced.steps - 1)
        self.bad.zero_()
        return b

    @torch.no_grad()
    def run(self, x0: np.ndarray, mask: np.ndarray, block_ids: np.ndarray, seed: int,
            on_step=None) -> np.ndarray:
        """RePaint a batch; returns x [b, *block_shape] float32 with known voxels = x0 exactly."""
        if self.use_graphs and not self.graphs:
            self._warm_up()
            try:
                self._capture()
            except RuntimeError as exc:  # an op that cannot be captured: run eagerly, say why
                import warnings

                cause = exc.__cause__ or exc.__context__
                self.capture_error = f"{type(exc).__name__}: {exc}" + (f" (cause: {cause})" if cause else "")
                warnings.warn(f"CUDA graph capture failed ({self.capture_error}); running the sampler eagerly "
                              "(slower, same results)")
                self.use_graphs, self.graphs = False, {}
                torch.cuda.synchronize()
        b = self._load(x0, mask, block_ids, seed)
        for k, (i, j) in enumerate(self.setup.transitions):
            if j < i:
                self.graphs["reverse"].replay() if self.use_graphs else self.reverse_step()
                if on_step is not None:
                    on_step(k)
            else:
                self.graphs["forward"].replay() if self.use_graphs else self.forward_step()
        bad = self.bad[:b].cpu().numpy()
        if bad.any():
            blocks = [int(v) for v in np.asarray(block_ids)[bad]]
            raise GPEngineError(f"the network returned NaN/inf for block(s) {blocks} on backend "
                                f"torch-{self.device.type} ({self.dtype}); try --backend onnxruntime "
                                "or precision fp32")
        x = torch.where(self.mask, self.x0, self.x)[:b].cpu().numpy()
        return x.reshape((b,) + self.shape)


def configure_cuda(precision: str) -> None:
    """cuDNN autotuning on (the block shapes are static), and "fp32" means IEEE fp32: TF32 (the CUDA
    default for cuDNN convolutions, ~1e-3 relative rounding) is switched off for fp32 runs so that
    they match the CPU within float32 rounding; bf16/fp16 runs use autocast as they say."""
    torch.backends.cudnn.benchmark = True
    tf32 = precision != "fp32"
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32


class TorchEngine:
    """Engine protocol on a torch module; ``sample_batch`` runs the graph-captured sampler."""

    def __init__(self, model: torch.nn.Module, batch_size: int, device: str = "cuda",
                 precision: str = "fp32", block: int = 32):
        self.model = model.eval().to(device)
        self.batch_size, self.device, self.precision = int(batch_size), device, precision
        if torch.device(device).type == "cuda":
            configure_cuda(precision)
        self.block = block
        self.name = f"torch-{torch.device(device).type}-{precision}"
        self._samplers: dict[int, TorchSampler] = {}

    @classmethod
    def from_model_dir(cls, model_dir: Path, manifest: dict, batch_size: int, device: str = "cuda",
                       precision: str | None = None) -> "TorchEngine":
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise GPEngineError("backend torch-cuda needs a CUDA GPU; use --backend onnxruntime")
        ckpt = manifest.get("checkpoint")
        if not ckpt or not (Path(model_dir) / ckpt).is_file():
            raise GPEngineError(f"{model_dir} has no torch checkpoint (manifest 'checkpoint'); "
                                "use --backend onnxruntime or rebuild the model with its checkpoint")
        from ..checkpoint import load_model
        from ..export.manifest import verify_model_file

        # inside the model folder and the bytes the manifest recorded (checkpoint_sha256, if any)
        model, _meta = load_model(verify_model_file(model_dir, manifest, "checkpoint"), device)
        prec = precision or ("bf16" if device.startswith("cuda") else "fp32")
        if prec not in DTYPES:
            raise GPEngineError(f"precision {prec!r} is unknown; use fp32, fp16 or bf16")
        return cls(model, batch_size, device, prec, int(manifest.get("block_size", 32)))

    @torch.no_grad()
    def predict_eps(self, x: np.ndarray, t: np.ndarray, cond: np.ndarray | None = None,
                    x0_prev: np.ndarray | None = None) -> np.ndarray:
        b = x.shape[0]

        def padded(a: np.ndarray) -> torch.Tensor:
            out = torch.zeros((self.batch_size,) + a.shape[1:], device=self.device)
            out[:b] = torch.from_numpy(np.ascontiguousarray(a, np.float32))
            return out

        tt = torch.full((self.batch_size,), float(t[0]), device=self.device)
        tt[:b] = torch.from_numpy(np.ascontiguousarray(t, np.float32))
        inputs = (padded(x), tt, None if cond is None else padded(cond),
                  None if x0_prev is None else padded(x0_prev))
        dtype = DTYPES[self.precision]
        if dtype != torch.float32:
            with torch.autocast(torch.device(self.device).type, dtype=dtype):
                out = call_net(self.model, *inputs)
        else:
            out = call_net(self.model, *inputs)
        return out.float()[:b].cpu().numpy()

    def sample_batch(self, x0: np.ndarray, mask: np.ndarray, block_ids: np.ndarray, seed: int,
                     setup: SamplerSetup, on_step=None) -> np.ndarray:
        key = id(setup)
        if key not in self._samplers:
            self._samplers = {key: TorchSampler(self.model, setup, self.batch_size,
                                                tuple(x0.shape[1:]), self.device, self.precision)}
        return self._samplers[key].run(x0, mask, block_ids, seed, on_step)

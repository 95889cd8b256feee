"""RePaint outpainting: the time schedule as data, and the CPU sampler that walks it.

The schedule is a flat ``int32`` array of transitions ``(i_cur, i_next)`` over the *respaced*
step index ``i`` (0 … steps-1, and -1 meaning "done"). ``i_next == i_cur - 1`` is a reverse
(denoising) step that costs one network evaluation; ``i_next == i_cur + 1`` is a forward
re-noising step (RePaint's "resampling"). Keeping it as data makes it testable (every move is ±1,
it starts at the top and ends at -1) and lets every backend walk the same list.

The sampler is a short function of (engine, x, schedule, noise). The step arithmetic is
:mod:`gp_engine.mixing`; the default noise (:mod:`gp_engine.noise`) is a pure function of (seed, block
index, transition index, stream), so the result never depends on the batch size or on which blocks
share a batch, and an interrupted run resumes to the same voxels. Tests inject their own noise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np

from . import mixing
from .noise import CounterNoise
from .self_cond import CLIP as X0_PREV_CLIP
from .diffusion import Schedule
from .errors import GPEngineError

#: noise streams: independent noise for the initial x_T, the known-voxel mix and the step noise.
STREAM_INIT, STREAM_MIX, STREAM_STEP = 0, 1, 2
#: transition counter used for the initial noise (the first real transition is 0).
INIT_COUNTER = 0xFFFFFF


# --------------------------------------------------------------------------- schedule as data


@dataclass(frozen=True)
class RespacedSchedule:
    """A DDPM schedule restricted to ``steps`` evenly spaced timesteps of the model's T.

    Improved-DDPM respacing: keep ᾱ at the selected timesteps and recompute β_i = 1 - ᾱ_i/ᾱ_{i-1},
    so the respaced chain has the same marginals q(x_t | x_0) at the kept steps. ``timesteps[i]`` is
    the model timestep fed to the network for respaced index ``i``.
    """

    timesteps: np.ndarray        # int64 (steps,), increasing, model timestep per respaced index
    alphas_cumprod: np.ndarray   # float64 (steps,)

    @property
    def steps(self) -> int:
        return int(self.timesteps.shape[0])

    @property
    def alphas_cumprod_prev(self) -> np.ndarray:
        return np.concatenate([[1.0], self.alphas_cumprod[:-1]])

    @property
    def betas(self) -> np.ndarray:
        return 1.0 - self.alphas_cumprod / self.alphas_cumprod_prev

    @property
    def alphas(self) -> np.ndarray:
        return 1.0 - self.betas

    def coefficients(self, eta: float = 1.0) -> dict[str, np.ndarray]:
        """Per-index float64 coefficients used by every backend (same numbers on CPU and GPU).

        sqrt_ab, sqrt_1mab: q(x_i|x_0) scale and noise; c_x0, c_xt, sigma: one reverse step
        x_{i-1} = c_x0·x̂_0 + c_xt·x_i + σ·z. ``eta`` = 1 is the DDPM posterior q(x_{i-1}|x_i, x_0)
        with the "fixed small" variance (what RePaint needs); general η is DDIM (Song et al. 2021):
        σ = η·√((1-ᾱ_prev)/(1-ᾱ))·√(1-ᾱ/ᾱ_prev), x_{i-1} = √ᾱ_prev·x̂_0 + √(1-ᾱ_prev-σ²)·ε̂ + σ·z,
        so η = 0 is deterministic. σ = 0 at i = 0. sqrt_a, sqrt_1ma: one forward step
        x_i = √α_i·x_{i-1} + √(1-α_i)·z.
        """
        ab, ab_prev, beta = self.alphas_cumprod, self.alphas_cumprod_prev, self.betas
        alpha = 1.0 - beta
        if not 0.0 <= float(eta) <= 1.0:
            raise GPEngineError(f"sampler.eta = {eta} must be between 0 (DDIM) and 1 (DDPM)")
        if float(eta) == 1.0:  # the DDPM posterior, in its usual closed form
            var = beta * (1.0 - ab_prev) / (1.0 - ab)
            c_x0 = beta * np.sqrt(ab_prev) / (1.0 - ab)
            c_xt = (1.0 - ab_prev) * np.sqrt(alpha) / (1.0 - ab)
        else:
            var = float(eta) ** 2 * (1.0 - ab_prev) / (1.0 - ab) * (1.0 - ab / ab_prev)
            c_xt = np.sqrt(np.maximum(1.0 - ab_prev - var, 0.0)) / np.sqrt(1.0 - ab)
            c_x0 = np.sqrt(ab_prev) - c_xt * np.sqrt(ab)
        return {
            "sqrt_ab": np.sqrt(ab),
            "sqrt_1mab": np.sqrt(1.0 - ab),
            "c_x0": c_x0,
            "c_xt": c_xt,
            "sigma": np.sqrt(np.maximum(var, 0.0)),
            "sqrt_a": np.sqrt(alpha),
            "sqrt_1ma": np.sqrt(1.0 - alpha),
            "t_model": self.timesteps.astype(np.float64),
        }


def respace(schedule: Schedule, steps: int) -> RespacedSchedule:
    """Select ``steps`` evenly spaced timesteps (always including 0 and T-1) of ``schedule``."""
    T = schedule.T
    if not 2 <= steps <= T:
        raise GPEngineError(f"sampler steps = {steps} must be between 2 and the model's T = {T}")
    kept = np.unique(np.round(np.linspace(0, T - 1, steps)).astype(np.int64))
    if kept.shape[0] != steps:  # pragma: no cover - linspace over ≥ steps integers never collides
        raise GPEngineError(f"cannot respace T = {T} to {steps} distinct steps")
    return RespacedSchedule(kept, schedule.alphas_cumprod[kept])


def _jump_points(steps: int, jump: int, tail: int) -> range:
    """Respaced indices j after which the sampler jumps back ``jump`` steps (RePaint time travel).

    A jump from j needs j + jump ≤ steps - 1, and resampling stops in the last ``tail`` steps.
    """
    return range(tail, steps - jump, jump)


def build_schedule(steps: int, resample: int, jump: int = 1, tail: int = 0,
                   T: int | None = None) -> np.ndarray:
    """The RePaint walk as an ``(n, 2)`` int32 array of transitions ``(i_cur, i_next)``.

    Start at ``steps - 1``; step down one index at a time; each time the walk first reaches a
    jump point j (see :func:`_jump_points`) it goes ``jump`` steps back up and down again,
    ``resample`` times. The walk ends with the transition 0 → -1. ``resample = 0`` is plain DDPM.
    Paper preset (steps 250, r 10, jump 1, tail 25): 250 + 10·224 = 2490 evaluations.
    """
    _check_params(steps, resample, jump, tail, T)
    remaining = {j: resample for j in _jump_points(steps, jump, tail)}
    moves: list[tuple[int, int]] = []
    i = steps - 1
    while i >= 0:
        moves.append((i, i - 1))
        i -= 1
        if remaining.get(i, 0) > 0:
            remaining[i] -= 1
            for _ in range(jump):
                moves.append((i, i + 1))
                i += 1
    out = np.asarray(moves, dtype=np.int32)
    validate_schedule(out, steps)
    return out


def _check_params(steps: int, resample: int, jump: int, tail: int, T: int | None) -> None:
    if T is not None and not 2 <= steps <= T:
        raise GPEngineError(f"sampler.steps = {steps} must be between 2 and the model's T = {T}")
    if steps < 1:
        raise GPEngineError(f"sampler.steps = {steps} must be at least 1")
    if resample < 0:
        raise GPEngineError(f"sampler.resample = {resample} must be ≥ 0 (0 = no resampling)")
    if jump < 1:
        raise GPEngineError(f"sampler.jump = {jump} must be ≥ 1")
    if not 0 <= tail <= steps:
        raise GPEngineError(f"sampler.tail = {tail} must be between 0 and steps = {steps}")


def validate_schedule(transitions: np.ndarray, steps: int) -> None:
    """Raise GPEngineError unless the walk is well formed (±1 moves, chained, top → -1)."""
    tr = np.asarray(transitions)
    if tr.ndim != 2 or tr.shape[1] != 2 or tr.shape[0] == 0:
        raise GPEngineError(f"schedule must be a non-empty (n, 2) array, got shape {tr.shape}")
    if tr[0, 0] != steps - 1:
        raise GPEngineError(f"schedule starts at {tr[0, 0]}, expected the top index {steps - 1}")
    if tr[-1, 1] != -1 or tr[-1, 0] != 0:
        raise GPEngineError("schedule must end with the transition 0 -> -1")
    if np.any(np.abs(tr[:, 1] - tr[:, 0]) != 1):
        raise GPEngineError("schedule moves must be ±1 in the respaced index")
    if np.any(tr[1:, 0] != tr[:-1, 1]):
        raise GPEngineError("schedule transitions are not chained (i_next != next i_cur)")
    if tr[:, 0].min() < 0 or tr[:, 0].max() > steps - 1 or tr[:-1, 1].min() < 0:
        raise GPEngineError(f"schedule leaves the index range 0..{steps - 1} before the end")


def count_evaluations(steps: int, resample: int, jump: int = 1, tail: int = 0,
                      T: int | None = None) -> int:
    """Network evaluations per block, in closed form: steps + r·jump·(number of jump points)."""
    _check_params(steps, resample, jump, tail, T)
    return steps + resample * jump * len(_jump_points(steps, jump, tail))


def schedule_from_sampler(sampler, T: int) -> np.ndarray:
    """Build the walk from a plan's sampler settings (any object with steps/resample/jump/tail)."""
    return build_schedule(int(sampler.steps), int(sampler.resample), int(sampler.jump),
                          int(sampler.tail), T)


# --------------------------------------------------------------------------- CPU sampler


class EpsModel(Protocol):
    """What every backend provides (``gp_engine.runtime.Engine``): a fixed batch size, a name, and ε
    for a batch at float model timesteps (conditional models also take the condition). A backend that
    runs whole walks itself (torch-cuda) also has ``sample_batch``, with this module's signature."""

    batch_size: int
    name: str

    def predict_eps(self, x: np.ndarray, t: np.ndarray, cond: np.ndarray | None = None,
                    x0_prev: np.ndarray | None = None) -> np.ndarray: ...


@dataclass(frozen=True)
class SamplerSetup:
    """Everything a backend needs to run one batch: coefficient tables + the walk + options.

    ``conditional``: the network also takes the condition (known values and mask,
    :func:`gp_engine.conditional.make_cond`), built once per batch; if the walk resamples, its re-noising
    touches the unknown voxels only (the known ones stay what the model was trained to see).
    ``eta``: 1 = DDPM posterior steps (RePaint), 0 = deterministic DDIM (see ``coefficients``).
    ``self_cond``: the network also takes its previous estimate of x0 (:mod:`gp_engine.self_cond`).
    """

    respaced: RespacedSchedule
    transitions: np.ndarray
    clip_x0: bool = False  # clip x̂_0 to [-1, 1] (optional: the encoded fields live in [-1, 1])
    conditional: bool = False
    eta: float = 1.0
    sharpen: float = 0.0   # κ > 0: x̂_0 ← tanh(κ·x̂_0) instead of the clip (analog bits commit to ±1)
    known_clean: bool = False  # conditional models trained with clean known voxels in x_t (TD-Paint)
    self_cond: bool = False

    @property
    def evaluations(self) -> int:
        return int(np.sum(self.transitions[:, 1] < self.transitions[:, 0]))

    def coefficients(self) -> dict[str, np.ndarray]:
        return self.respaced.coefficients(self.eta)


def make_setup(schedule: Schedule, sampler, clip_x0: bool = False, conditional: bool = False,
               known_clean: bool = False, self_cond: bool = False) -> SamplerSetup:
    """Respace the model schedule and build the walk for a plan's sampler settings (``sampler.eta``,
    if present, picks DDPM (1) … DDIM (0) steps)."""
    rs = respace(schedule, int(sampler.steps))
    eta = float(getattr(sampler, "eta", 1.0) if getattr(sampler, "eta", None) is not None else 1.0)
    sharpen = float(getattr(sampler, "sharpen", 0.0) or 0.0)
    if sharpen < 0 or not np.isfinite(sharpen):
        raise GPEngineError(f"sampler.sharpen_x0 = {sharpen} must be a finite number ≥ 0 (0 = off)")
    rs.coefficients(eta)  # validates η once, here
    if known_clean and not conditional:
        raise GPEngineError("clean known voxels in x_t are a conditional model's convention")
    return SamplerSetup(rs, schedule_from_sampler(sampler, schedule.T), clip_x0, bool(conditional), eta, sharpen,
                        bool(known_clean), bool(self_cond))


#: noise(out [B, n] float32, block_ids, seed, counter, stream, where=None): fills ``out`` (at least
#: where ``where`` is nonzero) with standard normals; :class:`gp_engine.noise.CounterNoise` by default
NoiseSampler = Callable[..., None]


def sample_batch(engine: EpsModel, x0: np.ndarray, mask: np.ndarray, block_ids: np.ndarray,
                 seed: int, setup: SamplerSetup,
                 on_step: Callable[[int], None] | None = None,
                 noise: NoiseSampler | None = None) -> np.ndarray:
    """Run the walk for a batch of blocks on the CPU; returns x [B, C, s, s, s] float32.

    ``x0``: known values (anything where ``mask`` is 0), ``mask``: 1 where known. At most
    ``engine.batch_size`` rows; the engine pads partial batches if it needs a fixed shape. With the
    default ``noise`` each row's noise depends only on its block id, so grouping never changes a
    block. ``on_step(k)`` is called after each network evaluation (progress). Raises GPEngineError on
    NaN/inf output, naming the blocks. A self-conditioning model (``setup.self_cond``) gets each
    evaluation's clipped x̂0 as ``x0_prev`` of the next one (zero at the first).
    """
    b = B = x0.shape[0]
    if b > int(engine.batch_size):
        raise GPEngineError(f"batch of {b} blocks exceeds the engine batch size {engine.batch_size}")
    shape = x0.shape
    ids = np.asarray(block_ids, np.int64)
    n = int(np.prod(shape[1:]))
    x0f = np.ascontiguousarray(x0, np.float32).reshape(b, n)
    mf = np.ascontiguousarray(mask, np.uint8).reshape(b, n)
    c = setup.coefficients()
    noise = noise or CounterNoise()
    x = np.empty((b, n), np.float32)
    noise(x, ids, seed, INIT_COUNTER, STREAM_INIT)
    if setup.known_clean:  # the model was trained with the known voxels clean (t = 0): set them once,
        paste_known(x, x0f, mf)  # the step kernels skip known voxels, so they stay exact
    z = np.empty((b, n), np.float32)
    unknown = np.ascontiguousarray(1 - mf)
    t_in = np.empty(B, np.float32)
    cond = None
    if setup.conditional:  # the known values and mask, fixed for the whole walk
        from .conditional import make_cond

        cond = make_cond(x0, mask)
    extra: dict = {} if cond is None else {"cond": cond}
    x0_prev = None
    if setup.self_cond:  # updated in place by each posterior step: the view below follows it
        x0_prev = np.zeros((B, n), np.float32)
        extra["x0_prev"] = x0_prev.reshape((B,) + shape[1:])
    for k, (i, j) in enumerate(setup.transitions):
        if j < i:  # reverse step: mix known voxels, predict ε, posterior sample
            if not setup.known_clean:
                noise(z, ids, seed, k, STREAM_MIX, mf)
                mixing.mix_known(x, x0f, mf, c["sqrt_ab"][i], c["sqrt_1mab"][i], z)
            t_in[:] = c["t_model"][i]
            xin = x.reshape((B,) + shape[1:])
            eps = engine.predict_eps(xin, t_in, **extra)
            eps = np.ascontiguousarray(eps, dtype=np.float32).reshape(B, n)
            check_finite(eps[:b], ids, k, engine)
            if c["sigma"][i] > 0:
                noise(z, ids, seed, k, STREAM_STEP, unknown)
            mixing.posterior_step(x, eps, c["sqrt_ab"][i], c["sqrt_1mab"][i], c["c_x0"][i],
                                  c["c_xt"][i], c["sigma"][i], setup.clip_x0, z, skip=mf,
                                  sharpen=setup.sharpen, x0_out=x0_prev, x0_out_clip=X0_PREV_CLIP)
            if on_step is not None:
                on_step(k)
        else:  # forward re-noise i -> i+1
            noise(z, ids, seed, k, STREAM_STEP, unknown)
            mixing.renoise(x, c["sqrt_a"][j], c["sqrt_1ma"][j], z, skip=mf)
    paste_known(x, x0f, mf)
    return x.reshape(shape)


def paste_known(x: np.ndarray, x0: np.ndarray, mask: np.ndarray) -> None:
    """Set known voxels exactly to x0 (in place): the final RePaint step."""
    np.copyto(x, x0, where=mask.astype(bool))


def check_finite(eps: np.ndarray, block_ids: np.ndarray, step: int, engine) -> None:
    """NaN/inf in the network output -> GPEngineError naming the blocks and a fix."""
    bad = ~np.isfinite(eps.reshape(eps.shape[0], -1)).all(axis=1)
    if bad.any():
        blocks = [int(b) for b in np.asarray(block_ids)[bad]]
        raise GPEngineError(
            f"the network returned NaN/inf for block(s) {blocks} at transition {step} on backend "
            f"{getattr(engine, 'name', '?')!r}; try another backend (--backend onnxruntime) or a "
            "higher precision (fp32)")


def shift_mid_range(x: np.ndarray) -> np.ndarray:
    """Centre a block with no known voxels on its mid-range: x - (min+max)/2 (paper, first stage)."""
    return (x - 0.5 * (float(x.min()) + float(x.max()))).astype(np.float32)

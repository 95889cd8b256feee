"""Slim DDPM trainer on 32³ (or smaller, for the fully convolutional net) blocks from :mod:`gp_engine.blocks`.

The network predicts ε, x₀ or v with uniform or Min-SNR-γ loss weighting
(:mod:`gp_engine.parameterization`, one definition shared with the exporter).

AdamW, EMA weights (exported by default), gradient clipping, bf16 autocast on CUDA and on CPUs with AMX
tiles (fp16 + GradScaler as an option; validation always in fp32), periodic atomic checkpoints that
``resume`` continues exactly (weights, optimizer, EMA, step, generator state), a constant learning
rate with an optional linear cooldown (``lr_at``), validation loss on fixed held-out blocks with fixed
noise and timesteps, a tqdm bar with loss and samples/s, and a loss-curve PNG next to the checkpoint.
"""

from __future__ import annotations

import copy
import math
import os
import random
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .atomic_write import save_figure
from .blocks import BlockSource, list_volume_files, load_volume, split_train_val
from .checkpoint import load_checkpoint, save_checkpoint
from .diffusion import Schedule, linear_schedule
from .errors import GPEngineError
from .parameterization import DEFAULT_GAMMA, check_target, check_weighting, loss_weight, training_target
from .unet import build_unet, count_parameters, preset_config


@dataclass
class TrainOptions:
    """Everything ``gp-engine train`` can set (stored in the checkpoint's training metadata)."""

    data: list[str] = field(default_factory=list)
    out: str = "model.pt"
    preset: str = "small"
    steps: int = 10_000
    batch_size: int = 32
    encoding: str = "separable"
    levels: int | None = None          # None: gp_engine.encoding.DEFAULT_LEVELS
    bits: int | None = None            # analog-bits channels (encoding "bits"); None: DEFAULT_BITS
    colouring: str | None = None       # grain colouring of the data (encoding.COLOURINGS); None: the
                                       # lineage's (resume / --init-from), "dsatur" for a new run
    device: str = "auto"
    precision: str = "auto"            # auto (bf16 on CUDA and AMX CPUs, else fp32) | bf16 | fp16 | fp32
    lr: float | None = None            # AdamW peak lr; None: DEFAULT_LR for a new run, the lineage's on resume
    cooldown_steps: int | None = None  # lr decays linearly to 0 over the last N steps before `steps` (WSD)
    weight_decay: float = 0.01
    loss: str = "mse"                  # mse | l1
    target: str = "eps"                # what the network predicts: eps | x0 | v
    weighting: str = "uniform"         # loss weighting over timesteps: uniform | min-snr
    aux_ce: float = 0.0                # analog bits: weight of the cross-entropy on the predicted bits
    gamma: float = DEFAULT_GAMMA       # Min-SNR γ
    crop: int = 32                     # training crop side (the net is fully convolutional; inference: 32)
    ema_decay: float = 0.999
    grad_clip: float = 1.0
    T: int = 250
    beta_start: float = 1e-4
    beta_end: float = 0.02
    random_fraction: float = 0.5       # share of each batch from uniform random crops
    val_pattern: str | None = None
    val_every: int = 250
    val_blocks: int = 64
    checkpoint_every: int = 500
    log_every: int = 10
    time_limit_min: float | None = None
    cpu_time_limit_min: float | None = None   # stop after this much process CPU time (fair budgets on a shared machine)
    seed: int = 0
    resume: bool = False
    force: bool = False
    compile: bool = False
    threads: int | None = None
    progress: bool = True
    conditional: bool = False          # outpainting model: known values + mask as extra input channels
    known_input: str | None = None     # conditional: known voxels in x_t "clean" (TD-Paint, default) or "noisy"
    init_from: str | None = None       # start from this checkpoint's EMA weights (widened if conditional)
    self_cond: bool = False            # self-conditioning: the previous x̂₀ as extra input channels
    attention: bool = False            # self-attention at the U-Net's coarsest level (unet.MidAttention)
    extend_schedule: int | None = None  # with init_from: continue the parent's linear β ramp to this T


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise GPEngineError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu")
    if name not in ("cpu",) and not name.startswith("cuda"):
        raise GPEngineError(f"--device {name!r} is unknown; use auto, cpu or cuda")
    return torch.device(name)


def loss_options(objective: dict, target: str) -> tuple[dict, dict]:
    """(validation, training) keyword arguments of :func:`diffusion_loss` for a checkpoint's objective."""
    loss_opts = {"kind": objective["loss"], "target": target, "weighting": objective["weighting"],
                 "gamma": float(objective["gamma"]), "known_clean": objective.get("known_in_xt") == "clean"}
    return loss_opts, {**loss_opts, "aux_ce": float(objective.get("aux_ce") or 0.0)}


#: AdamW learning rate of a new run when --lr is not given
DEFAULT_LR = 2e-4


def lr_at(step: int, base: float, steps: int, cooldown: int | None) -> float:
    """Learning rate of training step ``step`` (0-based, the step about to be taken): ``base``, or, with a
    cooldown of N steps, ``base`` until ``steps - N`` and then linearly down to ``base / N`` at the last
    step (warmup-stable-decay: a lineage trains at a constant rate and a branch of it is cooled down
    before it is shipped). A pure function of the step, so a resumed cooldown continues exactly."""
    if not cooldown:
        return base
    return base * min(1.0, max(steps - step, 0) / cooldown)


def resolve_lr(opts_lr: float | None, resumed: dict | None) -> float:
    """The run's peak lr: the one asked for, else its lineage's last (resume), else :data:`DEFAULT_LR`."""
    if opts_lr is not None:
        if not (isinstance(opts_lr, (int, float)) and 0 < opts_lr < 1):
            raise GPEngineError(f"--lr must be a number in (0, 1), got {opts_lr!r}")
        return float(opts_lr)
    if resumed is not None:
        runs = ((resumed.get("training") or {}).get("history") or {}).get("runs") or []
        if runs and "cooldown_steps" in runs[-1] and runs[-1].get("lr"):  # recorded since the rate is resolved
            return float(runs[-1]["lr"])
        # older runs recorded the CLI's --lr even where the optimizer state's rate was used: take that one
        return float(resumed["optimizer"]["param_groups"][0]["lr"])
    return DEFAULT_LR


def cpu_has_bf16_matrix_units() -> bool:
    """True when this CPU multiplies bf16 in hardware tiles (Intel AMX): there bf16 autocast trains the
    U-Net about twice as fast as fp32 (bench/results/train_precision.json); elsewhere bf16 is emulated
    and slower, so ``auto`` stays fp32."""
    try:
        return bool(torch.cpu._is_amx_tile_supported()) and bool(torch.cpu._is_avx512_bf16_supported())
    except (AttributeError, RuntimeError):  # private API: absent or failing on other builds
        return False


def pick_precision(name: str, device: torch.device) -> str:
    if name == "auto":
        if device.type == "cuda":
            return "bf16"
        return "bf16" if cpu_has_bf16_matrix_units() else "fp32"
    if name not in ("bf16", "fp16", "fp32"):
        raise GPEngineError(f"precision {name!r} is unknown; use auto, bf16, fp16 or fp32")
    if name == "fp16" and device.type != "cuda":
        raise GPEngineError("fp16 training needs CUDA; use --precision fp32 (or bf16) on CPU")
    return name


#: share of training steps whose x0_prev is the model's own first-pass estimate (the rest get zero)
SELF_COND_SHARE = 0.5

#: logit = AUX_CE_SCALE · x̂₀ for the bits' auxiliary cross-entropy (x̂₀ = ±1 ↦ p = 0.98 / 0.02)
AUX_CE_SCALE = 4.0


def diffusion_loss(model: torch.nn.Module, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor,
                   sqrt_ab: torch.Tensor, sqrt_1mab: torch.Tensor, kind: str = "mse", target: str = "eps",
                   weighting: str = "uniform", gamma: float = DEFAULT_GAMMA,
                   return_common: bool = False, aux_ce: float = 0.0, known: torch.Tensor | None = None,
                   known_clean: bool = False, self_cond: bool | None = None):
    """Loss at timesteps ``t``: x_t = √ᾱ x0 + √(1-ᾱ) ε, per-sample loss(model(x_t, t), target) × weight.

    ``return_common`` also returns a figure comparable across targets and weightings: the error of the
    implied x̂₀ weighted by min(SNR, 5), i.e. the Min-SNR-5 MSE (ε-MSE would be dominated by the
    lowest timesteps for an x₀ model, x₀-MSE by the highest for an ε model).

    ``aux_ce`` > 0 (analog bits, x0 = ±1): adds ``aux_ce`` × the binary cross-entropy of the implied
    x̂₀ (logit ``AUX_CE_SCALE``·x̂₀) against the bits, weighted by min(SNR, 5)/5 so that the noisiest
    steps, whose x̂₀ is a guess, weigh little: an error now costs by the bit it flips, not only by
    its distance.

    ``known`` [B, 1, ...] (1 = known voxel; conditional models, :mod:`gp_engine.conditional`): the
    network also gets the condition (known values and mask) and every loss is averaged over the
    unknown voxels only; ``known_clean``: the known voxels of x_t hold their clean values (TD-Paint's
    timestep 0 for known voxels) instead of noisy ones.

    ``self_cond`` (self-conditioning models, :mod:`gp_engine.self_cond`): None = the model takes no
    ``x0_prev``; False = it gets zero; True = it gets its own clipped x̂₀ from a first pass with zero
    (no gradient through that pass).
    """
    a, s = sqrt_ab[t], sqrt_1mab[t]
    shape = (-1,) + (1,) * (x0.dim() - 1)
    xt = a.view(shape) * x0 + s.view(shape) * noise
    if known is not None and known_clean:
        xt = torch.where(known[:, :1] > 0, x0, xt)
    from .self_cond import call_net, x0_prev_torch

    cond = None
    if known is not None:
        from .conditional import make_cond_torch

        cond = make_cond_torch(x0, known)
    x0_prev = None if self_cond is None else torch.zeros_like(xt)
    if self_cond:
        from .parameterization import to_x0

        with torch.no_grad():
            first = call_net(model, xt, t.float(), cond, x0_prev).float()
        x0_prev = x0_prev_torch(to_x0(target, first, xt, a, s)).to(xt.dtype)
    pred = call_net(model, xt, t.float(), cond, x0_prev).float()
    unknown = None if known is None else (1.0 - known[:, :1].float()).expand_as(pred)

    def per_sample_mean(e: torch.Tensor) -> torch.Tensor:
        if unknown is None:
            return e.flatten(1).mean(dim=1)
        return (e * unknown).flatten(1).sum(dim=1) / unknown.flatten(1).sum(dim=1).clamp_min(1.0)

    want = training_target(target, x0, noise, a, s)
    err = (pred - want).abs() if kind == "l1" else (pred - want) ** 2
    per_sample = per_sample_mean(err)
    loss = (per_sample * loss_weight(weighting, target, a, s, gamma)).mean()
    if aux_ce:
        from .parameterization import to_x0

        x0_hat = to_x0(target, pred, xt, a, s).clamp(-3.0, 3.0)
        bce = per_sample_mean(torch.nn.functional.binary_cross_entropy_with_logits(
            AUX_CE_SCALE * x0_hat, (x0 > 0).float(), reduction="none"))
        snr_w = torch.clamp((a / s) ** 2, max=5.0) / 5.0
        loss = loss + aux_ce * (bce * snr_w).mean()
    if not return_common:
        return loss
    mse = per_sample_mean((pred.detach() - want) ** 2)
    return loss, (mse * loss_weight("min-snr", target, a, s, 5.0)).mean()


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    ema_p = [p for p in ema.parameters()]
    src = [p.detach() for p in model.parameters()]
    torch._foreach_lerp_(ema_p, src, 1.0 - decay)
    for b_e, b in zip(ema.buffers(), model.buffers()):
        b_e.copy_(b)


def ema_decay_at(step: int, decay: float) -> float:
    """Warm-up of the EMA decay, min(decay, (1+step)/(10+step)): early EMA follows the fast-moving weights."""
    return min(decay, (1.0 + step) / (10.0 + step))


def plot_loss_curve(history: dict, path: str | os.PathLike, title: str = "") -> Path | None:
    """Train (and validation) loss against step, log y axis, written atomically as PNG."""
    train = history.get("train") or []
    if not train:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    s, l = zip(*train)
    ax.plot(s, l, label="train", lw=1)
    val = history.get("val") or []
    if val:
        vs, vl = zip(*val)
        ax.plot(vs, vl, "o-", label="validation (EMA)", ms=3)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title, fontsize=9)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.subplots_adjust(left=0.16, right=0.97, top=0.9, bottom=0.13)
    return save_figure(fig, path)


def loss_curve_path(out: str | os.PathLike) -> Path:
    out = Path(out)
    return out.with_name(out.stem + "_loss_curve.png")


def lineage_validation(meta: dict, seed: int, blocks: int) -> tuple[int, int]:
    """(seed, number of blocks) of a lineage's validation set from its checkpoint's training metadata:
    ``validation`` (written since the sixth session), else the options of the run that wrote it."""
    v = meta.get("validation")
    if isinstance(v, dict) and "seed" in v and "blocks" in v:
        return int(v["seed"]), int(v["blocks"])
    o = meta.get("options") or {}
    return int(o.get("seed", seed)), int(o.get("val_blocks", blocks))


class _Validator:
    """Loss of a model on fixed held-out blocks, fixed noise and fixed timesteps."""

    def __init__(self, source: BlockSource, n_blocks: int, T: int, seed: int, batch: int,
                 masks: "MaskSampler | None" = None):
        g = torch.Generator(device=source.device).manual_seed(seed + 7919)
        self.x0 = source.tiling_blocks(g, limit=n_blocks)
        n = self.x0.shape[0]
        self.t = torch.randint(0, T, (n,), device=source.device, generator=g)
        self.noise = torch.randn(self.x0.shape, device=source.device, generator=g)
        self.known = masks.draw(n, g) if masks is not None else None
        self.batch = batch

    @torch.no_grad()
    def __call__(self, model, sqrt_ab, sqrt_1mab, autocast, **loss_opts) -> tuple[float, float]:
        """(training objective, min(SNR, 5)-weighted x̂₀ MSE) on the fixed blocks."""
        total, total_eps, n = 0.0, 0.0, self.x0.shape[0]
        for i in range(0, n, self.batch):
            sl = slice(i, i + self.batch)
            with autocast():
                loss, common = diffusion_loss(model, self.x0[sl], self.t[sl], self.noise[sl], sqrt_ab,
                                              sqrt_1mab, return_common=True,
                                              known=None if self.known is None else self.known[sl],
                                              **loss_opts)
            total += float(loss) * self.x0[sl].shape[0]
            total_eps += float(common) * self.x0[sl].shape[0]
        return total / n, total_eps / n


class MaskSampler:
    """Known-voxel masks for conditional training, shaped like the planner's real ones
    (:mod:`gp_engine.outpaint_masks`: faces, edges, corners, several at once, the empty mask of first
    blocks), drawn reproducibly from the trainer's torch generator (so ``--resume`` continues exactly)."""

    def __init__(self, device: torch.device, block: int = 32):
        from .outpaint_masks import mask_bank

        self.bank = mask_bank(block=block)
        self.device = device

    def draw(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """[n, 1, s, s, s] float32 masks (1 = known)."""
        import numpy as np

        from .outpaint_masks import sample_masks

        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator, device=generator.device))
        m = sample_masks(self.bank, n, np.random.default_rng(seed))
        return torch.from_numpy(m[:, None].astype(np.float32)).to(self.device)


def _init_weights(base: dict, config: dict) -> dict:
    """EMA weights of the ``--init-from`` checkpoint ``base`` for ``config`` (its U-Net, encoding and
    schedule): an unconditional parent is widened for a conditional config (a conditional one stays
    conditional), a parent without self-conditioning for a self-conditioning one (zero weights on the
    new stem channels: the same function at the start; a self-conditioning one stays so)."""
    from .conditional import widen_state_dict
    from .self_cond import widen_stem

    state = base["ema"]
    p_cond, n_cond = (int(c.get("cond_channels", 0) or 0) for c in (base["config"], config))
    p_sc, n_sc = (bool(c.get("self_cond", False)) for c in (base["config"], config))
    if p_cond != n_cond:
        if p_sc:
            raise GPEngineError("--init-from: a self-conditioning parent cannot be made conditional (its stem "
                                "channels would move); start the conditional run from a parent without it")
        state = widen_state_dict(state, config)  # unconditional parent, --conditional run
    if n_sc and not p_sc:
        state = widen_stem(state, int(config["in_channels"]) + n_cond, int(config["in_channels"]))
    if config.get("attention") and not base["config"].get("attention"):
        state = with_fresh_attention(state, config)
    return state


def with_attention_added(ckpt: dict) -> dict:
    """A trainer checkpoint without attention, grown by the fresh (identity) layer: weights and EMA get it
    (:func:`with_fresh_attention`), the optimizer's per-parameter moments move to the new parameter order
    (the new ones start without moments, as Adam's first step on them)."""
    config = {**ckpt["config"], "attention": True}
    old_names = [n for n, _ in build_unet(ckpt["config"]).named_parameters()]
    new_names = [n for n, _ in build_unet(config).named_parameters()]
    opt = ckpt["optimizer"]
    if len(opt["param_groups"]) != 1 or len(opt["param_groups"][0]["params"]) != len(old_names):
        raise GPEngineError("--attention on --resume: the checkpoint's optimizer state does not match its U-Net "
                            "(one parameter group expected); start a new run with --init-from CKPT --attention")
    index = {n: opt["param_groups"][0]["params"][i] for i, n in enumerate(old_names)}
    state = {j: opt["state"][index[n]] for j, n in enumerate(new_names) if n in index and index[n] in opt["state"]}
    group = {**opt["param_groups"][0], "params": list(range(len(new_names)))}
    return {**ckpt, "config": config, "model": with_fresh_attention(ckpt["model"], config),
            "ema": with_fresh_attention(ckpt["ema"], config), "optimizer": {"state": state, "param_groups": [group]}}


def with_fresh_attention(state: dict, config: dict) -> dict:
    """A parent's weights with the fresh (zero-output, identity) attention layer of ``config``'s U-Net added:
    the warm-started model computes exactly the parent's function until training moves it."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        fresh = build_unet(config).state_dict()
    return {**state, **{k: v for k, v in fresh.items() if k.startswith("mid_attn.")}}


def _with_colouring(encoding: dict, colouring: str | None) -> dict:
    """The encoding with its data colouring: ``colouring`` if given (a lineage may switch: only the training
    data changes, not the model), else the lineage's ("dsatur" for runs from before the choice existed)."""
    from .encoding import check_colouring

    if encoding["kind"] == "paper":
        if colouring:
            raise GPEngineError(f"--colouring {colouring}: the paper encoding has no grain colours; drop it or "
                                "train a separable or bits model")
        return encoding
    return {**encoding, "colouring": check_colouring(colouring or encoding.get("colouring") or "dsatur")}


def _load_sources(opts: TrainOptions, device: torch.device, encoding: dict, resumed: dict | None, crop: int):
    if resumed is not None:
        train_files = [Path(p) for p in resumed["training"]["train_files"]]
        val_files = [Path(p) for p in resumed["training"]["val_files"]]
        if opts.data:  # the same files (by name) where they live on this machine
            here = {f.name: f for f in list_volume_files(opts.data)}
            missing = [f.name for f in train_files + val_files if f.name not in here]
            if missing:
                raise GPEngineError(f"cannot resume: --data lacks {', '.join(missing[:3])} "
                                    f"({len(missing)} of the run's files); give the folder that holds them")
            train_files = [here[f.name] for f in train_files]
            val_files = [here[f.name] for f in val_files]
        gone = [str(p) for p in train_files + val_files if not p.is_file()]
        if gone:
            raise GPEngineError(f"cannot resume: training files {', '.join(gone[:3])} are gone; "
                                "pass --data DIR where they live, or start a new run")
    else:
        if not opts.data:
            raise GPEngineError("no training data given; use --data DIR (volume files: .npz/.npy/.vti/SPPARKS dump)")
        train_files, val_files = split_train_val(list_volume_files(opts.data), opts.val_pattern)
    kind, levels, bits = encoding["kind"], encoding.get("levels"), encoding.get("bits")
    colouring = encoding.get("colouring", "dsatur")
    train_vols = [load_volume(p) for p in train_files]
    train_src = BlockSource(train_vols, kind, levels, device, block=crop, bits=bits, colouring=colouring)
    # validation always on 32³ blocks (what the sampler runs), whatever the training crop
    val_src = (BlockSource([load_volume(p) for p in val_files], kind, levels, device, bits=bits,
                           colouring=colouring)
               if val_files else None)
    return train_files, val_files, train_src, val_src


def train(opts: TrainOptions) -> dict:
    """Train (or resume) and write ``opts.out``; returns the training metadata dict."""
    t_start, cpu_start = time.time(), time.process_time()
    if opts.threads:
        torch.set_num_threads(int(opts.threads))
    if opts.steps < 1 or opts.batch_size < 1:
        raise GPEngineError(f"--steps and --batch-size must be >= 1, got {opts.steps}, {opts.batch_size}")
    if opts.loss not in ("mse", "l1"):
        raise GPEngineError(f"--loss {opts.loss!r} is unknown; use mse or l1")
    if opts.crop not in (16, 32):
        raise GPEngineError(f"--crop {opts.crop} is not supported; use 16 or 32")
    out = Path(opts.out)
    device = pick_device(opts.device)
    precision = pick_precision(opts.precision, device)
    if device.type == "cuda":  # fixed block shapes: let cuDNN pick the fastest 3-D convolutions once
        torch.backends.cudnn.benchmark = True

    resumed = None
    if opts.resume and out.is_file():
        resumed = load_checkpoint(out, map_location=device)
        if resumed.get("model") is None or resumed.get("optimizer") is None or not resumed.get("rng"):
            raise GPEngineError(f"{out} is a built model copy (EMA weights only, no optimizer state), as "
                                "'gp-engine build' writes; it cannot be resumed: resume from the original "
                                "trainer checkpoint, or start a new run with another --out")
    elif opts.resume:
        print(f"gp-engine train: {out} does not exist yet; starting a new run", file=sys.stderr)
    elif out.exists() and not opts.force:
        raise GPEngineError(f"{out} exists; use --resume to continue it or --force to overwrite it")
    try:  # an unusable --out (read-only, not a folder, ...) fails now, not at the first checkpoint
        out.parent.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=out.parent).close()
    except OSError as exc:
        exc.filename, exc.filename2 = str(out), None
        raise

    if resumed is not None:
        config, schedule_d, encoding = resumed["config"], resumed["schedule"], resumed["encoding"]
        schedule = Schedule.from_dict(schedule_d)
        target = check_target(resumed.get("prediction", "eps"))
        objective = resumed.get("objective") or {"loss": opts.loss, "weighting": "uniform",
                                                 "gamma": DEFAULT_GAMMA, "crop": 32}
        objective.setdefault("aux_ce", 0.0)
    else:
        target = check_target(opts.target)
        objective = {"loss": opts.loss, "weighting": check_weighting(opts.weighting),
                     "gamma": float(opts.gamma), "crop": int(opts.crop), "aux_ce": float(opts.aux_ce)}
        if opts.aux_ce and opts.encoding != "bits":
            raise GPEngineError(f"--aux-ce {opts.aux_ce} needs --encoding bits (the cross-entropy is on the "
                                "predicted bits); drop it or train an analog-bits model")
        if opts.aux_ce < 0 or not math.isfinite(opts.aux_ce):
            raise GPEngineError(f"--aux-ce {opts.aux_ce} must be a finite number ≥ 0")
        config = preset_config(opts.preset)
        schedule = linear_schedule(opts.T, opts.beta_start, opts.beta_end)
        schedule_d = schedule.to_dict()
        encoding = {"kind": opts.encoding, "levels": None}
        if opts.encoding == "separable":
            from .blocks import default_levels
            encoding["levels"] = int(opts.levels or default_levels())
        elif opts.encoding == "bits":
            from .encoding import DEFAULT_BITS
            encoding["bits"] = int(opts.bits or DEFAULT_BITS)
            encoding["levels"] = 1 << encoding["bits"]
            config = {**config, "in_channels": encoding["bits"], "out_channels": encoding["bits"]}
        elif opts.encoding != "paper":
            raise GPEngineError(f"--encoding {opts.encoding!r} is unknown; use separable, bits or paper")

    init_state, init_base = None, None
    if resumed is None and opts.init_from:
        base = init_base = load_checkpoint(opts.init_from)
        config, schedule_d, encoding = dict(base["config"]), base["schedule"], base["encoding"]
        schedule = Schedule.from_dict(schedule_d)
        target = check_target(base.get("prediction", "eps"))
        objective = {**(base.get("objective") or {}), "crop": int(opts.crop),
                     "aux_ce": float((base.get("objective") or {}).get("aux_ce") or 0.0)}
        objective.setdefault("loss", opts.loss)
        objective.setdefault("weighting", "uniform")
        objective.setdefault("gamma", DEFAULT_GAMMA)
        if opts.extend_schedule:
            from .diffusion import extend_linear

            schedule = extend_linear(schedule, int(opts.extend_schedule))
            schedule_d = {**schedule.to_dict(), "extended_from_T": int(base["schedule"]["T"])}
    elif opts.extend_schedule:
        raise GPEngineError("--extend-schedule continues a parent's schedule: it needs --init-from CKPT (a new run "
                            "sets --T and --beta-end directly; a resumed run keeps its schedule)")
    encoding = _with_colouring(encoding, opts.colouring)
    if resumed is None and opts.conditional:
        from .conditional import cond_channels

        if int(objective.get("crop", 32)) != 32:
            raise GPEngineError("--conditional trains on 32³ blocks (the planner's masks are 32³); drop --crop")
        config = {**config, "cond_channels": cond_channels(int(config.get("in_channels", 1)))}
        objective["known_in_xt"] = opts.known_input or "clean"
    if resumed is None and opts.self_cond:
        config = {**config, "self_cond": True}
        objective["self_cond_share"] = SELF_COND_SHARE
    if resumed is not None and opts.self_cond and not config.get("self_cond"):
        raise GPEngineError(f"--self-cond: {out} was trained without self-conditioning and a resumed run keeps "
                            f"its model; start a new run from it with --init-from {out} --self-cond")
    if resumed is None and opts.attention:
        config = {**config, "attention": True}
    grown = resumed is not None and opts.attention and not config.get("attention")
    if grown:  # the lineage grows the layer in place: same step, optimizer moments and validation curve
        resumed = with_attention_added(resumed)
        config = resumed["config"]
    if resumed is None and opts.init_from:
        init_state = _init_weights(init_base, config)
    conditional = int(config.get("cond_channels", 0) or 0) > 0
    objective["known_mask_loss"] = "unknown voxels only" if conditional else None
    if conditional:  # checkpoints from before the choice existed fed noisy known voxels
        objective.setdefault("known_in_xt", "noisy")
        if objective["known_in_xt"] not in ("clean", "noisy"):
            raise GPEngineError(f"objective known_in_xt {objective['known_in_xt']!r} is unknown; use clean or noisy")
        if resumed is not None and opts.known_input and opts.known_input != objective["known_in_xt"]:
            raise GPEngineError(f"--known-input {opts.known_input}: this run feeds {objective['known_in_xt']} known "
                                "voxels; a resumed run keeps its convention (start a new run to change it)")
    train_files, val_files, src, val_src = _load_sources(opts, device, encoding, resumed,
                                                            int(objective.get("crop", 32)))
    masks = MaskSampler(device) if conditional else None
    loss_opts, train_loss_opts = loss_options(objective, target)
    self_cond = bool(config.get("self_cond", False))
    if self_cond:  # validation: always the two-pass estimate, what sampling feeds after the first step
        loss_opts["self_cond"] = True
    sc_share = float(objective.get("self_cond_share", SELF_COND_SHARE))

    torch.manual_seed(opts.seed)  # weight init
    model = build_unet(config).to(device)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    if opts.cooldown_steps is not None and not (isinstance(opts.cooldown_steps, int) and opts.cooldown_steps >= 1):
        raise GPEngineError(f"--cooldown-steps must be an integer >= 1, got {opts.cooldown_steps!r}")
    base_lr = resolve_lr(opts.lr, resumed)
    # fused AdamW on CUDA: one kernel for all parameters instead of a dozen per tensor
    optim = torch.optim.AdamW(model.parameters(), lr=base_lr, weight_decay=opts.weight_decay,
                              **({"fused": True} if device.type == "cuda" else {}))
    scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
    gen = torch.Generator(device=device).manual_seed(opts.seed)
    step, samples, wall_before, cpu_before = 0, 0, 0.0, 0.0
    history: dict = {"train": [], "val": [], "val_x0w": []}
    # the lineage's seed: its validation blocks (and the self-conditioning coin) stay the same across
    # --resume whatever --seed a later run is given, so the validation curve is one curve
    seed, val_blocks = opts.seed, opts.val_blocks
    if resumed is not None:
        seed, val_blocks = lineage_validation(resumed["training"], seed, val_blocks)
    init_from = None
    if init_state is not None:  # a new run warm-started from another checkpoint's EMA weights
        model.load_state_dict(init_state)
        ema.load_state_dict(init_state)
        bmeta = init_base.get("training") or {}
        init_from = {"path": str(opts.init_from), "step": int(init_base.get("step", 0)),
                     "samples_seen": int(bmeta.get("samples_seen", 0)),
                     "cpu_time_s": float(bmeta.get("cpu_time_s", bmeta.get("wall_time_s", 0.0)) or 0.0),
                     "wall_time_s": float(bmeta.get("wall_time_s", 0.0) or 0.0),
                     "device": bmeta.get("device"),
                     "conditional": int(init_base["config"].get("cond_channels", 0) or 0) > 0}
    if resumed is not None:
        model.load_state_dict(resumed["model"])
        ema.load_state_dict(resumed["ema"])
        optim.load_state_dict(resumed["optimizer"])
        if scaler is not None and resumed.get("scaler"):
            scaler.load_state_dict(resumed["scaler"])
        step = int(resumed["step"])
        rng_device = resumed["rng"].get("device", "cpu")
        if rng_device == device.type:
            gen.set_state(resumed["rng"]["generator"].cpu())
        else:  # a CPU generator's state cannot drive a CUDA one (or back): reseed from the step
            gen.manual_seed(seed * 1_000_003 + step)
            print(f"gp-engine train: {out} was trained on {rng_device}, this run is on {device.type}: the "
                  f"random stream is reseeded from step {step} (weights, optimizer and counters continue)",
                  file=sys.stderr)
        meta = resumed["training"]
        samples, wall_before = int(meta["samples_seen"]), float(meta["wall_time_s"])
        cpu_before = float(meta.get("cpu_time_s", meta["wall_time_s"]))
        history = {**history, **(meta.get("history") or {})}
        init_from = meta.get("init_from")

    # the lineage's runs: where each stretch of training ran, from which step, with what settings
    history.setdefault("runs", []).append({
        "from_step": step, "device": _device_name(device), "precision": precision, "batch_size": opts.batch_size,
        "lr": base_lr, "cooldown_steps": opts.cooldown_steps, "compile": bool(opts.compile and device.type == "cuda"),
        "colouring": encoding.get("colouring"), **({"attention_added": True} if grown else {}),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    ab = torch.tensor(schedule.alphas_cumprod, dtype=torch.float32, device=device)
    sqrt_ab, sqrt_1mab = ab.sqrt(), (1.0 - ab).sqrt()
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)

    def autocast():
        if amp_dtype is None:
            return torch.autocast(device.type, enabled=False)
        return torch.autocast(device.type, dtype=amp_dtype)

    def full_precision():  # validation: fp32 whatever the training precision, so that a lineage's
        return torch.autocast(device.type, enabled=False)  # val curve compares across its runs

    fwd = torch.compile(model) if (opts.compile and device.type == "cuda") else model
    validator = (_Validator(val_src, val_blocks, schedule.T, seed, opts.batch_size, masks)
                 if val_src else None)
    run_opts = {k: v for k, v in asdict(opts).items() if k not in ("resume", "force", "progress")}

    def metadata(last_train: float | None, last_val: float | None) -> dict:
        return {
            "train_files": [str(p) for p in train_files], "val_files": [str(p) for p in val_files],
            "steps": step, "samples_seen": samples, "batch_size": opts.batch_size,
            "wall_time_s": wall_before + (time.time() - t_start),
            "cpu_time_s": cpu_before + (time.process_time() - cpu_start), "device": _device_name(device),
            "precision": precision, "final_train_loss": last_train, "final_val_loss": last_val,
            "final_val_x0w": history["val_x0w"][-1][1] if history["val_x0w"] else None,
            "parameters": count_parameters(model), "colour_conflicts": src.conflicts,
            "history": history, "options": run_opts, "torch": str(torch.__version__),
            "validation": {"seed": seed, "blocks": val_blocks},
            # warm start: the compute of the checkpoint this run started from (total = it + this run)
            "init_from": init_from,
        }

    last_plot = [time.time()]

    def checkpoint(last_train, last_val, final: bool = False) -> None:
        save_checkpoint(out, {
            "config": config, "schedule": schedule_d, "prediction": target, "objective": objective,
            "encoding": encoding,
            "ema": ema.state_dict(), "model": model.state_dict(), "optimizer": optim.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None,
            "rng": {"generator": gen.get_state(), "device": device.type}, "step": step,
            "training": metadata(last_train, last_val),
        })
        if final or time.time() - last_plot[0] > 120:  # plotting costs ~1 s: not at every checkpoint
            plot_loss_curve(history, loss_curve_path(out), f"{'conditional ' if conditional else ''}"
                                                             f"{config.get('preset')} {encoding['kind']} "
                                                             f"{target} {step} steps, {samples} blocks")
            last_plot[0] = time.time()

    last_train = history["train"][-1][1] if history["train"] else None
    last_val = history["val"][-1][1] if history["val"] else None
    from tqdm import tqdm

    bar = tqdm(total=opts.steps, initial=min(step, opts.steps), desc="train", unit="step",
               disable=not opts.progress, file=sys.stderr, dynamic_ncols=True)
    window, t_window, n_window = torch.zeros((), device=device), time.time(), 0
    stopped_by_time = False
    cpu_start = time.process_time()  # the CPU budget buys training steps, not data loading
    # Ctrl-C / SIGTERM (a scheduler's stop, `kill`): finish the step, checkpoint, stop; a second
    # signal interrupts at once (the last periodic checkpoint is then what is left)
    stop = StopRequest().install()
    model.train()
    try:
        while step < opts.steps:
            x0 = src.sample(opts.batch_size, gen, opts.random_fraction)
            t = torch.randint(0, schedule.T, (opts.batch_size,), device=device, generator=gen)
            noise = torch.randn(x0.shape, device=device, generator=gen)
            known = masks.draw(opts.batch_size, gen) if masks is not None else None
            if self_cond:  # a fixed coin per (seed, step): reproducible across --resume, no device sync
                train_loss_opts["self_cond"] = random.Random(seed * 1_000_003 + step).random() < sc_share
            with autocast():
                loss = diffusion_loss(fwd, x0, t, noise, sqrt_ab, sqrt_1mab, known=known, **train_loss_opts)
            optim.zero_grad(set_to_none=True)
            for group in optim.param_groups:  # the step's rate (a resumed optimizer state holds the last one)
                group["lr"] = lr_at(step, base_lr, opts.steps, opts.cooldown_steps)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.unscale_(optim)
            else:
                loss.backward()
            if opts.grad_clip and opts.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), opts.grad_clip)
            if scaler is not None:
                scaler.step(optim)
                scaler.update()
            else:
                optim.step()
            ema_update(ema, model, ema_decay_at(step, opts.ema_decay))
            step += 1
            samples += opts.batch_size
            window += loss.detach().float()   # summed on the device: no sync per step
            n_window += 1
            if step % opts.log_every == 0 or step == opts.steps:
                last_train = float(window) / n_window
                if not math.isfinite(last_train):
                    raise GPEngineError(f"training loss became {last_train} near step {step}; lower --lr or use fp32")
                history["train"].append([step, last_train])
                rate = n_window * opts.batch_size / max(time.time() - t_window, 1e-9)
                bar.set_postfix(loss=f"{last_train:.4f}", val=f"{last_val:.4f}" if last_val else "-",
                                blocks_s=f"{rate:.1f}")
                window, t_window, n_window = torch.zeros((), device=device), time.time(), 0
            bar.update(1)
            if validator is not None and (step % opts.val_every == 0 or step == opts.steps):
                last_val, val_x0w = validator(ema, sqrt_ab, sqrt_1mab, full_precision, **loss_opts)
                history["val"].append([step, last_val])
                history["val_x0w"].append([step, val_x0w])
            if opts.time_limit_min is not None and time.time() - t_start > 60.0 * opts.time_limit_min:
                stopped_by_time = True
                break
            if (opts.cpu_time_limit_min is not None
                    and time.process_time() - cpu_start > 60.0 * opts.cpu_time_limit_min):
                stopped_by_time = True
                break
            if stop.requested:
                stopped_by_time = True
                bar.write(f"train: stopping at step {step} ({stop.requested}); writing the checkpoint", file=sys.stderr)
                break
            if step % opts.checkpoint_every == 0:
                checkpoint(last_train, last_val)
    finally:
        stop.uninstall()
    bar.close()
    if stopped_by_time and validator is not None and (not history["val"] or history["val"][-1][0] != step):
        last_val, val_x0w = validator(ema, sqrt_ab, sqrt_1mab, full_precision, **loss_opts)
        history["val"].append([step, last_val])
        history["val_x0w"].append([step, val_x0w])
    checkpoint(last_train, last_val, final=True)
    meta = metadata(last_train, last_val)
    meta["stopped_by_time_limit"] = stopped_by_time and not stop.requested
    meta["stopped_by_signal"] = stop.requested
    return meta


class StopRequest:
    """SIGINT/SIGTERM handlers that ask the training loop to stop after the current step (the loop
    then writes its checkpoint); a second signal raises KeyboardInterrupt as usual. Only installed in
    the main thread (signal handlers cannot be set elsewhere)."""

    def __init__(self):
        self.requested: str | None = None
        self._old: dict = {}

    def _handle(self, signum, frame):
        import signal

        if self.requested:  # second signal: stop now
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name

    def install(self) -> "StopRequest":
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def uninstall(self) -> None:
        import signal

        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old = {}


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return f"cpu: {line.split(':', 1)[1].strip()} ({torch.get_num_threads()} threads)"
    except OSError:
        pass
    return "cpu"


__all__ = ["TrainOptions", "train", "diffusion_loss", "ema_update", "ema_decay_at", "plot_loss_curve",
           "loss_curve_path", "pick_device", "pick_precision", "DEFAULT_LR", "lr_at", "resolve_lr", "loss_options",
           "cpu_has_bf16_matrix_units"]

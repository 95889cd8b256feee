"""Plain 3D U-Net predicting the DDPM noise ε of a 32³ block.

Conv3d + GroupNorm (num_groups > 1: TensorRT has failed on num_groups = 1) + SiLU, a sinusoidal
embedding of the (float) timestep index fed through an MLP into every residual block, one residual block
per level, skip connections by concatenation, stride-2 convolutions down and transposed convolutions up.
Only standard ONNX ops are produced on export.

The model is fully described by a JSON-able config dict (stored in checkpoints and manifests)::

    {"channels": [8, 16], "in_channels": 1, "out_channels": 1, "time_dim": 32, "cond_channels": 0,
     "self_cond": false}

A *conditional* (outpainting) model has ``cond_channels`` > 0: ``forward(x, t, cond)`` concatenates
``cond`` [B, cond_channels, D, H, W] (the known values, zero where unknown, and the known mask; see
:mod:`gp_engine.conditional`) to the noisy block before the first convolution. A *self-conditioning*
model (``self_cond``, :mod:`gp_engine.self_cond`) also takes ``x0_prev`` [B, in_channels, D, H, W], its
previous estimate of the clean block (zero when there is none), concatenated after ``cond``. With
``attention: true`` (and ``attention_heads``, default 4) the coarsest level ends in a self-attention layer
(:class:`MidAttention`) that lets every position of the block see every other.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .errors import GPEngineError

#: heads of the optional self-attention at the coarsest level (``attention: true``; 64 channels -> 16 per head)
ATTENTION_HEADS = 4

PRESETS: dict[str, dict] = {
    "tiny": {"channels": [8, 16]},           # tests and the first CPU-trained placeholder
    "mini": {"channels": [16, 32]},          # CPU-trainable capacity steps
    "mini3": {"channels": [16, 32, 64]},
    "small": {"channels": [32, 64]},         # the reference code's fast model
    "base": {"channels": [64, 128, 256]},
}


def preset_config(name: str) -> dict:
    """Full config dict of a named preset (``tiny``, ``small``, ``base``)."""
    if name not in PRESETS:
        raise GPEngineError(f"unknown U-Net preset {name!r}; choose one of {', '.join(PRESETS)}")
    return normalize_config({**PRESETS[name], "preset": name})


def normalize_config(config: dict) -> dict:
    """Fill defaults and check a config dict; raises GPEngineError naming the bad field."""
    cfg = dict(config)
    ch = cfg.get("channels")
    if not (isinstance(ch, (list, tuple)) and len(ch) >= 1 and all(isinstance(c, int) and c >= 4 for c in ch)):
        raise GPEngineError(f"U-Net config 'channels' must be a list of integers >= 4, got {ch!r}")
    cfg["channels"] = [int(c) for c in ch]
    cfg.setdefault("in_channels", 1)
    cfg.setdefault("out_channels", 1)
    cfg.setdefault("time_dim", 4 * cfg["channels"][0])
    if cfg["time_dim"] % 2:
        raise GPEngineError(f"U-Net config 'time_dim' must be even, got {cfg['time_dim']}")
    cfg.setdefault("preset", None)
    cond = cfg.setdefault("cond_channels", 0)
    if not (isinstance(cond, int) and cond >= 0):
        raise GPEngineError(f"U-Net config 'cond_channels' must be an integer >= 0, got {cond!r}")
    sc = cfg.setdefault("self_cond", False)
    if not isinstance(sc, bool):
        raise GPEngineError(f"U-Net config 'self_cond' must be true or false, got {sc!r}")
    # optional, written only when on, so that configs from before the choice read and compare as before
    attn = cfg.get("attention", False)
    if not isinstance(attn, bool):
        raise GPEngineError(f"U-Net config 'attention' must be true or false, got {attn!r}")
    if attn:
        heads = cfg.setdefault("attention_heads", ATTENTION_HEADS)
        if not (isinstance(heads, int) and heads >= 1 and cfg["channels"][-1] % heads == 0):
            raise GPEngineError(f"U-Net config 'attention_heads' must be a positive divisor of the last channel "
                                f"count ({cfg['channels'][-1]}), got {heads!r}")
    return cfg


def norm_groups(channels: int) -> int:
    """GroupNorm groups: min(8, C // 4), reduced until it divides C, never 1 (TensorRT fails on 1)."""
    g = max(2, min(8, channels // 4))
    while channels % g:
        g -= 1
    if g < 2:
        raise GPEngineError(f"{channels} channels cannot be split into >= 2 GroupNorm groups; use an even width")
    return g


class TimeEmbedding(nn.Module):
    """Sinusoidal embedding of float timestep indices (computed in float32) followed by a 2-layer MLP."""

    def __init__(self, dim: int):
        super().__init__()
        self.half = dim // 2
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        # frequencies made here in float32 (not a buffer) so a .half() model keeps exact phases
        k = torch.arange(self.half, dtype=torch.float32, device=t.device)
        freqs = torch.exp(k * (-math.log(10000.0) / self.half))
        args = t.float()[:, None] * freqs[None, :]
        emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
        return self.mlp(emb.to(self.mlp[0].weight.dtype))


class ResBlock(nn.Module):
    """GN-SiLU-Conv, + time projection, GN-SiLU-Conv, + (1x1-projected) input."""

    def __init__(self, c_in: int, c_out: int, time_dim: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(norm_groups(c_in), c_in)
        self.conv1 = nn.Conv3d(c_in, c_out, 3, padding=1)
        self.time = nn.Linear(time_dim, c_out)
        self.norm2 = nn.GroupNorm(norm_groups(c_out), c_out)
        self.conv2 = nn.Conv3d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv3d(c_in, c_out, 1) if c_in != c_out else nn.Identity()
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(self.act(self.norm1(x)))
        h = h + self.time(temb)[:, :, None, None, None]
        h = self.conv2(self.act(self.norm2(h)))
        return h + self.skip(x)


class MidAttention(nn.Module):
    """Multi-head self-attention over every position of the coarsest level (8³ = 512 positions for a
    32³ block with three levels), so that each position sees the whole block; GN, 1×1 q/k/v, residual.

    The output projection starts at zero: a freshly added layer is the identity, so a parent trained
    without it warm-starts (``gp-engine train --init-from PARENT --attention``) to the same function.
    Written with plain matmul and softmax so that every exporter and backend runs it.
    """

    def __init__(self, channels: int, heads: int = 4):
        super().__init__()
        self.heads = heads
        self.norm = nn.GroupNorm(norm_groups(channels), channels)
        self.qkv = nn.Conv3d(channels, 3 * channels, 1)
        self.proj = nn.Conv3d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[0], x.shape[1]
        d = c // self.heads
        qkv = self.qkv(self.norm(x)).reshape(b, 3 * self.heads, d, -1)  # [B, 3h, d, N]
        q, k, v = qkv[:, :self.heads], qkv[:, self.heads:2 * self.heads], qkv[:, 2 * self.heads:]
        w = torch.softmax(torch.matmul(q.transpose(2, 3), k) * (1.0 / math.sqrt(d)), dim=-1)  # [B, h, N, N]
        out = torch.matmul(v, w.transpose(2, 3))  # [B, h, d, N]
        return x + self.proj(out.reshape(x.shape))


class UNet3D(nn.Module):
    """forward(x [B, C, D, H, W], t [B] float timestep indices[, cond][, x0_prev]) -> ε [B, C, D, H, W].

    D, H, W must be divisible by 2**(levels-1); ``cond`` is required exactly when the config has
    ``cond_channels`` > 0; ``x0_prev`` is taken (zero when omitted) exactly when it has ``self_cond``.
    """

    def __init__(self, config: dict):
        super().__init__()
        cfg = normalize_config(config)
        self.config = cfg
        ch, td = cfg["channels"], cfg["time_dim"]
        self.time_embed = TimeEmbedding(td)
        self.cond_channels = int(cfg["cond_channels"])
        self.self_cond = bool(cfg["self_cond"])
        self.stem = nn.Conv3d(cfg["in_channels"] * (2 if self.self_cond else 1) + self.cond_channels, ch[0], 3,
                              padding=1)
        self.down_blocks = nn.ModuleList()
        self.downsamples = nn.ModuleList()
        prev = ch[0]
        for i, c in enumerate(ch):
            self.down_blocks.append(ResBlock(prev, c, td))
            prev = c
            if i < len(ch) - 1:
                self.downsamples.append(nn.Conv3d(c, c, 3, stride=2, padding=1))
        self.mid = ResBlock(ch[-1], ch[-1], td)
        self.mid_attn = MidAttention(ch[-1], int(cfg["attention_heads"])) if cfg.get("attention") else None
        self.upsamples = nn.ModuleList()
        self.up_blocks = nn.ModuleList()
        for i in reversed(range(len(ch))):
            if i < len(ch) - 1:
                self.upsamples.append(nn.ConvTranspose3d(ch[i + 1], ch[i], 2, stride=2))
            self.up_blocks.append(ResBlock(2 * ch[i], ch[i], td))
        self.out_norm = nn.GroupNorm(norm_groups(ch[0]), ch[0])
        self.out_conv = nn.Conv3d(ch[0], cfg["out_channels"], 3, padding=1)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None,
                x0_prev: torch.Tensor | None = None) -> torch.Tensor:
        temb = self.time_embed(t)
        parts = [x]
        if self.cond_channels:
            if cond is None:
                raise GPEngineError("this U-Net is conditional: forward needs cond (known values and mask)")
            parts.append(cond.to(x.dtype))
        elif cond is not None:
            raise GPEngineError("this U-Net is unconditional: it takes no cond input")
        if self.self_cond:
            parts.append(torch.zeros_like(x) if x0_prev is None else x0_prev.to(x.dtype))
        elif x0_prev is not None:
            raise GPEngineError("this U-Net has no self-conditioning: it takes no x0_prev input")
        if len(parts) > 1:
            x = torch.cat(parts, dim=1)
        h = self.stem(x)
        skips = []
        n = len(self.down_blocks)
        for i, block in enumerate(self.down_blocks):
            h = block(h, temb)
            skips.append(h)
            if i < n - 1:
                h = self.downsamples[i](h)
        h = self.mid(h, temb)
        if self.mid_attn is not None:
            h = self.mid_attn(h)
        for j, block in enumerate(self.up_blocks):
            if j > 0:
                h = self.upsamples[j - 1](h)
            h = block(torch.cat([h, skips[n - 1 - j]], dim=1), temb)
        return self.out_conv(self.act(self.out_norm(h)))


def build_unet(config: dict) -> UNet3D:
    """U-Net from a config dict (as stored in a checkpoint), or from {"preset": name}."""
    if "channels" not in config and config.get("preset"):
        config = {**preset_config(config["preset"]), **config}
    return UNet3D(config)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = ["PRESETS", "preset_config", "normalize_config", "norm_groups", "UNet3D", "build_unet",
           "count_parameters"]

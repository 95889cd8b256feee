"""Training blocks: 32³ crops of grain volumes, augmented and encoded on the device in batches.

Pipeline (no per-sample Python loop): the volumes are kept on the device as one padded stack (colour
indices for the separable encoding, spin values for the paper encoding); a batch is gathered with one
advanced-indexing op from (volume, corner) pairs, then each sample gets one of the 48 cube symmetries
(applied per symmetry group of the batch by permute/flip), then the encoding is applied on the device.

Block positions per volume (paper: 27 tiling blocks + 56 blocks centred on their boundaries):

- tiling: corners ``0, 32, 64`` per axis in a 100³ volume (generally ``range(0, n - 31, 32)``): 27 blocks;
- boundary-centred: the half-grid positions ``16, 48`` (tiling + 16) centre a block on a boundary between
  two tiling blocks. Of the 98 non-tiling points of the half grid we take, deterministically,
  (a) the 8 with all three axes at boundary positions (centred on an interior vertex of the tiling) and
  (b) the 54 with exactly one axis at a boundary position (centred on a face between two tiling blocks)
  minus the 6 whose other two axes are both interior tiling positions (the faces of the central block,
  already covered by (a)'s blocks): 8 + 48 = 56 blocks in a 100³ volume. Edge-centred positions are left
  to the random crops;
- random crops: uniform corners in ``[0, n - 32]`` per axis (a ``random_fraction`` of each batch).

Periodic SPPARKS boundaries are not wrapped: crops stay inside the volume.

Encodings: ``paper`` (per block: subtract the block mean of the spin values, divide by max |.|) and
``separable`` (grains coloured once per volume with DSatur over the 26-adjacency so touching grains never
share a colour; per block the K colours map through a random permutation of ``linspace(-1, 1, K)``).
"""

from __future__ import annotations

import itertools
import os
import re
from fnmatch import fnmatch
from pathlib import Path

import numpy as np
import torch

from .errors import GPEngineError

BLOCK = 32
VOLUME_SUFFIXES = (".npz", ".npy", ".vti", ".dump", ".spparks", ".txt")
DEFAULT_TRAIN_SEEDS = range(1001, 1019)   # seed1001..1018 train, 1019+ validation
PERMUTATIONS = tuple(itertools.permutations(range(3)))  # 6 axis orders
N_SYMMETRIES = 48                                        # 6 permutations x 8 flip patterns


# ----------------------------------------------------------------------------------------------- files
def list_volume_files(data: str | os.PathLike | list) -> list[Path]:
    """Volume files from a directory (its volume files, sorted), a file, or a list of either."""
    items = data if isinstance(data, (list, tuple)) else [data]
    files: list[Path] = []
    for item in items:
        p = Path(item).expanduser()
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in VOLUME_SUFFIXES)
            if not found:
                raise GPEngineError(f"training data directory {p} holds no volume files "
                                    f"({', '.join(VOLUME_SUFFIXES)})")
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            raise GPEngineError(f"training data {p} does not exist; give a directory or volume files")
    return files


def split_train_val(files: list[Path], val_pattern: str | None = None) -> tuple[list[Path], list[Path]]:
    """Split into (train, validation) files.

    Default: names with ``seed1001``..``seed1018`` train, ``seed1019`` and later validate; names with no
    seed number train. ``val_pattern`` (a glob on the file name, e.g. ``"*seed102?*"``) overrides.
    """
    train, val = [], []
    for f in files:
        if val_pattern is not None:
            is_val = fnmatch(f.name, val_pattern)
        else:
            m = re.search(r"seed(\d+)", f.name)
            is_val = bool(m) and int(m.group(1)) >= DEFAULT_TRAIN_SEEDS.stop
        (val if is_val else train).append(f)
    if not train:
        raise GPEngineError(f"no training volumes left after the validation split "
                            f"(pattern {val_pattern!r}); change --val")
    return train, val


def load_volume(path: Path) -> np.ndarray:
    """Integer label volume from a file, via volume_io (fallback: .npz 'spins' / .npy with numpy)."""
    try:
        from .volume_io import read_volume
    except ImportError:  # pragma: no cover - volume_io is part of the package
        read_volume = None
    if read_volume is not None:
        vol = read_volume(path)
    else:  # pragma: no cover
        vol = np.load(path)["spins"] if str(path).endswith(".npz") else np.load(path)
    vol = np.asarray(vol)
    if vol.ndim != 3 or min(vol.shape) < BLOCK:
        raise GPEngineError(f"{path}: a training volume must be 3D with every side >= {BLOCK}, got shape {vol.shape}")
    if vol.dtype.kind not in "iu":
        raise GPEngineError(f"{path}: a training volume must hold integer grain/spin ids, got {vol.dtype}")
    return vol


# ------------------------------------------------------------------------------------------- positions
def _axis_positions(n: int, block: int = BLOCK) -> tuple[list[int], list[int]]:
    tiling = list(range(0, n - block + 1, block))
    boundary = [p + block // 2 for p in tiling if p + block // 2 + block <= n and p + block < n]
    return tiling, boundary


def tiling_corners(shape: tuple[int, int, int] = (100, 100, 100), block: int = BLOCK) -> np.ndarray:
    """Corners of the non-overlapping tiling blocks (27 in a 100³ volume), int64 [N, 3]."""
    axes = [_axis_positions(n, block)[0] for n in shape]
    return np.array(list(itertools.product(*axes)), dtype=np.int64).reshape(-1, 3)


def boundary_corners(shape: tuple[int, int, int] = (100, 100, 100), block: int = BLOCK) -> np.ndarray:
    """The documented set of boundary-centred blocks (56 in a 100³ volume, see the module doc)."""
    pos = [_axis_positions(n, block) for n in shape]
    out = []
    for c in itertools.product(*[t + b for t, b in pos]):
        on_boundary = [c[a] in pos[a][1] for a in range(3)]
        k = sum(on_boundary)
        if k == 3:
            out.append(c)
        elif k == 1:
            others = [a for a in range(3) if not on_boundary[a]]
            interior = [c[a] not in (pos[a][0][0], pos[a][0][-1]) for a in others]
            if not all(interior):
                out.append(c)
    return np.array(sorted(out), dtype=np.int64).reshape(-1, 3)


def fixed_corners(shape: tuple[int, int, int] = (100, 100, 100), block: int = BLOCK) -> np.ndarray:
    """Tiling corners followed by boundary-centred corners (27 + 56 = 83 in a 100³ volume)."""
    return np.concatenate([tiling_corners(shape, block), boundary_corners(shape, block)])


# ------------------------------------------------------------------------------------------ symmetries
def symmetry(index: int) -> tuple[tuple[int, int, int], tuple[int, ...]]:
    """(axis permutation, flipped axes) of cube symmetry ``index`` in 0..47 (index 0 = identity)."""
    if not 0 <= index < N_SYMMETRIES:
        raise GPEngineError(f"symmetry index must be in 0..47, got {index}")
    perm = PERMUTATIONS[index // 8]
    flips = tuple(a for a in range(3) if (index % 8) >> a & 1)
    return perm, flips


def apply_symmetry(blocks: torch.Tensor, sym: torch.Tensor) -> torch.Tensor:
    """Apply cube symmetry ``sym[i]`` to ``blocks[i]`` ([B, n, n, n]), one permute/flip per symmetry group."""
    out = torch.empty_like(blocks)
    for s in torch.unique(sym).tolist():
        sel = (sym == s).nonzero(as_tuple=True)[0]
        perm, flips = symmetry(int(s))
        g = blocks.index_select(0, sel).permute(0, *(1 + p for p in perm))
        if flips:
            g = torch.flip(g, dims=[1 + a for a in flips])
        out.index_copy_(0, sel, g)
    return out


# ------------------------------------------------------------------------------------------- encodings
def paper_encode_blocks(blocks: torch.Tensor) -> torch.Tensor:
    """Per block: subtract the mean spin value, divide by max |.| (all-equal blocks give zeros)."""
    b = blocks.float()
    b = b - b.mean(dim=(1, 2, 3), keepdim=True)
    m = b.abs().amax(dim=(1, 2, 3), keepdim=True)
    return b / torch.where(m > 0, m, torch.ones_like(m))


def separable_encode_blocks(colours: torch.Tensor, n_levels: int, generator: torch.Generator) -> torch.Tensor:
    """Map colour indices [B, n, n, n] (0..K-1) to levels through one random permutation per block."""
    B = colours.shape[0]
    levels = torch.linspace(-1.0, 1.0, n_levels, device=colours.device)
    perm = torch.argsort(torch.rand(B, n_levels, device=colours.device, generator=generator), dim=1)
    table = levels[perm]                                            # [B, K]
    enc = torch.gather(table, 1, colours.reshape(B, -1).long())
    return enc.reshape(colours.shape)


def bits_encode_blocks(colours: torch.Tensor, n_bits: int, generator: torch.Generator) -> torch.Tensor:
    """Colour indices [B, n, n, n] (0..2^bits-1) to analog bits [B, bits, n, n, n] through one random
    permutation of the 2^bits codes per block (gp_engine.encoding.bit_codes)."""
    from .encoding import bit_codes

    B = colours.shape[0]
    codes = torch.from_numpy(bit_codes(n_bits)).to(colours.device)              # [K, bits]
    K = codes.shape[0]
    perm = torch.argsort(torch.rand(B, K, device=colours.device, generator=generator), dim=1)
    code_of = perm.gather(1, colours.reshape(B, -1).long())                      # [B, N]
    return codes[code_of].permute(0, 2, 1).reshape((B, n_bits) + tuple(colours.shape[1:]))


def colour_volume(labels: np.ndarray, n_levels: int, colouring: str = "dsatur") -> tuple[np.ndarray, int]:
    """DSatur colours (0..K-1, uint8) of a volume's 26-connected grains, and the number of conflicts
    (``colouring``: gp_engine.encoding.COLOURINGS)."""
    from .encoding import colour_grains
    from .grains import split_grains

    colour, conflicts = colour_grains(split_grains(labels), n_levels, colouring)
    return colour.astype(np.uint8), int(conflicts)


def default_levels() -> int:
    """Engineer B's chosen K (``gp_engine.encoding.DEFAULT_LEVELS``), 12 if absent."""
    try:
        from .encoding import DEFAULT_LEVELS
        return int(DEFAULT_LEVELS)
    except ImportError:  # pragma: no cover
        return 12


# ---------------------------------------------------------------------------------------------- source
class BlockSource:
    """A stack of volumes on a device that yields encoded, augmented 32³ blocks in batches.

    ``encoding``: "separable" (``levels`` K), "bits" (``bits`` channels, 2^bits colours) or "paper".
    ``colouring``: how grains get their colours (gp_engine.encoding.COLOURINGS).
    Volumes may differ in shape (padded stack). Blocks come out as [B, channels, n, n, n].
    """

    def __init__(self, volumes: list[np.ndarray], encoding: str = "separable", levels: int | None = None,
                 device: str | torch.device = "cpu", block: int = BLOCK, bits: int | None = None,
                 colouring: str = "dsatur"):
        if encoding not in ("separable", "paper", "bits"):
            raise GPEngineError(f"encoding {encoding!r} is unknown; use 'separable', 'bits' or 'paper'")
        self.bits = None
        if encoding == "bits":
            from .encoding import DEFAULT_BITS

            self.bits = int(bits or DEFAULT_BITS)
            if not 1 <= self.bits <= 8:
                raise GPEngineError(f"bits must be in 1..8, got {self.bits}")
            levels = 1 << self.bits
        if not volumes:
            raise GPEngineError("no volumes to draw training blocks from")
        self.encoding, self.block, self.device = encoding, block, torch.device(device)
        self.levels = (int(levels if levels is not None else default_levels())
                       if encoding in ("separable", "bits") else None)
        if self.levels is not None and not 2 <= self.levels <= 255:
            raise GPEngineError(f"levels must be in 2..255, got {self.levels}")
        self.shapes = [tuple(int(s) for s in v.shape) for v in volumes]
        self.conflicts = 0
        big = tuple(max(s[a] for s in self.shapes) for a in range(3))
        if self.encoding in ("separable", "bits"):
            stack = np.zeros((len(volumes),) + big, np.uint8)
            for i, v in enumerate(volumes):
                c, n = colour_volume(v, self.levels, colouring)
                self.conflicts += n
                stack[i, :v.shape[0], :v.shape[1], :v.shape[2]] = c
        else:
            stack = np.zeros((len(volumes),) + big, np.float32)
            for i, v in enumerate(volumes):
                stack[i, :v.shape[0], :v.shape[1], :v.shape[2]] = v
        self.stack = torch.from_numpy(stack).to(self.device)
        self.max_corner = torch.tensor([[s[a] - block for a in range(3)] for s in self.shapes],
                                       dtype=torch.int64, device=self.device)
        fixed = [(i, c) for i, s in enumerate(self.shapes) for c in fixed_corners(s, block)]
        self.fixed_volume = torch.tensor([i for i, _ in fixed], dtype=torch.int64, device=self.device)
        self.fixed_corner = torch.tensor(np.array([c for _, c in fixed]), dtype=torch.int64, device=self.device)
        self._offsets = torch.arange(block, device=self.device)

    @property
    def n_fixed(self) -> int:
        return int(self.fixed_volume.shape[0])

    def gather(self, vol: torch.Tensor, corner: torch.Tensor) -> torch.Tensor:
        """Raw crops [B, n, n, n] at ``corner`` [B, 3] of volumes ``vol`` [B] (one indexing op)."""
        o = self._offsets
        ix = (corner[:, 0, None] + o)[:, :, None, None]
        iy = (corner[:, 1, None] + o)[:, None, :, None]
        iz = (corner[:, 2, None] + o)[:, None, None, :]
        return self.stack[vol[:, None, None, None], ix, iy, iz]

    def gather_symmetric(self, vol: torch.Tensor, corner: torch.Tensor, sym: torch.Tensor) -> torch.Tensor:
        """``apply_symmetry(gather(vol, corner), sym)`` folded into the indexing: flips become reversed
        offsets, permutations choose which output axis indexes which volume axis (one op per permutation
        group, at most 6), so the crop is read once and never copied again."""
        n = self.block
        o = self._offsets
        flip_bits = (sym % 8)[:, None] >> torch.arange(3, device=self.device)[None, :] & 1   # [B, 3]
        out = torch.empty((vol.shape[0], n, n, n), dtype=self.stack.dtype, device=self.device)
        perm_id = torch.div(sym, 8, rounding_mode="floor")
        shapes = ((-1, n, 1, 1), (-1, 1, n, 1), (-1, 1, 1, n))
        for pid in torch.unique(perm_id).tolist():
            sel = (perm_id == pid).nonzero(as_tuple=True)[0]
            perm = PERMUTATIONS[int(pid)]
            idx: list[torch.Tensor | None] = [None, None, None]
            for a in range(3):  # output axis a reads volume axis perm[a]
                off = torch.where(flip_bits[sel, a, None].bool(), n - 1 - o, o)      # [b, n]
                idx[perm[a]] = (corner[sel, perm[a], None] + off).reshape(shapes[a])
            out[sel] = self.stack[vol[sel].reshape(-1, 1, 1, 1), idx[0], idx[1], idx[2]]
        return out

    @property
    def channels(self) -> int:
        return self.bits or 1

    def encode(self, raw: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Encoded blocks [B, channels, n, n, n] float32."""
        if self.encoding == "paper":
            return paper_encode_blocks(raw)[:, None]
        if self.encoding == "bits":
            return bits_encode_blocks(raw, self.bits, generator)
        return separable_encode_blocks(raw, self.levels, generator)[:, None]

    def positions(self, batch: int, generator: torch.Generator, random_fraction: float = 0.5
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """(volume [B], corner [B, 3]): a mix of the fixed positions and uniform random crops."""
        dev = self.device
        pick = torch.randint(0, self.n_fixed, (batch,), device=dev, generator=generator)
        vol, corner = self.fixed_volume[pick], self.fixed_corner[pick]
        rvol = torch.randint(0, len(self.shapes), (batch,), device=dev, generator=generator)
        u = torch.rand(batch, 3, device=dev, generator=generator)
        rcorner = (u * (self.max_corner[rvol] + 1).float()).long().clamp_max(self.max_corner[rvol])
        use_random = torch.rand(batch, device=dev, generator=generator) < random_fraction
        vol = torch.where(use_random, rvol, vol)
        corner = torch.where(use_random[:, None], rcorner, corner)
        return vol, corner

    def sample(self, batch: int, generator: torch.Generator, random_fraction: float = 0.5) -> torch.Tensor:
        """A batch of encoded, randomly placed and randomly symmetrised blocks, float32 [B, C, n, n, n]."""
        vol, corner = self.positions(batch, generator, random_fraction)
        sym = torch.randint(0, N_SYMMETRIES, (batch,), device=self.device, generator=generator)
        raw = self.gather_symmetric(vol, corner, sym)
        return self.encode(raw, generator).float()

    def tiling_blocks(self, generator: torch.Generator, limit: int | None = None) -> torch.Tensor:
        """The tiling blocks of every volume (identity symmetry), encoded: fixed validation blocks."""
        vols, corners = [], []
        for i, s in enumerate(self.shapes):
            for c in tiling_corners(s, self.block):
                vols.append(i)
                corners.append(c)
        if limit is not None and len(vols) > limit:  # spread the subset over all volumes
            keep = np.linspace(0, len(vols) - 1, limit).round().astype(int)
            vols, corners = [vols[k] for k in keep], [corners[k] for k in keep]
        vol = torch.tensor(vols, dtype=torch.int64, device=self.device)
        corner = torch.tensor(np.array(corners), dtype=torch.int64, device=self.device)
        return self.encode(self.gather(vol, corner), generator).float()


__all__ = ["BLOCK", "N_SYMMETRIES", "list_volume_files", "split_train_val", "load_volume",
           "tiling_corners", "boundary_corners", "fixed_corners", "symmetry", "apply_symmetry",
           "paper_encode_blocks", "separable_encode_blocks", "bits_encode_blocks", "colour_volume", "default_levels",
           "BlockSource"]

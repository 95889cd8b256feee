"""Generation end to end: plan -> blocks -> batches on an engine -> canvas -> segment -> outputs.

:func:`sample_canvas` is the resumable core loop (works with any engine and any block list);
:func:`generate` wires it to a plan file, the model directory and the output writers.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import signal
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Sequence

import numpy as np

from . import repaint
from .canvas import Canvas
from .errors import GPEngineError

#: test hook: kill the process (SIGKILL) right after this many batches have been committed.
KILL_ENV = "GP_ENGINE_KILL_AFTER_BATCHES"


class Interrupted(Exception):
    """Raised by :func:`sample_canvas` when ``stop_after`` batches were committed (tests)."""


# ------------------------------------------------------------------------------- core loop


def sample_canvas(engine, blocks: Sequence, batches: Sequence[Sequence[int]], canvas: Canvas,
                  setup: repaint.SamplerSetup, seed: int, block_size: int = 32,
                  progress: bool = True, stop_after: int | None = None,
                  on_batch: Callable[[int], None] | None = None, shift_first: bool = True) -> dict:
    """Run every batch not yet in ``canvas.completed``; returns timing figures.

    ``blocks[i]`` has ``.index`` (== i), ``.corner`` and ``.deps``; ``batches`` lists block indices.
    Each block reads (x0, known) from the canvas, is RePainted, shifted by its mid-range when it had
    no known voxel and ``shift_first`` (the paper encoding's first-stage recentring; a level or bit
    encoding must not be shifted off its values), and its whole block is written back and marked known
    when the batch commits.
    """
    from tqdm import tqdm

    by_index = {int(b.index): b for b in blocks}
    evals = setup.evaluations
    todo = [k for k in range(len(batches)) if k not in canvas.completed]
    n_blocks_todo = sum(len(batches[k]) for k in todo)
    done_blocks = sum(len(batches[k]) for k in range(len(batches)) if k in canvas.completed)
    voxels = float(np.prod(canvas.shape))
    kill_after = int(os.environ.get(KILL_ENV, "0") or 0)
    bar = tqdm(total=n_blocks_todo * evals, unit="eval", unit_scale=True, disable=not progress,
               dynamic_ncols=True, desc="RePaint", smoothing=0.05)
    t0 = time.perf_counter()
    committed = 0
    try:
        for k in todo:
            ids = np.asarray(batches[k], np.int64)
            corners = [tuple(int(c) for c in by_index[int(i)].corner) for i in ids]
            reads = [canvas.read_block(c, block_size) for c in corners]
            x0 = np.stack([r[0] for r in reads])                                  # [b, C, s, s, s]
            mask = np.repeat(np.stack([r[1] for r in reads])[:, None], x0.shape[1], axis=1)
            nb = len(ids)

            def step(_k, nb=nb):
                bar.update(nb)

            try:
                if hasattr(engine, "sample_batch"):
                    x = engine.sample_batch(x0, mask, ids, seed, setup, on_step=step)
                else:
                    x = repaint.sample_batch(engine, x0, mask, ids, seed, setup, on_step=step)
            except GPEngineError as exc:
                raise GPEngineError(f"batch {k}: {exc}") from None
            if shift_first:
                for r in range(nb):
                    if not mask[r].any():
                        x[r] = repaint.shift_mid_range(x[r])
            canvas.commit(k, corners, x)
            committed += 1
            done_blocks += nb
            minutes = (time.perf_counter() - t0) / 60.0
            frac_new = (done_blocks - (len(blocks) - n_blocks_todo)) / max(len(blocks), 1)
            bar.set_postfix_str(f"batch {len(canvas.completed)}/{len(batches)}, blocks "
                                f"{done_blocks}/{len(blocks)}, "
                                f"{frac_new * voxels / max(minutes, 1e-9):,.0f} vox/min")
            if on_batch is not None:
                on_batch(k)
            if kill_after and len(canvas.completed) >= kill_after:
                os.kill(os.getpid(), signal.SIGKILL)
            if stop_after is not None and committed >= stop_after:
                raise Interrupted(f"stopped after {committed} batches")
    finally:
        bar.close()
    seconds = time.perf_counter() - t0
    return {"batches_run": committed, "blocks_run": n_blocks_todo if committed == len(todo) else None,
            "seconds": seconds, "evaluations_per_block": evals,
            "block_evaluations_per_s": n_blocks_todo * evals / seconds if seconds > 0 else None,
            # the share of the volume this call generated (a resumed run did only part of it)
            "voxels_per_min": (voxels * n_blocks_todo / max(len(blocks), 1)) * 60.0 / seconds
            if seconds > 0 and todo else None}


# ------------------------------------------------------------------------------- plan glue


def sampler_params(sampler) -> SimpleNamespace:
    """steps/resample/jump/tail/clip_x0 from a plan's sampler (dataclass, namespace or dict)."""
    get = (sampler.get if isinstance(sampler, dict) else lambda k, d=None: getattr(sampler, k, d))
    resample = get("resample", None)
    if resample is None:
        resample = get("r", 0)
    eta = get("eta", None)
    return SimpleNamespace(steps=int(get("steps")), resample=int(resample),
                           jump=int(get("jump", 1) or 1), tail=int(get("tail", 0) or 0),
                           clip_x0=bool(get("clip_x0", True)), eta=1.0 if eta is None else float(eta),
                           preset=get("preset", None), sharpen=get("sharpen_x0", None))


#: κ of the x̂0 projection tanh(κ·x̂0) for analog-bits models when the plan leaves it to the model:
#: an undertrained model's x̂0 hovers near 0 on uncertain voxels and the walk ends there (field
#: median |f| 0.27, 7.9 % of voxels in clusters < 20 voxels on unconditional 32³ blocks); κ = 4 lands
#: the field on ±1 and halves the speckle (3.4 %; SPPARKS 0.4 %). See bench/results/sharpen.md.
DEFAULT_SHARPEN = 4.0

#: ᾱ_T at or above which a schedule's top still shows the data (√ᾱ_T ≥ 0.1 of x₀ left in x_T). Such
#: models (T = 250, β → 0.02: ᾱ_T = 0.08) are sure of x̂0 from the first step and gain from κ = 4;
#: a schedule that starts from noise (T = 500: ᾱ_T = 4·10⁻⁵) decides the layout in its first steps,
#: and κ = 4 makes it commit to that rough layout (four 64³ at `fast`: volume KL 0.79 at κ 4 against
#: 0.11 at κ 0, docs/model.md, fifth session).
SIGNAL_AT_TOP = 0.01


def default_sharpen(encoding_kind: str | None, schedule: dict | None) -> float:
    """κ for a model that names none: DEFAULT_SHARPEN for analog bits on a schedule whose top is not
    noise (ᾱ_T ≥ SIGNAL_AT_TOP), else 0 (clip). What ``gp-engine build`` writes into the manifest."""
    if encoding_kind != "bits":
        return 0.0
    if schedule is not None:
        from .diffusion import Schedule

        if float(Schedule.from_dict(schedule).alphas_cumprod[-1]) < SIGNAL_AT_TOP:
            return 0.0
    return DEFAULT_SHARPEN


def model_sharpen(manifest: dict) -> float:
    """The model's κ: its manifest's ``sampler_defaults.sharpen_x0``, or (older manifests)
    :func:`default_sharpen` of its encoding and schedule."""
    value = (manifest.get("sampler_defaults") or {}).get("sharpen_x0")
    if value is not None:
        return float(value)
    return default_sharpen((manifest.get("encoding") or {}).get("kind"), manifest.get("schedule"))


def sharpen_for(manifest: dict, plan_value) -> float:
    """The run's κ: the plan's ``sampler.sharpen_x0``, or the model's (:func:`model_sharpen`)."""
    if plan_value is not None:
        return float(plan_value)
    return model_sharpen(manifest)


def _as_dict(obj):
    if dataclasses.is_dataclass(obj):
        return dataclasses.asdict(obj)
    if isinstance(obj, SimpleNamespace):
        return {k: _as_dict(v) for k, v in vars(obj).items()}
    return obj


def plan_hash(plan) -> str:
    """Hash of everything that determines the voxels (not outputs, backend or progress)."""
    d = dict(_as_dict(plan))
    geo = d.get("geometry")
    if isinstance(geo, dict) and geo.get("margin") is None:  # plans that leave it out hash as before it existed
        d["geometry"] = {k: v for k, v in geo.items() if k != "margin"}
    for k in ("outputs", "backend", "reference", "segmentation", "source", "checkpoint_every", "orientations"):
        d.pop(k, None)
    blob = json.dumps(d, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def model_id(model_dir: Path, manifest: dict) -> str:
    """Identity of the model: hash of the manifest and of the ONNX file's size and mtime-free bytes."""
    h = hashlib.sha256(json.dumps(manifest, sort_keys=True, default=str).encode())
    onnx = Path(model_dir) / (manifest.get("onnx") or {}).get("file", "model.onnx")
    if onnx.is_file():
        with open(onnx, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


def _canvas_margin(out: Path, default: int) -> int:
    """The margin the canvas to resume in ``out`` was painted with: 0 for canvases from before margins,
    ``default`` where there is no readable canvas (Canvas.resume then says what is wrong)."""
    for cdir in (out / "canvas.new", Canvas.path(out)):
        try:
            meta = json.loads((cdir / "state.json").read_text()).get("meta")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(meta, dict):
            return int(meta.get("margin", 0))
    return default


def painted_layout(plan, margin: int):
    """(painted shape, offset of the requested box in it, canvas shape, part mask on the canvas or None,
    part or None) of a plan painted with ``margin`` (planner.painted_box, then canvas_shape's padding of
    thin boxes, then the part placed at the offset): one definition for ``generate`` and ``gp-engine plan``."""
    from .geometry import part_mask
    from .planner import canvas_shape, painted_box

    periodic = tuple(getattr(plan.geometry, "periodic", None) or (False, False, False))
    painted, off = painted_box(plan.geometry.shape, margin, periodic)
    padded = canvas_shape(painted, 32, periodic)
    mask, part = part_mask(plan, padded, off)
    return painted, off, padded, mask, part


def plan_blocks(plan_kind: str, shape, block: int, mask: np.ndarray | None = None, periodic=None):
    """The plan's blocks over ``shape``; with a part ``mask`` (on the padded canvas) only the blocks the
    part needs (``planner.restrict_to_mask``); with ``periodic`` axes the wrapped grid plan."""
    from . import planner

    kind = (plan_kind or "grid").lower()
    if periodic is not None and any(periodic):
        if kind != "grid":
            raise GPEngineError(f"plan kind {plan_kind!r} cannot be periodic; use 'grid'")
        blocks = planner.periodic_grid_plan(tuple(shape), tuple(periodic), block)
    elif kind == "grid":
        blocks = planner.grid_plan(tuple(shape), block)
    elif kind in ("center", "centre"):
        blocks = planner.center_plan(tuple(shape), block)
    else:
        raise GPEngineError(f"plan kind {plan_kind!r} is unknown; use 'grid' or 'center'")
    return blocks if mask is None else planner.restrict_to_mask(blocks, mask, block)


def built_model_for(model, out_dir: Path, batch_size: int = 1, progress: bool = True):
    """The plan's model as a built model directory: a trainer checkpoint (``*.pt``) is built
    (ONNX + manifest, needs torch) into ``OUT/model/`` once and reused while the checkpoint's
    bytes are unchanged (so ``--resume`` sees the same model); anything else is returned as is."""
    if model is None or Path(model).suffix != ".pt" or not Path(model).is_file():
        return model
    from .export.manifest import sha256_file, write_manifest

    ckpt = Path(model)
    digest = sha256_file(ckpt)
    target = Path(out_dir) / "model"
    manifest_path = target / "manifest.json"
    if manifest_path.is_file():
        try:
            if json.loads(manifest_path.read_text()).get("built_from_sha256") == digest:
                return target
        except (OSError, ValueError):
            pass
    try:
        from .export import build_model
    except ImportError as exc:
        raise GPEngineError(f"{ckpt} is a trainer checkpoint; building it needs torch ({exc}). Install "
                            "torch, or run 'gp-engine build' where it is and give the plan that directory") from None
    log = print if progress else (lambda *a, **k: None)
    log(f"gp-engine generate: building {ckpt} into {target} (ONNX + manifest)")
    manifest = build_model(ckpt, target, batch_sizes=sorted({1, int(batch_size)}), log=log, force=True)
    write_manifest(target, {**manifest, "built_from": str(ckpt.resolve()), "built_from_sha256": digest})
    return target


#: above this many voxels the field stays on disk and is segmented out of core in tiles
IN_RAM_VOXELS = 256 ** 3


#: ``auto`` segmentation of an analog-bits model: DBSCAN on the decoded codes, clusters under this many
#: voxels refilled unless the model's manifest names its own (``segmentation_defaults.min_size``,
#: ``gp-engine build --min-size``; what a build writes when not told). Chosen on the early CPU-trained
#: bits models, whose boundaries were speckled (bench/results/segmentation_compare.md); cleaner models
#: do better with less: every model of the shipped T = 500 lineage since v6, and the conditional branch of
#: it, names 20 (v6, four 100³: KL 0.015 / 0.385 / 0.073, median 368, against 0.049 / 0.412 / 0.041, median
#: 476 with 80); the first conditional twin's speckled fields wanted 80 (docs/model.md, ninth session).
AUTO_BITS_MIN_SIZE = 80


def model_min_size(manifest: dict) -> int | None:
    """The ``min_size`` that ``auto`` segmentation uses for this model: its manifest's
    ``segmentation_defaults.min_size``, or (older manifests) ``AUTO_BITS_MIN_SIZE`` for analog bits and
    None (the method's own default) for other encodings."""
    value = (manifest.get("segmentation_defaults") or {}).get("min_size")
    if value is not None:
        return int(value)
    return AUTO_BITS_MIN_SIZE if (manifest.get("encoding") or {}).get("kind") == "bits" else None


def segmentation_kwargs(seg, levels: int | None = None, encoding_kind: str | None = None,
                        auto_min_size: int | None = None) -> dict:
    """The ``segment()`` keyword arguments for a plan's segmentation settings and a model's encoding
    (``auto`` resolved: levels for separable, dbscan for paper, dbscan for bits with clusters under
    ``auto_min_size`` voxels refilled: the model's :func:`model_min_size`, ``AUTO_BITS_MIN_SIZE`` if not
    given). A plan's ``min_size`` wins over the model's."""
    kwargs = {k: _seg_setting(seg, k, None) for k in ("method", "eps", "min_samples", "value_scale", "min_size")}
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    if kwargs.get("method", "auto") == "auto":  # the model's encoding decides (README: defaults)
        if encoding_kind == "bits":
            kwargs["method"] = "dbscan"
            kwargs.setdefault("min_size", AUTO_BITS_MIN_SIZE if auto_min_size is None else int(auto_min_size))
        else:
            kwargs["method"] = "levels" if levels else "dbscan"
    if kwargs.get("method") == "levels" and levels:
        kwargs["levels"] = int(levels)
    return kwargs


def _seg_setting(seg, key: str, default):
    """One setting of a plan's segmentation (a SegmentationConfig, a dict or None)."""
    if seg is None:
        return default
    value = seg.get(key) if isinstance(seg, dict) else getattr(seg, key, None)
    return default if value is None else value


def _scratch_like(volume: np.ndarray, canvas, name: str, dtype, shape):
    """A memmap ``name`` in the canvas folder for the next step's result when ``volume`` is on disk (the
    large-volume path: the step then works slab or tile by tile), else None (in RAM)."""
    if not isinstance(volume, np.memmap):
        return None
    from .volume_io import open_npy_memmap

    return open_npy_memmap(canvas.dir / name, dtype, tuple(int(n) for n in shape))


def segment_field(field: np.ndarray, seg, out_dir: Path | None = None,
                  progress: bool = False, levels: int | None = None,
                  encoding_kind: str | None = None, canvas_dir: Path | None = None,
                  periodic=None, auto_min_size: int | None = None) -> np.ndarray:
    """Segment the float field into grain ids with the plan's segmentation settings.

    ``levels``: the model's encoding levels (used by ``method="levels"``, which snaps to them);
    ``encoding_kind`` decides ``auto`` (levels for separable, dbscan for paper, dbscan with clusters
    under ``auto_min_size`` voxels refilled for bits, whose field here is the decoded code on 2^B levels;
    :func:`segmentation_kwargs`).

    Large fields (memmaps over ``IN_RAM_VOXELS``) are segmented tile by tile into a memmap in
    ``canvas_dir`` (default ``out_dir/canvas/``) so memory stays bounded. ``periodic`` axes wrap
    (``grains.label_periodic``; in RAM).
    """
    from .segment import segment

    kwargs = segmentation_kwargs(seg, levels, encoding_kind, auto_min_size)
    if periodic is not None and any(periodic):  # a grain crossing a face is one grain (in RAM)
        from .grains import label_periodic

        return label_periodic(lambda f: segment(np.ascontiguousarray(f), progress=progress, **kwargs),
                              np.asarray(field), periodic, pad=2)
    if field.size > IN_RAM_VOXELS and out_dir is not None:
        from .volume_io import open_npy_memmap

        out = open_npy_memmap(Path(canvas_dir or Canvas.path(out_dir)) / "grains.npy", np.int32, field.shape)
        return segment(field, tile=256, out=out, progress=progress, **kwargs)
    return segment(np.ascontiguousarray(field), progress=progress, **kwargs)


def reference_stats(reference, periodic=None) -> dict | None:
    """Pooled per-grain statistics of the plan's reference volumes (read before any work: a bad path
    or an unreadable file is refused up front, and only their statistics are kept in memory)."""
    if not reference:
        return None
    from .stats import stats_of_volumes
    from .volume_io import read_volume

    # raw SPPARKS spins are fine: they are split into 26-connected grains
    return stats_of_volumes([read_volume(p) for p in reference], periodic=periodic)


def compute_stats(grain_ids: np.ndarray, ref_stats: dict | None, n_reference: int = 0,
                  mask: np.ndarray | None = None, periodic=None) -> dict:
    """Summary of a segmented volume (streamed over slabs: memory does not grow with the volume),
    with KL against the reference statistics when given. Segmented ids are 26-connected grains
    already, so they are not split again.

    With a CAD part ``mask``, the summary (and KL) covers the grains inside the part that do not touch
    its surface; grains cut by the surface are counted and summarised apart under ``cut_by_surface``.
    """
    from .stats import STAT_KEYS, _describe, grain_stats, kl_divergences

    gen = grain_stats(grain_ids, periodic)
    if gen["volume"].size == 0:
        raise GPEngineError("the generated volume holds no grains (every voxel is 0): check the part and the model")
    cut_summary = None
    if mask is not None:
        from .geometry import surface_voxels

        cut_ids = np.unique(np.asarray(grain_ids)[surface_voxels(mask)])
        cut = np.isin(gen["grain_id"], cut_ids[cut_ids > 0])
        if cut.all():
            raise GPEngineError("every grain touches the part's surface: the part is too thin for grain "
                                "statistics at this resolution; use a larger geometry.size (smaller pitch)")
        cut_summary = {"grains": int(cut.sum()), **({} if not cut.any() else
                                                    _describe({k: v[cut] for k, v in gen.items()}, 1))}
        gen = {k: v[~cut] for k, v in gen.items()}
    gen = {k: gen[k] for k in STAT_KEYS}
    out = _describe(gen, 1)
    if cut_summary is not None:
        out["cut_by_surface"] = cut_summary
        out["grains_note"] = "grains inside the part not touching its surface; cut_by_surface: the others"
    if ref_stats is not None:
        out["reference"] = _describe(ref_stats, n_reference)
        out.update(kl_divergences(gen, ref_stats))
        out["kl_volume_axis"] = "voxels"
    return out


def export_options(plan, seed: int) -> dict:
    """What the orientation-carrying exports need from the plan: voxel size, units, orientation spec."""
    out = getattr(plan, "outputs", None)
    return {"voxel_size": float(getattr(out, "voxel_size", 1.0) or 1.0),
            "units": getattr(out, "units", "µm") or "µm",
            "orientations": getattr(plan, "orientations", None), "seed": int(seed)}


def _cheap_manifest(model) -> dict | None:
    """The plan's model manifest when it is cheap to read (a built model folder or the default); None
    for a trainer checkpoint or an unreadable model (the model step reports it properly)."""
    from .runtime import read_model

    if model is not None and Path(model).suffix == ".pt":
        return None
    try:
        return read_model(model)[1]
    except GPEngineError:
        return None


def _model_hint(model) -> tuple[int, list[int] | None]:
    """(channels, U-Net widths) of the plan's model when cheap to read (:func:`_cheap_manifest`); (1, None) otherwise."""
    manifest = _cheap_manifest(model)
    if manifest is None:
        return 1, None
    return _channels(manifest), (manifest.get("unet") or {}).get("channels")


def model_kind_hint(model) -> str:
    """``conditional`` / ``unconditional`` of the plan's model when cheap to read; ``unconditional``
    otherwise (generate checks it properly)."""
    from .conditional import model_kind

    manifest = _cheap_manifest(model)
    return "unconditional" if manifest is None else model_kind(manifest)


def _channels(manifest: dict) -> int:
    enc = manifest.get("encoding") or {}
    return int(enc.get("bits") or 1) if enc.get("kind") == "bits" else 1


def generate(plan_source, out_dir=None, resume: bool = False, force: bool = False,
             backend: str | None = None, batch_size: int | None = None, engine=None,
             progress: bool = True, stop_after: int | None = None) -> dict:
    """Run a plan end to end; returns {"outputs": {label: path}, "timing": {...}, "stats": {...}}.

    Order (nothing the user made is touched before the replacement exists; see ``run_dir``):
    the output folder's ownership, the plan's limits (memory, disk, references) → lock the folder →
    model and backend → canvas (a forced run paints a new canvas beside the old one) → RePaint →
    segmentation → outputs into a staging folder, swapped into place → statistics → stats.json.
    """
    from . import preflight, run_dir
    from .canvas import remove_canvas_dir, write_json_atomic
    from .diffusion import Schedule
    from .outputs import ALL_FORMATS, STATS_FILE, output_paths, write_results
    from .plan_config import load_plan
    from .planner import make_batches
    from .runtime import load_engine, read_model

    if resume and force:
        raise GPEngineError("--resume and --force exclude each other: pick one")
    plan = load_plan(plan_source)
    shape = tuple(int(s) for s in plan.geometry.shape)
    out = Path(out_dir or plan.outputs.dir)
    formats = getattr(plan.outputs, "formats", None)
    B = int(batch_size or getattr(plan, "batch_size", None) or 1)
    where = str(getattr(plan, "source", None) or "plan")

    # 1. the folder: a foreign one is refused before anything else happens
    run_dir.inspect(out)
    old_canvas, new_canvas = Canvas.path(out), out / "canvas.new"
    previous = [p for p in output_paths(out, ALL_FORMATS) if p.exists()]
    has_run = bool(previous) or old_canvas.exists() or new_canvas.exists()
    if not resume and not force and has_run:
        raise GPEngineError(f"{out} already holds outputs ({', '.join(p.name for p in previous) or 'canvas/'}); "
                            "pass --force to overwrite, --resume to continue, or another --out")

    # 2. limits the plan implies, before any work (the model's exact figures are checked again below)
    channels, widths = _model_hint(getattr(plan, "model", None))
    preflight.check(plan, out, B, channels, widths, where, keep_previous=force and has_run)
    periodic = tuple(getattr(plan.geometry, "periodic", None) or (False, False, False))
    # SPPARKS references wrap round like a periodic run; a non-periodic run is compared with them
    # split at their faces, as the paper does
    ref_stats = reference_stats(getattr(plan, "reference", None), periodic if any(periodic) else None)
    from .geometry import paint_region

    margin = plan.geometry.painted_margin
    if resume and plan.geometry.margin is None:  # a canvas from before margins goes on without one
        margin = _canvas_margin(out, margin)
    # the box cut out of a larger painted one, on a canvas padded to one block where thin; a CAD part
    # voxelized (and a broken mesh refused) before any work
    painted, off, padded, mask, part = painted_layout(plan, margin)
    crop = tuple(slice(o, o + n) for o, n in zip(off, shape))

    # 3. the folder is ours from here on: marked and locked for the whole run
    run_dir.claim(out, getattr(plan, "source", None))
    with run_dir.RunLock(out):
        run_dir.remove_stale_staging(out)
        model_dir, manifest = read_model(built_model_for(getattr(plan, "model", None), out, B, progress))
        block = int(manifest.get("block_size", 32))
        channels = _channels(manifest)
        preflight.check(plan, None, B, channels, (manifest.get("unet") or {}).get("channels"), where)
        from .conditional import check_sampler_fits, model_kind
        from .plan_config import resolve_sampler
        from .self_cond import uses_self_cond

        kind = model_kind(manifest)
        sp = sampler_params(resolve_sampler(plan.sampler, kind, where))
        check_sampler_fits(kind, sp.preset or "paper", where)
        sp.sharpen = sharpen_for(manifest, sp.sharpen)
        setup = repaint.make_setup(Schedule.from_dict(manifest["schedule"]), sp, clip_x0=sp.clip_x0,
                                   conditional=kind == "conditional",
                                   known_clean=(manifest.get("objective") or {}).get("known_in_xt") == "clean",
                                   self_cond=uses_self_cond(manifest))
        if block != 32:
            raise GPEngineError(f"{model_dir}: block_size {block} is not supported (only 32)")
        blocks = plan_blocks(getattr(plan, "plan_kind", "grid"), painted, block,
                             None if mask is None else paint_region(mask, margin), periodic)
        batches = make_batches(blocks, B)
        seed = int(getattr(plan, "seed", 0) or 0)
        meta = {"plan_hash": plan_hash(plan), "seed": seed, "model": model_id(model_dir, manifest),
                "shape": list(padded), "batch_size": B, "batches": len(batches), "margin": margin}
        own_engine = engine is None
        if engine is None:  # before the canvas: a bad backend fails fast
            from .runtime import choose_backend

            backend_name = choose_backend(model_dir, manifest, backend or getattr(plan, "backend", None) or "auto", B)
            engine = load_engine(model_dir, backend_name, B)
        # the arithmetic of the volume: a resume on another backend/precision or noise stream is refused
        from .noise import NOISE_STREAM

        meta.update(backend=str(getattr(engine, "name", type(engine).__name__)), noise=NOISE_STREAM)
        enc = manifest.get("encoding") or {}
        if resume:  # an interrupted forced run lives in canvas.new until it completes
            cdir = new_canvas if new_canvas.exists() else old_canvas
            by_index = {int(b.index): b for b in blocks}
            layout = [[by_index[int(i)].corner for i in batch] for batch in batches]
            canvas = Canvas.resume(out, meta, layout, block, directory=cdir, progress=progress)
        else:  # a forced run keeps the previous canvas until its own is complete
            cdir = new_canvas if old_canvas.exists() else old_canvas
            canvas = Canvas.create(out, padded, meta, force=force, channels=channels, directory=cdir,
                                   periodic=periodic)
        timing = sample_canvas(engine, blocks, batches, canvas, setup, seed, block, progress, stop_after,
                               shift_first=enc.get("kind", "paper") == "paper")
        timing.update(backend=engine.name, batch_size=B, blocks=len(blocks), batches=len(batches),
                      sampler={"preset": sp.preset, "steps": sp.steps, "resample": sp.resample,
                               "jump": sp.jump, "tail": sp.tail, "eta": sp.eta,
                               "sharpen_x0": sp.sharpen, "conditional": setup.conditional,
                               "self_cond": setup.self_cond})
        if own_engine and timing["batches_run"] and timing["seconds"] > 1.0:
            from . import timing as speed  # so that `gp-engine plan` can say how long the next run takes

            speed.record(backend_name, meta["model"], B,
                         timing["batches_run"] * timing["evaluations_per_block"] / timing["seconds"],
                         timing["block_evaluations_per_s"])
        # the painted box, margin included: grains at the requested box's faces are segmented with the
        # voxels beyond them, then cut out
        raw = canvas.values[..., :painted[0], :painted[1], :painted[2]]
        if raw.size <= IN_RAM_VOXELS * channels:
            raw = np.ascontiguousarray(raw)
        field = raw
        if channels > 1:  # analog bits: one value per voxel (the decoded code on 2^B levels) to segment and show
            from .encoding import bits_display

            field = bits_display(raw, out=_scratch_like(raw, canvas, "display.npy", np.float32, raw.shape[1:]))
        seg_plan, auto_min_size = getattr(plan, "segmentation", None), model_min_size(manifest)
        grain_ids = segment_field(field, seg_plan, canvas.dir.parent, progress,
                                  enc.get("levels"), enc.get("kind"), canvas_dir=canvas.dir, periodic=periodic,
                                  auto_min_size=auto_min_size)
        inside = None if mask is None else np.ascontiguousarray(mask[crop])
        if inside is not None or any(off):  # grain id 0 outside the part; grains split where the surface
            from .grains import cut_out  # or the cut-out's faces cut them (whole round periodic axes)

            box_out = _scratch_like(grain_ids, canvas, "grains_box.npy", np.int32, [s.stop - s.start for s in crop])
            grain_ids = cut_out(grain_ids, crop, periodic, inside, out=box_out)  # tile by tile when on disk
            raw, field = raw[(Ellipsis,) + crop], field[crop]
        necks = None
        if _seg_setting(seg_plan, "split_necks", True):
            from .necks import split_necks

            necks = {}
            in_place = grain_ids.dtype == np.int32 and grain_ids.flags.c_contiguous
            grain_ids = split_necks(grain_ids, periodic=periodic, out=grain_ids if in_place else None,
                                    progress=progress, report=necks)
        # outputs first (into staging, then swapped in), statistics after
        stats = {"summary": None, "status": "statistics pending", "timing": timing,
                 "plan_hash": meta["plan_hash"], "seed": seed, "shape": list(shape), "model": str(model_dir),
                 "painted": {"shape": list(painted), "margin": margin}}
        # the segmentation as resolved for this model (auto -> method and min_size)
        stats["segmentation"] = segmentation_kwargs(seg_plan, enc.get("levels"), enc.get("kind"), auto_min_size)
        if necks is not None:
            stats["split_necks"] = necks
        if inside is not None:
            geo = plan.geometry
            stats["part"] = {"stl": str(geo.stl), "pitch": geo.pitch, "voxels_inside": int(inside.sum()),
                             "fill": float(inside.mean()), "blocks": len(blocks),
                             "blocks_full_box": len(plan_blocks(getattr(plan, "plan_kind", "grid"), painted, block)),
                             "repairs": list(part.repairs)}
        staging = run_dir.new_staging(out)
        written = write_results(staging, field, grain_ids, formats, stats,
                                raw_field=raw if channels > 1 else None, mask=inside,
                                exports=export_options(plan, seed))
        run_dir.swap_in(out, staging, previous)
        written = {label: out / Path(p).name for label, p in written.items()}
        if cdir == new_canvas:  # the new run is complete: its canvas replaces the previous one
            remove_canvas_dir(old_canvas)
            os.replace(new_canvas, old_canvas)
        stats["summary"] = compute_stats(grain_ids, ref_stats, len(getattr(plan, "reference", None) or ()),
                                         mask=inside, periodic=periodic)
        if any(periodic):
            stats["periodic"] = list(periodic)
        stats.pop("status")
        write_json_atomic(out / STATS_FILE, stats)
    return {"outputs": written, "timing": timing, "stats": stats}

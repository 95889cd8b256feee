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
    return SimpleNamespace(steps=int(get("steps")), resample=int(resample),
                           jump=int(get("jump", 1) or 1), tail=int(get("tail", 0) or 0),
                           clip_x0=bool(get("clip_x0", True)))


def _as_dict(obj):
    if dataclasses.is_dataclass(obj):
        return dataclasses.asdict(obj)
    if isinstance(obj, SimpleNamespace):
        return {k: _as_dict(v) for k, v in vars(obj).items()}
    return obj


def plan_hash(plan) -> str:
    """Hash of everything that determines the voxels (not outputs, backend or progress)."""
    d = dict(_as_dict(plan))
    for k in ("outputs", "backend", "reference", "segmentation", "source", "checkpoint_every"):
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


def plan_blocks(plan_kind: str, shape, block: int):
    from . import planner

    kind = (plan_kind or "grid").lower()
    if kind == "grid":
        return planner.grid_plan(tuple(shape), block)
    if kind in ("center", "centre"):
        return planner.center_plan(tuple(shape), block)
    raise GPEngineError(f"plan kind {plan_kind!r} is unknown; use 'grid' or 'center'")


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
    manifest = build_model(ckpt, target, batch_sizes=sorted({1, int(batch_size)}), log=log)
    write_manifest(target, {**manifest, "built_from": str(ckpt.resolve()), "built_from_sha256": digest})
    return target


#: above this many voxels the field stays on disk and is segmented out of core in tiles
IN_RAM_VOXELS = 256 ** 3


#: ``auto`` segmentation of an analog-bits model: DBSCAN on the decoded codes, clusters under this
#: many voxels refilled (bench/results/segmentation_compare.md: the best grain statistics on the fields
#: of the CPU-trained bits models, whose boundaries are speckled).
AUTO_BITS_MIN_SIZE = 80


def segmentation_kwargs(seg, levels: int | None = None, encoding_kind: str | None = None) -> dict:
    """The ``segment()`` keyword arguments for a plan's segmentation settings and a model's encoding
    (``auto`` resolved: levels for separable, dbscan for paper, dbscan + ``AUTO_BITS_MIN_SIZE`` for bits)."""
    get = (seg.get if isinstance(seg, dict) else lambda k, d=None: getattr(seg, k, d)) \
        if seg is not None else (lambda k, d=None: d)
    kwargs = {k: get(k) for k in ("method", "eps", "min_samples", "value_scale", "min_size")
              if get(k) is not None}
    if kwargs.get("method", "auto") == "auto":  # the model's encoding decides (README: defaults)
        if encoding_kind == "bits":
            kwargs["method"] = "dbscan"
            kwargs.setdefault("min_size", AUTO_BITS_MIN_SIZE)
        else:
            kwargs["method"] = "levels" if levels else "dbscan"
    if kwargs.get("method") == "levels" and levels:
        kwargs["levels"] = int(levels)
    return kwargs


def segment_field(field: np.ndarray, seg, out_dir: Path | None = None,
                  progress: bool = False, levels: int | None = None,
                  encoding_kind: str | None = None) -> np.ndarray:
    """Segment the float field into grain ids with the plan's segmentation settings.

    ``levels``: the model's encoding levels (used by ``method="levels"``, which snaps to them);
    ``encoding_kind`` decides ``auto`` (levels for separable, dbscan for paper, dbscan with
    ``AUTO_BITS_MIN_SIZE`` for bits, whose field here is the decoded code on 2^B levels).

    Large fields (memmaps over ``IN_RAM_VOXELS``) are segmented tile by tile into a memmap in
    ``out_dir/canvas/`` so memory stays bounded.
    """
    from .segment import segment

    kwargs = segmentation_kwargs(seg, levels, encoding_kind)
    if field.size > IN_RAM_VOXELS and out_dir is not None:
        out = np.lib.format.open_memmap(Canvas.path(out_dir) / "grains.npy", "w+", np.int32, field.shape)
        return segment(field, tile=256, out=out, progress=progress, **kwargs)
    return segment(np.ascontiguousarray(field), progress=progress, **kwargs)


def compute_stats(grain_ids: np.ndarray, reference) -> dict:
    from .stats import summarize

    refs = None
    if reference:  # raw SPPARKS spins are fine: summarize splits into 26-connected grains
        from .volume_io import read_volume

        refs = [read_volume(p) for p in reference]
    return summarize([grain_ids], refs)


def generate(plan_source, out_dir=None, resume: bool = False, force: bool = False,
             backend: str | None = None, batch_size: int | None = None, engine=None,
             progress: bool = True, stop_after: int | None = None) -> dict:
    """Run a plan end to end; returns {"outputs": {label: path}, "timing": {...}, "stats": {...}}."""
    from .diffusion import Schedule
    from .outputs import output_paths, write_results
    from .plan_config import load_plan
    from .planner import canvas_shape, make_batches
    from .runtime import load_engine, read_model

    plan = load_plan(plan_source)
    shape = tuple(int(s) for s in plan.geometry.shape)
    out = Path(out_dir or plan.outputs.dir)
    formats = getattr(plan.outputs, "formats", None)
    existing = [p for p in output_paths(out, formats) if p.exists()]
    if force and not resume:  # stale results of the overwritten run must not survive a new crash
        for p in existing:
            p.unlink()
    elif not resume:
        if existing or Canvas.path(out).exists():
            raise GPEngineError(f"{out} already holds outputs ({', '.join(p.name for p in existing) or 'canvas/'}); "
                                "pass --force to overwrite, --resume to continue, or another --out")
    B = int(batch_size or getattr(plan, "batch_size", None) or 1)
    model_dir, manifest = read_model(built_model_for(getattr(plan, "model", None), out, B, progress))
    block = int(manifest.get("block_size", 32))
    sp = sampler_params(plan.sampler)
    setup = repaint.make_setup(Schedule.from_dict(manifest["schedule"]), sp, clip_x0=sp.clip_x0)
    blocks = plan_blocks(getattr(plan, "plan_kind", "grid"), shape, block)
    batches = make_batches(blocks, B)
    seed = int(getattr(plan, "seed", 0) or 0)
    padded = canvas_shape(shape, block)  # thin boxes are planned on a canvas padded to one block
    meta = {"plan_hash": plan_hash(plan), "seed": seed, "model": model_id(model_dir, manifest),
            "shape": list(padded), "batch_size": B, "batches": len(batches)}
    if engine is None:  # before touching the output dir: a bad backend fails fast
        engine = load_engine(model_dir, backend or getattr(plan, "backend", None) or "auto", B)
    enc = manifest.get("encoding") or {}
    channels = int(enc.get("bits") or 1) if enc.get("kind") == "bits" else 1
    canvas = (Canvas.resume(out, meta) if resume
              else Canvas.create(out, padded, meta, force=force, channels=channels))
    timing = sample_canvas(engine, blocks, batches, canvas, setup, seed, block, progress, stop_after,
                           shift_first=enc.get("kind", "paper") == "paper")
    timing.update(backend=engine.name, batch_size=B, blocks=len(blocks), batches=len(batches))
    raw = canvas.values[..., :shape[0], :shape[1], :shape[2]]
    if raw.size <= IN_RAM_VOXELS * channels:
        raw = np.ascontiguousarray(raw)
    field = raw
    if channels > 1:  # analog bits: one value per voxel (the decoded code on 2^B levels) to segment and show
        from .encoding import bits_display

        field = bits_display(raw)
    levels = enc.get("levels")
    grain_ids = segment_field(field, getattr(plan, "segmentation", None), out, progress, levels,
                              enc.get("kind"))
    stats = compute_stats(grain_ids, getattr(plan, "reference", None))
    stats = {"summary": stats, "timing": timing, "plan_hash": meta["plan_hash"], "seed": seed,
             "shape": list(shape), "model": str(model_dir)}
    written = write_results(out, field, grain_ids, formats, stats, raw_field=raw if channels > 1 else None)
    return {"outputs": written, "timing": timing, "stats": stats}

"""`gp-engine plan plan.json [--png OUT.png]`: show what a plan will do before spending GPU hours.

Prints the box and canvas, the sampler and its network evaluations per block, the blocks per stage,
the batches, and the total cost (block-evaluations and batched network calls); optionally lists
every block and draws the plan as a PNG. Needs neither the model nor torch.
"""

from __future__ import annotations

import argparse


def register(sub):
    p = sub.add_parser(
        "plan", help="check a plan file and show its stages, batches and cost",
        description="Validate a plan (JSON), lay out its blocks and batches, and print the cost in "
                    "network evaluations. Nothing is generated.",
    )
    p.add_argument("plan", help="plan JSON file (see examples/ and docs/plan-schema.md)")
    p.add_argument("--png", metavar="OUT.png", help="draw the plan (stage per voxel on mid-planes, "
                                                    "block centres, batch sizes) into this PNG")
    p.add_argument("--batch-size", type=int, help="batch size to plan with (default: the plan's)")
    p.add_argument("--blocks", action="store_true",
                   help="also list every block: index, stage, corner, batch, new voxels, deps")
    p.add_argument("--probe", action="store_true",
                   help="time a few network calls on the plan's backend to estimate the run's time "
                        "(without it: the speed of the last run of this model, backend and batch size here)")
    return p


def _fmt_shape(shape) -> str:
    return " x ".join(str(int(n)) for n in shape)


def describe(plan, batch_size: int | None = None, list_blocks: bool = False) -> tuple[str, dict]:
    """The report printed by the command, and the numbers behind it (for tests and callers)."""
    from ..generate import painted_layout, plan_blocks
    from ..geometry import paint_region
    from ..planner import BLOCK, evaluations_per_block, make_batches, new_voxels, stage_counts

    shape = plan.geometry.shape
    periodic = plan.geometry.periodic
    margin = plan.geometry.painted_margin
    painted, off, canvas, mask, part = painted_layout(plan, margin)
    full = plan_blocks(plan.plan_kind, painted, BLOCK, periodic=periodic)
    blocks = full if mask is None else plan_blocks(plan.plan_kind, painted, BLOCK, paint_region(mask, margin))
    plain = len(plan_blocks(plan.plan_kind, painted, BLOCK)) if any(periodic) else None
    bs = int(batch_size or plan.batch_size)
    batches = make_batches(blocks, bs)
    from ..generate import model_kind_hint
    from ..plan_config import resolve_sampler

    s = resolve_sampler(plan.sampler, model_kind_hint(plan.model), plan.source or "plan")
    per_block = evaluations_per_block(s.steps, s.resample, s.jump, s.tail)
    fresh = new_voxels([b.corner for b in blocks], BLOCK)
    counts = stage_counts(blocks)
    n = len(blocks)
    figures = {
        "shape": list(shape), "canvas": list(canvas), "margin": margin, "painted": list(painted), "blocks": n, "batches": len(batches),
        "batch_size": bs, "stages": counts, "evaluations_per_block": per_block,
        "block_evaluations": n * per_block, "network_calls": len(batches) * per_block,
        "mean_batch_fill": n / max(len(batches), 1) / bs,
        "voxels": int(canvas[0] * canvas[1] * canvas[2]),
        "blocks_full_box": len(full), "block_evaluations_full_box": len(full) * per_block,
        "part_voxels": None if mask is None else int(mask.sum()),
    }
    part_lines = []
    if mask is not None:
        g = plan.geometry
        part_lines = [
            f"part: {g.stl} at pitch {g.pitch:.6g} units/voxel, rotation {list(g.rotation)}: "
            f"{int(mask.sum()):,} voxels inside ({mask.mean():.1%} of the box)"
            + (f"; repaired: {', '.join(part.repairs)}" if part.repairs else ""),
            f"blocks the part needs: {n:,} of {len(full):,} in the full box ({n / max(len(full), 1):.0%}); "
            f"network evaluations {n * per_block:,} vs {len(full) * per_block:,}",
        ]
    lines = [
        f"plan: {plan.source or '(dict)'}",
        f"box {_fmt_shape(shape)} voxels" + (
            f" (painted with a {margin}-voxel margin beyond its faces"
            + (f" on a canvas {_fmt_shape(canvas)}" if tuple(canvas) != tuple(painted) else f": {_fmt_shape(canvas)}")
            + ", cut out at the end)" if any(off) else
            f" (planned on a canvas {_fmt_shape(canvas)}, cropped at the end)" if tuple(canvas) != tuple(shape) else ""),
        *part_lines,
        f"plan kind: {plan.plan_kind}, block {BLOCK}³"
        + (f", periodic on {'xyz' if all(periodic) else ''.join(a for a, p in zip('xyz', periodic) if p)}: "
           f"{n:,} blocks vs {plain:,} for the non-periodic box ({n / max(plain, 1):.2f}x)" if plain else ""),
        ("sampler preset auto -> " if plan.sampler.preset == "auto" else "") +
        (f"sampler: conditional (steps {s.steps}, "
         f"{f'resample {s.resample} on the unknown voxels' if s.resample else 'no resampling'}, eta {s.eta:g}: "
         f"{'DDPM' if s.eta == 1 else 'DDIM' if s.eta == 0 else 'between DDPM and DDIM'}) -> {per_block:,} "
         "network evaluations per block (needs a conditional model)" if s.preset == "conditional" else
         f"sampler: {s.preset} (steps {s.steps}, resample {s.resample}, jump {s.jump}, "
         f"no_resample_tail {s.tail}) -> {per_block:,} network evaluations per block"),
        "stages:",
    ]
    for stage, k in counts.items():
        painted = int(sum(int(f) for b, f in zip(blocks, fresh) if b.stage == stage))
        lines.append(f"  stage {stage:>2}: {k:>6} blocks, {painted:>12,} new voxels")
    lines += [
        f"blocks: {n:,} ({figures['voxels'] / max(n, 1):,.0f} voxels per block on average, "
        f"{32 ** 3 * n / figures['voxels']:.2f}x coverage)",
        f"batches: {len(batches):,} at batch size {bs} (blocks per batch: mean {n / max(len(batches), 1):.1f},"
        f" min {min((len(b) for b in batches), default=0)}, max {max((len(b) for b in batches), default=0)})",
        f"network evaluations: {n * per_block:,} block-evaluations in {len(batches) * per_block:,} "
        f"batched network calls",
    ]
    if list_blocks:
        batch_of = {i: k for k, batch in enumerate(batches) for i in batch}
        lines.append("index stage batch corner            new_voxels deps")
        for b, f in zip(blocks, fresh):
            lines.append(f"{b.index:>5} {b.stage:>5} {batch_of[b.index]:>5} {str(b.corner):<17} "
                         f"{int(f):>10} {list(b.deps)}")
    return "\n".join(lines), {"blocks_list": blocks, "batch_list": batches, **figures}


def time_estimate(plan, figures: dict, batch_size: int, probe: bool = False) -> str:
    """One line: the run's expected time on this machine (a past run's speed, or a probe)."""
    from pathlib import Path

    from .. import timing
    from ..generate import _channels, model_id
    from ..runtime import choose_backend, load_engine, read_model

    if plan.model is not None and Path(plan.model).suffix == ".pt":
        return "time: unknown until the checkpoint is built (generate builds it into OUT/model/)"
    model_dir, manifest = read_model(plan.model)
    backend = choose_backend(model_dir, manifest, plan.backend, int(batch_size))
    per_call = timing.pays_per_call(backend, manifest)
    work = figures["network_calls"] if per_call else figures["block_evaluations"]
    unit = "network calls" if per_call else "block-evaluations"
    if probe:
        calls = timing.probe(load_engine(model_dir, backend, int(batch_size)), _channels(manifest))
        rate = calls if per_call else calls * int(batch_size)
        return (f"time: at least {timing.human(work / rate)} on {backend} (probe: the network alone does "
                f"{rate:,.2f} {unit}/s at batch {batch_size}; RePaint adds 10-25 % on the CPU)")
    rec = timing.lookup(backend, model_id(model_dir, manifest), batch_size)
    if rec:
        rate = rec["network_calls_per_s" if per_call else "block_evaluations_per_s"]
        return (f"time: about {timing.human(work / rate)} on {backend} ({rate:,.2f} {unit}/s measured here "
                f"on {rec['date']} with this model and batch size)")
    return (f"time: no run of this model on {backend} at batch {batch_size} on this machine yet; "
            "add --probe for an estimate")


def run(args: argparse.Namespace) -> int:
    from ..errors import GPEngineError
    from ..plan_config import load_plan

    from ..generate import _model_hint
    from ..preflight import _gib, check, free_disk

    plan = load_plan(args.plan)
    if args.batch_size is not None and args.batch_size < 1:
        raise GPEngineError(f"--batch-size {args.batch_size} must be ≥ 1")
    # every limit the plan implies, before anything is laid out (a huge box must not hang here)
    channels, widths = _model_hint(plan.model)
    est = check(plan, plan.outputs.dir, args.batch_size, channels, widths)
    text, figures = describe(plan, args.batch_size, args.blocks)
    print(text)
    folder, free = free_disk(plan.outputs.dir)
    mem = ", ".join(f"{k} {_gib(v)}" for k, v in est["memory"].items())
    print(f"memory: about {_gib(est['memory_total'])} at most ({mem})")
    print(f"disk: about {_gib(est['disk'])} in {plan.outputs.dir} ({_gib(free)} free in {folder})")
    print(time_estimate(plan, figures, args.batch_size or plan.batch_size, args.probe))
    if args.png:
        from ..plan_render import draw_plan

        out = draw_plan(figures["blocks_list"], figures["canvas"], figures["batch_list"], args.png,
                        title=f"{plan.plan_kind} plan, {_fmt_shape(plan.geometry.shape)}")
        print(f"drawing: {out}")
    return 0

"""Generation quality: KL of generated grain statistics against held-out SPPARKS volumes.

Generates ``--volumes`` boxes (default four 100³) with a model (default: the shipped one) at a sampler
preset (default ``paper``; ``--preset fast`` for a CPU run), each with its own seed, and compares the
pooled grain statistics with the validation SPPARKS volumes (seeds 1019-1023 in ../shared/data/spparks,
never seen in training): KL(generated ‖ SPPARKS) of grain volume, aspect ratio (b/a, c/a) and
nearest-centroid distance, printed next to the SPPARKS-vs-SPPARKS floor (bench/results/stats_floor.json,
5 validation vs 5 training volumes) and the paper's Table 1 (r = 10). Every figure is printed with its
ratio to the paper's.

Writes bench/results/quality_<preset>_<cpu|cuda>.json, a Markdown table beside it, distribution overlays
under bench/plots/quality_<preset>_<cpu|cuda>/ and the generated volumes' mid-plane slices.

    python bench/quality_generate.py --preset fast --backend onnxruntime     # CPU, ~12 min per 100³ volume
    python bench/quality_generate.py                                         # GPU: paper settings
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/, for provenance.py
from stats_floor import PAPER_R10  # noqa: E402  (the paper's Table 1, one definition)
from provenance import device, header  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "spparks"
VALIDATION_SEEDS = range(1019, 1024)
KEYS = ("kl_volume", "kl_aspect", "kl_centroid")
CUDA_BACKENDS = ("torch-cuda", "tensorrt", "auto")


def device_name(backend: str) -> str:
    """The device label of the results: ``cuda: <gpu>`` when the backend may use CUDA and torch sees a
    GPU, else ``cpu: <model> (<n> cores)``."""
    dev = device(cuda=backend in CUDA_BACKENDS)
    if dev.get("gpu"):
        return f"cuda: {dev['gpu']}"
    return f"cpu: {dev['cpu']} ({dev['cores']} cores)"


def floor_figures() -> dict | None:
    """The pooled 5-vs-5 SPPARKS floor (mean of the two validation-vs-training comparisons)."""
    path = ROOT / "bench" / "results" / "stats_floor.json"
    if not path.is_file():
        return None
    comps = [c for c in json.loads(path.read_text())["comparisons"] if c["comparison"].startswith("val 1019-1023")]
    if not comps:
        return None
    return {k: float(np.mean([c[k] for c in comps])) for k in KEYS}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--volumes", type=int, default=4, help="number of generated volumes (default 4)")
    p.add_argument("--shape", type=int, nargs=3, default=[100, 100, 100], help="box (default 100 100 100)")
    p.add_argument("--preset", default="paper", help="sampler preset (default paper)")
    p.add_argument("--backend", default="auto", help="backend (default auto)")
    p.add_argument("--batch-size", type=int, default=8, help="blocks per batch (default 8)")
    p.add_argument("--model", help="built model directory (default: the shipped model)")
    p.add_argument("--data", default=str(SHARED), help="SPPARKS volumes with the validation seeds")
    p.add_argument("--work", default=str(ROOT / "bench" / "out" / "quality"),
                   help="where the generated runs go (resumable: an interrupted benchmark continues)")
    a = p.parse_args(argv)

    from gp_engine.generate import generate
    from gp_engine.runtime import read_model
    from gp_engine.stats import plot_distributions, summarize
    from gp_engine.volume_io import read_volume

    refs_paths = [Path(a.data) / f"potts_iso_100_seed{s}.npz" for s in VALIDATION_SEEDS]
    missing = [str(q) for q in refs_paths if not q.is_file()]
    if missing:
        sys.exit(f"quality_generate: validation volumes missing ({', '.join(missing)}); pass --data DIR")
    model_dir, manifest = read_model(a.model)
    dev_name = device_name(a.backend)
    tag = f"{a.preset}_{'cuda' if dev_name.startswith('cuda') else 'cpu'}"
    from gp_engine.generate import model_id

    # runs are reused only for the same model, box and preset (a rebuilt model never reads old volumes)
    work = Path(a.work) / f"{tag}_{'x'.join(map(str, a.shape))}_{model_id(model_dir, manifest)}"
    grains, runs = [], []
    for i in range(a.volumes):
        out = work / f"seed{i}"
        plan = {"version": 1, "geometry": {"shape": list(a.shape)}, "model": a.model,
                "sampler": {"preset": a.preset}, "batch_size": a.batch_size, "backend": a.backend,
                "seed": i, "outputs": {"dir": str(out), "formats": ["npy", "png"]}}
        done = (out / "grains.npy").is_file()
        if not done:
            resume = (out / "canvas").is_dir()
            res = generate(plan, out_dir=out, resume=resume, force=not resume, progress=True)
            runs.append({"seed": i, **{k: res["timing"][k] for k in ("seconds", "voxels_per_min", "backend",
                                                                        "evaluations_per_block", "blocks")}})
        grains.append(np.load(out / "grains.npy"))
        print(f"volume {i}: {len(np.unique(grains[-1]))} grains")

    refs = [read_volume(q) for q in refs_paths]
    summary, gen, ref = summarize(grains, refs, return_stats=True)
    floor = floor_figures()
    result = {**header("quality_generate", cuda=False, device=dev_name), "model": manifest.get("name"),
              "model_placeholder": bool(manifest.get("placeholder", False)), "preset": a.preset,
              "shape": a.shape, "volumes": a.volumes, "reference": [q.name for q in refs_paths],
              "runs": runs, "summary": summary, "floor_spparks_5v5": floor, "paper_table1_r10": PAPER_R10,
              "ratio_to_paper": {k: summary[k] / PAPER_R10[k] for k in KEYS}}
    rdir = ROOT / "bench" / "results"
    rdir.mkdir(parents=True, exist_ok=True)
    (rdir / f"quality_{tag}.json").write_text(json.dumps(result, indent=1))
    plots = ROOT / "bench" / "plots" / f"quality_{tag}"
    plots.mkdir(parents=True, exist_ok=True)
    plot_distributions(gen, ref, plots, labels=(f"generated ({a.preset})", "SPPARKS validation"))

    lines = [f"# Generation quality ({a.preset} preset, {a.volumes} × {'x'.join(map(str, a.shape))})", "",
             f"Model `{manifest.get('name')}`{' (placeholder)' if result['model_placeholder'] else ''}; "
             f"{result['device']}; {result['date']}; commit {result['commit'][:10]}. "
             "Generated by `bench/quality_generate.py`. KL(generated ‖ SPPARKS validation 1019-1023).", "",
             f"Grains: generated {summary['grains']} (mean volume {summary['mean_volume']:.0f}), "
             f"SPPARKS {summary['reference']['grains']} (mean volume {summary['reference']['mean_volume']:.0f}).", "",
             "| statistic | generated | SPPARKS floor (5 vs 5) | paper Table 1 (r = 10) | generated / paper |",
             "|---|---|---|---|---|"]
    for k in KEYS:
        fl = f"{floor[k]:.4f}" if floor else "–"
        lines.append(f"| {k[3:]} | {summary[k]:.4f} | {fl} | {PAPER_R10[k]} | {summary[k] / PAPER_R10[k]:.2f} |")
    (rdir / f"quality_{tag}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())

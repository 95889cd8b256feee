"""Shared test helpers."""

from pathlib import Path

import numpy as np
import pytest

DATA = Path(__file__).resolve().parent.parent / "gp_engine" / "data"


def write_crops(d: Path, shape: tuple[int, int, int], seeds=(1001, 1019)) -> Path:
    """Crops of the shipped SPPARKS samples as ``crop_seed<seed>.npy`` in ``d`` (1001 trains, 1019 validates)."""
    for seed in seeds:
        spins = np.load(DATA / f"potts_iso_100_seed{seed}.npz")["spins"]
        np.save(d / f"crop_seed{seed}.npy", spins[:shape[0], :shape[1], :shape[2]].copy())
    return d


def perturbed(model, seed=0):
    """A torch model moved off its initialisation (so comparisons are not trivially small), in eval mode."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model.eval()


def outpaint_batch(b=3, c=2, seed=0):
    """``b`` random ±1 blocks of ``c`` channels and a known mask (first 10 planes; block 0 empty)."""
    rng = np.random.default_rng(seed)
    x0 = np.sign(rng.normal(size=(b, c, 32, 32, 32))).astype(np.float32)
    m = np.zeros((b, 32, 32, 32), bool)
    m[:, :10] = True
    m[0] = False  # a first block: empty mask
    return x0, np.repeat(m[:, None], c, axis=1).astype(np.uint8)


def bits_runs(d: Path, out: str, steps: int, **extra) -> dict:
    """Train a tiny 2-bit parent ``plain.pt`` in ``d`` and a child ``out`` from it with ``extra`` options;
    returns the child's options (for further runs)."""
    from gp_engine.train import TrainOptions, train

    data = write_crops(d, (40, 40, 36))
    base = dict(data=[str(data)], preset="tiny", steps=2, batch_size=2, device="cpu", encoding="bits", bits=2,
                val_every=2, val_blocks=2, checkpoint_every=2, log_every=1, progress=False, seed=3, threads=1)
    train(TrainOptions(out=str(d / "plain.pt"), **base))
    opts = {**base, **extra, "init_from": str(d / "plain.pt")}
    train(TrainOptions(out=str(d / out), **{**opts, "steps": steps}))
    return opts


@pytest.fixture(autouse=True)
def _private_speed_cache(tmp_path_factory, monkeypatch):
    """Runs in tests must not write speed records into the user's ~/.cache (gp_engine.timing)."""
    import os

    if "GP_ENGINE_CACHE" not in os.environ or "pytest" not in os.environ["GP_ENGINE_CACHE"]:
        monkeypatch.setenv("GP_ENGINE_CACHE", str(tmp_path_factory.getbasetemp() / "speed-cache"))

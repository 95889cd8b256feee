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


@pytest.fixture(autouse=True)
def _private_speed_cache(tmp_path_factory, monkeypatch):
    """Runs in tests must not write speed records into the user's ~/.cache (gp_engine.timing)."""
    import os

    if "GP_ENGINE_CACHE" not in os.environ or "pytest" not in os.environ["GP_ENGINE_CACHE"]:
        monkeypatch.setenv("GP_ENGINE_CACHE", str(tmp_path_factory.getbasetemp() / "speed-cache"))

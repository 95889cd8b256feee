"""bench/regress.py's comparison: a slowdown is flagged only beyond the measured spread."""

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
regress = pytest.importorskip("regress")


def _fig(label, unit, value, sp):
    return {"label": label, "unit": unit, "value": value, "spread": sp}


def test_slowdown_beyond_the_spread_is_flagged():
    old = {"commit": "abc", "figures": [_fig("network/x/b8/fp32", "ms per block-evaluation", 10.0, 0.04),
                                         _fig("sampler/fast/b8", "block_evals_per_s", 100.0, 0.10),
                                         _fig("segment/levels", "voxels_per_s", 1e7, 0.02)]}
    new = [_fig("network/x/b8/fp32", "ms per block-evaluation", 11.0, 0.03),   # 10 % slower, spread 4 %
           _fig("sampler/fast/b8", "block_evals_per_s", 92.0, 0.05),            # 8.7 % slower, spread 10 %
           _fig("segment/levels", "voxels_per_s", 1.2e7, 0.02),                 # faster
           _fig("segment/new", "voxels_per_s", 1.0, 0.0)]                       # no baseline: skipped
    rows = {r["label"]: r for r in regress.compare(new, old)}
    assert set(rows) == {"network/x/b8/fp32", "sampler/fast/b8", "segment/levels"}
    assert rows["network/x/b8/fp32"]["slowdown"] and rows["network/x/b8/fp32"]["worse_by"] == pytest.approx(0.10)
    assert not rows["sampler/fast/b8"]["slowdown"] and rows["sampler/fast/b8"]["tolerance"] == pytest.approx(0.10)
    assert not rows["segment/levels"]["slowdown"] and rows["segment/levels"]["worse_by"] < 0
    assert regress.compare(new, None) == []


def test_spread_and_device_slug():
    assert regress.spread([9.0, 10.0, 12.0]) == pytest.approx(0.3)
    assert regress.device_slug({"cpu": "AMD EPYC 7B13", "cores": 2}) == "amd-epyc-7b13-2cores"
    assert regress.device_slug({"gpu": "NVIDIA H200", "cpu": "x", "cores": 16}) == "nvidia-h200"

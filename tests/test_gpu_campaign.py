"""The GPU campaign's CPU dry run: every stage runs and is recorded, so the script cannot rot."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_campaign_dry_run(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_campaign.py"), "--dry-run", "--out",
                        str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    res = json.loads((tmp_path / "campaign.json").read_text())
    stages = res["stages"]
    assert list(stages) == ["env", "train", "tests", "build", "quality_ext500", "quality_conditional_ext500",
                            "paper", "speed"]
    assert all(s["status"] == "ok" for s in stages.values()), {k: s.get("error") for k, s in stages.items()}
    assert stages["env"]["modules"]["gp_engine"] != "missing"
    train = stages["train"]
    assert train["lineages_side_by_side"] == 2
    for name, ckpt in (("ext500", "gpu_mini3_ext500.pt"), ("conditional_ext500", "gpu_conditional_ext500.pt")):
        assert train[name]["steps"] >= 1 and (tmp_path / ckpt).is_file(), name
    assert any(f["label"].startswith("network/") for f in stages["speed"]["figures"])
    build = stages["build"]
    assert build["ext500"]["target"] == "eps" and build["ext500"]["encoding"]["kind"] == "bits"
    assert "sharpen_x0" in build["ext500"]["sampler_defaults"]  # reported (the dry run's tiny lineages are T = 250)
    assert build["conditional_ext500"]["model_kind"] == "conditional"
    assert json.loads((tmp_path / "model_conditional_ext500" / "manifest.json").read_text())["model_kind"] == \
        "conditional"
    q = stages["quality_ext500"]["summary"]
    assert q["grains"] > 0 and all(q[k] >= 0 for k in ("kl_volume", "kl_aspect", "kl_centroid"))
    assert stages["quality_ext500"]["seams"] is None  # a 28³ box painted as one 32³ block: no block faces inside
    md = (tmp_path / "campaign.md").read_text()
    assert "## Training (2 lineages side by side" in md and "| conditional_ext500 | conditional | 1×28x28x28 |" in md
    pp = stages["paper"]
    assert pp["lineage"] == "ext500" and pp["stages_of_a_100_cubed_volume"] == 8  # the grid plan of 100³
    assert pp["projected_100_cubed_s"] == pytest.approx(8 * pp["seconds_per_block"], rel=0.02)
    assert "one 32³ block (ext500 lineage" in md
    qc = stages["quality_conditional_ext500"]
    assert qc["preset"] == "conditional" and qc["runs"][0]["evaluations_per_block"] == 4 + 2 * 3  # r = 2


def test_gpu_campaign_rejects_an_unknown_lineage(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_campaign.py"), "--dry-run", "--lineages",
                        "mini3,huge", "--out", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "unknown lineage 'huge'" in r.stderr

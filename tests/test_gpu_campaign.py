"""The GPU campaign's CPU dry run: every stage runs and is recorded, so the script cannot rot."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_campaign_dry_run(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_campaign.py"), "--dry-run", "--out",
                        str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    res = json.loads((tmp_path / "campaign.json").read_text())
    stages = res["stages"]
    assert list(stages) == ["env", "train", "build", "tests", "speed", "quality", "paper"]
    assert any(f["label"].startswith("network/") for f in stages["speed"]["figures"])
    assert all(s["status"] == "ok" for s in stages.values()), {k: s.get("error") for k, s in stages.items()}
    assert stages["env"]["modules"]["gp_engine"] != "missing"
    assert stages["train"]["steps"] >= 1 and (tmp_path / "gpu_tiny.pt").is_file()
    assert stages["build"]["target"] == "eps" and stages["build"]["encoding"]["kind"] == "bits"
    assert (tmp_path / "model" / "manifest.json").is_file()
    q = stages["quality"]["summary"]
    assert q["grains"] > 0 and all(q[k] >= 0 for k in ("kl_volume", "kl_aspect", "kl_centroid"))


def test_gpu_campaign_conditional_dry_run(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_campaign.py"), "--dry-run", "--conditional",
                        "--skip", "tests", "--out", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    stages = json.loads((tmp_path / "campaign.json").read_text())["stages"]
    assert all(s["status"] == "ok" for s in stages.values()), {k: s.get("error") for k, s in stages.items()}
    assert (tmp_path / "gpu_conditional_tiny.pt").is_file()
    manifest = json.loads((tmp_path / "model" / "manifest.json").read_text())
    assert manifest["model_kind"] == "conditional"
    assert stages["quality"]["preset"] == "conditional" and stages["quality"]["runs"][0]["evaluations_per_block"] == 4

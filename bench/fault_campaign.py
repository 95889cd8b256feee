"""Fault campaign: kill -9 a generation at a random batch, damage its canvas (or change what it is
resumed with), resume, and classify the outcome.

Outcomes: ``identical`` (the resumed run's field and grain ids are byte-identical to an uninterrupted
run), ``refused`` (exit 2, one line naming the problem), and the two that must never happen:
``SILENT CORRUPTION`` (exit 0 with other voxels) and ``traceback`` (any other failure).

    python bench/fault_campaign.py                  # every fault x 3 kill points, shipped model, 40³
    python bench/fault_campaign.py --trials 1       # one kill point per fault

Writes bench/results/fault_campaign.{json,md}; README "Faults tried" summarises the table. The
catalogue :data:`FAULTS` is also what tests/test_lose_nothing.py runs in CI.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _flip(path: Path, rng, lo: int = 128) -> None:
    data = bytearray(path.read_bytes())
    i = int(rng.integers(lo, len(data)))
    data[i] ^= 1 << int(rng.integers(0, 8))
    path.write_bytes(bytes(data))


def _truncate(path: Path, rng) -> None:
    with open(path, "r+b") as f:
        f.truncate(int(rng.integers(128, path.stat().st_size)))


def _state(cdir: Path, edit) -> None:
    state = json.loads((cdir / "state.json").read_text())
    edit(state)
    (cdir / "state.json").write_text(json.dumps(state))


def _zero_block(cdir: Path, rng) -> None:
    v = np.load(cdir / "values.npy", mmap_mode="r+")
    x = int(rng.integers(0, v.shape[-3] - 8))
    v[..., x:x + 8, :, :] = 0   # what a zero-filled truncation leaves behind
    v.flush()


def _swap_values(cdir: Path, rng) -> None:
    v = np.load(cdir / "values.npy")
    np.save(cdir / "values.npy", np.roll(v, 1, axis=-1))   # same size, same dtype, other content


#: name -> (what it does, function(canvas_dir, rng)); "plan:" faults change the plan instead
FAULTS: dict[str, tuple[str, object]] = {
    "none": ("kill -9 only", lambda c, r: None),
    "flip_value_byte": ("one bit flipped in values.npy data", lambda c, r: _flip(c / "values.npy", r)),
    "flip_known_byte": ("one bit flipped in known.npy data", lambda c, r: _flip(c / "known.npy", r)),
    "truncate_values": ("values.npy truncated at a random byte", lambda c, r: _truncate(c / "values.npy", r)),
    "truncate_known": ("known.npy truncated at a random byte", lambda c, r: _truncate(c / "known.npy", r)),
    "extend_known": ("64 bytes appended to known.npy",
                     lambda c, r: open(c / "known.npy", "ab").write(b"\0" * 64)),
    "zero_slab": ("8 x-planes of values zeroed (size unchanged)", _zero_block),
    "swap_values": ("values.npy replaced by same-shape other content", _swap_values),
    "wrong_shape": ("known.npy replaced by another shape",
                    lambda c, r: np.save(c / "known.npy", np.zeros((40, 40, 41), np.uint8))),
    "delete_values": ("values.npy deleted", lambda c, r: (c / "values.npy").unlink()),
    "delete_state": ("state.json deleted", lambda c, r: (c / "state.json").unlink()),
    "corrupt_state": ("state.json cut mid-way", lambda c, r: (c / "state.json").write_text('{"meta": ')),
    "drop_completed": ("last completed batch removed from state.json",
                       lambda c, r: _state(c, lambda s: s["completed"].pop())),
    "add_completed": ("a batch that never ran added to completed",
                      lambda c, r: _state(c, lambda s: s["completed"].append(max(s["completed"]) + 1))),
    "duplicate_completed": ("a completed batch listed twice",
                            lambda c, r: _state(c, lambda s: s["completed"].append(s["completed"][0]))),
    "garbage_journal": ("pending.npz replaced by garbage",
                        lambda c, r: (c / "pending.npz").write_bytes(b"PK\x03\x04 garbage")),
    "edit_digest": ("checksum in state.json changed", lambda c, r: _state(c, lambda s: s.update(digest=1))),
    "plan:seed": ("resumed with another seed", None),
    "plan:batch_size": ("resumed with another batch size", None),
}


def plan_dict(model, out, **over) -> dict:
    d = {"version": 1, "geometry": {"shape": [40, 40, 40]}, "model": None if model is None else str(model),
         "sampler": {"preset": "fast", "steps": 3, "resample": 1, "jump": 1, "no_resample_tail": 1},
         "batch_size": 2, "backend": "onnxruntime", "seed": 7, "segmentation": {"method": "levels"},
         "outputs": {"dir": str(out), "formats": ["npy"]}}
    d.update(over)
    return d


def run_cli(args, env=None, timeout=600):
    return subprocess.run([sys.executable, "-m", "gp_engine.cli", *args], capture_output=True, text=True,
                          env=env, timeout=timeout)


def trial(work: Path, fault: str, kill_after: int, seed: int, model=None, reference: Path | None = None) -> dict:
    """One kill / damage / resume; returns {"fault", "kill_after", "outcome", "message"}."""
    rng = np.random.default_rng(seed)
    work.mkdir(parents=True, exist_ok=True)
    out = work / "out"
    plan = work / "plan.json"
    plan.write_text(json.dumps(plan_dict(model, out)))
    if reference is None:
        reference = work / "ref"
        r = run_cli(["generate", str(plan), "--out", str(reference), "--quiet"])
        if r.returncode != 0:
            raise RuntimeError(f"reference run failed: {r.stderr}")
    env = dict(os.environ, GP_ENGINE_KILL_AFTER_BATCHES=str(kill_after))
    r = run_cli(["generate", str(plan), "--quiet"], env=env)
    if r.returncode != -9:
        return {"fault": fault, "kill_after": kill_after, "outcome": "traceback",
                "message": f"the kill did not happen (exit {r.returncode}): {r.stderr[-300:]}"}
    action = FAULTS[fault][1]
    if fault.startswith("plan:"):
        key = fault.split(":", 1)[1]
        plan.write_text(json.dumps(plan_dict(model, out, **{key: {"seed": 8, "batch_size": 4}[key]})))
    elif action is not None:
        action(out / "canvas", rng)
    r = run_cli(["generate", str(plan), "--resume", "--quiet"])
    lines = r.stderr.strip().splitlines()
    if r.returncode == 0:
        same = all((out / n).read_bytes() == (reference / n).read_bytes() for n in ("field.npy", "grains.npy"))
        outcome, message = ("identical", "") if same else ("SILENT CORRUPTION", "exit 0 with other voxels")
    elif r.returncode == 2 and len(lines) == 1:
        outcome, message = "refused", lines[0]
    else:
        outcome, message = "traceback", r.stderr[-500:]
    return {"fault": fault, "kill_after": kill_after, "outcome": outcome, "message": message}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=3, help="kill points per fault (default 3)")
    ap.add_argument("--work", default=str(ROOT / "bench" / "out" / "faults"))
    ap.add_argument("--results", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT / "bench"))
    from provenance import header

    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    plan = work / "plan.json"
    plan.write_text(json.dumps(plan_dict(None, work / "ref")))
    r = run_cli(["generate", str(plan), "--quiet"])
    if r.returncode != 0:
        print(r.stderr, file=sys.stderr)
        return 1
    rows = []
    t0 = time.time()
    for i, fault in enumerate(FAULTS):
        for k in range(args.trials):
            kill_after = 1 + (i + 3 * k) % 7   # 8 batches: kill after batch 1..7
            row = trial(work / f"{fault}_{k}", fault, kill_after, seed=1000 * i + k, reference=work / "ref")
            rows.append(row)
            print(f"{fault:<20} kill after {kill_after}: {row['outcome']:<10} {row['message'][:110]}", flush=True)
            shutil.rmtree(work / f"{fault}_{k}", ignore_errors=True)
    bad = [r for r in rows if r["outcome"] in ("SILENT CORRUPTION", "traceback")]
    res = {"provenance": header("fault_campaign", cuda=False), "seconds": time.time() - t0, "rows": rows,
           "counts": {o: sum(r["outcome"] == o for r in rows)
                      for o in ("identical", "refused", "SILENT CORRUPTION", "traceback")}}
    out = Path(args.results)
    (out / "fault_campaign.json").write_text(json.dumps(res, indent=1) + "\n")
    lines = ["# Fault campaign (bench/fault_campaign.py)", "",
             f"{len(rows)} trials: kill -9 after a random batch of a 40³ run (8 batches, shipped model), "
             "damage, `--resume`. " + ", ".join(f"{k}: {v}" for k, v in res["counts"].items()) + ".",
             f"Provenance: commit {res['provenance']['commit']}, {res['provenance']['device']['cpu']} "
             f"({res['provenance']['device']['cores']} cores), {res['provenance']['date']}.", "",
             "| fault | what | outcomes | message (first refusal) |", "|---|---|---|---|"]
    for fault, (what, _) in FAULTS.items():
        mine = [r for r in rows if r["fault"] == fault]
        outs = ", ".join(f"{o} ×{sum(r['outcome'] == o for r in mine)}"
                         for o in dict.fromkeys(r["outcome"] for r in mine))
        msg = next((r["message"] for r in mine if r["outcome"] == "refused"), "")
        msg = msg.replace("|", "\\|").replace(str(work), "…")[:160]
        lines.append(f"| `{fault}` | {what} | {outs} | {msg} |")
    (out / "fault_campaign.md").write_text("\n".join(lines) + "\n")
    print(f"{len(rows)} trials, {res['counts']}; wrote {out / 'fault_campaign.md'}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

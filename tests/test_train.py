"""Trainer on CPU (tiny preset, tiny crops of the shipped samples): finite loss, exact resume, errors."""

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_crops

from gp_engine.checkpoint import FORMAT_VERSION, load_checkpoint, load_model, save_checkpoint
from gp_engine.errors import GPEngineError
from gp_engine.train import TrainOptions, ema_decay_at, train



@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_crops(tmp_path_factory.mktemp("vols"), (40, 40, 36))


def _opts(data_dir, out, **kw):
    base = dict(data=[str(data_dir)], out=str(out), preset="tiny", steps=4, batch_size=2, device="cpu",
                val_every=2, val_blocks=2, checkpoint_every=2, log_every=1, progress=False, seed=3,
                threads=1)
    base.update(kw)
    return TrainOptions(**base)


def test_train_few_steps_writes_a_checkpoint(data_dir, tmp_path):
    out = tmp_path / "m.pt"
    meta = train(_opts(data_dir, out))
    assert meta["steps"] == 4 and meta["samples_seen"] == 8
    assert np.isfinite(meta["final_train_loss"]) and np.isfinite(meta["final_val_loss"])
    assert [Path(p).name for p in meta["train_files"]] == ["crop_seed1001.npy"]
    assert [Path(p).name for p in meta["val_files"]] == ["crop_seed1019.npy"]
    ck = load_checkpoint(out)
    assert ck["format_version"] == FORMAT_VERSION and ck["encoding"]["kind"] == "separable"
    assert ck["schedule"]["T"] == 250 and ck["training"]["history"]["val"]
    model, _ = load_model(out)
    with torch.no_grad():
        assert torch.isfinite(model(torch.zeros(1, 1, 32, 32, 32), torch.tensor([1.0]))).all()
    assert (tmp_path / "m_loss_curve.png").stat().st_size > 1000
    with pytest.raises(GPEngineError, match="--resume"):
        train(_opts(data_dir, out))


def test_resume_continues_exactly(data_dir, tmp_path):
    full = tmp_path / "full.pt"
    part = tmp_path / "part.pt"
    train(_opts(data_dir, full, steps=4))
    train(_opts(data_dir, part, steps=2))
    train(_opts(data_dir, part, steps=4, resume=True))
    a, b = load_checkpoint(full), load_checkpoint(part)
    assert a["step"] == b["step"] == 4
    for key in ("model", "ema"):
        for name, ta in a[key].items():
            torch.testing.assert_close(b[key][name], ta, rtol=0, atol=1e-7, msg=f"{key}.{name}")
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    for i in sa:
        torch.testing.assert_close(sb[i]["exp_avg_sq"], sa[i]["exp_avg_sq"], rtol=0, atol=1e-9)
    assert torch.equal(a["rng"]["generator"], b["rng"]["generator"])
    assert a["training"]["samples_seen"] == b["training"]["samples_seen"] == 8


def test_lr_at_holds_then_decays_linearly_over_the_cooldown():
    from gp_engine.train import lr_at

    assert [lr_at(s, 1.0, 10, None) for s in (0, 9, 12)] == [1.0, 1.0, 1.0]
    got = [lr_at(s, 1.0, 10, 4) for s in range(10)]
    assert got == pytest.approx([1.0] * 6 + [1.0, 0.75, 0.5, 0.25])
    assert lr_at(11, 1.0, 10, 4) == 0.0  # past --steps (never taken): no negative rate


def test_resume_keeps_the_lineages_lr_unless_given(data_dir, tmp_path):
    """A resumed run used to take the lr saved in the optimizer state whatever --lr said (and record the
    CLI's default): now --lr wins when given, else the lineage's own rate continues."""
    out = tmp_path / "lr.pt"
    train(_opts(data_dir, out, steps=2, lr=3e-3))
    train(_opts(data_dir, out, steps=3, resume=True))
    ck = load_checkpoint(out)
    assert ck["optimizer"]["param_groups"][0]["lr"] == pytest.approx(3e-3)
    assert ck["training"]["history"]["runs"][-1]["lr"] == pytest.approx(3e-3)
    train(_opts(data_dir, out, steps=4, resume=True, lr=1e-3))
    ck = load_checkpoint(out)
    assert ck["optimizer"]["param_groups"][0]["lr"] == pytest.approx(1e-3)
    assert ck["training"]["history"]["runs"][-1]["lr"] == pytest.approx(1e-3)
    with pytest.raises(GPEngineError, match="--cooldown-steps"):
        train(_opts(data_dir, out, steps=5, resume=True, cooldown_steps=0))


def test_cooldown_changes_the_steps_and_resumes_exactly(data_dir, tmp_path):
    plain, cool, part = tmp_path / "plain.pt", tmp_path / "cool.pt", tmp_path / "part.pt"
    train(_opts(data_dir, plain, steps=4, lr=5e-3))
    train(_opts(data_dir, cool, steps=4, lr=5e-3, cooldown_steps=3))
    # interrupted after its first step (a time limit), then resumed: the same rates as one run (the cooldown
    # ends at --steps, so an interrupted cooldown is resumed with the same --steps)
    train(_opts(data_dir, part, steps=4, lr=5e-3, cooldown_steps=3, time_limit_min=1e-9))
    assert load_checkpoint(part)["step"] == 1
    train(_opts(data_dir, part, steps=4, resume=True, cooldown_steps=3))
    a, b, c = load_checkpoint(plain), load_checkpoint(cool), load_checkpoint(part)
    assert b["optimizer"]["param_groups"][0]["lr"] == pytest.approx(5e-3 / 3)  # the last step's rate
    assert any(not torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    for name, tb in b["model"].items():
        torch.testing.assert_close(c["model"][name], tb, rtol=0, atol=1e-7, msg=name)


def test_resume_keeps_the_lineages_validation_set(data_dir, tmp_path):
    """A later run given another --seed (or --val-blocks) still validates on the lineage's blocks: its
    validation curve continues the same curve as an uninterrupted run's."""
    from gp_engine.train import lineage_validation

    full, part = tmp_path / "full.pt", tmp_path / "part.pt"
    train(_opts(data_dir, full, steps=4, val_blocks=3))
    train(_opts(data_dir, part, steps=2, val_blocks=3))
    meta = train(_opts(data_dir, part, steps=4, resume=True, seed=11, val_blocks=5))
    assert meta["validation"] == {"seed": 3, "blocks": 3}
    a = load_checkpoint(full)["training"]["history"]["val"]
    assert [s for s, _ in meta["history"]["val"]] == [s for s, _ in a] == [2, 4]
    np.testing.assert_allclose([v for _, v in meta["history"]["val"]], [v for _, v in a], rtol=1e-5)
    # checkpoints written before the field existed: the options of the run that wrote them
    assert lineage_validation({"options": {"seed": 2, "val_blocks": 64}}, 0, 8) == (2, 64)
    assert lineage_validation({}, 0, 8) == (0, 8)


def test_warm_start_takes_the_asked_crop(data_dir, tmp_path):
    """--init-from with --crop 16: the child trains on 16³ crops (was silently 32) and still validates
    on 32³ blocks; it resumes with its own crop."""
    train(_opts(data_dir, tmp_path / "p.pt", steps=1))
    meta = train(_opts(data_dir, tmp_path / "c.pt", steps=1, crop=16, init_from=str(tmp_path / "p.pt")))
    ck = load_checkpoint(tmp_path / "c.pt")
    assert ck["objective"]["crop"] == 16 and np.isfinite(meta["final_val_loss"])
    train(_opts(data_dir, tmp_path / "c.pt", steps=2, resume=True))
    assert load_checkpoint(tmp_path / "c.pt")["objective"]["crop"] == 16


def test_resume_from_another_device_reseeds_and_records_the_run(data_dir, tmp_path, capsys):
    """A CPU lineage continued on a GPU (or back): the CPU generator's state cannot drive the other
    device's generator, so the stream is reseeded from the step; weights and counters continue and the
    lineage records each run's device."""
    from gp_engine.checkpoint import save_checkpoint

    out = tmp_path / "x.pt"
    train(_opts(data_dir, out, steps=2))
    ck = load_checkpoint(out)
    ck["rng"] = {"generator": torch.zeros(16, dtype=torch.uint8), "device": "cuda"}  # a CUDA state's shape
    save_checkpoint(out, ck)
    meta = train(_opts(data_dir, out, steps=3, resume=True))
    assert meta["steps"] == 3 and meta["samples_seen"] == 6
    assert "reseeded from step 2" in capsys.readouterr().err
    runs = meta["history"]["runs"]
    assert [r["from_step"] for r in runs] == [0, 2] and all(r["device"] for r in runs)


def test_time_limit_stops_and_checkpoints(data_dir, tmp_path):
    out = tmp_path / "t.pt"
    meta = train(_opts(data_dir, out, steps=1000, time_limit_min=0.0, encoding="paper"))
    assert meta["stopped_by_time_limit"] and meta["steps"] == 1
    assert load_checkpoint(out)["encoding"] == {"kind": "paper", "levels": None}


def test_ema_decay_warmup():
    assert ema_decay_at(0, 0.999) == pytest.approx(0.1)
    assert ema_decay_at(10**6, 0.999) == 0.999


def test_bad_checkpoints_raise(tmp_path):
    with pytest.raises(GPEngineError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(GPEngineError, match="not a readable"):
        load_checkpoint(junk)
    plain = tmp_path / "plain.pt"
    torch.save(torch.nn.Linear(2, 2).state_dict(), plain)
    with pytest.raises(GPEngineError, match="plain state_dict"):
        load_checkpoint(plain)
    newer = tmp_path / "newer.pt"
    save_checkpoint(newer, {"config": {"channels": [8, 16]}, "schedule": {}, "encoding": {}, "ema": {}})
    raw = torch.load(newer, weights_only=True)
    raw["format_version"] = FORMAT_VERSION + 1
    torch.save(raw, newer)
    with pytest.raises(GPEngineError, match="newer"):
        load_checkpoint(newer)


def test_bad_options_raise(data_dir, tmp_path):
    with pytest.raises(GPEngineError):
        train(_opts(data_dir, tmp_path / "x.pt", loss="huber"))
    with pytest.raises(GPEngineError):
        train(_opts(data_dir, tmp_path / "x.pt", data=[]))
    with pytest.raises(GPEngineError):
        train(_opts(data_dir, tmp_path / "x.pt", precision="fp16"))


def test_auto_precision_on_cpu_is_bf16_only_with_matrix_units(monkeypatch):
    import gp_engine.train as tr

    cpu = torch.device("cpu")
    monkeypatch.setattr(tr, "cpu_has_bf16_matrix_units", lambda: True)
    assert tr.pick_precision("auto", cpu) == "bf16"
    monkeypatch.setattr(tr, "cpu_has_bf16_matrix_units", lambda: False)
    assert tr.pick_precision("auto", cpu) == "fp32"
    assert tr.pick_precision("bf16", cpu) == "bf16"  # asked for: honoured on any CPU


def test_bf16_training_validates_in_fp32(data_dir, tmp_path, monkeypatch):
    """Training steps run under bf16 autocast, the validation loss in fp32 (so that a lineage trained
    partly in bf16 keeps one comparable val curve); read inside the loss the trainer calls."""
    import gp_engine.train as tr

    seen = []
    real = tr.diffusion_loss

    def spy(*a, **kw):
        seen.append((torch.is_grad_enabled(), torch.is_autocast_enabled("cpu"),
                     torch.get_autocast_dtype("cpu")))
        return real(*a, **kw)

    monkeypatch.setattr(tr, "diffusion_loss", spy)
    meta = train(_opts(data_dir, tmp_path / "b.pt", precision="bf16", steps=2))
    assert meta["precision"] == "bf16" and np.isfinite(meta["final_val_loss"])
    train_calls = [s for s in seen if s[0]]
    val_calls = [s for s in seen if not s[0]]
    assert len(train_calls) == 2 and val_calls
    assert all(on and dt == torch.bfloat16 for _, on, dt in train_calls)
    assert not any(on for _, on, _ in val_calls)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_bf16_training_and_pipeline(data_dir, tmp_path):  # pragma: no cover - GPU machines only
    from gp_engine.blocks import BlockSource, load_volume

    vol = load_volume(data_dir / "crop_seed1001.npy")
    cpu, gpu = BlockSource([vol], "paper", device="cpu"), BlockSource([vol], "paper", device="cuda")
    g = torch.Generator().manual_seed(0)
    v, c = cpu.positions(16, g)
    sym = torch.randint(0, 48, (16,), generator=g)
    ref = cpu.gather_symmetric(v, c, sym)
    got = gpu.gather_symmetric(v.cuda(), c.cuda(), sym.cuda()).cpu()
    assert torch.equal(ref, got)
    meta = train(_opts(data_dir, tmp_path / "g.pt", device="cuda", precision="bf16", batch_size=8))
    assert np.isfinite(meta["final_train_loss"]) and meta["precision"] == "bf16"


def test_resume_finds_the_files_by_name_in_data(data_dir, tmp_path):
    import shutil

    moved = tmp_path / "elsewhere"
    shutil.copytree(data_dir, moved)
    out = tmp_path / "r.pt"
    train(_opts(moved, out, steps=2))
    other = tmp_path / "moved_again"
    moved.rename(other)
    with pytest.raises(GPEngineError, match="are gone"):
        train(_opts(moved, out, steps=3, resume=True, data=[]))
    meta = train(_opts(other, out, steps=3, resume=True))
    assert meta["steps"] == 3 and all(str(other) in f for f in meta["train_files"])
    (other / "crop_seed1019.npy").unlink()
    with pytest.raises(GPEngineError, match="lacks crop_seed1019.npy"):
        train(_opts(other, out, steps=4, resume=True))


def test_ctrl_c_finishes_the_step_and_writes_the_checkpoint(data_dir, tmp_path, monkeypatch):
    """SIGINT (or SIGTERM) during training: the step ends, the checkpoint is written, resume continues."""
    import os
    import signal

    import gp_engine.train as tr

    calls = {"n": 0}
    real = tr.ema_update

    def ema_then_signal(*a, **k):
        real(*a, **k)
        calls["n"] += 1
        if calls["n"] == 3:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(tr, "ema_update", ema_then_signal)
    out = tmp_path / "m.pt"
    before = signal.getsignal(signal.SIGINT)  # default_int_handler; SIG_IGN in a background job (nohup ... &)
    meta = train(_opts(data_dir, out, steps=10, checkpoint_every=100, val_every=100))
    assert meta["stopped_by_signal"] == "SIGINT" and meta["steps"] == 3
    assert load_checkpoint(out)["step"] == 3
    assert signal.getsignal(signal.SIGINT) is before   # handlers restored
    monkeypatch.setattr(tr, "ema_update", real)
    meta = train(_opts(data_dir, out, steps=10, checkpoint_every=100, val_every=100, resume=True))
    assert meta["steps"] == 10 and meta["stopped_by_signal"] is None


def test_aux_ce_on_predicted_bits():
    """The auxiliary cross-entropy: zero weight changes nothing; a correct x̂₀ costs less than a
    flipped one (checked against torch's own BCE on a hand-made prediction)."""
    from gp_engine.train import AUX_CE_SCALE, diffusion_loss

    torch.manual_seed(0)
    x0 = torch.where(torch.rand(2, 3, 4, 4, 4) > 0.5, 1.0, -1.0)
    noise = torch.randn_like(x0)
    sqrt_ab = torch.tensor([0.99, 0.5])
    sqrt_1mab = torch.sqrt(1 - sqrt_ab ** 2)
    t = torch.tensor([0, 1])

    class Oracle(torch.nn.Module):  # predicts ε exactly, so x̂₀ = x0
        def forward(self, x, tt):
            return noise

    class Flipper(torch.nn.Module):  # predicts the ε that makes x̂₀ = -x0
        def forward(self, x, tt):
            a = sqrt_ab[tt.long()].view(-1, 1, 1, 1, 1)
            s = sqrt_1mab[tt.long()].view(-1, 1, 1, 1, 1)
            return (x + a * x0) / s

    base = diffusion_loss(Oracle(), x0, t, noise, sqrt_ab, sqrt_1mab)
    assert float(base) == pytest.approx(0.0, abs=1e-10)
    assert float(diffusion_loss(Oracle(), x0, t, noise, sqrt_ab, sqrt_1mab, aux_ce=0.0)) == float(base)
    good = float(diffusion_loss(Oracle(), x0, t, noise, sqrt_ab, sqrt_1mab, aux_ce=1.0))
    w = torch.clamp((sqrt_ab / sqrt_1mab) ** 2, max=5.0) / 5.0
    bce = torch.nn.functional.binary_cross_entropy_with_logits(AUX_CE_SCALE * x0, (x0 > 0).float(),
                                                               reduction="none").flatten(1).mean(1)
    assert good == pytest.approx(float((bce * w).mean()), rel=1e-5)
    bad = diffusion_loss(Flipper(), x0, t, noise, sqrt_ab, sqrt_1mab, aux_ce=1.0)
    plain = diffusion_loss(Flipper(), x0, t, noise, sqrt_ab, sqrt_1mab)
    assert float(bad - plain) > 10 * good   # flipped bits cost far more than right ones


def test_aux_ce_needs_bits(data_dir, tmp_path):
    with pytest.raises(GPEngineError, match="--aux-ce .* needs --encoding bits"):
        train(_opts(data_dir, tmp_path / "m.pt", aux_ce=0.5))


def test_colouring_is_the_lineages_and_a_switch_is_recorded(data_dir, tmp_path):
    """--colouring spread: the training blocks use all 2^bits codes (DSatur alone needs ~8 on this data);
    the lineage keeps it on resume, a later run may switch it (recorded per run), paper has no colours."""
    from gp_engine.blocks import BlockSource
    from gp_engine.encoding import bits_decode

    vol = np.load(data_dir / "crop_seed1001.npy")
    g = torch.Generator().manual_seed(0)
    used = {}
    for mode in ("dsatur", "spread"):
        src = BlockSource([vol], "bits", device="cpu", bits=4, colouring=mode)
        codes = bits_decode(src.sample(1, g)[0].numpy())
        used[mode] = len(np.unique(src.stack.numpy()))  # colour indices before the per-block code permutation
        assert len(np.unique(codes)) <= used[mode]
    assert used["spread"] == 16 > used["dsatur"]

    out = tmp_path / "c.pt"
    train(_opts(data_dir, out, steps=1, encoding="bits", colouring="spread"))
    assert load_checkpoint(out)["encoding"]["colouring"] == "spread"
    train(_opts(data_dir, out, steps=2, resume=True))
    assert load_checkpoint(out)["encoding"]["colouring"] == "spread"
    meta = train(_opts(data_dir, out, steps=3, resume=True, colouring="dsatur"))
    assert load_checkpoint(out)["encoding"]["colouring"] == "dsatur"
    assert [r["colouring"] for r in meta["history"]["runs"]] == ["spread", "spread", "dsatur"]
    train(_opts(data_dir, tmp_path / "d.pt", steps=1, encoding="bits"))
    assert load_checkpoint(tmp_path / "d.pt")["encoding"]["colouring"] == "dsatur"
    with pytest.raises(GPEngineError, match="--colouring spread: the paper encoding has no grain colours"):
        train(_opts(data_dir, tmp_path / "p.pt", steps=1, encoding="paper", colouring="spread"))

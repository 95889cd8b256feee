"""Analog-bits encoding end to end: encode/decode, segmentation of a perfect bits field, a bits model
through train -> build (ONNX with B input channels) -> multi-channel canvas -> generate -> grains."""

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from gp_engine.canvas import Canvas
from gp_engine.encoding import bit_codes, bits_decode, bits_display, bits_encode
from gp_engine.errors import GPEngineError
from gp_engine.grains import split_grains
from gp_engine.segment import segment

DATA = Path(__file__).resolve().parent.parent / "gp_engine" / "data"


@pytest.fixture(scope="module")
def crop():
    return np.load(DATA / "potts_iso_100_seed1019.npz")["spins"][:40, :40, :40].astype(np.int64)


def test_bit_codes_are_the_binary_numbers():
    codes = bit_codes(3)
    assert codes.shape == (8, 3)
    for c in range(8):  # independent of the implementation: Python's own binary digits
        assert [1.0 if ch == "1" else -1.0 for ch in reversed(format(c, "03b"))] == codes[c].tolist()
    with pytest.raises(GPEngineError):
        bit_codes(0)


def test_perfect_and_noisy_bits_fields_segment_back_to_the_grains(crop):
    ids = split_grains(crop)
    f = bits_encode(ids, 4, rng=1)
    assert f.shape == (4,) + crop.shape and set(np.unique(f)) == {-1.0, 1.0}
    # the decoded code is constant on each grain
    code = bits_decode(f)
    for g in np.unique(ids)[:50]:
        assert len(np.unique(code[ids == g])) == 1
    noisy = f + np.random.default_rng(0).normal(0, 0.4, f.shape).astype(np.float32)  # σ = 0.4 of a ±1 bit
    for field, min_ari in ((f, 0.999), (noisy, 0.95)):
        lab = segment(bits_display(field), "levels", levels=16, min_size=1 if field is f else 5)
        assert adjusted_rand_score(ids.ravel(), lab.ravel()) >= min_ari


def test_multichannel_canvas_reads_and_commits_blocks(tmp_path):
    c = Canvas.create(tmp_path / "run", (40, 36, 32), {"m": 1}, channels=3)
    assert c.values.shape == (3, 40, 36, 32) and c.shape == (40, 36, 32) and c.channels == 3
    res = np.random.default_rng(0).normal(size=(1, 3, 32, 32, 32)).astype(np.float32)
    c.commit(0, [(20, 10, 0)], res)
    x0, mask = c.read_block((20, 10, 0), 32)
    assert x0.shape == (3, 32, 32, 32)
    np.testing.assert_array_equal(x0[:, :20, :26], res[0, :, :20, :26])   # inside the canvas
    assert mask[:20, :26].all() and not mask[20:].any() and not x0[:, 20:].any()
    again = Canvas.resume(tmp_path / "run", {"m": 1})
    np.testing.assert_array_equal(again.read_block((20, 10, 0), 32)[0], x0)


def test_bits_model_trains_builds_and_generates(tmp_path):
    pytest.importorskip("torch")
    from gp_engine.export import build_model
    from gp_engine.generate import generate
    from gp_engine.train import TrainOptions, train

    d = tmp_path / "vols"
    d.mkdir()
    for seed in (1001, 1019):
        np.save(d / f"crop_seed{seed}.npy", np.load(DATA / f"potts_iso_100_seed{seed}.npz")["spins"][:40, :40, :40])
    ck = tmp_path / "m.pt"
    train(TrainOptions(data=[str(d)], out=str(ck), preset="tiny", steps=3, batch_size=2, device="cpu",
                       encoding="bits", bits=3, target="v", val_every=3, val_blocks=2, progress=False,
                       threads=1))
    m = build_model(ck, tmp_path / "model", batch_sizes=[1, 2], log=lambda *a: None)
    assert m["encoding"] == {"kind": "bits", "levels": 8, "bits": 3, "colouring": "dsatur"}
    assert m["onnx"]["inputs"]["x"]["shape"][1] == 3
    plan = {"version": 1, "geometry": {"shape": [40, 36, 32]}, "model": str(tmp_path / "model"),
            "sampler": {"steps": 6, "resample": 0, "jump": 1, "no_resample_tail": 0}, "batch_size": 2,
            "backend": "onnxruntime", "seed": 1, "outputs": {"dir": str(tmp_path / "out"), "formats": ["npy", "png"]}}
    generate(plan, progress=False)
    field = np.load(tmp_path / "out" / "field.npy")
    grains = np.load(tmp_path / "out" / "grains.npy")
    assert field.shape == (3, 40, 36, 32) and grains.shape == (40, 36, 32) and grains.min() >= 1
    # auto segmentation of a bits model: DBSCAN on the decoded code, clusters under the model's min_size
    # (a build not told otherwise: 80 voxels) refilled; then the cut at thin necks
    assert m["segmentation_defaults"] == {"min_size": 80}
    from gp_engine.necks import split_necks

    assert np.array_equal(grains, split_necks(segment(bits_display(field), "dbscan", min_size=80)))
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert stats["segmentation"]["method"] == "dbscan" and stats["segmentation"]["min_size"] == 80


def test_bits_display_into_a_memmap_slab_by_slab_equals_the_whole(tmp_path):
    from gp_engine.encoding import bits_display
    from gp_engine.volume_io import open_npy_memmap

    rng = np.random.default_rng(3)
    field = rng.normal(size=(4, 9, 7, 5)).astype(np.float32)
    out = open_npy_memmap(tmp_path / "d.npy", np.float32, (9, 7, 5))
    got = bits_display(field, out=out, slab_voxels=70)   # two x-planes at a time
    assert got is out
    np.testing.assert_array_equal(np.asarray(out), bits_display(field))
    with pytest.raises(GPEngineError, match="out must be float32"):
        bits_display(field, out=np.zeros((9, 7, 5), np.float64))

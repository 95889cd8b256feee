"""Training-block pipeline: positions, the 48 cube symmetries, device-side gather and encodings."""

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch

from gp_engine.blocks import (N_SYMMETRIES, BlockSource, apply_symmetry, boundary_corners, fixed_corners,
                              list_volume_files, split_train_val, symmetry, tiling_corners)
from gp_engine.errors import GPEngineError

DATA = Path(__file__).resolve().parent.parent / "gp_engine" / "data"


@pytest.fixture(scope="module")
def crop():
    """48³ crop of the shipped SPPARKS sample (spins recur: grains are split later)."""
    return np.load(DATA / "potts_iso_100_seed1001.npz")["spins"][:48, :48, :48].copy()


def test_tiling_corners_are_the_papers_27():
    got = {tuple(c) for c in tiling_corners((100, 100, 100))}
    assert got == set(itertools.product([0, 32, 64], repeat=3)) and len(tiling_corners()) == 27


def test_boundary_corners_are_56_distinct_boundary_centred_blocks():
    b = boundary_corners((100, 100, 100))
    assert b.shape == (56, 3)
    assert len({tuple(c) for c in b}) == 56
    tiling = {tuple(c) for c in tiling_corners()}
    for c in b:
        assert tuple(c) not in tiling
        assert set(c) <= {0, 16, 32, 48, 64}                      # on the half-block grid, inside 100³
        assert any(v in (16, 48) for v in c)                       # centred on a tiling boundary
    assert fixed_corners().shape == (83, 3)


def test_positions_of_other_shapes_stay_inside():
    for shape in [(32, 32, 32), (40, 64, 100), (96, 96, 96)]:
        for c in fixed_corners(shape):
            assert all(0 <= c[a] <= shape[a] - 32 for a in range(3))
    assert len(tiling_corners((32, 32, 32))) == 1 and len(boundary_corners((32, 32, 32))) == 0


def _distinct_block(n=4):
    return torch.arange(n ** 3, dtype=torch.float32).reshape(1, n, n, n)


def test_48_symmetries_distinct_and_value_preserving():
    base = _distinct_block()
    outs = [apply_symmetry(base, torch.tensor([s]))[0] for s in range(N_SYMMETRIES)]
    assert torch.equal(outs[0], base[0])                          # index 0 is the identity
    keys = {tuple(o.flatten().tolist()) for o in outs}
    assert len(keys) == 48
    for o in outs:
        assert torch.equal(torch.sort(o.flatten()).values, base.flatten())


def test_symmetries_form_a_group():
    base = _distinct_block()
    table = {tuple(apply_symmetry(base, torch.tensor([s]))[0].flatten().tolist()): s for s in range(48)}
    for s1 in range(48):
        once = apply_symmetry(base, torch.tensor([s1]))
        for s2 in range(48):
            twice = apply_symmetry(once, torch.tensor([s2]))[0]
            assert tuple(twice.flatten().tolist()) in table      # closure
    # every element has an inverse
    for s in range(48):
        once = apply_symmetry(base, torch.tensor([s]))
        assert any(torch.equal(apply_symmetry(once, torch.tensor([r]))[0], base[0]) for r in range(48))
    with pytest.raises(GPEngineError):
        symmetry(48)


def test_gather_matches_numpy_slices_and_symmetric_gather(crop):
    src = BlockSource([crop, crop[:40, :44, :48]], encoding="paper", device="cpu")
    g = torch.Generator().manual_seed(3)
    vol, corner = src.positions(24, g, random_fraction=0.7)
    raw = src.gather(vol, corner)
    vols = [crop.astype(np.float32), crop[:40, :44, :48].astype(np.float32)]
    for i in range(24):
        x, y, z = corner[i].tolist()
        v = vols[int(vol[i])]
        assert x + 32 <= v.shape[0] and y + 32 <= v.shape[1] and z + 32 <= v.shape[2]
        np.testing.assert_array_equal(raw[i].numpy(), v[x:x + 32, y:y + 32, z:z + 32])
    sym = torch.randint(0, 48, (24,), generator=g)
    assert torch.equal(src.gather_symmetric(vol, corner, sym), apply_symmetry(raw, sym))


def test_paper_encoding_matches_reference(crop):
    from gp_engine.encoding import paper_encode

    src = BlockSource([crop], encoding="paper", device="cpu")
    g = torch.Generator().manual_seed(0)
    x = src.sample(6, g)
    assert x.shape == (6, 1, 32, 32, 32) and x.dtype == torch.float32
    vol, corner = src.positions(4, g)
    raw = src.gather(vol, corner)
    enc = src.encode(raw, g)
    for i in range(4):
        np.testing.assert_allclose(enc[i, 0].numpy(), paper_encode(raw[i].numpy().astype(np.int64)), atol=1e-6)


def test_separable_encoding_separates_touching_grains(crop):
    from gp_engine.grains import split_grains

    K = 12
    src = BlockSource([crop], encoding="separable", levels=K, device="cpu")
    assert src.conflicts == 0
    ids = torch.from_numpy(split_grains(crop).astype(np.int64))[None]
    g = torch.Generator().manual_seed(5)
    vol, corner = src.positions(8, g, random_fraction=0.5)
    sym = torch.randint(0, 48, (8,), generator=g)
    enc = src.encode(src.gather_symmetric(vol, corner, sym), g)[:, 0]
    id_src = BlockSource.__new__(BlockSource)                     # same gather on the grain-id volume
    id_src.stack, id_src.block, id_src.device = ids, 32, torch.device("cpu")
    id_src._offsets = torch.arange(32)
    gid = id_src.gather_symmetric(vol, corner, sym)
    levels = torch.linspace(-1, 1, K)
    assert torch.isin(enc, levels).all()
    n = 32
    for dx, dy, dz in itertools.product((-1, 0, 1), repeat=3):
        if (dx, dy, dz) <= (0, 0, 0):
            continue
        a = (slice(None), slice(max(0, -dx), n - max(0, dx)), slice(max(0, -dy), n - max(0, dy)),
             slice(max(0, -dz), n - max(0, dz)))
        b = (slice(None), slice(max(0, dx), n + min(0, dx)), slice(max(0, dy), n + min(0, dy)),
             slice(max(0, dz), n + min(0, dz)))
        same_grain = gid[a] == gid[b]
        same_level = enc[a] == enc[b]
        assert not (~same_grain & same_level).any(), "two touching grains share a level"
        assert same_level[same_grain].all(), "a grain got two levels"
    # the colour -> level permutation is drawn per block: colour 0 lands on many different levels
    perms = src.encode(torch.zeros(64, 2, 2, 2, dtype=torch.uint8), g)[:, 0, 0, 0, 0]
    assert len(torch.unique(perms)) > 3


def test_bits_encoding_separates_touching_grains(crop):
    """Analog bits: every channel is ±1, a grain has one code, touching grains differ in some bit,
    and the codes decode (threshold at 0) to the colours of a DSatur colouring."""
    from gp_engine.encoding import bits_decode
    from gp_engine.grains import split_grains

    src = BlockSource([crop], encoding="bits", bits=4, device="cpu")
    assert src.channels == 4 and src.levels == 16 and src.conflicts == 0
    g = torch.Generator().manual_seed(2)
    x = src.sample(4, g)
    assert x.shape == (4, 4, 32, 32, 32) and set(torch.unique(x).tolist()) == {-1.0, 1.0}
    ids = torch.from_numpy(split_grains(crop).astype(np.int64))[None]
    vol, corner = src.positions(6, g)
    sym = torch.randint(0, 48, (6,), generator=g)
    enc = src.encode(src.gather_symmetric(vol, corner, sym), g)
    id_src = BlockSource.__new__(BlockSource)
    id_src.stack, id_src.block, id_src.device = ids, 32, torch.device("cpu")
    id_src._offsets = torch.arange(32)
    gid = id_src.gather_symmetric(vol, corner, sym).numpy()
    code = np.stack([bits_decode(e) for e in enc.numpy()])
    for dx, dy, dz in ((1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 1), (1, -1, 0)):
        a = np.roll(np.roll(np.roll(gid, dx, 1), dy, 2), dz, 3)[:, 1:-1, 1:-1, 1:-1]
        ca = np.roll(np.roll(np.roll(code, dx, 1), dy, 2), dz, 3)[:, 1:-1, 1:-1, 1:-1]
        same = a == gid[:, 1:-1, 1:-1, 1:-1]
        assert (ca[same] == code[:, 1:-1, 1:-1, 1:-1][same]).all(), "a grain got two codes"
        assert (ca[~same] != code[:, 1:-1, 1:-1, 1:-1][~same]).all(), "touching grains share a code"


def test_split_train_val(tmp_path):
    names = [f"potts_iso_100_seed{s}.npz" for s in (1001, 1018, 1019, 1023)] + ["mine.npy"]
    files = [tmp_path / n for n in names]
    train, val = split_train_val(files)
    assert [f.name for f in val] == names[2:4]
    assert [f.name for f in train] == [names[0], names[1], names[4]]
    train, val = split_train_val(files, "*seed1018*")
    assert [f.name for f in val] == [names[1]]
    with pytest.raises(GPEngineError):
        split_train_val(files, "*")


def test_list_volume_files_errors(tmp_path):
    with pytest.raises(GPEngineError):
        list_volume_files(tmp_path / "nope")
    with pytest.raises(GPEngineError):
        list_volume_files(tmp_path)
    np.save(tmp_path / "a.npy", np.zeros((32, 32, 32), np.int32))
    assert [p.name for p in list_volume_files(tmp_path)] == ["a.npy"]


def test_block_source_rejects_bad_encoding(crop):
    with pytest.raises(GPEngineError):
        BlockSource([crop], encoding="rgb")

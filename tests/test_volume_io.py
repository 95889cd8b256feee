"""Round-trips of every volume format, and the errors users see for bad files."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from gp_engine.errors import GPEngineError
from gp_engine.volume_io import (open_npy_memmap, read_volume, write_npy, write_spparks_dump, write_volume,
                                 write_vti)

DATA = Path(__file__).resolve().parents[1] / "gp_engine" / "data"


@pytest.fixture()
def vol() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(1, 1000, size=(5, 4, 3)).astype(np.int32)


@pytest.mark.parametrize("suffix", [".npy", ".npz", ".vti", ".dump", ".spparks", ".txt"])
def test_roundtrip_every_format(tmp_path, vol, suffix):
    path = write_volume(tmp_path / f"v{suffix}", vol)
    back = read_volume(path)
    assert back.shape == vol.shape
    np.testing.assert_array_equal(back, vol)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # atomic write left no temp


def test_npz_spins_key_and_single_array(tmp_path, vol):
    np.savez(tmp_path / "a.npz", other=np.zeros(3), spins=vol)
    np.testing.assert_array_equal(read_volume(tmp_path / "a.npz"), vol)
    np.savez(tmp_path / "b.npz", whatever=vol)
    np.testing.assert_array_equal(read_volume(tmp_path / "b.npz"), vol)
    np.savez(tmp_path / "c.npz", a=vol, b=vol)
    with pytest.raises(GPEngineError, match="spins"):
        read_volume(tmp_path / "c.npz")


def test_shipped_sample_reads():
    v = read_volume(DATA / "potts_iso_100_seed1001.npz")
    assert v.shape == (100, 100, 100) and v.min() >= 1


@pytest.mark.parametrize("cell_data", [True, False])
@pytest.mark.parametrize("binary", [True, False])
@pytest.mark.parametrize("dtype", [np.int16, np.int32, np.float32])
def test_vti_roundtrip_and_header(tmp_path, vol, cell_data, binary, dtype):
    arr = (vol / 7.0).astype(dtype) if dtype == np.float32 else vol.astype(dtype)
    path = write_vti(tmp_path / "v.vti", arr, name="spin", cell_data=cell_data, binary=binary)
    back = read_volume(path)
    assert back.dtype == arr.dtype
    np.testing.assert_array_equal(back, arr)
    root = ET.parse(path).getroot()
    assert root.tag == "VTKFile" and root.get("type") == "ImageData"
    image = root.find("ImageData")
    nx, ny, nz = arr.shape
    add = 1 if cell_data else 0
    assert [int(v) for v in image.get("WholeExtent").split()] == [0, nx - 1 + add, 0, ny - 1 + add, 0, nz - 1 + add]
    holder = image.find("Piece").find("CellData" if cell_data else "PointData")
    da = holder.find("DataArray")
    assert da.get("Name") == "spin" and holder.get("Scalars") == "spin"
    if not binary:  # x fastest: the first values are arr[0:nx, 0, 0]
        first = np.array(da.text.split()[:nx], dtype=float)
        np.testing.assert_allclose(first, arr[:, 0, 0].astype(float), rtol=1e-6)


def test_vti_reads_paraview_appended_raw(tmp_path, vol):
    # A file laid out the way VTK's default writer does it: raw appended data, UInt32 header.
    flat = vol.ravel(order="F").astype("<i4")
    payload = np.uint32(flat.nbytes).tobytes() + flat.tobytes()
    nx, ny, nz = vol.shape
    head = (
        '<?xml version="1.0"?>\n<VTKFile type="ImageData" version="0.1" byte_order="LittleEndian">\n'
        f'<ImageData WholeExtent="0 {nx-1} 0 {ny-1} 0 {nz-1}" Origin="0 0 0" Spacing="1 1 1">\n'
        f'<Piece Extent="0 {nx-1} 0 {ny-1} 0 {nz-1}"><PointData Scalars="s">\n'
        '<DataArray type="Int32" Name="s" format="appended" offset="0"/>\n'
        '</PointData><CellData></CellData></Piece></ImageData>\n<AppendedData encoding="raw">\n_'
    ).encode()
    (tmp_path / "p.vti").write_bytes(head + payload + b"\n</AppendedData>\n</VTKFile>\n")
    np.testing.assert_array_equal(read_volume(tmp_path / "p.vti"), vol)


def _dump_snapshot(step: int, vol: np.ndarray, order: list[str], rng, scale: float = 1.0) -> str:
    nx, ny, nz = vol.shape
    x, y, z = np.meshgrid(np.arange(nx), np.arange(ny), np.arange(nz), indexing="ij")
    cols = {
        "id": np.arange(1, vol.size + 1),
        "i1": vol.ravel(order="F"),
        "x": x.ravel(order="F") * scale,
        "y": y.ravel(order="F") * scale,
        "z": z.ravel(order="F") * scale,
    }
    perm = rng.permutation(vol.size)  # site lines in any order
    lines = [" ".join(f"{cols[c][i]:g}" for c in order) for i in perm]
    return (
        f"ITEM: TIMESTEP\n{step}\nITEM: NUMBER OF ATOMS\n{vol.size}\nITEM: BOX BOUNDS pp pp pp\n"
        f"0 {nx * scale}\n0 {ny * scale}\n0 {nz * scale}\nITEM: ATOMS {' '.join(order)}\n" + "\n".join(lines) + "\n"
    )


def test_handwritten_dump_shuffled_columns_last_snapshot(tmp_path, vol):
    rng = np.random.default_rng(1)
    first = np.ones_like(vol)
    text = _dump_snapshot(0, first, ["id", "i1", "x", "y", "z"], rng) + _dump_snapshot(
        100, vol, ["z", "i1", "id", "x", "y"], rng, scale=0.5
    )
    (tmp_path / "run.dump").write_text(text)
    np.testing.assert_array_equal(read_volume(tmp_path / "run.dump"), vol)
    # 'type' accepted as the spin column, any other suffix parsed as a dump
    (tmp_path / "run.lammpstrj").write_text(text.replace(" i1", " type"))
    np.testing.assert_array_equal(read_volume(tmp_path / "run.lammpstrj"), vol)


def test_written_dump_is_spparks_site_order(tmp_path, vol):
    path = write_spparks_dump(tmp_path / "v.dump", vol)
    lines = path.read_text().splitlines()
    assert lines[8] == "ITEM: ATOMS id i1 x y z"
    rows = np.array([ln.split() for ln in lines[9:]], dtype=np.int64)
    nx, ny, _ = vol.shape
    ids, x, y, z = rows[:, 0], rows[:, 2], rows[:, 3], rows[:, 4]
    np.testing.assert_array_equal(ids, 1 + x + nx * (y + ny * z))
    np.testing.assert_array_equal(rows[:, 1], vol[x, y, z])


def test_errors(tmp_path, vol):
    with pytest.raises(GPEngineError, match="does not exist"):
        read_volume(tmp_path / "missing.npy")
    with pytest.raises(GPEngineError, match="unknown output format"):
        write_volume(tmp_path / "v.xyz", vol)
    (tmp_path / "bad.npy").write_bytes(b"not numpy")
    with pytest.raises(GPEngineError, match="npy"):
        read_volume(tmp_path / "bad.npy")
    (tmp_path / "bad.vti").write_text("<VTKFile type='ImageData'><ImageData")
    with pytest.raises(GPEngineError, match="VTK"):
        read_volume(tmp_path / "bad.vti")
    (tmp_path / "junk.dump").write_text("hello\n")
    with pytest.raises(GPEngineError, match="TIMESTEP"):
        read_volume(tmp_path / "junk.dump")
    rng = np.random.default_rng(2)
    (tmp_path / "nocol.dump").write_text(_dump_snapshot(0, vol, ["id", "x", "y", "z"], rng))
    with pytest.raises(GPEngineError, match="spin column"):
        read_volume(tmp_path / "nocol.dump")
    text = _dump_snapshot(0, vol, ["id", "i1", "x", "y", "z"], rng)
    (tmp_path / "trunc.dump").write_text(text[: len(text) // 2])
    with pytest.raises(GPEngineError, match="truncated"):
        read_volume(tmp_path / "trunc.dump")
    with pytest.raises(GPEngineError, match="3D"):
        write_npy(tmp_path / "flat.npy", np.zeros(5))
    with pytest.raises(GPEngineError, match="does not exist"):
        write_npy(tmp_path / "nodir" / "v.npy", vol)


def test_vti_opens_in_vtk_reader(tmp_path, vol):
    """ParaView's own reader (VTK) reads what write_vti writes, x fastest (runs where vtk is installed)."""
    pytest.importorskip("vtkmodules.vtkIOXML")
    from vtkmodules.util.numpy_support import vtk_to_numpy
    from vtkmodules.vtkIOXML import vtkXMLImageDataReader

    for cell_data in (True, False):
        path = write_vti(tmp_path / "v.vti", vol, cell_data=cell_data)
        reader = vtkXMLImageDataReader()
        reader.SetFileName(str(path))
        reader.Update()
        image = reader.GetOutput()
        data = image.GetCellData() if cell_data else image.GetPointData()
        values = vtk_to_numpy(data.GetArray("grain_id"))
        assert tuple(image.GetDimensions()) == tuple(n + (1 if cell_data else 0) for n in vol.shape)
        np.testing.assert_array_equal(values.reshape(vol.shape, order="F"), vol)


@pytest.mark.parametrize("fallocate", ["native", "missing", "unsupported"])
def test_open_npy_memmap_is_a_preallocated_npy(tmp_path, monkeypatch, fallocate):
    import errno
    import os

    if fallocate == "missing":
        monkeypatch.delattr(os, "posix_fallocate", raising=False)
    elif fallocate == "unsupported":  # a file system without fallocate: zeros are written instead
        def unsupported(fd, offset, length):
            raise OSError(errno.EOPNOTSUPP, "Operation not supported")

        monkeypatch.setattr(os, "posix_fallocate", unsupported, raising=False)
    path, shape = tmp_path / "v.npy", (64, 64, 32)
    m = open_npy_memmap(path, np.int32, shape)
    assert isinstance(m, np.memmap) and m.shape == shape and m.dtype == np.int32
    # the data bytes are allocated before anything is written: not a sparse file (np.lib.format.open_memmap
    # makes one, which a full disk turns into SIGBUS when the pages are written back)
    nbytes = int(np.prod(shape)) * 4
    sparse = np.lib.format.open_memmap(tmp_path / "sparse.npy", "w+", np.int32, shape)
    if os.stat(tmp_path / "sparse.npy").st_blocks * 512 < nbytes:  # the file system makes sparse files
        assert os.stat(path).st_blocks * 512 >= nbytes
    del sparse
    assert not m.any()
    want = np.arange(np.prod(shape), dtype=np.int32).reshape(shape)
    m[:] = want
    m.flush()
    del m
    np.testing.assert_array_equal(np.load(path), want)
    assert path.read_bytes()[:128] == (tmp_path / "sparse.npy").read_bytes()[:128]  # same .npy header


def test_open_npy_memmap_full_disk_raises_and_removes_the_file(tmp_path, monkeypatch):
    import errno
    import os

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full, raising=False)
    with pytest.raises(OSError) as info:
        open_npy_memmap(tmp_path / "v.npy", np.float32, (64, 64, 64))
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(tmp_path / "v.npy")
    assert list(tmp_path.iterdir()) == []

"""Read and write voxel volumes: SPPARKS text dumps, ``.npy``, ``.npz`` and VTK ``.vti``.

Axis convention: every array in gp-engine is indexed ``[x, y, z]`` (x first). On disk:

- SPPARKS dump: one line per site, ``id i1 x y z``; ids are 1-based in SPPARKS site order, x fastest
  (id = 1 + x + nx*(y + ny*z)). The reader accepts any column order and finds columns by name.
- ``.vti`` (VTK XML ImageData, opens in ParaView): ``WholeExtent`` is ``0 nx 0 ny 0 nz`` for cell data
  (one cell per voxel, the default: voxels render as cubes) or ``0 nx-1 0 ny-1 0 nz-1`` for point
  data; the values are stored x fastest (Fortran order of our [x, y, z] arrays), as VTK requires.
- ``.npy`` / ``.npz``: the array as is, ``[x, y, z]``; ``.npz`` is read from key ``spins`` or its
  only array.

All writes are atomic (:mod:`gp_engine.atomic_write`): a temporary file in the target directory is
written, given the mode a plain ``open()`` would give, then ``os.replace``d; the directory must exist.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import os
import re
import xml.etree.ElementTree as ET
import zlib
from pathlib import Path

import numpy as np

from .atomic_write import atomic_open
from .errors import GPEngineError

DUMP_SUFFIXES = (".dump", ".spparks", ".txt")
SPIN_COLUMNS = ("i1", "spin", "type")

_VTK_TYPES = {
    np.dtype(np.int8): "Int8",
    np.dtype(np.uint8): "UInt8",
    np.dtype(np.int16): "Int16",
    np.dtype(np.uint16): "UInt16",
    np.dtype(np.int32): "Int32",
    np.dtype(np.uint32): "UInt32",
    np.dtype(np.int64): "Int64",
    np.dtype(np.uint64): "UInt64",
    np.dtype(np.float32): "Float32",
    np.dtype(np.float64): "Float64",
}
_NUMPY_TYPES = {v: k for k, v in _VTK_TYPES.items()}


# ----------------------------------------------------------------------------------------- helpers


def _check_exists(path: Path) -> None:
    if not path.exists():
        raise GPEngineError(f"volume file '{path}' does not exist: check the path")
    if path.is_dir():
        raise GPEngineError(f"volume path '{path}' is a directory: give a volume file")


def _check_volume(arr: np.ndarray, what: str = "volume") -> np.ndarray:
    arr = np.asarray(arr)
    if arr.ndim != 3:
        raise GPEngineError(f"{what} must be a 3D array [x, y, z], got shape {arr.shape}")
    if 0 in arr.shape:
        raise GPEngineError(f"{what} is empty (shape {arr.shape})")
    return arr


# ----------------------------------------------------------------------------------------- readers


def read_volume(path: str | os.PathLike) -> np.ndarray:
    """Read a 3D volume ``[x, y, z]`` by suffix: ``.npy``, ``.npz``, ``.vti``; anything else is
    parsed as a SPPARKS text dump (last snapshot)."""
    path = Path(path)
    _check_exists(path)
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return read_npy(path)
    if suffix == ".npz":
        return read_npz(path)
    if suffix == ".vti":
        return read_vti(path)
    return read_spparks_dump(path)


def read_npy(path: str | os.PathLike) -> np.ndarray:
    path = Path(path)
    _check_exists(path)
    try:
        arr = np.load(path, allow_pickle=False)
    except Exception as exc:  # numpy raises ValueError/OSError/EOFError on bad files
        raise GPEngineError(f"'{path}' is not a readable .npy file ({exc}); re-export it with numpy.save") from exc
    return _check_volume(arr, f"array in '{path}'")


def read_npz(path: str | os.PathLike, key: str = "spins") -> np.ndarray:
    path = Path(path)
    _check_exists(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            names = list(z.files)
            if key in names:
                arr = z[key]
            elif len(names) == 1:
                arr = z[names[0]]
            else:
                raise GPEngineError(
                    f"'{path}' holds arrays {names} but no '{key}': save the volume under the key '{key}'"
                )
    except GPEngineError:
        raise
    except Exception as exc:
        raise GPEngineError(f"'{path}' is not a readable .npz file ({exc}); re-export it with numpy.savez") from exc
    return _check_volume(arr, f"array in '{path}'")


def _lattice_index(coord: np.ndarray, axis: str, path: Path) -> np.ndarray:
    """Map lattice coordinates (possibly floats) to 0-based integer indices along one axis."""
    lo = coord.min()
    uniq = np.unique(coord)
    if uniq.size == 1:
        return np.zeros(coord.shape, dtype=np.int64)
    spacing = float(np.diff(uniq).min())
    idx = np.rint((coord - lo) / spacing)
    if np.abs(idx * spacing + lo - coord).max() > 1e-3 * spacing:
        raise GPEngineError(
            f"SPPARKS dump '{path}': {axis} coordinates are not on a regular lattice "
            f"(spacing {spacing:g}); only simple-cubic lattices are supported"
        )
    return idx.astype(np.int64)


def read_spparks_dump(path: str | os.PathLike) -> np.ndarray:
    """Parse the LAST snapshot of a SPPARKS text dump into an int32 volume ``[x, y, z]``.

    Columns are found by name (any order): the spin column is ``i1`` (or ``spin`` / ``type``) and the
    site coordinates ``x y z`` (lattice units, may be floats). Coordinates are mapped onto an integer
    grid by subtracting the minimum and dividing by the lattice spacing (the smallest gap between
    distinct coordinates). Lattice sites missing from the dump get 0 (background).
    """
    path = Path(path)
    _check_exists(path)
    try:
        text = path.read_text()
    except UnicodeDecodeError as exc:
        raise GPEngineError(
            f"'{path}' is not a text SPPARKS dump (binary content); use a .npy/.npz/.vti suffix for those"
        ) from exc
    start = text.rfind("ITEM: TIMESTEP")
    if start < 0:
        raise GPEngineError(
            f"'{path}' is not a SPPARKS dump (no 'ITEM: TIMESTEP' line) and has no known suffix "
            "(.npy, .npz, .vti): give a SPPARKS text dump or one of those formats"
        )
    lines = text[start:].split("\n")
    n_sites = None
    header = None
    body_start = None
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        if line.startswith("ITEM: NUMBER OF"):
            try:
                n_sites = int(lines[i + 1].split()[0])
            except (IndexError, ValueError) as exc:
                raise GPEngineError(f"SPPARKS dump '{path}': bad 'NUMBER OF ATOMS' value") from exc
            i += 2
            continue
        if line.startswith("ITEM: ATOMS") or line.startswith("ITEM: SITES"):
            header = line.split()[2:]
            body_start = i + 1
            break
        i += 1
    if header is None or n_sites is None:
        raise GPEngineError(
            f"SPPARKS dump '{path}': the last snapshot lacks 'ITEM: NUMBER OF ATOMS' or 'ITEM: ATOMS' "
            "lines (truncated file?)"
        )
    cols = {name: k for k, name in enumerate(header)}
    spin_col = next((cols[c] for c in SPIN_COLUMNS if c in cols), None)
    missing = [c for c in ("x", "y", "z") if c not in cols]
    if spin_col is None or missing:
        need = "a spin column (i1, spin or type)" if spin_col is None else f"columns {missing}"
        raise GPEngineError(
            f"SPPARKS dump '{path}' has columns {header} but needs {need} and x y z: "
            "dump with 'dump 1 text N file id i1 x y z'"
        )
    body = "\n".join(lines[body_start : body_start + n_sites])
    try:
        values = np.array(body.split(), dtype=np.float64)
    except ValueError as exc:
        raise GPEngineError(f"SPPARKS dump '{path}': non-numeric value in the site lines ({exc})") from exc
    if values.size != n_sites * len(header):
        raise GPEngineError(
            f"SPPARKS dump '{path}': expected {n_sites} site lines of {len(header)} columns, "
            f"found {values.size} values (truncated or corrupt file)"
        )
    table = values.reshape(n_sites, len(header))
    ix = _lattice_index(table[:, cols["x"]], "x", path)
    iy = _lattice_index(table[:, cols["y"]], "y", path)
    iz = _lattice_index(table[:, cols["z"]], "z", path)
    shape = (int(ix.max()) + 1, int(iy.max()) + 1, int(iz.max()) + 1)
    flat = ix + shape[0] * (iy + shape[1] * iz)
    if np.unique(flat).size != n_sites:
        raise GPEngineError(f"SPPARKS dump '{path}': two sites share one lattice position (corrupt dump)")
    spins = table[:, spin_col]
    if not np.all(spins == np.rint(spins)):
        raise GPEngineError(f"SPPARKS dump '{path}': spin column '{header[spin_col]}' holds non-integers")
    vol = np.zeros(int(np.prod(shape)), dtype=np.int32)
    vol[flat] = spins.astype(np.int32)
    return vol.reshape(shape, order="F")


def _decode_vtk_binary(text: str, dtype: np.dtype, count: int, header_dtype: np.dtype, compressed: bool,
                       where: str) -> np.ndarray:
    """Decode one base64 ``binary`` DataArray (uncompressed or zlib), header included."""
    text = "".join(text.split())
    hsize = header_dtype.itemsize
    if compressed:
        # header (own base64 block): [n_blocks, block_size, last_block_size, sizes...]
        first = base64.b64decode(text[: 4 * ((3 * hsize + 2) // 3)])
        nblocks = int(np.frombuffer(first[:hsize], header_dtype)[0])
        hlen = (3 + nblocks) * hsize
        hchars = 4 * ((hlen + 2) // 3)
        head = np.frombuffer(base64.b64decode(text[:hchars])[:hlen], header_dtype)
        sizes = head[3:].astype(np.int64)
        raw = base64.b64decode(text[hchars:])
        out, pos = [], 0
        for s in sizes:
            out.append(zlib.decompress(raw[pos : pos + s]))
            pos += s
        data = b"".join(out)
    else:
        raw = base64.b64decode(text)
        nbytes = int(np.frombuffer(raw[:hsize], header_dtype)[0])
        data = raw[hsize : hsize + nbytes]
        if len(data) != nbytes:  # header base64-encoded separately from the data
            hchars = 4 * ((hsize + 2) // 3)
            data = base64.b64decode(text[hchars:])[:nbytes]
    arr = np.frombuffer(data, dtype=dtype)
    if arr.size != count:
        raise GPEngineError(f"{where}: expected {count} values, decoded {arr.size} (corrupt file)")
    return arr


def read_vti(path: str | os.PathLike) -> np.ndarray:
    """Read the first point- or cell-data array of a VTK XML ImageData file into ``[x, y, z]``.

    Supports ``ascii`` and base64 ``binary`` DataArrays (uncompressed or zlib-compressed) and
    ``appended`` data (base64 or raw): everything :func:`write_vti` writes, and ParaView's defaults.
    """
    path = Path(path)
    _check_exists(path)
    blob = path.read_bytes()
    appended_raw = b""
    m = re.search(rb"<AppendedData[^>]*encoding=\"raw\"[^>]*>", blob)
    if m:  # raw appended bytes are not XML: cut them out before parsing
        end = blob.rfind(b"</AppendedData>")
        start = blob.index(b"_", m.end()) + 1
        appended_raw = blob[start:end]
        blob = blob[: m.end()] + blob[end:]
    where = f"VTI file '{path}'"
    try:
        root = ET.fromstring(blob)
    except ET.ParseError as exc:
        raise GPEngineError(f"{where} is not valid VTK XML ({exc}); re-export it from ParaView") from exc
    if root.tag != "VTKFile" or root.get("type") != "ImageData":
        raise GPEngineError(f"{where} is not a VTK ImageData file (type={root.get('type')!r})")
    header_dtype = np.dtype(np.uint64 if root.get("header_type", "UInt32") == "UInt64" else np.uint32)
    if root.get("byte_order", "LittleEndian") != "LittleEndian":
        header_dtype = header_dtype.newbyteorder(">")
    compressed = root.get("compressor") is not None
    if compressed and "ZLib" not in root.get("compressor", ""):
        raise GPEngineError(f"{where} uses compressor {root.get('compressor')}: only zlib is supported")
    image = root.find("ImageData")
    piece = image.find("Piece") if image is not None else None
    if image is None or piece is None:
        raise GPEngineError(f"{where} has no ImageData/Piece element (corrupt file)")
    try:
        ext = [int(v) for v in (piece.get("Extent") or image.get("WholeExtent")).split()]
    except (AttributeError, ValueError) as exc:
        raise GPEngineError(f"{where}: missing or bad Extent") from exc
    npts = tuple(ext[2 * k + 1] - ext[2 * k] + 1 for k in range(3))
    for kind, shape in (("CellData", tuple(max(n - 1, 1) for n in npts)), ("PointData", npts)):
        holder = piece.find(kind)
        arrays = holder.findall("DataArray") if holder is not None else []
        if arrays:
            break
    else:
        raise GPEngineError(f"{where} holds no point- or cell-data array")
    da = arrays[0]
    dtype = _NUMPY_TYPES.get(da.get("type", ""))
    if dtype is None:
        raise GPEngineError(f"{where}: unsupported DataArray type {da.get('type')!r}")
    if root.get("byte_order", "LittleEndian") != "LittleEndian":
        dtype = dtype.newbyteorder(">")
    if int(da.get("NumberOfComponents", "1")) != 1:
        raise GPEngineError(f"{where}: array '{da.get('Name')}' has several components; need a scalar array")
    count = int(np.prod(shape))
    fmt = da.get("format", "ascii")
    try:
        if fmt == "ascii":
            data = np.array((da.text or "").split(), dtype=dtype)
            if data.size != count:
                raise GPEngineError(f"{where}: expected {count} values, found {data.size} (corrupt file)")
        elif fmt == "binary":
            data = _decode_vtk_binary(da.text or "", dtype, count, header_dtype, compressed, where)
        elif fmt == "appended":
            app = root.find("AppendedData")
            offset = int(da.get("offset", "0"))
            if app is not None and app.get("encoding") == "base64":
                text = "".join((app.text or "").split()).lstrip("_")
                data = _decode_vtk_binary(text[offset:], dtype, count, header_dtype, compressed, where)
            else:
                hs = header_dtype.itemsize
                if compressed:
                    nblocks = int(np.frombuffer(appended_raw[offset : offset + hs], header_dtype)[0])
                    head = np.frombuffer(appended_raw[offset : offset + (3 + nblocks) * hs], header_dtype)
                    pos = offset + (3 + nblocks) * hs
                    parts = []
                    for size in head[3:].astype(np.int64):
                        parts.append(zlib.decompress(appended_raw[pos : pos + size]))
                        pos += size
                    data = np.frombuffer(b"".join(parts), dtype=dtype)
                else:
                    nbytes = int(np.frombuffer(appended_raw[offset : offset + hs], header_dtype)[0])
                    data = np.frombuffer(appended_raw[offset + hs : offset + hs + nbytes], dtype=dtype)
                if data.size != count:
                    raise GPEngineError(f"{where}: expected {count} values, found {data.size} (corrupt file)")
        else:
            raise GPEngineError(f"{where}: unknown DataArray format {fmt!r}")
    except GPEngineError:
        raise
    except Exception as exc:
        raise GPEngineError(f"{where}: cannot decode array '{da.get('Name')}' ({exc}); corrupt file") from exc
    return np.asarray(data, dtype=dtype.newbyteorder("=")).reshape(shape, order="F")


# ----------------------------------------------------------------------------------------- writers


#: errnos of posix_fallocate meaning "not supported here" (then zeros are written instead)
_FALLOCATE_UNSUPPORTED = {getattr(errno, k) for k in ("EOPNOTSUPP", "ENOTSUP", "EINVAL", "ENOSYS", "ENODEV")
                          if hasattr(errno, k)}
_ZERO_CHUNK = 1 << 24


def _preallocate(fh, offset: int, nbytes: int) -> None:
    """Reserve ``nbytes`` of disk from ``offset`` (posix_fallocate, else by writing zeros in chunks)."""
    fallocate = getattr(os, "posix_fallocate", None)
    if fallocate is not None:
        fh.flush()
        try:
            fallocate(fh.fileno(), offset, nbytes)
            return
        except OSError as exc:
            if exc.errno not in _FALLOCATE_UNSUPPORTED:
                raise
    fh.seek(offset)
    zeros = bytes(min(_ZERO_CHUNK, nbytes))
    left = nbytes
    while left > 0:
        n = min(left, len(zeros))
        fh.write(zeros if n == len(zeros) else zeros[:n])
        left -= n
    fh.flush()
    os.fsync(fh.fileno())  # a delayed-allocation file system reports a full disk here at the latest


def open_npy_memmap(path: str | os.PathLike, dtype, shape: tuple[int, ...]) -> np.memmap:
    """Create ``path`` as a ``.npy`` file of ``shape`` and ``dtype`` (C order, zeros) and return a
    writable ``np.memmap`` over its data, like ``np.lib.format.open_memmap(path, "w+", dtype, shape)``,
    but with every data byte allocated on disk before the mapping is made.

    A memmap over a sparse file (what ``open_memmap`` creates) fails on a full disk only when a page is
    written back, and then with SIGBUS, which kills the process. Here a full disk (ENOSPC, EDQUOT) or a
    too-large file (EFBIG) raises an ``OSError`` naming ``path`` at once, and the partly created file
    is removed, so callers (``atomic_write.atomic_path`` for outputs, the generate canvas) can clean up
    and report one line. Preallocation uses ``os.posix_fallocate``; where it is missing or the file
    system does not support it, zeros are written in 16 MiB chunks. An existing ``path`` is truncated.
    """
    path = Path(path)
    dtype = np.dtype(dtype)
    shape = tuple(int(s) for s in shape)
    if dtype.hasobject:
        raise GPEngineError(f"cannot memory-map an array of dtype {dtype} to '{path}'")
    if any(s < 0 for s in shape) or int(np.prod(shape, dtype=np.int64)) == 0:
        raise GPEngineError(f"cannot create an empty or negative-shape memmap {shape} at '{path}'")
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    try:
        with open(path, "wb") as fh:
            try:
                np.lib.format.write_array_header_1_0(fh, header)
            except ValueError:  # header over 64 KiB: format 2.0
                np.lib.format.write_array_header_2_0(fh, header)
            offset = fh.tell()
            _preallocate(fh, offset, nbytes)
        return np.memmap(path, dtype=dtype, mode="r+", offset=offset, shape=shape, order="C")
    except BaseException as exc:
        with contextlib.suppress(OSError):
            path.unlink()
        if isinstance(exc, OSError) and exc.filename is None:
            exc.filename = str(path)
        raise


def write_npy(path: str | os.PathLike, arr: np.ndarray) -> Path:
    """Write ``arr`` ([x, y, z]) as ``.npy``, atomically."""
    arr = _check_volume(arr)
    with atomic_open(path, "wb") as fh:
        np.save(fh, np.ascontiguousarray(arr), allow_pickle=False)
    return Path(path)


def write_npz(path: str | os.PathLike, arr: np.ndarray, name: str = "spins") -> Path:
    """Write ``arr`` ([x, y, z]) as a compressed ``.npz`` holding one array under ``name``, atomically."""
    arr = _check_volume(arr)
    with atomic_open(path, "wb") as fh:
        np.savez_compressed(fh, **{name: np.ascontiguousarray(arr)})
    return Path(path)


def _vti_array(arr: np.ndarray, name: str, binary: bool) -> bytes:
    """One <DataArray> element (x fastest) for :func:`write_vti`."""
    dtype = arr.dtype
    if dtype == np.bool_:
        arr, dtype = arr.astype(np.uint8), np.dtype(np.uint8)
    if dtype.newbyteorder("=") not in _VTK_TYPES:
        raise GPEngineError(f"cannot write dtype {dtype} to VTI: cast to an integer or float type first")
    if not re.fullmatch(r"[A-Za-z_][\w.-]*", name):
        raise GPEngineError(f"VTI array name {name!r} is not a plain identifier: use letters, digits, _")
    flat = np.asarray(arr.ravel(order="F"), dtype=dtype.newbyteorder("<"))
    vtk_type = _VTK_TYPES[dtype.newbyteorder("=")]
    rng = f'RangeMin="{flat.min()}" RangeMax="{flat.max()}"' if flat.size else ""
    if binary:
        payload = base64.b64encode(np.uint64(flat.nbytes).tobytes() + flat.tobytes())
        fmt = "binary"
    else:
        fmtstr = "%.9g" if dtype.kind == "f" else "%d"
        payload = "\n".join(" ".join(fmtstr % v for v in flat[i : i + 12]) for i in range(0, flat.size, 12)).encode()
        fmt = "ascii"
    head = f'        <DataArray type="{vtk_type}" Name="{name}" NumberOfComponents="1" format="{fmt}" {rng}>\n'
    return head.encode() + payload + b"\n        </DataArray>\n"


def write_vti(path: str | os.PathLike, arr: np.ndarray, name: str = "grain_id", *, cell_data: bool = True,
              binary: bool = True, spacing: float = 1.0, origin: tuple[float, float, float] = (0.0, 0.0, 0.0),
              extra: dict[str, np.ndarray] | None = None) -> Path:
    """Write ``arr`` ([x, y, z]) as VTK XML ImageData (ParaView), atomically.

    ``cell_data=True`` stores one cell per voxel (extent ``0 nx 0 ny 0 nz``; voxels render as cubes and
    the Threshold filter selects whole grains); ``False`` stores one point per voxel. Values are written
    x fastest; ``binary=True`` writes inline base64 with a UInt64 byte-count header, else ASCII.
    ``extra``: more arrays of the same shape in the same cell (or point) data, e.g. a CAD part's mask
    (``{"part_mask": mask}``: threshold it at 1 in ParaView to see the part only); ``name`` stays the
    active scalars.
    """
    arr = _check_volume(arr)
    arrays = [(name, arr)]
    for key, other in (extra or {}).items():
        other = _check_volume(other)
        if other.shape != arr.shape:
            raise GPEngineError(f"VTI array {key!r} has shape {other.shape}, the volume {arr.shape}")
        arrays.append((key, other))
    nx, ny, nz = arr.shape
    add = 1 if cell_data else 0
    extent = f"0 {nx - 1 + add} 0 {ny - 1 + add} 0 {nz - 1 + add}"
    kind = "CellData" if cell_data else "PointData"
    bodies = [_vti_array(a, n, binary) for n, a in arrays]  # validates every array before writing
    head = (
        '<?xml version="1.0"?>\n'
        '<VTKFile type="ImageData" version="1.0" byte_order="LittleEndian" header_type="UInt64">\n'
        f'  <ImageData WholeExtent="{extent}" Origin="{origin[0]:g} {origin[1]:g} {origin[2]:g}" '
        f'Spacing="{spacing:g} {spacing:g} {spacing:g}" Direction="1 0 0 0 1 0 0 0 1">\n'
        f'    <Piece Extent="{extent}">\n'
        f'      <{kind} Scalars="{name}">\n'
    ).encode()
    tail = (
        f"      </{kind}>\n"
        "    </Piece>\n"
        "  </ImageData>\n"
        "</VTKFile>\n"
    ).encode()

    with atomic_open(path, "wb") as fh:
        fh.write(head)
        for body in bodies:
            fh.write(body)
        fh.write(tail)
    return Path(path)


def write_spparks_dump(path: str | os.PathLike, arr: np.ndarray, timestep: int = 0) -> Path:
    """Write ``arr`` ([x, y, z] integer spins) as a one-snapshot SPPARKS text dump, atomically.

    Columns ``id i1 x y z``; ids 1-based in SPPARKS site order (x fastest); box bounds 0..n per axis
    (simple-cubic lattice, spacing 1).
    """
    arr = _check_volume(arr)
    if arr.dtype.kind not in "iub":
        if not np.all(arr == np.rint(arr)):
            raise GPEngineError("a SPPARKS dump stores integer spins: segment the field into grain ids first")
    nx, ny, nz = arr.shape
    n = arr.size
    ix, iy, iz = np.meshgrid(np.arange(nx), np.arange(ny), np.arange(nz), indexing="ij")
    table = np.stack(
        [np.arange(1, n + 1), arr.ravel(order="F").astype(np.int64),
         ix.ravel(order="F"), iy.ravel(order="F"), iz.ravel(order="F")], axis=1
    )
    head = (
        f"ITEM: TIMESTEP\n{timestep}\nITEM: NUMBER OF ATOMS\n{n}\n"
        f"ITEM: BOX BOUNDS pp pp pp\n0 {nx}\n0 {ny}\n0 {nz}\nITEM: ATOMS id i1 x y z\n"
    )

    with atomic_open(path, "wb") as fh:
        fh.write(head.encode())
        chunk = 1 << 17
        for s in range(0, n, chunk):
            rows = table[s : s + chunk]
            fh.write((("%d %d %d %d %d\n" * rows.shape[0]) % tuple(rows.ravel().tolist())).encode())
    return Path(path)


def write_volume(path: str | os.PathLike, arr: np.ndarray, name: str = "grain_id") -> Path:
    """Write by suffix: ``.npy``, ``.npz`` (one array under ``name``), ``.vti`` (array ``name``),
    ``.dump``/``.spparks``/``.txt`` (SPPARKS dump)."""
    suffix = Path(path).suffix.lower()
    if suffix == ".npy":
        return write_npy(path, arr)
    if suffix == ".npz":
        return write_npz(path, arr, name=name)
    if suffix == ".vti":
        return write_vti(path, arr, name=name)
    if suffix in DUMP_SUFFIXES:
        return write_spparks_dump(path, arr)
    raise GPEngineError(
        f"unknown output format '{suffix or Path(path).name}' for '{path}': use .npy, .npz, .vti, or "
        ".dump/.spparks/.txt (SPPARKS dump)"
    )


__all__ = [
    "read_volume", "read_npy", "read_npz", "read_vti", "read_spparks_dump",
    "write_volume", "write_npy", "write_npz", "write_vti", "write_spparks_dump",
]

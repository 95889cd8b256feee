"""Grain volumes -> the file formats of downstream tools: DREAM.3D, DAMASK, Abaqus.

Every writer takes

- ``grain_ids``: int array ``[x, y, z]``, ids ``1..n``, ``0`` = outside the part;
- ``orientations``: one row per grain id ``1..n`` (row ``i`` is grain ``i + 1``), either ``[n, 4]``
  quaternions (w, x, y, z) or ``[n, 3]`` Bunge Euler angles in radians
  (:func:`gp_engine.orientations.assign_orientations` gives both);
- ``phases``: ``[n]`` phase ids >= 1 (``None``: all 1), ``phase_names``: ``{id: name}`` (default
  ``phase_<id>``);
- ``voxel_size`` (a number or one per axis x, y, z) in ``units`` (``"m"``, ``"mm"``, ``"µm"``/``"um"``,
  ``"nm"``); every file states both.

Files are written atomically (:mod:`gp_engine.atomic_write`) and an existing file is never replaced
unless ``force=True`` (:class:`GPEngineError` otherwise). Large volumes are streamed in z-slabs of about
``chunk_voxels`` voxels. No torch here.

- :func:`write_dream3d`: ``.dream3d`` (HDF5, DREAM.3D file version 7.0, SIMPL / DREAM.3D 6.x layout).
- :func:`write_damask`: ``<name>.vti`` (DAMASK grid geometry, cell array ``material``) + ``material.yaml``.
- :func:`write_abaqus`: ``.inp`` voxel mesh, C3D8R, one element set + section + material per grain.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ..atomic_write import atomic_open, atomic_path
from ..errors import GPEngineError
from ..orientations import as_quats_and_euler

#: unit -> (ASCII name, metres per unit, SIMPL/DREAM.3D LengthUnit name)
LENGTH_UNITS = {
    "m": ("m", 1.0, "Meter"),
    "mm": ("mm", 1e-3, "Millimeter"),
    "µm": ("um", 1e-6, "Micrometer"),  # U+00B5 micro sign
    "μm": ("um", 1e-6, "Micrometer"),  # U+03BC Greek mu
    "um": ("um", 1e-6, "Micrometer"),
    "nm": ("nm", 1e-9, "Nanometer"),
}
FORMATS = ("dream3d", "damask", "abaqus")
DEFAULT_CHUNK_VOXELS = 1 << 22

#: DREAM.3D (EbsdLib) crystal structure enumeration, EbsdConstants.h
DREAM3D_CRYSTAL_STRUCTURES = {
    "hexagonal": 0, "cubic": 1, "hexagonal_low": 2, "cubic_low": 3, "triclinic": 4, "monoclinic": 5,
    "orthorhombic": 6, "tetragonal_low": 7, "tetragonal": 8, "trigonal_low": 9, "trigonal": 10,
}


def _version() -> str:
    try:
        from importlib.metadata import version
        return f"gp-engine {version('gp-engine')}"
    except Exception:  # not installed (source checkout)
        return "gp-engine"


# ----------------------------------------------------------------------------- shared checks


class _Inputs:
    """Validated inputs shared by the writers."""

    def __init__(self, grain_ids, orientations, phases, voxel_size, units, origin, phase_names):
        ids = np.asarray(grain_ids)
        if ids.ndim != 3 or 0 in ids.shape:
            raise GPEngineError(f"grain_ids must be a non-empty 3D array [x, y, z], got shape {list(ids.shape)}")
        if ids.dtype.kind not in "iu":
            raise GPEngineError(f"grain_ids must be integers (1..n, 0 = outside), got dtype {ids.dtype}")
        self.quats, self.euler = as_quats_and_euler(orientations)
        n = len(self.quats)
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0:
            raise GPEngineError(f"grain_ids has a negative id ({lo}); ids are 1..n, 0 = outside the part")
        if hi > n:
            raise GPEngineError(f"grain_ids has id {hi} but orientations has only {n} rows (one per grain id 1..n)")
        if hi > np.iinfo(np.int32).max:
            raise GPEngineError(f"grain id {hi} does not fit in int32")
        self.ids, self.n = ids, n
        if phases is None:
            ph = np.ones(n, dtype=np.int32)
        else:
            pa = np.asarray(phases)
            if pa.shape != (n,) or (n and (pa.dtype.kind not in "iu" or pa.min() < 1)):
                raise GPEngineError(f"phases must be {n} integer phase ids >= 1 (one per grain), "
                                    f"got shape {list(pa.shape)} dtype {pa.dtype}")
            ph = pa.astype(np.int32)
        self.phases = ph
        self.n_phases = int(ph.max()) if n else 1
        names = dict(phase_names or {})
        for k, v in names.items():
            if not isinstance(v, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.-]*", v):
                raise GPEngineError(f"phase_names[{k!r}] = {v!r}: use a plain name (letters, digits, _ . -)")
        self.phase_names = {p: names.get(p, names.get(str(p), f"phase_{p}")) for p in range(1, self.n_phases + 1)}
        if len(set(self.phase_names.values())) != len(self.phase_names):
            raise GPEngineError(f"phase_names must be distinct, got {self.phase_names}")
        vs = np.asarray(voxel_size, dtype=np.float64).reshape(-1)
        if vs.size == 1:
            vs = np.repeat(vs, 3)
        if vs.size != 3 or not np.all(np.isfinite(vs)) or np.any(vs <= 0):
            raise GPEngineError(f"voxel_size must be a positive number (or three, x y z), got {voxel_size!r}")
        self.spacing = vs
        if units not in LENGTH_UNITS:
            raise GPEngineError(f"units must be one of {sorted(set(LENGTH_UNITS) - {'μm'})}, got {units!r}")
        self.unit_ascii, self.metres_per_unit, self.simpl_unit = LENGTH_UNITS[units]
        org = np.asarray((0.0, 0.0, 0.0) if origin is None else origin, dtype=np.float64).reshape(-1)
        if org.size != 3 or not np.all(np.isfinite(org)):
            raise GPEngineError(f"origin must be three finite numbers (x y z), got {origin!r}")
        self.origin = org

    def slabs(self, chunk_voxels: int):
        nx, ny, nz = self.ids.shape
        step = max(1, int(chunk_voxels) // (nx * ny))
        for k0 in range(0, nz, step):
            yield k0, min(nz, k0 + step)


def _refuse_existing(paths, force: bool) -> None:
    for p in paths:
        p = Path(p)
        if p.is_dir():
            raise GPEngineError(f"{p} is a folder; give a file name")
        if (p.exists() or p.is_symlink()) and not force:
            raise GPEngineError(f"{p} already exists; add --force to replace it or choose another name")


def _fmt(v: float) -> str:
    return f"{v:.10g}"


# ----------------------------------------------------------------------------- DREAM.3D
#
# Layout of a DREAM.3D file version 7.0 (DREAM.3D 6.x / SIMPL), from
#   BlueQuartzSoftware/DREAM3D  Documentation/ReferenceManual/3_SupportedFileFormats/Native_DREAM3D_File_Format.md
#   BlueQuartzSoftware/SIMPL    Source/SIMPLib/DataContainers/DataContainer.cpp  (writeMeshToHDF5: the
#                               _SIMPL_GEOMETRY attributes GeometryType, GeometryTypeName, GeometryName,
#                               UnitDimensionality, SpatialDimensionality)
#                               Source/SIMPLib/Geometry/ImageGeom.cpp  (writeGeometryToHDF5: DIMENSIONS int64[3],
#                               ORIGIN float32[3], SPACING float32[3], all x, y, z)
#                               Source/SIMPLib/HDF5/H5DataArrayWriter.hpp  (dataset dims = reversed tuple dims +
#                               component dims, i.e. [z, y, x, c]; attributes DataArrayVersion=2, ObjectType,
#                               TupleDimensions (x, y, z), ComponentDimensions, "Tuple Axis Dimensions")
#                               Source/SIMPLib/Common/Constants.h  (names; FileVersion "7.0";
#                               IGeometry::Type::Image = 0; AttributeMatrix::Type Cell=3, CellFeature=7,
#                               CellEnsemble=11)
# Strings are fixed-length, null-terminated ASCII (QH5Lite::writeStringAttribute), as DAMASK's
# Result.export_DREAM3D also writes them. Feature 0 and ensemble 0 are DREAM.3D's reserved "no feature" /
# "unknown phase" entries; cells outside the part (id 0) get feature 0, phase 0, Euler angles 0.

_D3D_OBJECT_TYPES = {np.dtype(np.int32): "DataArray<int32_t>", np.dtype(np.float32): "DataArray<float>",
                     np.dtype(np.uint32): "DataArray<uint32_t>"}


def _h5_str(obj, name: str, text: str) -> None:
    import h5py

    tid = h5py.h5t.C_S1.copy()
    tid.set_size(len(text.encode("ascii")) + 1)
    tid.set_strpad(h5py.h5t.STR_NULLTERM)
    obj.attrs.create(name, np.array(text.encode("ascii"), dtype=f"S{len(text) + 1}"), dtype=h5py.Datatype(tid))


def _d3d_array_attrs(ds, tuple_dims, comp_dims, dtype) -> None:
    ds.attrs.create("DataArrayVersion", np.array([2], np.int32))
    _h5_str(ds, "ObjectType", _D3D_OBJECT_TYPES[np.dtype(dtype)] if dtype is not None else "StringDataArray")
    ds.attrs.create("TupleDimensions", np.asarray(tuple_dims, np.uint64))
    ds.attrs.create("ComponentDimensions", np.asarray(comp_dims, np.uint64))
    axes = ",".join(f"{a}={int(d)}" for a, d in zip("xyz", tuple_dims))
    _h5_str(ds, "Tuple Axis Dimensions", axes)


def _d3d_matrix(group, am_type: int, tuple_dims) -> None:
    group.attrs.create("AttributeMatrixType", np.array([am_type], np.uint32))
    group.attrs.create("TupleDimensions", np.asarray(tuple_dims, np.uint64))


def write_dream3d(path: str | os.PathLike, grain_ids, orientations, phases=None, voxel_size=1.0,
                  units: str = "µm", *, origin=None, phase_names: Mapping | None = None,
                  crystal_structures: Mapping | str = "cubic", data_container: str = "ImageDataContainer",
                  force: bool = False, chunk_voxels: int = DEFAULT_CHUNK_VOXELS) -> Path:
    """Write a DREAM.3D file (version 7.0) with an image geometry and the grain data.

    ``DataContainers/<data_container>/``:

    - ``_SIMPL_GEOMETRY``: ImageGeometry, ``DIMENSIONS`` (nx, ny, nz), ``SPACING`` = voxel size,
      ``ORIGIN``, all in ``units`` (named in the group's extra ``LengthUnit`` attribute, e.g. "Micrometer");
    - ``CellData`` (Cell, tuples x, y, z; datasets ``[z, y, x, c]``): ``FeatureIds`` int32 (= grain id),
      ``Phases`` int32, ``EulerAngles`` float32 Bunge radians;
    - ``CellFeatureData`` (CellFeature, n + 1 tuples, row 0 = no feature): ``Phases``, ``EulerAngles``;
    - ``CellEnsembleData`` (CellEnsemble, phases + 1 tuples): ``CrystalStructures`` (``crystal_structures``:
      one name for all phases or ``{phase id: name}``, names of :data:`DREAM3D_CRYSTAL_STRUCTURES`),
      ``PhaseTypes`` (0 = primary), ``PhaseName``.
    """
    try:
        import h5py
    except ImportError:
        raise GPEngineError("writing DREAM.3D files needs h5py: pip install h5py") from None

    inp = _Inputs(grain_ids, orientations, phases, voxel_size, units, origin, phase_names)
    path = Path(path)
    if path.suffix != ".dream3d":
        raise GPEngineError(f"a DREAM.3D file name ends in .dream3d, got '{path.name}'")
    if not re.fullmatch(r"[A-Za-z0-9_ -]+", data_container):
        raise GPEngineError(f"data_container {data_container!r}: use letters, digits, _ - and spaces")
    _refuse_existing([path], force)
    if isinstance(crystal_structures, str):
        crystal_structures = {p: crystal_structures for p in inp.phase_names}
    xtal = []
    for p in range(1, inp.n_phases + 1):
        name = str(crystal_structures.get(p, crystal_structures.get(str(p), "cubic"))).lower()
        if name not in DREAM3D_CRYSTAL_STRUCTURES:
            raise GPEngineError(f"crystal_structures[{p}] = {name!r}: use one of {sorted(DREAM3D_CRYSTAL_STRUCTURES)}")
        xtal.append(DREAM3D_CRYSTAL_STRUCTURES[name])

    nx, ny, nz = inp.ids.shape
    dims = (nx, ny, nz)
    # per-feature tables, row 0 = feature 0 (outside / no feature)
    feat_euler = np.zeros((inp.n + 1, 3), np.float32)
    feat_euler[1:] = inp.euler
    feat_phase = np.zeros(inp.n + 1, np.int32)
    feat_phase[1:] = inp.phases

    with atomic_path(path, suffix=".tmp.dream3d") as tmp:
        with h5py.File(tmp, "w") as f:
            _h5_str(f, "FileVersion", "7.0")
            _h5_str(f, "DREAM3D Version", _version())
            f.create_group("DataContainerBundles")
            pipe = f.create_group("Pipeline")
            _h5_str(pipe, "Current Pipeline", "Pipeline")
            pipe.attrs.create("Pipeline Version", np.array([2], np.int32))
            pipeline_json = json.dumps({"PipelineBuilder": {"Name": f"written by {_version()}",
                                                            "Number_Filters": 0, "Version": 6}})
            pipe.create_dataset("Pipeline", data=np.array(pipeline_json.encode("ascii")))

            dc = f.create_group("DataContainers").create_group(data_container)
            geom = dc.create_group("_SIMPL_GEOMETRY")
            geom.attrs.create("GeometryType", np.array([0], np.uint32))  # IGeometry::Type::Image
            _h5_str(geom, "GeometryTypeName", "ImageGeometry")
            _h5_str(geom, "GeometryName", "ImageGeometry")
            geom.attrs.create("UnitDimensionality", np.array([3], np.uint32))
            geom.attrs.create("SpatialDimensionality", np.array([3], np.uint32))
            _h5_str(geom, "LengthUnit", inp.simpl_unit)  # gp-engine's note: the unit of SPACING/ORIGIN
            geom.create_dataset("DIMENSIONS", data=np.array(dims, np.int64))
            geom.create_dataset("ORIGIN", data=inp.origin.astype(np.float32))
            geom.create_dataset("SPACING", data=inp.spacing.astype(np.float32))

            cell = dc.create_group("CellData")
            _d3d_matrix(cell, 3, dims)
            shape = (nz, ny, nx)
            fid = cell.create_dataset("FeatureIds", shape=shape + (1,), dtype=np.int32)
            cph = cell.create_dataset("Phases", shape=shape + (1,), dtype=np.int32)
            ceu = cell.create_dataset("EulerAngles", shape=shape + (3,), dtype=np.float32)
            for k0, k1 in inp.slabs(chunk_voxels):
                slab = np.ascontiguousarray(inp.ids[:, :, k0:k1].transpose(2, 1, 0)).astype(np.int32)  # [z, y, x]
                fid[k0:k1, :, :, 0] = slab
                cph[k0:k1, :, :, 0] = feat_phase[slab]
                ceu[k0:k1] = feat_euler[slab]
            _d3d_array_attrs(fid, dims, [1], np.int32)
            _d3d_array_attrs(cph, dims, [1], np.int32)
            _d3d_array_attrs(ceu, dims, [3], np.float32)

            feat = dc.create_group("CellFeatureData")
            _d3d_matrix(feat, 7, [inp.n + 1])
            ds = feat.create_dataset("Phases", data=feat_phase.reshape(-1, 1))
            _d3d_array_attrs(ds, [inp.n + 1], [1], np.int32)
            ds = feat.create_dataset("EulerAngles", data=feat_euler)
            _d3d_array_attrs(ds, [inp.n + 1], [3], np.float32)

            ens = dc.create_group("CellEnsembleData")
            m = inp.n_phases + 1
            _d3d_matrix(ens, 11, [m])
            ds = ens.create_dataset("CrystalStructures", data=np.array([999] + xtal, np.uint32).reshape(-1, 1))
            _d3d_array_attrs(ds, [m], [1], np.uint32)
            ds = ens.create_dataset("PhaseTypes", data=np.array([999] + [0] * inp.n_phases, np.uint32).reshape(-1, 1))
            _d3d_array_attrs(ds, [m], [1], np.uint32)
            names = ["Unknown Phase Type"] + [inp.phase_names[p] for p in range(1, m)]
            ds = ens.create_dataset("PhaseName", data=names, dtype=h5py.string_dtype("ascii"))
            _d3d_array_attrs(ds, [m], [1], None)
    return path


# ----------------------------------------------------------------------------- DAMASK
#
# DAMASK 3 grid geometry (damask.GeomGrid.save / load): VTK XML ImageData, one cell per voxel, cell array
# "material" = 0-based index into material.yaml's "material" list, x fastest; Origin and Spacing in metres
# (DAMASK is SI: GeomGrid.size = cells * spacing); field data "comments" (a string array GeomGrid keeps).
# material.yaml (damask.ConfigMaterial): "homogenization", "phase", "material" (a list, one entry per
# material index, each {"homogenization": name, "constituents": [{"phase": name, "v": 1.0,
# "O": [w, x, y, z]}]}); O is a unit quaternion in DAMASK's convention (P = -1, w >= 0), which is ours.


def _vtk_string_array(name: str, strings: list[str]) -> str:
    codes = " ".join(" ".join(str(b) for b in s.encode("ascii")) + " 0" for s in strings)
    return (f'      <DataArray type="String" Name="{name}" NumberOfTuples="{len(strings)}" format="ascii">\n'
            f"        {codes}\n      </DataArray>\n")


def write_damask(out_dir: str | os.PathLike, grain_ids, orientations, phases=None, voxel_size=1.0,
                 units: str = "µm", *, origin=None, phase_names: Mapping | None = None,
                 phase_config: Mapping | None = None, name: str = "geom", outside_phase: str = "outside",
                 force: bool = False, chunk_voxels: int = DEFAULT_CHUNK_VOXELS) -> tuple[Path, Path]:
    """Write ``out_dir/<name>.vti`` (DAMASK grid) and ``out_dir/material.yaml``; return both paths.

    Material ``i`` (0-based) is grain ``i + 1`` (its orientation and phase); when the volume has cells
    outside the part (id 0) they get one extra material ``n`` whose phase is ``outside_phase`` (define it,
    e.g. a very compliant "air" phase, before running DAMASK). ``phase_config``: ``{phase name: DAMASK
    phase definition}`` written into ``phase:``; a phase without one is written as ``null`` (DAMASK's own
    ``ConfigMaterial.load_DREAM3D`` template style) and must be defined before a simulation. Homogenization:
    ``direct`` (one constituent, ``mechanical: {type: pass}``).
    """
    inp = _Inputs(grain_ids, orientations, phases, voxel_size, units, origin, phase_names)
    out = Path(out_dir)
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise GPEngineError(f"DAMASK geometry name {name!r}: use letters, digits, _ . -")
    if not out.is_dir():
        raise GPEngineError(f"output folder '{out}' does not exist: create it first")
    vti, yml = out / f"{name}.vti", out / "material.yaml"
    _refuse_existing([vti, yml], force)
    has_outside = bool((inp.ids == 0).any())
    phase_cfg = dict(phase_config or {})
    all_names = list(inp.phase_names.values()) + ([outside_phase] if has_outside else [])
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.-]*", outside_phase):
        raise GPEngineError(f"outside_phase {outside_phase!r}: use a plain name (letters, digits, _ . -)")
    if has_outside and outside_phase in inp.phase_names.values():
        raise GPEngineError(f"outside_phase {outside_phase!r} is also a grain phase name; choose another")
    unknown = sorted(set(phase_cfg) - set(all_names))
    if unknown:
        raise GPEngineError(f"phase_config has phases {unknown} that no grain uses; phases are {all_names}")

    nx, ny, nz = inp.ids.shape
    spacing_m = inp.spacing * inp.metres_per_unit
    origin_m = inp.origin * inp.metres_per_unit
    n_mat = inp.n + (1 if has_outside else 0)
    comments = [
        f"{_version()}: material i = grain id i+1"
        + (f"; material {inp.n} = outside the part (grain id 0)" if has_outside else ""),
        f"voxel size {' '.join(_fmt(v) for v in inp.spacing)} {inp.unit_ascii}; Spacing, Origin and size in m",
    ]
    nbytes = nx * ny * nz * 4
    head = (
        '<?xml version="1.0"?>\n'
        '<VTKFile type="ImageData" version="1.0" byte_order="LittleEndian" header_type="UInt64">\n'
        f'  <ImageData WholeExtent="0 {nx} 0 {ny} 0 {nz}" '
        f'Origin="{" ".join(repr(float(v)) for v in origin_m)}" '
        f'Spacing="{" ".join(repr(float(v)) for v in spacing_m)}" Direction="1 0 0 0 1 0 0 0 1">\n'
        "    <FieldData>\n" + _vtk_string_array("comments", comments) + "    </FieldData>\n"
        f'    <Piece Extent="0 {nx} 0 {ny} 0 {nz}">\n'
        '      <CellData Scalars="material">\n'
        f'        <DataArray type="Int32" Name="material" format="appended" offset="0" '
        f'RangeMin="0" RangeMax="{max(n_mat - 1, 0)}"/>\n'
        "      </CellData>\n"
        "    </Piece>\n"
        "  </ImageData>\n"
        '  <AppendedData encoding="raw">\n   _'
    )
    with atomic_path(vti, suffix=".tmp.vti") as tmp_vti, atomic_open(yml, "w", suffix=".tmp.yaml",
                                                                      encoding="ascii", newline="\n") as fy:
        with open(tmp_vti, "wb") as fh:
            fh.write(head.encode("ascii"))
            fh.write(np.uint64(nbytes).tobytes())
            for k0, k1 in inp.slabs(chunk_voxels):
                slab = inp.ids[:, :, k0:k1].astype(np.int64) - 1  # grain id i -> material i-1
                if has_outside:
                    slab[slab < 0] = inp.n
                fh.write(slab.ravel(order="F").astype("<i4").tobytes())  # x fastest
            fh.write(b"\n  </AppendedData>\n</VTKFile>\n")

        fy.write(f"# DAMASK material configuration written by {_version()}\n")
        fy.write("# material i (0-based index in the .vti 'material' array) = grain id i+1; O = [w, x, y, z]\n")
        fy.write("# unit quaternion (DAMASK convention, P = -1) = Bunge Euler angles of the grain\n")
        fy.write(f"# geometry: {vti.name}, voxel size {' '.join(_fmt(v) for v in inp.spacing)} {inp.unit_ascii}\n")
        fy.write("homogenization:\n  direct:\n    N_constituents: 1\n    mechanical: {type: pass}\n")
        fy.write("phase:\n")
        for pname in all_names:
            if pname in phase_cfg:
                fy.write(f"  {pname}: {json.dumps(phase_cfg[pname])}\n")
            else:
                fy.write(f"  {pname}: null  # define lattice and mechanical properties here\n")
        fy.write("material:\n")
        q = inp.quats
        for i in range(inp.n):
            w, x, y, z = (repr(float(v)) for v in q[i])
            fy.write(f"  - homogenization: direct  # grain {i + 1}\n"
                     f"    constituents:\n"
                     f"      - {{phase: {inp.phase_names[int(inp.phases[i])]}, v: 1.0, O: [{w}, {x}, {y}, {z}]}}\n")
        if has_outside:
            fy.write(f"  - homogenization: direct  # outside the part (grain id 0)\n"
                     f"    constituents:\n"
                     f"      - {{phase: {outside_phase}, v: 1.0, O: [1.0, 0.0, 0.0, 0.0]}}\n")
    return vti, yml


# ----------------------------------------------------------------------------- Abaqus
#
# Flat Abaqus input (no *Part/*Assembly: the solver and Abaqus/CAE's "Import model" accept it): *Node,
# *Element type=C3D8R (node order 1-4 bottom face z-, counter-clockwise seen from +z, 5-8 top face, which
# gives a positive Jacobian), then per grain *Elset GRAIN_<id>, *Solid Section, *Material GRAIN_<id> with
# *Depvar and *User Material constants (phi1, Phi, phi2, phase): the orientation travels as UMAT material
# constants (Bunge Euler angles in degrees by default), not as an *Orientation, so a crystal-plasticity UMAT
# that reads its Euler angles from PROPS rotates once. Only nodes used by part voxels are written.
# No steps, loads or boundary conditions: add them (or *Include this file).


def _write_rows(fh, rows: np.ndarray, line_fmt: str, chunk: int = 65536) -> None:
    for s in range(0, len(rows), chunk):
        block = rows[s:s + chunk]
        fh.write((line_fmt * len(block)) % tuple(block.ravel().tolist()))


def write_abaqus(path: str | os.PathLike, grain_ids, orientations, phases=None, voxel_size=1.0,
                 units: str = "µm", *, origin=None, phase_names: Mapping | None = None,
                 angle_units: str = "degrees", depvar: int = 1, element_type: str = "C3D8R",
                 force: bool = False, chunk_voxels: int = 1 << 18) -> Path:
    """Write a voxel hexahedral mesh ``.inp``: one C3D8R element per part voxel (id > 0), shared nodes.

    Node coordinates = voxel corners × ``voxel_size`` + ``origin`` (in ``units``). Element ids run over the
    part voxels x fastest, then y, then z. Per grain with at least one voxel: ``*Elset, elset=GRAIN_<id>``,
    ``*Solid Section, elset=GRAIN_<id>, material=GRAIN_<id>``, ``*Material, name=GRAIN_<id>`` with
    ``*Depvar`` (``depvar`` state variables: set what your UMAT needs) and ``*User Material, constants=4``:
    phi1, Phi, phi2 (Bunge, ``angle_units``), phase id.
    """
    inp = _Inputs(grain_ids, orientations, phases, voxel_size, units, origin, phase_names)
    path = Path(path)
    if path.suffix.lower() != ".inp":
        raise GPEngineError(f"an Abaqus input file name ends in .inp, got '{path.name}'")
    if angle_units not in ("degrees", "radians"):
        raise GPEngineError(f"angle_units must be \"degrees\" or \"radians\", got {angle_units!r}")
    if isinstance(depvar, bool) or not isinstance(depvar, (int, np.integer)) or depvar < 1:
        raise GPEngineError(f"depvar must be an integer >= 1 (state variables of your UMAT), got {depvar!r}")
    if element_type not in ("C3D8R", "C3D8"):
        raise GPEngineError(f"element_type must be C3D8R or C3D8, got {element_type!r}")
    _refuse_existing([path], force)

    ids = inp.ids
    nx, ny, nz = ids.shape
    part = ids > 0
    n_elem = int(part.sum())
    if n_elem == 0:
        raise GPEngineError("the volume has no voxel inside the part (every grain id is 0): nothing to mesh")
    # nodes used by at least one part voxel; node ids 1.. in x-fastest order over the (nx+1, ny+1, nz+1) grid
    used = np.zeros((nx + 1, ny + 1, nz + 1), dtype=bool)
    for di in (0, 1):
        for dj in (0, 1):
            for dk in (0, 1):
                used[di:di + nx, dj:dj + ny, dk:dk + nz] |= part
    n_nodes = int(used.sum())
    idt = np.int32 if max(n_nodes, n_elem) < np.iinfo(np.int32).max else np.int64
    node_id = np.zeros(used.shape, dtype=idt, order="F")  # 0 = unused
    flat = node_id.reshape(-1, order="F")  # a view (Fortran-contiguous)
    used_f = used.reshape(-1, order="F")
    flat[used_f] = np.arange(1, n_nodes + 1, dtype=idt)
    del used_f

    angles = inp.euler if angle_units == "radians" else np.rad2deg(inp.euler)
    counts = np.bincount(ids[part].ravel(), minlength=inp.n + 1)  # voxels per grain id
    grains = np.flatnonzero(counts[1:]) + 1
    h = inp.spacing
    o = inp.origin

    with atomic_open(path, "w", suffix=".tmp.inp", encoding="ascii", newline="\n") as fh:
        fh.write("*Heading\n")
        fh.write(f"** Voxel mesh of a grain microstructure written by {_version()}\n")
        fh.write(f"** length unit: {inp.unit_ascii}; voxel size {' '.join(_fmt(v) for v in h)} {inp.unit_ascii}; "
                 f"origin {' '.join(_fmt(v) for v in o)} {inp.unit_ascii}\n")
        fh.write(f"** grid {nx} x {ny} x {nz} voxels; {n_elem} elements ({element_type}, one per voxel with "
                 f"grain id > 0); {n_nodes} nodes; {len(grains)} grains\n")
        fh.write(f"** orientation: *User Material constants 1-3 = Bunge Euler angles phi1, Phi, phi2 in "
                 f"{angle_units}, constant 4 = phase id\n")
        fh.write("** phases: " + ", ".join(f"{p} = {nm}" for p, nm in inp.phase_names.items()) + "\n")
        fh.write("** no steps, loads or boundary conditions: add them\n")

        fh.write("*Node\n")
        for k in range(nz + 1):
            jj, ii = np.nonzero(used[:, :, k].T)  # x fastest within the plane
            if not len(ii):
                continue
            rows = np.empty((len(ii), 4), dtype=np.float64)
            rows[:, 0] = node_id[ii, jj, k]
            rows[:, 1] = o[0] + ii * h[0]
            rows[:, 2] = o[1] + jj * h[1]
            rows[:, 3] = o[2] + k * h[2]
            _write_rows(fh, rows, "%d, %.10g, %.10g, %.10g\n")

        fh.write(f"*Element, type={element_type}\n")
        next_elem = 1
        for k0, k1 in inp.slabs(chunk_voxels):
            kk, jj, ii = np.nonzero(part[:, :, k0:k1].T)  # sorted by z, y, x: x fastest
            if not len(ii):
                continue
            kk = kk + k0
            rows = np.empty((len(ii), 9), dtype=np.int64)
            rows[:, 0] = np.arange(next_elem, next_elem + len(ii))
            corners = ((0, 0, 0), (1, 0, 0), (1, 1, 0), (0, 1, 0), (0, 0, 1), (1, 0, 1), (1, 1, 1), (0, 1, 1))
            for c, (di, dj, dk) in enumerate(corners):
                rows[:, 1 + c] = node_id[ii + di, jj + dj, kk + dk]
            _write_rows(fh, rows, "%d, %d, %d, %d, %d, %d, %d, %d, %d\n")
            next_elem += len(ii)
        del node_id, used, flat

        # element sets: element e (1-based) is the e-th part voxel in x-fastest order
        part_ids = ids.ravel(order="F")
        part_ids = part_ids[part_ids > 0]
        order = np.argsort(part_ids, kind="stable")
        starts = np.concatenate([[0], np.cumsum(counts[1:])])
        for g in grains:
            elems = order[starts[g - 1]:starts[g]] + 1
            fh.write(f"*Elset, elset=GRAIN_{g}\n")
            full = len(elems) // 16 * 16
            if full:
                _write_rows(fh, elems[:full].reshape(-1, 16), ", ".join(["%d"] * 16) + "\n")
            if len(elems) > full:
                fh.write(", ".join(str(int(e)) for e in elems[full:]) + "\n")
        del order, part_ids

        for g in grains:
            fh.write(f"*Solid Section, elset=GRAIN_{g}, material=GRAIN_{g}\n,\n")
        for g in grains:
            a = angles[g - 1]
            fh.write(f"*Material, name=GRAIN_{g}\n*Depvar\n{int(depvar)}\n*User Material, constants=4\n"
                     f"{a[0]:.10g}, {a[1]:.10g}, {a[2]:.10g}, {int(inp.phases[g - 1])}\n")
    return path


def write_format(fmt: str, target: str | os.PathLike, grain_ids, orientations, phases=None, **kw):
    """Dispatch on a format name of :data:`FORMATS` (``target``: file for dream3d/abaqus, folder for damask)."""
    writers = {"dream3d": write_dream3d, "damask": write_damask, "abaqus": write_abaqus}
    if fmt not in writers:
        raise GPEngineError(f"unknown output format {fmt!r}; choose from {list(FORMATS)}")
    return writers[fmt](target, grain_ids, orientations, phases, **kw)


__all__ = ["FORMATS", "LENGTH_UNITS", "DREAM3D_CRYSTAL_STRUCTURES", "write_dream3d", "write_damask",
           "write_abaqus", "write_format"]

"""DREAM.3D / DAMASK / Abaqus exports, read back with readers we did not write (h5py, damask, meshio)."""

import re

import numpy as np
import pytest

from gp_engine.errors import GPEngineError
from gp_engine.export.formats import write_abaqus, write_damask, write_dream3d
from gp_engine.orientations import assign_orientations, euler_to_quat

SHAPE = (7, 5, 4)  # all sides different: a transposed axis cannot pass
N = 6
H = 0.5  # voxel size, µm


@pytest.fixture(scope="module")
def volume():
    rng = np.random.default_rng(7)
    ids = rng.integers(1, N + 1, SHAPE).astype(np.int32)
    ids[0, 0, :] = 0  # outside the CAD part
    ids[6, 4, 3] = 0
    q, euler, _ = assign_orientations(N, seed=21)
    phases = np.array([1, 2, 1, 1, 2, 1], np.int32)
    return ids, q, euler, phases


def _same_rotation(a, b, atol=1e-6):
    a, b = np.atleast_2d(a), np.atleast_2d(b)
    return np.all(np.abs(np.abs(np.sum(a * b, axis=1)) - 1.0) < atol)


def _attr(obj, name):
    v = obj.attrs[name]
    return v.decode() if isinstance(v, bytes) else v


def _no_temp_files(d):
    return not [p for p in d.iterdir() if p.name.startswith(".")]


# ----------------------------------------------------------------------------- DREAM.3D


def test_dream3d_layout_and_values(volume, tmp_path):
    h5py = pytest.importorskip("h5py")
    ids, q, euler, phases = volume
    path = write_dream3d(tmp_path / "g.dream3d", ids, q, phases, voxel_size=H, units="µm",
                         phase_names={1: "ferrite", 2: "austenite"}, crystal_structures="cubic", chunk_voxels=40)
    assert _no_temp_files(tmp_path)
    nx, ny, nz = SHAPE
    # layout of DREAM.3D file version 7.0 as documented in BlueQuartzSoftware/DREAM3D
    # Documentation/ReferenceManual/3_SupportedFileFormats/Native_DREAM3D_File_Format.md and written by SIMPL's
    # DataContainer::writeMeshToHDF5, ImageGeom::writeGeometryToHDF5, H5DataArrayWriter (see formats.py)
    with h5py.File(path, "r") as f:
        assert _attr(f, "FileVersion") == "7.0"
        assert {"DataContainerBundles", "DataContainers", "Pipeline"} <= set(f)
        dc = f["DataContainers/ImageDataContainer"]
        geom = dc["_SIMPL_GEOMETRY"]
        assert _attr(geom, "GeometryTypeName") == "ImageGeometry" and int(geom.attrs["GeometryType"][0]) == 0
        assert int(geom.attrs["SpatialDimensionality"][0]) == 3 and int(geom.attrs["UnitDimensionality"][0]) == 3
        assert _attr(geom, "LengthUnit") == "Micrometer"
        assert geom["DIMENSIONS"].dtype == np.int64 and list(geom["DIMENSIONS"][()]) == [nx, ny, nz]
        assert geom["SPACING"].dtype == np.float32 and np.allclose(geom["SPACING"][()], H)
        assert np.allclose(geom["ORIGIN"][()], 0)

        cell = dc["CellData"]
        assert int(cell.attrs["AttributeMatrixType"][0]) == 3
        assert list(cell.attrs["TupleDimensions"]) == [nx, ny, nz]
        for name, comps, otype in (("FeatureIds", 1, "DataArray<int32_t>"), ("Phases", 1, "DataArray<int32_t>"),
                                   ("EulerAngles", 3, "DataArray<float>")):
            ds = cell[name]
            assert ds.shape == (nz, ny, nx, comps), name  # [z, y, x, components]
            assert _attr(ds, "ObjectType") == otype
            assert int(ds.attrs["DataArrayVersion"][0]) == 2
            assert list(ds.attrs["ComponentDimensions"]) == [comps]
            assert list(ds.attrs["TupleDimensions"]) == [nx, ny, nz]
            assert _attr(ds, "Tuple Axis Dimensions") == f"x={nx},y={ny},z={nz}"
        fid = cell["FeatureIds"][()][..., 0]
        assert np.array_equal(fid, ids.transpose(2, 1, 0))  # FeatureIds[z, y, x] == ids[x, y, z]
        cell_euler = cell["EulerAngles"][()]
        cell_phase = cell["Phases"][()][..., 0]
        for x, y, z in np.ndindex(*SHAPE):
            g = ids[x, y, z]
            want = euler[g - 1] if g else np.zeros(3)
            assert np.allclose(cell_euler[z, y, x], want, atol=1e-6)
            assert cell_phase[z, y, x] == (phases[g - 1] if g else 0)
        assert cell_euler.dtype == np.float32

        feat = dc["CellFeatureData"]
        assert int(feat.attrs["AttributeMatrixType"][0]) == 7 and list(feat.attrs["TupleDimensions"]) == [N + 1]
        assert np.allclose(feat["EulerAngles"][1:], euler, atol=1e-6) and np.all(feat["EulerAngles"][0] == 0)
        assert np.array_equal(feat["Phases"][1:, 0], phases) and feat["Phases"][0, 0] == 0
        ens = dc["CellEnsembleData"]
        assert int(ens.attrs["AttributeMatrixType"][0]) == 11 and list(ens.attrs["TupleDimensions"]) == [3]
        assert list(ens["CrystalStructures"][:, 0]) == [999, 1, 1]  # 1 = Cubic_High (EbsdLib)
        assert [s.decode() for s in ens["PhaseName"][()]] == ["Unknown Phase Type", "ferrite", "austenite"]


def test_dream3d_read_by_damask(volume, tmp_path):
    pytest.importorskip("h5py")
    damask = pytest.importorskip("damask")
    ids, q, euler, phases = volume
    path = write_dream3d(tmp_path / "g.dream3d", ids, euler, phases, voxel_size=H)
    grid = damask.GeomGrid.load_DREAM3D(str(path), feature_IDs="FeatureIds")
    assert np.array_equal(grid.material, ids)  # DAMASK reads [z, y, x] back into [x, y, z]
    assert np.allclose(grid.size, np.array(SHAPE) * H)
    cfg = damask.ConfigMaterial.load_DREAM3D(str(path), grain_data="CellFeatureData")
    O = np.array([m["constituents"][0]["O"] for m in cfg["material"]])
    assert len(O) == N + 1 and _same_rotation(O[1:], q)
    # cell-wise reading (no feature ids): one material per distinct (orientation, phase), same partition
    grid_c = damask.GeomGrid.load_DREAM3D(str(path))
    inside = ids > 0
    pairs = set(zip(ids[inside].tolist(), grid_c.material[inside].tolist()))
    assert len(pairs) == len(np.unique(ids[inside]))


def test_dream3d_refuses_to_overwrite(volume, tmp_path):
    pytest.importorskip("h5py")
    ids, q, _, _ = volume
    path = tmp_path / "g.dream3d"
    path.write_bytes(b"keep me")
    with pytest.raises(GPEngineError, match="already exists"):
        write_dream3d(path, ids, q)
    assert path.read_bytes() == b"keep me"
    write_dream3d(path, ids, q, force=True)
    assert path.read_bytes()[:8] == b"\x89HDF\r\n\x1a\n"
    assert _no_temp_files(tmp_path)


# ----------------------------------------------------------------------------- DAMASK


def test_damask_grid_and_material_read_by_damask(volume, tmp_path):
    damask = pytest.importorskip("damask")
    ids, q, euler, phases = volume
    phase_cfg = {"ferrite": {"lattice": "cI"}, "austenite": {"lattice": "cF"}, "outside": {"lattice": "cF"}}
    vti, yml = write_damask(tmp_path, ids, euler, phases, voxel_size=H, units="µm",
                            phase_names={1: "ferrite", 2: "austenite"}, phase_config=phase_cfg, chunk_voxels=40)
    assert (vti.name, yml.name) == ("geom.vti", "material.yaml") and _no_temp_files(tmp_path)
    grid = damask.GeomGrid.load(vti)
    want = ids.astype(np.int64) - 1
    want[ids == 0] = N  # the extra "outside" material
    assert np.array_equal(grid.cells, SHAPE)
    assert np.array_equal(grid.material, want)
    assert np.allclose(grid.size, np.array(SHAPE) * H * 1e-6)  # metres
    assert np.allclose(grid.origin, 0)
    assert any("0.5 0.5 0.5 um" in c for c in grid.comments)

    cfg = damask.ConfigMaterial.load(yml)
    assert cfg.is_complete
    mats = cfg["material"]
    assert len(mats) == N + 1
    O = np.array([m["constituents"][0]["O"] for m in mats])
    assert np.allclose(O[:N], euler_to_quat(euler), atol=1e-12)
    assert _same_rotation(damask.Rotation(O[:N]).as_quaternion(), damask.Rotation.from_Euler_angles(euler).as_quaternion())
    names = {1: "ferrite", 2: "austenite"}
    assert [m["constituents"][0]["phase"] for m in mats[:N]] == [names[p] for p in phases]
    assert mats[N]["constituents"][0]["phase"] == "outside"
    assert all(m["homogenization"] == "direct" and m["constituents"][0]["v"] == 1.0 for m in mats)
    assert cfg["homogenization"]["direct"]["N_constituents"] == 1
    assert cfg["phase"]["ferrite"] == {"lattice": "cI"}


def test_damask_without_outside_cells_and_overwrite(volume, tmp_path):
    ids, q, _, _ = volume
    full = np.where(ids == 0, 1, ids)
    vti, yml = write_damask(tmp_path, full, q, units="mm", voxel_size=2.0)
    text = yml.read_text()
    assert "outside" not in text and text.count("homogenization: direct") == N
    assert 'Spacing="0.002 0.002 0.002"' in vti.read_text(errors="replace")  # 2 mm in metres
    from gp_engine.volume_io import read_vti  # gp-engine's own reader, for when damask is absent
    assert np.array_equal(read_vti(vti), full - 1)
    before = vti.read_bytes()
    with pytest.raises(GPEngineError, match="already exists"):
        write_damask(tmp_path, ids, q)
    assert vti.read_bytes() == before and _no_temp_files(tmp_path)
    write_damask(tmp_path, ids, q, force=True)
    assert "outside" in yml.read_text()


# ----------------------------------------------------------------------------- Abaqus


def test_abaqus_mesh_read_by_meshio(volume, tmp_path):
    meshio = pytest.importorskip("meshio")
    ids, q, euler, phases = volume
    h = (0.5, 0.25, 2.0)
    origin = (1.0, -2.0, 3.0)
    path = write_abaqus(tmp_path / "m.inp", ids, q, phases, voxel_size=h, origin=origin, chunk_voxels=40)
    mesh = meshio.read(path)
    inside = ids > 0
    assert [b.type for b in mesh.cells] == ["hexahedron"]
    hexes = mesh.cells[0].data
    assert len(hexes) == inside.sum()
    # nodes: the corners of the part voxels only, shared between neighbours
    used = np.zeros(np.array(SHAPE) + 1, bool)
    for d in np.ndindex(2, 2, 2):
        used[d[0]:d[0] + SHAPE[0], d[1]:d[1] + SHAPE[1], d[2]:d[2] + SHAPE[2]] |= inside
    assert len(mesh.points) == used.sum()
    # every element is its voxel's 8 corners x voxel size + origin, in C3D8 order (positive volume)
    corner = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 0, 1], [1, 0, 1], [1, 1, 1], [0, 1, 1]])
    vox = np.argwhere(inside.transpose(2, 1, 0))[:, ::-1]  # element order: x fastest, then y, then z
    pts = mesh.points[hexes]  # [elements, 8, 3]
    assert np.allclose(pts, (vox[:, None, :] + corner[None]) * h + origin)
    e1, e2, e3 = pts[:, 1] - pts[:, 0], pts[:, 3] - pts[:, 0], pts[:, 4] - pts[:, 0]
    assert np.all(np.einsum("ij,ij->i", np.cross(e1, e2), e3) > 0)
    # one element set per grain, exactly that grain's voxels
    grain_of_elem = ids[vox[:, 0], vox[:, 1], vox[:, 2]]
    sets = {k: np.concatenate(v) for k, v in mesh.cell_sets.items()}
    assert set(sets) == {f"GRAIN_{g}" for g in np.unique(ids[inside])}
    for g in np.unique(ids[inside]):
        members = np.sort(sets[f"GRAIN_{g}"])
        assert np.array_equal(members, np.flatnonzero(grain_of_elem == g)), g
    # sections, materials and the orientation constants (degrees)
    text = path.read_text()
    assert "length unit: um" in text and "voxel size 0.5 0.25 2 um" in text
    for g in range(1, N + 1):
        assert f"*Solid Section, elset=GRAIN_{g}, material=GRAIN_{g}\n" in text
        m = re.search(rf"\*Material, name=GRAIN_{g}\n\*Depvar\n1\n\*User Material, constants=4\n(.*)\n", text)
        vals = [float(v) for v in m.group(1).split(",")]
        assert np.allclose(vals[:3], np.rad2deg(euler[g - 1]), atol=1e-6) and vals[3] == phases[g - 1]


def test_abaqus_chunking_does_not_change_the_file(volume, tmp_path):
    ids, q, _, _ = volume
    a = write_abaqus(tmp_path / "a.inp", ids, q, chunk_voxels=1)
    b = write_abaqus(tmp_path / "b.inp", ids, q, chunk_voxels=10**6)
    assert a.read_bytes() == b.read_bytes()
    assert max(len(line) for line in a.read_text().splitlines()) <= 256  # Abaqus input line limit
    with pytest.raises(GPEngineError, match="already exists"):
        write_abaqus(a, ids, q)
    with pytest.raises(GPEngineError, match="no voxel inside"):
        write_abaqus(tmp_path / "c.inp", np.zeros((2, 2, 2), np.int32), q)


@pytest.mark.parametrize("kw, msg", [
    ({"voxel_size": 0}, "voxel_size"), ({"voxel_size": (1, 2)}, "voxel_size"), ({"units": "inch"}, "units"),
    ({"phases": np.zeros(N, np.int32)}, "phases"), ({"origin": (0, 0)}, "origin"),
])
def test_bad_export_arguments(volume, tmp_path, kw, msg):
    ids, q, _, _ = volume
    with pytest.raises(GPEngineError, match=msg):
        write_abaqus(tmp_path / "x.inp", ids, q, **kw)


def test_ids_beyond_orientations_are_refused(volume, tmp_path):
    ids, q, _, _ = volume
    with pytest.raises(GPEngineError, match="only 5 rows"):
        write_damask(tmp_path, ids, q[:5])
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------------------ wired into plan.json and generate


def test_generate_writes_the_oriented_exports_a_plan_asks_for(tmp_path):
    import csv
    import json

    from test_runtime import make_model_dir

    from gp_engine.generate import generate

    model = make_model_dir(tmp_path / "model")
    out = tmp_path / "out"
    texture = {"orientations": [[0, 0, 0], [45, 30, 10]], "units": "degrees", "weights": [3, 1]}
    plan = {"version": 1, "geometry": {"shape": [40, 36, 32]}, "model": str(model),
            "sampler": {"preset": "fast", "steps": 3, "resample": 1, "jump": 1, "no_resample_tail": 1},
            "backend": "onnxruntime", "seed": 4, "segmentation": {"method": "levels"},
            "orientations": {"seed": 9, "texture": texture},
            "outputs": {"dir": str(out), "formats": ["npy", "dream3d", "abaqus", "damask"],
                        "voxel_size": 0.5, "units": "µm"}}
    generate(plan, progress=False)
    ids = np.load(out / "grains.npy")
    n = int(ids.max())
    quats, euler, phases = assign_orientations(n, 9, texture)
    with open(out / "orientations.csv") as fh:
        rows = list(csv.DictReader(line for line in fh if not line.startswith("#")))
    assert len(rows) == n
    np.testing.assert_allclose([[float(r[k]) for k in ("qw", "qx", "qy", "qz")] for r in rows], quats, atol=1e-8)
    h5py = pytest.importorskip("h5py")
    with h5py.File(out / "grains.dream3d", "r") as f:
        cell = f["DataContainers/ImageDataContainer/CellData"]
        np.testing.assert_array_equal(cell["FeatureIds"][..., 0], ids.transpose(2, 1, 0))
        spacing = f["DataContainers/ImageDataContainer/_SIMPL_GEOMETRY/SPACING"][()]
        np.testing.assert_allclose(spacing, [0.5, 0.5, 0.5])
    meshio = pytest.importorskip("meshio")
    mesh = meshio.read(out / "grains.inp")
    assert sum(len(c.data) for c in mesh.cells if c.type == "hexahedron") == ids.size
    assert np.isclose(mesh.points.max(axis=0), np.array(ids.shape) * 0.5).all()
    assert (out / "damask_geom.vti").is_file() and (out / "material.yaml").is_file()
    # the plan is recorded with its voxel size and orientation spec; a bad texture is refused up front
    from gp_engine.plan_config import load_plan

    bad = dict(plan, orientations={"texture": dict(texture, units="gradians")})
    with pytest.raises(GPEngineError, match="orientations"):
        load_plan(bad)
    assert json.loads(json.dumps(load_plan(plan).to_dict()))["outputs"]["voxel_size"] == 0.5

"""CAD parts: voxelization against trimesh's own volume and inside test, repairs, refusals, the blocks a
part needs, and a generated part whose outputs and statistics respect its mask."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import trimesh

from gp_engine.errors import GPEngineError
from gp_engine.geometry import load_part, surface_voxels, voxelize

PARTS = Path(__file__).resolve().parents[1] / "examples" / "parts"


def save(mesh: trimesh.Trimesh, path: Path) -> Path:
    mesh.export(path)
    return path


def ring(tmp_path) -> Path:
    """A gear-like annulus (hole in the middle), tilted so no face is axis-aligned."""
    m = trimesh.creation.annulus(r_min=0.4, r_max=1.0, height=0.5, sections=48)
    m.apply_transform(trimesh.transformations.euler_matrix(0.3, 0.2, 0.1))
    return save(m, tmp_path / "ring.stl")


@pytest.mark.parametrize("name,size", [("sphere", 48), ("ring", 80), ("box", 40), ("dog_bone", 256),
                                       ("gear", 160)])
def test_voxelized_volume_within_2_percent_of_the_mesh(tmp_path, name, size):
    if name == "sphere":
        path = save(trimesh.creation.icosphere(subdivisions=4, radius=1.0), tmp_path / "s.stl")
    elif name == "ring":
        path = ring(tmp_path)
    elif name == "box":
        m = trimesh.creation.box(extents=(1.0, 0.7, 0.45))
        m.apply_transform(trimesh.transformations.rotation_matrix(0.5, (0, 0, 1)))
        path = save(m, tmp_path / "b.stl")
    else:
        path = PARTS / f"{name}.stl"
    part = load_part(path, size=size)
    mask = voxelize(part)
    ratio = mask.sum() * part.pitch ** 3 / trimesh.load(path).volume
    assert abs(ratio - 1) < 0.02, ratio
    assert max(part.shape) == size


def test_mask_agrees_with_trimesh_inside_test(tmp_path):
    """Voxel centres off the surface (farther than a voxel) are inside exactly when trimesh says so."""
    path = ring(tmp_path)
    part = load_part(path, size=40)
    mask = voxelize(part)
    mesh = trimesh.load(path)
    rng = np.random.default_rng(0)
    idx = np.stack([rng.integers(0, n, 3000) for n in part.shape], axis=1)
    centres = np.asarray(part.origin) + (idx + 0.5) * part.pitch
    far = np.abs(trimesh.proximity.signed_distance(mesh, centres)) > part.pitch
    inside = mesh.contains(centres[far])
    np.testing.assert_array_equal(mask[tuple(idx[far].T)], inside)
    assert inside.any() and (~inside).any()


def test_inverted_and_inconsistent_normals_give_the_same_mask(tmp_path):
    path = ring(tmp_path)
    want = voxelize(load_part(path, size=40))
    inv = trimesh.load(path)
    inv.invert()
    got = voxelize(load_part(save(inv, tmp_path / "inv.stl"), size=40))
    np.testing.assert_array_equal(got, want)
    mixed = trimesh.load(path)
    faces = mixed.faces.copy()
    faces[::3] = faces[::3, ::-1]        # every third triangle flipped
    mixed = trimesh.Trimesh(mixed.vertices, faces, process=False)
    part = load_part(save(mixed, tmp_path / "mixed.stl"), size=40)
    np.testing.assert_array_equal(voxelize(part), want)
    assert any("normals" in r for r in part.repairs)


def test_duplicate_faces_and_a_small_hole_are_repaired_and_reported(tmp_path):
    path = ring(tmp_path)
    want = voxelize(load_part(path, size=40))
    m = trimesh.load(path)
    dup = trimesh.Trimesh(m.vertices, np.vstack([m.faces, m.faces[:50]]), process=False)
    part = load_part(save(dup, tmp_path / "dup.stl"), size=40)
    np.testing.assert_array_equal(voxelize(part), want)
    assert any("duplicate faces" in r for r in part.repairs)
    sphere = trimesh.creation.icosphere(subdivisions=3)
    holed = trimesh.Trimesh(sphere.vertices, sphere.faces[1:], process=False)   # one triangle missing
    part = load_part(save(holed, tmp_path / "holed.stl"), size=32)
    ref = voxelize(load_part(save(sphere, tmp_path / "whole.stl"), size=32))
    assert "filled small holes" in part.repairs
    assert np.mean(voxelize(part) != ref) < 1e-3


def test_broken_meshes_are_refused_with_one_line_saying_what_is_wrong(tmp_path):
    sphere = trimesh.creation.icosphere(subdivisions=3)
    keep = sphere.triangles_center[:, 2] < 0.2
    open_mesh = trimesh.Trimesh(sphere.vertices, sphere.faces[keep], process=False)  # a bowl
    cases = {
        "not a closed surface": save(open_mesh, tmp_path / "bowl.stl"),
        "does not exist": tmp_path / "missing.stl",
    }
    (tmp_path / "empty.stl").write_text("solid empty\nendsolid empty\n")
    (tmp_path / "junk.stl").write_bytes(b"\x00garbage" * 7)
    square = trimesh.Trimesh([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]],
                             [[0, 1, 2], [0, 2, 3], [0, 2, 1], [0, 3, 2]], process=False)  # two-sided
    line = trimesh.Trimesh([[0, 0, 0], [1, 0, 0], [2, 0, 0]], [[0, 1, 2]], process=False)
    for pattern, path in cases.items():
        with pytest.raises(GPEngineError, match=pattern):
            load_part(path, size=32)
    with pytest.raises(GPEngineError, match="no triangles|cannot be read"):
        load_part(tmp_path / "empty.stl", size=32)
    with pytest.raises(GPEngineError, match="no triangles|cannot be read"):
        load_part(tmp_path / "junk.stl", size=32)
    with pytest.raises(GPEngineError, match="flat|not a closed|degenerate"):
        load_part(save(square, tmp_path / "square.stl"), size=32)
    with pytest.raises(GPEngineError, match="degenerate|no triangles"):
        load_part(save(line, tmp_path / "line.stl"), size=32)
    with pytest.raises(GPEngineError, match="no voxel centre lies inside"):
        voxelize(load_part(save(trimesh.creation.box(extents=(1, 1, 0.01)), tmp_path / "thin.stl"), pitch=0.5))


def test_rotation_and_placement(tmp_path):
    path = save(trimesh.creation.box(extents=(2.0, 1.0, 0.5)), tmp_path / "b.stl")
    assert load_part(path, pitch=0.1).shape == (20, 10, 5)
    assert load_part(path, pitch=0.1, rotation=(0, 0, 90)).shape == (10, 20, 5)
    placed = load_part(path, pitch=0.1, shape=(30, 20, 15), offset=(10, 0, 5))
    m = voxelize(placed)
    assert m[10:30, 0:10, 5:10].all() and m.sum() == 20 * 10 * 5
    with pytest.raises(GPEngineError, match="does not fit"):
        load_part(path, pitch=0.1, shape=(30, 20, 15), offset=(11, 0, 5))


def test_block_skipping_never_leaves_a_part_voxel_ungenerated(tmp_path):
    from gp_engine.planner import BLOCK, canvas_shape, grid_plan, restrict_to_mask, validate_blocks

    part = load_part(ring(tmp_path), size=150)
    mask = voxelize(part)
    full = grid_plan(part.shape)
    kept = restrict_to_mask(full, mask)
    validate_blocks(kept)
    assert len(kept) < len(full)
    covered = np.zeros(canvas_shape(part.shape), bool)
    for b in kept:
        covered[tuple(slice(c, c + BLOCK) for c in b.corner)] = True
    assert covered[:mask.shape[0], :mask.shape[1], :mask.shape[2]][mask].all()
    # context: every earlier block of the full plan that overlaps a kept part block is kept too
    corners = {b.corner for b in kept}
    for b in full:
        region = mask[tuple(slice(c, c + BLOCK) for c in b.corner)]
        if region.any():
            for d in b.deps:
                if all(abs(p - q) < BLOCK for p, q in zip(full[d].corner, b.corner)):
                    assert full[d].corner in corners


def test_generated_part_respects_its_mask_everywhere(tmp_path):
    from test_runtime import make_model_dir

    from gp_engine.generate import generate
    from gp_engine.grains import split_grains

    model = make_model_dir(tmp_path / "model")
    stl = ring(tmp_path)
    out = tmp_path / "out"
    plan = {"version": 1, "geometry": {"stl": str(stl), "size": 56}, "model": str(model),
            "sampler": {"preset": "fast", "steps": 3, "resample": 1, "jump": 1, "no_resample_tail": 1},
            "batch_size": 4, "backend": "onnxruntime", "seed": 1, "segmentation": {"method": "levels"},
            "outputs": {"dir": str(out), "formats": ["npy", "vti", "spparks", "png"]}}
    res = generate(plan, progress=False)
    mask = voxelize(load_part(stl, size=56))
    ids = np.load(out / "grains.npy")
    assert ids.shape == mask.shape
    assert (ids[~mask] == 0).all() and (ids[mask] > 0).all()
    np.testing.assert_array_equal(split_grains(ids, mask=mask), ids)   # grains are connected in the part
    # the part sits in a canvas painted with a margin (default 2 voxels beyond the part's box): every part
    # voxel and every voxel within the margin of one is generated
    from scipy import ndimage

    m = json.loads((out / "stats.json").read_text())["painted"]["margin"]
    assert m == 2
    known = np.load(out / "canvas" / "known.npy").astype(bool)
    placed = np.zeros(known.shape, bool)
    placed[m:m + mask.shape[0], m:m + mask.shape[1], m:m + mask.shape[2]] = mask
    assert known[placed].all()
    assert known[ndimage.binary_dilation(placed, np.ones((3, 3, 3), bool), iterations=m)].all()
    from gp_engine.volume_io import read_spparks_dump, read_vti

    np.testing.assert_array_equal(read_vti(out / "grains.vti"), ids)
    np.testing.assert_array_equal(read_spparks_dump(out / "grains.dump"), ids)
    text = (out / "grains.vti").read_text()
    assert 'Name="part_mask"' in text
    s = json.loads((out / "stats.json").read_text())
    summary = s["summary"]
    n_cut = summary["cut_by_surface"]["grains"]
    assert summary["grains"] + n_cut == len(np.unique(ids[ids > 0]))
    cut_ids = np.unique(ids[surface_voxels(mask)])
    assert n_cut == len(cut_ids[cut_ids > 0])
    assert s["part"]["blocks"] <= s["part"]["blocks_full_box"] and s["part"]["voxels_inside"] == mask.sum()
    assert res["stats"]["part"]["fill"] == pytest.approx(mask.mean())


def test_vti_part_mask_opens_in_vtk(tmp_path):
    vtk = pytest.importorskip("vtkmodules.vtkIOXML")
    from vtkmodules.util.numpy_support import vtk_to_numpy

    from gp_engine.volume_io import write_vti

    rng = np.random.default_rng(0)
    ids = rng.integers(0, 9, (7, 6, 5)).astype(np.int32)
    mask = ids > 2
    write_vti(tmp_path / "a.vti", ids, extra={"part_mask": mask.astype(np.uint8)})
    r = vtk.vtkXMLImageDataReader()
    r.SetFileName(str(tmp_path / "a.vti"))
    r.Update()
    cd = r.GetOutput().GetCellData()
    got_ids = vtk_to_numpy(cd.GetArray("grain_id")).reshape(ids.shape[::-1]).transpose(2, 1, 0)
    got_mask = vtk_to_numpy(cd.GetArray("part_mask")).reshape(ids.shape[::-1]).transpose(2, 1, 0)
    np.testing.assert_array_equal(got_ids, ids)
    np.testing.assert_array_equal(got_mask, mask.astype(np.uint8))


def test_plan_reports_blocks_against_the_full_box(tmp_path, capsys):
    from gp_engine.cli import main

    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"version": 1, "geometry": {"stl": str(ring(tmp_path)), "size": 150},
                                "sampler": {"preset": "fast"}, "outputs": {"dir": str(tmp_path / "o")}}))
    assert main(["plan", str(plan)]) == 0
    text = capsys.readouterr().out
    assert "blocks the part needs:" in text and "in the full box" in text
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"version": 1, "geometry": {"stl": "nope.stl", "size": 50}}))
    assert main(["plan", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "geometry.stl" in err[0] and "nope.stl" in err[0]

"""Offscreen grain renderer: where each point lands is computed from the projection the module
documents (view_geometry), and the colour there is checked against the grain that must be seen."""

import numpy as np
import pytest

from gp_engine.errors import GPEngineError
from gp_engine.outputs import random_colormap
from gp_engine.render import LINE_DARKEN, MARGIN, face_shades, render_grains, render_panel, save_render

COLORS = np.array([[0.0, 0.0, 0.0], [0.2, 0.6, 1.0], [1.0, 0.5, 0.1]])
BG = np.ones(3)


def view_geometry(lo, hi, azimuth, elevation, size):
    """The projection render.py documents, written out again here (not imported): camera direction d,
    image right r = (-sin az, cos az, 0), up = r x (-d); the solid's box [lo, hi + 1] centred, its
    larger projected extent filling the image less a margin; row 0 at the top."""
    az, el = np.radians(azimuth), np.radians(elevation)
    d = np.array([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)])
    r = np.array([-np.sin(az), np.cos(az), 0.0])
    u = np.cross(r, -d)
    u /= np.linalg.norm(u)
    lo, hi = np.asarray(lo, float), np.asarray(hi, float) + 1
    corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    s, t = corners @ r, corners @ u
    pixel = max(np.ptp(s), np.ptp(t)) * (1 + MARGIN) / size

    def project(p):
        p = np.asarray(p, float)
        return (size / 2 - (p @ u - (t.max() + t.min()) / 2) / pixel,
                size / 2 + (p @ r - (s.max() + s.min()) / 2) / pixel)

    def ray_origin(row, col):
        """A point on the centre ray of pixel (row, col), on the camera side of everything."""
        sp = (s.max() + s.min()) / 2 + (col + 0.5 - size / 2) * pixel
        tp = (t.max() + t.min()) / 2 - (row + 0.5 - size / 2) * pixel
        return sp * r + tp * u + 1000.0 * d

    return {"d": d, "project": project, "ray_origin": ray_origin}


def pixel_at(img, geo, point):
    """The pixel whose centre ray passes nearest the world point."""
    row, col = geo["project"](point)
    return img[int(np.floor(row)), int(np.floor(col))]


def grain_and_shade(px, colors=COLORS):
    """(grain id, shade) when px is exactly colors[id] * shade with shade in (0, 1], else (None, None)."""
    for g in range(1, len(colors)):
        s = px[0] / colors[g][0]
        if 0 < s <= 1 and np.allclose(px, colors[g] * s, atol=1e-12):
            return g, s
    return None, None


def test_single_grain_cube_centre_corners_and_three_face_shades():
    n, size = 10, 101
    ids = np.zeros((n + 4,) * 3, np.int32)
    ids[2:2 + n, 2:2 + n, 2:2 + n] = 1
    img = render_grains(ids, cutaway=None, size=size, colors=COLORS)
    assert img.shape == (size, size, 3)
    g, s = grain_and_shade(img[size // 2, size // 2])
    assert g == 1 and 0 < s <= 1
    for px in (img[0, 0], img[0, -1], img[-1, 0], img[-1, -1]):
        assert np.array_equal(px, BG)
    geo = view_geometry((2, 2, 2), (1 + n,) * 3, 35.0, 25.0, size)
    hi, c = 2 + n, 2 + n / 2
    faces = {0: (hi, c, c), 1: (c, hi, c), 2: (c, c, hi)}   # centres of the +x, +y, +z faces
    shades = {}
    for axis, point in faces.items():
        g, s = grain_and_shade(pixel_at(img, geo, point))
        assert g == 1, axis
        shades[axis] = s
    assert len({round(s, 6) for s in shades.values()}) == 3, shades
    # rays go along -d (all components negative here): a +x face is entered with a negative step
    expected = face_shades(35.0, 25.0)[:, 0]
    np.testing.assert_allclose([shades[a] for a in range(3)], expected, rtol=1e-12)
    assert shades[2] == max(shades.values())   # the light is above the camera


def test_default_colours_are_the_random_colormap():
    ids = np.zeros((8, 8, 8), np.int32)
    ids[1:7, 1:7, 1:7] = 5
    img = render_grains(ids, cutaway=None, size=41)
    g, s = grain_and_shade(img[20, 20], np.asarray(random_colormap(5).colors))
    assert g == 5 and 0 < s <= 1


def test_two_grains_split_only_the_facing_half_is_seen_and_the_cut_shows_the_other():
    n, size = 16, 64
    ids = np.ones((n, n, n), np.int32)
    ids[n // 2:] = 2
    # camera on +x, level: only the x >= n/2 half faces it
    img = render_grains(ids, cutaway=None, azimuth=0.0, elevation=0.0, size=size, colors=COLORS)
    drawn = ~np.all(img == BG, axis=-1)
    assert drawn.sum() > 0.8 * size * size
    assert {grain_and_shade(px)[0] for px in img[drawn]} == {2}
    # the octant x, y, z > 8 goes: the upper right quadrant shows the cut face x = 8 of grain 1
    cut = render_grains(ids, cutaway="octant", azimuth=0.0, elevation=0.0, size=size, colors=COLORS)
    geo = view_geometry((0, 0, 0), (n - 1,) * 3, 0.0, 0.0, size)
    assert grain_and_shade(pixel_at(cut, geo, (8, 12.5, 12.5)))[0] == 1
    assert grain_and_shade(pixel_at(img, geo, (16, 12.5, 12.5)))[0] == 2
    assert grain_and_shade(pixel_at(cut, geo, (16, 4.5, 4.5)))[0] == 2


@pytest.mark.parametrize("azimuth", [35.0, 125.0, 215.0, 305.0])
@pytest.mark.parametrize("elevation", [25.0, -25.0])
def test_enclosed_grain_visible_only_through_the_octant_facing_the_camera(azimuth, elevation):
    n, size = 16, 120
    ids = np.full((n, n, n), 2, np.int32)
    ids[4:12, 4:12, 4:12] = 1                      # grain 1 fully enclosed by grain 2
    geo = view_geometry((0, 0, 0), (n - 1,) * 3, azimuth, elevation, size)
    sx, sy = np.sign(geo["d"][:2])
    # a point on the cut face z = 8 inside grain 1; seen through the removed octant along +d
    point = (8 + 2.5 * sx, 8 + 2.5 * sy, 8)
    whole = render_grains(ids, cutaway=None, azimuth=azimuth, elevation=elevation, size=size,
                          colors=COLORS)
    cut = render_grains(ids, cutaway="octant", azimuth=azimuth, elevation=elevation, size=size,
                        colors=COLORS)
    assert {grain_and_shade(px)[0] for px in whole[~np.all(whole == BG, axis=-1)]} == {2}
    g, s = grain_and_shade(pixel_at(cut, geo, point))
    assert g == 1
    assert s == pytest.approx(face_shades(azimuth, elevation)[2, 0 if elevation > 0 else 1])


def test_mask_false_voxels_are_not_drawn():
    n, size = 16, 80
    ids = np.ones((n, n, n), np.int32)
    mask = np.zeros((n, n, n), bool)
    mask[:, n // 2:, :] = True                     # keep y >= 8 (the half nearer the camera) ...
    mask[:, :, :2] = True                          # ... and a floor, so the bounding box stays the cube
    img = render_grains(ids, mask, cutaway=None, size=size, colors=COLORS)
    # the same picture as the ids with the masked half set to 0
    assert np.array_equal(img, render_grains(np.where(mask, ids, 0), cutaway=None, size=size,
                                             colors=COLORS))
    geo = view_geometry((0, 0, 0), (n - 1,) * 3, 35.0, 25.0, size)
    # the top face centre of the removed half y < 8: its ray meets only removed voxels
    assert np.array_equal(pixel_at(img, geo, (8, 4, 16)), BG)
    assert grain_and_shade(pixel_at(img, geo, (8, 12, 16)))[0] == 1
    unmasked = render_grains(ids, cutaway=None, size=size, colors=COLORS)
    assert grain_and_shade(pixel_at(unmasked, geo, (8, 4, 16)))[0] == 1


def reference_first_hit(solid, origin, fwd):
    """(voxel index, entry axis) of the first solid voxel on a ray, by an exact slab test against
    every solid voxel (no grid traversal); None on a miss, "tie" when the ray enters two at once
    (through an edge: either answer is right)."""
    vox = np.argwhere(solid).astype(float)
    ta, tb = (vox - origin) / fwd, (vox + 1 - origin) / fwd
    t_in, t_out = np.minimum(ta, tb), np.maximum(ta, tb)
    enter, leave = t_in.max(axis=1), t_out.min(axis=1)
    hit = np.flatnonzero(enter < leave)
    if hit.size == 0:
        return None
    order = hit[np.argsort(enter[hit])]
    if order.size > 1 and enter[order[1]] - enter[order[0]] < 1e-9:
        return "tie"
    return tuple(vox[order[0]].astype(int)), int(np.argmax(t_in[order[0]]))


@pytest.mark.parametrize("azimuth, elevation, cutaway", [(35.0, 25.0, "octant"), (-120.0, 40.0, None),
                                                         (200.0, -30.0, "octant")])
def test_every_pixel_matches_a_brute_force_first_hit(azimuth, elevation, cutaway):
    """A sparse random volume (thin, isolated voxels) with a mask: each pixel shows the grain and
    the face shade of the first voxel its ray enters, found without any grid traversal."""
    rng = np.random.default_rng(7)
    shape, size = (9, 11, 7), 40
    ids = np.where(rng.random(shape) < 0.25, rng.integers(1, 6, shape), 0).astype(np.int32)
    ids[0, 0, 0] = ids[-1, -1, -1] = 1             # the bounding box is the whole array
    mask = rng.random(shape) < 0.8
    mask[0, 0, 0] = mask[-1, -1, -1] = True
    colors = np.vstack([[0, 0, 0], rng.uniform(0.15, 1.0, (5, 3))])
    img = render_grains(ids, mask, cutaway=cutaway, azimuth=azimuth, elevation=elevation,
                        size=size, colors=colors)
    geo = view_geometry((0, 0, 0), np.array(shape) - 1, azimuth, elevation, size)
    solid = (ids > 0) & mask
    if cutaway:   # the octant whose corner faces the camera, cut at the box centre
        centres = np.indices(shape).transpose(1, 2, 3, 0) + 0.5
        c = np.array(shape) / 2
        side = np.where(geo["d"] >= 0, centres > c, centres < c)
        solid &= ~side.all(axis=-1)
    shades = face_shades(azimuth, elevation)
    checked = 0
    for row in range(size):
        for col in range(size):
            ref = reference_first_hit(solid, geo["ray_origin"](row, col), -geo["d"])
            px = img[row, col]
            if ref == "tie":
                continue
            if ref is None:
                assert np.array_equal(px, BG), (row, col)
                continue
            (i, j, k), axis = ref
            g, s = grain_and_shade(px, colors)
            assert g == ids[i, j, k], (row, col)
            # the face: the axis whose slab the ray entered last; rays go along -d
            expected = shades[axis, 1 if geo["d"][axis] < 0 else 0]
            assert s == pytest.approx(expected) or s == pytest.approx(expected * LINE_DARKEN), (row, col)
            checked += 1
    assert checked > 0.3 * size * size


def test_empty_solid_raises():
    with pytest.raises(GPEngineError, match="nothing to render"):
        render_grains(np.zeros((4, 4, 4), np.int32))
    with pytest.raises(GPEngineError, match="nothing to render"):
        render_grains(np.ones((4, 4, 4), np.int32), np.zeros((4, 4, 4), bool))


def test_deterministic_and_pngs(tmp_path):
    import matplotlib.image as mpimg

    rng = np.random.default_rng(3)
    ids = rng.integers(1, 30, (12, 10, 8)).astype(np.int32)
    a = render_grains(ids, size=60)
    assert np.array_equal(a, render_grains(ids.copy(), size=60))
    p = save_render(tmp_path / "one.png", ids, size=70)
    assert mpimg.imread(p).shape[:2] == (70, 70)
    p = render_panel(tmp_path / "panel.png", ids, np.ones(ids.shape, bool), title="t", size=50)
    img = mpimg.imread(p)
    assert img.shape[0] > 50 and img.shape[1] == 100 and img.shape[2] in (3, 4)
    assert sorted(f.name for f in tmp_path.iterdir()) == ["one.png", "panel.png"]

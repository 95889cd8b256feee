"""Offscreen 3D pictures of grain volumes: numpy + numba ray casting, no display, no OpenGL.

The solid is every voxel with ``ids > 0`` (and ``mask`` True where a mask is given); voxel ``(i, j, k)``
of an ``[x, y, z]`` array is the unit cube ``[i, i+1] x [j, j+1] x [k, k+1]``, z up.

Camera (orthographic): ``azimuth`` (degrees, about z, from +x towards +y) and ``elevation`` (degrees
above the x-y plane) give the unit vector ``d`` from the scene towards the camera; every ray travels
along ``-d``. The image's right is ``r = (-sin az, cos az, 0)``, its up ``u = r x (-d)``; row 0 is the
top. The whole bounding box of the solid fits in the image with a small margin (:func:`view_geometry`
returns the projection, so tests and callers can find where a point lands).

Each pixel casts one ray through the grid with an exact 3D-DDA (Amanatides & Woo); the first solid
voxel hit gives the grain's colour (:func:`gp_engine.outputs.random_colormap`) times a Lambert shade of
the face the ray entered through (ambient + diffuse, the light above and a little left of the camera),
so the three visible face orientations differ. Grain boundaries on a face are drawn as thin dark lines.

``cutaway="octant"`` removes the octant of the solid's bounding box whose corner faces the camera (cut
at the box centre), so the cut faces show grains inside.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numba
import numpy as np

from .atomic_write import save_figure
from .errors import GPEngineError

AMBIENT = 0.3
#: light direction in camera coordinates (right, up, towards the camera), normalised when used
LIGHT_CAMERA = (-0.2, 0.5, 1.0)
#: factor on a pixel within ``LINE_WIDTH`` pixels of a grain boundary on the face it shows
LINE_DARKEN = 0.35
LINE_WIDTH = 0.6
MARGIN = 0.04
CUTAWAYS = (None, "octant")


# ----------------------------------------------------------------------------------------- kernels

@numba.njit(parallel=False, cache=True)
def _solid_bbox(ids, mask, use_mask):
    """(lo, hi) inclusive voxel index bounds of the solid; lo > hi (all axes) when it is empty."""
    nx, ny, nz = ids.shape
    lo = np.array([nx, ny, nz], np.int64)
    hi = np.array([-1, -1, -1], np.int64)
    for i in range(nx):
        for j in range(ny):
            for k in range(nz):
                if ids[i, j, k] > 0 and (not use_mask or mask[i, j, k]):
                    if i < lo[0]:
                        lo[0] = i
                    if i > hi[0]:
                        hi[0] = i
                    if j < lo[1]:
                        lo[1] = j
                    if j > hi[1]:
                        hi[1] = j
                    if k < lo[2]:
                        lo[2] = k
                    if k > hi[2]:
                        hi[2] = k
    return lo, hi


@numba.njit(inline="always")
def _solid(ids, mask, use_mask, cut_lo, cut_hi, use_cut, i, j, k):
    """True when voxel (i, j, k) is drawn: in the array, id > 0, in the mask, not cut away."""
    nx, ny, nz = ids.shape
    if i < 0 or j < 0 or k < 0 or i >= nx or j >= ny or k >= nz:
        return False
    if ids[i, j, k] <= 0:
        return False
    if use_mask and not mask[i, j, k]:
        return False
    if use_cut and (cut_lo[0] <= i <= cut_hi[0] and cut_lo[1] <= j <= cut_hi[1]
                    and cut_lo[2] <= k <= cut_hi[2]):
        return False
    return True


@numba.njit(parallel=False, cache=True)
def _render_kernel(ids, mask, use_mask, lo, hi, cut_lo, cut_hi, use_cut, origin0, right, up,
                   fwd, pixel, colors, shade, background, line_w, out):
    """Cast one ray per pixel of ``out`` [size, size, 3]; see the module docstring.

    ``origin0``: the world point of the image centre, behind the camera side of the box; pixel
    (row, col) starts at ``origin0 + s*right + t*up`` with ``s = (col + 0.5 - size/2) * pixel`` and
    ``t = (size/2 - row - 0.5) * pixel``; ``shade[axis, 0 or 1]``: the shade of a face entered along
    ``axis`` with a negative (0) or positive (1) step.
    """
    size = out.shape[0]
    bmin = np.empty(3)
    bmax = np.empty(3)
    for a in range(3):
        bmin[a] = lo[a]
        bmax[a] = hi[a] + 1.0
    o = np.empty(3)
    idx = np.empty(3, np.int64)
    step = np.empty(3, np.int64)
    tmax = np.empty(3)
    tdelta = np.empty(3)
    for row in range(size):
        t_off = (0.5 * size - row - 0.5) * pixel
        for col in range(size):
            s_off = (col + 0.5 - 0.5 * size) * pixel
            for a in range(3):
                o[a] = origin0[a] + s_off * right[a] + t_off * up[a]
            # slab test against the solid's bounding box
            t0 = -1e300
            t1 = 1e300
            entry_axis = 0
            miss = False
            for a in range(3):
                if fwd[a] == 0.0:
                    if o[a] < bmin[a] or o[a] > bmax[a]:
                        miss = True
                    continue
                ta = (bmin[a] - o[a]) / fwd[a]
                tb = (bmax[a] - o[a]) / fwd[a]
                if ta > tb:
                    ta, tb = tb, ta
                if ta > t0:
                    t0 = ta
                    entry_axis = a
                if tb < t1:
                    t1 = tb
            if miss or t0 >= t1:
                for c in range(3):
                    out[row, col, c] = background[c]
                continue
            # first voxel: the entry axis is on the box face, the others from the entry point
            for a in range(3):
                if fwd[a] > 0.0:
                    step[a] = 1
                elif fwd[a] < 0.0:
                    step[a] = -1
                else:
                    step[a] = 0
                if a == entry_axis:
                    idx[a] = lo[a] if step[a] > 0 else hi[a]
                else:
                    v = int(math.floor(o[a] + t0 * fwd[a]))
                    idx[a] = min(max(v, lo[a]), hi[a])
                if step[a] > 0:
                    tmax[a] = (idx[a] + 1.0 - o[a]) / fwd[a]
                    tdelta[a] = 1.0 / fwd[a]
                elif step[a] < 0:
                    tmax[a] = (idx[a] - o[a]) / fwd[a]
                    tdelta[a] = -1.0 / fwd[a]
                else:
                    tmax[a] = 1e300
                    tdelta[a] = 1e300
            face = entry_axis
            tcur = t0
            hit = False
            while True:
                if _solid(ids, mask, use_mask, cut_lo, cut_hi, use_cut, idx[0], idx[1], idx[2]):
                    hit = True
                    break
                # step across the nearest voxel boundary
                face = 0
                if tmax[1] < tmax[face]:
                    face = 1
                if tmax[2] < tmax[face]:
                    face = 2
                tcur = tmax[face]
                idx[face] += step[face]
                if idx[face] < lo[face] or idx[face] > hi[face]:
                    break
                tmax[face] += tdelta[face]
            if not hit:
                for c in range(3):
                    out[row, col, c] = background[c]
                continue
            g = ids[idx[0], idx[1], idx[2]]
            f = shade[face, 1 if step[face] > 0 else 0]
            # grain boundary lines: a neighbour in the face's plane, across a near edge, has another id
            if line_w > 0.0:
                for b in range(3):
                    if b == face:
                        continue
                    frac = o[b] + tcur * fwd[b] - idx[b]
                    nb = 0
                    if frac < line_w:
                        nb = -1
                    elif frac > 1.0 - line_w:
                        nb = 1
                    if nb != 0:
                        ni = idx[0] + (nb if b == 0 else 0)
                        nj = idx[1] + (nb if b == 1 else 0)
                        nk = idx[2] + (nb if b == 2 else 0)
                        if (_solid(ids, mask, use_mask, cut_lo, cut_hi, use_cut, ni, nj, nk)
                                and ids[ni, nj, nk] != g):
                            f *= LINE_DARKEN
                            break
            for c in range(3):
                out[row, col, c] = colors[g, c] * f


# ------------------------------------------------------------------------------------------ python

def _check_volume(ids, mask):
    ids = np.asarray(ids)
    if ids.ndim != 3:
        raise GPEngineError(f"grain ids must be a 3D array [x, y, z], got shape {ids.shape}")
    if not np.issubdtype(ids.dtype, np.integer):
        raise GPEngineError(f"grain ids must be integers, got dtype {ids.dtype}")
    if ids.dtype not in (np.int32, np.int64):
        ids = ids.astype(np.int32)
    if mask is None:
        return ids, np.ones((1, 1, 1), np.bool_), False
    mask = np.asarray(mask)
    if mask.shape != ids.shape:
        raise GPEngineError(f"mask shape {mask.shape} does not match grain ids shape {ids.shape}")
    if mask.dtype != np.bool_:
        mask = mask != 0
    return ids, mask, True


def camera_vectors(azimuth: float, elevation: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(d, right, up): unit vectors, ``d`` from the scene towards the camera (rays go along ``-d``)."""
    az, el = math.radians(azimuth), math.radians(elevation)
    d = np.array([math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)])
    right = np.array([-math.sin(az), math.cos(az), 0.0])
    up = np.cross(right, -d)
    up /= np.linalg.norm(up)
    return d, right, up


def cut_octant(lo, hi, d) -> tuple[np.ndarray, np.ndarray]:
    """Inclusive voxel index bounds of the octant of box [lo, hi] whose corner faces direction ``d``.

    The cut is at the box centre ``c = (lo + hi + 1) / 2``: along an axis where ``d`` is >= 0 the voxels
    with centre ``> c`` go, otherwise those with centre ``< c``.
    """
    lo, hi = np.asarray(lo, np.int64), np.asarray(hi, np.int64)
    c = (lo + hi + 1) / 2.0
    cut_lo, cut_hi = np.empty(3, np.int64), np.empty(3, np.int64)
    for a in range(3):
        if d[a] >= 0:   # centre i + 0.5 > c  <=>  i >= floor(c - 0.5) + 1
            cut_lo[a], cut_hi[a] = math.floor(c[a] - 0.5) + 1, hi[a]
        else:           # centre i + 0.5 < c  <=>  i <= ceil(c - 0.5) - 1
            cut_lo[a], cut_hi[a] = lo[a], math.ceil(c[a] - 0.5) - 1
    return cut_lo, cut_hi


def view_geometry(lo, hi, azimuth: float, elevation: float, size: int) -> dict:
    """The projection used for a solid with inclusive voxel bounds [lo, hi].

    Returns ``d``, ``right``, ``up``, ``center`` (world point at the image centre), ``pixel`` (world
    units per pixel) and ``project``: world point -> (row, col) as floats (pixel centres at .5).
    """
    d, right, up = camera_vectors(azimuth, elevation)
    lo, hi = np.asarray(lo, float), np.asarray(hi, float) + 1.0
    corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    s, t = corners @ right, corners @ up
    half = max(s.max() - s.min(), t.max() - t.min()) / 2.0 * (1.0 + MARGIN) or 1.0
    box_centre = (lo + hi) / 2.0
    # shift the centre within the view plane to the middle of the projected extents
    center = (box_centre + ((s.max() + s.min()) / 2 - box_centre @ right) * right
              + ((t.max() + t.min()) / 2 - box_centre @ up) * up)
    pixel = 2.0 * half / size

    def project(p):
        p = np.asarray(p, float) - center
        return size / 2.0 - (p @ up) / pixel, size / 2.0 + (p @ right) / pixel

    return {"d": d, "right": right, "up": up, "center": center, "pixel": pixel, "project": project,
            "diag": float(np.linalg.norm(hi - lo))}


def face_shades(azimuth: float, elevation: float) -> np.ndarray:
    """[3, 2] shade of a face entered along axis a with a negative (0) or positive (1) ray step.

    A ray stepping +1 along a enters through the face whose outward normal is -e_a; Lambert:
    ``AMBIENT + (1 - AMBIENT) * max(0, n . L)``.
    """
    d, right, up = camera_vectors(azimuth, elevation)
    light = LIGHT_CAMERA[0] * right + LIGHT_CAMERA[1] * up + LIGHT_CAMERA[2] * d
    light /= np.linalg.norm(light)
    shade = np.empty((3, 2))
    for a in range(3):
        shade[a, 0] = AMBIENT + (1 - AMBIENT) * max(0.0, light[a])    # normal +e_a
        shade[a, 1] = AMBIENT + (1 - AMBIENT) * max(0.0, -light[a])   # normal -e_a
    return shade


def grain_colors(max_id: int) -> np.ndarray:
    """[max_id + 1, 3] colours: :func:`gp_engine.outputs.random_colormap` (id 0 black)."""
    from .outputs import random_colormap

    return np.asarray(random_colormap(max(int(max_id), 1)).colors, dtype=np.float64)


def render_grains(ids: np.ndarray, mask: np.ndarray | None = None, *, cutaway: str | None = "octant",
                  azimuth: float = 35.0, elevation: float = 25.0, size: int = 800,
                  colors: np.ndarray | None = None, background=(1, 1, 1)) -> np.ndarray:
    """RGB float image [size, size, 3] of the solid (ids > 0 and mask) seen orthographically.

    ``cutaway``: None (whole solid) or ``"octant"`` (the octant of the solid's bounding box nearest the
    camera removed, cut at the box centre). ``colors``: [>= max id + 1, 3] RGB in [0, 1] indexed by
    grain id (default :func:`grain_colors`). Raises :class:`GPEngineError` when nothing is solid.
    """
    ids, mask_arr, use_mask = _check_volume(ids, mask)
    if cutaway not in CUTAWAYS:
        raise GPEngineError(f"cutaway must be one of {CUTAWAYS}, got {cutaway!r}")
    size = int(size)
    if size < 1:
        raise GPEngineError(f"image size must be at least 1 pixel, got {size}")
    lo, hi = _solid_bbox(ids, mask_arr, use_mask)
    if lo[0] > hi[0]:
        raise GPEngineError("nothing to render: no voxel has a grain id > 0"
                            + (" inside the mask" if use_mask else ""))
    max_id = int(ids.max())
    if colors is None:
        colors = grain_colors(max_id)
    colors = np.ascontiguousarray(colors, dtype=np.float64)
    if colors.ndim != 2 or colors.shape[1] != 3 or colors.shape[0] <= max_id:
        raise GPEngineError(f"colors must be [>= {max_id + 1}, 3] (one RGB row per grain id), "
                            f"got shape {colors.shape}")
    background = np.asarray(background, dtype=np.float64).reshape(3)
    geo = view_geometry(lo, hi, azimuth, elevation, size)
    if cutaway == "octant":
        cut_lo, cut_hi = cut_octant(lo, hi, geo["d"])
    else:
        cut_lo, cut_hi = np.zeros(3, np.int64), np.full(3, -1, np.int64)
    origin0 = geo["center"] + (geo["diag"] + 1.0) * geo["d"]
    out = np.empty((size, size, 3), np.float64)
    _render_kernel(ids, mask_arr, use_mask, lo, hi, cut_lo, cut_hi, cutaway == "octant", origin0,
                   geo["right"], geo["up"], -geo["d"], geo["pixel"], colors,
                   face_shades(azimuth, elevation), background, LINE_WIDTH * geo["pixel"], out)
    return out


def _figure(n_images: int, size: int, title: str | None):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    dpi = 100
    top = 0.4 if title else 0.0
    fig = Figure(figsize=(n_images * size / dpi, size / dpi + top), dpi=dpi)
    FigureCanvasAgg(fig)
    axes = []
    h = size / dpi / (size / dpi + top)
    for i in range(n_images):
        ax = fig.add_axes((i / n_images, 0.0, 1.0 / n_images, h))
        ax.set_axis_off()
        axes.append(ax)
    if title:
        fig.suptitle(title, y=1.0 - 0.05 / (size / dpi + top), va="top")
    return fig, axes, dpi


def save_render(path: str | os.PathLike, ids, mask=None, title: str | None = None, **kw) -> Path:
    """Write :func:`render_grains` (``kw`` go to it) as a PNG, atomically; returns the path."""
    img = render_grains(ids, mask, **kw)
    fig, (ax,), dpi = _figure(1, img.shape[0], title)
    ax.imshow(np.clip(img, 0, 1), interpolation="nearest")
    return save_figure(fig, path, dpi=dpi)


def render_panel(path: str | os.PathLike, ids, mask=None, title: str | None = None, *,
                 size: int = 600, **kw) -> Path:
    """One PNG, two views side by side: the whole solid and the same view with the octant nearest
    the camera cut away (at the centre of the solid's bounding box). ``kw`` go to
    :func:`render_grains` (azimuth, elevation, colors, background)."""
    kw.pop("cutaway", None)
    images = [render_grains(ids, mask, cutaway=None, size=size, **kw),
              render_grains(ids, mask, cutaway="octant", size=size, **kw)]
    fig, axes, dpi = _figure(2, size, title)
    for ax, img, label in zip(axes, images, ("surface", "octant cut away")):
        ax.imshow(np.clip(img, 0, 1), interpolation="nearest")
        ax.text(0.02, 0.02, label, transform=ax.transAxes, fontsize=10, va="bottom")
    return save_figure(fig, path, dpi=dpi)


__all__ = ["render_grains", "save_render", "render_panel", "view_geometry", "cut_octant",
           "camera_vectors", "face_shades", "grain_colors"]

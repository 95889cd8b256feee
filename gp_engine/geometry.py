"""CAD parts: a mesh (STL or anything trimesh reads) in, a voxel mask of the part out.

:func:`load_part` reads and repairs the mesh (trimesh: merged vertices, duplicate and degenerate
faces removed, small holes filled, normals made consistent; each repair is reported) and fixes the
voxel grid: ``pitch`` mesh units per voxel, or ``size`` voxels along the longest axis, after an
optional rotation. Broken meshes are refused with one line saying what is wrong (open, empty, flat,
smaller than a voxel).

:func:`voxelize` fills the part by scanline parity: every column of voxel centres along z is crossed
with every triangle (a numba kernel, time and memory in proportion to the triangles' footprints and
the voxel grid), and voxels between the 1st/2nd, 3rd/4th, ... crossing are inside. Parity ignores
the triangles' orientation, so inverted or inconsistent normals give the same mask; column centres are
offset by an irrational fraction of a voxel so that no column runs exactly through a shared edge or
vertex. A column with an odd number of crossings (a hole the repair could not close) is reported.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import GPEngineError

#: column-centre offset in voxels (irrational: never on a mesh edge built from round numbers)
_JITTER = (math.sqrt(2) * 1e-5, math.sqrt(3) * 1e-5)


@dataclass(frozen=True)
class Part:
    """A repaired mesh placed on a voxel grid: voxel (i, j, k) has its centre at
    ``origin + (i + 0.5, j + 0.5, k + 0.5) * pitch`` in (rotated) mesh coordinates."""

    path: Path
    triangles: np.ndarray          # [F, 3, 3] float64, rotated mesh coordinates
    pitch: float
    origin: tuple[float, float, float]
    shape: tuple[int, int, int]
    volume: float                  # of the repaired mesh, mesh units³
    sha256: str
    repairs: tuple[str, ...] = field(default=())

    def grid_triangles(self) -> np.ndarray:
        """The triangles in voxel units (voxel centres at integer + 0.5)."""
        return (self.triangles - np.asarray(self.origin)) / self.pitch


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def rotation_matrix(degrees) -> np.ndarray:
    """Extrinsic rotations about x, then y, then z (degrees) as a 3×3 matrix."""
    ax, ay, az = (math.radians(float(d)) for d in degrees)
    rx = np.array([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
    ry = np.array([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]])
    rz = np.array([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def load_mesh(path: Path, where: str = "geometry.stl"):
    """Read and repair a mesh; returns (trimesh.Trimesh, [repairs done])."""
    import trimesh

    path = Path(path)
    if not path.is_file():
        raise GPEngineError(f"{where} = {path} does not exist; check the path (relative paths are relative "
                            "to the plan file)")
    try:
        mesh = trimesh.load(path, force="mesh", process=False)
    except Exception as exc:  # trimesh raises many types for unreadable files
        raise GPEngineError(f"{where} = {path} cannot be read as a mesh ({type(exc).__name__}: {exc}); "
                            "export it as STL, OBJ or PLY") from None
    if not isinstance(mesh, trimesh.Trimesh) or len(mesh.faces) == 0:
        raise GPEngineError(f"{where} = {path} holds no triangles; export the part's solid body as a mesh")
    repairs = []
    mesh.merge_vertices()  # STL stores every triangle's corners apart: not a repair, just indexing
    nf = len(mesh.faces)
    mesh.update_faces(mesh.unique_faces())
    if len(mesh.faces) < nf:
        repairs.append(f"removed {nf - len(mesh.faces)} duplicate faces")
    nf = len(mesh.faces)
    mesh.update_faces(mesh.nondegenerate_faces())
    if len(mesh.faces) < nf:
        repairs.append(f"removed {nf - len(mesh.faces)} degenerate faces")
    mesh.remove_unreferenced_vertices()
    if len(mesh.faces) == 0:
        raise GPEngineError(f"{where} = {path} has only degenerate triangles (zero area); export the part again")
    if not mesh.is_watertight:
        trimesh.repair.fill_holes(mesh)
        if mesh.is_watertight:
            repairs.append("filled small holes")
        else:
            edges = mesh.edges_sorted
            _, counts = np.unique(edges, axis=0, return_counts=True)
            open_edges = int(np.sum(counts == 1))
            raise GPEngineError(f"{where} = {path} is not a closed surface: {open_edges} open edges remain "
                                "after filling small holes; close the part in your CAD tool (or MeshLab) "
                                "and export it again")
    if not mesh.is_winding_consistent or mesh.volume < 0:
        trimesh.repair.fix_normals(mesh)
        repairs.append("made normals consistent and outward")
    extent = mesh.extents
    if np.min(extent) <= 1e-12 * max(np.max(extent), 1e-300) or abs(mesh.volume) <= 0:
        raise GPEngineError(f"{where} = {path} is flat (extent {np.round(extent, 6).tolist()}, volume "
                            f"{mesh.volume:g}): it encloses no solid")
    return mesh, repairs


def load_part(path, pitch: float | None = None, size: int | None = None, rotation=(0, 0, 0),
              shape=None, offset=None, where: str = "geometry") -> Part:
    """Mesh -> :class:`Part` on its voxel grid. Exactly one of ``pitch`` (mesh units per voxel) or
    ``size`` (voxels along the longest axis) is given. ``shape``: a box larger than the part (default:
    the part's bounding box); ``offset``: voxel index of the part's grid corner in that box (default:
    centred)."""
    mesh, repairs = load_mesh(Path(path), f"{where}.stl")
    tri = np.asarray(mesh.triangles, np.float64)
    centre = mesh.bounds.mean(axis=0)
    if any(float(r) for r in rotation):
        tri = (tri - centre) @ rotation_matrix(rotation).T + centre
    lo, hi = tri.reshape(-1, 3).min(axis=0), tri.reshape(-1, 3).max(axis=0)
    extent = hi - lo
    if pitch is None:
        pitch = float(np.max(extent)) / int(size)
    part_shape = tuple(max(1, int(math.ceil(e / pitch - 1e-9))) for e in extent)
    # the grid starts at the part's lowest corner (centring it instead makes every thin axis-aligned
    # wall one voxel thicker: both faces then fall between the same two voxel centres)
    origin = lo.copy()
    if shape is None:
        box = part_shape
    else:
        box = tuple(int(s) for s in shape)
        if offset is None:
            offset = tuple((b - p) // 2 for b, p in zip(box, part_shape))
        if any(int(o) < 0 or int(o) + p > b for o, p, b in zip(offset, part_shape, box)):
            raise GPEngineError(f"{where}: the part ({part_shape} voxels at pitch {pitch:g}) does not fit in "
                                f"geometry.shape {list(box)} at geometry.offset {list(offset)}; make the shape "
                                "larger, the offset smaller, or the part smaller (pitch/size)")
        origin = origin - np.asarray(offset, np.float64) * pitch
    return Part(Path(path), tri, float(pitch), tuple(float(o) for o in origin), box,
                float(abs(mesh.volume)), _sha256(Path(path)), tuple(repairs))


def _kernels():
    global _K
    if _K is None:
        import numba

        @numba.njit(cache=True)
        def crossings(tri, nx, ny, jx, jy, count_only, counts, starts, zs):
            """Pass 1 (count_only): crossings per column; pass 2: their z values (CSR)."""
            fill = np.zeros(nx * ny, np.int64)
            for f in range(tri.shape[0]):
                x0, y0, z0 = tri[f, 0, 0], tri[f, 0, 1], tri[f, 0, 2]
                x1, y1, z1 = tri[f, 1, 0], tri[f, 1, 1], tri[f, 1, 2]
                x2, y2, z2 = tri[f, 2, 0], tri[f, 2, 1], tri[f, 2, 2]
                det = (x1 - x0) * (y2 - y0) - (x2 - x0) * (y1 - y0)
                if det == 0.0:
                    continue  # parallel to z: no column crosses its interior
                ilo = max(0, int(math.ceil(min(x0, x1, x2) - 0.5 - jx)))
                ihi = min(nx - 1, int(math.floor(max(x0, x1, x2) - 0.5 - jx)))
                jlo = max(0, int(math.ceil(min(y0, y1, y2) - 0.5 - jy)))
                jhi = min(ny - 1, int(math.floor(max(y0, y1, y2) - 0.5 - jy)))
                for i in range(ilo, ihi + 1):
                    px = i + 0.5 + jx
                    for j in range(jlo, jhi + 1):
                        py = j + 0.5 + jy
                        a = ((x1 - px) * (y2 - py) - (x2 - px) * (y1 - py)) / det
                        b = ((x2 - px) * (y0 - py) - (x0 - px) * (y2 - py)) / det
                        c = 1.0 - a - b
                        if a < 0.0 or b < 0.0 or c < 0.0:
                            continue
                        col = i * ny + j
                        if count_only:
                            counts[col] += 1
                        else:
                            zs[starts[col] + fill[col]] = a * z0 + b * z1 + c * z2
                            fill[col] += 1

        @numba.njit(cache=True)
        def fill_columns(starts, zs, ny, mask):
            """Voxels between crossing pairs are inside; returns the number of odd columns."""
            nz = mask.shape[2]
            odd = 0
            for col in range(starts.size - 1):
                a, b = starts[col], starts[col + 1]
                n = b - a
                if n == 0:
                    continue
                z = np.sort(zs[a:b])
                if n % 2:
                    odd += 1
                    n -= 1
                i, j = col // ny, col % ny
                for p in range(0, n, 2):
                    klo = max(0, int(math.ceil(z[p] - 0.5)))
                    khi = min(nz - 1, int(math.ceil(z[p + 1] - 0.5)) - 1)
                    for k in range(klo, khi + 1):
                        mask[i, j, k] = True
            return odd

        _K = (crossings, fill_columns)
    return _K


_K = None


def voxelize(part: Part, where: str = "geometry") -> np.ndarray:
    """Boolean mask [x, y, z] of the voxels whose centres lie inside the part (see the module docstring)."""
    crossings, fill_columns = _kernels()
    nx, ny, nz = part.shape
    tri = np.ascontiguousarray(part.grid_triangles())
    counts = np.zeros(nx * ny, np.int64)
    dummy = np.zeros(1, np.float64)
    crossings(tri, nx, ny, _JITTER[0], _JITTER[1], True, counts, counts, dummy)
    starts = np.zeros(nx * ny + 1, np.int64)
    np.cumsum(counts, out=starts[1:])
    zs = np.empty(int(starts[-1]), np.float64)
    crossings(tri, nx, ny, _JITTER[0], _JITTER[1], False, counts, starts, zs)
    mask = np.zeros(part.shape, np.bool_)
    odd = fill_columns(starts, zs, ny, mask)
    if odd:
        raise GPEngineError(f"{where}.stl = {part.path}: {odd} voxel columns cross the surface an odd number "
                            "of times (the mesh is not closed or intersects itself); repair it and export again")
    if not mask.any():
        raise GPEngineError(f"{where}.stl = {part.path}: no voxel centre lies inside the part at pitch "
                            f"{part.pitch:g}; use a smaller geometry.pitch or a larger geometry.size")
    return mask


def part_mask(plan, canvas: tuple[int, int, int] | None = None, offset=(0, 0, 0)):
    """(mask on the canvas, :class:`Part`) of a plan's ``stl`` geometry; (None, None) for a box. The part's
    box sits at ``offset`` in the canvas (the painted margin, :func:`gp_engine.planner.painted_box`; the
    canvas is also padded to one block where the part is thinner). The mesh is read and repaired once:
    callers take its repairs from the returned part."""
    geo = plan.geometry
    if getattr(geo, "stl", None) is None:
        return None, None
    where = str(getattr(plan, "source", None) or "plan") + ": geometry"
    part = geo.part(where)
    mask = voxelize(part, where)
    if canvas is not None and (tuple(canvas) != mask.shape or any(offset)):
        placed = np.zeros(tuple(canvas), bool)
        placed[tuple(slice(o, o + n) for o, n in zip(offset, mask.shape))] = mask
        mask = placed
    return mask, part


def paint_region(mask: np.ndarray, margin: int) -> np.ndarray:
    """The voxels a part's plan must paint: the part and every voxel within ``margin`` of it (26-neighbour
    steps), so that grains at its surface are painted and segmented with their surroundings."""
    if margin <= 0:
        return mask
    from scipy import ndimage

    return ndimage.binary_dilation(mask, structure=np.ones((3, 3, 3), bool), iterations=int(margin))


def surface_voxels(mask: np.ndarray) -> np.ndarray:
    """Part voxels with a 26-neighbour outside the part (the grid's own faces count as outside)."""
    from scipy import ndimage

    inner = ndimage.binary_erosion(mask, structure=np.ones((3, 3, 3), bool), border_value=0)
    return mask & ~inner


__all__ = ["Part", "part_mask", "paint_region", "surface_voxels", "load_mesh", "load_part", "voxelize", "rotation_matrix"]

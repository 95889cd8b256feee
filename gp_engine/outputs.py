"""Write the results of a generation run: volumes, PNG slices and the stats JSON (all atomic)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .atomic_write import save_figure
from .canvas import write_json_atomic

#: output format -> file name(s) written for it
FORMAT_FILES = {
    "npy": ("grains.npy", "field.npy"),
    "field": ("field.npy",),
    "vti": ("grains.vti",),
    "spparks": ("grains.dump",),
    "png": ("slices.png", "render.png"),
    "orientations": ("orientations.csv",),
    "dream3d": ("grains.dream3d",),
    "damask": ("damask_geom.vti", "material.yaml"),
    "abaqus": ("grains.inp",),
}
#: formats that carry grain orientations (each also writes orientations.csv)
ORIENTED = ("dream3d", "damask", "abaqus", "orientations")
ALL_FORMATS = tuple(FORMAT_FILES)
STATS_FILE = "stats.json"


def normalise_formats(formats) -> list[str]:
    """Plan formats -> our names (``dump``/``spparks``/``txt`` are the SPPARKS dump); default: all.

    ``npy`` writes the grain ids and the raw float field; ``field`` only the raw field.
    """
    if not formats:
        return list(ALL_FORMATS)
    alias = {"dump": "spparks", "spparks": "spparks", "txt": "spparks", "npy": "npy",
             "vti": "vti", "png": "png", "field": "field", "dream3d": "dream3d", "damask": "damask",
             "abaqus": "abaqus", "inp": "abaqus", "orientations": "orientations"}
    out = []
    for f in formats:
        name = alias.get(str(f).lower().lstrip("."))
        if name is not None and name not in out:
            out.append(name)
    if any(f in ORIENTED for f in out) and "orientations" not in out:
        out.append("orientations")  # the per-grain table goes with every oriented export
    return out


def write_orientations_csv(path: Path, quats: np.ndarray, euler: np.ndarray, phases: np.ndarray) -> Path:
    """One row per grain: id, phase, Bunge Euler angles (degrees; ZXZ, crystal → sample as in
    ``gp_engine.orientations``) and the unit quaternion (w, x, y, z)."""
    from .atomic_write import atomic_open

    with atomic_open(path, "w", newline="") as fh:
        fh.write("# gp-engine grain orientations: Bunge Euler angles (phi1, Phi, phi2) in degrees, "
                 "unit quaternion (w, x, y, z); grain id as in the grain-id volumes (0 = outside)\n")
        fh.write("grain_id,phase,phi1_deg,Phi_deg,phi2_deg,qw,qx,qy,qz\n")
        deg = np.degrees(euler)
        for i in range(len(quats)):
            fh.write(f"{i + 1},{int(phases[i])},{deg[i, 0]:.6f},{deg[i, 1]:.6f},{deg[i, 2]:.6f},"
                     f"{quats[i, 0]:.9f},{quats[i, 1]:.9f},{quats[i, 2]:.9f},{quats[i, 3]:.9f}\n")
    return Path(path)


def output_paths(out_dir: Path, formats) -> list[Path]:
    """Every file a run with these formats writes (for the overwrite check)."""
    names = [n for f in normalise_formats(formats) for n in FORMAT_FILES[f]] + [STATS_FILE]
    return [Path(out_dir) / n for n in dict.fromkeys(names)]


def random_colormap(n: int, seed: int = 0):
    """A ListedColormap of n+1 random bright colours, index 0 black (so neighbours contrast)."""
    from matplotlib.colors import ListedColormap

    rng = np.random.default_rng(seed)
    colours = rng.uniform(0.15, 1.0, (n + 1, 3))
    colours[0] = 0.0
    return ListedColormap(colours)


def mid_slices(vol: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """The three orthogonal mid-planes of a 3D array."""
    x, y, z = (s // 2 for s in vol.shape)
    return [(f"x = {x}", np.asarray(vol[x, :, :])), (f"y = {y}", np.asarray(vol[:, y, :])),
            (f"z = {z}", np.asarray(vol[:, :, z]))]


def write_slices_png(path: Path, grain_ids: np.ndarray, field: np.ndarray) -> Path:
    """One PNG: top row grains (random colours), bottom row the raw field, three mid-planes each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    cmap = random_colormap(int(np.max(grain_ids)) if grain_ids.size else 1)
    fig, axes = plt.subplots(2, 3, figsize=(12, 8.4), constrained_layout=True)
    for col, ((title, g), (_, f)) in enumerate(zip(mid_slices(grain_ids), mid_slices(field))):
        axes[0, col].imshow(g.T, cmap=cmap, vmin=0, vmax=cmap.N - 1, interpolation="nearest",
                            origin="lower")
        axes[0, col].set_title(f"grains, {title}")
        im = axes[1, col].imshow(f.T, cmap="gray", vmin=-1, vmax=1, interpolation="nearest",
                                 origin="lower")
        axes[1, col].set_title(f"raw field, {title}")
        for ax in axes[:, col]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.colorbar(im, ax=axes[1, :], shrink=0.8, label="field value")
    fig.suptitle(f"{int(np.max(grain_ids)) if grain_ids.size else 0} grains, shape {grain_ids.shape}")
    return save_figure(fig, path, dpi=100)


def write_results(out_dir: Path, field: np.ndarray, grain_ids: np.ndarray, formats,
                  stats: dict, raw_field: np.ndarray | None = None,
                  mask: np.ndarray | None = None, exports: dict | None = None) -> dict[str, Path]:
    """Write every requested output; returns {label: path}.

    ``field``: one float per voxel (shown in the slices); ``raw_field``: the model's multi-channel
    output [C, x, y, z] when it has more than one channel (analog bits), written as ``field.npy``.
    ``mask``: a CAD part's voxels (grain ids are 0 outside it already); the .vti carries it as the
    cell array ``part_mask``; the slices show the outside (id 0) black and the 3D render leaves it out.
    ``exports``: ``voxel_size``, ``units``, ``orientations`` (the plan's spec) and ``seed`` for the
    oriented formats (orientations.csv, DREAM.3D, DAMASK, Abaqus).
    """
    from . import volume_io

    out_dir = Path(out_dir)
    written: dict[str, Path] = {}
    fmts = normalise_formats(formats)
    if "npy" in fmts:
        volume_io.write_npy(out_dir / "grains.npy", np.asarray(grain_ids, np.int32))
        written["grain ids (npy)"] = out_dir / "grains.npy"
    if "npy" in fmts or "field" in fmts:  # the raw float field goes with the ids
        if raw_field is None:
            volume_io.write_npy(out_dir / "field.npy", np.asarray(field, np.float32))
        else:  # [C, x, y, z]: not a volume for write_npy's check, the same atomic .npy
            from .atomic_write import atomic_open

            with atomic_open(out_dir / "field.npy", "wb") as fh:
                np.save(fh, np.ascontiguousarray(raw_field, np.float32), allow_pickle=False)
        written["raw field (npy)"] = out_dir / "field.npy"
    if "vti" in fmts:
        volume_io.write_vti(out_dir / "grains.vti", np.asarray(grain_ids, np.int32),
                            extra=None if mask is None else {"part_mask": np.asarray(mask, np.uint8)})
        written["grain ids (vti, ParaView)"] = out_dir / "grains.vti"
    if "spparks" in fmts:
        volume_io.write_spparks_dump(out_dir / "grains.dump", np.asarray(grain_ids, np.int32))
        written["SPPARKS dump"] = out_dir / "grains.dump"
    if "png" in fmts:
        written["slices (PNG)"] = write_slices_png(out_dir / "slices.png", grain_ids, field)
        from .render import render_panel

        n = int(np.max(grain_ids)) if grain_ids.size else 0
        written["3D render (PNG)"] = render_panel(
            out_dir / "render.png", grain_ids, None if mask is None else np.asarray(mask, bool),
            title=f"{'part' if mask is not None else 'volume'} {'x'.join(map(str, grain_ids.shape))} voxels, "
                  f"{n} grains")
    if any(f in ORIENTED for f in fmts):
        from .export.formats import write_format
        from .orientations import orientations_from_plan

        ex = dict(exports or {})
        ids = np.asarray(grain_ids, np.int32)
        quats, euler, phases = orientations_from_plan(ex.get("orientations"), int(ids.max()), ex.get("seed", 0))
        kw = {"voxel_size": ex.get("voxel_size", 1.0), "units": ex.get("units", "µm")}
        written["orientations (CSV)"] = write_orientations_csv(out_dir / "orientations.csv", quats, euler, phases)
        if "dream3d" in fmts:
            written["DREAM.3D"] = write_format("dream3d", out_dir / "grains.dream3d", ids, quats, phases, **kw)
        if "damask" in fmts:
            geom, material = write_format("damask", out_dir, ids, quats, phases, name="damask_geom", **kw)
            written["DAMASK geometry"] = geom
            written["DAMASK material.yaml"] = material
        if "abaqus" in fmts:
            written["Abaqus (.inp)"] = write_format("abaqus", out_dir / "grains.inp", ids, quats, phases, **kw)
    write_json_atomic(out_dir / STATS_FILE, stats)
    written["stats (JSON)"] = out_dir / STATS_FILE
    return written

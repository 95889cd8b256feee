"""plan.json: the one file that says what to generate and how, parsed into frozen dataclasses.

A plan is versioned (``"version": 1``) and validated field by field: every problem is reported as a
:class:`~gp_engine.errors.GPEngineError` that names the JSON path of the field (``sampler.resample``),
the bad value, what is allowed and an example fix. Relative paths are resolved against the directory
of the plan file (or ``base_dir`` for a plan given as a dict), so a plan works from any working
directory. The schema is documented in ``docs/plan-schema.md``; keep the two in step.

>>> plan = load_plan({"version": 1, "geometry": {"shape": [64, 64, 64]}, "sampler": {"preset": "fast"}})
>>> plan.sampler.steps, plan.plan_kind, plan.geometry.shape
(50, 'grid', (64, 64, 64))
"""

from __future__ import annotations

import difflib
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .errors import GPEngineError

#: The plan format version this module reads and writes.
PLAN_VERSION = 1

#: Sampler presets: RePaint settings. ``steps`` = respaced reverse steps (≤ the model's T),
#: ``resample`` = r (re-noise/denoise repeats per jump point), ``jump`` = jump length,
#: ``tail`` = last steps without resampling. ``paper`` is GrainPaint as published (T = 250, r = 10,
#: jump 1, no resampling in the last 25 steps: 2490 network evaluations per block).
#: ``conditional`` is for conditional (outpainting) models (:mod:`gp_engine.conditional`): the network
#: sees the known voxels, so it needs no resampling to see them; RePaint's re-noise/denoise repeats
#: (on the unknown voxels only, the known ones staying clean) still make its grains much better, so the
#: preset resamples twice per step (DDPM steps, ``eta`` 1); ``"resample": 0`` gives a plain strided chain,
#: ``steps`` evaluations per block, where ``eta`` may go from 1 (DDPM) to 0 (DDIM).
SAMPLER_PRESETS: dict[str, dict[str, float]] = {
    "paper": {"steps": 250, "resample": 10, "jump": 1, "tail": 25, "eta": 1.0},
    "fast": {"steps": 50, "resample": 2, "jump": 1, "tail": 5, "eta": 1.0},
    # twice fast's steps at the same r: on v6's eight 48³ KL 0.012 / 0.331 / 0.072 against fast's
    # 0.021 / 0.420 / 0.097 for 2× the evaluations; one 100³: 0.043 / 0.372 / 0.063 against
    # 0.034 / 0.399 / 0.072 (docs/model.md, ninth session)
    "balanced": {"steps": 100, "resample": 2, "jump": 1, "tail": 10, "eta": 1.0},
    # 34 steps with two resamples each: 100 evaluations per block. On the conditional T = 500 twin (four
    # 64³, same seeds) KL 0.021 / 0.518 / 0.059 and block-face boundary density 0.186 against 0.142 inside,
    # where 50 steps with r = 1 (99) gave 0.032 / 0.521 / 0.147, 0.206 / 0.152 and 50 without (the preset
    # until the eleventh session) 0.134 / 0.618 / 0.385, 0.238 / 0.174 (docs/model.md)
    "conditional": {"steps": 34, "resample": 2, "jump": 1, "tail": 0, "eta": 1.0},
}

PLAN_KINDS = ("grid", "center")
BACKENDS = ("auto", "tensorrt", "torch-cuda", "onnxruntime")
#: ``auto``: ``levels`` for a model with the grain-separable encoding, ``dbscan`` for the paper's and
#: (with clusters under the model's segmentation_defaults.min_size refilled, 80 for older models) for analog bits.
SEGMENTATION_METHODS = ("auto", "dbscan", "levels")
OUTPUT_FORMATS = ("npy", "vti", "spparks", "png", "field", "dream3d", "damask", "abaqus", "orientations")
#: units a plan may give the voxel size in (every export states them)
LENGTH_UNITS = ("m", "mm", "µm", "um", "nm")
MAX_SEED = 2**32 - 1  # the counter-based noise hashes the seed to 32 bits

DEFAULTS: dict[str, Any] = {
    "model": None,
    "sampler": {"preset": "auto"},
    "plan": {"kind": "grid"},
    "batch_size": 8,
    "backend": "auto",
    "seed": 0,
    "segmentation": {"method": "auto", "eps": 1.9, "min_samples": 15, "value_scale": 32.0, "min_size": None,
                     "split_necks": True},
    "outputs": {"dir": "out", "formats": ["npy", "vti", "png"], "voxel_size": 1.0, "units": "µm"},
    "orientations": None,
    "reference": None,
    "checkpoint_every": 1,
}


# --------------------------------------------------------------------------- dataclasses


@dataclass(frozen=True)
class GeometryConfig:
    """What to fill: a box of ``shape`` voxels (x, y, z), or a CAD part (``stl``) voxelized at ``pitch``
    mesh units per voxel (given, or from ``size`` voxels along the longest axis), rotated by
    ``rotation`` (degrees about x, y, z), placed at ``offset`` in ``shape`` (default: the part's box)."""

    shape: tuple[int, int, int]
    stl: Path | None = None
    pitch: float | None = None
    size: int | None = None
    rotation: tuple[float, float, float] = (0.0, 0.0, 0.0)
    offset: tuple[int, int, int] | None = None
    mesh_sha256: str | None = None   # of the mesh file: a changed part never resumes an old canvas
    periodic: tuple[bool, bool, bool] = (False, False, False)
    #: voxels painted beyond each non-periodic face and cropped away; None = planner.DEFAULT_MARGIN
    margin: int | None = None

    @property
    def painted_margin(self) -> int:
        """The margin a run paints: the plan's, or :data:`gp_engine.planner.DEFAULT_MARGIN`."""
        from .planner import DEFAULT_MARGIN

        return DEFAULT_MARGIN if self.margin is None else int(self.margin)

    def to_dict(self) -> dict[str, Any]:
        if self.stl is None:
            d: dict[str, Any] = {"shape": list(self.shape), "periodic": list(self.periodic)}
        else:
            d = {"stl": str(self.stl), "rotation": list(self.rotation), "shape": list(self.shape)}
            d["pitch" if self.size is None else "size"] = self.pitch if self.size is None else self.size
            if self.offset is not None:
                d["offset"] = list(self.offset)
        if self.margin is not None:
            d["margin"] = self.margin
        return d

    def part(self, where: str = "geometry"):
        """The :class:`gp_engine.geometry.Part` of an ``stl`` geometry (None for a box)."""
        if self.stl is None:
            return None
        from .geometry import load_part

        return load_part(self.stl, self.pitch if self.size is None else None, self.size, self.rotation,
                         self.shape, self.offset, where)


@dataclass(frozen=True)
class SamplerConfig:
    """RePaint settings after applying the preset and the overrides."""

    preset: str
    steps: int
    resample: int
    jump: int
    tail: int
    clip_x0: bool = True
    eta: float = 1.0   # 1 = DDPM posterior steps (RePaint needs it), 0 = deterministic DDIM
    #: κ of the x̂0 projection tanh(κ·x̂0); None: the model's (manifest sampler_defaults.sharpen_x0, see generate.model_sharpen)
    sharpen_x0: float | None = None
    #: the fields the plan gave explicitly (an ``auto`` preset re-applies them once the model is known)
    given: tuple = field(default=(), compare=False)

    @property
    def no_resample_tail(self) -> int:
        """The JSON name of ``tail``."""
        return self.tail

    @property
    def r(self) -> int:
        """The paper's name of ``resample``."""
        return self.resample


@dataclass(frozen=True)
class SegmentationConfig:
    """How the float field is cut into grains (see :func:`gp_engine.segment.segment`)."""

    method: str
    eps: float
    min_samples: int
    value_scale: float
    min_size: int | None = None   # None: the method's default (levels 5, dbscan 1; auto for bits: the model's, generate.model_min_size)
    split_necks: bool = True      # cut grains at thin necks afterwards (gp_engine.necks)


@dataclass(frozen=True)
class OutputsConfig:
    """Where results go (absolute directory), which files to write, and the physical voxel size
    (``voxel_size`` in ``units``) that every export states."""

    dir: Path
    formats: tuple[str, ...]
    voxel_size: float = 1.0
    units: str = "µm"


@dataclass(frozen=True)
class PlanConfig:
    """A validated plan.json. Paths are absolute; ``source`` is the plan file (None for a dict)."""

    version: int
    geometry: GeometryConfig
    model: Path | None
    sampler: SamplerConfig
    plan_kind: str
    batch_size: int
    backend: str
    seed: int
    segmentation: SegmentationConfig
    outputs: OutputsConfig
    reference: tuple[Path, ...] | None
    checkpoint_every: int
    source: Path | None = None
    orientations: dict | None = None   # {"seed", "texture", "phase"}: see gp_engine.orientations

    def to_dict(self) -> dict[str, Any]:
        """The plan as plan.json would write it (absolute paths, preset expanded): for recording
        next to the outputs. ``load_plan(plan.to_dict())`` gives back an equal plan (up to ``source``)."""
        return {
            "version": self.version,
            "geometry": self.geometry.to_dict(),
            "model": None if self.model is None else str(self.model),
            # an auto preset is written as given: it is resolved against the model at run time
            "sampler": {"preset": "auto", **dict(self.sampler.given)} if self.sampler.preset == "auto" else {
                "preset": self.sampler.preset,
                "steps": self.sampler.steps,
                "resample": self.sampler.resample,
                "jump": self.sampler.jump,
                "no_resample_tail": self.sampler.tail,
                "clip_x0": self.sampler.clip_x0,
                "eta": self.sampler.eta,
                "sharpen_x0": self.sampler.sharpen_x0,
            },
            "plan": {"kind": self.plan_kind},
            "batch_size": self.batch_size,
            "backend": self.backend,
            "seed": self.seed,
            "segmentation": asdict(self.segmentation),
            "outputs": {"dir": str(self.outputs.dir), "formats": list(self.outputs.formats),
                        "voxel_size": self.outputs.voxel_size, "units": self.outputs.units},
            "orientations": self.orientations,
            "reference": None if self.reference is None else [str(p) for p in self.reference],
            "checkpoint_every": self.checkpoint_every,
        }


# --------------------------------------------------------------------------- error helpers


def _show(value: Any) -> str:
    """A value as the user wrote it in JSON (strings quoted, None as null)."""
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


def _bad(where: str, path: str, value: Any, allowed: str, example: str) -> GPEngineError:
    return GPEngineError(
        f"{where}: {path} = {_show(value)} is invalid: {allowed}. Example fix: {example}"
    )


def _check_keys(where: str, path: str, obj: Mapping[str, Any], allowed: tuple[str, ...]) -> None:
    for key in obj:
        if key not in allowed:
            full = f"{path}.{key}" if path else key
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise GPEngineError(
                f"{where}: unknown key '{full}'.{hint} Allowed keys"
                f"{' in ' + path if path else ''}: {', '.join(allowed)}"
            )


def _as_object(where: str, path: str, value: Any, example: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise _bad(where, path, value, "must be a JSON object", example)
    return value


def _as_int(where: str, path: str, value: Any, lo: int | None, hi: int | None, example: str,
            meaning: str = "") -> int:
    ok = isinstance(value, int) and not isinstance(value, bool)
    if ok and (lo is None or value >= lo) and (hi is None or value <= hi):
        return int(value)
    if lo is not None and hi is not None:
        rng = f"an integer from {lo} to {hi}"
    elif lo is not None:
        rng = f"an integer ≥ {lo}"
    else:
        rng = "an integer"
    raise _bad(where, path, value, f"must be {rng}{meaning}", example)


def _as_float(where: str, path: str, value: Any, lo_exclusive: float, hi_exclusive: float | None,
              example: str, meaning: str = "") -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and value > lo_exclusive and (hi_exclusive is None or value < hi_exclusive):
        return float(value)
    rng = (f"a finite number > {lo_exclusive:g}"
           + (f" and < {hi_exclusive:g}" if hi_exclusive is not None else ""))
    raise _bad(where, path, value, f"must be {rng}{meaning}", example)


def _as_choice(where: str, path: str, value: Any, choices: tuple[str, ...], example: str) -> str:
    if isinstance(value, str) and value in choices:
        return value
    close = difflib.get_close_matches(str(value), choices, n=1) if isinstance(value, str) else []
    hint = f" (did you mean {_show(close[0])}?)" if close else ""
    raise _bad(where, path, value, f"must be one of {', '.join(_show(c) for c in choices)}{hint}",
               example)


def _as_path(where: str, path: str, value: Any, base: Path, example: str) -> Path:
    if not isinstance(value, str) or not value.strip():
        raise _bad(where, path, value, "must be a non-empty path string", example)
    p = Path(os.path.expanduser(value))
    return p if p.is_absolute() else (base / p).resolve()


# --------------------------------------------------------------------------- sections


def _geometry(where: str, value: Any, base: Path) -> GeometryConfig:
    example = '"geometry": {"shape": [64, 64, 64]}'
    example_stl = '"geometry": {"stl": "part.stl", "size": 128}'
    obj = _as_object(where, "geometry", value, example)
    _check_keys(where, "geometry", obj, ("shape", "stl", "pitch", "size", "rotation", "offset", "periodic", "margin"))
    margin = None
    if "margin" in obj:
        margin = _as_int(where, "geometry.margin", obj["margin"], 0, 16, '"geometry": {"shape": [64, 64, 64], "margin": 2}',
                         " (voxels painted beyond each face and cropped away; 0 = none)")
    periodic = obj.get("periodic", False)
    if isinstance(periodic, bool):
        periodic = (periodic,) * 3
    elif not (isinstance(periodic, (list, tuple)) and len(periodic) == 3 and all(isinstance(b, bool) for b in periodic)):
        raise _bad(where, "geometry.periodic", periodic, "must be true, false or three booleans [x, y, z]",
                   '"geometry": {"shape": [96, 96, 96], "periodic": true}')
    periodic = tuple(periodic)
    shape = None
    if "shape" in obj:
        shape = obj["shape"]
        if not isinstance(shape, (list, tuple)) or len(shape) != 3:
            raise _bad(where, "geometry.shape", shape, "must be a list of 3 integers [nx, ny, nz]", example)
        shape = tuple(_as_int(where, f"geometry.shape[{i}]", v, 1, None, example, " (voxels)")
                      for i, v in enumerate(shape))
    if "stl" not in obj:
        for key in ("pitch", "size", "rotation", "offset"):
            if key in obj:
                raise GPEngineError(f"{where}: geometry.{key} needs geometry.stl (a CAD part). Example fix: "
                                    f"{example_stl}")
        if shape is None:
            raise GPEngineError(f"{where}: geometry.shape is missing. Example fix: {example} (or {example_stl})")
        for axis, (n, p) in enumerate(zip(shape, periodic)):
            if p and n < 32:
                raise _bad(where, f"geometry.shape[{axis}]", n, "must be at least 32 voxels on a periodic axis "
                           "(one block); cheapest at multiples of 48", '"geometry": {"shape": [96, 96, 96], "periodic": true}')
        return GeometryConfig(shape, periodic=periodic, margin=margin)  # type: ignore[arg-type]
    if any(periodic):
        raise GPEngineError(f"{where}: geometry.periodic applies to boxes, not to a CAD part (geometry.stl); "
                            "remove one of them")
    stl = _as_path(where, "geometry.stl", obj["stl"], base, example_stl)
    if ("pitch" in obj) == ("size" in obj):
        raise GPEngineError(f"{where}: geometry needs exactly one of pitch (mesh units per voxel) or size "
                            f"(voxels along the part's longest axis). Example fix: {example_stl}")
    pitch = size = None
    if "pitch" in obj:
        pitch = _as_float(where, "geometry.pitch", obj["pitch"], 0.0, None, '"geometry": {"pitch": 0.02}',
                          " (mesh units per voxel)")
    else:
        size = _as_int(where, "geometry.size", obj["size"], 1, None, example_stl,
                       " (voxels along the part's longest axis)")
    rotation = obj.get("rotation", [0, 0, 0])
    if not isinstance(rotation, (list, tuple)) or len(rotation) != 3:
        raise _bad(where, "geometry.rotation", rotation, "must be 3 angles in degrees [about x, about y, about z]",
                   '"geometry": {"rotation": [0, 90, 0]}')
    rotation = tuple(_as_float(where, f"geometry.rotation[{i}]", r, -math.inf, math.inf,
                               '"geometry": {"rotation": [0, 90, 0]}', " (degrees)") for i, r in enumerate(rotation))
    offset = obj.get("offset")
    if offset is not None:
        if shape is None:
            raise GPEngineError(f"{where}: geometry.offset places the part in geometry.shape, which is missing. "
                                'Example fix: "geometry": {"stl": "part.stl", "size": 100, "shape": [128, 128, 128], '
                                '"offset": [14, 14, 14]}')
        if not isinstance(offset, (list, tuple)) or len(offset) != 3:
            raise _bad(where, "geometry.offset", offset, "must be 3 integers (voxels)", '"offset": [0, 0, 0]')
        offset = tuple(_as_int(where, f"geometry.offset[{i}]", v, 0, None, '"offset": [0, 0, 0]', " (voxels)")
                       for i, v in enumerate(offset))
    from .geometry import load_part

    part = load_part(stl, pitch, size, rotation, shape, offset, f"{where}: geometry")
    return GeometryConfig(part.shape, stl, part.pitch, size, rotation, offset, part.sha256,  # type: ignore[arg-type]
                          margin=margin)


def _sampler(where: str, value: Any) -> SamplerConfig:
    example = '"sampler": {"preset": "paper", "resample": 10}'
    obj = _as_object(where, "sampler", value, example)
    _check_keys(where, "sampler", obj, ("preset", "steps", "resample", "jump", "no_resample_tail", "clip_x0",
                                        "eta", "sharpen_x0"))
    preset = _as_choice(where, "sampler.preset", obj.get("preset", "auto"),
                        ("auto",) + tuple(SAMPLER_PRESETS), '"sampler": {"preset": "fast"}')
    # auto: `conditional` for a conditional model, `paper` otherwise (resolve_sampler, once the model
    # is known); until then the fields read as the paper's
    s = dict(SAMPLER_PRESETS["paper" if preset == "auto" else preset])
    if "steps" in obj:
        s["steps"] = _as_int(where, "sampler.steps", obj["steps"], 2, None,
                             '"sampler": {"steps": 50}', " (respaced reverse steps, ≤ the model's T)")
    if "resample" in obj:
        s["resample"] = _as_int(where, "sampler.resample", obj["resample"], 0, None,
                                '"sampler": {"resample": 10}', " (0 = no resampling)")
    if "jump" in obj:
        s["jump"] = _as_int(where, "sampler.jump", obj["jump"], 1, None, '"sampler": {"jump": 1}')
    if "steps" in obj and "no_resample_tail" not in obj:
        # keep the preset's tail as the same fraction of the walk (paper: 25 of 250 steps)
        preset_s = SAMPLER_PRESETS["paper" if preset == "auto" else preset]
        s["tail"] = min(s["steps"] - 1, round(preset_s["tail"] * s["steps"] / preset_s["steps"]))
    if "no_resample_tail" in obj:
        s["tail"] = _as_int(where, "sampler.no_resample_tail", obj["no_resample_tail"], 0, None,
                            '"sampler": {"no_resample_tail": 25}')
    if s["tail"] > s["steps"] - 1:
        name = "no_resample_tail" if "no_resample_tail" in obj else "steps"
        raise _bad(where, f"sampler.{name}", obj[name] if name in obj else s["steps"],
                   f"no_resample_tail ({s['tail']}) must be less than steps ({s['steps']})",
                   f'"sampler": {{"steps": {s["steps"]}, "no_resample_tail": {s["steps"] // 10}}}')
    if s["jump"] > s["steps"] - 1:
        raise _bad(where, "sampler.jump", s["jump"], f"must be less than steps ({s['steps']})",
                   '"sampler": {"jump": 1}')
    clip = obj.get("clip_x0", True)
    if not isinstance(clip, bool):
        raise _bad(where, "sampler.clip_x0", clip, "must be true or false", '"sampler": {"clip_x0": true}')
    eta = obj.get("eta", s["eta"])
    if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not 0.0 <= float(eta) <= 1.0:
        raise _bad(where, "sampler.eta", eta, "must be a number from 0 (DDIM) to 1 (DDPM)", '"sampler": {"eta": 1.0}')
    if float(eta) != 1.0 and s["resample"]:
        raise _bad(where, "sampler.eta", eta, "must be 1 when RePaint resamples (its re-noising assumes DDPM steps)",
                   '"sampler": {"eta": 1.0}')
    sharpen = obj.get("sharpen_x0")
    if sharpen is not None and (isinstance(sharpen, bool) or not isinstance(sharpen, (int, float))
                                or not 0.0 <= float(sharpen) <= 100.0):
        raise _bad(where, "sampler.sharpen_x0", sharpen, "must be null (the model's default) or a number from 0 "
                   "(off: clip) to 100", '"sampler": {"sharpen_x0": 4}')
    given = tuple((k, obj[k]) for k in ("steps", "resample", "jump", "no_resample_tail", "clip_x0", "eta",
                                        "sharpen_x0") if k in obj)
    return SamplerConfig(preset, int(s["steps"]), int(s["resample"]), int(s["jump"]), int(s["tail"]), clip,
                         float(eta), None if sharpen is None else float(sharpen), given)


def resolve_sampler(sampler: SamplerConfig, model_kind: str, where: str = "plan") -> SamplerConfig:
    """The sampler a run uses: an ``auto`` preset becomes ``conditional`` for a conditional model and
    ``paper`` for an unconditional one, with the plan's own fields applied on top; any other preset
    is returned as it is (:func:`gp_engine.conditional.check_sampler_fits` then checks it fits)."""
    if sampler.preset != "auto":
        return sampler
    preset = "conditional" if model_kind == "conditional" else "paper"
    return _sampler(where, {"preset": preset, **dict(sampler.given)})


def _segmentation(where: str, value: Any) -> SegmentationConfig:
    example = '"segmentation": {"method": "dbscan", "eps": 1.9, "min_samples": 15}'
    obj = _as_object(where, "segmentation", value, example)
    _check_keys(where, "segmentation", obj, ("method", "eps", "min_samples", "value_scale", "min_size", "split_necks"))
    d = DEFAULTS["segmentation"]
    method = _as_choice(where, "segmentation.method", obj.get("method", d["method"]),
                        SEGMENTATION_METHODS, '"segmentation": {"method": "dbscan"}')
    hi = 2.0 if method in ("dbscan", "auto") else None
    eps = _as_float(where, "segmentation.eps", obj.get("eps", d["eps"]), 0.0, hi,
                    '"segmentation": {"eps": 1.9}',
                    " (the grid DBSCAN is exact only for eps < 2: 26-neighbour stencil)" if hi else "")
    min_samples = _as_int(where, "segmentation.min_samples", obj.get("min_samples", d["min_samples"]),
                          1, None, '"segmentation": {"min_samples": 15}')
    value_scale = _as_float(where, "segmentation.value_scale",
                            obj.get("value_scale", d["value_scale"]), 0.0, None,
                            '"segmentation": {"value_scale": 32.0}')
    min_size = obj.get("min_size")
    if min_size is not None:
        min_size = _as_int(where, "segmentation.min_size", min_size, 1, None, '"segmentation": {"min_size": 40}')
    split = obj.get("split_necks", d["split_necks"])
    if not isinstance(split, bool):
        raise _bad(where, "segmentation.split_necks", split, "must be true or false",
                   '"segmentation": {"split_necks": false}')
    return SegmentationConfig(method, eps, min_samples, value_scale, min_size, split)


def _outputs(where: str, value: Any, base: Path) -> OutputsConfig:
    example = '"outputs": {"dir": "out", "formats": ["npy", "vti", "png"]}'
    obj = _as_object(where, "outputs", value, example)
    _check_keys(where, "outputs", obj, ("dir", "formats", "voxel_size", "units"))
    d = DEFAULTS["outputs"]
    out_dir = _as_path(where, "outputs.dir", obj.get("dir", d["dir"]), base, '"outputs": {"dir": "out"}')
    formats = obj.get("formats", d["formats"])
    if not isinstance(formats, (list, tuple)) or not formats:
        raise _bad(where, "outputs.formats", formats,
                   f"must be a non-empty list drawn from {', '.join(_show(f) for f in OUTPUT_FORMATS)}",
                   example)
    chosen: list[str] = []
    for i, f in enumerate(formats):
        f = _as_choice(where, f"outputs.formats[{i}]", f, OUTPUT_FORMATS, example)
        if f not in chosen:
            chosen.append(f)
    voxel_size = _as_float(where, "outputs.voxel_size", obj.get("voxel_size", d["voxel_size"]), 0.0, None,
                           '"outputs": {"voxel_size": 0.5, "units": "µm"}', " (physical edge of a voxel)")
    units = _as_choice(where, "outputs.units", obj.get("units", d["units"]), LENGTH_UNITS,
                       '"outputs": {"voxel_size": 0.5, "units": "µm"}')
    return OutputsConfig(out_dir, tuple(chosen), voxel_size, units)


def _reference(where: str, value: Any, base: Path) -> tuple[Path, ...] | None:
    example = '"reference": ["potts_iso_100_seed1019.npz"]'
    if value is None:
        return None
    if not isinstance(value, (list, tuple)) or not value:
        raise _bad(where, "reference", value, "must be null or a non-empty list of volume paths",
                   example)
    return tuple(_as_path(where, f"reference[{i}]", v, base, example) for i, v in enumerate(value))


# --------------------------------------------------------------------------- entry point

TOP_KEYS = ("version", "geometry", "model", "sampler", "plan", "batch_size", "backend", "seed",
            "segmentation", "outputs", "reference", "checkpoint_every", "orientations")


def _orientations(where: str, value: Any) -> dict | None:
    """Validate ``orientations`` now (a bad texture must not wait for the end of a run)."""
    if value is None:
        return None
    obj = dict(_as_object(where, "orientations", value, '"orientations": {"seed": 7}'))
    from .orientations import orientations_from_plan

    try:
        orientations_from_plan(obj, 1, 0)
    except GPEngineError as exc:
        msg = str(exc)
        raise GPEngineError(f"{where}: {msg if msg.startswith('orientations') else 'orientations.' + msg}") from None
    return obj


def read_plan_json(path: str | os.PathLike) -> dict[str, Any]:
    """Read a plan file as a dict; malformed JSON is reported with its line and column."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise GPEngineError(f"plan file {p} not found: check the path") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise GPEngineError(f"cannot read plan file {p}: {exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise GPEngineError(
            f"{p}: malformed JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}. "
            "Check for a missing comma, a trailing comma or an unquoted key there."
        ) from None
    if not isinstance(data, dict):
        raise GPEngineError(f"{p}: the plan must be a JSON object {{...}}, got {type(data).__name__}")
    return data


def load_plan(path_or_dict: str | os.PathLike | Mapping[str, Any],
              base_dir: str | os.PathLike | None = None) -> PlanConfig:
    """Read and validate a plan (a plan.json path or an already parsed dict).

    Relative paths (model, outputs.dir, reference) are resolved against the plan file's directory,
    or against ``base_dir`` (default: the current directory) for a dict. Missing optional fields take
    the values in :data:`DEFAULTS`. Raises GPEngineError naming the JSON path of the first bad field.
    """
    if isinstance(path_or_dict, Mapping):
        data, source = path_or_dict, None
        base = Path(base_dir) if base_dir is not None else Path.cwd()
        where = "plan"
    else:
        source = Path(path_or_dict).resolve()
        data = read_plan_json(source)
        base = Path(base_dir) if base_dir is not None else source.parent
        where = str(path_or_dict)
    base = base.resolve()

    _check_keys(where, "", data, TOP_KEYS)
    if "version" not in data:
        raise GPEngineError(f'{where}: "version" is missing. Example fix: "version": {PLAN_VERSION}')
    version = data["version"]
    if not (isinstance(version, int) and not isinstance(version, bool)) or version != PLAN_VERSION:
        raise _bad(where, "version", version,
                   f"this gp-engine reads plan version {PLAN_VERSION} only", f'"version": {PLAN_VERSION}')
    if "geometry" not in data:
        raise GPEngineError(f'{where}: "geometry" is missing. Example fix: '
                            '"geometry": {"shape": [64, 64, 64]}')

    geometry = _geometry(where, data["geometry"], base)
    model_val = data.get("model", DEFAULTS["model"])
    model = None if model_val is None else _as_path(
        where, "model", model_val, base, '"model": "models/my-model" (or null for the shipped default)')
    sampler = _sampler(where, data.get("sampler", DEFAULTS["sampler"]))
    plan_obj = _as_object(where, "plan", data.get("plan", DEFAULTS["plan"]), '"plan": {"kind": "grid"}')
    _check_keys(where, "plan", plan_obj, ("kind",))
    plan_kind = _as_choice(where, "plan.kind", plan_obj.get("kind", "grid"), PLAN_KINDS,
                           '"plan": {"kind": "grid"}')
    if any(geometry.periodic) and plan_kind != "grid":
        raise _bad(where, "plan.kind", plan_kind, "a periodic geometry is planned on the grid only",
                   '"plan": {"kind": "grid"}')
    batch_size = _as_int(where, "batch_size", data.get("batch_size", DEFAULTS["batch_size"]), 1, None,
                         '"batch_size": 8', " (blocks per network call)")
    backend = _as_choice(where, "backend", data.get("backend", DEFAULTS["backend"]), BACKENDS,
                         '"backend": "auto"')
    seed = _as_int(where, "seed", data.get("seed", DEFAULTS["seed"]), 0, MAX_SEED, '"seed": 0')
    segmentation = _segmentation(where, data.get("segmentation", DEFAULTS["segmentation"]))
    outputs = _outputs(where, data.get("outputs", DEFAULTS["outputs"]), base)
    reference = _reference(where, data.get("reference", DEFAULTS["reference"]), base)
    checkpoint_every = _as_int(where, "checkpoint_every",
                               data.get("checkpoint_every", DEFAULTS["checkpoint_every"]), 0, None,
                               '"checkpoint_every": 1', " (batches between checkpoints; 0 = never)")
    orientations = _orientations(where, data.get("orientations", DEFAULTS["orientations"]))
    return PlanConfig(PLAN_VERSION, geometry, model, sampler, plan_kind, batch_size, backend, seed,
                      segmentation, outputs, reference, checkpoint_every, source, orientations)

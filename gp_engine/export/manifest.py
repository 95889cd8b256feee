"""The manifest of a built model directory: what the runtime needs to run ``model.onnx``.

A built model directory holds ``manifest.json``, ``model.onnx``, optionally ``model.pt`` (the EMA
checkpoint, for the torch-CUDA backend) and ``model_b{B}.plan`` TensorRT engines. This module is plain
Python + json (no torch, no onnx): generation on CPU reads manifests with onnxruntime only.

manifest.json keys (format_version 1)::

    format          "gp-engine-model"
    format_version  1
    name            free text (e.g. "tiny-separable12-cpu-placeholder")
    block_size      32
    schedule        Schedule.to_dict(): {"kind": "linear", "T", "beta_start", "beta_end"}
    prediction      "eps": what the ONNX graph outputs (always ε; the samplers rely on it)
    target          what the network was trained to predict: "eps" | "x0" | "v" (converted to ε inside
                    the graph); absent in older manifests = "eps"
    objective       {"loss", "weighting", "gamma", "crop"} of training (informational)
    encoding        {"kind": "separable"|"paper"|"bits", "levels": K or null, "bits": B (bits only),
                     "colouring": "dsatur"|"spread" (how the training data's grains were coloured;
                     informational, absent in older manifests = "dsatur")}
    onnx            {"file": "model.onnx", "opset": int, "dynamic_batch": bool, "sha256": hex,
                     "inputs": {"x": {"shape": [B, 1, 32, 32, 32], "dtype": "float32"},
                                "t": {"shape": [B], "dtype": "float32"}},   # B = "batch" if dynamic
                     "output": "eps"}
    batch_sizes     [int, ...]
    precision       "fp32" | "fp16"   (the ONNX graph's compute precision; I/O is always float32)
    tensorrt        null or {"plans": {"<B>": "model_b<B>.plan"}, "precision": ...}
    checkpoint      "model.pt" or null
    checkpoint_sha256  hex sha256 of the checkpoint file (absent in older manifests)
    unet            the U-Net config dict (informational)
    sampler_defaults  {"sharpen_x0": κ}: the x̂0 sharpening a plan gets unless it names one (absent in
                    older manifests: derived from encoding and schedule, generate.model_sharpen)
    segmentation_defaults  {"min_size": N}: analog-bits models only; the clusters under N voxels that
                    ``auto`` segmentation refills unless a plan names ``segmentation.min_size`` (absent in
                    older manifests: 80, generate.model_min_size)
    training        {"train_files", "val_files", "steps", "samples_seen", "wall_time_s", "device",
                     "final_train_loss", "final_val_loss", ...}
    placeholder     bool: true for a CPU-trained stand-in model

Integrity: every file name in a manifest (``onnx.file``, ``checkpoint``, the TensorRT plans) must be a
plain relative path that stays inside the model folder (no absolute paths, no ``..``, no symlink out of
the folder); :func:`read_manifest` checks that and the ONNX file's sha256, and the torch backend checks
``checkpoint_sha256`` (:func:`verify_model_file`) before loading the checkpoint. Hashes are cached per
(file, size, mtime), so repeated loads in one process read each file once.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path, PurePosixPath, PureWindowsPath

from ..atomic_write import atomic_open
from ..errors import GPEngineError

FORMAT = "gp-engine-model"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent.parent / "models" / "default"

_REQUIRED = ("format", "format_version", "block_size", "schedule", "prediction", "encoding", "onnx",
             "batch_sizes", "precision")


def resolve_model(path: str | os.PathLike | None = None) -> Path:
    """Built model directory for ``path``: None -> the shipped default; a manifest.json -> its folder.

    Raises GPEngineError when there is no manifest there (e.g. a trainer checkpoint was given).
    """
    if path is None:
        model_dir = DEFAULT_MODEL_DIR
    else:
        p = Path(path).expanduser()
        if p.is_file() and p.name == MANIFEST_NAME:
            model_dir = p.parent
        elif p.is_file() and p.suffix == ".pt":
            raise GPEngineError(f"{p} is a trainer checkpoint, not a built model; run "
                                f"'gp-engine build {p} --out DIR' and pass DIR")
        elif p.is_dir():
            model_dir = p
        else:
            raise GPEngineError(f"model {p} does not exist; give a directory made by 'gp-engine build' "
                                "(or omit it for the shipped default model)")
    if not (model_dir / MANIFEST_NAME).is_file():
        raise GPEngineError(f"{model_dir} has no {MANIFEST_NAME}; build a model into it with "
                            "'gp-engine build model.pt --out DIR'")
    return model_dir


def validate_manifest(m: dict, where: str = "manifest") -> dict:
    """Check the fields the runtime relies on; return ``m`` unchanged or raise GPEngineError."""
    if not isinstance(m, dict):
        raise GPEngineError(f"{where} must be a JSON object, got {type(m).__name__}")
    if m.get("format") != FORMAT:
        raise GPEngineError(f"{where} is not a gp-engine model manifest (format={m.get('format')!r}, "
                            f"expected {FORMAT!r}); rebuild it with 'gp-engine build'")
    missing = [k for k in _REQUIRED if k not in m]
    if missing:
        raise GPEngineError(f"{where} lacks the field(s) {', '.join(missing)}; rebuild it with 'gp-engine build'")
    v = m["format_version"]
    if not isinstance(v, int) or v < 1:
        raise GPEngineError(f"{where}: format_version {v!r} is invalid (expected an integer >= 1)")
    if v > FORMAT_VERSION:
        raise GPEngineError(f"{where} has format_version {v}, newer than this gp-engine supports "
                            f"({FORMAT_VERSION}); upgrade gp-engine")
    if m["block_size"] != 32:
        raise GPEngineError(f"{where}: block_size {m['block_size']!r} is not supported (only 32)")
    if m["prediction"] != "eps":
        raise GPEngineError(f"{where}: prediction {m['prediction']!r} is not supported (only 'eps')")
    if m.get("target", "eps") not in ("eps", "x0", "v"):
        raise GPEngineError(f"{where}: target {m.get('target')!r} is unknown (eps, x0, v); upgrade gp-engine")
    enc = m["encoding"]
    if not isinstance(enc, dict) or enc.get("kind") not in ("separable", "paper", "bits"):
        raise GPEngineError(f"{where}: encoding {enc!r} must be {{'kind': 'separable'|'bits'|'paper', 'levels': K}}")
    if enc["kind"] == "bits":
        b = enc.get("bits")
        if not (isinstance(b, int) and 1 <= b <= 8 and enc.get("levels") == 1 << b):
            raise GPEngineError(f"{where}: bits encoding needs an integer 'bits' in 1..8 and 'levels' = 2^bits, "
                                f"got {enc!r}")
    from ..encoding import COLOURINGS

    if enc.get("colouring", "dsatur") not in COLOURINGS:
        raise GPEngineError(f"{where}: encoding colouring {enc.get('colouring')!r} is unknown "
                            f"({', '.join(COLOURINGS)}); upgrade gp-engine")
    if enc["kind"] == "separable" and not (isinstance(enc.get("levels"), int) and enc["levels"] >= 2):
        raise GPEngineError(f"{where}: separable encoding needs an integer 'levels' >= 2, got {enc.get('levels')!r}")
    from ..conditional import KINDS

    kind = m.get("model_kind", "unconditional")
    if kind not in KINDS:
        raise GPEngineError(f"{where}: model_kind {kind!r} is unknown ({', '.join(KINDS)}); upgrade gp-engine")
    cc = int(((m.get("unet") or {}).get("cond_channels") or 0))
    if (kind == "conditional") != (cc > 0):
        raise GPEngineError(f"{where}: model_kind {kind!r} disagrees with unet.cond_channels = {cc}; "
                            "rebuild the model with 'gp-engine build'")
    sched = m["schedule"]
    if not isinstance(sched, dict) or not {"T", "beta_start", "beta_end"} <= set(sched):
        raise GPEngineError(f"{where}: schedule {sched!r} needs T, beta_start, beta_end")
    onnx = m["onnx"]
    if not isinstance(onnx, dict) or not isinstance(onnx.get("file"), str):
        raise GPEngineError(f"{where}: onnx must be an object with a 'file' name")
    for field, value in _file_fields(m):
        check_file_name(value, field, where)
    for field, value in (("onnx.sha256", onnx.get("sha256")), ("checkpoint_sha256", m.get("checkpoint_sha256"))):
        if value is not None and not _is_sha256(value):
            raise GPEngineError(f"{where}: {field} {value!r} is not a hex sha256; rebuild the model with 'gp-engine build'")
    bs = m["batch_sizes"]
    if not (isinstance(bs, list) and bs and all(isinstance(b, int) and b >= 1 for b in bs)):
        raise GPEngineError(f"{where}: batch_sizes {bs!r} must be a non-empty list of positive integers")
    if m["precision"] not in ("fp32", "fp16"):
        raise GPEngineError(f"{where}: precision {m['precision']!r} must be 'fp32' or 'fp16'")
    sd = m.get("sampler_defaults")
    k = (sd or {}).get("sharpen_x0") if isinstance(sd, dict) else "not an object"
    if sd is not None and k is not None and (isinstance(k, bool) or not isinstance(k, (int, float))
                                             or not 0.0 <= float(k) <= 100.0):
        raise GPEngineError(f"{where}: sampler_defaults.sharpen_x0 {k!r} must be a number from 0 to 100; "
                            "rebuild the model with 'gp-engine build --sharpen-x0 K'")
    sg = m.get("segmentation_defaults")
    ms = (sg or {}).get("min_size") if isinstance(sg, dict) else "not an object"
    if sg is not None and ms is not None and (isinstance(ms, bool) or not isinstance(ms, int) or ms < 1):
        raise GPEngineError(f"{where}: segmentation_defaults.min_size {ms!r} must be a whole number ≥ 1 of voxels; "
                            "rebuild the model with 'gp-engine build --min-size N'")
    trt = m.get("tensorrt")
    if trt is not None and not (isinstance(trt, dict) and isinstance(trt.get("plans"), dict)):
        raise GPEngineError(f"{where}: tensorrt must be null or {{'plans': {{'<B>': file}}}}")
    for b, plan in ((trt or {}).get("plans") or {}).items():
        check_file_name(plan, f"tensorrt.plans[{b!r}]", where)
    return m


def _file_fields(m: dict) -> list[tuple[str, object]]:
    """(field, value) of the manifest's file names other than the plans (checked after ``tensorrt``)."""
    fields = [("onnx.file", m["onnx"].get("file"))]
    if m.get("checkpoint") is not None:
        fields.append(("checkpoint", m["checkpoint"]))
    return fields


def _is_sha256(value) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value.lower())


def check_file_name(name, field: str, where: str = "manifest") -> str:
    """``name`` if it is a plain relative path inside the model folder, else GPEngineError.

    Refused: non-strings, empty names, absolute paths (POSIX or Windows, drive letters included) and
    any ``..`` component. Symlinks are checked against the folder by :func:`model_file`.
    """
    if not isinstance(name, str) or not name.strip() or "\x00" in name:
        raise GPEngineError(f"{where}: {field} must be a file name, got {name!r}; rebuild the model with "
                            "'gp-engine build'")
    posix, win = PurePosixPath(name), PureWindowsPath(name)
    if posix.is_absolute() or win.is_absolute() or win.drive or win.root or ".." in posix.parts \
            or ".." in win.parts or posix.name in ("", "."):
        raise GPEngineError(f"{where}: {field} {name!r} is not a file inside the model folder (absolute paths "
                            "and '..' are not allowed); rebuild the model with 'gp-engine build' or fix the "
                            "manifest")
    return name


def model_file(model_dir: str | os.PathLike, name: str, field: str = "file", where: str = "manifest") -> Path:
    """``model_dir / name`` after checking that it stays inside ``model_dir`` (symlinks resolved)."""
    check_file_name(name, field, where)
    d = Path(model_dir)
    path = d / name
    real, root = path.resolve(), d.resolve()
    if real != root and root not in real.parents:
        raise GPEngineError(f"{where}: {field} {name} resolves to {real}, outside the model folder {d}; "
                            "copy the file into the folder (no links out of it) or rebuild the model")
    return path


def verify_model_file(model_dir: str | os.PathLike, manifest: dict, which: str = "onnx",
                      where: str | None = None) -> Path:
    """Path of the model's ``"onnx"`` or ``"checkpoint"`` file, checked against the manifest.

    GPEngineError when the manifest names no such file, the name leaves the folder, the file is
    missing, or its sha256 differs from the one recorded (``onnx.sha256`` / ``checkpoint_sha256``;
    not checked when the manifest records none, as older manifests do).
    """
    d = Path(model_dir)
    where = where or str(d / MANIFEST_NAME)
    if which == "onnx":
        onnx = manifest.get("onnx") or {}
        name, field, expected = onnx.get("file"), "onnx.file", onnx.get("sha256")
    elif which == "checkpoint":
        name, field, expected = manifest.get("checkpoint"), "checkpoint", manifest.get("checkpoint_sha256")
        if not name:
            raise GPEngineError(f"{where} names no torch checkpoint; use --backend onnxruntime or rebuild "
                                "the model with its checkpoint")
    else:
        raise ValueError(f"which must be 'onnx' or 'checkpoint', got {which!r}")
    path = model_file(d, name, field, where)
    if not path.is_file():
        raise GPEngineError(f"{where} names {name} but {path} is missing; rebuild the model with 'gp-engine build' "
                            "or copy the whole model folder again")
    if expected is not None and cached_sha256(path) != str(expected).lower():
        raise GPEngineError(f"{path} does not match the sha256 recorded in {where} (the file is corrupt or was "
                            "replaced); rebuild the model with 'gp-engine build' or copy the model folder again")
    return path


def read_manifest(model_dir: str | os.PathLike | None = None) -> dict:
    """Read and validate ``<model_dir>/manifest.json`` (None = the shipped default model)."""
    d = resolve_model(model_dir)
    path = d / MANIFEST_NAME
    try:
        m = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise GPEngineError(f"{path} is not valid JSON ({exc}); rebuild the model with 'gp-engine build'") from None
    except OSError as exc:
        raise GPEngineError(f"cannot read {path}: {exc}") from None
    validate_manifest(m, str(path))
    for field, name in _file_fields(m) + [(f"tensorrt.plans[{b!r}]", f) for b, f in
                                          ((m.get("tensorrt") or {}).get("plans") or {}).items()]:
        model_file(d, name, field, str(path))
    verify_model_file(d, m, "onnx", str(path))
    return m


def write_manifest(model_dir: str | os.PathLike, manifest: dict) -> Path:
    """Validate and atomically write ``<model_dir>/manifest.json``."""
    validate_manifest(manifest, "manifest to write")
    d = Path(model_dir)
    d.mkdir(parents=True, exist_ok=True)
    path = d / MANIFEST_NAME
    with atomic_open(path, "w") as f:
        json.dump(manifest, f, indent=2, sort_keys=False)
        f.write("\n")
    return path


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file (the manifest records the ONNX file's, to detect a mismatched copy)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


_SHA_CACHE: dict[tuple, str] = {}


def cached_sha256(path: str | os.PathLike) -> str:
    """:func:`sha256_file`, remembered per (real path, device, inode, size, mtime) for this process."""
    real = os.path.realpath(path)
    st = os.stat(real)
    key = (real, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        if len(_SHA_CACHE) > 256:
            _SHA_CACHE.clear()
        _SHA_CACHE[key] = sha256_file(real)
    return _SHA_CACHE[key]


__all__ = ["FORMAT", "FORMAT_VERSION", "MANIFEST_NAME", "DEFAULT_MODEL_DIR", "resolve_model",
           "validate_manifest", "read_manifest", "write_manifest", "sha256_file", "cached_sha256",
           "check_file_name", "model_file", "verify_model_file"]

"""Crystallographic orientations of grains: uniform on SO(3) or sampled from a user's texture.

Conventions (the ones DREAM.3D, DAMASK, MTEX and EBSD vendors use, Rowenhorst et al. 2015, P = -1):

- **Bunge Euler angles** ``(φ1, Φ, φ2)``, ZXZ: rotate about Z by φ1, then about the *new* X by Φ,
  then about the *new* Z by φ2 (intrinsic rotations; scipy's ``Rotation.from_euler("ZXZ", ...)``,
  uppercase = intrinsic). Returned in radians with φ1, φ2 in [0, 2π) and Φ in [0, π].
- **Quaternions** ``(w, x, y, z)``, scalar first, unit norm, ``w >= 0``. They equal scipy's quaternion of
  the same Euler angles (reordered scalar-first) and DAMASK's ``Rotation.from_Euler_angles(...)``.
- **Matrices**: :func:`quat_to_matrix` / :func:`euler_to_matrix` return ``R`` mapping **crystal → sample**
  coordinates (``v_sample = R @ v_crystal``; the columns of ``R`` are the crystal axes written in the sample
  frame; ``R == scipy.spatial.transform.Rotation.from_euler("ZXZ", euler).as_matrix()``). Bunge's
  orientation matrix ``g`` (sample → crystal, ``v_crystal = g @ v_sample``) is ``R.T``.

Sampling:

- default: uniformly random on SO(3) (Shoemake's random unit quaternion), a pure function of
  ``(seed, grain number)``: the same seed gives the same orientation to the same grain id, and grain ``i``
  keeps its orientation when more grains are added (the draws are a prefix of one stream).
- ``texture``: a user list of orientations (Bunge Euler angles, ``units="degrees"`` or ``"radians"``
  required), optional positive ``weights`` (relative; default equal) and optional ``phases`` (a phase id
  >= 1 per listed orientation, default 1). Each grain gets one listed orientation, drawn with
  probability proportional to its weight, and that orientation's phase.

Errors a user can cause raise :class:`gp_engine.errors.GPEngineError` with a one-line message naming
the field (``texture.weights[2]``, ...).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from .errors import GPEngineError

TWO_PI = 2.0 * np.pi
ANGLE_UNITS = ("degrees", "radians")
#: tags of the two random streams derived from a seed (orientations, texture choices); a constant
#: second word keeps these streams apart from other uses of the same seed in gp-engine
_STREAM_UNIFORM = 0x0A1E_0001
_STREAM_CHOICE = 0x0A1E_0002


# ----------------------------------------------------------------------------- conversions


def _as_rows(a, width: int, what: str) -> np.ndarray:
    arr = np.asarray(a, dtype=np.float64)
    if arr.ndim == 1 and arr.shape[0] == width:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] != width:
        raise GPEngineError(f"{what} must have shape [n, {width}], got {list(np.shape(a))}")
    return arr


def canonical_quat(q) -> np.ndarray:
    """Unit quaternions ``[n, 4]`` (w, x, y, z) with ``w >= 0`` (``q`` and ``-q`` are one rotation)."""
    q = _as_rows(q, 4, "quaternions")
    norm = np.linalg.norm(q, axis=1, keepdims=True)
    if not np.all(np.isfinite(q)) or np.any(norm == 0):
        raise GPEngineError("quaternions must be finite and non-zero")
    q = q / norm
    return np.where(q[:, :1] < 0, -q, q)


def euler_to_quat(euler) -> np.ndarray:
    """Bunge Euler angles ``[n, 3]`` (radians) -> unit quaternions ``[n, 4]`` (w, x, y, z), ``w >= 0``.

    q = (cos(Φ/2) cos σ, sin(Φ/2) cos δ, sin(Φ/2) sin δ, cos(Φ/2) sin σ), σ = (φ1 + φ2)/2,
    δ = (φ1 − φ2)/2 (Rowenhorst et al. 2015, eq. A.5 with P = −1).
    """
    e = _as_rows(euler, 3, "Euler angles")
    sigma = 0.5 * (e[:, 0] + e[:, 2])
    delta = 0.5 * (e[:, 0] - e[:, 2])
    c, s = np.cos(0.5 * e[:, 1]), np.sin(0.5 * e[:, 1])
    q = np.stack([c * np.cos(sigma), s * np.cos(delta), s * np.sin(delta), c * np.sin(sigma)], axis=1)
    return np.where(q[:, :1] < 0, -q, q)


def quat_to_euler(q) -> np.ndarray:
    """Unit quaternions ``[n, 4]`` (w, x, y, z) -> Bunge Euler angles ``[n, 3]`` in radians.

    φ1, φ2 in [0, 2π), Φ in [0, π]. At the gimbal-lock poles (Φ = 0 or π) only φ1 ± φ2 is defined:
    φ2 = 0 is returned there.
    """
    q = canonical_quat(q)
    w, x, y, z = q.T
    q03 = np.hypot(w, z)  # |cos(Φ/2)|
    q12 = np.hypot(x, y)  # |sin(Φ/2)|
    Phi = 2.0 * np.arctan2(q12, q03)
    sigma = np.arctan2(z, w)  # (φ1 + φ2)/2
    delta = np.arctan2(y, x)  # (φ1 − φ2)/2
    phi1, phi2 = sigma + delta, sigma - delta
    eps = 1e-12
    pole0 = q12 < eps  # Φ = 0: only φ1 + φ2 = 2σ is defined
    poleπ = q03 < eps  # Φ = π: only φ1 − φ2 = 2δ is defined
    phi1 = np.where(pole0, 2.0 * sigma, np.where(poleπ, 2.0 * delta, phi1))
    phi2 = np.where(pole0 | poleπ, 0.0, phi2)
    out = np.stack([np.mod(phi1, TWO_PI), Phi, np.mod(phi2, TWO_PI)], axis=1)
    out[:, [0, 2]] = np.where(out[:, [0, 2]] >= TWO_PI, 0.0, out[:, [0, 2]])  # mod can round up to 2π
    return out


def quat_to_matrix(q) -> np.ndarray:
    """Unit quaternions ``[n, 4]`` -> rotation matrices ``[n, 3, 3]`` mapping **crystal → sample**.

    ``v_sample = R @ v_crystal``; Bunge's orientation matrix g (sample → crystal) is ``R.T``.
    """
    w, x, y, z = canonical_quat(q).T
    return np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], axis=-1),
        np.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], axis=-1),
        np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], axis=-1),
    ], axis=1)


def euler_to_matrix(euler) -> np.ndarray:
    """Bunge Euler angles ``[n, 3]`` (radians) -> ``[n, 3, 3]`` crystal → sample matrices (see module doc)."""
    return quat_to_matrix(euler_to_quat(euler))


def rotation_angle(q) -> np.ndarray:
    """Rotation angle ω in [0, π] of unit quaternions ``[n, 4]``."""
    w = np.abs(canonical_quat(q)[:, 0])
    return 2.0 * np.arccos(np.clip(w, 0.0, 1.0))


# ----------------------------------------------------------------------------- textures


@dataclass(frozen=True)
class Texture:
    """A validated list of orientations to sample grains from (see :func:`make_texture`)."""

    euler: np.ndarray  # [m, 3] Bunge radians, φ1, φ2 wrapped to [0, 2π)
    weights: np.ndarray  # [m] float64, sums to 1
    phases: np.ndarray  # [m] int32 >= 1

    @property
    def quats(self) -> np.ndarray:
        return euler_to_quat(self.euler)


def _finite_array(value, what: str) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise GPEngineError(f"{what} must be numbers, got {value!r}"[:300]) from None
    bad = np.argwhere(~np.isfinite(arr))
    if bad.size:
        idx = ",".join(str(int(i)) for i in bad[0])
        raise GPEngineError(f"{what}[{idx}] is {arr[tuple(bad[0])]}: every value must be a finite number")
    return arr


def make_texture(orientations, units: str, weights=None, phases=None, *, field: str = "texture") -> Texture:
    """Validate a user's orientation list.

    ``orientations``: Bunge Euler angles ``[m, 3]`` (φ1, Φ, φ2); ``units``: ``"degrees"`` or ``"radians"``
    (required: no guessing); ``weights``: ``m`` positive numbers (relative, default all equal);
    ``phases``: ``m`` phase ids >= 1 (default 1). ``field`` names the input in error messages.
    """
    if units not in ANGLE_UNITS:
        raise GPEngineError(f"{field}.units must be \"degrees\" or \"radians\" (say which the angles are in), "
                            f"got {units!r}")
    e = _finite_array(orientations, f"{field}.orientations")
    if e.ndim == 1 and e.shape[0] == 3:
        e = e[None, :]
    if e.ndim != 2 or e.shape[1] != 3 or e.shape[0] == 0:
        raise GPEngineError(f"{field}.orientations must be a non-empty list of [phi1, Phi, phi2] triples "
                            f"(Bunge Euler angles), got shape {list(e.shape)}")
    if units == "degrees":
        e = np.deg2rad(e)
    m = e.shape[0]
    tol = 1e-9
    bad = np.flatnonzero((e[:, 1] < -tol) | (e[:, 1] > np.pi + tol))
    if bad.size:
        i = int(bad[0])
        shown = np.rad2deg(e[i, 1]) if units == "degrees" else e[i, 1]
        rng = "[0, 180] degrees" if units == "degrees" else "[0, pi] radians"
        raise GPEngineError(f"{field}.orientations[{i}]: Phi = {shown:g} is outside {rng} "
                            "(Bunge convention: Phi is the angle about the rotated X axis)")
    e = np.stack([np.mod(e[:, 0], TWO_PI), np.clip(e[:, 1], 0.0, np.pi), np.mod(e[:, 2], TWO_PI)], axis=1)
    e[:, [0, 2]] = np.where(e[:, [0, 2]] >= TWO_PI, 0.0, e[:, [0, 2]])

    if weights is None:
        w = np.full(m, 1.0 / m)
    else:
        w = _finite_array(weights, f"{field}.weights")
        if w.shape != (m,):
            raise GPEngineError(f"{field}.weights must have one number per orientation ({m}), "
                                f"got shape {list(w.shape)}")
        bad = np.flatnonzero(w <= 0)
        if bad.size:
            raise GPEngineError(f"{field}.weights[{int(bad[0])}] = {w[bad[0]]:g}: weights must be positive "
                                "(leave an orientation out instead of giving it weight 0)")
        w = w / w.sum()

    if phases is None:
        p = np.ones(m, dtype=np.int32)
    else:
        pa = _finite_array(phases, f"{field}.phases")
        if pa.shape != (m,):
            raise GPEngineError(f"{field}.phases must have one phase id per orientation ({m}), "
                                f"got shape {list(pa.shape)}")
        bad = np.flatnonzero((pa != np.round(pa)) | (pa < 1) | (pa > np.iinfo(np.int32).max))
        if bad.size:
            raise GPEngineError(f"{field}.phases[{int(bad[0])}] = {pa[bad[0]]:g}: phase ids must be integers >= 1")
        p = pa.astype(np.int32)
    return Texture(euler=e, weights=w, phases=p)


def texture_from_dict(spec: Mapping, field: str = "texture") -> Texture:
    """A :class:`Texture` from a plan-style mapping.

    Keys: ``orientations`` (or ``euler``) ``[[phi1, Phi, phi2], ...]``, ``units`` (required),
    optional ``weights`` and ``phases``. Unknown keys are refused (a typo must not be ignored).
    """
    if not isinstance(spec, Mapping):
        raise GPEngineError(f"{field} must be an object with orientations, units, weights, phases; "
                            f"got {type(spec).__name__}")
    known = {"orientations", "euler", "units", "weights", "phases"}
    unknown = sorted(set(spec) - known)
    if unknown:
        raise GPEngineError(f"{field}: unknown key(s) {unknown}; expected {sorted(known)}")
    if ("orientations" in spec) == ("euler" in spec):
        raise GPEngineError(f"{field}.orientations is required (a list of [phi1, Phi, phi2] Bunge Euler angles)")
    if "units" not in spec:
        raise GPEngineError(f"{field}.units is required: \"degrees\" or \"radians\"")
    return make_texture(spec.get("orientations", spec.get("euler")), spec["units"],
                        spec.get("weights"), spec.get("phases"), field=field)


# ----------------------------------------------------------------------------- sampling


def _check_seed(seed) -> int:
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise GPEngineError(f"orientation seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def uniform_quats(n: int, seed: int) -> np.ndarray:
    """``n`` uniformly random rotations (Shoemake 1992), ``[n, 4]`` (w, x, y, z), ``w >= 0``.

    Row ``i`` depends only on ``(seed, i)``: ``uniform_quats(m, s)`` is a prefix of ``uniform_quats(n, s)``.
    """
    rng = np.random.default_rng([_check_seed(seed), _STREAM_UNIFORM])
    u1, u2, u3 = rng.random((int(n), 3)).T
    a, b = np.sqrt(1.0 - u1), np.sqrt(u1)
    t2, t3 = TWO_PI * u2, TWO_PI * u3
    q = np.stack([b * np.cos(t3), a * np.sin(t2), a * np.cos(t2), b * np.sin(t3)], axis=1)
    return np.where(q[:, :1] < 0, -q, q)


def assign_orientations(n_grains: int, seed: int, texture: Texture | Mapping | None = None,
                        phase: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Orientations for grains ``1..n_grains`` (row ``i`` is grain ``i + 1``).

    Returns ``(quaternions [n, 4] (w, x, y, z), w >= 0; euler_bunge_radians [n, 3]; phases [n] int32)``.
    ``texture=None``: uniform on SO(3), every grain in phase ``phase``; otherwise a :class:`Texture` or a
    mapping for :func:`texture_from_dict`. Deterministic in ``(n_grains, seed, texture)``, and grain ``i``'s
    draw does not depend on ``n_grains``.
    """
    if isinstance(n_grains, (bool, np.bool_)) or not isinstance(n_grains, (int, np.integer)) or n_grains < 0:
        raise GPEngineError(f"number of grains must be a non-negative integer, got {n_grains!r}")
    n = int(n_grains)
    seed = _check_seed(seed)
    if texture is None:
        if isinstance(phase, (bool, np.bool_)) or not isinstance(phase, (int, np.integer)) or phase < 1:
            raise GPEngineError(f"phase must be an integer >= 1, got {phase!r}")
        q = uniform_quats(n, seed)
        return q, quat_to_euler(q), np.full(n, int(phase), dtype=np.int32)
    tex = texture if isinstance(texture, Texture) else texture_from_dict(texture)
    rng = np.random.default_rng([seed, _STREAM_CHOICE])
    cdf = np.cumsum(tex.weights)
    cdf[-1] = 1.0
    pick = np.minimum(np.searchsorted(cdf, rng.random(n), side="right"), len(cdf) - 1)
    euler = tex.euler[pick]
    return euler_to_quat(euler), euler, tex.phases[pick].copy()


def orientations_from_plan(spec: Mapping | None, n_grains: int, default_seed: int):
    """Plan helper: ``spec`` is ``None`` or ``{"seed": int, "texture": {...}, "phase": int}`` (all optional)."""
    spec = dict(spec or {})
    unknown = sorted(set(spec) - {"seed", "texture", "phase"})
    if unknown:
        raise GPEngineError(f"orientations: unknown key(s) {unknown}; expected seed, texture, phase")
    return assign_orientations(n_grains, spec.get("seed", default_seed), spec.get("texture"),
                               spec.get("phase", 1))


def as_quats_and_euler(orientations) -> tuple[np.ndarray, np.ndarray]:
    """Accept ``[n, 4]`` quaternions (w, x, y, z) or ``[n, 3]`` Bunge Euler radians; return both."""
    arr = np.asarray(orientations, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] not in (3, 4):
        raise GPEngineError("orientations must be [n, 4] quaternions (w, x, y, z) or [n, 3] Bunge Euler "
                            f"angles in radians, got shape {list(arr.shape)}")
    if not np.all(np.isfinite(arr)):
        raise GPEngineError("orientations must be finite numbers")
    if arr.shape[1] == 4:
        q = canonical_quat(arr) if len(arr) else arr.reshape(0, 4)
        return q, quat_to_euler(q) if len(q) else np.zeros((0, 3))
    if len(arr) and ((arr[:, 1] < -1e-9).any() or (arr[:, 1] > np.pi + 1e-9).any()):
        raise GPEngineError("orientations: Phi (second Euler angle) must be in [0, pi] radians")
    return (euler_to_quat(arr) if len(arr) else np.zeros((0, 4))), arr


__all__ = [
    "ANGLE_UNITS", "Texture", "make_texture", "texture_from_dict", "assign_orientations",
    "orientations_from_plan", "uniform_quats", "euler_to_quat", "quat_to_euler", "quat_to_matrix",
    "euler_to_matrix", "rotation_angle", "canonical_quat", "as_quats_and_euler",
]

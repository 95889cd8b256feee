"""Grain orientations: uniform on SO(3), user textures, conversions checked against readers we did not write."""

import numpy as np
import pytest
from scipy import stats
from scipy.spatial.transform import Rotation

from gp_engine.errors import GPEngineError
from gp_engine.orientations import (
    assign_orientations,
    euler_to_matrix,
    euler_to_quat,
    make_texture,
    quat_to_euler,
    quat_to_matrix,
    rotation_angle,
    texture_from_dict,
)


def _scipy_wxyz(euler):
    q = Rotation.from_euler("ZXZ", euler).as_quat()  # x, y, z, w; uppercase = intrinsic (Bunge)
    q = np.c_[q[:, 3], q[:, :3]]
    return q * np.where(q[:, :1] < 0, -1.0, 1.0)


def _random_euler(n, seed=0):
    rng = np.random.default_rng(seed)
    return np.stack([rng.uniform(0, 2 * np.pi, n), np.arccos(rng.uniform(-1, 1, n)),
                     rng.uniform(0, 2 * np.pi, n)], axis=1)


def test_uniform_rotation_angle_follows_so3_density():
    # Haar measure on SO(3): the rotation angle ω has density (1 - cos ω)/π on [0, π], CDF (ω - sin ω)/π
    q, euler, phases = assign_orientations(20_000, seed=11)
    omega = rotation_angle(q)
    res = stats.kstest(omega, lambda w: (w - np.sin(w)) / np.pi)
    assert res.pvalue > 0.01, res
    # and the axes are isotropic: the z component of the rotation axis is uniform on [-1, 1]
    axis_z = q[:, 3] / np.linalg.norm(q[:, 1:], axis=1)
    assert stats.kstest(axis_z, "uniform", args=(-1, 2)).pvalue > 0.01
    assert q.shape == (20_000, 4) and euler.shape == (20_000, 3) and phases.dtype == np.int32
    assert np.all(q[:, 0] >= 0) and np.allclose(np.linalg.norm(q, axis=1), 1.0)
    assert np.all(phases == 1)
    # the returned Euler angles describe the same rotations as the quaternions
    assert np.allclose(euler_to_quat(euler), q, atol=1e-12)


def test_conversions_round_trip_and_match_scipy():
    euler = _random_euler(2000)
    q = euler_to_quat(euler)
    assert np.allclose(q, _scipy_wxyz(euler), atol=1e-12)
    assert np.allclose(quat_to_euler(q), euler, atol=1e-10)
    assert np.allclose(euler_to_quat(quat_to_euler(q)), q, atol=1e-12)
    # matrices: R maps crystal -> sample (active rotation Rz(φ1) Rx(Φ) Rz(φ2)), as scipy's intrinsic ZXZ
    R = quat_to_matrix(q)
    assert np.allclose(R, Rotation.from_euler("ZXZ", euler).as_matrix(), atol=1e-12)
    assert np.allclose(euler_to_matrix(euler), R, atol=1e-12)
    # extrinsic "zxz" is a different rotation: make sure we did not match by accident
    assert not np.allclose(R, Rotation.from_euler("zxz", euler).as_matrix(), atol=1e-3)
    # Bunge's g (sample -> crystal) from the textbook formula (Bunge 1982, eq. 2.39) is R.T
    p1, P, p2 = euler.T
    c1, s1, c, s, c2, s2 = np.cos(p1), np.sin(p1), np.cos(P), np.sin(P), np.cos(p2), np.sin(p2)
    g = np.stack([
        np.stack([c1 * c2 - s1 * s2 * c, s1 * c2 + c1 * s2 * c, s2 * s], -1),
        np.stack([-c1 * s2 - s1 * c2 * c, -s1 * s2 + c1 * c2 * c, c2 * s], -1),
        np.stack([s1 * s, -c1 * s, c], -1)], axis=1)
    assert np.allclose(np.transpose(R, (0, 2, 1)), g, atol=1e-12)
    # a pure φ1 = 90° turns the crystal's x axis onto the sample's y axis
    assert np.allclose(euler_to_matrix([np.pi / 2, 0, 0])[0] @ [1, 0, 0], [0, 1, 0], atol=1e-12)


def test_gimbal_lock_poles_round_trip():
    for e in ([1.0, 0.0, 0.5], [1.0, np.pi, 0.5], [6.0, 0.0, 0.9], [0.2, np.pi, 6.1]):
        q = euler_to_quat(e)
        e2 = quat_to_euler(q)
        assert np.allclose(euler_to_quat(e2), q, atol=1e-12), (e, e2)
        assert e2[0, 2] == 0.0 and 0 <= e2[0, 0] < 2 * np.pi


def test_quaternions_match_damask():
    damask = pytest.importorskip("damask")
    euler = _random_euler(500, seed=3)
    rot = damask.Rotation.from_Euler_angles(euler)
    assert np.allclose(rot.as_quaternion(), euler_to_quat(euler), atol=1e-12)
    # DAMASK's matrix is Bunge's g (sample -> crystal) = our R.T
    assert np.allclose(rot.as_matrix(), np.transpose(euler_to_matrix(euler), (0, 2, 1)), atol=1e-12)


def test_single_orientation_texture_gives_it_to_every_grain():
    tex = {"orientations": [[30.0, 45.0, 60.0]], "units": "degrees", "phases": [2]}
    q, euler, phases = assign_orientations(50, seed=4, texture=tex)
    want = np.deg2rad([30.0, 45.0, 60.0])
    assert np.allclose(euler, want) and np.all(phases == 2)
    assert np.allclose(q, _scipy_wxyz(want[None]))
    # the same orientation given in radians is the same texture
    q_rad, _, _ = assign_orientations(50, seed=4, texture={"orientations": [want.tolist()], "units": "radians",
                                                           "phases": [2]})
    assert np.allclose(q_rad, q)


def test_weights_set_the_frequencies():
    tex = make_texture([[0, 0, 0], [90, 90, 0]], "degrees", weights=[3, 1], phases=[1, 2])
    n = 4000
    q, euler, phases = assign_orientations(n, seed=5, texture=tex)
    first = np.all(np.isclose(euler, 0.0), axis=1)
    second = np.all(np.isclose(euler, np.deg2rad([90, 90, 0])), axis=1)
    assert np.all(first ^ second)  # every grain got exactly one of the listed orientations
    assert np.array_equal(phases, np.where(first, 1, 2))
    assert stats.binomtest(int(first.sum()), n, 0.75).pvalue > 0.01
    # 1:1 would be rejected at this sample size: the weights matter
    assert stats.binomtest(int(first.sum()), n, 0.5).pvalue < 1e-6


def test_deterministic_and_prefix_stable():
    a = assign_orientations(100, seed=9)
    b = assign_orientations(100, seed=9)
    for x, y in zip(a, b):
        assert np.array_equal(x, y)
    assert not np.allclose(assign_orientations(100, seed=10)[0], a[0])
    # grain i keeps its orientation when more grains are drawn
    assert np.array_equal(assign_orientations(250, seed=9)[0][:100], a[0])
    tex = {"orientations": [[0, 0, 0], [10, 20, 30], [50, 60, 70]], "units": "degrees", "weights": [1, 2, 3]}
    t1 = assign_orientations(300, seed=2, texture=tex)[1]
    assert np.array_equal(t1, assign_orientations(300, seed=2, texture=tex)[1])
    assert np.array_equal(assign_orientations(500, seed=2, texture=tex)[1][:300], t1)


@pytest.mark.parametrize("spec, field", [
    ({"orientations": [[0, 0, 0]]}, "texture.units"),
    ({"orientations": [[0, 0, 0]], "units": "deg"}, "texture.units"),
    ({"orientations": [[0, float("nan"), 0]], "units": "degrees"}, "texture.orientations[0,1]"),
    ({"orientations": [[0, 0, float("inf")]], "units": "radians"}, "texture.orientations[0,2]"),
    ({"orientations": [[0, 0]], "units": "degrees"}, "texture.orientations"),
    ({"orientations": [], "units": "degrees"}, "texture.orientations"),
    ({"orientations": [[0, 190, 0]], "units": "degrees"}, "texture.orientations[0]: Phi"),
    ({"orientations": [[0, 3.5, 0]], "units": "radians"}, "texture.orientations[0]: Phi"),
    ({"orientations": [[0, 0, 0], [1, 1, 1]], "units": "degrees", "weights": [1, 0]}, "texture.weights[1]"),
    ({"orientations": [[0, 0, 0], [1, 1, 1]], "units": "degrees", "weights": [1, -2]}, "texture.weights[1]"),
    ({"orientations": [[0, 0, 0], [1, 1, 1]], "units": "degrees", "weights": [1]}, "texture.weights"),
    ({"orientations": [[0, 0, 0]], "units": "degrees", "weights": [float("nan")]}, "texture.weights[0]"),
    ({"orientations": [[0, 0, 0]], "units": "degrees", "phases": [0]}, "texture.phases[0]"),
    ({"orientations": [[0, 0, 0]], "units": "degrees", "phases": [1.5]}, "texture.phases[0]"),
    ({"orientations": [[0, 0, 0]], "units": "degrees", "phases": [1, 2]}, "texture.phases"),
    ({"orientations": [[0, 0, 0]], "units": "degrees", "weight": [1]}, "unknown key"),
])
def test_bad_textures_are_refused_with_one_line(spec, field):
    with pytest.raises(GPEngineError) as err:
        texture_from_dict(spec)
    msg = str(err.value)
    assert field in msg and "\n" not in msg


def test_bad_counts_and_seeds_are_refused():
    for n, seed in ((-1, 0), (2.5, 0), (3, -1), (3, "x")):
        with pytest.raises(GPEngineError):
            assign_orientations(n, seed)
    assert assign_orientations(0, 1)[0].shape == (0, 4)

"""IK round trips, unreachable targets, sequences and velocity integration."""
import numpy as np
import pytest

from k4d_kinematics.ik import integrate_velocities, solve_ik, solve_ik_sequence
from k4d_kinematics.robot import RobotModel


@pytest.fixture(scope="module")
def yam():
    return RobotModel.yam()


def test_fk_ik_fk_round_trip(yam):
    rng = np.random.default_rng(0)
    for _ in range(8):
        q = rng.uniform(yam.lower, yam.upper)
        q[6:] = 0
        T = yam.link_pose(q)
        seed = np.clip(q + rng.normal(0, 0.2, 8), yam.lower, yam.upper)
        r = solve_ik(yam, T, seed)
        assert r.converged, r
        assert np.all(r.q >= yam.lower) and np.all(r.q <= yam.upper)
        np.testing.assert_allclose(yam.link_pose(r.q)[:3, 3], T[:3, 3], atol=1e-4)
        assert r.err_pos_m < 1e-5 and r.err_rot_rad < 1e-4 and r.iterations > 0


def test_unreachable_is_reported(yam):
    T = yam.link_pose(np.zeros(8))
    T[:3, 3] += [1.5, 0, 0]
    r = solve_ik(yam, T, np.zeros(8))
    assert not r.converged and r.err_pos_m > 0.5
    targets = np.stack([yam.link_pose(np.zeros(8)), T, yam.link_pose(yam.q_from_dict({"joint2": 0.3}))])
    res = solve_ik_sequence(yam, targets, np.zeros(8))
    assert res.converged.tolist() == [True, False, True] and res.failed_frames() == [1]
    assert res.err_pos_m[1] > 0.5 and res[1].err_pos_m == res.err_pos_m[1]


def test_sequence_is_seeded_and_continuous(yam):
    Q = np.linspace(yam.q_from_dict({"joint2": 0.5, "joint3": 0.5}),
                    yam.q_from_dict({"joint1": 0.8, "joint2": 1.5, "joint3": 1.0, "joint4": 0.3}), 12)
    res = solve_ik_sequence(yam, yam.link_pose(Q), Q[0])
    assert res.all_converged and res.q.shape == (12, 8)
    np.testing.assert_allclose(res.q, Q, atol=1e-6)  # stays on the seeded branch


def test_ik_input_errors(yam):
    with pytest.raises(ValueError, match="T_target"):
        solve_ik(yam, np.full((4, 4), np.nan), np.zeros(8))
    with pytest.raises(ValueError, match="jointZ"):
        solve_ik(yam, np.eye(4), np.zeros(8), joints=["jointZ"])
    with pytest.raises(ValueError, match=r"\(T, 4, 4\)"):
        solve_ik_sequence(yam, np.zeros((0, 4, 4)), np.zeros(8))


def test_integrate_velocities(yam):
    qdot = np.zeros((10, 8))
    qdot[:, 1] = 1.0
    Q = integrate_velocities(np.zeros(8), qdot, 0.1)
    assert Q.shape == (11, 8)
    np.testing.assert_allclose(Q[:, 1], np.arange(11) * 0.1)
    qdot[:, 1] = 10.0
    Q = integrate_velocities(np.zeros(8), qdot, 0.1, model=yam)  # clamps at the joint2 upper limit
    assert Q[-1, 1] == pytest.approx(yam.upper[1])
    with pytest.raises(ValueError, match="step 4: joint 'joint2'"):
        integrate_velocities(np.zeros(8), qdot, 0.1, model=yam, limits="reject")
    with pytest.raises(ValueError, match="dt"):
        integrate_velocities(np.zeros(8), qdot, 0.0)
    with pytest.raises(ValueError, match=r"q0\[2\] is not finite"):  # also without a model to check it
        integrate_velocities(np.array([0, 0, np.nan, 0, 0, 0, 0, 0]), qdot, 0.1)

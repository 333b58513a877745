"""Trajectories, resampling, pointmap sequences, min-max normalisation, perturbations."""
import numpy as np
import pytest

from k4d_kinematics.camera import Extrinsics, PinholeCamera
from k4d_kinematics.perturb import PerturbConfig, add_noise, drop_pixels, perturb, warp_image
from k4d_kinematics.pointmap import PointmapRenderer
from k4d_kinematics.robot import RobotModel
from k4d_kinematics.sequence import (JointTrajectoryData, build_pointmap_sequence, denormalize_minmax,
                                     normalize_minmax, resample, sequence_from_ee_poses)


@pytest.fixture(scope="module")
def renderer():
    cam = PinholeCamera(96, 64, 80.0, 80.0, 47.5, 31.5)
    return PointmapRenderer(RobotModel.yam(), cam, Extrinsics.look_at([0.95, 0.3, 0.9], [0.22, 0, 0.15]))


def traj(times=(0.0, 0.7, 2.0), velocities=None):
    P = np.array([[0.0, 0.0], [0.5, 1.0], [0.2, 1.5]])
    return JointTrajectoryData(["joint1", "joint2"], np.array(times), P, velocities)


@pytest.mark.parametrize("kwargs, match", [
    (dict(joint_names=["joint1"], times=[], positions=np.zeros((0, 1))), "times is empty"),
    (dict(joint_names=["joint1"], times=[0, 1, 1], positions=np.zeros((3, 1))), r"times\[2\]"),
    (dict(joint_names=["joint1"], times=[0, 1], positions=[[0.0], [np.nan]]), r"positions\[1\] \(joint1\)"),
    (dict(joint_names=["joint1", "joint2"], times=[0, 1], positions=np.zeros((2, 1))), "positions must have shape"),
    (dict(joint_names=["joint1", "joint1"], times=[0], positions=np.zeros((1, 2))), "duplicates"),
])
def test_trajectory_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        JointTrajectoryData(**kwargs)


def test_unknown_joint_in_trajectory():
    t = JointTrajectoryData(["joint1", "jointQ"], [0.0], [[0.0, 0.0]])
    with pytest.raises(ValueError, match="jointQ"):
        t.positions_for(RobotModel.yam())


def test_resample_keeps_end_points_and_timing():
    tr = traj()
    rs = resample(tr, 49)
    assert rs.times.shape == (49,) and rs.times[0] == 0.0 and rs.times[-1] == 2.0
    np.testing.assert_allclose(np.diff(rs.times), 2.0 / 48)
    np.testing.assert_array_equal(rs.positions[0], tr.positions[0])
    np.testing.assert_array_equal(rs.positions[-1], tr.positions[-1])
    k = np.argmin(abs(rs.times - 1.0))
    np.testing.assert_allclose(rs.positions[k], tr.positions[1] + (rs.times[k] - 0.7) / 1.3 * (tr.positions[2] - tr.positions[1]))
    at_fps = resample(tr, 5, fps=2.0)
    np.testing.assert_allclose(at_fps.times, [0, 0.5, 1.0, 1.5, 2.0])
    held = resample(tr, 4, fps=0.5)  # beyond the end: hold the last point
    np.testing.assert_array_equal(held.positions[-1], tr.positions[-1])


def test_resample_cubic_with_velocities():
    V = np.zeros((3, 2))
    rs = resample(traj(velocities=V), 21)
    assert rs.velocities is not None
    np.testing.assert_allclose(rs.velocities[[0, -1]], 0.0, atol=1e-12)
    np.testing.assert_array_equal(rs.positions[-1], traj().positions[-1])


def test_build_pointmap_sequence(renderer):
    seq = build_pointmap_sequence(renderer, traj(), num_frames=5, source="plan", source_id="p1")
    assert seq.xyz.shape == (5, 64, 96, 3) and seq.link.shape == (5, 64, 96) and seq.positions.shape == (5, 8)
    assert seq.times[0] == 0.0 and seq.times[-1] == 2.0 and seq.link_names == renderer.model.link_names
    assert (seq.link[0] >= 0).sum() > 50
    with pytest.raises(ValueError, match="source"):
        build_pointmap_sequence(renderer, traj(), num_frames=2, source="dream")


def test_sequence_from_ee_poses(renderer):
    m = renderer.model
    Q = np.linspace(m.q_from_dict({"joint2": 0.6, "joint3": 0.6}), m.q_from_dict({"joint2": 1.2, "joint3": 0.9}), 4)
    T = m.link_pose(Q)
    T[-1, :3, 3] += [2.0, 0, 0]  # unreachable last target
    seq = sequence_from_ee_poses(renderer, T, [0.0, 0.1, 0.2, 0.3], Q[0], gripper_width_m=[0.0, 0.02, 0.04, 0.06])
    assert seq.ik_converged.tolist() == [True, True, True, False] and seq.ik_residual_m[-1] > 1.0
    assert seq.positions[2, m.joint_index["joint7"]] == pytest.approx(-0.02)


@pytest.mark.parametrize("times", [0.3 + 0.1 * np.arange(8), [0, .05, .1, .5, .55, .6, .65, 1]])
def test_ee_pose_frames_and_ik_reports_belong_to_their_targets(renderer, times):
    """One frame per target by default, at the target's time and showing its IK solution, with that target's
    IK report, for evenly spaced targets that do not start at 0 (round-off once moved frames onto the
    previous target's report) and for uneven ones (frames used to be spread evenly between targets)."""
    m = renderer.model
    Q = np.linspace(m.q_from_dict({"joint2": 0.6, "joint3": 0.6}), m.q_from_dict({"joint2": 1.2, "joint3": 0.9}), 8)
    T = m.link_pose(Q)
    T[3, :3, 3] += [2.0, 0, 0]  # only target 3 is unreachable
    seq = sequence_from_ee_poses(renderer, T, times, Q[0])
    assert seq.ik_converged.tolist() == [True, True, True, False, True, True, True, True]
    np.testing.assert_allclose(seq.times, np.asarray(times) - times[0], atol=1e-12)
    np.testing.assert_allclose(m.link_pose(seq.positions)[[0, 1, 2, 4, 5, 6, 7], :3, 3],
                               T[[0, 1, 2, 4, 5, 6, 7], :3, 3], atol=1e-3)
    # resampled to other frames, each frame still reports the latest target at or before its time
    seq9 = sequence_from_ee_poses(renderer, T, times, Q[0], num_frames=15)
    t_abs = np.asarray(times)[0] + seq9.times
    latest = [int(np.flatnonzero(np.asarray(times) <= t + 1e-9)[-1]) for t in t_abs]
    assert seq9.ik_converged.tolist() == [k != 3 for k in latest]


def test_minmax_round_trip():
    rng = np.random.default_rng(0)
    xyz = rng.normal(size=(3, 8, 10, 3)).astype(np.float32)
    xyz[:, :2] = np.nan
    x01, lo, hi = normalize_minmax(xyz)
    finite = np.isfinite(xyz)
    np.testing.assert_array_equal(np.isfinite(x01), finite)
    assert np.nanmin(x01) == 0.0 and np.nanmax(x01) == 1.0
    np.testing.assert_allclose(denormalize_minmax(x01, lo, hi)[finite], xyz[finite], atol=1e-6)
    empty, lo, hi = normalize_minmax(np.full((2, 2, 3), np.nan))
    assert np.all(np.isnan(empty)) and np.all(hi > lo)


def test_perturbations():
    rng = np.random.default_rng(0)
    link = np.full((2, 40, 50), -1, np.int16)
    link[:, 10:30, 15:35] = 3
    xyz = np.where((link >= 0)[..., None], np.float32(1.0), np.float32(np.nan)) * np.ones(3, np.float32)
    x2, l2 = drop_pixels(xyz, link, 0.05, rng)
    assert (link >= 0).sum() - (l2 >= 0).sum() == 40 and np.all(np.isnan(x2[l2 < 0]))
    assert (link >= 0).sum() == 800  # input untouched
    xn = add_noise(xyz, 0.01, rng)
    assert np.all(np.isnan(xn[link < 0])) and 0.005 < np.nanstd(xn - xyz) < 0.02
    xs, ls = warp_image(xyz, link, 5.0, -3.0, 0.0)
    np.testing.assert_array_equal(ls[:, 7:27, 20:40], 3)
    assert (ls >= 0).sum() == 800
    xr, lr = warp_image(xyz, link, 0.0, 0.0, np.deg2rad(5))
    assert abs(int((lr >= 0).sum()) - 800) < 40
    a = perturb(xyz, link, PerturbConfig(0.05, 0.001, 5, 5.0), np.random.default_rng(7))
    b = perturb(xyz, link, PerturbConfig(0.05, 0.001, 5, 5.0), np.random.default_rng(7))
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_array_equal(perturb(xyz, link, PerturbConfig(), rng)[1], link)
    with pytest.raises(ValueError, match="drop_fraction"):
        PerturbConfig(drop_fraction=1.5)


def test_select_frames_and_resized_sequence_match_a_direct_render():
    from k4d_kinematics.camera import Extrinsics, PinholeCamera
    from k4d_kinematics.pointmap import PointmapRenderer
    from k4d_kinematics.robot import RobotModel
    from k4d_kinematics.sequence import JointTrajectoryData, build_pointmap_sequence

    model = RobotModel.yam()
    big = PinholeCamera(192, 128, 160.0, 160.0, 95.5, 63.5)
    ext = Extrinsics.look_at((0.95, 0.3, 0.9), (0.22, 0.0, 0.15), parent_frame=model.root_link,
                             child_frame=big.frame_id)
    q0 = np.clip(np.r_[[0.0, 1.0, 1.2, -1.0, 0.0, 0.0], np.zeros(model.num_joints - 6)], model.lower, model.upper)
    q1 = np.clip(q0 + np.r_[[0.5, 0.2, -0.2, 0.3, 0.4, 0.0], np.zeros(model.num_joints - 6)], model.lower, model.upper)
    traj = JointTrajectoryData(list(model.joint_names), np.array([0.0, 2.0]), np.stack([q0, q1]))
    seq = build_pointmap_sequence(PointmapRenderer(model, big, ext), traj, 9)
    sub = seq.select_frames([0, 4, 8])
    assert sub.num_frames == 3 and np.array_equal(sub.xyz[1], seq.xyz[4], equal_nan=True)
    np.testing.assert_allclose(sub.times, seq.times[[0, 4, 8]])
    small = seq.resized(96, 64)
    direct = build_pointmap_sequence(PointmapRenderer(model, big.scaled(96, 64), ext), traj, 9)
    a, b = small.link >= 0, direct.link >= 0
    assert (a & b).sum() / (a | b).sum() > 0.8  # half a small pixel apart: the outlines differ by at most a pixel
    both = a & b
    assert np.nanmedian(np.abs(small.xyz[both][:, 2] - direct.xyz[both][:, 2])) < 0.01
    with pytest.raises(ValueError, match="frame indices"):
        seq.select_frames([0, 9])


def test_a_cubic_past_a_joint_limit_is_held_at_the_limit(renderer):
    """Waypoints inside the limits whose velocities make the cubic between them overshoot one (leaving the
    upper limit still moving up) are rendered with the overshoot held at the limit, not refused by the model's
    'reject' policy; without velocities nothing changes."""
    m = renderer.model
    j = m.joint_index["joint2"]
    q0, q1 = np.zeros(m.num_joints), np.zeros(m.num_joints)
    q0[j], q1[j] = m.upper[j], m.upper[j] - 0.1
    v = np.zeros((2, m.num_joints))
    v[0, j] = 1.0
    traj = JointTrajectoryData(list(m.joint_names), [0.0, 1.0], np.stack([q0, q1]), v)
    assert resample(traj, 9).positions[:, j].max() > m.upper[j] + 0.05  # the cubic itself overshoots
    seq = build_pointmap_sequence(renderer, traj, 9)
    assert seq.positions[:, j].max() == m.upper[j] and seq.positions[-1, j] == pytest.approx(q1[j])

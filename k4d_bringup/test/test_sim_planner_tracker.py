"""Config validation, scene determinism, planner and trajectory-tracker behaviour (no rendering)."""
from pathlib import Path

import numpy as np
import pytest


from k4d_kinematics.sequence import JointTrajectoryData  # noqa: E402

from k4d_bringup.sim.config import ARM_JOINTS, CameraConfig, SceneConfig, SimConfig  # noqa: E402
from k4d_bringup.sim.planner import TrajectoryPlanner, validate_trajectory  # noqa: E402
from k4d_bringup.sim.scene import mujoco_camera_quat, sample_layout  # noqa: E402


@pytest.fixture(scope="module")
def sim():
    from k4d_bringup.sim.workcell import YamSim

    return YamSim(SimConfig(), seed=0)


def test_config_errors_name_field_and_value(tmp_path):
    with pytest.raises(ValueError, match=r"CameraConfig.fy = -1"):
        CameraConfig(fy=-1)
    with pytest.raises(ValueError, match=r"SimConfig.scenario = 'insane'"):
        SimConfig(scenario="insane")
    with pytest.raises(ValueError, match=r"SceneConfig.workspace_x"):
        SceneConfig(workspace_x=(0.5, 0.2))
    p = tmp_path / "sim.yaml"
    p.write_text("camera: {width: 64, height: 48, bogus: 1}\n")
    with pytest.raises(ValueError, match="bogus"):
        SimConfig.from_yaml(p)
    repo_yaml = Path(__file__).resolve().parents[1] / "config" / "sim.yaml"
    assert SimConfig.from_yaml(repo_yaml) == SimConfig()


def test_layout_deterministic_and_scenarios():
    cfg = SimConfig()
    assert sample_layout(cfg, 5, "hard") == sample_layout(cfg, 5, "hard")
    assert sample_layout(cfg, 5, "hard") != sample_layout(cfg, 6, "hard")
    for scen, (lo, hi) in (("easy", (0, 0)), ("medium", (3, 5)), ("hard", (6, 8))):
        for seed in range(4):
            n = len(sample_layout(cfg, seed, scen).objects) - 1
            assert lo <= n <= hi
            assert all(o.radius <= 0.05 + 1e-9 for o in sample_layout(cfg, seed, scen).objects[1:])


def test_camera_convention():
    from k4d_kinematics.camera import Extrinsics
    from scipy.spatial.transform import Rotation

    ext = Extrinsics.look_at((1.0, 0.5, 0.8), (0.3, 0.0, 0.1))
    pos, wxyz = mujoco_camera_quat(ext.T_base_cam)
    R_mj = Rotation.from_quat(np.r_[wxyz[1:], wxyz[0]]).as_matrix()
    # MuJoCo looks along its -z = optical +z; its +y (up) = optical -y (down)
    np.testing.assert_allclose(-R_mj[:, 2], ext.T_base_cam[:3, 2], atol=1e-12)
    np.testing.assert_allclose(R_mj[:, 1], -ext.T_base_cam[:3, 1], atol=1e-12)
    np.testing.assert_allclose(pos, (1.0, 0.5, 0.8))


def test_planner_validation_errors(sim):
    planner = sim.planner
    q0 = np.array(SimConfig().home_q)
    with pytest.raises(ValueError, match="unknown joint"):
        planner.plan_joint(q0, {"joint1": 0.1, "elbow": 0.2})
    with pytest.raises(ValueError, match="joint3.*not finite"):
        planner.plan_joint(q0, [0, 1.5, np.nan, 0, 0, 0])
    with pytest.raises(ValueError, match="joint2.*outside its limits"):
        planner.plan_joint(q0, [0, 5.0, 1.0, 0, 0, 0])
    robot = sim.robot
    with pytest.raises(ValueError, match="time goes backwards.*point 2"):
        validate_trajectory(["joint1"], [0.0, 0.1, 0.05], [[0.0], [0.1], [0.2]], robot)
    with pytest.raises(ValueError, match="unknown joint.*'wrist'"):
        validate_trajectory(["joint1", "wrist"], [0.0], [[0.0, 0.0]], robot)
    with pytest.raises(ValueError, match="'joint4' is not finite at point 1"):
        validate_trajectory(["joint4"], [0.0, 0.1], [[0.0], [np.nan]], robot)
    with pytest.raises(ValueError, match="'joint6' = 3 at point 0 is outside"):
        validate_trajectory(["joint6"], [0.0], [[3.0]], robot)


def test_joint_plan_respects_limits(sim):
    cfg = SimConfig().planner
    q0 = np.array(SimConfig().home_q)
    q1 = q0 + np.array([0.8, -0.3, 0.4, 0.3, -0.5, 1.0])
    traj = sim.planner.plan_joint(q0, q1)
    assert isinstance(traj, JointTrajectoryData) and traj.joint_names == list(ARM_JOINTS)
    np.testing.assert_allclose(traj.positions[0], q0, atol=1e-9)
    np.testing.assert_allclose(traj.positions[-1], q1, atol=1e-9)
    v = np.diff(traj.positions, axis=0) / np.diff(traj.times)[:, None]
    assert np.all(np.abs(v) <= np.array(cfg.max_velocity) * 1.02)
    assert np.all(np.diff(traj.times) > 0) and traj.times[0] == 0


def test_cartesian_plan_is_straight(sim):
    from k4d_bringup.sim.ik import top_down_pose

    q0 = np.array(SimConfig().home_q)
    T0 = sim.ik.tcp_pose(np.r_[q0, 0, 0])
    goal = top_down_pose(T0[:3, 3] + [0.08, 0.1, -0.12], 0.0)
    traj = sim.planner.plan_cartesian(q0, goal)
    P = np.stack([sim.ik.tcp_pose(np.r_[q, 0, 0])[:3, 3] for q in traj.positions[::10]])
    d = goal[:3, 3] - T0[:3, 3]
    off_line = np.linalg.norm(np.cross(P - T0[:3, 3], d / np.linalg.norm(d)), axis=1)
    assert off_line.max() < 2e-3
    np.testing.assert_allclose(sim.ik.tcp_pose(np.r_[traj.positions[-1], 0, 0])[:3, 3], goal[:3, 3], atol=1e-3)


def test_tracker_rejects_bad_trajectory_and_holds():
    from k4d_bringup.sim.workcell import YamSim

    sim = YamSim(SimConfig(), seed=1)
    sim.step(50)
    q_before = sim.joint_positions()
    bad = [
        JointTrajectoryData(["joint1", "joint9"], [0.5], [[0.1, 0.2]]),  # unknown joint
        JointTrajectoryData(["joint2"], [0.5], [[9.0]]),  # outside limits
        JointTrajectoryData(["joint1"], [0.0, 0.5], [[1.0], [1.2]]),  # starts far from the current state
    ]
    for traj in bad:
        with pytest.raises(ValueError):
            sim.send_trajectory(traj)
        assert sim.tracker.last_error
    assert not sim.tracker.active
    sim.step(250)
    np.testing.assert_allclose(sim.joint_positions(), q_before, atol=2e-3)


def test_tracker_executes_plan_and_gripper():
    from k4d_bringup.sim.workcell import YamSim

    sim = YamSim(SimConfig(), seed=2)
    q0 = sim.joint_positions()[:6]
    q1 = q0 + np.array([0.3, 0.1, -0.1, 0.2, 0.0, -0.4])
    traj = sim.planner.plan_joint(q0, q1)
    sim.set_gripper(width_m=0.03)
    sim.run_trajectory(traj, settle=0.5)
    np.testing.assert_allclose(sim.joint_positions()[:6], q1, atol=0.01)
    assert abs(sim.gripper_width() - 0.03) < 2e-3
    js = sim.joint_state()
    assert js.names[:6] == list(ARM_JOINTS) and js.position.shape == (8,) and js.stamp == pytest.approx(sim.time)


def test_set_object_pose_is_the_inverse_of_object_states():
    """An object put somewhere by ``set_object_pose`` reads back there, at rest, and the robot is untouched; bad
    input is refused by name."""
    from k4d_bringup.sim.workcell import YamSim

    sim = YamSim(SimConfig(), seed=2)
    q_before = sim.q_robot().copy()
    sim.data.qvel[:] = 0.3  # everything moving: only the object's velocities are to be zeroed
    quat = np.array([np.cos(0.3), 0.0, 0.0, np.sin(0.3)])
    sim.set_object_pose(0, [0.35, 0.05, 0.2], quat)
    st = sim.object_states()[0]
    np.testing.assert_allclose(st.pos_base, [0.35, 0.05, 0.2])
    np.testing.assert_allclose(st.quat_wxyz, quat)
    np.testing.assert_allclose(st.lin_vel, 0.0, atol=1e-12)
    assert np.count_nonzero(sim.data.qvel == 0.0) == 6  # its own 6 degrees of freedom, nothing else
    np.testing.assert_allclose(sim.q_robot(), q_before)
    with pytest.raises(ValueError, match="finite position"):
        sim.set_object_pose(0, [0.35, np.nan, 0.2], quat)
    with pytest.raises(ValueError, match="quaternion"):
        sim.set_object_pose(0, [0.35, 0.05, 0.2], quat[:3])
    sim.close()

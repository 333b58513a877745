"""The ROS-free parts of the demo: the pick-and-place step list in the MuJoCo sim, the success predicate,
the overlay drawing, and the k4d sim parameter-file helpers."""
import numpy as np
import pytest

from k4d_bringup.demo import DemoStep, pick_place_steps
from k4d_bringup.sim.policies import classify, object_tilt_deg
from k4d_kinematics.overlay import mask_edges, overlay_frame, project_mask


def test_pick_place_steps_shape():
    steps = pick_place_steps([0.3, 0.1, 0.02], 0.02, [0.25, -0.1], home_joints={"joint1": 0.0})
    assert [s.label for s in steps] == ["open", "hover over object", "descend", "close", "lift", "carry", "lower",
                                        "release", "retreat", "home"]
    descend = steps[2].pose
    assert np.allclose(descend[:3, 3], [0.3, 0.1, 0.02]) and np.allclose(descend[:3, 2], [0, 0, 1])
    with pytest.raises(ValueError, match="non-finite"):
        pick_place_steps([np.nan, 0, 0], 0.02, [0, 0])
    with pytest.raises(ValueError, match="kind"):
        DemoStep("dance", "x")


@pytest.mark.slow
def test_scripted_pick_place_succeeds_in_sim():
    from k4d_bringup.sim.config import CameraConfig, SimConfig
    from k4d_bringup.sim.workcell import YamSim

    sim = YamSim(SimConfig(shadows=False, camera=CameraConfig(width=32, height=24, fy=25.0)), seed=0)
    home = dict(zip([f"joint{i}" for i in range(1, 7)], sim.config.home_q))
    obj = sim.object_states()[0]
    zone = sim.layout.zone
    for s in pick_place_steps(obj.pos_base, sim.layout.target.half_height, zone.center_base, home):
        if s.kind == "gripper":
            sim.set_gripper(width_m=s.width_m)
            sim.step_for(s.settle_s)
        else:
            q = sim.q_robot()
            traj = sim.planner.plan_cartesian(q, s.pose) if s.kind == "pose" else sim.planner.plan_joint(q, s.joints)
            sim.run_trajectory(traj)
    final = sim.object_states()[0]
    assert classify("pick_place", final.pos_base, obj.pos_base[:2], zone.center_base, zone.radius,
                    rest_z=sim.layout.target.half_height, max_lift=0.0,
                    tilt_deg=object_tilt_deg(final.quat_wxyz, sim.layout.target.kind)).success
    sim.close()


def test_overlay_draws_mask_edges_and_ghost():
    rgb = np.full((20, 30, 3), 100, np.uint8)
    mask = np.zeros((20, 30), bool)
    mask[5:15, 5:15] = True
    edges = mask_edges(mask)
    assert edges.sum() == 36 and not edges[10, 10] and edges[5, 5]
    ghost = np.zeros((2, 20, 30), bool)
    ghost[0, 2:8, 18:28] = True
    ghost[1, 10:18, 18:28] = True
    out = overlay_frame(rgb, mask, ghost)
    assert out.shape == rgb.shape and out.dtype == np.uint8
    assert (out[5, 5] == 255).all()                 # robot outline (white)
    assert not np.array_equal(out[10, 10], rgb[10, 10])   # robot tint
    assert not np.array_equal(out[2, 20], out[10, 20])    # ghost outlines: blue (start) vs orange (end)
    assert np.array_equal(out[0, 0], rgb[0, 0])     # untouched background
    assert np.array_equal(rgb[10, 10], [100, 100, 100]), "input not modified"
    with pytest.raises(ValueError, match="does not match"):
        overlay_frame(rgb, mask[:10])


def test_project_mask():
    from k4d_kinematics.camera import PinholeCamera

    cam = PinholeCamera(10, 8, 10.0, 10.0, 4.0, 3.0)
    # on-axis point -> the principal point; NaN, behind-camera and off-image points are skipped
    m = project_mask(np.array([[0.0, 0.0, 1.0], [np.nan, 0, 1], [0, 0, -1], [5.0, 0, 1.0], [0.1, 0.2, 1.0]]), cam)
    assert m.sum() == 2 and m[3, 4] and m[5, 5]


def test_ros_params_roundtrip(tmp_path):
    pytest.importorskip("rclpy")
    from k4d_bringup.sim_cli import config_path, load_ros_params, to_parameters, write_ros_params

    p = load_ros_params(config_path("k4d_bringup", "sim_node.yaml"), "k4d_sim")
    assert p["joint_state_rate_hz"] == 250.0 and p["camera_width"] == 360
    f = write_ros_params(tmp_path / "x.yaml", {"seed": 3, "home_q": [0.0, 1.0]})
    assert load_ros_params(f) == {"seed": 3, "home_q": [0.0, 1.0]}
    assert [q.name for q in to_parameters({"seed": 3})] == ["seed"]

"""planner_node + sim_node over real DDS (two processes): goals are planned, previewed, then executed on request."""
import json
import sys
import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
from geometry_msgs.msg import PoseStamped  # noqa: E402
from sensor_msgs.msg import JointState  # noqa: E402
from std_msgs.msg import Empty, String  # noqa: E402
from trajectory_msgs.msg import JointTrajectory  # noqa: E402

from k4d_bringup.testing import start_process, stop_process  # noqa: E402
from k4d_kinematics.ros.conversions import joint_trajectory_to_data  # noqa: E402
from k4d_kinematics.ros.qos import RELIABLE_QOS, SENSOR_QOS  # noqa: E402

pytestmark = pytest.mark.ros


@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("planner")
    sim = start_process([sys.executable, "-m", "k4d_bringup.ros.sim_node", "--ros-args", "-p", "camera_width:=32",
                         "-p", "camera_height:=24", "-p", "camera_fy:=25.0", "-p", "camera_rate_hz:=5.0"], cwd=str(tmp))
    planner = start_process([sys.executable, "-m", "k4d_bringup.ros.planner_node"], cwd=str(tmp))
    rclpy.init()
    node = rclpy.create_node("k4d_test_planner_peer")
    got = {"js": [], "plan": [], "exec": [], "status": []}
    node.create_subscription(JointState, "/joint_states", got["js"].append, SENSOR_QOS)
    node.create_subscription(JointTrajectory, "/k4d/planned_trajectory", got["plan"].append, RELIABLE_QOS)
    node.create_subscription(JointTrajectory, "/arm_controller/joint_trajectory", got["exec"].append, RELIABLE_QOS)
    node.create_subscription(String, "/k4d/planner_status", lambda m: got["status"].append(json.loads(m.data)),
                             RELIABLE_QOS)
    pubs = {"joints": node.create_publisher(JointState, "/k4d/goal_joints", RELIABLE_QOS),
            "pose": node.create_publisher(PoseStamped, "/k4d/goal_pose", RELIABLE_QOS),
            "exec": node.create_publisher(Empty, "/k4d/execute_plan", RELIABLE_QOS)}

    def spin_until(pred, timeout=20.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            rclpy.spin_once(node, timeout_sec=0.02)
            if pred():
                return True
        return bool(pred())

    try:
        up = spin_until(lambda: len(got["js"]) > 10 and all(p.get_subscription_count() > 0 for p in pubs.values()), 90)
        if not up:
            pytest.fail("graph did not come up:\n" + stop_process(sim) + stop_process(planner))
        spin_until(lambda: False, 1.5)  # the planner has joint states too
        yield got, pubs, spin_until
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
        print(stop_process(planner)[-2000:])
        print(stop_process(sim)[-2000:])


def test_joint_goal_preview_then_execute(graph):
    got, pubs, spin_until = graph
    q0 = np.array(got["js"][-1].position)
    goal = {"joint1": float(q0[0] + 0.35), "joint5": float(q0[4] - 0.2)}
    n_plan, n_exec, n_status = len(got["plan"]), len(got["exec"]), len(got["status"])
    pubs["joints"].publish(JointState(name=list(goal), position=list(goal.values())))
    assert spin_until(lambda: len(got["plan"]) > n_plan, 10.0), f"no plan; status {got['status'][-3:]}"
    plan = joint_trajectory_to_data(got["plan"][-1])
    assert list(plan.joint_names) == [f"joint{i}" for i in range(1, 7)]
    assert np.allclose(plan.positions[-1][[0, 4]], [goal["joint1"], goal["joint5"]], atol=1e-6)
    assert np.allclose(plan.positions[0], q0[:6], atol=0.01)
    assert spin_until(lambda: any(st["event"] == "planned" for st in got["status"][n_status:]), 5.0)
    spin_until(lambda: False, 0.5)
    assert len(got["exec"]) == n_exec, "preview only: nothing executed before the request"
    assert abs(got["js"][-1].position[0] - q0[0]) < 0.01
    pubs["exec"].publish(Empty())
    assert spin_until(lambda: len(got["exec"]) > n_exec, 5.0)
    assert spin_until(lambda: abs(got["js"][-1].position[0] - goal["joint1"]) < 0.01
                      and abs(got["js"][-1].position[4] - goal["joint5"]) < 0.01, plan.times[-1] + 8.0)


def test_bad_goals_fail_cleanly(graph):
    got, pubs, spin_until = graph

    def failure(since):
        return next((st for st in got["status"][since:] if st["event"] == "failed"), None)

    spin_until(lambda: False, 0.5)
    n = len(got["status"])
    bad = PoseStamped()
    bad.header.frame_id = "world"
    bad.pose.orientation.w = 1.0
    pubs["pose"].publish(bad)
    assert spin_until(lambda: failure(n) is not None, 10.0)
    assert "base frame" in failure(n)["error"]
    n = len(got["status"])
    pubs["joints"].publish(JointState(name=["joint1"], position=[40.0]))
    assert spin_until(lambda: failure(n) is not None, 10.0)
    assert "limits" in failure(n)["error"]

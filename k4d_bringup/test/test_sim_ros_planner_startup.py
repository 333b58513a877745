"""planner_node alone over real DDS: a goal that arrives before the planner has any /joint_states is held and
planned once the first joint state arrives (on a loaded machine the demo's first goal can beat the joint states
to the planner; it used to fail at once with "no /joint_states for inf s")."""
import json
import sys
import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
from sensor_msgs.msg import JointState  # noqa: E402
from std_msgs.msg import String  # noqa: E402
from trajectory_msgs.msg import JointTrajectory  # noqa: E402

from k4d_bringup.testing import start_process, stop_process  # noqa: E402
from k4d_kinematics.ros.conversions import joint_trajectory_to_data  # noqa: E402
from k4d_kinematics.ros.qos import RELIABLE_QOS, SENSOR_QOS  # noqa: E402

pytestmark = pytest.mark.ros


def test_goal_before_the_first_joint_state_is_held_then_planned(tmp_path):
    from k4d_kinematics.robot import RobotModel

    names = list(RobotModel.yam().joint_names)
    planner = start_process([sys.executable, "-m", "k4d_bringup.ros.planner_node"], cwd=str(tmp_path))
    rclpy.init()
    node = rclpy.create_node("k4d_test_planner_startup")
    got = {"plan": [], "status": []}
    node.create_subscription(JointTrajectory, "/k4d/planned_trajectory", got["plan"].append, RELIABLE_QOS)
    node.create_subscription(String, "/k4d/planner_status", lambda m: got["status"].append(json.loads(m.data)),
                             RELIABLE_QOS)
    pub_goal = node.create_publisher(JointState, "/k4d/goal_joints", RELIABLE_QOS)
    pub_js = node.create_publisher(JointState, "/joint_states", SENSOR_QOS)

    def spin_until(pred, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not pred():
            rclpy.spin_once(node, timeout_sec=0.02)
        return bool(pred())

    try:
        assert spin_until(lambda: pub_goal.get_subscription_count() > 0 and pub_js.get_subscription_count() > 0
                          and node.count_publishers("/k4d/planner_status") > 0, 90), "planner did not come up"
        pub_goal.publish(JointState(name=["joint1"], position=[0.3]))
        spin_until(lambda: False, 1.5)
        assert not got["plan"] and not [s for s in got["status"] if s["event"] == "failed"], got["status"]
        q0 = np.zeros(len(names))
        for _ in range(5):  # the robot's driver comes up: the held goal is planned from this state
            pub_js.publish(JointState(name=names, position=[float(v) for v in q0]))
            spin_until(lambda: bool(got["plan"]), 0.2)
        assert spin_until(lambda: bool(got["plan"]), 10.0), f"held goal never planned; status {got['status']}"
        plan = joint_trajectory_to_data(got["plan"][0])
        assert np.isclose(plan.positions[-1][0], 0.3, atol=1e-6) and np.allclose(plan.positions[0], 0.0, atol=1e-6)
        assert len(got["plan"]) == 1  # planned once, not once per joint state
        assert spin_until(lambda: bool(got["status"]), 5.0) and got["status"][0]["event"] == "planned", got["status"]
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
        print(stop_process(planner)[-2000:])

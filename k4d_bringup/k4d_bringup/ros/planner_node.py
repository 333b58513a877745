"""planner_node: joint-space and Cartesian goals -> jerk-limited arm trajectories (ruckig), previewed, then executed.

    python -m k4d_bringup.ros.planner_node --ros-args --params-file k4d_bringup/config/planner_node.yaml

The sim's stand-in for MoveIt: every goal is planned from the newest /joint_states with
``k4d_bringup.sim.planner.TrajectoryPlanner`` (realistic YAM velocity/acceleration/jerk limits) and published
for preview; the plan is executed on request, or at once with ``auto_execute``.

Subscribes
- ``/joint_states`` sensor_msgs/JointState (SENSOR_QOS): the start state.
- ``k4d/goal_joints`` sensor_msgs/JointState (RELIABLE_QOS): arm joint goal by name (joint1..6; joints not
  named keep their current value; finger joints are ignored: the gripper has its own topic).
- ``k4d/goal_pose`` geometry_msgs/PoseStamped (RELIABLE_QOS): TCP goal (the point between the finger pads;
  tool z axis = approach direction reversed, see ``sim.ik.top_down_pose``) in ``base_frame`` (other frames
  are rejected: no TF here). Planned as a straight TCP line through the IK (``cartesian_linear``) or as a
  joint move to the IK solution.
- ``k4d/execute_plan`` std_msgs/Empty (RELIABLE_QOS): execute the last plan (re-planned from the current
  state first when the arm moved more than ``start_tolerance`` since planning).
Publishes
- ``k4d/planned_trajectory`` trajectory_msgs/JointTrajectory (RELIABLE_QOS): each plan, for preview
  (k4d_kinematics plan_node renders it); header.stamp = planning time.
- ``display_trajectory_topic`` moveit_msgs/DisplayTrajectory (when moveit_msgs imports and
  ``publish_display_trajectory``).
- ``trajectory_topic`` (/arm_controller/joint_trajectory) JointTrajectory on execution (header.stamp 0 = now).
- ``k4d/planner_status`` std_msgs/String (RELIABLE_QOS): one JSON object per event,
  ``{"event": "planned"|"executing"|"failed", "goal": "joints"|"pose", "duration_s", "points", "error"}``.
- ``/diagnostics``: planning time, failures.

A goal that arrives before the first /joint_states (this node started after the one sending goals, or discovery
was slow) is held, the newest one only, and planned when the first joint state arrives, up to
``EARLY_GOAL_WAIT_S`` (10 s) later. After that, a stale /joint_states fails a goal at once.
"""
from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass, field

import numpy as np
from geometry_msgs.msg import PoseStamped
from rclpy.node import Node
from sensor_msgs.msg import JointState
from std_msgs.msg import Empty, Header, String
from trajectory_msgs.msg import JointTrajectory

from k4d_kinematics.ros.conversions import data_to_joint_trajectory
from k4d_kinematics.ros.diagnostics import DiagnosticsPublisher, RateLatencyStats
from k4d_kinematics.ros.node_logic import ThrottledLog, first_line, joint_values_from_state
from k4d_kinematics.ros.params import declare_config
from k4d_kinematics.ros.qos import RELIABLE_QOS, SENSOR_QOS
from k4d_kinematics.config import param_doc

EARLY_GOAL_WAIT_S = 10.0  # how long a goal that came before the first /joint_states is kept


_doc = param_doc


@dataclass
class PlannerNodeConfig:
    """Parameters of planner_node (one ROS parameter per field)."""

    sim_config_file: str = field(default="", metadata=_doc(
        "SimConfig YAML whose 'planner' section gives the limits; '' = built-in YAM limits.", True))
    auto_execute: bool = field(default=False, metadata=_doc("Execute every plan right after publishing it."))
    cartesian_linear: bool = field(default=True, metadata=_doc(
        "Pose goals: straight TCP line (true) or a joint move to the IK solution (false)."))
    start_tolerance: float = field(default=0.02, metadata=_doc(
        "rad: re-plan before executing when the arm moved more than this since planning."))
    joint_state_timeout_s: float = field(default=1.0, metadata=_doc(
        "Reject goals when the newest /joint_states is older than this (s)."))
    base_frame: str = field(default="base", metadata=_doc("Frame of pose goals (robot base).", True))
    trajectory_topic: str = field(default="/arm_controller/joint_trajectory", metadata=_doc(
        "Where executed plans go (joint_trajectory_controller topic).", True))
    publish_display_trajectory: bool = field(default=True, metadata=_doc(
        "Also publish moveit_msgs/DisplayTrajectory (only when moveit_msgs imports).", True))
    display_trajectory_topic: str = field(default="/display_planned_path", metadata=_doc(
        "MoveIt's planned-path topic.", True))

    def __post_init__(self):
        for name in ("start_tolerance", "joint_state_timeout_s"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be > 0, got {v!r}")
        if not self.base_frame:
            raise ValueError("base_frame must be non-empty")


def pose_to_matrix(pose) -> np.ndarray:
    """geometry_msgs/Pose (duck-typed) -> (4, 4); ValueError for NaN or a non-unit quaternion."""
    from scipy.spatial.transform import Rotation

    p, o = pose.position, pose.orientation
    xyz, xyzw = np.array([p.x, p.y, p.z], float), np.array([o.x, o.y, o.z, o.w], float)
    if not (np.all(np.isfinite(xyz)) and np.all(np.isfinite(xyzw))):
        raise ValueError(f"pose has non-finite values: position {xyz.tolist()}, orientation {xyzw.tolist()}")
    n = float(np.linalg.norm(xyzw))
    if abs(n - 1.0) > 1e-3:
        raise ValueError(f"pose orientation must be a unit quaternion, got {xyzw.tolist()} (norm {n:.4g})")
    T = np.eye(4)
    T[:3, :3] = Rotation.from_quat(xyzw / n).as_matrix()
    T[:3, 3] = xyz
    return T


class PlannerNode(Node):
    """Plans, previews and executes arm motions (see module doc)."""

    def __init__(self, node_name: str = "k4d_planner", **kwargs):
        super().__init__(node_name, **kwargs)
        from k4d_bringup.sim.config import SimConfig
        from k4d_bringup.sim.ik import ToolIK
        from k4d_bringup.sim.planner import TrajectoryPlanner
        from k4d_kinematics.robot import RobotModel

        # 1. Parameters and the planner
        self.cfg: PlannerNodeConfig = declare_config(self, PlannerNodeConfig, self._on_config)
        sim_cfg = SimConfig.from_yaml(self.cfg.sim_config_file) if self.cfg.sim_config_file else SimConfig()
        self.robot = RobotModel.yam() if not sim_cfg.scene.urdf_path else RobotModel.from_urdf_file(sim_cfg.scene.urdf_path)
        self.planner = TrajectoryPlanner(self.robot, sim_cfg.planner, ToolIK(self.robot))
        # 2. State
        self.joints: dict[str, float] = {}
        self.joints_at = -math.inf
        # a goal that came before the first /joint_states (the planner started after the node sending goals, or
        # discovery was slow): (handler, msg, arrival) planned when the first joint state arrives
        self._early_goal = None
        self.plan = None            # JointTrajectoryData of the last plan
        self.plan_goal = None       # ("joints", (6,)) or ("pose", (4, 4)) to re-plan from a new start
        # 3. Diagnostics
        self.stats = RateLatencyStats(window_s=60.0)
        self.diag = DiagnosticsPublisher(self)
        self.diag.add("planning", self.stats)
        self._log_error = ThrottledLog(self.get_logger().error)
        # 4. Outputs
        self.pub_plan = self.create_publisher(JointTrajectory, "k4d/planned_trajectory", RELIABLE_QOS)
        self.pub_exec = self.create_publisher(JointTrajectory, self.cfg.trajectory_topic, RELIABLE_QOS)
        self.pub_status = self.create_publisher(String, "k4d/planner_status", RELIABLE_QOS)
        self.pub_display = None
        if self.cfg.publish_display_trajectory:
            try:
                from moveit_msgs.msg import DisplayTrajectory
            except ImportError:
                self.get_logger().info("moveit_msgs is not installed: no DisplayTrajectory output")
            else:
                self.pub_display = self.create_publisher(DisplayTrajectory, self.cfg.display_trajectory_topic,
                                                         RELIABLE_QOS)
        # 5. Inputs
        self.create_subscription(JointState, "/joint_states", self._on_joint_state, SENSOR_QOS)
        self.create_subscription(JointState, "k4d/goal_joints", self._on_goal_joints, RELIABLE_QOS)
        self.create_subscription(PoseStamped, "k4d/goal_pose", self._on_goal_pose, RELIABLE_QOS)
        self.create_subscription(Empty, "k4d/execute_plan", lambda _m: self.execute(), RELIABLE_QOS)
        self.diag.extra.update({"moveit_msgs": str(self.pub_display is not None), "state": "idle"})
        self.get_logger().info(f"planner ready (auto_execute={self.cfg.auto_execute}); executes on "
                               f"{self.cfg.trajectory_topic}")

    def _on_config(self, cfg: PlannerNodeConfig) -> None:
        self.cfg = cfg

    # -- inputs ---------------------------------------------------------------------------------
    def _on_joint_state(self, msg: JointState) -> None:
        try:
            self.joints.update(joint_values_from_state(msg.name, msg.position))
            self.joints_at = time.monotonic()
        except ValueError as exc:
            self._log_error(f"joint_states dropped: {exc}")
            return
        early, self._early_goal = self._early_goal, None
        if early is not None:
            handler, goal_msg, arrived = early
            if time.monotonic() - arrived <= EARLY_GOAL_WAIT_S:
                handler(goal_msg)
            else:
                self._fail("joints" if handler == self._on_goal_joints else "pose",
                           ValueError(f"no /joint_states within {EARLY_GOAL_WAIT_S:g} s of the goal"))

    def _held_for_first_joint_state(self, handler, msg) -> bool:
        """Keep a goal that arrives before any /joint_states (the newest one) until the first joint state; True
        when held. Once joint states have arrived, a stale state fails the goal as before (current_q)."""
        if self.joints_at > -math.inf:
            return False
        self._early_goal = (handler, msg, time.monotonic())
        self.get_logger().info("goal held until the first /joint_states arrives")
        return True

    def current_q(self) -> np.ndarray:
        """(J,) current joints in robot order; ValueError when stale or incomplete."""
        age = time.monotonic() - self.joints_at
        if age > self.cfg.joint_state_timeout_s:
            raise ValueError(f"no /joint_states for {age:.1f} s (joint_state_timeout_s {self.cfg.joint_state_timeout_s})")
        missing = [j for j in self.robot.joint_names if j not in self.joints]
        if missing:
            raise ValueError(f"/joint_states lacks joint(s) {missing}")
        q = np.array([self.joints[j] for j in self.robot.joint_names])
        return np.clip(q, self.robot.lower, self.robot.upper)

    def _on_goal_joints(self, msg: JointState) -> None:
        if self._held_for_first_joint_state(self._on_goal_joints, msg):
            return
        try:
            goal = joint_values_from_state(msg.name, msg.position, "goal_joints")
            unknown = [n for n in goal if n not in self.robot.joint_names]
            if unknown:
                raise ValueError(f"goal_joints: unknown joint(s) {unknown}; robot joints are {self.robot.joint_names}")
            q = self.current_q()
            arm = q[self.planner.arm_idx].copy()
            for k, name in enumerate(self.planner.robot.joint_names[i] for i in self.planner.arm_idx):
                arm[k] = goal.get(name, arm[k])
            self._plan(("joints", self.planner.arm_q(arm, "goal_joints")), q)
        except Exception as exc:  # noqa: BLE001 - bad goals never stop the node
            self._fail("joints", exc)

    def _on_goal_pose(self, msg: PoseStamped) -> None:
        if self._held_for_first_joint_state(self._on_goal_pose, msg):
            return
        try:
            frame = msg.header.frame_id or self.cfg.base_frame
            if frame != self.cfg.base_frame:
                raise ValueError(f"goal_pose frame_id '{frame}' is not the base frame '{self.cfg.base_frame}' "
                                 "(no TF here: give TCP goals in the base frame)")
            self._plan(("pose", pose_to_matrix(msg.pose)), self.current_q())
        except Exception as exc:  # noqa: BLE001
            self._fail("pose", exc)

    # -- planning / execution -------------------------------------------------------------------
    def _solve(self, goal, q_start: np.ndarray):
        kind, value = goal
        if kind == "joints":
            return self.planner.plan_joint(q_start, value)
        return self.planner.plan_cartesian(q_start, value, linear=self.cfg.cartesian_linear)

    def _plan(self, goal, q_start: np.ndarray) -> None:
        t0 = time.perf_counter()
        traj = self._solve(goal, q_start)
        self.plan, self.plan_goal = traj, goal
        self.stats.record(time.perf_counter() - t0)
        header = Header(stamp=self.get_clock().now().to_msg(), frame_id=self.cfg.base_frame)
        msg = data_to_joint_trajectory(traj, header)
        self.pub_plan.publish(msg)
        if self.pub_display is not None:
            self.pub_display.publish(self._display(msg, q_start))
        self._status("planned", goal[0], traj)
        self.diag.extra["state"] = "planned"
        if self.cfg.auto_execute:
            self.execute()

    def execute(self) -> bool:
        """Send the last plan to the controller (re-planned from the current state if the arm moved)."""
        if self.plan is None:
            self._fail("execute", ValueError("no plan to execute"))
            return False
        try:
            q = self.current_q()
            dev = np.abs(q[self.planner.arm_idx] - np.asarray(self.plan.positions[0]))
            if dev.max() > self.cfg.start_tolerance:
                self.get_logger().info(f"arm moved {dev.max():.3f} rad since planning: re-planning")
                self._plan(self.plan_goal, q)
                if self.cfg.auto_execute:
                    return True  # _plan executed it
            msg = data_to_joint_trajectory(self.plan, Header(frame_id=self.cfg.base_frame))  # stamp 0: start now
            self.pub_exec.publish(msg)
        except Exception as exc:  # noqa: BLE001
            self._fail("execute", exc)
            return False
        self._status("executing", self.plan_goal[0], self.plan)
        self.diag.extra["state"] = "executing"
        return True

    def _display(self, traj_msg: JointTrajectory, q_start: np.ndarray):
        from moveit_msgs.msg import DisplayTrajectory, RobotTrajectory

        d = DisplayTrajectory()
        d.trajectory = [RobotTrajectory(joint_trajectory=traj_msg)]
        d.trajectory_start.joint_state.name = list(self.robot.joint_names)
        d.trajectory_start.joint_state.position = [float(v) for v in q_start]
        return d

    def _status(self, event: str, goal: str, traj=None, error: str = "") -> None:
        body = {"event": event, "goal": goal, "error": error}
        if traj is not None:
            body.update(duration_s=round(float(traj.times[-1]), 4), points=int(len(traj.times)))
        self.pub_status.publish(String(data=json.dumps(body)))

    def _fail(self, goal: str, exc: BaseException) -> None:
        message = f"{goal} goal failed: {first_line(exc)}"
        self.stats.error(message)
        self.stats.dropped += 1
        self._log_error(message)
        self._status("failed", goal, error=first_line(exc))
        self.diag.extra["state"] = "failed"


def main(args=None) -> int:
    from k4d_kinematics.ros.node_main import run_node

    return run_node(PlannerNode, "k4d_planner", args)


if __name__ == "__main__":
    sys.exit(main())

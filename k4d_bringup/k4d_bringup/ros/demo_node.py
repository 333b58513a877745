"""demo_node: the scripted pick-and-place demo, driving planner_node (preview, then execute) and the gripper.

    python -m k4d_bringup.ros.demo_node --ros-args --params-file k4d_bringup/config/demo_node.yaml

Each episode reads the ground-truth object states, builds the step list of ``k4d_bringup.demo.pick_place_steps``
(open, hover, descend, close, lift, carry, lower, release, retreat, home) and runs it: a pose or joint goal
goes to planner_node, whose plan is previewed for ``preview_s`` (plan_node renders its pointmaps and the RViz
ghost) before ``k4d/execute_plan``; the node then waits for the trajectory's duration plus ``settle_s``.
Episodes alternate: even ones place the target object in the zone, odd ones put it back where it started,
so the demo loops without resetting the sim. Success (object inside the zone) is logged per episode.

Subscribes: ``/k4d/sim/object_states`` (MarkerArray, ns target/zone), ``k4d/planner_status`` (String JSON),
``/joint_states``. Publishes: ``k4d/goal_pose`` (PoseStamped), ``k4d/goal_joints`` (JointState),
``k4d/execute_plan`` (Empty), ``gripper_topic`` (Float64, metres), ``k4d/demo_status`` (String JSON per
step and episode), ``/diagnostics``.
"""
from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass, field
from typing import Iterator, Optional

import numpy as np
from geometry_msgs.msg import PoseStamped
from rclpy.node import Node
from sensor_msgs.msg import JointState
from std_msgs.msg import Empty, Float64, Header, String
from visualization_msgs.msg import Marker, MarkerArray

from k4d_bringup.demo import DemoStep, pick_place_steps
from k4d_bringup.sim.policies import classify, object_tilt_deg
from k4d_kinematics.ros.diagnostics import DiagnosticsPublisher, RateLatencyStats
from k4d_kinematics.ros.params import declare_config
from k4d_kinematics.ros.qos import RELIABLE_QOS, SENSOR_QOS
from k4d_kinematics.config import param_doc

ARM = ("joint1", "joint2", "joint3", "joint4", "joint5", "joint6")


_doc = param_doc


@dataclass
class DemoNodeConfig:
    """Parameters of demo_node (one ROS parameter per field)."""

    episodes: int = field(default=0, metadata=_doc("Episodes to run; 0 = loop forever."))
    start_delay_s: float = field(default=2.0, metadata=_doc("Wait this long after start-up (graph discovery)."))
    preview_s: float = field(default=0.5, metadata=_doc("Show each plan this long before executing it."))
    settle_s: float = field(default=0.15, metadata=_doc("Extra wait after a trajectory's last point."))
    plan_timeout_s: float = field(default=5.0, metadata=_doc("Give up on a goal when no plan arrives in time."))
    home_q: list[float] = field(default_factory=lambda: [0.0, 1.6535, 1.7486, -1.6659, 0.0, 0.0], metadata=_doc(
        "Arm joints (rad, joint1..6) the arm returns to after each episode."))
    base_frame: str = field(default="base", metadata=_doc("Frame of the pose goals.", True))
    gripper_topic: str = field(default="/gripper_controller/command", metadata=_doc(
        "std_msgs/Float64 gripper opening (m).", True))

    def __post_init__(self):
        if isinstance(self.episodes, bool) or not isinstance(self.episodes, int) or self.episodes < 0:
            raise ValueError(f"episodes must be an integer >= 0, got {self.episodes!r}")
        for name in ("start_delay_s", "preview_s", "settle_s", "plan_timeout_s"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be >= 0, got {v!r}")
        if len(self.home_q) != 6 or not all(math.isfinite(float(v)) for v in self.home_q):
            raise ValueError(f"home_q must be 6 finite joint angles (rad), got {self.home_q!r}")


class DemoNode(Node):
    """Runs pick-and-place episodes as a coroutine stepped by a 20 Hz timer (see module doc)."""

    def __init__(self, node_name: str = "k4d_demo", **kwargs):
        super().__init__(node_name, **kwargs)
        self.cfg: DemoNodeConfig = declare_config(self, DemoNodeConfig, lambda c: setattr(self, "cfg", c))
        self.objects: dict[tuple[str, int], object] = {}
        self.statuses: list[dict] = []
        self.have_joints = False
        self.stats = RateLatencyStats(window_s=600.0)   # one record per successful episode
        self.diag = DiagnosticsPublisher(self)
        self.diag.add("episodes", self.stats)
        self.episode = 0
        self.successes = 0
        self.pub_pose = self.create_publisher(PoseStamped, "k4d/goal_pose", RELIABLE_QOS)
        self.pub_joints = self.create_publisher(JointState, "k4d/goal_joints", RELIABLE_QOS)
        self.pub_exec = self.create_publisher(Empty, "k4d/execute_plan", RELIABLE_QOS)
        self.pub_grip = self.create_publisher(Float64, self.cfg.gripper_topic, RELIABLE_QOS)
        self.pub_status = self.create_publisher(String, "k4d/demo_status", RELIABLE_QOS)
        self.create_subscription(MarkerArray, "/k4d/sim/object_states", self._on_objects, RELIABLE_QOS)
        self.sub_status = self.create_subscription(String, "k4d/planner_status", self._on_planner_status,
                                                   RELIABLE_QOS)
        self.create_subscription(JointState, "/joint_states", self._on_joints, SENSOR_QOS)
        self._task: Optional[Iterator] = self._run()
        self._wait_until = time.monotonic() + self.cfg.start_delay_s
        self.create_timer(0.05, self._tick)
        self.get_logger().info(f"demo ready: {self.cfg.episodes or 'endless'} pick-and-place episode(s)")

    # -- inputs ---------------------------------------------------------------------------------
    def _on_objects(self, msg: MarkerArray) -> None:
        for m in msg.markers:
            self.objects[(m.ns, m.id)] = m

    def _on_planner_status(self, msg: String) -> None:
        try:
            self.statuses.append(json.loads(msg.data))
        except ValueError:
            self.get_logger().warn(f"unparseable planner status: {msg.data[:100]!r}")

    def _on_joints(self, _msg: JointState) -> None:
        self.have_joints = True

    def target(self):
        """(xyz (3,), half height, yaw, kind "cube" | "cylinder", quat_wxyz (4,)) of the target object, or None
        before object states arrive."""
        from scipy.spatial.transform import Rotation

        m = next((m for (ns, _i), m in sorted(self.objects.items()) if ns == "target"), None)
        if m is None:
            return None
        p, o = m.pose.position, m.pose.orientation
        yaw = Rotation.from_quat([o.x, o.y, o.z, o.w]).as_euler("xyz")[2]
        kind = "cylinder" if m.type == Marker.CYLINDER else "cube"
        return np.array([p.x, p.y, p.z]), 0.5 * m.scale.z, float(yaw), kind, np.array([o.w, o.x, o.y, o.z])

    def zone(self):
        m = self.objects.get(("zone", 0))
        return None if m is None else (np.array([m.pose.position.x, m.pose.position.y]), 0.5 * m.scale.x)

    # -- the coroutine --------------------------------------------------------------------------
    def _tick(self) -> None:
        if self._task is None or time.monotonic() < self._wait_until:
            return
        try:
            wait = next(self._task)
        except StopIteration:
            self._task = None
            self.get_logger().info(f"demo finished: {self.successes}/{self.episode} episodes succeeded")
            return
        self._wait_until = time.monotonic() + float(wait or 0.0)

    def _publish_status(self, **body) -> None:
        self.pub_status.publish(String(data=json.dumps(body)))

    def _run(self) -> Iterator[float]:
        """Yields seconds to wait before being resumed."""
        while not (self.have_joints and self.target() is not None and self.zone() is not None):
            yield 0.2
        # The planner must be listening before the first goal: on a loaded machine its process can come up after
        # ours, and a goal published before the match is lost (the step then times out).
        waited = False
        while not self._planner_connected():
            if not waited:
                self.get_logger().info("waiting for the planner (k4d/goal_pose, k4d/goal_joints, k4d/execute_plan, "
                                       "k4d/planner_status)")
                waited = True
            yield 0.2
        start_xy = self.target()[0][:2].copy()
        home = dict(zip(ARM, (float(v) for v in self.cfg.home_q)))
        while self.cfg.episodes == 0 or self.episode < self.cfg.episodes:
            self.episode += 1
            (xyz, half_h, yaw, kind, _q), (zone_xy, zone_r) = self.target(), self.zone()
            to_zone = self.episode % 2 == 1
            place_xy = zone_xy if to_zone else start_xy
            self.get_logger().info(f"episode {self.episode}: pick the target at {np.round(xyz, 3).tolist()} and "
                                   f"place it {'in the zone' if to_zone else 'back'} at {np.round(place_xy, 3).tolist()}")
            t_ep = time.monotonic()
            ok = True
            for step in pick_place_steps(xyz, half_h, place_xy, home, obj_yaw=yaw, obj_kind=kind):
                result = yield from self._do(step)
                self._publish_status(episode=self.episode, step=step.label, ok=result)
                if not result:
                    ok = False
                    self.get_logger().warn(f"episode {self.episode}: step '{step.label}' failed; going home")
                    yield from self._do(DemoStep("gripper", "open", width_m=0.08, settle_s=0.3))
                    yield from self._do(DemoStep("joints", "home", joints=home))
                    break
            yield 0.5  # let the object settle before judging
            final, *_, final_quat = self.target()
            # the same success predicate as the scripted policies (in the zone, resting on the table, upright)
            goal_ok = classify("pick_place", final, xyz[:2], place_xy if to_zone else start_xy,
                               zone_r if to_zone else 0.03, rest_z=half_h, max_lift=0.0,
                               tilt_deg=object_tilt_deg(final_quat, kind)).success
            success = ok and goal_ok
            self.successes += int(success)
            if success:
                self.stats.record(time.monotonic() - t_ep)
            else:
                self.stats.error(f"episode {self.episode} failed (object at {np.round(final, 3).tolist()})")
            self.diag.extra.update(episodes=str(self.episode), successes=str(self.successes))
            self._publish_status(episode=self.episode, success=success, object_xyz=np.round(final, 4).tolist(),
                                 duration_s=round(time.monotonic() - t_ep, 2))
            self.get_logger().info(f"episode {self.episode}: {'success' if success else 'FAILED'} "
                                   f"({time.monotonic() - t_ep:.1f} s); {self.successes}/{self.episode} so far")

    def _planner_connected(self) -> bool:
        return (min(p.get_subscription_count() for p in (self.pub_pose, self.pub_joints, self.pub_exec)) > 0
                and self.sub_status.get_publisher_count() > 0)

    def _do(self, step: DemoStep) -> Iterator[float]:
        """Run one step; the generator's return value says whether it worked."""
        if step.kind == "gripper":
            self.pub_grip.publish(Float64(data=float(step.width_m)))
            yield step.settle_s
            return True
        n0 = len(self.statuses)
        header = Header(stamp=self.get_clock().now().to_msg(), frame_id=self.cfg.base_frame)
        if step.kind == "pose":
            self.pub_pose.publish(_pose_msg(step.pose, header))
        else:
            self.pub_joints.publish(JointState(header=header, name=list(step.joints),
                                               position=[float(v) for v in step.joints.values()]))
        planned = yield from self._await_status(n0, ("planned", "failed"))
        if planned is None or planned["event"] != "planned":
            return False
        yield self.cfg.preview_s
        n1 = len(self.statuses)
        self.pub_exec.publish(Empty())
        executing = yield from self._await_status(n1, ("executing", "failed"))
        if executing is None or executing["event"] != "executing":
            return False
        yield float(executing.get("duration_s", 0.0)) + self.cfg.settle_s
        return True

    def _await_status(self, since: int, events) -> Iterator[float]:
        deadline = time.monotonic() + self.cfg.plan_timeout_s
        while time.monotonic() < deadline:
            for s in self.statuses[since:]:
                if s.get("event") in events:
                    return s
            yield 0.0
        self.get_logger().warn(f"no planner status {events} within {self.cfg.plan_timeout_s} s")
        return None


def _pose_msg(T: np.ndarray, header: Header) -> PoseStamped:
    from scipy.spatial.transform import Rotation

    msg = PoseStamped(header=header)
    msg.pose.position.x, msg.pose.position.y, msg.pose.position.z = (float(v) for v in T[:3, 3])
    x, y, z, w = Rotation.from_matrix(T[:3, :3]).as_quat()
    msg.pose.orientation.x, msg.pose.orientation.y, msg.pose.orientation.z, msg.pose.orientation.w = \
        float(x), float(y), float(z), float(w)
    return msg


def main(args=None) -> int:
    from k4d_kinematics.ros.node_main import run_node

    return run_node(DemoNode, "k4d_demo", args)


if __name__ == "__main__":
    sys.exit(main())

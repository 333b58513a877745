"""plan_node: planned trajectories -> robot pointmap sequences (Kinema4D's control signal) + an RViz ghost.

    .venv/bin/plan_node --ros-args --params-file k4d_kinematics/config/plan_node.yaml

Subscribes
- ``k4d/planned_trajectory`` (trajectory_msgs/JointTrajectory, RELIABLE_QOS).
- ``display_trajectory_topic`` (moveit_msgs/DisplayTrajectory, RELIABLE_QOS; default /display_planned_path),
  only when moveit_msgs imports and ``use_display_trajectory`` is true. Segments ``trajectory[]`` are
  chained; ``trajectory_start.joint_state`` fills joints the plan does not move.
- ``joint_states`` (sensor_msgs/JointState, SENSOR_QOS): fills joints absent from a plan (after the start state).
- ``camera_info_topic`` (sensor_msgs/CameraInfo, SENSOR_QOS) unless ``camera_info_file`` is set;
  ``robot_description_topic`` for description_source 'topic'.
Publishes
- ``k4d/plan_pointmaps`` (k4d_msgs/PointmapSequence, RELIABLE_QOS, source PLAN): ``num_frames`` frames,
  resampled over the plan duration (or at camera timestamps k / fps), camera optical frame; stamp = the
  plan's header stamp (now when zero).
- ``k4d/plan_ghost`` (visualization_msgs/MarkerArray, LATCHED_QOS): a DELETEALL, then one translucent
  TRIANGLE_LIST of the link meshes per ghost pose (``ghost_frames`` evenly over the plan, blue -> orange),
  in the robot base frame.
- ``/diagnostics``.
"""
from __future__ import annotations

import dataclasses
import sys
import time
from typing import Mapping, Optional

import numpy as np
from geometry_msgs.msg import Point
from k4d_msgs.msg import PointmapSequence
from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, JointState
from std_msgs.msg import ColorRGBA, Header
from trajectory_msgs.msg import JointTrajectory
from visualization_msgs.msg import Marker, MarkerArray

from k4d_kinematics.camera import PinholeCamera
from k4d_kinematics.config import PlanNodeConfig
from k4d_kinematics.pointmap import PointmapRenderer
from k4d_kinematics.robot import RobotModel
from k4d_kinematics.ros.conversions import (camera_info_to_camera, joint_trajectory_to_data, pointmap_sequence_to_msg,
                                            time_from_ns, time_to_ns)
from k4d_kinematics.ros.description_source import DescriptionSource
from k4d_kinematics.ros.diagnostics import DiagnosticsPublisher, RateLatencyStats
from k4d_kinematics.ros.extrinsics_source import ExtrinsicsSource
from k4d_kinematics.ros.node_logic import (JointStateMerger, ThrottledLog, complete_trajectory,
                                           extract_display_trajectory, first_line, ghost_color, ghost_frame_indices,
                                           ghost_triangles, resolve_camera_frame)
from k4d_kinematics.ros.node_main import run_node
from k4d_kinematics.ros.params import declare_config
from k4d_kinematics.ros.qos import LATCHED_QOS, RELIABLE_QOS, SENSOR_QOS
from k4d_kinematics.sequence import JointTrajectoryData, PointmapSequenceData, resample

GHOST_NS = "k4d_plan_ghost"


def ghost_markers(model: RobotModel, Q: np.ndarray, cfg: PlanNodeConfig, stamp) -> MarkerArray:
    """MarkerArray: DELETEALL, then one TRIANGLE_LIST per ghost pose of Q (T, J), in the robot base frame."""
    out = MarkerArray(markers=[Marker(action=Marker.DELETEALL, ns=GHOST_NS)])
    idx = ghost_frame_indices(len(Q), cfg.ghost_frames)
    T_all = model.fk(Q[idx], limits="ignore")  # (K, L, 4, 4); Q was validated by complete_trajectory
    for k, T_base_link in enumerate(T_all):
        verts = ghost_triangles(model, T_base_link, cfg.ghost_max_triangles)
        m = Marker(ns=GHOST_NS, id=k, type=Marker.TRIANGLE_LIST, action=Marker.ADD)
        m.header = Header(stamp=stamp, frame_id=model.root_link)
        m.pose.orientation.w = 1.0
        m.scale.x = m.scale.y = m.scale.z = 1.0
        m.color = ColorRGBA(**dict(zip("rgba", ghost_color(k, len(idx), cfg.ghost_alpha))))
        m.points = [Point(x=x, y=y, z=z) for x, y, z in verts.tolist()]
        out.markers.append(m)
    return out


class PlanNode(Node):
    """Renders planned trajectories into PointmapSequence messages (see module doc)."""

    def __init__(self, node_name: str = "plan_node", **kwargs):
        super().__init__(node_name, **kwargs)
        # 1. Parameters
        self.cfg: PlanNodeConfig = declare_config(self, PlanNodeConfig, self._on_config)
        cfg = self.cfg
        # 2. Diagnostics and rate-limited error reporting
        # (a separate "inputs" status keeps a 30 Hz camera_info error from hiding the last plan's error)
        self.stats = RateLatencyStats(window_s=60.0)
        self.input_stats = RateLatencyStats()
        self.diag = DiagnosticsPublisher(self)
        self.diag.add("plan pointmaps", self.stats)
        self.diag.add("inputs", self.input_stats)
        self._log_error = ThrottledLog(self.get_logger().error)
        # 3. Inputs
        self.joints = JointStateMerger()
        self.extrinsics = ExtrinsicsSource(self, cfg)
        self.camera: Optional[PinholeCamera] = None
        if cfg.camera_info_file:
            frame = resolve_camera_frame(cfg.camera_frame, "", self.extrinsics.file_child_frame)
            self.camera = PinholeCamera.from_yaml(cfg.camera_info_file, frame_id=frame)
        self._renderer: Optional[PointmapRenderer] = None
        self._renderer_key = None
        self.description = DescriptionSource(self, cfg, self._on_model, self._report_input)
        # 4. Outputs
        self.pub_seq = self.create_publisher(PointmapSequence, "k4d/plan_pointmaps", RELIABLE_QOS)
        self.pub_ghost = self.create_publisher(MarkerArray, "k4d/plan_ghost", LATCHED_QOS)
        # 5. Subscriptions
        self.create_subscription(JointState, "joint_states", self._on_joint_state, SENSOR_QOS)
        if not cfg.camera_info_file:
            self.create_subscription(CameraInfo, cfg.camera_info_topic, self._on_camera_info, SENSOR_QOS)
        self.create_subscription(JointTrajectory, "k4d/planned_trajectory", self._on_trajectory, RELIABLE_QOS)
        self.moveit = False
        if cfg.use_display_trajectory:
            try:
                from moveit_msgs.msg import DisplayTrajectory
            except ImportError:
                self.get_logger().info("moveit_msgs is not installed: not subscribing to "
                                       f"{cfg.display_trajectory_topic}")
            else:
                self.create_subscription(DisplayTrajectory, cfg.display_trajectory_topic, self._on_display_trajectory,
                                         RELIABLE_QOS)
                self.moveit = True
        self.diag.extra.update({"robot": self.description.summary, "moveit_msgs": str(self.moveit),
                                "num_frames": str(cfg.num_frames)})
        self.get_logger().info(f"plan_node ready: robot {self.description.summary}; {cfg.num_frames} frames per plan")

    def _on_model(self, model: Optional[RobotModel]) -> None:
        if hasattr(self, "description"):
            self.diag.extra["robot"] = self.description.summary
        if model is not None:
            self.get_logger().info(f"robot model: {model!r}")

    def _on_config(self, cfg: PlanNodeConfig) -> None:
        self.cfg = cfg
        self.extrinsics.configure(cfg)
        self.diag.extra["num_frames"] = str(cfg.num_frames)

    def _report(self, message: str, stats: Optional[RateLatencyStats] = None) -> None:
        """Bad input: count it, show it in /diagnostics, log it (rate-limited). The message is dropped."""
        stats = self.stats if stats is None else stats
        stats.error(message)
        stats.dropped += 1
        self._log_error(message)

    def _report_input(self, message: str) -> None:
        self._report(message, self.input_stats)

    # -- inputs -------------------------------------------------------------------------------
    def _on_joint_state(self, msg: JointState) -> None:
        t0 = time.perf_counter()
        try:
            self.joints.update(msg.name, msg.position, time_to_ns(msg.header.stamp), self.description.model,
                               self.cfg.unknown_joints, self.cfg.joint_limits)
        except Exception as exc:  # noqa: BLE001 - bad input never stops the node
            self._report_input(f"joint_states dropped: {first_line(exc)}")
            return
        self.input_stats.record(time.perf_counter() - t0)

    def _on_camera_info(self, msg: CameraInfo) -> None:
        t0 = time.perf_counter()
        try:
            frame = resolve_camera_frame(self.cfg.camera_frame, msg.header.frame_id, self.extrinsics.file_child_frame)
            self.camera = dataclasses.replace(camera_info_to_camera(msg), frame_id=frame)
        except Exception as exc:  # noqa: BLE001
            self.camera = None  # never render with intrinsics the camera no longer reports
            self._report_input(f"camera_info dropped: {first_line(exc)}")
            return
        self.input_stats.record(time.perf_counter() - t0)

    def _on_trajectory(self, msg: JointTrajectory) -> None:
        try:
            traj = joint_trajectory_to_data(msg)
        except Exception as exc:  # noqa: BLE001
            self._report(f"planned_trajectory dropped: {first_line(exc)}")
            return
        self.process(traj, dict(self.joints.values), time_to_ns(msg.header.stamp), "k4d/planned_trajectory")

    def _on_display_trajectory(self, msg) -> None:
        try:
            traj, start, stamp_ns = extract_display_trajectory(msg)
        except Exception as exc:  # noqa: BLE001
            self._report(f"display trajectory dropped: {first_line(exc)}")
            return
        self.process(traj, {**self.joints.values, **start}, stamp_ns, self.cfg.display_trajectory_topic)

    # -- core ---------------------------------------------------------------------------------
    def process(self, traj: JointTrajectoryData, fill: Mapping[str, float], stamp_ns: int, source_id: str) -> bool:
        """Complete, resample, render and publish one plan. Returns False (and reports) on bad input."""
        t0 = time.perf_counter()
        want_seq = self.pub_seq.get_subscription_count() > 0
        want_ghost = self.cfg.ghost_frames > 0
        try:
            model, cam, cfg = self.description.model, self.camera, self.cfg
            if model is None:
                raise ValueError(self.description.error or "no robot model")
            if cam is None:
                raise ValueError("no valid camera intrinsics yet (waiting for camera_info)")
            full = complete_trajectory(traj, model, fill, cfg.unknown_joints, cfg.joint_limits, cfg.missing_joints)
            res = resample(full, num_frames=cfg.num_frames, fps=cfg.fps if cfg.fps > 0 else None)
            Q = np.asarray(res.positions, np.float64)
            # header.stamp is the time of frame 0 (k4d_msgs/PointmapSequence): plan stamp (now if 0) + first time
            stamp_ns = (stamp_ns or self.get_clock().now().nanoseconds) + int(round(res.times[0] * 1e9))
            times = np.asarray(res.times, np.float64) - res.times[0]
            seq_msg = None
            if want_seq:
                xyz, link = self._renderer_for(model, cam).render_sequence(Q, out=self._sequence_buffers(len(Q), cam))
                seq = PointmapSequenceData(
                    xyz=xyz, link=link, times=times, joint_names=list(model.joint_names),
                    positions=Q, link_names=list(model.link_names), camera=cam, source="plan", source_id=source_id,
                    base_frame=model.root_link, stamp_ns=stamp_ns)
                seq_msg = pointmap_sequence_to_msg(seq)
            ghost = ghost_markers(model, Q, cfg, seq_msg.header.stamp if seq_msg else time_from_ns(stamp_ns)) \
                if want_ghost else None
        except Exception as exc:  # noqa: BLE001
            self._report(f"plan from {source_id} dropped: {first_line(exc)}")
            return False
        if seq_msg is not None:
            self.pub_seq.publish(seq_msg)
        if ghost is not None:
            self.pub_ghost.publish(ghost)
        self.stats.record(time.perf_counter() - t0)
        return True

    def _sequence_buffers(self, frames: int, cam) -> tuple[np.ndarray, np.ndarray]:
        """Output arrays reused from plan to plan (the message conversion copies them): fresh ~200 MB
        arrays per 49-frame 480x720 plan cost as much page-faulting as the rendering itself."""
        shape = (frames, cam.height, cam.width)
        buf = getattr(self, "_seq_buf", None)
        if buf is None or buf[1].shape != shape:
            buf = (np.empty(shape + (3,), np.float32), np.empty(shape, np.int16))
            self._seq_buf = buf
        return buf

    def _renderer_for(self, model: RobotModel, cam: PinholeCamera) -> PointmapRenderer:
        ext = self.extrinsics.get(model.root_link, cam.frame_id)
        key = (id(model), dataclasses.astuple(cam), ext.T_base_cam.tobytes())
        if key != self._renderer_key:
            self._renderer, self._renderer_key = PointmapRenderer(model, cam, ext), key
        return self._renderer


def main(args=None) -> int:
    return run_node(PlanNode, "plan_node", args)


if __name__ == "__main__":
    sys.exit(main())

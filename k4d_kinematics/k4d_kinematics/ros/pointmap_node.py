"""pointmap_node: the live robot pointmap and robot mask, pixel-aligned with the camera, at camera rate.

    .venv/bin/pointmap_node --ros-args --params-file k4d_kinematics/config/pointmap_node.yaml

Subscribes
- ``joint_states`` (sensor_msgs/JointState, SENSOR_QOS): partial updates are merged by joint name.
- ``camera_info_topic`` (sensor_msgs/CameraInfo, SENSOR_QOS), unless ``camera_info_file`` is set.
- ``trigger_image_topic`` (sensor_msgs/Image, SENSOR_QOS), only when set.
- ``robot_description_topic`` (std_msgs/String, LATCHED_QOS), only for description_source 'topic'.
Publishes (SENSOR_QOS, frame = camera OPTICAL frame, stamp = time of the newest joint state)
- ``k4d/robot_pointmap`` (sensor_msgs/PointCloud2): organised H x W cloud, x/y/z float32 (point_step 16),
  NaN off-robot, is_dense false.
- ``k4d/robot_mask`` (sensor_msgs/Image mono8): 255 robot, 0 background.
- ``/diagnostics``: rate, latency, errors.
One frame is rendered per CameraInfo (or per trigger image; with a camera file, per tick of a
``rate_hz`` timer), and none while nobody subscribes to either output. The node only decodes
messages, calls ``PointmapRenderer`` and encodes; bad input is logged (rate-limited), reported in
/diagnostics and dropped.
"""
from __future__ import annotations

import dataclasses
import sys
import time
from typing import Optional

import numpy as np
from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, Image, JointState, PointCloud2
from std_msgs.msg import Header

from k4d_kinematics.camera import PinholeCamera
from k4d_kinematics.config import PointmapNodeConfig
from k4d_kinematics.pointmap import Pointmap, PointmapRenderer
from k4d_kinematics.robot import RobotModel
from k4d_kinematics.ros.conversions import (camera_info_to_camera, numpy_to_image, time_from_ns, time_to_ns,
                                            xyz_to_pointcloud2)
from k4d_kinematics.ros.description_source import DescriptionSource
from k4d_kinematics.ros.diagnostics import DiagnosticsPublisher, RateLatencyStats
from k4d_kinematics.ros.extrinsics_source import ExtrinsicsSource
from k4d_kinematics.ros.node_logic import JointStateMerger, ThrottledLog, first_line, resolve_camera_frame
from k4d_kinematics.ros.node_main import run_node
from k4d_kinematics.ros.params import declare_config
from k4d_kinematics.ros.qos import SENSOR_QOS


class RendererCache:
    """One PointmapRenderer per (model, camera, extrinsics) and the last rendered frame per q."""

    def __init__(self, num_threads: Optional[int] = None):
        self.num_threads = num_threads
        self._key = None
        self.renderer: Optional[PointmapRenderer] = None
        self._last_q: Optional[bytes] = None
        self._last_pm: Optional[Pointmap] = None

    def get(self, model: RobotModel, camera: PinholeCamera, ext) -> PointmapRenderer:
        key = (id(model), dataclasses.astuple(camera), ext.T_base_cam.tobytes(), ext.parent_frame, ext.child_frame)
        if key != self._key:
            self.renderer = PointmapRenderer(model, camera, ext, num_threads=self.num_threads)
            self._key, self._last_q, self._last_pm = key, None, None
        return self.renderer

    def render(self, renderer: PointmapRenderer, q: np.ndarray) -> Pointmap:
        qb = np.asarray(q, np.float64).tobytes()
        if qb != self._last_q:
            self._last_pm, self._last_q = renderer.render(q), qb
        return self._last_pm


def warm_up(model: RobotModel) -> None:
    """Compile the numba kernels (or load their cache) once, so the first camera frame is not late."""
    from k4d_kinematics.camera import Extrinsics

    cam = PinholeCamera(8, 8, 8.0, 8.0, 3.5, 3.5)
    ext = Extrinsics.look_at((1.0, 0.0, 0.5), (0.0, 0.0, 0.2), parent_frame=model.root_link, child_frame=cam.frame_id)
    q = np.clip(np.zeros(model.num_joints), model.lower, model.upper)
    PointmapRenderer(model, cam, ext, num_threads=1).render(q)


class PointmapNode(Node):
    """Live robot pointmap + mask from /joint_states, camera intrinsics and extrinsics (see module doc)."""

    def __init__(self, node_name: str = "pointmap_node", **kwargs):
        super().__init__(node_name, **kwargs)
        # 1. Parameters (one per PointmapNodeConfig field; validated by the dataclass)
        self.cfg: PointmapNodeConfig = declare_config(self, PointmapNodeConfig, self._on_config)
        cfg = self.cfg
        # 2. Diagnostics and rate-limited error reporting
        self.stats = RateLatencyStats()
        self.diag = DiagnosticsPublisher(self)
        self.diag.add("robot pointmap", self.stats)
        self._log_error = ThrottledLog(self.get_logger().error)
        # 3. Inputs: joint state, extrinsics, intrinsics, robot description (start-up errors raise)
        self.joints = JointStateMerger()
        self._received = {"joint_states": 0, "camera_info": 0}  # message counts, shown in /diagnostics
        self.extrinsics = ExtrinsicsSource(self, cfg)
        self.camera: Optional[PinholeCamera] = None
        if cfg.camera_info_file:
            frame = resolve_camera_frame(cfg.camera_frame, "", self.extrinsics.file_child_frame)
            self.camera = PinholeCamera.from_yaml(cfg.camera_info_file, frame_id=frame)
        self.cache = RendererCache()
        self.description = DescriptionSource(self, cfg, self._on_model, self._report)
        # 4. Outputs
        self.pub_cloud = self.create_publisher(PointCloud2, "k4d/robot_pointmap", SENSOR_QOS)
        self.pub_mask = self.create_publisher(Image, "k4d/robot_mask", SENSOR_QOS)
        # 5. Subscriptions and the render trigger
        self.create_subscription(JointState, "joint_states", self._on_joint_state, SENSOR_QOS)
        self._timer = None
        if cfg.camera_info_file:
            self._timer = self.create_timer(1.0 / cfg.rate_hz, self._render)
        else:
            self.create_subscription(CameraInfo, cfg.camera_info_topic, self._on_camera_info, SENSOR_QOS)
        if cfg.trigger_image_topic:
            self.create_subscription(Image, cfg.trigger_image_topic, lambda _msg: self._render(), SENSOR_QOS)
        self._update_diag_extra("waiting for joint_states")
        self.get_logger().info(
            f"pointmap_node ready: robot {self.description.summary}; camera "
            f"{cfg.camera_info_file or cfg.camera_info_topic}; extrinsics '{cfg.extrinsics_source}'")

    # -- configuration ------------------------------------------------------------------------
    def _on_config(self, cfg: PointmapNodeConfig) -> None:
        rate_changed = cfg.rate_hz != self.cfg.rate_hz
        self.cfg = cfg
        self.extrinsics.configure(cfg)
        if rate_changed and self._timer is not None:
            self._timer.cancel()
            self.destroy_timer(self._timer)
            self._timer = self.create_timer(1.0 / cfg.rate_hz, self._render)

    def _on_model(self, model: Optional[RobotModel]) -> None:
        if model is not None:
            warm_up(model)
            self.get_logger().info(f"robot model: {model!r}")
        self._update_diag_extra()

    def _update_diag_extra(self, state: Optional[str] = None) -> None:
        cam = self.camera
        self.diag.extra.update({
            "robot": self.description.summary if hasattr(self, "description") else "loading",
            "camera": f"{cam.width}x{cam.height} fx={cam.fx:.1f} frame={cam.frame_id}" if cam else "none yet",
            "extrinsics_source": self.cfg.extrinsics_source,
        })
        self.diag.extra.update({f"received_{k}": str(v) for k, v in self._received.items()})
        if state is not None:
            self.diag.extra["state"] = state

    def _count(self, topic: str) -> None:
        self._received[topic] += 1
        self.diag.extra[f"received_{topic}"] = str(self._received[topic])

    def _report(self, message: str) -> None:
        """Bad input: count it, show it in /diagnostics, log it (rate-limited). The message is dropped."""
        self.stats.error(message)
        self.stats.dropped += 1
        self._log_error(message)

    # -- callbacks ----------------------------------------------------------------------------
    def _on_joint_state(self, msg: JointState) -> None:
        self._count("joint_states")
        try:
            stamp_ns = time_to_ns(msg.header.stamp) or self.get_clock().now().nanoseconds
            self.joints.update(msg.name, msg.position, stamp_ns, self.description.model, self.cfg.unknown_joints,
                               self.cfg.joint_limits)
        except Exception as exc:  # noqa: BLE001 - bad input never stops the node
            self._report(f"joint_states dropped: {first_line(exc)}")

    def _on_camera_info(self, msg: CameraInfo) -> None:
        self._count("camera_info")
        try:
            frame = resolve_camera_frame(self.cfg.camera_frame, msg.header.frame_id, self.extrinsics.file_child_frame)
            cam = dataclasses.replace(camera_info_to_camera(msg), frame_id=frame)
        except Exception as exc:  # noqa: BLE001
            self.camera = None  # never render with intrinsics the camera no longer reports
            self._report(f"camera_info dropped: {first_line(exc)}")
            return
        if cam != self.camera:
            self.camera = cam
            self._update_diag_extra()
        if not self.cfg.trigger_image_topic:
            self._render()

    def _render(self) -> None:
        """Render and publish one frame for the newest joint state (no work while nobody subscribes)."""
        want_cloud = self.pub_cloud.get_subscription_count() > 0
        want_mask = self.pub_mask.get_subscription_count() > 0
        if not (want_cloud or want_mask):
            return
        t0 = time.perf_counter()
        try:
            model, cam = self.description.model, self.camera
            if model is None:
                raise ValueError(self.description.error or "no robot model")
            if cam is None:
                raise ValueError("no valid camera intrinsics (last camera_info was rejected)")
            if not self.joints.values:
                self._update_diag_extra("waiting for joint_states")
                return
            age = self.cfg.max_joint_state_age_s
            if age > 0 and time.monotonic() - self.joints.received_at > age:
                raise ValueError(f"newest joint state is older than max_joint_state_age_s={age} s")
            q = self.joints.q(model, self.cfg.missing_joints, self.cfg.joint_limits)
            renderer = self.cache.get(model, cam, self.extrinsics.get(model.root_link, cam.frame_id))
            pm = self.cache.render(renderer, q)
        except Exception as exc:  # noqa: BLE001
            self._report(f"no pointmap: {first_line(exc)}")
            return
        header = Header(stamp=time_from_ns(self.joints.stamp_ns), frame_id=cam.frame_id)
        if want_cloud:
            self.pub_cloud.publish(xyz_to_pointcloud2(pm.xyz, header))
        if want_mask:
            self.pub_mask.publish(numpy_to_image(np.where(pm.mask, 255, 0).astype(np.uint8), "mono8", header))
        self.stats.record(time.perf_counter() - t0)
        self.diag.extra["state"] = "publishing"


def main(args=None) -> int:
    return run_node(PointmapNode, "pointmap_node", args)


if __name__ == "__main__":
    sys.exit(main())

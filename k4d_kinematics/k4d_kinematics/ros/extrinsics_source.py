"""Camera extrinsics (T_base_cam, camera OPTICAL frame) for the k4d_kinematics nodes.

    src = ExtrinsicsSource(node, cfg)          # cfg: RobotCameraConfig
    ext = src.get("base", "camera_color_optical_frame")   # Extrinsics, or ValueError naming the problem

Sources (parameter ``extrinsics_source``):
- 'file': an extrinsics YAML (``Extrinsics.from_yaml``); its parent/child frames must be the robot base
  frame and the camera optical frame in use.
- 'params': ``extrinsics_xyz`` + ``extrinsics_quat_xyzw`` (the pose of the optical frame in the base frame).
- 'tf': a TF lookup base frame <- camera optical frame at the latest time. Needs ``tf2_ros``, which the
  pip-only install lacks: choosing 'tf' there is a start-up error. The message -> Extrinsics step,
  ``extrinsics_from_transform``, is ROS-free and tested on its own.
"""
from __future__ import annotations

from typing import Optional

from k4d_kinematics.camera import Extrinsics
from k4d_kinematics.config import RobotCameraConfig


def extrinsics_from_transform(tf) -> Extrinsics:
    """geometry_msgs/TransformStamped (duck-typed) of the camera optical frame in its parent -> Extrinsics.

    ``header.frame_id`` becomes ``parent_frame`` and ``child_frame_id`` the ``child_frame``; the
    transform maps child-frame points into the parent frame (the TF convention), i.e. T_base_cam.
    """
    t, r = tf.transform.translation, tf.transform.rotation
    if not tf.header.frame_id or not tf.child_frame_id:
        raise ValueError(f"transform needs header.frame_id and child_frame_id, got {tf.header.frame_id!r} -> "
                         f"{tf.child_frame_id!r}")
    return Extrinsics.from_xyz_quat([t.x, t.y, t.z], [r.x, r.y, r.z, r.w], parent_frame=tf.header.frame_id,
                                    child_frame=tf.child_frame_id)


def check_extrinsics_frames(ext: Extrinsics, base_frame: str, camera_frame: str, origin: str) -> Extrinsics:
    """ValueError unless ``ext`` goes from ``base_frame`` to ``camera_frame`` (a wrong frame = a wrong pointmap)."""
    if ext.parent_frame != base_frame:
        raise ValueError(f"{origin}: parent_frame '{ext.parent_frame}' is not the robot base frame '{base_frame}'")
    if ext.child_frame != camera_frame:
        raise ValueError(f"{origin}: child_frame '{ext.child_frame}' is not the camera optical frame '{camera_frame}'")
    return ext


class ExtrinsicsSource:
    """Camera pose from a YAML file, from parameters, or from TF (when tf2_ros imports)."""

    def __init__(self, node, cfg: RobotCameraConfig):
        self._node = node
        self._file_ext: Optional[Extrinsics] = None
        self._buffer = None
        self.configure(cfg)
        if cfg.extrinsics_source == "file":
            self._file_ext = Extrinsics.from_yaml(cfg.extrinsics_file)  # start-up error if broken
        elif cfg.extrinsics_source == "tf":
            try:
                import tf2_ros
            except ImportError as exc:
                raise ValueError("extrinsics_source 'tf' needs tf2_ros, which is not installed here; use "
                                 "extrinsics_source 'file' or 'params'") from exc
            self._buffer = tf2_ros.Buffer()
            self._listener = tf2_ros.TransformListener(self._buffer, node)

    def configure(self, cfg: RobotCameraConfig) -> None:
        """Take new parameter values ('params' source); the source itself is read-only."""
        self._cfg = cfg

    @property
    def file_child_frame(self) -> str:
        """The child frame of an extrinsics file ('' for other sources), used to name the camera frame."""
        return self._file_ext.child_frame if self._file_ext is not None else ""

    def get(self, base_frame: str, camera_frame: str) -> Extrinsics:
        cfg = self._cfg
        if cfg.extrinsics_source == "file":
            return check_extrinsics_frames(self._file_ext, base_frame, camera_frame,
                                           f"extrinsics_file '{cfg.extrinsics_file}'")
        if cfg.extrinsics_source == "params":
            return Extrinsics.from_xyz_quat(cfg.extrinsics_xyz, cfg.extrinsics_quat_xyzw, base_frame, camera_frame)
        from rclpy.duration import Duration
        from rclpy.time import Time

        try:
            tf = self._buffer.lookup_transform(base_frame, camera_frame, Time(),
                                               timeout=Duration(seconds=cfg.tf_timeout_s))
        except Exception as exc:  # noqa: BLE001 - tf2 lookup/connectivity/extrapolation errors
            raise ValueError(f"TF lookup {base_frame} <- {camera_frame} failed: {exc}") from None
        return check_extrinsics_frames(extrinsics_from_transform(tf), base_frame, camera_frame, "TF")

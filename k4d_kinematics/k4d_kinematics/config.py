"""Configurations of the k4d_kinematics nodes (ROS-free dataclasses).

    from k4d_kinematics.config import PointmapNodeConfig
    cfg = PointmapNodeConfig(description_source="yam", camera_info_file="config/camera_info.yaml")

Each node declares one ROS parameter per field (``k4d_kinematics.ros.params.declare_config``), so the
field names are the parameter names used in ``config/*.yaml`` and launch files. ``__post_init__``
validates every field; errors name the field and the value, and ``ros2 param set`` with a bad value is
rejected with that message.

Policies for bad joint input (shared by both nodes):
- ``joint_limits``: "reject" drops a joint state / trajectory with a value outside the URDF limits
  (beyond ``robot.LIMIT_TOL``) and reports it; "clamp" clips into the limits. NaN/inf are always rejected.
- ``unknown_joints``: "reject" drops a message naming a joint the robot does not have; "ignore"
  skips such names (e.g. a JointState that also carries other devices).
- ``missing_joints``: "reject" never renders while a robot joint has no value (neither in the
  message, nor the latest /joint_states, nor a plan's start state); "zero" uses 0 for it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

DESCRIPTION_SOURCES = ("yam", "file", "topic")
EXTRINSICS_SOURCES = ("file", "params", "tf")
JOINT_LIMIT_POLICIES = ("reject", "clamp")
UNKNOWN_JOINT_POLICIES = ("reject", "ignore")
MISSING_JOINT_POLICIES = ("reject", "zero")


def param_doc(text: str, read_only: bool = False) -> dict:
    """Field metadata that ``k4d_kinematics.ros.params.declare_config`` turns into a ParameterDescriptor."""
    return {"description": text, "read_only": read_only}


_doc = param_doc  # parameter metadata (description, read_only)


def _check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")


def _check_positive(name: str, value, allow_zero: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be a finite number {'>= 0' if allow_zero else '> 0'}, got {value!r}")


@dataclass
class RobotCameraConfig:
    """Where the robot description, the camera intrinsics and the camera extrinsics come from."""

    # -- robot description ------------------------------------------------------------------------
    description_source: str = field(default="yam", metadata=_doc(
        "Robot description: 'yam' (built-in I2RT YAM), 'file' (urdf_path) or 'topic' (std_msgs/String on "
        "robot_description_topic, transient-local; the model is rebuilt on every new description).", True))
    urdf_path: str = field(default="", metadata=_doc("URDF file for description_source 'file'.", True))
    robot_description_topic: str = field(default="/robot_description", metadata=_doc(
        "Topic of the URDF XML for description_source 'topic'.", True))
    mesh_dir: str = field(default="", metadata=_doc(
        "Folder tried first for every URDF mesh (resolves package:// URIs without an ament index); '' = none.", True))
    # -- camera intrinsics ------------------------------------------------------------------------
    camera_info_topic: str = field(default="/camera/color/camera_info", metadata=_doc(
        "sensor_msgs/CameraInfo of the rectified colour camera (ignored when camera_info_file is set).", True))
    camera_info_file: str = field(default="", metadata=_doc(
        "camera_calibration_parsers YAML file with the intrinsics; when set, camera_info_topic is not used.", True))
    camera_frame: str = field(default="", metadata=_doc(
        "Camera OPTICAL frame (z forward, x right, y down). '' = CameraInfo header.frame_id, else the extrinsics "
        "child_frame. Must agree with both when they are given.", True))
    # -- camera extrinsics ------------------------------------------------------------------------
    extrinsics_source: str = field(default="params", metadata=_doc(
        "Camera pose in the robot base frame: 'file' (extrinsics_file), 'params' (extrinsics_xyz / "
        "extrinsics_quat_xyzw) or 'tf' (TF lookup base frame -> camera optical frame; needs tf2_ros).", True))
    extrinsics_file: str = field(default="", metadata=_doc(
        "Extrinsics YAML {parent_frame, child_frame, translation: {x,y,z}, rotation: {x,y,z,w}} (source 'file').",
        True))
    extrinsics_xyz: list[float] = field(default_factory=lambda: [0.95, 0.3, 0.9], metadata=_doc(
        "Camera optical-frame origin in the robot base frame, metres (source 'params')."))
    extrinsics_quat_xyzw: list[float] = field(default_factory=lambda: [
        0.5115909416450238, 0.7633498484356777, -0.3276480300816471, -0.21958708000153787], metadata=_doc(
        "Camera optical-frame orientation in the robot base frame, unit quaternion x, y, z, w (source 'params'). "
        "The default is config/extrinsics.yaml: eye (0.95, 0.3, 0.9) m looking at (0.22, 0, 0.15) m."))
    tf_timeout_s: float = field(default=0.05, metadata=_doc("TF lookup timeout, seconds (source 'tf')."))
    # -- joint input policies ---------------------------------------------------------------------
    joint_limits: str = field(default="reject", metadata=_doc(
        "Joint values outside the URDF limits: 'reject' (drop the message, report it) or 'clamp' (clip)."))
    unknown_joints: str = field(default="reject", metadata=_doc(
        "Joint names the robot does not have: 'reject' (drop the message, report it) or 'ignore'."))
    missing_joints: str = field(default="reject", metadata=_doc(
        "Robot joints with no value yet: 'reject' (do not render, report it) or 'zero' (use 0)."))

    def __post_init__(self):
        _check_choice("description_source", self.description_source, DESCRIPTION_SOURCES)
        _check_choice("extrinsics_source", self.extrinsics_source, EXTRINSICS_SOURCES)
        _check_choice("joint_limits", self.joint_limits, JOINT_LIMIT_POLICIES)
        _check_choice("unknown_joints", self.unknown_joints, UNKNOWN_JOINT_POLICIES)
        _check_choice("missing_joints", self.missing_joints, MISSING_JOINT_POLICIES)
        if self.description_source == "file" and not self.urdf_path:
            raise ValueError("urdf_path must be set when description_source is 'file', got ''")
        if self.description_source == "topic" and not self.robot_description_topic:
            raise ValueError("robot_description_topic must be set when description_source is 'topic', got ''")
        if not self.camera_info_file and not self.camera_info_topic:
            raise ValueError("camera_info_topic must be set when camera_info_file is '', got ''")
        if self.extrinsics_source == "file" and not self.extrinsics_file:
            raise ValueError("extrinsics_file must be set when extrinsics_source is 'file', got ''")
        for name, n in (("extrinsics_xyz", 3), ("extrinsics_quat_xyzw", 4)):
            v = list(getattr(self, name))
            if len(v) != n or not all(isinstance(x, (int, float)) and math.isfinite(x) for x in v):
                raise ValueError(f"{name} must be {n} finite numbers, got {v!r}")
            setattr(self, name, [float(x) for x in v])
        if self.extrinsics_source == "params":
            norm = math.sqrt(sum(x * x for x in self.extrinsics_quat_xyzw))
            if abs(norm - 1.0) > 1e-3:
                raise ValueError(f"extrinsics_quat_xyzw must be a unit quaternion, got {self.extrinsics_quat_xyzw} "
                                 f"(norm {norm:.6g})")
        _check_positive("tf_timeout_s", self.tf_timeout_s, allow_zero=True)


@dataclass
class PointmapNodeConfig(RobotCameraConfig):
    """``pointmap_node``: the live robot pointmap and mask from /joint_states at camera rate."""

    rate_hz: float = field(default=15.0, metadata=_doc(
        "Output rate with a file camera (camera_info_file set): a timer at this rate triggers rendering."))
    trigger_image_topic: str = field(default="", metadata=_doc(
        "If set, render on each sensor_msgs/Image on this topic (e.g. /camera/color/image_raw) instead of on "
        "each CameraInfo.", True))
    max_joint_state_age_s: float = field(default=0.0, metadata=_doc(
        "Skip (and report) rendering when the newest joint state is older than this when a camera frame arrives, "
        "measured in the node clock; 0 = no check."))

    def __post_init__(self):
        super().__post_init__()
        _check_positive("rate_hz", self.rate_hz)
        _check_positive("max_joint_state_age_s", self.max_joint_state_age_s, allow_zero=True)


@dataclass
class PlanNodeConfig(RobotCameraConfig):
    """``plan_node``: pointmap sequences and an RViz ghost of planned trajectories."""

    num_frames: int = field(default=49, metadata=_doc(
        "Frames per published PointmapSequence (Kinema4D: 49); the plan is resampled to them."))
    fps: float = field(default=0.0, metadata=_doc(
        "Camera frame rate for resampling: > 0 puts the frames at camera timestamps k / fps from the plan start "
        "(the sequence may then end before or after the plan); 0 spreads num_frames evenly over the plan duration."))
    use_display_trajectory: bool = field(default=True, metadata=_doc(
        "Also subscribe to moveit_msgs/DisplayTrajectory on display_trajectory_topic (only if moveit_msgs imports).",
        True))
    display_trajectory_topic: str = field(default="/display_planned_path", metadata=_doc(
        "MoveIt's planned-path topic.", True))
    ghost_frames: int = field(default=5, metadata=_doc(
        "Robot poses drawn in the /k4d/plan_ghost MarkerArray (evenly over the plan); 0 disables the ghost."))
    ghost_alpha: float = field(default=0.3, metadata=_doc("Ghost transparency, in (0, 1]."))
    ghost_max_triangles: int = field(default=20000, metadata=_doc(
        "Upper bound on triangles per ghost pose (faces are subsampled evenly beyond it)."))

    def __post_init__(self):
        super().__post_init__()
        if isinstance(self.num_frames, bool) or not isinstance(self.num_frames, int) or self.num_frames < 1:
            raise ValueError(f"num_frames must be an integer >= 1, got {self.num_frames!r}")
        _check_positive("fps", self.fps, allow_zero=True)
        if isinstance(self.ghost_frames, bool) or not isinstance(self.ghost_frames, int) or self.ghost_frames < 0:
            raise ValueError(f"ghost_frames must be an integer >= 0, got {self.ghost_frames!r}")
        if not (isinstance(self.ghost_alpha, (int, float)) and 0 < self.ghost_alpha <= 1):
            raise ValueError(f"ghost_alpha must be in (0, 1], got {self.ghost_alpha!r}")
        if isinstance(self.ghost_max_triangles, bool) or not isinstance(self.ghost_max_triangles, int) \
                or self.ghost_max_triangles < 1:
            raise ValueError(f"ghost_max_triangles must be an integer >= 1, got {self.ghost_max_triangles!r}")


def config_fields(cfg_cls) -> list[str]:
    """Parameter names of a node config, in declaration order."""
    return [f.name for f in fields(cfg_cls)]

"""The message -> core logic of the k4d_kinematics nodes, without rclpy.

Messages are read by attribute only (duck typing), so these functions take real ROS messages, plain
objects in tests, or ``moveit_msgs`` messages where that package exists. Every bad input raises
ValueError naming the field and the value; the nodes log it, report it in /diagnostics and drop the message.
"""
from __future__ import annotations

import math
import time
from typing import Callable, Mapping, Optional, Sequence

import numpy as np

from k4d_kinematics.robot import LIMIT_TOL, RobotModel
from k4d_kinematics.ros.conversions import joint_trajectory_to_data, time_to_ns
from k4d_kinematics.sequence import JointTrajectoryData

DEFAULT_CAMERA_FRAME = "camera_color_optical_frame"


# ---------------------------------------------------------------------------------------------
# Joint states
# ---------------------------------------------------------------------------------------------


def joint_values_from_state(names: Sequence[str], positions: Sequence[float], field: str = "JointState"
                            ) -> dict[str, float]:
    """``name[]`` / ``position[]`` of a sensor_msgs/JointState -> {name: value}, checked for shape and NaN/inf."""
    names, positions = list(names), list(positions)
    if not names:
        raise ValueError(f"{field}.name is empty")
    if len(positions) != len(names):
        raise ValueError(f"{field} has {len(names)} names but {len(positions)} positions")
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"{field}.name lists joint(s) {dup} more than once")
    out = {}
    for n, v in zip(names, positions):
        v = float(v)
        if not math.isfinite(v):
            raise ValueError(f"{field}: joint '{n}' position is {v}")
        out[n] = v
    return out


def check_joint_values(model: RobotModel, values: Mapping[str, float], unknown_joints: str = "reject",
                       joint_limits: str = "reject", field: str = "JointState") -> dict[str, float]:
    """Apply the unknown-name and limit policies to a partial {joint: value} dict; returns the accepted dict.

    Names the robot lacks raise (``unknown_joints='reject'``) or are dropped ('ignore'); values outside
    [lower, upper] (beyond ``LIMIT_TOL``) raise ('reject') or are clipped ('clamp').
    """
    unknown = [n for n in values if n not in model.joint_index]
    if unknown and unknown_joints == "reject":
        raise ValueError(f"{field}: unknown joint name(s) {unknown}; robot '{model.name}' has {model.joint_names}")
    out = {}
    for n, v in values.items():
        if n not in model.joint_index:
            continue
        j = model.joint_index[n]
        lo, hi = model.lower[j], model.upper[j]
        if not math.isfinite(v):
            raise ValueError(f"{field}: joint '{n}' position is {v}")
        if joint_limits == "reject" and (v < lo - LIMIT_TOL or v > hi + LIMIT_TOL):
            raise ValueError(f"{field}: joint '{n}' = {v:.6g} is outside its limits [{lo:.6g}, {hi:.6g}] "
                             f"(joint_limits='reject'; set joint_limits:=clamp to clip)")
        if joint_limits == "clamp":  # as RobotModel.check_q: everything into [lower, upper], tolerance or not
            v = min(max(v, lo), hi)
        out[n] = v
    return out


def full_q(model: RobotModel, values: Mapping[str, float], missing_joints: str = "reject",
           field: str = "joint state") -> np.ndarray:
    """{joint: value} with every robot joint -> q (J,) in ``model.joint_names`` order.

    Robot joints absent from ``values`` raise naming them (``missing_joints='reject'``) or are 0 ('zero').
    Names the robot lacks are ignored here (``check_joint_values`` applies that policy).
    """
    missing = [n for n in model.joint_names if n not in values]
    if missing and missing_joints == "reject":
        raise ValueError(f"{field}: no value for joint(s) {missing} (missing_joints='reject')")
    return np.array([float(values.get(n, 0.0)) for n in model.joint_names], dtype=np.float64)


class JointStateMerger:
    """Latest value of every joint from partial /joint_states updates, merged by name.

    ``update`` validates a whole message first and merges nothing if any part is bad.
    ``stamp_ns`` is the stamp of the last accepted message (the time of the merged state).
    """

    def __init__(self):
        self.values: dict[str, float] = {}
        self.stamp_ns: int = 0
        self.received_at: Optional[float] = None  # node-clock seconds of the newest accepted message
        self.generation = 0  # bumps on every accepted update

    def update(self, names, positions, stamp_ns: int, model: Optional[RobotModel], unknown_joints: str = "reject",
               joint_limits: str = "reject", received_at: Optional[float] = None) -> dict[str, float]:
        vals = joint_values_from_state(names, positions)
        if model is not None:
            vals = check_joint_values(model, vals, unknown_joints, joint_limits)
        self.values.update(vals)
        self.stamp_ns = int(stamp_ns)  # newest message wins, even if time went back (bag loop, sim reset)
        self.received_at = time.monotonic() if received_at is None else received_at
        self.generation += 1
        return vals

    def q(self, model: RobotModel, missing_joints: str = "reject", joint_limits: str = "reject") -> np.ndarray:
        """q (J,) of the merged state, re-checked against ``model`` (which may have changed since the update)."""
        if not self.values:
            raise ValueError("no joint state received yet")
        vals = check_joint_values(model, self.values, "ignore", joint_limits, field="merged joint state")
        return full_q(model, vals, missing_joints, field="merged joint state")


# ---------------------------------------------------------------------------------------------
# Trajectories (trajectory_msgs/JointTrajectory and moveit_msgs/DisplayTrajectory)
# ---------------------------------------------------------------------------------------------


def extract_display_trajectory(msg) -> tuple[JointTrajectoryData, dict[str, float], int]:
    """moveit_msgs/DisplayTrajectory (duck-typed) -> (trajectory, start joint values, stamp_ns).

    Segments ``trajectory[i].joint_trajectory`` are chained in time: segment i starts where segment
    i - 1 ends, and its first point is skipped when it repeats the previous end (same time offset 0 and
    positions). All segments must have the same joint names. The start state is
    ``trajectory_start.joint_state`` ({} when empty); stamp_ns is the first segment's header stamp.
    """
    segments = list(getattr(msg, "trajectory", []) or [])
    if not segments:
        raise ValueError("DisplayTrajectory.trajectory is empty")
    start = {}
    js = getattr(getattr(msg, "trajectory_start", None), "joint_state", None)
    if js is not None and len(js.name):
        start = joint_values_from_state(js.name, js.position, field="DisplayTrajectory.trajectory_start.joint_state")
    names, times, rows, vels = None, [], [], []
    for i, seg in enumerate(segments):
        jt = seg.joint_trajectory
        field = f"DisplayTrajectory.trajectory[{i}].joint_trajectory"
        try:
            data = joint_trajectory_to_data(jt)
        except ValueError as exc:
            raise ValueError(f"{field}: {exc}") from None
        if names is None:
            names = list(data.joint_names)
        elif list(data.joint_names) != names:
            raise ValueError(f"{field}.joint_names {list(data.joint_names)} differ from trajectory[0]'s {names}")
        t, p = np.asarray(data.times), np.asarray(data.positions)
        v = None if data.velocities is None else np.asarray(data.velocities)
        if times:
            offset = times[-1]
            if t[0] == 0.0 and np.allclose(p[0], rows[-1]):
                t, p = t[1:], p[1:]
                v = None if v is None else v[1:]
            t = t + offset
        times.extend(t.tolist())
        rows.extend(p.tolist())
        vels.append(v)
    stamp_ns = time_to_ns(segments[0].joint_trajectory.header.stamp)
    n = len(times)
    velocities = None  # cubic only when every segment is time-parameterised, linear otherwise
    if all(v is not None for v in vels):
        velocities = np.concatenate([np.asarray(v, np.float64).reshape(-1, len(names)) for v in vels]).reshape(n, -1)
    traj = JointTrajectoryData(joint_names=names, times=np.asarray(times, np.float64),
                               positions=np.asarray(rows, np.float64).reshape(n, len(names)), velocities=velocities)
    return traj, start, stamp_ns


def complete_trajectory(traj: JointTrajectoryData, model: RobotModel, fill: Mapping[str, float],
                        unknown_joints: str = "reject", joint_limits: str = "reject",
                        missing_joints: str = "reject") -> JointTrajectoryData:
    """A trajectory over some joints -> the same times over all ``model.joint_names``.

    Joints absent from ``traj`` are held at ``fill`` (latest /joint_states or the plan's start state);
    robot joints in neither raise (``missing_joints='reject'``) or are 0. Names the robot lacks and
    limit violations follow ``unknown_joints`` / ``joint_limits``; NaN/inf always raise.
    """
    names = list(traj.joint_names)
    pos = np.asarray(traj.positions, np.float64)
    unknown = [n for n in names if n not in model.joint_index]
    if unknown and unknown_joints == "reject":
        raise ValueError(f"trajectory: unknown joint name(s) {unknown}; robot '{model.name}' has {model.joint_names}")
    bad = ~np.isfinite(pos)
    if bad.any():
        i, j = map(int, np.argwhere(bad)[0])
        raise ValueError(f"trajectory: point {i} joint '{names[j]}' position is {pos[i, j]}")
    absent = {n: v for n, v in fill.items() if n in model.joint_index and n not in names}
    base = full_q(model, {**absent, **{n: 0.0 for n in names}}, missing_joints, field="trajectory")
    out = np.tile(base, (len(pos), 1))
    for k, n in enumerate(names):
        if n in model.joint_index:
            out[:, model.joint_index[n]] = pos[:, k]
    try:
        out = model.check_q(out, joint_limits)  # the model's limit rule: reject by name, or clamp every point
    except ValueError as exc:
        raise ValueError(f"trajectory: {exc}") from None
    vel = None
    if traj.velocities is not None:  # held joints stand still; the plan's own joints keep their velocities
        vel = np.zeros_like(out)
        for k, n in enumerate(names):
            if n in model.joint_index:
                vel[:, model.joint_index[n]] = np.asarray(traj.velocities)[:, k]
    return JointTrajectoryData(joint_names=list(model.joint_names), times=np.asarray(traj.times, np.float64),
                               positions=out, velocities=vel)


# ---------------------------------------------------------------------------------------------
# Frames
# ---------------------------------------------------------------------------------------------


def resolve_camera_frame(configured: str, camera_info_frame: str = "", extrinsics_frame: str = "") -> str:
    """The camera optical frame all outputs are stamped with.

    ``configured`` (parameter camera_frame) wins when set, else the CameraInfo frame_id, else the
    extrinsics child frame, else ``DEFAULT_CAMERA_FRAME``. Any two of them that are set must agree.
    """
    given = [(n, f) for n, f in (("camera_frame", configured), ("CameraInfo.header.frame_id", camera_info_frame),
                                 ("extrinsics child_frame", extrinsics_frame)) if f]
    for (n1, f1), (n2, f2) in zip(given, given[1:]):
        if f1 != f2:
            raise ValueError(f"{n2} '{f2}' differs from {n1} '{f1}': the pointmap would be in the wrong frame")
    return given[0][1] if given else DEFAULT_CAMERA_FRAME


# ---------------------------------------------------------------------------------------------
# Plan ghost (RViz) geometry
# ---------------------------------------------------------------------------------------------


def ghost_frame_indices(num_frames: int, count: int) -> np.ndarray:
    """``count`` frame indices spread evenly over ``num_frames`` (first and last included), unique, sorted."""
    if num_frames <= 0 or count <= 0:
        return np.zeros(0, dtype=np.int64)
    return np.unique(np.round(np.linspace(0, num_frames - 1, min(count, num_frames))).astype(np.int64))


def ghost_triangles(model: RobotModel, T_base_link: np.ndarray, max_triangles: Optional[int] = None) -> np.ndarray:
    """Triangle soup of the robot's link meshes posed at ``T_base_link`` (L, 4, 4).

    Returns (3 F, 3) float64 vertices in the robot base frame, metres, three per triangle (the
    visualization_msgs/Marker TRIANGLE_LIST layout). Beyond ``max_triangles``, faces are subsampled evenly.
    """
    tris = []
    for mesh in model.meshes:
        T = T_base_link[mesh.link_index]
        v = mesh.vertices @ T[:3, :3].T + T[:3, 3]
        tris.append(v[mesh.faces])  # (F, 3, 3)
    if not tris:
        return np.zeros((0, 3))
    soup = np.concatenate(tris)
    if max_triangles is not None and len(soup) > max_triangles:
        soup = soup[np.linspace(0, len(soup) - 1, max_triangles).astype(np.int64)]
    return soup.reshape(-1, 3)


def ghost_color(k: int, count: int, alpha: float) -> tuple[float, float, float, float]:
    """RGBA of ghost pose k of count: blue at the plan start to orange at its end."""
    s = 0.0 if count <= 1 else k / (count - 1)
    start, end = np.array([0.2, 0.5, 1.0]), np.array([1.0, 0.55, 0.1])
    r, g, b = (1 - s) * start + s * end
    return float(r), float(g), float(b), float(alpha)


# ---------------------------------------------------------------------------------------------
# Rate-limited error reporting
# ---------------------------------------------------------------------------------------------


class ThrottledLog:
    """Log each distinct error at most once per ``period_s`` (keyed by its first ``key_chars`` characters)."""

    def __init__(self, log: Callable[[str], None], period_s: float = 2.0, key_chars: int = 48):
        self._log, self.period_s, self.key_chars = log, period_s, key_chars
        self._last: dict[str, tuple[float, int]] = {}  # key -> (time logged, messages suppressed since)

    def __call__(self, message: str, now: Optional[float] = None) -> bool:
        now = time.monotonic() if now is None else now
        key = message[: self.key_chars]
        last, suppressed = self._last.get(key, (-math.inf, 0))
        if now - last < self.period_s:
            self._last[key] = (last, suppressed + 1)
            return False
        if len(self._last) > 256:
            self._last.clear()
        self._last[key] = (now, 0)
        self._log(f"{message} ({suppressed} similar suppressed)" if suppressed else message)
        return True


def first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


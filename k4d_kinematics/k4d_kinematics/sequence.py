"""Joint trajectories -> camera-rate pointmap sequences (the Kinema4D robot condition M_1:T).

    from k4d_kinematics.sequence import JointTrajectoryData, build_pointmap_sequence, normalize_minmax
    traj = JointTrajectoryData(["joint1", "joint2"], times=[0.0, 2.0], positions=[[0, 0], [0.5, 1.0]])
    seq = build_pointmap_sequence(renderer, traj, num_frames=49, source="plan")
    xyz01, lo, hi = normalize_minmax(seq.xyz)     # the paper's per-sequence [0, 1] pseudo-RGB

Kinema4D clips are 49 frames; ``resample`` places them evenly over the trajectory's duration, keeping
its first and last time stamps exactly (or at a fixed camera rate with ``fps``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .camera import PinholeCamera
from .ik import solve_ik_sequence
from .pointmap import PointmapRenderer
from .robot import RobotModel

SOURCES = ("unknown", "live_state", "plan", "policy", "recording")  # index = PointmapSequence.SOURCE_*


@dataclass
class JointTrajectoryData:
    """A joint trajectory.

    joint_names: (J) unique names. times: (N,) float64 s from the trajectory start, strictly increasing.
    positions: (N, J) float64 rad/m. velocities: optional (N, J) float64 rad/s or m/s (enables cubic resampling).
    """

    joint_names: list[str]
    times: np.ndarray
    positions: np.ndarray
    velocities: np.ndarray | None = None

    def __post_init__(self):
        self.joint_names = [str(n) for n in self.joint_names]
        if not self.joint_names:
            raise ValueError("joint_names is empty")
        dup = sorted({n for n in self.joint_names if self.joint_names.count(n) > 1})
        if dup:
            raise ValueError(f"joint_names has duplicates: {dup}")
        self.times = np.asarray(self.times, np.float64).reshape(-1)
        self.positions = np.asarray(self.positions, np.float64)
        N, J = len(self.times), len(self.joint_names)
        if N == 0:
            raise ValueError("times is empty: a trajectory needs at least one point")
        if not np.all(np.isfinite(self.times)):
            raise ValueError(f"times[{int(np.argmin(np.isfinite(self.times)))}] is not finite")
        bad = np.nonzero(np.diff(self.times) <= 0)[0]
        if bad.size:
            i = int(bad[0]) + 1
            raise ValueError(f"times must be strictly increasing: times[{i}] = {self.times[i]} <= times[{i - 1}] = "
                             f"{self.times[i - 1]}")
        for name in ("positions", "velocities"):
            arr = getattr(self, name)
            if arr is None:
                continue
            arr = np.asarray(arr, np.float64)
            if arr.shape != (N, J):
                raise ValueError(f"{name} must have shape (len(times), len(joint_names)) = ({N}, {J}), got {arr.shape}")
            if not np.all(np.isfinite(arr)):
                i, j = np.argwhere(~np.isfinite(arr))[0]
                raise ValueError(f"{name}[{i}] ({self.joint_names[j]}) is not finite: {arr[i, j]}")
            setattr(self, name, arr)

    @property
    def duration(self) -> float:
        return float(self.times[-1] - self.times[0])

    def positions_for(self, model: RobotModel, q_default=None, limits: str | None = None) -> np.ndarray:
        """Positions (N, model J) in ``model.joint_names`` order; joints absent here take ``q_default`` (J,)
        (default 0). Unknown joint names raise ValueError. Values are checked with ``model.check_q``."""
        unknown = [n for n in self.joint_names if n not in model.joint_index]
        if unknown:
            raise ValueError(f"trajectory joint(s) {unknown} unknown to robot '{model.name}' ({model.joint_names})")
        base = np.zeros(model.num_joints) if q_default is None else np.asarray(q_default, np.float64)
        Q = np.tile(base, (len(self.times), 1))
        Q[:, [model.joint_index[n] for n in self.joint_names]] = self.positions
        return model.check_q(Q, limits)


def camera_times(traj: JointTrajectoryData, num_frames: int = 49, fps: float | None = None) -> np.ndarray:
    """Frame times (num_frames,) float64 s: evenly from the first to the last time stamp (both exact), or,
    with ``fps``, every 1/fps s from the first time stamp."""
    if int(num_frames) != num_frames or num_frames < 1:
        raise ValueError(f"num_frames must be a positive integer, got {num_frames}")
    if fps is not None:
        if not (np.isfinite(fps) and fps > 0):
            raise ValueError(f"fps must be > 0, got {fps}")
        return traj.times[0] + np.arange(int(num_frames)) / float(fps)
    if num_frames == 1:
        return traj.times[:1].copy()
    t = np.linspace(traj.times[0], traj.times[-1], int(num_frames))
    t[-1] = traj.times[-1]
    return t


def resample(traj: JointTrajectoryData, num_frames: int = 49, fps: float | None = None) -> JointTrajectoryData:
    """Sample ``traj`` at the camera frame times (see ``camera_times``).

    Linear interpolation of positions, or cubic Hermite when ``traj.velocities`` is given (then the output
    has velocities too). Times beyond the last point (only with ``fps``) hold the final position.
    """
    t = camera_times(traj, num_frames, fps)
    tc = np.clip(t, traj.times[0], traj.times[-1])
    if len(traj.times) == 1:
        P = np.repeat(traj.positions, len(t), axis=0)
        V = None if traj.velocities is None else np.zeros_like(P)
    elif traj.velocities is not None:
        from scipy.interpolate import CubicHermiteSpline

        spline = CubicHermiteSpline(traj.times, traj.positions, traj.velocities, axis=0)
        P, V = spline(tc), spline(tc, 1)
        V[t > traj.times[-1]] = 0.0
    else:
        P = np.stack([np.interp(tc, traj.times, traj.positions[:, j]) for j in range(len(traj.joint_names))], 1)
        V = None
    # exact end points (interpolation is exact there up to round-off)
    for k, tk in ((0, t[0]), (-1, t[-1])):
        hit = np.nonzero(traj.times == tk)[0]
        if hit.size:
            P[k] = traj.positions[hit[0]]
    return JointTrajectoryData(list(traj.joint_names), t, P, V)


@dataclass
class PointmapSequenceData:
    """A robot pointmap sequence (the contract carried by k4d_msgs/PointmapSequence).

    xyz: (T, H, W, 3) float32 m, camera optical frame, NaN background. link: (T, H, W) int16, -1 background.
    times: (T,) float64 s from the sequence start. joint_names (J); positions: (T, J) float64 rad/m.
    link_names: (L) names indexed by ``link``. camera: the intrinsics. source: one of SOURCES.
    stamp_ns: time of frame 0 (ns). ik_converged / ik_residual_m / ik_residual_rad: (T,) when from IK.
    """

    xyz: np.ndarray
    link: np.ndarray
    times: np.ndarray
    joint_names: list[str]
    positions: np.ndarray
    link_names: list[str]
    camera: PinholeCamera
    source: str = "unknown"
    source_id: str = ""
    base_frame: str = "base"
    stamp_ns: int = 0
    ik_converged: np.ndarray | None = None
    ik_residual_m: np.ndarray | None = None
    ik_residual_rad: np.ndarray | None = None

    def __post_init__(self):
        if self.source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, got {self.source!r}")
        T = len(self.times)
        H, W = self.camera.height, self.camera.width
        if self.xyz.shape != (T, H, W, 3) or self.xyz.dtype != np.float32:
            raise ValueError(f"xyz must be float32 (T, H, W, 3) = ({T}, {H}, {W}, 3), got {self.xyz.dtype} {self.xyz.shape}")
        if self.link.shape != (T, H, W) or self.link.dtype != np.int16:
            raise ValueError(f"link must be int16 (T, H, W) = ({T}, {H}, {W}), got {self.link.dtype} {self.link.shape}")
        if np.asarray(self.positions).shape != (T, len(self.joint_names)):
            raise ValueError(f"positions must have shape ({T}, {len(self.joint_names)}), got {np.shape(self.positions)}")
        for name in ("ik_converged", "ik_residual_m", "ik_residual_rad"):
            v = getattr(self, name)
            if v is not None and np.shape(v) != (T,):
                raise ValueError(f"{name} must have shape ({T},), got {np.shape(v)}")

    @property
    def num_frames(self) -> int:
        return len(self.times)

    def select_frames(self, idx) -> "PointmapSequenceData":
        """The frames ``idx`` (indices into this sequence, increasing); times stay relative to this frame 0."""
        import dataclasses

        idx = np.asarray(idx, dtype=int)
        if idx.ndim != 1 or not len(idx) or idx.min() < 0 or idx.max() >= self.num_frames:
            raise ValueError(f"frame indices must be in [0, {self.num_frames}), got {idx.tolist()}")
        pick = lambda a: None if a is None else np.asarray(a)[idx]  # noqa: E731
        return dataclasses.replace(self, xyz=self.xyz[idx], link=self.link[idx], times=self.times[idx],
                                   positions=np.asarray(self.positions)[idx], ik_converged=pick(self.ik_converged),
                                   ik_residual_m=pick(self.ik_residual_m), ik_residual_rad=pick(self.ik_residual_rad))

    def resized(self, width: int, height: int) -> "PointmapSequenceData":
        """The sequence as the same camera would image it at ``width`` x ``height`` (``PinholeCamera.scaled``):
        each pixel takes the point and link at its centre in this sequence (nearest: points stay exact robot
        surface points, no mixing of robot and background)."""
        import dataclasses

        from .camera import nearest_indices

        cam = self.camera
        rows, cols = nearest_indices(cam.height, height), nearest_indices(cam.width, width)
        return dataclasses.replace(self, xyz=np.ascontiguousarray(self.xyz[:, rows][:, :, cols]),
                                   link=np.ascontiguousarray(self.link[:, rows][:, :, cols]),
                                   camera=cam.scaled(width, height))


def build_pointmap_sequence(renderer: PointmapRenderer, traj: JointTrajectoryData, num_frames: int = 49,
                            source: str = "plan", source_id: str = "", fps: float | None = None, stamp_ns: int = 0,
                            q_default=None) -> PointmapSequenceData:
    """Resample ``traj`` to ``num_frames`` camera frames and render them.

    Joints missing from ``traj`` take ``q_default`` (model order, default 0). Returns positions in
    ``model.joint_names`` order.
    """
    model = renderer.model
    rs = resample(traj, num_frames, fps)
    if traj.velocities is None:
        Q = rs.positions_for(model, q_default)
    else:  # a cubic between waypoints at a limit may overshoot it: held at the limit (or at the waypoints' own
        way = traj.positions_for(model, q_default, "ignore")  # range), then the model's policy as for the rest
        Q = rs.positions_for(model, q_default, "ignore")
        Q = model.check_q(np.clip(Q, np.minimum(model.lower, way.min(0)), np.maximum(model.upper, way.max(0))))
    return _render_frames(renderer, rs.times, Q, source, source_id, stamp_ns)


def _render_frames(renderer: PointmapRenderer, times, Q, source: str, source_id: str,
                   stamp_ns: int) -> PointmapSequenceData:
    """Frames at ``times`` (s, stamped from the first) of joint positions ``Q`` (model order), rendered."""
    model = renderer.model
    xyz, link = renderer.render_sequence(Q)
    return PointmapSequenceData(xyz, link, times - times[0], list(model.joint_names), Q, list(model.link_names),
                                renderer.camera, source, source_id, model.root_link, int(stamp_ns))


def sequence_from_ee_poses(renderer: PointmapRenderer, T_base_ee, times, q_seed, num_frames: int | None = None,
                           gripper_width_m: Sequence[float] | None = None, source: str = "policy", source_id: str = "",
                           stamp_ns: int = 0, **ik_kwargs) -> PointmapSequenceData:
    """End-effector pose actions -> pointmap sequence via IK (q_t = IK(T_t, q_{t-1}), q_{-1} = q_seed).

    T_base_ee: (T, 4, 4) targets for ``model.ee_link`` (m, base frame). times: (T,) s, increasing.
    gripper_width_m: optional (T,) finger opening (m) mapped with ``model.gripper_to_joints``.
    num_frames: default None: one frame per target, at the targets' times, showing exactly the IK solutions;
    or resample to this many frames evenly over the duration. The per-target IK convergence and residuals are
    reported per frame (from the latest target at or before the frame's time).
    """
    model = renderer.model
    ik = solve_ik_sequence(model, T_base_ee, q_seed, **ik_kwargs)
    Q = ik.q.copy()
    if gripper_width_m is not None:
        widths = np.asarray(gripper_width_m, np.float64).reshape(-1)
        if widths.shape != (len(Q),):
            raise ValueError(f"gripper_width_m must have shape ({len(Q)},), got {widths.shape}")
        for t, w in enumerate(widths):
            for name, v in model.gripper_to_joints(width_m=w).items():
                Q[t, model.joint_index[name]] = v
    traj = JointTrajectoryData(list(model.joint_names), times, Q)
    if num_frames is None:
        seq = _render_frames(renderer, traj.times, Q, source, source_id, stamp_ns)
        k = np.arange(len(Q))
    else:
        seq = build_pointmap_sequence(renderer, traj, num_frames, source, source_id, stamp_ns=stamp_ns)
        t = camera_times(traj, num_frames)  # absolute, as the targets: no round trip through the relative stamps
        t = t + 1e-9 * np.maximum(1.0, np.abs(t))  # a frame at a target's time belongs to that target
        k = np.clip(np.searchsorted(traj.times, t, side="right") - 1, 0, len(Q) - 1)
    seq.ik_converged, seq.ik_residual_m, seq.ik_residual_rad = ik.converged[k], ik.err_pos_m[k], ik.err_rot_rad[k]
    return seq


def normalize_minmax(xyz) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sequence-level min-max normalisation of a pointmap (..., 3) to [0, 1] per channel (the paper's
    pseudo-RGB pointmap video). NaN background stays NaN.

    Returns xyz01 (same shape, float32), lo (3,) and hi (3,) float64 (m) for ``denormalize_minmax``.
    A channel with hi == lo maps to 0. With no finite pixel at all: lo = 0, hi = 1.
    """
    xyz = np.asarray(xyz)
    if xyz.shape[-1] != 3:
        raise ValueError(f"xyz must have shape (..., 3), got {xyz.shape}")
    flat = xyz.reshape(-1, 3)
    finite = np.all(np.isfinite(flat), axis=1)
    if not finite.any():
        lo, hi = np.zeros(3), np.ones(3)
    else:
        lo, hi = flat[finite].min(0).astype(np.float64), flat[finite].max(0).astype(np.float64)
    scale = np.where(hi > lo, hi - lo, 1.0)
    return ((xyz - lo) / scale).astype(np.float32), lo, hi


def denormalize_minmax(xyz01, lo, hi) -> np.ndarray:
    """Inverse of ``normalize_minmax``: (..., 3) in [0, 1] -> metres (float32), NaN preserved."""
    lo, hi = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
    if lo.shape != (3,) or hi.shape != (3,):
        raise ValueError(f"lo and hi must have shape (3,), got {lo.shape} and {hi.shape}")
    scale = np.where(hi > lo, hi - lo, 1.0)
    return (np.asarray(xyz01, np.float64) * scale + lo).astype(np.float32)

"""ROS-free trajectory execution: joint trajectories and gripper commands -> servo position targets.

    tracker = TrajectoryTracker(robot, joint_names, q_hold)       # holds q_hold
    tracker.set_trajectory(traj, t_now, q_now)                    # validated; ValueError -> keeps holding
    ctrl = tracker.targets(t)                                     # (A,) position targets at sim time t
    tracker.set_gripper(width_m=0.05)                             # finger targets

This is the logic of a joint_trajectory_controller, without ROS: a trajectory starts at ``t_now``; the
targets interpolate the trajectory's points (shape-preserving PCHIP for 3+ points, linear for 2, so
targets never overshoot the commanded positions or the joint limits); before the first point's time,
targets blend linearly from the current hold position; after the last point, the last point is held.
Joints absent from the trajectory keep their hold targets. A rejected trajectory (unknown joint, NaN,
outside limits, time going backwards, or a first point farther than ``start_tolerance`` from the current
position when it starts at t = 0) raises ValueError naming the problem and leaves the tracker holding.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from .planner import validate_trajectory


class TrajectoryTracker:
    """Position targets for the actuated joints ``joint_names`` (A,) of ``robot`` (RobotModel).

    q_hold: (A,) initial hold targets (rad / m). start_tolerance: max |q_first - q_now| (rad or m) for a
    trajectory whose first point is at time 0 (jumps larger than this are rejected).
    """

    def __init__(self, robot, joint_names: Sequence[str], q_hold, start_tolerance: float = 0.05):
        self.robot = robot
        self.joint_names = list(joint_names)
        unknown = [j for j in self.joint_names if j not in robot.joint_names]
        if unknown:
            raise ValueError(f"joint_names has unknown joint(s) {unknown}")
        self.start_tolerance = float(start_tolerance)
        self._index = {n: i for i, n in enumerate(self.joint_names)}
        idx = [robot.joint_names.index(n) for n in self.joint_names]
        self.lower, self.upper = robot.lower[idx], robot.upper[idx]
        self.hold = np.clip(np.asarray(q_hold, np.float64).reshape(len(self.joint_names)), self.lower, self.upper)
        self._traj = None  # (cols (K,), t0, times (N,), positions (N, K), interpolator, q_from (K,))
        self.last_error = ""

    # -- commands ---------------------------------------------------------------------------------
    def set_trajectory(self, traj, t_now: float, q_now=None) -> None:
        """Start ``traj`` (k4d_kinematics JointTrajectoryData, or any object with joint_names, times,
        positions) at sim time ``t_now``. q_now: (A,) current joint positions (default: hold targets).

        Raises ValueError (and keeps the current hold targets, cancelling nothing else) if it is invalid.
        """
        try:
            names, t, P = validate_trajectory(traj.joint_names, traj.times, traj.positions, self.robot,
                                              allowed_joints=self.joint_names)
            cols = np.array([self._index[n] for n in names])
            q_now = self.hold.copy() if q_now is None else np.asarray(q_now, np.float64).reshape(-1)
            if t[0] <= 1e-9:
                dev = np.abs(P[0] - q_now[cols])
                if dev.max() > self.start_tolerance:
                    k = int(np.argmax(dev))
                    raise ValueError(f"trajectory starts {dev[k]:.4f} from the current position of joint "
                                     f"'{names[k]}' (start_tolerance {self.start_tolerance}); add a first point "
                                     "with time > 0 or start from the current state")
        except ValueError as exc:
            self.last_error = str(exc)
            raise
        if len(t) >= 3:
            from scipy.interpolate import PchipInterpolator

            interp = PchipInterpolator(t, P, axis=0, extrapolate=False)
        else:
            interp = None
        # The current targets become the blend-in start for the joints in the trajectory.
        q_from = self.targets(t_now)[cols]
        self.hold = self.targets(t_now)
        self._traj = (cols, float(t_now), t, P, interp, q_from)
        self.last_error = ""

    def cancel(self, t_now: float) -> None:
        """Stop the active trajectory; hold the targets of time ``t_now``."""
        self.hold = self.targets(t_now)
        self._traj = None

    def set_gripper(self, width_m: float | None = None, normalized: float | None = None) -> None:
        """Finger targets for an opening (metres between pads, or 0 = closed .. 1 = open); ValueError if
        out of range. Overrides finger joints of an active trajectory from now on."""
        d = self.robot.gripper_to_joints(width_m=width_m, normalized=normalized)
        for n, v in d.items():
            if n in self._index:
                self.hold[self._index[n]] = v
        if self._traj is not None:
            cols = self._traj[0]
            keep = np.array([self.joint_names[c] not in d for c in cols])
            if not keep.all():
                c, t0, t, P, interp, q_from = self._traj
                self._traj = (c[keep], t0, t, P[:, keep], None if interp is None else _Sub(interp, keep), q_from[keep])

    # -- queries ----------------------------------------------------------------------------------
    @property
    def active(self) -> bool:
        """True while a trajectory is loaded (it stays loaded, holding its last point, until replaced)."""
        return self._traj is not None

    def done(self, t: float) -> bool:
        """True when no trajectory is active or ``t`` is past its last point."""
        return self._traj is None or t - self._traj[1] >= self._traj[2][-1]

    def end_time(self) -> float:
        """Sim time of the active trajectory's last point (nan if none)."""
        return math.nan if self._traj is None else self._traj[1] + float(self._traj[2][-1])

    def targets(self, t: float) -> np.ndarray:
        """(A,) position targets at sim time ``t`` (s)."""
        out = self.hold.copy()
        if self._traj is None:
            return out
        cols, t0, times, P, interp, q_from = self._traj
        if len(cols) == 0:
            return out
        tau = t - t0
        if tau >= times[-1]:
            val = P[-1]
        elif tau < times[0]:
            a = 0.0 if times[0] <= 0 else max(tau, 0.0) / times[0]
            val = (1 - a) * q_from + a * P[0]
        elif interp is not None:
            val = interp(tau)
        else:
            a = (tau - times[0]) / (times[1] - times[0])
            val = (1 - a) * P[0] + a * P[1]
        out[cols] = val
        return np.clip(out, self.lower, self.upper)


class _Sub:
    """A column subset of a vector interpolator."""

    def __init__(self, f, keep):
        self.f, self.keep = f, keep

    def __call__(self, x):
        return self.f(x)[..., self.keep]


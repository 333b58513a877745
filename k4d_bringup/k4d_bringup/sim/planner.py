"""Goals -> time-parameterised joint trajectories (ruckig), and trajectory validation.

    from k4d_bringup.sim.planner import TrajectoryPlanner
    planner = TrajectoryPlanner(robot, cfg.planner)            # robot: k4d_kinematics RobotModel
    traj = planner.plan_joint(q_start, {"joint1": 0.4, ...})     # JointTrajectoryData over joint1..6
    traj = planner.plan_cartesian(q_start, T_base_tcp_goal)      # straight TCP line through IK

Every returned ``k4d_kinematics.sequence.JointTrajectoryData`` covers ``joint1..joint6`` (the arm; the
gripper is commanded separately), sampled every ``PlannerConfig.sample_dt`` seconds from t = 0, and
respects the velocity/acceleration/jerk limits of ``PlannerConfig`` (realistic YAM limits; the URDF's
velocity limits are dummy values of 1).

- Joint goals: one ruckig problem over the six joints (time-synchronised, rest to rest, jerk-limited).
- Paths (``plan_path``, used by ``plan_cartesian``): the joint waypoints are joined piecewise-linearly
  and a single ruckig profile is computed for the path parameter s (joint-space arc length), with
  scalar limits that keep every joint within its own limits along the whole path (conservative).
- ``validate_trajectory`` checks joint names, NaN/inf, limits and time monotonicity and raises
  ValueError naming the joint / sample at fault.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

from .config import ARM_JOINTS, PlannerConfig
from .ik import ToolIK

LIMIT_TOL = 1e-6


def _traj_cls():
    from k4d_kinematics.sequence import JointTrajectoryData

    return JointTrajectoryData


def validate_trajectory(joint_names: Sequence[str], times, positions, robot, allowed_joints: Sequence[str] | None = None,
                        limit_tol: float = LIMIT_TOL) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Check a joint trajectory; returns (joint_names, times (N,) float64, positions (N, J) float64).

    joint_names: (J) names; each must be a joint of ``robot`` (and of ``allowed_joints`` if given),
        without duplicates. times: (N,) seconds from the start, finite, >= 0, strictly increasing.
    positions: (N, J) rad or m, finite and within the URDF limits (+- limit_tol).
    Raises ValueError naming the problem: the unknown joint, the NaN's joint and sample, the joint,
    value and bounds outside limits, or the sample where time goes backwards.
    """
    names = [str(n) for n in joint_names]
    if not names:
        raise ValueError("trajectory has no joint_names")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"trajectory joint_names has duplicates {dup}")
    allowed = list(robot.joint_names) if allowed_joints is None else list(allowed_joints)
    unknown = [n for n in names if n not in allowed]
    if unknown:
        raise ValueError(f"trajectory has unknown joint(s) {unknown}; allowed joints are {allowed}")
    t = np.asarray(times, np.float64).reshape(-1)
    P = np.asarray(positions, np.float64)
    if P.ndim != 2 or P.shape != (t.size, len(names)):
        raise ValueError(f"trajectory positions must have shape (N={t.size}, J={len(names)}), got {P.shape}")
    if t.size == 0:
        raise ValueError("trajectory has no points")
    if not np.all(np.isfinite(t)):
        i = int(np.nonzero(~np.isfinite(t))[0][0])
        raise ValueError(f"trajectory time[{i}] = {t[i]} is not finite")
    if t[0] < 0:
        raise ValueError(f"trajectory time[0] = {t[0]} is negative (times are seconds from the start)")
    back = np.nonzero(np.diff(t) <= 0)[0]
    if back.size:
        i = int(back[0]) + 1
        raise ValueError(f"trajectory time goes backwards (or repeats) at point {i}: time[{i}] = {t[i]} <= "
                         f"time[{i - 1}] = {t[i - 1]}")
    bad = ~np.isfinite(P)
    if bad.any():
        i, j = (int(v[0]) for v in np.nonzero(bad))
        raise ValueError(f"trajectory joint '{names[j]}' is not finite at point {i}: {P[i, j]}")
    idx = [robot.joint_names.index(n) for n in names]
    lo, hi = robot.lower[idx], robot.upper[idx]
    out = (P < lo - limit_tol) | (P > hi + limit_tol)
    if out.any():
        i, j = (int(v[0]) for v in np.nonzero(out))
        raise ValueError(f"trajectory joint '{names[j]}' = {P[i, j]:.6g} at point {i} is outside its limits "
                         f"[{lo[j]:.6g}, {hi[j]:.6g}]")
    return names, t, P


class TrajectoryPlanner:
    """Plans arm trajectories for ``robot`` (k4d_kinematics RobotModel) with ``config`` (PlannerConfig).

    ik: a ToolIK for Cartesian goals (default: TCP between the YAM finger pads).
    """

    def __init__(self, robot, config: PlannerConfig | None = None, ik: ToolIK | None = None):
        self.robot = robot
        self.config = config or PlannerConfig()
        self.ik = ik or ToolIK(robot)
        missing = [j for j in ARM_JOINTS if j not in robot.joint_names]
        if missing:
            raise ValueError(f"robot lacks arm joint(s) {missing}")
        self.arm_idx = np.array([robot.joint_names.index(j) for j in ARM_JOINTS])
        self.lower, self.upper = robot.lower[self.arm_idx], robot.upper[self.arm_idx]
        self.vmax = np.asarray(self.config.max_velocity)
        self.amax = np.asarray(self.config.max_acceleration)
        self.jmax = np.asarray(self.config.max_jerk)

    # -- inputs ---------------------------------------------------------------------------------
    def arm_q(self, q, name: str = "q") -> np.ndarray:
        """(6,) arm joints from: a (6,) array (joint1..6), a (J,) full robot vector, or a {joint: value}
        dict (unknown names raise; missing arm joints raise). Checked finite and within limits."""
        if isinstance(q, Mapping):
            unknown = [k for k in q if k not in self.robot.joint_names]
            if unknown:
                raise ValueError(f"{name}: unknown joint(s) {unknown}; robot joints are {self.robot.joint_names}")
            missing = [j for j in ARM_JOINTS if j not in q]
            if missing:
                raise ValueError(f"{name}: missing arm joint(s) {missing}")
            arr = np.array([float(q[j]) for j in ARM_JOINTS])
        else:
            arr = np.asarray(q, np.float64).reshape(-1)
            if arr.size == self.robot.num_joints:
                arr = arr[self.arm_idx]
            elif arr.size != len(ARM_JOINTS):
                raise ValueError(f"{name} must have {len(ARM_JOINTS)} (arm) or {self.robot.num_joints} values, "
                                 f"got shape {np.shape(q)}")
        for j, v in zip(ARM_JOINTS, arr):
            if not math.isfinite(v):
                raise ValueError(f"{name}: joint '{j}' is not finite ({v})")
        bad = (arr < self.lower - LIMIT_TOL) | (arr > self.upper + LIMIT_TOL)
        if bad.any():
            k = int(np.nonzero(bad)[0][0])
            raise ValueError(f"{name}: joint '{ARM_JOINTS[k]}' = {arr[k]:.6g} is outside its limits "
                             f"[{self.lower[k]:.6g}, {self.upper[k]:.6g}]")
        return arr

    def _make(self, times: np.ndarray, positions: np.ndarray):
        validate_trajectory(ARM_JOINTS, times, positions, self.robot)
        return _traj_cls()(joint_names=list(ARM_JOINTS), times=times, positions=positions)

    # -- joint space ----------------------------------------------------------------------------
    def plan_joint(self, q_start, q_goal):
        """Rest-to-rest, time-synchronised, jerk-limited motion from q_start to q_goal (see ``arm_q``)."""
        from ruckig import InputParameter, Result, Ruckig, Trajectory

        q0, q1 = self.arm_q(q_start, "q_start"), self.arm_q(q_goal, "q_goal")
        inp = InputParameter(len(ARM_JOINTS))
        inp.current_position, inp.target_position = q0.tolist(), q1.tolist()
        inp.current_velocity = inp.current_acceleration = [0.0] * 6
        inp.target_velocity = inp.target_acceleration = [0.0] * 6
        inp.max_velocity, inp.max_acceleration, inp.max_jerk = self.vmax.tolist(), self.amax.tolist(), self.jmax.tolist()
        traj = Trajectory(len(ARM_JOINTS))
        res = Ruckig(len(ARM_JOINTS)).calculate(inp, traj)
        if res not in (Result.Working, Result.Finished):
            raise ValueError(f"ruckig failed to plan q_start={q0.tolist()} -> q_goal={q1.tolist()}: {res}")
        times = self._sample_times(traj.duration)
        P = np.array([traj.at_time(float(t))[0] for t in times])
        P[-1] = q1
        return self._make(times, np.clip(P, self.lower, self.upper))

    def _sample_times(self, duration: float) -> np.ndarray:
        """0, dt, 2 dt, ... and the exact end time (at least two samples)."""
        dt = self.config.sample_dt
        if duration <= 1e-9:
            return np.array([0.0, dt])
        t = np.arange(0.0, duration, dt)
        if duration - t[-1] > 1e-6:
            t = np.r_[t, duration]
        else:
            t[-1] = duration
        return t if t.size >= 2 else np.array([0.0, duration])

    def plan_path(self, waypoints):
        """Time-parameterise a joint path through ``waypoints`` (M, 6) rad (piecewise linear between them).

        One jerk-limited ruckig profile for the path parameter s (joint-space arc length) with scalar limits
        min_j(limit_j / max |dq_j/ds|), so every joint respects its limits; starts and ends at rest.
        """
        from ruckig import InputParameter, Result, Ruckig, Trajectory

        W = np.asarray(waypoints, np.float64)
        if W.ndim != 2 or W.shape[1] != len(ARM_JOINTS) or W.shape[0] < 2:
            raise ValueError(f"waypoints must have shape (M >= 2, 6), got {W.shape}")
        for i, w in enumerate(W):
            self.arm_q(w, f"waypoints[{i}]")
        seg = np.diff(W, axis=0)
        seg_len = np.linalg.norm(seg, axis=1)
        keep = np.r_[True, seg_len > 1e-9]
        W = W[keep]
        if len(W) < 2:
            return self._make(np.array([0.0, self.config.sample_dt]), np.vstack([W[0], W[0]]))
        seg = np.diff(W, axis=0)
        seg_len = np.linalg.norm(seg, axis=1)
        s_knots = np.r_[0.0, np.cumsum(seg_len)]
        dir_max = np.max(np.abs(seg / seg_len[:, None]), axis=0)  # max |dq_j/ds| over segments
        dir_max = np.maximum(dir_max, 1e-9)
        v_s = float(np.min(self.vmax / dir_max))
        a_s = float(np.min(self.amax / dir_max))
        j_s = float(np.min(self.jmax / dir_max))
        inp = InputParameter(1)
        inp.current_position, inp.target_position = [0.0], [float(s_knots[-1])]
        inp.current_velocity = inp.current_acceleration = inp.target_velocity = inp.target_acceleration = [0.0]
        inp.max_velocity, inp.max_acceleration, inp.max_jerk = [v_s], [a_s], [j_s]
        traj = Trajectory(1)
        res = Ruckig(1).calculate(inp, traj)
        if res not in (Result.Working, Result.Finished):
            raise ValueError(f"ruckig failed to time-parameterise a path of length {s_knots[-1]:.4f}: {res}")
        times = self._sample_times(traj.duration)
        s = np.clip(np.array([traj.at_time(float(t))[0][0] for t in times]), 0.0, s_knots[-1])
        P = np.stack([np.interp(s, s_knots, W[:, j]) for j in range(W.shape[1])], axis=1)
        P[-1] = W[-1]
        return self._make(times, np.clip(P, self.lower, self.upper))

    # -- Cartesian ------------------------------------------------------------------------------
    def plan_cartesian(self, q_start, T_base_tcp_goal, linear: bool = True):
        """Move the TCP to ``T_base_tcp_goal`` (4, 4) m, base frame.

        linear=True: straight TCP line (slerped orientation) with IK every ``cartesian_step`` metres, each
        seeded with the previous solution. linear=False: IK of the goal only, then ``plan_joint``.
        Raises ValueError if IK does not converge or the path jumps more than ``cartesian_max_joint_step``.
        """
        from scipy.spatial.transform import Rotation, Slerp

        q0 = self.arm_q(q_start, "q_start")
        T1 = np.asarray(T_base_tcp_goal, np.float64)
        if T1.shape != (4, 4) or not np.all(np.isfinite(T1)):
            raise ValueError(f"T_base_tcp_goal must be a finite (4, 4) matrix, got shape {T1.shape}")
        q_full = np.zeros(self.robot.num_joints)
        q_full[self.arm_idx] = q0
        if not linear:
            res = self.ik.solve(T1, q_full)
            if not res.converged:
                raise ValueError(f"IK did not converge for T_base_tcp_goal (position error {res.err_pos_m:.4f} m, "
                                 f"rotation error {res.err_rot_rad:.4f} rad)")
            return self.plan_joint(q0, res.q[self.arm_idx])
        T0 = self.ik.tcp_pose(q_full)
        dist = float(np.linalg.norm(T1[:3, 3] - T0[:3, 3]))
        ang = float(np.linalg.norm(Rotation.from_matrix(T1[:3, :3] @ T0[:3, :3].T).as_rotvec()))
        n = max(int(math.ceil(max(dist / self.config.cartesian_step, ang / 0.05))), 1)
        slerp = Slerp([0.0, 1.0], Rotation.from_matrix(np.stack([T0[:3, :3], T1[:3, :3]])))
        Q = [q0]
        q_seed = q_full.copy()
        for k in range(1, n + 1):
            a = k / n
            T = np.eye(4)
            T[:3, :3] = slerp([a]).as_matrix()[0]
            T[:3, 3] = (1 - a) * T0[:3, 3] + a * T1[:3, 3]
            res = self.ik.solve(T, q_seed)
            if not res.converged:
                raise ValueError(f"IK did not converge at {a:.0%} of the Cartesian path (position error "
                                 f"{res.err_pos_m:.4f} m, rotation error {res.err_rot_rad:.4f} rad)")
            jump = np.abs(res.q[self.arm_idx] - Q[-1])
            if jump.max() > self.config.cartesian_max_joint_step:
                j = int(np.argmax(jump))
                raise ValueError(f"Cartesian path is discontinuous at {a:.0%}: joint '{ARM_JOINTS[j]}' jumps "
                                 f"{jump[j]:.3f} rad (> cartesian_max_joint_step "
                                 f"{self.config.cartesian_max_joint_step})")
            Q.append(res.q[self.arm_idx])
            q_seed = res.q
        return self.plan_path(np.stack(Q))

"""Inverse kinematics for end-effector pose targets, and joint-space actions.

    from k4d_kinematics.ik import solve_ik_sequence
    res = solve_ik_sequence(model, T_base_ee_targets, q_seed)   # res.q (T, J), res.converged (T,) ...

The paper's kinematic control (Kinema4D §3.1): ``q_t = IK(T_ee,t, q_{t-1})``, each frame seeded with the
previous solution so the joint trajectory stays on one IK branch.

Solver: ``scipy.optimize.least_squares`` (trust-region reflective) on the 6-vector residual
[position error (m); rot_weight * rotation-vector error]. It handles joint limits as hard box bounds
(no clipping hacks, no penalty terms), accepts our analytic Jacobian (geometric Jacobian mapped through
the SO(3) inverse left Jacobian, so it is exact, not linearised), and reports cost and iterations.
Unreachable targets still return the best least-squares configuration, with ``converged=False`` and the
remaining position / rotation error: nothing is silently dropped.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy.optimize import least_squares
from scipy.spatial.transform import Rotation

from .robot import RobotModel


@dataclass
class IKResult:
    """One IK solve.

    q: (J,) float64 joint values (rad/m, ``model.joint_names`` order), within limits.
    converged: both errors within tolerance. err_pos_m: position error (m); err_rot_rad: rotation error
    angle (rad); iterations: residual evaluations used.
    """

    q: np.ndarray
    converged: bool
    err_pos_m: float
    err_rot_rad: float
    iterations: int


@dataclass
class IKSequenceResult:
    """IK over T targets: q (T, J) float64, converged (T,) bool, err_pos_m (T,) m, err_rot_rad (T,) rad,
    iterations (T,) int."""

    q: np.ndarray
    converged: np.ndarray
    err_pos_m: np.ndarray
    err_rot_rad: np.ndarray
    iterations: np.ndarray

    @property
    def all_converged(self) -> bool:
        return bool(np.all(self.converged))

    def failed_frames(self) -> list[int]:
        return [int(i) for i in np.nonzero(~self.converged)[0]]

    def __getitem__(self, t: int) -> IKResult:
        return IKResult(self.q[t], bool(self.converged[t]), float(self.err_pos_m[t]), float(self.err_rot_rad[t]),
                        int(self.iterations[t]))

    def __len__(self) -> int:
        return len(self.q)


def _inv_left_jacobian_so3(phi: np.ndarray) -> np.ndarray:
    """(3, 3) inverse left Jacobian of SO(3) at rotation vector phi: d(phi) = J_l^-1 omega (world frame)."""
    th = np.linalg.norm(phi)
    S = np.array([[0, -phi[2], phi[1]], [phi[2], 0, -phi[0]], [-phi[1], phi[0], 0]])
    if th < 1e-6:
        return np.eye(3) - 0.5 * S + S @ S / 12.0
    return np.eye(3) - 0.5 * S + (1.0 / th**2 - (1.0 + np.cos(th)) / (2.0 * th * np.sin(th))) * (S @ S)


def _check_pose(T, name: str) -> np.ndarray:
    T = np.asarray(T, np.float64)
    if T.shape[-2:] != (4, 4) or not np.all(np.isfinite(T)):
        raise ValueError(f"{name} must be finite (..., 4, 4) homogeneous transforms, got shape {T.shape}")
    R = T[..., :3, :3]
    if not np.allclose(R @ np.swapaxes(R, -1, -2), np.eye(3), atol=1e-6):
        raise ValueError(f"{name}: rotation part is not orthonormal")
    return T


def solve_ik(model: RobotModel, T_target, q_seed, *, link: str | None = None, joints: Sequence[str] | None = None,
             pos_tol: float = 1e-5, rot_tol: float = 1e-4, rot_weight: float = 0.1, max_iter: int = 200) -> IKResult:
    """IK for one pose target.

    T_target: (4, 4) T_base_link target (m, root frame) for ``link`` (default ``model.ee_link``).
    q_seed: (J,) start configuration (clamped into limits); joints not solved keep their seed value.
    joints: joints to solve (default: every movable joint on the root-to-link chain).
    pos_tol (m), rot_tol (rad): convergence tolerances. rot_weight: metres of residual per radian.
    """
    T_target = _check_pose(T_target, "T_target")
    q0 = model.check_q(q_seed, limits="clamp").astype(np.float64).copy()
    l = model._link_id(link)
    if joints is None:
        idx = sorted({int(model._qidx[c]) for c in model.chain_joints(link)})
    else:
        unknown = [j for j in joints if j not in model.joint_index]
        if unknown:
            raise ValueError(f"unknown joint name(s) {unknown} in joints; robot has {model.joint_names}")
        idx = [model.joint_index[j] for j in joints]
    idx = np.array([i for i in idx if model.lower[i] < model.upper[i]], dtype=np.int64)  # a joint limited to one
    if not idx.size:                                                                   # value is held there
        raise ValueError(f"link {model.link_names[l]!r} has no movable joint to solve for")
    p_t, R_t = T_target[:3, 3], T_target[:3, :3]
    q = q0.copy()
    cache: dict = {}

    def pose(x):
        key = x.tobytes()
        if key not in cache:
            q[idx] = x
            T = model.fk(q, limits="ignore")
            cache.clear()
            cache[key] = (T, Rotation.from_matrix(T[l, :3, :3] @ R_t.T).as_rotvec())
        return cache[key]

    def residual(x):
        T, phi = pose(x)
        return np.concatenate([T[l, :3, 3] - p_t, rot_weight * phi])

    def jac(x):
        T, phi = pose(x)
        q[idx] = x
        J = model.jacobian(q, link, T=T)[:, idx]
        return np.vstack([J[:3], rot_weight * _inv_left_jacobian_so3(phi) @ J[3:]])

    lo, hi = model.lower[idx], model.upper[idx]
    x0 = np.clip(q0[idx], lo, hi)
    # keep the start strictly inside the bounds for the reflective trust region
    span = np.where(np.isfinite(hi - lo), hi - lo, 1.0)
    x0 = np.clip(x0, lo + 1e-10 * span, hi - 1e-10 * span)
    sol = least_squares(residual, x0, jac=jac, bounds=(lo, hi), method="trf", xtol=1e-12, ftol=1e-12, gtol=1e-12,
                        max_nfev=max_iter)
    q_out = q0.copy()
    q_out[idx] = sol.x
    T = model.fk(q_out, limits="ignore")[l]
    err_pos = float(np.linalg.norm(T[:3, 3] - p_t))
    err_rot = float(np.linalg.norm(Rotation.from_matrix(T[:3, :3] @ R_t.T).as_rotvec()))
    return IKResult(q_out, err_pos <= pos_tol and err_rot <= rot_tol, err_pos, err_rot, int(sol.nfev))


def solve_ik_sequence(model: RobotModel, T_targets, q_seed, **kwargs) -> IKSequenceResult:
    """IK for T pose targets (T, 4, 4), q_t = IK(T_t, q_{t-1}) with q_{-1} = q_seed (J,).

    A frame that does not converge keeps its best least-squares solution (reported in ``converged`` /
    ``err_pos_m`` / ``err_rot_rad``), and that solution seeds the next frame. kwargs: see ``solve_ik``.
    """
    T_targets = _check_pose(T_targets, "T_targets")
    if T_targets.ndim != 3 or len(T_targets) == 0:
        raise ValueError(f"T_targets must have shape (T, 4, 4) with T >= 1, got {T_targets.shape}")
    q = model.check_q(q_seed, limits="clamp")
    out = []
    for t in range(len(T_targets)):
        r = solve_ik(model, T_targets[t], q, **kwargs)
        out.append(r)
        q = r.q
    return IKSequenceResult(np.stack([r.q for r in out]), np.array([r.converged for r in out]),
                            np.array([r.err_pos_m for r in out]), np.array([r.err_rot_rad for r in out]),
                            np.array([r.iterations for r in out]))


def integrate_velocities(q0, qdot, dt: float, model: RobotModel | None = None, limits: str = "clamp") -> np.ndarray:
    """Joint-velocity actions -> positions, holding each velocity for one step (exact for piecewise-constant
    velocity commands): q[0] = q0, q[t+1] = q[t] + qdot[t] dt.

    q0: (J,) rad/m. qdot: (T, J) rad/s or m/s. dt: step in s (> 0). Returns (T + 1, J) float64.
    With ``model``, every step is checked with ``model.check_q(..., limits)`` (default clamps at limits,
    so a held velocity stops at the limit; "reject" raises naming the joint).
    """
    q0 = np.asarray(q0, np.float64)
    qdot = np.asarray(qdot, np.float64)
    if not np.all(np.isfinite(q0)):
        raise ValueError(f"q0[{int(np.argmax(~np.isfinite(q0)))}] is not finite")
    if not (np.isfinite(dt) and dt > 0):
        raise ValueError(f"dt must be a positive number of seconds, got {dt}")
    if qdot.ndim != 2 or q0.shape != (qdot.shape[1],):
        raise ValueError(f"need q0 (J,) and qdot (T, J), got {q0.shape} and {qdot.shape}")
    if not np.all(np.isfinite(qdot)):
        t, j = np.argwhere(~np.isfinite(qdot))[0]
        raise ValueError(f"qdot[{t}, {j}] is not finite")
    out = np.empty((len(qdot) + 1, len(q0)))
    out[0] = q0 if model is None else model.check_q(q0, limits)
    for t in range(len(qdot)):
        nxt = out[t] + qdot[t] * dt
        if model is not None:
            try:
                nxt = model.check_q(nxt, limits)
            except ValueError as exc:
                raise ValueError(f"step {t + 1}: {exc}") from exc
        out[t + 1] = nxt
    return out

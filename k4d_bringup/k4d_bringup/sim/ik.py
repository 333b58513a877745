"""Inverse kinematics of the YAM tool-centre point for the simulator's planner and policies.

    from k4d_bringup.sim.ik import ToolIK
    ik = ToolIK(robot)                                  # robot: k4d_kinematics RobotModel
    res = ik.solve(T_base_tcp_goal, q_seed)             # IKResult(q (J,), converged, err_pos_m, err_rot_rad)

A thin adapter over ``k4d_kinematics.ik.solve_ik`` (the paper's ``q_t = IK(T_ee,t, q_{t-1})``, seeded with the
previous solution), solving joint1..6 only (the fingers keep their seed values). The target is the tool-centre point (TCP): ``T_base_tcp =
T_base_ee @ T_ee_tcp``; for the YAM, ``ee_link`` is "gripper" and the TCP sits between the finger pads,
``DEFAULT_TCP_OFFSET`` metres along the gripper's -z.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .config import ARM_JOINTS

DEFAULT_TCP_OFFSET = (0.0, 0.0, -0.13)  # metres, gripper frame: between the YAM finger pads


@dataclass
class IKResult:
    """q: (J,) float64 all joints (``robot.joint_names``); converged: both errors under tolerance;
    err_pos_m: TCP position error (m); err_rot_rad: orientation error angle (rad); iterations used."""

    q: np.ndarray
    converged: bool
    err_pos_m: float
    err_rot_rad: float
    iterations: int


class ToolIK:
    """IK for the TCP of ``robot`` (a k4d_kinematics RobotModel).

    tcp_offset: (3,) TCP position in the ee_link frame (m). pos_tol (m), rot_tol (rad): convergence.
    max_iters: residual evaluations cap. rot_weight: metres per radian in the residual.
    """

    def __init__(self, robot, tcp_offset=DEFAULT_TCP_OFFSET, pos_tol: float = 5e-4, rot_tol: float = 5e-3,
                 max_iters: int = 200, rot_weight: float = 0.1):
        self.robot = robot
        self.T_ee_tcp = np.eye(4)
        self.T_ee_tcp[:3, 3] = np.asarray(tcp_offset, np.float64)
        self.T_tcp_ee = np.linalg.inv(self.T_ee_tcp)
        self.arm_idx = np.array([robot.joint_names.index(j) for j in ARM_JOINTS])
        self.pos_tol, self.rot_tol = pos_tol, rot_tol
        self.max_iters, self.rot_weight = max_iters, rot_weight

    def tcp_pose(self, q) -> np.ndarray:
        """T_base_tcp (4, 4) for joints q (J,)."""
        return self.robot.link_pose(np.asarray(q, np.float64), None) @ self.T_ee_tcp

    def solve(self, T_base_tcp: np.ndarray, q_seed) -> IKResult:
        """Joints reaching ``T_base_tcp`` (4, 4) from ``q_seed`` (J,), via ``k4d_kinematics.ik.solve_ik`` on
        ``T_base_ee = T_base_tcp @ inv(T_ee_tcp)`` over joint1..6. Never raises for unreachable goals:
        returns the best solution with ``converged=False``; raises ValueError for non-finite input."""
        from k4d_kinematics.ik import solve_ik

        T_goal = np.asarray(T_base_tcp, np.float64)
        if T_goal.shape != (4, 4) or not np.all(np.isfinite(T_goal)):
            raise ValueError(f"T_base_tcp must be a finite (4, 4) matrix, got shape {T_goal.shape}")
        r = solve_ik(self.robot, T_goal @ self.T_tcp_ee, np.asarray(q_seed, np.float64), joints=list(ARM_JOINTS),
                     pos_tol=self.pos_tol, rot_tol=self.rot_tol, rot_weight=self.rot_weight, max_iter=self.max_iters)
        return IKResult(r.q, bool(r.converged), float(r.err_pos_m), float(r.err_rot_rad), int(r.iterations))


def top_down_pose(xyz_base, yaw: float = 0.0) -> np.ndarray:
    """TCP pose (4, 4) pointing straight down (tool -z = base -z) at ``xyz_base`` (m), rotated ``yaw``
    (rad) about base z. yaw = 0: tool x = base -x, fingers open along base y."""
    c, s = np.cos(yaw), np.sin(yaw)
    T = np.eye(4)
    x = np.array([-c, -s, 0.0])
    z = np.array([0.0, 0.0, 1.0])
    T[:3, 0], T[:3, 1], T[:3, 2] = x, np.cross(z, x), z
    T[:3, 3] = xyz_base
    return T

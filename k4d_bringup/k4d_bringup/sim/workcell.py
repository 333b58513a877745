"""The simulated YAM workcell: the one object a ROS node (or a script) steps, reads and commands.

    from k4d_bringup.sim.workcell import YamSim
    sim = YamSim(SimConfig(), seed=0)          # scene sampled from the seed, arm at home_q, gripper open
    sim.step_to(sim.time + 0.004)              # advance physics (500 Hz steps) up to a sim time
    sim.joint_state()                          # JointStateSample: names (8), position, velocity, effort, stamp
    frame = sim.render()                       # CameraFrame: rgb uint8, depth float32 m (+ segmentation)
    sim.camera_info, sim.extrinsics            # PinholeCamera / Extrinsics (T_base_cam) of that image
    sim.send_trajectory(traj)                  # JointTrajectoryData; ValueError -> arm keeps holding
    sim.set_gripper(width_m=0.02)              # or normalized=0..1
    sim.object_states()                        # [ObjectState(name, role, pos_base, quat_wxyz, ...)]

Real-time use from a node: a 250 Hz timer calls ``step_to(elapsed_wall_time)`` then publishes
``joint_state()``; a 30 Hz timer calls ``render()`` (about 40 ms at 720x480 on one core with OSMesa, so
at 30 Hz the camera lags real time unless the image is smaller; see benchmarks). Physics, commands and
rendering must run on one thread at a time (MuJoCo data is not thread-safe); the GL context is made
current on each render, so the rendering thread may differ from the construction thread.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .config import ARM_JOINTS, FINGER_JOINTS, SimConfig
from .ik import ToolIK
from .planner import TrajectoryPlanner
from .scene import SceneLayout, SimScene, build_scene, sample_layout
from .tracker import TrajectoryTracker


@dataclass
class JointStateSample:
    """sensor_msgs/JointState content: names (8) joint1..8; position (rad/m), velocity (rad/s, m/s),
    effort (actuator force N m / N), each (8,) float64; stamp: sim time (s)."""

    names: list
    position: np.ndarray
    velocity: np.ndarray
    effort: np.ndarray
    stamp: float


@dataclass
class ObjectState:
    """A free object: pos_base (3,) m, quat_wxyz (4,), lin_vel (3,) m/s, base frame; role target|distractor."""

    name: str
    role: str
    pos_base: np.ndarray
    quat_wxyz: np.ndarray
    lin_vel: np.ndarray


class YamSim:
    """MuJoCo YAM workcell with position servos, a trajectory tracker and a headless camera.

    config: SimConfig (default ``SimConfig()``). seed: scene randomisation seed. scenario/task override
    the config's. layout: use this SceneLayout instead of sampling one. robot: a shared RobotModel
    (loaded from the configured URDF when None). gripper_open: initial opening (normalised 0..1).
    """

    def __init__(self, config: SimConfig | None = None, seed: int = 0, scenario: str | None = None,
                 task: str | None = None, layout: SceneLayout | None = None, robot=None, gripper_open: float = 1.0):
        import mujoco

        self.config = config or SimConfig()
        self.layout = layout or sample_layout(self.config, seed, scenario, task)
        self.scene: SimScene = build_scene(self.config, self.layout, robot)
        self.robot = self.scene.robot
        self.model = self.scene.model
        self.data = mujoco.MjData(self.model)
        self.ik = ToolIK(self.robot)
        self.planner = TrajectoryPlanner(self.robot, self.config.planner, self.ik)
        self._renderer = None
        q0 = np.zeros(len(self.scene.joint_names))
        q0[:6] = self.config.home_q
        for n, v in self.robot.gripper_to_joints(normalized=gripper_open).items():
            q0[self.scene.joint_names.index(n)] = v
        self.data.qpos[self.scene.qpos_adr] = q0
        self.tracker = TrajectoryTracker(self.robot, self.scene.joint_names, q0)
        self.data.ctrl[self.scene.actuator_ids] = q0
        mujoco.mj_forward(self.model, self.data)

    # -- time -------------------------------------------------------------------------------------
    @property
    def time(self) -> float:
        """Simulation time in seconds."""
        return float(self.data.time)

    @property
    def timestep(self) -> float:
        return float(self.model.opt.timestep)

    def step(self, n: int = 1) -> None:
        """Advance ``n`` physics steps; the servo targets are updated from the tracker before each step."""
        import mujoco

        m, d, ids = self.model, self.data, self.scene.actuator_ids
        for _ in range(int(n)):
            d.ctrl[ids] = self.tracker.targets(d.time)
            mujoco.mj_step(m, d)

    def step_to(self, t: float) -> int:
        """Step until sim time >= ``t`` - timestep/2; returns the number of steps taken."""
        n = max(int(math.floor((t - self.time) / self.timestep + 0.5)), 0)
        self.step(n)
        return n

    # -- state ------------------------------------------------------------------------------------
    @property
    def joint_names(self) -> list[str]:
        """Actuated joints: joint1..joint6, joint7, joint8."""
        return list(self.scene.joint_names)

    def joint_positions(self) -> np.ndarray:
        """(8,) float64 rad / m, ``joint_names`` order (= RobotModel.joint_names for the YAM)."""
        return self.data.qpos[self.scene.qpos_adr].copy()

    def q_robot(self) -> np.ndarray:
        """(J,) joint positions in ``robot.joint_names`` order (what FK/pointmaps take), clamped to limits."""
        q = np.zeros(self.robot.num_joints)
        for n, v in zip(self.scene.joint_names, self.joint_positions()):
            q[self.robot.joint_names.index(n)] = v
        return np.clip(q, self.robot.lower, self.robot.upper)

    def joint_state(self) -> JointStateSample:
        """Everything a sensor_msgs/JointState needs."""
        d = self.data
        return JointStateSample(self.joint_names, d.qpos[self.scene.qpos_adr].copy(), d.qvel[self.scene.dof_adr].copy(),
                                d.actuator_force[self.scene.actuator_ids].copy(), self.time)

    def tcp_pose(self) -> np.ndarray:
        """T_base_tcp (4, 4) from the current joint positions (FK)."""
        return self.ik.tcp_pose(self.q_robot())

    def gripper_width(self) -> float:
        """Current opening between the finger pads (m): -(q7 + q8) for the YAM."""
        q = self.joint_positions()
        return float(-(q[6] + q[7]))

    def object_states(self) -> list[ObjectState]:
        """Poses and velocities of all free objects (target first)."""
        out = []
        for o, adr, b in zip(self.layout.objects, self.scene.object_qpos_adr, self.scene.object_body):
            qp = self.data.qpos[adr:adr + 7]
            vel = self.data.cvel[b][3:].copy()  # com-based, adequate to tell "at rest"
            out.append(ObjectState(o.name, o.role, qp[:3].copy(), qp[3:7].copy(), vel))
        return out

    def set_object_pose(self, index: int, pos_base, quat_wxyz) -> None:
        """Put free object ``index`` (0 = the target, ``layout.objects`` order) at ``pos_base`` (3,) m with
        orientation ``quat_wxyz`` (4,), at rest (its velocities zeroed); the inverse of ``object_states``.
        ValueError naming a wrong shape or non-finite value."""
        import mujoco

        pos, quat = np.asarray(pos_base, np.float64), np.asarray(quat_wxyz, np.float64)
        if pos.shape != (3,) or quat.shape != (4,) or not (np.all(np.isfinite(pos)) and np.all(np.isfinite(quat))):
            raise ValueError(f"set_object_pose needs a finite position (3,) and quaternion (4,), got {pos.tolist()} "
                             f"and {quat.tolist()}")
        adr = int(self.scene.object_qpos_adr[index])
        dof = int(self.model.jnt_dofadr[self.model.body_jntadr[self.scene.object_body[index]]])
        self.data.qpos[adr:adr + 7] = [*pos, *quat]
        self.data.qvel[dof:dof + 6] = 0.0
        mujoco.mj_forward(self.model, self.data)

    # -- commands ---------------------------------------------------------------------------------
    def send_trajectory(self, traj, start_time: float | None = None) -> None:
        """Execute a JointTrajectoryData (times relative to ``start_time``, default now). Raises ValueError
        naming the problem if it is invalid; the arm then keeps holding its current targets."""
        self.tracker.set_trajectory(traj, self.time if start_time is None else float(start_time),
                                    self.joint_positions())

    def cancel_trajectory(self) -> None:
        """Stop and hold the current targets."""
        self.tracker.cancel(self.time)

    def set_gripper(self, width_m: float | None = None, normalized: float | None = None) -> None:
        """Gripper opening: width_m (gap between pads, 0..0.0939 m) or normalized (0 closed .. 1 open)."""
        self.tracker.set_gripper(width_m=width_m, normalized=normalized)

    def trajectory_done(self) -> bool:
        return self.tracker.done(self.time)

    def run_trajectory(self, traj, settle: float = 0.1, frame_callback=None, frame_period: float | None = None) -> None:
        """Send ``traj`` and step until it ends plus ``settle`` seconds (scripts and policies).

        frame_callback(sim) is called every ``frame_period`` seconds of sim time if given.
        """
        self.send_trajectory(traj)
        self.step_for(float(traj.times[-1]) + settle, frame_callback, frame_period)

    def step_for(self, duration: float, frame_callback=None, frame_period: float | None = None) -> None:
        """Step ``duration`` seconds, calling ``frame_callback(sim)`` every ``frame_period`` s if given."""
        t_end = self.time + duration
        if frame_callback is None or not frame_period:
            self.step_to(t_end)
            return
        while self.time < t_end - 0.5 * self.timestep:
            if self.step_to(min(t_end, self.time + frame_period)) == 0:
                break
            frame_callback(self)

    # -- camera -----------------------------------------------------------------------------------
    @property
    def camera_info(self):
        """PinholeCamera matching ``render()`` exactly (fx = fy, centred principal point)."""
        return self.scene.camera

    @property
    def extrinsics(self):
        """Extrinsics: T_base_cam of camera_color_optical_frame."""
        return self.scene.extrinsics

    @property
    def renderer(self):
        """The CameraRenderer (created on first use; needs an offscreen GL backend)."""
        if self._renderer is None:
            from .render import CameraRenderer

            self._renderer = CameraRenderer(self.scene)
        return self._renderer

    def render(self, rgb: bool = True, depth: bool = True, segmentation: bool = False, robot_only: bool = False):
        """CameraFrame of the current state (see ``render.CameraRenderer.render``)."""
        return self.renderer.render(self.data, rgb=rgb, depth=depth, segmentation=segmentation, robot_only=robot_only)

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None


__all__ = ["YamSim", "JointStateSample", "ObjectState", "ARM_JOINTS", "FINGER_JOINTS"]

"""Scripted end-effector policies, graded failure injection, and ground-truth task outcomes.

    from k4d_bringup.sim.policies import make_policy, run_episode, NoiseSpec
    sim = YamSim(SimConfig(task="pick_place"), seed=3)
    policy = make_policy(sim)                               # PickPlacePolicy or PushPolicy from the layout
    result = run_episode(sim, policy, NoiseSpec(sigma=0.8), rng=np.random.default_rng(0))
    result.outcome.label                                    # "success" | "near_miss" | "failure"

Policies plan a tool-centre-point (TCP) path from the privileged initial object state and emit it as
action chunks (``ActionChunk``: ``chunk_size`` TCP poses + gripper openings, one per ``dt`` seconds),
like a chunked VLA/diffusion policy. ``run_episode`` turns each chunk into joint targets with IK seeded
by the previous solution (``q_t = IK(T_t, q_{t-1})``) and executes them with the trajectory tracker.

Failure injection (Kinema4D appendix, LIBERO failures): the action sequence is cut into three temporal
segments; from the start of one of them (drawn per episode) Gaussian noise of scale ``sigma`` is added to
the 6-DoF pose *increments* (so the error accumulates as a random walk) until that segment ends, and
the accumulated offset then persists; the gripper command is never perturbed. One unit of sigma is
``pos_unit_m`` metres and ``rot_unit_rad`` radians per action step.

Outcomes come from simulator state only (``TaskMonitor``): pick_place succeeds when the target rests in
the zone upright (centre within the zone radius, centre height within 1.5 cm of its upright resting height,
and tilted less than ``UPRIGHT_MAX_TILT_DEG`` = 20 degrees from standing on a face, ``object_tilt_deg``: on the
table, upright, released); push succeeds when the target's centre is within the zone and not more than 1.5 cm
above its resting height (on the table, toppled or not; not held by the gripper). A near miss is a non-success
where the object got at least halfway closer to the goal (or, for pick_place, was lifted at some point or ended
within twice the zone radius); the rest fail. The outcome metrics record the final tilt (``final_tilt_deg``).

Label rules (``LABEL_RULE``, stored with generated episodes as ``label_rule``):

* rule 1 (datasets without ``label_rule``) let a push succeed with the target anywhere above the zone, which
  counted pushes whose object the gripper carried off into the air;
* rule 2 asked a push's target to rest on the table (centre at most 1.5 cm above its resting height); its
  pick_place test was the position alone, and a cylinder toppled in the zone passed it (lying on its side its
  centre is 0-2.1 cm lower than upright, mostly inside the 1.5 cm tolerance: 13 of 139 noisy cylinder
  "successes" in 390 rollouts);
* rule 3 (current) also asks a pick_place target to stand upright: its tilt below ``UPRIGHT_MAX_TILT_DEG``
  (a cylinder on its side is at 90 degrees; a cube resting on any face is upright). Push is unchanged.

``relabel_metrics`` recomputes an older dataset's labels from its recorded outcome metrics (and, for rule-2
pick_place episodes, which recorded no tilt, from the target's final orientation, ``object_quat_wxyz``).
"""
from __future__ import annotations

import abc
import math
from dataclasses import dataclass, field

import numpy as np
from scipy.spatial.transform import Rotation

from .ik import top_down_pose

LABELS = ("success", "near_miss", "failure")


@dataclass
class ActionChunk:
    """T_base_tcp: (K, 4, 4) float64 TCP targets (m, base frame); gripper: (K,) opening, 0 closed .. 1 open;
    dt: seconds between actions."""

    T_base_tcp: np.ndarray
    gripper: np.ndarray
    dt: float

    def __len__(self) -> int:
        return len(self.gripper)


@dataclass
class NoiseSpec:
    """Failure injection. sigma: noise scale (0 = clean demo); segment: which of the 3 temporal segments is
    perturbed (None = drawn from the episode rng); pos_unit_m / rot_unit_rad: one sigma per action step."""

    sigma: float = 0.0
    segment: int | None = None
    pos_unit_m: float = 0.01
    rot_unit_rad: float = 0.05
    min_tcp_z: float = 0.012

    def __post_init__(self):
        if not (math.isfinite(self.sigma) and self.sigma >= 0):
            raise ValueError(f"NoiseSpec.sigma = {self.sigma!r}: must be >= 0")
        if self.segment is not None and self.segment not in (0, 1, 2):
            raise ValueError(f"NoiseSpec.segment = {self.segment!r}: must be 0, 1, 2 or None")
        if self.pos_unit_m < 0 or self.rot_unit_rad < 0:
            raise ValueError(f"NoiseSpec units must be >= 0, got pos_unit_m={self.pos_unit_m}, "
                             f"rot_unit_rad={self.rot_unit_rad}")


def _min_jerk(n: int) -> np.ndarray:
    s = np.linspace(0.0, 1.0, n + 1)[1:]
    return 10 * s ** 3 - 15 * s ** 4 + 6 * s ** 5


class ScriptedPolicy(abc.ABC):
    """Base class: a TCP path of keyframes (pose, gripper, duration) sampled every ``dt`` and chunked.

    dt: action period (s). chunk_size: actions per chunk (8-16 like action-chunking policies).
    """

    task = ""

    def __init__(self, dt: float = 0.1, chunk_size: int = 8):
        if not (0 < dt <= 1):
            raise ValueError(f"dt = {dt!r}: must be in (0, 1] s")
        if not (1 <= chunk_size <= 64):
            raise ValueError(f"chunk_size = {chunk_size!r}: must be in [1, 64]")
        self.dt, self.chunk_size = float(dt), int(chunk_size)
        self._poses = np.zeros((0, 4, 4))
        self._grip = np.zeros(0)
        self._cursor = 0

    @abc.abstractmethod
    def keyframes(self, sim) -> list[tuple[np.ndarray, float, float]]:
        """[(T_base_tcp (4, 4), gripper 0..1, duration s)] from the current state; subclasses implement."""

    def reset(self, sim) -> None:
        """Plan the whole path from the current sim state."""
        T = sim.tcp_pose()
        g = float(np.clip(sim.gripper_width() / sim.robot.gripper.max_width_m, 0, 1))
        poses, grips = [], []
        for T_next, g_next, dur in self.keyframes(sim):
            n = max(int(round(dur / self.dt)), 1)
            s = _min_jerk(n)
            r = Rotation.from_matrix(np.stack([T[:3, :3], T_next[:3, :3]]))
            rv = (r[1] * r[0].inv()).as_rotvec()
            for a in s:
                P = np.eye(4)
                P[:3, :3] = (Rotation.from_rotvec(a * rv) * r[0]).as_matrix()
                P[:3, 3] = (1 - a) * T[:3, 3] + a * T_next[:3, 3]
                poses.append(P)
                grips.append(g_next if g_next != g else g)
            T, g = T_next, g_next
        self._poses, self._grip, self._cursor = np.stack(poses), np.asarray(grips, np.float64), 0

    @property
    def path(self) -> tuple[np.ndarray, np.ndarray]:
        """The full clean path: (N, 4, 4) TCP poses and (N,) gripper openings."""
        return self._poses, self._grip

    def act(self, sim=None) -> ActionChunk | None:
        """The next chunk of actions, or None when the path is exhausted."""
        if self._cursor >= len(self._grip):
            return None
        a, b = self._cursor, min(self._cursor + self.chunk_size, len(self._grip))
        self._cursor = b
        return ActionChunk(self._poses[a:b].copy(), self._grip[a:b].copy(), self.dt)


def fold_grasp_yaw(yaw: float, kind: str = "cube") -> float:
    """Finger yaw (rad) for a top-down grasp: cube faces aligned, folded into [-pi/4, pi/4]; cylinders 0."""
    if kind != "cube":
        return 0.0
    return float((yaw + math.pi / 4) % (math.pi / 2) - math.pi / 4)


def pick_place_keyframes(pos_base, grasp_yaw: float, half_height: float, place_xy_base,
                         lift_height: float = 0.12) -> list[tuple[np.ndarray, float, float]]:
    """Keyframes of a top-down pick of an object resting with its centre at ``pos_base`` (3,) m (base frame)
    and its place at ``place_xy_base`` (2,) m: ``(T_base_tcp (4, 4), gripper 0 closed .. 1 open, duration s)``.

    Grasps low on tall objects (stable: the pads reach 1.7 cm below the TCP), never below 1.6 cm, and
    releases with the object's bottom 4 mm above the table. Used by ``PickPlacePolicy`` (simulator state)
    and by the ROS demo node (object states from the topic), so both run the same motion.
    """
    p = np.asarray(pos_base, np.float64).reshape(3)
    goal = np.asarray(place_xy_base, np.float64).reshape(2)
    if not (np.all(np.isfinite(p)) and np.all(np.isfinite(goal)) and math.isfinite(grasp_yaw)):
        raise ValueError(f"pick_place_keyframes: non-finite object {p.tolist()}, place {goal.tolist()} or yaw {grasp_yaw}")
    grasp_z = max(min(p[2], 0.024), 0.016)
    place_z = grasp_z + (p[2] - half_height) + 0.004
    up, zc, yaw = lift_height, np.r_[goal, 0.0], grasp_yaw
    return [
        (top_down_pose(p + [0, 0, up], yaw), 1.0, 1.6),
        (top_down_pose([p[0], p[1], grasp_z], yaw), 1.0, 1.0),
        (top_down_pose([p[0], p[1], grasp_z], yaw), 0.0, 0.6),
        (top_down_pose([p[0], p[1], up], yaw), 0.0, 1.0),
        (top_down_pose(zc + [0, 0, up], yaw), 0.0, 1.4),
        (top_down_pose(zc + [0, 0, place_z], yaw), 0.0, 1.0),
        (top_down_pose(zc + [0, 0, place_z], yaw), 1.0, 0.8),
        (top_down_pose(zc + [0, 0, up], yaw), 1.0, 1.0),
    ]


class PickPlacePolicy(ScriptedPolicy):
    """Top-down pick of the target object and place in the zone (lift ``lift_height`` m)."""

    task = "pick_place"

    def __init__(self, dt: float = 0.1, chunk_size: int = 8, lift_height: float = 0.12):
        super().__init__(dt, chunk_size)
        self.lift_height = lift_height

    def keyframes(self, sim):
        tgt = sim.layout.target
        st = next(s for s in sim.object_states() if s.name == tgt.name)
        yaw_obj = Rotation.from_quat(np.r_[st.quat_wxyz[1:], st.quat_wxyz[0]]).as_euler("xyz")[2]
        return pick_place_keyframes(st.pos_base, fold_grasp_yaw(yaw_obj, tgt.kind), tgt.half_height,
                                    sim.layout.zone.center_base, self.lift_height)


class PushPolicy(ScriptedPolicy):
    """Push the target object's centre onto the zone centre with the closed gripper, then release and rise."""

    task = "push"

    def __init__(self, dt: float = 0.1, chunk_size: int = 8, push_height: float = 0.03):
        super().__init__(dt, chunk_size)
        self.push_height = push_height

    def keyframes(self, sim):
        tgt = sim.layout.target
        p = next(s for s in sim.object_states() if s.name == tgt.name).pos_base
        goal = np.asarray(sim.layout.zone.center_base)
        d = goal - p[:2]
        dist = float(np.linalg.norm(d))
        u = d / max(dist, 1e-9)
        yaw = float(math.atan2(u[1], u[0]))  # fingers (open along tool y) across the push direction
        yaw = (yaw + math.pi / 2) % math.pi - math.pi / 2
        back = tgt.radius + 0.03
        contact = tgt.radius + 0.012
        z = self.push_height
        pre = np.r_[p[:2] - u * back, z]
        end = np.r_[goal - u * 0.5 * contact, z]
        # The finger servos are soft: a pushed object can wedge the closed fingers apart and end up pinched
        # between them, so the gripper opens at the end of the push before it rises (without the release, 13 of
        # 30 clean pushes of one seed carried the object 9 cm up into the air). A wedged object ends at the TCP,
        # a pushed one a contact distance ahead of it; stopping half a contact short of the goal centre puts
        # both in the zone (28 of those 30 pushes succeed, 25 when the TCP stops a full contact short).
        return [
            (top_down_pose(pre + [0, 0, 0.1], yaw), 0.0, 1.6),
            (top_down_pose(pre, yaw), 0.0, 0.9),
            (top_down_pose(end, yaw), 0.0, max(1.5, dist / 0.06)),
            (top_down_pose(end, yaw), 1.0, 0.5),
            (top_down_pose(end + [0, 0, 0.1], yaw), 1.0, 0.8),
        ]


def make_policy(sim, dt: float = 0.1, chunk_size: int = 8) -> ScriptedPolicy:
    """The scripted policy for ``sim.layout.task``."""
    if sim.layout.task == "pick_place":
        return PickPlacePolicy(dt, chunk_size)
    if sim.layout.task == "push":
        return PushPolicy(dt, chunk_size)
    raise ValueError(f"task = {sim.layout.task!r}: no scripted policy")


class NoiseInjector:
    """Applies NoiseSpec to a stream of actions of known total length ``n_actions`` (see module docstring)."""

    def __init__(self, spec: NoiseSpec, n_actions: int, rng: np.random.Generator):
        self.spec = spec
        self.segment = spec.segment if spec.segment is not None else int(rng.integers(0, 3))
        bounds = np.linspace(0, n_actions, 4).round().astype(int)
        self.start, self.stop = int(bounds[self.segment]), int(bounds[self.segment + 1])
        self.rng = rng
        self.k = 0
        self.offset_pos = np.zeros(3)
        self.offset_rot = np.zeros(3)

    def __call__(self, T: np.ndarray) -> np.ndarray:
        s = self.spec
        if s.sigma > 0 and self.start <= self.k < self.stop:
            self.offset_pos += self.rng.normal(0.0, s.sigma * s.pos_unit_m, 3)
            self.offset_rot += self.rng.normal(0.0, s.sigma * s.rot_unit_rad, 3)
        self.k += 1
        out = T.copy()
        out[:3, 3] = T[:3, 3] + self.offset_pos
        out[2, 3] = max(out[2, 3], s.min_tcp_z)
        out[:3, :3] = Rotation.from_rotvec(self.offset_rot).as_matrix() @ T[:3, :3]
        return out


@dataclass
class TaskOutcome:
    """Ground truth from simulator state. label: success | near_miss | failure; success, near_miss: bools;
    metrics: initial/final distance to the goal (m), max lift (m), final object position and tilt (degrees,
    ``object_tilt_deg``; None where the orientation was not observed)."""

    label: str
    success: bool
    near_miss: bool
    metrics: dict = field(default_factory=dict)


class TaskMonitor:
    """Tracks the target object during an episode and classifies the outcome.

    Call ``update(sim)`` during the episode (e.g. every frame) and ``outcome(sim)`` at the end.
    """

    def __init__(self, sim):
        self.task = sim.layout.task
        self.name = sim.layout.target.name
        self.kind = sim.layout.target.kind
        self.rest_z = sim.layout.target.half_height
        self.goal = np.asarray(sim.layout.zone.center_base, np.float64)
        self.radius = float(sim.layout.zone.radius)
        p0 = self._state(sim).pos_base
        self.start_xy = p0[:2].copy()
        self.d0 = float(np.linalg.norm(p0[:2] - self.goal))
        self.max_lift = 0.0

    def _state(self, sim):
        return next(s for s in sim.object_states() if s.name == self.name)

    def update(self, sim) -> None:
        self.max_lift = max(self.max_lift, float(self._state(sim).pos_base[2] - self.rest_z))

    def outcome(self, sim) -> TaskOutcome:
        self.update(sim)
        st = self._state(sim)
        return classify(self.task, st.pos_base, self.start_xy, self.goal, self.radius, self.rest_z, self.max_lift,
                        tilt_deg=object_tilt_deg(st.quat_wxyz, self.kind))


LABEL_RULE = 3  # version of ``classify``'s rule, stored with generated episodes (see the module docstring)

# A pick_place target tilted this much or more does not stand upright (rule 3). Resting on a face an object's tilt
# is a fraction of a degree, on its side a cylinder's is 90 (72 generated episodes: 46 at most 0.06, 26 at least
# 89.96, none between); a cube on an edge is at 45. 20 degrees is below the smallest angle at which a cylinder of
# the default SceneConfig ranges tips over by itself, atan(r / h) = atan(0.014 / 0.035) = 21.8 degrees (cube: 45),
# so a target tilted beyond it is held up by something else (a distractor, the gripper), not standing on its base.
UPRIGHT_MAX_TILT_DEG = 20.0


def object_tilt_deg(quat_wxyz, kind: str) -> float:
    """Tilt (degrees, 0..90) of an object from standing on a face, from its orientation ``quat_wxyz`` (4,) (w, x,
    y, z; base frame, normalised here): the angle between the base z axis and the body axis nearest to it.
    Cylinder: its body z axis, either end up (it stands on either end face; on its side it is at 90). Cube: the
    nearest of its body x, y, z axes (a cube resting on any face is upright; at most 54.7, on a corner).
    ValueError naming the problem for a quaternion of the wrong shape, non-finite or of zero norm, or an unknown
    kind."""
    q = np.asarray(quat_wxyz, np.float64)
    if q.shape != (4,):
        raise ValueError(f"object orientation quat_wxyz must have shape (4,) (w, x, y, z), got shape {q.shape}")
    if not np.all(np.isfinite(q)):
        raise ValueError(f"object orientation quat_wxyz is not finite: {q.tolist()}")
    n = float(np.linalg.norm(q))
    if n < 1e-9:
        raise ValueError(f"object orientation quat_wxyz has zero norm: {q.tolist()}")
    w, x, y, z = q / n
    # base z components of the body x, y, z axes: the third row of the rotation matrix
    up = np.abs([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)])
    if kind == "cylinder":
        c = up[2]
    elif kind == "cube":
        c = up.max()
    else:
        raise ValueError(f"object kind = {kind!r}: unknown (cube, cylinder)")
    return float(math.degrees(math.acos(min(float(c), 1.0))))


def classify(task: str, pos_base, start_xy, goal_xy, zone_radius: float, rest_z: float, max_lift: float, *,
             tilt_deg: float | None) -> TaskOutcome:
    """Success / near-miss / failure of ``task`` from the target's final position ``pos_base`` (3,) m, its
    start (2,), the goal centre (2,), zone radius (m), resting centre height (m), the largest lift (m) and its
    final tilt (``object_tilt_deg``, degrees). ``tilt_deg`` must be given: None says the orientation is not
    observed (an object track of positions, ``k4d_worldmodel.evaluate.success_4d``), and pick_place is then judged
    by position alone (rule 2's test, which counts a cylinder toppled in the zone)."""
    pos_base, start_xy, goal_xy = (np.asarray(v, np.float64) for v in (pos_base, start_xy, goal_xy))
    d0 = float(np.linalg.norm(start_xy - goal_xy))
    d1 = float(np.linalg.norm(pos_base[:2] - goal_xy))
    return classify_distances(task, d0, d1, pos_base, zone_radius, rest_z, max_lift, tilt_deg=tilt_deg)


def classify_distances(task: str, d_start: float, d_final: float, pos_base, zone_radius: float, rest_z: float,
                       max_lift: float, *, tilt_deg: float | None) -> TaskOutcome:
    """``classify`` from the target's start and final distances to the goal centre (m) instead of positions."""
    pos_base = np.asarray(pos_base, np.float64)
    d0, d1 = float(d_start), float(d_final)
    if tilt_deg is not None:
        tilt_deg = float(tilt_deg)
        if not (math.isfinite(tilt_deg) and 0.0 <= tilt_deg <= 180.0):
            raise ValueError(f"tilt_deg = {tilt_deg!r}: must be a finite angle in [0, 180] degrees or None")
    in_zone = d1 <= zone_radius
    lift = float(pos_base[2]) - rest_z
    if task == "pick_place":
        upright = tilt_deg is None or tilt_deg < UPRIGHT_MAX_TILT_DEG  # None: not observed (see classify)
        success = in_zone and abs(lift) < 0.015 and upright  # placed upright and released (rule 3)
        near = (not success) and (max_lift > 0.03 or d1 <= 0.5 * d0 or d1 <= 2 * zone_radius)
    elif task == "push":
        success = in_zone and lift < 0.015  # on the table (toppled counts), not carried off (rule 2)
        near = (not success) and (d1 <= 0.5 * d0 or d1 <= 2 * zone_radius)
    else:
        raise ValueError(f"task = {task!r}: unknown (pick_place, push)")
    label = "success" if success else ("near_miss" if near else "failure")
    return TaskOutcome(label, bool(success), bool(near),
                       {"d_start_m": d0, "d_final_m": d1, "max_lift_m": float(max_lift),
                        "final_pos_base": [float(v) for v in pos_base], "final_tilt_deg": tilt_deg})


def relabel_metrics(task: str, metrics: dict, zone_radius: float, rest_z: float, kind: str | None = None,
                    final_quat_wxyz=None) -> TaskOutcome:
    """The outcome by the current rule (``LABEL_RULE``) from an episode's recorded outcome ``metrics`` (the
    ``TaskOutcome.metrics`` dict of any rule: ``d_start_m``, ``d_final_m``, ``max_lift_m``, ``final_pos_base``;
    ``final_tilt_deg`` since rule 3). Metrics without a tilt (rules 1 and 2) take it from the target's final
    orientation ``final_quat_wxyz`` (4,) (w, x, y, z) and its ``kind`` (cube, cylinder). Raises ValueError naming
    a missing or non-finite entry, and for a pick_place episode whose tilt is neither recorded nor given."""
    try:
        vals = [float(metrics[k]) for k in ("d_start_m", "d_final_m", "max_lift_m")]
        pos = np.asarray(metrics["final_pos_base"], np.float64).reshape(3)
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"outcome metrics lack d_start_m, d_final_m, max_lift_m or final_pos_base (3,): {exc}") \
            from None
    if not (np.all(np.isfinite(vals)) and np.all(np.isfinite(pos))):
        raise ValueError(f"outcome metrics are not finite: {metrics}")
    tilt = metrics.get("final_tilt_deg")
    if tilt is None and final_quat_wxyz is not None:
        tilt = object_tilt_deg(final_quat_wxyz, kind)
    if tilt is None and task == "pick_place":
        raise ValueError(f"outcome metrics lack final_tilt_deg (recorded since label rule 3) and no final target "
                         f"orientation (object_quat_wxyz) was given: label rule {LABEL_RULE} cannot tell whether the "
                         f"pick_place target stands upright")
    return classify_distances(task, vals[0], vals[1], pos, zone_radius, rest_z, vals[2], tilt_deg=tilt)


@dataclass
class EpisodeResult:
    """outcome: TaskOutcome. actions_T / actions_gripper: (N, 4, 4) / (N,) the executed (noisy) actions;
    ik_failures: number of actions whose IK did not converge (best solution executed); duration: s."""

    outcome: TaskOutcome
    actions_T: np.ndarray
    actions_gripper: np.ndarray
    ik_failures: int
    duration: float
    noise_segment: int


def run_episode(sim, policy: ScriptedPolicy, noise: NoiseSpec | None = None, rng: np.random.Generator | None = None,
                frame_callback=None, frame_period: float | None = None, settle: float = 0.5) -> EpisodeResult:
    """Run ``policy`` on ``sim`` to the end (plus ``settle`` s), injecting ``noise``; returns EpisodeResult.

    Each chunk: IK per action seeded with the previous solution -> a JointTrajectoryData with one point
    per ``dt`` (arm joints) executed by the tracker; the gripper command of an action is sent when that
    action starts. frame_callback(sim) is called every ``frame_period`` s of sim time.
    """
    from k4d_kinematics.sequence import JointTrajectoryData

    from .config import ARM_JOINTS

    noise = noise or NoiseSpec()
    rng = rng if rng is not None else np.random.default_rng(0)
    monitor = TaskMonitor(sim)
    policy.reset(sim)
    injector = NoiseInjector(noise, len(policy.path[1]), rng)
    t_start = sim.time
    q_seed = sim.q_robot()
    arm = np.array([sim.robot.joint_names.index(j) for j in ARM_JOINTS])
    acts_T, acts_g, ik_fail = [], [], 0

    def cb(s):
        monitor.update(s)
        if frame_callback is not None:
            frame_callback(s)

    period = frame_period or 0.05
    while (chunk := policy.act(sim)) is not None:
        Q = []
        for T, g in zip(chunk.T_base_tcp, chunk.gripper):
            Tn = injector(T)
            res = sim.ik.solve(Tn, q_seed)
            ik_fail += int(not res.converged)
            q_seed = res.q
            Q.append(res.q[arm])
            acts_T.append(Tn)
            acts_g.append(g)
        times = chunk.dt * np.arange(1, len(Q) + 1)
        sim.send_trajectory(JointTrajectoryData(joint_names=list(ARM_JOINTS), times=times, positions=np.stack(Q)))
        for k, g in enumerate(chunk.gripper):
            sim.set_gripper(normalized=float(np.clip(g, 0.0, 1.0)))
            sim.step_for(chunk.dt, cb, period)
    sim.step_for(settle, cb, period)
    return EpisodeResult(monitor.outcome(sim), np.stack(acts_T), np.asarray(acts_g), ik_fail, sim.time - t_start,
                         injector.segment)

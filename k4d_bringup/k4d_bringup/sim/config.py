"""Configuration of the simulated YAM workcell: one dataclass per core, loadable from YAML.

    from k4d_bringup.sim.config import SimConfig
    cfg = SimConfig.from_yaml("k4d_bringup/config/sim.yaml")   # or SimConfig() for the defaults

Every dataclass validates itself in ``__post_init__`` and raises ``ValueError`` naming the field and the
value it got. Field names are the names the ROS nodes declare as parameters and the keys of
``config/sim.yaml``. Units: metres, radians, seconds, Hz; frames are in the names (``*_base`` = robot base
frame, which is also the MuJoCo world frame: the robot base sits at the world origin on the table top).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

SCENARIOS = ("easy", "medium", "hard")
TASKS = ("pick_place", "push")
ARM_JOINTS = ("joint1", "joint2", "joint3", "joint4", "joint5", "joint6")
FINGER_JOINTS = ("joint7", "joint8")

# Planning limits for the YAM (the URDF's velocity/effort values are dummy 1s). These are k4d's
# conservative choices, not datasheet values: about 140 deg/s on the big joints 1-3 and 230 deg/s on the
# wrist 4-6, i.e. the speeds of typical tele-operated YAM motions, with acceleration/jerk that move a
# 1 rad rest-to-rest step in about 0.9 s. Override them in config/sim.yaml (planner.max_*) once measured.
DEFAULT_MAX_VELOCITY = (2.5, 2.5, 2.5, 4.0, 4.0, 4.0)  # rad/s
DEFAULT_MAX_ACCELERATION = (8.0, 8.0, 8.0, 12.0, 12.0, 12.0)  # rad/s^2
DEFAULT_MAX_JERK = (80.0, 80.0, 80.0, 120.0, 120.0, 120.0)  # rad/s^3


def _check(cond: bool, owner: str, name: str, value: Any, why: str) -> None:
    if not cond:
        raise ValueError(f"{owner}.{name} = {value!r}: {why}")


def _range_ok(r) -> bool:
    return len(r) == 2 and all(math.isfinite(float(v)) for v in r) and float(r[0]) <= float(r[1])


def _from_mapping(cls, data: Mapping[str, Any] | None):
    """Build dataclass ``cls`` from a mapping; unknown keys raise ValueError naming them."""
    data = dict(data or {})
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown key(s) {unknown}; known keys are {sorted(names)}")
    kwargs = {}
    for k, v in data.items():
        sub = _NESTED.get((cls.__name__, k))
        if sub is not None and isinstance(v, Mapping):
            v = _from_mapping(sub, v)
        elif isinstance(v, list):
            v = tuple(tuple(x) if isinstance(x, list) else x for x in v)
        kwargs[k] = v
    return cls(**kwargs)


@dataclass
class CameraConfig:
    """The fixed main camera (oblique, top-down onto the workspace, as in the Kinema4D YAM setup).

    width, height: image size in pixels. fy: focal length in pixels (fx = fy: square pixels). The
    principal point is the image centre in the pixel-centres-at-integers convention,
    cx = (width - 1) / 2, cy = (height - 1) / 2, which is what MuJoCo's symmetric frustum renders.
    camera_info_yaml: optional camera_calibration_parsers YAML; when given it overrides width/height/fy
        and must satisfy the conditions above (checked, ValueError naming the field otherwise).
    extrinsics_yaml: optional k4d Extrinsics YAML (parent_frame base, child_frame
        camera_color_optical_frame, translation, rotation xyzw); overrides eye/target.
    eye_base, target_base: camera position and look-at point (metres, base frame) used when no
        extrinsics YAML is given; the image's up direction is the base +z.
    znear, zfar: clip planes in metres (depth outside is invalid / NaN).
    rate_hz: camera frame rate used by nodes and by the dataset sampler.
    msaa_samples: MuJoCo offscreen multisampling. 0 (default) keeps depth and segmentation exact per pixel
        (the surface through the pixel centre, like the k4d rasteriser); > 0 smooths RGB edges but blends
        depth across silhouettes (about 0.4 mm median error against the robot pointmap).
    """

    width: int = 720
    height: int = 480
    fy: float = 600.0
    camera_info_yaml: str = ""
    extrinsics_yaml: str = ""
    eye_base: tuple = (1.05, 0.5, 0.8)
    target_base: tuple = (0.26, 0.0, 0.1)
    znear: float = 0.05
    zfar: float = 5.0
    rate_hz: float = 30.0
    msaa_samples: int = 0

    def __post_init__(self):
        o = "CameraConfig"
        _check(isinstance(self.msaa_samples, int) and 0 <= self.msaa_samples <= 16, o, "msaa_samples",
               self.msaa_samples, "must be an int in [0, 16]")
        _check(isinstance(self.width, int) and 8 <= self.width <= 4096, o, "width", self.width, "must be an int in [8, 4096]")
        _check(isinstance(self.height, int) and 8 <= self.height <= 4096, o, "height", self.height,
               "must be an int in [8, 4096]")
        _check(math.isfinite(self.fy) and self.fy > 0, o, "fy", self.fy, "must be a positive focal length in pixels")
        self.eye_base, self.target_base = tuple(map(float, self.eye_base)), tuple(map(float, self.target_base))
        _check(len(self.eye_base) == 3 and all(map(math.isfinite, self.eye_base)), o, "eye_base", self.eye_base,
               "must be 3 finite numbers (metres)")
        _check(len(self.target_base) == 3 and all(map(math.isfinite, self.target_base)), o, "target_base",
               self.target_base, "must be 3 finite numbers (metres)")
        _check(np.linalg.norm(np.subtract(self.eye_base, self.target_base)) > 1e-3, o, "target_base", self.target_base,
               "must differ from eye_base")
        _check(0 < self.znear < self.zfar and math.isfinite(self.zfar), o, "znear", self.znear,
               f"must satisfy 0 < znear < zfar ({self.zfar})")
        _check(math.isfinite(self.rate_hz) and self.rate_hz > 0, o, "rate_hz", self.rate_hz, "must be > 0")


@dataclass
class SceneConfig:
    """Workcell layout and the domain-randomisation ranges (all sampled from one seed).

    urdf_path: robot URDF; "" = k4d_kinematics' built-in YAM (``yam_urdf_path()``).
    table_size: (x, y) metres; the table top is the plane z = 0 of the base frame.
    table_center_base: (x, y) of the table centre.
    workspace_x, workspace_y: (min, max) metres, where objects and zones are placed.
    min_separation: minimum centre distance between placed things (metres).
    cube_half_size: (min, max) half edge of cubes (metres); graspable: 2 * max < gripper opening.
    cylinder_radius, cylinder_half_height: (min, max) metres.
    distractors_{easy,medium,hard}: (min, max) number of distractors per scenario (Kinema4D Table V:
        easy none; medium 3-5 with radius <= 5 cm; hard more than 5).
    distractor_max_radius: bounding radius of a distractor (metres; Table V: 5 cm).
    zone_radius: (min, max) radius of the target zone (metres).
    place_target: "zone" (a flat marker on the table) or "bowl" (a low ring the object is placed into).
    object_density: kg/m^3. friction: sliding friction of objects, table and fingers.
    texture_probability: probability that a surface gets a procedural texture instead of a flat colour.
    light_count: (min, max) number of lights besides the head light.
    """

    urdf_path: str = ""
    table_size: tuple = (1.2, 1.0)
    table_center_base: tuple = (0.3, 0.0)
    workspace_x: tuple = (0.2, 0.42)
    workspace_y: tuple = (-0.2, 0.2)
    min_separation: float = 0.075
    cube_half_size: tuple = (0.015, 0.022)
    cylinder_radius: tuple = (0.014, 0.02)
    cylinder_half_height: tuple = (0.02, 0.035)
    distractors_easy: tuple = (0, 0)
    distractors_medium: tuple = (3, 5)
    distractors_hard: tuple = (6, 8)
    distractor_max_radius: float = 0.05
    zone_radius: tuple = (0.045, 0.06)
    place_target: str = "zone"
    object_density: float = 400.0
    friction: float = 1.2
    texture_probability: float = 0.5
    light_count: tuple = (1, 2)

    def __post_init__(self):
        o = "SceneConfig"
        for name in ("table_size", "table_center_base", "workspace_x", "workspace_y", "cube_half_size",
                     "cylinder_radius", "cylinder_half_height", "zone_radius", "distractors_easy",
                     "distractors_medium", "distractors_hard", "light_count"):
            v = tuple(getattr(self, name))
            setattr(self, name, v)
            _check(len(v) == 2 and all(math.isfinite(float(x)) for x in v), o, name, v, "must be 2 finite numbers")
        for name in ("workspace_x", "workspace_y", "cube_half_size", "cylinder_radius", "cylinder_half_height",
                     "zone_radius", "distractors_easy", "distractors_medium", "distractors_hard", "light_count"):
            _check(_range_ok(getattr(self, name)), o, name, getattr(self, name), "must be (min, max) with min <= max")
        for name in ("cube_half_size", "cylinder_radius", "cylinder_half_height", "zone_radius"):
            _check(getattr(self, name)[0] > 0, o, name, getattr(self, name), "must be positive")
        for name in ("distractors_easy", "distractors_medium", "distractors_hard", "light_count"):
            v = getattr(self, name)
            _check(all(float(x).is_integer() and x >= 0 for x in v), o, name, v, "must be non-negative integers")
            setattr(self, name, tuple(int(x) for x in v))
        _check(self.light_count[1] <= 4, o, "light_count", self.light_count, "at most 4 lights")
        _check(self.cube_half_size[1] * 2 < 0.085, o, "cube_half_size", self.cube_half_size,
               "cubes wider than 8.5 cm do not fit the YAM gripper (9.4 cm opening)")
        _check(all(v > 0 for v in self.table_size), o, "table_size", self.table_size, "must be positive")
        _check(self.min_separation > 0, o, "min_separation", self.min_separation, "must be > 0")
        _check(self.distractor_max_radius > 0, o, "distractor_max_radius", self.distractor_max_radius, "must be > 0")
        _check(self.place_target in ("zone", "bowl"), o, "place_target", self.place_target, "must be 'zone' or 'bowl'")
        _check(self.object_density > 0, o, "object_density", self.object_density, "must be > 0")
        _check(self.friction > 0, o, "friction", self.friction, "must be > 0")
        _check(0 <= self.texture_probability <= 1, o, "texture_probability", self.texture_probability,
               "must be in [0, 1]")

    def distractor_range(self, scenario: str) -> tuple[int, int]:
        """(min, max) distractor count for scenario ``easy|medium|hard``."""
        if scenario not in SCENARIOS:
            raise ValueError(f"scenario = {scenario!r}: must be one of {SCENARIOS}")
        return getattr(self, f"distractors_{scenario}")


@dataclass
class PhysicsConfig:
    """MuJoCo physics and the position servos.

    timestep: physics step in seconds (0.002 = 500 Hz; joint_states at 250 Hz = every 2nd step).
    arm_kp, arm_kv: position-servo gains of joint1..6 (N m / rad, N m s / rad).
    arm_force_limit: |torque| limit of joint1..6 (N m).
    finger_kp, finger_kv, finger_force_limit: the same for the prismatic finger joints (N/m, N s/m, N).
    joint_damping, joint_armature: passive joint damping and rotor armature.
    gravity_compensation: the arm links are gravity-compensated (like the real YAM controller).
    """

    timestep: float = 0.002
    arm_kp: float = 300.0
    arm_kv: float = 12.0
    arm_force_limit: float = 40.0
    finger_kp: float = 600.0
    finger_kv: float = 10.0
    finger_force_limit: float = 15.0
    joint_damping: float = 0.5
    joint_armature: float = 0.05
    gravity_compensation: bool = True

    def __post_init__(self):
        o = "PhysicsConfig"
        _check(0 < self.timestep <= 0.01, o, "timestep", self.timestep, "must be in (0, 0.01] s")
        for name in ("arm_kp", "arm_kv", "arm_force_limit", "finger_kp", "finger_kv", "finger_force_limit"):
            v = getattr(self, name)
            _check(math.isfinite(v) and v > 0, o, name, v, "must be > 0")
        for name in ("joint_damping", "joint_armature"):
            v = getattr(self, name)
            _check(math.isfinite(v) and v >= 0, o, name, v, "must be >= 0")


@dataclass
class PlannerConfig:
    """Time parameterisation limits (ruckig) for joint1..6, in joint order.

    max_velocity (rad/s), max_acceleration (rad/s^2), max_jerk (rad/s^3): (6,) each; the URDF's
    velocity limits are dummy values (1); the defaults are the conservative k4d limits documented above.
    sample_dt: spacing of the returned trajectory samples (s); 0.004 = the 250 Hz controller rate.
    cartesian_step: spacing of the IK waypoints along a straight Cartesian path (metres).
    cartesian_max_joint_step: largest joint jump allowed between consecutive Cartesian waypoints (rad);
        a larger jump means an IK branch switch and raises ValueError.
    """

    max_velocity: tuple = DEFAULT_MAX_VELOCITY
    max_acceleration: tuple = DEFAULT_MAX_ACCELERATION
    max_jerk: tuple = DEFAULT_MAX_JERK
    sample_dt: float = 0.004
    cartesian_step: float = 0.005
    cartesian_max_joint_step: float = 0.25

    def __post_init__(self):
        o = "PlannerConfig"
        for name in ("max_velocity", "max_acceleration", "max_jerk"):
            v = tuple(float(x) for x in getattr(self, name))
            setattr(self, name, v)
            _check(len(v) == len(ARM_JOINTS) and all(math.isfinite(x) and x > 0 for x in v), o, name, v,
                   f"must be {len(ARM_JOINTS)} positive numbers (joint1..joint6)")
        _check(0 < self.sample_dt <= 0.1, o, "sample_dt", self.sample_dt, "must be in (0, 0.1] s")
        _check(0 < self.cartesian_step <= 0.05, o, "cartesian_step", self.cartesian_step, "must be in (0, 0.05] m")
        _check(0 < self.cartesian_max_joint_step <= math.pi, o, "cartesian_max_joint_step",
               self.cartesian_max_joint_step, "must be in (0, pi] rad")


@dataclass
class SimConfig:
    """Everything the simulated workcell needs. ``SimConfig.from_yaml(path)`` reads config/sim.yaml.

    scenario: easy | medium | hard (number of distractors, Kinema4D Table V).
    task: pick_place | push (which object/zone layout is sampled; policies read it).
    home_q: (6,) arm joint positions (rad) at reset.
    shadows: render shadows (costs about 30% of the render time with OSMesa).
    """

    scenario: str = "easy"
    task: str = "pick_place"
    home_q: tuple = (0.0, 1.6535, 1.7486, -1.6659, 0.0, 0.0)
    shadows: bool = True
    camera: CameraConfig = field(default_factory=CameraConfig)
    scene: SceneConfig = field(default_factory=SceneConfig)
    physics: PhysicsConfig = field(default_factory=PhysicsConfig)
    planner: PlannerConfig = field(default_factory=PlannerConfig)

    def __post_init__(self):
        o = "SimConfig"
        _check(self.scenario in SCENARIOS, o, "scenario", self.scenario, f"must be one of {SCENARIOS}")
        _check(self.task in TASKS, o, "task", self.task, f"must be one of {TASKS}")
        self.home_q = tuple(float(x) for x in self.home_q)
        _check(len(self.home_q) == len(ARM_JOINTS) and all(map(math.isfinite, self.home_q)), o, "home_q", self.home_q,
               f"must be {len(ARM_JOINTS)} finite joint angles (rad)")
        for name, cls in (("camera", CameraConfig), ("scene", SceneConfig), ("physics", PhysicsConfig),
                          ("planner", PlannerConfig)):
            v = getattr(self, name)
            if isinstance(v, Mapping):
                setattr(self, name, _from_mapping(cls, v))
            else:
                _check(isinstance(v, cls), o, name, v, f"must be a {cls.__name__} or a mapping")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> "SimConfig":
        """Build from a nested mapping (YAML content); unknown keys raise ValueError naming them."""
        return _from_mapping(cls, data)

    @classmethod
    def from_yaml(cls, path: str | Path) -> "SimConfig":
        """Read a YAML file (the top level, or a ``sim:`` section) into a validated SimConfig."""
        import yaml

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"sim config not found: {path}")
        data = yaml.safe_load(path.read_text()) or {}
        if "sim" in data and isinstance(data["sim"], Mapping):
            data = data["sim"]
        return cls.from_dict(data)

    def to_dict(self) -> dict:
        """Plain nested dict (lists instead of tuples) suitable for YAML/JSON."""

        def conv(x):
            if isinstance(x, tuple):
                return [conv(v) for v in x]
            if isinstance(x, dict):
                return {k: conv(v) for k, v in x.items()}
            return x

        return conv(dataclasses.asdict(self))

    def replace(self, **changes) -> "SimConfig":
        """Copy with top-level fields replaced (validated)."""
        return dataclasses.replace(self, **changes)


_NESTED = {
    ("SimConfig", "camera"): CameraConfig,
    ("SimConfig", "scene"): SceneConfig,
    ("SimConfig", "physics"): PhysicsConfig,
    ("SimConfig", "planner"): PlannerConfig,
}

"""The simulated YAM workcell as a MuJoCo model, built with ``mujoco.MjSpec`` from the robot URDF.

    from k4d_bringup.sim.config import SimConfig
    from k4d_bringup.sim.scene import sample_layout, build_scene
    cfg = SimConfig()
    layout = sample_layout(cfg, seed=0)            # objects, zone, colours, textures, lights from a seed
    scene = build_scene(cfg, layout)               # SimScene: MjModel + id maps + camera

Robot geometry is identical to what ``k4d_kinematics.pointmap`` renders: the kinematic tree (joint
origins, axes, limits) is read from the same URDF (parsed with yourdfpy, like ``RobotModel``), and the
visual geoms are the very ``RobotModel.meshes`` vertex arrays (link frame). Each link body sits at the
link frame, so MuJoCo's ``xpos/xmat`` of a link body equal ``RobotModel.fk`` (checked in the tests).
Collision uses one convex mesh per connected component of a link mesh (the k4d YAM meshes are unions
of boxes, so this is exact), in geom group 3 (not rendered).

Frames: the MuJoCo world frame is the robot ``base`` frame; the table top is the plane z = 0. The main
camera is placed from an ``Extrinsics`` (T_base_cam of the REP 103 optical frame: z forward, y down);
MuJoCo cameras look along their -z with +y up, so R_base_mjcam = R_base_optical @ diag(1, -1, -1).
Intrinsics: fovy = 2 atan((H / 2) / fy); MuJoCo renders a symmetric frustum with square pixels, which is
the pinhole camera fx = fy, cx = (W - 1) / 2, cy = (H - 1) / 2 (pixel centres at integer coordinates).
"""
from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.spatial.transform import Rotation

from .config import ARM_JOINTS, FINGER_JOINTS, CameraConfig, SimConfig

CAMERA_NAME = "main"
ROBOT_GROUP, SCENE_GROUP, COLLISION_GROUP = 0, 1, 3  # geom groups: robot visuals, workcell, hidden collision
ROBOT_PREFIX = "robot/"
OBJECT_PREFIX = "obj/"
# Collision bit masks: robot geoms do not collide with each other, everything else collides with all.
_ROBOT_CONTYPE, _ROBOT_CONAFF = 2, 1
_WORLD_CONTYPE, _WORLD_CONAFF = 1, 3
_OPT_FROM_MJCAM = np.diag([1.0, -1.0, -1.0])


# ----------------------------------------------------------------------------------------------
# Camera conventions
# ----------------------------------------------------------------------------------------------
def mujoco_camera_quat(T_base_cam: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Optical-frame pose (4, 4) in base -> (pos (3,), quat wxyz (4,)) of a MuJoCo camera at the same place.

    MuJoCo's camera frame is x right, y up, looking along -z; the optical frame is x right, y down,
    z forward: the two differ by a rotation of pi about x.
    """
    R = np.asarray(T_base_cam, np.float64)[:3, :3] @ _OPT_FROM_MJCAM
    xyzw = Rotation.from_matrix(R).as_quat()
    return np.asarray(T_base_cam, np.float64)[:3, 3].copy(), np.r_[xyzw[3], xyzw[:3]]


def fovy_deg(height: int, fy: float) -> float:
    """Vertical field of view (degrees) of a pinhole camera with focal length fy (pixels) and height H."""
    return math.degrees(2.0 * math.atan2(height / 2.0, fy))


def make_pinhole(width: int, height: int, fy: float):
    """The ``PinholeCamera`` MuJoCo renders for (W, H, fy): fx = fy, cx = (W-1)/2, cy = (H-1)/2."""
    from k4d_kinematics.camera import PinholeCamera

    return PinholeCamera(width, height, fy, fy, (width - 1) / 2.0, (height - 1) / 2.0)


def resolve_camera(cfg: CameraConfig):
    """(PinholeCamera, Extrinsics) of the main camera from the config (YAML files override fields).

    Raises ValueError naming the camera_info field when it cannot be rendered exactly by MuJoCo
    (fx != fy, or principal point not at the image centre).
    """
    from k4d_kinematics.camera import Extrinsics, PinholeCamera

    if cfg.camera_info_yaml:
        cam = PinholeCamera.from_yaml(cfg.camera_info_yaml)
        if abs(cam.fx - cam.fy) > 1e-6 * cam.fy:
            raise ValueError(f"{cfg.camera_info_yaml}: fx = {cam.fx} != fy = {cam.fy}; the simulated camera has "
                             "square pixels (use fx = fy)")
        for name, val, want in (("cx", cam.cx, (cam.width - 1) / 2.0), ("cy", cam.cy, (cam.height - 1) / 2.0)):
            if abs(val - want) > 1e-3:
                raise ValueError(f"{cfg.camera_info_yaml}: {name} = {val} but the simulated camera renders its "
                                 f"principal point at the image centre {want} (pixel centres at integers)")
        cam = make_pinhole(cam.width, cam.height, cam.fy)
    else:
        cam = make_pinhole(cfg.width, cfg.height, cfg.fy)
    if cfg.extrinsics_yaml:
        ext = Extrinsics.from_yaml(cfg.extrinsics_yaml)
        if ext.parent_frame != "base":
            raise ValueError(f"{cfg.extrinsics_yaml}: parent_frame = {ext.parent_frame!r}; the simulated camera "
                             "must be given in the robot 'base' frame")
    else:
        ext = Extrinsics.look_at(cfg.eye_base, cfg.target_base, up=(0, 0, 1))
    return cam, ext


# ----------------------------------------------------------------------------------------------
# URDF kinematic tree (joint origins/axes/limits); geometry comes from RobotModel.meshes
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class UrdfJoint:
    """One URDF joint: origin (4, 4) parent-link -> child-link at q = 0, unit axis (3,) in the child frame."""

    name: str
    type: str
    parent: str
    child: str
    origin: np.ndarray
    axis: np.ndarray
    lower: float
    upper: float


def read_urdf_joints(urdf_path: str | Path) -> list[UrdfJoint]:
    """Joints of a URDF file (parsed with yourdfpy, the parser ``RobotModel`` uses), declaration order."""
    import yourdfpy

    urdf = yourdfpy.URDF.load(str(urdf_path), build_scene_graph=False, load_meshes=False,
                              build_collision_scene_graph=False, load_collision_meshes=False)
    out = []
    for j in urdf.robot.joints:
        ax = np.array([1.0, 0, 0]) if j.axis is None else np.asarray(j.axis, np.float64)
        lim = j.limit
        lo = -np.inf if j.type == "continuous" or lim is None or lim.lower is None else float(lim.lower)
        hi = np.inf if j.type == "continuous" or lim is None or lim.upper is None else float(lim.upper)
        out.append(UrdfJoint(j.name, j.type, j.parent, j.child,
                             np.eye(4) if j.origin is None else np.asarray(j.origin, np.float64),
                             ax / max(np.linalg.norm(ax), 1e-12), lo, hi))
    return out


def _mesh_components(vertices: np.ndarray, faces: np.ndarray) -> list[np.ndarray]:
    """Vertex index sets of the connected components of a triangle mesh (vertices merged by position)."""
    _, ids = np.unique(np.round(vertices, 9), axis=0, return_inverse=True)
    ids = ids.reshape(-1)
    parent = np.arange(ids.max() + 1)

    def find(a):
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for f in ids[faces]:
        ra, rb, rc = find(f[0]), find(f[1]), find(f[2])
        parent[rb] = ra
        parent[find(rc)] = ra
    roots = np.array([find(i) for i in ids])
    return [np.nonzero(roots == r)[0] for r in np.unique(roots)]


# ----------------------------------------------------------------------------------------------
# Randomised layout
# ----------------------------------------------------------------------------------------------
def rest_half_height(kind: str, size) -> float:
    """Resting centre height (m) of an upright object from its MuJoCo geom ``size`` (cube: 3 half extents, the
    third vertical; cylinder: radius, half height)."""
    return float(size[2] if kind == "cube" else size[1])


@dataclass(frozen=True)
class ObjectSpec:
    """A free rigid object on the table.

    kind: "cube" | "cylinder". size: MuJoCo geom size (cube: 3 half extents; cylinder: radius, half height)
    in metres. pos_base: (3,) initial centre (base frame; z = half height, resting on the table).
    yaw: rotation about base z (rad). rgba: (4,) colour; texture: "" | "checker" | "gradient" | "noise"
    with rgb2 its second colour. role: "target" (the task object) or "distractor".
    """

    name: str
    kind: str
    size: tuple
    pos_base: tuple
    yaw: float
    rgba: tuple
    texture: str = ""
    rgb2: tuple = (0.0, 0.0, 0.0)
    role: str = "distractor"

    @property
    def half_height(self) -> float:
        return rest_half_height(self.kind, self.size)

    @property
    def radius(self) -> float:
        """Bounding radius in the table plane (metres)."""
        return float(math.hypot(self.size[0], self.size[1]) if self.kind == "cube" else self.size[0])


@dataclass(frozen=True)
class ZoneSpec:
    """The goal region on the table: centre (2,) base xy, radius (m), kind "zone" (flat marker) or "bowl"."""

    center_base: tuple
    radius: float
    rgba: tuple
    kind: str = "zone"


@dataclass(frozen=True)
class LightSpec:
    """A directional light: direction (3,) in base, diffuse intensity in [0, 1], casts shadows or not."""

    direction: tuple
    diffuse: float
    castshadow: bool


@dataclass(frozen=True)
class SceneLayout:
    """Everything randomised about one scene (a pure function of the config and the seed).

    task: "pick_place" | "push". objects: target first, then distractors. zone: the goal region.
    push_goal_base: (2,) xy goal of the push task (the zone centre). table/floor colours and textures.
    """

    seed: int
    scenario: str
    task: str
    objects: tuple
    zone: ZoneSpec
    table_rgba: tuple
    table_texture: str
    table_rgb2: tuple
    floor_rgba: tuple
    lights: tuple

    @property
    def target(self) -> ObjectSpec:
        return self.objects[0]


def _random_rgb(rng: np.random.Generator, sat=(0.45, 1.0), val=(0.35, 0.95)) -> tuple:
    h = rng.uniform(0, 1)
    return tuple(float(c) for c in colorsys.hsv_to_rgb(h, rng.uniform(*sat), rng.uniform(*val)))


def sample_layout(cfg: SimConfig, seed: int, scenario: str | None = None, task: str | None = None) -> SceneLayout:
    """Draw a scene layout from ``seed`` (deterministic: same config + seed -> same layout).

    The target object is placed at least ``1.5 * min_separation`` from the zone so the task is non-trivial;
    distractors (count from the scenario's range) keep 1.5 cm + their radii from everything, in the workspace
    grown by 6-8 cm.
    For "push" the target is placed so the pushing direction (object -> zone) points away from the base.
    Raises ValueError if the workspace is too small to place everything.
    """
    sc = cfg.scene
    scenario = cfg.scenario if scenario is None else scenario
    task = cfg.task if task is None else task
    lo_n, hi_n = sc.distractor_range(scenario)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x5CE4E]))
    wx, wy = sc.workspace_x, sc.workspace_y
    placed: list[tuple[np.ndarray, float]] = []

    def free(xy, r, sep):
        return all(np.linalg.norm(xy - p) >= r + pr + sep for p, pr in placed)

    def place(r, sep, tries=400, region=None):
        (x0, x1), (y0, y1) = region or (wx, wy)
        for _ in range(tries):
            xy = np.array([rng.uniform(x0 + r, x1 - r), rng.uniform(y0 + r, y1 - r)])
            if free(xy, r, sep):
                placed.append((xy, r))
                return xy
        raise ValueError(f"could not place an object of radius {r:.3f} m in workspace x={wx}, y={wy} "
                         f"(min_separation={sc.min_separation}); enlarge the workspace or reduce distractors")

    def texture():
        if rng.uniform() < sc.texture_probability:
            return str(rng.choice(["checker", "gradient", "noise"])), _random_rgb(rng)
        return "", (0.0, 0.0, 0.0)

    def make_object(name, role, max_radius=None):
        kind = str(rng.choice(["cube", "cylinder"]))
        if kind == "cube":
            h = rng.uniform(*sc.cube_half_size)
            size = (h, h, h)
        else:
            size = (rng.uniform(*sc.cylinder_radius), rng.uniform(*sc.cylinder_half_height), 0.0)
        if max_radius is not None:
            r_now = math.hypot(size[0], size[1]) if kind == "cube" else size[0]
            if r_now > max_radius:
                s = max_radius / r_now
                size = (size[0] * s, size[1] * s, size[2] * s) if kind == "cube" else (size[0] * s, size[1], 0.0)
        tex, rgb2 = texture()
        spec = ObjectSpec(name, kind, tuple(float(v) for v in size), (0.0, 0.0, 0.0), float(rng.uniform(-math.pi, math.pi)),
                          _random_rgb(rng) + (1.0,), tex, rgb2, role)
        return spec

    # 1. the zone and the target object
    zone_r = float(rng.uniform(*sc.zone_radius))
    target = make_object("target", "target")
    if task == "push":
        # Object nearer the robot, zone farther out along +x: the pusher moves away from the base.
        zone_xy = place(zone_r, sc.min_separation, region=((wx[0] + 0.1, wx[1]), wy))
        for _ in range(400):
            d = rng.uniform(0.09, 0.14)
            ang = rng.uniform(-0.5, 0.5)
            xy = zone_xy - d * np.array([math.cos(ang), math.sin(ang)])
            r = target.radius
            if wx[0] - 0.05 <= xy[0] and wy[0] + r <= xy[1] <= wy[1] - r and free(xy, r, 0.0):
                placed.append((xy, r))
                break
        else:
            raise ValueError("could not place the push object in front of the goal zone")
    else:
        for attempt in range(50):  # re-draw the zone if the target does not fit far enough from it
            zone_xy = place(zone_r, sc.min_separation)
            try:
                xy = place(target.radius, 1.5 * sc.min_separation, tries=100)
                break
            except ValueError:
                placed.clear()
        else:
            raise ValueError(f"could not place the target {1.5 * sc.min_separation:.3f} m from the zone in workspace "
                             f"x={wx}, y={wy}; enlarge the workspace or reduce min_separation")
    target = ObjectSpec(**{**target.__dict__, "pos_base": (float(xy[0]), float(xy[1]), target.half_height)})
    zone = ZoneSpec((float(zone_xy[0]), float(zone_xy[1])), zone_r, _random_rgb(rng, sat=(0.2, 0.6)) + (1.0,),
                    sc.place_target if task == "pick_place" else "zone")

    # 2. distractors
    objects = [target]
    for i in range(int(rng.integers(lo_n, hi_n + 1))):
        o = make_object(f"distractor{i}", "distractor", sc.distractor_max_radius)
        # clutter spreads a little beyond the task workspace (still on the table, in reach)
        xy = place(o.radius, 0.015, region=((wx[0] - 0.06, wx[1] + 0.08), (wy[0] - 0.08, wy[1] + 0.08)))
        objects.append(ObjectSpec(**{**o.__dict__, "pos_base": (float(xy[0]), float(xy[1]), o.half_height)}))

    # 3. table, floor, lights
    table_tex, table_rgb2 = texture()
    table_rgb = _random_rgb(rng, sat=(0.0, 0.35), val=(0.45, 0.85))
    lights = []
    for _ in range(int(rng.integers(sc.light_count[0], sc.light_count[1] + 1))):
        az, el = rng.uniform(-math.pi, math.pi), rng.uniform(math.radians(45), math.radians(80))
        d = -np.array([math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)])
        lights.append(LightSpec(tuple(float(v) for v in d), float(rng.uniform(0.35, 0.7)), bool(len(lights) == 0)))
    return SceneLayout(int(seed), scenario, task, tuple(objects), zone, table_rgb + (1.0,), table_tex, table_rgb2,
                       _random_rgb(rng, sat=(0.0, 0.3), val=(0.2, 0.5)) + (1.0,), tuple(lights))


# ----------------------------------------------------------------------------------------------
# Model building
# ----------------------------------------------------------------------------------------------
@dataclass
class SimScene:
    """A compiled workcell and the index maps everything else uses.

    model: mujoco.MjModel. robot: k4d_kinematics RobotModel (link ids = ``robot.link_names`` indices).
    layout: the SceneLayout it was built from. camera: PinholeCamera; extrinsics: Extrinsics (T_base_cam).
    joint_names: actuated joints (joint1..6, joint7, joint8); qpos_adr / dof_adr: (8,) their qpos / qvel
    addresses; actuator_ids: (8,) the position actuators in the same order.
    geom_link: (ngeom,) int16 robot link id of each geom, -1 for non-robot geoms.
    geom_object: (ngeom,) int16 index into ``layout.objects``, -1 otherwise.
    link_body: (L,) MuJoCo body id of every robot link. object_body / object_qpos_adr: per object.
    """

    model: object
    robot: object
    layout: SceneLayout
    camera: object
    extrinsics: object
    joint_names: list
    qpos_adr: np.ndarray
    dof_adr: np.ndarray
    actuator_ids: np.ndarray
    geom_link: np.ndarray
    geom_object: np.ndarray
    link_body: np.ndarray
    object_body: np.ndarray
    object_qpos_adr: np.ndarray
    zone_geom: int = -1
    extras: dict = field(default_factory=dict)


def _add_texture_material(spec, name: str, rgba, texture: str, rgb2, repeat=(1.0, 1.0)):
    import mujoco

    mat = spec.add_material(name=name, rgba=list(rgba))
    if texture:
        builtin = {"checker": mujoco.mjtBuiltin.mjBUILTIN_CHECKER, "gradient": mujoco.mjtBuiltin.mjBUILTIN_GRADIENT,
                   "noise": mujoco.mjtBuiltin.mjBUILTIN_FLAT}[texture]
        tex = spec.add_texture(name=name + "_tex", type=mujoco.mjtTexture.mjTEXTURE_2D, builtin=builtin,
                               width=64, height=64, rgb1=list(rgba[:3]), rgb2=list(rgb2))
        if texture == "noise":
            tex.mark = mujoco.mjtMark.mjMARK_RANDOM
            tex.random = 0.25
            tex.markrgb = list(rgb2)
        mat.rgba = [1.0, 1.0, 1.0, 1.0]
        mat.texrepeat = list(repeat)
        mat.textures[mujoco.mjtTextureRole.mjTEXROLE_RGB] = name + "_tex"
    return mat


def build_spec(cfg: SimConfig, layout: SceneLayout, robot=None, urdf_path: str | Path | None = None):
    """MjSpec of the workcell: table, floor, lights, camera, robot with position servos, objects, zone.

    robot: a ``k4d_kinematics.robot.RobotModel`` of ``urdf_path`` (loaded when None). Returns
    (spec, robot, camera, extrinsics).
    """
    import mujoco
    from k4d_kinematics.robot import RobotModel, yam_urdf_path

    urdf_path = Path(urdf_path or cfg.scene.urdf_path or yam_urdf_path())
    if robot is None:
        robot = RobotModel.from_urdf_file(urdf_path)
    missing = [j for j in ARM_JOINTS + FINGER_JOINTS if j not in robot.joint_names]
    if missing:
        raise ValueError(f"urdf_path = {str(urdf_path)!r}: robot lacks joint(s) {missing}; the workcell needs "
                         f"{list(ARM_JOINTS + FINGER_JOINTS)}")
    camera, extrinsics = resolve_camera(cfg.camera)
    ph, sc = cfg.physics, cfg.scene

    spec = mujoco.MjSpec()
    spec.modelname = "k4d_yam_workcell"
    spec.compiler.degree = False
    spec.compiler.autolimits = True
    spec.option.timestep = ph.timestep
    spec.option.integrator = mujoco.mjtIntegrator.mjINT_IMPLICITFAST
    spec.option.cone = mujoco.mjtCone.mjCONE_ELLIPTIC
    spec.option.impratio = 10.0
    # Rendering: fixed extent so znear/zfar are in metres; offscreen buffer big enough for the camera.
    spec.stat.extent = 1.0
    spec.stat.center = [0.3, 0.0, 0.2]
    spec.visual.map.znear = cfg.camera.znear
    spec.visual.map.zfar = cfg.camera.zfar
    spec.visual.global_.offwidth = max(camera.width, 64)
    spec.visual.global_.offheight = max(camera.height, 64)
    spec.visual.quality.shadowsize = 2048 if cfg.shadows else 0
    # No multisampling: MSAA blends depth across robot silhouettes; without it every pixel holds the
    # depth and id of the surface through its centre, as the k4d rasteriser does (pixel-exact oracle).
    spec.visual.quality.offsamples = cfg.camera.msaa_samples
    spec.visual.headlight.ambient = [0.35, 0.35, 0.35]
    spec.visual.headlight.diffuse = [0.25, 0.25, 0.25]
    spec.visual.headlight.specular = [0.0, 0.0, 0.0]
    world = spec.worldbody

    # 1. table (top face at z = 0), floor, lights
    tx, ty = sc.table_size
    _add_texture_material(spec, "table_mat", layout.table_rgba, layout.table_texture, layout.table_rgb2, (6.0, 5.0))
    world.add_geom(name="table", type=mujoco.mjtGeom.mjGEOM_BOX, size=[tx / 2, ty / 2, 0.02],
                   pos=[sc.table_center_base[0], sc.table_center_base[1], -0.02], material="table_mat", group=SCENE_GROUP,
                   contype=_WORLD_CONTYPE, conaffinity=_WORLD_CONAFF, friction=[sc.friction, 0.005, 0.0001],
                   condim=4)
    _add_texture_material(spec, "floor_mat", layout.floor_rgba, "checker", np.asarray(layout.floor_rgba[:3]) * 0.8,
                          (10.0, 10.0))
    world.add_geom(name="floor", type=mujoco.mjtGeom.mjGEOM_PLANE, size=[4.0, 4.0, 0.1], pos=[0, 0, -0.75],
                   material="floor_mat", group=SCENE_GROUP, contype=0, conaffinity=0)
    for i, lt in enumerate(layout.lights):
        d = np.asarray(lt.direction)
        world.add_light(name=f"light{i}", type=mujoco.mjtLightType.mjLIGHT_DIRECTIONAL, pos=list(-d * 2.0),
                        dir=list(d), diffuse=[lt.diffuse] * 3, specular=[0.1] * 3, ambient=[0.05] * 3,
                        castshadow=bool(lt.castshadow and cfg.shadows))

    # 2. main camera (MuJoCo convention, see module docstring)
    pos, quat = mujoco_camera_quat(extrinsics.T_base_cam)
    world.add_camera(name=CAMERA_NAME, pos=list(pos), quat=list(quat), fovy=fovy_deg(camera.height, camera.fy))

    # 3. robot: one body per link at the link frame, joint at the body origin, meshes from RobotModel
    joints = read_urdf_joints(urdf_path)
    by_child = {j.child: j for j in joints}
    if set(robot.link_names) != set([robot.root_link] + list(by_child)):
        raise ValueError(f"urdf_path = {str(urdf_path)!r}: links {robot.link_names} do not match its joint tree")
    meshes_by_link: dict[int, list] = {}
    for m in robot.meshes:
        meshes_by_link.setdefault(m.link_index, []).append(m)
    bodies = {}
    for li, link in enumerate(robot.link_names):
        if link == robot.root_link:
            body = world.add_body(name=ROBOT_PREFIX + link, pos=[0, 0, 0], quat=[1, 0, 0, 0])
        else:
            j = by_child[link]
            xyzw = Rotation.from_matrix(j.origin[:3, :3]).as_quat()
            body = bodies[j.parent].add_body(name=ROBOT_PREFIX + link, pos=list(j.origin[:3, 3]),
                                             quat=[xyzw[3], xyzw[0], xyzw[1], xyzw[2]])
            if j.type in ("revolute", "continuous", "prismatic"):
                jt = mujoco.mjtJoint.mjJNT_SLIDE if j.type == "prismatic" else mujoco.mjtJoint.mjJNT_HINGE
                kw = dict(name=j.name, type=jt, axis=list(j.axis), damping=ph.joint_damping,
                          armature=ph.joint_armature)
                if np.isfinite(j.lower) and np.isfinite(j.upper):
                    kw.update(range=[j.lower, j.upper], limited=mujoco.mjtLimited.mjLIMITED_TRUE)
                body.add_joint(**kw)
            body.gravcomp = 1.0 if ph.gravity_compensation else 0.0
        bodies[link] = body
        # Inertia: a small explicit one (the servo gains are tuned against it); geoms carry no mass.
        body.mass = 0.3 if link not in ("tip_left", "tip_right") else 0.07
        body.inertia = [5e-4, 5e-4, 5e-4] if link not in ("tip_left", "tip_right") else [5e-5, 5e-5, 5e-5]
        body.explicitinertial = True
        for k, lm in enumerate(meshes_by_link.get(li, [])):
            mname = f"{link}_vis{k}"
            spec.add_mesh(name=mname, uservert=lm.vertices.reshape(-1).tolist(),
                          userface=lm.faces.reshape(-1).tolist(), inertia=mujoco.mjtMeshInertia.mjMESH_INERTIA_SHELL)
            body.add_geom(name=f"{ROBOT_PREFIX}{link}/visual{k}", type=mujoco.mjtGeom.mjGEOM_MESH, meshname=mname,
                          rgba=list(lm.rgba), contype=0, conaffinity=0, group=ROBOT_GROUP, mass=0)
            comps = _mesh_components(lm.vertices, lm.faces)
            if len(comps) > 16:  # a detailed mesh: one convex hull for the whole link
                comps = [np.arange(len(lm.vertices))]
            for c, vid in enumerate(comps):
                cname = f"{link}_col{k}_{c}"
                spec.add_mesh(name=cname, uservert=lm.vertices[vid].reshape(-1).tolist(),
                              inertia=mujoco.mjtMeshInertia.mjMESH_INERTIA_CONVEX)
                finger = link in ("tip_left", "tip_right")
                body.add_geom(name=f"{ROBOT_PREFIX}{link}/collision{k}_{c}", type=mujoco.mjtGeom.mjGEOM_MESH,
                              meshname=cname, group=COLLISION_GROUP, contype=_ROBOT_CONTYPE, conaffinity=_ROBOT_CONAFF, mass=0,
                              condim=4 if finger else 3, friction=[sc.friction * (1.5 if finger else 0.5), 0.01, 0.0001],
                              priority=1 if finger else 0)

    # 4. position servos on joint1..6 and the fingers
    for jn in ARM_JOINTS + FINGER_JOINTS:
        finger = jn in FINGER_JOINTS
        kp, kv = (ph.finger_kp, ph.finger_kv) if finger else (ph.arm_kp, ph.arm_kv)
        flim = ph.finger_force_limit if finger else ph.arm_force_limit
        jnt = next(j for j in joints if j.name == jn)
        act = spec.add_actuator(name=f"servo_{jn}", target=jn, trntype=mujoco.mjtTrn.mjTRN_JOINT)
        act.gaintype = mujoco.mjtGain.mjGAIN_FIXED
        act.biastype = mujoco.mjtBias.mjBIAS_AFFINE
        act.gainprm[0] = kp
        act.biasprm[0], act.biasprm[1], act.biasprm[2] = 0.0, -kp, -kv
        act.ctrlrange = [jnt.lower, jnt.upper]
        act.ctrllimited = mujoco.mjtLimited.mjLIMITED_TRUE
        act.forcerange = [-flim, flim]
        act.forcelimited = mujoco.mjtLimited.mjLIMITED_TRUE

    # 5. zone (visual marker, or a bowl made of a ring of wall boxes)
    z = layout.zone
    world.add_geom(name="zone", type=mujoco.mjtGeom.mjGEOM_CYLINDER, size=[z.radius, 0.0006, 0],
                   pos=[z.center_base[0], z.center_base[1], 0.0006], rgba=list(z.rgba), contype=0, conaffinity=0, group=SCENE_GROUP)
    if z.kind == "bowl":
        n_wall = 16
        for k in range(n_wall):
            a = 2 * math.pi * k / n_wall
            half_w = z.radius * math.tan(math.pi / n_wall) + 0.004
            world.add_geom(name=f"bowl_wall{k}", type=mujoco.mjtGeom.mjGEOM_BOX, size=[0.004, half_w, 0.015],
                           pos=[z.center_base[0] + (z.radius + 0.004) * math.cos(a),
                                z.center_base[1] + (z.radius + 0.004) * math.sin(a), 0.015],
                           quat=[math.cos(a / 2), 0, 0, math.sin(a / 2)], rgba=list(z.rgba), group=SCENE_GROUP,
                           contype=_WORLD_CONTYPE, conaffinity=_WORLD_CONAFF)

    # 6. free objects
    for o in layout.objects:
        b = world.add_body(name=OBJECT_PREFIX + o.name, pos=list(o.pos_base),
                           quat=[math.cos(o.yaw / 2), 0, 0, math.sin(o.yaw / 2)])
        b.add_freejoint(name=OBJECT_PREFIX + o.name + "/free")
        _add_texture_material(spec, f"{o.name}_mat", o.rgba, o.texture, o.rgb2, (2.0, 2.0))
        gtype = mujoco.mjtGeom.mjGEOM_BOX if o.kind == "cube" else mujoco.mjtGeom.mjGEOM_CYLINDER
        b.add_geom(name=OBJECT_PREFIX + o.name, type=gtype, size=list(o.size), material=f"{o.name}_mat", group=SCENE_GROUP,
                   density=sc.object_density, contype=_WORLD_CONTYPE, conaffinity=_WORLD_CONAFF, condim=4,
                   friction=[sc.friction, 0.01, 0.0001])
    return spec, robot, camera, extrinsics


def build_scene(cfg: SimConfig, layout: SceneLayout, robot=None) -> SimScene:
    """Compile the workcell for ``layout`` and compute the id maps (see ``SimScene``)."""
    import mujoco

    spec, robot, camera, extrinsics = build_spec(cfg, layout, robot)
    model = spec.compile()
    names = list(ARM_JOINTS + FINGER_JOINTS)
    jids = [mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_JOINT, n) for n in names]
    qpos_adr = np.array([model.jnt_qposadr[j] for j in jids], np.int64)
    dof_adr = np.array([model.jnt_dofadr[j] for j in jids], np.int64)
    act_ids = np.array([mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_ACTUATOR, f"servo_{n}") for n in names], np.int64)
    link_body = np.array([mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, ROBOT_PREFIX + l) for l in robot.link_names],
                         np.int64)
    body_link = np.full(model.nbody, -1, np.int16)
    body_link[link_body] = np.arange(len(link_body))
    obj_body = np.array([mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, OBJECT_PREFIX + o.name)
                         for o in layout.objects], np.int64)
    body_obj = np.full(model.nbody, -1, np.int16)
    body_obj[obj_body] = np.arange(len(obj_body))
    obj_qadr = np.array([model.jnt_qposadr[model.body_jntadr[b]] for b in obj_body], np.int64)
    return SimScene(model=model, robot=robot, layout=layout, camera=camera, extrinsics=extrinsics, joint_names=names,
                    qpos_adr=qpos_adr, dof_adr=dof_adr, actuator_ids=act_ids,
                    geom_link=body_link[model.geom_bodyid].astype(np.int16),
                    geom_object=body_obj[model.geom_bodyid].astype(np.int16), link_body=link_body,
                    object_body=obj_body, object_qpos_adr=obj_qadr,
                    zone_geom=mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_GEOM, "zone"))

"""URDF robot model: parsing, link meshes, batched forward kinematics, joint-vector checks.

    from k4d_kinematics.robot import RobotModel
    model = RobotModel.yam()
    T_base_link = model.fk(model.q_from_dict({"joint2": 0.5}))   # (L, 4, 4) float64, metres, root frame

Parsing uses ``yourdfpy``: it is maintained, pure Python (lxml + numpy) and reads the full URDF spec
(mimic, materials, package:// URIs), whereas ``urdfpy`` is unmaintained and pins old numpy/networkx.
We use yourdfpy only to parse; mesh resolution, tree checks and FK are ours, so errors name the link,
joint or file at fault and FK is a precomputed, compiled (numba) kernel.

Conventions
- ``link_names``: every link, depth-first from the root following joint declaration order; the root
  is index 0 and a parent always comes before its children. The index is the link id used everywhere
  (pointmap ``link`` images, ``LinkMesh.link_index``).
- ``joint_names``: movable joints (revolute, continuous, prismatic) that do not mimic another joint, in
  URDF declaration order. ``q`` vectors are in this order; radians or metres.
- Joint limits policy ``limits``: ``"reject"`` (ValueError naming the joint, value and bounds; a
  tolerance ``LIMIT_TOL`` is allowed for encoder noise), ``"clamp"`` (clip into bounds), ``"ignore"``.
  NaN/inf are always rejected with the joint name.
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np
from numba import njit

LIMIT_TOL = 1e-6  # rad or m beyond a limit that "reject" still accepts
LIMIT_POLICIES = ("reject", "clamp", "ignore")

_FIXED, _REVOLUTE, _PRISMATIC = 0, 1, 2
_JOINT_KIND = {"fixed": _FIXED, "revolute": _REVOLUTE, "continuous": _REVOLUTE, "prismatic": _PRISMATIC}


def yam_urdf_path() -> Path:
    """Path of the built-in I2RT YAM URDF (simplified k4d meshes under ``meshes/`` beside it)."""
    return Path(__file__).resolve().parent / "description" / "yam" / "yam.urdf"


@dataclass
class LinkMesh:
    """Triangle mesh of one link's visual geometry.

    link_index: index into ``RobotModel.link_names``.
    vertices: (V, 3) float64, metres, in the link frame.
    faces: (F, 3) int32, counter-clockwise seen from outside.
    rgba: (4,) float64 in [0, 1].
    closed: True when every edge is shared by exactly two consistently wound faces (outward normals),
        which makes back-face culling exact.
    """

    link_index: int
    vertices: np.ndarray
    faces: np.ndarray
    rgba: np.ndarray = field(default_factory=lambda: np.array([0.7, 0.7, 0.7, 1.0]))
    closed: bool = False


@dataclass(frozen=True)
class GripperSpec:
    """Linear map from an opening width to finger joints.

    joints: finger joint names; q_closed / q_open: (n,) their values when closed / fully open;
    max_width_m: opening width (metres, between the finger pads) at ``q_open``.
    """

    joints: tuple[str, ...]
    q_closed: tuple[float, ...]
    q_open: tuple[float, ...]
    max_width_m: float


# YAM: joint7 axis +y with tip_left's pad at the centre line when q=0, joint8 axis -y mirrored: both
# fingers are closed at 0 and open at their lower limit -0.04695 m, the gap being |q7| + |q8|.
YAM_GRIPPER = GripperSpec(("joint7", "joint8"), (0.0, 0.0), (-0.04695, -0.04695), 0.0939)


def _origin_T(origin) -> np.ndarray:
    return np.eye(4) if origin is None else np.asarray(origin, dtype=np.float64)


# ----------------------------------------------------------------------------------------------
# FK kernel
# ----------------------------------------------------------------------------------------------
@njit(cache=True)
def _fk_kernel(q, parent, T0, kind, axis, qidx, mult, offset, out):
    """q (N, J); out (N, L, 4, 4). Link l pose = pose[parent[l]] @ T0[l] @ motion(kind[l], axis[l], value)."""
    N, L = out.shape[0], out.shape[1]
    M = np.empty((4, 4))
    for n in range(N):
        for i in range(4):
            for j in range(4):
                out[n, 0, i, j] = 1.0 if i == j else 0.0
        for l in range(1, L):
            for i in range(4):
                for j in range(4):
                    M[i, j] = T0[l, i, j]
            k = kind[l]
            if k != 0:
                v = mult[l] * q[n, qidx[l]] + offset[l] if qidx[l] >= 0 else offset[l]
                ax, ay, az = axis[l, 0], axis[l, 1], axis[l, 2]
                if k == 1:  # Rodrigues rotation about the unit axis, right-multiplied into T0's rotation
                    c, s = math.cos(v), math.sin(v)
                    t = 1.0 - c
                    R00, R01, R02 = t * ax * ax + c, t * ax * ay - s * az, t * ax * az + s * ay
                    R10, R11, R12 = t * ax * ay + s * az, t * ay * ay + c, t * ay * az - s * ax
                    R20, R21, R22 = t * ax * az - s * ay, t * ay * az + s * ax, t * az * az + c
                    for i in range(3):
                        a0, a1, a2 = T0[l, i, 0], T0[l, i, 1], T0[l, i, 2]
                        M[i, 0] = a0 * R00 + a1 * R10 + a2 * R20
                        M[i, 1] = a0 * R01 + a1 * R11 + a2 * R21
                        M[i, 2] = a0 * R02 + a1 * R12 + a2 * R22
                else:  # prismatic: translate along the axis, expressed in the joint frame
                    for i in range(3):
                        M[i, 3] = T0[l, i, 3] + v * (T0[l, i, 0] * ax + T0[l, i, 1] * ay + T0[l, i, 2] * az)
            p = parent[l]
            for i in range(3):
                for j in range(4):
                    acc = out[n, p, i, 0] * M[0, j] + out[n, p, i, 1] * M[1, j] + out[n, p, i, 2] * M[2, j]
                    if j == 3:
                        acc += out[n, p, i, 3]
                    out[n, l, i, j] = acc
            out[n, l, 3, 0] = 0.0
            out[n, l, 3, 1] = 0.0
            out[n, l, 3, 2] = 0.0
            out[n, l, 3, 3] = 1.0


# ----------------------------------------------------------------------------------------------
# Mesh file resolution
# ----------------------------------------------------------------------------------------------
def _ament_share(pkg: str) -> Path | None:
    try:
        from ament_index_python.packages import get_package_share_directory
    except ImportError:
        return None
    try:
        return Path(get_package_share_directory(pkg))
    except Exception:  # PackageNotFoundError, or ament index not set up
        return None


def resolve_mesh_path(filename: str, base_dir: Path | None, mesh_dir: Path | None) -> list[Path]:
    """Candidate paths for a URDF mesh ``filename`` (relative, ``package://pkg/rel`` or ``file://``), in order."""
    cands: list[Path] = []
    if filename.startswith("file://"):
        return [Path(filename[len("file://"):])]
    if filename.startswith("package://"):
        pkg, _, rel = filename[len("package://"):].partition("/")
        if mesh_dir is not None:
            cands += [mesh_dir / rel, mesh_dir / pkg / rel, mesh_dir / Path(rel).name]
        share = _ament_share(pkg)
        if share is not None:
            cands.append(share / rel)
        if base_dir is not None:
            for d in [base_dir, *base_dir.parents]:
                cands += [d / rel] if d.name == pkg else []
                cands.append(d / pkg / rel)
        return cands
    p = Path(filename)
    if p.is_absolute():
        return [p]
    if mesh_dir is not None:
        cands += [mesh_dir / p, mesh_dir / p.name]
    if base_dir is not None:
        cands.append(base_dir / p)
    cands.append(Path.cwd() / p)
    return cands


def _geometry_mesh(geom, link: str, base_dir, mesh_dir) -> tuple[np.ndarray, np.ndarray]:
    """(vertices (V,3) float64 in the geometry frame, faces (F,3)) of one URDF <geometry>."""
    import trimesh

    if geom.box is not None:
        m = trimesh.creation.box(extents=np.asarray(geom.box.size, float))
    elif geom.cylinder is not None:
        m = trimesh.creation.cylinder(radius=float(geom.cylinder.radius), height=float(geom.cylinder.length), sections=32)
    elif geom.sphere is not None:
        m = trimesh.creation.icosphere(subdivisions=3, radius=float(geom.sphere.radius))
    elif geom.mesh is not None:
        cands = resolve_mesh_path(geom.mesh.filename, base_dir, mesh_dir)
        path = next((c for c in cands if c.is_file()), None)
        if path is None:
            tried = ", ".join(str(c) for c in cands[:4])
            raise ValueError(f"link '{link}': mesh file '{geom.mesh.filename}' not found (tried {tried})")
        try:
            m = trimesh.load(str(path), force="mesh", process=True)
        except Exception as exc:
            raise ValueError(f"link '{link}': cannot load mesh file '{path}': {exc}") from exc
        scale = geom.mesh.scale
        if scale is not None:
            s = np.broadcast_to(np.asarray(scale, float), (3,))
            m.vertices = m.vertices * s
            if np.prod(s) < 0:
                m.faces = m.faces[:, ::-1]
    else:
        raise ValueError(f"link '{link}': <geometry> has no box, cylinder, sphere or mesh")
    return np.asarray(m.vertices, np.float64), np.asarray(m.faces, np.int64)


def _is_closed(vertices: np.ndarray, faces: np.ndarray) -> bool:
    """Closed, consistently wound, outward mesh: each directed edge appears once and its reverse once."""
    if len(faces) == 0:
        return False
    _, ids = np.unique(np.round(vertices, 9), axis=0, return_inverse=True)
    f = ids.reshape(-1)[faces]
    directed = np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]]).astype(np.int64)
    n = int(directed.max()) + 1
    key = directed[:, 0] * n + directed[:, 1]
    rkey = directed[:, 1] * n + directed[:, 0]
    ukey, counts = np.unique(key, return_counts=True)
    if np.any(counts != 1) or not np.all(np.isin(rkey, ukey)):
        return False
    tri = vertices[faces]
    signed_vol = np.einsum("ij,ij->i", tri[:, 0], np.cross(tri[:, 1], tri[:, 2])).sum() / 6.0
    return bool(signed_vol > 0)


# ----------------------------------------------------------------------------------------------
# Robot model
# ----------------------------------------------------------------------------------------------
class RobotModel:
    """Kinematic tree + link meshes of one URDF robot. Build once; FK is batched and compiled.

    Attributes:
        name: robot name.  root_link: root link name.
        link_names: (L) link names, root first, parents before children.
        joint_names: (J) movable, non-mimic joint names in URDF order.
        lower, upper: (J,) float64 joint limits (rad or m; +-inf for continuous joints).
        ee_link: end-effector link name (YAM: "gripper").
        meshes: list of LinkMesh (links without visual geometry have none).
        limits: default joint-limit policy, one of "reject", "clamp", "ignore".
    """

    def __init__(self, urdf, base_dir: Path | None = None, mesh_dir: Path | None = None, *, load_meshes: bool = True,
                 ee_link: str | None = None, gripper: GripperSpec | None = None, limits: str = "reject"):
        if limits not in LIMIT_POLICIES:
            raise ValueError(f"limits must be one of {LIMIT_POLICIES}, got {limits!r}")
        self.limits = limits
        robot = urdf.robot
        self.name = robot.name
        self._build_tree(robot)
        is_yam = self.name == "yam" and {"joint7", "joint8", "gripper"} <= set(self.joint_names) | set(self.link_names)
        self.ee_link = ee_link or ("gripper" if is_yam else self.link_names[-1])
        if self.ee_link not in self.link_index:
            raise ValueError(f"ee_link {self.ee_link!r} is not a link of robot '{self.name}'")
        self.gripper = gripper if gripper is not None else (YAM_GRIPPER if is_yam else None)
        self.meshes: list[LinkMesh] = []
        if load_meshes:
            materials = {m.name: m for m in robot.materials if m.name}
            for link in robot.links:
                self._add_link_mesh(link, materials, base_dir, mesh_dir)

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def from_urdf_string(cls, xml: str | bytes, base_dir: str | Path | None = None, mesh_dir: str | Path | None = None,
                         **kwargs) -> "RobotModel":
        """Parse URDF XML text (e.g. the ``/robot_description`` parameter).

        base_dir: folder relative mesh paths are resolved against (and where package:// search starts).
        mesh_dir: folder tried first for every mesh. kwargs: see ``RobotModel.__init__``.
        Raises ValueError on XML syntax errors, a bad tree or missing meshes.
        """
        import yourdfpy
        from lxml import etree

        data = xml.encode() if isinstance(xml, str) else bytes(xml)
        try:  # yourdfpy silently "recovers" broken XML, so check syntax strictly first
            etree.fromstring(data)
        except etree.XMLSyntaxError as exc:
            raise ValueError(f"URDF XML syntax error: {exc}") from exc
        try:
            urdf = yourdfpy.URDF.load(io.BytesIO(data), build_scene_graph=False, load_meshes=False,
                                      build_collision_scene_graph=False, load_collision_meshes=False)
        except Exception as exc:
            raise ValueError(f"malformed URDF: {exc}") from exc
        if urdf.robot is None or not urdf.robot.links:
            raise ValueError("malformed URDF: no <robot> with <link> elements")
        return cls(urdf, base_dir=Path(base_dir) if base_dir else None, mesh_dir=Path(mesh_dir) if mesh_dir else None,
                   **kwargs)

    @classmethod
    def from_urdf_file(cls, path: str | Path, mesh_dir: str | Path | None = None, **kwargs) -> "RobotModel":
        """Load a URDF file; relative mesh paths resolve against its folder (after ``mesh_dir``)."""
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"URDF file not found: {path}")
        return cls.from_urdf_string(path.read_bytes(), base_dir=path.resolve().parent, mesh_dir=mesh_dir, **kwargs)

    @classmethod
    def yam(cls, **kwargs) -> "RobotModel":
        """The built-in I2RT YAM (official kinematics, simplified k4d meshes); ee_link "gripper"."""
        return cls.from_urdf_file(yam_urdf_path(), **kwargs)

    def _build_tree(self, robot) -> None:
        links = [l.name for l in robot.links]
        if len(set(links)) != len(links):
            raise ValueError(f"duplicate link names in URDF: {sorted({n for n in links if links.count(n) > 1})}")
        children: dict[str, list] = {n: [] for n in links}
        parent_joint: dict[str, object] = {}
        for j in robot.joints:
            for role, ln in (("parent", j.parent), ("child", j.child)):
                if ln not in children:
                    raise ValueError(f"joint '{j.name}': {role} link '{ln}' is not defined")
            if j.child in parent_joint:
                raise ValueError(f"link '{j.child}' is the child of two joints ('{parent_joint[j.child].name}', '{j.name}')")
            if j.type not in _JOINT_KIND:
                raise ValueError(f"joint '{j.name}': unsupported joint type '{j.type}'")
            parent_joint[j.child] = j
            children[j.parent].append(j)
        roots = [n for n in links if n not in parent_joint]
        if len(roots) != 1:
            raise ValueError(f"URDF must form one tree with a single root link; roots found: {roots}")
        self.root_link = roots[0]
        order, stack = [], [self.root_link]
        while stack:  # depth-first in joint declaration order
            n = stack.pop()
            order.append(n)
            stack.extend(j.child for j in reversed(children[n]))
        if len(order) != len(links):
            unreached = [n for n in links if n not in set(order)]
            raise ValueError(f"URDF tree is disconnected (kinematic loop or cycle): links {unreached} unreachable from "
                             f"root '{self.root_link}'")
        self.link_names = order
        self.link_index = {n: i for i, n in enumerate(order)}
        joints_by_name = {j.name: j for j in robot.joints}
        movable = [j for j in robot.joints if j.type != "fixed" and j.mimic is None]
        self.joint_names = [j.name for j in movable]
        self.joint_index = {n: i for i, n in enumerate(self.joint_names)}
        # URDF: a <limit> without lower / upper means 0 (urdfdom's default), so such a joint is held at 0 as the
        # rest of ROS holds it; continuous joints and joints without <limit> are unlimited
        self.lower = np.array([-np.inf if j.type == "continuous" or j.limit is None
                               else 0.0 if j.limit.lower is None else j.limit.lower for j in movable], dtype=np.float64)
        self.upper = np.array([np.inf if j.type == "continuous" or j.limit is None
                               else 0.0 if j.limit.upper is None else j.limit.upper for j in movable], dtype=np.float64)
        L = len(order)
        self._parent = np.zeros(L, np.int64)
        self._T0 = np.tile(np.eye(4), (L, 1, 1))
        self._kind = np.zeros(L, np.int64)
        self._axis = np.zeros((L, 3))
        self._qidx = np.full(L, -1, np.int64)
        self._mult = np.ones(L)
        self._offset = np.zeros(L)
        self._joint_of_link: list[str | None] = [None] * L
        for l, n in enumerate(order[1:], start=1):
            j = parent_joint[n]
            self._joint_of_link[l] = j.name
            self._parent[l] = self.link_index[j.parent]
            self._T0[l] = _origin_T(j.origin)
            self._kind[l] = _JOINT_KIND[j.type]
            if self._kind[l] != _FIXED:
                ax = np.array([1.0, 0, 0]) if j.axis is None else np.asarray(j.axis, np.float64)
                if not np.all(np.isfinite(ax)) or np.linalg.norm(ax) < 1e-9:
                    raise ValueError(f"joint '{j.name}': invalid axis {ax.tolist()}")
                self._axis[l] = ax / np.linalg.norm(ax)
                src, mult, off = j.name, 1.0, 0.0
                if j.mimic is not None:
                    src = j.mimic.joint
                    mult = 1.0 if j.mimic.multiplier is None else float(j.mimic.multiplier)
                    off = 0.0 if j.mimic.offset is None else float(j.mimic.offset)
                    if src not in self.joint_index:
                        mimic_of = joints_by_name.get(src)
                        why = "is not defined" if mimic_of is None else "is fixed or itself a mimic joint"
                        raise ValueError(f"joint '{j.name}' mimics '{src}', which {why}")
                self._qidx[l], self._mult[l], self._offset[l] = self.joint_index[src], mult, off

    def _add_link_mesh(self, link, materials, base_dir, mesh_dir) -> None:
        verts, faces, rgba, closed, nv = [], [], None, True, 0
        for vis in link.visuals:
            if vis.geometry is None:
                continue
            v, f = _geometry_mesh(vis.geometry, link.name, base_dir, mesh_dir)
            T = _origin_T(vis.origin)
            v = v @ T[:3, :3].T + T[:3, 3]
            closed &= _is_closed(v, f)
            verts.append(v)
            faces.append(f + nv)
            nv += len(v)
            mat = vis.material
            if rgba is None and mat is not None:
                if mat.color is None and mat.name in materials:
                    mat = materials[mat.name]
                if mat.color is not None:
                    rgba = np.asarray(mat.color.rgba, np.float64)
        if verts:
            self.meshes.append(LinkMesh(self.link_index[link.name], np.concatenate(verts),
                                        np.concatenate(faces).astype(np.int32),
                                        rgba if rgba is not None else np.array([0.7, 0.7, 0.7, 1.0]), bool(closed)))

    # -- joint vectors -----------------------------------------------------------------------
    @property
    def num_joints(self) -> int:
        return len(self.joint_names)

    def check_q(self, q, limits: str | None = None) -> np.ndarray:
        """Validate a joint array q (..., J) float (rad/m, ``joint_names`` order) and apply the limit policy.

        Returns float64 (..., J) (clipped for "clamp"). Raises ValueError naming the joint for NaN/inf or
        (policy "reject") a value outside [lower - LIMIT_TOL, upper + LIMIT_TOL].
        """
        limits = self.limits if limits is None else limits
        if limits not in LIMIT_POLICIES:
            raise ValueError(f"limits must be one of {LIMIT_POLICIES}, got {limits!r}")
        q = np.asarray(q, dtype=np.float64)
        if q.ndim == 0 or q.shape[-1] != self.num_joints:
            raise ValueError(f"q must have shape (..., {self.num_joints}) for joints {self.joint_names}, got {q.shape}")
        finite = np.isfinite(q)
        if not finite.all():
            j = int(np.nonzero(~finite.reshape(-1, self.num_joints).all(0))[0][0])
            raise ValueError(f"joint '{self.joint_names[j]}' is not finite: {q.reshape(-1, self.num_joints)[:, j]}")
        if limits == "clamp":
            return np.clip(q, self.lower, self.upper)
        if limits == "reject":
            bad = (q < self.lower - LIMIT_TOL) | (q > self.upper + LIMIT_TOL)
            if bad.any():
                flat, bad = q.reshape(-1, self.num_joints), bad.reshape(-1, self.num_joints)
                j = int(np.nonzero(bad.any(0))[0][0])
                i = int(np.nonzero(bad[:, j])[0][0])
                where = f"point {i} " if q.ndim > 1 else ""  # a trajectory's or a sequence's row
                raise ValueError(f"{where}joint '{self.joint_names[j]}' = {flat[i, j]:.6g} is outside its limits "
                                 f"[{self.lower[j]:.6g}, {self.upper[j]:.6g}] (limits='reject'; use limits='clamp')")
        return q

    def q_from_dict(self, d: Mapping[str, float], strict: bool = True, limits: str | None = None) -> np.ndarray:
        """Joint dict {name: value} -> q (J,) float64. Missing joints are 0.

        strict: unknown names raise ValueError naming them (else they are ignored, e.g. mimic joints in
        a JointState). Values are checked with ``check_q``.
        """
        q = np.zeros(self.num_joints)
        unknown = [k for k in d if k not in self.joint_index]
        if unknown and strict:
            raise ValueError(f"unknown joint name(s) {unknown}; robot '{self.name}' has {self.joint_names}")
        for k, v in d.items():
            if k in self.joint_index:
                try:
                    q[self.joint_index[k]] = float(v)
                except (TypeError, ValueError) as exc:
                    raise ValueError(f"joint '{k}': value {v!r} is not a number") from exc
        return self.check_q(q, limits)

    def q_to_dict(self, q) -> dict[str, float]:
        """q (J,) -> {joint name: value}."""
        q = np.asarray(q, np.float64).reshape(self.num_joints)
        return {n: float(v) for n, v in zip(self.joint_names, q)}

    def gripper_to_joints(self, width_m: float | None = None, normalized: float | None = None) -> dict[str, float]:
        """Finger joint values for a gripper opening.

        width_m: gap between the finger pads in metres, in [0, gripper.max_width_m] (YAM: 0.0939).
        normalized: 0 = closed, 1 = fully open. Give exactly one. YAM: both fingers open towards their
        lower limit, joint7 = joint8 = -width_m / 2.
        """
        if self.gripper is None:
            raise ValueError(f"robot '{self.name}' has no gripper mapping (pass gripper=GripperSpec(...))")
        if (width_m is None) == (normalized is None):
            raise ValueError("give exactly one of width_m and normalized")
        g = self.gripper
        s = normalized if normalized is not None else width_m / g.max_width_m
        name, hi = ("normalized", 1.0) if normalized is not None else ("width_m", g.max_width_m)
        val = normalized if normalized is not None else width_m
        if not np.isfinite(s) or s < -1e-9 or s > 1 + 1e-9:
            raise ValueError(f"{name} must be in [0, {hi}], got {val}")
        s = min(max(float(s), 0.0), 1.0)
        return {j: c + s * (o - c) for j, c, o in zip(g.joints, g.q_closed, g.q_open)}

    # -- forward kinematics -------------------------------------------------------------------
    def fk(self, q, limits: str | None = None) -> np.ndarray:
        """Poses of every link, T_root_link: (..., L, 4, 4) float64, metres, root-link frame.

        q: (..., J) joint values in ``joint_names`` order (checked with ``check_q``).
        """
        q = self.check_q(q, limits)
        batch = q.shape[:-1]
        n = int(np.prod(batch)) if batch else 1
        qf = np.ascontiguousarray(q.reshape(n, self.num_joints))
        out = np.empty((n, len(self.link_names), 4, 4))
        _fk_kernel(qf, self._parent, self._T0, self._kind, self._axis, self._qidx, self._mult, self._offset, out)
        return out.reshape(*batch, len(self.link_names), 4, 4)

    def fk_dict(self, joints: Mapping[str, float], strict: bool = True) -> dict[str, np.ndarray]:
        """{joint: value} -> {link name: T_root_link (4, 4) float64}. Missing joints are 0."""
        T = self.fk(self.q_from_dict(joints, strict=strict))
        return {n: T[i] for i, n in enumerate(self.link_names)}

    def link_pose(self, q, link: str | None = None) -> np.ndarray:
        """T_root_link (..., 4, 4) of one link (default ``ee_link``)."""
        return self.fk(q)[..., self._link_id(link), :, :]

    def _link_id(self, link: str | None) -> int:
        link = self.ee_link if link is None else link
        if link not in self.link_index:
            raise ValueError(f"unknown link {link!r}; links are {self.link_names}")
        return self.link_index[link]

    def chain_joints(self, link: str | None = None) -> list[int]:
        """Link ids from the root to ``link`` (inclusive) whose parent joint is movable."""
        l, out = self._link_id(link), []
        while l != 0:
            if self._kind[l] != _FIXED:
                out.append(l)
            l = int(self._parent[l])
        return out[::-1]

    def jacobian(self, q, link: str | None = None, T: np.ndarray | None = None) -> np.ndarray:
        """Geometric Jacobian of ``link`` (default ee_link) origin: (6, J) float64, root frame.

        Rows 0-2: d(position)/dq (m per rad or m/m); rows 3-5: angular velocity per unit dq.
        T: optional precomputed ``fk(q)`` (L, 4, 4).
        """
        T = self.fk(q, limits="ignore") if T is None else T
        l_ee = self._link_id(link)
        p_ee = T[l_ee, :3, 3]
        J = np.zeros((6, self.num_joints))
        for l in self.chain_joints(link):
            a = T[l, :3, :3] @ self._axis[l]  # joint frame = child link frame
            col, m = self._qidx[l], self._mult[l]
            if self._kind[l] == _REVOLUTE:
                J[:3, col] += m * np.cross(a, p_ee - T[l, :3, 3])
                J[3:, col] += m * a
            else:
                J[:3, col] += m * a
        return J

    def __repr__(self) -> str:
        return (f"RobotModel(name={self.name!r}, links={len(self.link_names)}, joints={self.joint_names}, "
                f"ee_link={self.ee_link!r}, triangles={sum(len(m.faces) for m in self.meshes)})")

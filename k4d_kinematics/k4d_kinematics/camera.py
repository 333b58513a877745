"""Pinhole camera intrinsics and camera extrinsics (ROS-free).

    from k4d_kinematics.camera import PinholeCamera, Extrinsics
    cam = PinholeCamera.from_yaml("config/camera_info.yaml")     # camera_calibration_parsers format
    ext = Extrinsics.from_yaml("config/extrinsics.yaml")          # T_base_cam, camera optical frame

Conventions (those of sensor_msgs/CameraInfo and image_geometry): the optical frame has z forward,
x right, y down (REP 103); pixel (row v, column u) has its centre at integer coordinates, so a point
(x, y, z) projects to u = fx x / z + cx, v = fy y / z + cy. Only undistorted (or rectified) images are
supported: any non-zero distortion coefficient is a ValueError. Quaternions are (x, y, z, w), handled
with ``scipy.spatial.transform.Rotation`` (maintained; replaces the deprecated tf-transformations).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import yaml
from scipy.spatial.transform import Rotation

QUAT_NORM_TOL = 1e-3  # |‖q‖ - 1| accepted (then renormalised)


def depth_to_xyz(depth: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Back-project depth images to camera optical-frame points.

    depth: (..., H, W) float metres (NaN invalid). K: (3, 3) intrinsics, pixel centres at integers.
    Returns (..., H, W, 3) float32 metres: x = (u - cx) z / fx, y = (v - cy) z / fy, z = depth (NaN kept).
    """
    depth = np.asarray(depth, np.float32)
    H, W = depth.shape[-2:]
    u = ((np.arange(W, dtype=np.float64) - K[0, 2]) / K[0, 0]).astype(np.float32)
    v = ((np.arange(H, dtype=np.float64) - K[1, 2]) / K[1, 1]).astype(np.float32)
    out = np.empty(depth.shape + (3,), np.float32)
    out[..., 0] = depth * u[None, :]
    out[..., 1] = depth * v[:, None]
    out[..., 2] = depth
    return out


def _finite(name: str, value) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a number, got {value!r}") from exc
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {v}")
    return v


def nearest_indices(n_src: int, n_dst: int) -> np.ndarray:
    """Source pixel under each destination pixel centre when an axis of ``n_src`` pixels is resized to ``n_dst``
    (the sampling that matches ``PinholeCamera.scaled``: pixel edges at -0.5 and n - 0.5 stay put)."""
    return np.minimum(((np.arange(n_dst) + 0.5) * n_src / n_dst).astype(np.int64), n_src - 1)


def resize_nearest(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize of the two leading axes ``(H, W, ...)`` to ``(height, width)``: every output pixel
    is an input pixel (depths and XYZ stay measured values, link ids stay ids)."""
    img = np.asarray(img)
    h, w = img.shape[:2]
    if (h, w) == (height, width):
        return img
    return img[nearest_indices(h, height)][:, nearest_indices(w, width)]


@dataclass
class PinholeCamera:
    """Undistorted pinhole camera.

    width, height: image size in pixels (> 0). fx, fy: focal lengths in pixels (> 0).
    cx, cy: principal point in pixels (pixel centres at integer coordinates). frame_id: optical frame.
    """

    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float
    frame_id: str = "camera_color_optical_frame"

    def __post_init__(self):
        for name in ("width", "height"):
            v = getattr(self, name)
            if isinstance(v, bool) or not float(v).is_integer() or int(v) <= 0:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
            setattr(self, name, int(v))
        for name in ("fx", "fy", "cx", "cy"):
            setattr(self, name, _finite(name, getattr(self, name)))
        for name in ("fx", "fy"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} (focal length, pixels) must be > 0, got {getattr(self, name)}")

    @property
    def K(self) -> np.ndarray:
        """(3, 3) float64 intrinsic matrix."""
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    @property
    def shape(self) -> tuple[int, int]:
        """(height, width)."""
        return self.height, self.width

    def scaled(self, width: int, height: int) -> "PinholeCamera":
        """The same camera imaging the same field of view at ``width`` x ``height`` pixels (an image resized
        without cropping): focal lengths scale with the size, the principal point keeps its place with pixel
        centres at integer coordinates (``c' = (c + 0.5) * s - 0.5``)."""
        sx, sy = width / self.width, height / self.height
        return PinholeCamera(width, height, self.fx * sx, self.fy * sy, (self.cx + 0.5) * sx - 0.5,
                             (self.cy + 0.5) * sy - 0.5, self.frame_id)

    def project(self, xyz_cam: np.ndarray) -> np.ndarray:
        """Project (..., 3) camera optical-frame points (m) to (..., 2) pixel coords (u, v)."""
        xyz_cam = np.asarray(xyz_cam, np.float64)
        z = xyz_cam[..., 2]
        return np.stack([self.fx * xyz_cam[..., 0] / z + self.cx, self.fy * xyz_cam[..., 1] / z + self.cy], -1)

    def backproject(self, depth: np.ndarray) -> np.ndarray:
        """(..., H, W) depth (m along the optical axis, NaN invalid) of this camera -> (..., H, W, 3) float32 XYZ (m)."""
        depth = np.asarray(depth)
        if depth.shape[-2:] != (self.height, self.width):
            raise ValueError(f"depth is {depth.shape[-1]}x{depth.shape[-2]}, camera is {self.width}x{self.height}")
        return depth_to_xyz(depth, self.K)

    @classmethod
    def from_camera_info_fields(cls, width: int, height: int, k: Sequence[float], d: Sequence[float] = (),
                                distortion_model: str = "plumb_bob", p: Sequence[float] | None = None,
                                frame_id: str = "camera_color_optical_frame") -> "PinholeCamera":
        """Build from sensor_msgs/CameraInfo fields: k (9,) row-major K, d distortion, p (12,) optional.

        Raises ValueError if any d is non-zero (rectify first) or K has a zero focal length / skew.
        """
        k = np.asarray(k, np.float64).reshape(-1)
        if k.size != 9:
            raise ValueError(f"k must have 9 elements, got {k.size}")
        d = np.asarray(list(d) if d is not None else [], np.float64).reshape(-1)
        if d.size and (not np.all(np.isfinite(d)) or np.any(d != 0)):
            raise ValueError(f"d (distortion, model {distortion_model!r}) must be all zero: k4d renders undistorted "
                             f"pointmaps; rectify the image and use its CameraInfo (got d={d.tolist()})")
        if k[1] != 0:
            raise ValueError(f"k[1] (skew) must be 0, got {k[1]}")
        if p is not None:
            p = np.asarray(p, np.float64).reshape(-1)
            if p.size != 12:
                raise ValueError(f"p must have 12 elements, got {p.size}")
        if k[0] == 0 or k[4] == 0:
            field_name = "k[0] (fx)" if k[0] == 0 else "k[4] (fy)"
            raise ValueError(f"{field_name} is 0: camera is uncalibrated")
        return cls(width, height, k[0], k[4], k[2], k[5], frame_id=frame_id)

    @classmethod
    def from_yaml(cls, path: str | Path, frame_id: str = "camera_color_optical_frame") -> "PinholeCamera":
        """Read a camera_calibration_parsers YAML file (image_width, camera_matrix, distortion_coefficients...)."""
        data = yaml.safe_load(Path(path).read_text())
        if not isinstance(data, Mapping):
            raise ValueError(f"{path}: camera info YAML must be a mapping")
        try:
            w, h = data["image_width"], data["image_height"]
            k = data["camera_matrix"]["data"]
        except (KeyError, TypeError) as exc:
            raise ValueError(f"{path}: missing camera info field {exc}") from exc
        d = (data.get("distortion_coefficients") or {}).get("data") or []
        p = (data.get("projection_matrix") or {}).get("data")
        return cls.from_camera_info_fields(w, h, k, d, data.get("distortion_model", "plumb_bob"), p, frame_id)

    def to_yaml(self, path: str | Path, camera_name: str = "camera") -> None:
        """Write camera_calibration_parsers YAML (zero distortion, identity rectification, P = [K | 0])."""
        def mat(rows, cols, data):
            return {"rows": rows, "cols": cols, "data": [float(x) for x in np.asarray(data).reshape(-1)]}

        P = np.hstack([self.K, np.zeros((3, 1))])
        data = {"image_width": self.width, "image_height": self.height, "camera_name": camera_name,
                "camera_matrix": mat(3, 3, self.K), "distortion_model": "plumb_bob",
                "distortion_coefficients": mat(1, 5, np.zeros(5)), "rectification_matrix": mat(3, 3, np.eye(3)),
                "projection_matrix": mat(3, 4, P)}
        Path(path).write_text(yaml.safe_dump(data, sort_keys=False, default_flow_style=None))


@dataclass
class Extrinsics:
    """Pose of the camera optical frame in the robot base frame.

    T_base_cam: (4, 4) float64, maps camera optical-frame points (m) to ``parent_frame`` points.
    """

    T_base_cam: np.ndarray
    parent_frame: str = "base"
    child_frame: str = "camera_color_optical_frame"

    def __post_init__(self):
        T = np.asarray(self.T_base_cam, np.float64)
        if T.shape != (4, 4) or not np.all(np.isfinite(T)):
            raise ValueError(f"T_base_cam must be a finite (4, 4) matrix, got shape {T.shape}")
        R = T[:3, :3]
        if not np.allclose(R @ R.T, np.eye(3), atol=1e-6) or np.linalg.det(R) < 0 or not np.allclose(T[3], [0, 0, 0, 1]):
            raise ValueError("T_base_cam must be a rigid transform (orthonormal rotation, det +1, last row 0 0 0 1)")
        self.T_base_cam = T

    @property
    def T_cam_base(self) -> np.ndarray:
        """(4, 4) inverse: base-frame points -> camera optical frame."""
        R, t = self.T_base_cam[:3, :3], self.T_base_cam[:3, 3]
        out = np.eye(4)
        out[:3, :3], out[:3, 3] = R.T, -R.T @ t
        return out

    @classmethod
    def from_xyz_quat(cls, xyz: Sequence[float], xyzw: Sequence[float], parent_frame: str = "base",
                      child_frame: str = "camera_color_optical_frame") -> "Extrinsics":
        """Translation (3,) m and unit quaternion (x, y, z, w) of the camera in ``parent_frame``."""
        if len(xyz) != 3 or len(xyzw) != 4:  # before zip, which would drop extra values silently
            raise ValueError(f"translation needs x, y, z and rotation needs x, y, z, w; got {len(xyz)} and "
                             f"{len(xyzw)} values")
        xyz = [_finite(f"translation.{a}", v) for a, v in zip("xyz", xyz)]
        quat = np.array([_finite(f"rotation.{a}", v) for a, v in zip("xyzw", xyzw)])
        n = np.linalg.norm(quat)
        if abs(n - 1.0) > QUAT_NORM_TOL:
            raise ValueError(f"rotation must be a unit quaternion (x, y, z, w), got norm {n:.6g}: {quat.tolist()}")
        T = np.eye(4)
        T[:3, :3] = Rotation.from_quat(quat / n).as_matrix()
        T[:3, 3] = xyz
        return cls(T, parent_frame, child_frame)

    @classmethod
    def look_at(cls, eye: Sequence[float], target: Sequence[float], up: Sequence[float] = (0, 0, 1),
                parent_frame: str = "base", child_frame: str = "camera_color_optical_frame") -> "Extrinsics":
        """Optical frame at ``eye`` (m, parent frame) with z towards ``target`` and image-up along ``up``."""
        eye, target, up = (np.asarray(v, np.float64) for v in (eye, target, up))
        z = target - eye
        if np.linalg.norm(z) < 1e-9:
            raise ValueError("look_at: eye and target coincide")
        z /= np.linalg.norm(z)
        x = np.cross(z, up)
        if np.linalg.norm(x) < 1e-9:
            raise ValueError("look_at: up is parallel to the viewing direction")
        x /= np.linalg.norm(x)
        T = np.eye(4)
        T[:3, :3] = np.stack([x, np.cross(z, x), z], axis=1)
        T[:3, 3] = eye
        return cls(T, parent_frame, child_frame)

    @classmethod
    def from_yaml(cls, path: str | Path) -> "Extrinsics":
        """Read ``{parent_frame, child_frame, translation: {x,y,z}, rotation: {x,y,z,w}}``."""
        return cls.from_dict(yaml.safe_load(Path(path).read_text()), str(path))

    @classmethod
    def from_dict(cls, data, source: str = "extrinsics") -> "Extrinsics":
        """The inverse of ``to_dict`` (the YAML layout); errors name ``source`` and the field."""
        if not isinstance(data, Mapping):
            raise ValueError(f"{source}: extrinsics must be a mapping")
        for key in ("parent_frame", "child_frame", "translation", "rotation"):
            if key not in data:
                raise ValueError(f"{source}: missing field '{key}'")
        t, r = data["translation"], data["rotation"]
        for key, val, comps in (("translation", t, "xyz"), ("rotation", r, "xyzw")):
            if not isinstance(val, Mapping) or any(c not in val for c in comps):
                raise ValueError(f"{source}: field '{key}' must be a mapping with keys {list(comps)}, got {val!r}")
        return cls.from_xyz_quat([t[c] for c in "xyz"], [r[c] for c in "xyzw"], str(data["parent_frame"]),
                                 str(data["child_frame"]))

    def to_dict(self) -> dict:
        q = Rotation.from_matrix(self.T_base_cam[:3, :3]).as_quat()
        t = self.T_base_cam[:3, 3]
        return {"parent_frame": self.parent_frame, "child_frame": self.child_frame,
                "translation": {a: float(v) for a, v in zip("xyz", t)},
                "rotation": {a: float(v) for a, v in zip("xyzw", q)}}

    def to_yaml(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))

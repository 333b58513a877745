"""The one ROS message <-> numpy conversion module of k4d.

It replaces ``cv_bridge`` (images) and ``sensor_msgs_py`` (point clouds), which have no PyPI wheels,
and converts k4d's ROS-free core types (``PinholeCamera``, ``JointTrajectoryData``,
``PointmapSequenceData``) to and from messages. It imports message classes only: no rclpy node code.

Byte compatibility (checked in ``test/test_conversions.py``):

* ``numpy_to_image`` fills ``height, width, encoding, is_bigendian, step, data`` exactly as
  ``cv_bridge.CvBridge().cv2_to_imgmsg`` does (``step = width * channels * itemsize``, host byte order),
  and ``image_to_numpy`` accepts padded rows (``step > width * pixel size``) and big-endian data like
  ``imgmsg_to_cv2``.
* Unorganised clouds match ``sensor_msgs_py.point_cloud2.create_cloud`` (height 1, ``is_dense=False``).
  Organised clouds follow depth_image_proc: ``height x width`` of the image, row-major, ``is_dense=False``
  with NaN holes; XYZ clouds have x, y, z FLOAT32 at 0/4/8 and ``point_step`` 16, XYZRGB clouds add
  ``rgb`` FLOAT32 at 16 (bytes b, g, r, 0) with ``point_step`` 32; padding bytes are zero.
"""
from __future__ import annotations

import sys
from typing import Optional, Sequence

import numpy as np
from builtin_interfaces.msg import Duration, Time
from sensor_msgs.msg import CameraInfo, Image, PointCloud2, PointField
from std_msgs.msg import Header
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from k4d_kinematics.camera import PinholeCamera
from k4d_kinematics.sequence import SOURCES, JointTrajectoryData, PointmapSequenceData

# ---------------------------------------------------------------------------------------------
# Images (cv_bridge-compatible)
# ---------------------------------------------------------------------------------------------

# encoding -> (numpy dtype, channels), as in cv_bridge's encoding table.
_ENCODINGS: dict[str, tuple[str, int]] = {
    "rgb8": ("uint8", 3), "bgr8": ("uint8", 3), "rgba8": ("uint8", 4), "bgra8": ("uint8", 4),
    "mono8": ("uint8", 1), "mono16": ("uint16", 1),
    "rgb16": ("uint16", 3), "bgr16": ("uint16", 3), "rgba16": ("uint16", 4), "bgra16": ("uint16", 4),
}
for _bits, _dt in (("8U", "uint8"), ("8S", "int8"), ("16U", "uint16"), ("16S", "int16"),
                   ("32S", "int32"), ("32F", "float32"), ("64F", "float64")):
    for _c in (1, 2, 3, 4):
        _ENCODINGS[f"{_bits}C{_c}"] = (_dt, _c)

_COLOR_ORDER = {"rgb8": "rgb", "bgr8": "bgr", "rgba8": "rgba", "bgra8": "bgra",
                "rgb16": "rgb", "bgr16": "bgr", "rgba16": "rgba", "bgra16": "bgra"}


def encoding_info(encoding: str) -> tuple[np.dtype, int]:
    """(dtype, channels) of a sensor_msgs/Image encoding; ValueError for an unknown one."""
    try:
        dt, ch = _ENCODINGS[encoding]
    except KeyError:
        raise ValueError(
            f"image encoding {encoding!r} is not supported; expected one of {sorted(_ENCODINGS)}"
        ) from None
    return np.dtype(dt), ch


def image_to_numpy(msg: Image, desired_encoding: str = "passthrough") -> np.ndarray:
    """Decode a sensor_msgs/Image into an (H, W) or (H, W, C) array (a copy).

    ``desired_encoding`` may be "passthrough" or a colour encoding of the same depth
    ("rgb8" from "bgr8" and vice versa, dropping/adding alpha is not done). Raises ValueError
    naming the field for an unknown encoding, a size/step/data mismatch or an impossible conversion.
    """
    dtype, ch = encoding_info(msg.encoding)
    h, w = int(msg.height), int(msg.width)
    if h <= 0 or w <= 0:
        raise ValueError(f"image has zero size (height={h}, width={w})")
    row = w * ch * dtype.itemsize
    step = int(msg.step)
    if step < row:
        raise ValueError(f"image step {step} is smaller than width*pixel size {row} (encoding {msg.encoding!r})")
    data = bytes(msg.data) if not isinstance(msg.data, (bytes, bytearray, memoryview)) else msg.data
    if len(data) != step * h:
        raise ValueError(f"image data has {len(data)} bytes, expected step*height = {step * h}")
    dt = dtype.newbyteorder(">" if msg.is_bigendian else "<")
    rows = np.frombuffer(data, dtype=np.uint8).reshape(h, step)[:, :row]
    arr = rows.copy().view(dt).reshape((h, w, ch) if ch > 1 else (h, w)).astype(dtype, copy=False)
    if desired_encoding in ("passthrough", msg.encoding):
        return arr
    src, dst = _COLOR_ORDER.get(msg.encoding), _COLOR_ORDER.get(desired_encoding)
    if src and dst and len(src) == len(dst) == 3 and encoding_info(desired_encoding)[0] == dtype:
        return np.ascontiguousarray(arr[..., ::-1])
    raise ValueError(f"cannot convert image encoding {msg.encoding!r} to {desired_encoding!r}")


def numpy_to_image(array: np.ndarray, encoding: str, header: Optional[Header] = None) -> Image:
    """Encode an (H, W) or (H, W, C) array as sensor_msgs/Image, as cv_bridge.cv2_to_imgmsg does."""
    dtype, ch = encoding_info(encoding)
    a = np.asarray(array)
    got_ch = 1 if a.ndim == 2 else (a.shape[2] if a.ndim == 3 else -1)
    if got_ch != ch or a.ndim not in (2, 3):
        raise ValueError(f"array of shape {a.shape} does not fit encoding {encoding!r} ({ch} channel(s))")
    if a.dtype != dtype:
        raise ValueError(f"array dtype {a.dtype} does not fit encoding {encoding!r} (expects {dtype})")
    msg = Image()
    if header is not None:
        msg.header = header
    msg.height, msg.width = int(a.shape[0]), int(a.shape[1])
    msg.encoding = encoding
    msg.is_bigendian = sys.byteorder == "big"
    raw = np.ascontiguousarray(a).tobytes()
    msg.step = len(raw) // msg.height if msg.height else 0
    msg.data = raw
    return msg


def rgb_from_image(msg: Image) -> np.ndarray:
    """(H, W, 3) uint8 RGB from an rgb8/bgr8/rgba8/bgra8/mono8 image; ValueError for other encodings."""
    if msg.encoding in ("rgb8", "bgr8"):
        return image_to_numpy(msg, "rgb8")
    if msg.encoding in ("rgba8", "bgra8"):
        a = image_to_numpy(msg)[..., :3]
        return np.ascontiguousarray(a if msg.encoding == "rgba8" else a[..., ::-1])
    if msg.encoding == "mono8":
        return np.repeat(image_to_numpy(msg)[..., None], 3, axis=2)
    raise ValueError(f"expected a colour image (rgb8, bgr8, rgba8, bgra8 or mono8), got encoding {msg.encoding!r}")


def depth_from_image(msg: Image) -> np.ndarray:
    """(H, W) float32 metres from a 32FC1 (metres) or 16UC1/mono16 (millimetres, 0 = invalid) depth image.

    Invalid depth becomes NaN, as in depth_image_proc.
    """
    if msg.encoding == "32FC1":
        d = image_to_numpy(msg).astype(np.float32)
        d[~np.isfinite(d) | (d <= 0)] = np.nan
        return d
    if msg.encoding in ("16UC1", "mono16"):
        raw = image_to_numpy(msg)
        d = raw.astype(np.float32) * 1e-3
        d[raw == 0] = np.nan
        return d
    raise ValueError(f"expected a depth image (32FC1 metres or 16UC1 millimetres), got encoding {msg.encoding!r}")


# ---------------------------------------------------------------------------------------------
# Point clouds (sensor_msgs_py / depth_image_proc-compatible)
# ---------------------------------------------------------------------------------------------

_FIELD_DTYPES = {
    PointField.INT8: "i1", PointField.UINT8: "u1", PointField.INT16: "i2", PointField.UINT16: "u2",
    PointField.INT32: "i4", PointField.UINT32: "u4", PointField.FLOAT32: "f4", PointField.FLOAT64: "f8",
}


def _field(name: str, offset: int) -> PointField:
    return PointField(name=name, offset=offset, datatype=PointField.FLOAT32, count=1)


XYZ_FIELDS = [_field("x", 0), _field("y", 4), _field("z", 8)]
XYZRGB_FIELDS = XYZ_FIELDS + [_field("rgb", 16)]


def dtype_from_fields(fields: Sequence[PointField], point_step: int, bigendian: bool = False) -> np.dtype:
    """Structured numpy dtype of a PointCloud2 point (padding included), as sensor_msgs_py builds it."""
    names, formats, offsets = [], [], []
    order = ">" if bigendian else "<"
    for f in fields:
        if f.datatype not in _FIELD_DTYPES:
            raise ValueError(f"PointField {f.name!r} has unknown datatype {f.datatype}")
        base = order + _FIELD_DTYPES[f.datatype]
        names.append(f.name)
        formats.append(base if f.count == 1 else (base, (f.count,)))
        offsets.append(f.offset)
    return np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": point_step})


def pack_rgb(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 RGB -> (...) float32 whose bytes are b, g, r, 0 (PCL / depth_image_proc packing)."""
    rgb = np.asarray(rgb, dtype=np.uint8)
    packed = (rgb[..., 0].astype(np.uint32) << 16) | (rgb[..., 1].astype(np.uint32) << 8) | rgb[..., 2]
    return packed.astype("<u4").view("<f4")


def unpack_rgb(packed: np.ndarray) -> np.ndarray:
    """Inverse of :func:`pack_rgb`: (...) float32 -> (..., 3) uint8 RGB."""
    u = np.ascontiguousarray(packed, dtype="<f4").view("<u4")
    return np.stack([(u >> 16) & 255, (u >> 8) & 255, u & 255], axis=-1).astype(np.uint8)


def xyz_to_pointcloud2(xyz: np.ndarray, header: Optional[Header] = None, rgb: Optional[np.ndarray] = None) -> PointCloud2:
    """Organised (H, W, 3) or unorganised (N, 3) float32 XYZ [+ RGB uint8] -> PointCloud2.

    Organised input gives ``height=H, width=W`` (NaN holes kept, ``is_dense=False``), the layout of
    depth_image_proc: XYZ ``point_step`` 16, XYZRGB ``point_step`` 32 with ``rgb`` at offset 16.
    """
    xyz = np.asarray(xyz)
    if xyz.ndim not in (2, 3) or xyz.shape[-1] != 3:
        raise ValueError(f"xyz must be (H, W, 3) or (N, 3), got shape {xyz.shape}")
    h, w = (xyz.shape[0], xyz.shape[1]) if xyz.ndim == 3 else (1, xyz.shape[0])
    fields = XYZRGB_FIELDS if rgb is not None else XYZ_FIELDS
    step = 32 if rgb is not None else 16
    buf = np.zeros((h, w), dtype=dtype_from_fields(fields, step))
    pts = xyz.reshape(h, w, 3).astype(np.float32, copy=False)
    buf["x"], buf["y"], buf["z"] = pts[..., 0], pts[..., 1], pts[..., 2]
    if rgb is not None:
        rgb = np.asarray(rgb)
        if rgb.shape[:-1] != xyz.shape[:-1] or rgb.shape[-1] != 3:
            raise ValueError(f"rgb shape {rgb.shape} does not match xyz shape {xyz.shape}")
        buf["rgb"] = pack_rgb(rgb.reshape(h, w, 3))
    msg = PointCloud2()
    if header is not None:
        msg.header = header
    msg.height, msg.width = h, w
    msg.fields = list(fields)
    msg.is_bigendian = False
    msg.point_step = step
    msg.row_step = step * w
    msg.is_dense = False
    msg.data = buf.tobytes()
    return msg


def pointcloud2_to_array(msg: PointCloud2) -> np.ndarray:
    """PointCloud2 -> structured array of shape (height, width) with the message's fields."""
    if msg.point_step <= 0 or msg.row_step < msg.point_step * msg.width:
        raise ValueError(f"PointCloud2 has inconsistent point_step={msg.point_step}, row_step={msg.row_step}, width={msg.width}")
    data = bytes(msg.data) if not isinstance(msg.data, (bytes, bytearray, memoryview)) else msg.data
    if len(data) != msg.row_step * msg.height:
        raise ValueError(f"PointCloud2 data has {len(data)} bytes, expected row_step*height = {msg.row_step * msg.height}")
    dt = dtype_from_fields(msg.fields, msg.point_step, msg.is_bigendian)
    rows = np.frombuffer(data, dtype=np.uint8).reshape(msg.height, msg.row_step)[:, : msg.point_step * msg.width]
    return np.ascontiguousarray(rows).view(dt).reshape(msg.height, msg.width)


def pointcloud2_to_xyz(msg: PointCloud2) -> np.ndarray:
    """PointCloud2 with x, y, z fields -> (height, width, 3) float32 (NaN holes preserved)."""
    arr = pointcloud2_to_array(msg)
    names = arr.dtype.names or ()
    for n in ("x", "y", "z"):
        if n not in names:
            raise ValueError(f"PointCloud2 has no field {n!r} (fields: {list(names)})")
    return np.stack([arr["x"], arr["y"], arr["z"]], axis=-1).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Time, camera, trajectories
# ---------------------------------------------------------------------------------------------


def duration_from_seconds(s: float) -> Duration:
    ns = int(round(float(s) * 1e9))
    return Duration(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


def duration_to_seconds(d: Duration) -> float:
    return float(d.sec) + float(d.nanosec) * 1e-9


def time_from_ns(ns: int) -> Time:
    ns = int(ns)
    return Time(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


def time_to_ns(t: Time) -> int:
    return int(t.sec) * 1_000_000_000 + int(t.nanosec)


def camera_info_to_camera(msg: CameraInfo) -> PinholeCamera:
    """CameraInfo -> PinholeCamera (validated: zero size/focal length or distortion raise ValueError)."""
    return PinholeCamera.from_camera_info_fields(
        width=int(msg.width), height=int(msg.height), k=list(msg.k), d=list(msg.d),
        distortion_model=msg.distortion_model, p=list(msg.p), frame_id=msg.header.frame_id)


def camera_to_camera_info(cam: PinholeCamera, header: Optional[Header] = None) -> CameraInfo:
    """PinholeCamera -> CameraInfo of a rectified camera (plumb_bob, zero distortion, R = I)."""
    msg = CameraInfo()
    if header is not None:
        msg.header = header
    if not msg.header.frame_id:
        msg.header.frame_id = cam.frame_id
    msg.width, msg.height = int(cam.width), int(cam.height)
    msg.distortion_model = "plumb_bob"
    msg.d = [0.0] * 5
    msg.k = [float(cam.fx), 0.0, float(cam.cx), 0.0, float(cam.fy), float(cam.cy), 0.0, 0.0, 1.0]
    msg.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    msg.p = [float(cam.fx), 0.0, float(cam.cx), 0.0, 0.0, float(cam.fy), float(cam.cy), 0.0, 0.0, 0.0, 1.0, 0.0]
    return msg


def joint_trajectory_to_data(msg: JointTrajectory) -> JointTrajectoryData:
    """JointTrajectory -> JointTrajectoryData (validated by the core: empty, non-monotonic, NaN, ...).

    Velocities are kept when every point has one per joint (a time-parameterised plan, e.g. MoveIt's): the
    trajectory is then resampled with cubic Hermite segments, as a controller follows it. A point whose
    velocities are neither empty nor one per joint is malformed and raises."""
    names = list(msg.joint_names)
    if not msg.points:
        raise ValueError("trajectory has no points")
    times, rows, vels = [], [], []
    for i, p in enumerate(msg.points):
        if len(p.positions) != len(names):
            raise ValueError(
                f"trajectory point {i} has {len(p.positions)} positions for {len(names)} joint_names")
        if len(p.velocities) not in (0, len(names)):
            raise ValueError(
                f"trajectory point {i} has {len(p.velocities)} velocities for {len(names)} joint_names (give one per "
                "joint or none)")
        times.append(duration_to_seconds(p.time_from_start))
        rows.append(list(p.positions))
        vels.append(list(p.velocities))
    full = all(len(v) == len(names) for v in vels)
    return JointTrajectoryData(joint_names=names, times=np.asarray(times, dtype=np.float64),
                               positions=np.asarray(rows, dtype=np.float64),
                               velocities=np.asarray(vels, dtype=np.float64) if full else None)


def data_to_joint_trajectory(traj: JointTrajectoryData, header: Optional[Header] = None) -> JointTrajectory:
    msg = JointTrajectory()
    if header is not None:
        msg.header = header
    msg.joint_names = list(traj.joint_names)
    for t, q in zip(traj.times, traj.positions):
        msg.points.append(JointTrajectoryPoint(positions=[float(x) for x in q], time_from_start=duration_from_seconds(t)))
    return msg


# ---------------------------------------------------------------------------------------------
# k4d_msgs/PointmapSequence
# ---------------------------------------------------------------------------------------------

def pointmap_sequence_to_msg(seq: PointmapSequenceData, frame_id: Optional[str] = None):
    """PointmapSequenceData -> k4d_msgs/PointmapSequence (xyz as 32FC3, link ids as mono16, 0 = background)."""
    from k4d_msgs.msg import PointmapSequence

    if seq.source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {seq.source!r}")
    msg = PointmapSequence()
    msg.header.frame_id = frame_id or seq.camera.frame_id
    msg.header.stamp = time_from_ns(seq.stamp_ns)
    msg.camera_info = camera_to_camera_info(seq.camera, msg.header)
    msg.source = SOURCES.index(seq.source)
    msg.source_id = seq.source_id
    msg.base_frame = seq.base_frame
    msg.link_names = list(seq.link_names)
    msg.joint_names = list(seq.joint_names)
    msg.time_from_start = [duration_from_seconds(t) for t in seq.times]
    msg.joint_positions = np.asarray(seq.positions, dtype=np.float64).ravel().tolist()
    if seq.ik_converged is not None:
        msg.ik_converged = [bool(x) for x in seq.ik_converged]
        msg.ik_residual_m = np.asarray(seq.ik_residual_m, dtype=np.float64).tolist()
        msg.ik_residual_rad = np.asarray(seq.ik_residual_rad, dtype=np.float64).tolist()
    msg.xyz = [numpy_to_image(np.asarray(f, dtype=np.float32), "32FC3", msg.header) for f in seq.xyz]
    msg.link_ids = [numpy_to_image((np.asarray(f, dtype=np.int32) + 1).astype(np.uint16), "mono16", msg.header)
                    for f in seq.link]
    return msg


def msg_to_pointmap_sequence(msg) -> PointmapSequenceData:
    """k4d_msgs/PointmapSequence -> PointmapSequenceData, validating every field it reads."""
    t = len(msg.xyz)
    if t == 0:
        raise ValueError("PointmapSequence is empty (no xyz frames)")
    if len(msg.link_ids) != t or len(msg.time_from_start) != t:
        raise ValueError(
            f"PointmapSequence has {t} xyz frames but {len(msg.link_ids)} link_ids and "
            f"{len(msg.time_from_start)} time_from_start entries")
    j = len(msg.joint_names)
    if len(msg.joint_positions) != t * j:
        raise ValueError(f"joint_positions has {len(msg.joint_positions)} values, expected T*J = {t}*{j}")
    cam = camera_info_to_camera(msg.camera_info)
    xyz = np.empty((t, cam.height, cam.width, 3), dtype=np.float32)
    link = np.empty((t, cam.height, cam.width), dtype=np.int16)
    for i, (im_xyz, im_link) in enumerate(zip(msg.xyz, msg.link_ids)):
        if im_xyz.encoding != "32FC3":
            raise ValueError(f"xyz[{i}] must have encoding 32FC3, got {im_xyz.encoding!r}")
        if im_link.encoding not in ("mono16", "16UC1"):
            raise ValueError(f"link_ids[{i}] must have encoding mono16, got {im_link.encoding!r}")
        for name, im in (("xyz", im_xyz), ("link_ids", im_link)):
            if (im.height, im.width) != (cam.height, cam.width):
                raise ValueError(f"{name}[{i}] is {im.width}x{im.height}, camera_info is {cam.width}x{cam.height}")
        xyz[i] = image_to_numpy(im_xyz)
        ids = image_to_numpy(im_link).astype(np.int32) - 1
        if ids.max(initial=-1) >= len(msg.link_names):
            raise ValueError(f"link_ids[{i}] refers to link {ids.max()} but only {len(msg.link_names)} link_names are given")
        link[i] = ids
    if msg.source >= len(SOURCES):
        raise ValueError(f"unknown PointmapSequence source {msg.source}")
    ik = len(msg.ik_converged) > 0
    return PointmapSequenceData(
        xyz=xyz, link=link,
        times=np.array([duration_to_seconds(d) for d in msg.time_from_start], dtype=np.float64),
        joint_names=list(msg.joint_names),
        positions=np.asarray(msg.joint_positions, dtype=np.float64).reshape(t, j),
        link_names=list(msg.link_names), camera=cam, source=SOURCES[msg.source], source_id=msg.source_id,
        base_frame=msg.base_frame, stamp_ns=time_to_ns(msg.header.stamp),
        ik_converged=np.asarray(msg.ik_converged, dtype=bool) if ik else None,
        ik_residual_m=np.asarray(msg.ik_residual_m, dtype=np.float64) if ik else None,
        ik_residual_rad=np.asarray(msg.ik_residual_rad, dtype=np.float64) if ik else None,
    )


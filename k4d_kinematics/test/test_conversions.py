"""k4d_kinematics.ros.conversions: byte layouts compatible with cv_bridge / sensor_msgs_py, round trips, bad input."""
import sys

import numpy as np
import pytest

pytest.importorskip("rclpy")
from builtin_interfaces.msg import Duration  # noqa: E402
from sensor_msgs.msg import Image, PointField  # noqa: E402
from std_msgs.msg import Header  # noqa: E402
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint  # noqa: E402

from k4d_kinematics.camera import PinholeCamera  # noqa: E402
from k4d_kinematics.ros import conversions as cv  # noqa: E402
from k4d_kinematics.sequence import JointTrajectoryData, PointmapSequenceData  # noqa: E402

RNG = np.random.default_rng(0)
H, W = 5, 7
LITTLE = sys.byteorder == "little"


def _array(encoding):
    dtype, ch = cv.encoding_info(encoding)
    shape = (H, W) if ch == 1 else (H, W, ch)
    if dtype.kind == "f":
        return RNG.normal(size=shape).astype(dtype)
    return RNG.integers(0, np.iinfo(dtype).max, size=shape, dtype=dtype)


# ---------------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "mono8", "mono16", "32FC1", "32FC3"])
def test_image_round_trip_matches_cv_bridge_layout(encoding):
    a = _array(encoding)
    header = Header(frame_id="cam")
    msg = cv.numpy_to_image(a, encoding, header)
    # cv2_to_imgmsg: step = width * channels * itemsize, host byte order, data = contiguous bytes
    assert (msg.height, msg.width, msg.encoding, msg.header.frame_id) == (H, W, encoding, "cam")
    assert msg.step == W * (a.shape[2] if a.ndim == 3 else 1) * a.dtype.itemsize
    assert bool(msg.is_bigendian) == (not LITTLE)
    assert bytes(msg.data) == a.tobytes()
    back = cv.image_to_numpy(msg)
    assert back.dtype == a.dtype and back.shape == a.shape
    np.testing.assert_array_equal(back, a)


@pytest.mark.parametrize("encoding", ["rgb8", "mono16", "32FC3"])
def test_image_with_padded_step(encoding):
    a = _array(encoding)
    row = a[0].nbytes
    pad = 5
    data = b"".join(a[r].tobytes() + b"\xee" * pad for r in range(H))
    msg = Image(height=H, width=W, encoding=encoding, step=row + pad, is_bigendian=not LITTLE, data=data)
    np.testing.assert_array_equal(cv.image_to_numpy(msg), a)


@pytest.mark.parametrize("encoding", ["mono16", "32FC1", "32FC3"])
def test_big_endian_image_is_decoded_to_native_values(encoding):
    a = _array(encoding)
    big = a.astype(a.dtype.newbyteorder(">"))
    msg = Image(height=H, width=W, encoding=encoding, step=a[0].nbytes, is_bigendian=True, data=big.tobytes())
    out = cv.image_to_numpy(msg)
    assert out.dtype == a.dtype
    np.testing.assert_array_equal(out, a)


def test_bgr_to_rgb_and_colour_helpers():
    rgb = _array("rgb8")
    bgr_msg = cv.numpy_to_image(np.ascontiguousarray(rgb[..., ::-1]), "bgr8")
    np.testing.assert_array_equal(cv.image_to_numpy(bgr_msg, "rgb8"), rgb)
    np.testing.assert_array_equal(cv.rgb_from_image(bgr_msg), rgb)
    rgba = np.concatenate([rgb, np.full((H, W, 1), 9, np.uint8)], axis=2)
    np.testing.assert_array_equal(cv.rgb_from_image(cv.numpy_to_image(rgba, "rgba8")), rgb)
    mono = rgb[..., 0].copy()
    np.testing.assert_array_equal(cv.rgb_from_image(cv.numpy_to_image(mono, "mono8")), np.stack([mono] * 3, -1))
    with pytest.raises(ValueError, match="mono8"):
        cv.image_to_numpy(bgr_msg, "mono8")


def test_depth_images_mark_invalid_as_nan():
    mm = np.array([[0, 1000], [2500, 0]], np.uint16)
    d = cv.depth_from_image(cv.numpy_to_image(mm, "16UC1"))
    np.testing.assert_allclose(d, [[np.nan, 1.0], [2.5, np.nan]])
    m = np.array([[0.0, -1.0], [np.inf, 0.75]], np.float32)
    np.testing.assert_allclose(cv.depth_from_image(cv.numpy_to_image(m, "32FC1")), [[np.nan] * 2, [np.nan, 0.75]])
    with pytest.raises(ValueError, match="depth image"):
        cv.depth_from_image(cv.numpy_to_image(_array("rgb8"), "rgb8"))


def test_bad_images_raise_naming_the_field():
    good = cv.numpy_to_image(_array("rgb8"), "rgb8")
    with pytest.raises(ValueError, match="encoding 'yuv9'"):
        cv.image_to_numpy(Image(height=1, width=1, encoding="yuv9", step=1, data=b"\0"))
    with pytest.raises(ValueError, match="zero size"):
        cv.image_to_numpy(Image(height=0, width=4, encoding="mono8", step=4))
    with pytest.raises(ValueError, match="step"):
        cv.image_to_numpy(Image(height=H, width=W, encoding="rgb8", step=W, data=bytes(good.data)[: W * H]))
    with pytest.raises(ValueError, match="bytes"):
        cv.image_to_numpy(Image(height=H, width=W, encoding="rgb8", step=good.step, data=bytes(good.data)[:-1]))
    with pytest.raises(ValueError, match="channel"):
        cv.numpy_to_image(np.zeros((2, 2, 3), np.uint8), "mono8")
    with pytest.raises(ValueError, match="dtype"):
        cv.numpy_to_image(np.zeros((2, 2), np.float64), "mono8")


# ---------------------------------------------------------------------------------------------
# Point clouds
# ---------------------------------------------------------------------------------------------


def _organised_xyz():
    xyz = RNG.normal(size=(H, W, 3)).astype(np.float32)
    xyz[1, 2] = np.nan
    xyz[4, :] = np.nan
    return xyz


@pytest.mark.parametrize("with_rgb", [False, True])
def test_organised_pointcloud_layout(with_rgb):
    xyz = _organised_xyz()
    rgb = RNG.integers(0, 256, size=(H, W, 3), dtype=np.uint8) if with_rgb else None
    msg = cv.xyz_to_pointcloud2(xyz, Header(frame_id="camera_color_optical_frame"), rgb=rgb)
    step = 32 if with_rgb else 16
    names = ["x", "y", "z"] + (["rgb"] if with_rgb else [])
    assert [f.name for f in msg.fields] == names
    assert [f.offset for f in msg.fields] == [0, 4, 8] + ([16] if with_rgb else [])
    assert all(f.datatype == PointField.FLOAT32 and f.count == 1 for f in msg.fields)
    assert (msg.height, msg.width, msg.point_step, msg.row_step) == (H, W, step, step * W)
    assert msg.is_dense is False and msg.is_bigendian is False
    assert msg.header.frame_id == "camera_color_optical_frame"
    raw = np.frombuffer(bytes(msg.data), np.uint8).reshape(H, W, step)
    assert len(msg.data) == H * W * step
    # row-major organised: pixel (r, c) is point r * W + c; x, y, z at 0/4/8, NaN holes kept
    np.testing.assert_array_equal(raw[..., :12].copy().view("<f4").reshape(H, W, 3), xyz)
    assert np.isnan(raw[1, 2, :12].copy().view("<f4")).all()
    # padding bytes are zero (12..16, and 20..32 with rgb)
    assert not raw[..., 12:16].any()
    if with_rgb:
        assert not raw[..., 20:].any()
        np.testing.assert_array_equal(raw[..., 16:19], rgb[..., ::-1])  # b, g, r bytes
        assert not raw[..., 19].any()
    back = cv.pointcloud2_to_xyz(msg)
    np.testing.assert_array_equal(back, xyz)
    if with_rgb:
        np.testing.assert_array_equal(cv.unpack_rgb(cv.pointcloud2_to_array(msg)["rgb"]), rgb)


def test_unorganised_pointcloud_is_one_row():
    pts = RNG.normal(size=(11, 3)).astype(np.float32)
    msg = cv.xyz_to_pointcloud2(pts)
    assert (msg.height, msg.width, msg.row_step, msg.is_dense) == (1, 11, 16 * 11, False)
    np.testing.assert_array_equal(cv.pointcloud2_to_xyz(msg)[0], pts)


def test_rgb_packing_matches_pcl():
    rgb = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [1, 2, 3]], np.uint8)
    packed = cv.pack_rgb(rgb)
    assert packed.dtype == np.float32
    assert packed.view("<u4").tolist() == [0xFF0000, 0x00FF00, 0x0000FF, 0x010203]
    np.testing.assert_array_equal(cv.unpack_rgb(packed), rgb)


def test_pointcloud_from_padded_rows_and_bad_clouds():
    xyz = _organised_xyz()
    msg = cv.xyz_to_pointcloud2(xyz)
    rows = np.frombuffer(bytes(msg.data), np.uint8).reshape(H, -1)
    msg.data = np.concatenate([rows, np.zeros((H, 8), np.uint8)], axis=1).tobytes()
    msg.row_step += 8
    np.testing.assert_array_equal(cv.pointcloud2_to_xyz(msg), xyz)
    msg.data = bytes(msg.data)[:-1]
    with pytest.raises(ValueError, match="row_step"):
        cv.pointcloud2_to_xyz(msg)
    with pytest.raises(ValueError, match="shape"):
        cv.xyz_to_pointcloud2(np.zeros((4, 2), np.float32))
    with pytest.raises(ValueError, match="rgb shape"):
        cv.xyz_to_pointcloud2(xyz, rgb=np.zeros((H, W + 1, 3), np.uint8))
    no_z = cv.xyz_to_pointcloud2(xyz)
    no_z.fields = no_z.fields[:2]
    with pytest.raises(ValueError, match="'z'"):
        cv.pointcloud2_to_xyz(no_z)


# ---------------------------------------------------------------------------------------------
# Camera, time, trajectories
# ---------------------------------------------------------------------------------------------


def test_camera_info_round_trip():
    cam = PinholeCamera(96, 64, 80.0, 81.0, 47.5, 31.5, frame_id="cam_optical_frame")
    msg = cv.camera_to_camera_info(cam)
    assert (msg.width, msg.height, msg.header.frame_id) == (96, 64, "cam_optical_frame")
    assert msg.distortion_model == "plumb_bob"
    assert list(msg.k) == [80.0, 0.0, 47.5, 0.0, 81.0, 31.5, 0.0, 0.0, 1.0]
    assert list(msg.p)[:3] == [80.0, 0.0, 47.5] and list(msg.d) == [0.0] * 5
    assert cv.camera_info_to_camera(msg) == cam


@pytest.mark.parametrize("change, field", [
    (dict(k=[0.0, 0, 47.5, 0, 81.0, 31.5, 0, 0, 1]), "fx"),
    (dict(width=0), "width"),
    (dict(height=0), "height"),
    (dict(d=[0.1, 0, 0, 0, 0]), "distortion"),
])
def test_bad_camera_info_raises_naming_the_field(change, field):
    msg = cv.camera_to_camera_info(PinholeCamera(96, 64, 80.0, 81.0, 47.5, 31.5))
    for k, v in change.items():
        setattr(msg, k, v)
    with pytest.raises(ValueError, match=field):
        cv.camera_info_to_camera(msg)


def test_time_and_duration_conversions():
    d = cv.duration_from_seconds(1.25)
    assert (d.sec, d.nanosec) == (1, 250_000_000)
    assert cv.duration_to_seconds(Duration(sec=2, nanosec=5)) == pytest.approx(2.000000005)
    t = cv.time_from_ns(3_000_000_007)
    assert (t.sec, t.nanosec) == (3, 7) and cv.time_to_ns(t) == 3_000_000_007


def test_joint_trajectory_round_trip():
    traj = JointTrajectoryData(joint_names=["joint1", "joint2"], times=np.array([0.0, 0.5, 1.25]),
                               positions=np.array([[0.0, 0.1], [0.2, 0.3], [0.4, 0.5]]))
    msg = cv.data_to_joint_trajectory(traj, Header(frame_id="base"))
    assert msg.joint_names == ["joint1", "joint2"] and len(msg.points) == 3
    assert (msg.points[2].time_from_start.sec, msg.points[2].time_from_start.nanosec) == (1, 250_000_000)
    back = cv.joint_trajectory_to_data(msg)
    assert back.joint_names == traj.joint_names
    np.testing.assert_allclose(back.times, traj.times)
    np.testing.assert_array_equal(back.positions, traj.positions)


def _jt(names, points):
    """points: (t, positions) or (t, positions, velocities)."""
    msg = JointTrajectory(joint_names=names)
    msg.points = [JointTrajectoryPoint(positions=p[1], velocities=p[2] if len(p) > 2 else [],
                                       time_from_start=cv.duration_from_seconds(p[0])) for p in points]
    return msg


def test_a_time_parameterised_trajectory_keeps_its_velocities_and_is_resampled_as_a_cubic():
    """Velocities on every point (MoveIt's plans) are kept, so the conditioning follows the cubic the controller
    executes (a rest-to-rest move is slow near its ends); on some points only, the trajectory stays linear."""
    from k4d_kinematics.sequence import resample

    msg = _jt(["joint1"], [(0.0, [0.0], [0.0]), (2.0, [1.0], [0.0])])
    data = cv.joint_trajectory_to_data(msg)
    np.testing.assert_array_equal(data.velocities, [[0.0], [0.0]])
    np.testing.assert_allclose(resample(data, 5).positions[:, 0], [0, 0.15625, 0.5, 0.84375, 1.0])
    partial = cv.joint_trajectory_to_data(_jt(["joint1"], [(0.0, [0.0], [0.0]), (2.0, [1.0])]))
    assert partial.velocities is None
    np.testing.assert_allclose(resample(partial, 5).positions[:, 0], [0, 0.25, 0.5, 0.75, 1.0])


@pytest.mark.parametrize("msg, match", [
    (_jt(["joint1"], []), "no points"),
    (_jt(["joint1", "joint2"], [(0.0, [0.1])]), "1 positions for 2 joint_names"),
    (_jt(["joint1"], [(0.0, [0.0]), (1.0, [0.1]), (0.5, [0.2])]), "time|monoton|increas"),
    (_jt(["joint1"], [(0.0, [0.0]), (1.0, [float("nan")])]), "finite|nan|NaN"),
    (_jt(["joint1", "joint2"], [(0.0, [0.0, 0.0], [0.1]), (1.0, [0.1, 0.1])]), "1 velocities for 2 joint_names"),
])
def test_bad_joint_trajectories_raise(msg, match):
    with pytest.raises(ValueError, match=match):
        cv.joint_trajectory_to_data(msg)


# ---------------------------------------------------------------------------------------------
# k4d_msgs/PointmapSequence
# ---------------------------------------------------------------------------------------------


def _sequence(T=3, h=4, w=6):
    cam = PinholeCamera(w, h, 10.0, 10.0, (w - 1) / 2, (h - 1) / 2)
    xyz = RNG.normal(size=(T, h, w, 3)).astype(np.float32)
    link = RNG.integers(-1, 3, size=(T, h, w)).astype(np.int16)
    xyz[link < 0] = np.nan
    return PointmapSequenceData(
        xyz=xyz, link=link, times=np.arange(T) * 0.1, joint_names=["joint1", "joint2"],
        positions=RNG.normal(size=(T, 2)), link_names=["base", "link1", "link2"], camera=cam, source="plan",
        source_id="plan-1", base_frame="base", stamp_ns=5_000_000_123)


def test_pointmap_sequence_round_trip():
    seq = _sequence()
    msg = cv.pointmap_sequence_to_msg(seq)
    from k4d_msgs.msg import PointmapSequence

    assert msg.source == PointmapSequence.SOURCE_PLAN
    assert msg.header.frame_id == "camera_color_optical_frame" and len(msg.xyz) == 3
    assert msg.xyz[0].encoding == "32FC3" and msg.link_ids[0].encoding == "mono16"
    ids0 = cv.image_to_numpy(msg.link_ids[0])
    np.testing.assert_array_equal(ids0, seq.link[0] + 1)  # 0 = background, k + 1 = link_names[k]
    back = cv.msg_to_pointmap_sequence(msg)
    np.testing.assert_array_equal(back.xyz, seq.xyz)
    np.testing.assert_array_equal(back.link, seq.link)
    np.testing.assert_allclose(back.times, seq.times)
    np.testing.assert_array_equal(back.positions, seq.positions)
    assert (back.joint_names, back.link_names, back.source, back.source_id, back.base_frame, back.stamp_ns) == (
        seq.joint_names, seq.link_names, "plan", "plan-1", "base", 5_000_000_123)
    assert back.camera == seq.camera and back.ik_converged is None


def _break(msg, what):
    if what == "empty":
        msg.xyz, msg.link_ids, msg.time_from_start = [], [], []
    elif what == "count":
        msg.link_ids = msg.link_ids[:-1]
    elif what == "positions":
        msg.joint_positions = msg.joint_positions[:-1]
    elif what == "encoding":
        msg.xyz[1].encoding = "32FC1"
    elif what == "size":
        msg.camera_info.width += 1
    elif what == "link_range":
        msg.link_names = msg.link_names[:1]
    elif what == "source":
        msg.source = 42
    elif what == "focal":
        msg.camera_info.k[0] = 0.0
    return msg


@pytest.mark.parametrize("what, match", [
    ("empty", "empty"), ("count", "link_ids"), ("positions", "joint_positions"), ("encoding", r"xyz\[1\].*32FC3"),
    ("size", "camera_info"), ("link_range", "link_names"), ("source", "source"), ("focal", "fx"),
])
def test_bad_pointmap_sequences_raise_naming_the_field(what, match):
    msg = _break(cv.pointmap_sequence_to_msg(_sequence()), what)
    with pytest.raises(ValueError, match=match):
        cv.msg_to_pointmap_sequence(msg)


def test_pointmap_sequence_with_bad_source_is_rejected_on_encode():
    seq = _sequence()
    seq.source = "dream"
    with pytest.raises(ValueError, match="source"):
        cv.pointmap_sequence_to_msg(seq)

"""pointmap_node over real DDS: the node runs in its own process, this test publishes and listens.

The node is started as users start it (``python -m k4d_kinematics.ros.pointmap_node --ros-args -p ...``);
its cloud must equal ``PointmapRenderer`` output for the same joint state, camera and extrinsics.
"""
import sys
import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image, JointState, PointCloud2  # noqa: E402

from k4d_bringup.testing import start_process, stop_process  # noqa: E402
from k4d_kinematics.camera import Extrinsics, PinholeCamera  # noqa: E402
from k4d_kinematics.config import PointmapNodeConfig  # noqa: E402
from k4d_kinematics.pointmap import PointmapRenderer  # noqa: E402
from k4d_kinematics.robot import RobotModel  # noqa: E402
from k4d_kinematics.ros.conversions import (camera_to_camera_info, image_to_numpy, pointcloud2_to_array,  # noqa: E402
                                            pointcloud2_to_xyz, time_to_ns)
from k4d_kinematics.ros.qos import SENSOR_QOS  # noqa: E402

pytestmark = pytest.mark.ros

FRAME = "k4d_test_optical_frame"
CAMERA = PinholeCamera(96, 64, 70.0, 70.0, 47.5, 31.5, frame_id=FRAME)
CAMERA_TOPIC = "/k4d_test/camera_info"
Q1 = np.array([0.5, 1.0, 0.8, 0.2, 0.1, 0.3, -0.02, -0.02])


def _joint_state(names, positions, sec, nanosec=0):
    msg = JointState(name=list(names), position=[float(p) for p in positions])
    msg.header.stamp.sec, msg.header.stamp.nanosec = sec, nanosec
    return msg


class Peer:
    """The test side of the graph: republishes ``self.out`` every 50 ms and records what arrives."""

    def __init__(self, node):
        self.node = node
        self.msgs = {"cloud": [], "mask": [], "diag": []}
        self.pub_js = node.create_publisher(JointState, "/joint_states", SENSOR_QOS)
        self.pub_info = node.create_publisher(CameraInfo, CAMERA_TOPIC, SENSOR_QOS)
        self.out: dict = {}
        self._listening = False
        node.create_subscription(DiagnosticArray, "/diagnostics", self.msgs["diag"].append, 10)
        node.create_timer(0.05, lambda: [pub.publish(m) for pub, m in list(self.out.items())])

    def listen_outputs(self):
        if self._listening:
            return
        self._listening = True
        self.node.create_subscription(PointCloud2, "/k4d/robot_pointmap", self.msgs["cloud"].append, SENSOR_QOS)
        self.node.create_subscription(Image, "/k4d/robot_mask", self.msgs["mask"].append, SENSOR_QOS)

    def spin_until(self, predicate, timeout=15.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            rclpy.spin_once(self.node, timeout_sec=0.05)
            result = predicate()
            if result:
                return result
        return predicate()

    def diag_status(self, since=0):
        return [st for arr in self.msgs["diag"][since:] for st in arr.status if st.name.startswith("pointmap_node")]

    def wait_error(self, text, since):
        def found():
            return any(st.level == DiagnosticStatus.ERROR and text in st.message for st in self.diag_status(since))
        return self.spin_until(found, timeout=8.0)

    def wait_stamped(self, key, stamp_ns):
        return self.spin_until(lambda: next((m for m in self.msgs[key] if time_to_ns(m.header.stamp) == stamp_ns),
                                            None))


@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    proc = start_process([sys.executable, "-m", "k4d_kinematics.ros.pointmap_node", "--ros-args",
                          "-p", f"camera_info_topic:={CAMERA_TOPIC}", "-p", "description_source:=yam"],
                         cwd=tmp_path_factory.mktemp("pointmap_node"))
    rclpy.init()
    node = rclpy.create_node("k4d_test_pointmap_peer")
    peer = Peer(node)
    try:
        assert peer.spin_until(lambda: node.count_subscribers("/joint_states") > 0
                               and node.count_subscribers(CAMERA_TOPIC) > 0, timeout=60.0), stop_process(proc)
        yield proc, peer
    finally:
        node.destroy_node()
        rclpy.shutdown()
        out = stop_process(proc)
        assert "Traceback" not in out, out


def _expected(q):
    cfg = PointmapNodeConfig()
    ext = Extrinsics.from_xyz_quat(cfg.extrinsics_xyz, cfg.extrinsics_quat_xyzw, "base", FRAME)
    return PointmapRenderer(RobotModel.yam(), CAMERA, ext).render(q)


def test_no_work_while_nobody_subscribes(graph):
    _, peer = graph
    peer.out = {peer.pub_js: _joint_state(RobotModel.yam().joint_names, Q1, 100),
                peer.pub_info: camera_to_camera_info(CAMERA)}

    def inputs_seen():
        for st in reversed(peer.diag_status()):
            v = {kv.key: kv.value for kv in st.values}
            if int(v.get("received_camera_info", 0)) >= 5 and int(v.get("received_joint_states", 0)) >= 5:
                return v
        return None

    values = peer.spin_until(inputs_seen)
    assert values, "the node never reported receiving its inputs"
    assert values["processed"] == "0"


def test_publishes_organised_cloud_and_mask_equal_to_the_renderer(graph):
    _, peer = graph
    peer.listen_outputs()
    names = RobotModel.yam().joint_names
    peer.out = {peer.pub_js: _joint_state(names, Q1, 123, 456), peer.pub_info: camera_to_camera_info(CAMERA)}
    cloud = peer.wait_stamped("cloud", 123_000_000_456)
    mask = peer.wait_stamped("mask", 123_000_000_456)
    assert cloud is not None and mask is not None, "no output stamped with the joint-state time"
    # layout: organised, camera optical frame, x/y/z float32, NaN holes, not dense
    assert cloud.header.frame_id == FRAME and mask.header.frame_id == FRAME
    assert (cloud.height, cloud.width, cloud.point_step, cloud.row_step) == (64, 96, 16, 16 * 96)
    assert [f.name for f in cloud.fields] == ["x", "y", "z"] and cloud.is_dense is False
    assert pointcloud2_to_array(cloud).shape == (64, 96)
    # geometry: exactly what the core renders for the same q, camera and extrinsics
    xyz = pointcloud2_to_xyz(cloud)
    pm = _expected(Q1)
    assert 100 < pm.mask.sum() < 64 * 96
    np.testing.assert_array_equal(np.isnan(xyz[..., 2]), ~pm.mask)
    np.testing.assert_allclose(xyz, pm.xyz, atol=1e-6)
    m = image_to_numpy(mask)
    assert mask.encoding == "mono8" and m.dtype == np.uint8
    np.testing.assert_array_equal(m, np.where(pm.mask, 255, 0))
    # a partial update (one joint) is merged by name
    peer.out = {peer.pub_js: _joint_state(["joint1"], [-0.4], 124), peer.pub_info: camera_to_camera_info(CAMERA)}
    cloud2 = peer.wait_stamped("cloud", 124_000_000_000)
    assert cloud2 is not None
    q2 = Q1.copy()
    q2[0] = -0.4
    np.testing.assert_allclose(pointcloud2_to_xyz(cloud2), _expected(q2).xyz, atol=1e-6)


def _zero_focal():
    info = camera_to_camera_info(CAMERA)
    info.k[0] = 0.0
    return info


@pytest.mark.parametrize("bad, text", [
    ("unknown", "unknown joint name(s) ['elbow_x']"),
    ("nan", "joint 'joint2' position is nan"),
    ("limits", "joint 'joint4' = 3 is outside its limits"),
    ("focal", "k[0] (fx) is 0"),
])
def test_bad_input_is_reported_and_the_node_keeps_answering(graph, bad, text):
    proc, peer = graph
    peer.listen_outputs()
    names = RobotModel.yam().joint_names
    good_info = camera_to_camera_info(CAMERA)
    bad_msgs = {
        "unknown": {peer.pub_js: _joint_state(["joint1", "elbow_x"], [0.1, 0.2], 150)},
        "nan": {peer.pub_js: _joint_state(["joint1", "joint2"], [0.1, float("nan")], 151)},
        "limits": {peer.pub_js: _joint_state(["joint4"], [3.0], 152)},
        "focal": {peer.pub_info: _zero_focal()},
    }[bad]
    since = len(peer.msgs["diag"])
    peer.out = {**bad_msgs, **({peer.pub_info: good_info} if peer.pub_info not in bad_msgs else {})}
    assert peer.wait_error(text, since), f"/diagnostics never reported {text!r}"
    assert proc.poll() is None, "the node died on bad input"
    stamp = 200 + len(peer.msgs["diag"])  # fresh for every case
    peer.out = {peer.pub_js: _joint_state(names, Q1, stamp), peer.pub_info: good_info}
    assert peer.wait_stamped("cloud", stamp * 1_000_000_000) is not None, "no output after a good message"


def test_file_camera_and_file_extrinsics_publish_on_a_timer(tmp_path):
    """camera_info_file + extrinsics_file: no CameraInfo topic, a rate_hz timer drives the output (in-process)."""
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.parameter import Parameter

    from k4d_kinematics.ros.pointmap_node import PointmapNode

    cam = PinholeCamera(48, 32, 35.0, 35.0, 23.5, 15.5, frame_id="file_optical_frame")
    cam.to_yaml(tmp_path / "camera_info.yaml")
    ext = Extrinsics.look_at((0.8, 0.1, 0.5), (0.0, 0.0, 0.2), child_frame="file_optical_frame")
    ext.to_yaml(tmp_path / "extrinsics.yaml")
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    executor = SingleThreadedExecutor(context=ctx)
    try:
        node = PointmapNode(context=ctx, parameter_overrides=[
            Parameter("camera_info_file", value=str(tmp_path / "camera_info.yaml")),
            Parameter("extrinsics_source", value="file"),
            Parameter("extrinsics_file", value=str(tmp_path / "extrinsics.yaml")),
            Parameter("rate_hz", value=20.0)])
        peer = rclpy.create_node("k4d_test_file_peer", context=ctx)
        clouds = []
        peer.create_subscription(PointCloud2, "/k4d/robot_pointmap", clouds.append, SENSOR_QOS)
        executor.add_node(node)
        executor.add_node(peer)
        node._on_joint_state(_joint_state(RobotModel.yam().joint_names, Q1, 300))  # the callback, without DDS
        deadline = time.monotonic() + 10.0
        while not clouds and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.05)
        assert clouds, "the rate_hz timer published nothing"
        assert clouds[0].header.frame_id == "file_optical_frame" and time_to_ns(clouds[0].header.stamp) == 300 * 10**9
        expected = PointmapRenderer(RobotModel.yam(), cam, ext).render(Q1)
        assert expected.mask.sum() > 20
        np.testing.assert_allclose(pointcloud2_to_xyz(clouds[0]), expected.xyz, atol=1e-6)
        # a camera_frame that contradicts the extrinsics file is a start-up error naming both
        with pytest.raises(ValueError, match="extrinsics child_frame 'file_optical_frame' differs from camera_frame"):
            PointmapNode(node_name="pointmap_node_bad", context=ctx, parameter_overrides=[
                Parameter("camera_info_file", value=str(tmp_path / "camera_info.yaml")),
                Parameter("extrinsics_source", value="file"), Parameter("camera_frame", value="other_optical_frame"),
                Parameter("extrinsics_file", value=str(tmp_path / "extrinsics.yaml"))])
    finally:
        executor.shutdown()
        rclpy.shutdown(context=ctx)

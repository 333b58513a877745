"""Two processes exchange a k4d_msgs and a sensor_msgs message over real DDS (own ROS_DOMAIN_ID)."""
import os
import textwrap

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
from rclpy.qos import QoSProfile, ReliabilityPolicy, DurabilityPolicy  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from k4d_msgs.msg import PointmapSequence  # noqa: E402

from k4d_bringup.testing import python_process, spin_until, stop_process  # noqa: E402

pytestmark = pytest.mark.ros

# The peer echoes every PointmapSequence it receives on /k4d_test/in to /k4d_test/out and
# publishes a 4x3 rgb8 image with a known pattern on /k4d_test/image.
PEER = textwrap.dedent(
    """
    import numpy as np, rclpy
    from rclpy.qos import QoSProfile, ReliabilityPolicy, DurabilityPolicy
    from sensor_msgs.msg import Image
    from k4d_msgs.msg import PointmapSequence
    rclpy.init()
    node = rclpy.create_node("k4d_test_peer")
    qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE)
    out = node.create_publisher(PointmapSequence, "/k4d_test/out", qos)
    node.create_subscription(PointmapSequence, "/k4d_test/in", out.publish, qos)
    img_pub = node.create_publisher(Image, "/k4d_test/image", qos)
    def tick():
        m = Image(height=3, width=4, encoding="rgb8", step=12)
        m.header.frame_id = "peer_optical_frame"
        m.data = bytes(np.arange(36, dtype=np.uint8))
        img_pub.publish(m)
    node.create_timer(0.05, tick)
    try:
        rclpy.spin(node)
    except KeyboardInterrupt:
        pass
    """
)


def _sequence() -> PointmapSequence:
    m = PointmapSequence()
    m.header.frame_id = "camera_color_optical_frame"
    m.header.stamp.sec, m.header.stamp.nanosec = 12, 345
    m.camera_info.width, m.camera_info.height = 4, 2
    m.source = PointmapSequence.SOURCE_PLAN
    m.source_id = "plan-7"
    m.base_frame = "base"
    m.link_names = ["base", "link1"]
    m.joint_names = ["joint1", "joint2"]
    m.joint_positions = [0.1, 0.2, 0.3, 0.4]
    xyz = Image(height=2, width=4, encoding="32FC3", step=48)
    a = np.full((2, 4, 3), np.nan, np.float32)
    a[1, 2] = (0.1, -0.2, 0.9)
    xyz.data = a.tobytes()
    m.xyz = [xyz, xyz]
    ids = Image(height=2, width=4, encoding="mono16", step=8)
    ids.data = np.array([[0, 0, 0, 0], [0, 0, 2, 0]], np.uint16).tobytes()
    m.link_ids = [ids, ids]
    return m


def test_two_processes_exchange_k4d_and_sensor_msgs():
    assert os.environ["ROS_DOMAIN_ID"] == os.environ["K4D_TEST_DOMAIN_ID"]
    peer = python_process(PEER)
    rclpy.init()
    node = rclpy.create_node("k4d_test_main")
    try:
        qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE)
        got_seq, got_img = [], []
        node.create_subscription(PointmapSequence, "/k4d_test/out", got_seq.append, qos)
        node.create_subscription(Image, "/k4d_test/image", got_img.append, qos)
        pub = node.create_publisher(PointmapSequence, "/k4d_test/in", qos)
        sent = _sequence()

        def echoed():
            if not got_seq and pub.get_subscription_count() > 0:
                pub.publish(sent)
            return bool(got_seq) and bool(got_img)

        assert spin_until(node, echoed, timeout=30.0), "no echo from the peer process: " + (
            stop_process(peer) if peer.poll() is not None else "peer alive")
        back = got_seq[0]
        assert back == sent  # every field survived the round trip through the other process
        xyz = np.frombuffer(bytes(back.xyz[1].data), np.float32).reshape(2, 4, 3)
        np.testing.assert_allclose(xyz[1, 2], (0.1, -0.2, 0.9))
        assert np.isnan(xyz[0, 0]).all()
        img = got_img[0]
        assert (img.height, img.width, img.encoding, img.header.frame_id) == (3, 4, "rgb8", "peer_optical_frame")
        assert bytes(img.data) == bytes(range(36))
    finally:
        node.destroy_node()
        rclpy.shutdown()
        stop_process(peer)

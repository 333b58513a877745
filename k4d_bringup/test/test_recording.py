"""MCAP recording (raw CDR + ros2msg schemas) and replay into a live graph."""
import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
from mcap.reader import make_reader  # noqa: E402
from mcap_ros2.decoder import DecoderFactory  # noqa: E402
from rclpy.serialization import serialize_message  # noqa: E402
from sensor_msgs.msg import JointState  # noqa: E402

from k4d_msgs.msg import PointmapSequence  # noqa: E402
from k4d_bringup.recording import McapRecorder, message_definition, read_messages, replay  # noqa: E402
from k4d_bringup.testing import python_process, spin_until, stop_process  # noqa: E402


def test_definition_has_all_dependencies():
    text = message_definition("k4d_msgs/msg/PointmapSequence")
    for dep in ("std_msgs/Header", "sensor_msgs/CameraInfo", "sensor_msgs/Image", "builtin_interfaces/Duration",
                "builtin_interfaces/Time", "sensor_msgs/RegionOfInterest"):
        assert f"MSG: {dep}\n" in text
    with pytest.raises(FileNotFoundError, match="NoSuchType"):
        message_definition("k4d_msgs/msg/NoSuchType")


def test_written_file_decodes_with_standard_mcap_ros2_decoder(tmp_path):
    path = tmp_path / "x.mcap"
    rec = McapRecorder(path)
    rec.add_topic("/joint_states", JointState)
    rec.add_topic("/k4d/plan_pointmaps", PointmapSequence)
    for i in range(3):
        js = JointState(name=["joint1"], position=[0.1 * i])
        rec.write("/joint_states", serialize_message(js), log_time_ns=1_000 + i)
    seq = PointmapSequence(link_names=["base", "link1"], source=PointmapSequence.SOURCE_PLAN)
    rec.write("/k4d/plan_pointmaps", serialize_message(seq), log_time_ns=5_000)
    rec.close()
    with open(path, "rb") as fh:
        decoded = [(c.topic, m) for _s, c, _r, m in make_reader(fh, decoder_factories=[DecoderFactory()]).iter_decoded_messages()]
    assert [t for t, _ in decoded] == ["/joint_states"] * 3 + ["/k4d/plan_pointmaps"]
    np.testing.assert_allclose([m.position[0] for t, m in decoded[:3]], [0.0, 0.1, 0.2])
    assert decoded[3][1].link_names == ["base", "link1"]
    assert [t for t, *_ in read_messages(path, topics=["/k4d/plan_pointmaps"])] == ["/k4d/plan_pointmaps"]
    assert list(read_messages(path, topics=[])) == []  # no topic asked for is none, not all
    # replaying a topic the recording lacks names it and what the recording has, before any publisher exists
    with pytest.raises(ValueError, match=r"no topic /jointstates; it has /joint_states, /k4d/plan_pointmaps"):
        replay(None, path, topics=["/jointstates"])


@pytest.mark.ros
def test_record_live_topic_then_replay_into_graph(tmp_path):
    """A peer process publishes joint states; we record them raw, then replay them to a listener process."""
    talker = python_process(
        "import rclpy\nfrom sensor_msgs.msg import JointState\nrclpy.init()\nn=rclpy.create_node('talker')\n"
        "p=n.create_publisher(JointState,'/joint_states',10)\ni=[0]\n"
        "def t():\n    i[0]+=1\n    p.publish(JointState(name=['joint1'],position=[float(i[0])]))\n"
        "n.create_timer(0.01,t)\nrclpy.spin(n)\n")
    rclpy.init()
    node = rclpy.create_node("k4d_test_recorder")
    path = tmp_path / "rec.mcap"
    try:
        rec = McapRecorder(path)
        rec.subscribe(node, [("/joint_states", JointState, 10)])
        assert spin_until(node, lambda: rec.counts["/joint_states"] >= 20, timeout=30)
        rec.close()
        stop_process(talker)
        recorded = [deserialize for *_x, deserialize in read_messages(path)]
        assert len(recorded) >= 20
        listener = python_process(
            "import rclpy\nfrom sensor_msgs.msg import JointState\nrclpy.init()\nn=rclpy.create_node('listener')\n"
            "n.create_subscription(JointState,'/joint_states',lambda m: print('got', m.position[0], flush=True),10)\n"
            "rclpy.spin(n)\n")
        # wait until the listener process is up and discovered before replaying
        spin_until(node, lambda: node.count_subscribers("/joint_states") > 1, timeout=20)
        counts = replay(node, path, rate=1.0, discovery_wait_s=10.0, start_delay_s=1.0)
        time.sleep(1.0)
        out = stop_process(listener)
        assert counts["/joint_states"] == len(recorded)
        got = [float(line.split()[1]) for line in out.splitlines() if line.startswith("got")]
        assert len(got) >= 0.8 * len(recorded)
        assert got == sorted(got)  # replayed in recorded order
    finally:
        node.destroy_node()
        rclpy.shutdown()
        stop_process(talker)

"""plan_node over real DDS: robot description from /robot_description, plans -> PointmapSequence + ghost."""
import sys
import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus  # noqa: E402
from k4d_msgs.msg import PointmapSequence  # noqa: E402
from sensor_msgs.msg import CameraInfo, JointState  # noqa: E402
from std_msgs.msg import String  # noqa: E402
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint  # noqa: E402
from visualization_msgs.msg import Marker, MarkerArray  # noqa: E402

from k4d_bringup.testing import start_process, stop_process  # noqa: E402
from k4d_kinematics.camera import Extrinsics, PinholeCamera  # noqa: E402
from k4d_kinematics.config import PlanNodeConfig  # noqa: E402
from k4d_kinematics.pointmap import PointmapRenderer  # noqa: E402
from k4d_kinematics.robot import RobotModel, yam_urdf_path  # noqa: E402
from k4d_kinematics.ros.conversions import (camera_to_camera_info, duration_from_seconds,  # noqa: E402
                                            msg_to_pointmap_sequence)
from k4d_kinematics.ros.qos import LATCHED_QOS, RELIABLE_QOS, SENSOR_QOS  # noqa: E402

pytestmark = pytest.mark.ros

FRAME = "k4d_test_optical_frame"
CAMERA = PinholeCamera(96, 64, 70.0, 70.0, 47.5, 31.5, frame_id=FRAME)
CAMERA_TOPIC = "/k4d_test/camera_info"
ARM = ["joint1", "joint2", "joint3", "joint4", "joint5", "joint6"]
NUM_FRAMES = 9


def _plan(points, sec=0, names=ARM):
    msg = JointTrajectory(joint_names=list(names))
    msg.header.stamp.sec = sec
    msg.points = [JointTrajectoryPoint(positions=[float(x) for x in p], time_from_start=duration_from_seconds(t))
                  for t, p in points]
    return msg


GOOD_POINTS = [(0.0, [0.0, 0.5, 0.5, 0.0, 0.0, 0.0]), (1.0, [0.4, 1.0, 0.8, 0.2, 0.1, 0.3]),
               (2.0, [0.8, 1.2, 1.0, 0.4, 0.2, 0.6])]


class Peer:
    """Test side: republishes ``self.out`` (sensor streams) every 50 ms and records what arrives."""

    def __init__(self, node):
        self.node = node
        self.seqs, self.ghosts, self.diag = [], [], []
        self.pub_desc = node.create_publisher(String, "/robot_description", LATCHED_QOS)
        self.pub_plan = node.create_publisher(JointTrajectory, "/k4d/planned_trajectory", RELIABLE_QOS)
        self.pub_info = node.create_publisher(CameraInfo, CAMERA_TOPIC, SENSOR_QOS)
        self.pub_js = node.create_publisher(JointState, "/joint_states", SENSOR_QOS)
        self.out = {self.pub_info: camera_to_camera_info(CAMERA),
                    self.pub_js: JointState(name=["joint7", "joint8"], position=[-0.01, -0.01])}
        node.create_subscription(PointmapSequence, "/k4d/plan_pointmaps", self.seqs.append, RELIABLE_QOS)
        node.create_subscription(MarkerArray, "/k4d/plan_ghost", self.ghosts.append, LATCHED_QOS)
        node.create_subscription(DiagnosticArray, "/diagnostics", self.diag.append, 10)
        node.create_timer(0.05, lambda: [pub.publish(m) for pub, m in list(self.out.items())])

    def spin_until(self, predicate, timeout=15.0, resend=None):
        """Spin until predicate() is truthy; ``resend()`` runs every second (plans are one-shot messages)."""
        deadline, next_send = time.monotonic() + timeout, 0.0
        while time.monotonic() < deadline:
            if resend is not None and time.monotonic() >= next_send:
                resend()
                next_send = time.monotonic() + 1.0
            rclpy.spin_once(self.node, timeout_sec=0.05)
            result = predicate()
            if result:
                return result
        return predicate()

    def wait_error(self, text, since, resend=None):
        def found():
            return any(st.level == DiagnosticStatus.ERROR and text in st.message
                       for arr in self.diag[since:] for st in arr.status if st.name.startswith("plan_node"))
        return self.spin_until(found, timeout=8.0, resend=resend)

    def plan_round_trip(self, plan):
        """Send ``plan`` until a sequence stamped like it comes back; returns (sequence msg, ghost msg)."""
        since = len(self.seqs)
        sec = plan.header.stamp.sec
        seq = self.spin_until(lambda: next((s for s in self.seqs[since:] if s.header.stamp.sec == sec), None),
                              resend=lambda: self.pub_plan.publish(plan))
        ghost = self.spin_until(lambda: next((g for g in self.ghosts if len(g.markers) > 1
                                              and g.markers[1].header.stamp.sec == sec), None), timeout=5.0)
        return seq, ghost


@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    proc = start_process([sys.executable, "-m", "k4d_kinematics.ros.plan_node", "--ros-args",
                          "-p", "description_source:=topic", "-p", f"mesh_dir:={yam_urdf_path().parent}",
                          "-p", f"camera_info_topic:={CAMERA_TOPIC}", "-p", f"num_frames:={NUM_FRAMES}",
                          "-p", "ghost_frames:=3"], cwd=tmp_path_factory.mktemp("plan_node"))
    rclpy.init()
    node = rclpy.create_node("k4d_test_plan_peer")
    peer = Peer(node)
    try:
        assert peer.spin_until(lambda: node.count_subscribers("/k4d/planned_trajectory") > 0
                               and node.count_subscribers("/robot_description") > 0, timeout=60.0), stop_process(proc)
        yield proc, peer
    finally:
        node.destroy_node()
        rclpy.shutdown()
        out = stop_process(proc)
        assert "Traceback" not in out, out


def test_bad_robot_description_is_reported_and_nothing_is_rendered(graph):
    proc, peer = graph
    bad = yam_urdf_path().read_text().replace('<parent link="link1"/>', '<parent link="nowhere"/>')
    peer.pub_desc.publish(String(data=bad))
    assert peer.wait_error("'nowhere' is not defined", 0)
    since = len(peer.diag)
    assert peer.wait_error("not rendering until a valid one arrives", since,
                           resend=lambda: peer.pub_plan.publish(_plan(GOOD_POINTS, sec=10)))
    assert not peer.seqs and proc.poll() is None


def test_plan_becomes_a_pointmap_sequence_and_a_ghost(graph):
    _, peer = graph
    peer.pub_desc.publish(String(data=yam_urdf_path().read_text()))  # the model is rebuilt from the topic
    seq_msg, ghost = peer.plan_round_trip(_plan(GOOD_POINTS, sec=50))
    assert seq_msg is not None, "no PointmapSequence for a good plan"
    assert seq_msg.source == PointmapSequence.SOURCE_PLAN and seq_msg.source_id == "k4d/planned_trajectory"
    seq = msg_to_pointmap_sequence(seq_msg)
    model = RobotModel.yam()
    assert seq.num_frames == NUM_FRAMES and seq.xyz.shape == (NUM_FRAMES, 64, 96, 3)
    np.testing.assert_allclose(seq.times, np.linspace(0.0, 2.0, NUM_FRAMES), atol=1e-9)  # spans the plan
    assert seq.stamp_ns == 50_000_000_000 and seq_msg.header.frame_id == FRAME and seq.base_frame == "base"
    assert seq.joint_names == model.joint_names and seq.link_names == model.link_names
    arm = np.stack([np.interp(seq.times, [0, 1, 2], [p[j] for _, p in GOOD_POINTS]) for j in range(6)], axis=1)
    np.testing.assert_allclose(seq.positions[:, :6], arm, atol=1e-12)  # linear resampling of the plan
    np.testing.assert_allclose(seq.positions[:, 6:], -0.01)  # absent joints: latest /joint_states
    cfg = PlanNodeConfig()
    ext = Extrinsics.from_xyz_quat(cfg.extrinsics_xyz, cfg.extrinsics_quat_xyzw, "base", FRAME)
    renderer = PointmapRenderer(model, CAMERA, ext)
    for k in (0, NUM_FRAMES - 1):
        pm = renderer.render(seq.positions[k])
        np.testing.assert_array_equal(seq.link[k], pm.link)
        np.testing.assert_allclose(seq.xyz[k], pm.xyz, atol=1e-6)
    # ghost: delete the old one, then 3 translucent triangle lists in the base frame
    assert ghost is not None
    assert ghost.markers[0].action == Marker.DELETEALL
    poses = ghost.markers[1:]
    n_faces = sum(len(m.faces) for m in model.meshes)
    assert len(poses) == 3 and all(m.type == Marker.TRIANGLE_LIST and m.header.frame_id == "base" for m in poses)
    assert all(len(m.points) == 3 * n_faces and m.color.a == pytest.approx(0.3) for m in poses)


@pytest.mark.parametrize("plan, text", [
    (_plan([(0.0, [0.0] * 6), (1.0, [0.1] * 6), (0.5, [0.2] * 6)], sec=60), "strictly increasing"),
    (_plan([(0.0, [0.0, 0.1]), (1.0, [0.1, 0.2])], sec=61, names=["joint1", "wrist_9"]),
     "unknown joint name(s) ['wrist_9']"),
    (_plan([(0.0, [0.0] * 6), (1.0, [float("nan")] * 6)], sec=62), "is not finite"),
    (_plan([], sec=63), "no points"),
    (_plan([(0.0, [0.0] * 5)], sec=64), "5 positions for 6 joint_names"),
])
def test_bad_plans_are_reported_and_the_node_keeps_answering(graph, plan, text):
    proc, peer = graph
    since = len(peer.diag)
    assert peer.wait_error(text, since, resend=lambda: peer.pub_plan.publish(plan)), text
    assert proc.poll() is None
    seq_msg, _ = peer.plan_round_trip(_plan(GOOD_POINTS, sec=70 + plan.header.stamp.sec))
    assert seq_msg is not None and len(seq_msg.xyz) == NUM_FRAMES


def test_zero_focal_length_camera_is_reported(graph):
    proc, peer = graph
    bad = camera_to_camera_info(CAMERA)
    bad.k[0] = 0.0
    good = peer.out[peer.pub_info]
    peer.out[peer.pub_info] = bad
    since = len(peer.diag)
    assert peer.wait_error("k[0] (fx) is 0", since)
    assert peer.wait_error("no valid camera intrinsics", since, resend=lambda: peer.pub_plan.publish(
        _plan(GOOD_POINTS, sec=90)))
    peer.out[peer.pub_info] = good
    seq_msg, _ = peer.plan_round_trip(_plan(GOOD_POINTS, sec=91))
    assert seq_msg is not None and proc.poll() is None

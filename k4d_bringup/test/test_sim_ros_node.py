"""sim_node over real DDS: the node runs in its own process (as users start it), this test listens and commands.

Small camera (64x48) to keep the CPU low. Checks the driver-like topics (names, encodings, frames, rates),
that bad trajectories are rejected with a diagnostic while the arm holds its position, and that a good
trajectory and a gripper command are tracked.
"""
import math
import sys
import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
from builtin_interfaces.msg import Duration  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image, JointState  # noqa: E402
from std_msgs.msg import Float64  # noqa: E402
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint  # noqa: E402
from visualization_msgs.msg import MarkerArray  # noqa: E402

from k4d_bringup.testing import start_process, stop_process  # noqa: E402
from k4d_kinematics.ros.conversions import image_to_numpy, time_to_ns  # noqa: E402
from k4d_kinematics.ros.qos import RELIABLE_QOS, SENSOR_QOS  # noqa: E402

pytestmark = pytest.mark.ros

JOINTS = [f"joint{i}" for i in range(1, 9)]
ERROR = int.from_bytes(DiagnosticStatus.ERROR, "little") if isinstance(DiagnosticStatus.ERROR, bytes) \
    else DiagnosticStatus.ERROR


def _level(st) -> int:
    return int.from_bytes(st.level, "little") if isinstance(st.level, (bytes, bytearray)) else int(st.level)


class Peer:
    def __init__(self, node):
        self.node = node
        self.msgs = {k: [] for k in ("js", "rgb", "depth", "info", "dinfo", "objects", "diag")}
        for key, cls, topic, qos in (("js", JointState, "/joint_states", SENSOR_QOS),
                                     ("rgb", Image, "/camera/color/image_raw", SENSOR_QOS),
                                     ("depth", Image, "/camera/depth/image_rect_raw", SENSOR_QOS),
                                     ("info", CameraInfo, "/camera/color/camera_info", SENSOR_QOS),
                                     ("dinfo", CameraInfo, "/camera/depth/camera_info", SENSOR_QOS),
                                     ("objects", MarkerArray, "/k4d/sim/object_states", RELIABLE_QOS),
                                     ("diag", DiagnosticArray, "/diagnostics", 10)):
            node.create_subscription(cls, topic, self._keep(key), qos)
        self.pub_traj = node.create_publisher(JointTrajectory, "/arm_controller/joint_trajectory", RELIABLE_QOS)
        self.pub_grip = node.create_publisher(Float64, "/gripper_controller/command", RELIABLE_QOS)

    def _keep(self, key):
        def cb(msg):
            lst = self.msgs[key]
            lst.append(msg)
            if key == "js" and len(lst) > 3000:
                del lst[:1000]
        return cb

    def spin_until(self, predicate, timeout=20.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            rclpy.spin_once(self.node, timeout_sec=0.02)
            if predicate():
                return True
        return bool(predicate())

    def spin_for(self, seconds):
        self.spin_until(lambda: False, seconds)

    def q(self):
        return np.array(self.msgs["js"][-1].position)

    def sim_errors(self, since):
        return [st.message for arr in self.msgs["diag"][since:] for st in arr.status
                if st.name.startswith("k4d_sim: commands") and _level(st) == ERROR]


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sim_node")
    proc = start_process([sys.executable, "-m", "k4d_bringup.ros.sim_node", "--ros-args",
                          "-p", "camera_width:=64", "-p", "camera_height:=48", "-p", "camera_fy:=50.0",
                          "-p", "camera_rate_hz:=15.0", "-p", "object_state_rate_hz:=5.0",
                          "-p", f"extrinsics_out:={tmp / 'ext.yaml'}", "-p", f"camera_info_out:={tmp / 'cam.yaml'}"],
                         cwd=str(tmp))
    node = None
    try:
        rclpy.init()
        node = rclpy.create_node("k4d_test_sim_peer")
        peer = Peer(node)
        ok = peer.spin_until(lambda: len(peer.msgs["js"]) > 10 and peer.msgs["rgb"] and peer.msgs["depth"]
                             and peer.msgs["objects"], timeout=90.0)
        if not ok:
            pytest.fail("sim_node did not come up:\n" + stop_process(proc))
        peer.spin_until(lambda: peer.pub_traj.get_subscription_count() > 0 and
                        peer.pub_grip.get_subscription_count() > 0, 10.0)
        yield peer, tmp, proc
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
        out = stop_process(proc)
        print(out[-3000:])


def test_driver_topics(sim):
    peer, tmp, _proc = sim
    n0 = len(peer.msgs["js"])
    t0 = time.monotonic()
    peer.spin_for(2.0)
    rate = (len(peer.msgs["js"]) - n0) / (time.monotonic() - t0)
    assert rate > 100, f"joint_states at {rate:.0f} Hz (expected 250, at least 100 under test load)"
    js = peer.msgs["js"][-1]
    assert list(js.name) == JOINTS
    assert len(js.position) == len(js.velocity) == len(js.effort) == 8
    stamps = [time_to_ns(m.header.stamp) for m in peer.msgs["js"][-50:]]
    assert all(b > a for a, b in zip(stamps, stamps[1:])), "joint_states stamps must increase"
    assert abs(stamps[-1] * 1e-9 - time.time()) < 1.0, "stamps are wall-clock time of the sim instant"

    rgb, depth, info = peer.msgs["rgb"][-1], peer.msgs["depth"][-1], peer.msgs["info"][-1]
    for m in (rgb, depth, info, peer.msgs["dinfo"][-1]):
        assert m.header.frame_id == "camera_color_optical_frame"
    assert (rgb.encoding, rgb.width, rgb.height, rgb.step) == ("rgb8", 64, 48, 192)
    assert (depth.encoding, depth.width, depth.height, depth.step) == ("32FC1", 64, 48, 256)
    d = image_to_numpy(depth)
    assert np.isfinite(d).any() and np.nanmin(d) > 0.05 and np.nanmax(d) < 5.0, "depth in metres"
    assert image_to_numpy(rgb).std() > 1.0, "a real image, not a blank one"
    assert (info.width, info.height) == (64, 48)
    assert np.allclose(info.k, [50.0, 0, 31.5, 0, 50.0, 23.5, 0, 0, 1])

    objects = peer.msgs["objects"][-1].markers
    assert {m.ns for m in objects} >= {"target", "zone"}
    assert all(m.header.frame_id == "base" for m in objects)

    from k4d_kinematics.camera import Extrinsics, PinholeCamera

    ext = Extrinsics.from_yaml(tmp / "ext.yaml")
    assert (ext.parent_frame, ext.child_frame) == ("base", "camera_color_optical_frame")
    cam = PinholeCamera.from_yaml(tmp / "cam.yaml")
    assert (cam.width, cam.height, cam.fx) == (64, 48, 50.0)


def _traj(names, times, positions):
    msg = JointTrajectory(joint_names=list(names))
    for t, p in zip(times, positions):
        sec = int(math.floor(t))
        msg.points.append(JointTrajectoryPoint(positions=[float(v) for v in p],
                                               time_from_start=Duration(sec=sec, nanosec=int(round((t - sec) * 1e9)))))
    return msg


@pytest.mark.parametrize("case, expect", [
    ("unknown joint", "unknown joint"),
    ("nan", "not finite"),
    ("outside limits", "outside its limits"),
    ("backwards time", "increasing"),
])
def test_bad_trajectory_rejected_and_arm_holds(sim, case, expect):
    peer, _tmp, _proc = sim
    peer.spin_for(0.3)
    q0 = peer.q()
    names = ["joint1", "joint2"]
    good = [q0[0] + 0.4, q0[1]]
    if case == "unknown joint":
        msg = _traj(["joint1", "elbow_of_another_robot"], [0.5, 1.0], [good, good])
    elif case == "nan":
        msg = _traj(names, [0.5, 1.0], [good, [float("nan"), q0[1]]])
    elif case == "outside limits":
        msg = _traj(names, [0.5, 1.0], [good, [q0[0] + 40.0, q0[1]]])
    else:
        msg = _traj(names, [1.0, 0.5], [good, good])
    since = len(peer.msgs["diag"])
    peer.pub_traj.publish(msg)
    assert peer.spin_until(lambda: any(expect in m for m in peer.sim_errors(since)), 8.0), \
        f"no /diagnostics error mentioning {expect!r}"
    peer.spin_for(0.5)
    assert np.abs(peer.q()[:6] - q0[:6]).max() < 2e-3, "the arm must hold its position"


def test_good_trajectory_and_gripper_tracked(sim):
    peer, _tmp, _proc = sim
    peer.spin_for(0.3)
    q0 = peer.q()
    goal = q0[0] + 0.3
    peer.pub_traj.publish(_traj(["joint1"], [0.5, 1.0], [[q0[0] + 0.15], [goal]]))
    assert peer.spin_until(lambda: abs(peer.q()[0] - goal) < 0.02, 10.0), \
        f"joint1 at {peer.q()[0]:.3f}, expected {goal:.3f}"
    assert np.abs(peer.q()[1:6] - q0[1:6]).max() < 0.02, "other joints keep their position"
    peer.pub_grip.publish(Float64(data=0.03))
    assert peer.spin_until(lambda: abs(-(peer.q()[6] + peer.q()[7]) - 0.03) < 0.004, 10.0), \
        f"gripper width {-(peer.q()[6] + peer.q()[7]):.4f}, expected 0.03"
    since = len(peer.msgs["diag"])
    peer.pub_grip.publish(Float64(data=0.5))  # wider than the gripper opens
    assert peer.spin_until(lambda: any("gripper" in m for m in peer.sim_errors(since)), 8.0)

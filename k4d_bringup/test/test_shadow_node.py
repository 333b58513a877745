"""shadow_node over real DDS, fake-free: the shadow node and the real imagine_node (tiny random model, CPU) each in
their own process; this test plays the robot (a synthetic 48 x 32 RGB-D camera of the YAM following the chunks it
sends, k4d_bringup.shadow.synthetic) and the episode/policy side.

Checks: the node never publishes on actuator topics (graph inspection + the runtime guard); a chunk is evaluated
end to end, its goal carrying the chunk-start depth that the server decodes (initial_depth); killing the
world-model node (SIGKILL) mid-episode fails the in-flight and the queued chunk and the episode
(STATUS_FAILED_TO_EVALUATE) while the earlier episode stays OK in the log, and evaluation recovers once
the node is back. Fast DDS gets a 2 s participant lease here so that the killed node leaves the graph quickly.
"""
import fnmatch
import os
import signal
import sys
import threading
import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
pytest.importorskip("torch")
from k4d_msgs.action import Imagine  # noqa: E402
from k4d_msgs.msg import ShadowEvalResult  # noqa: E402
from rclpy.action import ActionClient  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image, JointState  # noqa: E402
from std_msgs.msg import String  # noqa: E402
from trajectory_msgs.msg import JointTrajectory  # noqa: E402

from k4d_bringup.shadow.config import DEFAULT_ACTUATOR_TOPICS  # noqa: E402
from k4d_bringup.shadow.log import read_log  # noqa: E402
from k4d_bringup.shadow.synthetic import SyntheticScene  # noqa: E402
from k4d_bringup.testing import start_process, stop_process  # noqa: E402
from k4d_kinematics.ros.conversions import (camera_to_camera_info, data_to_joint_trajectory,  # noqa: E402
                                            numpy_to_image, time_from_ns)
from k4d_kinematics.ros.qos import RELIABLE_QOS, SENSOR_QOS  # noqa: E402
from k4d_kinematics.sequence import JointTrajectoryData  # noqa: E402

pytestmark = pytest.mark.ros

ARM = [f"joint{i}" for i in range(1, 7)]
SHADOW = "k4d_shadow_test"
IMAGINE = "k4d_imagine_shadowtest"
SHORT_LEASE = """<?xml version="1.0" encoding="UTF-8"?>
<dds xmlns="http://www.eprosima.com"><profiles>
  <participant profile_name="short_lease" is_default_profile="true"><rtps><builtin><discovery_config>
    <leaseDuration><sec>2</sec></leaseDuration>
    <leaseAnnouncement><sec>0</sec><nanosec>400000000</nanosec></leaseAnnouncement>
  </discovery_config></builtin></rtps></participant>
</profiles></dds>
"""
# The imagine node with a slowed transformer forward, so a rollout lasts long enough to kill the node during it,
# and the goals' initial_depth as the server decodes it saved to $K4D_TEST_DEPTH_DIR (the real function runs).
IMAGINE_CODE = """
import os, sys, time
import numpy as np
from k4d_worldmodel.models.transformer_k4d import K4DTransformer3DModel
_forward = K4DTransformer3DModel.forward
def _slow_forward(self, *args, **kwargs):
    time.sleep(0.5)
    return _forward(self, *args, **kwargs)
K4DTransformer3DModel.forward = _slow_forward
from k4d_worldmodel.ros import imagine_node
_depth_for_image = imagine_node.depth_for_image
def _saving_depth_for_image(msg, image_shape, field):
    depth = _depth_for_image(msg, image_shape, field)
    if field == "initial_depth":
        np.savez(os.path.join(os.environ["K4D_TEST_DEPTH_DIR"], f"goal_{time.time_ns()}.npz"), encoding=msg.encoding,
                 depth=np.zeros((0, 0), np.float32) if depth is None else depth)
    return depth
imagine_node.depth_for_image = _saving_depth_for_image
sys.exit(imagine_node.main(sys.argv))
"""


class Robot:
    """The test's side of the graph: a synthetic RGB-D camera + joint states of a YAM that follows our chunks."""

    def __init__(self, node, scene: SyntheticScene):
        self.node, self.scene = node, scene
        self.q = scene.home_q()
        self.motion = None  # (t0, q_from, q_to, duration)
        self.results: list = []
        self.lock = threading.RLock()
        self.pub_js = node.create_publisher(JointState, "/joint_states", SENSOR_QOS)
        self.pub_img = node.create_publisher(Image, "/camera/color/image_raw", SENSOR_QOS)
        self.pub_depth = node.create_publisher(Image, "/camera/depth/image_rect_raw", SENSOR_QOS)
        self.pub_info = node.create_publisher(CameraInfo, "/camera/color/camera_info", SENSOR_QOS)
        self.pub_chunk = node.create_publisher(JointTrajectory, "/arm_controller/joint_trajectory", RELIABLE_QOS)
        self.pub_cand = node.create_publisher(JointTrajectory, "/policy_b/joint_trajectory", RELIABLE_QOS)
        self.pub_ep = node.create_publisher(String, "/k4d/episode", RELIABLE_QOS)
        node.create_subscription(ShadowEvalResult, "/k4d/shadow/result", self._on_result, RELIABLE_QOS)
        node.create_timer(0.1, self._tick)

    def _on_result(self, msg):
        with self.lock:
            self.results.append(msg)

    def _tick(self):
        now = time.time_ns()
        with self.lock:
            if self.motion is not None:
                t0, a, b, dur = self.motion
                s = min((now - t0) * 1e-9 / dur, 1.0)
                self.q = a + (b - a) * s
                if s >= 1.0:
                    self.motion = None
            q = self.q.copy()
        rgb, depth = self.scene.render(q)
        stamp = time_from_ns(now)
        js = JointState(name=list(self.scene.model.joint_names), position=[float(x) for x in q])
        js.header.stamp = stamp
        self.pub_js.publish(js)
        info = camera_to_camera_info(self.scene.camera)
        info.header.stamp = stamp
        self.pub_info.publish(info)
        d = numpy_to_image(np.nan_to_num(depth, nan=0.0).astype(np.float32), "32FC1")
        d.header.stamp, d.header.frame_id = stamp, self.scene.camera.frame_id
        self.pub_depth.publish(d)
        img = numpy_to_image(rgb, "rgb8")
        img.header.stamp, img.header.frame_id = stamp, self.scene.camera.frame_id
        self.pub_img.publish(img)

    def send_chunk(self, dq: float, duration: float = 0.8):
        """The live policy's chunk: joint1 moves by dq (absolute positions); the robot executes it."""
        with self.lock:
            a = self.q.copy()
            b = a.copy()
            b[0] += dq
            self.motion = (time.time_ns(), a, b, duration)
        t = duration * np.arange(1, 9) / 8
        Q = a[:6][None] + np.outer(t / duration, b[:6] - a[:6])
        self.pub_chunk.publish(data_to_joint_trajectory(JointTrajectoryData(ARM, t, Q)))

    def episode(self, text: str):
        self.pub_ep.publish(String(data=text))

    def find(self, pred):
        with self.lock:
            return [r for r in self.results if pred(r)]


def wait_for(pred, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return bool(pred())


@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    from k4d_worldmodel.tiny import build_tiny_pipeline

    tmp = tmp_path_factory.mktemp("shadow_node")
    model_dir = tmp / "tiny_model"
    build_tiny_pipeline("pmcond", seed=0).save_pretrained(model_dir)
    scene = SyntheticScene.default(48, 32)
    ext = tmp / "extrinsics.yaml"
    scene.extrinsics.to_yaml(ext)
    profile = tmp / "fastdds_short_lease.xml"
    profile.write_text(SHORT_LEASE)
    depth_dir = tmp / "goal_depths"
    depth_dir.mkdir()
    env = {"FASTDDS_DEFAULT_PROFILES_FILE": str(profile), "PYTHONUNBUFFERED": "1", "K4D_TEST_DEPTH_DIR": str(depth_dir)}
    cwd = str(tmp)  # not the repository root: its package folders would shadow the packages
    imagine_args = [sys.executable, "-c", IMAGINE_CODE, "--ros-args", "-r", f"__node:={IMAGINE}",
                    "-p", f"checkpoint_dir:={model_dir}", "-p", "device:=cpu", "-p", "autostart:=true",
                    "-p", "num_inference_steps:=3", "-p", "guidance_scale:=1.0", "-p", "preview:=false",
                    "-p", "camera_info_topic:=/camera/color/camera_info"]
    from k4d_bringup.sim_cli import config_path

    log = tmp / "shadow" / "log.jsonl"
    shadow_args = [sys.executable, "-m", "k4d_bringup.ros.shadow_node", "--ros-args", "-r", f"__node:={SHADOW}",
                   "--params-file", str(config_path("k4d_bringup", "shadow_node.yaml")),
                   "-p", "num_frames:=9", "-p", "depth_topic:=/camera/depth/image_rect_raw",
                   "-p", "extrinsics_source:=file", "-p", f"extrinsics_file:={ext}", "-p", f"log_path:={log}",
                   "-p", "server_wait_s:=1.5", "-p", "settle_s:=0.1", "-p", "scenario:=synthetic",
                   "-p", "policy:=scripted", "-p", "candidate_topic:=/policy_b/joint_trajectory"]
    procs = {"imagine": start_process(imagine_args, env=env, cwd=cwd),
             "shadow": start_process(shadow_args, env=env, cwd=cwd)}
    rclpy.init()
    node = rclpy.create_node("shadow_test_robot")
    robot = Robot(node, scene)
    client = ActionClient(node, Imagine, "/k4d/imagine")
    ex = SingleThreadedExecutor()
    ex.add_node(node)
    th = threading.Thread(target=ex.spin, daemon=True)
    th.start()
    outputs = {}
    try:
        assert wait_for(lambda: client.server_is_ready() or procs["imagine"].poll() is not None, 120), "no imagine"
        assert procs["imagine"].poll() is None, stop_process(procs["imagine"])
        assert wait_for(lambda: SHADOW in node.get_node_names() or procs["shadow"].poll() is not None, 60)
        assert procs["shadow"].poll() is None, stop_process(procs["shadow"])
        yield {"node": node, "robot": robot, "client": client, "procs": procs, "args": imagine_args, "env": env,
               "cwd": cwd, "log": log, "outputs": outputs, "depth_dir": depth_dir, "scene": scene}
    finally:
        ex.shutdown(timeout_sec=2.0)
        th.join(timeout=5.0)
        for name, p in procs.items():
            outputs[name] = stop_process(p)
        node.destroy_node()
        rclpy.try_shutdown()
        for name, out in outputs.items():
            print(f"---- {name} ----\n{out[-3000:]}")


def _actuator(topic: str, extra=("/arm_controller/joint_trajectory", "/policy_b/joint_trajectory")) -> bool:
    return any(fnmatch.fnmatchcase(topic, p) for p in list(DEFAULT_ACTUATOR_TOPICS) + list(extra))


def _assert_no_actuator_publishers(node):
    pubs = node.get_publisher_names_and_types_by_node(SHADOW, "/")
    topics = [t for t, _ in pubs]
    assert "/k4d/shadow/result" in topics, topics
    assert not [t for t in topics if _actuator(t)], topics
    for t in ("/arm_controller/joint_trajectory", "/policy_b/joint_trajectory"):
        assert SHADOW not in [i.node_name for i in node.get_publishers_info_by_topic(t)]
        assert SHADOW in [i.node_name for i in node.get_subscriptions_info_by_topic(t)]  # it listens, only


def test_shadow_node_evaluates_chunks_and_survives_world_model_crash(graph):
    node, robot, procs = graph["node"], graph["robot"], graph["procs"]
    assert wait_for(lambda: len(node.get_publisher_names_and_types_by_node(SHADOW, "/")) > 0, 20)
    _assert_no_actuator_publishers(node)
    time.sleep(1.0)  # the shadow node has camera frames and sees the server

    # 1. Episode 1: one chunk evaluated end to end through the real imagine node.
    robot.episode("start pick_box")
    time.sleep(0.3)
    robot.send_chunk(0.15)
    assert wait_for(lambda: robot.find(lambda r: r.chunk_index == 0), 90), "no chunk result"
    ok = robot.find(lambda r: r.chunk_index == 0)[0]
    assert ok.status == ShadowEvalResult.STATUS_OK, ok.status_message
    assert ok.mode == ShadowEvalResult.MODE_LIVE and ok.scenario == "synthetic" and ok.policy == "scripted"
    assert 0 < ok.psnr_db < 100 and -1 <= ok.ssim <= 1 and ok.imagine_latency_s > 0
    # The goal carried the depth of the chunk's start frame (robot at rest at home): 32FC1, decoded by the server
    # into the scene's depth (NaN where the camera saw nothing).
    (sent,) = [np.load(p) for p in sorted(graph["depth_dir"].iterdir())]
    want = graph["scene"].render(graph["scene"].home_q())[1]
    assert str(sent["encoding"]) == "32FC1" and sent["depth"].shape == want.shape
    assert np.isclose(sent["depth"], want, atol=1e-5, equal_nan=True).mean() > 0.95
    robot.episode("end success")
    assert wait_for(lambda: robot.find(lambda r: r.chunk_index == -1), 20)
    ep1 = robot.find(lambda r: r.chunk_index == -1)[0]
    assert ep1.status == ShadowEvalResult.STATUS_OK and ep1.has_actual and ep1.actual_success

    # 2. Episode 2: the world-model node is killed while imagining chunk 0; chunk 1 arrives while it is gone.
    robot.episode("start pick_box")
    time.sleep(0.3)
    robot.send_chunk(-0.1)
    time.sleep(0.4)
    procs["imagine"].send_signal(signal.SIGKILL)
    procs["imagine"].wait(10)
    time.sleep(0.6)
    robot.send_chunk(-0.1)
    assert wait_for(lambda: len(robot.find(lambda r: r.episode_id != ep1.episode_id and r.chunk_index >= 0)) >= 2,
                    30), "the chunks of the crashed episode were not reported"
    failed = robot.find(lambda r: r.episode_id != ep1.episode_id and r.chunk_index >= 0)
    assert [r.status for r in failed] == [ShadowEvalResult.STATUS_FAILED_TO_EVALUATE] * 2, \
        [(r.status, r.status_message) for r in failed]
    assert "disappeared" in failed[0].status_message or "not available" in failed[0].status_message
    ep2_id = failed[0].episode_id
    robot.episode("end failure")
    assert wait_for(lambda: robot.find(lambda r: r.chunk_index == -1 and r.episode_id == ep2_id), 20)
    ep2 = robot.find(lambda r: r.chunk_index == -1 and r.episode_id == ep2_id)[0]
    assert ep2.status == ShadowEvalResult.STATUS_FAILED_TO_EVALUATE and ep2.has_actual and not ep2.actual_success

    # 3. The world model comes back: the next episode is evaluated again.
    procs["imagine"] = start_process(graph["args"], env=graph["env"], cwd=graph["cwd"])
    assert wait_for(lambda: graph["client"].server_is_ready(), 120), "imagine node did not come back"
    time.sleep(1.5)
    robot.episode("start pick_box")
    time.sleep(0.3)
    robot.send_chunk(0.1)
    done = lambda: robot.find(lambda r: r.episode_id not in (ep1.episode_id, ep2.episode_id))  # noqa: E731
    assert wait_for(lambda: any(r.chunk_index == 0 for r in done()), 90), "no result after recovery"
    r3 = [r for r in done() if r.chunk_index == 0][0]
    assert r3.status == ShadowEvalResult.STATUS_OK, r3.status_message
    robot.episode("end success")
    assert wait_for(lambda: any(r.chunk_index == -1 for r in done()), 20)

    # 4. The durable log has everything, in order, the finished episode 1 intact.
    _assert_no_actuator_publishers(node)
    recs = read_log(graph["log"])
    eps = [r for r in recs if r["kind"] == "episode" and r["mode"] == "live"]
    assert [e["status"] for e in eps] == ["ok", "failed_to_evaluate", "ok"]
    assert eps[0]["episode_id"] == ep1.episode_id and eps[0]["actual_success"]
    assert sum(r["kind"] == "chunk" and r["status"] == "failed_to_evaluate" for r in recs) == 2


def test_shadow_node_holds_a_chunk_while_the_world_model_is_inactive(graph):
    """A chunk that reaches the imagine node while it is not active (deactivated here through its lifecycle, as
    while it loads its model) is sent again until the node is active, then evaluated: it does not fail, although
    it waits longer than server_wait_s (1.5 s here), the wait for an absent server."""
    from lifecycle_msgs.msg import Transition
    from lifecycle_msgs.srv import ChangeState

    node, robot = graph["node"], graph["robot"]
    change = node.create_client(ChangeState, f"/{IMAGINE}/change_state")
    assert change.wait_for_service(timeout_sec=60.0)

    def transition(tid):
        fut = change.call_async(ChangeState.Request(transition=Transition(id=tid)))
        assert wait_for(fut.done, 60.0) and fut.result().success

    assert wait_for(lambda: graph["client"].server_is_ready(), 60)
    with robot.lock:
        before = len(robot.results)
    new = lambda: [r for r in robot.results[before:]]  # noqa: E731
    transition(Transition.TRANSITION_DEACTIVATE)
    robot.episode("start pick_box")
    time.sleep(0.3)
    robot.send_chunk(0.1)
    time.sleep(3.0)  # the node answered "not active" (more than once): no result yet
    assert not [r for r in new() if r.chunk_index >= 0], [(r.status, r.status_message) for r in new()]
    transition(Transition.TRANSITION_ACTIVATE)
    assert wait_for(lambda: any(r.chunk_index == 0 for r in new()), 90), "the held chunk was not evaluated"
    r = [r for r in new() if r.chunk_index == 0][0]
    assert r.status == ShadowEvalResult.STATUS_OK, r.status_message
    robot.episode("end success")
    assert wait_for(lambda: any(r.chunk_index == -1 for r in new()), 20)


def test_runtime_guard_refuses_actuator_publishers(tmp_path):
    from rclpy.parameter import Parameter

    from k4d_bringup.ros.shadow_node import ShadowNode

    ctx = rclpy.context.Context()
    rclpy.init(context=ctx)
    try:
        node = ShadowNode("k4d_shadow_guard", context=ctx, parameter_overrides=[
            Parameter("log_path", value=str(tmp_path / "log.jsonl")),
            Parameter("candidate_topic", value="/policy_b/joint_trajectory")])
        for topic in ("/arm_controller/joint_trajectory", "/gripper_controller/command", "/policy_b/joint_trajectory",
                      "/arm_controller/follow_joint_trajectory"):
            with pytest.raises(ValueError, match="refusing to publish"):
                node.create_publisher(JointTrajectory, topic, 10)
        assert node.create_publisher(String, "/k4d/shadow/notes", 10) is not None
        node.destroy_node()
        # A configuration that would publish results on an actuator topic does not start.
        with pytest.raises(ValueError, match="refusing to publish"):
            ShadowNode("k4d_shadow_guard2", context=ctx, parameter_overrides=[
                Parameter("log_path", value=str(tmp_path / "log2.jsonl")),
                Parameter("result_topic", value="/arm_controller/joint_trajectory")])
    finally:
        rclpy.try_shutdown(context=ctx)


def test_shadow_node_declares_the_standing_check_parameters(tmp_path):
    """success_top_min_height_m / success_top_min_points: declared with descriptions from the shipped parameter
    file (off by default), set from overrides, and validated like the others (a bad value is refused)."""
    from k4d_bringup.ros.shadow_node import ShadowNode
    from k4d_bringup.sim_cli import config_path

    ctx = rclpy.context.Context()
    rclpy.init(context=ctx, args=["--ros-args", "--params-file", str(config_path("k4d_bringup", "shadow_node.yaml"))])
    try:
        node = ShadowNode("k4d_shadow_params", context=ctx, parameter_overrides=[
            Parameter("log_path", value=str(tmp_path / "log.jsonl"))])
        assert node.get_parameter("success_top_min_height_m").value == 0.0
        assert node.get_parameter("success_top_min_points").value == 1
        assert node.cfg.success_top_min_height_m == 0.0  # off: the box alone
        descs = {d.name: d for d in node.describe_parameters(["success_top_min_height_m", "success_top_min_points"])}
        assert "Standing check" in descs["success_top_min_height_m"].description
        assert "slab" in descs["success_top_min_points"].description
        assert not any(d.read_only for d in descs.values())
        res = node.set_parameters([Parameter("success_top_min_points", value=0)])[0]
        assert not res.successful and "success_top_min_points" in res.reason
        node.destroy_node()
        region = [Parameter("success_predicate", value="region"),
                  Parameter("success_region_min", value=[0.2, -0.1, 0.006]),
                  Parameter("success_region_max", value=[0.4, 0.1, 0.065])]
        node = ShadowNode("k4d_shadow_params2", context=ctx, parameter_overrides=[
            Parameter("log_path", value=str(tmp_path / "log2.jsonl")), *region,
            Parameter("success_top_min_height_m", value=0.041), Parameter("success_top_min_points", value=4)])
        assert (node.cfg.success_top_min_height_m, node.cfg.success_top_min_points) == (0.041, 4)
        node.destroy_node()
        with pytest.raises(ValueError, match="success_top_min_height_m must lie inside"):
            ShadowNode("k4d_shadow_params3", context=ctx, parameter_overrides=[
                Parameter("log_path", value=str(tmp_path / "log3.jsonl")), *region,
                Parameter("success_top_min_height_m", value=0.09)])
    finally:
        rclpy.try_shutdown(context=ctx)


def _start_frame(scene, stamp_ns: int = 1_700_000_000_000_000_000):
    """A chunk of the synthetic YAM from home, its conditioning sequence and its start frame (rgb, depth with holes)."""
    from k4d_bringup.shadow.session import Kinematics

    q = scene.home_q()
    kin = Kinematics(scene.model, scene.camera, scene.extrinsics)
    t = np.linspace(0.1, 0.8, 8)
    full = kin.full_trajectory(JointTrajectoryData(ARM, t, q[:6][None] + np.outer(t, [0.2, 0, 0, 0, 0, 0])), q)
    rgb, depth = scene.render(q)
    depth[0, :5], depth[1, :5] = 0.0, np.nan  # holes as 16UC1 (0) and 32FC1 (NaN) drivers write them
    return full, kin.sequence(full, 5, stamp_ns), rgb, depth


def test_build_goal_sends_the_initial_depth_as_32fc1_metres():
    from k4d_bringup.ros.shadow_node import build_goal
    from k4d_bringup.shadow.config import ShadowConfig
    from k4d_bringup.shadow.imaginers import DepthGate
    from k4d_kinematics.ros.conversions import image_to_numpy
    from k4d_worldmodel.ros.imagine_node import depth_for_image

    _full, seq, rgb, depth = _start_frame(SyntheticScene.default(48, 32))
    cfg = ShadowConfig(num_frames=5)
    warnings = []
    gate = DepthGate(cfg.send_initial_depth, warnings.append)
    goal = build_goal(cfg, rgb, seq, None, gate(rgb, depth))
    d = goal.initial_depth
    assert (d.encoding, d.width, d.height) == ("32FC1", 48, 32) and d.header == goal.initial_image.header
    want = np.where(depth > 0, depth, np.nan).astype(np.float32)  # NaN and 0 = unknown -> NaN on the wire
    np.testing.assert_array_equal(image_to_numpy(d), want)  # NaN where NaN, every metre value bit-exact
    np.testing.assert_array_equal(depth_for_image(d, rgb.shape, "initial_depth"), want)  # the server's reading
    # A depth of another size (not registered to the colour image) is never sent: counted, warned once (throttled).
    assert gate(rgb, depth[:16, :24]) is None and gate(rgb, depth[:, :40]) is None
    assert gate.skipped == 2 and len(warnings) == 1 and "register the depth" in warnings[0]
    with pytest.raises(ValueError, match="differs"):
        build_goal(cfg, rgb, seq, None, depth[:16, :24])
    # Flag off, or no depth: the goal goes without (width 0 = none for the server).
    assert DepthGate(False, warnings.append)(rgb, depth) is None and gate(rgb, None) is None
    assert build_goal(cfg, rgb, seq).initial_depth.width == 0


def test_shadow_node_sends_the_start_depth_when_enabled_and_registered(tmp_path):
    """ShadowNode._send against an in-process Imagine server that records the goals it gets (and rejects them)."""
    from rclpy.action import ActionServer, GoalResponse

    from k4d_bringup.ros.shadow_node import ShadowNode
    from k4d_bringup.shadow.session import ChunkRecord, Frame
    from k4d_bringup.testing import spin_until
    from k4d_kinematics.ros.conversions import image_to_numpy

    full, seq, rgb, depth = _start_frame(SyntheticScene.default(48, 32))
    ctx = rclpy.context.Context()
    rclpy.init(context=ctx)
    ns = f"/shadow_depth_test_{os.getpid()}"  # topics of its own: the graph test's processes may still run
    try:
        goals = []
        server = rclpy.create_node("imagine_recorder", context=ctx)
        ActionServer(server, Imagine, f"{ns}/imagine_action", execute_callback=lambda h: Imagine.Result(),
                     goal_callback=lambda g: goals.append(g) or GoalResponse.REJECT)
        ex = SingleThreadedExecutor(context=ctx)
        ex.add_node(server)
        topics = {k: f"{ns}/{k}" for k in ("imagine_action", "chunk_topic", "joint_states_topic", "image_topic",
                                           "camera_info_topic", "episode_topic", "result_topic")}

        def node(send: bool):
            n = ShadowNode(f"k4d_shadow_depth_{send}", context=ctx, parameter_overrides=[
                Parameter("log_path", value=str(tmp_path / f"log_{send}.jsonl")),
                Parameter("send_initial_depth", value=send)] + [Parameter(k, value=v) for k, v in topics.items()])
            ex.add_node(n)
            assert spin_until(n, n.client.server_is_ready, 10, ex)
            return n

        def sent(n, d):
            k = len(goals)
            rec = ChunkRecord("e", k, "live", "p", "s", full, 0, 1, 0, np.zeros(5), np.zeros(1, np.int64),
                              [Frame(0, rgb, d)], np.zeros(1), "imagining", seq)
            n._send(rec)
            assert spin_until(n, lambda: len(goals) > k and n._goal is None, 10, ex)  # arrived, rejected
            return goals[-1].initial_depth

        on, off = node(True), node(False)
        got = sent(on, depth)
        assert got.encoding == "32FC1" and np.isclose(image_to_numpy(got), depth, equal_nan=True)[depth > 0].all()
        assert sent(on, depth[:16, :24]).width == 0 and on.depth_gate.skipped == 1  # other size: not sent, counted
        on._update_diag()
        assert on.diag.extra["initial_depth_skipped"] == "1"
        assert sent(off, depth).width == 0 and sent(on, None).width == 0
        ex.shutdown()
        for n in (on, off, server):
            n.destroy_node()
    finally:
        rclpy.try_shutdown(context=ctx)


def test_overlay_node_draws_the_robot_mask(tmp_path):
    from k4d_bringup.ros.overlay_node import OverlayNode
    from k4d_kinematics.ros.conversions import image_to_numpy

    ctx = rclpy.context.Context()
    rclpy.init(context=ctx)
    try:
        # topics of its own: other tests' nodes may still publish camera images and masks in this ROS domain
        ns = f"/overlay_test_{os.getpid()}"
        overlay = OverlayNode("k4d_overlay_test", context=ctx, parameter_overrides=[
            Parameter("image_topic", value=f"{ns}/image"), Parameter("mask_topic", value=f"{ns}/mask"),
            Parameter("overlay_topic", value=f"{ns}/overlay")])
        peer = rclpy.create_node("overlay_peer", context=ctx)
        got = []
        peer.create_subscription(Image, f"{ns}/overlay", got.append, SENSOR_QOS)
        pub_img = peer.create_publisher(Image, f"{ns}/image", SENSOR_QOS)
        pub_mask = peer.create_publisher(Image, f"{ns}/mask", SENSOR_QOS)
        ex = SingleThreadedExecutor(context=ctx)
        ex.add_node(overlay)
        ex.add_node(peer)
        rgb = np.full((32, 48, 3), 100, np.uint8)
        mask = np.zeros((32, 48), np.uint8)
        mask[8:24, 10:30] = 255
        stamp = time_from_ns(time.time_ns())
        deadline = time.monotonic() + 15
        while not got and time.monotonic() < deadline:
            m = numpy_to_image(mask, "mono8")
            m.header.stamp = stamp
            pub_mask.publish(m)
            i = numpy_to_image(rgb, "rgb8")
            i.header.stamp = stamp
            pub_img.publish(i)
            for _ in range(5):
                ex.spin_once(timeout_sec=0.05)
        assert got, "no /k4d/overlay image"
        out = image_to_numpy(got[-1])
        assert out.shape == (32, 48, 3) and got[-1].encoding == "rgb8"
        assert (out[16, 20] != rgb[16, 20]).any()       # robot pixels tinted
        assert (out[2, 2] == rgb[2, 2]).all()           # background untouched
        assert (out[8, 15] == 255).all()                # white outline
        ex.shutdown()
        overlay.destroy_node()
        peer.destroy_node()
    finally:
        rclpy.try_shutdown(context=ctx)

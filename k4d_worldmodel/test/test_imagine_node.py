"""imagine_node over real DDS: the node in its own process with a tiny saved model, an ActionClient here.

The node process wraps the transformer forward with a short sleep so that a rollout of a few hundred steps
lasts long enough to cancel it or fill the queue. The out-of-memory test runs node and client in this process.
"""
import re
import sys
import threading
import time

import numpy as np
import pytest
import rclpy
import torch
from action_msgs.msg import GoalStatus
from k4d_msgs.action import Imagine
from k4d_msgs.msg import ImaginedRollout, PointmapSequence
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState, GetState
from rclpy.action import ActionClient
from rclpy.executors import MultiThreadedExecutor
from rclpy.parameter import Parameter
from sensor_msgs.msg import CameraInfo, Image
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from k4d_bringup.testing import start_process, stop_process
from k4d_kinematics.ros.conversions import duration_from_seconds, numpy_to_image, pointmap_sequence_to_msg
from k4d_kinematics.ros.qos import RELIABLE_QOS
from k4d_worldmodel.engine import sequence_from_arrays
from k4d_worldmodel.tiny import tiny_inputs

pytestmark = pytest.mark.ros

R = Imagine.Result
NODE = "k4d_imagine_test"
FORWARD_DELAY_S = 0.02
NODE_CODE = f"""
import sys, time
from k4d_worldmodel.models.transformer_k4d import K4DTransformer3DModel
_forward = K4DTransformer3DModel.forward
def _slow_forward(self, *args, **kwargs):
    time.sleep({FORWARD_DELAY_S})
    return _forward(self, *args, **kwargs)
K4DTransformer3DModel.forward = _slow_forward
from k4d_worldmodel.ros.imagine_node import main
sys.exit(main(sys.argv))
"""


@pytest.fixture(scope="module")
def inputs(pmcond_pipe):
    inp = tiny_inputs(pmcond_pipe)
    seq = sequence_from_arrays(inp["robot_xyz"], inp["robot_link"], K=np.array([[40, 0, 23.5], [0, 40, 15.5], [0, 0, 1]]))
    seq.stamp_ns = 1_000_000_000
    return inp["image"], pointmap_sequence_to_msg(seq)


class Graph:
    """The test's client node, spun by a background executor."""

    def __init__(self, name: str):
        from diagnostic_msgs.msg import DiagnosticArray

        self.node = rclpy.create_node(name)
        self.client = ActionClient(self.node, Imagine, "/k4d/imagine")
        self.rollouts, self.rgb, self.diag = [], [], []
        self.node.create_subscription(ImaginedRollout, "/k4d/imagined/rollout", self.rollouts.append, RELIABLE_QOS)
        self.node.create_subscription(Image, "/k4d/imagined/rgb", self.rgb.append, 20)  # all 9 frames
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self.diag.append, 10)
        self.pub_image = self.node.create_publisher(Image, "/test/image", RELIABLE_QOS)
        self.pub_plan = self.node.create_publisher(PointmapSequence, "/k4d/plan_pointmaps", RELIABLE_QOS)
        self.executor = MultiThreadedExecutor(num_threads=2)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def close(self):
        self.executor.shutdown(timeout_sec=2.0)
        self.thread.join(timeout=5.0)
        self.node.destroy_node()


def wait_for(predicate, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def make_goal(image, seq_msg, steps=3, seed=7, encoding="rgb8", depth=None):
    goal = Imagine.Goal()
    img = image if encoding == "rgb8" else image[..., 0]
    goal.initial_image = numpy_to_image(np.ascontiguousarray(img), encoding)
    if depth is not None:
        enc = {np.dtype(np.float32): "32FC1", np.dtype(np.uint16): "16UC1"}.get(depth.dtype, "rgb8")
        goal.initial_depth = numpy_to_image(np.ascontiguousarray(depth), enc)
    goal.condition_type = Imagine.Goal.CONDITION_POINTMAPS
    goal.pointmaps = seq_msg
    goal.sampling.num_inference_steps = steps
    goal.sampling.guidance_scale = 1.0
    goal.sampling.seed = seed
    return goal


class Sent:
    """One goal in flight: its handle, feedback and result."""

    def __init__(self, client, goal):
        self.feedback = []
        fut = client.send_goal_async(goal, feedback_callback=lambda m: self.feedback.append(m.feedback))
        assert wait_for(fut.done, 10.0), "no goal response"
        self.handle = fut.result()
        assert self.handle.accepted, "every goal is accepted (refusals are aborted goals)"
        self._result = self.handle.get_result_async()

    def result(self, timeout=30.0):
        assert wait_for(self._result.done, timeout), "no result"
        res = self._result.result()
        return res.status, res.result


@pytest.fixture(scope="module")
def ros():
    rclpy.init()
    yield
    rclpy.try_shutdown()


@pytest.fixture(scope="module")
def node_proc(ros, model_dir, tmp_path_factory):
    cwd = tmp_path_factory.mktemp("node_cwd")  # not the repo root: its package folders would shadow the packages
    args = [sys.executable, "-c", NODE_CODE, "--ros-args", "-r", f"__node:={NODE}",
            "-p", f"checkpoint_dir:={model_dir}", "-p", "device:=cpu", "-p", "autostart:=true",
            "-p", "queue_size:=1", "-p", "preview:=true", "-p", "image_topic:=/test/image",
            "-p", "num_inference_steps:=2", "-p", "guidance_scale:=1.0", "-p", "publish_frames:=all",
            "-p", "camera_info_topic:=/test/camera_info"]
    proc = start_process(args, cwd=str(cwd))
    graph = Graph("imagine_test_client")
    get_state = graph.node.create_client(GetState, f"/{NODE}/get_state")

    def active():
        if proc.poll() is not None or not get_state.service_is_ready():
            return False
        fut = get_state.call_async(GetState.Request())
        return wait_for(fut.done, 5.0) and fut.result().current_state.label == "active"

    try:
        ok = wait_for(lambda: proc.poll() is not None or active(), 60.0)
        assert ok and proc.poll() is None, f"imagine node did not become active:\n{stop_process(proc)}"
        assert graph.client.wait_for_server(timeout_sec=20.0)
        # discovery of the feedback and output topics can lag behind the action services on a loaded machine
        topics = ["/k4d/imagine/_action/feedback", "/k4d/imagined/rollout", "/k4d/imagined/rgb", "/diagnostics"]
        assert wait_for(lambda: all(graph.node.count_publishers(t) >= 1 for t in topics), 20.0)
        time.sleep(0.3)
        yield graph, proc
    finally:
        graph.close()
        out = stop_process(proc)
        print(out[-3000:])


def test_goal_succeeds_with_feedback_and_complete_rollout(node_proc, inputs):
    graph, _ = node_proc
    image, seq_msg = inputs
    sent = Sent(graph.client, make_goal(image, seq_msg, steps=3, seed=-1))
    status, res = sent.result()
    assert status == GoalStatus.STATUS_SUCCEEDED and res.success and res.error_code == R.ERROR_NONE, res.error_message
    # feedback and result travel on different DDS topics: the last feedback may be handled after the result
    assert wait_for(lambda: any(f.stage == "lifting" for f in sent.feedback), 10.0)
    steps = [f.step for f in sent.feedback if f.stage == "denoising"]
    assert steps == [1, 2, 3] and all(f.total_steps == 3 for f in sent.feedback if f.stage == "denoising")
    assert {"preparing", "denoising", "decoding", "lifting"} <= {f.stage for f in sent.feedback}
    ro = res.rollout
    t, h, w = 9, 32, 48
    assert ro.request_id == bytes(sent.handle.goal_id.uuid).hex()
    assert len(ro.rgb) == len(ro.xyz) == len(ro.time_from_start) == len(ro.condition.xyz) == t
    assert {im.encoding for im in ro.rgb} == {"rgb8"} and {im.encoding for im in ro.xyz} == {"32FC3"}
    assert (ro.rgb[0].width, ro.rgb[0].height, ro.camera_info.width, ro.camera_info.height) == (w, h, w, h)
    assert re.fullmatch(r"tiny_model@[0-9a-f]{12}", ro.model_id)
    s = ro.sampling
    assert (s.num_inference_steps, s.guidance_scale, s.num_frames, s.scheduler) == (3, 1.0, t, "unipc")
    assert s.seed >= 0  # drawn and reported
    assert ro.metric_quality in (ImaginedRollout.QUALITY_GOOD, ImaginedRollout.QUALITY_POOR,
                                 ImaginedRollout.QUALITY_FAILED)
    assert len(ro.metric_affine) == 6 and ro.generation_time_s > 0
    assert ro.metric == (not np.isnan(ro.metric_residual_m))
    assert ro.header.frame_id == "camera_color_optical_frame" and ro.header.stamp.sec == 1
    assert wait_for(lambda: any(r.request_id == ro.request_id for r in graph.rollouts) and len(graph.rgb) >= t, 30.0)
    stamps = [m.header.stamp.sec + 1e-9 * m.header.stamp.nanosec for m in graph.rgb[-t:]]
    np.testing.assert_allclose(stamps, 1.0 + np.arange(t) / 8.0)  # condition stamp + time_from_start (8 fps)

    def diag_ok():
        for arr in list(graph.diag):
            for st in arr.status:
                vals = {kv.key: kv.value for kv in st.values}
                if (st.name == f"{NODE}: imagine" and vals.get("state") == "active" and "queue_length" in vals
                        and float(vals["last_generation_s"]) > 0):
                    return True  # a status published after the goal (earlier ones show 0)
        return False

    assert wait_for(diag_ok, 15.0)


def test_cancel_mid_run(node_proc, inputs):
    graph, _ = node_proc
    sent = Sent(graph.client, make_goal(*inputs, steps=400))
    assert wait_for(lambda: any(f.step >= 2 for f in sent.feedback), 20.0)
    cancel = sent.handle.cancel_goal_async()
    status, res = sent.result(20.0)
    assert cancel.done()
    assert status == GoalStatus.STATUS_CANCELED and not res.success and res.error_code == R.ERROR_CANCELED
    assert "canceled" in res.error_message and max(f.step for f in sent.feedback) < 400


def test_full_queue_aborts_new_goal_with_queue_full(node_proc, inputs):
    graph, _ = node_proc
    running = Sent(graph.client, make_goal(*inputs, steps=400))
    assert wait_for(lambda: any(f.stage == "denoising" for f in running.feedback), 20.0)
    waiting = Sent(graph.client, make_goal(*inputs, steps=400))
    assert wait_for(lambda: any(f.stage == "queued" and f.queue_position == 1 for f in waiting.feedback), 10.0)
    status, res = Sent(graph.client, make_goal(*inputs, steps=2)).result(10.0)  # queue_size 1: full
    assert status == GoalStatus.STATUS_ABORTED and res.error_code == R.ERROR_QUEUE_FULL
    assert "queue_size 1" in res.error_message
    assert not running._result.done() and not waiting._result.done()
    waiting.handle.cancel_goal_async()
    status, res = waiting.result(10.0)
    assert status == GoalStatus.STATUS_CANCELED and res.error_code == R.ERROR_CANCELED and "queue" in res.error_message
    running.handle.cancel_goal_async()
    assert running.result(20.0)[0] == GoalStatus.STATUS_CANCELED


def test_bad_goals_are_aborted_with_a_reason_and_the_node_keeps_serving(node_proc, inputs):
    graph, _ = node_proc
    image, seq_msg = inputs
    empty = type(seq_msg)()
    empty.camera_info = seq_msg.camera_info
    cases = [
        (make_goal(np.zeros((16, 24, 3), np.uint8), seq_msg), "initial_image must be 48x32"),
        (make_goal(image, seq_msg, encoding="mono8"), "initial_image.encoding"),
        (make_goal(image, empty), "pointmaps: PointmapSequence is empty"),
        (make_goal(image, seq_msg, depth=np.ones((16, 24), np.float32)), "initial_depth is 24x16"),
        (make_goal(image, seq_msg, depth=np.ones((32, 48, 3), np.uint8)), "initial_depth: expected a depth image"),
    ]
    for goal, words in cases:
        status, res = Sent(graph.client, goal).result(10.0)
        assert status == GoalStatus.STATUS_ABORTED and res.error_code == R.ERROR_INVALID_GOAL, res.error_message
        assert words in res.error_message
    status, res = Sent(graph.client, make_goal(image, seq_msg, steps=2)).result()
    assert status == GoalStatus.STATUS_SUCCEEDED and res.success
    # a registered depth of the right size is accepted (millimetres, 0 = unknown)
    mm = np.full(image.shape[:2], 1200, np.uint16)
    mm[:2] = 0
    status, res = Sent(graph.client, make_goal(image, seq_msg, steps=2, depth=mm)).result()
    assert status == GoalStatus.STATUS_SUCCEEDED and res.success, res.error_message


def test_trajectory_goal_is_projected_with_the_node_kinematics(node_proc, inputs):
    graph, _ = node_proc
    image, seq_msg = inputs
    goal = make_goal(image, seq_msg, steps=2)
    goal.condition_type = Imagine.Goal.CONDITION_TRAJECTORY
    goal.pointmaps = type(seq_msg)()
    names = [f"joint{k}" for k in range(1, 9)]
    goal.trajectory = JointTrajectory(joint_names=names, points=[
        JointTrajectoryPoint(positions=[0.0] * 8, time_from_start=duration_from_seconds(0.0)),
        JointTrajectoryPoint(positions=[0.3] + [0.0] * 7, time_from_start=duration_from_seconds(2.0))])
    goal.camera_info = CameraInfo(width=48, height=32, distortion_model="plumb_bob", d=[0.0] * 5,
                                  k=[30.0, 0, 23.5, 0, 30.0, 15.5, 0, 0, 1])
    status, res = Sent(graph.client, goal).result()
    assert status == GoalStatus.STATUS_SUCCEEDED, res.error_message
    cond = res.rollout.condition
    assert len(cond.xyz) == 9 and list(cond.joint_names) == names and cond.source == cond.SOURCE_PLAN


def test_preview_imagines_a_published_plan(node_proc, inputs):
    graph, _ = node_proc
    image, seq_msg = inputs
    previews = lambda: [r for r in graph.rollouts if r.request_id == ""]  # noqa: E731
    deadline = time.monotonic() + 20.0
    while not previews() and time.monotonic() < deadline:
        graph.pub_image.publish(numpy_to_image(image, "rgb8"))
        time.sleep(0.2)
        graph.pub_plan.publish(seq_msg)
        wait_for(lambda: bool(previews()), 1.5)
    assert previews(), "no preview rollout"
    ro = previews()[0]
    assert len(ro.rgb) == 9 and ro.sampling.num_inference_steps == 2 and ro.condition.header.stamp.sec == 1


def test_not_active_goal_gets_error_not_active(node_proc, inputs):
    graph, _ = node_proc
    change = graph.node.create_client(ChangeState, f"/{NODE}/change_state")
    assert change.wait_for_service(timeout_sec=10.0)

    def transition(tid):
        fut = change.call_async(ChangeState.Request(transition=Transition(id=tid)))
        assert wait_for(fut.done, 20.0) and fut.result().success

    transition(Transition.TRANSITION_DEACTIVATE)
    status, res = Sent(graph.client, make_goal(*inputs, steps=2)).result(10.0)
    assert status == GoalStatus.STATUS_ABORTED and res.error_code == R.ERROR_NOT_ACTIVE
    assert "not active" in res.error_message
    transition(Transition.TRANSITION_ACTIVATE)
    status, res = Sent(graph.client, make_goal(*inputs, steps=2)).result()
    assert status == GoalStatus.STATUS_SUCCEEDED


def test_in_process_retry_configure_out_of_memory_then_success(ros, model_dir, inputs, tmp_path):
    """Configure fails on a missing checkpoint and can be retried; one CUDA OOM fails a goal, the next succeeds."""
    from k4d_worldmodel.ros.imagine_node import ImagineNode
    from rclpy.lifecycle import TransitionCallbackReturn

    if True:
        node = ImagineNode("k4d_imagine_oom", parameter_overrides=[
            Parameter("checkpoint_dir", value=str(tmp_path / "missing")), Parameter("device", value="cpu"),
            Parameter("action_name", value="/k4d/imagine_oom")])
        client_node = rclpy.create_node("oom_client")
        client = ActionClient(client_node, Imagine, "/k4d/imagine_oom")
        ex = MultiThreadedExecutor(num_threads=4)
        ex.add_node(node)
        ex.add_node(client_node)
        thread = threading.Thread(target=ex.spin, daemon=True)
        thread.start()
        try:
            assert node.trigger_configure() == TransitionCallbackReturn.FAILURE and node.engine is None
            node.set_parameters([Parameter("checkpoint_dir", value=str(model_dir))])
            assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
            assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
            assert client.wait_for_server(timeout_sec=10.0)
            tr = node.engine.pipe.transformer
            original, calls = tr.forward, []

            def forward(*args, **kwargs):
                calls.append(1)
                if len(calls) == 1:
                    raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
                return original(*args, **kwargs)

            tr.forward = forward
            status, res = Sent(client, make_goal(*inputs, steps=2)).result()
            assert status == GoalStatus.STATUS_ABORTED and res.error_code == R.ERROR_OUT_OF_MEMORY
            assert "out of memory" in res.error_message
            status, res = Sent(client, make_goal(*inputs, steps=2)).result()
            assert status == GoalStatus.STATUS_SUCCEEDED and res.success
            assert node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
            assert node.trigger_cleanup() == TransitionCallbackReturn.SUCCESS and node.engine is None
        finally:
            ex.shutdown(timeout_sec=2.0)
            thread.join(timeout=5.0)
            client_node.destroy_node()
            node.destroy_node()


def test_in_process_preview_depth_anchor_input(ros, model_dir):
    """depth_topic: the latest registered depth becomes the preview's anchor (metres, holes NaN); a depth of the
    wrong encoding or size is reported by name and the preview goes on without an anchor (not dropped)."""
    from k4d_worldmodel.ros.imagine_node import ImagineNode

    node = ImagineNode("k4d_imagine_depth", parameter_overrides=[
        Parameter("checkpoint_dir", value=str(model_dir)), Parameter("device", value="cpu"),
        Parameter("action_name", value="/k4d/imagine_depth"), Parameter("preview", value=True),
        Parameter("depth_topic", value="/test/depth")])
    try:
        rgb = np.zeros((32, 48, 3), np.uint8)
        assert node._preview_depth(rgb) is None  # nothing received yet
        mm = np.full((32, 48), 1500, np.uint16)
        mm[0, 0] = 0
        from rclpy.serialization import serialize_message

        node._on_depth(serialize_message(numpy_to_image(mm, "16UC1")))  # as the raw subscription delivers it
        depth = node._preview_depth(rgb)
        assert depth.dtype == np.float32 and depth[1, 1] == pytest.approx(1.5) and np.isnan(depth[0, 0])
        dropped = node.stats.dropped
        node._on_depth(numpy_to_image(np.ones((16, 24), np.float32), "32FC1"))
        assert node._preview_depth(rgb) is None and "register the depth" in node.stats.last_error
        node._on_depth(numpy_to_image(np.zeros((32, 48, 3), np.uint8), "rgb8"))
        assert node._preview_depth(rgb) is None and "expected a depth image" in node.stats.last_error
        node._on_depth(b"\x00\x01 not CDR")
        assert node._preview_depth(rgb) is None and "preview lifted without a depth anchor" in node.stats.last_error
        assert node.stats.dropped == dropped
    finally:
        node.destroy_node()


def test_goal_of_another_size_is_fitted_with_adapt_inputs_and_previews_count_in_the_queue(model_dir, inputs):
    """The goal path leaves the image size to the engine, as previews do: with ``adapt_inputs`` a camera-size
    goal is fitted to the model instead of refused, and without it the engine refuses it by name. A running
    preview holds the model like a goal, so no more than ``queue_size`` goals wait behind it."""
    import collections
    import types

    from k4d_worldmodel.config import WorldModelConfig
    from k4d_worldmodel.engine import ImagineEngine, InvalidRequest
    from k4d_worldmodel.ros.imagine_node import ImagineNode, Job

    image, seq_msg = inputs
    big = np.repeat(np.repeat(image, 2, 0), 2, 1)
    goal = make_goal(big, seq_msg)
    for adapt in (True, False):
        eng = ImagineEngine(WorldModelConfig(checkpoint_dir=str(model_dir), device="cpu", num_inference_steps=2,
                                             adapt_inputs=adapt))
        eng.load()
        node = types.SimpleNamespace(get_clock=lambda: types.SimpleNamespace(now=lambda: types.SimpleNamespace(
            nanoseconds=1)))
        if adapt:
            request, sampling, _ = ImagineNode._decode_goal(node, goal, eng)
            assert request.image.shape == big.shape and sampling.num_frames == eng.geometry[0]
            assert eng.run(request, sampling=sampling).rgb.shape[1:3] == image.shape[:2]
        else:
            with pytest.raises(InvalidRequest, match="initial_image must be 48x32"):
                ImagineNode._decode_goal(node, goal, eng)

    fake = types.SimpleNamespace(engine=object(), _serving=True, _state="active", _lock=threading.Condition(),
                                 _queue=collections.deque(), _reserved=0, cfg=types.SimpleNamespace(queue_size=1),
                                 _decode_goal=lambda request, engine: (None, None, None))
    handle = types.SimpleNamespace(request=None)
    for running in ("goal", "preview"):
        fake._queue.clear()
        fake._current = Job(running, 0, 0.0)
        admitted = [ImagineNode._admit(fake, Job("goal", i, 0.0, goal_handle=handle)) is None for i in (1, 2, 3)]
        assert admitted == [True, False, False] and len(fake._queue) == 1, (running, admitted)


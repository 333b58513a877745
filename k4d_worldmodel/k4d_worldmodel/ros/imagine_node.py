# Copyright 2026 k4d developers. Apache-2.0.
"""imagine_node: the K4D world model as a lifecycle node serving the ``k4d/imagine`` action.

    .venv/bin/python -m k4d_worldmodel.ros.imagine_node --ros-args \\
        --params-file k4d_worldmodel/config/imagine_node.yaml -p checkpoint_dir:=ckpt/model -p autostart:=true

Lifecycle (rclpy.lifecycle): ``configure`` loads the weights (a failure is logged, the transition returns
FAILURE and the node stays unconfigured: fix the parameter and configure again), ``activate`` serves goals and
previews, ``deactivate`` stops serving (waiting goals are aborted with ERROR_NOT_ACTIVE, a running one stops at
its next denoising step with ERROR_NOT_ACTIVE), ``cleanup`` frees the model and the accelerator cache.
``autostart:=true`` runs configure + activate once the node spins (pip-only use, no lifecycle manager).

Action ``k4d/imagine`` (k4d_msgs/action/Imagine; always advertised). Goals are never rejected at the goal
response: every goal is accepted and a refusal is an *aborted* goal whose result carries ``error_code`` and a
message naming the problem, so a client always learns why:
  ERROR_NOT_ACTIVE   the node is not active;
  ERROR_QUEUE_FULL   ``queue_size`` goals already wait while one runs (see the queue policy);
  ERROR_INVALID_GOAL wrong initial_image encoding (rgb8/bgr8 only) or size, initial_depth of another size or
  encoding, empty/malformed pointmaps or
                     trajectory, bad sampling (num_frames not 4k+1 or not the model's, unknown scheduler);
  ERROR_CANCELED     cancelled by the client: a waiting goal at once, a running one between denoising steps;
  ERROR_OUT_OF_MEMORY the accelerator ran out of memory; the cache is emptied and the node keeps serving;
  ERROR_INTERNAL     anything else (message: the exception).
Queue policy: one GPU worker runs one rollout at a time. At most ``queue_size`` goals wait (FIFO) behind the
running one; a goal arriving when ``queue_size`` goals already wait (or one runs and queue_size is 0) is aborted
at once with ERROR_QUEUE_FULL, and the queued goals are unaffected. The pending preview (at most one) is not
counted; goals and the preview run in arrival order.
Feedback: ``stage`` queued -> preparing -> denoising (``step`` 1..``total_steps``) -> decoding -> lifting,
``eta_s``, ``elapsed_s`` since acceptance, ``queue_position`` (goals and preview ahead; 0 when running).
Sampling: zero fields take the node's defaults (``num_inference_steps``, ``guidance_scale``, ``scheduler``);
``seed`` is used as given (0 is a seed), a negative seed draws one, reported in ``rollout.sampling.seed``;
``cfg_mode`` CFG_INTENDED -> "correct", CFG_RELEASED -> "released". A trajectory goal is resampled to
``num_frames`` (0 = the model's) over its duration (or at ``trajectory_fps``) and rendered with the node's
robot description and extrinsics, through ``goal.camera_info`` or the node's camera when that is empty.

Preview (``preview:=true``): every PointmapSequence on ``plan_topic`` is imagined from the latest image on
``image_topic`` with the default sampling. Latest wins: a newer plan replaces a preview still waiting (in its
place in the order); a running preview finishes.

Publishes (lifecycle publishers, after every successful goal or preview)
- ``rollout_topic`` (k4d_msgs/ImaginedRollout, reliable, depth 2): everything; request_id = the goal id as 32
  hex characters, "" for previews.
- ``rgb_topic`` (sensor_msgs/Image rgb8, reliable): the last imagined frame (``publish_frames:=last``) or every
  frame in order (``all``), each stamped with its frame time (condition stamp + time_from_start).
- ``points_topic`` (sensor_msgs/PointCloud2, organized XYZRGB as depth_image_proc, camera optical frame,
  reliable): the same frames as rgb, in metres; only when the metric lift succeeded (``rollout.metric``).
- ``/diagnostics``: lifecycle state, queue length, running job, last generation time, model id, errors.
Subscribes: ``image_topic`` and ``plan_topic`` (preview only), ``joint_states`` (fills joints a trajectory goal
does not move), ``camera_info_topic`` (unless ``camera_info_file``), ``robot_description_topic`` (description
source 'topic').
"""
from __future__ import annotations

import collections
import dataclasses
import itertools
import math
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import rclpy
import rclpy.executors
import rclpy.logging
from k4d_msgs.action import Imagine
from k4d_msgs.msg import ImaginedRollout, PointmapSequence, SamplingSettings
from rclpy.action import ActionServer, CancelResponse, GoalResponse
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image, JointState, PointCloud2
from std_msgs.msg import Header

from k4d_kinematics.config import RobotCameraConfig, param_doc
from k4d_kinematics.ros.conversions import (camera_info_to_camera, camera_to_camera_info, depth_from_image,
                                            duration_from_seconds, image_to_numpy, joint_trajectory_to_data,
                                            msg_to_pointmap_sequence, numpy_to_image, pointmap_sequence_to_msg,
                                            rgb_from_image, time_from_ns, time_to_ns, xyz_to_pointcloud2)
from k4d_kinematics.ros.diagnostics import DiagnosticsPublisher, RateLatencyStats
from k4d_kinematics.ros.node_logic import (JointStateMerger, ThrottledLog, complete_trajectory, first_line,
                                           resolve_camera_frame)
from k4d_kinematics.ros.node_main import run_node
from k4d_kinematics.ros.params import declare_config
from k4d_kinematics.ros.qos import RELIABLE_QOS, SENSOR_QOS
from k4d_kinematics.sequence import PointmapSequenceData, build_pointmap_sequence
from k4d_worldmodel.config import WorldModelConfig
from k4d_worldmodel.engine import (EngineOutOfMemory, ImagineEngine, ImagineRequest, ImagineResult, InvalidRequest,
                                   K4DCancelled, Sampling, SamplingOverrides)

PUBLISH_FRAMES = ("last", "all")
QUALITY = {"good": ImaginedRollout.QUALITY_GOOD, "poor": ImaginedRollout.QUALITY_POOR,
           "failed": ImaginedRollout.QUALITY_FAILED, "anchored_good": ImaginedRollout.QUALITY_ANCHORED_GOOD,
           "anchored_poor": ImaginedRollout.QUALITY_ANCHORED_POOR}
R = Imagine.Result


_doc = param_doc


@dataclass
class ImagineNodeConfig(WorldModelConfig, RobotCameraConfig):
    """Parameters of ``imagine_node``: every [`WorldModelConfig`] field (the model; its sampling fields are the
    defaults of goals and previews), every ``RobotCameraConfig`` field (robot, camera and extrinsics for
    trajectory goals) and the node's own fields below."""

    autostart: bool = field(default=False, metadata=_doc(
        "Configure and activate at start-up (pip-only use without a lifecycle manager).", True))
    queue_size: int = field(default=2, metadata=_doc(
        "Goals that may wait behind the running one; more are aborted with ERROR_QUEUE_FULL."))
    action_name: str = field(default="k4d/imagine", metadata=_doc("Name of the Imagine action server.", True))
    preview: bool = field(default=False, metadata=_doc(
        "Imagine every PointmapSequence on plan_topic from the latest image on image_topic (latest wins).", True))
    image_topic: str = field(default="/camera/color/image_raw", metadata=_doc(
        "Camera colour image for previews (rgb8/bgr8/rgba8/bgra8/mono8; the model's size).", True))
    depth_topic: str = field(default="", metadata=_doc(
        "Depth image registered to image_topic (32FC1 metres or 16UC1 millimetres) for previews: when the lift "
        "on the robot pixels fails, the latest depth anchors it (ImagineRequest.anchor_depth). '' = none.", True))
    plan_topic: str = field(default="k4d/plan_pointmaps", metadata=_doc(
        "k4d_msgs/PointmapSequence to preview (plan_node's output).", True))
    rgb_topic: str = field(default="k4d/imagined/rgb", metadata=_doc("Imagined frames (Image rgb8).", True))
    points_topic: str = field(default="k4d/imagined/points", metadata=_doc(
        "Imagined organized XYZRGB cloud, metres, camera optical frame (only when metric).", True))
    rollout_topic: str = field(default="k4d/imagined/rollout", metadata=_doc(
        "Complete k4d_msgs/ImaginedRollout of every goal and preview.", True))
    publish_frames: str = field(default="last", metadata=_doc(
        "Frames published on rgb_topic and points_topic: 'last' (the final imagined frame) or 'all' (in order)."))
    trajectory_fps: float = field(default=0.0, metadata=_doc(
        "Trajectory goals: > 0 puts frames k / fps after the start; 0 spreads them over the trajectory duration."))

    def __post_init__(self):
        WorldModelConfig.__post_init__(self)
        RobotCameraConfig.__post_init__(self)
        if isinstance(self.queue_size, bool) or not isinstance(self.queue_size, int) or self.queue_size < 0:
            raise ValueError(f"queue_size must be an integer >= 0, got {self.queue_size!r}")
        if self.publish_frames not in PUBLISH_FRAMES:
            raise ValueError(f"publish_frames must be one of {list(PUBLISH_FRAMES)}, got {self.publish_frames!r}")
        if not (math.isfinite(self.trajectory_fps) and self.trajectory_fps >= 0):
            raise ValueError(f"trajectory_fps must be a finite number >= 0, got {self.trajectory_fps!r}")
        for name in ("action_name", "plan_topic", "image_topic", "rgb_topic", "points_topic", "rollout_topic"):
            if not getattr(self, name):
                raise ValueError(f"{name} must not be empty")

    def world_model_config(self) -> WorldModelConfig:
        return WorldModelConfig(**{n: getattr(self, n) for n in WorldModelConfig.field_names()})


# ------------------------------------------------------------------------------------------------ conversions
def overrides_from_msg(s: SamplingSettings) -> SamplingOverrides:
    """SamplingSettings -> engine overrides (zero = default; negative seed = draw; cfg_mode 0/1)."""
    if s.cfg_mode not in (SamplingSettings.CFG_INTENDED, SamplingSettings.CFG_RELEASED):
        raise InvalidRequest(f"sampling.cfg_mode must be CFG_INTENDED (0) or CFG_RELEASED (1), got {s.cfg_mode}")
    return SamplingOverrides(
        num_inference_steps=int(s.num_inference_steps), guidance_scale=float(s.guidance_scale), seed=int(s.seed),
        num_frames=int(s.num_frames), scheduler=s.scheduler,
        cfg_mode="released" if s.cfg_mode == SamplingSettings.CFG_RELEASED else "correct")


def sampling_to_msg(s: Sampling) -> SamplingSettings:
    return SamplingSettings(
        num_inference_steps=s.num_inference_steps, guidance_scale=float(s.guidance_scale), seed=int(s.seed),
        num_frames=s.num_frames, scheduler=s.scheduler,
        cfg_mode=SamplingSettings.CFG_RELEASED if s.cfg_mode == "released" else SamplingSettings.CFG_INTENDED)


def goal_image(msg: Image) -> np.ndarray:
    """initial_image -> (H, W, 3) uint8 RGB; InvalidRequest naming the field for a wrong encoding or a malformed
    message. Its size is the engine's to judge (``check_request``: refused by name, or fitted to the model
    with ``adapt_inputs``), as for previews."""
    if msg.encoding not in ("rgb8", "bgr8"):
        raise InvalidRequest(f"initial_image.encoding must be 'rgb8' or 'bgr8', got {msg.encoding!r}")
    try:
        return image_to_numpy(msg, "rgb8")
    except ValueError as exc:
        raise InvalidRequest(f"initial_image: {exc}") from None


def depth_for_image(msg: Image, image_shape: tuple[int, ...], field: str) -> Optional[np.ndarray]:
    """A depth image registered to an RGB image of ``image_shape`` -> (H, W) float32 metres (NaN unknown), None
    when the message is empty; InvalidRequest naming ``field`` for another size or encoding."""
    if not (msg.width and msg.height):
        return None
    if (msg.height, msg.width) != tuple(image_shape[:2]):
        raise InvalidRequest(f"{field} is {msg.width}x{msg.height}, the image is {image_shape[1]}x{image_shape[0]} "
                             "(register the depth to the colour camera)")
    try:
        return depth_from_image(msg)
    except ValueError as exc:
        raise InvalidRequest(f"{field}: {exc}") from None


def frame_stamp_ns(seq: PointmapSequenceData, t: int) -> int:
    return int(seq.stamp_ns + round(float(seq.times[t]) * 1e9))


def rollout_to_msg(result: ImagineResult, request_id: str = "",
                   condition: Optional[PointmapSequence] = None) -> ImaginedRollout:
    """ImagineResult -> k4d_msgs/ImaginedRollout (every field filled; ``condition`` reused when given)."""
    seq = result.sequence
    msg = ImaginedRollout()
    msg.header = Header(stamp=time_from_ns(seq.stamp_ns), frame_id=seq.camera.frame_id)
    msg.camera_info = camera_to_camera_info(seq.camera, msg.header)
    msg.request_id = request_id
    msg.condition = condition if condition is not None else pointmap_sequence_to_msg(seq)
    msg.model_id = result.model_id
    msg.sampling = sampling_to_msg(result.sampling)
    msg.time_from_start = [duration_from_seconds(t) for t in seq.times]
    frame_headers = [Header(stamp=time_from_ns(frame_stamp_ns(seq, t)), frame_id=seq.camera.frame_id)
                     for t in range(len(seq.times))]
    msg.rgb = [numpy_to_image(result.rgb[t], "rgb8", h) for t, h in enumerate(frame_headers)]
    msg.xyz = [numpy_to_image(np.ascontiguousarray(result.xyz[t], dtype=np.float32), "32FC3", h)
               for t, h in enumerate(frame_headers)]
    lift = result.lift
    msg.metric = bool(result.metric)
    msg.metric_quality = QUALITY[result.metric_quality]
    msg.metric_residual_m = float(lift.residual_m) if result.metric else float("nan")
    scale, offset = (lift.scale, lift.offset) if result.metric else (np.ones(3), np.zeros(3))
    msg.metric_affine = [float(v) for pair in zip(scale, offset) for v in pair]
    msg.generation_time_s = float(result.timings["generation_s"])
    return msg


def frame_messages(result: ImagineResult, which: str) -> tuple[list[Image], list[PointCloud2]]:
    """The rgb and (metric only) point-cloud messages of the frames ``which`` selects ('last' or 'all')."""
    seq = result.sequence
    frames = range(len(seq.times)) if which == "all" else [len(seq.times) - 1]
    images, clouds = [], []
    for t in frames:
        header = Header(stamp=time_from_ns(frame_stamp_ns(seq, t)), frame_id=seq.camera.frame_id)
        images.append(numpy_to_image(result.rgb[t], "rgb8", header))
        if result.metric:
            clouds.append(xyz_to_pointcloud2(result.xyz[t], header, rgb=result.rgb[t]))
    return images, clouds


# ------------------------------------------------------------------------------------------------------- jobs
@dataclass
class Outcome:
    code: int
    message: str = ""
    rollout: Optional[ImaginedRollout] = None


@dataclass
class Job:
    """A goal or a preview, from admission to its outcome."""

    kind: str  # "goal" | "preview"
    order: int  # arrival order (the worker runs the smallest first)
    accepted_at: float
    goal_handle: object = None
    request: Optional[ImagineRequest] = None
    sampling: Optional[Sampling] = None
    condition: Optional[PointmapSequence] = None
    request_id: str = ""
    outcome: Optional[Outcome] = None
    done: threading.Event = field(default_factory=threading.Event)
    queue_position: int = -1

    def finish(self, outcome: Outcome) -> None:
        self.outcome = outcome
        self.done.set()

    @property
    def cancel_requested(self) -> bool:
        return self.goal_handle is not None and self.goal_handle.is_cancel_requested


class ImagineNode(LifecycleNode):
    """Lifecycle node around one [`ImagineEngine`] (see the module docstring)."""

    def __init__(self, node_name: str = "k4d_imagine", **kwargs):
        super().__init__(node_name, **kwargs)
        # (first: destroy_node() must work even when a bad parameter stops the constructor below)
        self._lock = threading.Condition()
        self._worker: Optional[threading.Thread] = None
        self.engine: Optional[ImagineEngine] = None
        self._serving = False
        self._stop = False
        # 1. Parameters, diagnostics
        self.cfg: ImagineNodeConfig = declare_config(self, ImagineNodeConfig, self._on_config)
        cfg = self.cfg
        self.stats = RateLatencyStats(window_s=600.0)
        self.diag = DiagnosticsPublisher(self)
        self.diag.add("imagine", self.stats)
        self._log_error = ThrottledLog(self.get_logger().error)
        self._state = "unconfigured"
        self.last_generation_s = float("nan")
        # 2. Queue and worker state
        self._queue: collections.deque[Job] = collections.deque()
        self._preview: Optional[Job] = None
        self._current: Optional[Job] = None
        self._reserved = 0
        self._jobs: dict[bytes, Job] = {}
        self._order = itertools.count()
        self._pubs: dict[str, object] = {}
        # 3. Inputs for trajectory goals and previews
        self._cb = ReentrantCallbackGroup()
        self._joints = JointStateMerger()
        self._camera_msg: Optional[CameraInfo] = None
        # the latest camera image / depth as received (serialized bytes; decoded only when a preview needs them:
        # decoding 30 Hz of images the node mostly drops would take CPU from the world model)
        self._latest_image: Optional[bytes | Image] = None
        self._latest_depth: Optional[bytes | Image] = None
        self._description = None
        self._extrinsics = None
        self._renderer, self._renderer_key = None, None
        self.create_subscription(JointState, "joint_states", self._on_joint_state, SENSOR_QOS, callback_group=self._cb)
        if not cfg.camera_info_file:
            self.create_subscription(CameraInfo, cfg.camera_info_topic, self._on_camera_info, SENSOR_QOS,
                                     callback_group=self._cb)
        if cfg.description_source == "topic":
            self._kinematics()  # subscribe now: the description is latched
        if cfg.preview:
            self.create_subscription(Image, cfg.image_topic, self._on_image, SENSOR_QOS, callback_group=self._cb,
                                     raw=True)
            if cfg.depth_topic:
                self.create_subscription(Image, cfg.depth_topic, self._on_depth, SENSOR_QOS, callback_group=self._cb,
                                         raw=True)
            self.create_subscription(PointmapSequence, cfg.plan_topic, self._on_plan, RELIABLE_QOS,
                                     callback_group=self._cb)
        # 4. The action server (always up, so that refusals carry an error code) and the queue timer
        self._action = ActionServer(
            self, Imagine, cfg.action_name, execute_callback=self._execute,
            goal_callback=lambda _goal: GoalResponse.ACCEPT, handle_accepted_callback=self._on_accepted,
            cancel_callback=lambda _gh: CancelResponse.ACCEPT, callback_group=self._cb)
        self.create_timer(0.1, self._on_queue_timer, callback_group=self._cb)
        self._update_diag()
        self._autostart_timer = None
        if cfg.autostart:
            # default (mutually exclusive) group: runs once, never beside a lifecycle service call
            self._autostart_timer = self.create_timer(0.01, self._autostart)
        self.get_logger().info(f"imagine_node up ({'autostart' if cfg.autostart else 'waiting for configure'}); "
                               f"action {self.resolve_topic_name(cfg.action_name)}, queue_size {cfg.queue_size}, "
                               f"preview {cfg.preview}")

    # -- parameters, diagnostics -------------------------------------------------------------
    def _on_config(self, cfg: ImagineNodeConfig) -> None:
        """Accepted parameter change: sampling and metric_* defaults apply at once; the rest at the next configure."""
        self.cfg = cfg
        engine = self.engine
        if engine is not None:
            live = ("num_inference_steps", "guidance_scale", "seed", "scheduler", "cfg_mode", "compose_static",
                    "compose_margin_px", "compose_region", "compose_flying_rel", "compose_flying_mode") + tuple(
                n for n in WorldModelConfig.field_names() if n.startswith("metric_"))
            engine.config = dataclasses.replace(engine.config, **{n: getattr(cfg, n) for n in live})
        self._update_diag()

    def _update_diag(self) -> None:
        with self._lock:
            waiting = len(self._queue) + (self._preview is not None)
            running = self._current.kind if self._current is not None else ""
        self.diag.extra.update({
            "state": self._state, "queue_length": str(waiting), "queue_size": str(self.cfg.queue_size),
            "running": running, "last_generation_s": f"{self.last_generation_s:.3f}",
            "model_id": self.engine.model_id if self.engine is not None else "", "preview": str(self.cfg.preview)})

    def _report(self, message: str, dropped: bool = True) -> None:
        self.stats.error(message)
        if dropped:
            self.stats.dropped += 1
        self._log_error(message)

    # -- lifecycle ----------------------------------------------------------------------------
    def _autostart(self) -> None:
        if self._autostart_timer is None:
            return
        self._autostart_timer.cancel()  # (destroying a timer inside its own callback upsets the executor)
        self._autostart_timer = None
        if self.trigger_configure() == TransitionCallbackReturn.SUCCESS:
            self.trigger_activate()

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        cfg = self.cfg
        try:
            wm = cfg.world_model_config()
            engine = ImagineEngine(wm)
            engine.load()
        except Exception as exc:  # noqa: BLE001 - any loading failure: report it, stay unconfigured
            message = (f"configure failed: cannot load the world model from checkpoint_dir '{cfg.checkpoint_dir}' "
                       f"(base_model_dir '{cfg.base_model_dir}', device {cfg.device}): {type(exc).__name__}: {exc}. "
                       "Fix the parameters and configure again.")
            self.get_logger().error(message)
            self.stats.error(message)
            return TransitionCallbackReturn.FAILURE
        self.engine = engine
        t, h, w = engine.geometry
        depth = max(5, t) if cfg.publish_frames == "all" else 5
        frames_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth,
                                reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE)
        rollout_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=2,
                                 reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE)
        self._pubs = {
            "rgb": self.create_lifecycle_publisher(Image, cfg.rgb_topic, frames_qos),
            "points": self.create_lifecycle_publisher(PointCloud2, cfg.points_topic, frames_qos),
            "rollout": self.create_lifecycle_publisher(ImaginedRollout, cfg.rollout_topic, rollout_qos),
        }
        self._stop = False
        self._worker = threading.Thread(target=self._work, name="k4d_imagine_worker", daemon=True)
        self._worker.start()
        self._state = "inactive"
        self._update_diag()
        self.get_logger().info(f"world model {engine.model_id} loaded in {engine.load_s:.1f} s on "
                               f"{wm.resolved_device()}: {t} frames of {w}x{h}")
        return super().on_configure(state)

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        ret = super().on_activate(state)
        with self._lock:
            self._serving = True
            self._lock.notify_all()
        self._state = "active"
        self._update_diag()
        self.get_logger().info("serving imagine goals" + (" and previews" if self.cfg.preview else ""))
        return ret

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_serving("the node was deactivated")
        self._state = "inactive"
        self._update_diag()
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        self._state = "unconfigured"
        self._update_diag()
        return super().on_cleanup(state)

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        self._state = "finalized"
        return super().on_shutdown(state)

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        self._state = "unconfigured"
        return TransitionCallbackReturn.SUCCESS

    def _stop_serving(self, why: str, wait_s: float = 30.0) -> None:
        """Stop taking work: abort waiting goals (ERROR_NOT_ACTIVE), drop the preview, let the running job stop."""
        with self._lock:
            self._serving = False
            waiting, self._queue = list(self._queue), collections.deque()
            self._preview = None
            self._lock.notify_all()
        for job in waiting:
            job.finish(Outcome(R.ERROR_NOT_ACTIVE, f"{why} while the goal was waiting"))
            job.goal_handle.execute()
        deadline = time.monotonic() + wait_s
        with self._lock:
            while self._current is not None and time.monotonic() < deadline:
                self._lock.wait(0.05)

    def _release(self) -> None:
        """Stop the worker, destroy the publishers, free the model and the accelerator cache."""
        self._stop_serving("the node was cleaned up")
        with self._lock:
            self._stop = True
            self._lock.notify_all()
        if self._worker is not None:
            self._worker.join(timeout=30.0)
            self._worker = None
        for pub in self._pubs.values():
            self.destroy_lifecycle_publisher(pub)
        self._pubs = {}
        if self.engine is not None:
            self.engine.unload()  # del pipeline; torch.cuda.empty_cache()
            self.engine = None

    def destroy_node(self) -> None:
        with self._lock:
            self._serving, self._stop = False, True
            self._lock.notify_all()
        if self._worker is not None:
            self._worker.join(timeout=10.0)
        if self.engine is not None:
            self.engine.unload()
            self.engine = None
        super().destroy_node()

    # -- inputs -------------------------------------------------------------------------------
    def _on_joint_state(self, msg: JointState) -> None:
        try:
            model = self._description.model if self._description is not None else None
            self._joints.update(msg.name, msg.position, time_to_ns(msg.header.stamp), model, "ignore",
                                self.cfg.joint_limits)
        except Exception as exc:  # noqa: BLE001 - bad input never stops the node
            self._report(f"joint_states dropped: {first_line(exc)}")

    def _on_camera_info(self, msg: CameraInfo) -> None:
        self._camera_msg = msg

    def _on_image(self, msg: bytes | Image) -> None:
        self._latest_image = msg

    def _on_depth(self, msg: bytes | Image) -> None:
        self._latest_depth = msg

    @staticmethod
    def _decoded(msg: Optional[bytes | Image]) -> Optional[Image]:
        """A received Image (serialized bytes from the raw subscriptions) as a message."""
        if msg is None or isinstance(msg, Image):
            return msg
        from rclpy.serialization import deserialize_message

        return deserialize_message(msg, Image)

    def _preview_depth(self, rgb: np.ndarray) -> Optional[np.ndarray]:
        """The latest depth image in metres for a preview's anchor, or None (none yet, or unusable: reported; the
        preview then runs without an anchor)."""
        try:
            msg = self._decoded(self._latest_depth)
            return None if msg is None else depth_for_image(msg, rgb.shape, self.cfg.depth_topic)
        except Exception as exc:  # noqa: BLE001 - a bad depth message (size, encoding, bytes) only loses the anchor
            what = first_line(exc)
            if not isinstance(exc, InvalidRequest):  # not decodable: name the topic
                what = f"{self.cfg.depth_topic}: {what}"
            self._report(f"{what}; preview lifted without a depth anchor", dropped=False)
            return None

    def _kinematics(self):
        """(DescriptionSource, ExtrinsicsSource), built at the first trajectory goal (or at start for 'topic')."""
        if self._description is None:
            from k4d_kinematics.ros.description_source import DescriptionSource
            from k4d_kinematics.ros.extrinsics_source import ExtrinsicsSource

            cfg = RobotCameraConfig(**{f.name: getattr(self.cfg, f.name) for f in dataclasses.fields(RobotCameraConfig)})
            self._extrinsics = ExtrinsicsSource(self, cfg)
            self._description = DescriptionSource(self, cfg, lambda _m: None, self._report)
        return self._description, self._extrinsics

    def _trajectory_sequence(self, goal, num_frames: int) -> PointmapSequenceData:
        """JointTrajectory (+ camera_info) -> rendered PointmapSequenceData (ValueError naming the problem)."""
        from k4d_kinematics.camera import PinholeCamera
        from k4d_kinematics.pointmap import PointmapRenderer

        try:
            traj = joint_trajectory_to_data(goal.trajectory)
        except ValueError as exc:
            raise InvalidRequest(f"trajectory: {exc}") from None
        description, extrinsics = self._kinematics()
        model = description.model
        if model is None:
            raise InvalidRequest(f"trajectory: no robot model ({description.error})")
        cfg = self.cfg
        info = goal.camera_info if goal.camera_info.width and goal.camera_info.height else self._camera_msg
        if cfg.camera_info_file and info is not goal.camera_info:
            frame = resolve_camera_frame(cfg.camera_frame, "", extrinsics.file_child_frame)
            cam = PinholeCamera.from_yaml(cfg.camera_info_file, frame_id=frame)
        elif info is None:
            raise InvalidRequest(f"camera_info is empty and no camera_info was received on {cfg.camera_info_topic}")
        else:
            try:
                frame = resolve_camera_frame(cfg.camera_frame, info.header.frame_id, extrinsics.file_child_frame)
                cam = dataclasses.replace(camera_info_to_camera(info), frame_id=frame)
            except ValueError as exc:
                raise InvalidRequest(f"camera_info: {exc}") from None
        try:
            full = complete_trajectory(traj, model, self._joints.values, cfg.unknown_joints, cfg.joint_limits,
                                       cfg.missing_joints)
        except ValueError as exc:
            raise InvalidRequest(str(exc)) from None
        ext = extrinsics.get(model.root_link, cam.frame_id)
        key = (id(model), dataclasses.astuple(cam), ext.T_base_cam.tobytes())
        if key != self._renderer_key:
            self._renderer, self._renderer_key = PointmapRenderer(model, cam, ext), key
        stamp_ns = time_to_ns(goal.trajectory.header.stamp) or self.get_clock().now().nanoseconds
        return build_pointmap_sequence(self._renderer, full, num_frames, source="plan", source_id="k4d/imagine",
                                       fps=cfg.trajectory_fps or None, stamp_ns=stamp_ns)

    def _decode_goal(self, goal, engine: ImagineEngine) -> tuple[ImagineRequest, Sampling, Optional[PointmapSequence]]:
        """Imagine.Goal -> (request, resolved sampling, condition message to echo). Raises InvalidRequest."""
        t = engine.geometry[0]
        image = goal_image(goal.initial_image)
        overrides = overrides_from_msg(goal.sampling)
        condition = None
        if goal.condition_type == Imagine.Goal.CONDITION_POINTMAPS:
            try:
                seq = msg_to_pointmap_sequence(goal.pointmaps)
            except ValueError as exc:
                raise InvalidRequest(f"pointmaps: {exc}") from None
            condition = goal.pointmaps
        elif goal.condition_type == Imagine.Goal.CONDITION_TRAJECTORY:
            seq = self._trajectory_sequence(goal, overrides.num_frames or t)
        else:
            raise InvalidRequest(f"condition_type must be CONDITION_POINTMAPS (0) or CONDITION_TRAJECTORY (1), got "
                                 f"{goal.condition_type}")
        if seq.stamp_ns == 0:
            seq.stamp_ns = time_to_ns(goal.initial_image.header.stamp) or self.get_clock().now().nanoseconds
            condition = None  # re-encode with the stamp used
        depth = depth_for_image(goal.initial_depth, image.shape, "initial_depth")
        request = ImagineRequest(image=image, sequence=seq, sampling=overrides, anchor_depth=depth)
        return request, engine.check_request(request), condition

    def _on_plan(self, msg: PointmapSequence) -> None:
        """Preview: imagine this plan from the latest camera image; replaces a preview still waiting."""
        engine, image = self.engine, self._latest_image
        if not self._serving or engine is None:
            self.stats.dropped += 1
            return
        if image is None:
            self._report(f"preview dropped: no camera image received on {self.cfg.image_topic} yet")
            return
        try:
            rgb = rgb_from_image(self._decoded(image))
            seq = msg_to_pointmap_sequence(msg)
            if seq.stamp_ns == 0:
                seq.stamp_ns = self.get_clock().now().nanoseconds
            request = ImagineRequest(image=rgb, sequence=seq, sampling=SamplingOverrides(),
                                     anchor_depth=self._preview_depth(rgb))
            sampling = engine.check_request(request)
        except Exception as exc:  # noqa: BLE001 - bad input is reported and dropped
            self._report(f"preview of {self.cfg.plan_topic} dropped: {first_line(exc)}")
            return
        condition = msg if time_to_ns(msg.header.stamp) else None
        with self._lock:
            if self._preview is not None:  # latest wins, in the replaced preview's place
                self._preview.request, self._preview.sampling = request, sampling
                self._preview.condition = condition
                self.stats.dropped += 1
            else:
                self._preview = Job("preview", next(self._order), time.monotonic(), request=request,
                                    sampling=sampling, condition=condition)
            self._lock.notify_all()
        self._update_diag()

    # -- action server ------------------------------------------------------------------------
    def _on_accepted(self, goal_handle) -> None:
        """Admit a goal: refuse it (executed at once, aborted with the code) or queue it for the worker."""
        job = Job("goal", next(self._order), time.monotonic(), goal_handle=goal_handle,
                  request_id=bytes(goal_handle.goal_id.uuid).hex())
        self._jobs[bytes(goal_handle.goal_id.uuid)] = job
        refusal = self._admit(job)
        if refusal is not None:
            self.get_logger().warning(f"goal {job.request_id[:8]} refused: {refusal.message}")
            self.stats.error(refusal.message)
            job.finish(refusal)
            goal_handle.execute()
            return
        self._update_diag()
        self._on_queue_timer()  # first "queued" feedback

    def _admit(self, job: Job) -> Optional[Outcome]:
        engine = self.engine
        if not self._serving or engine is None:
            return Outcome(R.ERROR_NOT_ACTIVE, f"imagine_node is not active (lifecycle state {self._state}); "
                                               "configure and activate it first")
        with self._lock:
            waiting = sum(j.kind == "goal" for j in self._queue) + self._reserved
            running = self._current is not None  # a running preview holds the model as a goal does
            if waiting + running > self.cfg.queue_size:
                return Outcome(R.ERROR_QUEUE_FULL, f"the queue is full: {waiting} goal(s) wait behind the running "
                                                   f"one (queue_size {self.cfg.queue_size}); try again later")
            self._reserved += 1
        try:
            job.request, job.sampling, job.condition = self._decode_goal(job.goal_handle.request, engine)
        except InvalidRequest as exc:
            return Outcome(R.ERROR_INVALID_GOAL, str(exc))
        except Exception as exc:  # noqa: BLE001 - e.g. an extrinsics or description failure
            return Outcome(R.ERROR_INTERNAL, f"{type(exc).__name__}: {first_line(exc)}")
        finally:
            with self._lock:
                self._reserved -= 1
        with self._lock:
            if not self._serving:
                return Outcome(R.ERROR_NOT_ACTIVE, "imagine_node was deactivated while the goal was admitted")
            self._queue.append(job)
            self._lock.notify_all()
        return None

    def _on_queue_timer(self) -> None:
        """Cancel waiting goals whose cancel was requested; publish "queued" feedback when positions change."""
        canceled = []
        with self._lock:
            for job in list(self._queue):
                if job.cancel_requested:
                    self._queue.remove(job)
                    canceled.append(job)
            ahead = ([self._current] if self._current is not None else []) + sorted(
                list(self._queue) + ([self._preview] if self._preview is not None else []), key=lambda j: j.order)
        for job in canceled:
            job.finish(Outcome(R.ERROR_CANCELED, "canceled by the client while waiting in the queue"))
            job.goal_handle.execute()
        engine = self.engine
        for pos, job in enumerate(ahead):
            if job.kind != "goal" or job is self._current or pos == job.queue_position:
                continue
            job.queue_position = pos
            steps = job.sampling.num_inference_steps if job.sampling else 0
            eta = (pos + 1) * engine.estimate_s(steps) if engine is not None else 0.0
            self._feedback(job, "queued", 0, steps, eta, pos)
        if canceled:
            self._update_diag()

    def _feedback(self, job: Job, stage: str, step: int, total: int, eta_s: float, position: int = 0) -> None:
        if job.goal_handle is None:
            return
        fb = Imagine.Feedback(stage=stage, step=int(step), total_steps=int(total), eta_s=float(eta_s),
                              elapsed_s=float(time.monotonic() - job.accepted_at), queue_position=int(position))
        job.goal_handle.publish_feedback(fb)

    def _execute(self, goal_handle) -> Imagine.Result:
        """Runs when the worker starts a goal (or at once for a refusal); waits for its outcome."""
        key = bytes(goal_handle.goal_id.uuid)
        job = self._jobs.get(key)
        if job is None:  # cannot happen: every accepted goal gets a job
            goal_handle.abort()
            return R(success=False, error_code=R.ERROR_INTERNAL, error_message="unknown goal")
        while not job.done.wait(0.1):
            if not rclpy.ok(context=self.context):
                job.finish(Outcome(R.ERROR_INTERNAL, "the node is shutting down"))
        self._jobs.pop(key, None)
        out = job.outcome
        result = R(success=out.code == R.ERROR_NONE, error_code=out.code, error_message=out.message)
        if out.code == R.ERROR_NONE:
            result.rollout = out.rollout
            goal_handle.succeed()
        elif out.code == R.ERROR_CANCELED and goal_handle.is_cancel_requested:
            goal_handle.canceled()
        else:
            goal_handle.abort()
        return result

    # -- the GPU worker -----------------------------------------------------------------------
    def _next_job(self) -> Optional[Job]:
        with self._lock:
            while not self._stop:
                if self._serving and (self._queue or self._preview is not None):
                    first = self._queue[0] if self._queue else None
                    if self._preview is not None and (first is None or self._preview.order < first.order):
                        job, self._preview = self._preview, None
                    else:
                        job = self._queue.popleft()
                    self._current = job
                    return job
                self._lock.wait(0.5)
        return None

    def _work(self) -> None:
        while True:
            job = self._next_job()
            if job is None:
                return
            try:
                self._run(job)
            except Exception as exc:  # noqa: BLE001 - the worker never dies
                self._report(f"imagine worker: {type(exc).__name__}: {exc}")
                if not job.done.is_set():
                    job.finish(Outcome(R.ERROR_INTERNAL, f"{type(exc).__name__}: {exc}"))
            finally:
                with self._lock:
                    self._current = None
                    self._lock.notify_all()
                self._update_diag()

    def _run(self, job: Job) -> None:
        gh = job.goal_handle
        if gh is not None:
            if gh.is_cancel_requested:
                job.finish(Outcome(R.ERROR_CANCELED, "canceled by the client before it started"))
                gh.execute()
                return
            gh.execute()  # -> EXECUTING; _execute waits for the outcome
        self._update_diag()

        def progress(stage: str, step: int, total: int, elapsed: float, eta: float) -> None:
            self._feedback(job, stage, step, total, eta)

        def should_stop() -> bool:
            return job.cancel_requested or not self._serving or self._stop

        label = f"goal {job.request_id[:8]}" if gh is not None else "preview"
        try:
            result = self.engine.run(job.request, progress=progress, should_stop=should_stop, sampling=job.sampling)
        except K4DCancelled as exc:
            if job.cancel_requested:
                outcome = Outcome(R.ERROR_CANCELED, f"canceled by the client after {exc.step}/{exc.total} "
                                                    "denoising steps")
            else:
                outcome = Outcome(R.ERROR_NOT_ACTIVE, f"the node stopped serving after {exc.step}/{exc.total} "
                                                      "denoising steps")
            self.get_logger().info(f"{label}: {outcome.message}")
            job.finish(outcome)
            return
        except EngineOutOfMemory as exc:
            self._report(f"{label}: {exc}")
            job.finish(Outcome(R.ERROR_OUT_OF_MEMORY, str(exc)))
            return
        except InvalidRequest as exc:
            self._report(f"{label}: {exc}")
            job.finish(Outcome(R.ERROR_INVALID_GOAL, str(exc)))
            return
        except Exception as exc:  # noqa: BLE001
            self._report(f"{label} failed: {type(exc).__name__}: {exc}")
            job.finish(Outcome(R.ERROR_INTERNAL, f"{type(exc).__name__}: {exc}"))
            return
        rollout = rollout_to_msg(result, job.request_id, job.condition)
        images, clouds = frame_messages(result, self.cfg.publish_frames)
        pubs = self._pubs
        if pubs:
            try:
                pubs["rollout"].publish(rollout)
                for msg in images:
                    pubs["rgb"].publish(msg)
                for msg in clouds:
                    pubs["points"].publish(msg)
            except Exception:  # noqa: BLE001 - only while shutting down: the context is gone
                if not self._stop:
                    raise
                return
        self.last_generation_s = result.timings["generation_s"]
        self.stats.record(self.last_generation_s)
        self.get_logger().info(
            f"{label}: {result.sampling.num_frames} frames, {result.sampling.num_inference_steps} steps, seed "
            f"{result.sampling.seed}, {self.last_generation_s:.2f} s, metric lift {result.metric_quality}")
        job.finish(Outcome(R.ERROR_NONE, "", rollout))


def main(args=None) -> int:
    # several threads: the action server, the GPU worker's feedback and the lifecycle services run concurrently
    return run_node(ImagineNode, "imagine_node", args, threads=4)


if __name__ == "__main__":
    sys.exit(main())

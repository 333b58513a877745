"""shadow_node: shadow-mode policy evaluation beside the robot (the world model imagines, reality scores).

    python -m k4d_bringup.ros.shadow_node --ros-args --params-file k4d_bringup/config/shadow_node.yaml
    ros2 launch k4d_bringup shadow.launch.py          (with a distro: k4d nodes beside the robot's drivers)

For every executed action chunk the node renders the robot pointmap sequence of the chunk (k4d_kinematics),
sends an Imagine goal with the camera frame at the chunk's start (and that frame's depth as initial_depth, the
anchor of the world model's metric lift: ``send_initial_depth``), and, once the chunk has executed, scores the
imagination against what the camera saw (PSNR, SSIM, depth error, the 4D success predicate); per episode it
reports imagined vs actual success. The bookkeeping is ``k4d_bringup.shadow.session`` (ROS-free, shared with
``k4d shadow replay``); parameters are ``k4d_bringup.shadow.config.ShadowConfig`` (queue/skip policy there).

Subscribes
- ``chunk_topic`` (/arm_controller/joint_trajectory) trajectory_msgs/JointTrajectory, RELIABLE: executed chunks.
  header.stamp in the future = scheduled start, else the chunk starts on arrival.
- ``candidate_topic`` ('' = off) JointTrajectory, RELIABLE: a candidate policy's proposals, imagined only.
- ``joint_states_topic`` sensor_msgs/JointState, ``image_topic`` sensor_msgs/Image (rgb8/bgr8),
  ``depth_topic`` (optional, 32FC1 m / 16UC1 mm, registered to colour), ``camera_info_topic`` (or
  ``camera_info_file``): SENSOR_QOS.
- ``episode_topic`` (/k4d/episode) std_msgs/String, RELIABLE: 'start [label]', 'end [success|failure]' or JSON
  (a start event may carry the episode's own goal box, ``success_region``, and standing check, ``success_top``:
  ``session.parse_episode_event``; a malformed one is reported and dropped).
Publishes
- ``result_topic`` (/k4d/shadow/result) k4d_msgs/ShadowEvalResult, RELIABLE depth 100: one per chunk
  (chunk_index >= 0) and one per episode and mode (chunk_index -1).
- ``/diagnostics``: chunks evaluated / skipped / failed, queue length, world-model availability, log path,
  ``initial_depth_skipped`` (chunk-start depths not sent because their size differs from the image's).
Action client: ``imagine_action`` (/k4d/imagine) k4d_msgs/action/Imagine; one goal in flight at a time.
Writes: the JSONL log ``log_path`` (fsync per record) and, with ``save_frames``, ``<log stem>_frames/``.

Never commands the robot: every publisher goes through an ActuatorGuard (``actuator_topics`` patterns plus
``chunk_topic`` and ``candidate_topic``); creating a publisher on such a topic raises ValueError.

World-model failures: a rejected/aborted goal, a goal running over ``imagine_timeout_s``, or the action server
vanishing from the graph while a goal runs (the process died; DDS notices when the participant's lease
expires: Fast DDS default 20 s, shorter with a participant profile) fail that chunk (STATUS_FAILED_TO_EVALUATE)
and its episode summary; chunks queued while no server is there wait ``server_wait_s``, then fail too. When
the server is back, the next chunks are evaluated again. Earlier results are never changed. A server that is
there but answers "not active" (its node still loads the model, or was deactivated) gets the chunk again once a
second, up to ``inactive_wait_s`` after the chunk arrived (``ShadowSession.requeue``).
"""
from __future__ import annotations

import math
import time
from typing import Optional

import numpy as np
from rclpy.action import ActionClient
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image, JointState
from std_msgs.msg import Header, String
from trajectory_msgs.msg import JointTrajectory

from k4d_bringup.shadow.config import NOT_ACTIVE_RETRY_S, SERVER_LOST_S, ShadowConfig
from k4d_bringup.shadow.guard import ActuatorGuard
from k4d_bringup.shadow.imaginers import DepthGate, start_depth
from k4d_bringup.shadow.log import ShadowLog
from k4d_bringup.shadow.session import FramePairer, Kinematics, RolloutData, ShadowSession
from k4d_kinematics.ros.conversions import (camera_info_to_camera, camera_to_camera_info, data_to_joint_trajectory,
                                            depth_from_image, image_to_numpy, joint_trajectory_to_data,
                                            numpy_to_image, pointmap_sequence_to_msg, rgb_from_image, time_from_ns,
                                            time_to_ns)
from k4d_kinematics.ros.description_source import DescriptionSource
from k4d_kinematics.ros.diagnostics import DiagnosticsPublisher, RateLatencyStats
from k4d_kinematics.ros.extrinsics_source import ExtrinsicsSource
from k4d_kinematics.ros.node_logic import JointStateMerger, ThrottledLog, first_line, resolve_camera_frame
from k4d_kinematics.ros.params import declare_config
from k4d_kinematics.ros.qos import RELIABLE_QOS, SENSOR_QOS

RESULT_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=100, reliability=ReliabilityPolicy.RELIABLE,
                        durability=DurabilityPolicy.VOLATILE)
_STATUS = {"ok": 0, "skipped": 1, "failed_to_evaluate": 2}
_QUALITY = {0: "unknown", 1: "good", 2: "poor", 3: "failed", 4: "anchored_good", 5: "anchored_poor"}


def _nan(v) -> float:
    return float("nan") if v is None else float(v)


# ---------------------------------------------------------------------------------------------
# Message helpers (also used by the offline replay's action client)
# ---------------------------------------------------------------------------------------------


def build_goal(cfg: ShadowConfig, initial_rgb: np.ndarray, seq, traj=None,
               initial_depth: Optional[np.ndarray] = None):
    """Imagine goal: the initial frame (rgb8), its registered depth when given ((H, W) metres, NaN or 0 = unknown;
    pass it through a ``DepthGate``, which applies ``send_initial_depth``) and the chunk as pointmaps (or as a
    trajectory). ValueError for a depth whose size differs from the frame's."""
    from k4d_msgs.action import Imagine

    goal = Imagine.Goal()
    stamp, frame = time_from_ns(seq.stamp_ns), seq.camera.frame_id
    goal.initial_image = numpy_to_image(np.ascontiguousarray(initial_rgb, np.uint8), "rgb8",
                                        Header(stamp=stamp, frame_id=frame))
    if initial_depth is not None:
        d = np.ascontiguousarray(initial_depth, np.float32)
        if d.shape != (goal.initial_image.height, goal.initial_image.width):
            raise ValueError(f"initial depth of shape {d.shape} differs from the {goal.initial_image.width}x"
                             f"{goal.initial_image.height} image")
        # 32FC1 metres with NaN where unknown (REP 118, depth_image_proc's float output): lossless for the float32
        # metres the node holds, where 16UC1 would round to millimetres and turn NaN into 0. The server's
        # depth_for_image accepts 32FC1 and 16UC1 and reads NaN (and 0) as unknown.
        goal.initial_depth = numpy_to_image(d, "32FC1", Header(stamp=stamp, frame_id=frame))
    if cfg.condition == "trajectory" and traj is not None:
        goal.condition_type = Imagine.Goal.CONDITION_TRAJECTORY
        goal.trajectory = data_to_joint_trajectory(traj)
        goal.camera_info = camera_to_camera_info(seq.camera)
    else:
        goal.condition_type = Imagine.Goal.CONDITION_POINTMAPS
        goal.pointmaps = pointmap_sequence_to_msg(seq)
    s = goal.sampling
    s.num_inference_steps = int(cfg.num_inference_steps)
    s.guidance_scale = float(cfg.guidance_scale)
    s.seed = int(cfg.seed)
    s.num_frames = int(cfg.num_frames)
    return goal


def rollout_from_result(result, anchor_sent: bool = False) -> RolloutData:
    """Imagine result -> RolloutData (RuntimeError with the server's reason when it failed); ``anchor_sent``: the
    goal carried initial_depth."""
    if not result.success:
        raise RuntimeError(f"world model error {int(result.error_code)}: {result.error_message}")
    ro = result.rollout
    if not ro.rgb or len(ro.rgb) != len(ro.xyz):
        raise RuntimeError(f"rollout has {len(ro.rgb)} rgb and {len(ro.xyz)} xyz frames")
    rgb = np.stack([image_to_numpy(im, "rgb8") if im.encoding in ("rgb8", "bgr8") else rgb_from_image(im)
                    for im in ro.rgb])
    xyz = np.stack([image_to_numpy(im).astype(np.float32) for im in ro.xyz])
    q = int.from_bytes(ro.metric_quality, "little") if isinstance(ro.metric_quality, bytes) else int(ro.metric_quality)
    return RolloutData(rgb, xyz, bool(ro.metric), ro.model_id, float(ro.generation_time_s), _QUALITY.get(q, str(q)),
                       float(ro.metric_residual_m), anchor_sent=bool(anchor_sent))


def result_to_msg(rec: dict, frame_id: str = ""):
    """A session result dict -> k4d_msgs/ShadowEvalResult."""
    from k4d_msgs.msg import ShadowEvalResult

    m = ShadowEvalResult()
    m.header.stamp = time_from_ns(int(rec.get("stamp_ns", 0)))
    m.header.frame_id = frame_id
    m.episode_id = str(rec["episode_id"])
    m.chunk_index = int(rec["chunk_index"])
    m.scenario, m.policy = str(rec.get("scenario", "")), str(rec.get("policy", ""))
    m.mode = ShadowEvalResult.MODE_CANDIDATE if rec.get("mode") == "candidate" else ShadowEvalResult.MODE_LIVE
    m.status = _STATUS[rec["status"]]
    m.status_message = str(rec.get("status_message", ""))[:1000]
    m.psnr_db, m.ssim, m.depth_mae_m = _nan(rec.get("psnr_db")), _nan(rec.get("ssim")), _nan(rec.get("depth_mae_m"))
    m.imagined_success = bool(rec.get("imagined_success"))
    m.imagined_success_probability = _nan(rec.get("imagined_success_probability"))
    m.has_actual, m.actual_success = bool(rec.get("has_actual")), bool(rec.get("actual_success"))
    m.imagine_latency_s = _nan(rec.get("imagine_latency_s"))
    return m


# ---------------------------------------------------------------------------------------------
# The node
# ---------------------------------------------------------------------------------------------


class ShadowNode(Node):
    """Shadow evaluation (see module doc)."""

    def __init__(self, node_name: str = "k4d_shadow", **kwargs):
        self._guard: Optional[ActuatorGuard] = None  # set before any publisher of ours is created
        super().__init__(node_name, **kwargs)
        # 1. Parameters and the actuator guard
        self.cfg: ShadowConfig = declare_config(self, ShadowConfig)
        cfg = self.cfg
        self._guard = ActuatorGuard(cfg.actuator_topics, [cfg.chunk_topic, cfg.candidate_topic])
        self._guard.check(cfg.imagine_action)  # never an action client of an actuator (follow_joint_trajectory)
        # 2. Diagnostics and error reporting
        self.stats = RateLatencyStats(window_s=600.0)
        self.diag = DiagnosticsPublisher(self)
        self.diag.add("shadow evaluation", self.stats)
        self._log_error = ThrottledLog(self.get_logger().warning)
        # 3. Robot, camera, extrinsics
        self.joints = JointStateMerger()
        self.extrinsics = ExtrinsicsSource(self, cfg)
        self.camera = None
        if cfg.camera_info_file:
            from k4d_kinematics.camera import PinholeCamera

            frame = resolve_camera_frame(cfg.camera_frame, "", self.extrinsics.file_child_frame)
            self.camera = PinholeCamera.from_yaml(cfg.camera_info_file, frame_id=frame)
        self._kin_key, self._kin = None, None
        self.description = DescriptionSource(self, cfg, lambda _m: None, self._report)
        # 4. Results: durable log, publisher, session
        self.log = ShadowLog(cfg.log_path)
        frames_dir = self.log.path.parent / f"{self.log.path.stem}_frames"
        self.pub_result = self.create_publisher(_result_type(), cfg.result_topic, RESULT_QOS)
        self.session = ShadowSession(cfg, self._kinematics, self._sink, frames_dir, self.log.path.parent)
        # 5. World model client
        from k4d_msgs.action import Imagine

        self.client = ActionClient(self, Imagine, cfg.imagine_action)
        self._goal: Optional[dict] = None
        self._inactive_until = 0.0  # monotonic s: the server answered "not active"; no dispatch before this
        self.depth_gate = DepthGate(cfg.send_initial_depth, self.get_logger().warning)
        # 6. Inputs (an image waits for the depth of its stamp, whichever arrives first: the chunk-start frame's depth
        # goes with the Imagine goal)
        self.pairer = FramePairer(bool(cfg.depth_topic))
        self.create_subscription(JointState, cfg.joint_states_topic, self._on_joint_state, SENSOR_QOS)
        self.create_subscription(Image, cfg.image_topic, self._on_image, SENSOR_QOS)
        if cfg.depth_topic:
            self.create_subscription(Image, cfg.depth_topic, self._on_depth, SENSOR_QOS)
        if not cfg.camera_info_file:
            self.create_subscription(CameraInfo, cfg.camera_info_topic, self._on_camera_info, SENSOR_QOS)
        self.create_subscription(JointTrajectory, cfg.chunk_topic, lambda m: self._on_chunk(m, "live"), RELIABLE_QOS)
        if cfg.candidate_topic:
            self.create_subscription(JointTrajectory, cfg.candidate_topic, lambda m: self._on_chunk(m, "candidate"),
                                     RELIABLE_QOS)
        self.create_subscription(String, cfg.episode_topic, self._on_episode, RELIABLE_QOS)
        self.create_timer(0.05, self._tick)
        self._update_diag()
        self.get_logger().info(
            f"shadow_node ready: chunks {cfg.chunk_topic}" + (f", candidate {cfg.candidate_topic}" if cfg.candidate_topic
                                                              else "")
            + f"; world model {cfg.imagine_action}; log {self.log.path}; queue {cfg.queue_size} ({cfg.queue_policy})")

    # -- the actuator guard ----------------------------------------------------------------------
    def create_publisher(self, msg_type, topic, qos_profile, **kwargs):
        if self._guard is not None:
            self._guard.check(self.resolve_topic_name(topic))
        return super().create_publisher(msg_type, topic, qos_profile, **kwargs)

    # -- helpers ---------------------------------------------------------------------------------
    def _now_ns(self) -> int:
        return self.get_clock().now().nanoseconds

    def _report(self, message: str) -> None:
        self.stats.error(message)
        self._log_error(message)

    def _kinematics(self) -> Optional[Kinematics]:
        model, cam = self.description.model, self.camera
        if model is None or cam is None:
            return None
        ext = self.extrinsics.get(model.root_link, cam.frame_id)
        key = (id(model), cam, ext.T_base_cam.tobytes())
        if key != self._kin_key:
            self._kin, self._kin_key = Kinematics(model, cam, ext, limits=self.cfg.joint_limits), key
        return self._kin

    def _q(self):
        model = self.description.model
        if model is None or not self.joints.values:
            return None
        try:
            return self.joints.q(model, self.cfg.missing_joints, "clamp")
        except ValueError:
            return None

    def _sink(self, rec: dict) -> None:
        """Every result: the durable log first, then the topic."""
        try:
            self.log.append(rec)
        except OSError as exc:
            self._report(f"cannot write the shadow log {self.log.path}: {exc}")
        cam = self.camera
        try:
            self.pub_result.publish(result_to_msg(rec, cam.frame_id if cam else ""))
        except Exception as exc:  # noqa: BLE001 - publishing during shutdown; the log has the record
            self._log_error(f"result not published: {first_line(exc)}")
        if rec["kind"] == "chunk":
            if rec["status"] == "ok":
                self.stats.record(_nan(rec.get("imagine_latency_s")) if math.isfinite(_nan(
                    rec.get("imagine_latency_s"))) else 0.0)
            elif rec["status"] == "skipped":
                self.stats.dropped += 1
            else:
                self._report(f"chunk {rec['episode_id']}/{rec['chunk_index']} failed to evaluate: "
                             f"{rec['status_message']}")
        else:
            self.get_logger().info(
                f"episode {rec['episode_id']} ({rec['mode']} {rec['policy']}): {rec['status']}; imagined success "
                f"{rec['imagined_success']} (p={rec['imagined_success_probability']}), actual "
                f"{rec['actual_success'] if rec['has_actual'] else 'unknown'}")
        self._update_diag()

    def _update_diag(self) -> None:
        st = self.session.status() if hasattr(self, "session") else {}
        self.diag.extra.update({k: str(v) for k, v in st.items()})
        self.diag.extra["server_ready"] = str(bool(self.client.server_is_ready())) if hasattr(self, "client") else "?"
        self.diag.extra["log_path"] = str(self.log.path) if hasattr(self, "log") else ""
        self.diag.extra["queue_policy"] = f"{self.cfg.queue_size} {self.cfg.queue_policy}"
        self.diag.extra["initial_depth_skipped"] = str(self.depth_gate.skipped) if hasattr(self, "depth_gate") else "0"

    # -- inputs ----------------------------------------------------------------------------------
    def _on_joint_state(self, msg: JointState) -> None:
        try:
            self.joints.update(msg.name, msg.position, time_to_ns(msg.header.stamp) or self._now_ns(),
                               self.description.model, "ignore", "clamp")
        except Exception as exc:  # noqa: BLE001
            self._report(f"joint_states dropped: {first_line(exc)}")

    def _on_camera_info(self, msg: CameraInfo) -> None:
        try:
            frame = resolve_camera_frame(self.cfg.camera_frame, msg.header.frame_id, self.extrinsics.file_child_frame)
            cam = camera_info_to_camera(msg)
            import dataclasses

            cam = dataclasses.replace(cam, frame_id=frame)
        except Exception as exc:  # noqa: BLE001
            self._report(f"camera_info dropped: {first_line(exc)}")
            return
        if cam != self.camera:
            self.camera = cam

    def _on_depth(self, msg: Image) -> None:
        try:
            depth = depth_from_image(msg)
        except Exception as exc:  # noqa: BLE001
            self._report(f"depth dropped: {first_line(exc)}")
            return
        self._frames(self.pairer.depth(time_to_ns(msg.header.stamp) or self._now_ns(), depth))

    def _on_image(self, msg: Image) -> None:
        try:
            rgb = rgb_from_image(msg)
        except Exception as exc:  # noqa: BLE001
            self._report(f"image dropped: {first_line(exc)}")
            return
        self._frames(self.pairer.image(time_to_ns(msg.header.stamp) or self._now_ns(), rgb, self._q()))

    def _frames(self, frames) -> None:
        """Camera frames complete with their depth (within 20 ms of the image's stamp; drivers stamp both alike)."""
        for f in frames:
            self.session.on_frame(f.stamp_ns, f.rgb, f.depth, f.q)

    def _on_chunk(self, msg: JointTrajectory, mode: str) -> None:
        try:
            traj = joint_trajectory_to_data(msg)
            self.session.on_chunk(traj, mode, self._now_ns(), self._q(), time_to_ns(msg.header.stamp))
        except Exception as exc:  # noqa: BLE001 - a bad chunk is reported and dropped
            self._report(f"{mode} chunk dropped: {first_line(exc)}")
        self._tick()

    def _on_episode(self, msg: String) -> None:
        try:
            ev = self.session.on_episode_event(msg.data, self._now_ns())
            self.get_logger().info(f"episode event: {ev}")
        except ValueError as exc:
            self._report(f"episode event dropped: {first_line(exc)}")

    # -- world model -----------------------------------------------------------------------------
    def _tick(self) -> None:
        now = self._now_ns()
        ready = self.client.server_is_ready()
        g = self._goal
        if g is not None:
            elapsed = time.monotonic() - g["sent"]
            if not ready:
                g["lost"] = g["lost"] or time.monotonic()
                if time.monotonic() - g["lost"] > SERVER_LOST_S:
                    self._goal_failed(g, f"world model action server {self.cfg.imagine_action} disappeared while "
                                         f"imagining (node crashed or stopped)")
            else:
                g["lost"] = None
            if self._goal is g and elapsed > self.cfg.imagine_timeout_s:
                if g.get("handle") is not None:
                    g["handle"].cancel_goal_async()
                self._goal_failed(g, f"imagination took longer than imagine_timeout_s={self.cfg.imagine_timeout_s} s")
        if self._goal is None and time.monotonic() >= self._inactive_until:
            try:
                rec = self.session.next_dispatch(now, ready)
            except Exception as exc:  # noqa: BLE001
                self._report(f"dispatch failed: {first_line(exc)}")
                rec = None
            if rec is not None:
                self._send(rec)
        self.session.tick(now)

    def _send(self, rec) -> None:
        try:
            rgb = rec.real[0].rgb
            depth = self.depth_gate(rgb, start_depth(rec))
            goal = build_goal(self.cfg, rgb, rec.seq, rec.traj, depth)
        except Exception as exc:  # noqa: BLE001
            self.session.on_imagined(rec, None, f"cannot build the Imagine goal: {first_line(exc)}", self._now_ns())
            return
        g = {"rec": rec, "sent": time.monotonic(), "lost": None, "handle": None, "anchor_sent": depth is not None}
        self._goal = g
        fut = self.client.send_goal_async(goal)
        fut.add_done_callback(lambda f, g=g: self._on_goal_response(g, f))

    def _goal_failed(self, g: dict, reason: str) -> None:
        if self._goal is g:
            self._goal = None
        self.session.on_imagined(g["rec"], None, reason, self._now_ns())

    def _on_goal_response(self, g: dict, fut) -> None:
        if self._goal is not g:
            return
        try:
            handle = fut.result()
        except Exception as exc:  # noqa: BLE001
            self._goal_failed(g, f"Imagine goal failed: {first_line(exc)}")
            return
        if handle is None or not handle.accepted:
            self._goal_failed(g, "Imagine goal rejected by the world model")
            return
        g["handle"] = handle
        handle.get_result_async().add_done_callback(lambda f, g=g: self._on_result(g, f))

    def _on_result(self, g: dict, fut) -> None:
        if self._goal is not g:
            return  # already failed (timeout / server gone); a late answer is ignored
        self._goal = None
        from k4d_msgs.action import Imagine

        try:
            result = fut.result().result
            if result.error_code == Imagine.Result.ERROR_NOT_ACTIVE:  # loading or deactivated: again soon
                self._inactive_until = time.monotonic() + NOT_ACTIVE_RETRY_S
                self.session.requeue(g["rec"], self._now_ns(),
                                     f"world model not active for inactive_wait_s={self.cfg.inactive_wait_s:g} s: "
                                     f"{result.error_message}")
                return
            ro = rollout_from_result(result, g["anchor_sent"])
            err = ""
        except Exception as exc:  # noqa: BLE001
            ro, err = None, first_line(exc)
        self.session.on_imagined(g["rec"], ro, err, self._now_ns())
        self._tick()

    def destroy_node(self):
        try:
            self.session.flush(self._now_ns())
        except Exception:  # noqa: BLE001 - shutting down: whatever is finished is already on disk
            pass
        self.log.close()
        return super().destroy_node()


def _result_type():
    from k4d_msgs.msg import ShadowEvalResult

    return ShadowEvalResult


def main(args=None) -> int:
    from k4d_kinematics.ros.node_main import run_node

    return run_node(ShadowNode, "k4d_shadow", args)


if __name__ == "__main__":
    import sys

    sys.exit(main())

"""sim_node: the simulated YAM workcell (MuJoCo) in real time, with the topics of the real robot's drivers.

    python -m k4d_bringup.ros.sim_node --ros-args --params-file k4d_bringup/config/sim_node.yaml
    ros2 run k4d_bringup sim_node --ros-args --params-file ...          (with a distro)

Threads: a physics thread steps ``YamSim`` against the wall clock and publishes ``/joint_states`` at
``joint_state_rate_hz`` (the YAM driver's 250 Hz); a camera thread copies the state (under the lock, a
few microseconds) and renders it outside the lock at ``camera_rate_hz``; the executor thread runs the
command callbacks and the object-state timer. How late the physics runs behind the wall clock is in
/diagnostics (``sim_lag_ms``); if it falls ``max_lag_s`` behind (CPU starved), the sim clock skips
ahead instead of running fast (counted in ``lag_resets``).

Stamps: wall-clock (system) time of the simulated instant: ``wall_at_start + sim_time``.

Publishes (SENSOR_QOS unless noted; camera topics in ``camera_frame``)
- ``/joint_states`` sensor_msgs/JointState: joint1..joint8 (6 arm joints rad, 2 finger joints m), position,
  velocity, effort (actuator force), every 1 / joint_state_rate_hz.
- ``/camera/color/image_raw`` sensor_msgs/Image rgb8 and ``/camera/color/camera_info``.
- ``/camera/depth/image_rect_raw`` sensor_msgs/Image 32FC1 metres along the optical axis (NaN = no return),
  registered to the colour camera, and ``/camera/depth/camera_info`` (the same intrinsics).
  Images are rendered only while someone subscribes to them; CameraInfo is always published.
- ``/k4d/sim/object_states`` visualization_msgs/MarkerArray (RELIABLE, ``object_state_rate_hz``): ground truth,
  base frame; ns "target" / "distractor" (CUBE or CYLINDER, id = object index, scale = full extents) and
  ns "zone" (a flat CYLINDER: the place zone, scale.x = diameter).
- static TF base_frame -> camera_frame (when tf2_ros imports); always: ``extrinsics_out`` /
  ``camera_info_out`` YAML files (k4d Extrinsics / camera_calibration_parsers format) when set, the files
  the pointmap/plan nodes read (extrinsics_source 'file', camera_info_file).
- ``/diagnostics``: joint-state and camera rates, sim lag, rejected commands.
Subscribes (RELIABLE_QOS)
- ``trajectory_topic`` (/arm_controller/joint_trajectory) trajectory_msgs/JointTrajectory, as
  joint_trajectory_controller's topic interface: replaces the active trajectory; header.stamp 0 (or in the
  past) = start now, else start at that time; points' positions only. A bad trajectory (unknown or duplicate
  joint, NaN, outside the URDF limits, time not increasing, first point at t = 0 away from the current
  position) is rejected: an error is logged and reported in /diagnostics, and the arm keeps holding.
- ``gripper_topic`` (/gripper_controller/command) std_msgs/Float64: gripper opening, metres between the finger
  pads (0 = closed .. 0.0939 = open); out-of-range or NaN is rejected likewise.
"""
from __future__ import annotations

import dataclasses
import math
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "osmesa")

from rclpy.node import Node  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image, JointState  # noqa: E402
from std_msgs.msg import ColorRGBA, Float64, Header  # noqa: E402
from trajectory_msgs.msg import JointTrajectory  # noqa: E402
from visualization_msgs.msg import Marker, MarkerArray  # noqa: E402

from k4d_kinematics.ros.conversions import (camera_to_camera_info, joint_trajectory_to_data,  # noqa: E402
                                            numpy_to_image, time_from_ns, time_to_ns)
from k4d_kinematics.ros.diagnostics import DiagnosticsPublisher, RateLatencyStats  # noqa: E402
from k4d_kinematics.ros.node_logic import ThrottledLog, first_line  # noqa: E402
from k4d_kinematics.ros.params import declare_config  # noqa: E402
from k4d_kinematics.ros.qos import RELIABLE_QOS, SENSOR_QOS  # noqa: E402
from k4d_kinematics.config import param_doc  # noqa: E402


def _doc(text: str, read_only: bool = True) -> dict:
    return param_doc(text, read_only)  # read-only unless said otherwise


@dataclass
class SimNodeConfig:
    """Parameters of sim_node (one ROS parameter per field)."""

    sim_config_file: str = field(default="", metadata=_doc(
        "SimConfig YAML (k4d_bringup.sim.config; top level or a 'sim:' section); '' = the built-in defaults."))
    scenario: str = field(default="easy", metadata=_doc("easy | medium | hard: number of distractors."))
    task: str = field(default="pick_place", metadata=_doc("pick_place | push: which layout is sampled."))
    seed: int = field(default=0, metadata=_doc("Scene randomisation seed."))
    camera_width: int = field(default=0, metadata=_doc("Image width in pixels; 0 = the SimConfig's."))
    camera_height: int = field(default=0, metadata=_doc("Image height in pixels; 0 = the SimConfig's."))
    camera_fy: float = field(default=0.0, metadata=_doc(
        "Focal length in pixels (fx = fy, principal point at the image centre); 0 = the SimConfig's."))
    shadows: bool = field(default=False, metadata=_doc(
        "Render shadows (about 3x the render time with OSMesa; off for real time on small machines)."))
    joint_state_rate_hz: float = field(default=250.0, metadata=_doc("/joint_states rate (the YAM driver: 250 Hz)."))
    camera_rate_hz: float = field(default=30.0, metadata=_doc("Camera frame rate."))
    object_state_rate_hz: float = field(default=10.0, metadata=_doc("/k4d/sim/object_states rate; 0 = off."))
    max_lag_s: float = field(default=0.25, metadata=_doc(
        "When physics falls this far behind the wall clock, the sim clock skips ahead (counted in lag_resets)."))
    base_frame: str = field(default="base", metadata=_doc("Robot base frame (the sim world frame)."))
    camera_frame: str = field(default="camera_color_optical_frame", metadata=_doc(
        "Camera OPTICAL frame (z forward, x right, y down) of all camera topics."))
    extrinsics_out: str = field(default="", metadata=_doc(
        "If set, write the camera extrinsics (k4d Extrinsics YAML, T_base_cam) to this path at start-up."))
    camera_info_out: str = field(default="", metadata=_doc(
        "If set, write the intrinsics (camera_calibration_parsers YAML) to this path at start-up."))
    trajectory_topic: str = field(default="/arm_controller/joint_trajectory", metadata=_doc(
        "trajectory_msgs/JointTrajectory commands (joint_trajectory_controller topic interface)."))
    gripper_topic: str = field(default="/gripper_controller/command", metadata=_doc(
        "std_msgs/Float64 gripper opening in metres between the pads (0 closed .. 0.0939 open)."))

    def __post_init__(self):
        for name in ("joint_state_rate_hz", "camera_rate_hz"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and 0 < v <= 2000):
                raise ValueError(f"{name} must be in (0, 2000] Hz, got {v!r}")
        if not (math.isfinite(self.object_state_rate_hz) and self.object_state_rate_hz >= 0):
            raise ValueError(f"object_state_rate_hz must be >= 0, got {self.object_state_rate_hz!r}")
        if not (math.isfinite(self.max_lag_s) and self.max_lag_s > 0):
            raise ValueError(f"max_lag_s must be > 0, got {self.max_lag_s!r}")
        for name in ("camera_width", "camera_height"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not (v == 0 or 8 <= v <= 4096):
                raise ValueError(f"{name} must be 0 (SimConfig's) or an int in [8, 4096], got {v!r}")
        if not (math.isfinite(self.camera_fy) and self.camera_fy >= 0):
            raise ValueError(f"camera_fy must be >= 0 (0 = SimConfig's), got {self.camera_fy!r}")
        if not self.camera_frame or not self.base_frame:
            raise ValueError("camera_frame and base_frame must be non-empty")


def build_sim_config(cfg: SimNodeConfig):
    """The SimConfig of the node: the YAML file (or defaults) with the node's scenario/task/camera/shadows."""
    from k4d_bringup.sim.config import SimConfig

    sc = SimConfig.from_yaml(cfg.sim_config_file) if cfg.sim_config_file else SimConfig()
    cam = sc.camera
    changes = {k: v for k, v in (("width", cfg.camera_width), ("height", cfg.camera_height), ("fy", cfg.camera_fy))
               if v}
    if changes:
        cam = dataclasses.replace(cam, **changes)
    return dataclasses.replace(sc, scenario=cfg.scenario, task=cfg.task, shadows=bool(cfg.shadows), camera=cam)


class _Stats(RateLatencyStats):
    """RateLatencyStats safe to update from the physics/camera threads while the diagnostics timer reads it."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self._mutex = threading.Lock()

    def record(self, latency_s, now=None):
        with self._mutex:
            super().record(latency_s, now)

    def rate_hz(self, now=None):
        with self._mutex:
            return super().rate_hz(now)

    def latency_ms(self):
        with self._mutex:
            return super().latency_ms()


def object_markers(sim, base_frame: str, stamp) -> MarkerArray:
    """Ground-truth MarkerArray of the sim's objects (ns target/distractor) and place zone (ns zone)."""
    out = MarkerArray()
    header = Header(stamp=stamp, frame_id=base_frame)
    for i, (spec, st) in enumerate(zip(sim.layout.objects, sim.object_states())):
        m = Marker(header=header, ns=st.role, id=i, action=Marker.ADD)
        m.type = Marker.CUBE if spec.kind == "cube" else Marker.CYLINDER
        p, q = st.pos_base, st.quat_wxyz
        m.pose.position.x, m.pose.position.y, m.pose.position.z = (float(v) for v in p)
        m.pose.orientation.w, m.pose.orientation.x, m.pose.orientation.y, m.pose.orientation.z = (float(v) for v in q)
        if spec.kind == "cube":
            m.scale.x, m.scale.y, m.scale.z = (2.0 * float(s) for s in spec.size[:3])
        else:
            m.scale.x = m.scale.y = 2.0 * float(spec.size[0])
            m.scale.z = 2.0 * float(spec.size[1])
        m.color = ColorRGBA(**dict(zip("rgba", (float(c) for c in spec.rgba))))
        m.text = spec.name
        out.markers.append(m)
    z = sim.layout.zone
    m = Marker(header=header, ns="zone", id=0, type=Marker.CYLINDER, action=Marker.ADD)
    m.pose.position.x, m.pose.position.y, m.pose.position.z = float(z.center_base[0]), float(z.center_base[1]), 0.001
    m.pose.orientation.w = 1.0
    m.scale.x = m.scale.y = 2.0 * float(z.radius)
    m.scale.z = 0.002
    m.color = ColorRGBA(**dict(zip("rgba", (float(c) for c in z.rgba))))
    m.text = z.kind
    out.markers.append(m)
    return out


class SimNode(Node):
    """The real-time simulated workcell (see module doc)."""

    def __init__(self, node_name: str = "k4d_sim", **kwargs):
        super().__init__(node_name, **kwargs)
        from k4d_bringup.sim.workcell import YamSim

        # 1. Parameters and the simulator
        self.cfg: SimNodeConfig = declare_config(self, SimNodeConfig)
        cfg = self.cfg
        self.sim_config = build_sim_config(cfg)
        self.sim = YamSim(self.sim_config, seed=cfg.seed)
        self.camera = dataclasses.replace(self.sim.camera_info, frame_id=cfg.camera_frame)
        self.extrinsics = dataclasses.replace(self.sim.extrinsics, parent_frame=cfg.base_frame,
                                              child_frame=cfg.camera_frame)
        self._lock = threading.Lock()  # MuJoCo data: one thread at a time
        self._stop = threading.Event()
        self._wall0_ns = time.time_ns()  # wall clock at sim time 0 (re-anchored on lag resets)
        self._lag_resets = 0
        self._render_data = None
        # 2. Diagnostics
        self.js_stats = _Stats()      # latency = lag of each physics tick behind the wall clock
        self.cam_stats = _Stats()     # latency = render + encode + publish time
        self.cmd_stats = RateLatencyStats(window_s=60.0)
        self.diag = DiagnosticsPublisher(self)
        self.diag.add("joint_states (latency = sim lag)", self.js_stats, 0.9 * cfg.joint_state_rate_hz)
        self.diag.add("camera", self.cam_stats, 0.9 * cfg.camera_rate_hz)
        self.diag.add("commands", self.cmd_stats)
        self._log_error = ThrottledLog(self.get_logger().error, period_s=0.5)
        # 3. Publishers
        self.pub_js = self.create_publisher(JointState, "/joint_states", SENSOR_QOS)
        self.pub_rgb = self.create_publisher(Image, "/camera/color/image_raw", SENSOR_QOS)
        self.pub_info = self.create_publisher(CameraInfo, "/camera/color/camera_info", SENSOR_QOS)
        self.pub_depth = self.create_publisher(Image, "/camera/depth/image_rect_raw", SENSOR_QOS)
        self.pub_depth_info = self.create_publisher(CameraInfo, "/camera/depth/camera_info", SENSOR_QOS)
        self.pub_objects = self.create_publisher(MarkerArray, "/k4d/sim/object_states", RELIABLE_QOS)
        # 4. Commands
        self.create_subscription(JointTrajectory, cfg.trajectory_topic, self._on_trajectory, RELIABLE_QOS)
        self.create_subscription(Float64, cfg.gripper_topic, self._on_gripper, RELIABLE_QOS)
        # 5. Extrinsics: static TF when available, files for the pip-only graph
        self._publish_camera_pose()
        if cfg.object_state_rate_hz > 0:
            self.create_timer(1.0 / cfg.object_state_rate_hz, self._publish_objects)
        self.diag.extra.update({
            "scenario": cfg.scenario, "seed": str(cfg.seed), "camera": f"{self.camera.width}x{self.camera.height} "
            f"fy={self.camera.fy:.1f}", "trajectory_state": "holding", "sim_lag_ms": "nan", "lag_resets": "0"})
        # 6. Threads
        self._threads = [threading.Thread(target=self._physics_loop, name="k4d_sim_physics", daemon=True),
                         threading.Thread(target=self._camera_loop, name="k4d_sim_camera", daemon=True)]
        for t in self._threads:
            t.start()
        self.get_logger().info(
            f"sim ready: scenario {cfg.scenario}, seed {cfg.seed}, camera {self.camera.width}x{self.camera.height} "
            f"@ {cfg.camera_rate_hz:g} Hz, joint_states @ {cfg.joint_state_rate_hz:g} Hz; commands on "
            f"{cfg.trajectory_topic}, {cfg.gripper_topic}")

    # -- time -----------------------------------------------------------------------------------
    def stamp_ns(self, sim_time: float) -> int:
        """Wall-clock stamp (ns) of a sim time (s)."""
        return self._wall0_ns + int(round(sim_time * 1e9))

    def sim_time_of(self, stamp_ns: int) -> float:
        return (stamp_ns - self._wall0_ns) * 1e-9

    # -- threads --------------------------------------------------------------------------------
    def _physics_loop(self) -> None:
        period = 1.0 / self.cfg.joint_state_rate_hz
        msg = JointState()
        with self._lock:
            sim_t0 = self.sim.time
            names = list(self.sim.joint_names)
        t0 = time.monotonic()
        self._wall0_ns = time.time_ns() - int(round(sim_t0 * 1e9))
        k = 0
        try:
            while not self._stop.is_set():
                k += 1
                t_tick = t0 + k * period
                delay = t_tick - time.monotonic()
                if delay > 0 and self._stop.wait(delay):
                    break
                with self._lock:
                    self.sim.step_to(sim_t0 + k * period)
                    js = self.sim.joint_state()
                    done = self.sim.trajectory_done()
                lag = time.monotonic() - t_tick
                msg.header.stamp = time_from_ns(self.stamp_ns(js.stamp))
                msg.name = names
                msg.position, msg.velocity, msg.effort = js.position.tolist(), js.velocity.tolist(), js.effort.tolist()
                self.pub_js.publish(msg)
                self.js_stats.record(max(lag, 0.0))
                if lag > self.cfg.max_lag_s:  # CPU starved: skip ahead rather than run fast
                    t0 = time.monotonic() - k * period
                    self._wall0_ns += int(lag * 1e9)
                    self._lag_resets += 1
                    self.diag.extra["lag_resets"] = str(self._lag_resets)
                    self._log_error(f"sim fell {lag * 1e3:.0f} ms behind real time; skipping ahead")
                if k % 50 == 0:
                    med, mx = self.js_stats.latency_ms()
                    self.diag.extra["sim_lag_ms"] = f"{med:.2f}"
                    self.diag.extra["sim_lag_max_ms"] = f"{mx:.2f}"
                    self.diag.extra["sim_time_s"] = f"{js.stamp:.3f}"
                    self.diag.extra["trajectory_state"] = "holding" if done else "executing"
        except Exception as exc:  # noqa: BLE001 - report, then stop the node's work cleanly
            if self.context.ok():  # else: a publish raced the shutdown
                self.get_logger().fatal(f"physics thread died: {type(exc).__name__}: {exc}")
            self._stop.set()

    def _camera_loop(self) -> None:
        import mujoco

        period = 1.0 / self.cfg.camera_rate_hz
        renderer = self.sim.renderer  # GL context; used from this thread only
        self._render_data = mujoco.MjData(self.sim.model)
        info = camera_to_camera_info(self.camera)
        t0 = time.monotonic()
        k = 0
        try:
            while not self._stop.is_set():
                k += 1
                delay = t0 + k * period - time.monotonic()
                if delay > 0:
                    if self._stop.wait(delay):
                        break
                elif delay < -period:  # more than a frame late: drop the missed frames, keep the phase
                    k += int(-delay // period)
                t_start = time.perf_counter()
                want_rgb = self.pub_rgb.get_subscription_count() > 0
                want_depth = self.pub_depth.get_subscription_count() > 0
                with self._lock:
                    mujoco.mj_copyData(self._render_data, self.sim.model, self.sim.data)
                    sim_t = self.sim.time
                header = Header(stamp=time_from_ns(self.stamp_ns(sim_t)), frame_id=self.cfg.camera_frame)
                frame = renderer.render(self._render_data, rgb=want_rgb, depth=want_depth) \
                    if (want_rgb or want_depth) else None
                info.header = header
                if frame is not None and frame.rgb is not None:
                    self.pub_rgb.publish(numpy_to_image(frame.rgb, "rgb8", header))
                if frame is not None and frame.depth is not None:
                    self.pub_depth.publish(numpy_to_image(frame.depth, "32FC1", header))
                self.pub_info.publish(info)
                self.pub_depth_info.publish(info)
                self.cam_stats.record(time.perf_counter() - t_start)
        except Exception as exc:  # noqa: BLE001
            if self.context.ok():
                self.get_logger().fatal(f"camera thread died: {type(exc).__name__}: {exc}")
            self._stop.set()

    # -- commands -------------------------------------------------------------------------------
    def _reject(self, what: str, exc: BaseException) -> None:
        message = f"rejected {what}: {first_line(exc)}; the arm holds its position"
        self.cmd_stats.error(message)
        self.cmd_stats.dropped += 1
        self._log_error(message)

    def _on_trajectory(self, msg: JointTrajectory) -> None:
        t0 = time.perf_counter()
        try:
            traj = joint_trajectory_to_data(msg)
            stamp_ns = time_to_ns(msg.header.stamp)
            with self._lock:
                start = self.sim.time
                if stamp_ns:
                    start = max(start, self.sim_time_of(stamp_ns))
                self.sim.send_trajectory(traj, start_time=start)
        except Exception as exc:  # noqa: BLE001 - a bad command never stops the sim
            self._reject(f"trajectory on {self.cfg.trajectory_topic}", exc)
            return
        self.cmd_stats.record(time.perf_counter() - t0)
        self.diag.extra["trajectory_state"] = "executing"
        self.get_logger().info(f"executing trajectory: {len(traj.times)} points over {traj.times[-1]:.2f} s, "
                               f"joints {list(traj.joint_names)}")

    def _on_gripper(self, msg: Float64) -> None:
        try:
            width = float(msg.data)
            if not math.isfinite(width):
                raise ValueError(f"gripper width is {width}")
            with self._lock:
                self.sim.set_gripper(width_m=width)
        except Exception as exc:  # noqa: BLE001
            self._reject(f"gripper command on {self.cfg.gripper_topic}", exc)
            return
        self.cmd_stats.record(0.0)

    # -- outputs --------------------------------------------------------------------------------
    def _publish_objects(self) -> None:
        with self._lock:
            sim_t = self.sim.time
            arr = object_markers(self.sim, self.cfg.base_frame, time_from_ns(self.stamp_ns(sim_t)))
        self.pub_objects.publish(arr)

    def _publish_camera_pose(self) -> None:
        cfg = self.cfg
        if cfg.extrinsics_out:
            Path(cfg.extrinsics_out).parent.mkdir(parents=True, exist_ok=True)
            self.extrinsics.to_yaml(cfg.extrinsics_out)
        if cfg.camera_info_out:
            Path(cfg.camera_info_out).parent.mkdir(parents=True, exist_ok=True)
            self.camera.to_yaml(cfg.camera_info_out, camera_name="k4d_sim_camera")
        try:
            from geometry_msgs.msg import TransformStamped
            from tf2_ros import StaticTransformBroadcaster
        except ImportError:
            self.diag.extra["camera_pose"] = "no tf2_ros: see extrinsics_out"
            return
        from scipy.spatial.transform import Rotation

        T = self.extrinsics.T_base_cam
        tf = TransformStamped()
        tf.header.stamp = self.get_clock().now().to_msg()
        tf.header.frame_id, tf.child_frame_id = cfg.base_frame, cfg.camera_frame
        tf.transform.translation.x, tf.transform.translation.y, tf.transform.translation.z = (float(v) for v in T[:3, 3])
        x, y, z, w = Rotation.from_matrix(T[:3, :3]).as_quat()
        tf.transform.rotation.x, tf.transform.rotation.y, tf.transform.rotation.z, tf.transform.rotation.w = x, y, z, w
        self._tf_broadcaster = StaticTransformBroadcaster(self)
        self._tf_broadcaster.sendTransform(tf)
        self.diag.extra["camera_pose"] = "static TF"

    def destroy_node(self):
        self._stop.set()
        for t in self._threads:
            t.join(timeout=2.0)
        with self._lock:
            self.sim.close()
        return super().destroy_node()


def main(args=None) -> int:
    from k4d_kinematics.ros.node_main import run_node

    return run_node(SimNode, "k4d_sim", args)


if __name__ == "__main__":
    sys.exit(main())

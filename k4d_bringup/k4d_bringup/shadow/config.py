"""ShadowConfig: the shadow node's parameters (one dataclass = the ROS parameters; ROS-free).

    from k4d_bringup.shadow.config import ShadowConfig
    cfg = ShadowConfig(scenario="pick_cube", policy="act_v3", log_path="/data/shadow/log.jsonl")

Field names are the ROS parameter names used in ``config/shadow_node.yaml`` and ``config/robot.yaml``.
``__post_init__`` validates every field and names the field and value in its ValueError.

Queue / skip policy (the world model is far slower than the robot: about 4 min per 49-frame rollout on an
H100 against 1-2 s per chunk): at most one Imagine goal is in flight; chunks waiting for the world model sit
in a bounded queue of ``queue_size``. When a chunk arrives and the queue is full:

- ``drop_oldest`` (default): the oldest waiting chunk is skipped and the new one is queued, so the world
  model always works on the freshest robot behaviour;
- ``drop_newest``: the arriving chunk is skipped, so the evaluated chunks stay contiguous from the start.

A skipped chunk is reported (ShadowEvalResult STATUS_SKIPPED, a JSONL record, ``skipped`` in /diagnostics)
and never imagined. ``queue_size: 0`` evaluates only chunks that arrive while the world model is idle.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from k4d_kinematics.config import RobotCameraConfig, param_doc
from k4d_worldmodel.config import ANCHOR_INLIER_THRESHOLD_M

QUEUE_POLICIES = ("drop_oldest", "drop_newest")
# A world model that answers "not active" (loading, deactivated) gets the chunk again after this many seconds,
# until ``ShadowConfig.inactive_wait_s``: the live node (ShadowSession.requeue) and the blocking client
# (imaginers.ActionImaginer) alike.
NOT_ACTIVE_RETRY_S = 1.0
# An Imagine action server missing from the graph for longer than this while a goal runs has left it (crashed,
# stopped): the goal's chunk fails at once instead of after imagine_timeout_s. Both clients judge it alike.
SERVER_LOST_S = 1.0
EPISODE_MODES = ("topic", "idle_gap")
CONDITIONS = ("pointmaps", "trajectory")
PREDICATES = ("none", "region")

DEFAULT_ACTUATOR_TOPICS = [
    "/arm_controller/*", "/gripper*", "*/joint_trajectory", "*/follow_joint_trajectory*", "*/command",
    "*/commands", "/cmd_vel", "*/servo_node/*",
]


def _doc(text: str, read_only: bool = True) -> dict:
    return param_doc(text, read_only)  # read-only unless said otherwise


def _num(name: str, value, lo: float = 0.0, allow_equal: bool = True) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < lo or (value == lo and not allow_equal):
        raise ValueError(f"{name} must be a finite number {'>=' if allow_equal else '>'} {lo}, got {value!r}")


def _int(name: str, value, lo: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise ValueError(f"{name} must be an integer >= {lo}, got {value!r}")


@dataclass
class ShadowConfig(RobotCameraConfig):
    """Shadow evaluation beside the robot (inherits robot description, intrinsics, extrinsics, joint policies)."""

    # -- inputs -----------------------------------------------------------------------------------
    chunk_topic: str = field(default="/arm_controller/joint_trajectory", metadata=_doc(
        "trajectory_msgs/JointTrajectory of the EXECUTED (live) policy's action chunks. The node only subscribes "
        "to it; it is added to the actuator guard, so the node can never publish on it."))
    candidate_topic: str = field(default="", metadata=_doc(
        "JointTrajectory proposals of a candidate policy: imagined, never executed ('' = no candidate)."))
    joint_states_topic: str = field(default="/joint_states", metadata=_doc("sensor_msgs/JointState of the robot."))
    image_topic: str = field(default="/camera/color/image_raw", metadata=_doc(
        "Rectified colour image (rgb8/bgr8), the camera the world model is conditioned on."))
    depth_topic: str = field(default="", metadata=_doc(
        "Depth registered to the colour image (32FC1 m or 16UC1 mm); '' = no depth (no depth error, no "
        "depth-based actual success)."))
    episode_topic: str = field(default="/k4d/episode", metadata=_doc(
        "std_msgs/String episode events: 'start [label]', 'end [success|failure]' or JSON {\"event\": "
        "\"start\"|\"end\", \"label\", \"scenario\", \"policy\", \"success\"}."))
    episode_mode: str = field(default="topic", metadata=_doc(
        "Episode boundaries: 'topic' (episode_topic events; a chunk outside an episode opens one) or "
        "'idle_gap' (an episode ends idle_gap_s after its last chunk ended)."))
    idle_gap_s: float = field(default=3.0, metadata=_doc("Idle time that ends an episode (episode_mode 'idle_gap')."))
    # -- identity ---------------------------------------------------------------------------------
    scenario: str = field(default="default", metadata=_doc(
        "Scenario name written into every result (the Table-3 row); an episode event may override it.", False))
    policy: str = field(default="live", metadata=_doc("Name of the executed policy.", False))
    candidate_policy: str = field(default="candidate", metadata=_doc("Name of the candidate policy.", False))
    # -- world model --------------------------------------------------------------------------------
    imagine_action: str = field(default="/k4d/imagine", metadata=_doc("k4d_msgs/action/Imagine server."))
    condition: str = field(default="pointmaps", metadata=_doc(
        "Send the robot motion as 'pointmaps' (rendered here with k4d_kinematics) or as 'trajectory' (the server "
        "renders it with its own calibration)."))
    num_frames: int = field(default=49, metadata=_doc(
        "Frames per imagined rollout (4k+1; Kinema4D: 49). The chunk is resampled to them from its start to its "
        "end.", False))
    num_inference_steps: int = field(default=0, metadata=_doc("Denoising steps (0 = server default).", False))
    guidance_scale: float = field(default=0.0, metadata=_doc("CFG scale (<= 0 = server default).", False))
    seed: int = field(default=42, metadata=_doc("Sampling seed (negative = fresh seed per chunk).", False))
    queue_size: int = field(default=2, metadata=_doc(
        "Chunks that may wait for the world model (one more is in flight); see queue_policy.", False))
    queue_policy: str = field(default="drop_oldest", metadata=_doc(
        "When the queue is full: 'drop_oldest' (skip the oldest waiting chunk, queue the new one) or "
        "'drop_newest' (skip the arriving chunk). Skips are reported as STATUS_SKIPPED.", False))
    server_wait_s: float = field(default=5.0, metadata=_doc(
        "A queued chunk waits this long for the Imagine server to appear; then it is FAILED_TO_EVALUATE.", False))
    inactive_wait_s: float = field(default=120.0, metadata=_doc(
        "A chunk the world model answers 'not active' (its node still loads the model, or was deactivated) is "
        "sent again, once a second, for this long after it arrived; then it is FAILED_TO_EVALUATE.", False))
    imagine_timeout_s: float = field(default=1800.0, metadata=_doc(
        "An Imagine goal running longer than this is cancelled and its chunk FAILED_TO_EVALUATE.", False))
    # -- comparison with reality ------------------------------------------------------------------
    settle_s: float = field(default=0.3, metadata=_doc(
        "Seconds after a chunk's last point before its real frames are compared.", False))
    max_frame_gap_s: float = field(default=0.15, metadata=_doc(
        "A real frame counts for an imagined frame time only within this distance.", False))
    # -- success predicate (metric, 4D) -------------------------------------------------------------
    success_predicate: str = field(default="none", metadata=_doc(
        "'region': success when at least success_min_points non-robot scene points lie in the base-frame box "
        "[success_region_min, success_region_max] (and, with success_top_min_height_m, enough of them high enough: "
        "the standing check) in success_window_frames of the last frames (imagined: the lifted world pointmap; "
        "real: depth back-projection). 'none': only episode_topic labels give actual success and imagined success "
        "is not computed.", False))
    success_region_min: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0], metadata=_doc(
        "Box corner (x, y, z) in the robot base frame, metres.", False))
    success_region_max: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0], metadata=_doc(
        "Opposite box corner (x, y, z) in the robot base frame, metres.", False))
    success_min_points: int = field(default=20, metadata=_doc("Points in the box that make a frame successful.",
                                                               False))
    imagined_min_points: int = field(default=0, metadata=_doc(
        "Points in the box that make an imagined frame successful; 0 = success_min_points. A world model's lifted "
        "output puts a few smeared points where the real depth has none, so its count may need another "
        "threshold than the camera's: choose it with `k4d shadow calibrate` on a log of episodes whose outcome "
        "is known, not on the episodes it then judges.", False))
    success_top_min_height_m: float = field(default=0.0, metadata=_doc(
        "Standing check (0 = off): a frame is successful only if it ALSO has at least success_top_min_points "
        "points in the region at or above this base-frame height (m; inside the region's height range), i.e. "
        "something in it stands at least that tall: an object lying on its side fills the box but not this slab. "
        "Set it between the top of the object lying and standing (k4d shadow bench: r + h for a pick-place "
        "cylinder, predicate.upright_top_height). With success_relative the slab counts against the first frame "
        "too. An episode start event may set its own (success_top) or turn it off (null).", False))
    success_top_min_points: int = field(default=1, metadata=_doc(
        "Points in the standing check's slab that make a frame successful (k4d eval's upright check "
        "asks predicate.standing_min_points_for(h, w): 1 at 96 x 64, 4 at 192 x 128). Used when "
        "success_top_min_height_m > 0 or an episode event sets a slab height.", False))
    imagined_standing_check: bool = field(default=False, metadata=_doc(
        "Apply the standing check to the imagined side too (off: only the camera's depth is asked for the slab). "
        "Off by default because the world models' lifted pointmaps flatten standing objects: the shipped model "
        "put no point in the slab for 57 of 64 standing pick-place cylinders whose box it filled (k4d shadow "
        "bench, 270 episodes), so with it on its imagined success rates fell by up to 0.63 below the true ones.",
        False))
    success_window_frames: int = field(default=3, metadata=_doc(
        "The predicate looks at this many final frames; probability = fraction of them that are successful.", False))
    success_relative: bool = field(default=False, metadata=_doc(
        "Count the box's points relative to the chunk's first frame (imagined: the rollout's frame 0; real: the "
        "first real frame with depth): a frame succeeds with success_min_points more than that frame has. It "
        "cancels what is in the box from the start, such as a pointmap's noise floor above the table.", False))
    robot_margin_px: int = field(default=2, metadata=_doc(
        "Robot pixels (dilated by this) are excluded from the predicate, so the gripper is not the object.", False))
    anchor_lift: bool = field(default=True, metadata=_doc(
        "When the world model's robot-pixel lift to metres failed and the chunk's first frame has depth, refit the "
        "lift with that frame's back-projected depth as anchor (k4d_worldmodel.lifting.lift_pointmaps_anchored). "
        "Skipped when that depth went with the request (send_initial_depth): the world model already tried it.",
        False))
    send_initial_depth: bool = field(default=True, metadata=_doc(
        "Send the depth of the chunk's first frame (depth_topic) with its Imagine goal as initial_depth (32FC1 "
        "metres, NaN = unknown), so the world model anchors its metric lift on it when the robot-pixel lift fails "
        "(rollout quality anchored_good / anchored_poor). A depth whose size differs from the colour image (not "
        "registered to it) is never sent: it is counted (initial_depth_skipped in /diagnostics), warned about "
        "(throttled), and the goal goes without depth. false = goals never carry depth (anchor_lift then refits "
        "on it here, after the world model answers).", False))
    anchor_inlier_threshold_m: float = field(default=ANCHOR_INLIER_THRESHOLD_M, metadata=_doc(
        "Inlier distance of the anchored lift, metres (a small model's normalised output over a scene 5 m wide "
        "is coarse: 1 % of its range is 5 cm, against the robot-pixel lift's 2 cm).", False))
    # -- outputs ----------------------------------------------------------------------------------
    result_topic: str = field(default="/k4d/shadow/result", metadata=_doc("k4d_msgs/ShadowEvalResult output."))
    log_path: str = field(default="k4d_shadow/shadow_log.jsonl", metadata=_doc(
        "Durable append-only JSONL log (one record per chunk and per episode, fsync'd). Relative = to the cwd."))
    save_frames: bool = field(default=True, metadata=_doc(
        "Store real and imagined frames of each chunk (npz next to the log) for the report's videos.", False))
    actuator_topics: list[str] = field(default_factory=lambda: list(DEFAULT_ACTUATOR_TOPICS), metadata=_doc(
        "fnmatch patterns of topics this node must never publish on; creating such a publisher raises. "
        "chunk_topic and candidate_topic are always added."))

    def __post_init__(self):
        super().__post_init__()
        for name, choices in (("queue_policy", QUEUE_POLICIES), ("episode_mode", EPISODE_MODES),
                              ("condition", CONDITIONS), ("success_predicate", PREDICATES)):
            if getattr(self, name) not in choices:
                raise ValueError(f"{name} must be one of {list(choices)}, got {getattr(self, name)!r}")
        for name in ("chunk_topic", "joint_states_topic", "image_topic", "imagine_action", "result_topic", "log_path"):
            if not getattr(self, name):
                raise ValueError(f"{name} must not be empty, got ''")
        _int("num_frames", self.num_frames, 1)
        if (self.num_frames - 1) % 4:
            raise ValueError(f"num_frames must be 4k+1 (Wan VAE temporal stride 4), got {self.num_frames}")
        _int("num_inference_steps", self.num_inference_steps, 0)
        _int("queue_size", self.queue_size, 0)
        _int("success_min_points", self.success_min_points, 1)
        _int("success_window_frames", self.success_window_frames, 1)
        _int("imagined_min_points", self.imagined_min_points, 0)
        _int("robot_margin_px", self.robot_margin_px, 0)
        if not isinstance(self.success_relative, bool):
            raise ValueError(f"success_relative must be true or false, got {self.success_relative!r}")
        _num("anchor_inlier_threshold_m", self.anchor_inlier_threshold_m, 0.0, allow_equal=False)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")
        if not (isinstance(self.guidance_scale, (int, float)) and math.isfinite(self.guidance_scale)):
            raise ValueError(f"guidance_scale must be a finite number, got {self.guidance_scale!r}")
        _num("idle_gap_s", self.idle_gap_s, 0.0, allow_equal=False)
        _num("server_wait_s", self.server_wait_s)
        _num("inactive_wait_s", self.inactive_wait_s)
        _num("imagine_timeout_s", self.imagine_timeout_s, 0.0, allow_equal=False)
        _num("settle_s", self.settle_s)
        _num("max_frame_gap_s", self.max_frame_gap_s, 0.0, allow_equal=False)
        for name in ("success_region_min", "success_region_max"):
            v = list(getattr(self, name))
            if len(v) != 3 or not all(isinstance(x, (int, float)) and math.isfinite(x) for x in v):
                raise ValueError(f"{name} must be 3 finite numbers (x, y, z metres, base frame), got {v!r}")
            setattr(self, name, [float(x) for x in v])
        if self.success_predicate == "region" and not all(
                lo < hi for lo, hi in zip(self.success_region_min, self.success_region_max)):
            raise ValueError(f"success_region_min must be below success_region_max on every axis, got "
                             f"{self.success_region_min} and {self.success_region_max}")
        _num("success_top_min_height_m", self.success_top_min_height_m)
        _int("success_top_min_points", self.success_top_min_points, 1)
        z_lo, z_hi = self.success_region_min[2], self.success_region_max[2]
        if self.success_predicate == "region" and self.success_top_min_height_m and \
                not z_lo < self.success_top_min_height_m < z_hi:
            raise ValueError(f"success_top_min_height_m must lie inside the success region's height range "
                             f"({z_lo}, {z_hi}) m (or be 0 = off), got {self.success_top_min_height_m!r}")
        self.actuator_topics = [str(t) for t in self.actuator_topics]
        if self.candidate_topic and self.candidate_topic == self.chunk_topic:
            raise ValueError(f"candidate_topic must differ from chunk_topic, got {self.candidate_topic!r} for both")

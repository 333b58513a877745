"""ROS-free helpers of the simulated demo: the scripted pick-and-place step list, rates and the demo video.

    from k4d_bringup.demo import pick_place_steps, video_from_recording
    steps = pick_place_steps(obj_xyz_base, obj_half_height, place_xy_base)   # [DemoStep(kind, ...)]
    video_from_recording("out/demo/k4d_sim.mcap", "out/demo/k4d_sim.mp4")    # camera + robot mask + plan ghost
    topic_rates("out/demo/k4d_sim.mcap")                                     # {topic: {count, rate_hz, ...}}

The demo node (``k4d_bringup.ros.demo_node``) turns the steps into planner goals (Cartesian TCP poses
through the IK, joint goals) and gripper commands; ``k4d sim`` turns the recording into the video and
summary. Units: metres, radians, seconds; poses are T_base_tcp (4, 4) of the tool-centre point between
the YAM finger pads, pointing straight down (``sim.ik.top_down_pose``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np

# Gripper openings (metres between the pads) used by the scripted demo.
GRIPPER_OPEN_M = 0.08


@dataclass
class DemoStep:
    """One step of a scripted episode.

    kind: "pose" (T_base_tcp (4, 4) goal, planned as a straight TCP line), "joints" ({joint: rad} goal),
    or "gripper" (width_m opening, then ``settle_s`` seconds of waiting). label: shown in logs.
    """

    kind: str
    label: str
    pose: Optional[np.ndarray] = None
    joints: Optional[dict] = None
    width_m: float = 0.0
    settle_s: float = 0.6

    def __post_init__(self):
        if self.kind not in ("pose", "joints", "gripper"):
            raise ValueError(f"DemoStep.kind = {self.kind!r}: must be 'pose', 'joints' or 'gripper'")
        if self.kind == "pose" and (self.pose is None or np.shape(self.pose) != (4, 4)):
            raise ValueError(f"DemoStep '{self.label}': kind 'pose' needs a (4, 4) pose")
        if self.kind == "joints" and not self.joints:
            raise ValueError(f"DemoStep '{self.label}': kind 'joints' needs a joint dict")


# Labels of the pose keyframes of ``pick_place_keyframes`` (gripper changes become gripper steps).
_POSE_LABELS = ("hover over object", "descend", None, "lift", "carry", "lower", None, "retreat")


def pick_place_steps(obj_xyz_base: Sequence[float], obj_half_height: float, place_xy_base: Sequence[float],
                     home_joints: Optional[dict] = None, obj_yaw: float = 0.0, obj_kind: str = "cube",
                     grasp_width_m: float = 0.0, open_m: float = GRIPPER_OPEN_M) -> list[DemoStep]:
    """The scripted policy's top-down pick-and-place (``sim.policies.pick_place_keyframes``) as demo steps.

    obj_xyz_base: object centre (m, base frame) resting on the table; obj_yaw (rad about base z) and
    obj_kind ("cube" / "cylinder") give the grasp yaw; grasp_width_m: commanded opening when closed
    (0 = squeeze). Returns: open, hover, descend, close, lift, carry, lower, release, retreat (, home).
    """
    from k4d_bringup.sim.policies import fold_grasp_yaw, pick_place_keyframes

    frames = pick_place_keyframes(obj_xyz_base, fold_grasp_yaw(float(obj_yaw), obj_kind), obj_half_height,
                                  place_xy_base)
    steps = [DemoStep("gripper", "open", width_m=open_m, settle_s=0.3)]
    grip = 1.0
    for (pose, g, duration), label in zip(frames, _POSE_LABELS):
        if g != grip:
            steps.append(DemoStep("gripper", "close" if g < 0.5 else "release",
                                  width_m=grasp_width_m if g < 0.5 else open_m, settle_s=duration))
            grip = g
        else:
            steps.append(DemoStep("pose", label, pose=pose))
    if home_joints:
        steps.append(DemoStep("joints", "home", joints=dict(home_joints)))
    return steps


# ---------------------------------------------------------------------------------------------
# Recording -> rates, video
# ---------------------------------------------------------------------------------------------


def topic_rates(mcap_path: str | Path, skip_s: float = 2.0) -> dict[str, dict]:
    """Per-topic message count and rate (Hz) of a recording, from log times, after the first ``skip_s``
    seconds of that topic (start-up); {topic: {count, rate_hz, first_s, last_s}} (s from recording start)."""
    from k4d_bringup.recording import read_messages

    times: dict[str, list[int]] = {}
    for topic, _dt, log_ns, _data in read_messages(mcap_path):
        times.setdefault(topic, []).append(log_ns)
    if not times:
        return {}
    t0 = min(v[0] for v in times.values())
    out = {}
    for topic, ts in sorted(times.items()):
        a = np.asarray(ts, np.int64)
        steady = a[a >= a[0] + int(skip_s * 1e9)]
        rate = (len(steady) - 1) / ((steady[-1] - steady[0]) * 1e-9) if len(steady) > 2 and steady[-1] > steady[0] \
            else 0.0
        out[topic] = {"count": int(len(a)), "rate_hz": round(float(rate), 2), "first_s": round((a[0] - t0) * 1e-9, 3),
                      "last_s": round((a[-1] - t0) * 1e-9, 3)}
    return out


@dataclass
class _PlanGhost:
    """The latest plan's pixel masks (T, H, W) bool and the time window it is shown in (ns)."""

    link: np.ndarray
    start_ns: int
    end_ns: int
    frames: list = field(default_factory=list)


def video_from_recording(mcap_path: str | Path, video_path: str | Path, image_topic: str = "/camera/color/image_raw",
                         mask_topic: str = "/k4d/robot_mask", plan_topic: str = "/k4d/plan_pointmaps",
                         fps: float = 30.0, ghost_frames: int = 6, ghost_linger_s: float = 1.0,
                         max_frames: Optional[int] = None) -> dict:
    """Write an MP4 of the camera view with the live robot mask and the latest plan's ghost drawn on it.

    The mask of each camera frame is the newest ``mask_topic`` image at or before it (by header stamp);
    the plan ghost is the outline of ``ghost_frames`` of the newest ``plan_topic`` PointmapSequence
    (pixel-aligned robot pointmaps of the planned motion), shown from its arrival until the plan's end
    plus ``ghost_linger_s``. Returns {frames, path, width, height}. Raises ValueError without images.
    """
    import imageio.v2 as imageio

    from k4d_bringup.recording import deserialize, read_messages
    from k4d_kinematics.overlay import overlay_frame
    from k4d_kinematics.ros.conversions import image_to_numpy, msg_to_pointmap_sequence, rgb_from_image, time_to_ns

    video_path = Path(video_path)
    video_path.parent.mkdir(parents=True, exist_ok=True)
    writer = None
    mask = None
    ghost: Optional[_PlanGhost] = None
    n, t0_ns = 0, None
    try:
        for topic, datatype, log_ns, data in read_messages(mcap_path, [image_topic, mask_topic, plan_topic]):
            msg = deserialize(datatype, data)
            if topic == mask_topic:
                mask = image_to_numpy(msg) > 0
                continue
            if topic == plan_topic:
                seq = msg_to_pointmap_sequence(msg)
                idx = np.unique(np.linspace(0, len(seq.link) - 1, max(ghost_frames, 1)).round().astype(int))
                dur_ns = int(float(seq.times[-1]) * 1e9) if len(seq.times) else 0
                ghost = _PlanGhost(seq.link[idx] >= 0, log_ns, log_ns + dur_ns + int(ghost_linger_s * 1e9))
                continue
            rgb = rgb_from_image(msg)
            stamp = time_to_ns(msg.header.stamp)
            live = mask if (mask is not None and mask.shape == rgb.shape[:2]) else None
            plan = None
            if ghost is not None and ghost.start_ns <= log_ns <= ghost.end_ns and ghost.link.shape[1:] == rgb.shape[:2]:
                plan = ghost.link
            t0_ns = stamp if t0_ns is None else t0_ns
            caption = f"k4d sim  t = {(stamp - t0_ns) * 1e-9:6.2f} s"
            frame = overlay_frame(rgb, live, plan, caption=caption)
            if writer is None:
                writer = imageio.get_writer(str(video_path), fps=fps, codec="libx264", quality=7,
                                            macro_block_size=1, ffmpeg_log_level="error")
            # real-time playback: frame k of the video shows the newest image at or before t0 + k / fps
            # (an image is repeated over gaps and skipped when two fall into one video frame)
            due = int(round((stamp - t0_ns) * 1e-9 * fps)) + 1
            if n >= due:
                continue
            while n < due and (max_frames is None or n < max_frames):
                writer.append_data(frame)
                n += 1
            if max_frames is not None and n >= max_frames:
                break
    finally:
        if writer is not None:
            writer.close()
    if n == 0:
        raise ValueError(f"{mcap_path}: no {image_topic} messages to make a video from")
    return {"frames": n, "path": str(video_path), "width": int(frame.shape[1]), "height": int(frame.shape[0])}


def write_contact_sheet(video_frames: Iterable[np.ndarray], path: str | Path) -> None:
    """Save a few RGB frames (H, W, 3) uint8 side by side as a PNG (a quick look without a video player)."""
    from PIL import Image

    frames = [np.asarray(f, np.uint8) for f in video_frames]
    if not frames:
        raise ValueError("write_contact_sheet: no frames")
    Image.fromarray(np.concatenate(frames, axis=1)).save(str(path))

"""Offline shadow evaluation of an MCAP recording, in batch (``k4d shadow replay``).

    k4d shadow replay out/run1/k4d_sim.mcap --checkpoint ckpt/ --log out/run1/shadow.jsonl
    k4d shadow report out/run1/shadow.jsonl --out out/run1/shadow_report

Reads the chunks, joint states, camera frames (+ depth, camera_info) and episode events from the recording
on the topics of the ShadowConfig (``--params`` YAML, e.g. config/shadow_node.yaml) and runs the SAME
ShadowSession as the live node, with the recording's time as the clock. The world model is called
synchronously for every chunk (nothing is skipped: the recording waits for the world model), in process with
``--checkpoint`` or through a running /k4d/imagine server otherwise (see ``imaginers``). Imagination
latencies in the log are therefore 0 (not meaningful offline). Needs the ROS message packages for
deserialising (no node, no graph, unless the action server is used).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, Optional

from .config import ShadowConfig
from .log import ShadowLog
from .session import FramePairer, Kinematics, RolloutData, ShadowSession


def make_kinematics(cfg: ShadowConfig, camera):
    """Kinematics from a ShadowConfig (description 'yam'/'file', extrinsics 'file'/'params') and a camera."""
    from k4d_kinematics.camera import Extrinsics
    from k4d_kinematics.ros.description_source import load_model

    if cfg.description_source == "topic":
        raise ValueError("description_source 'topic' is not available offline; use 'yam' or 'file'")
    model = load_model(cfg.description_source, cfg.urdf_path, mesh_dir=cfg.mesh_dir)
    frame = cfg.camera_frame or camera.frame_id or "camera_color_optical_frame"
    if cfg.extrinsics_source == "file":
        ext = Extrinsics.from_yaml(cfg.extrinsics_file)
    elif cfg.extrinsics_source == "params":
        ext = Extrinsics.from_xyz_quat(cfg.extrinsics_xyz, cfg.extrinsics_quat_xyzw, model.root_link, frame)
    else:
        raise ValueError("extrinsics_source 'tf' is not available offline; use 'file' or 'params'")
    camera = dataclasses.replace(camera, frame_id=ext.child_frame)
    return Kinematics(model, camera, ext, limits="clamp")


def replay_recording(path, cfg: ShadowConfig, imaginer: Callable, log_path,
                     progress: Optional[Callable[[str], None]] = None) -> dict:
    """Evaluate a recording; every result goes to the JSONL log at ``log_path``. Returns the session counts."""
    from k4d_bringup.recording import deserialize, read_messages
    from k4d_kinematics.camera import PinholeCamera
    from k4d_kinematics.ros.conversions import (camera_info_to_camera, depth_from_image, joint_trajectory_to_data,
                                                rgb_from_image, time_to_ns)
    from k4d_kinematics.ros.node_logic import JointStateMerger

    log = ShadowLog(log_path)
    frames_dir = Path(log.path).parent / (Path(log.path).stem + "_frames")
    kin = None
    camera = PinholeCamera.from_yaml(cfg.camera_info_file) if cfg.camera_info_file else None
    if camera is not None:
        kin = make_kinematics(cfg, camera)
    session = ShadowSession(cfg, lambda: kin, log.append, frames_dir, Path(log.path).parent)
    merger = JointStateMerger()
    pairer = FramePairer(bool(cfg.depth_topic))
    topics = {t for t in (cfg.chunk_topic, cfg.candidate_topic, cfg.joint_states_topic, cfg.image_topic,
                          cfg.depth_topic, cfg.episode_topic, "" if cfg.camera_info_file else cfg.camera_info_topic) if t}
    now = 0
    say = progress or (lambda _s: None)

    def q_now():
        if kin is None or not merger.values:
            return None
        return merger.q(kin.model, "zero", "clamp")

    try:
        for topic, datatype, log_ns, data in read_messages(path, sorted(topics)):
            now = log_ns
            msg = deserialize(datatype, data)
            if topic == cfg.camera_info_topic and kin is None:
                kin = make_kinematics(cfg, camera_info_to_camera(msg))
            elif topic == cfg.joint_states_topic:
                try:
                    merger.update(msg.name, msg.position, time_to_ns(msg.header.stamp) or log_ns,
                                  kin.model if kin else None, "ignore", "clamp")
                except ValueError:
                    pass
            elif topic == cfg.depth_topic:
                for f in pairer.depth(time_to_ns(msg.header.stamp) or log_ns, depth_from_image(msg)):
                    session.on_frame(f.stamp_ns, f.rgb, f.depth, f.q)
            elif topic == cfg.image_topic:
                for f in pairer.image(time_to_ns(msg.header.stamp) or log_ns, rgb_from_image(msg), q_now()):
                    session.on_frame(f.stamp_ns, f.rgb, f.depth, f.q)
            elif topic == cfg.episode_topic:
                try:
                    session.on_episode_event(msg.data, log_ns)
                except ValueError as exc:
                    say(f"episode event ignored: {exc}")
            elif topic in (cfg.chunk_topic, cfg.candidate_topic):
                mode = "live" if topic == cfg.chunk_topic else "candidate"
                try:
                    session.on_chunk(joint_trajectory_to_data(msg), mode, log_ns, q_now(),
                                     time_to_ns(msg.header.stamp))
                except ValueError as exc:
                    say(f"chunk at {log_ns} ignored: {exc}")
            rec = session.next_dispatch(now, server_ready=True)
            while rec is not None:
                try:
                    ro: Optional[RolloutData] = imaginer(rec.real[0].rgb, rec.seq, rec)
                    err = ""
                except Exception as exc:  # noqa: BLE001 - one failed imagination fails one chunk
                    ro, err = None, f"world model failed: {exc}"
                say(f"chunk {rec.episode_id}/{rec.chunk_index} ({rec.mode}) imagined" + (f": {err}" if err else ""))
                session.on_imagined(rec, ro, err, rec.start_ns)
                rec = session.next_dispatch(now, server_ready=True)
            session.tick(now)
        session.flush(now)
    finally:
        log.close()
    return {**session.status(), "log": str(log.path)}

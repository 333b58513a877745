"""ShadowSession: the shadow-mode bookkeeping, without ROS (the node and the offline replay drive it).

    session = ShadowSession(cfg, kinematics, sink=log_and_publish, frames_dir=Path("out/shadow/frames"))
    session.on_frame(stamp_ns, rgb, depth, q)                 # every camera frame (q: joint state then)
    session.on_chunk(traj, "live", now_ns, q_now)             # every executed action chunk
    rec = session.next_dispatch(now_ns, server_ready=True)    # a chunk to imagine now (or None)
    session.on_imagined(rec, rollout, "", now_ns)             # its imagination (or an error text)
    session.tick(now_ns)                                      # compare finished chunks, close episodes
    session.on_episode_event("end success", now_ns)

Times are nanoseconds on one clock (the node clock live; the recording's log time offline).

Per chunk: the robot's motion from the joint state at the chunk's start through the chunk's points is
resampled to ``num_frames`` frames spread over the chunk's duration (frame k at time t_k from the chunk
start) and rendered into the robot pointmap sequence that conditions the world model; the camera frame
nearest to the chunk start is the initial image. While the chunk executes, the real camera frame nearest
to each start + t_k (within ``max_frame_gap_s``) is kept. A live chunk that is replaced by the next live
chunk before its end (joint_trajectory_controller semantics) is compared only up to that moment. Once the
chunk has executed (+ ``settle_s``) and its imagination is there, frames 1..T-1 are scored (frame 0 is the
real initial image): PSNR, SSIM, depth error (imagined metric XYZ vs depth back-projection) and the success
predicate on the last frames, imagined and real. Candidate chunks (never executed) are scored only by the
predicate on their imagination. An imagination whose robot-pixel lift to metres failed (``metric`` false:
normalised XYZ) is lifted again with the depth of the chunk's first frame as anchor (``anchor_lift``), and
its ``metric_quality`` then reads ``anchored_good`` / ``anchored_poor``.

Per episode, one summary per mode (live; candidate when candidate chunks came): imagined success and its
probability from the last chunk evaluated OK; actual success from the episode's end label if given, else
the predicate on the last live chunk's real frames (needs depth). The episode is FAILED_TO_EVALUATE when
any of its chunks failed to evaluate (e.g. the world model crashed) or none was evaluated; earlier episodes
and chunks are never rewritten.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
from k4d_worldmodel.config import MetricLiftConfig
from k4d_worldmodel.lifting import lift_pointmaps_anchored

from .chunks import ChunkQueue
from .config import ShadowConfig
from .metrics import backproject_depth, pointmap_error, psnr, resize_nearest, ssim
from .predicate import configured_top, make_predicate

STATUS_OK, STATUS_SKIPPED, STATUS_FAILED = "ok", "skipped", "failed_to_evaluate"
MODES = ("live", "candidate")
NAN = float("nan")


# ---------------------------------------------------------------------------------------------
# Data carried between the node / replay and the session
# ---------------------------------------------------------------------------------------------


@dataclass
class Frame:
    """One camera frame: rgb (H, W, 3) uint8; depth (H, W) float32 m or None; q (J,) model order or None."""

    stamp_ns: int
    rgb: np.ndarray
    depth: Optional[np.ndarray] = None
    q: Optional[np.ndarray] = None


@dataclass
class RolloutData:
    """An imagined rollout: rgb (T, H, W, 3) uint8; xyz (T, H, W, 3) float32 (metres when ``metric``).

    ``anchor_sent``: the request carried the chunk-start depth, so the world model already tried the anchored
    lift with it; the session does not fit the same anchor again (``ShadowConfig.anchor_lift``). ``composite``: the
    region the imagination was composited on the measured first frame in ("off", "current", "swept", with the
    flying-point filter "swept/either:0.12"; "" where the imaginer cannot tell, e.g. a served model, whose
    node's parameters decide), logged with the chunk so that a
    calibration fitted on one composite is not applied to another.
    """

    rgb: np.ndarray
    xyz: np.ndarray
    metric: bool
    model_id: str = ""
    generation_time_s: float = NAN
    metric_quality: str = ""
    metric_residual_m: float = NAN
    anchor_sent: bool = False
    composite: str = ""


class FramePairer:
    """Pairs colour images with registered depth images by stamp, whichever arrives first.

    ``image(stamp, rgb, q)`` and ``depth(stamp, d)`` return the frames that are complete: an image is held until
    a depth within ``tol_ns`` arrives (or the next image arrives: then it is released without depth). Without a
    depth stream (``use_depth`` False) every image is released at once.
    """

    def __init__(self, use_depth: bool, tol_ns: int = 20_000_000, keep: int = 6):
        self.use_depth, self.tol_ns, self.keep = use_depth, int(tol_ns), keep
        self._depths: dict[int, np.ndarray] = {}
        self._pending: Optional[Frame] = None

    def _match(self, stamp: int) -> Optional[np.ndarray]:
        if not self._depths:
            return None
        k = min(self._depths, key=lambda s: abs(s - stamp))
        return self._depths[k] if abs(k - stamp) <= self.tol_ns else None

    def image(self, stamp_ns: int, rgb: np.ndarray, q=None) -> list[Frame]:
        f = Frame(int(stamp_ns), rgb, None, q)
        if not self.use_depth:
            return [f]
        out = [self._pending] if self._pending is not None else []
        self._pending = None
        f.depth = self._match(f.stamp_ns)
        if f.depth is not None:
            out.append(f)
        else:
            self._pending = f
        return out

    def depth(self, stamp_ns: int, depth: np.ndarray) -> list[Frame]:
        self._depths[int(stamp_ns)] = depth
        while len(self._depths) > self.keep:
            self._depths.pop(next(iter(self._depths)))
        p = self._pending
        if p is not None and abs(p.stamp_ns - int(stamp_ns)) <= self.tol_ns:
            p.depth, self._pending = depth, None
            return [p]
        return []


class Kinematics:
    """Robot model + camera + extrinsics -> conditioning sequences and robot masks (k4d_kinematics)."""

    def __init__(self, model, camera, extrinsics, limits: str = "clamp"):
        from k4d_kinematics.pointmap import PointmapRenderer

        self.model, self.camera, self.extrinsics = model, camera, extrinsics
        self.T_base_cam = np.asarray(extrinsics.T_base_cam, np.float64)
        self.renderer = PointmapRenderer(model, camera, extrinsics)
        self.limits = limits

    def full_trajectory(self, traj, q_start: np.ndarray):
        """The chunk as a trajectory of all robot joints starting at ``q_start`` (t = 0) when its first point
        is later than 0; joints the chunk does not name keep their value from ``q_start``."""
        from k4d_kinematics.sequence import JointTrajectoryData

        m = self.model
        q_start = np.asarray(q_start, np.float64)
        Q = traj.positions_for(m, q_start, self.limits)
        times = np.asarray(traj.times, np.float64)
        if times[0] > 1e-9:
            Q = np.vstack([m.check_q(q_start, self.limits)[None], Q])
            times = np.r_[0.0, times]
        return JointTrajectoryData(list(m.joint_names), times - times[0], Q)

    def sequence(self, traj_full, num_frames: int, stamp_ns: int = 0, source: str = "policy", source_id: str = ""):
        from k4d_kinematics.sequence import build_pointmap_sequence

        return build_pointmap_sequence(self.renderer, traj_full, num_frames, source=source, source_id=source_id,
                                       stamp_ns=stamp_ns)

    def robot_mask(self, q: np.ndarray) -> np.ndarray:
        return self.renderer.render(self.model.check_q(np.asarray(q, np.float64), self.limits)).mask


@dataclass
class ChunkRecord:
    episode_id: str
    chunk_index: int
    mode: str
    policy: str
    scenario: str
    traj: object  # JointTrajectoryData over all robot joints, t = 0 at the chunk start
    start_ns: int
    end_ns: int
    arrival_ns: int
    times: np.ndarray  # (T,) s of the imagined frames from the chunk start
    targets_ns: np.ndarray  # real frames wanted (live: all t_k within the chunk; candidate: t_0 only)
    real: list = field(default_factory=list)  # Frame | None per target
    best_gap: np.ndarray = None
    state: str = "queued"  # queued -> imagining -> imagined | failed -> done
    seq: object = None  # PointmapSequenceData (built at dispatch)
    rollout: Optional[RolloutData] = None
    error: str = ""
    dispatched_ns: int = 0
    imagined_ns: int = 0

    @property
    def exec_duration_s(self) -> float:
        return (self.end_ns - self.start_ns) * 1e-9


@dataclass
class Episode:
    episode_id: str
    scenario: str
    policy: str
    candidate_policy: str
    label: str
    start_ns: int
    records: list = field(default_factory=list)
    results: list = field(default_factory=list)  # chunk result dicts
    next_index: int = 0
    end_ns: int = 0
    closed: bool = False
    success_label: Optional[bool] = None
    last_chunk_end_ns: int = 0
    region: Optional[tuple] = None  # (box_min, box_max) of this episode's goal, overriding the config's
    top: Optional[tuple] = None  # (top_min_z, top_min_points) of the standing check, or None (off)


def parse_episode_event(text: str) -> dict:
    """'start [label]' / 'end [success|failure|true|false]' or a JSON object with an "event" key -> dict
    with ``event`` ('start'|'end') and optional ``label``, ``scenario``, ``policy``, ``success`` (bool) and
    ``success_region`` (``{"min": [x, y, z], "max": [x, y, z]}`` base frame: this episode's goal box, e.g. a
    randomised placing zone, used instead of the configured success region) and ``success_top``
    (``{"min_z": z, "min_points": n}``, ``min_points`` optional (default ``success_top_min_points``): this
    episode's standing check, instead of the configured one (``success_top_min_height_m``); null = none for this
    episode). ValueError naming what is malformed."""
    text = (text or "").strip()
    if text.startswith("{"):
        try:
            d = json.loads(text)
        except ValueError as exc:
            raise ValueError(f"episode event is not valid JSON: {exc}") from None
        if not isinstance(d, dict):
            raise ValueError(f"episode event JSON must be an object, got {text!r}")
    else:
        parts = text.split(None, 1)
        if not parts:
            raise ValueError("episode event is empty")
        d = {"event": parts[0].lower()}
        arg = parts[1].strip() if len(parts) > 1 else ""
        if d["event"] == "start" and arg:
            d["label"] = arg
        elif d["event"] == "end" and arg:
            d["success"] = arg.lower()
    ev = str(d.get("event", "")).lower()
    if ev not in ("start", "end"):
        raise ValueError(f"episode event must be 'start' or 'end', got {d.get('event')!r}")
    d["event"] = ev
    if "success" in d:
        s = d["success"]
        if isinstance(s, str):
            if s.lower() in ("success", "succeeded", "true", "1", "yes"):
                s = True
            elif s.lower() in ("failure", "failed", "fail", "false", "0", "no"):
                s = False
            else:
                raise ValueError(f"episode end outcome must be success/failure, got {s!r}")
        d["success"] = bool(s)
    if "success_region" in d:
        r = d["success_region"]
        try:
            lo, hi = np.asarray(r["min"], np.float64), np.asarray(r["max"], np.float64)
        except (TypeError, KeyError, ValueError):
            raise ValueError(f"success_region must be {{'min': [x, y, z], 'max': [x, y, z]}}, got {r!r}") from None
        if lo.shape != (3,) or hi.shape != (3,) or not (np.isfinite(lo).all() and np.isfinite(hi).all()) \
                or np.any(lo >= hi):
            raise ValueError(f"success_region min must be below max on every axis (3 finite values each), got {r!r}")
        d["success_region"] = (lo, hi)
    if d.get("success_top") is not None:
        t = d["success_top"]
        z = t.get("min_z") if isinstance(t, dict) else None
        n = t.get("min_points") if isinstance(t, dict) else None
        if not isinstance(t, dict) or set(t) - {"min_z", "min_points"} or isinstance(z, bool) \
                or not isinstance(z, (int, float)) or not math.isfinite(z):
            raise ValueError(f"success_top must be null or {{'min_z': z (finite, m), 'min_points': n (optional)}}, "
                             f"got {t!r}")
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise ValueError(f"success_top min_points must be an integer >= 1, got {n!r}")
        d["success_top"] = (float(z), n)
    return d


def _mean(values) -> float:
    v = [x for x in values if x is not None and math.isfinite(x)]
    return float(np.mean(v)) if v else NAN


def _stamp_id(ns: int) -> str:
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime(ns * 1e-9))


# ---------------------------------------------------------------------------------------------
# The session
# ---------------------------------------------------------------------------------------------


class ShadowSession:
    """See the module doc. ``kinematics`` is a Kinematics or a callable returning one (None while unknown);
    ``sink(record)`` receives every chunk and episode result dict (log + publish)."""

    def __init__(self, cfg: ShadowConfig, kinematics, sink: Callable[[dict], None],
                 frames_dir: Optional[Path] = None, log_dir: Optional[Path] = None):
        self.cfg = cfg
        self._kin = kinematics if callable(kinematics) else (lambda: kinematics)
        self.sink = sink
        self.frames_dir = Path(frames_dir) if frames_dir else None
        self.log_dir = Path(log_dir) if log_dir else (self.frames_dir.parent if self.frames_dir else None)
        self.queue: ChunkQueue[ChunkRecord] = ChunkQueue(cfg.queue_size, cfg.queue_policy)
        self.in_flight: Optional[ChunkRecord] = None
        self.waiting: list[ChunkRecord] = []  # imagined or failed, waiting for the chunk to finish executing
        self.episode: Optional[Episode] = None
        self.closing: list[Episode] = []
        self.latest_frame: Optional[Frame] = None
        self.last_live: Optional[ChunkRecord] = None
        self.counts = {"chunks": 0, "ok": 0, "skipped": 0, "failed": 0, "episodes": 0}
        self._episode_counter = 0
        self.lock = threading.RLock()

    # -- inputs -------------------------------------------------------------------------------------
    def on_frame(self, stamp_ns: int, rgb: np.ndarray, depth: Optional[np.ndarray] = None,
                 q: Optional[np.ndarray] = None) -> None:
        f = Frame(int(stamp_ns), rgb, depth, None if q is None else np.asarray(q, np.float64))
        gap_ns = self.cfg.max_frame_gap_s * 1e9
        with self.lock:
            self.latest_frame = f
            for rec in self._collecting():
                d = np.abs(rec.targets_ns - f.stamp_ns).astype(np.float64)
                better = (d <= gap_ns) & (d < rec.best_gap)
                for k in np.nonzero(better)[0]:
                    rec.real[k] = f
                    rec.best_gap[k] = d[k]

    def _collecting(self):
        recs = list(self.queue.items()) + self.waiting
        if self.in_flight is not None:
            recs.append(self.in_flight)
        return recs

    def on_episode_event(self, text: str, now_ns: int) -> dict:
        d = parse_episode_event(text)
        top = self._episode_top(d) if d["event"] == "start" else None
        with self.lock:
            if d["event"] == "start":
                self._close_episode(now_ns)
                ep = self._open_episode(now_ns, d.get("label", ""), d.get("scenario"), d.get("policy"))
                ep.region, ep.top = d.get("success_region"), top
            else:
                if self.episode is not None:
                    if "success" in d:
                        self.episode.success_label = d["success"]
                    self._close_episode(now_ns)
            self._finish_episodes()
        return d

    def _episode_top(self, d: dict) -> Optional[tuple]:
        """The standing check of an episode opened by start event ``d``: its ``success_top`` (min_points
        defaulting to the configured one; None = off) or, without one, the configured check. ValueError when its
        height is not inside the episode's success region's height range (the event is then dropped, nothing
        changes)."""
        if "success_top" not in d:
            top = configured_top(self.cfg)
        elif d["success_top"] is None:
            top = None
        else:
            z, n = d["success_top"]
            top = (z, int(n) if n is not None else self.cfg.success_top_min_points)
        if top is not None and self.cfg.success_predicate != "none":
            lo, hi = d.get("success_region") or (self.cfg.success_region_min, self.cfg.success_region_max)
            if not float(lo[2]) < top[0] < float(hi[2]):
                raise ValueError(f"the standing check's height {top[0]!r} m (success_top min_z or "
                                 f"success_top_min_height_m) must lie inside the episode's success region's height "
                                 f"range ({float(lo[2])!r}, {float(hi[2])!r}) m")
        return top

    def _open_episode(self, now_ns: int, label: str = "", scenario=None, policy=None) -> Episode:
        self._episode_counter += 1
        c = self.cfg
        self.episode = Episode(f"{_stamp_id(now_ns)}-{self._episode_counter:03d}", scenario or c.scenario,
                               policy or c.policy, c.candidate_policy, label, int(now_ns), top=configured_top(c))
        return self.episode

    def _close_episode(self, now_ns: int) -> None:
        if self.episode is not None:
            self.episode.closed, self.episode.end_ns = True, int(now_ns)
            self.closing.append(self.episode)
            self.episode = None

    def on_chunk(self, traj, mode: str, now_ns: int, q_now: np.ndarray, stamp_ns: int = 0) -> Optional[ChunkRecord]:
        """Register an action chunk (JointTrajectoryData). ``stamp_ns`` > now = scheduled start (header.stamp).
        Returns the record (queued) or None when it was skipped at once. Raises ValueError for a bad chunk."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        kin = self._kin()
        if kin is None:
            raise ValueError("no robot model / camera / extrinsics yet: cannot render the chunk")
        if q_now is None:
            raise ValueError("no joint state yet: the chunk's start pose is unknown")
        full = kin.full_trajectory(traj, q_now)
        start = int(stamp_ns) if stamp_ns and stamp_ns > now_ns else int(now_ns)
        with self.lock:
            ep = self.episode or self._open_episode(now_ns, "auto")
            dur_ns = int(round(full.times[-1] * 1e9))
            times = np.linspace(0.0, full.times[-1], self.cfg.num_frames) if self.cfg.num_frames > 1 else np.zeros(1)
            if mode == "live":
                targets = start + np.round(times * 1e9).astype(np.int64)
                if self.last_live is not None and self.last_live.end_ns > start:  # replaced before its end
                    self.last_live.end_ns = max(start, self.last_live.start_ns)
            else:
                targets = np.array([start], np.int64)
            rec = ChunkRecord(ep.episode_id, ep.next_index, mode, ep.policy if mode == "live" else ep.candidate_policy,
                              ep.scenario, full, start, start + dur_ns, int(now_ns), times, targets,
                              [None] * len(targets), np.full(len(targets), np.inf))
            ep.next_index += 1
            ep.records.append(rec)
            self.counts["chunks"] += 1
            if mode == "live":
                self.last_live = rec
                ep.last_chunk_end_ns = rec.end_ns
            lf = self.latest_frame  # the frame at the chunk start (a scheduled start fills it later)
            if lf is not None and abs(lf.stamp_ns - start) <= self.cfg.max_frame_gap_s * 1e9:
                rec.real[0], rec.best_gap[0] = lf, abs(lf.stamp_ns - start)
            skipped = self.queue.push(rec)
            for s in skipped:
                self._finish_chunk(s, STATUS_SKIPPED, f"skipped by queue policy '{self.cfg.queue_policy}' "
                                   f"(world model busy, {self.cfg.queue_size} chunk(s) already waiting)", now_ns)
            return None if rec in skipped else rec

    # -- world model ------------------------------------------------------------------------------------
    def next_dispatch(self, now_ns: int, server_ready: bool) -> Optional[ChunkRecord]:
        """The chunk to send to the world model now (conditioning built), or None. Chunks that waited longer
        than ``server_wait_s`` for an absent server fail here."""
        with self.lock:
            if self.in_flight is not None:
                return None
            while True:
                rec = self.queue.peek()
                if rec is None or rec.start_ns > now_ns:
                    return None
                if not server_ready:
                    if (now_ns - rec.arrival_ns) * 1e-9 > self.cfg.server_wait_s:
                        self.queue.pop()
                        self._fail(rec, f"world model action server {self.cfg.imagine_action} not available", now_ns)
                        continue
                    return None
                self.queue.pop()
                if rec.real[0] is None:
                    self._fail(rec, "no camera frame at the chunk start", now_ns)
                    continue
                try:
                    kin = self._kin()
                    if kin is None:
                        raise ValueError("no robot model / camera / extrinsics")
                    rec.seq = kin.sequence(rec.traj, self.cfg.num_frames, rec.start_ns, "policy", rec.policy)
                except Exception as exc:  # noqa: BLE001 - a chunk that cannot be rendered fails, the node goes on
                    self._fail(rec, f"cannot render the chunk: {exc}", now_ns)
                    continue
                rec.state, rec.dispatched_ns = "imagining", int(now_ns)
                self.in_flight = rec
                return rec

    def on_imagined(self, rec: ChunkRecord, rollout: Optional[RolloutData], error: str, now_ns: int) -> None:
        """The world model's answer for ``rec``: a rollout, or an error text (crash, timeout, abort)."""
        with self.lock:
            if self.in_flight is rec:
                self.in_flight = None
            if rec.state not in ("imagining", "queued"):
                return
            rec.imagined_ns = int(now_ns)
            if rollout is None:
                rec.state, rec.error = "failed", error or "world model returned no rollout"
            else:
                n = len(rec.times)
                if rollout.rgb.shape[0] != n or rollout.xyz.shape[0] != n:
                    rec.state = "failed"
                    rec.error = (f"rollout has {rollout.rgb.shape[0]} frames, the chunk was sent with {n} "
                                 f"(num_frames)")
                else:
                    rec.state, rec.rollout = "imagined", rollout
            self.waiting.append(rec)

    def requeue(self, rec: ChunkRecord, now_ns: int, reason: str) -> bool:
        """The world model answered ``rec`` with "not active": put it back at the head of the queue to be sent
        again, or fail it with ``reason`` once it has waited ``inactive_wait_s`` since it arrived. Returns whether
        it was queued again."""
        with self.lock:
            if self.in_flight is rec:
                self.in_flight = None
            if rec.state != "imagining":
                return False
            if (now_ns - rec.arrival_ns) * 1e-9 > self.cfg.inactive_wait_s:
                self._fail(rec, reason, now_ns)
                return False
            rec.state, rec.seq = "queued", None
            self.queue.push_front(rec)
            return True

    def _fail(self, rec: ChunkRecord, reason: str, now_ns: int) -> None:
        rec.state, rec.error = "failed", reason
        rec.imagined_ns = int(now_ns)
        if rec not in self.waiting:
            self.waiting.append(rec)

    def fail_all_pending(self, reason: str, now_ns: int) -> None:
        """Fail the in-flight chunk (e.g. the world model node died)."""
        with self.lock:
            if self.in_flight is not None:
                rec = self.in_flight
                self.in_flight = None
                self._fail(rec, reason, now_ns)

    # -- time ------------------------------------------------------------------------------------------
    def tick(self, now_ns: int) -> None:
        with self.lock:
            settle = int(self.cfg.settle_s * 1e9)
            for rec in list(self.waiting):
                if now_ns >= rec.end_ns + settle or rec.mode == "candidate":
                    self.waiting.remove(rec)
                    if rec.state == "imagined":
                        try:
                            self._score(rec, now_ns)
                        except Exception as exc:  # noqa: BLE001 -- one chunk's defect must not stall its episode
                            self._finish_chunk(rec, STATUS_FAILED, f"scoring failed: {type(exc).__name__}: {exc}",
                                               now_ns)
                    else:
                        self._finish_chunk(rec, STATUS_FAILED, rec.error, now_ns)
            ep = self.episode
            if (self.cfg.episode_mode == "idle_gap" and ep is not None and ep.records
                    and now_ns > ep.last_chunk_end_ns + int(self.cfg.idle_gap_s * 1e9)):
                self._close_episode(now_ns)
            self._finish_episodes()

    def flush(self, now_ns: int) -> None:
        """End of input (offline replay / shutdown): close the episode and finish what can be finished."""
        with self.lock:
            self._close_episode(now_ns)
            for rec in self.queue.items():
                self.queue.remove(rec)
                self._fail(rec, "shadow evaluation stopped before the chunk was imagined", now_ns)
            self.fail_all_pending("shadow evaluation stopped while the chunk was being imagined", now_ns)
            for rec in self.waiting:
                rec.end_ns = min(rec.end_ns, now_ns)
            self.tick(max(now_ns, max([r.end_ns for r in self.waiting], default=0) + int(self.cfg.settle_s * 1e9)))

    # -- scoring ---------------------------------------------------------------------------------------
    def _anchored(self, rec: ChunkRecord, ro: RolloutData, kin) -> Optional[RolloutData]:
        """``ro`` lifted to metres with the depth of the chunk's first frame as anchor, or None when that frame
        has no depth or the fit fails (see ``ShadowConfig.anchor_lift``)."""
        f0 = rec.real[0] if rec.real else None
        if f0 is None or f0.depth is None or ro.xyz.ndim != 4:
            return None
        T, H, W = ro.xyz.shape[:3]
        cam = kin.camera if (kin.camera.height, kin.camera.width) == (H, W) else kin.camera.scaled(W, H)
        anchor = backproject_depth(resize_nearest(f0.depth, H, W), cam)
        robot = rec.seq.xyz if rec.seq is not None and rec.seq.xyz.shape == ro.xyz.shape else None
        xyz_m, fit = lift_pointmaps_anchored(ro.xyz, anchor, robot, None,
                                             MetricLiftConfig(inlier_threshold_m=self.cfg.anchor_inlier_threshold_m))
        if not fit.metric:
            return None
        return dataclasses.replace(ro, xyz=xyz_m, metric=True, metric_quality=f"anchored_{fit.quality}",
                                   metric_residual_m=fit.residual_m)

    def _score(self, rec: ChunkRecord, now_ns: int) -> None:
        ro = rec.rollout
        kin = self._kin()
        if not ro.metric and not ro.anchor_sent and self.cfg.anchor_lift and kin is not None:
            ro = self._anchored(rec, ro, kin) or ro
        out = {"psnr_db": NAN, "ssim": NAN, "depth_mae_m": NAN, "per_frame": {}}
        T, H, W = ro.rgb.shape[:3]
        frames = []
        if rec.mode == "live":
            exec_s = rec.exec_duration_s + 1e-6
            frames = [k for k in range(1, T) if k < len(rec.real) and rec.real[k] is not None
                      and rec.times[k] <= exec_s]
            pf = {"k": [], "t": [], "psnr": [], "ssim": [], "depth_mae_m": []}
            for k in frames:
                f = rec.real[k]
                real = resize_nearest(f.rgb, H, W)
                pf["k"].append(k)
                pf["t"].append(float(rec.times[k]))
                pf["psnr"].append(psnr(ro.rgb[k], real))
                pf["ssim"].append(ssim(ro.rgb[k], real))
                err = NAN
                if ro.metric and f.depth is not None and kin is not None and f.depth.shape == (H, W) \
                        and (kin.camera.height, kin.camera.width) == (H, W):
                    err, _n = pointmap_error(ro.xyz[k], backproject_depth(f.depth, kin.camera))
                pf["depth_mae_m"].append(err)
            out.update(psnr_db=_mean(min(p, 100.0) for p in pf["psnr"]), ssim=_mean(pf["ssim"]),
                       depth_mae_m=_mean(pf["depth_mae_m"]), per_frame=pf)
        # Success predicate on the last frames (imagined: lifted XYZ minus the conditioning robot; real: depth
        # minus the robot rendered at the measured joint state).
        imag = {"valid": False, "success": False, "probability": NAN, "reason": "success_predicate is 'none'"}
        act = dict(imag)
        ep = self._find_episode(rec.episode_id)
        region = ep.region if ep is not None else None
        top = ep.top if ep is not None else configured_top(self.cfg)
        pred = make_predicate(self.cfg, kin.T_base_cam, region, top=top) if kin is not None else None
        pred_imagined = make_predicate(self.cfg, kin.T_base_cam, region, imagined=True, top=top) \
            if kin is not None else None
        if pred is not None:
            upto = [k for k in range(T) if rec.mode == "candidate" or rec.times[k] <= rec.exec_duration_s + 1e-6]
            ks = upto[-pred.window:]
            # the robot as the kinematics rendered it, at the rollout's size (a server may answer at its model's)
            seq = rec.seq if rec.seq is None or rec.seq.link.shape[1:] == (H, W) else rec.seq.resized(W, H)
            link = seq.link >= 0 if seq is not None else None
            robot = link[ks] if link is not None else None
            base = None
            if self.cfg.success_relative:
                base = (ro.xyz[0], link[0] if link is not None else None)
            imag = pred_imagined.evaluate(ro.xyz[ks], robot, ro.metric, base).to_dict()
            if rec.mode == "live":
                with_depth = [k for k in frames if rec.real[k].depth is not None]
                real_ks = with_depth[-pred.window:]
                if real_ks and kin is not None:
                    def real_xyz_mask(k):
                        xyz_k = backproject_depth(resize_nearest(rec.real[k].depth, kin.camera.height,
                                                                 kin.camera.width), kin.camera)
                        mask_k = kin.robot_mask(rec.real[k].q) if rec.real[k].q is not None else rec.seq.link[k] >= 0
                        return xyz_k, mask_k

                    pairs = [real_xyz_mask(k) for k in real_ks]
                    start = rec.real[0] if rec.real else None
                    if self.cfg.success_relative and (start is None or start.depth is None):
                        # the imagination counts against the chunk's first frame; reality must too
                        act = {"valid": False, "success": False, "probability": NAN,
                               "reason": "success_relative needs depth at the chunk's first frame"}
                    else:
                        base = real_xyz_mask(0) if self.cfg.success_relative else None
                        act = pred.evaluate(np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs]),
                                            baseline=base).to_dict()
                else:
                    act = {"valid": False, "success": False, "probability": NAN, "reason": "no depth frames"}
        res = self._base(rec, STATUS_OK, "", now_ns)
        res.update(out)
        res.update(imagined_success=bool(imag["valid"] and imag["success"]),
                   imagined_success_probability=imag["probability"] if imag["valid"] else NAN,
                   has_actual=bool(act["valid"]), actual_success=bool(act["valid"] and act["success"]),
                   predicate={"imagined": imag, "actual": act}, frames_compared=len(frames),
                   imagined_valid=bool(imag["valid"]),
                   model_id=ro.model_id, composite=ro.composite, generation_time_s=ro.generation_time_s,
                   metric=bool(ro.metric),
                   metric_quality=ro.metric_quality, metric_residual_m=ro.metric_residual_m)
        res["frames_file"] = self._save_frames(rec, frames)
        self._emit_chunk(rec, res)

    def _save_frames(self, rec: ChunkRecord, frames: list) -> str:
        if not (self.cfg.save_frames and self.frames_dir is not None and rec.rollout is not None):
            return ""
        try:
            d = self.frames_dir / rec.episode_id
            d.mkdir(parents=True, exist_ok=True)
            path = d / f"chunk_{rec.chunk_index:04d}_{rec.mode}.npz"
            ro = rec.rollout
            H, W = ro.rgb.shape[1:3]
            real = [resize_nearest(rec.real[k].rgb, H, W) for k in frames]
            tmp = path.with_suffix(".tmp.npz")
            with open(tmp, "wb") as fh:  # on disk before the log's (fsync'd) record points at it
                np.savez_compressed(fh, imagined_rgb=ro.rgb, times=rec.times, real_k=np.asarray(frames, np.int64),
                                    real_rgb=np.stack(real) if real else np.zeros((0, H, W, 3), np.uint8),
                                    initial_rgb=resize_nearest(rec.real[0].rgb, H, W))
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
            return os.path.relpath(path, self.log_dir) if self.log_dir else str(path)
        except OSError:
            return ""

    def _base(self, rec: ChunkRecord, status: str, message: str, now_ns: int) -> dict:
        latency = (rec.imagined_ns - rec.start_ns) * 1e-9 if rec.imagined_ns and status != STATUS_SKIPPED else NAN
        return {"kind": "chunk", "episode_id": rec.episode_id, "chunk_index": rec.chunk_index,
                "scenario": rec.scenario, "policy": rec.policy, "mode": rec.mode, "status": status,
                "status_message": message, "stamp_ns": int(now_ns), "chunk_start_ns": rec.start_ns,
                "chunk_duration_s": rec.exec_duration_s, "num_frames": len(rec.times),
                "psnr_db": NAN, "ssim": NAN, "depth_mae_m": NAN, "imagined_success": False,
                "imagined_success_probability": NAN, "has_actual": False, "actual_success": False,
                "imagine_latency_s": latency}

    def _finish_chunk(self, rec: ChunkRecord, status: str, message: str, now_ns: int) -> None:
        self._emit_chunk(rec, self._base(rec, status, message, now_ns))

    def _emit_chunk(self, rec: ChunkRecord, res: dict) -> None:
        rec.state = "done"
        rec.real, rec.rollout = [], None  # free the frames
        key = {STATUS_OK: "ok", STATUS_SKIPPED: "skipped", STATUS_FAILED: "failed"}[res["status"]]
        self.counts[key] += 1
        ep = self._find_episode(rec.episode_id)
        if ep is not None:
            ep.results.append(res)
        self.sink(res)

    def _find_episode(self, episode_id: str) -> Optional[Episode]:
        for ep in self.closing + ([self.episode] if self.episode else []):
            if ep.episode_id == episode_id:
                return ep
        return None

    # -- episodes ----------------------------------------------------------------------------------------
    def _finish_episodes(self) -> None:
        for ep in list(self.closing):
            if all(r.state == "done" for r in ep.records):
                self.closing.remove(ep)
                if ep.records:
                    self._emit_episode(ep)

    def _emit_episode(self, ep: Episode) -> None:
        live = [r for r in ep.results if r["mode"] == "live"]
        actual, source = None, "none"
        if ep.success_label is not None:
            actual, source = ep.success_label, "label"
        else:
            last = [r for r in sorted(live, key=lambda r: r["chunk_index"]) if r["has_actual"]]
            if last:
                actual, source = last[-1]["actual_success"], "depth"
        for mode in MODES:
            rs = sorted([r for r in ep.results if r["mode"] == mode], key=lambda r: r["chunk_index"])
            if not rs:
                continue
            ok = [r for r in rs if r["status"] == STATUS_OK]
            n_fail = sum(r["status"] == STATUS_FAILED for r in rs)
            n_skip = sum(r["status"] == STATUS_SKIPPED for r in rs)
            if n_fail:
                status, msg = STATUS_FAILED, (f"{n_fail} of {len(rs)} chunk(s) failed to evaluate: "
                                              f"{next(r['status_message'] for r in rs if r['status'] == STATUS_FAILED)}")
            elif not ok:
                status, msg = STATUS_FAILED, f"no chunk evaluated ({n_skip} skipped)"
            else:
                status, msg = STATUS_OK, f"{len(ok)} chunk(s) evaluated, {n_skip} skipped"
            last_ok = ok[-1] if ok else None
            res = {"kind": "episode", "episode_id": ep.episode_id, "chunk_index": -1, "scenario": ep.scenario,
                   "policy": ep.policy if mode == "live" else ep.candidate_policy, "mode": mode, "status": status,
                   "status_message": msg, "stamp_ns": int(ep.end_ns), "label": ep.label,
                   "start_ns": ep.start_ns, "end_ns": ep.end_ns, "chunks": len(rs), "chunks_ok": len(ok),
                   "chunks_skipped": n_skip, "chunks_failed": n_fail,
                   "psnr_db": _mean(r["psnr_db"] for r in ok), "ssim": _mean(r["ssim"] for r in ok),
                   "depth_mae_m": _mean(r["depth_mae_m"] for r in ok),
                   "imagined_success": bool(last_ok["imagined_success"]) if last_ok else False,
                   "imagined_success_probability": last_ok["imagined_success_probability"] if last_ok else NAN,
                   "has_actual": actual is not None, "actual_success": bool(actual) if actual is not None else False,
                   "actual_source": source, "imagine_latency_s": _mean(r["imagine_latency_s"] for r in ok),
                   "imagined_valid": bool(last_ok and last_ok.get("predicate", {}).get("imagined", {}).get("valid")),
                   "chunk_results": [(r["chunk_index"], r["status"]) for r in rs]}
            self.counts["episodes"] += mode == "live"
            self.sink(res)

    # -- introspection -----------------------------------------------------------------------------------
    def status(self) -> dict:
        with self.lock:
            return {"queued": len(self.queue), "in_flight": self.in_flight is not None,
                    "waiting": len(self.waiting), "episode": self.episode.episode_id if self.episode else "",
                    **{k: v for k, v in self.counts.items()}, "skipped_total": self.queue.skipped}

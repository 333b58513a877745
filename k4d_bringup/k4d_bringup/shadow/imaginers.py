"""World models for the offline replay: in-process (a checkpoint) or a running /k4d/imagine action server.

    imag = make_imaginer(checkpoint="ckpt/")      # in process (no ROS graph needed)
    imag = make_imaginer(checkpoint="")           # action client of /k4d/imagine (a server must be running)
    rollout = imag(initial_rgb, seq, rec)         # RolloutData, or raises RuntimeError with the reason

In process: ``k4d_worldmodel.engine.ImagineEngine``, the imagine node's own ROS-free engine (load, sample,
lift to metres). Without a checkpoint the replay needs a running Imagine server.

Both send the depth of the chunk's first frame (``rec.real[0].depth``, when the recording has a depth topic)
with the request as the anchor of the metric lift (``ShadowConfig.send_initial_depth``), through ``DepthGate``,
which the live shadow node uses too.
"""
from __future__ import annotations

import logging
import math
import time
from typing import Callable, Optional

import numpy as np

from .config import NOT_ACTIVE_RETRY_S, SERVER_LOST_S
from .session import RolloutData


class DepthGate:
    """Which depth goes with an imagination request (``ShadowConfig.send_initial_depth``).

    ``gate(rgb, depth)`` -> the depth to send, (H, W) float32 metres with NaN where unknown (non-finite or
    <= 0 in the input), or None: when ``send`` is off, there is no depth, or the depth's size differs from the
    RGB frame's (not registered to the colour camera: it would anchor the lift on the wrong pixels, and the
    server would reject the goal). Such a depth is counted in ``skipped`` and reported through ``warn`` at most
    once per ``period_s``; the request goes out without depth.
    """

    def __init__(self, send: bool, warn: Callable[[str], None], period_s: float = 10.0):
        self.send, self.warn, self.period_s = bool(send), warn, float(period_s)
        self.skipped = 0
        self._warned = -math.inf

    def __call__(self, rgb: np.ndarray, depth: Optional[np.ndarray]) -> Optional[np.ndarray]:
        if not self.send or depth is None:
            return None
        d = np.asarray(depth, np.float32)
        if d.shape != np.shape(rgb)[:2]:
            self.skipped += 1
            now = time.monotonic()
            if now - self._warned >= self.period_s:
                self._warned = now
                h, w = np.shape(rgb)[:2]
                self.warn(f"initial depth of shape {d.shape} differs from the {w}x{h} image (register the depth to "
                          f"the colour camera): Imagine goal sent without initial_depth ({self.skipped} so far)")
            return None
        return np.where(np.isfinite(d) & (d > 0), d, np.float32(np.nan))


def start_depth(rec) -> Optional[np.ndarray]:
    """The depth of a chunk record's start frame (``rec.real[0]``), or None."""
    f0 = rec.real[0] if rec is not None and rec.real else None
    return None if f0 is None else f0.depth


class EngineImaginer:
    """``k4d_worldmodel.engine.ImagineEngine`` in this process: the imagine node's own ROS-free engine."""

    def __init__(self, checkpoint: str, device: str = "auto", num_inference_steps: int = 0,
                 guidance_scale: float = 0.0, seed: int = 42, cuda_graphs: bool = True,
                 send_initial_depth: bool = True, metric_register: bool = True, compose: str = "off",
                 flying_rel: float | None = None, flying_mode: str | None = None):
        """``compose``: "off", or the composite region ("current", "swept") of the engine's ``compose_static``;
        ``flying_rel`` / ``flying_mode``: its ``compose_flying_rel`` / ``compose_flying_mode`` (None: the
        engine's defaults; rel 0 = off). The chunk records name the composite with the filter the engine applies
        ("swept/either:0.12"), so a success probability fitted on one is not applied to the other."""
        from k4d_worldmodel.config import WorldModelConfig
        from k4d_worldmodel.engine import ImagineEngine, SamplingOverrides

        composed = {} if compose == "off" else {"compose_static": True, "compose_region": compose}
        if compose != "off" and flying_rel is not None:
            composed["compose_flying_rel"] = float(flying_rel)
        if compose != "off" and flying_mode is not None:
            composed["compose_flying_mode"] = flying_mode
        self.engine = ImagineEngine(WorldModelConfig(checkpoint_dir=str(checkpoint), device=device,
                                                    cuda_graphs=bool(cuda_graphs),
                                                    metric_register=bool(metric_register), **composed))
        self.engine.load()
        self.sampling = SamplingOverrides(num_inference_steps=int(num_inference_steps),
                                          guidance_scale=float(guidance_scale), seed=int(seed))
        self.model_id = self.engine.model_id
        cfg = self.engine.config
        self.compose = str(compose) if compose == "off" or not cfg.compose_flying_rel else \
            f"{compose}/{cfg.compose_flying_mode}:{cfg.compose_flying_rel:g}"
        self.depth_gate = DepthGate(send_initial_depth, logging.getLogger(__name__).warning)

    def __call__(self, initial_rgb, seq, rec=None) -> RolloutData:
        from k4d_worldmodel.engine import ImagineRequest

        depth = self.depth_gate(initial_rgb, start_depth(rec))
        try:
            r = self.engine.run(ImagineRequest(image=initial_rgb, sequence=seq, sampling=self.sampling,
                                               anchor_depth=depth))
        except ValueError as exc:  # InvalidRequest names the field
            raise RuntimeError(str(exc)) from None
        return RolloutData(np.asarray(r.rgb), np.asarray(r.xyz, np.float32), bool(r.metric), r.model_id,
                           float(r.timings.get("generation_s", float("nan"))), r.metric_quality,
                           float(r.lift.residual_m), anchor_sent=depth is not None, composite=self.compose)


class ActionImaginer:
    """Blocking client of a running Imagine action server (creates its own rclpy node).

    ``wait_server_s``: how long the constructor waits for the server to appear. As in the live shadow node, a
    server that answers "not active" (it still loads its model, or was deactivated) gets the goal again every
    ``NOT_ACTIVE_RETRY_S`` until ``cfg.inactive_wait_s``; a missing server fails a chunk after ``cfg.server_wait_s``,
    and one that leaves the graph mid-goal fails it at once: each raises RuntimeError naming the reason, and the
    next chunk tries again."""

    def __init__(self, cfg, timeout_s: Optional[float] = None, wait_server_s: float = 10.0):
        import rclpy
        from rclpy.action import ActionClient

        from k4d_msgs.action import Imagine

        self._own_context = not rclpy.ok()  # initialised here -> shut down by close()
        if self._own_context:
            rclpy.init()
        self.cfg = cfg
        self.node = rclpy.create_node("k4d_shadow_replay")
        self.client = ActionClient(self.node, Imagine, cfg.imagine_action)
        self.timeout_s = timeout_s or cfg.imagine_timeout_s
        self.depth_gate = DepthGate(cfg.send_initial_depth, self.node.get_logger().warning)
        if not self.client.wait_for_server(timeout_sec=wait_server_s):
            self.close()
            raise RuntimeError(self._no_server())

    def _no_server(self) -> str:
        return (f"no Imagine action server on {self.cfg.imagine_action} (start the imagine node, or pass "
                f"--checkpoint to run the world model in this process)")

    def __call__(self, initial_rgb, seq, rec=None) -> RolloutData:
        from k4d_bringup.ros.shadow_node import build_goal, rollout_from_result

        from k4d_msgs.action import Imagine

        depth = self.depth_gate(initial_rgb, start_depth(rec))
        goal = build_goal(self.cfg, initial_rgb, seq, rec.traj if rec is not None else None, depth)
        deadline = time.monotonic() + self.cfg.inactive_wait_s
        while True:
            result = self._send(goal)
            if result.error_code != Imagine.Result.ERROR_NOT_ACTIVE or time.monotonic() >= deadline:
                return rollout_from_result(result, depth is not None)
            time.sleep(NOT_ACTIVE_RETRY_S)

    def _send(self, goal):
        """One goal to the server and its result message (RuntimeError when no result comes)."""
        import rclpy

        # A server that left the graph (crashed, stopped) fails this chunk after ``server_wait_s`` (as a queued
        # chunk of the node does), not after the goal timeout; one that is back by then is used again.
        if not self.client.server_is_ready() and not self.client.wait_for_server(
                timeout_sec=self.cfg.server_wait_s):
            raise RuntimeError(self._no_server())
        fut = self.client.send_goal_async(goal)
        rclpy.spin_until_future_complete(self.node, fut, timeout_sec=30.0)
        if not fut.done():
            raise RuntimeError(f"the Imagine action server on {self.cfg.imagine_action} did not answer the goal "
                               f"within 30 s")
        handle = fut.result()
        if handle is None or not handle.accepted:
            raise RuntimeError("Imagine goal rejected")
        res_fut = handle.get_result_async()
        deadline, lost = time.monotonic() + self.timeout_s, None
        while not res_fut.done() and time.monotonic() < deadline:
            rclpy.spin_until_future_complete(self.node, res_fut, timeout_sec=min(0.25, self.timeout_s))
            if res_fut.done() or self.client.server_is_ready():
                lost = None
                continue
            lost = lost or time.monotonic()
            if time.monotonic() - lost > SERVER_LOST_S:  # left the graph, judged as the shadow node does
                raise RuntimeError(f"the Imagine action server on {self.cfg.imagine_action} left the graph while "
                                   f"imagining (the imagine node stopped or crashed)")
        if not res_fut.done():
            handle.cancel_goal_async()
            raise RuntimeError(f"Imagine goal did not finish within {self.timeout_s} s")
        return res_fut.result().result

    def close(self) -> None:
        import rclpy

        self.node.destroy_node()
        if self._own_context:
            rclpy.try_shutdown()


def make_imaginer(cfg, checkpoint: str = "", device: str = "auto"):
    """In-process world model (k4d_worldmodel's ImagineEngine) for ``checkpoint``, else an action client."""
    if checkpoint:
        return EngineImaginer(checkpoint, device, cfg.num_inference_steps, cfg.guidance_scale, cfg.seed,
                              send_initial_depth=cfg.send_initial_depth)
    return ActionImaginer(cfg)

"""The task success predicate on metric 4D pointmaps (imagined world pointmaps or depth back-projections).

    pred = RegionPredicate(T_base_cam, box_min=[0.30, -0.25, 0.0], box_max=[0.42, -0.13, 0.08], min_points=20)
    res = pred.evaluate(xyz_cam, robot_mask)      # xyz_cam (T, H, W, 3) m optical frame; robot_mask (T, H, W)
    res.success, res.probability, res.counts

"Did the object end up in the goal region?" asked of the scene itself, not of a simulator: the scene points
of the last ``window`` frames (robot pixels, dilated by ``robot_margin_px``, excluded so the gripper does
not count as the object) are moved into the robot base frame with the calibrated extrinsics and counted
inside an axis-aligned box. A frame is successful with at least ``min_points`` points in the box; the
success probability is the fraction of successful frames in the window, and success is probability >= 0.5.
The same predicate runs on the world model's lifted XYZ (imagined outcome) and on the depth camera's
back-projection (actual outcome), so both are metric and comparable. It needs a metric imagination
(``ImaginedRollout.metric``); on a non-metric one it reports ``valid = False``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


REFERENCE_PIXELS = 96 * 64


def min_points_for(height: int, width: int, at_reference: int = 3) -> int:
    """A point-count threshold for ``height`` x ``width`` pointmaps that was set for 96 x 64 ones.

    A count of pixels scales with the image area: an object that covers 5-20 pixels at 96 x 64 covers 20-80 at
    192 x 128, while a smear of a few pixels (VAE blur at an object's edge) stays a few pixels. Returns
    ``round(at_reference * height * width / (96 * 64))``, at least 1."""
    if int(height) <= 0 or int(width) <= 0:
        raise ValueError(f"height and width must be positive, got {height} x {width}")
    return max(1, int(round(at_reference * int(height) * int(width) / REFERENCE_PIXELS)))


RELATIVE_PREFIX = "relative to "  # how the reason of a result counted against a baseline frame starts


def success_from_counts(counts, min_points: int, baseline: int = 0) -> tuple[bool, float]:
    """The predicate's rule on its window's per-frame box counts: a frame succeeds with at least ``min_points``
    points more than ``baseline``; ``(success, probability)`` with probability = the fraction of successful frames
    and success = probability >= 0.5. ``k4d shadow calibrate`` applies it again to logged counts."""
    if not len(counts):
        raise ValueError("no frame counts to judge")
    prob = float(np.mean([c - baseline >= min_points for c in counts]))
    return prob >= 0.5, prob


def dilate(mask: np.ndarray, px: int) -> np.ndarray:
    """4-neighbour dilation of a (..., H, W) bool mask by ``px`` pixels."""
    out = np.asarray(mask, bool).copy()
    for _ in range(int(px)):
        d = out.copy()
        d[..., 1:, :] |= out[..., :-1, :]
        d[..., :-1, :] |= out[..., 1:, :]
        d[..., :, 1:] |= out[..., :, :-1]
        d[..., :, :-1] |= out[..., :, 1:]
        out = d
    return out


@dataclass
class PredicateResult:
    valid: bool
    success: bool = False
    probability: float = float("nan")
    counts: list = field(default_factory=list)
    reason: str = ""

    def to_dict(self) -> dict:
        return {"valid": self.valid, "success": self.success, "probability": self.probability,
                "counts": list(self.counts), "reason": self.reason}


class RegionPredicate:
    """Object-in-region success (see module doc). ``T_base_cam``: (4, 4) camera optical frame in the base frame."""

    def __init__(self, T_base_cam: np.ndarray, box_min, box_max, min_points: int = 20, window: int = 3,
                 robot_margin_px: int = 2, radius: float | None = None):
        self.T_base_cam = np.asarray(T_base_cam, np.float64)
        if self.T_base_cam.shape != (4, 4):
            raise ValueError(f"T_base_cam must be (4, 4), got {self.T_base_cam.shape}")
        self.box_min, self.box_max = np.asarray(box_min, np.float64), np.asarray(box_max, np.float64)
        if self.box_min.shape != (3,) or self.box_max.shape != (3,) or np.any(self.box_min >= self.box_max):
            raise ValueError(f"box_min must be below box_max on every axis, got {box_min} and {box_max}")
        self.min_points, self.window, self.robot_margin_px = int(min_points), int(window), int(robot_margin_px)
        self.radius = None if radius is None else float(radius)  # a disc (vertical cylinder) inside the box
        if self.radius is not None and not self.radius > 0:
            raise ValueError(f"radius must be > 0, got {radius}")

    @classmethod
    def zone(cls, T_base_cam: np.ndarray, center_xy, radius: float, z_min: float, z_max: float,
             **kwargs) -> "RegionPredicate":
        """A circular goal zone: points within ``radius`` of ``center_xy`` (horizontally), ``z_min`` .. ``z_max``
        above the base plane."""
        c = np.asarray(center_xy, np.float64)[:2]
        r = float(radius)
        return cls(T_base_cam, [c[0] - r, c[1] - r, z_min], [c[0] + r, c[1] + r, z_max], radius=r, **kwargs)

    def count(self, xyz_cam: np.ndarray, robot_mask: np.ndarray | None = None) -> int:
        """Scene points of one frame (H, W, 3) inside the box."""
        p = np.asarray(xyz_cam, np.float64)
        sel = np.isfinite(p).all(-1)
        if robot_mask is not None:
            sel &= ~dilate(robot_mask, self.robot_margin_px)
        pts = p[sel]
        if not len(pts):
            return 0
        pb = pts @ self.T_base_cam[:3, :3].T + self.T_base_cam[:3, 3]
        inside = np.all((pb >= self.box_min) & (pb <= self.box_max), axis=1)
        if self.radius is not None:
            centre = (self.box_min[:2] + self.box_max[:2]) / 2
            inside &= np.linalg.norm(pb[:, :2] - centre, axis=1) <= self.radius
        return int(inside.sum())

    def evaluate(self, xyz_cam: np.ndarray, robot_mask: np.ndarray | None = None, metric: bool = True,
                 baseline: tuple[np.ndarray, np.ndarray | None] | None = None) -> PredicateResult:
        """Evaluate on frames (T, H, W, 3) (the last ``window`` are used); robot_mask (T, H, W) or None.

        ``baseline`` = ``(xyz (H, W, 3), robot_mask (H, W) or None)``: a frame counts as successful when it has at
        least ``min_points`` more points in the box than this frame (the chunk's first), so what is there from
        the start (a pointmap's noise floor, an object already in the box) does not make success by itself.
        ``counts`` stay the frames' own counts; the result's ``reason`` names the baseline count."""
        if not metric:
            return PredicateResult(False, reason="pointmap is not metric (world model lifting failed)")
        xyz = np.asarray(xyz_cam)
        if xyz.ndim == 3:
            xyz = xyz[None]
            robot_mask = None if robot_mask is None else np.asarray(robot_mask)[None]
        if xyz.ndim != 4 or xyz.shape[-1] != 3 or len(xyz) == 0:
            return PredicateResult(False, reason=f"expected (T, H, W, 3) pointmaps, got shape {xyz.shape}")
        k = min(self.window, len(xyz))
        counts = [self.count(xyz[-k + i], None if robot_mask is None else robot_mask[-k + i]) for i in range(k)]
        base, reason = 0, ""
        if baseline is not None:
            b_xyz, b_mask = baseline
            if np.shape(b_xyz) != xyz.shape[1:]:
                return PredicateResult(False, reason=f"baseline frame must have shape {xyz.shape[1:]}, got "
                                                     f"{np.shape(b_xyz)}")
            base = self.count(b_xyz, b_mask)
            reason = f"{RELATIVE_PREFIX}{base} points in the first frame"
        success, prob = success_from_counts(counts, self.min_points, base)
        return PredicateResult(True, success, prob, counts, reason)


def make_predicate(cfg, T_base_cam: np.ndarray, region=None, imagined: bool = False):
    """The predicate configured by a ShadowConfig (None for success_predicate 'none'); ``region`` = (box_min,
    box_max) replaces the configured box (an episode's own goal, from its start event). ``imagined``: the one for
    the world model's output, whose point threshold is ``imagined_min_points`` when that is set."""
    if cfg.success_predicate == "none":
        return None
    lo, hi = region if region is not None else (cfg.success_region_min, cfg.success_region_max)
    points = cfg.imagined_min_points if imagined and cfg.imagined_min_points else cfg.success_min_points
    return RegionPredicate(T_base_cam, lo, hi, points, cfg.success_window_frames, cfg.robot_margin_px)

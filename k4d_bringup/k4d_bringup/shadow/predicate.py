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

Standing check (optional: ``top_min_z``, ``top_min_points``): a frame then succeeds only when it ALSO has at
least ``top_min_points`` points in the same region at or above base-frame height ``top_min_z`` (the slab up to the
box's top), i.e. something in the region stands at least that tall. An object lying on its side fills the box but
not the slab. ``upright_top_height`` gives the slab height for a simulated pick-place target (label rule 3: a
cylinder toppled in the zone is a near miss); on the real robot set it from the object's known height
(``ShadowConfig.success_top_min_height_m``). The slab's counts are reported (``PredicateResult.top_counts``).
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Optional

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


def standing_min_points_for(height: int, width: int) -> int:
    """The standing check's slab threshold for ``height`` x ``width`` pointmaps: 1 point at 96 x 64, scaled with
    the area as ``min_points_for`` scales the box's 3 (4 at 192 x 128). A standing cylinder's top puts few pixels
    above the slab height, a toppled one none."""
    return min_points_for(height, width, at_reference=1)


RELATIVE_PREFIX = "relative to "  # how the reason of a result counted against a baseline frame starts


def success_from_counts(counts, min_points: int, baseline: int = 0, top_counts=None,
                        top_min_points: Optional[int] = None, top_baseline: int = 0) -> tuple[bool, float]:
    """The predicate's rule on its window's per-frame box counts: a frame succeeds with at least ``min_points``
    points more than ``baseline`` and, when ``top_counts`` (the standing check's per-frame slab counts) are given,
    at least ``top_min_points`` slab points more than ``top_baseline``; ``(success, probability)`` with probability
    = the fraction of successful frames and success = probability >= 0.5. ``k4d shadow calibrate`` applies it
    again to logged box counts only (no ``top_counts``: a log made with the standing check is rescored without
    it); ``success_from_logged`` re-applies a logged result's whole rule, standing check included."""
    if not len(counts):
        raise ValueError("no frame counts to judge")
    ok = np.asarray([c - baseline >= min_points for c in counts], bool)
    if top_counts is not None:
        if top_min_points is None:
            raise ValueError("top_counts given without top_min_points")
        if len(top_counts) != len(counts):
            raise ValueError(f"top_counts must have one count per frame ({len(counts)}), got {len(top_counts)}")
        ok &= np.asarray([t - top_baseline >= top_min_points for t in top_counts], bool)
    prob = float(np.mean(ok))
    return prob >= 0.5, prob


def success_from_logged(pred: dict, min_points: int) -> tuple[bool, float]:
    """``success_from_counts`` on a logged result (``PredicateResult.to_dict``, e.g. a chunk record's
    ``predicate.imagined``) with the box threshold ``min_points``: its counts, its baseline count when it was
    counted relative to a frame (``baseline_count``) and its standing check as logged (``top_counts``,
    ``top_min_points``, ``top_baseline_count``), so a rescored threshold keeps the slab rule the result was judged
    with. ValueError when the result is not valid, has no counts, or was counted relative to a frame whose count
    is not logged (logs written before ``baseline_count`` was recorded)."""
    if not pred.get("valid"):
        raise ValueError(f"the logged predicate result is not valid: {pred.get('reason', '')!r}")
    if str(pred.get("reason", "")).startswith(RELATIVE_PREFIX) and "baseline_count" not in pred:
        raise ValueError("the logged result was counted relative to a frame whose count is not logged")
    top = pred.get("top_counts")
    return success_from_counts(pred.get("counts") or [], min_points, int(pred.get("baseline_count", 0)),
                               None if top is None else list(top), pred.get("top_min_points"),
                               int(pred.get("top_baseline_count", 0)))


# A pick-place cylinder's standing check needs one at least this much taller (half height h - radius r) than wide:
# below it the slab above r + h is thinner than 3 mm (k4d eval's ``upright_zone_counts`` asks the same).
UPRIGHT_MIN_GAP_M = 0.003
_TASKS, _KINDS = ("pick_place", "push"), ("cube", "cylinder")


def upright_top_height(task: str, kind: str, size) -> Optional[float]:
    """The base-frame height (m, table at 0) above which only a standing target puts points, for the simulator's
    label rule 3 (a pick-place target must end upright): ``r + h`` for a pick-place cylinder of radius r and half
    height h (MuJoCo geom ``size`` = (r, h)), halfway between the top of one lying on its side (2 r) and of one
    standing (2 h). None where no such slab tells standing from toppled: push (a toppled target counts), a cube
    (upright on any face) and a cylinder less than ``UPRIGHT_MIN_GAP_M`` taller than wide (h - r). ValueError for an
    unknown task or kind, or a size that is not positive and finite."""
    if task not in _TASKS:
        raise ValueError(f"task = {task!r}: unknown ({', '.join(_TASKS)})")
    if kind not in _KINDS:
        raise ValueError(f"kind = {kind!r}: unknown ({', '.join(_KINDS)})")
    try:
        dims = [float(v) for v in size]
    except (TypeError, ValueError):
        raise ValueError(f"size = {size!r}: must be the object's MuJoCo geom size (numbers)") from None
    need = 2 if kind == "cylinder" else 3
    if len(dims) < need or not all(math.isfinite(v) and v > 0 for v in dims[:need]):
        raise ValueError(f"size = {size!r}: a {kind} needs {need} positive finite values "
                         f"({'radius, half height' if kind == 'cylinder' else 'half extents'}, m)")
    if task != "pick_place" or kind != "cylinder":
        return None
    r, h = dims[0], dims[1]
    if h - r < UPRIGHT_MIN_GAP_M:
        return None
    return r + h


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
    """``counts``: the window's per-frame box counts. With a baseline frame, ``baseline_count`` is its box count.
    With the standing check, ``top_counts`` are the window's per-frame slab counts (``top_baseline_count`` the
    baseline frame's), ``top_min_z`` and ``top_min_points`` the check; without it they are empty / None and
    ``to_dict`` leaves them out (a log then reads as before the check existed)."""

    valid: bool
    success: bool = False
    probability: float = float("nan")
    counts: list = field(default_factory=list)
    reason: str = ""
    baseline_count: Optional[int] = None
    top_counts: list = field(default_factory=list)
    top_min_z: Optional[float] = None
    top_min_points: Optional[int] = None
    top_baseline_count: Optional[int] = None

    def to_dict(self) -> dict:
        d = {"valid": self.valid, "success": self.success, "probability": self.probability,
             "counts": list(self.counts), "reason": self.reason}
        if self.baseline_count is not None:
            d["baseline_count"] = self.baseline_count
        if self.top_min_z is not None:
            d.update(top_counts=list(self.top_counts), top_min_z=self.top_min_z, top_min_points=self.top_min_points)
            if self.top_baseline_count is not None:
                d["top_baseline_count"] = self.top_baseline_count
        return d


class RegionPredicate:
    """Object-in-region success (see module doc). ``T_base_cam``: (4, 4) camera optical frame in the base frame.

    ``top_min_z`` (m, base frame) and ``top_min_points``, given together: the standing check (module doc); the slab
    is the region from ``top_min_z`` up, so ``top_min_z`` must lie inside the box's height range."""

    def __init__(self, T_base_cam: np.ndarray, box_min, box_max, min_points: int = 20, window: int = 3,
                 robot_margin_px: int = 2, radius: float | None = None, top_min_z: float | None = None,
                 top_min_points: int | None = None):
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
        self.top_min_z, self.top_min_points = _check_top(top_min_z, top_min_points, self.box_min[2], self.box_max[2])

    @classmethod
    def zone(cls, T_base_cam: np.ndarray, center_xy, radius: float, z_min: float, z_max: float,
             **kwargs) -> "RegionPredicate":
        """A circular goal zone: points within ``radius`` of ``center_xy`` (horizontally), ``z_min`` .. ``z_max``
        above the base plane."""
        c = np.asarray(center_xy, np.float64)[:2]
        r = float(radius)
        return cls(T_base_cam, [c[0] - r, c[1] - r, z_min], [c[0] + r, c[1] + r, z_max], radius=r, **kwargs)

    @property
    def standing(self) -> bool:
        """Whether the standing check (``top_min_z``, ``top_min_points``) is on."""
        return self.top_min_z is not None

    def region_heights(self, xyz_cam: np.ndarray, robot_mask: np.ndarray | None = None) -> np.ndarray:
        """Base-frame heights (m) of the scene points of one frame (H, W, 3) inside the region."""
        p = np.asarray(xyz_cam, np.float64)
        sel = np.isfinite(p).all(-1)
        if robot_mask is not None:
            sel &= ~dilate(robot_mask, self.robot_margin_px)
        pts = p[sel]
        if not len(pts):
            return np.zeros(0)
        pb = pts @ self.T_base_cam[:3, :3].T + self.T_base_cam[:3, 3]
        inside = np.all((pb >= self.box_min) & (pb <= self.box_max), axis=1)
        if self.radius is not None:
            centre = (self.box_min[:2] + self.box_max[:2]) / 2
            inside &= np.linalg.norm(pb[:, :2] - centre, axis=1) <= self.radius
        return pb[inside, 2]

    def count(self, xyz_cam: np.ndarray, robot_mask: np.ndarray | None = None) -> int:
        """Scene points of one frame (H, W, 3) inside the box."""
        return int(len(self.region_heights(xyz_cam, robot_mask)))

    def top_count(self, xyz_cam: np.ndarray, robot_mask: np.ndarray | None = None) -> int:
        """Scene points of one frame (H, W, 3) in the standing check's slab (inside the region, at or above
        ``top_min_z``). ValueError when the check is off."""
        if not self.standing:
            raise ValueError("top_count needs the standing check (top_min_z, top_min_points)")
        return int(np.count_nonzero(self.region_heights(xyz_cam, robot_mask) >= self.top_min_z))

    def _counts(self, xyz_cam, robot_mask) -> tuple[int, Optional[int]]:
        """(box count, slab count or None without the standing check) of one frame, from one pass."""
        z = self.region_heights(xyz_cam, robot_mask)
        return int(len(z)), (int(np.count_nonzero(z >= self.top_min_z)) if self.standing else None)

    def evaluate(self, xyz_cam: np.ndarray, robot_mask: np.ndarray | None = None, metric: bool = True,
                 baseline: tuple[np.ndarray, np.ndarray | None] | None = None) -> PredicateResult:
        """Evaluate on frames (T, H, W, 3) (the last ``window`` are used); robot_mask (T, H, W) or None.

        ``baseline`` = ``(xyz (H, W, 3), robot_mask (H, W) or None)``: a frame counts as successful when it has at
        least ``min_points`` more points in the box than this frame (the chunk's first), so what is there from
        the start (a pointmap's noise floor, an object already in the box) does not make success by itself; the
        standing check's slab is counted against the same frame. ``counts`` (and ``top_counts``) stay the frames'
        own counts; the result's ``reason`` names the baseline count, ``baseline_count`` holds it."""
        if not metric:
            return PredicateResult(False, reason="pointmap is not metric (world model lifting failed)")
        xyz = np.asarray(xyz_cam)
        if xyz.ndim == 3:
            xyz = xyz[None]
            robot_mask = None if robot_mask is None else np.asarray(robot_mask)[None]
        if xyz.ndim != 4 or xyz.shape[-1] != 3 or len(xyz) == 0:
            return PredicateResult(False, reason=f"expected (T, H, W, 3) pointmaps, got shape {xyz.shape}")
        k = min(self.window, len(xyz))
        both = [self._counts(xyz[-k + i], None if robot_mask is None else robot_mask[-k + i]) for i in range(k)]
        counts, tops = [c for c, _ in both], [t for _, t in both]
        base, top_base, reasons = None, None, []
        if baseline is not None:
            b_xyz, b_mask = baseline
            if np.shape(b_xyz) != xyz.shape[1:]:
                return PredicateResult(False, reason=f"baseline frame must have shape {xyz.shape[1:]}, got "
                                                     f"{np.shape(b_xyz)}")
            base, top_base = self._counts(b_xyz, b_mask)
            reasons.append(f"{RELATIVE_PREFIX}{base} points in the first frame"
                           + (f" ({top_base} in the standing slab)" if self.standing else ""))
        if self.standing:
            reasons.append(f"standing check: >= {self.top_min_points} points at or above z = {self.top_min_z:.4f} m")
        success, prob = success_from_counts(counts, self.min_points, base or 0, tops if self.standing else None,
                                            self.top_min_points, top_base or 0)
        return PredicateResult(True, success, prob, counts, "; ".join(reasons), base,
                               tops if self.standing else [], self.top_min_z, self.top_min_points, top_base)


def _check_top(top_min_z, top_min_points, z_lo: float, z_hi: float) -> tuple[Optional[float], Optional[int]]:
    """The standing check's (top_min_z, top_min_points), validated: both None (off), or a finite height strictly
    inside the box's height range (z_lo, z_hi) and an integer >= 1. ValueError naming the parameter."""
    if top_min_z is None and top_min_points is None:
        return None, None
    if top_min_z is None or top_min_points is None:
        missing = "top_min_z" if top_min_z is None else "top_min_points"
        raise ValueError(f"{missing} must be given with {'top_min_points' if missing == 'top_min_z' else 'top_min_z'} "
                         f"(the standing check needs both), got top_min_z={top_min_z!r}, "
                         f"top_min_points={top_min_points!r}")
    if isinstance(top_min_z, bool) or not isinstance(top_min_z, numbers.Real) or not math.isfinite(top_min_z):
        raise ValueError(f"top_min_z must be a finite height (m, base frame), got {top_min_z!r}")
    if not z_lo < float(top_min_z) < z_hi:
        raise ValueError(f"top_min_z = {float(top_min_z)!r} must lie inside the region's height range "
                         f"({float(z_lo)!r}, {float(z_hi)!r}) m: the slab runs from it up to the region's top")
    if isinstance(top_min_points, bool) or not isinstance(top_min_points, numbers.Integral) or top_min_points < 1:
        raise ValueError(f"top_min_points must be an integer >= 1, got {top_min_points!r}")
    return float(top_min_z), int(top_min_points)


def configured_top(cfg) -> Optional[tuple[float, int]]:
    """The standing check a ShadowConfig sets: ``(success_top_min_height_m, success_top_min_points)``, or None
    when ``success_top_min_height_m`` is 0 (off)."""
    if not cfg.success_top_min_height_m:
        return None
    return float(cfg.success_top_min_height_m), int(cfg.success_top_min_points)


CONFIGURED = "configured"  # make_predicate's default ``top``: the ShadowConfig's standing check


def make_predicate(cfg, T_base_cam: np.ndarray, region=None, imagined: bool = False, top=CONFIGURED):
    """The predicate configured by a ShadowConfig (None for success_predicate 'none'); ``region`` = (box_min,
    box_max) replaces the configured box (an episode's own goal, from its start event). ``imagined``: the one for
    the world model's output, whose point threshold is ``imagined_min_points`` when that is set. ``top``: the
    standing check, ``(top_min_z, top_min_points)`` or None (off) for an episode that sets its own
    (``success_top`` in its start event); by default the configured one (``configured_top``). The real side always
    gets it; the imagined side only with ``imagined_standing_check`` (the models flatten standing objects)."""
    if cfg.success_predicate == "none":
        return None
    lo, hi = region if region is not None else (cfg.success_region_min, cfg.success_region_max)
    points = cfg.imagined_min_points if imagined and cfg.imagined_min_points else cfg.success_min_points
    if imagined and not cfg.imagined_standing_check:
        top = None
    tz, tn = (configured_top(cfg) if isinstance(top, str) and top == CONFIGURED else top) or (None, None)
    return RegionPredicate(T_base_cam, lo, hi, points, cfg.success_window_frames, cfg.robot_margin_px,
                           top_min_z=tz, top_min_points=tn)

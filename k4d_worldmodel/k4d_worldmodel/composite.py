# Copyright 2026 k4d developers. Apache-2.0.
"""Static-scene compositing of an imagined rollout onto the measured first frame.

A small world model reproduces the parts of the scene that do not move worse than the camera already shows them:
its VAE blurs the first frame and its normalised geometry is coarse. What must come from the model is what the
robot changes: the robot itself, what it carries or pushes, and what it uncovers. Compositing keeps the model's
output where that can happen and the measured first frame everywhere else:

* the *active* pixels of frame t are those the robot covers at frame 0 or at frame t (the kinematic robot masks,
  known before imagining), grown by ``margin_px`` pixels for what the gripper holds or touches; with
  ``region="swept"``, those it has covered at any frame up to t: the world changes only where the robot has
  been, so what it picked up from a place, or put down there, stays the model's to show after it has left;
* active pixels keep the model's colour and geometry, except that pixels the robot covers at frame t take the
  kinematic robot pointmap (exact by construction);
* every other pixel takes the first frame's colour and measured geometry;
* optionally (``flying_rel``; the engine's default), the model's points that sit on a depth ramp become NaN
  (``flying_points``). A small model blurs depth edges: behind the arm the camera sees the floor far below the
  table, and the uncovered pixels come out between the two, on neither surface. Those few points carried most of
  the composite's Chamfer L2; a depth camera's own filter drops such points the same way.

This is a prior, not a measurement: a change far from the robot (an object that rolls away, a person walking in)
is hidden. ``k4d eval`` reports the composited rollout as its own method (``k4d_static``) beside the raw model,
and the engine applies it only when asked (``WorldModelConfig.compose_static``).
"""
from __future__ import annotations

import numpy as np


REGIONS = ("current", "swept")
FLYING_MODES = ("between", "either")


def flying_points(xyz: np.ndarray, rel: float, mode: str = "between", where: np.ndarray | None = None) -> np.ndarray:
    """`(T, H, W)` bool: points of `(T, H, W, 3)` pointmaps that sit on a depth ramp, the "flying pixels" a
    blurred depth edge leaves between a near surface and a far one. With ``r`` a point's range and ``lo`` /
    ``hi`` the nearest and the farthest range among its 3 x 3 neighbours (same frame, NaN ignored):

    * ``mode="between"``: ``r - lo > rel * r`` and ``hi - r > rel * r``: the point lies in front of one
      neighbour and behind another, each by more than ``rel`` of its range. The two sides of a sharp edge are
      kept (each is the nearest or the farthest of its own window); a ramp of any width loses its inner pixels.
    * ``mode="either"``: either inequality: every pixel next to a jump, both sides of a true edge included.

    ``where``: `(T, H, W)` bool, the only pixels that may be flagged (e.g. those a model produced; measured and
    kinematic points around them still count as neighbours). Missing points are never flagged."""
    xyz = np.asarray(xyz)
    if xyz.ndim != 4 or xyz.shape[-1] != 3:
        raise ValueError(f"xyz must have shape (T, H, W, 3), got {xyz.shape}")
    if isinstance(rel, bool) or not isinstance(rel, (int, float, np.floating)) or not 0 < float(rel) < 1:
        raise ValueError(f"rel must be a fraction of the range in (0, 1), got {rel!r}")
    if mode not in FLYING_MODES:
        raise ValueError(f"mode must be one of {FLYING_MODES}, got {mode!r}")
    from scipy import ndimage

    r = np.linalg.norm(xyz.astype(np.float64, copy=False), axis=-1)
    valid = np.isfinite(r)
    window = (1, 3, 3)  # within each frame
    hi = ndimage.maximum_filter(np.where(valid, r, -np.inf), size=window, mode="nearest")
    lo = ndimage.minimum_filter(np.where(valid, r, np.inf), size=window, mode="nearest")
    with np.errstate(invalid="ignore"):
        behind, before = r - lo > rel * r, hi - r > rel * r
    flagged = valid & ((behind & before) if mode == "between" else (behind | before))
    if where is not None:
        where = np.asarray(where, dtype=bool)
        if where.shape != flagged.shape:
            raise ValueError(f"where must have shape {flagged.shape}, got {where.shape}")
        flagged &= where
    return flagged


def active_pixels(robot_mask: np.ndarray, margin_px: int = 2, region: str = "current") -> np.ndarray:
    """`(T, H, W)` bool: pixels the robot covers at frame 0 or at frame t (``region="current"``), or at any frame
    up to t (``"swept"``), grown by ``margin_px`` (square)."""
    robot_mask = np.asarray(robot_mask, dtype=bool)
    if robot_mask.ndim != 3:
        raise ValueError(f"robot_mask must have shape (T, H, W), got {robot_mask.shape}")
    if isinstance(margin_px, bool) or not isinstance(margin_px, (int, np.integer)) or margin_px < 0:
        raise ValueError(f"margin_px must be an integer >= 0, got {margin_px!r}")
    if region not in REGIONS:
        raise ValueError(f"region must be one of {REGIONS}, got {region!r}")
    active = np.logical_or.accumulate(robot_mask, axis=0) if region == "swept" else robot_mask | robot_mask[:1]
    if margin_px:
        from scipy import ndimage

        structure = np.zeros((1, 2 * margin_px + 1, 2 * margin_px + 1), dtype=bool)
        structure[0] = True  # grow within each frame, never across time
        active = ndimage.binary_dilation(active, structure=structure)
    return active


def model_pixels(robot_mask: np.ndarray, margin_px: int = 2, region: str = "current") -> np.ndarray:
    """`(T, H, W)` bool: the pixels whose geometry ``composite_static`` takes from the model, its active pixels
    (``active_pixels``) off the robot of frame t (those take the kinematic pointmap)."""
    return active_pixels(robot_mask, margin_px, region) & ~np.asarray(robot_mask, dtype=bool)


def composite_static(
    rgb: np.ndarray, first_rgb: np.ndarray, robot_mask: np.ndarray, xyz: np.ndarray | None = None,
    first_xyz: np.ndarray | None = None, robot_xyz: np.ndarray | None = None, margin_px: int = 2,
    region: str = "current", flying_rel: float | None = None, flying_mode: str = "between",
) -> tuple[np.ndarray, np.ndarray | None]:
    """Composite an imagined rollout onto the measured first frame (see module doc).

    Args:
        rgb: `(T, H, W, 3)` uint8 imagined frames.
        first_rgb: `(H, W, 3)` uint8 measured first frame (the model's conditioning image).
        robot_mask: `(T, H, W)` bool kinematic robot pixels of the condition.
        xyz: `(T, H, W, 3)` metric imagined pointmaps (optional; None composites the colour only).
        first_xyz: `(H, W, 3)` measured metric pointmap of the first frame, NaN where unknown; where it is
            unknown the model's geometry is kept.
        robot_xyz: `(T, H, W, 3)` kinematic robot pointmaps, metres, NaN off-robot (optional).
        margin_px: growth of the robot masks.
        region: "current" (the robot at frame 0 or t) or "swept" (the robot at any frame up to t).
        flying_rel, flying_mode: when ``flying_rel`` is given, the model's points that sit on a depth ramp
            (``flying_points``, among ``model_pixels``; measured and kinematic neighbours count) become NaN.

    Returns:
        ``(rgb, xyz)``: new arrays (xyz None when not given); frame 0 is the measured frame where measured.
    """
    rgb = np.asarray(rgb)
    first_rgb = np.asarray(first_rgb)
    if rgb.ndim != 4 or first_rgb.shape != rgb.shape[1:]:
        raise ValueError(f"first_rgb must be one frame {rgb.shape[1:]} of rgb {rgb.shape}, got {first_rgb.shape}")
    if np.shape(robot_mask) != rgb.shape[:3]:
        raise ValueError(f"robot_mask must have shape {rgb.shape[:3]}, got {np.shape(robot_mask)}")
    active = active_pixels(robot_mask, margin_px, region)
    out_rgb = np.where(active[..., None], rgb, first_rgb[None]).astype(rgb.dtype)
    if xyz is None:
        return out_rgb, None
    xyz = np.asarray(xyz)
    if xyz.shape != rgb.shape:
        raise ValueError(f"xyz must have shape {rgb.shape}, got {xyz.shape}")
    out_xyz = xyz.copy()
    if first_xyz is not None:
        first_xyz = np.asarray(first_xyz)
        if first_xyz.shape != xyz.shape[1:]:
            raise ValueError(f"first_xyz must have shape {xyz.shape[1:]}, got {first_xyz.shape}")
        measured = np.isfinite(first_xyz).all(-1)
        keep_first = ~active & measured[None]
        out_xyz[keep_first] = np.broadcast_to(first_xyz[None], xyz.shape)[keep_first]
    if robot_xyz is not None:
        robot_xyz = np.asarray(robot_xyz)
        if robot_xyz.shape != xyz.shape:
            raise ValueError(f"robot_xyz must have shape {xyz.shape}, got {robot_xyz.shape}")
        on_robot = np.isfinite(robot_xyz).all(-1) & np.asarray(robot_mask, dtype=bool)
        out_xyz[on_robot] = robot_xyz[on_robot]
    if flying_rel is not None:  # among the pixels whose geometry is still the model's
        from_model = active & ~on_robot if robot_xyz is not None else active
        out_xyz[flying_points(out_xyz, flying_rel, flying_mode, where=from_model)] = np.nan
    return out_rgb, out_xyz.astype(xyz.dtype, copy=False)

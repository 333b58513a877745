"""Draw the robot pointmap (mask + edges) and a plan ghost onto a camera image, and colour depth maps
(``depth_colormap``, used by the world model's videos); ROS-free, numpy only.

    from k4d_kinematics.overlay import overlay_frame, project_mask
    out = overlay_frame(rgb, robot_mask, plan_masks, caption="t = 1.2 s")   # (H, W, 3) uint8, a new image
    mask = project_mask(xyz_cam, camera)                                     # points -> (H, W) bool

Inputs are pixel-aligned with the image (row v, column u; the k4d pointmaps are rendered through the
camera that took the image, so a pointmap's ``link >= 0`` is directly its mask). ``project_mask``
rasterises optical-frame points (metres) through a ``PinholeCamera`` when they are not (e.g. a cloud of
another size). Used for the ``k4d sim`` demo video and for a live overlay topic.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

ROBOT_TINT = (40, 220, 90)  # green: the live robot pointmap
ROBOT_EDGE = (255, 255, 255)
GHOST_START = (60, 140, 255)  # blue -> orange over the plan, like the RViz ghost
GHOST_END = (255, 150, 30)

# Viridis anchors (uint8 RGB) for the depth colormap, near (0) to far (1).
_VIRIDIS = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], dtype=np.float32)


def depth_colormap(depth: np.ndarray, lo: float | None = None, hi: float | None = None) -> np.ndarray:
    """`(..., )` depth -> `(..., 3)` uint8 viridis colours; non-finite -> black. Range: 2nd-98th percentile."""
    finite = np.isfinite(depth)
    if lo is None or hi is None:
        vals = depth[finite]
        lo, hi = (np.percentile(vals, 2), np.percentile(vals, 98)) if vals.size else (0.0, 1.0)
    x = np.clip((np.nan_to_num(depth) - lo) / max(hi - lo, 1e-9), 0, 1) * (len(_VIRIDIS) - 1)
    i = np.minimum(x.astype(int), len(_VIRIDIS) - 2)
    f = (x - i)[..., None]
    out = _VIRIDIS[i] * (1 - f) + _VIRIDIS[i + 1] * f
    out[~finite] = 0
    return out.round().astype(np.uint8)


def mask_edges(mask: np.ndarray, width: int = 1) -> np.ndarray:
    """(H, W) bool boundary pixels of ``mask`` (H, W) bool: inside pixels with an outside 4-neighbour,
    thickened inwards to ``width`` pixels."""
    m = np.asarray(mask, bool)
    if m.ndim != 2:
        raise ValueError(f"mask must be (H, W), got shape {m.shape}")
    inner = m.copy()
    for _ in range(max(int(width), 1)):
        e = inner.copy()
        e[1:, :] &= inner[:-1, :]
        e[:-1, :] &= inner[1:, :]
        e[:, 1:] &= inner[:, :-1]
        e[:, :-1] &= inner[:, 1:]
        e[0, :] = e[-1, :] = False
        e[:, 0] = e[:, -1] = False
        inner = e
    return m & ~inner


def tint(rgb: np.ndarray, mask: np.ndarray, color: Sequence[int], alpha: float) -> np.ndarray:
    """Blend ``color`` into ``rgb`` (H, W, 3) uint8 where ``mask``; in place, returns rgb."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    m = np.asarray(mask, bool)
    if m.any():
        px = rgb[m].astype(np.float32)
        rgb[m] = (px * (1.0 - alpha) + np.asarray(color, np.float32) * alpha + 0.5).astype(np.uint8)
    return rgb


def project_mask(xyz_cam: np.ndarray, camera, dilate: int = 0) -> np.ndarray:
    """Optical-frame points (..., 3) metres (NaN skipped, z <= 0 skipped) -> (H, W) bool mask of the pixels
    they project to through ``camera`` (k4d_kinematics PinholeCamera; pixel centres at integers)."""
    p = np.asarray(xyz_cam, np.float64).reshape(-1, 3)
    p = p[np.all(np.isfinite(p), axis=1) & (p[:, 2] > 1e-6)]
    out = np.zeros((camera.height, camera.width), bool)
    if len(p):
        u = np.rint(camera.fx * p[:, 0] / p[:, 2] + camera.cx).astype(np.int64)
        v = np.rint(camera.fy * p[:, 1] / p[:, 2] + camera.cy).astype(np.int64)
        ok = (u >= 0) & (u < camera.width) & (v >= 0) & (v < camera.height)
        out[v[ok], u[ok]] = True
    for _ in range(int(dilate)):
        d = out.copy()
        d[1:, :] |= out[:-1, :]
        d[:-1, :] |= out[1:, :]
        d[:, 1:] |= out[:, :-1]
        d[:, :-1] |= out[:, 1:]
        out = d
    return out


def ghost_colors(count: int) -> list[tuple[int, int, int]]:
    """``count`` colours from GHOST_START (first plan frame) to GHOST_END (last)."""
    a, b = np.asarray(GHOST_START, np.float64), np.asarray(GHOST_END, np.float64)
    return [tuple(int(round(x)) for x in a + (b - a) * (k / max(count - 1, 1))) for k in range(count)]


def overlay_frame(rgb: np.ndarray, robot_mask: Optional[np.ndarray] = None, plan_masks: Optional[np.ndarray] = None,
                  caption: str = "", robot_alpha: float = 0.35, ghost_alpha: float = 0.18) -> np.ndarray:
    """A copy of ``rgb`` (H, W, 3) uint8 with the overlays.

    robot_mask: (H, W) bool, the live robot pointmap's pixels: green tint + white outline.
    plan_masks: (T, H, W) bool, robot pixels of T poses along a plan: light tint of their union and one
        outline per pose, blue (start) -> orange (end).
    caption: text drawn at the top-left (needs Pillow; skipped without it).
    Raises ValueError when a mask is not pixel-aligned with the image.
    """
    img = np.array(rgb, dtype=np.uint8, copy=True)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"rgb must be (H, W, 3) uint8, got shape {img.shape}")
    H, W = img.shape[:2]
    if plan_masks is not None:
        pm = np.asarray(plan_masks, bool)
        if pm.ndim == 2:
            pm = pm[None]
        if pm.shape[1:] != (H, W):
            raise ValueError(f"plan_masks shape {pm.shape} does not match the image {(H, W)}")
        if len(pm):
            tint(img, pm.any(axis=0), GHOST_END, ghost_alpha)
            for m, c in zip(pm, ghost_colors(len(pm))):
                img[mask_edges(m)] = c
    if robot_mask is not None:
        rm = np.asarray(robot_mask, bool)
        if rm.shape != (H, W):
            raise ValueError(f"robot_mask shape {rm.shape} does not match the image {(H, W)}")
        tint(img, rm, ROBOT_TINT, robot_alpha)
        img[mask_edges(rm)] = ROBOT_EDGE
    if caption:
        try:
            from PIL import Image, ImageDraw
        except ImportError:
            return img
        pil = Image.fromarray(img)
        draw = ImageDraw.Draw(pil)
        draw.rectangle([0, 0, min(W, 8 + 7 * len(caption)), 14], fill=(0, 0, 0))
        draw.text((4, 2), caption, fill=(255, 255, 255))
        img = np.asarray(pil).copy()
    return img

"""Opt-in pointmap perturbations for robustness studies (Kinema4D Table 4).

    rng = np.random.default_rng(0)
    xyz2, link2 = perturb(xyz, link, PerturbConfig(drop_fraction=0.05, max_shift_px=5), rng)

All functions take xyz (..., H, W, 3) float32 (NaN background) and link (..., H, W) int16 (-1 background),
return perturbed copies, and never modify their inputs. Leading dimensions (e.g. T frames) share one
sampled shift / rotation, so a sequence moves rigidly; dropout and noise are drawn per pixel.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class PerturbConfig:
    """Which perturbations to apply (all off by default). Paper values: drop_fraction 0.05,
    max_shift_px 5, max_rotation_deg 5.

    drop_fraction: fraction of robot pixels set to background. noise_sigma_m: Gaussian XYZ noise (m).
    max_shift_px: image translation drawn uniformly in [-max, max] px (integer). max_rotation_deg: in-plane
    rotation about the image centre drawn uniformly in [-max, max] degrees.
    """

    drop_fraction: float = 0.0
    noise_sigma_m: float = 0.0
    max_shift_px: int = 0
    max_rotation_deg: float = 0.0

    def __post_init__(self):
        if not 0.0 <= self.drop_fraction <= 1.0:
            raise ValueError(f"drop_fraction must be in [0, 1], got {self.drop_fraction}")
        for name in ("noise_sigma_m", "max_shift_px", "max_rotation_deg"):
            v = getattr(self, name)
            if not (np.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be >= 0, got {v}")


def _check(xyz, link):
    xyz, link = np.asarray(xyz), np.asarray(link)
    if xyz.shape[:-1] != link.shape or xyz.shape[-1] != 3:
        raise ValueError(f"xyz (..., H, W, 3) and link (..., H, W) shapes disagree: {xyz.shape} vs {link.shape}")
    return xyz, link


def drop_pixels(xyz, link, fraction: float, rng: np.random.Generator):
    """Set a random ``fraction`` of all robot pixels (drawn without replacement) to background."""
    xyz, link = _check(xyz, link)
    xyz, link = xyz.copy(), link.copy()
    robot = np.flatnonzero(link >= 0)
    drop = rng.choice(robot, size=int(round(fraction * robot.size)), replace=False) if robot.size else robot
    link.reshape(-1)[drop] = -1
    xyz.reshape(-1, 3)[drop] = np.nan
    return xyz, link


def add_noise(xyz, sigma_m: float, rng: np.random.Generator):
    """Add N(0, sigma_m^2) to each coordinate of robot pixels (background stays NaN)."""
    xyz = np.asarray(xyz)
    return (xyz + rng.normal(0.0, sigma_m, xyz.shape)).astype(xyz.dtype)


def warp_image(xyz, link, dx: float, dy: float, angle_rad: float):
    """Move pixel content by a rotation ``angle_rad`` about the image centre then a shift (dx, dy) px
    (nearest-neighbour, so labels stay exact; XYZ values are unchanged, exposed pixels are background)."""
    xyz, link = _check(xyz, link)
    H, W = link.shape[-2:]
    r, c = np.mgrid[0:H, 0:W].astype(np.float64)
    cy, cx = (H - 1) / 2.0, (W - 1) / 2.0
    # inverse map: destination pixel -> source pixel
    u, v = c - dx - cx, r - dy - cy
    cs, sn = np.cos(angle_rad), np.sin(angle_rad)
    src_c = np.rint(cs * u + sn * v + cx).astype(np.int64)
    src_r = np.rint(-sn * u + cs * v + cy).astype(np.int64)
    valid = (src_c >= 0) & (src_c < W) & (src_r >= 0) & (src_r < H)
    src_c, src_r = np.clip(src_c, 0, W - 1), np.clip(src_r, 0, H - 1)
    out_xyz = np.where(valid[..., None], xyz[..., src_r, src_c, :], np.nan).astype(xyz.dtype)
    out_link = np.where(valid, link[..., src_r, src_c], -1).astype(link.dtype)
    return out_xyz, out_link


def perturb(xyz, link, cfg: PerturbConfig, rng: np.random.Generator):
    """Apply the enabled perturbations in the order: shift/rotation, dropout, noise. Returns (xyz, link)."""
    xyz, link = _check(xyz, link)
    if cfg.max_shift_px or cfg.max_rotation_deg:
        dx, dy = rng.integers(-cfg.max_shift_px, cfg.max_shift_px + 1, size=2)
        ang = np.deg2rad(rng.uniform(-cfg.max_rotation_deg, cfg.max_rotation_deg))
        xyz, link = warp_image(xyz, link, float(dx), float(dy), float(ang))
    if cfg.drop_fraction:
        xyz, link = drop_pixels(xyz, link, cfg.drop_fraction, rng)
    if cfg.noise_sigma_m:
        xyz = add_noise(xyz, cfg.noise_sigma_m, rng)
    return xyz.copy(), link.copy()

"""Weight-free metrics of the shadow evaluation (numpy/scipy only).

Image metrics (``psnr``, ``ssim``) and policy-ranking metrics (``pearson_r``, ``mmrv``) come from
``k4d_worldmodel.metrics`` when that module provides them (one implementation for the project); the private
fallbacks below are used otherwise and follow the same definitions:

- PSNR in dB on uint8 (peak 255), over all pixels and channels; +inf for identical images.
- SSIM of Wang et al. 2004 with a Gaussian window (sigma 1.5, K1 0.01, K2 0.03, peak 255), on each channel,
  averaged (what scikit-image's ``structural_similarity(gaussian_weights=True, channel_axis=-1)`` computes).
- Pearson r between real and imagined success rates of several policies (NaN for < 2 policies or no spread).
- MMRV (SimplerEnv): mean over policies i of max_j |R_i - R_j| * 1[(S_i < S_j) != (R_i < R_j)], R real,
  S imagined success rates. 0 = the imagined ranking agrees with reality; lower is better.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np

try:  # the project's metrics module, once it is there
    from k4d_worldmodel import metrics as _wm_metrics  # type: ignore
except Exception:  # noqa: BLE001 - missing module or a heavy import failing: use the fallbacks
    _wm_metrics = None


def _use_wm(name: str):
    fn = getattr(_wm_metrics, name, None) if _wm_metrics is not None else None
    return fn if callable(fn) else None


def metrics_source() -> str:
    """'k4d_worldmodel.metrics' or 'k4d_bringup.shadow.metrics (fallback)' (shown in reports)."""
    return "k4d_worldmodel.metrics" if _use_wm("psnr") and _use_wm("ssim") else "k4d_bringup.shadow.metrics (fallback)"


# ---------------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------------


def _check_pair(a, b, name: str) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"{name}: images must have the same shape, got {a.shape} and {b.shape}")
    return a.astype(np.float64), b.astype(np.float64)


def _psnr(a, b) -> float:
    a, b = _check_pair(a, b, "psnr")
    mse = float(np.mean((a - b) ** 2))
    return float("inf") if mse == 0 else 10.0 * math.log10(255.0 ** 2 / mse)


def _ssim(a, b) -> float:
    from scipy.ndimage import gaussian_filter

    a, b = _check_pair(a, b, "ssim")
    if a.ndim == 2:
        a, b = a[..., None], b[..., None]
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    vals = []
    for c in range(a.shape[-1]):
        x, y = a[..., c], b[..., c]
        f = lambda z: gaussian_filter(z, 1.5, truncate=3.5)  # noqa: E731 - 11x11 window like skimage
        mx, my = f(x), f(y)
        sxx, syy, sxy = f(x * x) - mx * mx, f(y * y) - my * my, f(x * y) - mx * my
        s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
        pad = 3 if min(x.shape) > 12 else 0  # skip the border where the window is cut (skimage crops too)
        vals.append(float(s[pad:s.shape[0] - pad, pad:s.shape[1] - pad].mean()))
    return float(np.mean(vals))


def psnr(a, b) -> float:
    """PSNR (dB) of two uint8 images of equal shape."""
    fn = _use_wm("psnr")
    if fn is not None:
        try:
            return float(fn(np.asarray(a), np.asarray(b)))
        except TypeError:
            pass
    return _psnr(a, b)


def ssim(a, b) -> float:
    """SSIM of two uint8 images (H, W) or (H, W, C) of equal shape."""
    fn = _use_wm("ssim")
    if fn is not None:
        try:
            return float(fn(np.asarray(a), np.asarray(b)))
        except TypeError:
            pass
    return _ssim(a, b)


def resize_nearest(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize of (H, W[, C]) to (height, width) (pixel centres at integers)."""
    img = np.asarray(img)
    h, w = img.shape[:2]
    if (h, w) == (height, width):
        return img
    v = np.clip(np.floor((np.arange(height) + 0.5) * h / height), 0, h - 1).astype(int)
    u = np.clip(np.floor((np.arange(width) + 0.5) * w / width), 0, w - 1).astype(int)
    return img[v][:, u]


# ---------------------------------------------------------------------------------------------
# Depth and pointmaps
# ---------------------------------------------------------------------------------------------


def backproject_depth(depth: np.ndarray, camera) -> np.ndarray:
    """(H, W) float depth (m along the optical axis, NaN invalid) -> (H, W, 3) float32 optical-frame XYZ (m).

    ``camera``: k4d_kinematics PinholeCamera of the same size (pixel centres at integer coordinates)."""
    d = np.asarray(depth, np.float64)
    if d.shape != (camera.height, camera.width):
        raise ValueError(f"depth is {d.shape[1]}x{d.shape[0]}, camera is {camera.width}x{camera.height}")
    v, u = np.mgrid[0:camera.height, 0:camera.width]
    x = (u - camera.cx) / camera.fx * d
    y = (v - camera.cy) / camera.fy * d
    return np.stack([x, y, d], axis=-1).astype(np.float32)


def pointmap_error(xyz_a: np.ndarray, xyz_b: np.ndarray, mask: Optional[np.ndarray] = None) -> tuple[float, int]:
    """Mean 3D distance (m) between two (H, W, 3) pointmaps over pixels finite in both (and in ``mask``);
    returns (mean, pixel count); (NaN, 0) when none."""
    a, b = np.asarray(xyz_a, np.float64), np.asarray(xyz_b, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"pointmaps must have the same shape, got {a.shape} and {b.shape}")
    sel = np.isfinite(a).all(-1) & np.isfinite(b).all(-1)
    if mask is not None:
        sel &= np.asarray(mask, bool)
    n = int(sel.sum())
    if n == 0:
        return float("nan"), 0
    return float(np.linalg.norm(a[sel] - b[sel], axis=-1).mean()), n


# ---------------------------------------------------------------------------------------------
# Policy ranking and calibration
# ---------------------------------------------------------------------------------------------


def _pearson_r(real: Sequence[float], imagined: Sequence[float]) -> float:
    x, y = np.asarray(real, np.float64), np.asarray(imagined, np.float64)
    if x.shape != y.shape:
        raise ValueError(f"pearson_r: real and imagined must have the same length, got {x.shape} and {y.shape}")
    if len(x) < 2 or np.std(x) == 0 or np.std(y) == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def _mmrv(real: Sequence[float], imagined: Sequence[float]) -> float:
    r, s = np.asarray(real, np.float64), np.asarray(imagined, np.float64)
    if r.shape != s.shape:
        raise ValueError(f"mmrv: real and imagined must have the same length, got {r.shape} and {s.shape}")
    n = len(r)
    if n == 0:
        return float("nan")
    total = 0.0
    for i in range(n):
        worst = 0.0
        for j in range(n):
            if (s[i] < s[j]) != (r[i] < r[j]):
                worst = max(worst, abs(r[i] - r[j]))
        total += worst
    return total / n


def pearson_r(real: Sequence[float], imagined: Sequence[float]) -> float:
    """Pearson correlation of real vs imagined success rates across policies (NaN for fewer than 2)."""
    fn = _use_wm("pearson_r")
    if len(real) < 2 or len(real) != len(imagined):
        return _pearson_r(real, imagined)
    if fn is not None:
        try:
            return float(fn(real, imagined))
        except TypeError:
            pass
    return _pearson_r(real, imagined)


def mmrv(real: Sequence[float], imagined: Sequence[float]) -> float:
    """Mean maximum rank violation (SimplerEnv) of imagined vs real success rates across policies."""
    fn = _use_wm("mmrv")
    if len(real) < 1 or len(real) != len(imagined):
        return _mmrv(real, imagined)
    if fn is not None:
        try:
            return float(fn(real, imagined))
        except TypeError:
            pass
    return _mmrv(real, imagined)


def calibration(prob: Sequence[float], outcome: Sequence[bool], bins: int = 5) -> dict:
    """Reliability of predicted success probabilities against real outcomes.

    Returns ``{"bins": [{"lo", "hi", "count", "mean_prob", "success_rate"}], "ece", "brier", "count"}``;
    ECE = sum_b (n_b / n) |mean_prob_b - success_rate_b|. NaN entries of ``prob`` are ignored."""
    p, y = np.asarray(prob, np.float64), np.asarray(outcome, np.float64)
    if p.shape != y.shape:
        raise ValueError(f"calibration: prob and outcome must have the same length, got {p.shape} and {y.shape}")
    ok = np.isfinite(p)
    p, y = np.clip(p[ok], 0, 1), y[ok]
    edges = np.linspace(0, 1, bins + 1)
    out_bins, ece = [], 0.0
    for b in range(bins):
        sel = (p >= edges[b]) & ((p < edges[b + 1]) if b < bins - 1 else (p <= edges[b + 1]))
        n = int(sel.sum())
        mp = float(p[sel].mean()) if n else float("nan")
        sr = float(y[sel].mean()) if n else float("nan")
        if n:
            ece += n / len(p) * abs(mp - sr)
        out_bins.append({"lo": float(edges[b]), "hi": float(edges[b + 1]), "count": n, "mean_prob": mp,
                         "success_rate": sr})
    return {"bins": out_bins, "ece": float(ece) if len(p) else float("nan"),
            "brier": float(np.mean((p - y) ** 2)) if len(p) else float("nan"), "count": int(len(p))}

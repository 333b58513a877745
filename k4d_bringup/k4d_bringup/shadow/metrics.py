"""Metrics of the shadow evaluation.

Image metrics (``psnr``, ``ssim``) and policy-ranking metrics (``pearson_r``, ``mmrv``, SimplerEnv's
definitions) are the project's one implementation in ``k4d_worldmodel.metrics``; this module adds what only
the shadow evaluation needs: resizing, depth back-projection, pointmap error and the calibration of imagined
success probabilities. Across fewer than two policies Pearson r is reported as NaN instead of raising.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
from k4d_kinematics.camera import resize_nearest  # noqa: F401  (re-exported for the session)
from k4d_worldmodel.metrics import mmrv as _mmrv
from k4d_worldmodel.metrics import pearson_r as _pearson_r
from k4d_worldmodel.metrics import psnr, ssim  # noqa: F401  (re-exported for the session)


def metrics_source() -> str:
    """Where the metrics come from (shown in reports)."""
    return "k4d_worldmodel.metrics"


# ---------------------------------------------------------------------------------------------
# Depth and pointmaps
# ---------------------------------------------------------------------------------------------


def backproject_depth(depth: np.ndarray, camera) -> np.ndarray:
    """(H, W) depth (m, NaN invalid) -> (H, W, 3) float32 optical-frame XYZ through ``camera`` (PinholeCamera)."""
    return camera.backproject(depth)


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


def pearson_r(real: Sequence[float], imagined: Sequence[float]) -> float:
    """Pearson correlation of real vs imagined success rates across policies (NaN for fewer than 2; rates of
    different lengths are an error)."""
    _same_length(real, imagined)
    if len(real) < 2:
        return float("nan")
    return _pearson_r(real, imagined)


def mmrv(real: Sequence[float], imagined: Sequence[float]) -> float:
    """SimplerEnv's mean maximum rank violation across policies (NaN for none; rates of different lengths are an
    error)."""
    _same_length(real, imagined)
    if len(real) == 0:
        return float("nan")
    return _mmrv(real, imagined)


def _same_length(real: Sequence[float], imagined: Sequence[float]) -> None:
    if len(real) != len(imagined):
        raise ValueError(f"real and imagined rates are per policy and must pair up, got {len(real)} and "
                         f"{len(imagined)}")


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

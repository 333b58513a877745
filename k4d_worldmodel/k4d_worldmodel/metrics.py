# Copyright 2026 k4d developers. Apache-2.0.
"""Weight-free quality metrics of imagined 4D rollouts and of world-model policy evaluation (numpy/scipy only).

    from k4d_worldmodel.metrics import psnr, ssim, chamfer, fscore, pearson_r, mmrv
    psnr(pred_u8, gt_u8)                       # dB, images/videos (..., H, W, 3)
    ssim(pred_u8, gt_u8)                       # mean SSIM, Gaussian window 11 / sigma 1.5 (Wang et al. 2004)
    chamfer(pred_xyz, gt_xyz)                  # {"l1": m, "l2": m^2} between two (N, 3) point sets
    fscore(pred_xyz, gt_xyz, tau=0.01)         # F-score at 1 cm
    pearson_r(real_rates, imagined_rates)      # across policies
    mmrv(real_rates, imagined_rates)           # SimplerEnv mean maximum rank violation (lower is better)

Why no open3d: its wheel is hundreds of MB (it cannot travel to the GPU machine, whose carry limit is 64 MiB per
call) and Chamfer/F-score only need nearest-neighbour distances, which ``scipy.spatial.cKDTree`` gives exactly.
Metrics that need pretrained networks (LPIPS, FID, FVD) are not here: their weights cannot be downloaded.

Conventions (stated because papers differ):

* PSNR: ``10 log10(data_range^2 / MSE)`` over all pixels and channels of one image; a video's PSNR is the mean of
  its per-frame PSNRs (``psnr_video``). Identical images give ``inf``.
* SSIM: per channel on a Gaussian-weighted window (sigma 1.5, 11 x 11, "valid" region only), K1 = 0.01,
  K2 = 0.03, ``data_range`` 255 for uint8 else 1, averaged over the valid pixels and the channels (as
  scikit-image's ``structural_similarity(..., gaussian_weights=True, use_sample_covariance=False)``).
* Chamfer: with ``d(a, B)`` the Euclidean distance from a to its nearest neighbour in B,
  ``l1 = (mean_a d(a, B) + mean_b d(b, A)) / 2`` (metres) and ``l2 = (mean_a d^2 + mean_b d^2) / 2`` (m^2).
* F-score at tau: precision = fraction of predicted points within tau of the ground truth, recall = fraction
  of ground-truth points within tau of the prediction, ``F = 2 P R / (P + R)`` (0 when both are 0).
* MMRV (SimplerEnv, ``simpler_env/utils/metrics.py``): for each policy i, the largest real success-rate gap
  ``|real_i - real_j|`` over the policies j whose imagined order disagrees with the real order,
  ``(imag_i > imag_j) != (real_i > real_j)``; averaged over policies. 0 means the ranking is preserved.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = [
    "mse", "psnr", "psnr_video", "ssim", "ssim_video", "chamfer", "fscore", "nn_distances", "centroid_error",
    "pearson_r", "mmrv", "success_agreement", "success_rates",
]


# ------------------------------------------------------------------------------------------------- images
def _as_float(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, dtype=np.float64)


def _data_range(a: np.ndarray, data_range: float | None) -> float:
    if data_range is not None:
        return float(data_range)
    return 255.0 if np.asarray(a).dtype == np.uint8 else 1.0


def mse(pred: np.ndarray, gt: np.ndarray) -> float:
    """Mean squared error over all elements (float64)."""
    pred, gt = np.asarray(pred), np.asarray(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"pred and gt must have the same shape, got {pred.shape} and {gt.shape}")
    return float(np.mean((_as_float(pred) - _as_float(gt)) ** 2))


def psnr(pred: np.ndarray, gt: np.ndarray, data_range: float | None = None) -> float:
    """PSNR in dB of one image (any shape; all elements pooled). ``data_range``: 255 for uint8 else 1 by default."""
    m = mse(pred, gt)
    r = _data_range(gt, data_range)
    return float("inf") if m == 0 else float(10.0 * np.log10(r * r / m))


def psnr_video(pred: np.ndarray, gt: np.ndarray, data_range: float | None = None) -> float:
    """Mean over frames of the per-frame PSNR of `(T, H, W, C)` videos (infinite frames are capped at 100 dB)."""
    pred, gt = np.asarray(pred), np.asarray(gt)
    if pred.shape != gt.shape or pred.ndim != 4:
        raise ValueError(f"pred and gt must both be (T, H, W, C) of equal shape, got {pred.shape} and {gt.shape}")
    return float(np.mean([min(psnr(p, g, data_range), 100.0) for p, g in zip(pred, gt)]))


def _gaussian_kernel(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2
    k = np.exp(-(x**2) / (2 * sigma**2))
    return k / k.sum()


def _filter_valid(img: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Separable 'valid' correlation of `(H, W)` with the 1-D kernel ``k`` along both axes."""
    from scipy.signal import correlate

    return correlate(correlate(img, k[:, None], mode="valid"), k[None, :], mode="valid")


def ssim(pred: np.ndarray, gt: np.ndarray, data_range: float | None = None, win_size: int = 11,
         sigma: float = 1.5, k1: float = 0.01, k2: float = 0.03) -> float:
    """Mean SSIM of one image `(H, W)` or `(H, W, C)` (channels averaged). Images smaller than the window use a
    window of the image's smallest side (odd)."""
    pred, gt = np.asarray(pred), np.asarray(gt)
    if pred.shape != gt.shape or pred.ndim not in (2, 3):
        raise ValueError(f"pred and gt must both be (H, W) or (H, W, C) of equal shape, got {pred.shape} and "
                         f"{gt.shape}")
    r = _data_range(gt, data_range)
    if pred.ndim == 2:
        pred, gt = pred[..., None], gt[..., None]
    win = min(win_size, pred.shape[0], pred.shape[1])
    win -= 1 - win % 2
    k = _gaussian_kernel(win, sigma)
    c1, c2 = (k1 * r) ** 2, (k2 * r) ** 2
    vals = []
    for c in range(pred.shape[-1]):
        x, y = _as_float(pred[..., c]), _as_float(gt[..., c])
        mx, my = _filter_valid(x, k), _filter_valid(y, k)
        sxx = _filter_valid(x * x, k) - mx * mx
        syy = _filter_valid(y * y, k) - my * my
        sxy = _filter_valid(x * y, k) - mx * my
        s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
        vals.append(s.mean())
    return float(np.mean(vals))


def ssim_video(pred: np.ndarray, gt: np.ndarray, data_range: float | None = None) -> float:
    """Mean over frames of the per-frame SSIM of `(T, H, W, C)` videos."""
    pred, gt = np.asarray(pred), np.asarray(gt)
    if pred.shape != gt.shape or pred.ndim != 4:
        raise ValueError(f"pred and gt must both be (T, H, W, C) of equal shape, got {pred.shape} and {gt.shape}")
    return float(np.mean([ssim(p, g, data_range) for p, g in zip(pred, gt)]))


# ------------------------------------------------------------------------------------------------- points
def _points(a: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64).reshape(-1, 3) if np.asarray(a).size else np.zeros((0, 3))
    return a[np.isfinite(a).all(axis=1)]


def nn_distances(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Euclidean distance from every finite point of ``src`` `(N, 3)` to its nearest finite point of ``dst``."""
    from scipy.spatial import cKDTree

    src, dst = _points(src, "src"), _points(dst, "dst")
    if len(src) == 0 or len(dst) == 0:
        raise ValueError(f"need finite points in both sets, got {len(src)} and {len(dst)}")
    return cKDTree(dst).query(src, k=1)[0]


def chamfer(pred: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    """Chamfer distances between two point sets `(N, 3)`, `(M, 3)` (metres; NaN rows dropped).

    Returns ``{"l1": (mean d(p, G) + mean d(g, P)) / 2  [m], "l2": (mean d^2 + mean d^2) / 2  [m^2]}``.
    """
    d_pg, d_gp = nn_distances(pred, gt), nn_distances(gt, pred)
    return {"l1": float((d_pg.mean() + d_gp.mean()) / 2), "l2": float(((d_pg**2).mean() + (d_gp**2).mean()) / 2)}


def fscore(pred: np.ndarray, gt: np.ndarray, tau: float = 0.01) -> dict[str, float]:
    """F-score at distance ``tau`` (metres): ``{"f": F, "precision": P, "recall": R}`` (see module docstring)."""
    if not tau > 0:
        raise ValueError(f"tau must be > 0 (metres), got {tau!r}")
    p = float((nn_distances(pred, gt) < tau).mean())
    r = float((nn_distances(gt, pred) < tau).mean())
    f = 0.0 if p + r == 0 else 2 * p * r / (p + r)
    return {"f": f, "precision": p, "recall": r}


def centroid_error(pred: np.ndarray, gt: np.ndarray) -> float:
    """Distance (metres) between the centroids of two point sets (finite rows only); NaN if either is empty."""
    pred, gt = _points(pred, "pred"), _points(gt, "gt")
    if len(pred) == 0 or len(gt) == 0:
        return float("nan")
    return float(np.linalg.norm(pred.mean(0) - gt.mean(0)))


# ----------------------------------------------------------------------------------------- policy success
def _rates(x: Sequence[float], name: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} must be finite numbers, got {list(a)}")
    return a


def pearson_r(real: Sequence[float], imagined: Sequence[float]) -> float:
    """Pearson correlation between real and imagined success rates across policies (NaN if either is constant)."""
    x, y = _rates(real, "real"), _rates(imagined, "imagined")
    if x.shape != y.shape or len(x) < 2:
        raise ValueError(f"real and imagined need the same length >= 2, got {len(x)} and {len(y)}")
    xc, yc = x - x.mean(), y - y.mean()
    den = np.sqrt((xc * xc).sum() * (yc * yc).sum())
    return float("nan") if den == 0 else float((xc * yc).sum() / den)


def mmrv(real: Sequence[float], imagined: Sequence[float]) -> float:
    """Mean maximum rank violation (SimplerEnv): see module docstring. Lower is better, 0 = same ranking."""
    x, y = _rates(imagined, "imagined"), _rates(real, "real")
    if x.shape != y.shape or len(x) < 1:
        raise ValueError(f"real and imagined need the same length >= 1, got {len(y)} and {len(x)}")
    worst = []
    for i in range(len(x)):
        v = 0.0
        for j in range(len(x)):
            if (x[i] > x[j]) != (y[i] > y[j]):
                v = max(v, abs(y[i] - y[j]))
        worst.append(v)
    return float(np.mean(worst))


def success_agreement(real: Sequence[bool], imagined: Sequence[bool]) -> float:
    """Fraction of episodes whose imagined success equals the real success."""
    a, b = np.asarray(real, dtype=bool), np.asarray(imagined, dtype=bool)
    if a.shape != b.shape or a.size == 0:
        raise ValueError(f"real and imagined need the same non-zero length, got {a.size} and {b.size}")
    return float((a == b).mean())


def agreement_ci95(real: Sequence[bool], imagined: Sequence[bool]) -> tuple[float, float]:
    """95 % Wilson interval of the agreement fraction (``success_agreement``) over these episodes, by
    ``scipy.stats.binomtest``: how far the agreement of one finite set of episodes can be from the model's own
    (48 episodes at 0.6 give about 0.46 to 0.73)."""
    from scipy.stats import binomtest

    n = len(real)
    agreeing = int(round(success_agreement(real, imagined) * n))  # validates the pair
    ci = binomtest(agreeing, n).proportion_ci(confidence_level=0.95, method="wilson")
    return float(ci.low), float(ci.high)


def success_rates(successes: Sequence[bool], groups: Sequence[str]) -> dict[str, float]:
    """Success rate per group label (e.g. per policy / noise level)."""
    s, g = np.asarray(successes, dtype=bool), list(groups)
    if len(s) != len(g):
        raise ValueError(f"successes and groups need the same length, got {len(s)} and {len(g)}")
    return {k: float(s[[x == k for x in g]].mean()) for k in sorted(set(g))}

"""Weight-free metrics against hand-computed values (k4d_worldmodel.metrics)."""
import math

import numpy as np
import pytest

from k4d_worldmodel import metrics as M


def test_psnr_of_known_mse():
    gt = np.zeros((4, 4, 3), np.uint8)
    pred = np.full((4, 4, 3), 10, np.uint8)  # MSE = 100
    assert M.psnr(pred, gt) == pytest.approx(10 * math.log10(255**2 / 100))
    assert M.psnr(gt, gt) == math.inf
    assert M.psnr(np.full((2, 2), 0.5), np.zeros((2, 2))) == pytest.approx(10 * math.log10(1 / 0.25))
    video = np.stack([pred, gt])
    assert M.psnr_video(video, np.stack([gt, gt])) == pytest.approx((10 * math.log10(255**2 / 100) + 100) / 2)


def test_ssim_identity_and_noise():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    assert M.ssim(img, img) == pytest.approx(1.0)
    noisy = np.clip(img.astype(int) + rng.normal(0, 40, img.shape), 0, 255).astype(np.uint8)
    assert M.ssim(noisy, img) < 0.9
    # constant images: SSIM of mean shift only = (2 mx my + c1) / (mx^2 + my^2 + c1)
    a, b = np.full((16, 16), 0.5), np.full((16, 16), 0.25)
    c1 = (0.01) ** 2
    assert M.ssim(a, b) == pytest.approx((2 * 0.5 * 0.25 + c1) / (0.25 + 0.0625 + c1))


def test_chamfer_and_fscore_known_sets():
    a = np.array([[0.0, 0, 0], [1, 0, 0]])
    b = np.array([[0.0, 0, 0], [1, 0, 0], [1, 0.5, 0]])
    # a->b distances 0, 0; b->a distances 0, 0, 0.5
    c = M.chamfer(a, b)
    assert c["l1"] == pytest.approx((0 + 0.5 / 3) / 2)
    assert c["l2"] == pytest.approx((0 + 0.25 / 3) / 2)
    f = M.fscore(a, b, tau=0.1)
    assert f["precision"] == 1.0 and f["recall"] == pytest.approx(2 / 3)
    assert f["f"] == pytest.approx(2 * 1 * (2 / 3) / (1 + 2 / 3))
    assert M.fscore(a + 5, b, tau=0.1)["f"] == 0.0
    with_nan = np.vstack([a, [np.nan, 0, 0]])
    assert M.chamfer(with_nan, b) == c
    assert M.centroid_error(a, a + [0, 0, 0.3]) == pytest.approx(0.3)


def test_pearson_and_mmrv_by_hand():
    real = [0.2, 0.5, 0.9]
    assert M.pearson_r(real, [0.3, 0.6, 1.0]) == pytest.approx(1.0)
    # centred: x = (-1/3, -1/30, 11/30), y = (11/30, -1/30, -1/3); r = sum xy / sum x^2 = -0.24333 / 0.24667
    assert M.pearson_r(real, [0.9, 0.5, 0.2]) == pytest.approx(-0.73 / 0.74)
    assert M.mmrv(real, [0.1, 0.4, 0.8]) == 0.0  # same order
    # imagined swaps policies 0 and 1: violations |0.2-0.5| = 0.3 for policies 0 and 1, none for policy 2
    assert M.mmrv(real, [0.6, 0.4, 0.8]) == pytest.approx((0.3 + 0.3 + 0.0) / 3)
    # fully reversed: policy 0 worst gap 0.7, policy 1 max(0.3, 0.4) = 0.4, policy 2 0.7
    assert M.mmrv(real, [0.9, 0.5, 0.2]) == pytest.approx((0.7 + 0.4 + 0.7) / 3)
    assert M.success_agreement([True, False, True], [True, True, True]) == pytest.approx(2 / 3)
    # Wilson 95 % interval, by hand: 29 of 48 agree
    real, imag = [True] * 48, [True] * 29 + [False] * 19
    z, n, p = 1.959963984540054, 48, 29 / 48
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    assert M.agreement_ci95(real, imag) == pytest.approx((centre - half, centre + half))
    assert M.agreement_ci95([True], [True])[1] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="same non-zero length"):
        M.agreement_ci95([True, False], [True])
    assert M.success_rates([True, False, True, True], ["a", "a", "b", "b"]) == {"a": 0.5, "b": 1.0}
    with pytest.raises(ValueError, match="same length"):
        M.pearson_r([0.1, 0.2], [0.1])

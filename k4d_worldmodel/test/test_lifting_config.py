"""Metric lifting on synthetic data, and self-validating configs."""
import os

import numpy as np
import pytest
import torch

from k4d_worldmodel.config import MetricLiftConfig, WorldModelConfig
from k4d_worldmodel.lifting import fit_metric_lift, lift_pointmaps


def _synthetic(outlier_fraction=0.25, seed=0):
    rng = np.random.default_rng(seed)
    xyz01 = rng.uniform(0, 1, (5, 20, 30, 3)).astype(np.float64)
    scale, offset = np.array([0.62, 0.41, 0.93]), np.array([-0.31, -0.2, 0.55])
    metric = xyz01 * scale + offset
    robot = np.zeros(xyz01.shape[:3], bool)
    robot[:, 4:16, 5:25] = True
    metric[~robot] = np.nan
    outliers = robot & (rng.uniform(size=robot.shape) < outlier_fraction)
    metric[outliers] += rng.normal(0, 0.3, size=(int(outliers.sum()), 3))
    return xyz01, metric, robot, scale, offset, outliers


def test_recovers_known_affine_exactly_despite_outliers():
    xyz01, metric, robot, scale, offset, outliers = _synthetic(outlier_fraction=0.15)
    xyz_m, fit = lift_pointmaps(xyz01, metric, robot)
    np.testing.assert_allclose(fit.scale, scale, atol=1e-9)
    np.testing.assert_allclose(fit.offset, offset, atol=1e-9)
    assert fit.quality == "good" and fit.metric and fit.residual_m < 1e-9
    assert fit.inlier_fraction == pytest.approx(1 - outliers.sum() / robot.sum(), abs=0.01)
    np.testing.assert_allclose(xyz_m[~robot], (xyz01 * scale + offset)[~robot], atol=1e-6)  # applied everywhere
    assert xyz_m.shape == xyz01.shape and xyz_m.dtype == np.float32


def test_flags_garbage():
    xyz01, metric, robot, *_ = _synthetic(outlier_fraction=0.0)
    rng = np.random.default_rng(1)
    garbage = np.where(robot[..., None], rng.uniform(-1, 1, metric.shape), np.nan)
    fit = fit_metric_lift(xyz01, garbage, robot)
    assert fit.quality == "failed" and not fit.metric
    np.testing.assert_array_equal(fit.apply(xyz01), xyz01.astype(np.float32))  # not lifted
    noisy = metric + rng.normal(0, 0.015, metric.shape)  # usable but imprecise
    assert fit_metric_lift(xyz01, noisy, robot).quality == "poor"
    few = fit_metric_lift(xyz01[:, :1, :1], metric[:, :1, :1])
    assert few.quality == "failed" and few.num_points < 50


def test_fit_is_deterministic_and_thresholds_apply():
    xyz01, metric, robot, *_ = _synthetic(seed=3)
    a, b = fit_metric_lift(xyz01, metric, robot), fit_metric_lift(xyz01, metric, robot)
    np.testing.assert_array_equal(a.scale, b.scale)
    strict = fit_metric_lift(xyz01, metric, robot, MetricLiftConfig(good_inlier_fraction=0.95, min_inlier_fraction=0.9))
    assert strict.quality == "failed"


def test_config_validation_names_field():
    cfg = WorldModelConfig(checkpoint_dir="x", device="cpu")
    assert cfg.resolved_dtype().is_floating_point and "metric_inlier_threshold_m" in WorldModelConfig.field_names()
    for kwargs, field in [({"variant": "tiny"}, "variant"), ({"num_inference_steps": 0}, "num_inference_steps"),
                          ({"guidance_scale": float("nan")}, "guidance_scale"), ({"cfg_mode": "x"}, "cfg_mode"),
                          ({"device": "gpu"}, "device"), ({"dtype": "bfloat16", "device": "cpu"}, "dtype"),
                          ({"metric_min_inlier_fraction": 1.5}, "min_inlier_fraction"),
                          ({"lora_rank": 0}, "lora_rank"), ({"scheduler": "ddim"}, "scheduler")]:
        with pytest.raises(ValueError, match=field):
            WorldModelConfig(**kwargs)


def test_vae_autocast_setting():
    from k4d_worldmodel.config import cpu_has_native_bf16

    with pytest.raises(ValueError, match="vae_autocast"):
        WorldModelConfig(vae_autocast="fp8")
    assert WorldModelConfig(device="cpu", vae_autocast="off").resolved_vae_autocast() is None
    assert WorldModelConfig(device="cpu", vae_autocast="bfloat16").resolved_vae_autocast() is torch.bfloat16
    flags = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    native = any(f in flags.split() for f in ("avx512_bf16", "amx_bf16", "bf16"))
    assert cpu_has_native_bf16() is native
    assert WorldModelConfig(device="cpu").resolved_vae_autocast() is (torch.bfloat16 if native else None)


def test_anchored_lift_recovers_the_clip_affine_from_one_measured_frame():
    """Robot pixels too few and too noisy to pass alone; one measured frame anchors the per-clip affine."""
    from k4d_worldmodel.lifting import lift_pointmaps_anchored

    rng = np.random.default_rng(0)
    T, H, W = 5, 16, 24
    metric = np.stack([rng.uniform(-1, 1, (T, H, W)), rng.uniform(-0.5, 0.5, (T, H, W)),
                       rng.uniform(0.5, 3.0, (T, H, W))], -1)
    lo, hi = metric.min(axis=(0, 1, 2)), metric.max(axis=(0, 1, 2))
    xyz01 = (metric - lo) / (hi - lo)
    robot = np.full_like(metric, np.nan)
    robot[:, :2, :2] = metric[:, :2, :2] + rng.normal(0, 0.1, (T, 2, 2, 3))  # 20 noisy robot pixels
    assert not fit_metric_lift(xyz01, robot).metric
    xyz_m, fit = lift_pointmaps_anchored(xyz01, metric[0], robot)
    assert fit.metric and fit.quality == "good"
    np.testing.assert_allclose(fit.scale, hi - lo, rtol=1e-6)
    np.testing.assert_allclose(xyz_m[3], metric[3], atol=1e-5)  # every frame, not only the anchor
    # an anchor that disagrees with the generated frame fails instead of lifting wrongly
    _, bad = lift_pointmaps_anchored(xyz01, rng.uniform(0, 3, (H, W, 3)), None)
    assert not bad.metric
    with pytest.raises(ValueError, match="anchor_xyz_m must have shape"):
        lift_pointmaps_anchored(xyz01, metric[0, :8])


def _drifting_scene(seed=0):
    """A still table scene (T, 32, 48) whose lifted copy drifts over time as a video VAE's does: frame t is
    shifted by t * 1 mm along the optical axis, plus a smooth tilt; a robot blob moves; a 3 x 3 px object is
    placed in the last frames (a real change that registration must keep)."""
    rng = np.random.default_rng(seed)
    T, H, W = 9, 32, 48
    v, u = np.mgrid[0:H, 0:W].astype(np.float64)
    z = 1.0 + 0.01 * v
    truth = np.repeat(np.stack([(u - W / 2) * z / 40, (v - H / 2) * z / 40, z], -1)[None], T, 0)
    truth[6:, 20:23, 30:33, 2] -= 0.03  # an object placed 3 cm nearer the camera from frame 6 on
    robot = np.zeros((T, H, W), bool)
    for t in range(T):
        robot[t, 2:10, 2 + 3 * t:8 + 3 * t] = True
    drift = np.zeros((T, H, W, 3))
    drift[..., 2] = (np.arange(T) * 0.001)[:, None, None] + 0.0002 * np.arange(T)[:, None, None] * (u / W)
    lifted = truth + drift + rng.normal(0, 0.0005, truth.shape)
    lifted[robot] += 0.05  # the model's robot is wrong; registration must not learn from it
    return truth, lifted.astype(np.float32), robot


@pytest.mark.parametrize("block_px", [0, 16])
def test_register_static_removes_temporal_drift_and_keeps_real_changes(block_px):
    from k4d_worldmodel.lifting import register_static

    truth, lifted, robot = _drifting_scene()
    still = ~robot & ~robot[:1]
    before = np.abs(lifted[-1][still[-1]] - truth[-1][still[-1]])[:, 2]
    assert np.median(before) > 0.007  # 8 mm of drift by the last frame
    reg, info = register_static(lifted, truth[0], robot, block_px)
    after = np.abs(reg[-1][still[-1]] - truth[-1][still[-1]])[:, 2]
    assert np.median(after) < 0.001 and info["frames_registered"] == len(truth)
    assert info["median_shift_m"] > 0.003
    # the placed object is still 3 cm above the table it stands on, in the registered rollout as in the truth
    np.testing.assert_allclose(reg[-1, 21, 31, 2] - reg[-1, 21, 26, 2], -0.03 + 0.0001, atol=0.003)
    assert reg.dtype == np.float32 and np.isfinite(reg).all()


def test_register_static_leaves_frames_without_still_pixels_and_rejects_bad_input():
    from k4d_worldmodel.lifting import register_static

    truth, lifted, robot = _drifting_scene()
    anchor = truth[0].copy()
    anchor[:, :] = np.nan  # no measured pixel: nothing to register against
    reg, info = register_static(lifted, anchor, robot)
    np.testing.assert_array_equal(reg, lifted)
    assert info == {"frames_registered": 0, "median_shift_m": 0.0}
    with pytest.raises(ValueError, match="robot_mask must have shape"):
        register_static(lifted, truth[0], robot[:, :8])
    with pytest.raises(ValueError, match="anchor_xyz_m"):
        register_static(lifted, truth[0, :8], robot)
    with pytest.raises(ValueError, match="block_px"):
        register_static(lifted, truth[0], robot, block_px=-1)
    with pytest.raises(ValueError, match="metric_register_block_px"):
        WorldModelConfig(metric_register_block_px=-2)
    assert WorldModelConfig(metric_register=False).registration_block_px() is None


def test_lift_with_anchor_registers_a_fitted_lift_and_a_decoded_output_in_depth_only():
    """``lift_pointmaps_with_anchor(register_block_px=...)``: the clip-wide fit keeps the drift of a normalised
    output, the registration removes it; a metric encoding's decoded output is registered in depth only, every
    point staying on its pixel's ray."""
    from k4d_worldmodel.lifting import lift_pointmaps_with_anchor
    from k4d_worldmodel.pointmap_encoding import PointmapEncoding

    truth, lifted, robot = _drifting_scene()
    lo, hi = np.nanmin(lifted, axis=(0, 1, 2)), np.nanmax(lifted, axis=(0, 1, 2))
    xyz01 = (lifted - lo) / (hi - lo)  # what a minmax model returns for the drifting clip
    robot_xyz = np.where(robot[..., None], truth, np.nan)
    still = ~robot & ~robot[:1]
    plain, fit, _ = lift_pointmaps_with_anchor(xyz01, robot_xyz, robot, anchor_xyz_m=truth[0])
    reg, fit_r, _ = lift_pointmaps_with_anchor(xyz01, robot_xyz, robot, anchor_xyz_m=truth[0], register_block_px=16)
    assert fit.metric and fit_r.metric
    err = lambda x: np.median(np.abs(x[-1][still[-1]] - truth[-1][still[-1]])[:, 2])  # noqa: E731
    assert err(plain) > 0.003 and err(reg) < 0.001
    # no anchor: nothing to register against, the plain lift comes back
    np.testing.assert_array_equal(lift_pointmaps_with_anchor(xyz01, robot_xyz, robot, register_block_px=16)[0],
                                  lift_pointmaps_with_anchor(xyz01, robot_xyz, robot)[0])
    ray = PointmapEncoding(kind="ray_depth")
    code = ray.encode_world(lifted.astype(np.float32))[0]  # a metric model's output of the drifting clip
    dec, _, _ = lift_pointmaps_with_anchor(code, robot_xyz, robot, anchor_xyz_m=truth[0], encoding=ray,
                                           register_block_px=16)
    raw, _, _ = lift_pointmaps_with_anchor(code, robot_xyz, robot, anchor_xyz_m=truth[0], encoding=ray)
    assert err(raw) > 0.003 and err(dec) < 0.001
    ok = np.isfinite(raw).all(-1) & np.isfinite(dec).all(-1)
    assert ok.mean() > 0.9
    np.testing.assert_allclose((dec[..., :2] / dec[..., 2:])[ok], (raw[..., :2] / raw[..., 2:])[ok], atol=1e-5)
    np.testing.assert_array_equal(  # no anchor: nothing to register against
        lift_pointmaps_with_anchor(code, robot_xyz, robot, encoding=ray, register_block_px=16)[0],
        lift_pointmaps_with_anchor(code, robot_xyz, robot, encoding=ray)[0])

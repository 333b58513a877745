"""Metric lifting on synthetic data, and self-validating configs."""
import numpy as np
import pytest

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

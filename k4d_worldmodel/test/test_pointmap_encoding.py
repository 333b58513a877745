"""The pointmap codes (minmax, ray_depth), the measured first-frame condition, and the metric path end to end."""
import json

import numpy as np
import pytest
import torch

from k4d_worldmodel.lifting import check_decoded, lift_pointmaps_with_anchor
from k4d_worldmodel.pointmap_encoding import PointmapEncoding, pixel_rays
from k4d_worldmodel.tiny import build_tiny_pipeline, tiny_inputs

RAY = PointmapEncoding(kind="ray_depth")


def _scene(h=32, w=48, fx=40.0):
    """A metric camera-frame pointmap: table plane 0.9..1.5 m, a wall at 4.5 m in the top rows, a hole."""
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    z = np.where(v < 6, 4.5, 0.9 + 0.6 * (h - v) / h)
    xyz = np.stack([(u - w / 2) * z / fx, (v - h / 2) * z / fx, z], -1)
    xyz[0, :3] = np.nan
    return xyz.astype(np.float32)


def test_ray_depth_round_trip_is_metric_and_keeps_holes():
    xyz = _scene()
    code, lo, hi = RAY.encode_world(xyz)
    assert code.dtype == np.float32 and code.min() >= 0 and code.max() <= 1
    np.testing.assert_array_equal(code[0, 0], [0.5, 0.5, 1.0])  # no point
    back = RAY.decode(code)
    ok = np.isfinite(xyz).all(-1)
    assert np.isnan(back[~ok]).all() and np.isfinite(back[ok]).all()
    np.testing.assert_allclose(back[ok], xyz[ok], atol=2e-5 * 4.5)
    np.testing.assert_allclose(lo, np.nanmin(xyz.reshape(-1, 3), 0), rtol=1e-6)
    # beyond far_m: dropped, not folded onto the far wall
    far = xyz.copy()
    far[5, 5] *= 8.0
    assert np.isnan(RAY.decode(RAY.encode_world(far)[0])[5, 5]).all()


def test_the_workspace_gets_finer_depth_than_the_per_clip_minmax():
    """The reason for ray_depth: the same code error costs far less depth at the table than minmax over the
    scene's 4.5 m."""
    xyz = _scene()
    table = (np.isfinite(xyz).all(-1)) & (xyz[..., 2] < 1.6)
    err = np.zeros(3, np.float32)
    err[2] = 0.01
    ray = RAY.decode(RAY.encode_world(xyz)[0] + err)
    mm01, lo, hi = PointmapEncoding().encode_world(xyz)
    mm = (mm01 + err) * (hi - lo) + lo
    d_ray = np.abs(ray[..., 2] - xyz[..., 2])[table]
    d_mm = np.abs(mm[..., 2] - xyz[..., 2])[table]
    assert d_ray.max() <= 0.0101 and d_mm.min() > 0.03


def test_minmax_is_the_release_normalisation():
    xyz = _scene()
    code, lo, hi = PointmapEncoding().encode_world(xyz)
    ok = np.isfinite(xyz).all(-1)
    np.testing.assert_allclose(code[ok], (xyz[ok] - lo) / (hi - lo), atol=1e-6)
    assert (code[~ok] == 0).all()
    with pytest.raises(ValueError, match="not metric"):
        PointmapEncoding().decode(code)


def test_robot_code_and_bad_configs():
    xyz = np.full((2, 4, 5, 3), np.nan, np.float32)
    xyz[:, 1:3, 1:4] = [0.1, -0.05, 1.0]
    mask = np.isfinite(xyz).all(-1)
    code, lo, hi = RAY.encode_robot(xyz, mask)
    assert (code[~mask] == 0).all() and np.allclose(RAY.decode(code[mask]), xyz[mask], atol=1e-5)
    with pytest.raises(ValueError, match="xyz_bounds applies to the 'minmax'"):
        RAY.encode_robot(xyz, mask, (np.zeros(3), np.ones(3)))
    with pytest.raises(ValueError, match="kind must be one of"):
        PointmapEncoding.from_config("inverse_depth")
    with pytest.raises(ValueError, match="unknown keys"):
        PointmapEncoding.from_config({"kind": "ray_depth", "near": 0.5})
    with pytest.raises(ValueError, match="near_m < knee_m < far_m"):
        PointmapEncoding(kind="ray_depth", near_m=2.0)
    assert PointmapEncoding.from_config(RAY.to_dict()) == RAY and PointmapEncoding.from_config(None).kind == "minmax"


@pytest.fixture(scope="module")
def v3_pipe():
    return build_tiny_pipeline("pmcond", seed=1, pointmap_encoding="ray_depth", first_xyz_condition=True)


def test_measured_first_frame_conditions_the_rollout(v3_pipe):
    inp = tiny_inputs(v3_pipe)
    first = _scene(v3_pipe.height, v3_pipe.width)
    kw = dict(num_inference_steps=2, guidance_scale=1.0, seed=0)
    a = v3_pipe(**inp, first_xyz=first, **kw)
    b = v3_pipe(**inp, first_xyz=first, **kw)
    c = v3_pipe(**inp, first_xyz=first + np.float32([0, 0, 0.5]), **kw)
    d = v3_pipe(**inp, **kw)  # without depth: the release's dummy
    np.testing.assert_array_equal(a.xyz, b.xyz)
    assert not np.array_equal(a.xyz, c.xyz) and not np.array_equal(a.xyz, d.xyz)
    # the condition marks the measured XYZ half like the RGB half (mask 1), the dummy with 0.5
    image01 = torch.from_numpy(inp["image"]).permute(2, 0, 1).float() / 255
    half = v3_pipe.transformer.config.latent_width
    with torch.no_grad():
        assert float(v3_pipe.prepare_condition(image01, first)[0, 0, 0, 0, half]) == 1.0
        assert float(v3_pipe.prepare_condition(image01)[0, 0, 0, 0, half]) == 0.5


def test_first_xyz_is_refused_where_it_cannot_be_used(v3_pipe, pmcond_pipe):
    inp = tiny_inputs(v3_pipe)
    h, w = v3_pipe.height, v3_pipe.width
    with pytest.raises(ValueError, match="first_xyz_condition is false"):
        pmcond_pipe(**tiny_inputs(pmcond_pipe), first_xyz=_scene(h, w), num_inference_steps=1)
    with pytest.raises(ValueError, match=r"first_xyz must be a float \(H, W, 3\)"):
        v3_pipe(**inp, first_xyz=np.zeros((4, 4, 3), np.float32), num_inference_steps=1)
    with pytest.raises(ValueError, match="no finite point"):
        v3_pipe(**inp, first_xyz=np.full((h, w, 3), np.nan, np.float32), num_inference_steps=1)
    with pytest.raises(ValueError, match="xyz_bounds applies to the 'minmax'"):
        v3_pipe(**inp, xyz_bounds=(np.zeros(3), np.ones(3)), num_inference_steps=1)
    with pytest.raises(ValueError, match="needs a metric pointmap_encoding"):
        build_tiny_pipeline("pmcond", first_xyz_condition=True)


def test_encoding_survives_save_and_load(v3_pipe, tmp_path):
    from k4d_worldmodel.config import WorldModelConfig
    from k4d_worldmodel.loading import load_pipeline

    v3_pipe.save_pretrained(tmp_path / "m", safe_serialization=True)
    index = json.loads((tmp_path / "m" / "model_index.json").read_text())
    assert index["pointmap_encoding"]["kind"] == "ray_depth" and index["first_xyz_condition"] is True
    pipe = load_pipeline(WorldModelConfig(checkpoint_dir=str(tmp_path / "m"), device="cpu"))
    assert pipe.pointmap_encoding == v3_pipe.pointmap_encoding and pipe.config.first_xyz_condition


def test_metric_output_is_decoded_and_scored_not_fitted():
    t, h, w = 3, 32, 48
    truth = np.repeat(_scene(h, w)[None], t, 0)
    robot = np.zeros((t, h, w), bool)
    robot[:, 10:20, 10:30] = True
    robot_xyz = np.where(robot[..., None], truth, np.nan)
    code = RAY.encode_world(truth)[0]
    xyz, fit, anchored = lift_pointmaps_with_anchor(code, robot_xyz, robot, encoding=RAY)
    assert fit.metric and fit.quality == "good" and not anchored and fit.residual_m < 1e-3
    np.testing.assert_allclose(xyz[robot], truth[robot], atol=1e-4)
    # an imagined robot 5 cm off where kinematics puts it stays metric but is reported poor
    off = check_decoded(truth + np.float32([0.05, 0, 0]), robot_xyz, robot)
    assert off.metric and off.quality == "poor" and off.inlier_fraction == 0.0


def test_the_measured_first_frame_gives_each_pixel_its_ray():
    """A fixed camera's pixel always looks along the same ray: with the measured first frame, the decoded x and y
    are that ray times the decoded depth, wherever frame 0 had a point; elsewhere the model's ray channels count.
    Corrupted ray channels therefore cost nothing where the measurement knows the ray."""
    t, h, w = 3, 32, 48
    truth = np.repeat(_scene(h, w)[None], t, 0)
    rays = pixel_rays(truth[0])
    assert rays.shape == (h, w, 2) and np.isnan(rays[0, :3]).all() and np.isfinite(rays[1:]).all()
    code = RAY.encode_world(truth)[0]
    noisy = code.copy()
    noisy[..., :2] = np.clip(noisy[..., :2] + np.random.default_rng(0).normal(0, 0.02, noisy[..., :2].shape), 0, 1)
    plain = RAY.decode(noisy)
    with_rays = RAY.decode(noisy, rays)
    known = np.isfinite(truth).all(-1)
    err_plain = np.abs(plain - truth)[known][:, :2].mean()
    err_rays = np.abs(with_rays - truth)[known][:, :2].mean()
    assert err_plain > 5e-3 and err_rays < 1e-4  # lateral error gone; depth untouched
    np.testing.assert_array_equal(with_rays[..., 2], plain[..., 2])
    # a pixel without a measured ray keeps the decoded one
    holes = rays.copy()
    holes[5, 5] = np.nan
    np.testing.assert_array_equal(RAY.decode(noisy, holes)[:, 5, 5], plain[:, 5, 5])
    # the lift uses the anchor's rays for a metric model
    robot = np.zeros((t, h, w), bool)
    robot[:, 10:20, 10:30] = True
    xyz, fit, _ = lift_pointmaps_with_anchor(noisy, np.where(robot[..., None], truth, np.nan), robot,
                                            anchor_xyz_m=truth[0], encoding=RAY)
    np.testing.assert_array_equal(xyz, with_rays)
    with pytest.raises(ValueError, match="rays must be"):
        RAY.decode(noisy, rays[:, :-1])
    with pytest.raises(ValueError, match="pixel_rays"):
        pixel_rays(truth)


def test_training_codes_the_world_in_the_model_encoding(tmp_path, v3_pipe):
    from k4d_worldmodel.training.data import open_dataset
    from k4d_worldmodel.training.objective import encode_clips, flow_matching_step, stack_encoded
    from k4d_worldmodel.training.synthetic import write_synthetic_episodes

    write_synthetic_episodes(tmp_path, episodes=2, num_frames=9, height=32, width=48)
    geom = (v3_pipe.num_frames, v3_pipe.height, v3_pipe.width)
    clip = open_dataset(tmp_path, *geom, split="all", pointmap_encoding=v3_pipe.pointmap_encoding)[0]
    np.testing.assert_array_equal(clip["world01"], RAY.encode_world(clip["world_xyz"])[0])
    with pytest.raises(ValueError, match="codes its world pointmap as 'minmax'"):
        encode_clips(v3_pipe, [open_dataset(tmp_path, *geom, split="all")[0]])
    enc, _ = encode_clips(v3_pipe, [clip])
    assert set(enc[0]) >= {"condition", "condition_dummy"}
    with torch.no_grad():
        dummy_condition = v3_pipe.prepare_condition(torch.from_numpy(clip["rgb"][0]).permute(2, 0, 1).float() / 255)
    np.testing.assert_allclose(enc[0]["condition_dummy"], dummy_condition[0], atol=1e-5)
    batch = stack_encoded(enc * 2)
    kw = dict(soft_mask_fraction=0.0, sigmas=torch.full((2,), 0.5), noise=torch.randn(batch["x0"].shape))
    tr = v3_pipe.transformer
    with torch.no_grad():
        measured = flow_matching_step(tr, batch, torch.Generator().manual_seed(0), **kw, first_xyz_dropout=0.0)
        dummy = flow_matching_step(tr, batch, torch.Generator().manual_seed(0), **kw, first_xyz_dropout=0.999)
        only_dummy = {**batch, "condition": batch["condition_dummy"]}
        ref = flow_matching_step(tr, only_dummy, torch.Generator().manual_seed(0), **kw)
    assert float(dummy) == pytest.approx(float(ref), rel=1e-6) and float(measured) != pytest.approx(float(ref))


def test_engine_conditions_a_metric_model_on_the_anchor_depth(v3_pipe, tmp_path):
    """The Imagine goal's depth (``anchor_depth``) reaches a ``first_xyz_condition`` model as its condition, and
    the output comes back metric as decoded (no fit, no anchored refit), registered in depth only by default."""
    from k4d_worldmodel.config import WorldModelConfig
    from k4d_worldmodel.engine import ImagineEngine, ImagineRequest, sequence_from_arrays

    v3_pipe.save_pretrained(tmp_path / "m", safe_serialization=True)
    engine = ImagineEngine(WorldModelConfig(checkpoint_dir=str(tmp_path / "m"), device="cpu", num_inference_steps=2,
                                            guidance_scale=1.0, seed=3))
    engine.load()
    inp = tiny_inputs(v3_pipe)
    seq = sequence_from_arrays(inp["robot_xyz"], inp["robot_link"])
    depth = _scene(v3_pipe.height, v3_pipe.width)[..., 2]
    with_depth = engine.run(ImagineRequest(inp["image"], seq, anchor_depth=depth))
    without = engine.run(ImagineRequest(inp["image"], seq))
    assert with_depth.metric and without.metric and not with_depth.anchored
    assert with_depth.metric_quality in ("good", "poor") and with_depth.lift.scale.tolist() == [1.0, 1.0, 1.0]
    assert not np.array_equal(with_depth.xyz01, without.xyz01)
    np.testing.assert_allclose(without.xyz, RAY.decode(without.xyz01), equal_nan=True)
    # with depth, registration off: the depth is the model's as decoded
    plain = ImagineEngine(WorldModelConfig(checkpoint_dir=str(tmp_path / "m"), device="cpu", num_inference_steps=2,
                                           guidance_scale=1.0, seed=3, metric_register=False))
    plain.load()
    unreg = plain.run(ImagineRequest(inp["image"], seq, anchor_depth=depth))
    np.testing.assert_array_equal(unreg.xyz01, with_depth.xyz01)
    np.testing.assert_allclose(unreg.xyz[..., 2], RAY.decode(unreg.xyz01)[..., 2], equal_nan=True)
    # registered (the default): the depth is moved towards the measured one (lifting.register_depth), and every
    # pixel keeps the measured frame's ray in every frame
    both = np.isfinite(depth)[None] & np.isfinite(unreg.xyz[..., 2]) & np.isfinite(with_depth.xyz[..., 2])
    assert np.median(np.abs(with_depth.xyz[..., 2] - depth)[both]) < np.median(np.abs(unreg.xyz[..., 2] - depth)[both])
    rays = with_depth.xyz[..., :2] / with_depth.xyz[..., 2:]
    seen = np.isfinite(rays).all(-1).all(0) & np.isfinite(depth)  # pixels with a measured ray
    assert seen.mean() > 0.9
    np.testing.assert_allclose(rays[:, seen], np.broadcast_to(rays[0, seen], rays[:, seen].shape), atol=1e-6)


def test_a_view_the_code_cannot_hold_is_reported_by_field():
    xyz = _scene(fx=20.0)  # a wide view: |x / z| up to 1.2, beyond ray_x 0.65
    xyz[:, :2] = [0.0, 0.0, 0.5]  # nearer than near_m
    msgs = []
    frac = RAY.warn_if_clipped(xyz, msgs.append)
    assert frac["ray_x"] > 0.4 and frac["near_m"] > 0.01 and frac["far_m"] == 0.0
    assert any("widen pointmap_encoding.ray_x" in m for m in msgs) and any("near_m" in m for m in msgs)
    assert not any("far_m" in m for m in msgs)
    msgs.clear()
    assert RAY.warn_if_clipped(_scene(), msgs.append) == {"ray_x": 0.0, "ray_y": 0.0, "near_m": 0.0, "far_m": 0.0}
    assert msgs == []
    assert PointmapEncoding().clipped(xyz) == {}

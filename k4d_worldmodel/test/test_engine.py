"""ImagineEngine on a tiny saved pipeline (CPU, a few denoising steps per rollout)."""
import re

import numpy as np
import pytest
import torch

from k4d_worldmodel.config import WorldModelConfig
from k4d_worldmodel.engine import (EngineNotLoaded, EngineOutOfMemory, ImagineEngine, ImagineRequest, InvalidRequest,
                                   K4DCancelled, SamplingOverrides, model_identity, sequence_from_arrays)
from k4d_worldmodel.tiny import tiny_inputs


@pytest.fixture(scope="module")
def engine(model_dir):
    eng = ImagineEngine(WorldModelConfig(checkpoint_dir=str(model_dir), device="cpu", num_inference_steps=2,
                                         guidance_scale=1.0, seed=3))
    eng.load()
    return eng


@pytest.fixture(scope="module")
def request_(pmcond_pipe):
    inp = tiny_inputs(pmcond_pipe)
    return ImagineRequest(image=inp["image"], sequence=sequence_from_arrays(inp["robot_xyz"], inp["robot_link"]))


def test_run_defaults_progress_and_identity(engine, request_, model_dir):
    stages = []
    res = engine.run(request_, progress=lambda stage, step, total, el, eta: stages.append((stage, step, total)))
    t, h, w = engine.geometry
    assert res.rgb.shape == (t, h, w, 3) and res.rgb.dtype == np.uint8
    assert res.xyz.shape == (t, h, w, 3) and res.xyz.dtype == np.float32
    assert res.lift.quality in ("good", "poor", "failed") and res.metric == res.lift.metric
    s = res.sampling
    assert (s.num_inference_steps, s.guidance_scale, s.seed, s.num_frames, s.scheduler, s.cfg_mode, s.seed_drawn) == \
        (2, 1.0, 3, t, "unipc", "correct", False)
    assert stages == [("preparing", 0, 2), ("denoising", 1, 2), ("denoising", 2, 2), ("decoding", 2, 2),
                      ("lifting", 2, 2)]
    assert {"encode_s", "denoise_s", "decode_s", "lift_s", "generation_s"} <= set(res.timings)
    assert re.fullmatch(r"tiny_model@[0-9a-f]{12}", res.model_id) and res.model_id == engine.model_id
    assert model_identity(engine.config) == engine.model_id  # stable
    assert engine.estimate_s(2) > 0


def test_drawn_seed_is_reported_and_reproducible(engine, request_):
    a = engine.run(ImagineRequest(request_.image, request_.sequence, SamplingOverrides(seed=-1, scheduler="euler")))
    assert a.sampling.seed_drawn and a.sampling.seed >= 0 and a.sampling.scheduler == "euler"
    b = engine.run(ImagineRequest(request_.image, request_.sequence,
                                  SamplingOverrides(seed=a.sampling.seed, scheduler="euler")))
    assert not b.sampling.seed_drawn
    np.testing.assert_array_equal(a.rgb, b.rgb)


def test_a_negative_configured_seed_draws_per_rollout_and_the_lift_stays_seeded(model_dir, request_):
    """seed -1 in the config means a fresh sampling seed per rollout; the metric lift's RANSAC keeps a fixed,
    valid seed instead of receiving the -1 (which failed every rollout after its denoising)."""
    from k4d_worldmodel.config import MetricLiftConfig

    eng = ImagineEngine(WorldModelConfig(checkpoint_dir=str(model_dir), device="cpu", num_inference_steps=2,
                                         guidance_scale=1.0, seed=-1))
    eng.load()
    assert eng.config.metric_lift_config().seed == 0
    for overrides in (SamplingOverrides(), SamplingOverrides(seed=5)):
        res = eng.run(ImagineRequest(request_.image, request_.sequence, overrides))
        assert res.sampling.seed >= 0 and res.sampling.seed_drawn == (overrides.seed is None)
        assert res.lift.quality in ("good", "poor", "failed")
    with pytest.raises(ValueError, match="seed"):
        MetricLiftConfig(seed=-1)


@pytest.mark.parametrize("change, words", [
    (dict(sampling=SamplingOverrides(num_frames=6)), "4k+1"),
    (dict(sampling=SamplingOverrides(num_frames=13)), "generates 9 frames"),
    (dict(sampling=SamplingOverrides(scheduler="ddim")), "sampling.scheduler"),
    (dict(image=np.zeros((16, 16, 3), np.uint8)), "initial_image must be 48x32"),
    (dict(empty_robot=True), "no robot pixel"),
    (dict(sampling=SamplingOverrides(guidance_scale=float("nan"))), "guidance_scale must be finite"),
])
def test_invalid_requests_name_the_field(engine, request_, change, words):
    seq = request_.sequence
    if change.pop("empty_robot", False):
        seq = sequence_from_arrays(np.full_like(seq.xyz, np.nan))
    req = ImagineRequest(change.get("image", request_.image), seq, change.get("sampling", SamplingOverrides()))
    with pytest.raises(InvalidRequest, match=re.escape(words)):
        engine.run(req)


def test_stop_between_steps(engine, request_):
    with pytest.raises(K4DCancelled) as info:
        engine.run(request_, should_stop=lambda: True)
    assert info.value.step == 1


def test_out_of_memory_is_reported_and_engine_keeps_working(engine, request_, monkeypatch):
    tr = engine.pipe.transformer
    original, calls = tr.forward, []

    def forward(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return original(*args, **kwargs)

    monkeypatch.setattr(tr, "forward", forward)
    with pytest.raises(EngineOutOfMemory, match="out of memory.*keeps serving"):
        engine.run(request_)
    assert engine.run(request_).rgb is not None


def test_unload(model_dir, request_):
    eng = ImagineEngine(WorldModelConfig(checkpoint_dir=str(model_dir), device="cpu"))
    eng.load()
    assert eng.loaded
    eng.unload()
    assert not eng.loaded
    with pytest.raises(EngineNotLoaded):
        eng.run(request_)


def test_adapt_inputs_fits_larger_and_longer_requests_to_the_model(model_dir, request_):
    """A camera twice the model's size and a 4x longer plan: refused by default, fitted with adapt_inputs."""
    seq = request_.sequence
    t, h, w = seq.num_frames, seq.camera.height, seq.camera.width
    big_cam = seq.camera.scaled(2 * w, 2 * h)
    xyz = np.repeat(np.repeat(seq.xyz, 2, axis=1), 2, axis=2)
    link = np.repeat(np.repeat(seq.link, 2, axis=1), 2, axis=2)
    long_idx = np.repeat(np.arange(t), 4)[: 4 * (t - 1) + 1]  # 4k+1 frames, each original frame repeated
    big = sequence_from_arrays(xyz[long_idx], link[long_idx], K=big_cam.K)
    image = np.repeat(np.repeat(request_.image, 2, axis=0), 2, axis=1)
    req = ImagineRequest(image=image, sequence=big)
    strict = ImagineEngine(WorldModelConfig(checkpoint_dir=str(model_dir), device="cpu", num_inference_steps=2,
                                            guidance_scale=1.0))
    strict.load()
    with pytest.raises(InvalidRequest, match="initial_image must be"):
        strict.check_request(req)
    eng = ImagineEngine(WorldModelConfig(checkpoint_dir=str(model_dir), device="cpu", num_inference_steps=2,
                                         guidance_scale=1.0, seed=3, adapt_inputs=True))
    eng.load()
    fitted = eng.adapt(req)
    assert fitted.image.shape == (h, w, 3) and np.array_equal(fitted.image, request_.image)  # 2x2 blocks averaged
    assert fitted.sequence.num_frames == t and (fitted.sequence.camera.width, fitted.sequence.camera.height) == (w, h)
    np.testing.assert_allclose(fitted.sequence.camera.K, seq.camera.K, atol=1e-9)
    np.testing.assert_array_equal(fitted.sequence.link, seq.link)
    res = eng.run(req)
    assert res.rgb.shape == (t, h, w, 3) and res.sequence.camera.width == w
    direct = eng.run(request_)
    np.testing.assert_array_equal(res.rgb, direct.rgb)  # the same request once fitted: the same rollout


def test_depth_anchor_lifts_when_the_robot_pixels_cannot(engine, request_, monkeypatch):
    """The generated geometry is a corrugated surface that the robot pixels do not lie on, so the robot-pixel fit
    fails; the first frame's measured depth of it (``anchor_depth``) then fixes the per-clip affine exactly."""
    t, h, w = engine.geometry
    cam = request_.sequence.camera
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    depth = (1.5 + 0.4 * np.sin(u / 2.0) + 0.01 * v).astype(np.float32)
    metric = np.repeat(cam.backproject(depth)[None], t, 0).astype(np.float64)
    lo, hi = metric.min(axis=(0, 1, 2)), metric.max(axis=(0, 1, 2))
    xyz01 = ((metric - lo) / (hi - lo)).astype(np.float32)
    pipe_cls = type(engine.pipe)
    original = pipe_cls.__call__

    def generate_plane(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        out.xyz = xyz01
        return out

    monkeypatch.setattr(pipe_cls, "__call__", generate_plane)
    plain = engine.run(request_)
    assert not plain.metric and plain.metric_quality == "failed" and not plain.anchored
    holes = depth.copy()
    holes[:3] = np.nan  # unknown depth is skipped
    holes[3:5] = 0.0
    res = engine.run(ImagineRequest(request_.image, request_.sequence, anchor_depth=holes))
    # the robot pixels (all outliers here, and more numerous than the anchor's) are thinned so that the
    # measurement carries the fit; without that they won it with a flat, wrong z scale
    assert res.metric and res.anchored and res.metric_quality == "anchored_good"
    np.testing.assert_allclose(res.lift.scale, hi - lo, rtol=1e-4)
    np.testing.assert_allclose(res.xyz[-1], metric[-1], atol=1e-4)
    # a depth that contradicts the generated geometry does not lift (nothing silently wrong)
    wrong = np.random.default_rng(0).uniform(0.3, 4.0, (h, w)).astype(np.float32)
    bad = engine.run(ImagineRequest(request_.image, request_.sequence, anchor_depth=wrong))
    assert not bad.metric and not bad.anchored


@pytest.mark.parametrize("depth, words", [
    (np.ones((4, 4), np.float32), "anchor_depth must be a 48x32"),
    (np.ones((32, 48), np.int32), "anchor_depth must be a 48x32"),
    (np.full((32, 48), -1.0, np.float32), "negative or infinite"),
    (np.full((32, 48), np.inf, np.float32), "negative or infinite"),
])
def test_bad_anchor_depth_is_refused_by_name(engine, request_, depth, words):
    with pytest.raises(InvalidRequest, match=words):
        engine.check_request(ImagineRequest(request_.image, request_.sequence, anchor_depth=depth))

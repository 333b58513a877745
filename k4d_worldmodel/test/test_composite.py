"""Static-scene compositing (``composite.composite_static``) and the engine's ``compose_static`` option."""
import numpy as np
import pytest

from k4d_worldmodel.composite import active_pixels, composite_static


def _scene(T=4, H=12, W=16):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (T, H, W, 3), dtype=np.uint8)
    first = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    mask = np.zeros((T, H, W), bool)
    for t in range(T):
        mask[t, 4:7, 2 + 3 * t:4 + 3 * t] = True  # a robot moving right
    xyz = rng.uniform(0.5, 2.0, (T, H, W, 3)).astype(np.float32)
    first_xyz = rng.uniform(0.5, 2.0, (H, W, 3)).astype(np.float32)
    first_xyz[0, 0] = np.nan  # unmeasured pixel
    robot_xyz = np.where(mask[..., None], np.array([0.1, 0.2, 0.7]), np.nan).astype(np.float32)
    return rgb, first, mask, xyz, first_xyz, robot_xyz


def test_active_pixels_are_robot_now_or_at_start_grown_within_frames():
    mask = np.zeros((3, 9, 9), bool)
    mask[0, 4, 4] = True
    mask[2, 1, 1] = True
    a = active_pixels(mask, 1)
    assert a[1].sum() == 9 and a[1, 3:6, 3:6].all()  # frame 0's robot, grown, stays active
    assert a[2, 0:3, 0:3].all() and a[2, 3:6, 3:6].all() and a[2].sum() == 18
    assert np.array_equal(active_pixels(mask, 0), mask | mask[:1])
    with pytest.raises(ValueError, match="margin_px"):
        active_pixels(mask, -1)
    with pytest.raises(ValueError, match="robot_mask"):
        active_pixels(mask[0], 1)


def test_swept_region_keeps_every_place_the_robot_has_been():
    """region="swept": a pixel the robot covered at frame 1 stays active at frames 2 and 3 (where it may have
    picked something up or put it down), never before frame 1; "current" drops it once the robot has left."""
    mask = np.zeros((4, 9, 9), bool)
    mask[0, 4, 4] = True
    mask[1, 1, 1] = True
    mask[3, 7, 7] = True
    swept, current = active_pixels(mask, 0, "swept"), active_pixels(mask, 0)
    assert swept[1:, 1, 1].all() and not swept[0, 1, 1] and not current[2, 1, 1]
    assert swept[:, 4, 4].all() and swept[3, 7, 7] and not swept[2, 7, 7]
    assert np.array_equal(swept, np.logical_or.accumulate(mask, 0)) and (swept >= current).all()
    rgb, first, m, xyz, first_xyz, robot_xyz = _scene()
    out_rgb, _ = composite_static(rgb, first, m, xyz, first_xyz, robot_xyz, margin_px=0, region="swept")
    np.testing.assert_array_equal(out_rgb[3][m[1]], rgb[3][m[1]])  # left at frame 2: still the model's
    with pytest.raises(ValueError, match="region"):
        active_pixels(mask, 0, "everywhere")


def test_composite_keeps_the_model_only_where_the_robot_acts():
    rgb, first, mask, xyz, first_xyz, robot_xyz = _scene()
    out_rgb, out_xyz = composite_static(rgb, first, mask, xyz, first_xyz, robot_xyz, margin_px=1)
    active = active_pixels(mask, 1)
    np.testing.assert_array_equal(out_rgb[active], rgb[active])
    np.testing.assert_array_equal(out_rgb[~active], np.broadcast_to(first, rgb.shape)[~active])
    np.testing.assert_array_equal(out_xyz[mask], robot_xyz[mask])  # the robot's pixels: kinematic pointmap
    still = ~active & np.isfinite(first_xyz).all(-1)[None]
    np.testing.assert_array_equal(out_xyz[still], np.broadcast_to(first_xyz, xyz.shape)[still])
    assert np.array_equal(out_xyz[:, 0, 0], xyz[:, 0, 0])  # unmeasured: the model's geometry stays
    rest = active & ~mask
    np.testing.assert_array_equal(out_xyz[rest], xyz[rest])
    assert out_rgb.dtype == np.uint8 and out_xyz.dtype == np.float32
    rgb_only, none = composite_static(rgb, first, mask)
    assert none is None and np.array_equal(rgb_only, composite_static(rgb, first, mask, margin_px=2)[0])


def test_composite_refuses_mismatched_inputs_by_name():
    rgb, first, mask, xyz, first_xyz, robot_xyz = _scene()
    with pytest.raises(ValueError, match="first_rgb"):
        composite_static(rgb, first[:5], mask)
    with pytest.raises(ValueError, match="robot_mask"):
        composite_static(rgb, first, mask[:2])
    with pytest.raises(ValueError, match="first_xyz"):
        composite_static(rgb, first, mask, xyz, first_xyz[:3])
    with pytest.raises(ValueError, match="robot_xyz"):
        composite_static(rgb, first, mask, xyz, first_xyz, robot_xyz[:2])


def test_engine_compose_static(model_dir):
    from k4d_worldmodel.config import WorldModelConfig
    from k4d_worldmodel.engine import ImagineEngine, ImagineRequest, sequence_from_arrays
    from k4d_worldmodel.tiny import build_tiny_pipeline, tiny_inputs

    with pytest.raises(ValueError, match="compose_margin_px"):
        WorldModelConfig(compose_margin_px=-2)
    with pytest.raises(ValueError, match="compose_region"):
        WorldModelConfig(compose_region="all")
    inp = tiny_inputs(build_tiny_pipeline("pmcond"))
    req = ImagineRequest(image=inp["image"], sequence=sequence_from_arrays(inp["robot_xyz"], inp["robot_link"]))
    results = {}
    for compose in (False, True):
        eng = ImagineEngine(WorldModelConfig(checkpoint_dir=str(model_dir), device="cpu", num_inference_steps=2,
                                             guidance_scale=1.0, seed=3, compose_static=compose))
        eng.load()
        results[compose] = eng.run(req)
    raw, comp = results[False], results[True]
    assert comp.composited and not raw.composited
    active = active_pixels(raw.robot_mask, 2)
    np.testing.assert_array_equal(comp.rgb[active], raw.rgb[active])
    np.testing.assert_array_equal(comp.rgb[~active], np.broadcast_to(inp["image"], raw.rgb.shape)[~active])
    np.testing.assert_array_equal(comp.xyz01, raw.xyz01)  # the model's own output is kept as it was

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


def _step_frame(ramp: bool):
    """One frame, 6 x 9 pixels, seen along +z: columns 0-3 at range ~1 m, columns 5-8 at ~2 m, column 4 at
    1.5 m (a one-pixel ramp, ``ramp``) or at 1 m (a sharp edge)."""
    z = np.ones((6, 9))
    z[:, 5:] = 2.0
    z[:, 4] = 1.5 if ramp else 1.0
    xyz = np.zeros((1, 6, 9, 3))
    xyz[..., 2] = z
    return xyz


def test_flying_points_drop_ramps_and_keep_both_sides_of_a_sharp_edge():
    from k4d_worldmodel.composite import flying_points

    ramp = flying_points(_step_frame(True), 0.05, "between")[0]
    assert ramp[:, 4].all() and ramp.sum() == 6  # the ramp column only: its two neighbours are both sides
    assert not flying_points(_step_frame(False), 0.05, "between").any()  # a sharp edge: nothing is flying
    either = flying_points(_step_frame(False), 0.05, "either")[0]
    assert either[:, 4].all() and either[:, 5].all() and either.sum() == 12  # both sides of the jump
    # a smooth slope (0.5 % of the range per pixel) is no ramp at 2 %; NaN points are never flagged and are no
    # neighbours
    slope = _step_frame(False)
    slope[..., 2] = 1.0 + 0.005 * np.arange(9)[None, None, :]
    assert not flying_points(slope, 0.02, "either").any()
    holes = _step_frame(True)
    holes[0, 2, 4] = np.nan
    flagged = flying_points(holes, 0.05)
    assert not flagged[0, 2, 4] and flagged[0, [0, 1, 3, 4, 5], 4].all()
    where = np.zeros((1, 6, 9), bool)
    where[0, :3] = True  # only the top half may be flagged
    assert np.array_equal(flying_points(_step_frame(True), 0.05, where=where), ramp[None] & where)


def test_flying_points_refuse_bad_settings_by_name():
    from k4d_worldmodel.composite import flying_points

    for rel in (0, 1.0, -0.1, True, float("nan")):
        with pytest.raises(ValueError, match="rel"):
            flying_points(_step_frame(True), rel)
    with pytest.raises(ValueError, match="mode"):
        flying_points(_step_frame(True), 0.05, "both")
    with pytest.raises(ValueError, match="xyz"):
        flying_points(np.zeros((6, 9, 3)), 0.05)
    with pytest.raises(ValueError, match="where"):
        flying_points(_step_frame(True), 0.05, where=np.ones((6, 9), bool))


def test_composite_filters_only_the_models_own_points():
    """With ``flying_rel`` the composite leaves NaN exactly where ``flying_points`` flags the unfiltered composite
    among the model's pixels (active, off the robot); measured and kinematic points stay as they were."""
    from k4d_worldmodel.composite import flying_points, model_pixels

    rgb, first, mask, xyz, first_xyz, robot_xyz = _scene()
    _, plain = composite_static(rgb, first, mask, xyz, first_xyz, robot_xyz, margin_px=1, region="swept")
    rgb_f, filt = composite_static(rgb, first, mask, xyz, first_xyz, robot_xyz, margin_px=1, region="swept",
                                   flying_rel=0.1)
    own = model_pixels(mask, 1, "swept")
    want = flying_points(plain, 0.1, where=own)
    assert want.any() and not want.all()  # the random model geometry has ramps; not every point is one
    assert np.array_equal(np.isnan(filt).any(-1) & ~np.isnan(plain).any(-1), want)
    np.testing.assert_array_equal(filt[~want], plain[~want])
    np.testing.assert_array_equal(filt[mask], robot_xyz[mask])
    assert np.array_equal(rgb_f, composite_static(rgb, first, mask, margin_px=1, region="swept")[0])
    with pytest.raises(ValueError, match="mode"):
        composite_static(rgb, first, mask, xyz, first_xyz, robot_xyz, flying_rel=0.1, flying_mode="x")


def test_flying_config_is_validated_by_name():
    from k4d_worldmodel.config import WorldModelConfig

    for bad in (-0.1, 1.0, float("nan"), True, "0.1"):
        with pytest.raises(ValueError, match="compose_flying_rel"):
            WorldModelConfig(compose_flying_rel=bad)
    with pytest.raises(ValueError, match="compose_flying_mode"):
        WorldModelConfig(compose_flying_mode="both")
    assert WorldModelConfig(compose_flying_rel=0.05, compose_flying_mode="either").compose_flying_rel == 0.05


def test_engine_filters_flying_points_of_the_composite(tmp_path):
    """compose_flying_rel on a metric (ray_depth) model: the points the filter removes from the engine's
    composited cloud are the model's own, the rest of the cloud and the raw output (``xyz01``) are unchanged."""
    from k4d_worldmodel.composite import model_pixels
    from k4d_worldmodel.config import WorldModelConfig
    from k4d_worldmodel.engine import ImagineEngine, ImagineRequest, sequence_from_arrays
    from k4d_worldmodel.tiny import build_tiny_pipeline, tiny_inputs

    pipe = build_tiny_pipeline("pmcond", seed=1, pointmap_encoding="ray_depth", first_xyz_condition=True)
    pipe.save_pretrained(tmp_path / "m", safe_serialization=True)
    inp = tiny_inputs(pipe)
    h, w = pipe.height, pipe.width
    v, u = np.mgrid[0:h, 0:w].astype(np.float32)
    depth = 0.9 + 0.6 * (h - v) / h  # a table seen from above
    req = ImagineRequest(image=inp["image"], sequence=sequence_from_arrays(inp["robot_xyz"], inp["robot_link"]),
                         anchor_depth=depth)
    res = {}
    for rel in (0.0, 0.02):
        eng = ImagineEngine(WorldModelConfig(checkpoint_dir=str(tmp_path / "m"), device="cpu", num_inference_steps=2,
                                             guidance_scale=1.0, seed=3, compose_static=True, compose_region="swept",
                                             compose_flying_rel=rel))
        eng.load()
        res[rel] = eng.run(req)
    plain, filt = res[0.0], res[0.02]
    assert plain.metric and filt.composited
    removed = np.isnan(filt.xyz).any(-1) & ~np.isnan(plain.xyz).any(-1)
    assert removed.any() and not (removed & ~model_pixels(plain.robot_mask, 2, "swept")).any()
    np.testing.assert_array_equal(filt.xyz[~removed], plain.xyz[~removed])
    np.testing.assert_array_equal(filt.xyz01, plain.xyz01)

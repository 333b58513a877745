"""K4DPipeline on tiny random models: shapes, determinism, CFG semantics, callbacks, input checks."""
import numpy as np
import pytest
import torch

from k4d_worldmodel.pipelines.pipeline_k4d import (
    K4DCancelled,
    downsample_robot_mask,
    normalize_robot_pointmap,
    uniform_pointmap,
)
from k4d_worldmodel.tiny import tiny_inputs


@pytest.mark.parametrize("name", ["pmcond_pipe", "full_pipe"])
def test_shapes_and_determinism(name, request):
    pipe = request.getfixturevalue(name)
    inp = tiny_inputs(pipe)
    a = pipe(**inp, num_inference_steps=2, seed=3)
    b = pipe(**inp, num_inference_steps=2, seed=3)
    c = pipe(**inp, num_inference_steps=2, seed=4, output_type="latent")
    t, h, w = pipe.num_frames, pipe.height, pipe.width
    assert a.rgb.shape == (t, h, w, 3) and a.rgb.dtype == np.uint8
    assert a.xyz.shape == (t, h, w, 3) and a.xyz.dtype == np.float32
    assert 0.0 <= a.xyz.min() and a.xyz.max() <= 1.0
    assert a.robot_mask.shape == (t, h, w) and a.robot_mask.any()
    np.testing.assert_array_equal(a.rgb, b.rgb)
    np.testing.assert_array_equal(a.xyz, b.xyz)
    assert c.rgb is None and not torch.equal(a.latents, c.latents)
    assert a.latents.shape == (1, *pipe.transformer.latent_shape)


def test_caller_arrays_not_mutated(full_pipe):
    inp = tiny_inputs(full_pipe)
    before = {k: v.copy() for k, v in inp.items()}
    noise = torch.randn(1, *full_pipe.transformer.latent_shape)
    noise0 = noise.clone()
    full_pipe(**inp, num_inference_steps=2, latents=noise, output_type="latent")
    for k in inp:
        np.testing.assert_array_equal(inp[k], before[k])
    assert torch.equal(noise, noise0)


def _capture_step0(pipe, inp, cfg_mode):
    """(cond, uncond) noise predictions of the first denoising step (batched CFG forward)."""
    outs = []
    handle = pipe.transformer.register_forward_hook(lambda mod, args, out: outs.append(out[0].detach().clone()))
    try:
        pipe(**inp, num_inference_steps=1, seed=0, guidance_scale=5.0, cfg_mode=cfg_mode, batch_cfg=True,
             output_type="latent")
    finally:
        handle.remove()
    return outs[0].chunk(2)


@pytest.mark.parametrize("name", ["pmcond_pipe", "full_pipe"])
def test_cfg_uncond_pass_ignores_robot(name, request):
    """THE CFG test: correct CFG drops the robot condition in the uncond pass; the release does not."""
    pipe = request.getfixturevalue(name)
    a, b = tiny_inputs(pipe, shift_px=0), tiny_inputs(pipe, shift_px=5)  # same image, different robot motion
    cond_a, uncond_a = _capture_step0(pipe, a, "correct")
    cond_b, uncond_b = _capture_step0(pipe, b, "correct")
    torch.testing.assert_close(uncond_a, uncond_b, rtol=0, atol=0)
    assert (cond_a - cond_b).abs().max() > 1e-4
    rel_cond_a, rel_uncond_a = _capture_step0(pipe, a, "released")
    _, rel_uncond_b = _capture_step0(pipe, b, "released")
    assert (rel_uncond_a - rel_uncond_b).abs().max() > 1e-4  # reproduces the defect
    torch.testing.assert_close(rel_cond_a, cond_a)  # the conditional pass is the same in both modes


def test_sequential_cfg_equals_batched(pmcond_pipe):
    inp = tiny_inputs(pmcond_pipe)
    a = pmcond_pipe(**inp, num_inference_steps=2, seed=0, batch_cfg=True, output_type="latent").latents
    b = pmcond_pipe(**inp, num_inference_steps=2, seed=0, batch_cfg=False, output_type="latent").latents
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_progress_callback_per_step_and_cancel(pmcond_pipe):
    inp = tiny_inputs(pmcond_pipe)
    calls = []
    pmcond_pipe(**inp, num_inference_steps=3, seed=0, output_type="latent",
                callback=lambda step, total, elapsed: calls.append((step, total, elapsed)))
    assert [c[:2] for c in calls] == [(1, 3), (2, 3), (3, 3)]
    assert all(c[2] >= 0 for c in calls) and calls[0][2] <= calls[2][2]

    seen = []

    def stop_after_two(step, total, elapsed):
        seen.append(step)
        return step < 2  # False after the 2nd step -> cancel

    with pytest.raises(K4DCancelled) as info:
        pmcond_pipe(**inp, num_inference_steps=4, seed=0, callback=stop_after_two)
    assert (info.value.step, info.value.total) == (2, 4) and seen == [1, 2]

    def raise_cancel(step, total, elapsed):
        raise K4DCancelled(step, total)

    with pytest.raises(K4DCancelled) as info:
        pmcond_pipe(**inp, num_inference_steps=4, seed=0, callback=raise_cancel)
    assert info.value.step == 1


def test_check_inputs_errors_name_argument(pmcond_pipe):
    inp = tiny_inputs(pmcond_pipe)
    bad_image = np.zeros((pmcond_pipe.height, pmcond_pipe.width + 8, 3), np.uint8)
    with pytest.raises(ValueError, match=r"image must have shape \(32, 48, 3\).*got \(32, 56, 3\)"):
        pmcond_pipe(**dict(inp, image=bad_image), num_inference_steps=1)
    with pytest.raises(ValueError, match="robot_xyz must have shape"):
        pmcond_pipe(**dict(inp, robot_xyz=inp["robot_xyz"][:5]), num_inference_steps=1)
    with pytest.raises(ValueError, match="num_inference_steps must be an integer >= 1, got 0"):
        pmcond_pipe(**inp, num_inference_steps=0)
    with pytest.raises(ValueError, match="cfg_mode must be one of"):
        pmcond_pipe(**inp, num_inference_steps=1, cfg_mode="both")
    with pytest.raises(ValueError, match="no robot pixel"):
        pmcond_pipe(**dict(inp, robot_xyz=np.full_like(inp["robot_xyz"], np.nan)), num_inference_steps=1)


def test_conditioning_helpers():
    pm = uniform_pointmap(4, 5)
    assert pm.shape == (4, 5, 3) and pm[0, 0, 2] == pytest.approx(1.0, abs=1e-6) and pm[-1, -1, 0] == 1.0
    xyz = np.full((2, 2, 2, 3), np.nan, np.float32)
    xyz[0, 0, 0] = [0.0, 1.0, 2.0]
    xyz[1, 1, 1] = [1.0, 3.0, 4.0]
    mask = np.isfinite(xyz).all(-1)
    out, lo, hi = normalize_robot_pointmap(xyz, mask)
    np.testing.assert_allclose(lo, [0, 1, 2]) and np.testing.assert_allclose(hi, [1, 3, 4])
    np.testing.assert_allclose(out[1, 1, 1], [1, 1, 1]) and np.testing.assert_allclose(out[0, 1, 1], 0)
    m = torch.zeros(1, 1, 9, 16, 16)
    m[0, 0, 0, :8] = 1  # frame 0: top half
    m[0, 0, 3, 8:] = 1  # frame 3 (latent frame 1): bottom half
    d = downsample_robot_mask(m, 4, 4, 4)
    assert d.shape == (1, 1, 3, 4, 4)
    assert d[0, 0, 0, :2].min() == 1 and d[0, 0, 0, 2:].max() == 0
    assert d[0, 0, 1, 2:].min() == 1 and d[0, 0, 2].max() == 0


def test_euler_scheduler_runs(pmcond_pipe):
    from k4d_worldmodel.pipelines.pipeline_k4d import make_scheduler

    saved = pmcond_pipe.scheduler
    try:
        pmcond_pipe.scheduler = make_scheduler("euler", flow_shift=3.0)
        out = pmcond_pipe(**tiny_inputs(pmcond_pipe), num_inference_steps=2, seed=0, output_type="latent")
        assert torch.isfinite(out.latents).all()
    finally:
        pmcond_pipe.scheduler = saved


def test_vae_autocast_changes_precision_not_results(pmcond_pipe):
    """bfloat16 autocast of the VAE (the CPU speed-up) runs the VAE in bfloat16 and stays close to float32."""
    inp = tiny_inputs(pmcond_pipe)
    seen = []
    hook = pmcond_pipe.vae.decoder.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    try:
        ref = pmcond_pipe(**inp, num_inference_steps=2, seed=3)
        pmcond_pipe.vae_autocast = torch.bfloat16
        fast = pmcond_pipe(**inp, num_inference_steps=2, seed=3)
    finally:
        pmcond_pipe.vae_autocast = None
        hook.remove()
    assert seen[0] == torch.float32 and seen[-1] == torch.bfloat16
    assert fast.rgb.dtype == np.uint8 and fast.xyz.dtype == np.float32
    assert np.abs(fast.rgb.astype(float) - ref.rgb).mean() < 3.0
    assert np.abs(fast.xyz - ref.xyz).mean() < 0.02


def test_reachable_basis_spans_what_the_transformer_outputs(pmcond_pipe):
    """The tiny transformer puts 16 channels x 2 x 2 = 64 values per token out of a 24-wide hidden state: two
    outputs differ only inside the reachable span, and a model as wide as its outputs has no unreachable part."""
    from k4d_worldmodel.models.transformer_k4d import K4DTransformer3DModel
    from k4d_worldmodel.pipelines.pipeline_k4d import complete_velocity
    from k4d_worldmodel.tiny import tiny_transformer_config

    tr = pmcond_pipe.transformer
    basis = tr.reachable_basis()
    assert basis.shape == (64, 24)
    torch.testing.assert_close(basis.T @ basis, torch.eye(24), atol=1e-5, rtol=0)
    g = torch.Generator().manual_seed(0)
    c = tr.config
    shape = (1, c.in_channels, *tr.latent_shape[1:])
    rc = torch.randn(1, *tr.robot_condition_shape, generator=g)
    img = torch.randn(1, 5, c.image_dim, generator=g)
    with torch.no_grad():
        outs = [tr(hidden_states=torch.randn(shape, generator=g), timestep=torch.tensor([500.0 + 300 * k]),
                   encoder_hidden_states_image=img, robot_condition=rc, return_dict=False)[0] for k in range(2)]
    diff = outs[0] - outs[1]
    assert diff.abs().mean() > 1e-3
    assert tr.unreachable_part(diff, basis).abs().max() < 1e-4 * diff.abs().max()
    noise = torch.randn(outs[0].shape, generator=g)
    assert tr.unreachable_part(noise, basis).square().mean() > 0.5  # 40 of 64 directions per token

    wide = K4DTransformer3DModel(**{**tiny_transformer_config("pmcond"), "attention_head_dim": 32})  # 64 -> 64
    assert wide.reachable_basis() is None and wide.unreachable_part(noise) is None
    assert complete_velocity(wide, noise, noise, 0.5) is noise


def test_completion_removes_the_noise_the_model_cannot_reach(pmcond_pipe):
    """Without completion the sampler returns the initial noise's unreachable part unchanged (up to the output
    bias); with it that part follows the schedule to 0, and the reachable part is still the model's."""
    tr = pmcond_pipe.transformer
    inp = tiny_inputs(pmcond_pipe)
    noise = torch.randn(1, *tr.latent_shape, generator=torch.Generator().manual_seed(5))
    runs = {comp: pmcond_pipe(**inp, num_inference_steps=4, latents=noise, output_type="latent",
                              complete_unreachable=comp).latents for comp in (False, True)}
    n_out = tr.unreachable_part(noise)
    kept = tr.unreachable_part(runs[False])
    corr = float((kept * n_out).sum() / (kept.norm() * n_out.norm()))
    assert corr > 0.9, corr
    assert float(tr.unreachable_part(runs[True]).square().mean()) < 1e-8 * float(n_out.square().mean())
    assert pmcond_pipe.complete_unreachable  # the default
    default = pmcond_pipe(**inp, num_inference_steps=4, latents=noise, output_type="latent").latents
    torch.testing.assert_close(default, runs[True])

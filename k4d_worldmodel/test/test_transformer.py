"""K4DTransformer3DModel: released sizes and names, shapes, no input mutation, robot drop semantics."""
import pytest
import torch

from k4d_worldmodel.models.transformer_k4d import ADDED_PARAMETER_NAMES, K4DTransformer3DModel, flops_per_forward
from k4d_worldmodel.tiny import randomize_zero_init, tiny_transformer_config


def _model(variant, seed=0):
    torch.manual_seed(seed)
    m = K4DTransformer3DModel(**tiny_transformer_config(variant)).eval()
    randomize_zero_init(m, seed)
    return m


def _inputs(m, batch=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    c = m.config
    return dict(
        hidden_states=torch.randn(batch, c.in_channels, *m.latent_shape[1:], generator=g),
        timestep=torch.full((batch,), 700.0),
        encoder_hidden_states_image=torch.randn(batch, 17, c.image_dim, generator=g),
        robot_condition=torch.randn(batch, *m.robot_condition_shape, generator=g),
    )


@pytest.mark.parametrize("variant,tokens,has_domain", [("full", 624, True), ("pmcond", 312, False)])
def test_released_14b_config_sizes(variant, tokens, has_domain):
    with torch.device("meta"):
        m = K4DTransformer3DModel(variant=variant)  # defaults = released 14B 49x480x720
    sd = m.state_dict()
    assert m.num_robot_tokens == tokens
    assert m.latent_shape == (16, 13, 60, 180)
    assert tuple(sd["patch_embedding_arm.weight"].shape) == (128, 20, 1, 15, 15)
    assert tuple(sd["arm_pos_emb"].shape) == (1, 128, 13, 4, 6)
    assert tuple(sd["arm_patch_proj.weight"].shape) == (5120, 128)
    assert tuple(sd["arm_cond_proj.weight"].shape) == (16, 16)
    assert tuple(sd["learnable_domain_embeddings"].shape) == (2, 5120)
    assert ("arm_domain_emb" in sd) == has_domain
    assert set(ADDED_PARAMETER_NAMES[variant]) <= set(sd)
    assert tuple(sd["patch_embedding.weight"].shape) == (5120, 36, 1, 2, 2)
    # analytic FLOPs of one pass over 35,100 tokens (anchors: ~1.9e15)
    assert 1.8e15 < flops_per_forward(m.config) < 2.0e15


def test_arm_grid_derives_from_config():
    cfg = dict(tiny_transformer_config("full"), num_latent_frames=5, latent_height=6, latent_width=12)
    m = K4DTransformer3DModel(**cfg)
    assert m.arm_token_grid == (5, 3, 4) and m.num_robot_tokens == 120
    assert tuple(m.arm_pos_emb.shape) == (1, 8, 5, 3, 4)
    with pytest.raises(ValueError, match="latent_width=10"):
        K4DTransformer3DModel(**dict(cfg, latent_width=10))


@pytest.mark.parametrize("variant", ["full", "pmcond"])
def test_shapes_and_no_input_mutation(variant):
    m = _model(variant)
    inp = _inputs(m, batch=2)
    before = {k: v.clone() for k, v in inp.items()}
    with torch.no_grad():
        out = m(**inp).sample
    assert out.shape == (2, 16, *m.latent_shape[1:])
    for k in inp:
        assert torch.equal(inp[k], before[k]), f"forward modified {k}"


def test_rotary_positions_shared_between_halves():
    m = _model("full")
    cos, sin = m.rope(torch.zeros(1, 36, *m.latent_shape[1:]))
    f, h, w2 = 3, 2, 6  # post-patch grid, w2 = both halves
    cos = cos.reshape(f, h, w2, -1)
    assert torch.equal(cos[:, :, : w2 // 2], cos[:, :, w2 // 2 :])
    assert not torch.equal(cos[:, :, 0], cos[:, :, 1])


@pytest.mark.parametrize("variant", ["full", "pmcond"])
def test_robot_drop_makes_output_independent_of_robot(variant):
    m = _model(variant)
    a, b = _inputs(m, seed=0), _inputs(m, seed=0)
    b["robot_condition"] = torch.randn(b["robot_condition"].shape, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        cond = [m(**x).sample for x in (a, b)]
        drop = [m(**x, robot_token_scale=0.0, robot_injection_scale=0.0).sample for x in (a, b)]
        twice = [m(**x, robot_injection_scale=2.0).sample for x in (a, b)]
    assert not torch.allclose(cond[0], cond[1])
    torch.testing.assert_close(drop[0], drop[1], rtol=0, atol=0)
    assert not torch.allclose(twice[0], twice[1])


def test_injection_scale_two_equals_adding_robot_latent_twice():
    """Released defect: the uncond pass sees arm_cond_proj(latent) added twice into the condition channels."""
    m = _model("full")
    x = _inputs(m)
    with torch.no_grad():
        ref_in = x["hidden_states"].clone()
        feat = m.arm_cond_proj(x["robot_condition"][:, 4:, 1:].movedim(1, -1)).movedim(-1, 1)
        ref_in[:, 16:20, 1:] = x["robot_condition"][:, :4, 1:]
        ref_in[:, 20:, 1:] += feat  # first (conditional) call, in place as released
        ref = m(**dict(x, hidden_states=ref_in)).sample  # second call adds it again
        got = m(**x, robot_injection_scale=2.0).sample
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def test_batched_equals_single():
    m = _model("pmcond")
    x = _inputs(m, batch=2)
    with torch.no_grad():
        batched = m(**x, robot_token_scale=torch.tensor([1.0, 0.0]), robot_injection_scale=torch.tensor([1.0, 0.0])).sample
        one = m(**{k: v[:1] for k, v in x.items()}).sample
        two = m(**{k: v[1:] for k, v in x.items()}, robot_token_scale=0.0, robot_injection_scale=0.0).sample
    torch.testing.assert_close(batched, torch.cat([one, two]), rtol=1e-5, atol=1e-5)


def test_wrong_robot_condition_shape_names_it():
    m = _model("pmcond")
    x = _inputs(m)
    x["robot_condition"] = torch.zeros(1, 20, 3, 4, 12)
    with pytest.raises(ValueError, match="robot_condition must have shape"):
        m(**x)

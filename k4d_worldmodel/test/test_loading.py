"""Loading: released layout (base + added_weights + LoRA) and save_pretrained round trip; clear errors."""
import copy
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from k4d_worldmodel.config import WorldModelConfig
from k4d_worldmodel.loading import CheckpointError, attach_lora_adapter, load_pipeline, load_released
from k4d_worldmodel.tiny import save_released_layout, tiny_inputs, tiny_transformer_config

RANK, ALPHA = 4, 2.0
K4D_TINY = {k: tiny_transformer_config()[k] for k in ("num_latent_frames", "latent_height", "latent_width",
                                                      "arm_patch_size", "arm_dim")}


@pytest.fixture(scope="module")
def released(tmp_path_factory, full_pipe):
    root = tmp_path_factory.mktemp("released")
    lora = save_released_layout(full_pipe, root / "base", root / "ckpt", lora_rank=RANK, seed=7)
    ref = copy.deepcopy(full_pipe)  # "the saved model": base weights + LoRA (scale alpha / r) as a peft adapter
    attach_lora_adapter(ref.transformer, {k.removeprefix("transformer."): v for k, v in lora.items()}, RANK, ALPHA)
    return root, ref


def _latents(pipe):
    pipe.set_progress_bar_config(disable=True)
    return pipe(**tiny_inputs(pipe), num_inference_steps=2, seed=0, output_type="latent").latents


def _load(root, **kw):
    args = dict(variant="full", lora_rank=RANK, lora_alpha=ALPHA, **K4D_TINY)
    args.update(kw)
    return load_released(root / "base", root / "ckpt", **args)


@pytest.mark.parametrize("lora_mode", ["fuse", "peft"])
def test_released_layout_reproduces_saved_model(released, full_pipe, lora_mode):
    root, ref = released
    assert not (root / "base" / "text_encoder").exists()  # listed in model_index.json but never needed
    pipe = _load(root, lora_mode=lora_mode)
    expected = _latents(ref)
    torch.testing.assert_close(_latents(pipe), expected, rtol=1e-4, atol=1e-4)
    assert (expected - _latents(full_pipe)).abs().max() > 1e-3  # the LoRA does change the model


def test_save_pretrained_round_trip(tmp_path, pmcond_pipe):
    pmcond_pipe.save_pretrained(tmp_path / "k4d")
    # bit-exact round trip: the VAE in float32 like the fixture (no bfloat16 autocast on a bf16-capable CPU)
    pipe = load_pipeline(WorldModelConfig(checkpoint_dir=str(tmp_path / "k4d"), variant="pmcond", device="cpu",
                                          vae_autocast="off"))
    assert type(pipe.transformer).__name__ == "K4DTransformer3DModel" and pipe.vae_autocast is None
    from k4d_worldmodel.models.vae_norm import use_fast_vae_norm

    torch.testing.assert_close(_latents(pipe), _latents(pmcond_pipe), rtol=1e-4, atol=1e-5)  # fast VAE norm on CPU
    use_fast_vae_norm(pipe.vae, enable=False)  # the fixture's stock norm: bit-exact
    torch.testing.assert_close(_latents(pipe), _latents(pmcond_pipe), rtol=0, atol=0)
    with pytest.raises(ValueError, match="variant is 'full' but the checkpoint .* is 'pmcond'"):
        load_pipeline(WorldModelConfig(checkpoint_dir=str(tmp_path / "k4d"), variant="full", device="cpu"))


def test_a_vae_of_another_model_is_refused_at_load_naming_both(tmp_path, pmcond_pipe):
    """A saved pipeline whose VAE was swapped for one of another latent size loads no further than the check
    (it used to load and then fail inside every rollout with a bare channel-shape error)."""
    from diffusers import AutoencoderKLWan

    pmcond_pipe.save_pretrained(tmp_path / "k4d")
    shutil.rmtree(tmp_path / "k4d" / "vae")
    AutoencoderKLWan(base_dim=3, z_dim=8, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                     temperal_downsample=[False, True, True], latents_mean=[0.0] * 8,
                     latents_std=[1.0] * 8).save_pretrained(tmp_path / "k4d" / "vae")
    z = pmcond_pipe.vae.config.z_dim
    with pytest.raises(CheckpointError, match=rf"k4d: the transformer \(in_channels {2 * z + 4}, out_channels {z}\) "
                                              r"does not fit the VAE \(z_dim 8"):
        load_pipeline(WorldModelConfig(checkpoint_dir=str(tmp_path / "k4d"), variant="pmcond", device="cpu"))


def test_missing_file_is_named(released, tmp_path):
    root, _ = released
    broken = tmp_path / "r"
    shutil.copytree(root, broken)
    (broken / "ckpt" / "pytorch_lora_weights.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="pytorch_lora_weights.safetensors"):
        _load(broken)
    with pytest.raises(FileNotFoundError, match="neither a K4DPipeline"):
        load_pipeline(WorldModelConfig(checkpoint_dir=str(tmp_path), device="cpu"))


def _edit(root, tmp_path, rel, fn):
    broken = tmp_path / "r"
    shutil.copytree(root, broken)
    sd = load_file(str(broken / rel))
    fn(sd)
    save_file(sd, str(broken / rel))
    return broken


def test_missing_added_key_is_named(released, tmp_path):
    broken = _edit(released[0], tmp_path, "ckpt/added_weights.safetensors", lambda sd: sd.pop("arm_domain_emb"))
    with pytest.raises(CheckpointError, match="missing key 'arm_domain_emb'.*pmcond"):
        _load(broken)


def test_wrong_variant_is_explained(released):
    with pytest.raises(CheckpointError, match="unexpected key 'arm_domain_emb' for variant 'pmcond'"):
        _load(released[0], variant="pmcond")


def test_shape_mismatch_is_named(released, tmp_path):
    def shrink(sd):
        sd["arm_pos_emb"] = sd["arm_pos_emb"][:, :, :2].contiguous()

    broken = _edit(released[0], tmp_path, "ckpt/added_weights.safetensors", shrink)
    with pytest.raises(CheckpointError, match=r"'arm_pos_emb' has shape \[1, 8, 2, 2, 2\].*expects \[1, 8, 3, 2, 2\]"):
        _load(broken)


def test_missing_lora_and_base_keys_are_named(released, tmp_path):
    key = "transformer.blocks.1.attn2.to_out.0.lora_B.weight"
    broken = _edit(released[0], tmp_path, "ckpt/pytorch_lora_weights.safetensors", lambda sd: sd.pop(key))
    with pytest.raises(CheckpointError, match=f"missing key '{key}'"):
        _load(broken)
    with pytest.raises(CheckpointError, match="lora_A.weight' has shape \\[4, 24\\].*expects \\[8, 24\\]"):
        _load(released[0], lora_rank=8)
    broken2 = _edit(released[0], tmp_path / "b", "base/transformer/diffusion_pytorch_model.safetensors",
                    lambda sd: sd.pop("proj_out.weight"))
    with pytest.raises(CheckpointError, match="missing key 'proj_out.weight'"):
        _load(broken2)


@pytest.mark.parametrize("channel_first,images,bias", [(True, False, False), (True, True, True), (False, True, False)])
def test_fast_vae_norm_is_the_stock_norm(channel_first, images, bias):
    from diffusers.models.autoencoders.autoencoder_kl_wan import WanRMS_norm

    from k4d_worldmodel.models.vae_norm import FastWanRMSNorm

    stock = WanRMS_norm(16, channel_first=channel_first, images=images, bias=bias)
    with torch.no_grad():
        stock.gamma.normal_()
        if bias:
            stock.bias.normal_()
    fast = copy.deepcopy(stock)
    fast.__class__ = FastWanRMSNorm
    g = torch.Generator().manual_seed(0)
    shape = ((2, 16, 3, 5, 7) if not images else (2, 16, 5, 7)) if channel_first else (2, 3, 5, 16)
    x = torch.randn(shape, generator=g) * 3.0
    if channel_first:  # one all-zero vector among the others: divided by eps, not by zero
        x[0, :, 0] = 0.0
    else:
        x[0, 0, 0, :] = 0.0
    torch.testing.assert_close(fast(x), stock(x), rtol=1e-5, atol=1e-6)
    xb = x.bfloat16()
    assert fast(xb).dtype == stock(xb).dtype
    torch.testing.assert_close(fast(xb).float(), stock(xb).float(), rtol=2e-2, atol=2e-2)
    z = torch.zeros(shape)
    assert torch.isfinite(fast(z)).all() and torch.equal(fast(z), stock(z))


def test_cpu_pipeline_uses_the_fast_vae_norm_with_the_same_weights(tmp_path, pmcond_pipe):
    from diffusers.models.autoencoders.autoencoder_kl_wan import WanRMS_norm

    from k4d_worldmodel.models.vae_norm import FastWanRMSNorm, use_fast_vae_norm

    pmcond_pipe.save_pretrained(tmp_path / "k4d")
    pipe = load_pipeline(WorldModelConfig(checkpoint_dir=str(tmp_path / "k4d"), device="cpu", vae_autocast="off"))
    norms = [m for m in pipe.vae.modules() if isinstance(m, WanRMS_norm)]
    assert norms and all(type(m) is FastWanRMSNorm for m in norms)
    assert pipe.vae.state_dict().keys() == pmcond_pipe.vae.state_dict().keys()  # saved files stay stock
    video = torch.rand(1, 3, 5, pipe.height, 2 * pipe.width, generator=torch.Generator().manual_seed(1))
    fast = pipe.encode_video(video)
    assert use_fast_vae_norm(pipe.vae, enable=False) == len(norms)
    assert all(type(m) is WanRMS_norm for m in norms)
    torch.testing.assert_close(fast, pipe.encode_video(video), rtol=1e-4, atol=1e-5)

# Copyright 2026 k4d developers. Apache-2.0.
"""Tiny random K4D models for tests and demos (CPU, seconds), and a writer for the RELEASED checkpoint layout.

    from k4d_worldmodel.tiny import build_tiny_pipeline, tiny_inputs
    pipe = build_tiny_pipeline("pmcond", seed=0)
    out = pipe(**tiny_inputs(pipe), num_inference_steps=2, seed=0)

Tiny geometry: 9 frames of 32 x 48 pixels per modality -> latent [1, 16, 3, 4, 12], 24 latent tokens,
robot-token grid (3, 2, 2) -> 24 ("full") / 12 ("pmcond") robot tokens, 17 CLIP tokens.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from .models.transformer_k4d import ADDED_PARAMETER_NAMES, WAN_CONFIG_KEYS, K4DTransformer3DModel
from .pipelines.pipeline_k4d import K4DPipeline, make_scheduler

LORA_TARGETS = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0",
                "attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0")


def tiny_transformer_config(variant: str = "pmcond") -> dict:
    """Constructor kwargs of a 2-layer, 24-wide K4D transformer for 9 x 32 x 48 videos."""
    return dict(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=36, out_channels=16,
        text_dim=8, freq_dim=16, ffn_dim=32, num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
        eps=1e-6, image_dim=8, added_kv_proj_dim=24, rope_max_seq_len=32, pos_embed_seq_len=None,
        variant=variant, num_latent_frames=3, latent_height=4, latent_width=6, arm_patch_size=(1, 2, 3), arm_dim=8,
        mask_channels=4,
    )


def randomize_zero_init(transformer: K4DTransformer3DModel, seed: int = 0, std: float = 0.1) -> None:
    """Give the zero-initialised K4D parameters random values (so robot conditioning has an effect)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        params = dict(transformer.named_parameters())
        for name in ("learnable_domain_embeddings", "arm_patch_proj.weight", "arm_patch_proj.bias",
                     "arm_cond_proj.weight", "arm_cond_proj.bias"):
            if name not in params:  # "jointemb" has no arm_cond_proj
                continue
            p = params[name]
            p.copy_(torch.randn(p.shape, generator=g) * std)


def build_tiny_components(variant: str = "pmcond", seed: int = 0, randomize_robot: bool = True) -> dict:
    """Tiny random ``vae``, ``transformer``, ``scheduler``, ``image_encoder``, ``image_processor`` (float32, CPU)."""
    from diffusers import AutoencoderKLWan
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(seed)
    vae = AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           temperal_downsample=[False, True, True]).eval()
    transformer = K4DTransformer3DModel(**tiny_transformer_config(variant)).eval()
    if randomize_robot:
        randomize_zero_init(transformer, seed)
    image_encoder = CLIPVisionModel(CLIPVisionConfig(
        hidden_size=8, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2, image_size=32,
        patch_size=8, projection_dim=8,
    )).eval()
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return dict(vae=vae, transformer=transformer, scheduler=make_scheduler("unipc"), image_encoder=image_encoder,
                image_processor=image_processor)


def build_tiny_pipeline(variant: str = "pmcond", seed: int = 0, randomize_robot: bool = True,
                        batch_cfg: bool = True, pointmap_encoding=None, first_xyz_condition: bool = False,
                        condition_fill: str = "zeros") -> K4DPipeline:
    """A tiny random [`K4DPipeline`] on CPU with progress bars disabled (``pointmap_encoding``,
    ``first_xyz_condition`` and ``condition_fill`` as the pipeline's config)."""
    pipe = K4DPipeline(**build_tiny_components(variant, seed, randomize_robot), batch_cfg=batch_cfg,
                       pointmap_encoding=pointmap_encoding, first_xyz_condition=first_xyz_condition,
                       condition_fill=condition_fill)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_inputs(pipe: K4DPipeline, seed: int = 0, shift_px: int = 0) -> dict:
    """Synthetic inputs matching ``pipe``: a random first frame and a robot "bar" moving right over the frames.

    Returns ``dict(image (H, W, 3) uint8, robot_xyz (T, H, W, 3) float32 metres NaN background,
    robot_link (T, H, W) int16 -1 background)``; ``shift_px`` moves the robot to get a different robot input.
    """
    rng = np.random.default_rng(seed)
    t, h, w = pipe.num_frames, pipe.height, pipe.width
    image = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    xyz = np.full((t, h, w, 3), np.nan, dtype=np.float32)
    link = np.full((t, h, w), -1, dtype=np.int16)
    v, u = np.mgrid[0:h, 0:w]
    for k in range(t):
        x0 = 4 + k + shift_px
        sel = (u >= x0) & (u < x0 + 10) & (v >= 6) & (v < 26)
        z = 0.8 + 0.01 * k + 0.002 * v
        xyz[k][sel] = np.stack([(u - w / 2) * z / 40.0, (v - h / 2) * z / 40.0, z], -1)[sel]
        link[k][sel] = (v[sel] >= 16).astype(np.int16)
    return dict(image=image, robot_xyz=xyz, robot_link=link)


def random_lora_state_dict(transformer: K4DTransformer3DModel, rank: int = 4, seed: int = 0,
                           std: float = 0.05) -> dict[str, torch.Tensor]:
    """Random LoRA in the released file's key format: ``transformer.blocks.N.attnK.to_x.lora_{A,B}.weight``."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for i, block in enumerate(transformer.blocks):
        for target in LORA_TARGETS:
            layer = block.get_submodule(target)
            prefix = f"transformer.blocks.{i}.{target}"
            out[f"{prefix}.lora_A.weight"] = torch.randn(rank, layer.in_features, generator=g) * std
            out[f"{prefix}.lora_B.weight"] = torch.randn(layer.out_features, rank, generator=g) * std
    return out


def save_released_layout(pipe: K4DPipeline, base_dir: str | os.PathLike, checkpoint_dir: str | os.PathLike,
                         lora_rank: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    """Write ``pipe`` the way Kinema4D is distributed, with a random LoRA on top.

    ``base_dir`` gets a Wan2.1-I2V diffusers folder (``model_index.json``, ``transformer/`` with the Wan weights
    only and a ``WanTransformer3DModel`` config, ``vae/``, ``image_encoder/``, ``image_processor/``,
    ``scheduler/``; ``model_index.json`` also lists ``text_encoder``/``tokenizer`` whose folders are absent, since
    K4D never loads them). ``checkpoint_dir`` gets ``added_weights.safetensors`` (the Kinema4D modules) and
    ``pytorch_lora_weights.safetensors`` (random LoRA of rank ``lora_rank`` in the released key format).

    Returns the LoRA state dict written (keys with the ``transformer.`` prefix).
    """
    base, ckpt = Path(base_dir), Path(checkpoint_dir)
    ckpt.mkdir(parents=True, exist_ok=True)
    tr = pipe.transformer
    added = set(ADDED_PARAMETER_NAMES[tr.config.variant])
    sd = tr.state_dict()
    (base / "transformer").mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in sd.items() if k not in added},
              str(base / "transformer" / "diffusion_pytorch_model.safetensors"))
    wan_cfg = {k: tr.config[k] for k in WAN_CONFIG_KEYS}
    wan_cfg["patch_size"] = list(wan_cfg["patch_size"])
    wan_cfg.update({"_class_name": "WanTransformer3DModel", "_diffusers_version": "0.33.0.dev0"})
    (base / "transformer" / "config.json").write_text(json.dumps(wan_cfg, indent=2))
    pipe.vae.save_pretrained(base / "vae")
    pipe.image_encoder.save_pretrained(base / "image_encoder")
    if pipe.image_processor is not None:
        pipe.image_processor.save_pretrained(base / "image_processor")
    pipe.scheduler.save_pretrained(base / "scheduler")
    (base / "model_index.json").write_text(json.dumps({
        "_class_name": "WanImageToVideoPipeline", "_diffusers_version": "0.33.0.dev0",
        "image_encoder": ["transformers", "CLIPVisionModel"], "image_processor": ["transformers", "CLIPImageProcessor"],
        "scheduler": ["diffusers", "UniPCMultistepScheduler"], "text_encoder": ["transformers", "UMT5EncoderModel"],
        "tokenizer": ["transformers", "T5TokenizerFast"], "transformer": ["diffusers", "WanTransformer3DModel"],
        "vae": ["diffusers", "AutoencoderKLWan"],
    }, indent=2))
    save_file({k: sd[k].contiguous() for k in sorted(added)}, str(ckpt / "added_weights.safetensors"))
    lora = random_lora_state_dict(tr, rank=lora_rank, seed=seed)
    save_file(lora, str(ckpt / "pytorch_lora_weights.safetensors"))
    return lora

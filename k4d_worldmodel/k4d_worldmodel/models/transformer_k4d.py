# Copyright 2026 k4d developers. Apache-2.0.
"""Kinema4D-compatible 4D diffusion transformer on top of diffusers' ``WanTransformer3DModel``.

The model denoises an RGB video and a world-pointmap video that are concatenated along the latent width
(``[B, 16, F, h, 2w]``: left half RGB, right half XYZ), conditioned on the first frame (CLIP tokens + a
VAE-encoded condition video) and on the robot (its pointmap/RGB latents and occupancy mask). It reproduces
the parameter names and the forward semantics of the released Kinema4D code (``mutianxu/Kinema4D``,
``WanTransformer3DModelDembSameRope``), with two deliberate differences:

* the forward pass never writes into caller tensors (the release adds the robot latent into its input in place,
  which makes the pipeline's unconditional pass see the robot features twice), and
* the robot condition can be dropped per batch element (``robot_token_scale`` / ``robot_injection_scale``), so
  a conditional and an unconditional pass can share one batched forward.

Added modules (released names; sizes for the 14B 480x720 model, ``D = num_attention_heads * attention_head_dim``):

==============================  ===============================  =============================================
name                            shape                            role
==============================  ===============================  =============================================
``patch_embedding_arm``         Conv3d(20 -> 128, k=s=(1,15,15))  robot condition (4 mask + 16 latent) -> tokens
``arm_ln``                      LayerNorm(128)                   followed by GELU
``arm_pos_emb``                 [1, 128, 13, 4, 6]               learned position of each robot token (one half)
``arm_domain_emb``              [2, 128]                         RGB-half / XYZ-half robot tokens ("full" only)
``arm_patch_proj``              Linear(128 -> D), zero-init      robot tokens -> cross-attention context
``arm_cond_proj``               Linear(16 -> 16), zero-init      robot latent added to the condition channels
``learnable_domain_embeddings`` [2, D]                           row 0 RGB-half tokens, row 1 XYZ-half tokens
==============================  ===============================  =============================================

The ``"jointemb"`` variant is k4d's version of the paper's "emb." ablation: the robot enters as its joint vector
per video frame instead of as pointmaps. ``joint_embed`` (Linear(num_joints -> arm_dim)) -> ``arm_ln`` -> GELU ->
``+ arm_pos_emb`` ([1, T, arm_dim], one learned position per video frame) -> ``arm_patch_proj`` gives T robot
tokens; nothing is injected into the condition channels (no ``arm_cond_proj``). Everything else is shared, so a
pointmap-conditioned model converts to it with its blocks kept (``convert_variant`` in training).
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn

from diffusers.configuration_utils import register_to_config
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.modeling_outputs import Transformer2DModelOutput
# ModelMixin must be importable from this module: DiffusionPipeline.from_pretrained finds a custom component's
# loader by looking up the base-class names (ModelMixin, ...) in the component's module.
from diffusers.models.modeling_utils import ModelMixin  # noqa: F401
from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed, WanTransformer3DModel
from diffusers.utils import apply_lora_scale

VARIANTS = ("full", "pmcond", "jointemb")

# Parameters that Kinema4D adds to the Wan2.1-I2V transformer, by variant (names as in added_weights.safetensors).
ADDED_PARAMETER_NAMES = {
    "full": (
        "learnable_domain_embeddings",
        "patch_embedding_arm.weight",
        "patch_embedding_arm.bias",
        "arm_ln.weight",
        "arm_ln.bias",
        "arm_pos_emb",
        "arm_domain_emb",
        "arm_patch_proj.weight",
        "arm_patch_proj.bias",
        "arm_cond_proj.weight",
        "arm_cond_proj.bias",
    ),
}
ADDED_PARAMETER_NAMES["pmcond"] = tuple(k for k in ADDED_PARAMETER_NAMES["full"] if k != "arm_domain_emb")
ADDED_PARAMETER_NAMES["jointemb"] = ("learnable_domain_embeddings", "joint_embed.weight", "joint_embed.bias",
                                     "arm_ln.weight", "arm_ln.bias", "arm_pos_emb", "arm_patch_proj.weight",
                                     "arm_patch_proj.bias")

# Base Wan2.1 config keys (everything the parent constructor takes).
WAN_CONFIG_KEYS = (
    "patch_size",
    "num_attention_heads",
    "attention_head_dim",
    "in_channels",
    "out_channels",
    "text_dim",
    "freq_dim",
    "ffn_dim",
    "num_layers",
    "cross_attn_norm",
    "qk_norm",
    "eps",
    "image_dim",
    "added_kv_proj_dim",
    "rope_max_seq_len",
    "pos_embed_seq_len",
)


def _apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved channel pairs of ``x`` ([B, N, heads, head_dim]) by the angles in ``cos``/``sin``."""
    # computed in float32 (the tables are float64; promoting [B, N, heads, head_dim] to float64 wastes memory)
    x1, x2 = x.float().unflatten(-1, (-1, 2)).unbind(-1)
    cos = cos[..., 0::2].float()
    sin = sin[..., 1::2].float()
    out = torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2)
    return out.type_as(x)


def _trunc_normal_parameter(*shape: int, std: float = 0.02) -> nn.Parameter:
    """Truncated-normal parameter drawn in float32, stored in the default dtype (as the release initialises them)."""
    value = torch.empty(shape, dtype=torch.float32)
    nn.init.trunc_normal_(value, std=std)
    return nn.Parameter(value.to(torch.get_default_dtype()))


class K4DAttnProcessor:
    r"""Attention processor for Kinema4D blocks.

    Identical maths to diffusers' ``WanAttnProcessor`` except for how the cross-attention context is split: the
    context is ``[CLIP image tokens | robot tokens]`` and the last ``num_robot_tokens`` entries are the robot tokens
    (they take the place of Wan's 512 UMT5 text tokens). Image tokens go through ``add_k_proj``/``add_v_proj`` and
    their attention output is added to that of the robot tokens, as in Wan I2V.

    Supports diffusers attention backends (``transformer.set_attention_backend("_native_cudnn")`` etc.) through
    ``dispatch_attention_fn``.
    """

    _attention_backend = None
    _parallel_config = None

    def __init__(self, num_robot_tokens: int | None = None):
        self.num_robot_tokens = num_robot_tokens

    def __call__(
        self,
        attn: nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        # hidden_states: batch, seq_len, inner_dim; encoder_hidden_states: batch, ctx_len, inner_dim
        context_img = None
        if attn.add_k_proj is not None and encoder_hidden_states is not None:
            split = encoder_hidden_states.shape[1] - self.num_robot_tokens
            context_img = encoder_hidden_states[:, :split]
            encoder_hidden_states = encoder_hidden_states[:, split:]
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states

        if getattr(attn, "fused_projections", False):
            if not attn.is_cross_attention:
                query, key, value = attn.to_qkv(hidden_states).chunk(3, dim=-1)
            else:
                query = attn.to_q(hidden_states)
                key, value = attn.to_kv(context).chunk(2, dim=-1)
        else:
            query, key, value = attn.to_q(hidden_states), attn.to_k(context), attn.to_v(context)

        query = attn.norm_q(query).unflatten(2, (attn.heads, -1))  # batch, seq_len, heads, head_dim
        key = attn.norm_k(key).unflatten(2, (attn.heads, -1))
        value = value.unflatten(2, (attn.heads, -1))

        if rotary_emb is not None:
            query = _apply_rotary(query, *rotary_emb)
            key = _apply_rotary(key, *rotary_emb)

        out_img = None
        if context_img is not None:
            if getattr(attn, "fused_projections", False):
                key_img, value_img = attn.to_added_kv(context_img).chunk(2, dim=-1)
            else:
                key_img, value_img = attn.add_k_proj(context_img), attn.add_v_proj(context_img)
            key_img = attn.norm_added_k(key_img).unflatten(2, (attn.heads, -1))
            value_img = value_img.unflatten(2, (attn.heads, -1))
            out_img = dispatch_attention_fn(
                query, key_img, value_img, attn_mask=None, dropout_p=0.0, is_causal=False,
                backend=self._attention_backend, parallel_config=None,
            )
            out_img = out_img.flatten(2, 3).type_as(query)

        out = dispatch_attention_fn(
            query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False,
            backend=self._attention_backend,
            parallel_config=(self._parallel_config if encoder_hidden_states is None else None),
        )
        out = out.flatten(2, 3).type_as(query)  # batch, seq_len, inner_dim
        if out_img is not None:
            out = out + out_img
        out = attn.to_out[0](out)
        return attn.to_out[1](out)


class K4DRotaryPosEmbed(WanRotaryPosEmbed):
    """Wan 3D RoPE computed for one modality (half the latent width) and repeated for the other half.

    An RGB token and the XYZ token at the same (frame, row, column) therefore share their rotary position.
    Returns ``(cos, sin)``, each ``[1, F' * H' * W', 1, head_dim]`` float64 (float32 on MPS).
    """

    def forward(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _, _, num_frames, height, width = hidden_states.shape
        p_t, p_h, p_w = self.patch_size
        ppf, pph, ppw = num_frames // p_t, height // p_h, (width // 2) // p_w
        sizes = [self.t_dim, self.h_dim, self.w_dim]
        outs = []
        for table in (self.freqs_cos, self.freqs_sin):
            f_t, f_h, f_w = table.split(sizes, dim=1)
            grid = torch.cat(
                [
                    f_t[:ppf].view(ppf, 1, 1, -1).expand(ppf, pph, ppw, -1),
                    f_h[:pph].view(1, pph, 1, -1).expand(ppf, pph, ppw, -1),
                    f_w[:ppw].view(1, 1, ppw, -1).expand(ppf, pph, ppw, -1),
                ],
                dim=-1,
            )  # ppf, pph, ppw, head_dim
            grid = torch.cat([grid, grid], dim=2)  # same positions for the RGB and the XYZ half
            outs.append(grid.reshape(1, ppf * pph * 2 * ppw, 1, -1))
        return outs[0], outs[1]


class K4DTransformer3DModel(WanTransformer3DModel):
    r"""Kinema4D 4D diffusion transformer (Wan2.1-I2V + robot conditioning), diffusers ``ModelMixin``.

    Inherits every Wan2.1 parameter (so a ``Wan2.1-I2V-14B-480P-Diffusers/transformer`` folder loads into it) and
    adds the Kinema4D modules listed in the module docstring under their released names.

    Args (in addition to [`~diffusers.WanTransformer3DModel`]'s; defaults are the 14B I2V 480p model):
        variant (`str`, defaults to `"full"`):
            ``"full"``: robot tokens from both halves (robot RGB | robot pointmap latents, 2 x 312 = 624 tokens),
            robot latent injected into latent frames 1..F-1 on the full width. ``"pmcond"``: robot tokens from the
            pointmap half only (312 tokens), injected into all F latent frames on the XYZ half; no ``arm_domain_emb``.
            ``"jointemb"``: the "emb." ablation, one robot token per video frame from the joint vector (module
            docstring); ``robot_condition`` is then `[B, T, num_joints]` joint positions.
        num_latent_frames, latent_height, latent_width (`int`, defaults to 13, 60, 90):
            Latent grid of ONE modality (49 frames x 480 x 720 pixels). The arm-token grid is derived from them.
        arm_patch_size (`tuple[int]`, defaults to `(1, 15, 15)`): kernel = stride of ``patch_embedding_arm``.
        arm_dim (`int`, defaults to 128): robot-token bottleneck width (released: ``attention_head_dim``).
        mask_channels (`int`, defaults to 4): mask channels of the input (= VAE temporal factor).
        num_joints (`int`, defaults to 8): joint-vector length of the "jointemb" variant (unused by the others).

    Input channels are ``[noise (out_channels) | mask (mask_channels) | condition latent (out_channels)]``, so
    ``in_channels == 2 * out_channels + mask_channels`` (36 for the 14B model).
    """

    _keep_in_fp32_modules = ["rope", "time_embedder", "scale_shift_table", "norm1", "norm2", "norm3"]
    _no_split_modules = ["WanTransformerBlock"]
    # robot tokens replace text tokens, so the parent's context-parallel plan (written for 512 text tokens) is not used
    _cp_plan = None
    # inherited Wan modules that K4D's forward never runs (kept so that Wan and released checkpoints load):
    # training freezes them, since data-parallel training refuses parameters that get no gradient
    unused_modules = ("condition_embedder.text_embedder",)

    @register_to_config
    def __init__(
        self,
        patch_size: tuple[int, ...] = (1, 2, 2),
        num_attention_heads: int = 40,
        attention_head_dim: int = 128,
        in_channels: int = 36,
        out_channels: int = 16,
        text_dim: int = 4096,
        freq_dim: int = 256,
        ffn_dim: int = 13824,
        num_layers: int = 40,
        cross_attn_norm: bool = True,
        qk_norm: str | None = "rms_norm_across_heads",
        eps: float = 1e-6,
        image_dim: int | None = 1280,
        added_kv_proj_dim: int | None = 5120,
        rope_max_seq_len: int = 1024,
        pos_embed_seq_len: int | None = None,
        variant: str = "full",
        num_latent_frames: int = 13,
        latent_height: int = 60,
        latent_width: int = 90,
        arm_patch_size: tuple[int, ...] = (1, 15, 15),
        arm_dim: int = 128,
        mask_channels: int = 4,
        num_joints: int = 8,
    ) -> None:
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        if in_channels != 2 * out_channels + mask_channels:
            raise ValueError(
                f"in_channels must be 2 * out_channels + mask_channels = {2 * out_channels + mask_channels}, "
                f"got in_channels={in_channels}"
            )
        if image_dim is None or added_kv_proj_dim is None:
            raise ValueError(f"K4D is image-conditioned: image_dim and added_kv_proj_dim are required, got "
                             f"image_dim={image_dim}, added_kv_proj_dim={added_kv_proj_dim}")
        if variant == "jointemb" and not (isinstance(num_joints, int) and num_joints >= 1):
            raise ValueError(f"num_joints must be an integer >= 1 for variant 'jointemb', got {num_joints!r}")
        for name, size, patch in (
            ("num_latent_frames", num_latent_frames, arm_patch_size[0]),
            ("latent_height", latent_height, arm_patch_size[1]),
            ("latent_width", latent_width, arm_patch_size[2]),
        ):
            if size % patch:
                raise ValueError(f"{name}={size} must be divisible by arm_patch_size {tuple(arm_patch_size)}")
        for name, size, patch in (
            ("num_latent_frames", num_latent_frames, patch_size[0]),
            ("latent_height", latent_height, patch_size[1]),
            ("latent_width", latent_width, patch_size[2]),
        ):
            if size % patch:
                raise ValueError(f"{name}={size} must be divisible by patch_size {tuple(patch_size)}")
        super().__init__(
            patch_size=patch_size, num_attention_heads=num_attention_heads, attention_head_dim=attention_head_dim,
            in_channels=in_channels, out_channels=out_channels, text_dim=text_dim, freq_dim=freq_dim,
            ffn_dim=ffn_dim, num_layers=num_layers, cross_attn_norm=cross_attn_norm, qk_norm=qk_norm, eps=eps,
            image_dim=image_dim, added_kv_proj_dim=added_kv_proj_dim, rope_max_seq_len=rope_max_seq_len,
            pos_embed_seq_len=pos_embed_seq_len,
        )
        inner_dim = num_attention_heads * attention_head_dim

        # 1. Rotary positions shared by the RGB and XYZ halves
        self.rope = K4DRotaryPosEmbed(attention_head_dim, patch_size, rope_max_seq_len)

        # 2. Modality (domain) embedding of the latent tokens: row 0 RGB half, row 1 XYZ half
        self.learnable_domain_embeddings = nn.Parameter(torch.zeros(2, inner_dim))

        # 3. Robot-token encoder ("arm"): (mask | latent) -> Conv3d -> LayerNorm -> GELU -> +pos(+domain) -> Linear
        #    ("jointemb": joint vector -> Linear -> LayerNorm -> GELU -> +pos -> Linear)
        if variant == "jointemb":
            self.joint_embed = nn.Linear(num_joints, arm_dim)
        else:
            self.patch_embedding_arm = nn.Conv3d(
                mask_channels + out_channels, arm_dim, kernel_size=tuple(arm_patch_size), stride=tuple(arm_patch_size)
            )
        self.arm_ln = nn.LayerNorm(arm_dim)
        self.arm_act = nn.GELU()
        if variant == "jointemb":
            self.arm_pos_emb = _trunc_normal_parameter(1, self.num_video_frames, arm_dim)
        else:
            self.arm_pos_emb = _trunc_normal_parameter(1, arm_dim, *self.arm_token_grid)
        if variant == "full":
            self.arm_domain_emb = _trunc_normal_parameter(2, arm_dim)
        self.arm_patch_proj = nn.Linear(arm_dim, inner_dim)
        zero_init = [self.arm_patch_proj]
        # 4. Robot latent injected into the condition channels (pointmap variants)
        if variant != "jointemb":
            self.arm_cond_proj = nn.Linear(out_channels, out_channels)
            zero_init.append(self.arm_cond_proj)
        for layer in zero_init:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

        # 5. Cross-attention context = [CLIP image tokens | robot tokens]
        for block in self.blocks:
            block.attn2.set_processor(K4DAttnProcessor(self.num_robot_tokens))

    # ------------------------------------------------------------------------------------------------- geometry
    @property
    def arm_token_grid(self) -> tuple[int, int, int]:
        """Robot-token grid of one modality ``(frames, rows, cols)``; (13, 4, 6) for the 14B model."""
        c = self.config
        return (
            c.num_latent_frames // c.arm_patch_size[0],
            c.latent_height // c.arm_patch_size[1],
            c.latent_width // c.arm_patch_size[2],
        )

    @property
    def num_video_frames(self) -> int:
        """Video frames T of the latent grid: ``(num_latent_frames - 1) * mask_channels + 1`` (49 for the 14B)."""
        c = self.config
        return (c.num_latent_frames - 1) * c.mask_channels + 1

    @property
    def num_robot_tokens(self) -> int:
        """Robot tokens in the cross-attention context: 624 ("full") or 312 ("pmcond") for the 14B model; T for
        "jointemb"."""
        if self.config.variant == "jointemb":
            return self.num_video_frames
        n = math.prod(self.arm_token_grid)
        return 2 * n if self.config.variant == "full" else n

    @property
    def latent_shape(self) -> tuple[int, int, int, int]:
        """Shape of the denoised latent without batch: ``(out_channels, F, h, 2 * w)``."""
        c = self.config
        return (c.out_channels, c.num_latent_frames, c.latent_height, 2 * c.latent_width)

    def reachable_basis(self) -> torch.Tensor | None:
        """Orthonormal basis `(P, r)` (float32) of the per-token outputs the model can produce, or None when it
        can produce every direction.

        A token's output is ``proj_out(h)``: ``P = out_channels * prod(patch_size)`` values from an ``inner_dim``
        hidden state, so it lies in the ``rank(proj_out.weight)``-dimensional column space of that weight plus the
        bias. With ``P > inner_dim`` (k4d's z_dim-32 configs: 512 values from 256) the other directions are out of
        reach: the flow velocity's component there is never predicted, and a sampler leaves the initial noise in
        them untouched. The 14B model (5,120 -> 64) and v2 (256 -> 256) have none. A patch vector is ordered
        ``(p_t, p_h, p_w, channel)``, as ``proj_out``'s output (see ``unreachable_part``)."""
        w = self.proj_out.weight.detach().float()
        if w.shape[1] >= w.shape[0]:  # not rank-limited by its shape; a rank-deficient square weight is not a design
            return None
        u, s, _ = torch.linalg.svd(w, full_matrices=False)
        rank = int((s > s[0] * 1e-6).sum()) if s.numel() and float(s[0]) > 0 else 0
        return u[:, :rank]

    def unreachable_part(self, latents: torch.Tensor, basis: torch.Tensor | None = None) -> torch.Tensor | None:
        """The component of ``latents`` `[B, out_channels, F, h, W]` outside the span of the model's outputs
        (``reachable_basis``), same shape and float32; None for a model that can produce every direction.
        ``basis`` saves recomputing ``reachable_basis`` inside a loop."""
        basis = self.reachable_basis() if basis is None else basis
        if basis is None:
            return None
        pt, ph, pw = self.config.patch_size
        b, c, f, h, w = latents.shape
        grid = (f // pt, h // ph, w // pw)
        x = latents.float().reshape(b, c, grid[0], pt, grid[1], ph, grid[2], pw)
        v = x.permute(0, 2, 4, 6, 3, 5, 7, 1).reshape(b, -1, pt * ph * pw * c)  # the inverse of _unpatchify
        basis = basis.to(v.device)
        return self._unpatchify(v - (v @ basis) @ basis.T, grid)

    def _unpatchify(self, tokens: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        """`[B, F' * h' * w', p_t * p_h * p_w * C]` per-token outputs (``proj_out``'s order) -> `[B, C, F, h, w]`
        on the ``grid`` `(F', h', w')` of tokens."""
        pt, ph, pw = self.config.patch_size
        x = tokens.reshape(tokens.shape[0], *grid, pt, ph, pw, -1)
        return x.permute(0, 7, 1, 4, 2, 5, 3, 6).flatten(6, 7).flatten(4, 5).flatten(2, 3)

    @property
    def robot_condition_shape(self) -> tuple[int, int, int, int]:
        """Shape of ``robot_condition`` without batch: ``(mask + latent channels, F, h, w_cond)``; ``(T, num_joints)``
        for "jointemb"."""
        c = self.config
        if c.variant == "jointemb":
            return (self.num_video_frames, c.num_joints)
        width = 2 * c.latent_width if c.variant == "full" else c.latent_width
        return (c.mask_channels + c.out_channels, c.num_latent_frames, c.latent_height, width)

    @staticmethod
    def _per_sample(value: torch.Tensor | float | None, batch: int, ref: torch.Tensor) -> torch.Tensor:
        """Broadcast a scalar or ``(B,)`` value to ``(B,)`` on ``ref``'s device/dtype (None -> ones)."""
        if value is None:
            value = 1.0
        value = torch.as_tensor(value, device=ref.device, dtype=ref.dtype)
        if value.ndim == 0:
            value = value.expand(batch)
        if value.shape != (batch,):
            raise ValueError(f"per-sample scale must be a scalar or have shape ({batch},), got {tuple(value.shape)}")
        return value

    # -------------------------------------------------------------------------------------------------- forward
    @apply_lora_scale("attention_kwargs")
    def _inject_robot_latent(self, hidden_states: torch.Tensor, robot_condition: torch.Tensor,
                             inject_scale: torch.Tensor) -> torch.Tensor:
        """Pointmap variants: the robot mask replaces the mask channels and ``arm_cond_proj(robot latent)`` is added
        to the condition latent, in the variant's region; returns a new tensor (the input is never written)."""
        c = self.config
        lat, msk = c.out_channels, c.mask_channels
        width = hidden_states.shape[-1]
        if c.variant == "full":
            region = (slice(None), slice(None), slice(1, None), slice(None), slice(None))
            robot_region = robot_condition[:, :, 1:]
        else:
            region = (slice(None), slice(None), slice(None), slice(None), slice(width // 2, None))
            robot_region = robot_condition
        robot_mask, robot_latent = robot_region[:, :msk], robot_region[:, msk:]
        injected = self.arm_cond_proj(robot_latent.movedim(1, -1)).movedim(-1, 1)  # B, 16, F_r, h, w_r
        injected = injected * inject_scale.view(-1, 1, 1, 1, 1)
        active = (inject_scale != 0).view(-1, 1, 1, 1, 1)
        region_in = hidden_states[region]  # B, 36, F_r, h, w_r (a view; never written)
        region_out = torch.cat(
            [
                region_in[:, :lat],
                torch.where(active, robot_mask, region_in[:, lat : lat + msk]),  # robot mask replaces the mask
                region_in[:, lat + msk :] + injected,
            ],
            dim=1,
        )
        x = hidden_states.clone()
        x[region] = region_out  # batch, in_channels, F, h, 2w
        return x

    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states_image: torch.Tensor,
        robot_condition: torch.Tensor,
        robot_token_scale: torch.Tensor | float | None = None,
        robot_injection_scale: torch.Tensor | float | None = None,
        return_dict: bool = True,
        attention_kwargs: dict[str, Any] | None = None,
    ) -> Transformer2DModelOutput | tuple[torch.Tensor]:
        r"""Predict the flow-matching velocity ``noise - x0`` for RGB|XYZ latents. Never modifies its inputs.

        Args:
            hidden_states (`torch.Tensor` of shape `[B, in_channels, F, h, 2w]`):
                ``[noisy latent (16) | mask (4) | condition latent (16)]``; left half of the width RGB, right XYZ.
            timestep (`torch.Tensor` of shape `[B]`): flow-matching timesteps in [0, num_train_timesteps].
            encoder_hidden_states_image (`torch.Tensor` of shape `[B, 257, image_dim]`):
                CLIP penultimate hidden states of the first RGB frame.
            robot_condition (`torch.Tensor` of shape `[B, 20, F, h, w_cond]`):
                channels 0..3 robot mask (tiled x2 along width for "full"), channels 4..19 robot latents
                (robot RGB | normalised robot pointmap for "full", w_cond = 2w; pointmap only for "pmcond", w_cond = w).
                "jointemb": `[B, T, num_joints]` joint positions per video frame.
            robot_token_scale (`float` or `torch.Tensor` of shape `[B]`, *optional*, defaults to 1):
                multiplies the robot cross-attention tokens (after ``arm_patch_proj``); 0 replaces them by zeros.
            robot_injection_scale (`float` or `torch.Tensor` of shape `[B]`, *optional*, defaults to 1):
                multiplies the ``arm_cond_proj`` robot latent added to the condition channels. Where it is 0 the
                injection is skipped entirely: neither the added latent nor the robot mask (which otherwise
                replaces the mask channels) enter. 2 reproduces the released pipeline's unconditional pass.
            return_dict (`bool`, defaults to `True`): return a ``Transformer2DModelOutput`` instead of a tuple.
            attention_kwargs (`dict`, *optional*): ``{"scale": s}`` scales peft LoRA layers (unfused adapters).

        Returns:
            ``sample`` of shape `[B, out_channels, F, h, 2w]`, dtype of ``hidden_states``.
        """
        c = self.config
        batch_size, num_channels, num_frames, height, width = hidden_states.shape
        if num_channels != c.in_channels or (num_frames, height, width) != self.latent_shape[1:]:
            raise ValueError(
                f"hidden_states must have shape [B, {c.in_channels}, {', '.join(map(str, self.latent_shape[1:]))}] "
                f"(set by the config), got {list(hidden_states.shape)}"
            )
        if tuple(robot_condition.shape) != (batch_size, *self.robot_condition_shape):
            raise ValueError(
                f"robot_condition must have shape {[batch_size, *self.robot_condition_shape]} for variant "
                f"{c.variant!r}, got {list(robot_condition.shape)}"
            )
        p_t, p_h, p_w = c.patch_size
        post_f, post_h, post_w = num_frames // p_t, height // p_h, width // p_w
        robot_condition = robot_condition.to(hidden_states.dtype)
        token_scale = self._per_sample(robot_token_scale, batch_size, hidden_states)
        inject_scale = self._per_sample(robot_injection_scale, batch_size, hidden_states)

        # 1. Robot latent injection into the condition channels (out of place; the release does this in place)
        #    "full": latent frames 1..F-1, whole width. "pmcond": all frames, XYZ half of the width. "jointemb": none.
        if c.variant == "jointemb":
            x = hidden_states
        else:
            x = self._inject_robot_latent(hidden_states, robot_condition, inject_scale)

        # 2. Rotary positions (computed for one half, repeated for the other)
        rotary_emb = self.rope(x)

        # 3. Patch embedding + modality embedding
        x = self.patch_embedding(x)  # batch, inner_dim, F', h', 2w'
        domain = self.learnable_domain_embeddings.to(x.dtype)
        domain = torch.cat(
            [domain[0:1].expand(post_w // 2, -1), domain[1:2].expand(post_w - post_w // 2, -1)], dim=0
        )  # 2w', inner_dim
        x = x + domain.t()[None, :, None, None, :]
        x = x.flatten(2).transpose(1, 2).contiguous()  # batch, seq_len = F' * h' * 2w', inner_dim

        # 4. Timestep and image conditioning (the UMT5 text path of Wan is not used)
        emb = self.condition_embedder
        t_freq = emb.timesteps_proj(timestep)
        time_dtype = next(iter(emb.time_embedder.parameters())).dtype
        if t_freq.dtype != time_dtype and time_dtype != torch.int8:
            t_freq = t_freq.to(time_dtype)
        temb = emb.time_embedder(t_freq).type_as(x)  # batch, inner_dim
        timestep_proj = emb.time_proj(emb.act_fn(temb)).unflatten(1, (6, -1))  # batch, 6, inner_dim
        image_tokens = emb.image_embedder(encoder_hidden_states_image)  # batch, 257, inner_dim

        # 5. Robot tokens, which take the place of the text tokens
        if c.variant == "jointemb":
            r = self.arm_act(self.arm_ln(self.joint_embed(robot_condition))) + self.arm_pos_emb  # batch, T, arm_dim
            r = r.movedim(-1, 1)  # batch, arm_dim, T (flattened to tokens below)
        else:
            r = self.patch_embedding_arm(robot_condition)  # batch, arm_dim, f_a, h_a, w_a
            r = self.arm_act(self.arm_ln(r.movedim(1, -1))).movedim(-1, 1)
            if c.variant == "full":
                half = r.shape[-1] // 2
                r = torch.cat(
                    [
                        r[..., :half] + self.arm_pos_emb + self.arm_domain_emb[0].view(1, -1, 1, 1, 1),
                        r[..., half:] + self.arm_pos_emb + self.arm_domain_emb[1].view(1, -1, 1, 1, 1),
                    ],
                    dim=-1,
                )
            else:
                r = r + self.arm_pos_emb
        r = self.arm_patch_proj(r.flatten(2).transpose(1, 2))  # batch, num_robot_tokens, inner_dim
        r = r * token_scale.to(r.dtype).view(-1, 1, 1)
        context = torch.cat([image_tokens, r.to(image_tokens.dtype)], dim=1)  # batch, 257 + num_robot, inner_dim

        # 6. Transformer blocks
        for block in self.blocks:
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                x = self._gradient_checkpointing_func(block, x, context, timestep_proj, rotary_emb)
            else:
                x = block(x, context, timestep_proj, rotary_emb)

        # 7. Output norm, projection & unpatchify
        shift, scale = (self.scale_shift_table.to(temb.device) + temb.unsqueeze(1)).chunk(2, dim=1)
        x = (self.norm_out(x.float()) * (1 + scale.to(x.device)) + shift.to(x.device)).type_as(x)
        x = self.proj_out(x)  # batch, seq_len, out_channels * p_t * p_h * p_w
        output = self._unpatchify(x, (post_f, post_h, post_w))

        if not return_dict:
            return (output,)
        return Transformer2DModelOutput(sample=output)

    # ---------------------------------------------------------------------------------------------- utilities
    @classmethod
    def config_from_wan(cls, wan_config: dict[str, Any], **k4d_overrides: Any) -> dict[str, Any]:
        """K4D constructor kwargs from a Wan2.1 ``transformer/config.json`` dict plus K4D-specific overrides."""
        cfg = {k: wan_config[k] for k in WAN_CONFIG_KEYS if k in wan_config}
        if "patch_size" in cfg:
            cfg["patch_size"] = tuple(cfg["patch_size"])
        cfg.update(k4d_overrides)
        return cfg

    def added_state_dict(self) -> dict[str, torch.Tensor]:
        """The Kinema4D-added parameters only (the content of ``added_weights.safetensors``)."""
        sd = self.state_dict()
        return {k: sd[k] for k in ADDED_PARAMETER_NAMES[self.config.variant]}


def flops_per_forward(config: Any, batch_size: int = 1, num_image_tokens: int = 257) -> float:
    """Analytic matmul FLOPs of one K4D transformer forward (multiply-add = 2 FLOPs).

    Counts the blocks' linear layers (self-attn QKV/out, cross-attn Q/out and K/V of image and robot context, FFN)
    and the attention score/value products; ignores norms, RoPE, embeddings and the output head (<0.5 %).
    ``config`` is the model config (dict-like or attribute-like).
    """
    get = config.get if isinstance(config, dict) else (lambda k: getattr(config, k))
    d = get("num_attention_heads") * get("attention_head_dim")
    p = get("patch_size")
    n = (get("num_latent_frames") // p[0]) * (get("latent_height") // p[1]) * (2 * get("latent_width") // p[2])
    ap = get("arm_patch_size")
    n_arm = (get("num_latent_frames") // ap[0]) * (get("latent_height") // ap[1]) * (get("latent_width") // ap[2])
    n_robot = 2 * n_arm if get("variant") == "full" else n_arm
    if get("variant") == "jointemb":
        n_robot = (get("num_latent_frames") - 1) * get("mask_channels") + 1
    ffn = get("ffn_dim")
    per_layer = (
        2 * n * d * 3 * d  # self-attn q, k, v
        + 2 * 2 * n * n * d  # self-attn scores + weighted sum
        + 2 * n * d * d  # self-attn out
        + 2 * n * d * d  # cross-attn q
        + 2 * (n_robot + num_image_tokens) * d * 2 * d  # cross-attn k, v (robot) + add_k, add_v (image)
        + 2 * 2 * n * (n_robot + num_image_tokens) * d  # cross-attn scores + weighted sums
        + 2 * n * d * d  # cross-attn out
        + 2 * n * d * ffn * 2  # feed-forward up + down
    )
    return float(batch_size * get("num_layers") * per_layer)

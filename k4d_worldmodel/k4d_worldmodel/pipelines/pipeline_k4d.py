# Copyright 2026 k4d developers. Apache-2.0.
"""Kinema4D-compatible image + robot-pointmap -> RGB + world-pointmap video pipeline (diffusers).

Example (tiny random model, CPU)::

    from k4d_worldmodel.tiny import build_tiny_pipeline, tiny_inputs
    pipe = build_tiny_pipeline("pmcond")
    out = pipe(**tiny_inputs(pipe), num_inference_steps=2, seed=0)
    out.rgb.shape, out.xyz.shape   # (T, H, W, 3) uint8, (T, H, W, 3) float32 in [0, 1]

The pipeline only assembles parts (VAE, transformer, scheduler, CLIP image encoder); it holds no weights itself.
There is no text encoder: Kinema4D replaces the text tokens by robot tokens.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKLWan, DiffusionPipeline, FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler
from diffusers.utils import BaseOutput, logging
from diffusers.utils.torch_utils import randn_tensor
from transformers import CLIPVisionModel

from ..models.transformer_k4d import K4DTransformer3DModel
from ..config import CONDITION_FILLS
from ..pointmap_encoding import PointmapEncoding

logger = logging.get_logger(__name__)

# Extra normalisation of pointmap latents, applied after the VAE mean/std normalisation (Kinema4D release;
# 4DNeX used -0.13 / 1.70): z_pm = (z - POINTMAP_LATENT_MEAN) / POINTMAP_LATENT_STD.
POINTMAP_LATENT_MEAN = -0.17
POINTMAP_LATENT_STD = 1.36

# OpenAI CLIP preprocessing constants (used when no image_processor is registered).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

CFG_MODES = ("correct", "released")

# Colours (uint8 RGB) given to robot link ids when no robot RGB video is supplied ("full" variant only). Link id k
# gets row k % len. Mid-to-light, non-black tones (black would read as background, as in the release's mask videos).
DEFAULT_LINK_PALETTE = np.array(
    [
        [180, 180, 185], [150, 150, 155], [200, 200, 205], [120, 125, 130], [170, 175, 180], [140, 140, 145],
        [210, 210, 215], [110, 110, 115], [190, 190, 195], [160, 160, 165],
    ],
    dtype=np.uint8,
)


class TransformerGraph:
    """The transformer's forward for one rollout shape, recorded once as a CUDA graph and replayed at every step.

    The small default model is launch-bound on a GPU: a denoising step is hundreds of small kernels, each
    launched from Python. Replaying a recorded graph launches them all at once. The graph reads its inputs from
    fixed buffers: [`set_condition`] copies a rollout's image tokens and robot condition in, and each call copies
    the step's latent input and timestep. The weights are read in place, so in-place updates (``load_state_dict``,
    training) are seen; a parameter that is *replaced* or a patched ``forward`` needs a new graph, which
    [`K4DPipeline`] makes by keying its graphs on the parameters' storage and the forward in use.
    """

    def __init__(self, forward: Callable[..., Any], latent_in: torch.Tensor, t: torch.Tensor,
                 image_tokens: torch.Tensor, robot_condition: torch.Tensor, scales: list[tuple[float, float]]):
        device = latent_in.device
        self.latent_in = latent_in.clone()
        self.t = t.detach().clone().to(device)
        self.image_tokens = image_tokens.clone()
        self.robot_condition = robot_condition.clone()
        n = len(scales)
        # every tensor the graph reads must live as long as the graph: a freed one is reused by the allocator
        self.token_scale = torch.tensor([s[0] for s in scales], device=device)
        self.injection_scale = torch.tensor([s[1] for s in scales], device=device)

        def run() -> torch.Tensor:
            return forward(
                hidden_states=self.latent_in.expand(n, -1, -1, -1, -1),
                timestep=self.t.expand(n),
                encoder_hidden_states_image=self.image_tokens.expand(n, -1, -1),
                robot_condition=self.robot_condition.expand(n, *self.robot_condition.shape[1:]),
                robot_token_scale=self.token_scale,
                robot_injection_scale=self.injection_scale,
                return_dict=False,
            )[0]

        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):  # warm-up outside the graph: autotuning and lazy allocations
            for _ in range(2):
                run()
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.out = run()

    def set_condition(self, image_tokens: torch.Tensor, robot_condition: torch.Tensor) -> None:
        self.image_tokens.copy_(image_tokens)
        self.robot_condition.copy_(robot_condition)

    def __call__(self, latent_in: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.latent_in.copy_(latent_in)
        self.t.copy_(t)
        self.graph.replay()
        return self.out.clone()


class K4DCancelled(RuntimeError):
    """Raised by [`K4DPipeline.__call__`] when the progress callback cancels the rollout between two steps.

    Attributes: ``step`` (denoising steps completed), ``total`` (steps requested).
    """

    def __init__(self, step: int, total: int):
        super().__init__(f"K4D rollout cancelled after {step}/{total} denoising steps")
        self.step = step
        self.total = total


@dataclass
class K4DPipelineOutput(BaseOutput):
    """Result of one K4D rollout.

    Attributes:
        rgb: `(T, H, W, 3)` uint8, imagined RGB frames (frame 0 reconstructs the input frame). None for
            ``output_type="latent"``.
        xyz: `(T, H, W, 3)` float32 in [0, 1], imagined world pointmap in the model's pointmap code
            (``pipe.pointmap_encoding``: per-axis min-max of the scene for ``minmax``, lifted to metres by
            [`k4d_worldmodel.lifting`]; ``ray_depth`` decodes to metres directly). None for "latent".
        robot_mask: `(T, H, W)` bool, robot pixels of the conditioning pointmap.
        robot_xyz_lo, robot_xyz_hi: `(3,)` float64, metres, camera frame: the bounds that mapped the robot
            pointmap to [0, 1] for conditioning.
        latents: `[1, C, F, h, 2w]` float32 denoised latents (RGB | normalised XYZ), on CPU.
        timings: seconds per stage (``encode_s``, ``denoise_s``, ``decode_s``, ``total_s``) and ``steps``.
    """

    rgb: np.ndarray | None
    xyz: np.ndarray | None
    robot_mask: np.ndarray
    robot_xyz_lo: np.ndarray
    robot_xyz_hi: np.ndarray
    latents: torch.Tensor
    timings: dict[str, float] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------ conditioning maths
def uniform_pointmap(height: int, width: int) -> np.ndarray:
    """The fixed dummy pointmap Kinema4D puts next to the first RGB frame, `(H, W, 3)` float32 in [0, 1].

    x grows left to right, y top to bottom, z from 1 (top row) to 0 (bottom row).
    """
    x = np.linspace(0.0, 1.0, width)
    y = np.linspace(0.0, 1.0, height)
    xv, yv = np.meshgrid(x, y)
    z = 1.0 - np.linspace(0.0, 1.0, height)[:, None].repeat(width, axis=1)
    z = (z - z.min()) / (np.ptp(z) + 1e-8)
    return np.stack([xv, yv, z], axis=-1).astype(np.float32)


def normalize_robot_pointmap(
    xyz: np.ndarray, mask: np.ndarray, bounds: tuple[np.ndarray, np.ndarray] | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Kinema4D conditioning transform of a robot pointmap sequence (the ``minmax`` pointmap encoding).

    Args:
        xyz: `(T, H, W, 3)` float, metres, camera frame; NaN (or anything) off-robot.
        mask: `(T, H, W)` bool, robot pixels.
        bounds: optional ``(lo (3,), hi (3,))`` metres; default: per-axis min/max over all robot pixels of the sequence.

    Returns:
        ``(xyz01 (T, H, W, 3) float32 in [0, 1] with background 0, lo (3,), hi (3,))``.
    """
    return PointmapEncoding().encode_robot(xyz, mask, bounds)


def render_robot_rgb(
    link: np.ndarray | None, mask: np.ndarray, link_colors: np.ndarray | None = None
) -> np.ndarray:
    """Flat-colour robot video for the "full" variant when no robot RGB is available: `(T, H, W, 3)` uint8.

    Robot pixel with link id k gets ``link_colors[k % len(link_colors)]`` (default [`DEFAULT_LINK_PALETTE`]);
    without link ids every robot pixel gets row 0. Background is 0. This only approximates the real-camera robot
    appearance the released model was trained on; prefer the "pmcond" variant when no robot RGB exists.
    """
    colors = DEFAULT_LINK_PALETTE if link_colors is None else np.asarray(link_colors, dtype=np.uint8)
    out = np.zeros((*mask.shape, 3), dtype=np.uint8)
    if link is None:
        out[mask] = colors[0]
    else:
        out[mask] = colors[np.asarray(link)[mask].astype(np.int64) % len(colors)]
    return out


def downsample_robot_mask(mask: torch.Tensor, height: int, width: int, temporal: int) -> torch.Tensor:
    """Robot pixel mask -> latent grid, as in the release.

    ``mask`` `[B, 1, T, H, W]` float (0/1) -> `[B, 1, 1 + (T - 1) / temporal, height, width]`: every frame is
    resized with nearest neighbour; frame 0 is kept and frames 1.. are max-pooled in groups of ``temporal``.
    """
    b, c, t, h, w = mask.shape
    resized = F.interpolate(mask.reshape(b * c * t, 1, h, w), size=(height, width), mode="nearest")
    resized = resized.reshape(b, c, t, height, width)
    rest = resized[:, :, 1:].reshape(b, c, (t - 1) // temporal, temporal, height, width).amax(dim=3)
    return torch.cat([resized[:, :, :1], rest], dim=2)


def _to_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


class K4DPipeline(DiffusionPipeline):
    r"""Kinema4D-compatible 4D world model: first RGB frame + robot pointmap sequence -> future RGB + world pointmaps.

    Components:
        vae ([`AutoencoderKLWan`]): Wan2.1 video VAE (spatial x8, temporal x4, 16 latent channels; k4d's
            small ones: x4 spatial, ``z_dim`` 16 or 32). Below, C is its ``z_dim``.
        transformer ([`K4DTransformer3DModel`]): the 4D DiT; its config fixes frames and resolution.
        scheduler ([`UniPCMultistepScheduler`] with ``use_flow_sigmas``/``prediction_type="flow_prediction"``,
            ``flow_shift=3.0`` as in Wan2.1-I2V-480P, or [`FlowMatchEulerDiscreteScheduler`]).
        image_encoder ([`~transformers.CLIPVisionModel`]): first-frame tokens (penultimate hidden states).
        image_processor ([`~transformers.CLIPImageProcessor`], optional): CLIP preprocessing; if None a torch-only
            equivalent (bicubic resize of the short side, centre crop, CLIP mean/std) is used.
        batch_cfg (`bool`, defaults to True): run the conditional and unconditional passes as one forward of batch 2
            (faster on a GPU with room for it; set False to halve peak activation memory).
        pointmap_encoding (`dict` or `str`, defaults to ``"minmax"``): how pointmaps become the [0, 1] videos the
            VAE encodes ([`~k4d_worldmodel.pointmap_encoding.PointmapEncoding`]): the release's per-clip
            ``minmax`` or the fixed, metric ``ray_depth``.
        first_xyz_condition (`bool`, defaults to False): the model was trained to take the measured first-frame
            pointmap (``first_xyz``) in the XYZ half of the condition video instead of the release's uniform
            dummy (metric encodings only). Without ``first_xyz`` such a model still gets the dummy.
        condition_fill (`str`, defaults to ``"zeros"``): what the condition video holds after its first frame.
            ``"zeros"`` is the release's (frames 1.. are 0 in [-1, 1]); ``"first_frame"`` (k4d) repeats the first
            frame (RGB and XYZ halves) there, so every latent frame sees the still scene in its own channels and
            the transformer only has to model what changes. The mask still marks frame 0 alone as given.
    """

    model_cpu_offload_seq = "image_encoder->transformer->vae"
    _optional_components = ["image_processor"]
    # autocast dtype for the VAE's encode/decode (None = off); ``loading.load_pipeline`` sets it from
    # ``WorldModelConfig.vae_autocast`` (bfloat16 on CPUs with native bfloat16)
    vae_autocast: torch.dtype | None = None
    # replay the transformer's forward as a CUDA graph on cuda devices (``TransformerGraph``); set by
    # ``loading.load_pipeline`` from ``WorldModelConfig.cuda_graphs``. Ignored on other devices.
    cuda_graphs: bool = False
    # complete the velocity in the output directions the transformer cannot reach (``complete_unreachable`` in
    # ``__call__``); only acts on a model with such directions (``K4DTransformer3DModel.reachable_basis``)
    complete_unreachable: bool = True

    def __init__(
        self,
        vae: AutoencoderKLWan,
        transformer: K4DTransformer3DModel,
        scheduler: UniPCMultistepScheduler | FlowMatchEulerDiscreteScheduler,
        image_encoder: CLIPVisionModel,
        image_processor: Any = None,
        batch_cfg: bool = True,
        pointmap_encoding: Any = None,
        first_xyz_condition: bool = False,
        condition_fill: str = "zeros",
    ):
        super().__init__()
        self.register_modules(
            vae=vae, transformer=transformer, scheduler=scheduler, image_encoder=image_encoder,
            image_processor=image_processor,
        )
        encoding = PointmapEncoding.from_config(pointmap_encoding)
        if first_xyz_condition and not encoding.metric:
            raise ValueError("first_xyz_condition needs a metric pointmap_encoding (e.g. 'ray_depth'): the "
                             "'minmax' normalisation of a clip is not known from its first frame")
        if condition_fill not in CONDITION_FILLS:
            raise ValueError(f"condition_fill must be one of {CONDITION_FILLS}, got {condition_fill!r}")
        if vae is not None and transformer is not None:  # a mismatched pair would fail only inside every rollout
            z, tc = int(vae.config.z_dim), transformer.config
            want_in = 2 * z + int(tc.mask_channels)  # noisy latent + (mask, condition latent)
            if int(tc.out_channels) != z or int(tc.in_channels) != want_in:
                raise ValueError(f"the transformer (in_channels {tc.in_channels}, out_channels {tc.out_channels}) "
                                 f"does not fit the VAE (z_dim {z}: out_channels {z}, in_channels {want_in}); the "
                                 "two were trained for different models")
        self.register_to_config(batch_cfg=bool(batch_cfg), pointmap_encoding=encoding.to_dict(),
                                first_xyz_condition=bool(first_xyz_condition), condition_fill=condition_fill)
        self._pointmap_encoding = encoding
        self.vae_scale_factor_temporal = self.vae.config.scale_factor_temporal
        self.vae_scale_factor_spatial = self.vae.config.scale_factor_spatial

    # ------------------------------------------------------------------------------------------- geometry
    @property
    def condition_fill(self) -> str:
        """What the condition video holds after frame 0 (``CONDITION_FILLS``); "zeros" for a pipeline saved
        before the option existed."""
        return self.config.get("condition_fill", "zeros")

    @property
    def num_frames(self) -> int:
        """Video frames T per rollout (49 for the released model), fixed by the transformer config."""
        return (self.transformer.config.num_latent_frames - 1) * self.vae_scale_factor_temporal + 1

    @property
    def height(self) -> int:
        """Frame height H in pixels (480 for the released model)."""
        return self.transformer.config.latent_height * self.vae_scale_factor_spatial

    @property
    def width(self) -> int:
        """Frame width W of ONE modality in pixels (720 for the released model)."""
        return self.transformer.config.latent_width * self.vae_scale_factor_spatial

    @property
    def variant(self) -> str:
        return self.transformer.config.variant

    @property
    def pointmap_encoding(self) -> PointmapEncoding:
        """The model's pointmap code (``minmax`` for the release; ``ray_depth`` output is metric as decoded)."""
        return self._pointmap_encoding

    # --------------------------------------------------------------------------------------------- checks
    def check_inputs(
        self,
        image: Any,
        robot_xyz: Any,
        robot_link: Any,
        robot_rgb: Any,
        link_colors: Any,
        xyz_bounds: Any,
        num_inference_steps: Any,
        guidance_scale: Any,
        cfg_mode: Any,
        output_type: Any,
        robot_joints: Any = None,
        first_xyz: Any = None,
    ) -> None:
        """Validate every argument of ``__call__`` before any work; errors name the argument and its value."""
        t, h, w = self.num_frames, self.height, self.width
        if first_xyz is not None:
            if not self.config.first_xyz_condition:
                raise ValueError("first_xyz was given, but this model was not trained with a measured first-frame "
                                 "pointmap (model_index.json first_xyz_condition is false); leave it out")
            fx = _to_numpy(first_xyz)
            if fx.shape != (h, w, 3) or not np.issubdtype(fx.dtype, np.floating):
                raise ValueError(f"first_xyz must be a float (H, W, 3) = ({h}, {w}, 3) pointmap in metres, got shape "
                                 f"{fx.shape} dtype {fx.dtype}")
            if not np.isfinite(fx).all(-1).any():
                raise ValueError("first_xyz has no finite point (all NaN): leave it out instead")
        img = _to_numpy(image)
        if img.shape != (h, w, 3):
            raise ValueError(f"image must have shape ({h}, {w}, 3) (H, W, RGB) for this model, got {img.shape}; "
                             f"resize/crop it with the camera intrinsics so the pointmaps stay pixel-aligned")
        if img.dtype != np.uint8 and (not np.issubdtype(img.dtype, np.floating) or img.min() < 0 or img.max() > 1):
            raise ValueError(f"image must be uint8 or float in [0, 1], got dtype {img.dtype} with range "
                             f"[{img.min()}, {img.max()}]")
        xyz = _to_numpy(robot_xyz)
        if xyz.shape != (t, h, w, 3):
            raise ValueError(f"robot_xyz must have shape ({t}, {h}, {w}, 3) (T, H, W, xyz metres), got {xyz.shape}")
        if not np.issubdtype(xyz.dtype, np.floating):
            raise ValueError(f"robot_xyz must be a float array (metres, NaN background), got dtype {xyz.dtype}")
        if robot_link is not None:
            link = _to_numpy(robot_link)
            if link.shape != (t, h, w) or not np.issubdtype(link.dtype, np.integer):
                raise ValueError(f"robot_link must be an integer array of shape ({t}, {h}, {w}) (-1 background), "
                                 f"got shape {link.shape} dtype {link.dtype}")
        if robot_rgb is not None:
            rgb = _to_numpy(robot_rgb)
            if rgb.shape != (t, h, w, 3) or rgb.dtype != np.uint8:
                raise ValueError(f"robot_rgb must be uint8 of shape ({t}, {h}, {w}, 3), got shape {rgb.shape} "
                                 f"dtype {rgb.dtype}")
        if link_colors is not None:
            lc = np.asarray(link_colors)
            if lc.ndim != 2 or lc.shape[1] != 3 or len(lc) == 0 or lc.min() < 0 or lc.max() > 255:
                raise ValueError(f"link_colors must be (L, 3) RGB values in 0..255, got shape {lc.shape}")
        if self.variant == "jointemb":
            self.check_robot_joints(robot_joints)
        if xyz_bounds is not None:
            if self.pointmap_encoding.metric:
                raise ValueError(f"xyz_bounds applies to the 'minmax' pointmap encoding only; this model's "
                                 f"encoding ({self.pointmap_encoding.kind!r}) is fixed and metric")
            try:
                lo, hi = (np.asarray(b, dtype=np.float64).reshape(3) for b in xyz_bounds)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"xyz_bounds must be (lo (3,), hi (3,)) in metres, got {xyz_bounds!r}") from exc
            if not np.all(hi > lo):
                raise ValueError(f"xyz_bounds must have hi > lo on every axis, got lo={lo}, hi={hi}")
        if not isinstance(num_inference_steps, (int, np.integer)) or num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be an integer >= 1, got {num_inference_steps!r}")
        if not isinstance(guidance_scale, (int, float)) or not np.isfinite(guidance_scale) or guidance_scale < 0:
            raise ValueError(f"guidance_scale must be a finite number >= 0, got {guidance_scale!r}")
        if cfg_mode not in CFG_MODES:
            raise ValueError(f"cfg_mode must be one of {CFG_MODES}, got {cfg_mode!r}")
        if output_type not in ("np", "latent"):
            raise ValueError(f"output_type must be 'np' or 'latent', got {output_type!r}")
        if not self._robot_mask(xyz, robot_link).any():
            raise ValueError("robot_xyz has no robot pixel (finite xyz" + (" with robot_link >= 0" if robot_link
                             is not None else "") + ") in any frame; cannot condition on an absent robot")

    @staticmethod
    def _robot_mask(xyz: np.ndarray, link: Any) -> np.ndarray:
        """Robot pixels `(T, H, W)` bool: finite xyz (and link id >= 0 when link ids are given)."""
        mask = np.isfinite(xyz).all(axis=-1)
        if link is not None:
            mask &= _to_numpy(link) >= 0
        return mask

    # ----------------------------------------------------------------------------------------- encoders
    def _latent_stats(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.vae.config.z_dim
        mean = torch.tensor(self.vae.config.latents_mean, dtype=torch.float32, device=device).view(1, z, 1, 1, 1)
        inv_std = 1.0 / torch.tensor(self.vae.config.latents_std, dtype=torch.float32, device=device).view(1, z, 1, 1, 1)
        return mean, inv_std

    def _vae_autocast(self, device: torch.device):
        dtype = self.vae_autocast
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(torch.device(device).type, dtype=dtype)

    def encode_video(self, video01: torch.Tensor) -> torch.Tensor:
        """VAE-encode `[B, 3, T, H, W]` videos with values in [0, 1] -> normalised latents `[B, C, F, h, w]` float32.

        Uses the posterior mode (the release samples at training-data preparation and takes the mode for the
        condition video); normalised with the VAE ``latents_mean``/``latents_std``.
        """
        device = self._execution_device
        x = (video01 * 2.0 - 1.0).to(device=device, dtype=self.vae.dtype)
        with self._vae_autocast(device):
            z = self.vae.encode(x).latent_dist.mode().float()
        mean, inv_std = self._latent_stats(z.device)
        return (z - mean) * inv_std

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised RGB|XYZ latents `[1, C, F, h, 2w]` -> video `[1, 3, T, H, 2W]` float32 in [0, 1]."""
        half = latents.shape[-1] // 2
        z = torch.cat([latents[..., :half], latents[..., half:] * POINTMAP_LATENT_STD + POINTMAP_LATENT_MEAN], -1)
        mean, inv_std = self._latent_stats(z.device)
        z = (z / inv_std + mean).to(self.vae.dtype)
        with self._vae_autocast(z.device):
            video = self.vae.decode(z, return_dict=False)[0].float()
        return (video / 2 + 0.5).clamp(0, 1)

    def encode_image(self, image_u8: np.ndarray) -> torch.Tensor:
        """CLIP tokens of the first frame `(H, W, 3)` uint8 -> `[1, N_img, image_dim]` (penultimate hidden states)."""
        device = self._execution_device
        enc_device = self.image_encoder.device
        if self.image_processor is not None:
            pixels = self.image_processor(images=image_u8, return_tensors="pt")["pixel_values"]
        else:
            size = self.image_encoder.config.image_size
            x = torch.from_numpy(image_u8).permute(2, 0, 1)[None].float() / 255.0
            h, w = x.shape[-2:]
            scale = size / min(h, w)
            x = F.interpolate(x, size=(max(size, round(h * scale)), max(size, round(w * scale))), mode="bicubic",
                              align_corners=False, antialias=True).clamp(0, 1)
            top, left = (x.shape[-2] - size) // 2, (x.shape[-1] - size) // 2
            x = x[..., top : top + size, left : left + size]
            pixels = (x - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)
        pixels = pixels.to(device=enc_device, dtype=self.image_encoder.dtype)
        hidden = self.image_encoder(pixel_values=pixels, output_hidden_states=True).hidden_states[-2]
        return hidden.to(device)

    # ------------------------------------------------------------------------------------- conditioning
    def prepare_condition(self, image01: torch.Tensor, first_xyz: np.ndarray | None = None) -> torch.Tensor:
        """Mask + condition latent `[B, 4 + C, F, h, 2w]` float32 from first frames `[3, H, W]` (B = 1) or
        `[B, 3, H, W]` in [0, 1].

        Condition video: frame 0 = RGB frame | uniform dummy pointmap, frames 1.. = 0 in [-1, 1] (``condition_fill``
        "zeros", the release's) or frame 0 again ("first_frame");
        mask: frame 0 is 1 on the RGB half and 0.5 on the XYZ half, later latent frames 0. With ``first_xyz``
        (`(H, W, 3)` or `(B, H, W, 3)` metres; a model with ``first_xyz_condition`` only) frame 0's XYZ half is
        that measured pointmap in the model's encoding instead of the dummy, and its mask is 1 like the RGB's.
        """
        t, h, w = self.num_frames, self.height, self.width
        image01 = image01[None] if image01.ndim == 3 else image01
        b = image01.shape[0]
        if first_xyz is None:
            pm = torch.from_numpy(uniform_pointmap(h, w)).permute(2, 0, 1).expand(b, -1, -1, -1)
        else:
            fx = np.asarray(first_xyz)
            fx = fx[None] if fx.ndim == 3 else fx
            pm = torch.from_numpy(self.pointmap_encoding.encode_world(fx)[0]).permute(0, 3, 1, 2)
        first = torch.cat([image01, pm], dim=-1)[:, :, None]  # B, 3, 1, H, 2W
        if self.condition_fill == "first_frame":
            later = first.expand(-1, -1, t - 1, -1, -1)
        else:  # zeros in [-1, 1] space, as in the release (video_condition is padded after scaling to [-1, 1])
            later = torch.full((b, 3, t - 1, h, 2 * w), 0.5)
        video = torch.cat([first, later], dim=2)
        latent = self.encode_video(video)  # B, C, F, h, 2w
        mask = torch.zeros(b, self.transformer.config.mask_channels, *latent.shape[2:], device=latent.device)
        mask[:, :, 0, :, : latent.shape[-1] // 2] = 1.0
        mask[:, :, 0, :, latent.shape[-1] // 2 :] = 0.5 if first_xyz is None else 1.0
        return torch.cat([mask, latent], dim=1)

    def check_robot_joints(self, robot_joints: Any) -> np.ndarray:
        """The "jointemb" condition as a `(T, num_joints)` float32 array; ValueError naming ``robot_joints`` if it is
        missing, of another shape, not floating point or not finite."""
        t, n_j = self.num_frames, self.transformer.config.num_joints
        if robot_joints is None:
            raise ValueError(f"this model is the joint-embedding variant ('jointemb'): pass robot_joints, the "
                             f"({t}, {n_j}) joint positions per frame")
        q = _to_numpy(robot_joints)
        if q.shape != (t, n_j) or not np.issubdtype(q.dtype, np.floating) or not np.isfinite(q).all():
            raise ValueError(f"robot_joints must be finite floats of shape ({t}, {n_j}) (frames, joints), got "
                             f"shape {q.shape} dtype {q.dtype}")
        return q.astype(np.float32)

    def prepare_robot_condition(
        self, xyz01: np.ndarray, mask: np.ndarray, robot_rgb: np.ndarray | None, robot_joints: np.ndarray | None = None
    ) -> torch.Tensor:
        """Robot condition `[B, 4 + C, F, h, w_cond]` float32 (mask channels first, then robot latents) from
        `(T, H, W, 3)` / `(T, H, W)` arrays (B = 1) or the same with a leading batch dimension.

        "full": latents = VAE(robot RGB) | (VAE(robot pointmap) - (-0.17)) / 1.36 along width, mask tiled x2.
        "pmcond": pointmap latents and untiled mask only. "jointemb": ``robot_joints`` `(T, J)` (or `(B, T, J)`)
        as `[B, T, J]` float32; the pointmap is not encoded.
        """
        cfg = self.transformer.config
        batched = np.ndim(mask) == 4
        if cfg.variant == "jointemb":
            q = torch.from_numpy(np.asarray(robot_joints, dtype=np.float32))
            return (q if batched else q[None]).to(self._execution_device)
        xyz01, mask = (xyz01, mask) if batched else (np.asarray(xyz01)[None], np.asarray(mask)[None])
        to_video = lambda a: torch.from_numpy(np.ascontiguousarray(a)).float().permute(0, 4, 1, 2, 3)
        pm_latent = (self.encode_video(to_video(xyz01)) - POINTMAP_LATENT_MEAN) / POINTMAP_LATENT_STD
        m = torch.from_numpy(np.asarray(mask).astype(np.float32))[:, None]  # B, 1, T, H, W
        m = downsample_robot_mask(m, cfg.latent_height, cfg.latent_width, self.vae_scale_factor_temporal)
        m = m.to(pm_latent.device).repeat_interleave(cfg.mask_channels, dim=1)  # B, 4, F, h, w
        if cfg.variant == "pmcond":
            return torch.cat([m, pm_latent], dim=1)
        robot_rgb = robot_rgb if batched else np.asarray(robot_rgb)[None]
        rgb_latent = self.encode_video(to_video(robot_rgb.astype(np.float32) / 255.0))
        return torch.cat([m.repeat(1, 1, 1, 1, 2), torch.cat([rgb_latent, pm_latent], dim=-1)], dim=1)

    # ------------------------------------------------------------------------------------ CUDA graphs
    def _graph_base(self, latent_shape: tuple[int, ...], image_tokens: torch.Tensor,
                    robot_condition: torch.Tensor) -> tuple | None:
        """What a recorded graph depends on besides its input buffers: shapes, the forward in use, the parameters'
        storage and the state of peft adapters (enabled, active, scaling: Python values a graph freezes). None:
        record no graph, because accelerate offload hooks move the weights between calls."""
        tr = self.transformer
        if getattr(tr, "_hf_hook", None) is not None:
            return None
        adapters = tuple((bool(m._disable_adapters), str(getattr(m, "active_adapters", "")),
                          str(getattr(m, "scaling", ""))) for m in tr.modules() if hasattr(m, "_disable_adapters"))
        return (tuple(latent_shape), tuple(image_tokens.shape), tuple(robot_condition.shape), tr.dtype,
                id(tr.__dict__.get("forward")), tuple(p.data_ptr() for p in tr.parameters()), adapters)

    def _transformer_graph(self, base: tuple, latent_in: torch.Tensor, t: torch.Tensor, image_tokens: torch.Tensor,
                           robot_condition: torch.Tensor, scales: list[tuple[float, float]]) -> TransformerGraph | None:
        """The recorded graph for this rollout (``base`` from [`_graph_base`]) and pass kind, made on first use,
        its condition buffers filled; None when recording failed (the rollout then runs eagerly; the reason is
        logged once)."""
        tr = self.transformer
        state = self.__dict__.setdefault("_graphs", {"base": None, "graphs": {}, "failed": False, "condition": {}})
        if state["failed"]:
            return None
        if state["base"] != base:  # other shapes or weights: drop the old graphs (each holds activation memory)
            state.update(base=base, graphs={}, condition={})
        key = tuple(scales)  # one graph per pass kind (cond, uncond or batched cond + uncond)
        graph = state["graphs"].get(key)
        if graph is None:
            try:
                graph = TransformerGraph(tr.forward, latent_in, t, image_tokens, robot_condition, scales)
            except Exception as exc:  # noqa: BLE001 -- any recording error: fall back to eager launches
                logger.warning(f"CUDA graph recording of the transformer failed ({type(exc).__name__}: {exc}); "
                               "running without graphs")
                state.update(failed=True, graphs={}, condition={})
                return None
            state["graphs"][key] = graph
        held = state["condition"].get(key)
        if held is None or held[0] is not image_tokens or held[1] is not robot_condition:
            graph.set_condition(image_tokens, robot_condition)
            state["condition"][key] = (image_tokens, robot_condition)
        return graph

    def reset_cuda_graphs(self) -> None:
        """Drop recorded graphs (and a failed recording), freeing their memory; the next rollout records anew."""
        self.__dict__.pop("_graphs", None)

    # -------------------------------------------------------------------------------------------- call
    @torch.no_grad()
    def __call__(
        self,
        image: np.ndarray | torch.Tensor,
        robot_xyz: np.ndarray | torch.Tensor,
        robot_link: np.ndarray | torch.Tensor | None = None,
        robot_rgb: np.ndarray | torch.Tensor | None = None,
        link_colors: np.ndarray | None = None,
        xyz_bounds: tuple[np.ndarray, np.ndarray] | None = None,
        num_inference_steps: int = 50,
        guidance_scale: float = 5.0,
        generator: torch.Generator | None = None,
        seed: int | None = None,
        cfg_mode: str = "correct",
        batch_cfg: bool | None = None,
        latents: torch.Tensor | None = None,
        callback: Callable[[int, int, float], bool | None] | None = None,
        output_type: str = "np",
        robot_joints: np.ndarray | torch.Tensor | None = None,
        first_xyz: np.ndarray | None = None,
        complete_unreachable: bool | None = None,
    ) -> K4DPipelineOutput:
        r"""Imagine a rollout.

        Args:
            image: first RGB frame `(H, W, 3)`, uint8 or float in [0, 1] (numpy, torch or PIL); H, W must equal
                ``pipe.height``, ``pipe.width`` exactly (480 x 720 for the released model); no resizing is done.
            robot_xyz: robot pointmap sequence `(T, H, W, 3)` float, metres, camera optical frame, NaN off-robot;
                T = ``pipe.num_frames`` (49).
            robot_link: `(T, H, W)` int link ids, -1 background (optional; also restricts the robot mask).
            robot_rgb: `(T, H, W, 3)` uint8 robot appearance video ("full" variant; ignored by "pmcond"); pixels off
                the robot mask are set to 0. If None, a flat-colour video is rendered from ``robot_link`` and
                ``link_colors`` (see [`render_robot_rgb`]).
            link_colors: `(L, 3)` uint8 colour per link id, for the rendered robot RGB.
            xyz_bounds: ``(lo (3,), hi (3,))`` metres for the robot-pointmap min-max normalisation; default: the
                per-axis min/max over the sequence's robot pixels (the release normalises per sequence).
            num_inference_steps: denoising steps (release: 50).
            guidance_scale: classifier-free guidance weight w (release: 5.0); ``w <= 1`` runs the conditional pass
                only. ``noise = uncond + w * (cond - uncond)``.
            generator / seed: initial-noise RNG; ``seed`` builds a CPU ``torch.Generator`` when ``generator`` is None
                (CPU noise makes a seed give the same noise on every device).
            cfg_mode: ``"correct"`` (default): the unconditional pass drops the robot condition: the robot
                cross-attention tokens are zero vectors and the robot latent injection is skipped (no
                ``arm_cond_proj`` latent added to the condition channels and no robot mask in the mask channels,
                which keep the first-frame mask). This is exactly what the model computed with its zero-initialised
                robot projections before fine-tuning, i.e. "no robot information". ``"released"``: reproduces the
                released code, whose in-place forward makes the unconditional pass keep the robot tokens and add the
                robot latent twice (equal to the release up to bf16 rounding of the double addition).
            batch_cfg: override the pipeline's ``batch_cfg`` config (one batch-2 forward for cond + uncond).
            latents: optional initial noise `[1, C, F, h, 2w]`.
            callback: ``callback(step, total, elapsed_s)`` after every denoising step (step counts completed steps,
                1..total; elapsed_s since denoising began). Return ``False`` (exactly) or raise [`K4DCancelled`] to
                stop; ``__call__`` then raises [`K4DCancelled`] before the next step. Any other exception propagates.
            output_type: ``"np"`` decodes frames; ``"latent"`` skips the VAE decode (``rgb``/``xyz`` are None).
            robot_joints: `(T, num_joints)` joint positions per frame; required by (and only used by) the
                "jointemb" variant, the "emb." ablation. ``robot_xyz`` still gives the robot mask there.
            first_xyz: `(H, W, 3)` measured pointmap of the first frame, metres, camera optical frame, NaN where
                unknown (an RGB-D camera's depth, back-projected). Only for a model with ``first_xyz_condition``
                (ValueError otherwise); it then replaces the release's dummy in the condition video.
            complete_unreachable: override the pipeline's ``complete_unreachable`` (default True). A transformer
                whose tokens carry more output values than its hidden size (``reachable_basis`` is not None) cannot
                predict the velocity in the other directions, and the sampler would keep the initial noise there
                (unit variance, where the training latents hold under 0.01). With it, the velocity there is the
                exact flow-matching one for data that is zero in those directions, ``x_t / sigma``, so those
                components follow the noise schedule to 0 and every step sees the input it was trained on. No
                effect on a model without unreachable directions (v2, the 14B).

        Returns:
            [`K4DPipelineOutput`] with ``rgb (T, H, W, 3) uint8``, ``xyz (T, H, W, 3) float32 in [0, 1]`` (decoded
            from the XYZ half), the robot mask, the normalisation bounds, the latents and timings.

        Raises:
            ValueError: an argument is invalid (message names it and its value).
            K4DCancelled: the callback cancelled the rollout.
        """
        t_start = time.perf_counter()
        image_np = _to_numpy(image)
        self.check_inputs(image_np, robot_xyz, robot_link, robot_rgb, link_colors, xyz_bounds,
                          num_inference_steps, guidance_scale, cfg_mode, output_type, robot_joints, first_xyz)
        device = self._execution_device
        tdtype = self.transformer.dtype
        batch_cfg = self.config.batch_cfg if batch_cfg is None else bool(batch_cfg)
        if generator is None and seed is not None:
            generator = torch.Generator("cpu").manual_seed(int(seed))

        # 1. Robot conditioning inputs (numpy)
        xyz = _to_numpy(robot_xyz)
        link = None if robot_link is None else _to_numpy(robot_link)
        mask = self._robot_mask(xyz, link)
        xyz01, lo, hi = self.pointmap_encoding.encode_robot(xyz, mask, xyz_bounds)
        rgb_robot = None
        if self.variant == "full":
            if robot_rgb is None:
                rgb_robot = render_robot_rgb(link, mask, link_colors)
            else:
                rgb_robot = np.where(mask[..., None], _to_numpy(robot_rgb), 0).astype(np.uint8)

        # 2. Encode first frame (CLIP + condition video) and robot condition (VAE)
        image_u8 = image_np if image_np.dtype == np.uint8 else np.round(image_np * 255).astype(np.uint8)
        image01 = torch.from_numpy(image_u8).permute(2, 0, 1).float() / 255.0
        image_tokens = self.encode_image(image_u8).to(tdtype)  # 1, N_img, image_dim
        condition = self.prepare_condition(image01, None if first_xyz is None else _to_numpy(first_xyz))
        joints = None if robot_joints is None else _to_numpy(robot_joints)
        robot_condition = self.prepare_robot_condition(xyz01, mask, rgb_robot, joints).to(tdtype)  # 1, 20, F, h, w_cond
        t_encoded = time.perf_counter()

        # 3. Initial noise and timesteps
        shape = (1, *self.transformer.latent_shape)
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=torch.float32)
        elif tuple(latents.shape) != shape:
            raise ValueError(f"latents must have shape {list(shape)}, got {list(latents.shape)}")
        else:
            latents = latents.to(device=device, dtype=torch.float32).clone()
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps
        complete = self.complete_unreachable if complete_unreachable is None else bool(complete_unreachable)
        reachable = self.transformer.reachable_basis() if complete else None

        # 4. Per-pass robot scales: cond (tokens 1, injection 1); uncond per cfg_mode
        do_cfg = guidance_scale > 1.0
        uncond_scale = (1.0, 2.0) if cfg_mode == "released" else (0.0, 0.0)  # (tokens, injection)

        graph_base = None
        if self.cuda_graphs and device.type == "cuda":
            graph_base = self._graph_base((1, latents.shape[1] + condition.shape[1], *latents.shape[2:]),
                                          image_tokens, robot_condition)

        def predict(latent_in: torch.Tensor, t: torch.Tensor, scales: list[tuple[float, float]]) -> torch.Tensor:
            if graph_base is not None:
                graph = self._transformer_graph(graph_base, latent_in, t, image_tokens, robot_condition, scales)
                if graph is not None:
                    return graph(latent_in, t)
            n = len(scales)
            return self.transformer(
                hidden_states=latent_in.expand(n, -1, -1, -1, -1),
                timestep=t.expand(n),
                encoder_hidden_states_image=image_tokens.expand(n, -1, -1),
                robot_condition=robot_condition.expand(n, *robot_condition.shape[1:]),
                robot_token_scale=torch.tensor([s[0] for s in scales], device=device),
                robot_injection_scale=torch.tensor([s[1] for s in scales], device=device),
                return_dict=False,
            )[0]

        # 5. Denoising loop
        t_loop = time.perf_counter()
        total = len(timesteps)
        with self.progress_bar(total=total) as progress:
            for i, t in enumerate(timesteps):
                latent_in = torch.cat([latents, condition], dim=1).to(tdtype)  # 1, 36, F, h, 2w
                if not do_cfg:
                    noise_pred = predict(latent_in, t, [(1.0, 1.0)])
                elif batch_cfg:
                    noise_cond, noise_uncond = predict(latent_in, t, [(1.0, 1.0), uncond_scale]).chunk(2)
                    noise_pred = noise_uncond + guidance_scale * (noise_cond - noise_uncond)
                else:
                    noise_cond = predict(latent_in, t, [(1.0, 1.0)])
                    noise_uncond = predict(latent_in, t, [uncond_scale])
                    noise_pred = noise_uncond + guidance_scale * (noise_cond - noise_uncond)
                if reachable is not None:
                    noise_pred = complete_velocity(self.transformer, noise_pred, latents,
                                                   float(self.scheduler.sigmas[i]), reachable)
                latents = self.scheduler.step(noise_pred.float(), t, latents, return_dict=False)[0]
                progress.update()
                if callback is not None:
                    try:
                        keep_going = callback(i + 1, total, time.perf_counter() - t_loop)
                    except K4DCancelled as exc:
                        raise K4DCancelled(i + 1, total) from exc
                    if keep_going is False:
                        raise K4DCancelled(i + 1, total)
        t_denoised = time.perf_counter()

        # 6. Decode both halves
        rgb = xyz_out = None
        if output_type == "np":
            video = self.decode_latents(latents)[0].permute(1, 2, 3, 0).cpu().numpy()  # T, H, 2W, 3
            w = self.width
            rgb = np.round(video[:, :, :w] * 255.0).astype(np.uint8)
            xyz_out = np.ascontiguousarray(video[:, :, w:], dtype=np.float32)
        t_end = time.perf_counter()
        self.maybe_free_model_hooks()
        timings = {
            "encode_s": t_encoded - t_start,
            "denoise_s": t_denoised - t_loop,
            "decode_s": t_end - t_denoised,
            "total_s": t_end - t_start,
            "steps": float(total),
        }
        return K4DPipelineOutput(rgb=rgb, xyz=xyz_out, robot_mask=mask, robot_xyz_lo=lo, robot_xyz_hi=hi,
                                 latents=latents.cpu(), timings=timings)


def complete_velocity(transformer: K4DTransformer3DModel, velocity: torch.Tensor, latents: torch.Tensor,
                      sigma: float, basis: torch.Tensor | None = None) -> torch.Tensor:
    """``velocity`` (the transformer's flow prediction at noise level ``sigma``) with its part outside the model's
    reachable outputs replaced by ``x_t / sigma``, the flow velocity ``noise - x0`` of data that is 0 there
    (``x_t = (1 - sigma) x0 + sigma noise``). See ``K4DPipeline.__call__``'s ``complete_unreachable``."""
    v = velocity.float()
    # the projection is linear: v - P(v) + P(x) / sigma in one projection
    gap = transformer.unreachable_part(v - latents.float() / max(float(sigma), 1e-6), basis)
    return velocity if gap is None else (v - gap).to(velocity.dtype)


def make_scheduler(kind: str = "unipc", flow_shift: float = 3.0, num_train_timesteps: int = 1000):
    """Flow-matching scheduler: ``"unipc"`` (Wan2.1 default: UniPC, bh2, order 2, flow sigmas) or ``"euler"``."""
    if kind == "unipc":
        return UniPCMultistepScheduler(
            num_train_timesteps=num_train_timesteps, prediction_type="flow_prediction", use_flow_sigmas=True,
            flow_shift=flow_shift, solver_order=2, solver_type="bh2", predict_x0=True, lower_order_final=True,
            final_sigmas_type="zero", timestep_spacing="linspace",
        )
    if kind == "euler":
        return FlowMatchEulerDiscreteScheduler(num_train_timesteps=num_train_timesteps, shift=flow_shift)
    raise ValueError(f"scheduler must be 'unipc' or 'euler', got {kind!r}")

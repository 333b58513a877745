# Copyright 2026 k4d developers. Apache-2.0.
"""Self-validating configuration of the K4D world model (the ROS node declares one parameter per field).

    from k4d_worldmodel.config import WorldModelConfig
    cfg = WorldModelConfig(checkpoint_dir="/models/kinema4d_pmcond_ckpt",
                           base_model_dir="/models/Wan2.1-I2V-14B-480P-Diffusers", variant="pmcond")
"""
from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


VARIANTS = ("full", "pmcond", "jointemb")
SCHEDULERS = ("unipc", "euler")
# what a K4DPipeline's condition video holds after frame 0: the release's zeros, or frame 0 again
CONDITION_FILLS = ("zeros", "first_frame")
CFG_MODES = ("correct", "released")
LORA_MODES = ("fuse", "peft")
DTYPES = ("auto", "float32", "bfloat16", "float16")


DEFAULT_CHECKPOINT = "default"
DEFAULT_CHECKPOINT_NAME = "k4d-yam-sim"


def default_checkpoint_dir() -> str:
    """The checkpoint shipped with k4d_worldmodel (``checkpoints/k4d-yam-sim``: trained on the simulated YAM
    workcell; see its README.md model card). ``checkpoint_dir: default`` means this folder."""
    from pathlib import Path

    return str(Path(__file__).resolve().parent / "checkpoints" / DEFAULT_CHECKPOINT_NAME)


def _fail(name: str, value, expected: str) -> None:
    raise ValueError(f"{name} must be {expected}, got {value!r}")


@dataclass
class MetricLiftConfig:
    """Thresholds of the metric lifting fit (see [`k4d_worldmodel.lifting.fit_metric_lift`]).

    Attributes:
        inlier_threshold_m: a robot pixel is an inlier when its lifted point is within this distance (metres) of
            the known robot point.
        min_points: fewer usable robot pixels than this -> quality "failed".
        min_inlier_fraction: inlier fraction below this -> "failed".
        good_inlier_fraction: inlier fraction at or above this (and residual below good_residual_m) -> "good".
        good_residual_m: RMS inlier residual (metres) at or below this (and enough inliers) -> "good".
        ransac_iterations: RANSAC hypotheses before the least-squares refinement.
        seed: RANSAC random seed (the fit is deterministic).
    """

    inlier_threshold_m: float = 0.02
    min_points: int = 50
    min_inlier_fraction: float = 0.3
    good_inlier_fraction: float = 0.8
    good_residual_m: float = 0.01
    ransac_iterations: int = 200
    seed: int = 0

    def __post_init__(self) -> None:
        if not (self.inlier_threshold_m > 0 and math.isfinite(self.inlier_threshold_m)):
            _fail("inlier_threshold_m", self.inlier_threshold_m, "a finite number > 0 (metres)")
        if not (isinstance(self.min_points, int) and self.min_points >= 2):
            _fail("min_points", self.min_points, "an integer >= 2")
        for name in ("min_inlier_fraction", "good_inlier_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                _fail(name, getattr(self, name), "in [0, 1]")
        if self.good_inlier_fraction < self.min_inlier_fraction:
            _fail("good_inlier_fraction", self.good_inlier_fraction,
                  f">= min_inlier_fraction ({self.min_inlier_fraction})")
        if not (self.good_residual_m > 0 and math.isfinite(self.good_residual_m)):
            _fail("good_residual_m", self.good_residual_m, "a finite number > 0 (metres)")
        if not (isinstance(self.ransac_iterations, int) and self.ransac_iterations >= 1):
            _fail("ransac_iterations", self.ransac_iterations, "an integer >= 1")
        if not (isinstance(self.seed, int) and self.seed >= 0):
            _fail("seed", self.seed, "an integer >= 0")



# Inlier distance for the anchored lift: the small default model's normalised output spans a scene about 5 m
# wide, so 1 % of its range is 5 cm, coarser than the robot-pixel lift's 2 cm (``MetricLiftConfig``).
ANCHOR_INLIER_THRESHOLD_M = 0.08


VAE_AUTOCAST = ("auto", "bfloat16", "off")


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """Whether this CPU has bfloat16 instructions (x86 AVX512-BF16 / AMX-BF16, or Arm BF16)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            flags.update(line.split(":", 1)[1].split())
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})

@dataclass
class WorldModelConfig:
    """Everything needed to load and run the K4D world model.

    Attributes:
        checkpoint_dir: ``"default"`` (the model shipped in the package, ``default_checkpoint_dir()``), our
            ``save_pretrained`` folder (``model_index.json`` of a ``K4DPipeline``), or a
            released Kinema4D checkpoint folder holding ``added_weights.safetensors`` and
            ``pytorch_lora_weights.safetensors``.
        base_model_dir: for a released checkpoint, the ``Wan2.1-I2V-14B-480P-Diffusers`` folder ("" = the files sit
            in ``checkpoint_dir`` itself). Ignored for our own layout.
        variant: "pmcond" (robot pointmap only; recommended for real robots) or "full" (robot RGB + pointmap);
            "jointemb" (joint-vector conditioning, the "emb." ablation) loads for ``k4d eval`` only.
        device: "auto" (cuda if available), "cpu", "cuda" or "cuda:N".
        dtype: transformer dtype; "auto" = bfloat16 on cuda, float32 on cpu.
        vae_dtype: VAE dtype ("auto" = float32).
        vae_autocast: run the VAE under bfloat16 autocast ("bfloat16"), not at all ("off"), or "auto": on a CPU
            with native bfloat16 (AVX512-BF16 or AMX), where it makes encoding and decoding about 5x faster.
        cuda_graphs: on a cuda device, record the transformer's forward once per rollout shape as a CUDA graph
            and replay it at every denoising step (the small default model is launch-bound). No effect on CPU.
        complete_unreachable: for a transformer whose tokens carry more output values than its hidden size
            (k4d's z_dim-32 models, v3 to v15), predict the flow velocity in the directions it cannot produce
            exactly, for data that is 0 there (``K4DPipeline.__call__``). Off, the sampler leaves the initial
            noise in them, half of every latent at unit variance. No effect on v2 or the released 14B model.
        num_inference_steps, guidance_scale, seed: sampling (release: 50, 5.0, 42).
        scheduler, flow_shift: "unipc" (Wan2.1 flow UniPC) or "euler" (flow-matching Euler); flow_shift 3.0 for
            480p.
        cfg_mode: "correct" (uncond pass drops the robot condition) or "released" (reproduce the release defect).
        batch_cfg: run cond + uncond as one batch-2 forward.
        adapt_inputs: fit requests of another size to the model instead of refusing them: the first image is
            area-resized, the robot pointmaps nearest-resized (camera intrinsics scaled with them) and, from a
            longer sequence, the model's number of frames is taken evenly spaced (first and last kept). The
            rollout then comes at the model's size and camera. False (default): such requests are refused.
        compose_static, compose_margin_px, compose_region: composite the rollout onto the measured first frame
            (``composite.composite_static``): only pixels the robot covers at frame 0 or at frame t (grown by
            ``compose_margin_px``) keep the model's output; the rest keeps the first frame's colour and, with a
            request's ``anchor_depth``, its measured geometry. A prior that hides changes far from the robot.
            ``compose_region`` "swept" keeps the model's output wherever the robot has been up to frame t.
        compose_flying_rel, compose_flying_mode: with ``compose_static`` and a metric rollout, the model's points
            that sit on a depth ramp (``composite.flying_points``: a range more than ``compose_flying_rel`` of
            itself beyond a 3 x 3 neighbour, on both sides with "between", on either with "either") become NaN
            holes of the organized cloud; 0 = off. Measured and kinematic points are never removed. The default
            (either, 0.12) was chosen on 144 calibration episodes and judged on 144 held-out ones: v18's swept
            composite went from Chamfer L2 0.0013 to 0.00077 m^2 (copy-first 0.00098) with no answer changed.
        lora_mode: "fuse" the released LoRA into the weights (as the release) or keep it as a "peft" adapter.
        lora_rank, lora_alpha: released LoRA hyper-parameters (r 64, alpha 32 -> scale 0.5).
        metric_*: [`MetricLiftConfig`] fields; ``metric_anchor_inlier_threshold_m`` is the inlier distance of the
            lift anchored on a measured depth image of the first frame (``ImagineRequest.anchor_depth``), which
            is tried when the robot-pixel lift fails.
        metric_register, metric_register_block_px: with a request's ``anchor_depth``, register every fitted frame
            to it on the still scene (``lifting.register_static``: per-block medians, ``block_px`` pixels; 0 =
            one shift per frame). It removes the VAE's drift of still geometry over the clip, which otherwise
            lifts the table by a centimetre or more in late frames and fools the 4D success predicate. A metric
            model's decoded output (``ray_depth``) is registered in depth only (``lifting.register_depth``).
    """

    checkpoint_dir: str = ""
    base_model_dir: str = ""
    variant: str = "pmcond"
    device: str = "auto"
    dtype: str = "auto"
    vae_dtype: str = "auto"
    vae_autocast: str = "auto"
    cuda_graphs: bool = True
    complete_unreachable: bool = True
    num_inference_steps: int = 50
    guidance_scale: float = 5.0
    seed: int = 42
    scheduler: str = "unipc"
    flow_shift: float = 3.0
    cfg_mode: str = "correct"
    batch_cfg: bool = True
    adapt_inputs: bool = False
    compose_static: bool = False
    compose_margin_px: int = 2
    compose_region: str = "current"
    compose_flying_rel: float = 0.12
    compose_flying_mode: str = "either"
    lora_mode: str = "fuse"
    lora_rank: int = 64
    lora_alpha: float = 32.0
    metric_inlier_threshold_m: float = 0.02
    metric_min_points: int = 50
    metric_min_inlier_fraction: float = 0.3
    metric_good_inlier_fraction: float = 0.8
    metric_good_residual_m: float = 0.01
    metric_ransac_iterations: int = 200
    metric_anchor_inlier_threshold_m: float = ANCHOR_INLIER_THRESHOLD_M
    metric_register: bool = True
    metric_register_block_px: int = 16

    def __post_init__(self) -> None:
        if self.checkpoint_dir == DEFAULT_CHECKPOINT:
            self.checkpoint_dir = default_checkpoint_dir()
        for name, allowed in (("variant", VARIANTS), ("scheduler", SCHEDULERS), ("cfg_mode", CFG_MODES),
                              ("lora_mode", LORA_MODES), ("dtype", DTYPES), ("vae_dtype", DTYPES),
                              ("vae_autocast", VAE_AUTOCAST)):
            if getattr(self, name) not in allowed:
                _fail(name, getattr(self, name), f"one of {allowed}")
        dev = self.device
        if not (dev in ("auto", "cpu", "cuda") or (dev.startswith("cuda:") and dev[5:].isdigit())):
            _fail("device", dev, "'auto', 'cpu', 'cuda' or 'cuda:N'")
        if not (isinstance(self.num_inference_steps, int) and self.num_inference_steps >= 1):
            _fail("num_inference_steps", self.num_inference_steps, "an integer >= 1")
        if not (math.isfinite(self.guidance_scale) and self.guidance_scale >= 0):
            _fail("guidance_scale", self.guidance_scale, "a finite number >= 0")
        if not isinstance(self.compose_static, bool):
            _fail("compose_static", self.compose_static, "true or false")
        if isinstance(self.compose_margin_px, bool) or not isinstance(self.compose_margin_px, int) or \
                self.compose_margin_px < 0:
            _fail("compose_margin_px", self.compose_margin_px, "an integer >= 0 (pixels)")
        from .composite import REGIONS

        if self.compose_region not in REGIONS:
            _fail("compose_region", self.compose_region, " or ".join(map(repr, REGIONS)))
        from .composite import FLYING_MODES

        rel = self.compose_flying_rel
        if isinstance(rel, bool) or not isinstance(rel, (int, float)) or not 0 <= rel < 1:
            _fail("compose_flying_rel", rel, "a fraction in [0, 1) of a point's range (0 = off)")
        if self.compose_flying_mode not in FLYING_MODES:
            _fail("compose_flying_mode", self.compose_flying_mode, " or ".join(map(repr, FLYING_MODES)))
        if not isinstance(self.cuda_graphs, bool):
            _fail("cuda_graphs", self.cuda_graphs, "true or false")
        if not isinstance(self.complete_unreachable, bool):
            _fail("complete_unreachable", self.complete_unreachable, "true or false")
        if not isinstance(self.seed, int):
            _fail("seed", self.seed, "an integer")
        if not (math.isfinite(self.flow_shift) and self.flow_shift > 0):
            _fail("flow_shift", self.flow_shift, "a finite number > 0")
        if not (isinstance(self.lora_rank, int) and self.lora_rank >= 1):
            _fail("lora_rank", self.lora_rank, "an integer >= 1")
        if not (math.isfinite(self.lora_alpha) and self.lora_alpha > 0):
            _fail("lora_alpha", self.lora_alpha, "a finite number > 0")
        if self.dtype in ("bfloat16", "float16") and self.resolved_device().type == "cpu":
            _fail("dtype", self.dtype, "float32 or auto on cpu (half precision is for cuda)")
        self.metric_lift_config()  # validates the metric_* fields
        if not (math.isfinite(self.metric_anchor_inlier_threshold_m) and self.metric_anchor_inlier_threshold_m > 0):
            _fail("metric_anchor_inlier_threshold_m", self.metric_anchor_inlier_threshold_m,
                  "a finite number > 0 (metres)")
        if not isinstance(self.metric_register, bool):
            _fail("metric_register", self.metric_register, "true or false")
        if isinstance(self.metric_register_block_px, bool) or not isinstance(self.metric_register_block_px, int) \
                or self.metric_register_block_px < 0:
            _fail("metric_register_block_px", self.metric_register_block_px, "an integer >= 0 (pixels)")

    @classmethod
    def field_names(cls) -> list[str]:
        """Public field names (the ROS parameter names)."""
        return [f.name for f in dataclasses.fields(cls) if f.init]

    def metric_lift_config(self) -> MetricLiftConfig:
        """The ``metric_*`` fields as a [`MetricLiftConfig`]."""
        return MetricLiftConfig(
            inlier_threshold_m=self.metric_inlier_threshold_m, min_points=self.metric_min_points,
            min_inlier_fraction=self.metric_min_inlier_fraction,
            good_inlier_fraction=self.metric_good_inlier_fraction, good_residual_m=self.metric_good_residual_m,
            # the sampling seed, unless it is negative (a fresh draw per rollout): the fit stays deterministic
            ransac_iterations=self.metric_ransac_iterations, seed=max(self.seed, 0),
        )

    def anchor_lift_config(self) -> MetricLiftConfig:
        """The lift's configuration for a fit anchored on measured depth (``metric_anchor_inlier_threshold_m``)."""
        return dataclasses.replace(self.metric_lift_config(), inlier_threshold_m=self.metric_anchor_inlier_threshold_m)

    def registration_block_px(self) -> int | None:
        """``lifting.lift_pointmaps_with_anchor``'s ``register_block_px``: None when ``metric_register`` is off."""
        return self.metric_register_block_px if self.metric_register else None

    def resolved_device(self) -> torch.device:
        """``device`` with "auto" resolved (cuda if available, else cpu)."""
        import torch  # lazily: configs and the metric lift are used without torch (shadow node)

        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    def resolved_dtype(self) -> torch.dtype:
        """Transformer dtype: bfloat16 on cuda and float32 on cpu for "auto"."""
        import torch

        if self.dtype == "auto":
            return torch.bfloat16 if self.resolved_device().type == "cuda" else torch.float32
        return getattr(torch, self.dtype)

    def resolved_vae_dtype(self) -> torch.dtype:
        """VAE dtype: float32 for "auto"."""
        import torch

        return torch.float32 if self.vae_dtype == "auto" else getattr(torch, self.vae_dtype)

    def resolved_vae_autocast(self) -> torch.dtype | None:
        """The autocast dtype of the VAE's encode/decode, or None: "auto" is bfloat16 on a CPU device with native
        bfloat16 arithmetic (elsewhere emulated bfloat16 is slower than float32) and None on cuda."""
        import torch

        if self.vae_autocast == "off":
            return None
        if self.vae_autocast == "bfloat16":
            return torch.bfloat16
        return torch.bfloat16 if self.resolved_device().type == "cpu" and cpu_has_native_bf16() else None

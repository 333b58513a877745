# Copyright 2026 k4d developers. Apache-2.0.
"""Training configuration (one YAML file, self-validating dataclasses; unknown keys are errors).

    from k4d_worldmodel.training.config import TrainConfig
    cfg = TrainConfig.from_yaml("k4d_worldmodel/k4d_worldmodel/training/configs/default.yaml")

Sections: top-level fields (mode, geometry, optimisation, objective, checkpointing), ``model:`` (transformer
constructor kwargs for ``mode: full``), ``image_encoder:`` (tiny CLIP vision config), ``vae:``
([`VAEConfig`]), ``lora:`` ([`LoRAConfig`]) and ``base:`` ([`BaseConfig`], the checkpoint a LoRA run starts from).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ..config import CONDITION_FILLS
from ..pointmap_encoding import PointmapEncoding
from .vae import VAEConfig

MODES = ("full", "lora")
PRECISIONS = ("auto", "no", "bf16", "fp16")
DATA_FORMATS = ("auto", "k4d", "kinema4d")
LR_SCHEDULES = ("constant", "cosine")
KEEP_BEST_VAL = ("off", "change", "all")
ENCODINGS_ON = ("auto", "device", "host")  # where the encoded training clips stay (objective.encodings_placement)

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


def _from_mapping(cls, data: Mapping[str, Any] | None, where: str):
    data = dict(data or {})
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; known keys are {sorted(names)}")
    return cls(**data)


@dataclass
class LoRAConfig:
    """LoRA of ``mode: lora`` (release: r 64, alpha 32 on to_q/to_k/to_v/to_out.0 of attn1 and attn2).

    rank, alpha: a fresh adapter's size (ignored when ``base`` is a released checkpoint: its adapter, of
    ``base.lora_rank`` / ``base.lora_alpha``, is trained further). train_added_modules: also train the Kinema4D
    modules (patch_embedding_arm, arm_*, learnable_domain_embeddings) in full, as the release does.
    """

    rank: int = 64
    alpha: float = 32.0
    train_added_modules: bool = True

    def __post_init__(self) -> None:
        if not (isinstance(self.rank, int) and self.rank >= 1):
            raise ValueError(f"lora.rank must be an integer >= 1, got {self.rank!r}")
        if not (math.isfinite(float(self.alpha)) and float(self.alpha) > 0):
            raise ValueError(f"lora.alpha must be a finite number > 0, got {self.alpha!r}")
        self.alpha = float(self.alpha)


@dataclass
class BaseConfig:
    """Checkpoint a LoRA run (mode lora) or a full fine-tuning (mode full, our save_pretrained layout only)
    starts from (``loading.load_pipeline``); in mode full an empty ``checkpoint_dir`` trains from scratch.

    checkpoint_dir: our ``save_pretrained`` folder or a released checkpoint folder (``added_weights`` + LoRA).
    base_model_dir: Wan2.1-I2V base folder for a released checkpoint. variant: pmcond | full.
    lora_rank, lora_alpha: the released adapter's size. k4d_config: K4D transformer overrides for the released
    layout (num_latent_frames, latent_height, latent_width, arm_patch_size, ...; default 49 x 480 x 720).
    """

    checkpoint_dir: str = ""
    base_model_dir: str = ""
    variant: str = "pmcond"
    lora_rank: int = 64
    lora_alpha: float = 32.0
    k4d_config: dict = field(default_factory=dict)


@dataclass
class TrainConfig:
    """Everything ``k4d train`` needs besides the data and output folders.

    mode: "full" (train a small K4D transformer from scratch, the VAE first if ``vae.train``; or, with
        ``base.checkpoint_dir``, continue every transformer weight of that saved model, its VAE and image encoder
        frozen) or "lora" (fine-tune ``base`` with a LoRA).
    variant: pmcond | full | jointemb (mode full; jointemb is the "emb." ablation, conditioned on joint vectors).
        num_frames, height, width: model geometry of mode full (T = 1 + 4k, H and W multiples of 8 x patch); mode
        lora takes the base checkpoint's.
    convert_variant: mode full with ``base.checkpoint_dir`` only: rebuild the saved transformer as this variant
        before training ("" = keep its own). Every weight both variants share is kept; the robot-conditioning
        modules of the new variant start fresh (how the "emb." ablation is trained from the shipped model).
    model: K4DTransformer3DModel kwargs (mode full); geometry keys are filled in from the fields above.
    image_encoder: CLIPVisionConfig kwargs of the frozen, randomly initialised image encoder (mode full; no
        pretrained CLIP can be downloaded here; the first frame mainly enters through the condition latent).
    seed: everything random (weights, batches, noise, split). batch_size: clips per optimiser step and process.
    grad_accum: gradient accumulation steps. max_steps / time_budget_s: stop at the first reached (0 = no
        time limit). lr, weight_decay, warmup_steps, grad_clip: AdamW with linear warm-up, then the lr_schedule.
    lr_schedule: "constant" (the lr after warm-up) or "cosine" (after warm-up, a half cosine from lr down to
        lr * min_lr_ratio over lr_decay_steps steps, then flat there). The decay is counted from the step the run
        starts at, so a resumed run (``--resume``) can anneal a model that earlier calls trained at a constant lr.
        lr_decay_steps 0 means up to max_steps.
    mixed_precision: auto (bf16 on cuda, none on cpu) | no | bf16 | fp16. gradient_checkpointing: recompute
        block activations in backward. flow_shift: sigma shift of the objective (and of the saved scheduler).
    soft_mask_fraction: release soft mask (0.1). cond_dropout: robot-condition dropout for CFG.
    pointmap_encoding: mode full from scratch: how pointmaps are coded for the VAE (``minmax``, the release's
        per-clip normalisation, or the metric ``ray_depth``; a kind name or a dict of
        ``k4d_worldmodel.pointmap_encoding.PointmapEncoding`` fields). A continued or LoRA run keeps its base's.
    first_xyz_condition: mode full from scratch: condition on the measured first-frame pointmap instead of the
        release's dummy (needs a metric encoding). first_xyz_dropout: fraction of samples still trained on the
        dummy, so the model also runs without depth.
    condition_fill: what the condition video holds after frame 0 (``K4DPipeline`` ``condition_fill``): "zeros"
        (the release's), "first_frame" (frame 0 repeated: the still scene in every latent frame's channels), or ""
        (a fresh model: "zeros"; a full fine-tuning: its base's). A full fine-tuning may change it: the
        transformer's input channels keep their meaning (condition latent), only their content after frame 0 changes.
    change_weight: extra loss weight of the latent cells where the world itself moves (``objective.change_mask``:
        world points moving more than 1 cm off the robot, mostly the manipulated object); those cells weigh
        ``1 + change_weight`` in a weighted mean. 0 (default) is the release's plain MSE.
    checkpoint_every: accelerate ``save_state`` every N steps (0 = only at the end); keep_checkpoints: how many.
    log_every: loss-log period. data_format: auto | k4d | kinema4d. heldout_fraction, split_seed: the split.
    save_max_shard_mb: shard size of the saved safetensors (every file <= this). save_dtype: float32 | bfloat16
        for the saved transformer. load_workers: processes reading the episodes at start-up (0 = this one).
    encode_batch_size: clips per frozen-encoder (VAE) call when the clips are encoded once before training.
    cache_encoded: keep those encodings in ``OUT/encoded/`` (safetensors, one file per process) with a
        fingerprint of the clip files, the geometry, the pipeline's config and its frozen VAE and image-encoder
        weights; a later run into the same ``OUT`` (``--resume``) with an equal fingerprint reads them instead of
        reading and encoding the clips again (k4d episode folders only). Costs disk: about the clips' latents.
    encodings_on: where the encoded training clips stay while training: "device" (the accelerator; a batch is
        one gather there), "host" (stacked in host memory and copied over each step: about 7 MiB a clip at
        192 x 128, so 170 MiB a step of 24 clips) or "auto" (default: the accelerator when they take at most
        half of its free memory once the model is on it, else the host). "device" stops with a MemoryError
        naming both sizes when they do not fit.
    val_clips: with validation episodes (``k4d train --val-data DIR``), how many of them form the fixed
        validation batch (0: ``batch_size``; fewer when DIR holds fewer), evenly spread over DIR's sorted episodes.
        Its loss is one no-grad forward pass of that batch per ``log_every`` steps (two: overall and changing cells).
    keep_best_val: with validation episodes, also keep the model at its best validation measurement in
        ``OUT/pipeline_best/`` (written like ``OUT/pipeline/``, plus ``best_val.json``), rewritten whenever a
        measurement is strictly lower than every earlier one: "change" (default) selects on the changing cells'
        validation loss (``val_change_loss``), "all" on the overall one (``val_loss``), "off" keeps none. The
        training loss can go on falling while the held-out loss rises (memorising); this keeps the model from before.
        A resumed run goes on from the best that ``pipeline_best/best_val.json`` records. Not for a LoRA of the
        released layout (it writes no pipeline).
    """

    mode: str = "full"
    variant: str = "pmcond"
    convert_variant: str = ""
    num_frames: int = 17
    height: int = 64
    width: int = 96
    model: dict = field(default_factory=dict)
    image_encoder: dict = field(default_factory=lambda: dict(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2, image_size=32,
        patch_size=8, projection_dim=64))
    vae: VAEConfig = field(default_factory=VAEConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    base: BaseConfig = field(default_factory=BaseConfig)
    seed: int = 0
    batch_size: int = 8
    grad_accum: int = 1
    max_steps: int = 1000
    time_budget_s: float = 0.0
    lr: float = 3e-4
    weight_decay: float = 0.01
    warmup_steps: int = 50
    lr_schedule: str = "constant"
    lr_decay_steps: int = 0
    min_lr_ratio: float = 0.05
    grad_clip: float = 1.0
    mixed_precision: str = "auto"
    gradient_checkpointing: bool = False
    flow_shift: float = 3.0
    soft_mask_fraction: float = 0.1
    cond_dropout: float = 0.1
    pointmap_encoding: Any = "minmax"
    first_xyz_condition: bool = False
    first_xyz_dropout: float = 0.2
    condition_fill: str = ""
    change_weight: float = 0.0
    checkpoint_every: int = 0
    keep_checkpoints: int = 2
    log_every: int = 10
    data_format: str = "auto"
    heldout_fraction: float = 0.0
    split_seed: int = 0
    save_max_shard_mb: int = 15
    save_dtype: str = "float32"
    load_workers: int = 0
    encode_batch_size: int = 32
    cache_encoded: bool = True
    encodings_on: str = "auto"
    val_clips: int = 0
    keep_best_val: str = "change"

    def __post_init__(self) -> None:
        if isinstance(self.vae, Mapping):
            self.vae = _from_mapping(VAEConfig, self.vae, "vae")
        if isinstance(self.lora, Mapping):
            self.lora = _from_mapping(LoRAConfig, self.lora, "lora")
        if isinstance(self.base, Mapping):
            self.base = _from_mapping(BaseConfig, self.base, "base")
        for name, allowed in (("mode", MODES), ("variant", ("pmcond", "full", "jointemb")),
                              ("convert_variant", ("", "pmcond", "full", "jointemb")), ("mixed_precision", PRECISIONS),
                              ("data_format", DATA_FORMATS), ("save_dtype", ("float32", "bfloat16")),
                              ("lr_schedule", LR_SCHEDULES), ("keep_best_val", KEEP_BEST_VAL),
                              ("encodings_on", ENCODINGS_ON)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if not (isinstance(self.num_frames, int) and self.num_frames >= 1 and (self.num_frames - 1) % 4 == 0):
            raise ValueError(f"num_frames must be 1 + 4k (Wan VAE temporal factor 4), got {self.num_frames!r}")
        for name in ("height", "width"):
            v = getattr(self, name)
            if not (isinstance(v, int) and v >= 16 and v % 16 == 0):
                raise ValueError(f"{name} must be a multiple of 16 (VAE x8, patch x2), got {v!r}")
        for name in ("batch_size", "grad_accum", "log_every", "save_max_shard_mb", "encode_batch_size"):
            v = getattr(self, name)
            if not (isinstance(v, int) and v >= 1):
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        for name in ("max_steps", "warmup_steps", "lr_decay_steps", "checkpoint_every", "keep_checkpoints", "seed",
                     "split_seed", "load_workers", "val_clips"):
            v = getattr(self, name)
            if not (isinstance(v, int) and v >= 0):
                raise ValueError(f"{name} must be an integer >= 0, got {v!r}")
        for name in ("lr", "weight_decay", "grad_clip", "time_budget_s", "flow_shift", "change_weight"):
            v = float(getattr(self, name))
            if not (math.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {getattr(self, name)!r}")
            setattr(self, name, v)
        if self.flow_shift <= 0:
            raise ValueError(f"flow_shift must be > 0, got {self.flow_shift!r}")
        ratio = float(self.min_lr_ratio)
        if not (math.isfinite(ratio) and 0.0 <= ratio <= 1.0):
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio!r}")
        self.min_lr_ratio = ratio
        encoding = PointmapEncoding.from_config(self.pointmap_encoding)
        self.pointmap_encoding = encoding.to_dict() if encoding.metric else encoding.kind
        if not isinstance(self.first_xyz_condition, bool):
            raise ValueError(f"first_xyz_condition must be true or false, got {self.first_xyz_condition!r}")
        if self.first_xyz_condition and not encoding.metric:
            raise ValueError("first_xyz_condition needs a metric pointmap_encoding (e.g. ray_depth), not "
                             f"{encoding.kind!r}")
        if self.condition_fill not in ("", *CONDITION_FILLS):
            raise ValueError(f"condition_fill must be '' (the base's) or one of {CONDITION_FILLS}, got "
                             f"{self.condition_fill!r}")
        if self.condition_fill and self.mode == "lora":
            raise ValueError("condition_fill is fixed by a LoRA run's base model; leave it out (or use mode full)")
        for name in ("soft_mask_fraction", "cond_dropout", "heldout_fraction", "first_xyz_dropout"):
            v = float(getattr(self, name))
            if not 0.0 <= v < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)!r}")
            setattr(self, name, v)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> "TrainConfig":
        return _from_mapping(cls, data, "train config")

    @classmethod
    def from_yaml(cls, path: str | Path) -> "TrainConfig":
        """Read a YAML file; a bare name (``default``, ``smoke``) is looked up in ``training/configs/``."""
        import yaml

        p = Path(path)
        if not p.is_file() and (CONFIG_DIR / f"{path}.yaml").is_file():
            p = CONFIG_DIR / f"{path}.yaml"
        if not p.is_file():
            raise FileNotFoundError(f"train config not found: {path} (built-in: "
                                    f"{sorted(q.stem for q in CONFIG_DIR.glob('*.yaml'))})")
        return cls.from_dict(yaml.safe_load(p.read_text()) or {})

    def to_dict(self) -> dict:
        return asdict(self)

    def transformer_kwargs(self) -> dict:
        """K4DTransformer3DModel kwargs: ``model`` plus the geometry (latent grid = pixels / the VAE's spatial
        factor, 8 or 4; frames (T-1)/4+1)."""
        kw = dict(self.model)
        kw.setdefault("variant", self.variant)
        kw.setdefault("num_latent_frames", (self.num_frames - 1) // 4 + 1)
        kw.setdefault("latent_height", self.height // self.vae.spatial_factor)
        kw.setdefault("latent_width", self.width // self.vae.spatial_factor)
        if "patch_size" in kw:
            kw["patch_size"] = tuple(kw["patch_size"])
        if "arm_patch_size" in kw:
            kw["arm_patch_size"] = tuple(kw["arm_patch_size"])
        return kw

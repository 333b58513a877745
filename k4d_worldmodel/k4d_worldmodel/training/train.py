# Copyright 2026 k4d developers. Apache-2.0.
"""Train the K4D world model (small model from scratch, or LoRA fine-tuning of a checkpoint) with accelerate.

    k4d train --data /tmp/k4d_ds --config default --out /tmp/k4d_run --max-steps 2000 --time-budget-s 300
    # several GPUs (DDP / FSDP / DeepSpeed as set by `accelerate config`):
    accelerate launch -m k4d_worldmodel.training.train --data /tmp/k4d_ds --config default --out /tmp/k4d_run

Modes (``mode:`` in the config):

* ``full``: a [`K4DTransformer3DModel`] of the config's size (same class and forward as the 14B model) trained
  from scratch, with a small Wan VAE trained first on the same clips (``vae:``; see ``training/vae.py``) and a
  frozen, randomly initialised tiny CLIP vision encoder. Output: ``OUT/pipeline/`` (``K4DPipeline.save_pretrained``,
  safetensors sharded to ``save_max_shard_mb``), loadable by ``loading.load_pipeline``.
* ``lora``: loads ``base.checkpoint_dir`` with ``loading.load_pipeline`` (our layout, or the released layout with
  ``base.base_model_dir``), freezes it, and trains a peft LoRA on ``to_q/to_k/to_v/to_out.0`` of ``attn1`` and
  ``attn2`` plus (``lora.train_added_modules``) the Kinema4D modules. A released checkpoint's own adapter is loaded
  unfused and trained further. Output: ``OUT/lora/`` (``pytorch_lora_weights.safetensors`` in the released key
  format + ``added_weights.safetensors``: use it as ``checkpoint_dir`` with the same ``base_model_dir``) and, for our
  layout, also ``OUT/pipeline/`` with the LoRA fused.

Both: flow matching on encoder outputs cached once per clip (``training/objective.py``: the pipeline's own
conditioning code, soft mask, robot-condition dropout), AdamW, linear warm-up, gradient clipping, mixed precision
(bf16 on GPU), optional gradient checkpointing, resumable ``accelerate`` checkpoints in ``OUT/checkpoints/``
(``--resume`` continues from the newest; only trainable parameters are written, so a 14B LoRA state stays small),
a tqdm bar with the loss, and ``OUT/train_metrics.json`` (loss history, loss on a fixed batch before/after, timing).
The fixed batch is of training clips, so its loss cannot tell learning from memorising: ``--val-data DIR``
(``train(val_data=...)``) adds a validation loss, the same measure on a fixed batch of DIR's episodes (other
episodes than the training clips, e.g. held-out seeds; ``val_clips`` of them, encoded by the same frozen
encoders): ``val_loss_before/after`` and ``val_change_loss_before/after`` in the metrics, ``val_loss`` and
``val_change_loss`` in every ``log_every`` entry of the history (on the bar, or a log line without it).
Training loss can go on falling while the validation loss rises (memorising), so with ``--val-data`` the model
at the best validation measurement so far is also kept (``keep_best_val``, ``--keep-best-val``: selected on
``val_change_loss``, the default, or on ``val_loss``): ``OUT/pipeline_best/``, written as ``OUT/pipeline/`` is,
with ``best_val.json`` (its step and losses); ``best_val_*`` in the metrics. A resumed run goes on from that best.
The encodings are kept in ``OUT/encoded/`` (``cache_encoded``), so a resumed run on the same clips with the same
frozen encoders starts training at once (``encoded_cache``: hit / miss / off in the metrics).

Several processes: each reads its own share of the clips (``load_clips``) and draws ``batch_size`` of them per
step, so the global batch is ``num_processes x batch_size``; every process reads the same validation clips and
computes the same validation loss (no collective call). The time budget and a non-finite loss are decided
jointly (one rank stopping alone would leave the others in the next all-reduce), and the replicas are checked
identical at the end (``replica_spread`` in the metrics). The transformer is wrapped as the accelerate config
says (DDP, FSDP or DeepSpeed); the VAE, a few million parameters, always trains under plain DDP.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from .config import KEEP_BEST_VAL, TrainConfig

STATE_FILE = "trainer_state.json"
BEST_DIR = "pipeline_best"  # OUT/pipeline_best: the model at the best validation measurement (keep_best_val)
BEST_FILE = "best_val.json"  # in it: that measurement's step, losses, selection key and validation clips


# ------------------------------------------------------------------------------------------------ building
def build_image_encoder(cfg: TrainConfig, seed: int):
    """Frozen random tiny CLIP vision model + matching processor (no pretrained weights can be fetched)."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(seed)
    enc = CLIPVisionModel(CLIPVisionConfig(**cfg.image_encoder)).eval()
    size = int(cfg.image_encoder.get("image_size", 224))
    proc = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    return enc, proc


def build_transformer(cfg: TrainConfig, z_dim: int | None = None) -> "K4DTransformer3DModel":  # noqa: F821
    """A fresh transformer of ``cfg``'s size (float32, CPU, seeded by ``cfg.seed``) for a VAE of ``z_dim``
    latent channels (default: the config's VAE): it denoises those channels and is conditioned on them twice
    plus the mask."""
    from ..models.transformer_k4d import K4DTransformer3DModel

    torch.manual_seed(cfg.seed)
    kw = cfg.transformer_kwargs()
    z = int(cfg.vae.z_dim if z_dim is None else z_dim)
    if kw.setdefault("out_channels", z) != z:
        raise ValueError(f"model.out_channels is {kw['out_channels']} but the VAE has z_dim {z}: the transformer "
                         "denoises the VAE's latent channels (leave model.out_channels out)")
    kw.setdefault("in_channels", 2 * z + kw.get("mask_channels", 4))
    kw.setdefault("image_dim", int(cfg.image_encoder.get("hidden_size", 64)))
    return K4DTransformer3DModel(**kw)


def build_full_pipeline(cfg: TrainConfig, vae) -> "K4DPipeline":  # noqa: F821
    """A fresh K4D pipeline of ``cfg``'s size around ``vae`` (float32, CPU)."""
    from ..pipelines.pipeline_k4d import K4DPipeline, make_scheduler

    transformer = build_transformer(cfg, int(vae.config.z_dim))
    enc, proc = build_image_encoder(cfg, cfg.seed + 7)
    pipe = K4DPipeline(vae=vae, transformer=transformer, scheduler=make_scheduler("unipc", cfg.flow_shift),
                       image_encoder=enc, image_processor=proc, pointmap_encoding=cfg.pointmap_encoding,
                       first_xyz_condition=cfg.first_xyz_condition, condition_fill=cfg.condition_fill or "zeros")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def pipeline_around_vae(vae_dir: str | os.PathLike, config: TrainConfig | str | os.PathLike) -> "K4DPipeline":  # noqa: F821
    """A fresh pipeline of ``config`` around the VAE saved in ``vae_dir`` (what ``k4d train-vae`` or
    ``device_train.sh --vae-only`` writes), for measuring that VAE alone (``evaluate.autoencode``,
    ``bench_vae_geometry.py --vae``): the geometry and the pointmap code are the config's; the transformer is
    untrained. A VAE of another latent size than the config's model stops here, by name."""
    from diffusers import AutoencoderKLWan

    if not (Path(vae_dir) / "config.json").is_file():
        raise FileNotFoundError(f"{vae_dir} holds no saved VAE (config.json)")
    cfg = config if isinstance(config, TrainConfig) else TrainConfig.from_yaml(config)
    vae = AutoencoderKLWan.from_pretrained(str(vae_dir), use_safetensors=True, local_files_only=True).eval()
    if int(vae.config.z_dim) != int(cfg.vae.z_dim):
        raise ValueError(f"the VAE in {vae_dir} has z_dim {vae.config.z_dim}, the config's VAE {cfg.vae.z_dim}: "
                         "it was trained for another config")
    return build_full_pipeline(cfg, vae)


def load_base_pipeline(cfg: TrainConfig, dtype: torch.dtype) -> tuple[Any, str]:
    """Load ``cfg.base`` (LoRA, or a full fine-tuning of a k4d model); returns ``(pipe, layout)`` with layout
    "released" or "k4d"."""
    from ..config import WorldModelConfig
    from ..loading import is_k4d_saved_dir, load_pipeline

    b = cfg.base
    released = not is_k4d_saved_dir(b.checkpoint_dir)
    wm = WorldModelConfig(checkpoint_dir=b.checkpoint_dir, base_model_dir=b.base_model_dir, variant=b.variant,
                          device="cpu", dtype="float32", lora_mode="peft" if released else "fuse",
                          lora_rank=int(b.lora_rank), lora_alpha=float(b.lora_alpha))
    overrides = {k: v for k, v in dict(b.k4d_config).items() if k != "variant"} if released else {}
    pipe = load_pipeline(wm, **overrides)
    if dtype != torch.float32:
        pipe.transformer.to(dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe, "released" if released else "k4d"


def convert_transformer_variant(pipe, variant: str, seed: int = 0) -> int:
    """Replace ``pipe.transformer`` by the same model of another variant, keeping every tensor whose name and shape
    both have (the blocks, patch and time embeddings, ...); returns how many were kept."""
    from ..models.transformer_k4d import K4DTransformer3DModel

    old = pipe.transformer
    kw = {k: v for k, v in dict(old.config).items() if not k.startswith("_")}
    kw["variant"] = variant
    torch.manual_seed(seed)
    new = K4DTransformer3DModel(**kw)
    if old.dtype != new.dtype:
        new = new.to(dtype=old.dtype)
    target = new.state_dict()
    shared = {k: v for k, v in old.state_dict().items() if k in target and target[k].shape == v.shape}
    new.load_state_dict(shared, strict=False)
    pipe.register_modules(transformer=new)
    return len(shared)


class _SomeFields(torch.utils.data.Dataset):
    """``ds`` whose clips keep only ``keys`` (None: all), and every ``full_every``-th clip (0: none) also
    ``full_keys``; ``derive`` adds fields computed from the whole clip first (name -> picklable function).

    Cut in the reading process, so that only what the caller uses crosses from a DataLoader worker: a
    192 x 128 clip is 19 MB pickled, of which the VAE uses 6 (its RGB and pointmap code); reading 2,131 whole
    clips took 111 s on a 16-core GPU machine."""

    def __init__(self, ds, keys: Sequence[str] | None, full_keys: Sequence[str] = (), full_every: int = 0,
                 derive: dict[str, Any] | None = None):
        self.ds, self.full_keys, self.full_every = ds, tuple(full_keys), int(full_every)
        self.keys = None if keys is None else tuple(keys)
        self.derive = dict(derive or {})

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> dict[str, Any]:
        clip = self.ds[i]
        for name, fn in self.derive.items():
            clip[name] = fn(clip)
        if self.keys is None:
            return clip
        keys = self.keys + (self.full_keys if self.full_every and i % self.full_every == 0 else ())
        missing = [k for k in keys if k not in clip]
        if missing:
            raise KeyError(f"clip {i} of {getattr(self.ds, 'root', 'the dataset')} has no {missing}")
        return {k: clip[k] for k in keys}


def load_clips(ds, workers: int = 0, keys: Sequence[str] | None = None, full_keys: Sequence[str] = (),
               full_every: int = 0, derive: dict[str, Any] | None = None, shard: bool = True) -> list[dict[str, Any]]:
    """Every clip of ``ds`` in order; ``workers`` > 0 reads them in that many DataLoader worker processes
    (decompressing thousands of episodes is the slow part of start-up on one core). ``keys``: keep only these
    fields of each clip (None: all), and of every ``full_every``-th clip (of ``ds``, before any sharding) also
    ``full_keys``; the rest is dropped where the clip is read (``_SomeFields``). ``derive`` (name -> picklable
    function of the whole clip, e.g. ``vae.raised_mask``) adds fields computed there, kept with ``keys``.
    Under several processes each reads its share (every world-th clip), or with ``shard=False`` all of them."""
    from .distributed import dist_world

    if keys is not None or derive:
        ds = _SomeFields(ds, None if keys is None else tuple(keys) + tuple(derive or ()), full_keys, full_every,
                         derive)
    rank, world = dist_world()
    if world > 1:
        # data-parallel: each process reads its own shard (every world-th clip), with its share of the workers
        from torch.utils.data import Subset

        if shard and len(ds) < world:
            raise ValueError(f"{len(ds)} training clips cannot be shared by {world} processes")
        if shard:
            ds = Subset(ds, range(rank, len(ds), world))
        workers = workers // world
    if workers <= 0 or len(ds) < 2 * workers:
        return [ds[i] for i in range(len(ds))]
    from torch.utils.data import DataLoader

    from .data import collate_clips

    # batches of 16, fewer where that would leave workers idle (a small set such as the validation clips)
    loader = DataLoader(ds, batch_size=max(1, min(16, len(ds) // workers)), num_workers=int(workers),
                        collate_fn=collate_clips, multiprocessing_context="spawn")
    return [c for batch in loader for c in batch]


def _resolve_precision(cfg: TrainConfig) -> str:
    if cfg.mixed_precision == "auto":
        return "bf16" if torch.cuda.is_available() else "no"
    return cfg.mixed_precision


def _fixed_batch_loss(transformer, batch: dict[str, torch.Tensor], seed: int, region: str = "all") -> float:
    """Loss on a fixed batch: fixed noise, sigmas evenly spread in (0, 1), no soft mask, no dropout, unweighted
    (comparable across runs whatever their ``change_weight``); ``region="change"``: over the changing cells only."""
    from .objective import flow_matching_step

    b = batch["x0"].shape[0]
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(batch["x0"].shape, generator=g).to(batch["x0"].device)
    sigmas = (torch.arange(b, dtype=torch.float32) + 0.5) / b
    was_training = transformer.training
    transformer.eval()
    with torch.no_grad():
        loss = flow_matching_step(transformer, batch, g, soft_mask_fraction=0.0, cond_dropout=0.0, sigmas=sigmas,
                                  noise=noise, region=region)
    transformer.train(was_training)
    return float(loss)


def _batch_losses(transformer, batches: dict[str, dict[str, torch.Tensor]], seed: int) -> dict[str, float]:
    """[`_fixed_batch_loss`] of each named batch, overall and over its changing cells: ``{name}_loss`` and
    ``{name}_change_loss`` (run it under the training's autocast)."""
    out = {}
    for name, batch in batches.items():
        out[f"{name}_loss"] = _fixed_batch_loss(transformer, batch, seed)
        out[f"{name}_change_loss"] = _fixed_batch_loss(transformer, batch, seed, "change")
    return out


def check_val_folder(val_data: str | os.PathLike) -> Path:
    """``val_data`` as a Path, checked before anything is trained: FileNotFoundError naming it when it is not a
    folder of episodes (k4d ``*.npz``, or the Kinema4D layout)."""
    from .data import detect_format

    root = Path(val_data)
    if not root.is_dir():
        raise FileNotFoundError(f"validation data (--val-data) {root}: no such folder")
    try:
        detect_format(root)
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"validation data (--val-data): {exc}") from None
    return root


def load_val_encodings(pipe, val_data: str | os.PathLike, geom: tuple[int, int, int], encoding, n: int,
                       reference: dict[str, torch.Tensor], workers: int = 0, encode_batch_size: int = 32
                       ) -> tuple[list[dict[str, torch.Tensor]], dict[str, Any]]:
    """The validation batch's encodings: ``n`` episodes of ``val_data`` (split "all"), evenly spread over its
    sorted names, read at the model's ``geom`` (frames, height, width) in the pointmap ``encoding`` and encoded by
    ``pipe``'s frozen encoders as the training clips are. Every process reads the same clips (no share).

    Returns ``(encodings, info)``. Raises ValueError, naming the clip, for a clip of fewer frames than the model's
    (they would be repeated) or whose encodings differ in fields or shapes from ``reference`` (a training clip's),
    and when no clip is usable (no robot pixel in any)."""
    from torch.utils.data import Subset

    from .data import open_dataset
    from .objective import encode_clips

    ds = open_dataset(val_data, *geom, split="all", pointmap_encoding=encoding)
    picked = sorted(set(np.linspace(0, len(ds) - 1, min(n, len(ds))).round().astype(int).tolist()))
    clips = load_clips(Subset(ds, picked), min(workers, len(picked) // 2), shard=False)
    for clip in clips:
        frames = int(clip["frame_index"][-1]) + 1
        if frames < geom[0]:
            raise ValueError(f"validation clip {clip['name']} of {val_data} has {frames} frames, fewer than the "
                             f"model's {geom[0]}: validation episodes must have the model's geometry "
                             f"({geom[0]} x {geom[1]} x {geom[2]}) or more frames")
    items, skipped = encode_clips(pipe, clips, encode_batch_size)
    if not items:
        raise ValueError(f"no usable validation clip in {val_data} ({len(skipped)} read, none with a robot pixel)")
    for clip, item in zip([c for c in clips if c["name"] not in dict(skipped)], items):
        bad = [k for k in sorted(set(item) | set(reference))
               if k not in item or k not in reference or item[k].shape != reference[k].shape]
        if bad:
            k = bad[0]
            raise ValueError(f"validation clip {clip['name']} of {val_data} encodes to {k} "
                             f"{tuple(item[k].shape) if k in item else 'missing'}, the training clips to "
                             f"{tuple(reference[k].shape) if k in reference else 'missing'}: it cannot be "
                             f"scored by this model")
    return items, {"val_data": str(val_data), "val_clips": len(items), "val_episodes": len(ds),
                   "val_skipped": [list(x) for x in skipped]}


def cpu_float_copy(module: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``module`` on the CPU with its floating-point parameters and buffers in float32, for saving a
    model that goes on training: each tensor is copied straight to the CPU (no second copy on the GPU), and the
    module itself is left as it is."""
    import copy

    def cpu32(t: torch.Tensor) -> torch.Tensor:
        return t.detach().to("cpu", torch.float32 if t.is_floating_point() else t.dtype, copy=True)

    memo: dict[int, Any] = {id(b): cpu32(b) for b in module.buffers()}
    memo.update({id(p): torch.nn.Parameter(cpu32(p), requires_grad=p.requires_grad) for p in module.parameters()})
    return copy.deepcopy(module, memo)


def save_pipeline_dir(pipe, transformer: torch.nn.Module, cfg: TrainConfig, dest: str | os.PathLike
                      ) -> dict[str, int]:
    """Save ``pipe`` with ``transformer`` (on the CPU, float32, a LoRA already fused in) as its transformer to
    ``dest``, as ``OUT/pipeline/`` is written: ``save_pretrained`` in safetensors shards of at most
    ``cfg.save_max_shard_mb``, the transformer in ``cfg.save_dtype``; the VAE and image encoder are moved to the
    CPU. ``pipe.transformer`` is ``transformer`` (or its ``save_dtype`` cast) afterwards. Returns the bytes of each
    safetensors file written, by path relative to ``dest``."""
    dest = Path(dest)
    save_dtype = torch.bfloat16 if cfg.save_dtype == "bfloat16" else torch.float32
    pipe.transformer = transformer if save_dtype == torch.float32 else transformer.to(save_dtype)
    pipe.vae.to("cpu")
    pipe.image_encoder.to("cpu")
    pipe.save_pretrained(str(dest), safe_serialization=True, max_shard_size=f"{cfg.save_max_shard_mb}MB")
    return {str(p.relative_to(dest)): p.stat().st_size for p in dest.rglob("*.safetensors")}


def read_best_val(out: str | os.PathLike) -> dict | None:
    """The best validation measurement recorded in ``OUT/pipeline_best/best_val.json`` (None: no such file)."""
    path = Path(out) / BEST_DIR / BEST_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def _latest_checkpoint(ckpt_root: Path) -> Path | None:
    found = sorted(ckpt_root.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
    return found[-1] if found else None


# ------------------------------------------------------------------------------------------------ training
def _decay_span(cfg: TrainConfig, decay_from: int) -> int:
    return cfg.lr_decay_steps or max(cfg.max_steps - decay_from, 1)


def lr_factor(step: int, cfg: TrainConfig, decay_from: int = 0) -> float:
    """The multiplier of ``cfg.lr`` at optimiser step ``step`` (``LambdaLR``): linear warm-up over
    ``cfg.warmup_steps``, then ``cfg.lr_schedule``: 1 ("constant"), or a half cosine from 1 at ``decay_from``
    (the step the run started at) down to ``cfg.min_lr_ratio`` after ``cfg.lr_decay_steps`` steps (0: up to
    ``cfg.max_steps``), flat afterwards ("cosine"). Not diffusers' ``get_scheduler``: its cosine counts from step
    0 and ends at 0, where a resumed call must anneal from the step it resumes at to a floor."""
    warm = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps > 0 else 1.0
    if cfg.lr_schedule == "constant":
        return warm
    frac = min(max((step - decay_from) / _decay_span(cfg, decay_from), 0.0), 1.0)
    return warm * (cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * frac)))


def train(data: str | os.PathLike, config: TrainConfig | str | os.PathLike, out: str | os.PathLike,
          resume: bool = False, max_steps: int | None = None, time_budget_s: float | None = None,
          progress: bool = True, log=None, val_data: str | os.PathLike | None = None) -> dict:
    """Run one training job (see module docstring); returns the metrics also written to ``OUT/train_metrics.json``.

    ``max_steps`` / ``time_budget_s`` override the config's. ``val_data``: a folder of validation episodes
    ([`load_val_encodings`]; ``cfg.val_clips`` of them) whose loss is reported beside the fixed batch's; unless
    ``cfg.keep_best_val`` is "off", the model at the lowest of those measurements so far is kept in
    ``OUT/pipeline_best/`` (``best_val_*`` in the metrics). Raises ValueError / FileNotFoundError naming the
    offending argument, config field or file.
    """
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration, set_seed
    from safetensors.torch import load_file, save_file
    from tqdm.auto import tqdm

    from .data import open_dataset
    from .lora import add_lora, lora_module_names, merge_lora, save_released_lora, set_trainable
    from .objective import EncodedBank, encode_clips, encoded_fingerprint, encoded_nbytes, encodings_placement, \
        flow_matching_step, load_encoded, save_encoded, stack_encoded
    from .distributed import any_rank, check_replicas
    from .vae import train_vae

    cfg = config if isinstance(config, TrainConfig) else TrainConfig.from_yaml(config)
    if max_steps is not None:
        cfg.max_steps = int(max_steps)
    if time_budget_s is not None:
        cfg.time_budget_s = float(time_budget_s)
    if cfg.mode == "lora" and not cfg.base.checkpoint_dir:
        raise ValueError("mode 'lora' needs base.checkpoint_dir (config) or --base-checkpoint: the checkpoint to "
                         "fine-tune")
    if cfg.convert_variant and not (cfg.mode == "full" and cfg.base.checkpoint_dir):
        raise ValueError(f"convert_variant={cfg.convert_variant!r} rebuilds a saved model: it needs mode 'full' with "
                         f"base.checkpoint_dir (or --base-checkpoint); set variant instead to train one from scratch")
    if val_data is not None:
        val_data = check_val_folder(val_data)  # before minutes of VAE training or encoding
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    precision = _resolve_precision(cfg)
    acc = Accelerator(mixed_precision=precision, gradient_accumulation_steps=cfg.grad_accum,
                      cpu=not torch.cuda.is_available(),
                      project_config=ProjectConfiguration(project_dir=str(out), automatic_checkpoint_naming=False))
    say = log or (lambda msg: acc.print(msg, file=sys.stderr))
    set_seed(cfg.seed)
    t_start = time.perf_counter()
    metrics: dict[str, Any] = {"mode": cfg.mode, "device": str(acc.device), "num_processes": acc.num_processes,
                               "mixed_precision": precision, "torch": torch.__version__}
    if acc.is_main_process:
        import yaml

        (out / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))

    # 1. Model
    layout = "k4d"
    continued = cfg.mode == "full" and bool(cfg.base.checkpoint_dir)  # full fine-tuning of a saved model
    if continued:
        from ..loading import is_k4d_saved_dir

        if not is_k4d_saved_dir(cfg.base.checkpoint_dir):
            raise ValueError(f"mode 'full' with base.checkpoint_dir continues a k4d save_pretrained folder; "
                             f"{cfg.base.checkpoint_dir} is not one (fine-tune a released checkpoint with mode 'lora')")
        pipe, layout = load_base_pipeline(cfg, torch.float32)
        geom = (pipe.num_frames, pipe.height, pipe.width)
        metrics["continued_from"] = str(cfg.base.checkpoint_dir)
        if cfg.convert_variant and cfg.convert_variant != pipe.variant:
            kept = convert_transformer_variant(pipe, cfg.convert_variant, cfg.seed)
            metrics["converted_to"] = cfg.convert_variant
            say(f"train: transformer rebuilt as variant {cfg.convert_variant!r}; {kept} shared tensors kept, "
                f"its robot-conditioning modules start fresh")
        if cfg.condition_fill and cfg.condition_fill != pipe.condition_fill:
            say(f"train: condition_fill {pipe.condition_fill!r} -> {cfg.condition_fill!r}")
            pipe.register_to_config(condition_fill=cfg.condition_fill)
            metrics["condition_fill_changed_to"] = cfg.condition_fill
        say(f"train: full fine-tuning of {cfg.base.checkpoint_dir} (its VAE and image encoder stay frozen; the "
            "config's model, vae and geometry fields are not used)")
    elif cfg.mode == "full":
        geom = (cfg.num_frames, cfg.height, cfg.width)
        vae_dir = out / "vae"
        if cfg.vae.pretrained:
            from diffusers import AutoencoderKLWan

            vae = AutoencoderKLWan.from_pretrained(cfg.vae.pretrained, use_safetensors=True, local_files_only=True)
        elif cfg.vae.train and resume and (vae_dir / "config.json").is_file():
            from diffusers import AutoencoderKLWan

            vae = AutoencoderKLWan.from_pretrained(str(vae_dir), use_safetensors=True, local_files_only=True)
            say(f"train: resuming with the VAE in {vae_dir}")
        else:
            vae = None
    else:
        base_dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        pipe, layout = load_base_pipeline(cfg, base_dtype)
        geom = (pipe.num_frames, pipe.height, pipe.width)

    # 2. Data (clips at the model's geometry)
    encoding = cfg.pointmap_encoding if cfg.mode == "full" and not continued else pipe.pointmap_encoding
    ds = open_dataset(data, *geom, split="train", heldout_fraction=cfg.heldout_fraction, split_seed=cfg.split_seed,
                      pointmap_encoding=encoding)
    if cfg.data_format != "auto" and ds.format != cfg.data_format:
        raise ValueError(f"data_format is {cfg.data_format!r} but {data} holds the {ds.format!r} format")
    if cfg.mode == "full" and not continued and vae is not None:
        pipe = build_full_pipeline(cfg, vae)  # before the data: its frozen encoders key the encoded cache
    # the encodings of an earlier run on the same clips with the same frozen encoders (a --resume call): reading
    # and encoding them again would cost minutes at 192 x 128 (step 3)
    cache_path = out / "encoded" / f"process{acc.process_index}-of-{acc.num_processes}.safetensors"
    use_cache = cfg.cache_encoded and ds.format == "k4d"
    cache_key = functools.partial(encoded_fingerprint, ds, process=(acc.process_index, acc.num_processes))
    fingerprint = cached = None
    t_load = time.perf_counter()  # load_s: reading the clips, or the fingerprint and the cached encodings
    if use_cache and (cfg.mode != "full" or continued or vae is not None):  # the frozen encoders exist already
        fingerprint = cache_key(pipe)
        cached = load_encoded(cache_path, fingerprint)
    hit = not any_rank([cached is None], acc.device)[0]  # every process has its share, or all read the clips
    metrics["encoded_cache"] = "hit" if hit else ("miss" if use_cache else "off")
    metrics["geometry"] = {"num_frames": geom[0], "height": geom[1], "width": geom[2]}
    if hit:
        cache, extra = cached
        skipped = [tuple(x) for x in extra.get("skipped", [])]
        n_clips = len(cache) + len(skipped)
        metrics["pointmap_clipped"] = dict(extra.get("pointmap_clipped", {}))
    else:
        cached = None  # all processes read their clips when any of them found no cache of its share
        clips = load_clips(ds, cfg.load_workers)
        n_clips = len(clips)
    metrics["load_s"] = time.perf_counter() - t_load
    metrics["train_episodes"] = int(acc.reduce(torch.tensor(n_clips, device=acc.device), "sum"))
    say(f"train: {metrics['train_episodes']} training clips of {geom[0]} x {geom[1]} x {geom[2]} from {data}"
        + (f" ({n_clips} in process 0 of {acc.num_processes})" if acc.num_processes > 1 else "")
        + (f"; their encodings read from {cache_path.parent}" if hit else ""))
    if not hit:
        metrics["pointmap_clipped"] = check_pointmap_code(ds, clips, say)

    if cfg.mode == "full" and not continued and vae is None:
        if cfg.vae.train:  # data-parallel like the transformer: every process trains on its shard
            vae, vae_metrics = train_vae(clips, cfg.vae, vae_dir, device=acc.device, mixed_precision=precision,
                                         seed=cfg.seed, progress=progress, log=say)
            metrics["vae"] = {k: v for k, v in vae_metrics.items() if k not in ("latents_mean", "latents_std")}
        else:
            from .vae import build_vae

            torch.manual_seed(cfg.seed)
            vae = build_vae(cfg.vae).eval()
        pipe = build_full_pipeline(cfg, vae)
        if use_cache:  # the encodings are written after step 3 for a later run to read
            fingerprint = cache_key(pipe)
    transformer = pipe.transformer
    for module in (pipe.vae, pipe.image_encoder):
        module.requires_grad_(False).eval()
    pipe.vae.to(acc.device)
    pipe.image_encoder.to(acc.device)
    transformer.to(acc.device)

    if cfg.mode == "lora":
        transformer.requires_grad_(False)
        if layout == "k4d":
            add_lora(transformer, cfg.lora.rank, cfg.lora.alpha)
        set_trainable(transformer, cfg.lora.train_added_modules)
        metrics["lora_modules"] = len(lora_module_names(transformer))
    else:
        transformer.requires_grad_(True)
    for name in getattr(transformer, "unused_modules", ()):
        transformer.get_submodule(name).requires_grad_(False)

    n_train = sum(p.numel() for p in transformer.parameters() if p.requires_grad)
    metrics["params_total"] = sum(p.numel() for p in transformer.parameters())
    metrics["params_trainable"] = n_train
    if cfg.gradient_checkpointing:
        transformer.enable_gradient_checkpointing()
    say(f"train: mode {cfg.mode} ({layout}), transformer {metrics['params_total'] / 1e6:.2f} M params, "
        f"{n_train / 1e6:.2f} M trainable, precision {precision}, device {acc.device}")
    reach = transformer.reachable_basis()
    if reach is not None:  # the velocity has directions this model cannot output (K4DTransformer3DModel)
        out_dim = transformer.proj_out.weight.shape[0]
        metrics["unreachable_fraction"] = 1.0 - reach.shape[1] / out_dim
        say(f"train: warning: each token outputs {out_dim} values from a {transformer.proj_out.weight.shape[1]}-wide "
            f"hidden state, so {out_dim - reach.shape[1]} of its directions are out of reach: the loss cannot fall "
            f"under about {metrics['unreachable_fraction']:.2f} (the noise's share there), and sampling completes "
            "them (complete_unreachable). num_attention_heads x attention_head_dim >= out_channels x "
            "prod(patch_size) removes the limit")

    # 3. Encode every clip once with the frozen VAE / CLIP (the pipeline's conditioning code)
    t_enc = time.perf_counter()
    if not hit:
        cache, skipped = encode_clips(pipe, clips, cfg.encode_batch_size)
        del clips
        if fingerprint is not None:
            try:
                save_encoded(cache_path, cache, fingerprint,
                             {"skipped": skipped, "pointmap_clipped": metrics["pointmap_clipped"]})
                say(f"train: encodings kept in {cache_path} ({cache_path.stat().st_size / 2**30:.2f} GiB) for a "
                    f"resumed run (cache_encoded: false keeps none)")
            except OSError as exc:  # a full disk costs the next run its encodings, not this run its training
                with contextlib.suppress(OSError):
                    cache_path.unlink(missing_ok=True)
                metrics["encoded_cache"] = f"not written: {exc}"
                say(f"train: the encodings could not be written to {cache_path} ({exc}); training goes on, a "
                    f"later run encodes the clips again")
    for name, why in skipped:  # a clip without a visible robot cannot be conditioned on
        say(f"train: skipping clip {name}: {why}")
    if any_rank([not cache], acc.device)[0]:
        raise ValueError(f"no usable training clip in {data}"
                         + (" for one of the processes" if acc.num_processes > 1 else ""))
    metrics["encode_s"] = time.perf_counter() - t_enc
    fixed = stack_encoded(cache[: min(4, len(cache))], acc.device)  # loss before/after; its changing cells too
    probes = {"fixed_batch": fixed}
    val = None
    if val_data is not None:
        t_val = time.perf_counter()
        val_items, val_info = load_val_encodings(pipe, val_data, geom, encoding, cfg.val_clips or cfg.batch_size,
                                                 cache[0], cfg.load_workers, cfg.encode_batch_size)
        val = probes["val"] = stack_encoded(val_items, acc.device)
        metrics.update(val_info, val_s=time.perf_counter() - t_val)
        for name, why in val_info["val_skipped"]:
            say(f"train: skipping validation clip {name}: {why}")
        say(f"train: validation batch of {val_info['val_clips']} clips of {val_data} (of its "
            f"{val_info['val_episodes']} episodes), scored every {cfg.log_every} steps")
        if Path(val_data).resolve() == Path(data).resolve():
            say("train: warning: --val-data is the training folder: its loss measures no generalisation")

    # 4. Optimiser, schedule, accelerate
    params = [p for p in transformer.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.99))
    decay_from = [0]  # the step this run starts at, known once a checkpoint is resumed (below)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, cfg, decay_from[0]))
    transformer, opt, sched = acc.prepare(transformer, opt, sched)
    # the training encodings as one stacked tensor per field, on the accelerator when they fit (encodings_on):
    # a batch is then one gather there, not ~170 MiB stacked in host memory and copied over every step
    placement = encodings_placement(cfg.encodings_on, encoded_nbytes(cache), acc.device)
    bank = EncodedBank(cache, acc.device, placement, consume=True)
    metrics.update(encodings_on=placement, encodings_gib=bank.nbytes / 2**30)
    say(f"train: {len(bank)} encoded clips ({bank.nbytes / 2**30:.2f} GiB) kept "
        f"{'on ' + str(acc.device) if placement == 'device' else 'in host memory'} (encodings_on: {cfg.encodings_on})")

    def save_hook(models, weights, output_dir):
        for i, m in enumerate(models):
            core = acc.unwrap_model(m)
            sd = {n: p.detach().float().cpu().contiguous() for n, p in core.named_parameters() if p.requires_grad}
            if acc.is_main_process:
                save_file(sd, os.path.join(output_dir, f"trainable_{i}.safetensors"))
        weights.clear()

    def load_hook(models, input_dir):
        for i in range(len(models)):
            m = models.pop()
            core = acc.unwrap_model(m)
            sd = load_file(os.path.join(input_dir, f"trainable_{len(models)}.safetensors"))
            missing = set(sd) - {n for n, _ in core.named_parameters()}
            if missing:
                raise ValueError(f"checkpoint {input_dir}: parameter '{sorted(missing)[0]}' is not in the model")
            core.load_state_dict(sd, strict=False)

    acc.register_save_state_pre_hook(save_hook)
    acc.register_load_state_pre_hook(load_hook)

    ckpt_root = out / "checkpoints"
    step = 0
    history: list[dict] = []
    if resume:
        latest = _latest_checkpoint(ckpt_root)
        if latest is None:
            say(f"train: --resume given but no checkpoint in {ckpt_root}; starting at step 0")
        else:
            acc.load_state(str(latest))
            state = json.loads((latest / STATE_FILE).read_text())
            step, history = int(state["step"]), list(state.get("history", []))
            say(f"train: resumed from {latest} at step {step}")
    decay_from[0] = step
    # the model at the best validation measurement (keep_best_val): rank 0's losses decide on every process
    best_dir = out / BEST_DIR
    writes_pipeline = cfg.mode == "full" or layout == "k4d"  # a LoRA of the released layout writes none
    keep_best = val is not None and cfg.keep_best_val != "off" and writes_pipeline
    best_key = "val_loss" if cfg.keep_best_val == "all" else "val_change_loss"
    best: dict[str, Any] = {}
    if step == 0 and acc.is_main_process and best_dir.exists():  # another run's weights: not this run's best
        shutil.rmtree(best_dir)
        say(f"train: {best_dir} of an earlier run removed (this run starts at step 0)")
    if val is not None and cfg.keep_best_val != "off" and not writes_pipeline:
        say("train: keep_best_val: a LoRA of the released layout writes no pipeline; no best model is kept")
    if keep_best and step > 0:
        earlier = read_best_val(out)
        same_clips = earlier is not None and (earlier.get("val_data"), earlier.get("val_clips")) == (
            str(val_data), int(val["x0"].shape[0]))
        if same_clips and math.isfinite(float(earlier.get(best_key, math.nan))):
            best = earlier
            say(f"train: best validation so far {best_key} {best[best_key]:.4f} at step {best['step']} "
                f"({best_dir}); only a lower one replaces it")
        elif earlier is not None:
            say(f"train: {best_dir} was selected on other validation clips ({earlier.get('val_data')}, "
                f"{earlier.get('val_clips')} clips); this run's first measurement replaces it")
    if cfg.lr_schedule != "constant":
        say(f"train: lr {cfg.lr_schedule} from {cfg.lr:g} at step {step} to {cfg.lr * cfg.min_lr_ratio:g} "
            f"at step {step + _decay_span(cfg, step)}")
    metrics["start_step"] = step
    with acc.autocast():
        metrics.update({f"{k}_before": v for k, v in
                        _batch_losses(acc.unwrap_model(transformer), probes, cfg.seed + 99).items()})

    def save_checkpoint(at: int) -> None:
        path = ckpt_root / f"checkpoint-{at}"
        acc.save_state(str(path))
        if acc.is_main_process:
            (path / STATE_FILE).write_text(json.dumps({"step": at, "history": history}))
            for old in sorted(ckpt_root.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))[
                    : -cfg.keep_checkpoints or None]:
                shutil.rmtree(old, ignore_errors=True)
        acc.wait_for_everyone()

    # 5. Loop
    transformer.train()
    t_loop = time.perf_counter()
    bar = tqdm(total=cfg.max_steps, initial=step, desc=f"train[{cfg.mode}]",
               disable=not (progress and acc.is_main_process))
    window: list[float] = []
    stopped = "max_steps"
    loss_v = None
    shown: dict[str, str] = {}  # the latest validation loss, on the bar beside the loss

    # the cost of the validation passes and of the best-model saves inside the training loop's clock (metrics
    # val_s, best_saves, best_save_s)
    saves = {"n": 0, "s": 0.0, "val_s": 0.0}

    def keep_best_model(entry: dict) -> None:
        """Record ``entry`` as the best validation measurement and (main process) write the model as it is now to
        ``OUT/pipeline_best/``: into a fresh folder first, so that a stopped run never leaves half a model there."""
        best.clear()
        best.update(step=entry["step"], val_loss=entry["val_loss"], val_change_loss=entry["val_change_loss"],
                    key=best_key, val_data=str(val_data), val_clips=int(val["x0"].shape[0]))
        if acc.is_main_process:
            tmp = out / f"{BEST_DIR}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            t_save = time.perf_counter()
            snapshot = cpu_float_copy(acc.unwrap_model(transformer))
            training_transformer = pipe.transformer
            try:
                save_pipeline_dir(pipe, merge_lora(snapshot) if cfg.mode == "lora" else snapshot, cfg, tmp)
            finally:
                pipe.transformer = training_transformer
            (tmp / BEST_FILE).write_text(json.dumps(best, indent=1))
            shutil.rmtree(best_dir, ignore_errors=True)
            tmp.rename(best_dir)
            saves["n"] += 1
            saves["s"] += time.perf_counter() - t_save
        say(f"train: step {entry['step']}: best validation so far ({best_key} {entry[best_key]:.4f}), model kept in "
            f"{best_dir}")

    def log_entry(entry: dict) -> None:
        """Append a history entry, with the validation losses when there is a validation batch (and keep the
        model when they are the best so far)."""
        if val is not None:
            t_val = time.perf_counter()
            with acc.autocast():
                entry.update(_batch_losses(acc.unwrap_model(transformer), {"val": val}, cfg.seed + 99))
            saves["val_s"] += time.perf_counter() - t_val
            if acc.num_processes > 1:  # every process computed them alike; rank 0's make one decision for all
                from accelerate.utils import broadcast

                pair = broadcast(torch.tensor([entry["val_loss"], entry["val_change_loss"]], dtype=torch.float64,
                                              device=acc.device), from_process=0)
                entry["val_loss"], entry["val_change_loss"] = (float(v) for v in pair.tolist())
            shown["val"] = f"{entry['val_loss']:.4f}"
            if bar.disable:
                say(f"train: step {entry['step']}: loss {entry['loss']:.4f}, validation loss {entry['val_loss']:.4f} "
                    f"(changing cells {entry['val_change_loss']:.4f})")
            if keep_best and entry[best_key] < best.get(best_key, math.inf):
                keep_best_model(entry)
        history.append(entry)
    while step < cfg.max_steps:
        # one decision for all processes (rank 0's clock; any rank's bad loss), or the others would wait forever
        # in the next gradient all-reduce
        time_up, bad = any_rank([acc.is_main_process and bool(cfg.time_budget_s)
                                 and time.perf_counter() - t_loop > cfg.time_budget_s,
                                 loss_v is not None and not math.isfinite(loss_v)], acc.device)
        if bad:
            raise FloatingPointError(f"training loss is {loss_v} at step {step}"
                                     f"{' on some process' if acc.num_processes > 1 else ''}; lower lr ({cfg.lr})")
        if time_up:
            stopped = "time_budget"
            break
        for micro in range(cfg.grad_accum):
            g = torch.Generator().manual_seed(
                int(np.random.SeedSequence([cfg.seed, step, micro, acc.process_index]).generate_state(1)[0]))
            batch = bank.batch(torch.randint(len(bank), (cfg.batch_size,), generator=g))
            with acc.accumulate(transformer), acc.autocast():
                loss = flow_matching_step(transformer, batch, g, cfg.flow_shift, cfg.soft_mask_fraction,
                                          cfg.cond_dropout, first_xyz_dropout=cfg.first_xyz_dropout,
                                          change_weight=cfg.change_weight)
                acc.backward(loss)
                if acc.sync_gradients and cfg.grad_clip:
                    acc.clip_grad_norm_(params, cfg.grad_clip)
                opt.step()
                sched.step()
                opt.zero_grad(set_to_none=True)
        loss_v = float(loss.detach())
        if not math.isfinite(loss_v):
            continue  # raised, on every process, at the top of the loop
        step += 1
        window.append(loss_v)
        bar.set_postfix(loss=f"{loss_v:.4f}", **shown)
        bar.update()
        if step % cfg.log_every == 0 or step == cfg.max_steps:
            log_entry({"step": step, "loss": float(np.mean(window)), "t_s": time.perf_counter() - t_loop,
                       "lr": float(sched.get_last_lr()[0])})
            window = []
        if cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
            save_checkpoint(step)
    bar.close()
    if window:
        log_entry({"step": step, "loss": float(np.mean(window)), "t_s": time.perf_counter() - t_loop})
    train_s = time.perf_counter() - t_loop
    save_checkpoint(step)
    from accelerate.utils import DistributedType

    replicated = acc.distributed_type in (DistributedType.NO, DistributedType.MULTI_GPU, DistributedType.MULTI_CPU)
    # FSDP / DeepSpeed shard the parameters: there are no whole replicas to compare
    metrics["replica_spread"] = (check_replicas(acc.unwrap_model(transformer), acc.device, "train", step)
                                 if replicated else None)

    # 6. Final weights
    core = acc.unwrap_model(transformer)
    with acc.autocast():
        metrics.update({f"{k}_after": v for k, v in _batch_losses(core, probes, cfg.seed + 99).items()})
    metrics.update({"steps": step, "stopped": stopped, "train_s": train_s, "history": history,
                    "steps_per_s": (step - metrics["start_step"]) / max(train_s, 1e-9),
                    "val_s": saves["val_s"], "best_saves": saves["n"], "best_save_s": saves["s"]})
    if best:
        metrics.update(best_val_step=best["step"], best_val_loss=best["val_loss"],
                       best_val_change_loss=best["val_change_loss"], best_val_key=best_key,
                       pipeline_best_dir=str(best_dir))
    if acc.is_main_process:
        core = core.to("cpu").float()
        if cfg.mode == "lora":
            files = save_released_lora(core, out / "lora")
            metrics["lora_dir"] = str(out / "lora")
            metrics["lora_base_model_dir"] = cfg.base.base_model_dir
            say(f"train: LoRA written to {files['lora']} (+ {files['added'].name})")
        if cfg.mode == "full" or layout == "k4d":
            sizes = save_pipeline_dir(pipe, merge_lora(core) if cfg.mode == "lora" else core, cfg, out / "pipeline")
            metrics["pipeline_dir"] = str(out / "pipeline")
            metrics["checkpoint_bytes"] = int(sum(sizes.values()))
            metrics["largest_file_bytes"] = int(max(sizes.values()))
            say(f"train: pipeline written to {out / 'pipeline'} ({metrics['checkpoint_bytes'] / 2**20:.1f} MiB)")
        metrics["total_s"] = time.perf_counter() - t_start
        (out / "train_metrics.json").write_text(json.dumps(metrics, indent=1))
        say(f"train: {step} steps ({stopped}) in {train_s:.0f} s, loss {history[0]['loss'] if history else 'n/a'}"
            f" -> {history[-1]['loss'] if history else 'n/a'}; fixed-batch loss "
            f"{metrics['fixed_batch_loss_before']:.4f} -> {metrics['fixed_batch_loss_after']:.4f} (changing cells "
            f"{metrics['fixed_batch_change_loss_before']:.4f} -> {metrics['fixed_batch_change_loss_after']:.4f})"
            + (f"; validation loss {metrics['val_loss_before']:.4f} -> {metrics['val_loss_after']:.4f} (changing "
               f"cells {metrics['val_change_loss_before']:.4f} -> {metrics['val_change_loss_after']:.4f})"
               if val is not None else "")
            + (f"; best {best_key} {best[best_key]:.4f} at step {best['step']} in {best_dir}" if best else ""))
    acc.wait_for_everyone()
    acc.end_training()
    return metrics


def check_pointmap_code(ds, clips: list[dict], say, sample: int = 64) -> dict[str, float]:
    """The dataset's pointmap code against up to ``sample`` of its clips (``PointmapEncoding.warn_if_clipped``):
    logs each field the camera's view does not fit and returns the clipped fractions ({} for ``minmax``)."""
    clips = [c for c in clips if "world_xyz" in c]
    picked = clips[:: max(1, len(clips) // sample)]
    return ds.pointmap_encoding.warn_if_clipped(np.stack([c["world_xyz"] for c in picked]), say)


def train_vae_only(data: str | os.PathLike, config: TrainConfig | str | os.PathLike, out: str | os.PathLike,
                   max_steps: int | None = None, time_budget_s: float | None = None, progress: bool = True,
                   resume: bool = False) -> dict:
    """``k4d train-vae``: train only the config's VAE and save it to ``OUT`` (use as ``vae.pretrained``).

    ``resume`` continues the VAE and optimiser saved in ``OUT`` (``max_steps`` counts all runs' steps, the time
    budget this run's). Under ``accelerate launch`` with several processes the VAE trains data-parallel, each
    process on its shard of the clips (``train_vae``)."""
    from accelerate import Accelerator

    from .data import open_dataset
    from .vae import CLIP_KEYS as VAE_CLIP_KEYS, RAISED_KEY, raised_mask, train_vae

    cfg = config if isinstance(config, TrainConfig) else TrainConfig.from_yaml(config)
    # the Accelerator sets up the process group and the device (the VAE loop does its own autocast; the
    # precision is given only so that a later `train` in the same process finds the same accelerate state)
    acc = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=_resolve_precision(cfg))
    if max_steps is not None:
        cfg.vae.steps = int(max_steps)
    if time_budget_s is not None:
        cfg.vae.time_budget_s = float(time_budget_s)
    ds = open_dataset(data, cfg.num_frames, cfg.height, cfg.width, split="train",
                      heldout_fraction=cfg.heldout_fraction, split_seed=cfg.split_seed,
                      pointmap_encoding=cfg.pointmap_encoding)
    t_load = time.perf_counter()
    # the VAE reads only each clip's RGB and pointmap code (vae.clip_videos); some keep their XYZ for the check
    # (and, with vae.pointmap_raised_weight, the objects' mask computed from the whole clip where it is read)
    derive = ({RAISED_KEY: functools.partial(raised_mask, min_height_m=cfg.vae.raised_min_height_m)}
              if cfg.vae.pointmap_raised_weight else None)
    clips = load_clips(ds, cfg.load_workers, keys=VAE_CLIP_KEYS, full_keys=("world_xyz",),
                       full_every=max(1, len(ds) // 64), derive=derive)
    say = lambda m: acc.print(m, file=sys.stderr)  # noqa: E731
    say(f"train-vae: {len(clips)} clips read in {time.perf_counter() - t_load:.0f} s from {data}"
        + (f" by process 0 of {acc.num_processes} (each process reads its own share of the clips)"
           if acc.num_processes > 1 else ""))
    if acc.is_main_process:
        check_pointmap_code(ds, clips, say)
    _, metrics = train_vae(clips, cfg.vae, out, device=acc.device, mixed_precision=_resolve_precision(cfg),
                           seed=cfg.seed, progress=progress, log=say, resume=resume)
    acc.wait_for_everyone()
    return metrics


# ------------------------------------------------------------------------------------------------ CLI
def add_train_arguments(p: argparse.ArgumentParser, validation: bool = True) -> None:
    """The arguments of ``k4d train`` (``validation=False``: of ``k4d train-vae``, without ``--val-data``)."""
    p.add_argument("--data", required=True, help="episode folder (k4d *.npz) or Kinema4D layout folder")
    if validation:
        p.add_argument("--val-data", default=None, help="folder of validation episodes (same formats as --data, "
                       "all of it; e.g. held-out seeds): the fixed-batch loss on val_clips (default batch_size) of "
                       "them is reported before/after and every log_every steps (val_loss in the metrics)")
        p.add_argument("--keep-best-val", default=None, choices=KEEP_BEST_VAL,
                       help="override keep_best_val (default in the configs: change): with --val-data, also keep "
                       "the model at its lowest validation loss so far in OUT/pipeline_best/ (with best_val.json), "
                       "selected on the changing cells' loss (change), the overall one (all), or not at all (off)")
    p.add_argument("--config", required=True, help="train config YAML, or a built-in name (default, smoke, lora)")
    p.add_argument("--out", required=True, help="output folder (checkpoints/, pipeline/ or lora/, metrics)")
    p.add_argument("--resume", action="store_true", help="continue from the newest OUT/checkpoints/checkpoint-N "
                   "(train-vae: from the VAE and optimiser state in OUT)")
    p.add_argument("--max-steps", type=int, default=None, help="override max_steps")
    p.add_argument("--time-budget-s", type=float, default=None, help="override time_budget_s (transformer loop)")
    p.add_argument("--base-checkpoint", default=None, help="override base.checkpoint_dir: the checkpoint a LoRA "
                   "(mode lora) or a full fine-tuning (mode full, a k4d save_pretrained folder) starts from")
    p.add_argument("--base-model-dir", default=None, help="override base.base_model_dir (released layout)")
    p.add_argument("--load-workers", type=int, default=None, help="override load_workers (processes reading the "
                   "episodes at start-up; 0 = this one)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bar")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The config file with the command-line overrides applied (validated again)."""
    import dataclasses

    cfg = TrainConfig.from_yaml(args.config)
    base = cfg.base
    if getattr(args, "base_checkpoint", None):
        base = dataclasses.replace(base, checkpoint_dir=args.base_checkpoint)
    if getattr(args, "base_model_dir", None):
        base = dataclasses.replace(base, base_model_dir=args.base_model_dir)
    fields = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}
    if getattr(args, "load_workers", None) is not None:
        fields["load_workers"] = args.load_workers
    if getattr(args, "keep_best_val", None) is not None:
        fields["keep_best_val"] = args.keep_best_val
    return TrainConfig.from_dict({**fields, "base": base})


def run_from_args(args: argparse.Namespace) -> int:
    if getattr(args, "vae_only", False):
        train_vae_only(args.data, config_from_args(args), args.out, max_steps=args.max_steps,
                       time_budget_s=args.time_budget_s, progress=not args.no_progress, resume=args.resume)
        return 0
    train(args.data, config_from_args(args), args.out, resume=args.resume, max_steps=args.max_steps,
          time_budget_s=args.time_budget_s, progress=not args.no_progress, val_data=getattr(args, "val_data", None))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``accelerate launch -m k4d_worldmodel.training.train ...`` (same arguments as ``k4d train``)."""
    p = argparse.ArgumentParser(prog="k4d_worldmodel.training.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_train_arguments(p)
    return run_from_args(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

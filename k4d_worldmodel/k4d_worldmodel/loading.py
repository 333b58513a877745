# Copyright 2026 k4d developers. Apache-2.0.
"""Load a K4D pipeline from local folders only (never downloads; safetensors only).

    from k4d_worldmodel.config import WorldModelConfig
    from k4d_worldmodel.loading import load_pipeline
    pipe = load_pipeline(WorldModelConfig(checkpoint_dir="ckpt/kinema4d_pmcond_ckpt",
                                          base_model_dir="ckpt/Wan2.1-I2V-14B-480P-Diffusers", variant="pmcond"))

Two layouts are understood:

(a) Released Kinema4D: a ``Wan2.1-I2V-14B-480P-Diffusers`` folder (``model_index.json``, ``transformer/``,
    ``vae/``, ``image_encoder/``, ``image_processor/``, ``scheduler/``; ``text_encoder/`` and ``tokenizer/`` are
    ignored) plus a checkpoint folder with

    * ``added_weights.safetensors``: the Kinema4D modules under the transformer's own parameter names
      (``learnable_domain_embeddings``, ``patch_embedding_arm.{weight,bias}``, ``arm_ln.{weight,bias}``,
      ``arm_pos_emb``, ``arm_domain_emb`` (full only), ``arm_patch_proj.{weight,bias}``,
      ``arm_cond_proj.{weight,bias}``); mapped 1:1 onto [`K4DTransformer3DModel`].
    * ``pytorch_lora_weights.safetensors``: diffusers/peft LoRA keys
      ``transformer.blocks.{i}.attn{1,2}.{to_q,to_k,to_v,to_out.0}.lora_{A,B}.weight`` (A: [r, in], B: [out, r];
      r = 64, no alpha keys). Either fused as ``W += (alpha / r) * B @ A`` with alpha/r = 32/64 = 0.5, which is what
      the release's ``fuse_lora(lora_scale=0.5)`` does, or attached as a peft adapter (``r``, ``lora_alpha``).

    The base transformer weights (``transformer/diffusion_pytorch_model*.safetensors``) map 1:1 by name, since
    [`K4DTransformer3DModel`] subclasses ``WanTransformer3DModel``. The model is built on the meta device and each
    tensor is loaded straight to the target device/dtype, so the 14B model never sits in CPU RAM as a whole.

(b) Our own ``K4DPipeline.save_pretrained`` folder (``model_index.json`` naming ``K4DPipeline``).
"""
from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from .config import DEFAULT_CHECKPOINT, WorldModelConfig, default_checkpoint_dir
from .models.transformer_k4d import ADDED_PARAMETER_NAMES, K4DRotaryPosEmbed, K4DTransformer3DModel
from .pipelines.pipeline_k4d import K4DPipeline, make_scheduler

logger = logging.getLogger(__name__)

ADDED_WEIGHTS_FILE = "added_weights.safetensors"
LORA_FILE = "pytorch_lora_weights.safetensors"
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
_LORA_KEY = re.compile(r"^(?:transformer\.)?blocks\.(\d+)\.(attn[12]\.(?:to_q|to_k|to_v|to_out\.0))\.lora_([AB])\.weight$")


class CheckpointError(ValueError):
    """A checkpoint file or tensor is missing or does not match the model; the message names it."""


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"{what} not found: {path}")
    return path


# ----------------------------------------------------------------------------------------------- layout (b)
def is_k4d_saved_dir(path: str | os.PathLike) -> bool:
    """True if ``path`` holds a ``K4DPipeline.save_pretrained`` folder."""
    if str(path) == DEFAULT_CHECKPOINT:
        path = default_checkpoint_dir()
    index = Path(path) / "model_index.json"
    if not index.exists():
        return False
    return json.loads(index.read_text()).get("_class_name") == "K4DPipeline"


def load_saved(path: str | os.PathLike, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
               vae_dtype: torch.dtype = torch.float32) -> K4DPipeline:
    """Load our own layout: ``K4DPipeline.from_pretrained(path)`` with local files and safetensors only.

    The transformer gets ``dtype`` (its ``_keep_in_fp32_modules`` stay float32), the VAE ``vae_dtype``, the CLIP
    image encoder float32.
    """
    path = Path(path)
    _require(path / "model_index.json", "model_index.json of a saved K4DPipeline")
    for sub in ("transformer", "vae", "image_encoder", "scheduler"):
        _require(path / sub, f"component folder '{sub}' of the saved K4DPipeline")
    try:
        pipe = K4DPipeline.from_pretrained(
            str(path), dtype={"transformer": dtype, "vae": vae_dtype, "default": torch.float32},
            use_safetensors=True, local_files_only=True,
        )
    except ValueError as exc:  # e.g. a transformer and a VAE of different models (K4DPipeline names both)
        raise CheckpointError(f"{path}: {exc}") from exc
    return pipe.to(device)


# ----------------------------------------------------------------------------------------------- layout (a)
def _base_weight_files(transformer_dir: Path) -> list[Path]:
    """Safetensors files of a diffusers transformer folder (single file or sharded with an index)."""
    single = transformer_dir / "diffusion_pytorch_model.safetensors"
    index = transformer_dir / "diffusion_pytorch_model.safetensors.index.json"
    if single.exists():
        return [single]
    if index.exists():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        files = [transformer_dir / s for s in shards]
        for f in files:
            _require(f, f"transformer weight shard listed in {index.name}")
        return files
    others = sorted(p.name for p in transformer_dir.glob("*.bin")) + sorted(p.name for p in transformer_dir.glob("*.pt"))
    hint = f" (found {others}; only safetensors are loaded)" if others else ""
    raise FileNotFoundError(f"no transformer weights (diffusion_pytorch_model.safetensors or its .index.json) in "
                            f"{transformer_dir}{hint}")


def _keep_fp32(name: str) -> bool:
    parts = name.split(".")
    return any(m in parts for m in K4DTransformer3DModel._keep_in_fp32_modules)


def _check_shape(source: str, key: str, expected: torch.Size, got: tuple) -> None:
    if tuple(expected) != tuple(got):
        raise CheckpointError(f"{source}: tensor '{key}' has shape {list(got)}, the model expects {list(expected)}")


def read_lora_file(path: str | os.PathLike, transformer: torch.nn.Module, rank: int) -> dict[str, torch.Tensor]:
    """Read and validate a released LoRA file against ``transformer``.

    Returns a peft-style state dict (``blocks.N.attnK.to_x.lora_{A,B}.weight``, no ``transformer.`` prefix) after
    checking that every key parses, that all ``len(blocks) x 8`` targets have both A and B, and that
    A is ``[rank, in_features]`` and B is ``[out_features, rank]``.
    """
    path = Path(path)
    raw = load_file(str(_require(path, "LoRA file")))
    out: dict[str, torch.Tensor] = {}
    bad = [k for k in raw if not _LORA_KEY.match(k)]
    if bad:
        raise CheckpointError(f"{path.name}: unexpected key '{bad[0]}' ({len(bad)} unexpected in total); expected "
                              "'transformer.blocks.N.attn{1,2}.{to_q,to_k,to_v,to_out.0}.lora_{A,B}.weight'")
    for k, v in raw.items():
        out[k[len("transformer."):] if k.startswith("transformer.") else k] = v
    num_blocks = len(transformer.blocks)
    for i in range(num_blocks):
        for attn in ("attn1", "attn2"):
            for target in LORA_TARGETS:
                layer = transformer.get_submodule(f"blocks.{i}.{attn}.{target}")
                for ab, shape in (("A", (rank, layer.in_features)), ("B", (layer.out_features, rank))):
                    key = f"blocks.{i}.{attn}.{target}.lora_{ab}.weight"
                    if key not in out:
                        raise CheckpointError(f"{path.name}: missing key 'transformer.{key}'")
                    _check_shape(path.name, f"transformer.{key}", torch.Size(shape), tuple(out[key].shape))
    extra = [k for k in out if int(_LORA_KEY.match(k).group(1)) >= num_blocks]
    if extra:
        raise CheckpointError(f"{path.name}: key 'transformer.{extra[0]}' refers to a block the model does not have "
                              f"(model has {num_blocks} blocks)")
    return out


@torch.no_grad()
def fuse_lora_(transformer: torch.nn.Module, lora: dict[str, torch.Tensor], scale: float) -> None:
    """In place ``W <- W + scale * B @ A`` for every LoRA pair in ``lora`` (computed in float32)."""
    for key, a in lora.items():
        if ".lora_A." not in key:
            continue
        module_name = key[: -len(".lora_A.weight")]
        b = lora[f"{module_name}.lora_B.weight"]
        w = transformer.get_submodule(module_name).weight
        delta = b.to(w.device, torch.float32) @ a.to(w.device, torch.float32)
        w.copy_((w.float() + scale * delta).to(w.dtype))


def attach_lora_adapter(transformer: K4DTransformer3DModel, lora: dict[str, torch.Tensor], rank: int,
                        alpha: float, adapter_name: str = "default") -> None:
    """Attach ``lora`` as an unfused peft adapter (scaling ``alpha / rank``) in the transformer's dtype/device."""
    from peft import LoraConfig
    from peft.utils import set_peft_model_state_dict

    transformer.add_adapter(LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(LORA_TARGETS),
                                       init_lora_weights=False), adapter_name=adapter_name)
    result = set_peft_model_state_dict(transformer, lora, adapter_name=adapter_name)
    unexpected = getattr(result, "unexpected_keys", None)
    if unexpected:
        raise CheckpointError(f"LoRA keys not matched by the peft adapter: {unexpected[:3]}")
    ref = transformer.proj_out.weight
    for name, p in transformer.named_parameters():
        if "lora_" in name:
            p.data = p.data.to(device=ref.device, dtype=ref.dtype)


def load_released_transformer(
    base_model_dir: str | os.PathLike,
    checkpoint_dir: str | os.PathLike,
    variant: str = "pmcond",
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    lora_mode: str = "fuse",
    lora_rank: int = 64,
    lora_alpha: float = 32.0,
    **k4d_config: Any,
) -> K4DTransformer3DModel:
    """Build a [`K4DTransformer3DModel`] from a released checkpoint (see module docstring, layout (a)).

    ``k4d_config`` overrides K4D-only config fields (``num_latent_frames``, ``latent_height``, ...); the Wan fields
    come from ``base_model_dir/transformer/config.json``. Raises [`CheckpointError`] naming the missing/unexpected
    key or the mismatched shape, ``FileNotFoundError`` naming a missing file.
    """
    base, ckpt, device = Path(base_model_dir), Path(checkpoint_dir), torch.device(device)
    tdir = base / "transformer"
    wan_config = json.loads(_require(tdir / "config.json", "base transformer config").read_text())
    added_path = _require(ckpt / ADDED_WEIGHTS_FILE, "Kinema4D added weights")
    lora_path = _require(ckpt / LORA_FILE, "Kinema4D LoRA weights")
    files = _base_weight_files(tdir)

    cfg = K4DTransformer3DModel.config_from_wan(wan_config, variant=variant, **k4d_config)
    cfg["in_channels"] = wan_config.get("in_channels", 36)
    with torch.device("meta"):
        model = K4DTransformer3DModel(**cfg)
    expected = {k: v.shape for k, v in model.state_dict().items()}
    added_names = set(ADDED_PARAMETER_NAMES[variant])

    def place(sd: dict[str, torch.Tensor]) -> None:
        sd = {k: (v.to(device=device, dtype=torch.float32 if _keep_fp32(k) else dtype) if v.is_floating_point()
                  else v.to(device)) for k, v in sd.items()}
        model.load_state_dict(sd, strict=False, assign=True)

    # 1. Base Wan2.1 weights, shard by shard
    loaded: set[str] = set()
    ignore = tuple(K4DTransformer3DModel._keys_to_ignore_on_load_unexpected or ())
    for f in files:
        with safe_open(str(f), framework="pt", device="cpu") as fh:
            shard = {}
            for key in fh.keys():
                if key not in expected or key in added_names:
                    if any(pat in key for pat in ignore) or key in added_names:
                        continue
                    raise CheckpointError(f"{f.name}: unexpected key '{key}' (not a parameter of the Wan2.1 "
                                          f"transformer built from {tdir / 'config.json'})")
                _check_shape(f.name, key, expected[key], tuple(fh.get_slice(key).get_shape()))
                shard[key] = fh.get_tensor(key)
            place(shard)
            loaded.update(shard)
    missing = sorted(set(expected) - added_names - loaded)
    if missing:
        raise CheckpointError(f"base transformer in {tdir}: missing key '{missing[0]}' ({len(missing)} missing)")

    # 2. Kinema4D added modules
    added = load_file(str(added_path))
    added = {k.removeprefix("module.").removeprefix("transformer."): v for k, v in added.items()}
    for key in sorted(added_names):
        if key not in added:
            hint = " (a pmcond checkpoint? set variant='pmcond')" if key == "arm_domain_emb" else ""
            raise CheckpointError(f"{ADDED_WEIGHTS_FILE}: missing key '{key}' for variant '{variant}'{hint}")
        _check_shape(ADDED_WEIGHTS_FILE, key, expected[key], tuple(added[key].shape))
    extra = sorted(set(added) - added_names)
    if extra:
        hint = " (a full checkpoint? set variant='full')" if extra == ["arm_domain_emb"] else ""
        raise CheckpointError(f"{ADDED_WEIGHTS_FILE}: unexpected key '{extra[0]}' for variant '{variant}'{hint}")
    place(added)

    # 3. Non-persistent buffers (RoPE tables) are not in any file: rebuild them on the target device
    c = model.config
    model.rope = K4DRotaryPosEmbed(c.attention_head_dim, c.patch_size, c.rope_max_seq_len).to(device)
    still_meta = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if still_meta:
        raise CheckpointError(f"tensor '{still_meta[0]}' was not loaded ({len(still_meta)} not loaded)")

    # 4. LoRA
    lora = read_lora_file(lora_path, model, lora_rank)
    if lora_mode == "fuse":
        fuse_lora_(model, lora, lora_alpha / lora_rank)
    elif lora_mode == "peft":
        attach_lora_adapter(model, lora, lora_rank, lora_alpha)
    else:
        raise ValueError(f"lora_mode must be 'fuse' or 'peft', got {lora_mode!r}")
    return model.eval()


def _scheduler_from_base(base: Path, kind: str, flow_shift: float):
    from diffusers import UniPCMultistepScheduler

    cfg_file = base / "scheduler" / "scheduler_config.json"
    if kind == "unipc" and cfg_file.exists():
        saved = json.loads(cfg_file.read_text())
        if saved.get("_class_name") == "UniPCMultistepScheduler":
            return UniPCMultistepScheduler.from_pretrained(str(base / "scheduler"), flow_shift=flow_shift)
    return make_scheduler(kind, flow_shift)


def load_released(
    base_model_dir: str | os.PathLike,
    checkpoint_dir: str | os.PathLike,
    variant: str = "pmcond",
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    vae_dtype: torch.dtype = torch.float32,
    lora_mode: str = "fuse",
    lora_rank: int = 64,
    lora_alpha: float = 32.0,
    scheduler: str = "unipc",
    flow_shift: float = 3.0,
    batch_cfg: bool = True,
    **k4d_config: Any,
) -> K4DPipeline:
    """Assemble a [`K4DPipeline`] from the released layout (a). The text encoder and tokenizer are never loaded."""
    from diffusers import AutoencoderKLWan
    from transformers import CLIPImageProcessor, CLIPVisionModel

    base = Path(base_model_dir)
    _require(base / "model_index.json", "model_index.json of the Wan2.1-I2V base folder")
    for sub in ("vae", "image_encoder"):
        _require(base / sub, f"base component folder '{sub}'")
    transformer = load_released_transformer(base, checkpoint_dir, variant, device, dtype, lora_mode, lora_rank,
                                            lora_alpha, **k4d_config)
    vae = AutoencoderKLWan.from_pretrained(str(base / "vae"), torch_dtype=vae_dtype, use_safetensors=True,
                                           local_files_only=True)
    image_encoder = CLIPVisionModel.from_pretrained(str(base / "image_encoder"), dtype=torch.float32,
                                                    use_safetensors=True, local_files_only=True)
    image_processor = None
    if (base / "image_processor").exists():
        image_processor = CLIPImageProcessor.from_pretrained(str(base / "image_processor"), local_files_only=True)
    pipe = K4DPipeline(vae=vae, transformer=transformer, scheduler=_scheduler_from_base(base, scheduler, flow_shift),
                       image_encoder=image_encoder, image_processor=image_processor, batch_cfg=batch_cfg)
    return pipe.to(device)


# ------------------------------------------------------------------------------------------------ entry point
def _finish(pipe: K4DPipeline, config: WorldModelConfig, device) -> None:
    """Runtime settings of a loaded pipeline: VAE autocast, CUDA graphs, the completion of the transformer's
    unreachable output directions, and on a CPU the fast VAE norm (``models.vae_norm``: same function, 10-15 % off
    a CPU rollout)."""
    from .models.vae_norm import use_fast_vae_norm

    pipe.vae_autocast = config.resolved_vae_autocast()
    pipe.cuda_graphs = config.cuda_graphs
    pipe.complete_unreachable = config.complete_unreachable
    if torch.device(device).type == "cpu":
        use_fast_vae_norm(pipe.vae)


def load_pipeline(config: WorldModelConfig, **k4d_config: Any) -> K4DPipeline:
    """Load the pipeline described by ``config`` from local files, detecting the layout of ``checkpoint_dir``.

    ``k4d_config`` overrides K4D-only transformer config fields for the released layout (defaults: 49 x 480 x 720).
    """
    ckpt = Path(config.checkpoint_dir)
    if not config.checkpoint_dir or not ckpt.is_dir():
        raise FileNotFoundError(f"checkpoint_dir is not a folder: {config.checkpoint_dir!r}")
    device, dtype, vae_dtype = config.resolved_device(), config.resolved_dtype(), config.resolved_vae_dtype()
    if is_k4d_saved_dir(ckpt):
        pipe = load_saved(ckpt, device, dtype, vae_dtype)
        if pipe.transformer.config.variant != config.variant:
            raise ValueError(f"variant is {config.variant!r} but the checkpoint in {ckpt} is "
                             f"{pipe.transformer.config.variant!r}")
        if not isinstance(pipe.scheduler, type(make_scheduler(config.scheduler, config.flow_shift))):
            pipe.scheduler = make_scheduler(config.scheduler, config.flow_shift)
        elif config.flow_shift != pipe.scheduler.config.get("flow_shift", pipe.scheduler.config.get("shift")):
            key = "flow_shift" if "flow_shift" in pipe.scheduler.config else "shift"
            pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config, **{key: config.flow_shift})
        pipe.register_to_config(batch_cfg=config.batch_cfg)
        _finish(pipe, config, device)
        return pipe
    if (ckpt / ADDED_WEIGHTS_FILE).exists():
        base = Path(config.base_model_dir) if config.base_model_dir else ckpt
        pipe = load_released(base, ckpt, config.variant, device, dtype, vae_dtype, config.lora_mode,
                             config.lora_rank, config.lora_alpha, config.scheduler, config.flow_shift,
                             config.batch_cfg, **k4d_config)
        _finish(pipe, config, device)
        return pipe
    raise FileNotFoundError(
        f"checkpoint_dir {ckpt} is neither a K4DPipeline.save_pretrained folder (model_index.json with "
        f"_class_name 'K4DPipeline') nor a released Kinema4D checkpoint (containing {ADDED_WEIGHTS_FILE})"
    )

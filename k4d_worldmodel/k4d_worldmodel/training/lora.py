# Copyright 2026 k4d developers. Apache-2.0.
"""LoRA fine-tuning helpers: attach a peft adapter like the release, select trainable parameters, save files in
the released key format.

Release facts (``kinema4d.md``): LoRA r 64, alpha 32 on ``to_q``, ``to_k``, ``to_v``, ``to_out.0`` of both
attentions (``attn1`` self, ``attn2`` cross) of every block; the Kinema4D modules (``patch_embedding_arm``,
``arm_*``, ``learnable_domain_embeddings``) are trained in full and shipped as ``added_weights.safetensors``; the
LoRA file holds ``transformer.blocks.{i}.attn{1,2}.{to_q,to_k,to_v,to_out.0}.lora_{A,B}.weight`` (no alpha keys;
the loader applies ``alpha / r``).
"""
from __future__ import annotations

import re
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..loading import ADDED_WEIGHTS_FILE, LORA_FILE, LORA_TARGETS
from ..models.transformer_k4d import ADDED_PARAMETER_NAMES, K4DTransformer3DModel

ADAPTER_NAME = "default"
# exact module paths: blocks.N.attn1|attn2.(to_q|to_k|to_v|to_out.0) -- nothing else (not add_k_proj etc.)
TARGET_REGEX = r"^blocks\.\d+\.attn[12]\.(to_q|to_k|to_v|to_out\.0)$"
_PEFT_KEY = re.compile(r"^(blocks\.\d+\.attn[12]\.(?:to_q|to_k|to_v|to_out\.0))\.lora_([AB])(?:\.[^.]+)?\.weight$")


def add_lora(transformer: K4DTransformer3DModel, rank: int, alpha: float, adapter_name: str = ADAPTER_NAME) -> None:
    """Attach a fresh peft LoRA (``init_lora_weights=True``: A random, B zero, so the model is unchanged) to the
    released targets only (``TARGET_REGEX``)."""
    from peft import LoraConfig

    if not (isinstance(rank, int) and rank >= 1):
        raise ValueError(f"lora rank must be an integer >= 1, got {rank!r}")
    if not alpha > 0:
        raise ValueError(f"lora alpha must be > 0, got {alpha!r}")
    transformer.add_adapter(LoraConfig(r=rank, lora_alpha=alpha, target_modules=TARGET_REGEX,
                                       init_lora_weights=True), adapter_name=adapter_name)


def lora_module_names(transformer: torch.nn.Module) -> list[str]:
    """Names of the modules that carry a LoRA (``lora_A`` child)."""
    return sorted(n for n, m in transformer.named_modules() if hasattr(m, "lora_A") and len(m.lora_A) > 0)


def set_trainable(transformer: torch.nn.Module, train_added_modules: bool = True) -> list[str]:
    """Freeze everything but the LoRA parameters (and the Kinema4D added modules if asked); returns trainable names."""
    added = set(ADDED_PARAMETER_NAMES[transformer.config.variant]) if train_added_modules else set()
    names = []
    for name, p in transformer.named_parameters():
        p.requires_grad_("lora_" in name or name in added)
        if p.requires_grad:
            names.append(name)
            p.data = p.data.float()  # trainable parameters are kept in float32 (master weights)
    return names


def lora_state_dict_released(transformer: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The adapter's weights under the released keys ``transformer.blocks.N.attnK.to_x.lora_{A,B}.weight``."""
    out = {}
    for name, p in transformer.named_parameters():
        if "lora_" not in name:
            continue
        m = _PEFT_KEY.match(name.replace(f".{ADAPTER_NAME}.", "."))
        if m is None:
            raise ValueError(f"LoRA parameter {name!r} is not on a released target {LORA_TARGETS}")
        out[f"transformer.{m.group(1)}.lora_{m.group(2)}.weight"] = p.detach().float().cpu().contiguous()
    return out


def save_released_lora(transformer: K4DTransformer3DModel, out_dir: str | Path, dtype: torch.dtype = torch.float32
                       ) -> dict[str, Path]:
    """Write ``pytorch_lora_weights.safetensors`` and ``added_weights.safetensors`` (released names) to ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    lora = {k: v.to(dtype) for k, v in lora_state_dict_released(transformer).items()}
    sd = transformer.state_dict()
    added = {k: sd[k].detach().cpu().to(dtype).contiguous() for k in ADDED_PARAMETER_NAMES[transformer.config.variant]}
    save_file(lora, str(out_dir / LORA_FILE))
    save_file(added, str(out_dir / ADDED_WEIGHTS_FILE))
    return {"lora": out_dir / LORA_FILE, "added": out_dir / ADDED_WEIGHTS_FILE}


@torch.no_grad()
def merge_lora(transformer: K4DTransformer3DModel) -> K4DTransformer3DModel:
    """Fuse the adapter into the base weights (``W += alpha / r * B A``) and remove it; returns the transformer."""
    transformer.fuse_lora(lora_scale=1.0)
    transformer.unload_lora() if hasattr(transformer, "unload_lora") else None
    return transformer

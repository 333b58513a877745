# Copyright 2026 k4d developers. Apache-2.0.
"""A small Wan video VAE (diffusers ``AutoencoderKLWan``) trained on the episodes' RGB and pointmap videos.

    k4d train-vae --data /tmp/k4d_ds --config k4d_worldmodel/k4d_worldmodel/training/configs/default.yaml \\
        --out /tmp/k4d_vae --time-budget-s 120

The pretrained Wan2.1 VAE cannot be downloaded here, so k4d trains its own: same class and code path, same
factors (spatial x8, temporal x4: 1 + (T - 1) / 4 latent frames) and ``z_dim = 16`` (the transformer's 16-channel
latent contract), but a small ``base_dim``. Each training sample is one modality of one clip as a video in
[-1, 1]: the RGB video or the per-clip min-max world pointmap (the two halves the K4D pipeline encodes). Loss:
``L1(reconstruction) + kl_weight * KL(q(z|x) || N(0, I))`` (mean over elements), posterior sampled.

Afterwards the latent normalisation is computed from data, as ``latents_mean`` / ``latents_std`` in the VAE config
(what the pipeline divides by): per channel mean and standard deviation of the posterior mode over up to
``stats_clips`` clips, both modalities pooled. The pipeline's extra pointmap normalisation
``(z + 0.17) / 1.36`` (a Kinema4D constant) is kept unchanged on top, so the code path is the release's.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch


@dataclass
class VAEConfig:
    """Small Wan VAE and its training.

    Attributes:
        train: train a VAE before the transformer (full mode); False uses ``pretrained`` or a random VAE.
        pretrained: folder of an ``AutoencoderKLWan`` (``save_pretrained``) to use instead ("" = none).
        base_dim, dim_mult, num_res_blocks: ``AutoencoderKLWan`` size (z_dim is fixed at 16; 3 down-samplings).
        steps, time_budget_s: stop at whichever comes first (time_budget_s 0 = no limit).
        batch_size, lr, weight_decay, kl_weight, grad_clip: optimisation.
        stats_clips: clips used for the latent mean/std.
        train_frames: frames per training sample, a random window of 1 + 4k consecutive frames of a clip (0 = the
            whole clip). The VAE is causal and works chunk by chunk (first frame, then 4 at a time), so a
            9-frame window trains the first-frame and the chunk paths at about half the cost of 17 frames.
    """

    train: bool = True
    pretrained: str = ""
    base_dim: int = 32
    dim_mult: list = field(default_factory=lambda: [1, 1, 2, 2])
    num_res_blocks: int = 1
    steps: int = 2000
    time_budget_s: float = 0.0
    batch_size: int = 4
    lr: float = 5e-4
    weight_decay: float = 0.0
    kl_weight: float = 1e-6
    grad_clip: float = 1.0
    stats_clips: int = 64
    train_frames: int = 0

    def __post_init__(self) -> None:
        if not (isinstance(self.base_dim, int) and self.base_dim >= 1):
            raise ValueError(f"vae.base_dim must be an integer >= 1, got {self.base_dim!r}")
        self.dim_mult = [int(v) for v in self.dim_mult]
        if len(self.dim_mult) not in (3, 4) or min(self.dim_mult) < 1:
            raise ValueError(f"vae.dim_mult must be 3 or 4 integers >= 1 (spatial factor 4 or 8), got "
                             f"{self.dim_mult!r}")
        if not (isinstance(self.train_frames, int) and self.train_frames >= 0
                and (self.train_frames == 0 or (self.train_frames - 1) % 4 == 0)):
            raise ValueError(f"vae.train_frames must be 0 or 1 + 4k, got {self.train_frames!r}")
        for name in ("steps", "batch_size", "num_res_blocks", "stats_clips"):
            v = getattr(self, name)
            if not (isinstance(v, int) and v >= (0 if name == "steps" else 1)):
                raise ValueError(f"vae.{name} must be an integer >= {0 if name == 'steps' else 1}, got {v!r}")
        for name in ("lr", "kl_weight", "time_budget_s", "grad_clip", "weight_decay"):
            v = float(getattr(self, name))
            if not (math.isfinite(v) and v >= 0):
                raise ValueError(f"vae.{name} must be a finite number >= 0, got {getattr(self, name)!r}")
            setattr(self, name, v)


    @property
    def spatial_factor(self) -> int:
        """Pixels per latent cell along each image axis: 8 (Wan2.1's, four dim_mult stages) or 4 (three)."""
        return 2 ** (len(self.dim_mult) - 1)


def build_vae(cfg: VAEConfig) -> "AutoencoderKLWan":  # noqa: F821
    """A fresh ``AutoencoderKLWan`` of ``cfg``'s size (z_dim 16, temporal factor 4, spatial factor
    ``cfg.spatial_factor``: the last two down-samplings are the temporal ones, as in Wan2.1)."""
    from diffusers import AutoencoderKLWan

    down = [False] * (len(cfg.dim_mult) - 3) + [True, True]
    return AutoencoderKLWan(base_dim=cfg.base_dim, z_dim=16, dim_mult=list(cfg.dim_mult),
                            num_res_blocks=cfg.num_res_blocks, temperal_downsample=down,
                            scale_factor_spatial=cfg.spatial_factor)


def clip_videos(clip: dict[str, Any]) -> list[torch.Tensor]:
    """The two training videos of a clip, `[3, T, H, W]` float32 in [-1, 1]: RGB and world pointmap."""
    rgb = torch.from_numpy(np.ascontiguousarray(clip["rgb"])).float().permute(3, 0, 1, 2) / 127.5 - 1.0
    pm = torch.from_numpy(np.ascontiguousarray(clip["world01"])).float().permute(3, 0, 1, 2) * 2.0 - 1.0
    return [rgb, pm]


def _window(video: torch.Tensor, frames: int, generator: torch.Generator) -> torch.Tensor:
    """A random window of ``frames`` consecutive frames of a `[3, T, H, W]` video (all of it if 0 or >= T)."""
    t = video.shape[1]
    if frames <= 0 or frames >= t:
        return video
    start = int(torch.randint(t - frames + 1, (1,), generator=generator))
    return video[:, start : start + frames]


def vae_loss(vae: torch.nn.Module, x: torch.Tensor, kl_weight: float,
             generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """``L1 + kl_weight * KL`` of a batch `[B, 3, T, H, W]` in [-1, 1]; returns (loss, {"l1", "kl"})."""
    core = getattr(vae, "module", vae)
    posterior = core.encode(x).latent_dist
    z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator).to(x.device, x.dtype)
    recon = core.decode(z).sample
    l1 = (recon.float() - x.float()).abs().mean()
    kl = 0.5 * (posterior.mean.float() ** 2 + posterior.var.float() - 1.0 - posterior.logvar.float()).mean()
    return l1 + kl_weight * kl, {"l1": float(l1.detach()), "kl": float(kl.detach())}


@torch.no_grad()
def latent_stats(vae: torch.nn.Module, videos: list[torch.Tensor], device: torch.device | str = "cpu"
                 ) -> tuple[list[float], list[float]]:
    """Per-channel mean/std of the posterior mode over ``videos`` (each `[3, T, H, W]` in [-1, 1])."""
    core = getattr(vae, "module", vae)
    dtype = next(core.parameters()).dtype
    s = s2 = None
    n = 0
    for v in videos:
        z = core.encode(v[None].to(device, dtype)).latent_dist.mode().double()  # 1, 16, F, h, w
        zz = z.transpose(0, 1).reshape(z.shape[1], -1)
        s = zz.sum(1) if s is None else s + zz.sum(1)
        s2 = (zz**2).sum(1) if s2 is None else s2 + (zz**2).sum(1)
        n += zz.shape[1]
    mean = s / n
    std = torch.sqrt(torch.clamp(s2 / n - mean**2, min=1e-8))
    return [float(v) for v in mean.cpu()], [float(v) for v in std.cpu()]


def train_vae(dataset, cfg: VAEConfig, out_dir: str | Path | None = None, device: torch.device | str | None = None,
              mixed_precision: str = "no", seed: int = 0, progress: bool = True, log=print
              ) -> tuple["AutoencoderKLWan", dict]:  # noqa: F821
    """Train a small VAE on ``dataset`` clips (see module docstring); returns ``(vae (eval, fp32, CPU), metrics)``.

    Runs in one process on ``device`` (default: cuda if available) with bf16/fp16 autocast when ``mixed_precision``
    says so; under multi-process training the trainer runs it on the main process and the others load the result.
    The VAE is saved to ``out_dir`` (``save_pretrained``, safetensors) when given. Stops after ``cfg.steps`` or
    ``cfg.time_budget_s``.
    """
    from tqdm.auto import tqdm

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mixed_precision)
    torch.manual_seed(seed)
    vae = build_vae(cfg).to(device).train()
    videos = [v for i in range(len(dataset)) for v in clip_videos(dataset[i])]
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scaler = torch.amp.GradScaler(device.type, enabled=amp is torch.float16)
    g = torch.Generator().manual_seed(seed + 1)
    t0 = time.perf_counter()
    history, step = [], 0
    bar = tqdm(total=cfg.steps, desc="vae", disable=not progress)
    while step < cfg.steps:
        if cfg.time_budget_s and time.perf_counter() - t0 > cfg.time_budget_s:
            break
        idx = torch.randint(len(videos), (cfg.batch_size,), generator=g).tolist()
        x = torch.stack([_window(videos[i], cfg.train_frames, g) for i in idx]).to(device)
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            loss, parts = vae_loss(vae, x, cfg.kl_weight, g)
        scaler.scale(loss).backward()
        if cfg.grad_clip:
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(vae.parameters(), cfg.grad_clip)
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        step += 1
        history.append(parts["l1"])
        bar.set_postfix(l1=f"{parts['l1']:.4f}", kl=f"{parts['kl']:.2f}")
        bar.update()
    bar.close()
    vae = vae.float().eval()
    n_stats = min(len(videos), 2 * cfg.stats_clips)
    mean, std = latent_stats(vae, videos[:n_stats], device)
    vae.register_to_config(latents_mean=mean, latents_std=std)
    vae = vae.cpu()
    metrics = {"steps": step, "wall_s": time.perf_counter() - t0, "l1_first": history[0] if history else None,
               "l1_last": float(np.mean(history[-10:])) if history else None, "latents_mean": mean,
               "latents_std": std, "params": sum(p.numel() for p in vae.parameters()), "config": asdict(cfg)}
    log(f"vae: {step} steps in {metrics['wall_s']:.0f} s, L1 {metrics['l1_first']} -> {metrics['l1_last']}")
    if out_dir is not None:
        vae.save_pretrained(str(out_dir), safe_serialization=True)
        Path(out_dir, "vae_metrics.json").write_text(__import__("json").dumps(metrics, indent=1))
    return vae, metrics

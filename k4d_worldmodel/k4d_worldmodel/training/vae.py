# Copyright 2026 k4d developers. Apache-2.0.
"""A small Wan video VAE (diffusers ``AutoencoderKLWan``) trained on the episodes' RGB and pointmap videos.

    k4d train-vae --data /tmp/k4d_ds --config k4d_worldmodel/k4d_worldmodel/training/configs/default.yaml \\
        --out /tmp/k4d_vae --time-budget-s 120

The pretrained Wan2.1 VAE cannot be downloaded here, so k4d trains its own: same class and code path, same
factors (spatial x8, temporal x4: 1 + (T - 1) / 4 latent frames) and, by default, ``z_dim = 16`` (Wan2.1's
16-channel latent), but a small ``base_dim``. ``z_dim`` 32 or 48 (Wan2.2's VAE has 48) keeps more detail per
latent cell; the transformer's latent channels follow the VAE's. Each training sample is one modality of one clip as a video in
[-1, 1]: the RGB video or the world pointmap in the dataset's pointmap encoding (the two halves the K4D pipeline
encodes). Loss:
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
        base_dim, dim_mult, num_res_blocks, z_dim: ``AutoencoderKLWan`` size (3 or 4 stages: spatial x4 or x8).
        steps, time_budget_s: stop at whichever comes first (time_budget_s 0 = no limit).
        batch_size, lr, weight_decay, kl_weight, grad_clip: optimisation.
        stats_clips: clips used for the latent mean/std.
        train_frames: frames per training sample, a random window of 1 + 4k consecutive frames of a clip (0 = the
            whole clip). The VAE is causal and works chunk by chunk (first frame, then 4 at a time), so a
            9-frame window trains the first-frame and the chunk paths at about half the cost of 17 frames.
        short_frames, short_fraction: a random ``short_fraction`` of the steps train on windows of ``short_frames``
            (1 + 4k) instead: cheaper steps, while the other steps keep the long-range cache path trained (a VAE
            trained on short windows only degrades past them).
        save_every_s: with an output folder, the weights and the optimiser state are saved this often (and at the
            end), so that a killed or time-limited run can continue (``resume``).
        pointmap_depth_weight: weight of the pointmap videos' depth channel (channel 2 of a metric code) in the
            L1 term, every other channel weighing 1. The success predicate and the geometry metrics read that
            channel, and at equal weights the RGB texture takes most of a small VAE's capacity (v5's VAE: depth
            code error 0.027 mean, ray channels 0.018 and 0.014). The reported ``l1`` stays unweighted.
        pointmap_raised_weight: extra L1 weight on the pointmap videos' pixels that stand raised above the table
            off the robot (``raised_mask``: the objects, 1 to 3 % of the pixels): they weigh
            ``1 + pointmap_raised_weight``, every other pixel 1 (0 = off). Objects a few pixels wide barely move a
            mean over the frame, so a VAE trained on the plain mean smooths them towards the table (v9 and v10:
            objects 20 mm too low), and the success predicate, which counts raised points in the goal zone,
            misses them. Needs k4d episodes (``T_base_cam``).
        raised_min_height_m: how high above the table (robot base frame z) a pixel must stand to count as raised.
    """

    train: bool = True
    pretrained: str = ""
    base_dim: int = 32
    dim_mult: list = field(default_factory=lambda: [1, 1, 2, 2])
    num_res_blocks: int = 1
    z_dim: int = 16
    steps: int = 2000
    time_budget_s: float = 0.0
    batch_size: int = 4
    lr: float = 5e-4
    weight_decay: float = 0.0
    kl_weight: float = 1e-6
    grad_clip: float = 1.0
    stats_clips: int = 64
    train_frames: int = 0
    short_frames: int = 0
    short_fraction: float = 0.0
    save_every_s: float = 120.0
    pointmap_depth_weight: float = 1.0
    pointmap_raised_weight: float = 0.0
    raised_min_height_m: float = 0.005

    def __post_init__(self) -> None:
        if not (isinstance(self.base_dim, int) and self.base_dim >= 1):
            raise ValueError(f"vae.base_dim must be an integer >= 1, got {self.base_dim!r}")
        self.dim_mult = [int(v) for v in self.dim_mult]
        if len(self.dim_mult) not in (3, 4) or min(self.dim_mult) < 1:
            raise ValueError(f"vae.dim_mult must be 3 or 4 integers >= 1 (spatial factor 4 or 8), got "
                             f"{self.dim_mult!r}")
        for name in ("train_frames", "short_frames"):
            v = getattr(self, name)
            if not (isinstance(v, int) and v >= 0 and (v == 0 or (v - 1) % 4 == 0)):
                raise ValueError(f"vae.{name} must be 0 or 1 + 4k, got {v!r}")
        if not (0.0 <= float(self.short_fraction) <= 1.0):
            raise ValueError(f"vae.short_fraction must be in [0, 1], got {self.short_fraction!r}")
        if self.short_fraction and not self.short_frames:
            raise ValueError("vae.short_fraction > 0 needs vae.short_frames (1 + 4k)")
        for name in ("steps", "batch_size", "num_res_blocks", "stats_clips", "z_dim"):
            v = getattr(self, name)
            if not (isinstance(v, int) and v >= (0 if name == "steps" else 1)):
                raise ValueError(f"vae.{name} must be an integer >= {0 if name == 'steps' else 1}, got {v!r}")
        for name in ("lr", "kl_weight", "time_budget_s", "grad_clip", "weight_decay", "short_fraction",
                     "save_every_s", "pointmap_depth_weight", "pointmap_raised_weight", "raised_min_height_m"):
            v = float(getattr(self, name))
            if not (math.isfinite(v) and v >= 0):
                raise ValueError(f"vae.{name} must be a finite number >= 0, got {getattr(self, name)!r}")
            setattr(self, name, v)


    @property
    def spatial_factor(self) -> int:
        """Pixels per latent cell along each image axis: 8 (Wan2.1's, four dim_mult stages) or 4 (three)."""
        return 2 ** (len(self.dim_mult) - 1)


def build_vae(cfg: VAEConfig) -> "AutoencoderKLWan":  # noqa: F821
    """A fresh ``AutoencoderKLWan`` of ``cfg``'s size (``cfg.z_dim``, temporal factor 4, spatial factor
    ``cfg.spatial_factor``: the last two down-samplings are the temporal ones, as in Wan2.1)."""
    from diffusers import AutoencoderKLWan

    down = [False] * (len(cfg.dim_mult) - 3) + [True, True]
    return AutoencoderKLWan(base_dim=cfg.base_dim, z_dim=cfg.z_dim, dim_mult=list(cfg.dim_mult),
                            num_res_blocks=cfg.num_res_blocks, temperal_downsample=down,
                            scale_factor_spatial=cfg.spatial_factor)


CLIP_KEYS = ("rgb", "world01")  # the fields of a clip that clip_videos reads


def clip_videos(clip: dict[str, Any]) -> list[torch.Tensor]:
    """The two training videos of a clip, `[3, T, H, W]` float32 in [-1, 1]: RGB and world pointmap."""
    rgb = torch.from_numpy(np.ascontiguousarray(clip["rgb"])).float().permute(3, 0, 1, 2) / 127.5 - 1.0
    pm = torch.from_numpy(np.ascontiguousarray(clip["world01"])).float().permute(3, 0, 1, 2) * 2.0 - 1.0
    return [rgb, pm]


RAISED_KEY = "raised"  # a clip's raised_mask, when the VAE's reading computes it (load_clips derive=...)


def raised_mask(clip: dict[str, Any], min_height_m: float = 0.005, max_height_m: float = 0.3) -> np.ndarray:
    """`(T, H, W)` bool: the pixels of a clip's scene that stand ``min_height_m`` to ``max_height_m`` above the
    table (``world_xyz`` in the robot base frame, z up from the table), off the robot (``robot_mask`` dilated by
    one pixel, as the success predicate excludes it): the objects, which ``pointmap_raised_weight`` weighs."""
    missing = [k for k in ("world_xyz", "robot_mask", "T_base_cam") if k not in clip]
    if missing:
        raise ValueError(f"vae.pointmap_raised_weight needs each clip's {missing} (k4d episodes; the Kinema4D "
                         "layout has no camera pose): set it to 0 for this data")
    from k4d_bringup.shadow.predicate import dilate

    from ..evaluate import to_base_frame

    z = to_base_frame(np.asarray(clip["world_xyz"], np.float64), np.asarray(clip["T_base_cam"], np.float64))[..., 2]
    robot = dilate(np.asarray(clip["robot_mask"], bool), 1)  # the predicate's own robot margin
    with np.errstate(invalid="ignore"):
        return (z >= min_height_m) & (z <= max_height_m) & ~robot  # NaN (nothing hit) compares False


def channel_weights(is_pointmap: torch.Tensor, depth_weight: float) -> torch.Tensor:
    """`[B, 3]` L1 weights of a batch: 1 everywhere, ``depth_weight`` on channel 2 of the pointmap videos
    (``is_pointmap`` `[B]` bool; ``clip_videos`` puts each clip's pointmap second)."""
    w = torch.ones(is_pointmap.shape[0], 3)
    w[is_pointmap.cpu(), 2] = float(depth_weight)
    return w


def vae_loss(vae: torch.nn.Module, x: torch.Tensor, kl_weight: float,
             generator: torch.Generator | None = None, weights: torch.Tensor | None = None,
             pixel_weights: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """``L1 + kl_weight * KL`` of a batch `[B, 3, T, H, W]` in [-1, 1]; returns (loss, {"l1", "kl"}).
    ``weights`` (`[B, 3]`, ``channel_weights``) weighs the L1 per sample and channel, ``pixel_weights``
    (`[B, 1, T, H, W]`, ``pointmap_raised_weight``) per pixel, their product normalised by its sum so that the
    loss keeps its scale; the reported ``l1`` is the plain mean."""
    core = getattr(vae, "module", vae)
    posterior = core.encode(x).latent_dist
    z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator).to(x.device, x.dtype)
    recon = core.decode(z).sample
    err = (recon.float() - x.float()).abs()
    l1 = err.mean()
    if weights is None and pixel_weights is None:
        fit = l1
    else:
        w = torch.ones_like(err[:, :1]) if pixel_weights is None else pixel_weights.to(err.device, err.dtype)
        if weights is not None:
            w = w * weights.to(err.device, err.dtype)[:, :, None, None, None]
        w = w.expand_as(err)
        fit = (err * w).sum() / w.sum()
    kl = 0.5 * (posterior.mean.float() ** 2 + posterior.var.float() - 1.0 - posterior.logvar.float()).mean()
    return fit + kl_weight * kl, {"l1": float(l1.detach()), "kl": float(kl.detach())}


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


STATE_FILE = "vae_train_state.pt"
_ARCH_KEYS = ("base_dim", "dim_mult", "num_res_blocks", "z_dim")


def _load_for_resume(cfg: VAEConfig, out_dir: Path):
    """The VAE saved in ``out_dir`` and its optimiser state, checked against ``cfg``'s architecture."""
    from diffusers import AutoencoderKLWan

    vae = AutoencoderKLWan.from_pretrained(str(out_dir), use_safetensors=True, local_files_only=True)
    saved = {k: vae.config[k] for k in _ARCH_KEYS}
    wanted = {k: getattr(cfg, k) for k in _ARCH_KEYS}
    if {k: list(v) if isinstance(v, (list, tuple)) else v for k, v in saved.items()} != wanted:
        raise ValueError(f"cannot resume the VAE in {out_dir}: it was built with {saved}, the config asks for {wanted}")
    state_file = out_dir / STATE_FILE
    state = torch.load(state_file, map_location="cpu", weights_only=True) if state_file.is_file() else None
    return vae, state


@torch.no_grad()
def reconstruction_metrics(vae: torch.nn.Module, videos: torch.Tensor, device: torch.device | str = "cpu"
                           ) -> dict[str, float]:
    """Mean PSNR (dB, ``metrics.psnr`` over the [-1, 1] range, capped at 100) and mean L1 of ``vae``'s
    reconstruction (posterior mode) of `[N, 3, T, H, W]` videos, over all frames."""
    from ..metrics import psnr

    core = getattr(vae, "module", vae)
    dtype = next(core.parameters()).dtype
    db, l1 = [], []
    for v in videos:
        x = v[None].to(device, dtype)
        y = core.decode(core.encode(x).latent_dist.mode()).sample.clamp(-1, 1)
        x, y = x.float().cpu().numpy(), y.float().cpu().numpy()
        db.append(min(psnr(y, x, data_range=2.0), 100.0))
        l1.append(float(np.abs(y - x).mean()))
    return {"psnr_db": float(np.mean(db)), "l1": float(np.mean(l1)), "videos": len(db)}


class _VAELoss(torch.nn.Module):
    """``vae_loss`` as a module, so that ``DistributedDataParallel`` sees the forward pass it synchronises
    (the loss calls ``encode`` and ``decode``, never the VAE's own ``forward``)."""

    def __init__(self, vae: torch.nn.Module, kl_weight: float):
        super().__init__()
        self.vae, self.kl_weight = vae, kl_weight

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None,
                weights: torch.Tensor | None = None, pixel_weights: torch.Tensor | None = None):
        return vae_loss(self.vae, x, self.kl_weight, generator, weights, pixel_weights)


def train_vae(dataset, cfg: VAEConfig, out_dir: str | Path | None = None, device: torch.device | str | None = None,
              mixed_precision: str = "no", seed: int = 0, progress: bool = True, log=print, resume: bool = False
              ) -> tuple["AutoencoderKLWan", dict]:  # noqa: F821
    """Train a small VAE on ``dataset`` clips (see module docstring); returns ``(vae (eval, fp32, CPU), metrics)``.

    Runs on ``device`` (default: cuda if available) with bf16/fp16 autocast when ``mixed_precision`` says so.
    The clips are held on the device (fp16 on a GPU), so a step costs no host-to-device copy.

    Several processes (``accelerate launch`` / ``torchrun``: an initialised ``torch.distributed`` group): the
    VAE is data-parallel (``DistributedDataParallel``). Each rank passes its own shard of the clips and draws
    ``cfg.batch_size`` of them per step (the global batch is ``world_size`` times that). The frame window is drawn
    alike on every rank, and the time budget is decided jointly. Rank 0 saves, computes the latent statistics and
    writes the metrics; every rank returns the same weights, checked at the end (``replica_spread``).

    The VAE is saved to ``out_dir`` (``save_pretrained``, safetensors) when given, together with the optimiser
    state (``vae_train_state.pt``, read back with ``weights_only=True``), every ``cfg.save_every_s`` and at the
    end. ``resume`` continues from them (same architecture, else ValueError; weights without that file continue
    with a fresh optimiser). Stops after ``cfg.steps`` (counted over all runs) or ``cfg.time_budget_s`` (of this
    run).
    """
    import torch.distributed as dist
    from tqdm.auto import tqdm

    from .distributed import any_rank, check_replicas, dist_world

    rank, world = dist_world()
    main = rank == 0
    if world > 1 and device is None and torch.cuda.is_available():
        device = f"cuda:{torch.cuda.current_device()}"
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if not main:
        log = lambda *a, **k: None  # noqa: E731
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mixed_precision)
    out_dir = Path(out_dir) if out_dir is not None else None
    torch.manual_seed(seed)
    state = None
    if resume:
        if out_dir is None or not (out_dir / "config.json").is_file():
            log(f"vae: nothing to resume in {out_dir}; starting from scratch")
            vae = build_vae(cfg)
        else:
            vae, state = _load_for_resume(cfg, out_dir)
            if state is None:
                log(f"vae: {out_dir} has weights but no {STATE_FILE}: continuing with a fresh optimiser")
    else:
        vae = build_vae(cfg)
    vae = vae.to(device).train()
    if len(dataset) == 0:
        raise ValueError(f"vae: process {rank} of {world} got no clip to train on (fewer clips than processes?)")
    store = torch.float16 if device.type == "cuda" else torch.float32
    videos, masks = [], []
    for i in range(len(dataset)):
        clip = dataset[i]
        videos += [v.to(store) for v in clip_videos(clip)]  # videos 2i and 2i + 1: clip i's RGB and pointmap
        if cfg.pointmap_raised_weight:  # load_clips' derived field when there, else computed here
            masks.append(torch.from_numpy(np.asarray(
                clip[RAISED_KEY] if RAISED_KEY in clip else raised_mask(clip, cfg.raised_min_height_m), bool)))
    videos = torch.stack(videos).to(device)
    raised = raised_fraction = None
    if masks:
        raised = torch.stack(masks).to(device)
        if tuple(raised.shape[1:]) != tuple(videos.shape[2:]):
            raise ValueError(f"vae: the raised masks are {tuple(raised.shape[1:])}, the videos "
                             f"{tuple(videos.shape[2:])} (T, H, W)")
        raised_fraction = float(raised.float().mean())
        log(f"vae: raised pixels (objects above the table, off the robot) are {100 * raised_fraction:.2f} % of "
            f"the pointmap pixels; they weigh {1 + cfg.pointmap_raised_weight:g}")
    if world > 1:
        # every rank starts from rank 0's weights (DDP broadcasts them) and all-reduces the gradients
        model = torch.nn.parallel.DistributedDataParallel(
            _VAELoss(vae, cfg.kl_weight), device_ids=[device.index] if device.type == "cuda" else None)
    else:
        model = _VAELoss(vae, cfg.kl_weight)
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    # g: the window (short or long clip, its start), alike on every rank so that all ranks run the same shapes;
    # g_rank: which clips and the posterior noise (one generator in one process, as before multi-process runs)
    g = torch.Generator().manual_seed(seed + 1)
    step, history, l1_first = 0, [], None
    if state is not None:
        opt.load_state_dict(state["optimizer"])
        g.set_state(state["generator"])
        step = int(state["step"])
        history = [float(v) for v in state.get("l1_tail", [])]
        l1_first = state.get("l1_first")
        log(f"vae: resumed at step {step} from {out_dir}")
    g_rank = g if world == 1 else torch.Generator().manual_seed(
        int(np.random.SeedSequence([seed, rank, step]).generate_state(1)[0]))
    if world > 1:
        log(f"vae: data-parallel over {world} processes, {cfg.batch_size} clips each per step "
            f"({cfg.batch_size * world} in all)")
    start_step = step
    scaler = torch.amp.GradScaler(device.type, enabled=amp is torch.float16)
    benchmark = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = device.type == "cuda"  # fixed shapes: let cuDNN pick its fastest conv3d

    def save() -> None:
        if out_dir is None or not main:
            return
        vae.save_pretrained(str(out_dir), safe_serialization=True)
        torch.save({"optimizer": opt.state_dict(), "generator": g.get_state(), "step": step,
                    "l1_tail": history[-50:], "l1_first": l1_first}, out_dir / STATE_FILE)

    t0 = last_save = time.perf_counter()
    bar = tqdm(total=cfg.steps, initial=step, desc="vae", disable=not (progress and main))
    bad_loss = None
    try:
        while step < cfg.steps:
            now = time.perf_counter()
            if (cfg.time_budget_s and world == 1) and now - t0 > cfg.time_budget_s:
                break
            if cfg.save_every_s and now - last_save > cfg.save_every_s:
                save()
                last_save = now
            short = cfg.short_fraction > 0 and float(torch.rand((), generator=g)) < cfg.short_fraction
            frames = cfg.short_frames if short else cfg.train_frames
            idx = torch.randint(videos.shape[0], (cfg.batch_size,), generator=g_rank)
            x = videos[idx.to(device)]
            weights = None if cfg.pointmap_depth_weight == 1.0 else channel_weights(idx % 2 == 1,
                                                                                    cfg.pointmap_depth_weight)
            pixel_weights = None
            if raised is not None:
                is_pm = (idx % 2 == 1).to(device)
                pixel_weights = 1.0 + cfg.pointmap_raised_weight * (
                    raised[(idx // 2).to(device)] & is_pm[:, None, None, None]).float()[:, None]
            if 0 < frames < x.shape[2]:
                s0 = int(torch.randint(x.shape[2] - frames + 1, (1,), generator=g))
                x = x[:, :, s0 : s0 + frames]
                if pixel_weights is not None:
                    pixel_weights = pixel_weights[:, :, s0 : s0 + frames]
            x = x.float()
            with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                loss, parts = model(x, g_rank, weights, pixel_weights)
            bad = not math.isfinite(float(loss.detach()))
            if world > 1:  # one joint decision: the time budget (rank 0's clock counts for all) or a bad loss
                time_up, bad_any = any_rank([main and bool(cfg.time_budget_s) and now - t0 > cfg.time_budget_s,
                                             bad], device)
                if bad_any:
                    bad_loss = float(loss.detach()) if bad else float("nan")
                    break
                if time_up:
                    break
            elif bad:
                bad_loss = float(loss.detach())
                break
            scaler.scale(loss).backward()
            if cfg.grad_clip:
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(vae.parameters(), cfg.grad_clip)
            scaler.step(opt)
            scaler.update()
            opt.zero_grad(set_to_none=True)
            step += 1
            history.append(parts["l1"])
            l1_first = parts["l1"] if l1_first is None else l1_first
            bar.set_postfix(l1=f"{parts['l1']:.4f}", kl=f"{parts['kl']:.2f}", frames=x.shape[2])
            bar.update()
    finally:
        torch.backends.cudnn.benchmark = benchmark
        bar.close()
    if bad_loss is not None:
        save()  # the weights and optimiser of the last finite step (a bad step is never applied) for --resume
        raise FloatingPointError(f"vae: the loss is {bad_loss} at step {step}"
                                 f"{'' if world == 1 else ' on some process'}; lower vae.lr ({cfg.lr}), or look "
                                 "for NaN in the clips")
    wall = time.perf_counter() - t0
    spread = check_replicas(vae, device, "vae", step)
    vae = vae.float().eval()
    mean = std = recon = None
    if main:
        n_stats = min(videos.shape[0], 2 * cfg.stats_clips)
        stats_videos = [videos[i].float() for i in range(n_stats)]
        mean, std = latent_stats(vae, stats_videos, device)
        recon = {name: reconstruction_metrics(vae, videos[k:n_stats:2].float(), device)
                 for k, name in ((0, "rgb"), (1, "pointmap"))}
    if world > 1:  # every rank returns the same VAE, normalisation included
        box = [(mean, std)]
        dist.broadcast_object_list(box, src=0)
        mean, std = box[0]
    vae.register_to_config(latents_mean=mean, latents_std=std)
    save()
    vae = vae.cpu()
    metrics = {"steps": step, "steps_this_run": step - start_step, "wall_s": wall,
               "steps_per_s": (step - start_step) / max(wall, 1e-9),
               "num_processes": world, "global_batch": cfg.batch_size * world, "replica_spread": spread,
               "l1_first": l1_first, "raised_fraction": raised_fraction,
               "l1_last": float(np.mean(history[-10:])) if history else None, "recon_train": recon,
               "latents_mean": mean, "latents_std": std, "params": sum(p.numel() for p in vae.parameters()),
               "config": asdict(cfg)}
    if not main:
        return vae, metrics
    log(f"vae: {step} steps ({step - start_step} in this run, {metrics['steps_per_s']:.2f}/s), L1 "
        f"{metrics['l1_first']} -> {metrics['l1_last']}, reconstruction PSNR rgb {recon['rgb']['psnr_db']:.2f} dB, "
        f"pointmap {recon['pointmap']['psnr_db']:.2f} dB")
    if out_dir is not None:
        Path(out_dir, "vae_metrics.json").write_text(__import__("json").dumps(metrics, indent=1))
    return vae, metrics

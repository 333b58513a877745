# Copyright 2026 k4d developers. Apache-2.0.
"""Flow-matching training inputs for the K4D transformer, built with the pipeline's own conditioning code.

    from k4d_worldmodel.training.objective import encode_clip, stack_encoded, flow_matching_step
    enc = encode_clip(pipe, clip)                     # frozen VAE/CLIP, once per clip (cached by the trainer)
    batch = stack_encoded([enc, enc])
    loss = flow_matching_step(transformer, batch, generator, soft_mask_fraction=0.1)

``encode_clip`` calls exactly what ``K4DPipeline.__call__`` calls at inference: ``K4DPipeline._robot_mask``,
the model's ``pointmap_encoding.encode_robot``, ``render_robot_rgb`` (full variant without robot RGB), ``encode_image``,
``prepare_condition`` and ``prepare_robot_condition``; the target latent is ``encode_video`` of the RGB and of
the world pointmap (the latter with the Kinema4D pointmap normalisation ``(z + 0.17) / 1.36``), concatenated along
the width like the pipeline's latents (left RGB, right XYZ). So training and inference see identical inputs.

Objective (Kinema4D / Wan flow matching): ``sigma = shift * u / (1 + (shift - 1) * u)`` with ``u ~ U(0, 1)``
(uniform over the shifted sigma table of the flow scheduler, ``shift`` = the scheduler's ``flow_shift``),
``x_t = (1 - sigma) x0 + sigma n``, ``timestep = 1000 sigma``, target ``n - x0``, MSE over every latent element.

Training-only conditioning (the release's): the "soft mask" sets a random ``soft_mask_fraction`` (10 %) of the
ones of the latent-grid robot mask to 0.5 (the same positions in every mask channel and in both width halves of
the "full" variant). ``cond_dropout`` (k4d addition, default 0.1 in the configs) drops the robot condition of a
sample exactly as the pipeline's ``cfg_mode="correct"`` unconditional pass does (robot tokens and injection scale
0), so classifier-free guidance and the "no robot" baseline have a trained unconditional branch.

A model with ``first_xyz_condition`` (k4d v3) is encoded twice over: ``condition`` with the clip's measured
first-frame pointmap (``world_xyz[0]``) and ``condition_dummy`` with the release's dummy; ``first_xyz_dropout``
trains a random fraction of the samples on the dummy, so the model also imagines without a depth camera.

Change weighting (k4d addition, ``TrainConfig.change_weight``, default 0 = the release's plain MSE): every
encoded clip also carries ``change_mask [1, F, h, 2w]``, the latent cells where the world itself changes from
frame 0 (`change_mask`: world points that move, off the robot). The robot's own motion is given by its condition;
what the model has to imagine is the rest, mostly a few pixels of moved object at 96 x 64, which a plain MSE over
all cells barely sees. With ``change_weight = w`` those cells weigh ``1 + w`` in the loss (a weighted mean, so
the loss keeps its scale).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..composite import active_pixels
from ..pipelines.pipeline_k4d import (
    POINTMAP_LATENT_MEAN,
    POINTMAP_LATENT_STD,
    K4DPipeline,
    downsample_robot_mask,
    render_robot_rgb,
)
from ..pointmap_encoding import PointmapEncoding
from .config import ENCODINGS_ON

NUM_TRAIN_TIMESTEPS = 1000


def _video01(frames: np.ndarray) -> torch.Tensor:
    """`(T, H, W, 3)` uint8 or float in [0, 1] -> `[1, 3, T, H, W]` float32 in [0, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).float()
    if frames.dtype == np.uint8:
        x = x / 255.0
    return x.permute(3, 0, 1, 2)[None]


def check_clip(pipe: K4DPipeline, clip: dict[str, Any]) -> None:
    """Raise ValueError naming the key if ``clip`` does not have the model's T x H x W or pointmap encoding."""
    t, h, w = pipe.num_frames, pipe.height, pipe.width
    for key, shape in (("rgb", (t, h, w, 3)), ("world01", (t, h, w, 3)), ("robot_xyz", (t, h, w, 3)),
                       ("robot_mask", (t, h, w))):
        if tuple(clip[key].shape) != shape:
            raise ValueError(f"clip[{key!r}] must have shape {shape} for this model, got {tuple(clip[key].shape)}; "
                             f"open the dataset with num_frames={t}, height={h}, width={w}")
    code = PointmapEncoding.from_config(clip.get("pointmap_encoding"))
    if code != pipe.pointmap_encoding:
        raise ValueError(f"clip {clip.get('name', '?')!r} codes its world pointmap as {code.kind!r} ({code.to_dict()}), "
                         f"this model as {pipe.pointmap_encoding.kind!r} ({pipe.pointmap_encoding.to_dict()}); open "
                         "the dataset with the model's pointmap_encoding")


def change_mask(clip: dict[str, Any], latent_height: int, latent_width: int, temporal: int,
                rgb_threshold: float = 0.1, xyz_threshold_m: float = 0.01, robot_margin_px: int = 1) -> np.ndarray:
    """Latent cells where the scene changes from frame 0 off the robot, `(1 + (T - 1) / temporal, h, w)` float32.

    A pixel of frame t changes when its world point (``world_xyz``, metres) moves by more than ``xyz_threshold_m``
    against frame 0, and the robot covers it neither at frame 0 nor at t (``robot_mask`` grown by
    ``robot_margin_px``). Geometry, not colour: the robot's moving shadow changes far more pixels' RGB than a moved
    object does, and it follows from the robot condition. A clip without ``world_xyz`` falls back to RGB changes of
    more than ``rgb_threshold`` (mean over channels, in [0, 1]). Pixels -> cells by max over each cell (a moved
    object covers few pixels, which a nearest-neighbour resize would drop); frames -> latent frames as the
    pipeline's robot mask (``downsample_robot_mask``: frame 0, which never changes, then groups of ``temporal``)."""
    rgb = np.asarray(clip["rgb"], np.float32) / 255.0
    t, h, w = rgb.shape[:3]
    if (t - 1) % temporal or h % latent_height or w % latent_width:
        raise ValueError(f"clip {clip.get('name', '?')!r}: {t} frames of {h} x {w} do not map onto {temporal}-frame "
                         f"groups of a {latent_height} x {latent_width} latent grid")
    xyz = clip.get("world_xyz")
    if xyz is not None:
        xyz = np.asarray(xyz, np.float32)
        changed = np.nan_to_num(np.linalg.norm(xyz - xyz[:1], axis=-1), nan=0.0) > xyz_threshold_m
    else:
        changed = np.abs(rgb - rgb[:1]).mean(-1) > rgb_threshold
    changed &= ~active_pixels(clip["robot_mask"], robot_margin_px)
    cells = F.adaptive_max_pool2d(torch.from_numpy(changed.astype(np.float32))[:, None],
                                  (latent_height, latent_width))  # [T, 1, h, w]
    return downsample_robot_mask(cells.permute(1, 0, 2, 3)[None], latent_height, latent_width, temporal)[0, 0].numpy()


@torch.no_grad()
def encode_clip(pipe: K4DPipeline, clip: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Frozen-encoder inputs of one clip (tensors on CPU, float32, no batch dimension).

    Returns ``x0 [C, F, h, 2w]`` (normalised RGB | XYZ latents; C = the VAE's z_dim), ``condition [4 + C, F, h,
    2w]`` (first-frame mask + condition latent), ``robot_condition [4 + C, F, h, w_cond]``, ``image_tokens
    [N_img, image_dim]`` and ``change_mask [1, F, h, 2w]`` (`change_mask`, for ``change_weight``); a
    ``first_xyz_condition`` model adds ``condition_dummy`` (see the module docstring).
    Raises ValueError if the clip has no robot pixel (the pipeline cannot condition on an absent robot).
    """
    encoded, skipped = encode_clips(pipe, [clip])
    if skipped:
        raise ValueError(skipped[0][1])
    return encoded[0]


def _prepare(pipe: K4DPipeline, clip: dict[str, Any]) -> dict[str, Any]:
    check_clip(pipe, clip)
    link = clip.get("robot_link")
    mask = K4DPipeline._robot_mask(clip["robot_xyz"], link) & clip["robot_mask"]
    if not mask.any():
        raise ValueError(f"clip {clip.get('name', '?')!r} has no robot pixel; cannot build a robot condition")
    xyz01, _, _ = pipe.pointmap_encoding.encode_robot(clip["robot_xyz"], mask)
    joints = None
    if pipe.variant == "jointemb":
        try:
            joints = pipe.check_robot_joints(clip.get("q"))
        except ValueError as exc:
            raise ValueError(f"clip {clip.get('name', '?')!r} (its joint positions 'q'): {exc}") from None
    robot_rgb = None
    if pipe.variant == "full":
        robot_rgb = clip.get("robot_rgb")
        robot_rgb = render_robot_rgb(link, mask) if robot_rgb is None else np.where(mask[..., None], robot_rgb, 0)
        robot_rgb = robot_rgb.astype(np.uint8)
    return {"mask": mask, "xyz01": xyz01, "robot_rgb": robot_rgb, "joints": joints}


@torch.no_grad()
def encode_clips(pipe: K4DPipeline, clips: list[dict[str, Any]], batch_size: int = 32
                 ) -> tuple[list[dict[str, torch.Tensor]], list[tuple[str, str]]]:
    """[`encode_clip`] for many clips, the VAE running on ``batch_size`` clips at a time (the same calls, batched:
    one clip at a time the small VAE is bound by kernel launches, not arithmetic).

    Returns ``(encoded, skipped)``: the encodings of the usable clips in order, and ``(name, reason)`` of each
    clip without a robot pixel.
    """
    encoded: list[dict[str, torch.Tensor]] = []
    skipped: list[tuple[str, str]] = []
    for start in range(0, len(clips), max(1, int(batch_size))):
        group, prep = [], []
        for clip in clips[start : start + max(1, int(batch_size))]:
            try:
                prep.append(_prepare(pipe, clip))
                group.append(clip)
            except ValueError as exc:
                if "no robot pixel" not in str(exc):
                    raise
                skipped.append((str(clip.get("name", "?")), str(exc)))
        if not group:
            continue
        rgb = np.stack([c["rgb"] for c in group])
        image01 = torch.from_numpy(np.ascontiguousarray(rgb[:, 0])).permute(0, 3, 1, 2).float() / 255.0
        tokens = [pipe.encode_image(np.ascontiguousarray(r[0]))[0] for r in rgb]
        condition = pipe.prepare_condition(image01)
        measured = None
        if pipe.config.first_xyz_condition:
            measured = pipe.prepare_condition(image01, np.stack([c["world_xyz"][0] for c in group]))
        robot_rgb = None if pipe.variant != "full" else np.stack([p["robot_rgb"] for p in prep])
        joints = None if pipe.variant != "jointemb" else np.stack([p["joints"] for p in prep])
        robot_condition = pipe.prepare_robot_condition(np.stack([p["xyz01"] for p in prep]),
                                                       np.stack([p["mask"] for p in prep]), robot_rgb, joints)
        x0 = target_latents(pipe, [c["rgb"] for c in group], [c["world01"] for c in group])
        lh, lw = x0.shape[-2], x0.shape[-1] // 2
        for i in range(len(group)):
            cm = torch.from_numpy(change_mask(group[i], lh, lw, pipe.vae_scale_factor_temporal))
            item = {"x0": x0[i].float().cpu(), "condition": condition[i].float().cpu(),
                    "robot_condition": robot_condition[i].float().cpu(), "image_tokens": tokens[i].float().cpu(),
                    "change_mask": torch.cat([cm, cm], dim=-1)[None]}  # the RGB and the XYZ half alike
            if measured is not None:
                item["condition_dummy"], item["condition"] = item["condition"], measured[i].float().cpu()
            encoded.append(item)
    return encoded, skipped


@torch.no_grad()
def target_latents(pipe: K4DPipeline, rgb: list[np.ndarray], world01: list[np.ndarray]) -> torch.Tensor:
    """The latents a rollout denoises to, `[B, C, F, h, 2w]`: VAE(RGB) | (VAE(world pointmap) - (-0.17)) / 1.36
    along the width, from `(T, H, W, 3)` uint8 RGB videos and [0, 1] pointmap videos (training targets; decoded
    as they are, they give ``k4d eval``'s ``vae_recon`` ceiling)."""
    rgb_latent = pipe.encode_video(torch.cat([_video01(r) for r in rgb]))
    pm_latent = pipe.encode_video(torch.cat([_video01(w) for w in world01]))
    pm_latent = (pm_latent - POINTMAP_LATENT_MEAN) / POINTMAP_LATENT_STD
    return torch.cat([rgb_latent, pm_latent], dim=-1)


def stack_encoded(items: list[dict[str, torch.Tensor]], device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """Batch a list of [`encode_clip`] outputs along a new first dimension."""
    return {k: torch.stack([it[k] for it in items]).to(device) for k in items[0]}


def encoded_nbytes(items: list[dict[str, torch.Tensor]]) -> int:
    """Bytes of a list of [`encode_clip`] outputs (what [`EncodedBank`] will hold)."""
    return sum(v.numel() * v.element_size() for item in items for v in item.values())


def encodings_placement(setting: str, nbytes: int, device: torch.device | str,
                        free_bytes: int | None = None, fraction: float = 0.5) -> str:
    """Where [`EncodedBank`] keeps the training encodings: "device" or "host".

    ``setting`` is ``TrainConfig.encodings_on``. "host" stacks each batch in host memory and copies it to the
    accelerator every step; "device" keeps them all on the accelerator, so a batch is one gather there. "auto" is
    "device" on an accelerator when ``nbytes`` is at most ``fraction`` of its free memory (``free_bytes``;
    measured when None), else "host". On a CPU run both are the same memory and the answer is "device".
    Raises MemoryError when "device" is asked for and ``nbytes`` exceeds the free memory.
    """
    if setting not in ENCODINGS_ON:
        raise ValueError(f"encodings_on must be one of {ENCODINGS_ON}, got {setting!r}")
    device = torch.device(device)
    if device.type == "cpu":
        return "device"
    if setting == "host":
        return "host"
    if free_bytes is None:
        free_bytes = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else 0
    if setting == "device":
        if nbytes > free_bytes:
            raise MemoryError(f"encodings_on: device: the training encodings take {nbytes / 2**30:.2f} GiB and "
                              f"{device} has {free_bytes / 2**30:.2f} GiB free; use encodings_on: host (or auto)")
        return "device"
    return "device" if nbytes <= fraction * free_bytes else "host"


class EncodedBank:
    """The encoded training clips as one stacked tensor per field (``[N, ...]``), on ``device`` or in host memory.

    ``batch(idx)`` returns exactly ``stack_encoded([items[i] for i in idx], device)``: with the bank on the
    accelerator a batch is one gather there, instead of stacking ~7 MiB a clip in host memory and copying it
    over every step (at 192 x 128, 24 clips are about 170 MiB a step). ``consume=True`` empties ``items`` while
    the bank fills, so host memory never holds the encodings twice.
    """

    def __init__(self, items: list[dict[str, torch.Tensor]], device: torch.device | str, on: str = "device",
                 consume: bool = False):
        if not items:
            raise ValueError("EncodedBank needs at least one encoded clip")
        if on not in ("device", "host"):
            raise ValueError(f"EncodedBank: on must be 'device' or 'host', got {on!r}")
        self.device = torch.device(device)
        self.on = on
        self.count = len(items)
        self.storage = self.device if on == "device" else torch.device("cpu")
        first = items[0]
        for i, item in enumerate(items):
            if item.keys() != first.keys():
                raise ValueError(f"encoded clip {i} has fields {sorted(item)}, clip 0 has {sorted(first)}")
            for k, v in item.items():
                if v.shape != first[k].shape or v.dtype != first[k].dtype:
                    raise ValueError(f"encoded clip {i}: field {k!r} is {tuple(v.shape)} {v.dtype}, clip 0's is "
                                     f"{tuple(first[k].shape)} {first[k].dtype}")
        self.fields = {k: torch.empty((self.count, *v.shape), dtype=v.dtype, device=self.storage)
                       for k, v in first.items()}
        for i in range(self.count):
            item = items[i]
            for k, v in item.items():
                self.fields[k][i].copy_(v)
            if consume:
                items[i] = None  # type: ignore[call-overload]  # freed as soon as it is copied
        if consume:
            items.clear()

    @property
    def nbytes(self) -> int:
        return encoded_nbytes([self.fields])

    def __len__(self) -> int:
        return self.count

    def batch(self, idx: list[int] | torch.Tensor) -> dict[str, torch.Tensor]:
        """The clips ``idx`` stacked along a new first dimension, on ``self.device``."""
        index = torch.as_tensor(idx, dtype=torch.long).to(self.storage)
        return {k: v.index_select(0, index).to(self.device) for k, v in self.fields.items()}


def soft_mask(robot_condition: torch.Tensor, mask_channels: int, fraction: float, variant: str,
              generator: torch.Generator | None = None) -> torch.Tensor:
    """Training soft mask: a random ``fraction`` of the robot mask's ones -> 0.5 (out of place).

    ``robot_condition`` `[B, mask_channels + C, F, h, w_cond]`; the same positions change in every mask channel
    and (``variant == "full"``) in both width halves. "jointemb" has no mask: returned unchanged.
    """
    if fraction <= 0 or variant == "jointemb":
        return robot_condition
    m = robot_condition[:, :1]
    if variant == "full":
        m = m[..., : m.shape[-1] // 2]
    rand = torch.rand(m.shape, generator=generator, device="cpu").to(m.device)
    m = torch.where((m == 1) & (rand < fraction), torch.full_like(m, 0.5), m)
    if variant == "full":
        m = m.repeat(1, 1, 1, 1, 2)
    return torch.cat([m.expand(-1, mask_channels, -1, -1, -1), robot_condition[:, mask_channels:]], dim=1)


def sample_sigmas(batch_size: int, shift: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Flow-matching noise levels `(B,)` in (0, 1): ``shift * u / (1 + (shift - 1) * u)``, ``u ~ U(0, 1)``."""
    u = torch.rand(batch_size, generator=generator)
    return shift * u / (1 + (shift - 1) * u)


def flow_matching_step(transformer: torch.nn.Module, batch: dict[str, torch.Tensor],
                       generator: torch.Generator | None = None, shift: float = 3.0,
                       soft_mask_fraction: float = 0.1, cond_dropout: float = 0.0,
                       sigmas: torch.Tensor | None = None, noise: torch.Tensor | None = None,
                       first_xyz_dropout: float = 0.0, change_weight: float = 0.0,
                       region: str = "all") -> torch.Tensor:
    """One flow-matching loss (scalar float32) on an encoded batch (see module docstring).

    ``transformer`` may be wrapped (DDP/FSDP); its config is read from the unwrapped module. Random draws come
    from the CPU ``generator`` (so a seed gives the same batch on every device) unless ``sigmas`` `(B,)` /
    ``noise`` are given. A batch with ``condition_dummy`` (a ``first_xyz_condition`` model) uses it instead of
    ``condition`` for a random ``first_xyz_dropout`` fraction of its samples.

    ``change_weight`` > 0 weighs the batch's ``change_mask`` cells ``1 + change_weight`` (weighted mean; see the
    module docstring). ``region="change"`` returns the plain MSE over those cells only (a diagnostic: how well the
    world's own motion is predicted; NaN for a batch without changed cells).
    """
    if region not in ("all", "change"):
        raise ValueError(f"region must be 'all' or 'change', got {region!r}")
    if (change_weight > 0 or region == "change") and "change_mask" not in batch:
        raise ValueError("change_weight / region='change' need the batch's 'change_mask' (encode_clips makes it)")
    core = getattr(transformer, "module", transformer)
    core = getattr(core, "_orig_mod", core)
    cfg = core.config
    x0 = batch["x0"]
    b, device = x0.shape[0], x0.device
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator).to(device)
    if sigmas is None:
        sigmas = sample_sigmas(b, shift, generator)
    sigmas = sigmas.to(device=device, dtype=torch.float32)
    s = sigmas.view(-1, 1, 1, 1, 1)
    x_t = (1 - s) * x0 + s * noise
    target = noise - x0
    rc = soft_mask(batch["robot_condition"], cfg.mask_channels, soft_mask_fraction, cfg.variant, generator)
    keep = (torch.rand(b, generator=generator) >= cond_dropout).float().to(device)
    condition = batch["condition"]
    if "condition_dummy" in batch and first_xyz_dropout > 0:
        dummy = (torch.rand(b, generator=generator) < first_xyz_dropout).to(device).view(-1, 1, 1, 1, 1)
        condition = torch.where(dummy, batch["condition_dummy"], condition)
    param_dtype = next(core.parameters()).dtype
    pred = transformer(
        hidden_states=torch.cat([x_t, condition], dim=1).to(param_dtype),
        timestep=sigmas * NUM_TRAIN_TIMESTEPS,
        encoder_hidden_states_image=batch["image_tokens"].to(param_dtype),
        robot_condition=rc.to(param_dtype),
        robot_token_scale=keep,
        robot_injection_scale=keep,
        return_dict=False,
    )[0]
    err = (pred.float() - target.float()).square()
    if region == "change":
        m = batch["change_mask"].float().expand_as(err)
        return (err * m).sum() / m.sum() if m.sum() > 0 else torch.tensor(float("nan"), device=err.device)
    if change_weight > 0:
        w = (1.0 + float(change_weight) * batch["change_mask"].float()).expand_as(err)
        return (err * w).sum() / w.sum()
    return err.mean()


# ------------------------------------------------------------------------------------------------ encoded cache
def encoded_fingerprint(ds, pipe: K4DPipeline, process: tuple[int, int] = (0, 1)) -> dict[str, Any]:
    """What [`encode_clips`]' output depends on: the clip files of ``ds`` (an ``EpisodeDataset``: name, size,
    mtime), the geometry and pointmap code, the pipeline's config and a digest of its frozen VAE and image-encoder
    weights (in memory: a from-scratch run's encoders have no file), and this process's share
    (``(index, count)``). Two runs with equal fingerprints encode to the same tensors."""
    import hashlib
    import json

    files = []
    for name in ds.names:
        st = ds.path(name).stat()
        files.append([str(name), st.st_size, st.st_mtime_ns])
    digest = hashlib.sha256()
    for module in (pipe.vae, pipe.image_encoder):
        for key, value in sorted(module.state_dict().items()):
            digest.update(key.encode())
            digest.update(value.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    config = json.loads(json.dumps({name: {k: v for k, v in dict(cfg).items() if not k.startswith("_")}
                                    for name, cfg in (("pipeline", pipe.config), ("vae", pipe.vae.config))},
                                   default=str, sort_keys=True))
    return {"root": str(ds.root.resolve()), "files": files, "geometry": [ds.num_frames, ds.height, ds.width],
            "pointmap_encoding": ds.pointmap_encoding.to_dict(),
            "pipeline_config": config, "frozen_weights_sha256": digest.hexdigest(), "process": list(process)}


def save_encoded(path, encoded: list[dict[str, torch.Tensor]], fingerprint: dict[str, Any],
                 extra: dict[str, Any] | None = None) -> None:
    """Write [`encode_clips`]' output to ``path`` (safetensors, keys ``<clip>/<field>``) and its fingerprint and
    ``extra`` (JSON-able) next to it (``path`` with ``.json``); the JSON is written last, so a cut-off write is
    never read back as complete. Raises OSError when either cannot be written."""
    import json
    from pathlib import Path

    from safetensors import SafetensorError
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = path.with_suffix(".json")
    meta.unlink(missing_ok=True)
    try:
        save_file({f"{i:07d}/{k}": v.contiguous() for i, item in enumerate(encoded) for k, v in item.items()},
                  str(path))
    except SafetensorError as exc:  # e.g. the disk filled up mid-write: an OSError like the others
        raise OSError(f"writing {path}: {exc}") from exc
    meta.write_text(json.dumps({"fingerprint": fingerprint, "count": len(encoded), "extra": extra or {}}))


def load_encoded(path, fingerprint: dict[str, Any]) -> tuple[list[dict[str, torch.Tensor]], dict[str, Any]] | None:
    """[`save_encoded`]'s clips and ``extra`` if ``path`` holds a complete cache made with an equal
    ``fingerprint``; ``None`` otherwise (no cache, another fingerprint, or an unreadable or incomplete file)."""
    import json
    from pathlib import Path

    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    meta = path.with_suffix(".json")
    if not (path.is_file() and meta.is_file()):
        return None
    try:
        info = json.loads(meta.read_text())
        if info.get("fingerprint") != fingerprint:
            return None
        flat = load_file(str(path))
    except (OSError, ValueError, SafetensorError):
        return None
    items: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in flat.items():
        idx, _, field_name = key.partition("/")
        items.setdefault(int(idx), {})[field_name] = value
    if sorted(items) != list(range(int(info.get("count", -1)))):
        return None
    return [items[i] for i in range(len(items))], dict(info.get("extra", {}))

# Copyright 2026 k4d developers. Apache-2.0.
"""The imagine engine: one loaded world model that turns requests into metric rollouts (ROS-free).

    from k4d_worldmodel.config import WorldModelConfig
    from k4d_worldmodel.engine import ImagineEngine, ImagineRequest, SamplingOverrides
    engine = ImagineEngine(WorldModelConfig(checkpoint_dir="ckpt/model", device="cpu"))
    engine.load()
    result = engine.run(ImagineRequest(image=rgb0, sequence=seq, sampling=SamplingOverrides(seed=-1)))
    result.rgb, result.xyz, result.metric, result.sampling.seed, engine.model_id

Used by the ``imagine_node`` (ROS action server) and by ``k4d imagine``. The engine owns the pipeline and
knows nothing about ROS: it resolves the sampling settings of a request against the configured defaults,
checks the request against the model's geometry (errors name the field), runs the pipeline with progress
reports and a stop hook between denoising steps, lifts the world pointmaps to metres and reports timings.
A CUDA out-of-memory error empties the allocator cache and is raised as [`EngineOutOfMemory`]; the engine
stays usable.
"""
from __future__ import annotations

import dataclasses
import gc
import hashlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from k4d_kinematics.camera import PinholeCamera, resize_nearest
from k4d_kinematics.sequence import PointmapSequenceData

from .config import CFG_MODES, SCHEDULERS, WorldModelConfig
from .composite import composite_static
from .lifting import MetricLift, lift_pointmaps_with_anchor
from .pipelines.pipeline_k4d import K4DCancelled, K4DPipeline, make_scheduler

STAGES = ("queued", "preparing", "denoising", "decoding", "lifting")

# Files larger than this are fingerprinted by their header, size and 16 evenly spaced 64 KiB samples instead of
# their whole content (a 14B transformer is ~30 GB; hashing it all would add minutes to every start).
_FULL_HASH_MAX_BYTES = 256 * 1024 * 1024
_SAMPLE_BYTES = 64 * 1024


class InvalidRequest(ValueError):
    """The request does not fit the loaded model; the message names the field and the value."""


class EngineNotLoaded(RuntimeError):
    """``run`` was called without loaded weights."""


class EngineOutOfMemory(RuntimeError):
    """The accelerator ran out of memory during a rollout. The cache was emptied; the engine stays usable."""


@dataclass
class SamplingOverrides:
    """What a request asks for; zero / empty / None fields take the engine's configured defaults.

    Attributes:
        num_inference_steps: denoising steps; 0 = default.
        guidance_scale: classifier-free guidance; <= 0 = default (1.0 disables guidance).
        seed: None = default seed; negative = draw a fresh seed (reported in the result).
        num_frames: output frames incl. frame 0, must be 4k+1 and equal the model's; 0 = the sequence length.
        scheduler: "unipc" or "euler"; "" = default.
        cfg_mode: "correct" or "released"; "" = default.
    """

    num_inference_steps: int = 0
    guidance_scale: float = 0.0
    seed: Optional[int] = None
    num_frames: int = 0
    scheduler: str = ""
    cfg_mode: str = ""


@dataclass(frozen=True)
class Sampling:
    """The sampling settings actually used for one rollout (defaults resolved, seed drawn)."""

    num_inference_steps: int
    guidance_scale: float
    seed: int
    num_frames: int
    scheduler: str
    cfg_mode: str
    seed_drawn: bool = False


@dataclass
class ImagineRequest:
    """One rollout request.

    Attributes:
        image: `(H, W, 3)` uint8 RGB, the first camera frame, exactly the model's H x W.
        sequence: the robot conditioning ([`PointmapSequenceData`]: xyz metres, camera optical frame).
        sampling: overrides of the configured sampling defaults.
        anchor_depth: optional `(H, W)` float depth in metres of the first frame, registered to ``image`` (same
            pixels; NaN or 0 where unknown), e.g. an RGB-D camera's aligned depth. When the lift on the robot
            pixels fails, the output is lifted again with this frame's back-projected depth as anchor
            (``lifting.lift_pointmaps_anchored``; inlier distance ``metric_anchor_inlier_threshold_m``). A model
            trained with the measured first frame (``first_xyz_condition``, k4d v3) is also conditioned on it.
    """

    image: np.ndarray
    sequence: PointmapSequenceData
    sampling: SamplingOverrides = field(default_factory=SamplingOverrides)
    anchor_depth: Optional[np.ndarray] = None


@dataclass
class ImagineResult:
    """One imagined rollout.

    Attributes:
        rgb: `(T, H, W, 3)` uint8 imagined frames.
        xyz: `(T, H, W, 3)` float32 world pointmaps, camera optical frame: metres when ``metric``, else the
            model's normalised [0, 1] output.
        xyz01: `(T, H, W, 3)` float32, the normalised output before lifting.
        metric: True when the metric lift succeeded (``lift.quality`` "good" or "poor").
        lift: the fitted per-axis affine map and its quality ([`MetricLift`]).
        anchored: the lift was fitted with the request's ``anchor_depth`` (the robot-pixel fit had failed).
        composited: ``rgb`` (and, when metric with an ``anchor_depth``, ``xyz``) were composited onto the first
            frame (``WorldModelConfig.compose_static``); ``xyz01`` stays the model's raw output.
        robot_mask: `(T, H, W)` bool robot pixels of the condition.
        sampling: the settings actually used (seed included).
        timings: seconds: ``encode_s``, ``denoise_s``, ``decode_s``, ``total_s`` (the pipeline), ``lift_s``,
            ``generation_s`` (all of it, wall clock), plus ``steps``.
        robot_xyz_lo, robot_xyz_hi: `(3,)` metres, the bounds that normalised the robot condition.
        model_id: checkpoint folder name + short weights hash.
        sequence: the condition that produced it.
    """

    rgb: np.ndarray
    xyz: np.ndarray
    xyz01: np.ndarray
    metric: bool
    lift: MetricLift
    robot_mask: np.ndarray
    sampling: Sampling
    timings: dict
    model_id: str
    sequence: PointmapSequenceData
    robot_xyz_lo: np.ndarray
    robot_xyz_hi: np.ndarray
    anchored: bool = False
    composited: bool = False

    @property
    def metric_quality(self) -> str:
        """``lift.quality``, prefixed ``anchored_`` when the depth anchor made the fit."""
        return f"anchored_{self.lift.quality}" if self.anchored else self.lift.quality


# progress(stage, step, total_steps, elapsed_s, eta_s); stage in STAGES
ProgressFn = Callable[[str, int, int, float, float], None]


# ---------------------------------------------------------------------------------------------------- identity
def _file_digest(h: "hashlib._Hash", path: Path) -> None:
    size = path.stat().st_size
    h.update(f"{path.name}:{size}:".encode())
    with open(path, "rb") as fh:
        if size <= _FULL_HASH_MAX_BYTES:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
            return
        head_len = int.from_bytes(fh.read(8), "little")  # safetensors: 8-byte header length, JSON header
        fh.seek(0)
        h.update(fh.read(8 + min(head_len, 100 * 1024 * 1024)))
        for k in range(16):
            fh.seek(int((size - _SAMPLE_BYTES) * k / 15))
            h.update(fh.read(_SAMPLE_BYTES))


def weight_files(config: WorldModelConfig) -> list[Path]:
    """The safetensors files that define the model of ``config`` (sorted; text encoder excluded)."""
    roots = [Path(config.checkpoint_dir)]
    ckpt = roots[0]
    if not (ckpt / "model_index.json").exists() and config.base_model_dir:
        roots.append(Path(config.base_model_dir))
    files = []
    for root in roots:
        files += [p for p in root.rglob("*.safetensors")
                  if not {"text_encoder", "tokenizer"} & set(p.relative_to(root).parts)]
    return sorted(files)


def model_identity(config: WorldModelConfig) -> str:
    """``<checkpoint folder name>@<12 hex>``: the folder name and a BLAKE2b fingerprint of the weight files.

    Files up to 256 MiB (the Kinema4D added weights, the LoRA, the tiny test models) are hashed whole; larger
    ones by their safetensors header, size and 16 content samples. The variant is part of the hash.
    """
    h = hashlib.blake2b(digest_size=6)
    h.update(config.variant.encode())
    for path in weight_files(config):
        _file_digest(h, path)
    return f"{Path(config.checkpoint_dir).resolve().name}@{h.hexdigest()}"


def draw_seed() -> int:
    """A fresh non-negative 63-bit seed from the OS entropy pool."""
    return int.from_bytes(os.urandom(8), "little") & 0x7FFF_FFFF_FFFF_FFFF


def sequence_from_arrays(xyz: np.ndarray, link: Optional[np.ndarray] = None, K: Optional[np.ndarray] = None,
                         fps: float = 8.0, frame_id: str = "camera_color_optical_frame") -> PointmapSequenceData:
    """A [`PointmapSequenceData`] from bare arrays (``k4d imagine``'s npz).

    ``xyz (T, H, W, 3)`` metres NaN background; ``link (T, H, W)`` int, -1 background (default: 0 on finite xyz);
    ``K (3, 3)`` intrinsics (default: fx = fy = W, centred). No joint data; frames ``1 / fps`` apart.
    """
    xyz = np.asarray(xyz, dtype=np.float32)
    if xyz.ndim != 4 or xyz.shape[-1] != 3:
        raise InvalidRequest(f"pointmaps xyz must have shape (T, H, W, 3), got {xyz.shape}")
    t, h, w, _ = xyz.shape
    if link is None:
        link = np.where(np.isfinite(xyz).all(-1), 0, -1)
    link = np.asarray(link)
    if link.shape != (t, h, w):
        raise InvalidRequest(f"pointmaps link must have shape ({t}, {h}, {w}), got {link.shape}")
    if K is None:
        cam = PinholeCamera(w, h, float(w), float(w), (w - 1) / 2.0, (h - 1) / 2.0, frame_id)
    else:
        K = np.asarray(K, dtype=np.float64).reshape(3, 3)
        cam = PinholeCamera(w, h, K[0, 0], K[1, 1], K[0, 2], K[1, 2], frame_id)
    n_links = int(link.max(initial=-1)) + 1
    return PointmapSequenceData(
        xyz=xyz, link=link.astype(np.int16), times=np.arange(t, dtype=np.float64) / fps, joint_names=[],
        positions=np.zeros((t, 0)), link_names=[f"link_{k}" for k in range(n_links)], camera=cam,
        source="recording")


# ------------------------------------------------------------------------------------------------------ engine
class ImagineEngine:
    """One world model on one device; not thread-safe (one rollout at a time; the node runs one worker)."""

    def __init__(self, config: WorldModelConfig,
                 loader: Optional[Callable[[WorldModelConfig], K4DPipeline]] = None):
        self.config = config
        self._loader = loader
        self.pipe: Optional[K4DPipeline] = None
        self.model_id = ""
        self.load_s = float("nan")
        self._schedulers: dict = {}
        self._step_s: Optional[float] = None  # last rollout's seconds per denoising step (for ETAs)
        self._tail_s: Optional[float] = None  # last rollout's decode + lift seconds

    # -- loading ------------------------------------------------------------------------------
    @property
    def loaded(self) -> bool:
        return self.pipe is not None

    def load(self) -> None:
        """Load the weights of ``config`` (see [`k4d_worldmodel.loading.load_pipeline`]); errors propagate."""
        if self._loader is None:
            from .loading import load_pipeline

            self._loader = load_pipeline
        t0 = time.perf_counter()
        pipe = self._loader(self.config)
        if pipe.variant == "jointemb":
            raise ValueError(f"{self.config.checkpoint_dir} is a 'jointemb' model (the joint-vector ablation, for k4d "
                             f"eval): the engine conditions on robot pointmaps; load a pmcond or full checkpoint")
        pipe.set_progress_bar_config(disable=True)
        self.model_id = model_identity(self.config)
        self.pipe = pipe
        kind = "euler" if "Euler" in type(pipe.scheduler).__name__ else "unipc"
        self._schedulers = {kind: pipe.scheduler}
        self.load_s = time.perf_counter() - t0

    def unload(self) -> None:
        """Drop the pipeline and return its accelerator memory (``torch.cuda.empty_cache``)."""
        self.pipe = None
        self._schedulers = {}
        gc.collect()
        free_accelerator_cache()

    @property
    def geometry(self) -> tuple[int, int, int]:
        """(frames T, height H, width W) of the loaded model."""
        pipe = self._require()
        return pipe.num_frames, pipe.height, pipe.width

    def _require(self) -> K4DPipeline:
        if self.pipe is None:
            raise EngineNotLoaded("the world model is not loaded (configure the node / call load() first)")
        return self.pipe

    # -- requests -----------------------------------------------------------------------------
    def resolve_sampling(self, overrides: SamplingOverrides, sequence_frames: int) -> Sampling:
        """Defaults filled in, seed drawn if negative, everything checked. Raises [`InvalidRequest`]."""
        cfg, o = self.config, overrides
        t_model = self.geometry[0]
        steps = int(o.num_inference_steps) or cfg.num_inference_steps
        if steps < 1:
            raise InvalidRequest(f"sampling.num_inference_steps must be >= 0 (0 = default), got {o.num_inference_steps}")
        if not np.isfinite(o.guidance_scale):  # before the default rule: NaN > 0 is False
            raise InvalidRequest(f"sampling.guidance_scale must be finite, got {o.guidance_scale}")
        guidance = float(o.guidance_scale) if o.guidance_scale > 0 else cfg.guidance_scale
        n = int(o.num_frames) or int(sequence_frames)
        if n < 1 or (n - 1) % 4 != 0:
            raise InvalidRequest(f"sampling.num_frames must be 4k+1 (Wan VAE temporal stride 4), got {n}")
        if n != t_model:
            raise InvalidRequest(f"sampling.num_frames is {n}, but the loaded model generates {t_model} frames")
        if int(sequence_frames) != n:
            raise InvalidRequest(f"the conditioning sequence has {sequence_frames} frames, sampling.num_frames is {n}")
        scheduler = o.scheduler or cfg.scheduler
        if scheduler not in SCHEDULERS:
            raise InvalidRequest(f"sampling.scheduler must be one of {SCHEDULERS} or '', got {o.scheduler!r}")
        cfg_mode = o.cfg_mode or cfg.cfg_mode
        if cfg_mode not in CFG_MODES:
            raise InvalidRequest(f"sampling.cfg_mode must be one of {CFG_MODES} or '', got {o.cfg_mode!r}")
        seed = cfg.seed if o.seed is None else int(o.seed)
        drawn = seed < 0
        return Sampling(steps, guidance, draw_seed() if drawn else seed, n, scheduler, cfg_mode, drawn)

    def adapt(self, request: ImagineRequest) -> ImagineRequest:
        """``request`` fitted to the model's size and frame count when ``config.adapt_inputs`` (see
        [`WorldModelConfig`]); otherwise, or when it already fits, ``request`` itself."""
        t, h, w = self.geometry
        if not self.config.adapt_inputs:
            return request
        img, seq = np.asarray(request.image), request.sequence
        if img.dtype == np.uint8 and img.ndim == 3 and img.shape[-1] == 3 and img.shape[:2] != (h, w):
            x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].float()
            x = torch.nn.functional.interpolate(x, size=(h, w), mode="area")
            img = x[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()
        if seq.num_frames > t and (t - 1) % 4 == 0 and not request.sampling.num_frames:
            seq = seq.select_frames(np.linspace(0, seq.num_frames - 1, t).round().astype(int))
        depth = request.anchor_depth
        if depth is not None and np.ndim(depth) == 2 and np.shape(depth) != (h, w):
            depth = resize_nearest(np.asarray(depth), h, w)  # measured values only, like the robot pointmaps
        if (seq.camera.width, seq.camera.height) != (w, h):
            seq = seq.resized(w, h)
        return dataclasses.replace(request, image=img, sequence=seq, anchor_depth=depth)

    def check_request(self, request: ImagineRequest) -> Sampling:
        """Check image, sequence and sampling against the loaded model; returns the resolved sampling.
        (With ``config.adapt_inputs`` the request is checked as [`adapt`] fits it.)"""
        request = self.adapt(request)
        t, h, w = self.geometry
        img = np.asarray(request.image)
        if img.dtype != np.uint8 or img.shape != (h, w, 3):
            raise InvalidRequest(f"initial_image must be {w}x{h} RGB uint8 for this model, got array {img.shape} "
                                 f"{img.dtype}")
        seq = request.sequence
        cam = seq.camera
        if (cam.width, cam.height) != (w, h):
            raise InvalidRequest(f"pointmaps camera is {cam.width}x{cam.height}, the model needs {w}x{h}")
        if seq.num_frames == 0:
            raise InvalidRequest("pointmaps is empty (no frames)")
        if request.anchor_depth is not None:
            depth = np.asarray(request.anchor_depth)
            if depth.shape != (h, w) or not np.issubdtype(depth.dtype, np.floating):
                raise InvalidRequest(f"anchor_depth must be a {w}x{h} float depth image (metres) registered to the "
                                     f"initial image, got array {depth.shape} {depth.dtype}")
            if np.isinf(depth).any() or (depth < 0).any():
                raise InvalidRequest("anchor_depth has negative or infinite values (metres; NaN or 0 = unknown)")
        sampling = self.resolve_sampling(request.sampling, seq.num_frames)
        robot = np.isfinite(seq.xyz).all(-1) & (seq.link >= 0)
        if not robot.any():
            raise InvalidRequest("pointmaps has no robot pixel in any frame (the robot is out of view)")
        return sampling

    def estimate_s(self, steps: int) -> float:
        """Seconds one rollout of ``steps`` steps is expected to take (0 before the first rollout)."""
        if self._step_s is None:
            return 0.0
        return steps * self._step_s + (self._tail_s or 0.0)

    # -- running ------------------------------------------------------------------------------
    def run(self, request: ImagineRequest, progress: Optional[ProgressFn] = None,
            should_stop: Optional[Callable[[], bool]] = None, sampling: Optional[Sampling] = None) -> ImagineResult:
        """Imagine one rollout.

        Args:
            request: image + condition + sampling overrides.
            progress: ``progress(stage, step, total, elapsed_s, eta_s)`` at "preparing", after every denoising
                step ("denoising"), then "decoding" and "lifting".
            should_stop: polled between denoising steps; True stops the rollout with [`K4DCancelled`].
            sampling: an already resolved ``check_request(request)`` (skips re-resolving, keeps a drawn seed).

        Raises:
            InvalidRequest, EngineNotLoaded, K4DCancelled, EngineOutOfMemory; other errors propagate.
        """
        pipe = self._require()
        request = self.adapt(request)
        if sampling is None:
            sampling = self.check_request(request)
        seq = request.sequence
        t0 = time.perf_counter()
        total = sampling.num_inference_steps
        report = progress or (lambda *a: None)
        report("preparing", 0, total, 0.0, self.estimate_s(total))
        first_xyz = None  # the measured first frame, metres (from anchor_depth; 0 and NaN depth = unknown)
        if request.anchor_depth is not None:
            depth = np.asarray(request.anchor_depth, dtype=np.float32)
            first_xyz = seq.camera.backproject(np.where(depth > 0, depth, np.nan))
            if not np.isfinite(first_xyz).all(-1).any():
                first_xyz = None

        def on_step(step: int, total_: int, elapsed_denoise: float) -> bool:
            per_step = elapsed_denoise / max(step, 1)
            tail = self._tail_s if self._tail_s is not None else 0.0
            report("denoising", step, total_, time.perf_counter() - t0, per_step * (total_ - step) + tail)
            if step == total_:
                report("decoding", step, total_, time.perf_counter() - t0, tail)
            return not (should_stop is not None and should_stop())

        if sampling.scheduler not in self._schedulers:
            self._schedulers[sampling.scheduler] = make_scheduler(sampling.scheduler, self.config.flow_shift)
        pipe.scheduler = self._schedulers[sampling.scheduler]
        try:
            out = pipe(image=request.image, robot_xyz=seq.xyz, robot_link=seq.link,
                       num_inference_steps=total, guidance_scale=sampling.guidance_scale, seed=sampling.seed,
                       cfg_mode=sampling.cfg_mode, batch_cfg=self.config.batch_cfg, callback=on_step,
                       first_xyz=first_xyz if pipe.config.first_xyz_condition else None)
        except torch.cuda.OutOfMemoryError as exc:
            free_accelerator_cache()
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else "out of memory"
            raise EngineOutOfMemory(
                f"accelerator out of memory imagining {sampling.num_frames} frames of {pipe.width}x{pipe.height} "
                f"(batch_cfg={self.config.batch_cfg}, dtype={self.config.dtype}): {first}. The cache was emptied; "
                "the server keeps serving (batch_cfg:=false halves peak activation memory)") from None
        except K4DCancelled:
            free_accelerator_cache()
            raise
        t_gen = time.perf_counter()
        report("lifting", total, total, t_gen - t0, 0.0)
        xyz, lift, anchored = lift_pointmaps_with_anchor(out.xyz, seq.xyz, out.robot_mask,
                                                         self.config.metric_lift_config(), first_xyz,
                                                         self.config.anchor_lift_config(), pipe.pointmap_encoding,
                                                         self.config.registration_block_px())
        rgb = out.rgb
        if self.config.compose_static:
            rgb, xyz_c = composite_static(out.rgb, request.image, out.robot_mask, xyz if lift.metric else None,
                                          first_xyz, seq.xyz, self.config.compose_margin_px,
                                          self.config.compose_region, self.config.compose_flying_rel or None,
                                          self.config.compose_flying_mode)
            if xyz_c is not None:
                xyz = xyz_c
        t_end = time.perf_counter()
        timings = {**{k: float(v) for k, v in out.timings.items()},
                   "lift_s": t_end - t_gen, "generation_s": t_end - t0}
        self._step_s = timings["denoise_s"] / max(total, 1)
        self._tail_s = timings["decode_s"] + timings["lift_s"]
        return ImagineResult(rgb=rgb, xyz=xyz, xyz01=out.xyz, metric=lift.metric, lift=lift,
                             robot_mask=out.robot_mask, sampling=sampling, timings=timings, model_id=self.model_id,
                             sequence=seq, robot_xyz_lo=out.robot_xyz_lo, robot_xyz_hi=out.robot_xyz_hi,
                             anchored=anchored, composited=self.config.compose_static)


def free_accelerator_cache() -> None:
    """Return cached CUDA memory to the driver (no-op without CUDA)."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def summary_dict(result: ImagineResult) -> dict:
    """JSON-friendly summary of a result (``k4d imagine``'s summary.json fields)."""
    s = result.sampling
    return {"model_id": result.model_id, "steps": s.num_inference_steps, "guidance": s.guidance_scale,
            "seed": s.seed, "seed_drawn": s.seed_drawn, "num_frames": s.num_frames, "scheduler": s.scheduler,
            "cfg_mode": s.cfg_mode, "robot_xyz_lo_m": result.robot_xyz_lo.tolist(),
            "robot_xyz_hi_m": result.robot_xyz_hi.tolist(), "metric_lift": result.lift.to_dict(),
            "metric_anchored": result.anchored, "composited": result.composited, **result.timings}


__all__ = ["ImagineEngine", "ImagineRequest", "ImagineResult", "SamplingOverrides", "Sampling", "InvalidRequest",
           "EngineNotLoaded", "EngineOutOfMemory", "K4DCancelled", "STAGES", "model_identity", "weight_files",
           "sequence_from_arrays", "draw_seed", "summary_dict"]

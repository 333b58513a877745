# Copyright 2026 k4d developers. Apache-2.0.
"""``k4d imagine``: run the world model on one first frame + robot pointmap sequence and write the results.

    k4d imagine --checkpoint ckpt/kinema4d_pmcond_ckpt --base-model ckpt/Wan2.1-I2V-14B-480P-Diffusers \\
        --image first.png --pointmaps seq.npz --out out/ --steps 50 --guidance 5 --seed 42 --variant pmcond

``seq.npz`` holds ``xyz`` (T, H, W, 3) float32 metres (camera optical frame, NaN background), ``link`` (T, H, W)
int (-1 background) and optionally ``K`` (3, 3). ``--depth`` takes the first frame's registered depth (a 16-bit
PNG in millimetres, as RGB-D drivers write it, or a ``.npy`` of float metres; 0 / NaN = unknown): it anchors the
metric lift and conditions a model trained with the measured first frame (``first_xyz_condition``). Writes ``rgb/NNN.png``, ``xyz/NNN.png`` (normalised pointmap as
colour), ``rollout.mp4`` (real first frame | imagined RGB | imagined depth colormap), ``ply/NNN.ply`` (points in
metres when the metric lift succeeded, else normalised) and ``summary.json``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from k4d_kinematics.overlay import depth_colormap

def write_ply(path: Path, xyz: np.ndarray, rgb: np.ndarray) -> int:
    """Binary little-endian PLY of finite points: ``xyz (N, 3)`` float, ``rgb (N, 3)`` uint8. Returns N written."""
    keep = np.isfinite(xyz).all(-1)
    pts = np.zeros(int(keep.sum()), dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"),
                                            ("red", "u1"), ("green", "u1"), ("blue", "u1")])
    for k, name in enumerate("xyz"):
        pts[name] = xyz[keep, k]
    for k, name in enumerate(("red", "green", "blue")):
        pts[name] = rgb[keep, k]
    header = ("ply\nformat binary_little_endian 1.0\n"
              f"element vertex {len(pts)}\n"
              "property float x\nproperty float y\nproperty float z\n"
              "property uchar red\nproperty uchar green\nproperty uchar blue\nend_header\n")
    with open(path, "wb") as fh:
        fh.write(header.encode("ascii"))
        fh.write(pts.tobytes())
    return len(pts)


def read_depth(path: Path) -> np.ndarray:
    """A depth image in metres `(H, W)` float32: ``.npy`` as stored (metres), else a 16-bit image in millimetres."""
    import imageio.v2 as imageio

    if path.suffix == ".npy":
        depth = np.load(path, allow_pickle=False)
        if depth.ndim != 2 or not np.issubdtype(depth.dtype, np.floating):
            raise ValueError(f"--depth {path} must hold a 2-D float array of metres, got {depth.dtype} {depth.shape}")
        return depth.astype(np.float32)
    raw = np.asarray(imageio.imread(path))
    if raw.ndim != 2 or raw.dtype != np.uint16:
        raise ValueError(f"--depth {path} must be a single-channel 16-bit image in millimetres (or a .npy of "
                         f"metres), got {raw.dtype} {raw.shape}")
    return raw.astype(np.float32) / 1000.0


def _run_imagine(args: argparse.Namespace) -> int:
    import imageio.v2 as imageio

    from .config import WorldModelConfig
    from .engine import ImagineEngine, ImagineRequest, sequence_from_arrays, summary_dict

    cfg = WorldModelConfig(
        checkpoint_dir=args.checkpoint, base_model_dir=args.base_model or "", variant=args.variant,
        device=args.device, dtype=args.dtype, num_inference_steps=args.steps, guidance_scale=args.guidance,
        seed=args.seed, scheduler=args.scheduler, cfg_mode=args.cfg_mode,
    )
    image_path, npz_path = Path(args.image), Path(args.pointmaps)
    depth_path = Path(args.depth) if args.depth else None
    for name, p in (("--image", image_path), ("--pointmaps", npz_path), ("--depth", depth_path)):
        if p is not None and not p.is_file():
            raise FileNotFoundError(f"{name} file not found: {p}")
    image = np.asarray(imageio.imread(image_path))
    if image.ndim != 3 or image.shape[-1] not in (3, 4):
        raise ValueError(f"--image must be an RGB(A) image, got array shape {image.shape} from {image_path}")
    image = np.ascontiguousarray(image[..., :3]).astype(np.uint8)
    with np.load(npz_path) as data:
        if "xyz" not in data:
            raise KeyError(f"--pointmaps {npz_path} has no 'xyz' array (keys: {sorted(data.keys())})")
        xyz = data["xyz"].astype(np.float32)
        link = data["link"] if "link" in data else None
        K = data["K"] if "K" in data else None
    sequence = sequence_from_arrays(xyz, link, K, fps=args.fps)

    engine = ImagineEngine(cfg)
    engine.load()
    first_depth = read_depth(depth_path) if depth_path is not None else None
    result = engine.run(ImagineRequest(image=image, sequence=sequence, anchor_depth=first_depth))

    out_dir = Path(args.out)
    for sub in ("rgb", "xyz", "ply"):
        (out_dir / sub).mkdir(parents=True, exist_ok=True)
    depth = result.xyz[..., 2]
    finite = depth[np.isfinite(depth)]
    lo, hi = (np.percentile(finite, 2), np.percentile(finite, 98)) if finite.size else (0.0, 1.0)
    frames, n_points = [], 0
    for k in range(result.rgb.shape[0]):
        imageio.imwrite(out_dir / "rgb" / f"{k:03d}.png", result.rgb[k])
        imageio.imwrite(out_dir / "xyz" / f"{k:03d}.png", np.round(result.xyz01[k] * 255).astype(np.uint8))
        frames.append(np.concatenate([image, result.rgb[k], depth_colormap(depth[k], lo, hi)], axis=1))
        if not args.no_ply:
            n_points += write_ply(out_dir / "ply" / f"{k:03d}.ply", result.xyz[k].reshape(-1, 3),
                                  result.rgb[k].reshape(-1, 3))
    imageio.mimwrite(out_dir / "rollout.mp4", frames, fps=args.fps, macro_block_size=1)
    pipe = engine.pipe
    summary = {
        "checkpoint": str(cfg.checkpoint_dir), "image": str(image_path), "pointmaps": str(npz_path),
        "variant": cfg.variant, "device": str(pipe.device), "dtype": str(pipe.transformer.dtype),
        "frames": int(result.rgb.shape[0]), "height": int(result.rgb.shape[1]), "width": int(result.rgb.shape[2]),
        "camera_K": None if K is None else np.asarray(K).tolist(), "depth": str(depth_path) if depth_path else None,
        "ply_points": n_points, "load_s": engine.load_s,
        **summary_dict(result),
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"k4d imagine: wrote {result.rgb.shape[0]} frames to {out_dir} (model {result.model_id}, seed "
          f"{result.sampling.seed}, metric lift: {result.lift.quality}, residual {result.lift.residual_m:.4f} m, "
          f"{result.timings['generation_s']:.1f} s)", file=sys.stderr)
    return 0


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register ``imagine`` on the ``k4d`` command line."""
    p = subparsers.add_parser(
        "imagine", help="imagine a rollout with the K4D world model",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--checkpoint", required=True, help="K4DPipeline folder, or released Kinema4D checkpoint folder")
    p.add_argument("--base-model", default="", help="Wan2.1-I2V-14B-480P-Diffusers folder (released layout)")
    p.add_argument("--image", required=True, help="first RGB frame (PNG/JPEG), exactly the model's H x W")
    p.add_argument("--pointmaps", required=True, help="npz with xyz (T,H,W,3) metres, link (T,H,W), optional K")
    p.add_argument("--depth", default="", help="first frame's registered depth: 16-bit PNG in mm or .npy in metres "
                   "(anchors the metric lift; conditions a first_xyz_condition model)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--steps", type=int, default=50, help="denoising steps (default 50)")
    p.add_argument("--guidance", type=float, default=5.0, help="classifier-free guidance scale (default 5.0)")
    p.add_argument("--seed", type=int, default=42, help="noise seed (default 42; negative = draw one, reported)")
    p.add_argument("--variant", choices=("pmcond", "full"), default="pmcond", help="model variant (default pmcond)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    p.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"))
    p.add_argument("--scheduler", default="unipc", choices=("unipc", "euler"))
    p.add_argument("--cfg-mode", default="correct", choices=("correct", "released"))
    p.add_argument("--fps", type=int, default=8, help="mp4 frame rate (default 8)")
    p.add_argument("--no-ply", action="store_true", help="skip the PLY point clouds")
    p.set_defaults(func=_run_imagine)

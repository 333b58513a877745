"""Export k4d episodes to the released Kinema4D training layout (mutianxu/Kinema4D, Robo4D-200k).

    .venv/bin/k4d dataset export-kinema4d /tmp/k4d_ds /tmp/k4d_kinema4d
    # or: from k4d_bringup.dataset.export import export_kinema4d; export_kinema4d(src, out)

Layout written (the names the released ``encode_latents.py`` / dataset loader read):

    out/first_frames/<n>.png     first RGB frame
    out/videos/<n>.mp4           RGB video
    out/pointmap/<n>.mp4         world pointmap (camera optical frame XYZ), per-sequence min-max to [0, 1], as RGB
    out/mask_videos/<n>.mp4      robot-only RGB: RGB where the k4d robot mask is set, black elsewhere
    out/mask_pointmap/<n>.mp4    robot-only pointmap: the pointmap video's pixels on the robot, black elsewhere
    out/train.txt, train_shuffled.txt      lines "videos/<n>.mp4" (the loader maps them to the other folders)
    out/train_img_shuffled.txt             lines "first_frames/<n>.png"
    out/pointmap_minmax.json     {<n>: {"lo": [x, y, z], "hi": [x, y, z]}} metres, to undo the normalisation
    out/stats.json               per-sigma success / near-miss / failure counts (copied from the episodes)

Facts from the released code this follows: 49-frame clips; mp4 at 24 fps (``save_video.py`` default); the
robot mask is recovered as "any channel != 0" of ``mask_videos`` (``save_mask.py``), so robot pixels are
written with every channel >= 1 (a black robot pixel would read as background) and background as exact 0.
Pointmaps are pseudo-RGB after per-sequence min-max normalisation; the robot-only pointmap uses the same
lo/hi as the full pointmap (it is the masked full pointmap, as in the paper's SAM-masking pipeline).
NaN world points (nothing hit) are written as 0. Videos are H.264 (yuv420p, quality 9 of 10).
"""
from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np

KINEMA4D_FPS = 24
SUBDIRS = ("first_frames", "videos", "pointmap", "mask_videos", "mask_pointmap")


def pointmap_to_rgb(xyz: np.ndarray, lo=None, hi=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(T, H, W, 3) metres -> (T, H, W, 3) uint8 pseudo-RGB with per-sequence min-max (NaN -> 0); returns
    (rgb, lo (3,), hi (3,)). lo/hi default to the sequence's finite min/max."""
    from k4d_kinematics.sequence import normalize_minmax

    if lo is None or hi is None:
        xyz01, lo, hi = normalize_minmax(xyz)
    else:
        scale = np.where(np.asarray(hi) > np.asarray(lo), np.asarray(hi) - np.asarray(lo), 1.0)
        xyz01 = ((xyz - lo) / scale).astype(np.float32)
    out = np.nan_to_num(np.clip(xyz01, 0.0, 1.0), nan=0.0)
    return (out * 255.0 + 0.5).astype(np.uint8), np.asarray(lo), np.asarray(hi)


def robot_only(frames: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(T, H, W, 3) uint8 frames kept on ``mask`` (T, H, W) bool with every channel >= 1, exact 0 elsewhere."""
    out = np.where(mask[..., None], np.maximum(frames, 1), 0)
    return out.astype(np.uint8)


def _write_mp4(path: Path, frames: np.ndarray, fps: int) -> None:
    import imageio.v2 as imageio

    with imageio.get_writer(str(path), fps=fps, codec="libx264", quality=9, pixelformat="yuv420p",
                            macro_block_size=1, ffmpeg_log_level="error") as w:
        for f in frames:
            w.append_data(f)


def export_kinema4d(src: str | Path, out: str | Path, fps: int = KINEMA4D_FPS, shuffle_seed: int = 0,
                    progress: bool = False) -> list[str]:
    """Convert every episode ``src/<n>.npz`` into the Kinema4D layout under ``out``; returns the names.

    Raises FileNotFoundError if ``src`` has no episodes; ValueError if a frame size is odd (H.264 4:2:0).
    """
    import imageio.v2 as imageio

    from .generate import load_episode

    src, out = Path(src), Path(out)
    files = sorted(p for p in src.glob("*.npz") if not p.name.startswith("."))
    if not files:
        raise FileNotFoundError(f"no episodes (*.npz) in {src}")
    for d in SUBDIRS:
        (out / d).mkdir(parents=True, exist_ok=True)
    names, minmax = [], {}
    it = files
    if progress:
        from tqdm import tqdm

        it = tqdm(files, desc="export", unit="ep")
    for f in it:
        ep = load_episode(f)
        n = f.stem
        rgb, mask = ep["rgb"], ep["robot_mask"]
        H, W = rgb.shape[1:3]
        if H % 2 or W % 2:
            raise ValueError(f"{f}: frame size {W}x{H} must be even for H.264 yuv420p")
        pm_rgb, lo, hi = pointmap_to_rgb(ep["world_xyz"])
        imageio.imwrite(out / "first_frames" / f"{n}.png", rgb[0])
        _write_mp4(out / "videos" / f"{n}.mp4", rgb, fps)
        _write_mp4(out / "pointmap" / f"{n}.mp4", pm_rgb, fps)
        _write_mp4(out / "mask_videos" / f"{n}.mp4", robot_only(rgb, mask), fps)
        _write_mp4(out / "mask_pointmap" / f"{n}.mp4", robot_only(pm_rgb, mask), fps)
        minmax[n] = {"lo": [float(v) for v in lo], "hi": [float(v) for v in hi]}
        names.append(n)
    order = list(names)
    random.Random(shuffle_seed).shuffle(order)
    (out / "train.txt").write_text("".join(f"videos/{n}.mp4\n" for n in names))
    (out / "train_shuffled.txt").write_text("".join(f"videos/{n}.mp4\n" for n in order))
    (out / "train_img_shuffled.txt").write_text("".join(f"first_frames/{n}.png\n" for n in order))
    (out / "pointmap_minmax.json").write_text(json.dumps(minmax, indent=1))
    stats = src / "stats.json"
    if stats.is_file():
        (out / "stats.json").write_text(stats.read_text())
    else:
        from .generate import outcome_stats

        metas = [json.loads(p.with_suffix(".json").read_text()) for p in files if p.with_suffix(".json").is_file()]
        (out / "stats.json").write_text(json.dumps(outcome_stats(metas), indent=1))
    return names

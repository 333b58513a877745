# Copyright 2026 k4d developers. Apache-2.0.
"""Training/evaluation clips from the k4d episode format or the released Kinema4D layout (torch Datasets).

    from k4d_worldmodel.training.data import open_dataset
    ds = open_dataset("/tmp/k4d_ds", num_frames=17, height=64, width=96, split="train")
    clip = ds[0]          # dict of numpy arrays at exactly the model's T x H x W (see Clip keys below)

Two sources, detected from the folder's content:

* k4d episodes (``<n>.npz`` + ``<n>.json``, FORMAT.md; also one sub-folder level, e.g. ``easy/<n>.npz``): read with ``k4d_bringup.dataset.generate.load_episode``;
  the world pointmap is the depth back-projection (metres, camera optical frame), the robot pointmap and mask
  come from kinematics, the robot appearance is the RGB on the robot mask (as the release's ``mask_videos``).
* Kinema4D layout (``videos/<n>.mp4``, ``pointmap/<n>.mp4``, ``mask_videos/<n>.mp4``, ``mask_pointmap/<n>.mp4``,
  ``first_frames/<n>.png``, ``pointmap_minmax.json``; ``k4d dataset export-kinema4d`` writes it): pointmaps are
  pseudo-RGB after per-sequence min-max, undone with ``pointmap_minmax.json``; the robot mask is "max channel of
  ``mask_videos`` > ``mask_threshold``" (the release uses "any channel != 0" on lossless frames; H.264 needs a
  threshold). No link ids, objects or task labels exist there, so object/success metrics are skipped.

Resizing to the model's T x H x W (documented contract): frames are picked evenly over the episode, first and last
included (``linspace(0, T_src - 1, T).round()``); the image is centre-cropped to the model's aspect ratio, then
RGB is resized with antialiased bilinear filtering and every pointmap / mask / link map with nearest neighbour
(pointmaps keep true metric camera-frame XYZ and stay pixel-aligned with the RGB; averaging XYZ across a depth
edge would invent points). ``K`` is updated for the crop and scale. Generate episodes at the model size
(``k4d dataset generate --width 96 --height 64 --fy 80 --frames 17``) to skip resizing altogether.

Split: episode names are shuffled with ``numpy.random.default_rng(split_seed)`` and the last
``round(heldout_fraction * n)`` (at least 1 when the fraction is > 0 and n >= 2) are "heldout", the rest "train";
"all" takes every episode. Evaluating on a separately generated folder (other dataset seed: other scenes,
objects, colours) with ``split="all"`` is the stronger held-out test; the device script does that.

Clip keys: ``name`` str; ``rgb (T, H, W, 3) uint8``; ``world_xyz (T, H, W, 3) float32`` metres, camera frame, NaN
= nothing hit; ``world01 (T, H, W, 3) float32`` the pointmap video the model generates, in the dataset's
``pointmap_encoding`` (default the release's per-clip min-max to [0, 1], NaN -> 0; a metric encoding such as
``ray_depth`` codes ``world_xyz`` instead, see ``k4d_worldmodel.pointmap_encoding``); ``world_lo, world_hi (3,)
float64`` metres, the per-clip min/max; ``robot_xyz (T, H, W, 3) float32`` metres, NaN
off-robot; ``robot_mask (T, H, W) bool``; ``robot_link (T, H, W) int16`` (-1 off-robot; 0 on-robot for the
Kinema4D layout); ``robot_rgb (T, H, W, 3) uint8`` (0 off-robot); ``meta`` dict (episode JSON, may be empty);
optional ``K (3, 3)``, ``T_base_cam (4, 4)``, ``object_pos (T, O, 3)`` metres base frame, ``q (T, J) float32``
joint positions (k4d episodes; the "jointemb" ablation's condition), ``frame_index (T,)``; ``pointmap_encoding``
dict, the code ``world01`` is in (``PointmapEncoding.to_dict``).
"""
from __future__ import annotations

import abc
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from k4d_kinematics.camera import PinholeCamera, nearest_indices
from torch.utils.data import Dataset
from ..pointmap_encoding import PointmapEncoding

SPLITS = ("train", "heldout", "all")


# ------------------------------------------------------------------------------------------------ helpers
def split_names(names: Sequence[str], split: str, heldout_fraction: float = 0.2, seed: int = 0) -> list[str]:
    """Deterministic train/held-out split of episode names (see module docstring). Returns names sorted."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if not 0.0 <= heldout_fraction < 1.0:
        raise ValueError(f"heldout_fraction must be in [0, 1), got {heldout_fraction!r}")
    names = sorted(names)
    if split == "all":
        return names
    order = list(np.random.default_rng(seed).permutation(len(names)))
    n_held = int(round(heldout_fraction * len(names)))
    if heldout_fraction > 0 and len(names) >= 2:
        n_held = max(n_held, 1)
    held = {names[i] for i in order[len(names) - n_held:]} if n_held else set()
    return [n for n in names if (n in held) == (split == "heldout")]


def frame_indices(num_src: int, num_frames: int) -> np.ndarray:
    """``num_frames`` indices evenly spread over ``num_src`` frames, first and last included."""
    if num_src < 1:
        raise ValueError(f"a clip needs at least one frame, got {num_src}")
    return np.linspace(0, num_src - 1, num_frames).round().astype(np.int64)


def _crop_box(h: int, w: int, height: int, width: int) -> tuple[int, int, int, int]:
    """Centre crop (top, left, h_c, w_c) of an h x w image to the aspect ratio height : width."""
    if h * width > w * height:  # too tall
        hc = int(round(w * height / width))
        return (h - hc) // 2, 0, hc, w
    wc = int(round(h * width / height))
    return 0, (w - wc) // 2, h, wc


def resize_nearest(a: np.ndarray, height: int, width: int) -> np.ndarray:
    """`(T, h, w, ...)` -> `(T, height, width, ...)` by nearest neighbour (after the centre crop)."""
    top, left, hc, wc = _crop_box(a.shape[1], a.shape[2], height, width)
    a = a[:, top:top + hc, left:left + wc]
    return a[:, nearest_indices(hc, height)][:, :, nearest_indices(wc, width)]


def resize_rgb(rgb: np.ndarray, height: int, width: int) -> np.ndarray:
    """`(T, h, w, 3)` uint8 -> `(T, height, width, 3)` uint8: centre crop + antialiased bilinear."""
    top, left, hc, wc = _crop_box(rgb.shape[1], rgb.shape[2], height, width)
    rgb = rgb[:, top:top + hc, left:left + wc]
    if (hc, wc) == (height, width):
        return np.ascontiguousarray(rgb)
    x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False, antialias=True)
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def _resize_K(K: np.ndarray, h: int, w: int, height: int, width: int) -> np.ndarray:
    """Intrinsics after the centre crop and the resize (``PinholeCamera.scaled`` of the cropped camera)."""
    top, left, hc, wc = _crop_box(h, w, height, width)
    K = np.asarray(K, dtype=np.float64)
    return PinholeCamera(wc, hc, K[0, 0], K[1, 1], K[0, 2] - left, K[1, 2] - top).scaled(width, height).K


def normalize_world(world_xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-clip min-max of a world pointmap to [0, 1] with NaN -> 0 (the export's pseudo-RGB without rounding)."""
    return PointmapEncoding().encode_world(world_xyz)


def finish_clip(clip: dict[str, Any], num_frames: int, height: int, width: int,
                pointmap_encoding: PointmapEncoding | None = None) -> dict[str, Any]:
    """Temporal pick + spatial resize of a full-resolution clip dict (keys as in the module docstring) in place;
    ``world01`` in ``pointmap_encoding`` (default ``minmax``)."""
    t_src, h, w = clip["rgb"].shape[:3]
    idx = frame_indices(t_src, num_frames)
    for key in ("rgb", "robot_rgb"):
        clip[key] = resize_rgb(clip[key][idx], height, width)
    for key in ("world_xyz", "robot_xyz", "robot_mask", "robot_link"):
        clip[key] = np.ascontiguousarray(resize_nearest(clip[key][idx], height, width))
    for key in ("object_pos", "q"):
        if key in clip:
            clip[key] = np.ascontiguousarray(clip[key][idx])
    if "K" in clip:
        clip["K"] = _resize_K(clip["K"], h, w, height, width)
    clip["frame_index"] = idx
    if pointmap_encoding is not None and pointmap_encoding.metric:
        clip["world01"], lo, hi = pointmap_encoding.encode_world(clip["world_xyz"])
        clip.setdefault("world_lo", lo)
        clip.setdefault("world_hi", hi)
    elif "world01" in clip:  # stored normalisation (Kinema4D layout): keep lo/hi
        clip["world01"] = np.ascontiguousarray(resize_nearest(clip["world01"][idx], height, width))
    else:
        clip["world01"], clip["world_lo"], clip["world_hi"] = normalize_world(clip["world_xyz"])
    clip["pointmap_encoding"] = (pointmap_encoding or PointmapEncoding()).to_dict()
    clip["robot_xyz"] = np.where(clip["robot_mask"][..., None], clip["robot_xyz"], np.nan).astype(np.float32)
    clip["robot_rgb"] = np.where(clip["robot_mask"][..., None], clip["robot_rgb"], 0).astype(np.uint8)
    return clip


# ------------------------------------------------------------------------------------------------ datasets
class ClipDataset(Dataset, abc.ABC):
    """Base class: ``names`` (after the split), ``num_frames``, ``height``, ``width``; ``__getitem__`` -> clip dict."""

    def __init__(self, root: str | Path, num_frames: int, height: int, width: int, split: str = "train",
                 heldout_fraction: float = 0.2, split_seed: int = 0, names: Sequence[str] | None = None,
                 pointmap_encoding: Any = None):
        self.root = Path(root)
        self.pointmap_encoding = PointmapEncoding.from_config(pointmap_encoding)
        if not self.root.is_dir():
            raise FileNotFoundError(f"data folder not found: {self.root}")
        for name, v in (("num_frames", num_frames), ("height", height), ("width", width)):
            if not (isinstance(v, (int, np.integer)) and v >= 1):
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        self.num_frames, self.height, self.width = int(num_frames), int(height), int(width)
        all_names = list(names) if names is not None else self.list_names()
        if not all_names:
            raise FileNotFoundError(f"no episodes in {self.root}")
        self.split = split
        self.names = split_names(all_names, split, heldout_fraction, split_seed)
        if not self.names:
            raise ValueError(f"split {split!r} of {self.root} is empty ({len(all_names)} episodes, "
                             f"heldout_fraction={heldout_fraction})")

    @abc.abstractmethod
    def list_names(self) -> list[str]:
        """Names of all episodes/clips under ``root`` (sorted)."""

    def __len__(self) -> int:
        return len(self.names)

    @abc.abstractmethod
    def __getitem__(self, i: int) -> dict[str, Any]:
        """Clip ``i`` of this split, resized to the model's frames x height x width."""


class EpisodeDataset(ClipDataset):
    """k4d episodes (``<n>.npz``); see the module docstring."""

    format = "k4d"

    def list_names(self) -> list[str]:
        return _episode_names(self.root)

    def path(self, name: str) -> Path:
        """The file of episode ``name``."""
        return self.root / f"{name}.npz"

    def __getitem__(self, i: int) -> dict[str, Any]:
        from k4d_bringup.dataset.generate import load_episode

        name = self.names[i]
        ep = load_episode(self.path(name))
        clip = {
            "name": name, "rgb": ep["rgb"], "world_xyz": ep["world_xyz"], "robot_xyz": ep["robot_xyz"],
            "robot_mask": ep["robot_mask"], "robot_link": ep["robot_link"].astype(np.int16),
            "robot_rgb": np.where(ep["robot_mask"][..., None], ep["rgb"], 0).astype(np.uint8),
            "meta": ep.get("meta", {}), "K": ep["K"], "T_base_cam": ep["T_base_cam"],
            "object_pos": ep["object_pos"],
        }
        if "q" in ep:
            clip["q"] = np.asarray(ep["q"], dtype=np.float32)
        return finish_clip(clip, self.num_frames, self.height, self.width, self.pointmap_encoding)


class Kinema4DDataset(ClipDataset):
    """Released Kinema4D training layout; see the module docstring."""

    format = "kinema4d"

    def __init__(self, *args: Any, mask_threshold: int = 10, **kwargs: Any):
        self.mask_threshold = int(mask_threshold)
        super().__init__(*args, **kwargs)
        mm = self.root / "pointmap_minmax.json"
        if not mm.is_file():
            raise FileNotFoundError(f"Kinema4D layout without pointmap_minmax.json (needed to recover metres): {mm}")
        self.minmax = json.loads(mm.read_text())

    def list_names(self) -> list[str]:
        return sorted(p.stem for p in (self.root / "videos").glob("*.mp4"))

    @staticmethod
    def _read(path: Path) -> np.ndarray:
        import imageio.v2 as imageio

        if not path.is_file():
            raise FileNotFoundError(f"missing video: {path}")
        return np.stack([np.asarray(f)[..., :3] for f in imageio.mimread(str(path), memtest=False)])

    def __getitem__(self, i: int) -> dict[str, Any]:
        name = self.names[i]
        if name not in self.minmax:
            raise KeyError(f"pointmap_minmax.json has no entry for episode {name!r}")
        lo = np.asarray(self.minmax[name]["lo"], np.float64)
        hi = np.asarray(self.minmax[name]["hi"], np.float64)
        span = np.where(hi > lo, hi - lo, 1.0)
        rgb = self._read(self.root / "videos" / f"{name}.mp4")
        pm = self._read(self.root / "pointmap" / f"{name}.mp4").astype(np.float32) / 255.0
        mrgb = self._read(self.root / "mask_videos" / f"{name}.mp4")
        mpm = self._read(self.root / "mask_pointmap" / f"{name}.mp4").astype(np.float32) / 255.0
        t = min(len(rgb), len(pm), len(mrgb), len(mpm))
        rgb, pm, mrgb, mpm = rgb[:t], pm[:t], mrgb[:t], mpm[:t]
        mask = mrgb.max(-1) > self.mask_threshold
        world = (lo + pm * span).astype(np.float32)
        robot = np.where(mask[..., None], lo + mpm * span, np.nan).astype(np.float32)
        clip = {
            "name": name, "rgb": rgb, "world_xyz": world, "world01": pm, "world_lo": lo, "world_hi": hi,
            "robot_xyz": robot, "robot_mask": mask, "robot_link": np.where(mask, 0, -1).astype(np.int16),
            "robot_rgb": np.where(mask[..., None], mrgb, 0).astype(np.uint8), "meta": {},
        }
        return finish_clip(clip, self.num_frames, self.height, self.width, self.pointmap_encoding)


def _episode_names(root: Path) -> list[str]:
    """Names (``<n>`` or ``<sub>/<n>``) of the episodes ``episode_paths`` finds under ``root``."""
    from k4d_bringup.dataset.generate import episode_paths

    return [p.relative_to(root).with_suffix("").as_posix() for p in episode_paths(root)]


def detect_format(root: str | Path) -> str:
    """"k4d" (``*.npz`` episodes) or "kinema4d" (``videos/*.mp4``); FileNotFoundError otherwise."""
    root = Path(root)
    if root.is_dir() and _episode_names(root):
        return "k4d"
    if (root / "videos").is_dir() and any((root / "videos").glob("*.mp4")):
        return "kinema4d"
    raise FileNotFoundError(f"{root} holds neither k4d episodes (*.npz) nor a Kinema4D layout (videos/*.mp4)")


def open_dataset(root: str | Path, num_frames: int, height: int, width: int, split: str = "train",
                 heldout_fraction: float = 0.2, split_seed: int = 0, **kwargs: Any) -> ClipDataset:
    """The dataset of ``root`` (format detected, see [`detect_format`]) at the model's T x H x W."""
    cls = EpisodeDataset if detect_format(root) == "k4d" else Kinema4DDataset
    return cls(root, num_frames, height, width, split=split, heldout_fraction=heldout_fraction,
               split_seed=split_seed, **kwargs)


def collate_clips(batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """DataLoader ``collate_fn`` that keeps clips as a list of dicts (encoding is per clip)."""
    return batch

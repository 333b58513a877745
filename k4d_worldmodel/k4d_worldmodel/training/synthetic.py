# Copyright 2026 k4d developers. Apache-2.0.
"""Tiny synthetic episodes in the k4d episode format (FORMAT.md), without MuJoCo, for tests and smoke runs.

    from k4d_worldmodel.training.synthetic import write_synthetic_episodes
    write_synthetic_episodes("/tmp/k4d_synth", episodes=2, num_frames=5, height=32, width=48)

Scene: a camera 1 m above the table looking straight down (``T_base_cam`` translation (0.3, 0, 1)); the table is
grey at depth 1 m; a red cube (half size 4 cm) is pushed by a white "robot" bar. Even episodes succeed (the cube
moves from (0.3, 0.15) into the zone at (0.3, -0.15), radius 5 cm), odd episodes fail (it stays). The robot
pointmap is exact (kinematic) and the world pointmap is the depth back-projection, as in real episodes.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

HALF = 0.04
ZONE = (0.3, -0.15)
START = (0.3, 0.15)


def write_synthetic_episodes(out: str | Path, episodes: int = 2, num_frames: int = 5, height: int = 32,
                             width: int = 48, fy: float = 40.0, seed: int = 0) -> list[str]:
    """Write ``episodes`` synthetic episodes (``<n>.npz`` + ``<n>.json``) to ``out``; returns their names."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    K = np.array([[fy, 0, (width - 1) / 2], [0, fy, (height - 1) / 2], [0, 0, 1.0]])
    T_base_cam = np.array([[1.0, 0, 0, 0.3], [0, -1.0, 0, 0.0], [0, 0, -1.0, 1.0], [0, 0, 0, 1]])
    v, u = np.mgrid[0:height, 0:width].astype(np.float64)
    names = []
    for i in range(episodes):
        success = i % 2 == 0
        T = num_frames
        rgb = np.empty((T, height, width, 3), np.uint8)
        depth = np.empty((T, height, width), np.float32)
        link = np.full((T, height, width), -1, np.int16)
        obj = np.zeros((T, 1, 3))
        for t in range(T):
            a = t / max(T - 1, 1) if success else 0.0
            ox, oy = START[0] + a * (ZONE[0] - START[0]), START[1] + a * (ZONE[1] - START[1])
            obj[t, 0] = (ox, oy, HALF)
            z = np.ones((height, width))
            xb = (u - K[0, 2]) * z / fy + 0.3  # base x of the table point seen at each pixel
            yb = -(v - K[1, 2]) * z / fy
            col = np.empty((height, width, 3))
            col[:] = (120, 120, 120) + rng.integers(-6, 7, size=3)
            in_obj = (np.abs(xb - ox) <= HALF) & (np.abs(yb - oy) <= HALF)
            z = np.where(in_obj, 1.0 - 2 * HALF, z)
            col[in_obj] = (200, 30, 30)
            ry = oy + HALF + 0.06  # robot bar behind the cube (pushing towards -y)
            in_robot = (np.abs(xb - ox) <= 0.05) & (np.abs(yb - ry) <= 0.025)
            z = np.where(in_robot, 0.9, z)
            col[in_robot] = (230, 230, 230)
            link[t][in_robot] = 1
            depth[t] = z
            rgb[t] = np.clip(col, 0, 255).astype(np.uint8)
        xyz = np.stack([(u - K[0, 2]) / fy * depth, (v - K[1, 2]) / fy * depth, depth], -1).astype(np.float32)
        robot_xyz = np.where((link >= 0)[..., None], xyz, np.nan).astype(np.float32)
        name = f"{i:06d}"
        np.savez_compressed(
            out / f"{name}.npz", rgb=rgb, depth=depth, robot_xyz=robot_xyz, robot_link=link,
            times=np.arange(T) * 0.5, q=np.zeros((T, 8)), traj_times=np.arange(T) * 0.5,
            traj_positions=np.zeros((T, 8)), object_pos=obj, object_quat_wxyz=np.tile([1.0, 0, 0, 0], (T, 1, 1)),
            actions_T_base_tcp=np.tile(np.eye(4), (2, 1, 1)), actions_gripper=np.ones(2), K=K, T_base_cam=T_base_cam)
        meta = {"format_version": 1, "name": name, "index": i, "task": "push", "sigma": [0.0, 1.2][i % 2],
                "success": success, "label": "success" if success else "failure", "num_frames": T,
                "camera": {"width": width, "height": height, "fx": fy, "fy": fy, "cx": K[0, 2], "cy": K[1, 2]},
                "objects": [{"name": "target", "role": "target", "kind": "cube", "size": [HALF] * 3}],
                "zone": {"center_base": list(ZONE), "radius": 0.05, "kind": "zone"}}
        (out / f"{name}.json").write_text(json.dumps(meta))
        names.append(name)
    return names

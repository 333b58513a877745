# Copyright 2026 k4d developers. Apache-2.0.
"""Does a model draw the robot where its condition says, in RGB and in XYZ? With and without the condition.

    .venv/bin/python k4d_worldmodel/benchmarks/bench_robot_following.py --checkpoint RUN/pipeline --data DIR \\
        --clips 24 --json out.json

For each of ``--clips`` clips (every ``len / clips``-th) the model imagines the rollout twice from the same noise:
with its robot condition and without it (``evaluate.robot_condition_removed``, the unconditional path); copy-first
is the third column. On frames 1..T-1 it measures, in two regions of the true robot mask:
- ``arm_new``: pixels the arm covers but did not cover at frame 0 (the model must draw the arm there);
- ``arm_left``: pixels the arm covered at frame 0 and has left (the model must draw the scene behind it);
the mean absolute RGB error (0-255) and the mean absolute error of the pointmap code (``world01``, the model's
own [0, 1] code, before any lifting), plus ``evaluate.arm_psnr`` over both regions and the whole-frame PSNR.
A model that follows its condition is far below copy-first there; the gap to the "without" column is what the
condition contributes. Not collected by pytest.
"""
from __future__ import annotations

import argparse
import json
import platform

import numpy as np


def _mean_abs(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    return float(np.abs(a[mask].astype(np.float64) - b[mask].astype(np.float64)).mean()) if mask.any() else float("nan")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="a save_pretrained K4D pipeline folder")
    p.add_argument("--data", required=True, help="episodes (k4d dataset generate); resized to the model's size")
    p.add_argument("--clips", type=int, default=24)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--json", default="")
    args = p.parse_args(argv)

    from k4d_worldmodel import metrics as M
    from k4d_worldmodel.config import WorldModelConfig
    from k4d_worldmodel.evaluate import _completion, arm_psnr, robot_condition_removed, rollout
    from k4d_worldmodel.loading import load_pipeline
    from k4d_worldmodel.training.data import open_dataset

    pipe = load_pipeline(WorldModelConfig(checkpoint_dir=args.checkpoint, device="cpu"))
    pipe.set_progress_bar_config(disable=True)
    ds = open_dataset(args.data, pipe.num_frames, pipe.height, pipe.width, split="all",
                      pointmap_encoding=pipe.pointmap_encoding)
    stride = max(1, len(ds) // max(1, args.clips))
    columns = ("with_robot", "without_robot", "copy_first")
    rows = []
    with _completion([pipe], pipe.transformer.reachable_basis() is not None):
        for i in list(range(0, len(ds), stride))[: args.clips]:
            c = ds[i]
            with_robot = rollout(pipe, c, args.steps, 1.0, args.seed)
            with robot_condition_removed(pipe):
                without = rollout(pipe, c, args.steps, 1.0, args.seed)
            T = len(c["rgb"])
            outs = {"with_robot": (with_robot.rgb, with_robot.xyz), "without_robot": (without.rgb, without.xyz),
                    "copy_first": (np.repeat(c["rgb"][:1], T, 0), np.repeat(c["world01"][:1], T, 0))}
            mask = np.asarray(c["robot_mask"], bool)
            regions = {"arm_new": (mask & ~mask[:1])[1:], "arm_left": (~mask & mask[:1])[1:]}
            row = {"name": c["name"], "arm_pixels": {k: int(v.sum()) for k, v in regions.items()}}
            for col, (rgb, code) in outs.items():
                r = {f"rgb_err_{k}": _mean_abs(rgb[1:], c["rgb"][1:], m) for k, m in regions.items()}
                r.update({f"code_err_{k}": _mean_abs(code[1:], c["world01"][1:], m) for k, m in regions.items()})
                r["arm_psnr"] = arm_psnr(rgb, c["rgb"], mask)
                r["psnr"] = M.psnr_video(rgb[1:], c["rgb"][1:])
                row[col] = r
            rows.append(row)
            print(json.dumps(row), flush=True)
    keys = list(rows[0]["with_robot"]) if rows else []
    summary = {col: {k: float(np.nanmean([r[col][k] for r in rows])) for k in keys} for col in columns}
    result = {"checkpoint": args.checkpoint, "data": args.data, "clips": len(rows), "steps": args.steps,
              "seed": args.seed, "size": f"{pipe.height}x{pipe.width}", "machine": platform.node(),
              "summary": summary, "episodes": rows}
    for col in columns:
        print(col, {k: round(v, 3) for k, v in summary[col].items()})
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()

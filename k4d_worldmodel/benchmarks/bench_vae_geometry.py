# Copyright 2026 k4d developers. Apache-2.0.
"""What a model's own VAE does to the geometry the success predicate reads, in millimetres.

    .venv/bin/python k4d_worldmodel/benchmarks/bench_vae_geometry.py --checkpoint default --checkpoint RUN/pipeline \\
        --data DIR --json out.json
    .venv/bin/python k4d_worldmodel/benchmarks/bench_vae_geometry.py --vae RUN/vae --config metric_hr --data DIR

``--vae`` measures a VAE on its own (what ``device_train.sh --vae-only`` returns): it is placed in a fresh
pipeline of ``--config``'s geometry and pointmap code; the transformer, untrained, plays no part here.

``k4d eval --methods vae_recon`` gives the ceiling a model's VAE sets (the ground truth through the VAE, lifted
as a rollout is). This script says why the ceiling is where it is. For every held-out clip and checkpoint it
passes the truth through the VAE (``evaluate.autoencode``), registers it to the measured first frame as the engine
does by default (``--no-register``: as decoded), and measures, in the robot base frame:
- ``depth_err_mm``: median |depth error| over every valid pixel;
- ``table_bias_mm``: median height error of the table (ground-truth points within 3 mm of the table top and
  off the robot), i.e. how far the VAE lifts or sinks a flat surface;
- ``raised_err_mm``: median height error of the points 15 mm or more above the table (objects, zone rims) over
  frames 1.. (``evaluate.raised_height_error``, also a column of ``k4d eval``): what the zone predicate must see;
- the zone predicate's point counts (first and last frame) on the truth and on the reconstruction, and whether
  the predicate's answer agrees.
Not collected by pytest; needs held-out episodes with their metadata (``k4d dataset generate``).
"""
from __future__ import annotations

import argparse
import json
import platform

import numpy as np


def clip_geometry(pipe, clip: dict, seed: int = 42, register: bool = True) -> dict | None:
    """The measures of the module docstring for one clip, or None without object metadata. ``register``: the
    reconstruction is registered to the measured first frame as the engine does by default (False: as decoded)."""
    from k4d_worldmodel import evaluate as E
    from k4d_worldmodel.config import WorldModelConfig

    info = E.object_info(clip)
    if info is None:
        return None
    wm = WorldModelConfig(seed=seed, metric_register=register)
    _, xyz, _ = E.autoencode(pipe, clip, seed, wm.metric_lift_config(), wm.anchor_lift_config(),
                             wm.registration_block_px())
    gt = clip["world_xyz"]
    T = info["T_base_cam"]
    off_robot = ~clip["robot_mask"]
    valid = np.isfinite(gt).all(-1) & np.isfinite(xyz).all(-1)
    z_gt, z_vae = E.to_base_frame(gt.astype(np.float64), T)[..., 2], E.to_base_frame(xyz.astype(np.float64), T)[..., 2]
    table = valid & off_robot & (np.abs(z_gt) < 0.003)
    occ_gt, occ_vae = E.zone_counts(gt, clip["robot_mask"], info), E.zone_counts(xyz, clip["robot_mask"], info)
    ok_gt = E.success_zone_4d(gt, clip["robot_mask"], info)
    ok_vae = E.success_zone_4d(xyz, clip["robot_mask"], info)

    def med(a: np.ndarray) -> float:
        return float(np.median(a) * 1000.0) if a.size else float("nan")

    return {"name": clip["name"], "depth_err_mm": med(np.abs(xyz[..., 2] - gt[..., 2])[valid]),
            "table_bias_mm": med((z_vae - z_gt)[table]), "table_abs_mm": med(np.abs(z_vae - z_gt)[table]),
            "raised_err_mm": 1000.0 * E.raised_height_error(xyz, gt, clip["robot_mask"], T),
            "zone_gt": occ_gt.tolist(), "zone_vae": occ_vae.tolist(), "success_gt": ok_gt, "success_vae": ok_vae}


def main() -> None:
    from k4d_worldmodel.loading import load_saved
    from k4d_worldmodel.training.data import open_dataset
    from k4d_worldmodel.training.train import pipeline_around_vae

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", action="append", default=[], help="K4DPipeline folder or 'default' (repeat)")
    p.add_argument("--vae", action="append", default=[], help="a VAE folder alone (repeat; needs --config)")
    p.add_argument("--config", default=None, help="train config the --vae folders were trained with (e.g. metric_hr)")
    p.add_argument("--data", required=True, help="held-out k4d episodes at the models' geometry")
    p.add_argument("--episodes", type=int, default=None, help="at most N clips")
    p.add_argument("--json", default=None, help="write the per-clip rows and the summary here")
    p.add_argument("--no-register", action="store_true", help="measure the reconstruction as decoded, without the "
                   "still-scene registration the engine applies by default (the figures before 2026-12-05)")
    args = p.parse_args()
    if not args.checkpoint and not args.vae:
        p.error("give at least one --checkpoint or --vae")
    if args.vae and not args.config:
        p.error("--vae needs --config (the geometry and pointmap code the VAE was trained for)")
    result = {"machine": f"{platform.processor() or platform.machine()}, {platform.system()}", "data": args.data,
              "registered": not args.no_register, "checkpoints": {}}
    for kind, ck in [("checkpoint", c) for c in args.checkpoint] + [("vae", v) for v in args.vae]:
        if kind == "vae":
            pipe = pipeline_around_vae(ck, args.config)
        else:
            if ck == "default":
                from k4d_worldmodel.config import default_checkpoint_dir

                ck = str(default_checkpoint_dir())
            pipe = load_saved(ck)
        ds = open_dataset(args.data, pipe.num_frames, pipe.height, pipe.width, split="all",
                          pointmap_encoding=pipe.pointmap_encoding)
        n = len(ds) if args.episodes is None else min(len(ds), args.episodes)
        rows = [r for r in (clip_geometry(pipe, ds[i], register=not args.no_register) for i in range(n)) if r is not None]
        keys = ("depth_err_mm", "table_bias_mm", "table_abs_mm", "raised_err_mm")
        summary = {k: float(np.nanmedian([r[k] for r in rows])) for k in keys}
        summary["agreement"] = float(np.mean([r["success_gt"] == r["success_vae"] for r in rows]))
        summary["success_gt"] = float(np.mean([r["success_gt"] for r in rows]))
        summary["success_vae"] = float(np.mean([r["success_vae"] for r in rows]))
        summary["first_frame_zone_points_gt"] = float(np.mean([r["zone_gt"][0] for r in rows]))
        summary["first_frame_zone_points_vae"] = float(np.mean([r["zone_vae"][0] for r in rows]))
        summary["clips"] = len(rows)
        summary["pointmap_encoding"] = pipe.pointmap_encoding.kind
        result["checkpoints"][ck] = {"summary": summary, "rows": rows}
        print(ck, json.dumps(summary), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()

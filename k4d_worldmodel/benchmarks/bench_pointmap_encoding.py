# Copyright 2026 k4d developers. Apache-2.0.
"""How much each pointmap code costs the metrics for the same code-space error, without training anything.

    .venv/bin/python k4d_worldmodel/benchmarks/bench_pointmap_encoding.py --data DIR --episodes 24 --json out.json

Every held-out clip's ground-truth world pointmap is coded (``minmax``: the release's per-clip min-max;
``ray_depth`` with several workspace splits), then damaged the way an autoencoder damages it: blurred over
``k x k`` pixels (average pool, bilinear back) and given Gaussian noise of ``sigma`` code units, then decoded to
metres (``minmax`` with the clip's own, ground-truth bounds, which favours it). The decoded geometry is scored
as ``k4d eval`` scores a rollout: Chamfer L1 and F-score@1 cm against the truth, the object track error, and
whether the 4D success predicate gives the answer it gives on the truth. Same damage, same seed for every code.
This decided ``configs/metric.yaml``'s code; the model card has the figures. Not collected by pytest.
"""
from __future__ import annotations

import argparse
import json
import platform

import numpy as np


def damage(code: np.ndarray, k: int, sigma: float, rng: np.random.Generator) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(code)).permute(0, 3, 1, 2)
    if k > 1:
        t = F.interpolate(F.avg_pool2d(t, k), scale_factor=k, mode="bilinear", align_corners=False)
    a = t.permute(0, 2, 3, 1).numpy()
    return np.clip(a + rng.normal(0.0, sigma, a.shape).astype(np.float32), 0.0, 1.0)


def main() -> None:
    from k4d_worldmodel import evaluate as E
    from k4d_worldmodel.pointmap_encoding import PointmapEncoding
    from k4d_worldmodel.training.data import open_dataset

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="held-out k4d episodes")
    p.add_argument("--frames", type=int, default=17, help="clip geometry (default 17 x 64 x 96, the models')")
    p.add_argument("--height", type=int, default=64)
    p.add_argument("--width", type=int, default=96)
    p.add_argument("--episodes", type=int, default=24)
    p.add_argument("--json", default="")
    p.add_argument("--damages", default="1:0.005,1:0.01,2:0.005",
                   help="comma list of BLUR_PX:NOISE (default 1:0.005,1:0.01,2:0.005); e.g. 2:0,4:0 asks what "
                        "spatial detail alone costs (an autoencoder's 4 x 4 latent cells)")
    p.add_argument("--codes", default="", help="comma list of code names to keep (default: all)")
    args = p.parse_args()
    codes = {"minmax": PointmapEncoding(),
             "ray_depth knee 0.8@1.6 m": PointmapEncoding(kind="ray_depth"),
             "ray_depth knee 0.6@1.8 m": PointmapEncoding(kind="ray_depth", knee_code=0.6, knee_m=1.8),
             "ray_depth knee 0.5@2.0 m": PointmapEncoding(kind="ray_depth", knee_code=0.5, knee_m=2.0)}
    if args.codes:
        keep = [c.strip() for c in args.codes.split(",") if c.strip()]
        unknown = [c for c in keep if c not in codes]
        if unknown:
            raise SystemExit(f"--codes: unknown {unknown}; known: {list(codes)}")
        codes = {k: v for k, v in codes.items() if k in keep}
    damages = [(int(k), float(sg)) for k, sg in (d.split(":") for d in args.damages.split(",") if d.strip())]
    ds = open_dataset(args.data, args.frames, args.height, args.width, split="all")
    idx = np.linspace(0, len(ds) - 1, min(args.episodes, len(ds))).round().astype(int)
    rows: dict[str, list] = {}
    for i in idx:
        clip = ds[int(i)]
        info = E.object_info(clip)
        truth = clip["world_xyz"]
        gt_success = E.success_zone_4d(truth, clip["robot_mask"], info)
        meta = clip.get("meta") or {}
        if "success" in meta:  # the predicate on the truth against the simulator's label, at this resolution
            rows.setdefault("truth vs simulator", []).append(dict(agree=gt_success == bool(meta["success"])))
        for name, enc in codes.items():
            code, lo, hi = enc.encode_world(truth)
            for k, sigma in damages:
                u = damage(code, k, sigma, np.random.default_rng(int(i)))
                xyz = enc.decode(u) if enc.metric else (u * (hi - lo) + lo).astype(np.float32)
                xyz = np.where(np.isfinite(truth), xyz, np.nan)
                g = E.geometry_metrics(xyz, truth)
                track, _ = E.track_object(xyz, clip["robot_mask"], info["T_base_cam"], info["init"],
                                          info["half_height"], gripper=info["gripper"])
                rows.setdefault(f"{name} | blur {k} px, noise {sigma}", []).append(dict(
                    agree=E.success_zone_4d(xyz, clip["robot_mask"], info) == gt_success,
                    object_err_m=float(np.linalg.norm(track - info["true_track"], axis=1)[1:].mean()), **g))
    summary = {key: {m: float(np.nanmean([r[m] for r in v])) for m in ("agree", "object_err_m", "chamfer_l1",
                                                                       "fscore") if m in v[0]}
               for key, v in rows.items()}
    for key, s in summary.items():
        print(f"{key:45s} predicate agrees {s['agree']:.3f}" + (
            f"  object {s['object_err_m']:.4f} m  CD-L1 {s['chamfer_l1']:.4f} m  F@1cm {s['fscore']:.3f}"
            if "fscore" in s else ""))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"episodes": len(idx), "data": args.data, "geometry": [args.frames, args.height, args.width],
                       "machine": platform.processor() or platform.machine(), "summary": summary}, f, indent=1)


if __name__ == "__main__":
    main()

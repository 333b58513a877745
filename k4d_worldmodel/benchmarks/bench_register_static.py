# Copyright 2026 k4d developers. Apache-2.0.
"""Choose ``lifting.register_static``'s block size and margin on saved rollouts, without running the model again.

    .venv/bin/k4d eval --checkpoint DIR --data CALIB --split all --out RUN --methods k4d,vae_recon \\
        --save-rollouts --no-register
    .venv/bin/python k4d_worldmodel/benchmarks/bench_register_static.py --data CALIB --rollouts RUN/rollouts \\
        --json out.json

Each episode's saved outputs (``<method>_xyz``, metres, lifted but not registered) are registered to the
episode's measured first frame with every (block, margin) pair, and the 4D success predicate
(``evaluate.success_zone_4d``) is asked again. Printed per method and setting: the imagined success rate against
the simulator's, the per-episode agreement with the simulator label, and Pearson r across the noise levels
(sigma groups). Pick the setting on a calibration split (other dataset seeds than the held-out one) and report
the held-out split with it. Not collected by pytest.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="the episode folder k4d eval ran on (--split all)")
    ap.add_argument("--rollouts", required=True, help="k4d eval --save-rollouts --no-register output, rollouts/")
    ap.add_argument("--blocks", default="none,0,8,16,32", help="block sizes; none = not registered, 0 = per frame")
    ap.add_argument("--margins", default="2,4", help="robot margins (pixels)")
    ap.add_argument("--json", help="write the table here")
    args = ap.parse_args(argv)

    from k4d_worldmodel.evaluate import object_info, success_zone_4d
    from k4d_worldmodel.lifting import register_static
    from k4d_worldmodel.metrics import pearson_r
    from k4d_worldmodel.training.data import open_dataset

    rollouts = Path(args.rollouts)
    first = np.load(next(iter(sorted(rollouts.glob("*.npz")))))
    t, h, w = first[first.files[0]].shape[:3]
    ds = open_dataset(args.data, t, h, w, split="all")
    settings = [("none", None, 0)] + [(f"block{b}_margin{m}", int(b), int(m)) for b in args.blocks.split(",")
                                      if b != "none" for m in args.margins.split(",")]
    sim, sigma, gt, answers = [], [], [], {}
    for i in range(len(ds)):
        clip = ds[i]
        info = object_info(clip)
        path = rollouts / (clip["name"].replace("/", "_") + ".npz")
        if info is None or not path.exists():
            continue
        saved = np.load(path)
        anchor, mask = clip["world_xyz"][0], clip["robot_mask"]
        sim.append(bool(clip["meta"]["success"]))
        sigma.append(float(clip["meta"]["sigma"]))
        gt.append(success_zone_4d(clip["world_xyz"], mask, info))
        for key in (k[:-4] for k in saved.files if k.endswith("_xyz")):
            for name, block, margin in settings:
                xyz = saved[key + "_xyz"]
                if block is not None:
                    xyz = register_static(xyz, anchor, mask, block, margin)[0]
                answers.setdefault((key, name), []).append(success_zone_4d(xyz, mask, info))
    sim_a, sigma_a = np.array(sim), np.array(sigma)
    groups = sorted(set(sigma))
    sim_rates = [float(sim_a[sigma_a == g].mean()) for g in groups]

    def row(v: np.ndarray) -> dict:
        rates = [float(v[sigma_a == g].mean()) for g in groups]
        return {"rate": float(v.mean()), "agreement": float(np.mean(v == sim_a)),
                "pearson_r": pearson_r(sim_rates, rates), "group_rates": rates}

    table = {"predicate_on_truth": row(np.array(gt))}
    for (key, name), v in answers.items():
        table[f"{key}/{name}"] = row(np.array(v))
    print(f"{len(sim)} episodes, simulator success rate {sim_a.mean():.3f}, groups {groups}")
    for k, r in table.items():
        print(f"  {k:32s} rate {r['rate']:.3f}  agreement {r['agreement']:.3f}  Pearson r {r['pearson_r']:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "data": str(args.data), "rollouts": str(args.rollouts), "episodes": len(sim),
            "sim_rate": float(sim_a.mean()), "sigma_groups": groups, "sim_group_rates": sim_rates,
            "table": table, "machine": platform.node(), "cpu_count": os.cpu_count()}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

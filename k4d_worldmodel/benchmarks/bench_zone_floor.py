# Copyright 2026 k4d developers. Apache-2.0.
"""How high above the table the goal zone must start for a model's output to be judged as the truth is.

    .venv/bin/k4d eval --checkpoint DIR --data CALIB --split all --out RUN --methods k4d --save-rollouts
    .venv/bin/python k4d_worldmodel/benchmarks/bench_zone_floor.py --data CALIB --rollouts RUN/rollouts
    .venv/bin/python k4d_worldmodel/benchmarks/bench_zone_floor.py --data CALIB --vae RUN/vae --config metric_hr \\
        --save-rollouts /tmp/vae_rollouts   # a VAE alone: the truth through it (evaluate.autoencode)

The success predicate (``evaluate.success_zone_4d``) counts the points of the last frame that stand in the goal
zone, from a floor above the table (``evaluate.ZONE_FLOOR_M``, 6 mm) up to the object's height. A model whose
depth error lifts table points over the floor fills the zone with them and reads success where the truth reads
none; a floor too high loses objects the model has flattened. For every floor of ``--floors-mm`` this script asks
the predicate again, on each saved output (``<method>_xyz`` of ``k4d eval --save-rollouts``, or a VAE's
reconstruction of the truth, registered to the measured first frame as the engine does unless
``--no-register``) and on the truth itself, and prints the success rates and the per-episode agreement
with the simulator's label and with the truth's predicate. Choose a floor on a calibration split (other dataset
seeds than the held-out one), then report the held-out split with it. Not collected by pytest.
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
    ap.add_argument("--data", required=True, help="the episode folder (k4d eval --split all on it)")
    ap.add_argument("--rollouts", help="k4d eval --save-rollouts output folder (rollouts/)")
    ap.add_argument("--vae", help="a VAE folder alone: score the truth passed through it (needs --config)")
    ap.add_argument("--config", help="the train config the --vae was trained with (e.g. metric_hr)")
    ap.add_argument("--save-rollouts", help="with --vae: keep its reconstructions here (as vae_recon_xyz), for a "
                    "later --rollouts run")
    ap.add_argument("--no-register", action="store_true", help="with --vae: score the reconstruction as decoded, "
                    "without the still-scene registration the engine applies by default")
    ap.add_argument("--floors-mm", default="6,8,10,12,15", help="zone floors to try, millimetres")
    ap.add_argument("--json", help="write the table here")
    args = ap.parse_args(argv)
    if bool(args.rollouts) == bool(args.vae):
        ap.error("give either --rollouts or --vae")
    if args.vae and not args.config:
        ap.error("--vae needs --config (the geometry and pointmap code the VAE was trained for)")

    from k4d_worldmodel import evaluate as E
    from k4d_worldmodel.training.data import open_dataset

    floors = [float(v) / 1000.0 for v in args.floors_mm.split(",")]
    if args.vae:
        from k4d_worldmodel.config import WorldModelConfig
        from k4d_worldmodel.training.train import pipeline_around_vae

        pipe = pipeline_around_vae(args.vae, args.config)
        geometry, code = (pipe.num_frames, pipe.height, pipe.width), pipe.pointmap_encoding
        wm = WorldModelConfig(seed=42, metric_register=not args.no_register)
        save = Path(args.save_rollouts) if args.save_rollouts else None
        if save:
            save.mkdir(parents=True, exist_ok=True)
    else:
        rollouts = Path(args.rollouts)
        files = sorted(rollouts.glob("*.npz"))
        if not files:
            raise FileNotFoundError(f"no saved rollouts (*.npz) in {rollouts}")
        first = np.load(files[0])
        geometry, code = first[first.files[0]].shape[:3], None
    ds = open_dataset(args.data, *geometry, split="all", pointmap_encoding=code)

    sim, truth, answers = [], {f: [] for f in floors}, {}
    for i in range(len(ds)):
        clip = ds[i]
        info = E.object_info(clip)
        if info is None:
            continue
        stem = clip["name"].replace("/", "_")
        if args.vae:
            _, xyz, _ = E.autoencode(pipe, clip, wm.seed, wm.metric_lift_config(), wm.anchor_lift_config(),
                                     wm.registration_block_px())
            outputs = {"vae_recon": xyz}
            if save:
                np.savez(save / f"{stem}.npz", vae_recon_xyz=xyz.astype(np.float32))
        else:
            path = rollouts / f"{stem}.npz"
            if not path.exists():
                continue
            saved = np.load(path)
            outputs = {k[:-4]: saved[k] for k in saved.files if k.endswith("_xyz")}
        mask = clip["robot_mask"]
        sim.append(bool(clip["meta"]["success"]))
        for f in floors:
            truth[f].append(E.success_zone_4d(clip["world_xyz"], mask, info, floor_m=f))
            for method, xyz in outputs.items():
                answers.setdefault((method, f), []).append(E.success_zone_4d(xyz, mask, info, floor_m=f))
    if not sim:
        raise ValueError(f"no episode of {args.data} has both object metadata and an output to score")
    sim_a = np.array(sim)
    table = []
    for (method, f), v in answers.items():
        v, gt = np.array(v), np.array(truth[f])
        table.append({"method": method, "floor_mm": round(f * 1000.0, 3), "rate": float(v.mean()),
                      "truth_rate": float(gt.mean()), "agreement_with_sim": float(np.mean(v == sim_a)),
                      "agreement_with_truth": float(np.mean(v == gt)),
                      "truth_agreement_with_sim": float(np.mean(gt == sim_a))})
    print(f"{len(sim)} episodes, simulator success rate {sim_a.mean():.3f}")
    print("method      floor mm  rate   truth rate  agreement: with sim  with truth  (truth with sim)")
    for r in table:
        print(f"{r['method']:10s} {r['floor_mm']:8.1f}  {r['rate']:.3f}  {r['truth_rate']:.3f}       "
              f"{r['agreement_with_sim']:.3f}      {r['agreement_with_truth']:.3f}       "
              f"{r['truth_agreement_with_sim']:.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "data": str(args.data), "source": str(args.rollouts or args.vae), "episodes": len(sim),
            "registered": None if args.rollouts else not args.no_register,
            "sim_rate": float(sim_a.mean()), "table": table, "machine": platform.node(),
            "cpu_count": os.cpu_count()}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Benchmark of the simulated-dataset pipeline: camera render rate, episodes per minute, outcome mix per sigma.

    MUJOCO_GL=osmesa .venv/bin/python k4d_bringup/benchmarks/bench_dataset.py --episodes 8 --workers 2

Prints one table (with the CPU and the git commit):
1. camera: RGB+depth and segmentation render time at the dataset resolution (one core, OSMesa);
2. physics: simulated seconds per wall second for a scripted episode (no rendering);
3. dataset: episodes per minute for ``generate`` with ``--workers`` processes (full 49-frame episodes);
4. outcome mix: success / near-miss / failure per sigma over ``--mix-episodes`` policy rollouts per
   sigma (physics only, same seeds as the dataset would use).
"""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import tempfile
import time

os.environ.setdefault("MUJOCO_GL", "osmesa")


def _cpu() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _commit() -> str:
    try:
        return subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], text=True,
                                       cwd=os.path.dirname(__file__)).strip()
    except Exception:
        return "unknown"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--episodes", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--frames", type=int, default=49)
    ap.add_argument("--width", type=int, default=720)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--scenario", default="medium")
    ap.add_argument("--sigmas", default="0,0.5,0.8,1.2")
    ap.add_argument("--mix-episodes", type=int, default=20, help="policy rollouts per sigma and task for the mix")
    args = ap.parse_args()
    sigmas = [float(s) for s in args.sigmas.split(",")]

    import numpy as np

    from k4d_bringup.dataset.generate import GenerateOptions, episode_spec, generate
    from k4d_bringup.sim.config import SimConfig
    from k4d_bringup.sim.policies import NoiseSpec, make_policy, run_episode
    from k4d_bringup.sim.workcell import YamSim

    rows = []
    # 1. camera
    cfg = SimConfig(scenario=args.scenario)
    cfg.camera.width, cfg.camera.height = args.width, args.height
    sim = YamSim(cfg, seed=0)
    sim.render()
    n = 30
    t = time.perf_counter()
    for _ in range(n):
        sim.render(rgb=True, depth=True)
    dt_rgbd = (time.perf_counter() - t) / n
    t = time.perf_counter()
    for _ in range(n):
        sim.render(rgb=False, depth=False, segmentation=True)
    dt_seg = (time.perf_counter() - t) / n
    rows.append((f"camera RGB+depth {args.width}x{args.height}", f"{dt_rgbd * 1e3:.1f} ms", f"{1 / dt_rgbd:.1f} Hz"))
    rows.append((f"camera segmentation {args.width}x{args.height}", f"{dt_seg * 1e3:.1f} ms", f"{1 / dt_seg:.1f} Hz"))
    sim.close()

    # 2. physics
    sim = YamSim(SimConfig(scenario=args.scenario), seed=1)
    t = time.perf_counter()
    res = run_episode(sim, make_policy(sim), NoiseSpec(0.0), np.random.default_rng(0))
    wall = time.perf_counter() - t
    rows.append(("physics+IK scripted episode", f"{res.duration:.1f} s sim in {wall:.2f} s", f"{res.duration / wall:.1f}x real time"))

    # 3. dataset
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        metas = generate(args.episodes, 0, tmp, workers=args.workers, num_frames=args.frames, scenario=args.scenario,
                         sigmas=sigmas, width=args.width, height=args.height, progress=False)
        wall = time.perf_counter() - t
        size = sum(os.path.getsize(os.path.join(tmp, f)) for f in os.listdir(tmp) if f.endswith(".npz")) / len(metas)
    rows.append((f"dataset {args.episodes} ep x {args.frames} frames, {args.workers} workers",
                 f"{wall:.1f} s ({size / 1e6:.1f} MB/ep)", f"{args.episodes / wall * 60:.1f} episodes/min"))

    # 4. outcome mix per sigma (physics only)
    opts = GenerateOptions(num_frames=args.frames, scenario=args.scenario, sigmas=tuple(sigmas))
    mix: dict = {}
    for i in range(args.mix_episodes * len(sigmas) * len(opts.tasks)):
        spec = episode_spec(i, 0, opts)
        sim = YamSim(opts.sim_cfg(spec["task"]), seed=spec["scene_seed"])
        r = run_episode(sim, make_policy(sim), NoiseSpec(spec["sigma"]), np.random.default_rng(spec["noise_seed"]))
        mix.setdefault((spec["task"], spec["sigma"]), []).append(r.outcome.label)

    print(f"\nk4d bench_dataset  commit {_commit()}  CPU {_cpu()}  cores {os.cpu_count()}  "
          f"MUJOCO_GL={os.environ.get('MUJOCO_GL')}  scenario {args.scenario}")
    print(f"{'measurement':<48} {'value':<28} rate")
    for a, b, c in rows:
        print(f"{a:<48} {b:<28} {c}")
    print(f"\n{'task':<11} {'sigma':>5} {'n':>4} {'success':>8} {'near_miss':>10} {'failure':>8}")
    for (task, sigma), labels in sorted(mix.items()):
        k = len(labels)
        print(f"{task:<11} {sigma:>5g} {k:>4} {labels.count('success') / k:>8.2f} "
              f"{labels.count('near_miss') / k:>10.2f} {labels.count('failure') / k:>8.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

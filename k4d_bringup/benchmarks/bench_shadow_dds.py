# Copyright 2026 k4d developers. Apache-2.0.
"""Shadow evaluation with the world model served over DDS against the same model in process, on the same episodes.

    .venv/bin/python k4d_bringup/benchmarks/bench_shadow_dds.py EPISODES_DIR --checkpoint default \\
        --max-episodes 12 --json k4d_worldmodel/benchmarks/results/shadow_dds_cpu_v2.json
    sudo .venv/bin/python k4d_bringup/benchmarks/bench_shadow_dds.py EPISODES_DIR --netns 1gbit ...   # two hosts

The deployment this measures: the shadow node beside the robot, the imagine node on another machine (a GPU
workstation), the Imagine action between them over DDS. By default both run on one host, so the figure is the
cost of the action path itself (goal and result serialisation, DDS transport over loopback, the node's queue and
threads), not of a network. ``--netns RATE`` (root, Linux) puts the node and the client on two hosts of their
own instead: two network namespaces joined by a veth link whose both ends are shaped to RATE by a token bucket
(``tc tbf``, e.g. ``1gbit`` for a gigabit LAN). DDS then crosses a real IP link: UDPv4 only (no shared memory
between the two, as between two machines), subnet discovery with each host as the other's static peer. The bytes
that crossed the link are read from its counters and reported, so the figure is known to be a network's.

1. ``served``: the real ``imagine_node`` is started as its own process (``checkpoint_dir``, ``device``, the
   sampling of the in-process run: 20 steps, no CFG, seed 42), on a ROS domain of its own (``ROS_DOMAIN_ID``
   random in 101-200 unless set, localhost discovery). ``k4d shadow bench --served`` then sends each
   episode's chunk as an Imagine goal (pointmap condition plus the chunk-start depth as 32FC1) and scores the
   result. The node is stopped afterwards, so it does not share the CPU with step 2.
2. ``in_process``: ``k4d shadow bench --checkpoint`` on the same episodes: the node's engine in this process.

Reported per mode: wall time, chunks per minute, the mean time per imagination as the client sees it; for
``served`` also the server's own generation time (``generation_s`` in each result), so that the client time
minus it is the action path's overhead. Both modes must give the same scores: the script compares every chunk's
PSNR, depth error and imagined success between them and reports the largest difference (the seed and inputs
are the same, so any difference is a fault of the message path). Not collected by pytest.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _chunks(log: Path) -> dict[str, dict]:
    from k4d_bringup.shadow.log import read_log

    return {f"{r['episode_id']}/{r['chunk_index']}": r for r in read_log(log) if r.get("kind") == "chunk"}


def _bench(args, extra: list[str], log: Path, env: dict, wrap=None) -> dict:
    """One ``k4d shadow bench`` run in a fresh interpreter (through ``wrap``, if given); its --json summary."""
    summary = log.with_suffix(".json")
    cmd = [sys.executable, "-m", "k4d_bringup.shadow.simbench", str(args.episodes), "--log", str(log), "--json",
           str(summary), "--steps", str(args.steps), "--max-episodes", str(args.max_episodes), *extra]
    cmd = wrap(cmd) if wrap else cmd
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, cwd=tempfile.gettempdir())
    out = json.loads(summary.read_text())
    out["process_wall_s"] = time.perf_counter() - t0
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("episodes", help="k4d dataset folder at the model's resolution (or scenario sub-folders)")
    p.add_argument("--checkpoint", default="default", help="model folder ('default' = the shipped model)")
    p.add_argument("--device", default="cpu", help="device of both runs (default cpu)")
    p.add_argument("--max-episodes", type=int, default=12)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--json", default="", help="also write the results here")
    p.add_argument("--server-wait-s", type=float, default=180.0, help="how long to wait for the node to serve")
    p.add_argument("--netns", default="", metavar="RATE",
                   help="serve across two network namespaces joined by a link shaped to RATE (tc tbf, e.g. 1gbit); "
                   "root only")
    p.add_argument("--work", default="", help="folder for the logs of both runs and the node's log (default: a new "
                   "temporary folder)")
    args = p.parse_args(argv)
    args.episodes = str(Path(args.episodes).resolve())  # the runs start in another folder

    from k4d_bringup.shadow.predicate import min_points_for
    from k4d_worldmodel.config import DEFAULT_CHECKPOINT, default_checkpoint_dir

    from k4d_worldmodel.config import WorldModelConfig
    from k4d_worldmodel.loading import load_pipeline

    ckpt = str(default_checkpoint_dir()) if args.checkpoint == DEFAULT_CHECKPOINT else args.checkpoint
    pipe = load_pipeline(WorldModelConfig(checkpoint_dir=ckpt, device="cpu"))  # only for its geometry
    frames, height, width = pipe.num_frames, pipe.height, pipe.width
    del pipe
    min_points = min_points_for(height, width)

    env = {**os.environ, "ROS_DOMAIN_ID": os.environ.get("ROS_DOMAIN_ID") or str(random.randint(101, 200)),
           "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST", "PYTHONUNBUFFERED": "1"}
    if args.work:
        work = Path(args.work)
        work.mkdir(parents=True, exist_ok=True)
    else:
        work = Path(tempfile.mkdtemp(prefix="k4d_shadow_dds_"))
    results = {"checkpoint": ckpt, "episodes": str(args.episodes), "max_episodes": args.max_episodes,
               "steps": args.steps, "device": args.device, "model": f"{frames} x {height} x {width}",
               "min_points": min_points, "ros_domain_id": int(env["ROS_DOMAIN_ID"]), "machine": platform.node(),
               "cpu_count": os.cpu_count(), "python": platform.python_version()}
    if args.device.startswith("cuda"):
        import torch

        results["gpu"] = torch.cuda.get_device_name(torch.device(args.device))
        results["torch"] = torch.__version__
    import rclpy

    results["rclpy_from"] = str(Path(rclpy.__file__).parent)

    node_cmd = [sys.executable, "-m", "k4d_worldmodel.ros.imagine_node", "--ros-args",
                "-r", "__node:=k4d_imagine_bench", "-p", f"checkpoint_dir:={ckpt}", "-p", f"device:={args.device}",
                "-p", "autostart:=true", "-p", "preview:=false", "-p", f"num_inference_steps:={args.steps}",
                "-p", "guidance_scale:=1.0", "-p", "seed:=42", "-p", "action_name:=/k4d/imagine"]
    from k4d_bringup.testing import TwoHosts

    hosts = TwoHosts(args.netns) if args.netns else contextlib.nullcontext()
    t0 = time.perf_counter()
    node_log = work / "imagine_node.log"  # a file, not a pipe: a long run's log would fill a pipe and stall the node
    with hosts, open(node_log, "w") as fh:
        node_env, client_env, wrap_node, wrap_client = env, env, None, None
        if args.netns:
            node_env, client_env = hosts.env(hosts.server, env), hosts.env(hosts.client, env)
            wrap_node, wrap_client = (lambda c: hosts.wrap(hosts.server, c)), (lambda c: hosts.wrap(hosts.client, c))
            results["network"] = hosts.describe()
        node = subprocess.Popen(wrap_node(node_cmd) if wrap_node else node_cmd, env=node_env, cwd=str(work),
                                stdout=fh, stderr=subprocess.STDOUT)
        try:
            served = _bench(args, ["--served", "--frames", str(frames), "--min-points", str(min_points),
                                   "--wait-server-s", str(args.server_wait_s)], work / "served.jsonl", client_env,
                            wrap_client)
        finally:
            node.send_signal(signal.SIGINT)
            try:
                node.wait(timeout=15)
            except subprocess.TimeoutExpired:
                node.kill()
                node.wait()
        if args.netns:
            moved = hosts.bytes_moved()
            results["network"]["bytes"] = moved
            results["network"]["udp_receive_buffer_drops"] = hosts.udp_receive_drops()
            results["network"]["mb_per_chunk"] = {k: v / 1e6 / max(served["chunks"], 1) for k, v in moved.items()}
    node_out = node_log.read_text()
    results["node_process_s"] = time.perf_counter() - t0
    local = _bench(args, ["--checkpoint", ckpt, "--device", args.device], work / "in_process.jsonl", env)

    a, b = _chunks(work / "served.jsonl"), _chunks(work / "in_process.jsonl")
    both = sorted(set(a) & set(b))
    diffs = {"psnr_db": 0.0, "ssim": 0.0, "depth_mae_m": 0.0, "success_mismatch": 0}
    for k in both:
        for key in ("psnr_db", "ssim", "depth_mae_m"):
            x, y = a[k].get(key), b[k].get(key)
            if x is not None and y is not None:
                diffs[key] = max(diffs[key], abs(float(x) - float(y)))
        diffs["success_mismatch"] += int(a[k].get("imagined_success") != b[k].get("imagined_success"))
    gen = [float(r["generation_time_s"]) for r in a.values() if r.get("generation_time_s") is not None]
    for name, out, recs in (("served", served, a), ("in_process", local, b)):
        n = max(out["chunks"], 1)
        results[name] = {"chunks": out["chunks"], "ok": out["ok"], "failed": out["failed"], "wall_s": out["wall_s"],
                         "chunks_per_min": out["chunks_per_min"], "imagine_s_per_chunk": out["imagine_s"] / n}
    results["served"]["server_generation_s_per_chunk"] = float(np.mean(gen)) if gen else None
    if gen:
        results["served"]["action_path_overhead_s_per_chunk"] = (results["served"]["imagine_s_per_chunk"]
                                                                 - float(np.mean(gen)))
    results["same_scores"] = {"chunks_compared": len(both), "max_abs_diff": diffs}
    print(json.dumps(results, indent=1))
    if results["served"]["ok"] == 0:
        print(f"---- imagine node ----\n{node_out[-3000:]}", file=sys.stderr)
        return 1
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

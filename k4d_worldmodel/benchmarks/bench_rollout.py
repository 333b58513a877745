# Copyright 2026 k4d developers. Apache-2.0.
"""Wall time of one world-model rollout (first frame + robot pointmaps -> RGB + XYZ) at 17 and 49 frames.

    .venv/bin/python k4d_worldmodel/benchmarks/bench_rollout.py --checkpoint k4d_worldmodel/checkpoints/k4d-yam-sim
    python3 k4d_worldmodel/benchmarks/bench_rollout.py --checkpoint CKPT --device cuda --json out.json   # GPU box

The robot input is the YAM at the checkpoint's resolution, rendered by k4d_kinematics along a joint-space sweep
(content does not change the cost). The main tokens use RoPE, so the frame count only fixes the shape of the
Kinema4D robot-token position embedding ``arm_pos_emb``: runs at another frame count than the checkpoint's
re-register ``num_latent_frames`` and interpolate that embedding along time (same weights otherwise; the cost is
the cost of a model of that length, the output of an untrained length is not a quality claim). Per frame
count: one warm-up rollout, then ``--repeats`` timed ones (median reported, with the pipeline's own encode /
denoise / decode split). The torch thread count is printed: the issue's CPU target is for 2 cores.
Not collected by pytest.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import numpy as np


def robot_inputs(height: int, width: int, frames: int):
    """``(first RGB frame (H, W, 3) uint8, robot_xyz (T, H, W, 3), robot_link (T, H, W))`` of a YAM sweep."""

    from k4d_bringup.shadow.synthetic import SyntheticScene

    scene = SyntheticScene.default(width=width, height=height, f=80.0 * width / 96.0)
    m = scene.model
    clamp = lambda q: np.clip(q, m.lower, m.upper)
    q0 = clamp(np.r_[[0.0, 1.0, 1.2, -1.0, 0.0, 0.0], np.zeros(m.num_joints - 6)])
    q1 = clamp(q0 + np.r_[[0.6, 0.3, -0.3, 0.4, 0.5, 0.0], np.zeros(m.num_joints - 6)])
    Q = q0 + np.linspace(0.0, 1.0, frames)[:, None] * (q1 - q0)
    xyz, link = scene.renderer().render_sequence(Q)
    rgb, _ = scene.render(q0)
    return rgb, xyz, link


def set_latent_frames(transformer, n: int) -> None:
    """Re-size the transformer for ``n`` latent frames (config + time-interpolated ``arm_pos_emb``)."""
    import torch
    import torch.nn.functional as F

    if not hasattr(transformer, "_k4d_arm_pos_emb_trained"):
        transformer._k4d_arm_pos_emb_trained = transformer.arm_pos_emb.detach().clone()
    base = transformer._k4d_arm_pos_emb_trained
    emb = base if base.shape[2] == n else F.interpolate(base.float(), size=(n, *base.shape[3:]), mode="trilinear",
                                                        align_corners=True).to(base.dtype)
    transformer.arm_pos_emb = torch.nn.Parameter(emb, requires_grad=False)
    transformer.register_to_config(num_latent_frames=n)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="K4DPipeline folder")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--frames", default="17,49", help="comma list of frame counts (1 + 4k)")
    p.add_argument("--steps", type=int, default=20, help="denoising steps (default 20)")
    p.add_argument("--guidance", type=float, default=1.0, help="CFG scale; <= 1 = one pass per step (default)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", default="", help="also write the results here")
    p.add_argument("--vae-autocast", default="off,auto",
                   help="comma list of WorldModelConfig.vae_autocast settings to time in the same run; the first is "
                        "the baseline the others' outputs are compared with (default off,auto)")
    p.add_argument("--cuda-graphs", default="off,on",
                   help="comma list of WorldModelConfig.cuda_graphs settings (off/on) to time; every combination "
                        "with --vae-autocast runs, the first combination is the baseline (no effect on CPU, where "
                        "only the first setting runs)")
    p.add_argument("--vae-norm", default="fast",
                   help="comma list of stock/fast: the VAE's RMS norm as diffusers has it, or k4d's FastWanRMSNorm "
                        "(models/vae_norm.py, what load_pipeline uses on a CPU); 'stock,fast' times both (default fast)")
    args = p.parse_args(argv)

    import torch

    from k4d_worldmodel.config import WorldModelConfig
    from k4d_worldmodel.loading import load_pipeline
    from k4d_worldmodel.models.vae_norm import use_fast_vae_norm

    pipe = load_pipeline(WorldModelConfig(checkpoint_dir=args.checkpoint, device=args.device))
    pipe.set_progress_bar_config(disable=True)
    sync = torch.cuda.synchronize if pipe.device.type == "cuda" else (lambda: None)
    results = {"checkpoint": args.checkpoint, "device": str(pipe.device), "steps": args.steps,
               "guidance": args.guidance,
               "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "machine": platform.node(),
               "gpu": torch.cuda.get_device_name() if pipe.device.type == "cuda" else "", "runs": {}}
    trained_frames = pipe.transformer.config.num_latent_frames
    graph_settings = [g.strip() for g in args.cuda_graphs.split(",") if g.strip()]
    if any(g not in ("off", "on") for g in graph_settings) or not graph_settings:
        raise SystemExit(f"--cuda-graphs: a comma list of off/on, got {args.cuda_graphs!r}")
    if pipe.device.type != "cuda":
        graph_settings = graph_settings[:1]
    norms = [n.strip() for n in args.vae_norm.split(",") if n.strip()]
    if not norms or any(n not in ("stock", "fast") for n in norms):
        raise SystemExit(f"--vae-norm: a comma list of stock/fast, got {args.vae_norm!r}")
    variants = [(v.strip(), g, n) for v in args.vae_autocast.split(",") if v.strip() for g in graph_settings
                for n in norms]
    for frames in (int(f) for f in args.frames.split(",")):
        if (frames - 1) % 4:
            raise SystemExit(f"--frames: {frames} is not 1 + 4k")
        set_latent_frames(pipe.transformer, (frames - 1) // 4 + 1)
        rgb, xyz, link = robot_inputs(pipe.height, pipe.width, frames)
        baseline = None
        for variant, graphs, norm in variants:
            pipe.vae_autocast = WorldModelConfig(device=args.device, vae_autocast=variant).resolved_vae_autocast()
            pipe.cuda_graphs = graphs == "on"
            use_fast_vae_norm(pipe.vae, norm == "fast")
            times, splits = [], []
            for k in range(args.repeats + 1):
                sync()
                t0 = time.perf_counter()
                out = pipe(image=rgb, robot_xyz=xyz, robot_link=link, num_inference_steps=args.steps,
                           guidance_scale=args.guidance, seed=k)
                sync()
                if k:  # the first run warms up kernels and allocators
                    times.append(time.perf_counter() - t0)
                    splits.append(out.timings)
                if k == args.repeats:
                    last = out
            med = statistics.median(times)
            split = {key: statistics.median(s[key] for s in splits) for key in ("encode_s", "denoise_s", "decode_s")}
            run = {"median_s": med, "all_s": times, **split, "vae_autocast": variant,
                   "vae_autocast_dtype": str(pipe.vae_autocast), "cuda_graphs": graphs, "vae_norm": norm}
            if baseline is None:
                baseline = last
            else:  # same seed, same inputs: how far the outputs move from the baseline's
                run["rgb_mean_abs_diff_u8"] = float(np.abs(last.rgb.astype(np.float32) - baseline.rgb).mean())
                run["xyz01_mean_abs_diff"] = float(np.abs(last.xyz - baseline.xyz).mean())
            key = str(frames) if len(variants) == 1 else f"{frames}/vae_{variant}/graphs_{graphs}" + (
                f"/norm_{norm}" if len(norms) > 1 else "")
            results["runs"][key] = run
            print(f"{frames} frames x {pipe.height}x{pipe.width}, {args.steps} steps on {results['device']} "
                  f"({results['torch_threads']} threads, vae_autocast {variant} -> {pipe.vae_autocast}, cuda graphs "
                  f"{graphs}, vae norm {norm}): median "
                  f"{med:.3f} s  (encode {split['encode_s']:.3f}, denoise {split['denoise_s']:.3f}, decode "
                  f"{split['decode_s']:.3f})" + (f", vs baseline: rgb {run['rgb_mean_abs_diff_u8']:.2f}/255, xyz01 "
                                                 f"{run['xyz01_mean_abs_diff']:.4f}" if "xyz01_mean_abs_diff" in run
                                                 else ""), flush=True)
    set_latent_frames(pipe.transformer, trained_frames)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

#!/usr/bin/env python3
"""Time one training step of the transformer of each named config, on random encoded batches.

    python k4d_worldmodel/benchmarks/bench_train_step.py --configs metric_hr,metric_hr_wide   # on a GPU
    python k4d_worldmodel/benchmarks/bench_train_step.py --configs smoke --steps 2 --device cpu

A GPU call's budget is minutes, so a rule for a new config needs its steps per second before the run: how many
steps fit the call decides whether training from scratch can reach the model it replaces. This measures exactly
the trainer's inner step (`objective.flow_matching_step` with the config's change weight, soft mask and dropouts,
backward, gradient clipping, AdamW) at the config's batch size, under bf16 autocast on a GPU (the trainer's mixed
precision) and float32 on a CPU. The batch is random but of the encoded clips' shapes (latents, condition, robot
condition, CLIP tokens, change mask), so data loading and the frozen encoders are not timed: the encoded cache
makes them a one-off in the trainer too. Reports steps/s, clips/s, peak GPU memory, parameters and the share of the
velocity the model cannot output (`reachable_basis`). Needs torch and diffusers only; writes ``--json`` or
``$OUT/bench_train_step.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the k4d_worldmodel package of this repository
from k4d_worldmodel.models.transformer_k4d import K4DTransformer3DModel  # noqa: E402
from k4d_worldmodel.training.config import TrainConfig  # noqa: E402
from k4d_worldmodel.training.objective import flow_matching_step  # noqa: E402
from k4d_worldmodel.training.train import build_transformer  # noqa: E402

CLIP_CLASS_TOKENS = 1


def random_batch(t: K4DTransformer3DModel, cfg: TrainConfig, batch: int, device: str, seed: int = 0) -> dict:
    """Random tensors of `encode_clips`' shapes for ``batch`` clips (the condition dummy when the config uses it)."""
    c = t.config
    z, f, h, w = c.out_channels, c.num_latent_frames, c.latent_height, c.latent_width
    g = torch.Generator().manual_seed(seed)
    n_img = (int(cfg.image_encoder.get("image_size", 224)) // int(cfg.image_encoder.get("patch_size", 14))) ** 2
    out = {
        "x0": torch.randn(batch, z, f, h, 2 * w, generator=g),
        "condition": torch.randn(batch, c.mask_channels + z, f, h, 2 * w, generator=g),
        "robot_condition": torch.randn(batch, *t.robot_condition_shape, generator=g),
        "image_tokens": torch.randn(batch, n_img + CLIP_CLASS_TOKENS, c.image_dim, generator=g),
        "change_mask": (torch.rand(batch, 1, f, h, 2 * w, generator=g) < 0.05).float(),
    }
    if c.variant != "jointemb":
        out["robot_condition"][:, : c.mask_channels] = (out["robot_condition"][:, : c.mask_channels] > 0).float()
    if cfg.first_xyz_condition:
        out["condition_dummy"] = out["condition"].clone()
    return {k: v.to(device) for k, v in out.items()}


def time_config(name: str, batch: int | None, steps: int, warmup: int, device: str) -> dict:
    cfg = TrainConfig.from_yaml(name)
    if cfg.mode != "full":
        raise ValueError(f"config {name!r} is a {cfg.mode} fine-tuning: it builds no transformer of its own")
    bs = int(batch or cfg.batch_size)
    t = build_transformer(cfg).to(device).train()
    reach = t.reachable_basis()
    out_dim = t.proj_out.weight.shape[0]
    params = [p for p in t.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=device.startswith("cuda"))
    data = random_batch(t, cfg, bs, device)
    gen = torch.Generator().manual_seed(1)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.startswith("cuda") else torch.autocast("cpu", enabled=False)

    def step() -> float:
        with amp:
            loss = flow_matching_step(t, data, gen, shift=cfg.flow_shift, soft_mask_fraction=cfg.soft_mask_fraction,
                                      cond_dropout=cfg.cond_dropout, first_xyz_dropout=cfg.first_xyz_dropout,
                                      change_weight=cfg.change_weight)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    cuda = device.startswith("cuda")
    for _ in range(warmup):
        step()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    losses = [step() for _ in range(steps)]
    if cuda:
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    row = {
        "config": name, "batch": bs, "steps": steps, "seconds": dt, "steps_per_s": steps / dt,
        "clips_per_s": steps * bs / dt, "params": sum(p.numel() for p in t.parameters()),
        "hidden": int(t.proj_out.weight.shape[1]), "outputs_per_token": int(out_dim),
        "unreachable_fraction": 0.0 if reach is None else 1.0 - reach.shape[1] / out_dim,
        "tokens": int(data["x0"].shape[2] * data["x0"].shape[3] * data["x0"].shape[4]
                      // (t.config.patch_size[0] * t.config.patch_size[1] * t.config.patch_size[2])),
        "last_loss": losses[-1],
        "peak_gpu_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
    }
    del t, opt, data
    if cuda:
        torch.cuda.empty_cache()
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", default="metric_hr,metric_hr_wide", help="comma list of config names or YAML paths")
    p.add_argument("--batch", type=int, default=None, help="clips per step (default: each config's batch_size)")
    p.add_argument("--steps", type=int, default=20, help="timed steps per config (default 20)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--json", default="", help="output file (default $OUT/bench_train_step.json when $OUT is set)")
    a = p.parse_args(argv)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if a.device == "auto" else a.device
    result = {"device": torch.cuda.get_device_name(device) if device.startswith("cuda") else platform.processor()
              or platform.machine(), "torch": torch.__version__, "rows": []}
    dest = a.json or (os.path.join(os.environ["OUT"], "bench_train_step.json") if os.environ.get("OUT") else "")
    for name in a.configs.split(","):
        try:
            row = time_config(name.strip(), a.batch, a.steps, a.warmup, device)
        except torch.cuda.OutOfMemoryError as e:  # a config too big for this card is a result, not a crash
            row = {"config": name, "error": f"out of GPU memory at batch {a.batch or 'default'}: {e}".splitlines()[0]}
            torch.cuda.empty_cache()
        result["rows"].append(row)
        print(json.dumps(row), flush=True)
        if dest:
            Path(dest).write_text(json.dumps(result, indent=1))
    print(f"\n{'config':<18} {'batch':>5} {'params M':>9} {'unreach':>8} {'steps/s':>8} {'clips/s':>8} {'peak GiB':>9}")
    for r in result["rows"]:
        if "error" in r:
            print(f"{r['config']:<18} {r['error']}")
            continue
        peak = "-" if r["peak_gpu_gib"] is None else f"{r['peak_gpu_gib']:.1f}"
        print(f"{r['config']:<18} {r['batch']:>5} {r['params'] / 1e6:>9.2f} {r['unreachable_fraction']:>8.2f} "
              f"{r['steps_per_s']:>8.2f} {r['clips_per_s']:>8.1f} {peak:>9}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

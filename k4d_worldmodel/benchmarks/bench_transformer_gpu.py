#!/usr/bin/env python3
"""Time the full-size K4D (Kinema4D 14B) transformer with random weights, and optionally the Wan VAE.

    python k4d_worldmodel/benchmarks/bench_transformer_gpu.py                      # 14B, bf16, 50-step CFG rollout
    python k4d_worldmodel/benchmarks/bench_transformer_gpu.py --layers 4 --steps 5 # quick check
    python k4d_worldmodel/benchmarks/bench_transformer_gpu.py --tiny --device cpu  # CPU smoke test

Needs only torch, diffusers (and its deps), safetensors; imports the K4D model from this repository.
Builds the 14B architecture (40 layers, 40 heads x 128, ffn 13824) directly on the GPU in bf16 (no CPU copy),
49 frames at 480 x 720 per modality: latent [1, 16, 13, 60, 180] (RGB | XYZ) -> 35,100 tokens, robot tokens 624
("full") or 312 ("pmcond"), 257 CLIP tokens. Measures seconds per transformer pass (conditional alone, batch 1;
conditional + unconditional batched, batch 2), a full rollout (--steps UniPC flow steps with guidance --guidance,
batched CFG), peak GPU memory (torch.cuda.max_memory_allocated) per stage and achieved TFLOP/s against the analytic
matmul FLOP count (``flops_per_forward``). ``--vae full`` also times the Wan VAE (random weights, real size) on
the condition-video encode (49 x 480 x 1440), one robot-video encode (49 x 480 x 720) and the decode.
Prints a table at the end and writes ``$OUT/bench_transformer_gpu.json`` when ``$OUT`` is set (rewritten after
every stage, so a later failure keeps the earlier numbers).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the k4d_worldmodel package of this repository
from k4d_worldmodel.models.transformer_k4d import K4DTransformer3DModel, flops_per_forward  # noqa: E402

TINY = dict(
    patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=36, out_channels=16, text_dim=8,
    freq_dim=16, ffn_dim=32, num_layers=2, image_dim=8, added_kv_proj_dim=24, rope_max_seq_len=32,
    num_latent_frames=3, latent_height=4, latent_width=6, arm_patch_size=(1, 2, 3), arm_dim=8,
)
TINY_VAE = dict(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True])


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="tiny config (CPU smoke test)")
    p.add_argument("--variant", choices=("full", "pmcond"), default="full")
    p.add_argument("--layers", type=int, default=None, help="override num_layers (default: 40, or 2 with --tiny)")
    p.add_argument("--steps", type=int, default=50, help="rollout denoising steps (default 50)")
    p.add_argument("--guidance", type=float, default=5.0, help="CFG scale of the rollout (default 5.0)")
    p.add_argument("--passes", type=int, default=3, help="timed passes per measurement (default 3)")
    p.add_argument("--warmup", type=int, default=1, help="untimed warm-up passes (default 1; compile needs >= 1)")
    p.add_argument("--attn-backend", default="native",
                   help="diffusers attention backend: native (torch SDPA, auto), _native_cudnn, _native_flash, "
                        "_native_efficient, flash (needs flash-attn), _flash_3, sage, ... (default native)")
    p.add_argument("--compile", choices=("none", "blocks", "full"), default="none",
                   help="torch.compile: 'blocks' compiles each transformer block (regional), 'full' the whole model")
    p.add_argument("--vae", choices=("none", "tiny", "full"), default="none", help="also time a random Wan VAE")
    p.add_argument("--vae-dtype", choices=("bfloat16", "float32"), default="bfloat16")
    p.add_argument("--skip-rollout", action="store_true", help="skip the full rollout")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=("bfloat16", "float32", "float16"), default=None,
                   help="transformer dtype (default bfloat16 on cuda, float32 on cpu)")
    return p.parse_args()


class Recorder:
    """Collects results, prints them, and rewrites $OUT/bench_transformer_gpu.json after every stage."""

    def __init__(self, meta: dict):
        self.data = {"meta": meta, "results": {}}
        out = os.environ.get("OUT")
        self.path = Path(out) / "bench_transformer_gpu.json" if out else None

    def add(self, key: str, value) -> None:
        self.data["results"][key] = value
        print(f"[bench] {key}: {value}", flush=True)
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps(self.data, indent=2, default=str))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def git_commit() -> str:
    if os.environ.get("K4D_COMMIT"):
        return os.environ["K4D_COMMIT"]
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent, text=True,
                              capture_output=True, timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def build_model(config: dict, device: torch.device, dtype: torch.dtype) -> K4DTransformer3DModel:
    """Random-weight model created directly on ``device`` in ``dtype`` (fp32 only for _keep_in_fp32_modules)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = K4DTransformer3DModel(**config)
    finally:
        torch.set_default_dtype(previous)
    keep = K4DTransformer3DModel._keep_in_fp32_modules
    with torch.no_grad():
        for name, param in model.named_parameters():
            if any(k in name.split(".") for k in keep):
                param.data = param.data.float()
            if name in ("arm_patch_proj.weight", "arm_cond_proj.weight"):  # zero-init in a fresh model
                param.normal_(0, 0.02)  # non-zero so the robot path does real work
    return model.eval().requires_grad_(False)


def make_inputs(model: K4DTransformer3DModel, batch: int, device: torch.device, dtype: torch.dtype,
                num_image_tokens: int) -> dict:
    c = model.config
    g = torch.Generator(device=device).manual_seed(0)
    return dict(
        hidden_states=torch.randn(batch, c.in_channels, *model.latent_shape[1:], device=device, dtype=dtype,
                                  generator=g),
        timestep=torch.full((batch,), 500.0, device=device),
        encoder_hidden_states_image=torch.randn(batch, num_image_tokens, c.image_dim, device=device, dtype=dtype,
                                                generator=g),
        robot_condition=torch.randn(batch, *model.robot_condition_shape, device=device, dtype=dtype, generator=g),
        robot_token_scale=torch.tensor([1.0, 0.0][:batch], device=device),
        robot_injection_scale=torch.tensor([1.0, 0.0][:batch], device=device),
    )


@torch.no_grad()
def time_pass(model, inputs: dict, device: torch.device, passes: int, warmup: int) -> dict:
    reset_peak(device)
    t0 = time.perf_counter()
    for _ in range(warmup):
        model(**inputs, return_dict=False)
    sync(device)
    warm_s = time.perf_counter() - t0
    times = []
    for _ in range(passes):
        sync(device)
        t = time.perf_counter()
        model(**inputs, return_dict=False)
        sync(device)
        times.append(time.perf_counter() - t)
    return {"s_per_pass": min(times), "s_mean": sum(times) / len(times), "warmup_s": warm_s,
            "peak_gib": peak_gib(device)}


@torch.no_grad()
def rollout(model, steps: int, guidance: float, device: torch.device, dtype: torch.dtype, num_image_tokens: int) -> dict:
    from diffusers import UniPCMultistepScheduler

    sched = UniPCMultistepScheduler(num_train_timesteps=1000, prediction_type="flow_prediction", use_flow_sigmas=True,
                                    flow_shift=3.0, solver_order=2, solver_type="bh2", predict_x0=True,
                                    lower_order_final=True, final_sigmas_type="zero")
    sched.set_timesteps(steps, device=device)
    inputs = make_inputs(model, 2, device, dtype, num_image_tokens)
    c = model.config
    g = torch.Generator(device=device).manual_seed(42)
    latents = torch.randn(1, *model.latent_shape, device=device, dtype=torch.float32, generator=g)
    condition = inputs["hidden_states"][:1, c.out_channels:]
    reset_peak(device)
    sync(device)
    t0 = time.perf_counter()
    for t in sched.timesteps:
        latent_in = torch.cat([latents, condition.float()], dim=1).to(dtype).expand(2, -1, -1, -1, -1)
        out = model(**dict(inputs, hidden_states=latent_in, timestep=t.expand(2)), return_dict=False)[0]
        cond, uncond = out.float().chunk(2)
        latents = sched.step(uncond + guidance * (cond - uncond), t, latents, return_dict=False)[0]
    sync(device)
    total = time.perf_counter() - t0
    return {"steps": steps, "guidance": guidance, "total_s": total, "s_per_step": total / steps,
            "finite": bool(torch.isfinite(latents).all()), "peak_gib": peak_gib(device)}


@torch.no_grad()
def bench_vae(kind: str, model: K4DTransformer3DModel, device: torch.device, dtype: torch.dtype, variant: str) -> dict:
    from diffusers import AutoencoderKLWan

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            vae = AutoencoderKLWan(**(TINY_VAE if kind == "tiny" else {})).eval()
    finally:
        torch.set_default_dtype(previous)
    c = model.config
    sf_s, sf_t = vae.config.scale_factor_spatial, vae.config.scale_factor_temporal
    t, h, w = (c.num_latent_frames - 1) * sf_t + 1, c.latent_height * sf_s, c.latent_width * sf_s
    res = {"kind": kind, "dtype": str(dtype), "frames": t, "height": h, "width_per_modality": w}

    def timed(fn):
        reset_peak(device)
        sync(device)
        t0 = time.perf_counter()
        out = fn()
        sync(device)
        return out, time.perf_counter() - t0, peak_gib(device)

    video = torch.rand(1, 3, t, h, 2 * w, device=device, dtype=dtype) * 2 - 1
    _, res["encode_condition_s"], res["encode_condition_peak_gib"] = timed(lambda: vae.encode(video).latent_dist.mode())
    del video
    robot = torch.rand(1, 3, t, h, w, device=device, dtype=dtype) * 2 - 1
    _, s, res["encode_robot_peak_gib"] = timed(lambda: vae.encode(robot).latent_dist.mode())
    res["encode_robot_s_each"] = s
    res["robot_videos"] = 2 if variant == "full" else 1
    del robot
    z = torch.randn(1, 16, c.num_latent_frames, c.latent_height, 2 * c.latent_width, device=device, dtype=dtype)
    _, res["decode_s"], res["decode_peak_gib"] = timed(lambda: vae.decode(z).sample)
    res["vae_total_s"] = res["encode_condition_s"] + res["robot_videos"] * s + res["decode_s"]
    del vae
    return res


def main() -> int:
    args = parse_args()
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    config = dict(TINY) if args.tiny else {}
    config["variant"] = args.variant
    if args.layers is not None:
        config["num_layers"] = args.layers
    num_image_tokens = 17 if args.tiny else 257
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    import diffusers

    meta = {
        "script": "bench_transformer_gpu.py", "commit": git_commit(), "argv": sys.argv[1:],
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__, "diffusers": diffusers.__version__, "python": platform.python_version(),
        "dtype": str(dtype), "attn_backend": args.attn_backend, "compile": args.compile,
    }
    rec = Recorder(meta)

    t0 = time.perf_counter()
    model = build_model(config, device, dtype)
    c = model.config
    n_params = sum(p.numel() for p in model.parameters())
    tokens = model.latent_shape[1] // c.patch_size[0] * (model.latent_shape[2] // c.patch_size[1]) * (
        model.latent_shape[3] // c.patch_size[2])
    rec.add("model", {"params": n_params, "layers": c.num_layers, "inner_dim": c.num_attention_heads *
                      c.attention_head_dim, "tokens": tokens, "robot_tokens": model.num_robot_tokens,
                      "latent_shape": list(model.latent_shape), "build_s": time.perf_counter() - t0,
                      "weights_gib": peak_gib(device)})
    if args.attn_backend != "native":
        model.set_attention_backend(args.attn_backend)
    if args.compile == "blocks":
        model.compile_repeated_blocks(fullgraph=True)
    elif args.compile == "full":
        model = torch.compile(model)

    flops1 = flops_per_forward(c, 1, num_image_tokens)
    rows = []
    for name, batch in (("cond (batch 1)", 1), ("cond+uncond (batch 2)", 2)):
        try:
            r = time_pass(model, make_inputs(model, batch, device, dtype, num_image_tokens), device, args.passes,
                          args.warmup)
            r["tflops_per_s"] = flops1 * batch / r["s_per_pass"] / 1e12
            r["flops"] = flops1 * batch
        except torch.cuda.OutOfMemoryError as exc:  # keep going: report what fits
            r = {"error": f"OOM: {exc}".splitlines()[0]}
            torch.cuda.empty_cache()
        rec.add(name, r)
        rows.append((name, r))

    if not args.skip_rollout:
        try:
            r = rollout(model, args.steps, args.guidance, device, dtype, num_image_tokens)
            r["tflops_per_s"] = 2 * flops1 * args.steps / r["total_s"] / 1e12
        except torch.cuda.OutOfMemoryError as exc:
            r = {"error": f"OOM: {exc}".splitlines()[0]}
            torch.cuda.empty_cache()
        rec.add(f"rollout {args.steps} steps, CFG batched", r)
        rows.append((f"rollout ({args.steps} steps, CFG)", r))

    if args.vae != "none":
        try:
            r = bench_vae(args.vae, model, device, getattr(torch, args.vae_dtype), args.variant)
        except Exception as exc:  # noqa: BLE001 - report VAE failures (e.g. OOM) without losing the table
            traceback.print_exc()
            r = {"error": f"{type(exc).__name__}: {exc}".splitlines()[0]}
        rec.add("vae", r)

    # Results table
    print()
    print(f"K4D transformer benchmark  device={meta['device']}  commit={meta['commit']}  torch={meta['torch']}  "
          f"diffusers={meta['diffusers']}  dtype={dtype}  attn={args.attn_backend}  compile={args.compile}")
    print(f"model: {n_params / 1e9:.2f} B params, {c.num_layers} layers, {tokens} tokens + "
          f"{model.num_robot_tokens} robot + {num_image_tokens} image tokens; "
          f"analytic {flops1:.3e} FLOP per batch-1 pass")
    print(f"{'measurement':<30} {'seconds':>10} {'TFLOP/s':>10} {'peak GiB':>10}")
    for name, r in rows:
        if "error" in r:
            print(f"{name:<30} {r['error']}")
            continue
        sec = r.get("s_per_pass", r.get("total_s"))
        peak = "-" if r.get("peak_gib") is None else f"{r['peak_gib']:.2f}"
        print(f"{name:<30} {sec:>10.3f} {r['tflops_per_s']:>10.4g} {peak:>10}")
    if not args.skip_rollout and "error" not in rows[-1][1]:
        print(f"{'  per step':<30} {rows[-1][1]['s_per_step']:>10.3f}")
    if args.vae != "none":
        v = rec.data["results"]["vae"]
        if "error" in v:
            print(f"{'vae':<30} {v['error']}")
        else:
            for key in ("encode_condition_s", "encode_robot_s_each", "decode_s", "vae_total_s"):
                print(f"{'vae ' + key:<30} {v[key]:>10.3f}")
    if rec.path is not None:
        print(f"JSON: {rec.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

# Copyright 2026 k4d developers. Apache-2.0.
"""Quality benchmark of a K4D checkpoint on held-out episodes (wraps ``k4d_worldmodel.evaluate``).

    .venv/bin/python k4d_worldmodel/benchmarks/bench_quality.py --checkpoint RUN/pipeline --data /tmp/k4d_heldout \\
        --split all --out /tmp/k4d_bench --steps 20
    .venv/bin/python k4d_worldmodel/benchmarks/bench_quality.py --tiny --out /tmp/k4d_bench   # CPU smoke test

Prints one table (device and commit included): PSNR, SSIM, Chamfer L1/L2, F-score@0.01, object error per method
(k4d, no_robot, copy_first) and the policy-success comparison; writes the full report to ``--out``.
Not collected by pytest.
"""
from __future__ import annotations

import argparse
import platform
import sys
import tempfile


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="K4DPipeline folder or released checkpoint folder")
    p.add_argument("--base-model", default="", help="Wan2.1-I2V base folder (released layout)")
    p.add_argument("--data", help="held-out episodes (k4d *.npz or Kinema4D layout)")
    p.add_argument("--split", default="heldout", choices=("train", "heldout", "all"))
    p.add_argument("--out", required=True, help="report folder")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--guidance", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--max-episodes", type=int, default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--tiny", action="store_true", help="tiny random model on synthetic episodes (smoke test)")
    args = p.parse_args(argv)

    import torch

    from k4d_worldmodel.evaluate import evaluate, print_summary

    pipe = None
    if args.tiny:
        from k4d_worldmodel.tiny import build_tiny_pipeline
        from k4d_worldmodel.training.synthetic import write_synthetic_episodes

        pipe = build_tiny_pipeline("pmcond")
        args.checkpoint = "tiny-random"
        args.data = tempfile.mkdtemp(prefix="k4d_bench_quality_")
        write_synthetic_episodes(args.data, episodes=4, num_frames=9, height=32, width=48)
        args.split, args.steps = "all", min(args.steps, 2)
    elif not (args.checkpoint and args.data):
        p.error("--checkpoint and --data are required (or --tiny)")
    result = evaluate(args.checkpoint, args.data, args.out, split=args.split, steps=args.steps,
                      guidance=args.guidance, seed=args.seed, max_episodes=args.max_episodes,
                      base_model_dir=args.base_model, device=args.device, pipe=pipe)
    h = result["header"]
    dev = torch.cuda.get_device_name() if torch.cuda.is_available() and "cuda" in h["device"] else platform.processor()
    print(f"bench_quality  device {h['device']} ({dev or 'cpu'})  commit {h['commit']}  torch {torch.__version__}  "
          f"{h['episodes']} episodes  {h['frames']} x {h['size']}  steps {h['steps']}  guidance {h['guidance']}")
    print_summary(result)
    print(f"report: {args.out}/report.md, {args.out}/report.html", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

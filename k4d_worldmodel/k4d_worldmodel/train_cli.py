# Copyright 2026 k4d developers. Apache-2.0.
"""``k4d train``, ``k4d train-vae`` and ``k4d eval``: train / fine-tune the world model and measure its quality.

    k4d train --data /tmp/k4d_ds --config default --out /tmp/k4d_run [--resume] [--max-steps N] [--time-budget-s S]
    k4d train --data /tmp/k4d_ds --val-data /tmp/k4d_heldout --config default --out /tmp/k4d_run  # + validation loss
    # ... and the model at its lowest one in /tmp/k4d_run/pipeline_best (--keep-best-val change|all|off)
    k4d train --data /tmp/k4d_new --config lora --base-checkpoint /tmp/k4d_run/pipeline --out /tmp/k4d_ft
    k4d train-vae --data /tmp/k4d_ds --config default --out /tmp/k4d_vae
    k4d eval --checkpoint /tmp/k4d_run/pipeline --data /tmp/k4d_heldout --split all --out /tmp/k4d_run/eval

Several GPUs: ``accelerate launch -m k4d_worldmodel.training.train`` takes the same arguments as ``k4d train``.
"""
from __future__ import annotations

import argparse
import sys


def _run_train(args: argparse.Namespace) -> int:
    from .training.train import run_from_args

    return run_from_args(args)


def _run_train_vae(args: argparse.Namespace) -> int:
    from .training.train import run_from_args

    args.vae_only = True
    return run_from_args(args)


def _run_eval(args: argparse.Namespace) -> int:
    from .evaluate import DEFAULT_METHODS, evaluate, print_summary

    methods = [m.strip() for m in args.methods.split(",") if m.strip()] or list(DEFAULT_METHODS)
    result = evaluate(args.checkpoint, args.data, args.out, split=args.split, heldout_fraction=args.heldout_fraction,
                      split_seed=args.split_seed, steps=args.steps, guidance=args.guidance, seed=args.seed,
                      max_episodes=args.max_episodes, methods=methods, videos=args.videos,
                      base_model_dir=args.base_model, variant=args.variant, device=args.device,
                      progress=not args.no_progress, emb_checkpoint=args.emb_checkpoint, resume=args.resume,
                      save_rollouts=args.save_rollouts, register=not args.no_register,
                      complete_unreachable=not args.no_complete_unreachable,
                      imagined_upright=args.imagined_upright, vae_autocast=args.vae_autocast,
                      flying_rel=args.flying_rel or None, flying_mode=args.flying_mode,
                      imagined_min_points=args.imagined_min_points)
    print_summary(result)
    print(f"k4d eval: report in {args.out}/report.md and report.html", file=sys.stderr)
    return 0


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register ``train``, ``train-vae`` and ``eval`` on the ``k4d`` command line."""
    from .training.train import add_train_arguments

    p = subparsers.add_parser("train", help="train or LoRA-fine-tune the K4D world model (accelerate)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_train_arguments(p)
    p.set_defaults(func=_run_train)

    p = subparsers.add_parser("train-vae", help="train only the small Wan VAE of a train config",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_train_arguments(p, validation=False)
    p.set_defaults(func=_run_train_vae)

    p = subparsers.add_parser("eval", help="quality metrics + report of a K4D checkpoint on held-out episodes",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="K4DPipeline folder, or released checkpoint folder")
    p.add_argument("--base-model", default="", help="Wan2.1-I2V base folder (released layout)")
    p.add_argument("--variant", default=None, choices=("pmcond", "full", "jointemb"),
                   help="default: from the checkpoint")
    p.add_argument("--data", required=True, help="episode folder (k4d *.npz) or Kinema4D layout folder")
    p.add_argument("--split", default="heldout", choices=("train", "heldout", "all"),
                   help="which part of --data (default heldout; use all for a separately generated folder)")
    p.add_argument("--heldout-fraction", type=float, default=0.2, help="split fraction (default 0.2)")
    p.add_argument("--split-seed", type=int, default=0, help="split seed (default 0)")
    p.add_argument("--out", required=True, help="report folder")
    p.add_argument("--steps", type=int, default=20, help="denoising steps (default 20)")
    p.add_argument("--guidance", type=float, default=1.0, help="CFG scale; <= 1 = conditional only (default 1)")
    p.add_argument("--seed", type=int, default=42, help="noise seed (default 42)")
    p.add_argument("--max-episodes", type=int, default=None, help="evaluate at most N episodes")
    p.add_argument("--methods", default="", help="comma list of k4d, k4d_static, no_robot, copy_first, vae_recon "
                   "(default: the first four)")
    p.add_argument("--emb-checkpoint", default=None,
                   help="a 'jointemb' model folder: adds method emb, the joint-vector embedding ablation")
    p.add_argument("--videos", type=int, default=4, help="side-by-side MP4s to write (default 4)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    p.add_argument("--resume", action="store_true",
                   help="go on from --out/episodes.jsonl: keep the episodes it holds, evaluate the rest (the log must "
                        "be of this same run)")
    p.add_argument("--save-rollouts", action="store_true",
                   help="also keep each episode's outputs (every method but copy_first) in --out/rollouts/*.npz")
    p.add_argument("--no-register", action="store_true",
                   help="score the lifted frames as they are, without registering them to frame 0's measured "
                        "pointmap on the still scene (WorldModelConfig.metric_register; the earlier reports)")
    p.add_argument("--no-complete-unreachable", action="store_true",
                   help="sample a z_dim-32 model as before the completion of the output directions its transformer "
                        "cannot reach (WorldModelConfig.complete_unreachable; the reports before it existed)")
    p.add_argument("--imagined-upright", action="store_true",
                   help="apply the success predicate's standing check (a pick-place cylinder's points above the "
                        "height a toppled one reaches) to the imagined pointmaps too, not only to the ground truth")
    p.add_argument("--vae-autocast", choices=("auto", "bfloat16", "off"), default="auto",
                   help="the VAE's encode/decode under bfloat16 autocast (auto: on CPUs with native bfloat16, as "
                        "WorldModelConfig.vae_autocast), or in float32 (off); the run header records the one used, "
                        "since the answers of two machines differ with it")
    p.add_argument("--flying-rel", type=float, default=0.12,
                   help="composited methods (k4d_static, k4d_swept): leave the model's points on a depth ramp NaN "
                        "(composite.flying_points, a range jump of more than this fraction to a 3x3 neighbour; "
                        "WorldModelConfig.compose_flying_rel, default 0.12); 0 = off, as runs before the thirtieth "
                        "session. Recorded in the run header")
    p.add_argument("--imagined-min-points", type=int, default=None,
                   help="the zone predicate's threshold on the methods' outputs (default: the camera's, 3 at 96 x 64, "
                        "12 at 192 x 128, which the ground truth keeps); choose it on other episodes with "
                        "benchmarks/calibrate_zone_threshold.py. Recorded in the run header")
    p.add_argument("--flying-mode", choices=("between", "either"), default="either",
                   help="with --flying-rel: a jump on either side of the point (default) or on both (between, "
                        "keeps both sides of a sharp edge)")
    p.set_defaults(func=_run_eval)


def main(argv: list[str] | None = None) -> int:
    """``python -m k4d_worldmodel.train_cli {train,train-vae,eval} ...`` without the rest of the k4d CLI."""
    parser = argparse.ArgumentParser(prog="python -m k4d_worldmodel.train_cli", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_commands(parser.add_subparsers(dest="command", metavar="COMMAND", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())

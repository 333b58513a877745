"""``k4d dataset ...`` subcommands: generate simulated episodes, export them to the Kinema4D layout.

    .venv/bin/k4d dataset generate --episodes 8 --seed 0 --out /tmp/k4d_ds --workers 2 --scenario medium
    .venv/bin/k4d dataset export-kinema4d /tmp/k4d_ds /tmp/k4d_kinema4d

The lead wires ``add_commands`` into the ``k4d`` entry point (k4d_bringup/cli.py). Heavy imports happen
inside the command functions so ``k4d --help`` stays fast.
"""
from __future__ import annotations

import argparse
import json


def _floats(text: str) -> list[float]:
    try:
        vals = [float(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--sigmas must be comma-separated numbers, got {text!r}") from exc
    if not vals:
        raise argparse.ArgumentTypeError("--sigmas needs at least one value")
    return vals


def _cmd_generate(args) -> int:
    from .dataset.generate import generate

    extra = {}
    if args.width is not None:
        extra["width"] = args.width
    if args.height is not None:
        extra["height"] = args.height
    if args.fy is not None:
        extra["fy"] = args.fy
    if args.sim_config:
        extra["sim_config"] = args.sim_config
    metas = generate(args.episodes, args.seed, args.out, workers=args.workers, num_frames=args.frames,
                     scenario=args.scenario, sigmas=args.sigmas, tasks=args.tasks.split(","),
                     progress=not args.quiet, overwrite=args.overwrite, **extra)
    from .dataset.generate import outcome_stats

    stats = outcome_stats(metas)["per_sigma"]
    print(f"wrote {len(metas)} episodes to {args.out}")
    for sigma, s in stats.items():
        print(f"  sigma {sigma:>4}: {s['episodes']:3d} episodes  success {s['success']:3d}  "
              f"near_miss {s['near_miss']:3d}  failure {s['failure']:3d}")
    return 0


def _cmd_export(args) -> int:
    from .dataset.export import export_kinema4d

    names = export_kinema4d(args.src, args.out, fps=args.fps, progress=not args.quiet)
    print(json.dumps({"exported": len(names), "out": str(args.out)}))
    return 0


def add_commands(subparsers) -> None:
    """Register ``dataset generate`` and ``dataset export-kinema4d`` on the k4d subparsers."""
    p = subparsers.add_parser("dataset", help="simulated YAM datasets (generate, export to Kinema4D layout)",
                              description="Generate simulated YAM episodes and export them for Kinema4D training.")
    sub = p.add_subparsers(dest="dataset_command", metavar="SUBCOMMAND")
    g = sub.add_parser("generate", help="simulate and record episodes (one .npz + .json each)")
    g.add_argument("--episodes", type=int, required=True, help="number of episodes")
    g.add_argument("--seed", type=int, required=True, help="dataset seed (episode i depends on seed and i only)")
    g.add_argument("--out", required=True, help="output folder")
    g.add_argument("--workers", type=int, default=1, help="worker processes (spawn); default 1")
    g.add_argument("--frames", type=int, default=49, help="frames per episode (default 49, Kinema4D clips)")
    g.add_argument("--scenario", choices=("easy", "medium", "hard"), default="easy",
                   help="distractor density (Kinema4D Table V)")
    g.add_argument("--sigmas", type=_floats, default=[0.0, 0.5, 0.8, 1.2],
                   help="failure-injection noise levels, cycled over episodes (default 0,0.5,0.8,1.2)")
    g.add_argument("--tasks", default="pick_place,push", help="tasks, cycled (default pick_place,push)")
    g.add_argument("--width", type=int, default=None, help="image width override (default from sim config: 720)")
    g.add_argument("--height", type=int, default=None, help="image height override (default 480)")
    g.add_argument("--fy", type=float, default=None, help="focal length override in pixels")
    g.add_argument("--sim-config", default="", help="sim YAML (default: built-in defaults)")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    g.add_argument("--overwrite", action="store_true",
                   help="replace a dataset already in --out (refused otherwise: its files would mix with the new)")
    g.set_defaults(func=_cmd_generate)
    e = sub.add_parser("export-kinema4d", help="write first_frames/, videos/, pointmap/, mask_videos/, mask_pointmap/")
    e.add_argument("src", help="folder written by 'k4d dataset generate'")
    e.add_argument("out", help="output folder (Kinema4D data_dir layout)")
    e.add_argument("--fps", type=int, default=24, help="video frame rate (released pipeline: 24)")
    e.add_argument("--quiet", action="store_true", help="no progress bar")
    e.set_defaults(func=_cmd_export)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])

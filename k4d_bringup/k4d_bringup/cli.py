"""The ``k4d`` command line: one entry point, subcommands contributed by each package.

    .venv/bin/k4d --help

Each package exposes ``add_commands(subparsers)`` in its ``cli`` module; a subcommand sets
``func(args) -> int``. Heavy imports happen inside the subcommand, so ``k4d --help`` is fast.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# Modules that contribute subcommands, in help order. A module that is missing (e.g. a package
# not installed) is skipped with a note in --help rather than breaking the whole CLI.
_COMMAND_MODULES = (
    "k4d_kinematics.cli",
    "k4d_bringup.sim_cli",
    "k4d_worldmodel.cli",
    "k4d_worldmodel.train_cli",
    "k4d_bringup.shadow_cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="k4d",
        description="k4d: Kinema4D world model beside a ROS 2 robot arm (I2RT YAM).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    missing = []
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name and name.startswith(exc.name):
                missing.append(name)
                continue
            raise
        module.add_commands(sub)
    if missing:
        parser.epilog = "not available: " + ", ".join(missing)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0 if args.command is None else 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except (ValueError, FileNotFoundError, KeyError) as exc:
        # Core code raises errors that name the argument and the value; show them without a traceback.
        print(f"k4d {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""The original scripts' checkpoint manager, kept as a thin wrapper over `useg checkpoints` and `useg resume`.

    checkpoint_manager.py --list | --latest | --resume [PATH] | --clean --keep N [--dry-run] [--run-dir DIR] [--json]

Extra arguments after --resume go to `useg resume` (e.g. --epochs 20).
"""

from __future__ import annotations

import argparse
import sys


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(prog="checkpoint_manager.py", description=__doc__.splitlines()[0])
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--list", action="store_true", help="table of every checkpoint")
    action.add_argument("--latest", action="store_true", help="details of the latest checkpoint")
    action.add_argument("--resume", nargs="?", const="latest", metavar="PATH",
                        help="resume training from PATH (latest, best, an epoch number or a file; default latest)")
    action.add_argument("--clean", action="store_true", help="keep the N newest periodic checkpoints")
    parser.add_argument("--keep", type=int, metavar="N", help="with --clean: periodic checkpoints to keep")
    parser.add_argument("--dry-run", action="store_true", help="with --clean: show what would go, remove nothing")
    parser.add_argument("--run-dir", default=".", help="run folder (default .)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    args, extra = parser.parse_known_args(argv)
    if args.clean and args.keep is None:
        parser.error("--clean needs --keep N")
    if extra and args.resume is None:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args, extra


def useg_arguments(args: argparse.Namespace, extra: list[str]) -> list[str]:
    """The `useg` command line that does what the original script's flags asked."""
    run_dir = ["--run-dir", args.run_dir]
    json_flag = ["--json"] if args.json else []
    if args.resume is not None:
        return ["resume", args.resume, *run_dir, *extra]
    if args.clean:
        dry_run = ["--dry-run"] if args.dry_run else []
        return ["checkpoints", "clean", "--keep", str(args.keep), *run_dir, *json_flag, *dry_run]
    return ["checkpoints", "list" if args.list else "latest", *run_dir, *json_flag]


def main(argv: list[str] | None = None) -> int:
    args, extra = parse(sys.argv[1:] if argv is None else argv)
    try:
        from useg.cli import main as useg_main
    except ImportError:
        print("error: useg is not installed for this Python; run `make install` and use .venv/bin/python", file=sys.stderr)
        return 2
    return useg_main(useg_arguments(args, extra))


if __name__ == "__main__":
    raise SystemExit(main())

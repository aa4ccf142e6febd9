"""`useg checkpoints ...`, `useg history` and `useg menu`: thin front ends over useg.cli.checkpoint_actions and useg.checkpoint."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from useg.cli import checkpoint_actions as manage
from useg.checkpoint import LATEST_NAME
from useg.cli import display
from useg.config import PRECISIONS
from useg.errors import UsegError
from useg.run_folder import checkpoints_folder, replaced_folders


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Register `checkpoints`, `history` and `menu`."""
    checkpoints = commands.add_parser("checkpoints", help="list, check, clean and export a run's checkpoints")
    actions = checkpoints.add_subparsers(dest="action", required=True, metavar="ACTION")
    specs = {
        "list": ("table of every checkpoint (no tensors loaded)", cmd_list, []),
        "latest": ("details of the latest checkpoint and how to resume", cmd_latest, []),
        "info": ("details of one checkpoint or export file", cmd_info,
                 [("path", {"help": "the checkpoint (.pt) or export (.safetensors or .pt) file"})]),
        "verify": ("check one file or all: exit 0 only if all are valid", cmd_verify,
                   [("path", {"nargs": "?", "help": "one checkpoint file (default: every checkpoint of --run-dir)"})]),
        "clean": ("keep the N newest periodic checkpoints (latest and best always stay); --replaced removes "
                  "the folders --overwrite set aside", cmd_clean,
                  [("--keep", {"type": int, "metavar": "N", "help": "periodic checkpoints to keep (at least 1)"}),
                   ("--replaced", {"action": "store_true",
                                   "help": "remove the checkpoints_replaced_<time>/ folders (old runs and their "
                                           "pictures) that --overwrite set aside; checkpoints/ is never touched"}),
                   ("--dry-run", {"action": "store_true", "help": "show what would go, remove nothing"})]),
        "export": ("write the shareable model file (.safetensors or .pt): the weights and what applying them "
                   "needs, plus OUT.json", cmd_export,
                   [("path", {"help": "the checkpoint to export (any .pt the run wrote)"}),
                    ("out", {"help": "output file ending in .safetensors or .pt (its checksum and metadata also "
                                     "go to OUT.json)"}),
                    ("--dtype", {"choices": PRECISIONS, "default": "fp32",
                                 "help": "dtype of the exported weights (default fp32, as checkpoints hold them)"})]),
    }
    for name, (help_text, handler, arguments) in specs.items():
        parser = actions.add_parser(name, help=help_text, description=help_text)
        add_common(parser)
        for flag, options in arguments:
            parser.add_argument(flag, **options)
        parser.set_defaults(handler=handler)
    history = commands.add_parser("history", help="table of epochs and training_curves.png")
    add_common(history)
    history.set_defaults(handler=cmd_history)
    menu = commands.add_parser("menu", help="interactive training manager")
    menu.add_argument("--run-dir", default=".", help="run folder (default .)")
    menu.set_defaults(handler=cmd_menu)


def add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run-dir", default=".", help="run folder (default .)")
    parser.add_argument("--json", action="store_true", help="machine-readable output (schema in CHECKPOINT_GUIDE.md)")


def cmd_list(args) -> int:
    infos = manage.run_checkpoints(args.run_dir)
    if args.json:
        points = manage.points_by_path(infos)
        display.print_json([manage.record(info, point=points.get(info.path)) for info in infos])
    else:
        display.console().print(display.list_table(infos, f"Checkpoints in {checkpoints_folder(args.run_dir)}"))
        for line in display.replaced_lines(replaced_folders(args.run_dir), args.run_dir):
            print(line)
    return 0


def show_details(details: dict, as_json: bool) -> int:
    if as_json:
        display.print_json(details)
    else:
        print("\n".join(display.info_lines(details)))
    return 0


def cmd_latest(args) -> int:
    manage.run_checkpoints(args.run_dir)  # a clear error when the run has none
    latest = manage.checkpoints_dir(args.run_dir) / LATEST_NAME
    if not latest.is_file():
        raise UsegError(f"{latest} is missing; see what the run holds with: useg checkpoints list --run-dir {shlex.quote(str(args.run_dir))}")
    return show_details(manage.describe(latest, args.run_dir), args.json)


def cmd_info(args) -> int:
    return show_details(manage.describe(args.path), args.json)


def cmd_verify(args) -> int:
    rows = manage.verify_records(args.run_dir, args.path)
    bad = sum(not row["valid"] for row in rows)
    if args.json:
        display.print_json(rows)
        return 1 if bad else 0
    for row in rows:
        note = f" ({row['reason']})" if row["reason"] else ""  # e.g. an export checked by the checksum it carries
        print(f"ok   {row['path']}{note}" if row["valid"] else f"BAD  {row['path']}: {row['status']}: {row['reason']}")
    print(f"{len(rows) - bad} valid, {bad} invalid")
    return 1 if bad else 0


def cmd_clean(args) -> int:
    if args.keep is None and not args.replaced:
        raise UsegError("checkpoints clean needs --keep N (periodic checkpoints to keep) or --replaced "
                        "(remove the folders --overwrite set aside), or both")
    report: dict = {}
    if args.keep is not None:
        report = clean_periodic(args)
    if args.replaced:
        folders = manage.clean_replaced(args.run_dir, args.dry_run)
        report.update(dry_run=args.dry_run, replaced=[folder.to_dict() for folder in folders],
                      replaced_freed_bytes=sum(folder.size_bytes for folder in folders))
        if not args.json:
            for line in display.clean_replaced_lines(folders, args.dry_run, args.run_dir):
                print(line)
    if args.json:
        display.print_json(report)
    return 0


def clean_periodic(args) -> dict:
    """`clean --keep N`: print what goes (unless --json) and return the JSON report."""
    plan, freed = manage.clean_with_plan(args.run_dir, args.keep, args.dry_run)
    removed = plan.remove
    if not args.json:
        verb = "would remove" if args.dry_run else "removed"
        for info in removed:
            print(f"{verb} {info.path}")
        for line in display.clean_notes(plan):
            print(line)
        print(f"{verb} {len(removed)} checkpoint(s), {'would free' if args.dry_run else 'freed'} "
              f"{display.format_size(freed)}")
    return {"dry_run": args.dry_run, "keep": args.keep,
            "removed": [manage.record(info) for info in removed], "freed_bytes": freed,
            "kept": [info.name for info in plan.keep],
            "left_invalid": [{"name": info.name, "reason": reason} for info, reason in plan.invalid],
            "resume_point": plan.newest.path.name if plan.newest else None,
            "fallback": plan.fallback.path.name if plan.fallback else None}


def cmd_export(args) -> int:
    result = manage.export_weights(args.path, args.out, args.dtype)
    if args.json:
        display.print_json(result)
    else:
        print(f"wrote {result['path']} ({result['parameters']:,} {result['dtype']} parameters) and "
              f"{result['metadata_path']}")
        print(f"{result['path']} is the file to share: useg predict, useg evaluate --data and --pretrained take it "
              f"(image size {result['image_size']}, support size {result['support_size']}, classes "
              f"{', '.join(result['classes']) or '-'})")
    return 0


def cmd_history(args) -> int:
    from useg.training.history import best_metric, best_value, epoch_rows, history_table, plot_curves

    history = manage.run_history(args.run_dir)
    curves_path = Path(args.run_dir) / "training_curves.png"
    if args.json:  # the JSON names the curves file, so it is printed only once that file exists
        curves = plot_curves(history, curves_path)
        # A run whose best is chosen by another metric (--best-metric) says which, and its value; its
        # best_val_dice stays null (the history's meaning, see training.history.set_best).
        chosen_by = {} if best_metric(history) == "val_dice" else {
            "best_metric": best_metric(history), "best_value": best_value(history)}
        display.print_json({"best_val_dice": history["best_val_dice"], "best_epoch": history["best_epoch"],
                           **chosen_by, "resumed_at": history.get("resumed_at", []), "epochs": epoch_rows(history),
                           "curves": str(curves)})
    else:  # the table first: a disk too full for the picture still shows the numbers
        display.console().print(history_table(history))
        print(f"curves saved to {plot_curves(history, curves_path)}")
    return 0


def cmd_menu(args) -> int:
    from useg.cli.menu import run_menu

    return run_menu(args.run_dir)

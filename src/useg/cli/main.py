"""The `useg` command line: a thin front end over the library."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from useg.config import BEST_METRICS, LOSSES, PRECISIONS, RESIZE_MODES, TRACKERS, TrainConfig
from useg.errors import UsegError
from useg.cli.display import flag_text



def default(key: str) -> str:
    """`default 12`: TrainConfig's default for `key` as the flag takes it, so --help cannot drift from it."""
    return "default " + flag_text(getattr(TrainConfig(), key))


TRAIN_FLAGS: list[tuple[str, dict[str, Any]]] = [
    ("--data", dict(action="append", metavar="FOLDER",
                    help="data folder (Ovatus, images/+masks/, or MMOTU OTU_2d); default: embedded synthetic set. "
                         "Repeat to train one model over several datasets: each is split by patient on its own and "
                         "tasks draw a dataset uniformly (weights and per-dataset options in the config file's "
                         "data list); the data flags below apply to every dataset")),
    ("--held-out-data", dict(action="append", metavar="FOLDER",
                             help="a dataset never trained on, scored in context at every validation (its val "
                                  "patients as targets, its train patients as supports): held_out_dice beside "
                                  "val_dice; repeatable")),
    ("--best-metric", dict(choices=BEST_METRICS,
                           help=f"what makes an epoch best_model.pt ({default('best_metric')}; held_out_dice needs "
                                "--held-out-data)")),
    ("--annotations", dict(help="the Ovatus mapping_normalized4.jsonl when it is not beside US_map4/")),
    ("--label", dict(help="label-map masks: the mask value(s) to train, e.g. 255 or 128,255 (default: every value)")),
    ("--classes", dict(help="comma-separated class names to train on (default: all)")),
    ("--class-names", dict(help="names of label-map values, e.g. 128=cytoplasm,255=nucleus (or a classes.json)")),
    ("--patient-pattern", dict(help="regex on image paths whose first group is the patient (default: subfolder)")),
    ("--keep-empty", dict(type=float,
                          help=f"share of empty-mask images kept as negative tasks ({default('keep_empty')})")),
    ("--slice-axis", dict(type=int, help="axis along which 3-D volumes are cut into slices "
                                         f"({default('slice_axis')}, the last)")),
    ("--config", dict(help="YAML or TOML file with the same keys as these flags")),
    ("--epochs", dict(type=int, help=f"total epochs ({default('epochs')})")),
    ("--batch-size", dict(type=int, help=f"targets per optimisation step ({default('batch_size')})")),
    ("--support-size", dict(type=int, help=f"support images per target ({default('support_size')})")),
    ("--image-size", dict(type=int, help=f"square input size in pixels ({default('image_size')})")),
    ("--resize", dict(choices=RESIZE_MODES,
                      help="how images become that square: squash stretches them (aspect ratio not kept), pad "
                           "scales the longer side to it and fills the rest with 0; predict and evaluate use the "
                           f"run's ({default('resize')})")),
    ("--widths", dict(help=f"channels per level, e.g. 64,64,64,64 (official) ({default('widths')})")),
    ("--lr", dict(type=float, help=f"Adam learning rate ({default('lr')})")),
    ("--loss", dict(choices=LOSSES, help=f"training loss ({default('loss')})")),
    ("--seed", dict(type=int, help=f"random seed; 0 is a real seed ({default('seed')})")),
    ("--samples-per-epoch", dict(type=int, help=f"training tasks per epoch ({default('samples_per_epoch')})")),
    ("--split-file", dict(help="JSON {train: [...], val: [...], test: [...]} overriding the seeded split; entries are "
                          "anonymous ids or file names relative to the data folder; a missing test list is carved "
                          "from train by patient")),
    ("--task-augmentation", dict(choices=("on", "off", "paper"),
                                 help="change each task as a whole, target and supports alike, so that the model "
                                      "must read its supports to know what to segment: on (default) puts beside "
                                      "some tasks a copy with inverted labels, and flips and varies brightness and "
                                      "noise; paper adds the UniverSeg paper's edges, intensity inversion, warps, "
                                      "blur and sharpness (for long runs); probabilities in the config file")),
    ("--in-task-augmentation", dict(choices=("on", "off", "paper"),
                                    help="change each image of a task on its own: on (default) varies brightness "
                                         "and noise; paper adds affine and elastic warps, blur and sharpness; "
                                         "probabilities in the config file")),
    ("--synthetic-tasks", dict(type=float, metavar="FRACTION",
                               help="share of training tasks drawn from random synthetic shapes instead of the "
                                    f"data, made from the seed and never written to disk ({default('synthetic_tasks')})")),
    ("--pretrained", dict(help="initialise the weights from a file: the official UniverSeg weights (a plain "
                               "state_dict), a useg checkpoint such as best_model.pt, or a useg export")),
    ("--save-every-steps", dict(type=int, help="also rewrite latest_checkpoint.pt every N steps")),
    ("--save-every-minutes", dict(type=float, help="also rewrite latest_checkpoint.pt every M minutes")),
    ("--save-budget", dict(type=float, metavar="PERCENT",
                           help="the most those mid-epoch saves may cost, as a percent of training time: a due "
                                "save waits until it fits, and the epoch line says how many waited "
                                f"(0: no budget; {default('save_budget')})")),
    ("--vis-every", dict(type=int,
                         help=f"write prediction pictures every N epochs (0: never; {default('vis_every')})")),
    ("--vis-count", dict(type=int, help=f"validation targets pictured each time ({default('vis_count')})")),

    ("--num-threads", dict(type=int, help="CPU threads for torch (default: on the CPU, the count that ran a trial "
                                          "step fastest here; on a GPU or under torchrun, the usable cores minus "
                                          "one and minus the data workers; a resume keeps the count the run "
                                          "computed with)")),
    ("--device", dict(help="cpu, cuda or cuda:N (default: CUDA when present); for this session only")),
    ("--precision", dict(choices=PRECISIONS,
                         help="autocast dtype for forward and loss; weights stay fp32 (default: fp32 on the CPU, "
                              "bf16 on CUDA, fp16 where bf16 is unsupported)")),
    ("--data-workers", dict(type=int, help="threads building batches ahead of training (0: on the training "
                                           "thread; default: from the usable cores)")),
]


def add_train_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run-dir",
                        help=f"run folder with checkpoints/, logs/, visualizations_training/ ({default('run_dir')})")
    for flag, options in TRAIN_FLAGS:
        parser.add_argument(flag, **options)
    parser.add_argument("--quiet", action=argparse.BooleanOptionalAction, default=None,
                        help="epoch summaries only (for logs); for this session only: a resume does not inherit it")
    parser.add_argument("--tensorboard", action=argparse.BooleanOptionalAction, default=None,
                        help="also log to TensorBoard (the same as --tracker tensorboard; kept when the run is resumed)")
    parser.add_argument("--tracker", "--trackers", dest="trackers", action="extend", type=tracker_list,
                        metavar="{" + ",".join(TRACKERS) + "}",
                        help="also log to this experiment tracker; repeat for several (each an optional package: "
                             "pip install 'useg[mlflow]'). Local: MLflow in RUN/logs/mlflow.db unless "
                             "MLFLOW_TRACKING_URI is set, W&B offline unless WANDB_MODE is set; a resume continues "
                             "the same tracked run (kept when the run is resumed)")
    parser.add_argument("--tracker-upload-best", action=argparse.BooleanOptionalAction, default=None,
                        help="also give the trackers best_model.pt itself at the end, not only its path and SHA-256 "
                             f"({default('tracker_upload_best')})")
    parser.add_argument("--deterministic", action=argparse.BooleanOptionalAction, default=None,
                        help=f"deterministic kernels, for bit-identical resume ({default('deterministic')}; "
                             "--no-deterministic trades that for speed on a GPU)")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help=f"torch.compile the model for training steps ({default('compile')}; a resume keeps "
                             "the run's)")


def tracker_list(text: str) -> list[str]:
    """`mlflow` or `mlflow,wandb` (as the menu writes a kept list): tracker names, each checked."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in TRACKERS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown tracker {(unknown or [text])[0]!r}; choose from {', '.join(TRACKERS)}")
    return names


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="useg", description="Train and manage UniverSeg runs.")
    parser.add_argument("--version", action="version", version=f"useg {installed_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    train = commands.add_parser("train", help="train UniverSeg (or resume with --resume)")
    add_train_flags(train)
    train.add_argument("--resume", nargs="?", const="latest", metavar="WHICH",
                       help="latest (default), best, an epoch number, or a checkpoint path")
    train.add_argument("--overwrite", action="store_true", help="set existing checkpoints aside and start afresh")
    resume = commands.add_parser("resume", help="resume training: latest, best, EPOCH or PATH")
    resume.add_argument("which", nargs="?", default="latest", metavar="WHICH",
                        help="latest (default), best, an epoch number (its epoch_NNN file), or a checkpoint path")
    add_train_flags(resume)
    from useg.cli import apply_commands, checkpoint_commands, runs

    checkpoint_commands.add_commands(commands)
    runs.add_commands(commands)
    apply_commands.add_commands(commands)
    return parser


def installed_version() -> str:
    """The version pip installed (package metadata), so that it never disagrees with pyproject.toml."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("useg")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed; run make install)"


def flag_layer(args: argparse.Namespace) -> dict[str, Any]:
    """The config keys given on the command line (None where not given)."""
    from useg.config import config_keys

    return {key: getattr(args, key, None) for key in config_keys()}


def run_train(args: argparse.Namespace) -> int:
    from useg.config import build_config, read_config_file, with_older_values
    from useg.training.signals import TrainingInterrupted, ignore_stop_signals_at_exit
    from useg.run_folder import open_resume_point, resume_config
    from useg.training.loop import train

    ignore_stop_signals_at_exit()  # a Ctrl+C in the interpreter's teardown must not undo the exit code
    resume = args.which if args.command == "resume" else args.resume
    file_layer = read_config_file(args.config) if args.config else {}
    flags = flag_layer(args)
    run_dir = flags["run_dir"] or file_layer.get("run_dir") or "."
    opened = open_resume_point(run_dir, resume) if resume is not None else None  # the one hash of it
    try:
        saved = with_older_values(resume_config(opened, resume)) if opened is not None else {}
        for key in ("quiet", "device"):  # what a session prints and where it computes are chosen per session
            saved.pop(key, None)
        cfg = build_config(saved, file_layer, flags, {"run_dir": run_dir})
        train(cfg, resume=resume, overwrite=getattr(args, "overwrite", False), opened=opened)
    except TrainingInterrupted as stop:
        print(str(stop), file=sys.stderr)
        return stop.exit_code
    finally:
        if opened is not None:
            opened.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `useg` console script."""
    args = build_parser().parse_args(argv)
    if args.command not in ("train", "resume"):
        return run_command(args)
    from useg.compute.distributed import end_group_with_process, end_worker_process, launched_by_torchrun

    if not launched_by_torchrun():
        return run_command(args)
    end_group_with_process()  # the worker ends below, without interpreter teardown: its group goes with it
    end_worker_process(run_command(args))


def run_command(args: argparse.Namespace) -> int:
    """Run the parsed command; a user error becomes one line on stderr and its exit code."""
    try:
        if args.command in ("train", "resume"):
            return run_train(args)
        return args.handler(args)
    except UsegError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except PermissionError as err:
        print(f"error: permission denied: {err.filename}; check that this user may read and write it",
              file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader (e.g. `| head`) left: stop quietly, as shell tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except KeyboardInterrupt:
        print("aborted: every file on disk is whole; resume with --resume latest", file=sys.stderr)
        return 130

"""`useg evaluate` and `useg predict`: apply a trained model (registered into the main parser)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich import box
from rich.console import Console
from rich.table import Table

from useg.checkpoint.atomic import json_text
from useg.errors import ConfigError

CHECKPOINT_HELP = "best (default), latest, an epoch number, or a path (relative ones also in DIR/checkpoints)"


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Register `evaluate` and `predict`."""
    evaluate = commands.add_parser("evaluate", help="Dice, IoU and HD95 of a checkpoint on the val or test split")
    add_common(evaluate)
    evaluate.add_argument("--data", metavar="DIR", help="data folder (default: the one the run trained on)")
    evaluate.add_argument("--annotations", metavar="FILE",
                          help="the Ovatus mapping_normalized4.jsonl when it is not beside US_map4/")
    evaluate.add_argument("--split", choices=["val", "test"], default="test", help="targets to score (default test)")
    evaluate.add_argument("--ensembles", type=int, default=1, metavar="K",
                          help="average the probabilities of K support draws (default 1)")
    evaluate.add_argument("--seed", type=int, metavar="N", help="seed of the support draws (default: the run's seed)")
    evaluate.add_argument("--csv", metavar="PATH", help="per-image CSV to write (default DIR/evaluation_<split>.csv)")
    evaluate.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    evaluate.set_defaults(handler=cmd_evaluate)
    predict = commands.add_parser("predict", help="write mask PNGs for new images, given a folder of supports")
    add_common(predict)
    predict.add_argument("--support", required=True, metavar="DIR",
                         help="folder of images + masks in any layout training accepts")
    predict.add_argument("--images", required=True, nargs="+", metavar="PATH",
                         help="image files and/or folders of images")
    predict.add_argument("--out", required=True, metavar="DIR", help="folder for the masks (created if missing)")
    predict.add_argument("--overlay", action="store_true", help="also write <stem>_overlay.png")
    predict.add_argument("--classes", metavar="A,B",
                         help="comma-separated classes to predict (default: every support class)")
    predict.set_defaults(handler=cmd_predict)


def add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", nargs="?", metavar="CHECKPOINT", help=CHECKPOINT_HELP)
    parser.add_argument("--run-dir", default=".", metavar="DIR", help="run folder (default .)")
    parser.add_argument("--support-size", type=int, metavar="S", help="supports per prediction (default: the run's)")


def cmd_evaluate(args: argparse.Namespace) -> int:
    from useg.evaluate import evaluate, write_csv
    from useg.predict import load_trained

    trained = load_trained(args.run_dir, args.checkpoint)
    result = evaluate(trained, data=args.data, annotations=args.annotations, split=args.split,
                      support_size=args.support_size, ensembles=args.ensembles, seed=args.seed)
    csv_path = args.csv or Path(args.run_dir) / f"evaluation_{args.split}.csv"
    if args.json:  # the JSON names the CSV, so it is printed only once the CSV exists
        csv_path = write_csv(csv_path, result.rows)
        print(json_text({**result.to_dict(), "csv": str(csv_path)}))
    else:  # the table first: a CSV the disk cannot take does not cost the user the scores
        console = Console(highlight=False, width=None if sys.stdout.isatty() else 120)
        console.print(evaluation_table(result))
        csv_path = write_csv(csv_path, result.rows)
        console.print(f"{len(result.rows)} rows written to {csv_path}", markup=False)
    return 0


def evaluation_table(result) -> Table:
    """Per class: rows, Dice/IoU mean ± std and median, HD95 mean and count; then the mean over classes."""
    title = (f"{Path(result.checkpoint).name} (epoch {result.epoch}) on {result.split}: "
             f"S={result.support_size}, ensembles={result.ensembles}, seed={result.seed}")
    table = Table(title=title, box=box.SIMPLE_HEAD)
    for name in ("class", "n", "Dice mean ± std", "Dice median", "IoU mean ± std", "HD95 px mean (n)"):
        table.add_column(name, justify="left" if name == "class" else "right")
    for name, stats in result.per_class.items():
        dice, iou, hd95 = stats["dice"], stats["iou"], stats["hd95_px"]
        table.add_row(name, str(dice["n"]), spread(dice), number(dice["median"]), spread(iou),
                      f"{number(hd95['mean'], 2)} ({hd95['n']})")
    summary = result.to_dict()
    table.add_row("mean over classes", "", number(summary["mean_dice"]), "", number(summary["mean_iou"]),
                  number(summary["mean_hd95_px"], 2), style="bold")
    return table


def number(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def spread(stats: dict) -> str:
    return f"{number(stats['mean'])} ± {number(stats['std'])}"


def cmd_predict(args: argparse.Namespace) -> int:
    from useg.checkpoint.atomic import explain_file_errors
    from useg.predict import check_outputs, input_files, load_supports, load_trained

    trained = load_trained(args.run_dir, args.checkpoint)
    wanted = [name.strip() for name in args.classes.split(",") if name.strip()] if args.classes else None
    sets, multi_class = load_supports(trained, args.support, wanted, args.support_size)
    files = input_files(args.images)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a folder for the masks")
    with explain_file_errors(out, then="run useg predict again"):
        out.mkdir(parents=True, exist_ok=True)
    check_outputs(files, sets, out, multi_class)
    written = predict_all(trained, files, sets, out, multi_class, args.overlay)
    used = ", ".join(f"{s.cls} (S={len(s.images)})" for s in sets)
    print(f"{len(files)} image(s) segmented for {used}: {written} file(s) written to {out}")
    return 0


def predict_all(trained, files, sets, out: Path, multi_class: bool, overlay: bool) -> int:
    """Segment every input, with a progress bar on a terminal; returns the number of files written."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from useg.predict import predict_file

    console = Console(stderr=True)
    columns = (TextColumn("predict"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    written = 0
    with Progress(*columns, console=console, transient=True, disable=not console.is_terminal) as bar:
        for path in bar.track(files):
            written += len(predict_file(trained, path, sets, out, multi_class=multi_class, overlay=overlay))
    return written

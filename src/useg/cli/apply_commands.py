"""`useg evaluate` and `useg predict`: apply a trained model (registered into the main parser)."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from useg.errors import ConfigError

CHECKPOINT_HELP = "best (default), latest, an epoch number, or a path (relative ones also in DIR/checkpoints)"


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Register `evaluate` and `predict`."""
    evaluate = commands.add_parser("evaluate", help="Dice, IoU and HD95 of a checkpoint on its test split or other data")
    add_common(evaluate)
    evaluate.add_argument("--data", metavar="DIR",
                          help="labelled folder to score (default: the run's data and saved split; a run over "
                               "several datasets: each one's part, reported per dataset, or the one this names); any "
                               "other folder is scored whole, each image a target of the other patients' supports")
    evaluate.add_argument("--support", metavar="DIR2", help="draw the supports from this labelled folder instead")
    evaluate.add_argument("--annotations", metavar="FILE",
                          help="the Ovatus mapping_normalized4.jsonl when it is not beside US_map4/")
    evaluate.add_argument("--label", metavar="K[,K...]", help="label-map values to score as classes, as in useg train")
    evaluate.add_argument("--classes", metavar="A,B", help="comma-separated classes to score (default: all)")
    evaluate.add_argument("--class-names", metavar="V=NAME,...",
                          help="names of label-map values of other data, e.g. 128=cytoplasm,255=nucleus")
    evaluate.add_argument("--patient-pattern", metavar="REGEX",
                          help="group other data's files into patients (first group = patient), as in useg train")
    evaluate.add_argument("--split", choices=["val", "test"], default="test",
                          help="targets on the run's own data (default test)")
    evaluate.add_argument("--ensembles", metavar="K", default="1",
                          help="average the probabilities of K support draws (default 1); a list (1,2,4) or range "
                               "(1..10) sweeps them")
    evaluate.add_argument("--seed", type=int, metavar="N", help="seed of the support draws (default: the run's seed)")
    # Checked in cmd_evaluate against useg.data.task_kinds, not with `choices`: building the parser stays torch-free.
    evaluate.add_argument("--task", action="append", default=[], dest="task_kinds", metavar="KIND",
                          help="also score an in-context check beside the normal task, on the same targets and "
                               "supports (repeatable): inverted (the supports' labels inverted, the prediction "
                               "inverted back and scored against the truth: near the normal Dice if the model "
                               "reads its supports, near 0 if it ignores them) or edges (the supports' labels and "
                               "the truth replaced by their boundary band, scored at the model's image size)")
    evaluate.add_argument("--csv", metavar="PATH",
                          help="per-image CSV to write (default: evaluation_<split>.csv in the run folder); an "
                               "earlier CSV of that name is kept as <name>_<its time>.csv")
    evaluate.add_argument("--pictures", type=int, default=0, metavar="N",
                          help="also draw the N worst and N best targets (image, truth, prediction at native size, "
                               "Dice in the title) into <csv name>_pictures/ beside the CSV")
    evaluate.add_argument("--with-paths", action="store_true",
                          help="add each image's file (relative to its data folder) to the CSV and the "
                               "--pictures titles")
    evaluate.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    evaluate.set_defaults(handler=cmd_evaluate)
    predict = commands.add_parser("predict", help="write mask PNGs for new images, given a folder of supports")
    add_common(predict)
    predict.add_argument("--support", required=True, metavar="DIR",
                         help="folder of images + masks in any layout training accepts")
    predict.add_argument("--images", required=True, nargs="+", metavar="PATH",
                         help="image files and/or folders of images, in any format training reads (2-D images or "
                              "3-D NIfTI/DICOM volumes)")
    predict.add_argument("--out", required=True, metavar="DIR", help="folder for the masks (created if missing)")
    predict.add_argument("--overlay", action="store_true",
                         help="also write <stem>_overlay.png (a volume: <stem>_slice000_overlay.png per slice)")
    predict.add_argument("--classes", metavar="A,B",
                         help="comma-separated classes to predict (default: every support class)")
    predict.add_argument("--label", metavar="K[,K...]",
                         help="label-map values of the support masks to predict as classes, as in useg train")
    predict.add_argument("--class-names", metavar="V=NAME,...",
                         help="names of the support label-map values, e.g. 128=cytoplasm,255=nucleus")
    predict.add_argument("--ensembles", metavar="K", default="1",
                         help="average the probabilities of K seeded support draws (default 1)")
    predict.add_argument("--seed", type=int, metavar="N", help="seed of the support draws (default: the run's seed)")
    predict.add_argument("--slice-axis", type=int, metavar="AXIS",
                         help="axis along which 3-D volumes (inputs and supports) are cut into slices: 0, 1 or 2 "
                              "(default: the run's, else 2); a volume's masks are one .nii.gz each")
    predict.add_argument("--with-paths", action="store_true",
                         help="name the support images drawn by their files (relative to --support) as well as "
                              "their anonymous ids, and inputs by their paths")
    predict.add_argument("--overwrite", action="store_true",
                         help="allow writing over support files (masks, classes.json) and ground truth in --out; "
                              "input images are never written over")
    predict.set_defaults(handler=cmd_predict)


def add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", nargs="?", metavar="CHECKPOINT", help=CHECKPOINT_HELP)
    parser.add_argument("--run-dir", metavar="DIR", help="run folder (default .; evaluate writes beside a checkpoint "
                        "given as a path, in the run folder that holds it)")
    parser.add_argument("--support-size", metavar="S", help="supports per prediction (default: the run's); evaluate "
                        "takes a list (1,2,4,8) to sweep sizes")


def cmd_evaluate(args: argparse.Namespace) -> int:
    from useg.cli.evaluate_report import ScoringProgress, report_evaluation
    from useg.apply.evaluate import check_kinds, evaluate
    from useg.apply.predict import load_trained

    run_dir_given, args.run_dir = args.run_dir is not None, args.run_dir or "."
    sizes = None if args.support_size is None else number_list(args.support_size, "--support-size")
    counts = number_list(args.ensembles, "--ensembles")
    check_kinds(args.task_kinds)  # before the checkpoint is read
    if args.pictures < 0:
        raise ConfigError(f"--pictures must be 0 or more, not {args.pictures}")
    trained = load_trained(args.run_dir, args.checkpoint)
    with ScoringProgress() as progress:  # on stderr in a terminal: stdout stays the table or the JSON
        result = evaluate(trained, data=args.data, annotations=args.annotations, split=args.split,
                          support_size=sizes, ensembles=counts, seed=args.seed, support=args.support,
                          data_options=data_flags(args), with_paths=args.with_paths, progress=progress,
                          task_kinds=args.task_kinds)
    default_name = f"evaluation_{args.split}.csv" if not result.data.held_out else "evaluation_held_out.csv"
    folder = Path(args.run_dir) if run_dir_given else run_folder_of(trained.path)
    csv_path = Path(args.csv) if args.csv else folder / default_name
    return report_evaluation(result, csv_path, as_json=args.json, with_paths=args.with_paths,
                             pictures=args.pictures, trained=trained)


def run_folder_of(checkpoint: Path) -> Path:
    """The run folder that holds `checkpoint` (the folder above its checkpoints/), else the file's own folder."""
    from useg.run_folder import is_checkpoints_folder

    folder = Path(checkpoint).parent  # kept relative where it is, as the user wrote it
    if folder.name in ("", ".", ".."):
        folder = folder.resolve()
    return folder.parent if is_checkpoints_folder(folder) else folder


def number_list(text: str, flag: str) -> list[int]:
    """`4`, `1,2,4` or `1..10` as a list of integers; anything else is one ConfigError naming the flag."""
    text = str(text).strip()
    try:
        if ".." in text:
            low, high = (int(part) for part in text.split(".."))
            values = list(range(low, high + 1))
        else:
            values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        values = []
    if not values:
        raise ConfigError(f"{flag} {text} is not a number, a list (1,2,4) or a range (1..10) of whole numbers")
    return values


def one_number(text: str, flag: str) -> int:
    values = number_list(text, flag)
    if len(values) != 1:
        raise ConfigError(f"{flag} takes one number here, not {text}")
    return values[0]


def data_flags(args: argparse.Namespace) -> dict:
    """The data flags given (--label, --classes, --class-names, --patient-pattern), checked as useg train checks them."""
    from useg.config import check_value

    keys = ("label", "classes", "class_names", "patient_pattern")
    return {key: check_value(key, getattr(args, key)) for key in keys if getattr(args, key, None) is not None}


def cmd_predict(args: argparse.Namespace) -> int:
    from useg.files import explain_file_errors
    from useg.config import check_value
    from useg.apply.predict import check_outputs, input_files, load_trained, write_label_names
    from useg.apply.supports import load_support_pool

    args.run_dir = args.run_dir or "."
    trained = load_trained(args.run_dir, args.checkpoint)
    size = None if args.support_size is None else one_number(args.support_size, "--support-size")
    axis = check_value("slice_axis", trained.slice_axis if args.slice_axis is None
                       else args.slice_axis)  # volumes are cut as the run was trained on them
    flags = {**data_flags(args), "slice_axis": axis}
    pool = load_support_pool(trained, args.support, flags.pop("classes", None), size, options=flags,
                             seed=args.seed, ensembles=one_number(args.ensembles, "--ensembles"))
    sets, multi_class = pool.sets, pool.multi_class
    files = input_files(args.images, axis)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a folder for the masks")
    check_outputs(files, sets, out, multi_class=multi_class, overlay=args.overlay, support=args.support,
                  overwrite=args.overwrite)  # before anything is written
    sets_of = {item.path: pool.sets_for(item.path) for item in files}  # an input among the supports: drawn without it
    with explain_file_errors(out, then="run useg predict again"):
        out.mkdir(parents=True, exist_ok=True)
    written = predict_all(trained, files, sets_of, out, multi_class, args.overlay, axis)
    written += write_label_names(out, sets) is not None
    draws = f", {len(sets[0].images)} support draws averaged" if len(sets[0].images) > 1 else ""
    used = ", ".join(f"{s.cls} (S={s.size})" for s in sets) + draws
    print("\n".join(support_lines(pool, files, sets_of, args.with_paths)))
    print(f"{len(files)} image(s) segmented for {used}: {written} file(s) written to {out}")
    return 0


def support_lines(pool, files, sets_of: dict, with_paths: bool) -> list[str]:
    """The images drawn per class, and the own draws of inputs that are support images themselves.
    Inputs are named by their place in --images, and by their path with --with-paths."""
    from useg.apply.supports import own_draws_report, support_report

    lines = support_report(pool, with_paths)
    for number, item in enumerate(files, 1):
        label = f"input {item.path}" if with_paths else f"input {number} of {len(files)}"
        lines += own_draws_report(pool, label, sets_of[item.path], with_paths)
    return lines


def predict_all(trained, files, sets_of: dict, out: Path, multi_class: bool, overlay: bool,
                slice_axis: int = 2) -> int:
    """Segment every input with its support sets (`sets_of[path]`), with a progress bar on a terminal; returns
    the number of files written."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from useg.apply.predict import predict_file

    console = Console(stderr=True)
    columns = (TextColumn("predict"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    written = 0
    with Progress(*columns, console=console, transient=True, disable=not console.is_terminal) as bar:
        for item in bar.track(files):
            written += len(predict_file(trained, item, sets_of[item.path], out, multi_class=multi_class,
                                        overlay=overlay, slice_axis=slice_axis))
    return written

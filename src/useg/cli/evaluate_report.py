"""What `useg evaluate` prints and writes: the table or JSON, the CSV and the sweep pictures, and a progress
bar on stderr while it scores."""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path
from typing import Callable

from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from useg.files import json_text
from useg.cli.display import console as terminal_console
from useg.cli.display import format_number


def report_evaluation(result, csv_path: Path, *, as_json: bool, with_paths: bool, pictures: int = 0,
                      trained=None) -> int:
    """JSON (printed once the CSV and pictures exist, as it names them) or the table first, then the files.

    Every file written is named on the screen: in the table's lines, or in the JSON (then where an earlier file
    is kept goes to stderr). Then the run's experiment trackers get the Dice and the sweep pictures."""
    if as_json:
        csv_written, sweeps, targets = write_outputs(result, csv_path, with_paths, pictures, trained,
                                                     say=lambda line: None,
                                                     note=lambda line: print(line, file=sys.stderr))
        log_to_trackers(result, trained, sweeps, say=lambda line: None)
        print(json_text({**result.to_dict(), "csv": str(csv_written),
                         "pictures": [str(path) for path in sweeps + targets]}))
        return 0
    # The table first: a CSV the disk cannot take does not cost the user the scores.
    console = terminal_console()
    console.print(evaluation_table(result))
    if result.data.scored_datasets:
        console.print(datasets_table(result))
    if result.has_checks:
        console.print(task_kinds_table(result))
    if result.is_sweep:
        console.print(sweep_table(result))

    def say(line: str) -> None:
        console.print(line, markup=False, soft_wrap=True)  # unwrapped: a path stays one piece to copy

    _, sweeps, _ = write_outputs(result, csv_path, with_paths, pictures, trained, say=say, note=say)
    log_to_trackers(result, trained, sweeps, say=say)
    return 0


def write_outputs(result, csv_path: Path, with_paths: bool, pictures: int, trained, *, say: Callable[[str], None],
                  note: Callable[[str], None]) -> tuple[Path, list[Path], list[Path]]:
    """Write the CSV, the sweep pictures and the `--pictures` targets, each named by `say` once written and each
    earlier file kept aside by `note` at once (a later failure must not hide it); the CSV, the sweep pictures and
    the target pictures."""
    from useg.apply.evaluate import write_csv
    from useg.apply.sweep_plot import save_sweep_pictures
    from useg.apply.target_pictures import keep_earlier_pictures, pictures_folder, save_target_pictures

    def kept(written) -> None:
        if written.earlier is not None:
            note(f"earlier {written.path.name} kept as {written.earlier}")

    csv_written = write_csv(csv_path, result, with_paths)
    say(f"{len(result.all_rows())} rows written to {csv_written.path}")
    kept(csv_written)
    sweeps, targets = [], []
    for written in save_sweep_pictures(csv_written.path.parent, result):
        say(f"sweep picture written to {written.path}")
        kept(written)
        sweeps.append(written.path)
    if pictures and trained is not None:
        folder = pictures_folder(csv_written.path)
        earlier = keep_earlier_pictures(folder)
        if earlier is not None:
            note(f"earlier pictures of {folder.name} kept in {earlier}")
        targets = save_target_pictures(folder, result, trained, pictures, with_paths)
        say(f"{len(targets)} pictures of the worst and best targets written to {folder}")
    return csv_written.path, sweeps, targets


def log_to_trackers(result, trained, sweeps: list[Path], say: Callable[[str], None]) -> None:
    """The run's own checkpoint evaluated: the tracked runs its training logged to (RUN/logs/trackers.json) get
    `evaluation/<split>_dice` (and per class) at the checkpoint's epoch, and the sweep pictures (anonymous; the
    target pictures may show a patient and are not given). A tracker that cannot take them is one warning on
    stderr; stdout stays the table or the JSON."""
    from useg.checkpoint import warn_to_stderr
    from useg.run_folder import is_checkpoints_folder
    from useg.training.tracker_evaluation import Evaluated, evaluation_metrics, log_evaluation
    from useg.training.trackers import STATE_NAME, saved_tracker_names

    if trained is None or trained.export is not None or not is_checkpoints_folder(Path(trained.path).parent):
        return  # an export, or a checkpoint copied out of its run: no tracked run of its own
    run_root = Path(trained.path).parent.parent
    trackers = saved_tracker_names(trained.config)  # the checkpoint's run's: not those of a run it replaced
    if not trackers or not (run_root / "logs" / STATE_NAME).is_file():
        return
    split = "held_out" if result.data.held_out else result.split  # as evaluation_<split>.csv is named
    per_class = {name: stats["dice"]["mean"] for name, stats in result.per_class.items()}
    evaluated = Evaluated(split, result.epoch, evaluation_metrics(split, result.mean_dice, per_class), sweeps)
    with contextlib.redirect_stdout(sys.stderr):  # a tracker library's print must not spoil the table or the JSON
        logged = log_evaluation(run_root, trackers, evaluated, warn_to_stderr)
    if logged:
        with_pictures = f" with {len(sweeps)} sweep picture(s)" if sweeps else ""
        say(f"evaluation/{split}_dice logged at step {result.epoch} (the checkpoint's epoch){with_pictures} to the "
            f"run's trackers: {', '.join(logged)}")


class ScoringProgress:
    """`progress(done, total)` for `evaluate`: a bar on stderr (tasks scored, tasks/s, time left).

    Only in a terminal, and only once the command has run SHOW_AFTER_S, so a quick evaluation prints nothing
    more than before; stdout (the table or `--json`) is untouched. The bar disappears when scoring ends.
    """

    SHOW_AFTER_S = 2.0

    def __init__(self, console: Console | None = None):
        self.console = console or Console(stderr=True, highlight=False)
        self.created = time.monotonic()
        self.scoring_since: float | None = None
        self.bar: Progress | None = None
        self.task = None

    def __enter__(self) -> ScoringProgress:
        return self

    def __exit__(self, *error) -> None:
        if self.bar is not None:
            self.bar.stop()

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if self.scoring_since is None:
            self.scoring_since = now
        if self.bar is None:
            if not self.console.is_terminal or now - self.created < self.SHOW_AFTER_S:
                return
            self.bar = Progress(TextColumn("evaluate"), BarColumn(), MofNCompleteColumn(), TextColumn("tasks"),
                                TextColumn("{task.fields[speed]}"), TextColumn("remaining"), TimeRemainingColumn(),
                                console=self.console, transient=True)
            self.bar.start()
            self.task = self.bar.add_task("evaluate", total=total, completed=done, speed="")  # no jump in the rate
        elapsed = now - self.scoring_since
        speed = f"{done / elapsed:.1f} tasks/s" if elapsed > 0 and done else ""
        self.bar.update(self.task, completed=done, total=total, speed=speed)


def where_scored(result) -> str:
    if not result.data.held_out:
        datasets = [result.data.dataset.datasets[number] for number in result.data.scored_datasets]
        if len(datasets) == 1:
            return f"{result.split} of dataset {datasets[0]}"
        return f"{result.split} of datasets {', '.join(datasets)}" if datasets else result.split
    support = f", supports from {result.data.support_data}" if result.data.support_data else ""
    return f"every image of {result.data.data}{support}"


def evaluation_table(result) -> Table:
    """Per class: trained or held-out, rows, Dice/IoU mean ± std and median, HD95; then the mean over classes."""
    title = (f"{Path(result.checkpoint).name} (epoch {result.epoch}) on {where_scored(result)}: "
             f"S={result.support_size}, ensembles={result.ensembles}, seed={result.seed}, native resolution")
    table = Table(title=title, box=box.SIMPLE_HEAD)
    for name in ("class", "model", "n", "Dice mean ± std", "Dice median", "IoU mean ± std", "HD95 px mean (n)"):
        table.add_column(name, justify="left" if name in ("class", "model") else "right")
    for name, stats in result.per_class.items():
        dice, iou, hd95 = stats["dice"], stats["iou"], stats["hd95_px"]
        table.add_row(name, result.class_status.get(name, ""), str(dice["n"]), spread(dice),
                      format_number(dice["median"]), spread(iou), f"{format_number(hd95['mean'], 2)} ({hd95['n']})")
    summary = result.to_dict()
    table.add_row("mean over classes", "", "", format_number(summary["mean_dice"]), "",
                  format_number(summary["mean_iou"]), format_number(summary["mean_hd95_px"], 2), style="bold")
    return table


def datasets_table(result) -> Table:
    """A run over several datasets: per dataset, its targets and tasks and the means over its own classes."""
    table = Table(title=f"per dataset: its {result.split} split, mean over its classes", box=box.SIMPLE_HEAD)
    for name in ("dataset", "ids", "classes", "targets", "tasks", "Dice", "IoU", "HD95 px"):
        table.add_column(name, justify="left" if name in ("dataset", "ids", "classes") else "right")
    for name, scored in result.dataset_results().items():
        table.add_row(name, f"{scored['id']}/...", ", ".join(scored["per_class"]) or "-", str(scored["targets"]),
                      str(scored["tasks"]), format_number(scored["mean_dice"]), format_number(scored["mean_iou"]),
                      format_number(scored["mean_hd95_px"], 2))
    return table


KIND_NOTES = {
    "inverted": "inverted: the supports' labels inverted, the prediction inverted back and scored against the truth "
                "at native size; about the normal Dice when the model reads its supports, about 0 when it ignores "
                "them",
    "edges": "edges: the supports' labels replaced by their boundary band, the prediction scored against the band "
             "of the truth at the model's size, {size}x{size}",
}


def task_kinds_table(result) -> Table:
    """The in-context checks beside the normal task: Dice per class and task kind, the inverted-to-normal ratio,
    and what each check means (the caption)."""
    kinds = result.task_kinds
    table = Table(title=f"in-context checks: same targets and supports (S={result.support_size}, "
                        f"ensembles={result.ensembles}), Dice mean ± std",
                  caption="\n".join(KIND_NOTES[kind].format(size=result.image_size) for kind in kinds[1:]),
                  caption_justify="left", box=box.SIMPLE_HEAD)
    with_ratio = "inverted" in kinds
    for name in ("class", "model", "n", *kinds, *(["inverted / normal"] if with_ratio else [])):
        table.add_column(name, justify="left" if name in ("class", "model") else "right")
    summaries = {kind: result.main.kind(kind).per_class for kind in kinds}
    for name, stats in result.per_class.items():
        cells = [spread(summaries[kind][name]["dice"]) if name in summaries[kind] else "" for kind in kinds]
        ratio = [ratio_text(summaries["inverted"].get(name), stats)] if with_ratio else []
        table.add_row(name, result.class_status.get(name, ""), str(stats["dice"]["n"]), *cells, *ratio)
    overall = result.kinds_dict()
    ratio = [format_ratio(overall["inverted"]["mean_dice"], overall["normal"]["mean_dice"])] if with_ratio else []
    table.add_row("mean over classes", "", "", *(format_number(overall[kind]["mean_dice"]) for kind in kinds), *ratio,
                  style="bold")
    return table


def ratio_text(inverted: dict | None, normal: dict) -> str:
    return "" if inverted is None else format_ratio(inverted["dice"]["mean"], normal["dice"]["mean"])


def format_ratio(part: float | None, whole: float | None) -> str:
    """`part / whole` to two decimals; empty where either is missing or the whole is 0."""
    return "" if part is None or not whole else f"{part / whole:.2f}"


def sweep_table(result) -> Table:
    """Mean Dice per class at every (support size, ensemble count) scored; with in-context checks, the mean over
    classes of each task kind too."""
    classes = list(result.per_class)
    checks = result.task_kinds[1:]
    table = Table(title="sweep: mean Dice", box=box.SIMPLE_HEAD)
    for name in ("S", "ensembles", *classes, "mean over classes", *(f"mean ({kind})" for kind in checks)):
        table.add_column(name, justify="right")
    for point in result.points:
        means = [point.per_class.get(name, {}).get("dice", {}).get("mean") for name in classes]
        record = point.to_dict()
        table.add_row(str(point.support_size), str(point.ensembles), *map(format_number, means),
                      format_number(record["mean_dice"]),
                      *(format_number(record["task_kinds"][kind]["mean_dice"]) for kind in checks))
    return table


def spread(stats: dict) -> str:
    return f"{format_number(stats['mean'])} ± {format_number(stats['std'])}"

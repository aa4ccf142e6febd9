"""`useg runs compare RUN [RUN ...]`: runs side by side, one table and one picture of their validation curves.

Each run is read from its newest JSON log (logs/training_*.json: config and history), else from its
latest checkpoint; test and held-out Dice from the CSVs `useg evaluate` left in the run folder, and the
held-out Dice a run with --held-out-data scored while it trained from its history.
Torch-free unless a run has no log.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from pathlib import Path
from typing import Any

from rich.table import Table

from useg.cli import display
from useg.config import RECORDED_KEYS, config_keys, saved_value
from useg.errors import UsegError
from useg.training.history import METRIC_NAMES, best_metric, best_value, epoch_rows, format_number, has_values
from useg.training.history import latest_log, read_log

# Where a run lives and what it wrote besides checkpoints (not what it trained, nor its numbers), and the
# planned epochs, which the epochs column shows.
NOT_COMPARED = frozenset({"run_dir", "quiet", "tensorboard", "trackers", "tracker_upload_best", "vis_every",
                          "vis_count", "periodic_percentages", "epochs"})
TEST_CSV, HELD_OUT_CSV = "evaluation_test.csv", "evaluation_held_out.csv"  # useg evaluate's default names
WIDEST_NAME = 32  # characters of a run's name or a setting on one line of the table


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Register `runs compare`."""
    runs = commands.add_parser("runs", help="compare runs side by side")
    actions = runs.add_subparsers(dest="action", required=True, metavar="ACTION")
    text = ("a table of the settings that differ and each run's results (best val Dice and epoch, the held-out "
            "Dice scored while training with --held-out-data, held-out and test Dice where evaluated, epochs, time, "
            "samples/s), and one picture of their validation curves")
    compare = actions.add_parser("compare", help=text, description=text)
    compare.add_argument("runs", nargs="+", metavar="RUN", help="run folders (each a --run-dir of useg train)")
    compare.add_argument("--out", default="compare.png", help="the picture to write (default compare.png)")
    compare.add_argument("--json", action="store_true", help="machine-readable output (schema in CHECKPOINT_GUIDE.md)")
    compare.set_defaults(handler=cmd_compare)


def cmd_compare(args) -> int:
    comparison = compare_runs([Path(run) for run in args.runs])
    if args.json:  # the JSON names the picture, so it is printed once the picture exists
        picture = save_compare_picture(comparison["runs"], Path(args.out))
        display.print_json({**comparison, "picture": str(picture)})
    else:  # the table first: a disk too full for the picture still shows the numbers
        print_whole(compare_table(comparison))
        print(f"picture saved to {save_compare_picture(comparison['runs'], Path(args.out))}")
    return 0


def print_whole(table: Table) -> None:
    """Print the table; piped into a file or a log, at its own width rather than squeezed into 120 columns
    (where many settings left the results columns no room at all)."""
    console = display.console()
    if not console.is_terminal:
        natural = console.measure(table, options=console.options.update_width(10_000)).maximum
        console.width = max(console.width, natural)
    console.print(table)


def compare_runs(folders: list[Path]) -> dict[str, Any]:
    """{"differing_settings": [...], "runs": [one summary per run]} for `folders`, in their order."""
    read = [(folder, *read_run(folder)) for folder in folders]
    differing = differing_settings([config for _, config, _ in read])
    labels = run_labels(folders)
    return {"differing_settings": differing,
            "runs": [run_summary(label, folder, config, history, differing)
                     for label, (folder, config, history) in zip(labels, read)]}


def read_run(folder: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """A run's config and history: from its newest log, else from its latest checkpoint."""
    if not folder.is_dir():
        raise UsegError(f"{folder} is not a folder; give run folders that useg train wrote (their --run-dir)")
    log_path = latest_log(folder / "logs")
    log = read_log(log_path) if log_path else None
    if log and log.get("history"):
        return log.get("config") or {}, log["history"]
    from useg.checkpoint import LATEST_NAME, read_metadata
    from useg.cli.checkpoint_actions import run_history
    from useg.run_folder import checkpoints_folder

    history = run_history(folder)  # says "train first" when there is nothing
    return (read_metadata(checkpoints_folder(folder) / LATEST_NAME) or {}).get("config") or {}, history


def differing_settings(configs: list[dict[str, Any]]) -> list[str]:
    """The settings whose values are not the same in every run, in the config's order."""
    keys = [key for key in (*config_keys(), *RECORDED_KEYS) if key not in NOT_COMPARED]
    keys += sorted({key for config in configs for key in config} - set(keys) - NOT_COMPARED)
    return [key for key in keys
            if len({json.dumps(saved_value(config, key), sort_keys=True, default=str) for config in configs}) > 1]


def run_labels(folders: list[Path]) -> list[str]:
    """Each run's folder name; the path as given where two runs share a name."""
    names = [folder.resolve().name for folder in folders]
    return [name if names.count(name) == 1 else str(folder) for name, folder in zip(names, folders)]


def run_summary(label: str, folder: Path, config: dict[str, Any], history: dict[str, Any],
                differing: list[str]) -> dict[str, Any]:
    rows = epoch_rows(history)
    held_out = [row["held_out_dice"] for row in rows]
    timed = [row for row in rows if row["epoch_time_s"] is not None]
    seconds = sum(row["epoch_time_s"] for row in timed)
    samples = sum(row["samples_trained"] if row["samples_trained"] is not None else config.get("samples_per_epoch", 0)
                  for row in timed)
    return {"run": label, "path": str(folder), "settings": {key: saved_value(config, key) for key in differing},
            "best_val_dice": history.get("best_val_dice"), "best_epoch": history.get("best_epoch"),
            "best_metric": best_metric(history), "best_value": best_value(history),
            # --held-out-data scored while training: at best_model.pt's epoch, and at the last epoch
            "held_out_dice_at_best": at_epoch(held_out, history.get("best_epoch")),
            "held_out_dice_last": held_out[-1] if held_out else None,
            "held_out_dice": evaluated_dice(folder / HELD_OUT_CSV), "test_dice": evaluated_dice(folder / TEST_CSV),
            "epochs": len(rows), "epochs_planned": config.get("epochs"),
            "time_s": round(seconds, 1) if timed else None,
            "samples_per_s": round(samples / seconds, 2) if seconds > 0 else None,
            "resumed_at": [epoch for epoch in history.get("resumed_at") or [] if epoch > 0],
            "initial_val_dice": history.get("initial_val_dice"), "val_dice": [row["val_dice"] for row in rows],
            "initial_held_out_dice": history.get("initial_held_out_dice"),
            "held_out_dice_by_epoch": held_out if has_values(history, "held_out_dice") else []}


def at_epoch(values: list, epoch: int | None) -> Any:
    """values[epoch - 1], None without that epoch."""
    return values[epoch - 1] if epoch and 0 < epoch <= len(values) else None


def evaluated_dice(path: Path) -> float | None:
    """The mean Dice `useg evaluate` reported in this CSV: the unweighted mean over classes of each class's mean,
    at the largest support size and ensemble count it scored, on the normal task; None without the CSV."""
    try:
        with path.open(newline="", encoding="utf-8") as file:
            rows = list(csv.DictReader(file))
    except (OSError, UnicodeDecodeError, csv.Error):
        return None
    rows = [row for row in rows if row.get("task") in (None, "", "normal")]
    for column in ("support_size", "ensembles"):  # a sweep: its last point is the one reported
        if rows and rows[0].get(column):
            largest = max(int(row[column]) for row in rows)
            rows = [row for row in rows if int(row[column]) == largest]
    per_class: dict[str, list[float]] = {}
    for row in rows:
        if row.get("dice") not in (None, "") and math.isfinite(float(row["dice"])):
            per_class.setdefault(row["class"], []).append(float(row["dice"]))
    means = [sum(values) / len(values) for values in per_class.values()]
    return sum(means) / len(means) if means else None


def compare_table(comparison: dict[str, Any]) -> Table:
    table = Table(title="Runs compared")
    if any(run["best_metric"] != "val_dice" for run in comparison["runs"]):
        table.caption = ("best epoch of a run with --best-metric held_out_dice: its highest held-out Dice (its best "
                         "val Dice is then -)")
    # Long names and settings (a run's path, several --data folders) fold within a bounded width, so that the
    # results columns always keep theirs.
    table.add_column("run", overflow="fold", max_width=WIDEST_NAME)
    for key in comparison["differing_settings"]:
        table.add_column(key, justify="right", overflow="fold", max_width=WIDEST_NAME)
    # The held-out Dice scored while training (at the best epoch) only where a run has it.
    trained_held_out = any(run["held_out_dice_by_epoch"] for run in comparison["runs"])
    for name in ("best\nval Dice", "best\nepoch", *(["held-out\nDice at\nbest"] if trained_held_out else []),
                 "held-out\nDice", "test\nDice", "epochs", "resumed\nat", "time\n(s)", "samples\n/s"):
        table.add_column(name, justify="right", min_width=max(map(len, name.split())))  # no word cut
    for run in comparison["runs"]:
        table.add_row(run["run"], *(setting_text(key, value) for key, value in run["settings"].items()),
                      format_number(run["best_val_dice"]), str(run["best_epoch"] or "-"),
                      *([format_number(run["held_out_dice_at_best"])] if trained_held_out else []),
                      format_number(run["held_out_dice"]), format_number(run["test_dice"]),
                      f"{run['epochs']}/{run['epochs_planned'] or '?'}", ", ".join(map(str, run["resumed_at"])) or "-",
                      format_number(run["time_s"], 1), format_number(run["samples_per_s"], 1))
    return table


def setting_text(key: str, value: Any) -> str:
    """A setting as the table and legend show it: the recipe's by its preset and changes (a whole mapping
    would fill the screen), the rest as typed after its flag."""
    kinds = {"task_augmentation": "task", "in_task_augmentation": "in_task"}
    if key not in kinds:
        return display.flag_text(value)
    from useg.data import recipe  # here: importing useg.data loads torch, which `useg runs` needs only then

    return recipe.describe(kinds[key], value)


def legend_label(run: dict[str, Any]) -> str:
    settings = ", ".join(f"{key} {setting_text(key, value)}"[:40] for key, value in run["settings"].items())
    if run["best_value"] is None:
        best = "no val Dice"
    else:
        metric = run["best_metric"]
        named = "" if metric == "val_dice" else f"{METRIC_NAMES.get(metric, metric)} "
        best = f"best {named}{run['best_value']:.3f} at epoch {run['best_epoch']}"
    return f"{run['run']}" + (f" ({settings})" if settings else "") + f": {best}"


def save_compare_picture(runs: list[dict[str, Any]], path: Path) -> Path:
    """Every run's validation Dice against epoch on one axis: its best epoch starred, its resumes dotted; the
    held-out Dice of a run with --held-out-data dashed in its colour."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.ticker import MaxNLocator

    from useg.viz import save_figure

    fig, ax = plt.subplots(figsize=(9, 5.5))
    drawn = []
    for run in runs:
        values = np.array([np.nan if value is None else value for value in [run["initial_val_dice"], *run["val_dice"]]],
                          dtype=float)  # epoch 0: before training
        drawn += [value for value in values if np.isfinite(value)]
        line = ax.plot(np.arange(len(values)), values, marker="o", markersize=3, label=legend_label(run))[0]
        if run["held_out_dice_by_epoch"]:
            held_out = np.array([np.nan if value is None else value for value in
                                 [run["initial_held_out_dice"], *run["held_out_dice_by_epoch"]]], dtype=float)
            drawn += [value for value in held_out if np.isfinite(value)]
            ax.plot(np.arange(len(held_out)), held_out, linestyle="--", marker="s", markersize=3,
                    color=line.get_color())
        if run["best_value"] is not None and run["best_epoch"]:  # on the curve of the metric that chose it
            ax.plot(run["best_epoch"], run["best_value"], marker="*", markersize=14, color=line.get_color())
        for epoch in run["resumed_at"]:
            ax.axvline(epoch + 0.5, color=line.get_color(), linestyle=":", alpha=0.7)
    dashed = "; dashed: held-out Dice" if any(run["held_out_dice_by_epoch"] for run in runs) else ""
    ax.set(title=f"Validation Dice (star: best epoch; dotted: resumed there{dashed})",
           xlabel="epoch (0: before training)", ylabel="Dice" if dashed else "val Dice")
    if drawn:  # the runs' own range, so that close runs stay apart
        margin = max(0.02, (max(drawn) - min(drawn)) * 0.1)
        ax.set_ylim(max(0.0, min(drawn) - margin), min(1.0, max(drawn) + margin))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), fontsize="small", frameon=False)
    fig.tight_layout()
    return save_figure(fig, path, dpi=100, then="run useg runs compare again")

"""Training history: per-epoch lists kept in checkpoints, the JSON log, the table and the curves."""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from rich.table import Table

from useg.checkpoint import atomic_write_json

# Per-epoch lists; index i holds epoch i + 1. The first four are the original scripts' names.
EPOCH_KEYS = (
    "train_loss", "val_dice", "val_dice_per_class", "val_dice_std", "val_dice_min", "val_dice_max",
    "lr", "epoch_time_s", "samples_per_s", "checkpoint_time_s", "checkpoints_written", "skipped_steps",
    "samples_trained",  # the samples this epoch trained: fewer than samples_per_epoch when resumed mid-epoch
    # Several datasets (issue 27): each training dataset's val Dice (mean of its classes), and the Dice of the
    # --held-out-data datasets, each and their mean. None in every epoch of a run without them.
    "val_dice_per_dataset", "held_out_dice", "held_out_dice_per_dataset",
)
# What each best rule (--best-metric) is called on the screen.
METRIC_NAMES = {"val_dice": "val Dice", "held_out_dice": "held-out Dice"}


def new_history() -> dict[str, Any]:
    """An empty history: the per-epoch lists plus best_val_dice / best_epoch (see `set_best`)."""
    history: dict[str, Any] = {key: [] for key in EPOCH_KEYS}
    history.update(best_val_dice=None, best_epoch=None, resumed_at=[])
    return history


def append_epoch(history: dict[str, Any], record: dict[str, Any]) -> None:
    """Add one epoch's numbers (the best so far is not the history's to decide: see `set_best`)."""
    done = len(history["train_loss"])
    for key in EPOCH_KEYS:
        history.setdefault(key, [None] * done).append(record.get(key))  # a key newer than the run: None before


def set_best(history: dict[str, Any], value: float | None, epoch: int | None, metric: str = "val_dice") -> None:
    """Record the best so far of the run's best metric and its epoch, as the checkpoint manager reports them.

    The manager owns "best": it reads best_model.pt from disk, so after a resume from an older
    epoch the best may be an epoch of the branch the run has left (its row here then holds the
    new branch's Dice). The history copies it, so that every line that names the best names the
    weights in best_model.pt.

    `best_val_dice` is only ever the val Dice that chose best_model.pt: a run whose best is chosen by
    another metric (--best-metric held_out_dice) keeps it None and records `best_metric` and
    `best_value` (as the checkpoint sidecars do), so that no reader takes that value for a val Dice."""
    if metric == "val_dice":
        history["best_val_dice"], history["best_epoch"] = value, epoch
    else:
        history.update(best_val_dice=None, best_epoch=epoch, best_metric=metric, best_value=value)


def best_metric(history: dict[str, Any]) -> str:
    """The metric that chose best_model.pt (runs before --best-metric: val_dice)."""
    return history.get("best_metric") or "val_dice"


def best_value(history: dict[str, Any]) -> float | None:
    """The best metric's value at the best epoch, None before the first."""
    return history.get("best_val_dice") if best_metric(history) == "val_dice" else history.get("best_value")


def best_text(history: dict[str, Any]) -> str | None:
    """`best val Dice 0.8123 at epoch 7` (or `best held-out Dice ...`); None while there is no best."""
    value = best_value(history)
    if value is None:
        return None
    metric = best_metric(history)
    return f"best {METRIC_NAMES.get(metric, metric)} {value:.4f} at epoch {history.get('best_epoch')}"


def has_values(history: dict[str, Any], key: str) -> bool:
    """True when some epoch recorded `key` (held_out_dice: only runs with --held-out-data)."""
    return any(value is not None for value in history.get(key) or [])


def epoch_rows(history: dict[str, Any]) -> list[dict[str, Any]]:
    """The history as one dict per epoch (what pandas.DataFrame wants)."""
    count = len(history["train_loss"])
    return [{"epoch": i + 1, **{key: epoch_value(history, key, i) for key in EPOCH_KEYS}} for i in range(count)]


def epoch_value(history: dict[str, Any], key: str, index: int) -> Any:
    """history[key][index], None where a run older than the key never recorded it."""
    values = history.get(key) or []
    return values[index] if index < len(values) else None


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def new_log_name() -> str:
    return f"training_{datetime.now().strftime('%Y%m%d_%H%M%S')}.json"


def read_log(path: Path) -> dict[str, Any] | None:
    """The log at `path`, or None when it is missing or unreadable."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def latest_log(logs_dir: Path) -> Path | None:
    """The newest training log in a run's logs folder."""
    logs = sorted(Path(logs_dir).glob("training_*.json"))
    return logs[-1] if logs else None


def write_log(path: Path, log: dict[str, Any], history: dict[str, Any]) -> None:
    """Rewrite the JSON log atomically, with the per-epoch records derived from `history`."""
    log = dict(log, history=history, epochs=epoch_rows(history), updated=utc_now())
    atomic_write_json(path, log)


def format_number(value: float | None, digits: int = 4) -> str:
    """A number for tables and info lines: `digits` decimals; "-" when missing or NaN."""
    missing = value is None or (isinstance(value, float) and math.isnan(value))
    return "-" if missing else f"{value:.{digits}f}"


def history_table(history: dict[str, Any], title: str = "Training history") -> Table:
    """A rich table of epochs with loss, Dice (held-out Dice too when the run has it) and time; the best
    epoch is starred."""
    table = Table(title=title)
    held_out = has_values(history, "held_out_dice")
    for name in ("epoch", "train loss", "val Dice", *(["held-out Dice"] if held_out else []), "lr", "time (s)", ""):
        table.add_column(name, justify="right")
    resumed = set(history.get("resumed_at") or [])
    metric, best = best_metric(history), best_value(history)
    for row in epoch_rows(history):
        marks = []
        # Not when the best is an epoch of a branch a resume left (that row holds the new branch's Dice).
        if row["epoch"] == history.get("best_epoch") and row.get(metric) == best:
            marks.append("* best")
        if row["epoch"] - 1 in resumed and row["epoch"] > 1:
            marks.append("resumed")
        time_s = row["epoch_time_s"]
        table.add_row(str(row["epoch"]), format_number(row["train_loss"]), format_number(row["val_dice"]),
                      *([format_number(row["held_out_dice"])] if held_out else []),
                      "-" if row["lr"] is None else f"{row['lr']:.2e}",
                      "-" if time_s is None else f"{time_s:.1f}", " ".join(marks))
    return table


def plot_curves(history: dict[str, Any], path: Path, then: str = "try again") -> Path:
    """Save loss and val Dice (and held-out Dice, its own line, when the run has it) against epoch, best
    epoch and resume points marked, as a PNG.

    Written atomically; a full disk or unwritable folder is one UsegError ending with `then`.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from useg.viz import save_figure

    epochs = list(range(1, len(history["train_loss"]) + 1))
    fig, (loss_ax, dice_ax) = plt.subplots(1, 2, figsize=(10, 4))
    loss_ax.plot(epochs, history["train_loss"], marker="o", markersize=3)
    loss_ax.set(title="Training loss", xlabel="epoch", ylabel="loss")
    dice_ax.plot(epochs, history["val_dice"], marker="o", markersize=3, color="tab:green", label="val Dice")
    title = "Validation Dice"
    if has_values(history, "held_out_dice"):
        held_out = [float("nan") if value is None else value for value in history["held_out_dice"]]
        dice_ax.plot(epochs, held_out, marker="s", markersize=3, color="tab:purple", label="held-out Dice")
        title = "Validation and held-out Dice"
    dice_ax.set(title=title, xlabel="epoch", ylabel="Dice", ylim=(0, 1))
    if history.get("best_epoch"):
        metric = best_metric(history)
        chosen_by = "" if metric == "val_dice" else f", by {METRIC_NAMES.get(metric, metric)}"
        dice_ax.axvline(history["best_epoch"], color="tab:red", linestyle="--",
                        label=f"best (epoch {history['best_epoch']}{chosen_by})")
    for i, resumed in enumerate(r for r in history.get("resumed_at") or [] if r > 0):
        for ax in (loss_ax, dice_ax):
            ax.axvline(resumed + 0.5, color="grey", linestyle=":", label="resumed" if i == 0 and ax is dice_ax else None)
    dice_ax.legend(loc="best")  # two Dice lines leave no corner always free
    fig.tight_layout()
    return save_figure(fig, path, dpi=100, then=then)


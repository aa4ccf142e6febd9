"""Experiment trackers (TensorBoard, MLflow, W&B) following one run, continued across resumes.

Each is an optional package (`pip install 'useg[mlflow]'`). One that is missing, or that fails while
the run goes on (its store's disk is full, its server is gone), is one warning line and is off for the
rest of the run: training and checkpoints never depend on a tracker. Nothing leaves the machine unless
the user says so: MLflow writes to RUN/logs/mlflow.db (MLFLOW_TRACKING_URI when set), W&B runs offline
into RUN/logs/wandb/ (WANDB_MODE when set), TensorBoard writes RUN/logs/tensorboard/.

The tracker's step is the epoch. The loop hands an epoch over once its checkpoint is durable, so a kill
never leaves a tracker ahead of the checkpoints; a tracker left behind (killed in between, or off after
a failure) gets the missing epochs from the history when the run resumes. Each tracked run's id is kept
in RUN/logs/trackers.json, with the epochs it holds, and in the history (so in every checkpoint and the
JSON log): a resume continues the same tracked run. A resume from an older epoch than a tracker holds is
a branch: TensorBoard hides the later steps (its own purge_step); MLflow and W&B, which cannot take back
a logged value, go on in a new tracked run that starts with the epochs up to the branch point, tagged
with the run it left (MLflow also tags the old run with the new one).

`useg evaluate` on a run's own checkpoint reopens the run's tracked runs without changing their state
(tracker_evaluation.log_evaluation): `evaluation/<split>_dice` at the checkpoint's epoch, and the sweep pictures.

This module plans and drives the trackers; the three of them are in tracker_stores.

Anonymous: the config without its paths, the data layout, classes and counts; never a file or patient name.
"""

from __future__ import annotations

import importlib
import json
import logging
import tempfile
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from useg.files import json_text, write_file_atomically
from useg.training.history import epoch_rows, read_log
from useg.training.tracker_stores import OPENERS, PACKAGES

STATE_NAME = "trackers.json"  # in RUN/logs/: {tracker: {run_id, logged_through[, outcome]}}
RUNS_KEY = "tracker_runs"  # the history's {tracker: run id}
PATH_KEYS = ("data", "held_out_data", "annotations", "split_file", "pretrained", "run_dir")  # settings that name files: not logged


def tracker_names(cfg) -> list[str]:
    """The trackers a run uses: its --tracker list, plus tensorboard for --tensorboard (the alias), each once."""
    return list(dict.fromkeys([*cfg.trackers, *(["tensorboard"] if cfg.tensorboard else [])]))


def saved_tracker_names(config: dict[str, Any]) -> list[str]:
    """tracker_names of a config as a checkpoint saved it (older ones have no `trackers`)."""
    trackers = config.get("trackers") or []
    return list(dict.fromkeys([*trackers, *(["tensorboard"] if config.get("tensorboard") else [])]))


@dataclass
class About:
    """What a new tracked run is told about itself (anonymous)."""

    name: str  # the run folder's name
    params: dict[str, Any]
    tags: dict[str, str]


@dataclass
class Start:
    """Where one tracker starts in this session."""

    run_id: str | None = None  # the tracked run to continue; None: a new one
    logged: int = 0  # epochs it holds (the next logged is logged + 1)
    branch_epoch: int | None = None  # a resume from an older epoch than the tracker holds
    abandoned: int = 0  # then: the last epoch of the branch left behind
    branch_of: str | None = None  # then: the tracked run left behind (MLflow, W&B)


def plan_start(name: str, entry: dict | None, saved_id: str | None, epoch: int, fresh: bool) -> Start:
    """Continue the tracked run the checkpoint (else the run folder) names, as far as the run folder says it
    got; a new run starts a new one; a tracked run holding epochs past `epoch` (the resumed one) is a branch."""
    if fresh:
        return Start()
    entry = entry or {}
    if name == "tensorboard":  # one folder and no ids: its purge_step hides the steps past the branch
        logged = entry.get("logged_through", epoch)  # older runs logged every epoch at once
        return Start(logged=min(logged, epoch), branch_epoch=epoch if logged > epoch else None, abandoned=logged)
    run_id = saved_id or entry.get("run_id")
    if run_id is None:
        return Start()  # asked for on this resume: a new tracked run, given the epochs so far
    logged = entry.get("logged_through", epoch) if entry.get("run_id") == run_id else epoch
    if logged > epoch:
        return Start(branch_epoch=epoch, abandoned=logged, branch_of=run_id)
    return Start(run_id=run_id, logged=logged)


def describe_run(paths, log: dict[str, Any]) -> About:
    """Parameters and tags from the log's header, which holds no patient names; paths left out."""
    params = {key: value for key, value in log.get("config", {}).items() if key not in PATH_KEYS}
    data = log.get("data", {})
    report = data.get("report", {})
    tags = {"useg.data_layout": str(data.get("source")), "useg.classes": ",".join(data.get("classes", [])),
            "useg.patients": str(report.get("patients", "")), "useg.images": str(report.get("images", "")),
            "useg.split_sizes": json.dumps(data.get("split_sizes", {})),
            "useg.version": str(log.get("environment", {}).get("useg", ""))}
    return About(Path(paths.root).resolve().name, params, tags)


def epoch_metrics(row: dict[str, Any], extras: dict[str, float] | None = None) -> dict[str, float]:
    """One history row as numbers: per-class values as `key/class`, lists (checkpoints written) as counts."""
    metrics: dict[str, float] = {}
    for key, value in {**row, **(extras or {})}.items():
        if key == "epoch" or value is None or isinstance(value, bool):
            continue
        if isinstance(value, dict):
            metrics.update({f"{key}/{name}": float(item) for name, item in value.items() if item is not None})
        elif isinstance(value, list):
            metrics[key] = float(len(value))
        elif isinstance(value, (int, float)):
            metrics[key] = float(value)
    return {metric_name(key): value for key, value in metrics.items()}


def steps_to_log(history: dict[str, Any], logged: int, extras: dict[str, float] | None) -> list[tuple[int, dict]]:
    """The epochs after `logged` as (step, metrics), `extras` with the newest; step 0, the val Dice (and
    held-out Dice) before training, goes with epoch 1."""
    rows = epoch_rows(history)
    steps = [(row["epoch"], epoch_metrics(row, extras if row["epoch"] == len(rows) else None)) for row in rows[logged:]]
    if logged == 0 and steps and history.get("initial_val_dice") is not None:
        steps.insert(0, (0, untrained_metrics(history)))
    return steps


def untrained_metrics(history: dict[str, Any]) -> dict[str, float]:
    """Step 0: the scores before training, under the names the epochs log them by."""
    return epoch_metrics({"val_dice": history["initial_val_dice"],
                          "held_out_dice": history.get("initial_held_out_dice"),
                          "held_out_dice_per_dataset": history.get("initial_held_out_dice_per_dataset")})


def metric_name(key: str) -> str:
    """A name every tracker takes (MLflow refuses e.g. `+`)."""
    return "".join(char if char.isalnum() or char in "_-./ " else "_" for char in key)


def short_reason(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0][:200]}" if lines else type(error).__name__


@contextmanager
def quiet_libraries() -> Iterator[None]:
    """The trackers' own INFO lines (MLflow's "Creating initial MLflow database tables") and warnings
    stay off the training screen."""
    loggers = [logging.getLogger(name) for name in ("mlflow", "alembic")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)



# --- the run's trackers together ------------------------------------------------------------------


@dataclass
class Trackers:
    """The trackers one run logs to; empty (false) when none is asked for and on ranks other than 0."""

    state_path: Path | None = None
    warn: Callable[[str], None] = print
    runs: dict[str, Any] = field(default_factory=dict)
    state: dict[str, dict[str, Any]] = field(default_factory=dict)  # what trackers.json holds, per tracker
    state_failed: bool = False

    def __bool__(self) -> bool:
        return bool(self.runs)

    def attempt(self, name: str, action: Callable[[], Any]) -> bool:
        """Run one tracker call; a failure turns that tracker off for the rest of the run, with one warning."""
        try:
            with quiet_libraries():
                action()
            return True
        except Exception as error:  # any failure of an optional tracker: training goes on without it
            tracker = self.runs.pop(name, None)
            self.warn(f"{name} tracking failed ({short_reason(error)}); it is off for the rest of this run: "
                      "training and checkpoints go on, and a resume gives it the epochs it missed")
            if tracker is not None:
                try:
                    tracker.close("failed")
                except Exception:  # it is already broken; closing is a courtesy
                    pass
            return False

    def log_epochs(self, history: dict[str, Any], extras: dict[str, float] | None = None) -> None:
        """Every epoch of `history` a tracker lacks, oldest first (`extras` go with the newest one: what only
        the live loop knows, such as this epoch's save counts); then the run folder records how far each got."""
        for name in list(self.runs):
            for step, metrics in steps_to_log(history, self.state[name]["logged_through"], extras):
                if not self.attempt(name, lambda: self.runs[name].log_epoch(step, metrics)):
                    break
                self.state[name]["logged_through"] = step
        self.save_state()

    def save_state(self) -> None:
        if self.state_path is None or self.state_failed:
            return
        record = {"format": "useg-trackers", "format_version": 1, "trackers": self.state}
        try:
            write_file_atomically(self.state_path, (json_text(record) + "\n").encode("utf-8"), create_folder=True)
        except Exception as error:  # the trackers are optional; their bookkeeping must not stop training
            self.state_failed = True
            self.warn(f"cannot record the trackers' progress in {self.state_path} ({short_reason(error)}); "
                      "a resume may log some epochs again")

    def close(self, outcome: str, history: dict[str, Any], paths, upload_best: bool = False) -> None:
        """Close every tracker; a finished run first gives them its results: the curves picture and the best
        checkpoint's path and SHA-256 (the file itself with `upload_best`)."""
        if outcome == "finished" and self.runs:
            with tempfile.TemporaryDirectory() as folder:
                result, pictures, best = run_results(history, paths, Path(folder), upload_best, self.warn)
                for name in list(self.runs):
                    self.attempt(name, lambda: self.runs[name].log_result(result, pictures, best))
        closed = False
        for name in list(self.runs):
            if self.attempt(name, lambda: self.runs[name].close(outcome)):
                # How it ended: W&B can only be reopened later (useg evaluate) with the same ending.
                self.state[name]["outcome"] = outcome
                closed = True
        self.runs.clear()
        if closed:
            self.save_state()


def run_results(history: dict[str, Any], paths, folder: Path, upload_best: bool,
                warn: Callable[[str], None]) -> tuple[dict[str, Any], list[Path], Path | None]:
    """The finished run's results for the trackers: best val Dice and epoch (a run whose best is chosen by
    --best-metric held_out_dice: that metric and its best value, best_val_dice None as in its history),
    best_model.pt's path (relative to the run folder) and SHA-256 from its sidecar, the curves picture drawn
    into `folder`, and the best file."""
    from useg.checkpoint import BEST_NAME, read_metadata
    from useg.training.history import plot_curves

    best = paths.checkpoints / BEST_NAME
    result = {"best_val_dice": history.get("best_val_dice"), "best_epoch": history.get("best_epoch")}
    if history.get("best_metric") not in (None, "val_dice"):
        result.update(best_metric=history["best_metric"], best_value=history.get("best_value"))
    if best.is_file():
        result.update(best_checkpoint=str(best.relative_to(paths.root)),
                      best_checkpoint_sha256=(read_metadata(best) or {}).get("sha256"))
    pictures = []
    try:
        pictures.append(plot_curves(history, folder / "training_curves.png"))
    except Exception as error:  # a picture the trackers cannot get must not fail the finished run
        warn(f"the trackers get no curves picture ({short_reason(error)})")
    return result, pictures, best if upload_best and best.is_file() else None


def read_state(path: Path) -> dict[str, dict[str, Any]]:
    """trackers.json's per-tracker records; {} when missing or unreadable (the checkpoint's ids still hold)."""
    record = read_log(path) or {}
    trackers = record.get("trackers")
    return trackers if isinstance(trackers, dict) else {}


def open_trackers(cfg, paths, log: dict[str, Any], history: dict[str, Any], epoch: int, fresh: bool,
                  warn: Callable[[str], None]) -> Trackers:
    """Open the run's trackers (rank 0) after its log is started; a resumed run's trackers get the epochs
    they lack at once. The tracked runs' ids go into the history, so every checkpoint carries them."""
    trackers = Trackers(paths.logs / STATE_NAME, warn)
    names = tracker_names(cfg)
    if not names:
        return trackers
    trackers.state = {} if fresh else read_state(trackers.state_path)
    ids = {} if fresh else dict(history.get(RUNS_KEY) or {})
    about = describe_run(paths, log)
    for name in names:
        entry = trackers.state.get(name)
        if name == "tensorboard" and entry is None and not fresh:  # a run older than trackers.json, or new to it
            entry = {"logged_through": epoch if any((paths.logs / "tensorboard").glob("events.*")) else 0}
        start = plan_start(name, entry, ids.get(name), epoch, fresh)
        tracker = open_tracker(name, paths, start, about, warn)
        if tracker is None:
            continue
        trackers.runs[name] = tracker
        trackers.state[name] = {"run_id": tracker.run_id, "logged_through": start.logged}
        if tracker.run_id is not None:
            ids[name] = tracker.run_id
    history[RUNS_KEY] = ids
    trackers.log_epochs(history)
    return trackers


def open_tracker(name: str, paths, start: Start, about: About, warn: Callable[[str], None]) -> Any:
    """One tracker, or None after one warning line when its package is missing or it cannot start."""
    try:
        importlib.import_module(PACKAGES[name])  # first: importing MLflow sets its loggers' levels
        with quiet_libraries():
            return OPENERS[name](paths, start, about)
    except ImportError:
        warn(f"--tracker {name} needs the {PACKAGES[name]} package (pip install 'useg[{name}]'); "
             "continuing without it")
    except Exception as error:  # an optional tracker that cannot start: training goes on without it
        warn(f"{name} tracking could not start ({short_reason(error)}); continuing without it")
    return None

"""Experiment trackers: what logging an epoch costs, against a default training epoch.

Per epoch: `Trackers.log_epochs` for one new epoch (every metric of a default run's epoch row, then the
run folder's trackers.json rewritten atomically), timed in this process on a tracker opened as
`useg train` opens it (MLflow: the SQLite store in the run folder; TensorBoard; W&B offline), for each
tracker that is installed. The loop also waits for the epoch's checkpoint before logging; at the
defaults the pictures take longer than that write, so the wait is nothing (the runs below include it).

Per run: `useg train` at its defaults for one epoch with and without `--tracker mlflow`, launched in turn;
the epoch's time (epoch_time_s) and the whole command's wall time, whose difference is the tracker's
start (importing MLflow, creating its store) and its end (the curves picture, the best file's SHA-256).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from useg.run_folder import run_paths
from useg.training.history import new_history
from useg.training.trackers import epoch_metrics, open_trackers

from .common import Row, Section, Settings, child_env, interleaved, median, run_timed, seconds, shell, spread
from .common import useg_args, verdict

GOAL = 0.01  # of a default epoch (issue 30)


class Config:
    """What open_trackers reads of a TrainConfig."""

    def __init__(self, tracker: str):
        self.trackers, self.tensorboard = [tracker], False


def run(settings: Settings) -> list[Section]:
    section = Section("Experiment trackers: cost of logging an epoch (local stores)", "with the tracker",
                      "a default epoch")
    started = time.perf_counter()
    rounds = 1 if settings.quick else 3
    command = useg_args("train", "--run-dir", "RUN", "--epochs", "1", "--quiet")
    runs = iter(range(10**6))
    logs: dict[str, list[dict]] = {"mlflow": [], "none": []}

    def timed(tracker: str):
        def one() -> float:
            run_dir = settings.workdir / f"trackers_{next(runs)}"
            extra = ["--tracker", tracker] if tracker != "none" else []
            elapsed, _ = run_timed([str(run_dir) if arg == "RUN" else arg for arg in command] + extra, env=child_env())
            logs[tracker].append(json.loads(next((run_dir / "logs").glob("training_*.json")).read_text()))
            return elapsed
        return one

    walls = interleaved({"mlflow": timed("mlflow"), "none": timed("none")}, rounds)
    epoch_s = median([log["epochs"][-1]["epoch_time_s"] for log in logs["none"]])
    row = logs["none"][-1]["epochs"][-1]
    for tracker in ("mlflow", "tensorboard", "wandb"):
        costs = per_epoch_costs(settings.workdir / f"per_epoch_{tracker}", tracker, row, 10 if settings.quick else 30)
        if costs is None:
            section.reading.append(f"{tracker} is not installed here: not measured (pip install 'useg[{tracker}]').")
            continue
        share = median(costs) / epoch_s
        section.rows.append(Row(
            case=f"{tracker}: one epoch's {len(epoch_metrics(row))} metrics and trackers.json",
            command="`Trackers.log_epochs` in-process (bench/trackers.py)", ours=spread(costs),
            baseline=f"{seconds(epoch_s)} (epoch_time_s)", ratio=f"{share:.2%} of the epoch",
            goal=f"< {GOAL:.0%}" if tracker == "mlflow" else "", verdict=verdict(share < GOAL) if tracker == "mlflow" else ""))
        section.results[tracker] = share
    extra = median(walls["mlflow"]) - median(walls["none"])
    section.rows.append(Row(
        case="the whole command: start (import, store) and end (curves, SHA-256) of --tracker mlflow",
        command=f"`{shell(command)} --tracker mlflow` vs without", ours=spread(walls["mlflow"]),
        baseline=spread(walls["none"]), ratio=f"{extra:+.1f} s once per run"))
    section.reading.append(
        f"Logging one epoch to a local MLflow store costs {section.results.get('mlflow', float('nan')):.2%} of a "
        f"default epoch ({seconds(epoch_s)}): one log_batch into SQLite and one atomic rewrite of trackers.json. "
        f"A run pays {extra:.1f} s once for MLflow itself (importing it and creating its store in the run folder, "
        "closing with the curves picture), medians of interleaved runs on this machine.")
    section.seconds = time.perf_counter() - started
    return [section]


def per_epoch_costs(folder: Path, tracker: str, row: dict, epochs: int) -> list[float] | None:
    """Seconds of `log_epochs` for each new epoch, the same row each time; None when the tracker is missing."""
    paths = run_paths(folder)
    log = {"config": {"epochs": epochs}, "data": {"source": "synthetic", "classes": list(row["val_dice_per_class"])}}
    messages: list[str] = []
    trackers = open_trackers(Config(tracker), paths, log, new_history(), 0, fresh=True, warn=messages.append)
    if not trackers:
        return None
    history, costs = new_history(), []
    try:
        for _ in range(epochs):
            for key, value in row.items():
                if key != "epoch":
                    history[key].append(value)
            started = time.perf_counter()
            trackers.log_epochs(history, {"routine_saves": 0, "coalesced_saves": 0})
            costs.append(time.perf_counter() - started)
    finally:
        trackers.close("finished", history, paths)
    if messages:
        raise RuntimeError(f"{tracker}: {messages}")
    return costs


if __name__ == "__main__":  # python -m bench.trackers: this section alone, printed
    import tempfile

    from .report import _section

    with tempfile.TemporaryDirectory(prefix="useg-bench-") as scratch:
        quick = "--quick" in sys.argv
        sections = run(Settings(quick=quick, workdir=Path(scratch)))
    print("\n".join(line for section in sections for line in _section(section)))

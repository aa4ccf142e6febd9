"""Row (f): samples/s of one default training epoch (`useg train` with its defaults).

Read from the run's JSON log (`samples_per_s`: samples_per_epoch over the epoch's time,
validation included). For scale it is set against the model alone: forward+backward
samples/s at the same configuration, from the model benchmark of this run.
"""

from __future__ import annotations

import json
import time

from .common import Row, Section, Settings, child_env, median, run_timed, shell, spread, useg_args
from .model_step import TRAINING


def run(settings: Settings) -> list[Section]:
    section = Section("Default training epoch", "`useg train` epoch", "model fwd+bwd alone")
    started = time.perf_counter()
    runs = 1 if settings.quick else 3
    samples_per_s, wall = [], []
    command = useg_args("train", "--run-dir", "RUN", "--epochs", "1", "--quiet", "--vis-every", "0")
    for index in range(runs):
        run_dir = settings.workdir / f"train_{index}"
        elapsed, _ = run_timed([str(run_dir) if arg == "RUN" else arg for arg in command], env=child_env())
        wall.append(elapsed)
        log = json.loads(next((run_dir / "logs").glob("training_*.json")).read_text())
        samples_per_s.append(log["epochs"][-1]["samples_per_s"])
    model_rate = _model_samples_per_s(settings)
    ours = median(samples_per_s)
    section.rows.append(Row(
        case=TRAINING.name + ", 512 samples, validation included",
        command=f"`{shell(command)}`, samples_per_s from RUN/logs/training_*.json",
        ours=spread(samples_per_s, lambda v: f"{v:.1f} samples/s"),
        baseline=f"{model_rate:.1f} samples/s" if model_rate else "-",
        ratio=f"{ours / model_rate:.0%} of the model's rate" if model_rate else "-",
    ))
    section.reading.append(
        f"A default epoch trains at {ours:.1f} samples/s; the whole command took {median(wall):.0f} s "
        "(start-up, data, validation and the checkpoint included)." + _against_model(ours, model_rate))
    section.seconds = time.perf_counter() - started
    return [section]


def _model_samples_per_s(settings: Settings) -> float | None:
    for section in settings.done.get("model", []):
        times = section.results.get(TRAINING)
        if times:
            return TRAINING.batch / median(times["split"])
    return None


def _against_model(ours: float, model_rate: float | None) -> str:
    if not model_rate:
        return ""
    if ours >= model_rate:
        return (f" The model benchmark measured fewer samples/s ({model_rate:.1f}) than the whole epoch, "
                "which means the machine's load changed between the two: compare them on a quiet machine.")
    return (f" The model's forward+backward alone runs at {model_rate:.1f} samples/s at this configuration, so "
            f"the rest (task sampling and augmentation, the Adam step, validation) takes {1 - ours / model_rate:.0%} "
            "of the epoch's time.")

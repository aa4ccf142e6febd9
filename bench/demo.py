"""The README's main job: the default `useg train` (embedded dataset, no flags), start to finish.

Issue 2's promise: it reaches validation Dice >= 0.75; the untrained model's Dice is the
baseline (measured by the run itself before its first step and kept in the log's history as
`initial_val_dice`). Issue 28's: its wall time is no more than 1.2x that of the code of
2026-11-29 (commit e390b83) at its own default, run side by side here: that code's src/ is
taken from git into the work folder and run with the same interpreter and packages.
"""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
import time
from pathlib import Path

from .common import REPO, Row, Section, Settings, child_env, run_timed, shell, useg_args

REFERENCE_COMMIT = "e390b83"  # 2026-11-29: the code whose `make demo` took about 2 minutes then
TIME_GOAL = 1.2


def run(settings: Settings) -> list[Section]:
    section = Section("Default training run (`make demo`)", "trained", "untrained")
    if settings.quick:
        section.reading.append("Skipped with --quick (the whole default run takes about 2 minutes).")
        return [section]
    started = time.perf_counter()
    command = useg_args("train", "--run-dir", "RUN", "--quiet")
    reference = reference_source(settings.workdir)
    old = demo_run(command, settings.workdir / "demo_reference", reference) if reference else None
    elapsed, history = demo_run(command, settings.workdir / "demo", None)
    best, untrained = history["best_val_dice"], history["initial_val_dice"]
    epochs = len(history["val_dice"])
    section.rows.append(Row(
        case=f"defaults: {epochs} epochs, validation Dice (best epoch {history['best_epoch']})",
        command=f"`{shell(command)}`", ours=f"{best:.4f}", baseline=f"{untrained:.4f}",
        ratio=f"+{best - untrained:.4f}", goal=">= 0.75", verdict="met" if best >= 0.75 else "**missed**"))
    if old is None:
        section.rows.append(Row(
            case="defaults: wall time of the whole command", command=f"`{shell(command)}`",
            ours=f"{elapsed:.0f} s (1 run)", baseline="-", ratio="-", goal=""))
        section.reading.append(f"The code of {REFERENCE_COMMIT} is not in this clone's git history: not run beside it.")
    else:
        old_elapsed, old_history = old
        ratio = elapsed / old_elapsed
        section.rows.append(Row(
            case=f"defaults: wall time of the whole command, against the code of 2026-11-29 ({REFERENCE_COMMIT}) "
                 "at its default, run just before",
            command=f"`{shell(command)}` (and the same with PYTHONPATH=that code's src)",
            ours=f"{elapsed:.0f} s (1 run)", baseline=f"{old_elapsed:.0f} s (1 run)", ratio=f"{ratio:.2f}x",
            goal=f"<= {TIME_GOAL}x", verdict="met" if ratio <= TIME_GOAL else "**missed**"))
        section.reading.append(
            f"The code of {REFERENCE_COMMIT} took {old_elapsed:.0f} s for its default run here (best validation "
            f"Dice {old_history['best_val_dice']:.4f}, its own recipe: no task augmentation, Dice loss), "
            f"today's {elapsed:.0f} s.")
    section.reading.append(
        f"The default run took {elapsed:.0f} s and reached a best validation Dice of {best:.4f} "
        f"(untrained: {untrained:.4f}); per-epoch times are in the run's log.")
    section.seconds = time.perf_counter() - started
    return [section]


def demo_run(command: list[str], run_dir: Path, source: Path | None) -> tuple[float, dict]:
    """Wall time and history of the default run into `run_dir`, with our code or that in `source`."""
    env = child_env() if source is None else child_env(PYTHONPATH=str(source))
    elapsed, _ = run_timed([str(run_dir) if arg == "RUN" else arg for arg in command], env=env)
    return elapsed, json.loads(next((run_dir / "logs").glob("training_*.json")).read_text())["history"]


def reference_source(workdir: Path) -> Path | None:
    """The reference commit's src/ folder, extracted into the work folder; None without that git history."""
    try:
        archive = subprocess.run(["git", "-C", str(REPO), "archive", REFERENCE_COMMIT, "src"],
                                 capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    target = workdir / f"code_{REFERENCE_COMMIT}"
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(target, filter="data")
    return target / "src"

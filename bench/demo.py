"""The README's main job: the default `useg train` (embedded dataset, no flags), start to finish.

Issue 2's promise: it finishes within about 3 minutes on 2 CPU cores and reaches validation
Dice >= 0.75; the untrained model's Dice is the baseline (measured by the run itself before
its first step and kept in the log's history as `initial_val_dice`).
"""

from __future__ import annotations

import json
import time

from .common import Row, Section, Settings, child_env, run_timed, shell, useg_args


def run(settings: Settings) -> list[Section]:
    section = Section("Default training run (`make demo`)", "trained", "untrained")
    if settings.quick:
        section.reading.append("Skipped with --quick (the whole default run takes about 2 minutes).")
        return [section]
    started = time.perf_counter()
    run_dir = settings.workdir / "demo"
    command = useg_args("train", "--run-dir", "RUN", "--quiet")
    elapsed, _ = run_timed([str(run_dir) if arg == "RUN" else arg for arg in command], env=child_env())
    history = json.loads(next((run_dir / "logs").glob("training_*.json")).read_text())["history"]
    best, untrained = history["best_val_dice"], history["initial_val_dice"]
    epochs = len(history["val_dice"])
    section.rows.append(Row(
        case=f"defaults: {epochs} epochs, validation Dice (best epoch {history['best_epoch']})",
        command=f"`{shell(command)}`", ours=f"{best:.4f}", baseline=f"{untrained:.4f}",
        ratio=f"+{best - untrained:.4f}", goal=">= 0.75", verdict="met" if best >= 0.75 else "**missed**"))
    section.rows.append(Row(
        case="defaults: wall time of the whole command", command=f"`{shell(command)}`",
        ours=f"{elapsed:.0f} s (1 run)", baseline="-", ratio="-", goal="about 3 min",
        verdict="met" if elapsed <= 200 else "**missed**"))
    section.reading.append(
        f"The default run took {elapsed:.0f} s and reached a best validation Dice of {best:.4f} "
        f"(untrained: {untrained:.4f}); per-epoch times are in the run's log.")
    section.seconds = time.perf_counter() - started
    return [section]

"""Row (c): process start to the first optimisation step, resuming from a checkpoint vs starting fresh.

Both runs are stopped right after their first step by the fault-injection hook
(`USEG_KILL_AT=step:1`, the process SIGKILLs itself), so the time measured is launch to
exit. Nothing is added to the product for this.
"""

from __future__ import annotations

import signal
import time

from .common import Row, Section, Settings, child_env, interleaved, median, run_timed, seconds, spread, useg_args

TINY = ["--widths", "8,8", "--image-size", "32", "--batch-size", "2", "--support-size", "2",
        "--samples-per-epoch", "8", "--vis-every", "0", "--quiet"]
KILLED = (-signal.SIGKILL, 128 + signal.SIGKILL)


def run(settings: Settings) -> list[Section]:
    section = Section("Resume: process start to the first optimisation step", "resume", "fresh start")
    started = time.perf_counter()
    root = settings.workdir / "resume"
    resumed_run = root / "resumed"
    run_timed(useg_args("train", "--run-dir", str(resumed_run), "--epochs", "1", *TINY), env=child_env())
    fresh_runs = iter(range(1000))
    resume_args = useg_args("train", "--run-dir", "RUN", "--resume", "--epochs", "2", *TINY)
    fresh_args = useg_args("train", "--run-dir", "NEW_RUN", "--epochs", "2", *TINY)
    env = child_env(USEG_KILL_AT="step:1")

    def resume() -> float:
        args = [str(resumed_run) if arg == "RUN" else arg for arg in resume_args]
        return run_timed(args, env=env, expect=KILLED)[0]

    def fresh() -> float:
        new_run = root / f"fresh_{next(fresh_runs)}"
        args = [str(new_run) if arg == "NEW_RUN" else arg for arg in fresh_args]
        return run_timed(args, env=env, expect=KILLED)[0]

    runs = 3 if settings.quick else 5
    times = interleaved({"resume": resume, "fresh": fresh}, runs, warmup=1)
    extra = median(times["resume"]) - median(times["fresh"])
    ratio = median(times["resume"]) / median(times["fresh"])
    tiny = " ".join(TINY)
    section.rows.append(Row(
        case=f"tiny model ({tiny}), resumed from its epoch-1 checkpoint",
        command="`USEG_KILL_AT=step:1 python -m useg train --run-dir RUN --resume --epochs 2 ...` vs "
                "`USEG_KILL_AT=step:1 python -m useg train --run-dir NEW_RUN --epochs 2 ...`",
        ours=spread(times["resume"]), baseline=spread(times["fresh"]), ratio=f"{ratio:.2f}x",
    ))
    section.reading.append(
        f"Resuming costs {seconds(abs(extra))} {'more' if extra >= 0 else 'less'} than a fresh start "
        f"({ratio:.2f}x): finding latest, checking its sha256 against the sidecar, the weights_only load and "
        "restoring model, optimiser, scheduler, RNG and data position. Both times are dominated by "
        "starting Python and importing torch; with a large state the sha256 and the load grow with the "
        "file size (the 1 GiB writer numbers above give the scale)."
    )
    section.seconds = time.perf_counter() - started
    return [section]

"""The CPU thread count a new run measures (a trial step at each candidate count, the fastest kept)
against every fixed `--num-threads` candidate, side by side, on a quiet machine and with another
process spinning on one core.

Each run is one epoch of 256 samples (`useg train` defaults otherwise); samples/s is the epoch's,
from the run's log (validation included), medians of interleaved rounds. Issue 28's goals: the
measured default within 5 % of the best fixed count when quiet, within 10 % with one core busy.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

from .common import Row, Section, Settings, child_env, interleaved, median, run_timed, shell, useg_args

SAMPLES = "256"


def run(settings: Settings) -> list[Section]:
    from useg.compute.device import thread_candidates, usable_cores

    section = Section("CPU threads: the measured default against fixed counts", "measured default",
                      "best fixed --num-threads")
    started = time.perf_counter()
    rounds = 1 if settings.quick else 3
    counts = thread_candidates(usable_cores())
    for condition, busy in (("quiet", False), ("one core busy", True)):
        spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
        try:
            rates, chosen = measure(settings, counts, rounds, condition.replace(" ", "_"))
        finally:
            if spinner is not None:
                spinner.kill()
                spinner.wait()
        best_count = max(counts, key=lambda n: median(rates[str(n)]))
        ours, best = median(rates["default"]), median(rates[str(best_count)])
        goal = 0.95 if not busy else 0.90
        command = shell(epoch_command("RUN"))
        section.rows.append(Row(
            case=f"{condition}: samples/s of one epoch (default chose {sorted(set(chosen))} threads; "
                 f"fixed: " + ", ".join(f"{n}: {median(rates[str(n)]):.1f}" for n in counts) + ")",
            command=f"`{command}` (and with `--num-threads N`)", ours=f"{ours:.1f}",
            baseline=f"{best:.1f} ({best_count} threads)", ratio=f"{ours / best:.2f}x",
            goal=f">= {goal:.2f}x", verdict="met" if ours >= goal * best else "**missed**"))
    section.reading.append(
        f"{rounds} interleaved round(s) per condition of one epoch each for the default and for each fixed count "
        f"({', '.join(map(str, counts))}); 'one core busy' runs `python -c 'while True: pass'` beside them.")
    section.seconds = time.perf_counter() - started
    return [section]


def epoch_command(run_dir: str, *extra: str) -> list[str]:
    return useg_args("train", "--run-dir", run_dir, "--epochs", "1", "--samples-per-epoch", SAMPLES, "--quiet",
                     "--vis-every", "0", *extra)


def measure(settings: Settings, counts: list[int], rounds: int, tag: str) -> tuple[dict[str, list[float]], list]:
    chosen: list[int] = []
    serial = iter(range(10**6))

    def one(*extra: str):
        def go() -> float:
            run_dir = settings.workdir / f"threads_{tag}_{next(serial)}"
            run_timed(epoch_command(str(run_dir), *extra), env=child_env())
            log = json.loads(next((run_dir / "logs").glob("training_*.json")).read_text())
            if not extra:
                chosen.append(log["sessions"][-1].get("thread_choice", {}).get("chosen"))
            return log["epochs"][-1]["samples_per_s"]
        return go

    candidates = {"default": one(), **{str(n): one("--num-threads", str(n)) for n in counts}}
    return interleaved(candidates, rounds), chosen

"""What a run prints: a live bar in a terminal, plain lines in logs, one summary per epoch."""

from __future__ import annotations

import statistics
import sys
import time
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.progress import Progress as RichProgress


class Progress:
    """Training output; `quiet` keeps only epoch summaries and warnings."""

    def __init__(self, console: Console | None = None, quiet: bool = False, silent: bool = False):
        # silent: ranks other than 0 of a distributed run print nothing, so output appears once.
        self.console = console or Console(highlight=False, quiet=silent)
        self.errors = Console(stderr=True, highlight=False, quiet=silent)
        self.quiet = quiet or silent

    def line(self, text: str) -> None:
        if not self.quiet:
            self.console.print(text, markup=False, soft_wrap=True)

    def warn(self, text: str) -> None:
        self.errors.print(f"warning: {text}", markup=False, soft_wrap=True)

    @contextmanager
    def epoch_bar(self, epoch: int, epochs: int, batches: int, start: int):
        """A live bar (batches, loss, speed, ETA) in a terminal; a few plain lines otherwise."""
        if self.quiet or not self.console.is_terminal:
            yield PlainBar(self, epoch, epochs, batches, start)
            return
        columns = (TextColumn(f"epoch {epoch}/{epochs}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[speed]}"),
                   TimeElapsedColumn(), TimeRemainingColumn())
        with RichProgress(*columns, console=self.console, transient=True) as bar:
            task = bar.add_task("train", total=batches, completed=start, loss="-", speed="")
            yield RichBar(bar, task, start)

    def epoch_summary(self, epoch: int, epochs: int, record: dict[str, Any], improved: bool,
                      history: dict[str, Any]) -> None:
        best = " *best*" if improved else f" (best {history['best_val_dice']:.4f} @ {history['best_epoch']})"
        self.console.print(
            f"epoch {epoch:>3}/{epochs}  loss {record['train_loss']:.4f}  val Dice {record['val_dice']:.4f}{best}  "
            f"lr {record['lr']:.2e}  {record['epoch_time_s']:.1f}s  {record['samples_per_s']:.1f} samples/s"
            + skipped_note(record) + slowdown_note(history["samples_per_s"]),
            markup=False, highlight=False, soft_wrap=True)


def skipped_note(record: dict[str, Any]) -> str:
    skipped = record.get("skipped_steps")
    return f"  {skipped} step(s) skipped by the fp16 loss scaler (inf gradients)" if skipped else ""


def slowdown_note(samples_per_s: list) -> str:
    """A warning when the last epoch ran at under a third of the run's median so far (at least two
    earlier epochs): something else took the cores, the classic cause of a 20x slower epoch."""
    earlier = [value for value in samples_per_s[:-1] if value]
    if len(earlier) < 2 or not samples_per_s[-1]:
        return ""
    median = statistics.median(earlier)
    if samples_per_s[-1] >= median / 3:
        return ""
    return (f"  SLOW: under a third of this run's {median:.1f} samples/s; another process may be using these "
            "cores (try --num-threads 1, or fewer than now)")


class RichBar:
    def __init__(self, bar: RichProgress, task, start: int):
        self.bar, self.task, self.done, self.started = bar, task, start, time.perf_counter()
        self.first = start

    def advance(self, loss: float) -> None:
        self.done += 1
        rate = (self.done - self.first) / max(time.perf_counter() - self.started, 1e-9)
        self.bar.update(self.task, advance=1, loss=f"{loss:.4f}", speed=f"{rate:.2f} it/s")


class PlainBar:
    """For logs: a line at each quarter of the epoch, nothing when quiet."""

    def __init__(self, progress: Progress, epoch: int, epochs: int, batches: int, start: int):
        self.progress, self.epoch, self.epochs, self.batches, self.done = progress, epoch, epochs, batches, start
        self.marks = {max(1, round(batches * q / 4)) for q in (1, 2, 3)}

    def advance(self, loss: float) -> None:
        self.done += 1
        if self.done in self.marks:
            self.progress.line(f"  epoch {self.epoch}/{self.epochs} batch {self.done}/{self.batches} loss {loss:.4f}")
            sys.stdout.flush()

"""What a run prints: a live bar in a terminal, plain lines in logs, one summary per epoch."""

from __future__ import annotations

import statistics
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.progress import Progress as RichProgress

from useg.training.history import best_metric, best_value


DEFAULT_SLOW_ADVICE = "another process may be using these cores (try --num-threads 1, or fewer than now)"
# Advise another count only when the kept count's step is this much slower: a switch costs bit-identity.
SWITCH_WORTH = 1.25


def plural(count: int, noun: str) -> str:
    """`1 epoch`, `2 epochs`."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def position_text(epochs_done: int, batch: int = 0, batches: int | None = None, total: int | None = None) -> str:
    """Where a run stands, said the same way by every message, `checkpoints latest/info` and the menu.

    A checkpoint's `epoch` counts complete epochs; mid-epoch the epoch in progress is the next one:
    `epoch 4 of 8, batch 82 of 128 (3 epochs complete)`, and at an epoch's end `3 of 8 epochs complete`.
    """
    if total and epochs_done + (1 if batch else 0) > total:
        total = None  # past the planned total (resumed with a smaller --epochs): "of N" would be nonsense
    of_total = f" of {total}" if total else ""
    if batch:
        of_batches = f" of {batches}" if batches else ""
        return f"epoch {epochs_done + 1}{of_total}, batch {batch}{of_batches} ({plural(epochs_done, 'epoch')} complete)"
    if total:
        return f"{epochs_done} of {plural(total, 'epoch')} complete"
    return f"{plural(epochs_done, 'epoch')} complete"


class Progress:
    """Training output; `quiet` keeps only epoch summaries, outcomes (`notice`) and warnings."""

    def __init__(self, console: Console | None = None, quiet: bool = False, silent: bool = False):
        # silent: ranks other than 0 of a distributed run print nothing, so output appears once.
        self.console = console or Console(highlight=False, quiet=silent)
        self.errors = Console(stderr=True, highlight=False, quiet=silent)
        self.quiet = quiet or silent
        self.live: RichProgress | None = None  # the bar being drawn, if any

    def line(self, text: str) -> None:
        if not self.quiet:
            self.console.print(text, markup=False, soft_wrap=True)

    def notice(self, text: str) -> None:
        """An outcome the user must see even with --quiet (e.g. that there was nothing to train)."""
        self.console.print(text, markup=False, soft_wrap=True)

    def warn(self, text: str) -> None:
        live = self.live
        if live is not None and self.errors.is_terminal:
            # The bar and stderr share the screen: print above the bar, on a line of its own,
            # instead of after the bar's last character. (May be called from the writer thread;
            # rich's console print takes the live display's lock.)
            live.console.print(f"warning: {text}", markup=False, soft_wrap=True)
            return
        self.errors.print(f"warning: {text}", markup=False, soft_wrap=True)

    @contextmanager
    def epoch_bar(self, epoch: int, epochs: int, batches: int, start: int, samples_per_batch: int = 1):
        """A live bar (batches, loss, samples/s, elapsed and remaining time) in a terminal; a few plain lines otherwise."""
        if self.quiet or not self.console.is_terminal:
            yield PlainBar(self, epoch, epochs, batches, start)
            return
        columns = (TextColumn(f"epoch {epoch}/{epochs}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[speed]}"),
                   TextColumn("elapsed"), TimeElapsedColumn(), TextColumn("remaining"), TimeRemainingColumn())
        with RichProgress(*columns, console=self.console, transient=True) as bar:
            task = bar.add_task("train", total=batches, completed=start, loss="-", speed="")
            self.live = bar
            try:
                yield RichBar(bar, task, start, samples_per_batch)
            finally:
                self.live = None

    def epoch_summary(self, epoch: int, epochs: int, record: dict[str, Any], improved: bool,
                      history: dict[str, Any], saves: SaveCounts | None = None, samples_per_epoch: int | None = None,
                      remaining_s: float | None = None, slow_advice: str = DEFAULT_SLOW_ADVICE) -> None:
        """The epoch's line; `remaining_s`: the estimate for the run's remaining epochs (None: none left);
        `slow_advice`: what a SLOW note says after its figure (`slow_advice` below).

        The best mark follows the number that chooses best_model.pt (--best-metric): the val Dice, or the
        held-out Dice, which a run with --held-out-data shows next to it."""
        best = " *best*" if improved else f" (best {best_value(history):.4f} @ {history['best_epoch']})"
        by_held_out = best_metric(history) == "held_out_dice"
        dice = f"val Dice {record['val_dice']:.4f}{'' if by_held_out else best}"
        if record.get("held_out_dice") is not None:
            dice += f"  held-out Dice {record['held_out_dice']:.4f}{best if by_held_out else ''}"
        left = f"  {remaining_text(remaining_s)}" if remaining_s is not None else ""
        slow = slowdown_note(history["samples_per_s"], history.get("samples_trained"), samples_per_epoch, slow_advice)
        self.console.print(
            f"epoch {epoch:>3}/{epochs}  loss {record['train_loss']:.4f}  {dice}  "
            f"lr {record['lr']:.2e}  {record['epoch_time_s']:.1f}s  {record['samples_per_s']:.1f} samples/s{left}"
            + skipped_note(record) + saves_note(saves) + slow,
            markup=False, highlight=False, soft_wrap=True)


def whole_epoch_time(seconds: float, steps_s: float, samples: int, samples_per_epoch: int) -> float:
    """The seconds a whole epoch takes, from one that trained `samples` of its `samples_per_epoch` in
    `steps_s` of its `seconds` (the rest, validation and the save, is the same for any part of an epoch)."""
    return seconds - steps_s + steps_s * samples_per_epoch / max(samples, 1)


def remaining_time(whole_epochs: list[float], epochs_left: int) -> float | None:
    """The run's remaining seconds: the median whole epoch of this session times the epochs left;
    None after the last epoch."""
    if epochs_left <= 0 or not whole_epochs:
        return None
    return statistics.median(whole_epochs) * epochs_left


def remaining_text(seconds: float) -> str:
    """`~40 s left`, `~12 min left`, `~2 h 5 min left`."""
    seconds = round(seconds)
    if seconds < 60:
        return f"~{max(seconds, 1)} s left"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"~{minutes} min left"
    return f"~{minutes // 60} h {minutes % 60} min left"


@dataclass
class SaveCounts:
    """An epoch's routine mid-epoch saves (--save-every-steps/-minutes): how many were asked for, how
    many a newer save replaced before they were written, and the step latest is at when it is said."""

    asked: int = 0
    coalesced: int = 0
    deferred: int = 0  # due, but not taken: over the save budget
    budget: float = 0.0  # --save-budget, percent
    step: int = 0  # the run's step when the counts are said
    latest_step: int | None = None  # the step latest_checkpoint.pt holds then (None: none yet)


def saves_note(saves: SaveCounts | None) -> str:
    """When routine saves were coalesced, say so and how far latest lags: `--save-every-steps 1` is then
    not a save every step, and a kill now loses the steps latest is behind."""
    if saves is None or not (saves.coalesced or saves.deferred):
        return ""
    if saves.latest_step is None:
        where = "no latest written yet"
    elif saves.latest_step >= saves.step:
        where = f"latest at step {saves.latest_step}"
    else:
        where = f"latest at step {saves.latest_step} ({saves.step - saves.latest_step} behind)"
    held = []
    if saves.deferred:
        held.append(f"{saves.deferred} of {saves.asked} deferred by the {saves.budget:g}% save budget")
    if saves.coalesced:
        held.append(f"{saves.coalesced} coalesced" if held else f"{saves.coalesced} of {saves.asked} coalesced")
    return f"  saves: {', '.join(held)}, {where}"


def skipped_note(record: dict[str, Any]) -> str:
    skipped = record.get("skipped_steps")
    return f"  {skipped} step(s) skipped by the fp16 loss scaler (inf gradients)" if skipped else ""


def slow_median(samples_per_s: list, samples_trained: list | None = None,
                samples_per_epoch: int | None = None) -> float | None:
    """The run's median samples/s when the last epoch ran at under a third of it (at least two earlier
    epochs): something else took the cores, the classic cause of a 20x slower epoch; None otherwise.

    Only whole epochs are compared: the rest of an epoch resumed mid-way pays a whole validation for
    fewer samples, so its samples/s is lower without anything being wrong."""
    trained = samples_trained or []
    whole = [rate if samples_per_epoch is None or index >= len(trained) or trained[index] in (None, samples_per_epoch)
             else None for index, rate in enumerate(samples_per_s)]
    earlier = [value for value in whole[:-1] if value]
    if len(earlier) < 2 or not whole[-1]:
        return None
    median = statistics.median(earlier)
    return median if whole[-1] < median / 3 else None


def slowdown_note(samples_per_s: list, samples_trained: list | None = None,
                  samples_per_epoch: int | None = None, advice: str = DEFAULT_SLOW_ADVICE) -> str:
    """The epoch line's warning when the last epoch was slow (`slow_median`), then `advice`."""
    median = slow_median(samples_per_s, samples_trained, samples_per_epoch)
    if median is None:
        return ""
    return f"  SLOW: under a third of this run's {median:.1f} samples/s; {advice}"


def trial_seconds_record(seconds: dict[int, float]) -> dict[str, float]:
    """Seconds per trial step by thread count, as the log records them (`seconds_per_trial_step`)."""
    return {str(n): round(s, 4) for n, s in seconds.items()}


@dataclass
class ThreadRecheck:
    """The trial step re-timed at each candidate thread count after a slow epoch (seconds per step), the
    count found fastest, and the count the run keeps computing with."""

    seconds: dict[int, float]
    fastest: int
    kept: int

    def record(self, epoch: int) -> dict[str, Any]:
        """The log's record of this re-check (the session's `thread_rechecks`)."""
        return {"epoch": epoch, "seconds_per_trial_step": trial_seconds_record(self.seconds),
                "fastest": self.fastest, "kept": self.kept}

    def worth_switching(self) -> bool:
        """Whether another count ran the step clearly faster than the kept one."""
        return self.fastest != self.kept and self.seconds[self.kept] > SWITCH_WORTH * self.seconds[self.fastest]


def slow_advice(recheck: ThreadRecheck | None = None, cpu_threads: int | None = None) -> str:
    """What a SLOW note advises: what the re-timed trial step found (`recheck`); else, for a one-process
    CPU run whose count was not re-timed (`cpu_threads`: set by --num-threads or by its checkpoint), what
    fewer threads would mean; else (a GPU, several processes) the general advice."""
    if recheck is not None:
        timings = ", ".join(f"{plural(n, 'thread')} {s:.2f} s" for n, s in recheck.seconds.items())
        said = f"re-timed a step here: {timings}"
        if not recheck.worth_switching():
            standing = ("still the fastest" if recheck.fastest == recheck.kept
                        else f"within {round(SWITCH_WORTH * 100 - 100)} % of the fastest")
            return (f"{said}; {plural(recheck.kept, 'thread')} {'is' if recheck.kept == 1 else 'are'} {standing} "
                    "here: something else slows this machine")
        return (f"{said}. The run keeps computing with {recheck.kept} (its results depend on the count); to switch, "
                f"stop and resume with --num-threads {recheck.fastest} (the resume then says it is not bit-identical)")
    if cpu_threads == 1:
        return "another process may be using these cores (this run already computes with 1 thread)"
    if cpu_threads:
        return (f"another process may be using these cores; fewer threads than this run's {cpu_threads} may be "
                "faster: stop and resume with --num-threads 1 (the resume then says it is not bit-identical)")
    return DEFAULT_SLOW_ADVICE


class RichBar:
    """Advances the live bar; its speed is in samples/s, like the epoch summary lines."""

    def __init__(self, bar: RichProgress, task, start: int, samples_per_batch: int):
        self.bar, self.task, self.done, self.started = bar, task, start, time.perf_counter()
        self.first, self.samples_per_batch = start, samples_per_batch

    def advance(self, loss: float) -> None:
        self.done += 1
        rate = (self.done - self.first) * self.samples_per_batch / max(time.perf_counter() - self.started, 1e-9)
        self.bar.update(self.task, advance=1, loss=f"{loss:.4f}", speed=f"{rate:.1f} samples/s")


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

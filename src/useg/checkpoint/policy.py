"""When to write which file, and which periodic files to keep: small pure rules, no I/O."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping

DEFAULT_PERCENTAGES = (20, 40, 60, 80, 100)
# "mid_epoch": a routine save every few steps or minutes; "interrupt": the save on a signal.
# Both refresh latest only; files from before "mid_epoch" existed call every mid-epoch save "interrupt".
SAVE_KINDS = ("epoch", "mid_epoch", "interrupt")
MID_EPOCH_KINDS = ("mid_epoch", "interrupt")
BEST_MODES = ("max", "min")


@dataclass(frozen=True)
class SavePlan:
    """The files one `save()` writes: latest always (as `latest_kind`), periodic and best when due."""

    latest_kind: str
    periodic: bool
    best: bool


def periodic_epochs(total_epochs: int, percentages: Iterable[int] = DEFAULT_PERCENTAGES) -> frozenset[int]:
    """Epochs that get an `epoch_NNN_checkpoint.pt`: for each p, the first epoch at or after p% of the run.

    That is ceil(total * p / 100) in integer maths, at least 1; a set, so never two files
    per epoch. 50 -> {10, 20, 30, 40, 50}; 7 -> {2, 3, 5, 6, 7}; 3 -> {1, 2, 3}.
    """
    if type(total_epochs) is not int or total_epochs < 1:
        raise ValueError(f"total_epochs must be a positive int, got {total_epochs!r}")
    return frozenset(max(1, -(-total_epochs * p // 100)) for p in _checked_percentages(percentages))


@dataclass(frozen=True)
class BestRule:
    """What "best" means: the metric's name and whether higher (`max`) or lower (`min`) is better."""

    metric: str = "val_dice"
    mode: str = "max"

    def __post_init__(self) -> None:
        if not isinstance(self.metric, str) or not self.metric:
            raise ValueError(f"best_metric must be a metric's name, got {self.metric!r}")
        if self.mode not in BEST_MODES:
            raise ValueError(f"mode must be one of {BEST_MODES}, got {self.mode!r}")

    def improves(self, value: float | None, best: float | None) -> bool:
        """Strictly better than the best so far (a tie keeps the older, already durable best);
        a missing or NaN value never improves."""
        if value is None or value != value:
            return False
        if best is None:
            return True
        return value > best if self.mode == "max" else value < best


def plan_save(kind: str, epoch: int, value: float | None, best: float | None,
              scheduled: frozenset[int], rule: BestRule = BestRule()) -> SavePlan:
    """Decide the files for one save; a mid-epoch save (routine or on a signal) only refreshes latest.

    `value` is this save's value of `rule.metric`, `best` the best value so far.
    """
    if kind not in SAVE_KINDS:
        raise ValueError(f"save kind must be one of {SAVE_KINDS}, got {kind!r}")
    if kind in MID_EPOCH_KINDS:
        return SavePlan(kind, periodic=False, best=False)
    return SavePlan("latest", periodic=epoch in scheduled, best=rule.improves(value, best))


def mid_epoch_save_due(step: int, seconds_since_save: float, every_steps: int | None,
                       every_minutes: float | None) -> bool:
    """A routine mid-epoch save is due every `every_steps` optimizer steps, or once
    `every_minutes` have passed since the last save (either rule off when 0 or None)."""
    by_steps = bool(every_steps) and step % every_steps == 0
    by_time = bool(every_minutes) and seconds_since_save >= every_minutes * 60
    return by_steps or by_time


def within_budget(spent_s: float, elapsed_s: float, percent: float) -> bool:
    """A routine save may start while what routine saves have cost so far (`spent_s`) is at most
    `percent` % of the time elapsed (0: no budget). Spending is judged after the fact, so a save
    that costs more than expected only delays the next one: over a run the share converges to `percent`."""
    return not percent or spent_s <= percent / 100 * elapsed_s


def _checked_percentages(percentages: Iterable[int]) -> tuple[int, ...]:
    checked = tuple(percentages)
    for p in checked:
        if type(p) is not int or not 0 < p <= 100:
            raise ValueError(f"periodic percentages must be ints in 1..100, got {p!r}")
    return checked


def checked_metrics(metrics: Mapping[str, float] | None, keywords: Mapping[str, float | None]) -> dict[str, float]:
    """The one door for a save's metrics: `metrics={...}` plus those given as keywords
    (`val_dice=0.71`), each a float by name. A keyword given as None is left out (a loop
    without validation passes `val_dice=None`); a name given both ways is refused."""
    merged = dict(metrics or {})
    for name, value in keywords.items():
        if value is None:
            continue
        if name in merged:
            raise ValueError(f"metric {name!r} is given twice, in metrics= and as a keyword; give it once")
        merged[name] = value
    return {name: _metric_number(name, value) for name, value in merged.items()}


def _metric_number(name: object, value: object) -> float:
    try:
        if not isinstance(name, str) or isinstance(value, (bool, str, bytes)):
            raise TypeError
        return float(value)  # numpy and one-element torch numbers too
    except (TypeError, ValueError):
        raise ValueError(f"metric {name!r} must be a number, got {value!r}") from None

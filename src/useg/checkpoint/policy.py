"""When to write which file, and which periodic files to keep: small pure rules, no I/O."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

DEFAULT_PERCENTAGES = (20, 40, 60, 80, 100)
SAVE_KINDS = ("epoch", "interrupt")


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


def is_improvement(val_dice: float | None, best_val_dice: float | None) -> bool:
    """Strictly better than the best so far (a tie keeps the older, already durable best)."""
    if val_dice is None or val_dice != val_dice:  # NaN never improves
        return False
    return best_val_dice is None or val_dice > best_val_dice


def plan_save(kind: str, epoch: int, val_dice: float | None, best_val_dice: float | None,
              scheduled: frozenset[int]) -> SavePlan:
    """Decide the files for one save; an interrupt (mid-epoch) only refreshes latest."""
    if kind not in SAVE_KINDS:
        raise ValueError(f"save kind must be one of {SAVE_KINDS}, got {kind!r}")
    if kind == "interrupt":
        return SavePlan("interrupt", periodic=False, best=False)
    return SavePlan("latest", periodic=epoch in scheduled, best=is_improvement(val_dice, best_val_dice))


def _checked_percentages(percentages: Iterable[int]) -> tuple[int, ...]:
    checked = tuple(percentages)
    for p in checked:
        if type(p) is not int or not 0 < p <= 100:
            raise ValueError(f"periodic percentages must be ints in 1..100, got {p!r}")
    return checked

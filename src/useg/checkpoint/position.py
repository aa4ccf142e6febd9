"""Where a training loop stands, as a small dataclass that goes into a checkpoint and comes back.

A loop that saves mid-epoch needs more than the epoch to resume exactly: the batches
already done in the current epoch and the optimizer steps so far. Loops that keep more
(a running loss, a curriculum stage) subclass `Position` and add typed fields:

    @dataclass
    class MyPosition(Position):
        loss_sum: float = 0.0

`state_dict()` holds every field as a plain value, so `torch.load(weights_only=True)` reads it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping


@dataclass
class Position:
    """epoch: completed epochs (the one being trained, counted from 0); batch: batches done in it;
    step: optimizer steps since the run began."""

    epoch: int = 0
    batch: int = 0
    step: int = 0

    def state_dict(self) -> dict[str, Any]:
        """Every field by name (subclass fields included)."""
        return dataclasses.asdict(self)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Take back the fields `state_dict()` gave; fields missing from `state` keep their value,
        so a position saved before a field was added still loads."""
        for item in dataclasses.fields(self):
            if item.name in state:
                setattr(self, item.name, state[item.name])

    def finish_batch(self) -> None:
        """One batch (one optimizer step) done."""
        self.batch += 1
        self.step += 1

    def finish_epoch(self) -> None:
        """The epoch is complete: the next one starts at its first batch (a subclass whose fields
        belong to one epoch resets them here too)."""
        self.epoch += 1
        self.batch = 0

    @property
    def at_start(self) -> bool:
        """Nothing trained yet."""
        return self.epoch == 0 and self.batch == 0

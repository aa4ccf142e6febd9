"""Deterministic kill points for fault-injection tests.

`USEG_KILL_AT="after-rename:3"` makes the process SIGKILL itself the 3rd time it
reaches the point named `after-rename`; `step:5:SIGINT` sends SIGINT instead (a
Ctrl+C at an exact step); `step:5:SIGTERM:1` only in the process whose RANK (set
by torchrun) is 1; several entries separated by commas. Unset (the
normal case) it costs one dictionary lookup. Real faults can't be scheduled; this lets the
tests kill at exact instants inside the save path and the training loop. The trainer's points:
`step` (after an optimiser step), `validation` (an epoch's validation is about to start) and
`epoch-end` (the epoch's checkpoint is durable: the trainer waits for its background write first).
"""

from __future__ import annotations

import os
import signal

_hits: dict[str, int] = {}


def kill_point_named(name: str) -> bool:
    """True when USEG_KILL_AT names the point `name` (any hit): lets a caller make the point mean
    what its name says (e.g. wait until a background save is durable) only under fault injection."""
    spec = os.environ.get("USEG_KILL_AT")
    return bool(spec) and any(entry.strip().split(":")[0] == name for entry in spec.split(","))


def kill_point(name: str) -> None:
    """Signal this process if USEG_KILL_AT names `name` and this is the chosen hit."""
    spec = os.environ.get("USEG_KILL_AT")
    if not spec:
        return
    _hits[name] = _hits.get(name, 0) + 1
    for entry in spec.split(","):
        parts = entry.strip().split(":")
        point, count = parts[0], int(parts[1]) if len(parts) > 1 else 1
        signal_name = parts[2] if len(parts) > 2 else "SIGKILL"
        rank = parts[3] if len(parts) > 3 else os.environ.get("RANK", "0")
        if point == name and _hits[name] == count and rank == os.environ.get("RANK", "0"):
            os.kill(os.getpid(), signal.Signals[signal_name])

"""Ctrl+C and pre-emption: stop after the current step, save, and exit with the signal's code."""

from __future__ import annotations

import signal
from dataclasses import dataclass, field
from typing import Any

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


class TrainingInterrupted(Exception):
    """Raised after the interrupt checkpoint is durable; carries the exit code."""

    def __init__(self, exit_code: int, message: str):
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class StopRequest:
    """Set by SIGINT/SIGTERM; the loop stops after the current optimisation step."""

    signum: int | None = None
    previous: dict[int, Any] = field(default_factory=dict)

    def install(self) -> None:
        for signum in EXIT_CODES:
            self.previous[signum] = signal.signal(signum, self.handle)

    def restore(self) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)

    def handle(self, signum, frame) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            # A second Ctrl+C aborts at once; atomic writes keep every file on disk whole.
            raise KeyboardInterrupt
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return EXIT_CODES.get(self.signum, 143)

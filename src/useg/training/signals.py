"""Ctrl+C, pre-emption and a closed terminal: stop after the current step, save, and exit with the
signal's code (128 + its number, as a shell reports a process that signal ended)."""

from __future__ import annotations

import atexit
import errno
import os
import signal
import termios
from dataclasses import dataclass, field
from typing import Any

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143, signal.SIGHUP: 129}


class TrainingInterrupted(Exception):
    """Raised after the interrupt checkpoint is durable; carries the exit code."""

    def __init__(self, exit_code: int, message: str):
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class StopRequest:
    """Set by SIGINT/SIGTERM/SIGHUP; the loop stops after the current optimisation step."""

    signum: int | None = None
    previous: dict[int, Any] = field(default_factory=dict)

    def install(self) -> None:
        for signum in EXIT_CODES:
            if signum == signal.SIGHUP and signal.getsignal(signum) == signal.SIG_IGN:
                continue  # started under nohup: the user asked to train on after the terminal closes
            self.previous[signum] = signal.signal(signum, self.handle)

    def restore(self) -> None:
        """The handlers from before install() back (nothing when it was never installed)."""
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        self.previous.clear()

    def __enter__(self) -> "StopRequest":
        return self  # install() comes later, once there is something to stop

    def __exit__(self, *exc_info: object) -> None:
        self.restore()

    def handle(self, signum, frame) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            # A second Ctrl+C aborts at once; atomic writes keep every file on disk whole.
            raise KeyboardInterrupt
        if signum == signal.SIGHUP:
            silence_closed_terminal()
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return EXIT_CODES.get(self.signum, 143)


_exit_hook_registered = False


def ignore_stop_signals_at_exit() -> None:
    """Ignore SIGINT, SIGTERM and SIGHUP once the interpreter exits (an exit hook): a command's work
    is then done and said, and what is left is tearing down torch (up to a second). Python gives the
    default action back to these signals for that teardown, so a Ctrl+C in it would kill the
    process and turn the command's exit code into -2. Registered before the first checkpoint save,
    so the checkpoint writer's exit hook runs first and a Ctrl+C can still cut its wait short."""
    global _exit_hook_registered
    if not _exit_hook_registered:
        atexit.register(ignore_stop_signals)
        _exit_hook_registered = True


def ignore_stop_signals() -> None:
    for signum in EXIT_CODES:
        signal.signal(signum, signal.SIG_IGN)


def silence_closed_terminal() -> None:
    """After a hang-up every write to the terminal fails (EIO): send stdout and stderr that went there
    to /dev/null, so that no message stops the save. Output redirected to a file keeps going there,
    and so does output to a terminal that is still open (a `kill -HUP` by hand)."""
    for fd in (1, 2):
        if terminal_hung_up(fd):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, fd)
            os.close(devnull)


def terminal_hung_up(fd: int) -> bool:
    try:
        termios.tcgetattr(fd)
    except termios.error as error:
        return error.args[0] == errno.EIO  # a hung-up terminal; a file or pipe says ENOTTY
    return False

"""One background writer: at most one save in flight, its error re-raised on the next call."""

from __future__ import annotations

import atexit
import threading
import weakref
from typing import Callable

_WRITERS: weakref.WeakSet[BackgroundWriter] = weakref.WeakSet()
_exit_hook_registered = False


class BackgroundWriter:
    """Runs write jobs one at a time on a background thread.

    However the program ends, a write in flight finishes instead of being cut off halfway:
    the thread is not a daemon, and an exit hook waits for it too (see `wait`). A second
    Ctrl+C during that wait still aborts; the atomic writes then leave the previous file whole.
    """

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._done: threading.Event | None = None
        self._error: BaseException | None = None

    def submit(self, job: Callable[[], None]) -> None:
        """Wait for the previous job (re-raising its error), then start `job`."""
        self.wait()
        _wait_at_exit(self)
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(job, self._done), name="useg-checkpoint-writer")
        self._thread.start()

    @property
    def busy(self) -> bool:
        """True while a job is still running (e.g. after `wait()` was interrupted by Ctrl+C)."""
        return self._done is not None and not self._done.is_set()

    def wait(self) -> None:
        """Return when no job is running; re-raise the error of a failed job once."""
        if self._done is not None:
            # Our own event first, not Thread.join alone: on Python 3.11 a join interrupted by
            # Ctrl+C marks the still-running thread as stopped, and from then on neither a
            # later join nor the interpreter's exit waits for it (checked on 3.11.7).
            self._done.wait()
            self._thread.join()
            self._thread = self._done = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def _run(self, job: Callable[[], None], done: threading.Event) -> None:
        try:
            job()
        except BaseException as error:  # handed to the training thread, which decides
            self._error = error
        finally:
            done.set()


def _wait_at_exit(writer: BackgroundWriter) -> None:
    # Registered at the first save, so after weakref's exit hook (which releases the run lock
    # through RunLock's finalizer): atexit runs last in, first out, so writes finish first.
    global _exit_hook_registered
    _WRITERS.add(writer)
    if not _exit_hook_registered:
        atexit.register(_finish_writes)
        _exit_hook_registered = True


def _finish_writes() -> None:
    for writer in list(_WRITERS):
        if writer.busy:
            writer._done.wait()

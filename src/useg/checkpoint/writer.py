"""One background writer: at most one save in flight, its error re-raised on the next call."""

from __future__ import annotations

import threading
from typing import Callable


class BackgroundWriter:
    """Runs write jobs one at a time on a background thread.

    The thread is not a daemon: if the program ends without `wait()`, the interpreter
    still lets the write finish instead of killing it halfway.
    """

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def submit(self, job: Callable[[], None]) -> None:
        """Wait for the previous job (re-raising its error), then start `job`."""
        self.wait()
        self._thread = threading.Thread(target=self._run, args=(job,), name="useg-checkpoint-writer")
        self._thread.start()

    @property
    def busy(self) -> bool:
        """True while a job is still running (e.g. after `wait()` was interrupted by Ctrl+C)."""
        return self._thread is not None and self._thread.is_alive()

    def wait(self) -> None:
        """Return when no job is running; re-raise the error of a failed job once."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def _run(self, job: Callable[[], None]) -> None:
        try:
            job()
        except BaseException as error:  # handed to the training thread, which decides
            self._error = error

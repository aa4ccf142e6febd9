"""One background writer: at most one save in flight (plus one waiting, when it may be coalesced),
its error re-raised on the next call.

Coalescible jobs (routine mid-epoch saves) run on a thread at the lowest CPU priority
(nice 19, Linux): they are optional work, so they take the cycles training leaves idle
instead of slowing its steps. Jobs someone may wait for (epoch ends, Ctrl+C, the last
save) run on a thread at the process's own priority.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import queue
import sys
import threading
import weakref
from typing import Callable

from useg.faults import kill_point

_WRITERS: weakref.WeakSet[BackgroundWriter] = weakref.WeakSet()
_exit_hook_registered = False
# A save after every step of a default epoch (4 interleaved rounds, 2 cores, torch on both) cost
# +2.9 % with the writer at normal priority and +0.3 % at nice 19; BENCHMARKS.md has the rest.
LOW_PRIORITY_NICE = 19


class BackgroundWriter:
    """Runs write jobs one at a time on a background thread.

    However the program ends, a write in flight finishes instead of being cut off halfway:
    an exit hook waits for it (see `wait`). A second Ctrl+C during that wait still aborts;
    the atomic writes then leave the previous file whole.
    """

    def __init__(self) -> None:
        self._done: threading.Event | None = None  # set once the job in flight and the pending one are done
        self._error: BaseException | None = None
        self._lock = threading.Lock()  # guards _pending and the decision to set _done
        self._pending: tuple[Callable[[], None], Callable[[], None] | None] | None = None
        self.coalesced = 0  # jobs replaced by a newer one before they started

    def submit(self, job: Callable[[], None], *, coalesce: bool = False,
               discard: Callable[[], None] | None = None) -> None:
        """Wait for the previous job (re-raising its error), then start `job`.

        With `coalesce`, a job submitted while another is running does not wait: it becomes
        the pending job, run as soon as the running one ends, and a newer coalescible job
        replaces it (its `discard` is called instead, on this thread, and it counts in
        `coalesced`). Submitting a job that may not be coalesced waits as before.
        """
        if coalesce:
            replaced, queued = None, False
            with self._lock:
                if self._done is not None and not self._done.is_set():
                    replaced, self._pending, queued = self._pending, (job, discard), True
                    self.coalesced += replaced is not None
            if replaced is not None and replaced[1] is not None:
                replaced[1]()
            if queued:
                kill_point("save-coalesced")  # a write in flight and this one waiting: the fault tests kill here
                return
        self.wait()
        _wait_at_exit(self)
        self._done = threading.Event()
        _worker(low_priority=coalesce).put((job, self, self._done))

    def drop_pending(self) -> bool:
        """Give up the pending job (a newer save supersedes it), calling its `discard`; True when there was one."""
        with self._lock:
            dropped, self._pending = self._pending, None
            self.coalesced += dropped is not None
        if dropped is not None and dropped[1] is not None:
            dropped[1]()
        return dropped is not None

    @property
    def busy(self) -> bool:
        """True while a job is still running (e.g. after `wait()` was interrupted by Ctrl+C)."""
        return self._done is not None and not self._done.is_set()

    def check(self) -> None:
        """Re-raise the error of a job that has already failed, without waiting for one still running."""
        if self._done is not None and self._done.is_set():
            self.wait()

    def wait(self) -> None:
        """Return when no job is running; re-raise the error of a failed job once."""
        if self._done is not None:
            # An event, never Thread.join: on Python 3.11 a join interrupted by Ctrl+C marks the
            # still-running thread as stopped, and from then on nothing waits for it (3.11.7).
            self._done.wait()
            self._done = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def _run(self, job: Callable[[], None], done: threading.Event) -> None:
        while job is not None:
            try:
                job()
            except BaseException as error:  # handed to the training thread, which decides
                self._error = error
            with self._lock:  # under the lock, so that a job submitted now is either taken here or started anew
                pending, self._pending = self._pending, None
                # Read now: once `done` is set, the training thread's wait() may take the error and clear it,
                # and the pending save would then be written after the failure it must not outlive.
                failed = self._error is not None
                if pending is None or failed:
                    done.set()
            job = None
            if pending is not None:
                if not failed:
                    job = pending[0]
                elif pending[1] is not None:
                    pending[1]()  # after a failed write the newer state is not written either: the error stops the run


class _Worker:
    """A thread that runs writers' jobs, started once per process and priority.

    A thread per save costs its start-up handshake on the training thread, about 2 ms on a
    busy 2-core machine, which is most of the stall of a small save. The thread is a daemon
    so that an idle one never keeps the program alive; the exit hook waits for a job in
    flight (hooks run before daemon threads are stopped) and then ends the thread. A
    low-priority thread lowers its own nice value first; threads it starts (the hashing
    helper) inherit it.
    """

    def __init__(self, low_priority: bool) -> None:
        self.jobs: queue.SimpleQueue[tuple[Callable[[], None], BackgroundWriter, threading.Event] | None] = \
            queue.SimpleQueue()
        self.pid = os.getpid()
        self.low_priority = low_priority
        name = "useg-checkpoint-writer" + ("-routine" if low_priority else "")
        self.thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self.thread.start()

    def put(self, item: tuple[Callable[[], None], BackgroundWriter, threading.Event]) -> None:
        self.jobs.put(item)

    def _serve(self) -> None:
        if self.low_priority:
            lower_thread_priority()
        one_intra_op_thread()
        while (item := self.jobs.get()) is not None:
            job, writer, done = item
            writer._run(job, done)
            del item, job, writer, done  # drop the snapshot the job holds before waiting for the next one

    def stop(self) -> None:
        """Let the thread end once the jobs queued before this have run (at exit, after they are waited for)."""
        self.jobs.put(None)
        self.thread.join(timeout=5)


def one_intra_op_thread() -> None:
    """Run the torch ops of this thread (the deferred copies of a snapshot) on one intra-op thread.

    The first parallel torch op of a thread makes it an OpenMP team of its own. Once libgomp manages
    more threads than there are cores, it shortens every team's spin-wait, so the training thread's
    workers sleep and wake around each op: on 2 cores every step after the first save took 35 %
    longer (BENCHMARKS.md, "The writer's own thread team"). Copies gain little from a team anyway.
    Threads started after this one get one intra-op thread too (torch's default for new threads
    follows the last count set); a thread that already ran torch ops keeps its own count."""
    import torch  # here: listing checkpoints must not load torch, and only a process that saves gets here

    torch.set_num_threads(1)


def lower_thread_priority() -> None:
    """Give the calling thread the lowest CPU priority, where the OS has per-thread priorities (Linux)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError):  # e.g. a seccomp profile that refuses it: normal priority then
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), LOW_PRIORITY_NICE)


_WORKERS: dict[bool, _Worker] = {}  # by low_priority
_WORKER_LOCK = threading.Lock()


def _worker(low_priority: bool = False) -> _Worker:
    with _WORKER_LOCK:
        worker = _WORKERS.get(low_priority)
        # A forked child inherits the object but not the thread: start its own.
        if worker is None or worker.pid != os.getpid() or not worker.thread.is_alive():
            worker = _WORKERS[low_priority] = _Worker(low_priority)
        return worker


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
        if writer._error is not None:
            # Nobody waited for this save (the program ended without close()): say so, never silently.
            error, writer._error = writer._error, None
            print(f"error: a checkpoint save failed and was never reported: {error}", file=sys.stderr)
    # End the idle threads too, so that no thread of ours is left running while the interpreter
    # and the libraries it loaded (gloo, OpenMP) shut down.
    for worker in list(_WORKERS.values()):
        if worker.pid == os.getpid() and worker.thread.is_alive():
            worker.stop()

"""Snapshot copies taken while the next training step runs, fenced by the optimizer's step().

For useg's own trainer only (CheckpointManager's private `_overlap_copies_in_useg_train`).
Between a save and the next `optimizer.step()` that loop runs the next forward and backward
(and after an epoch's save its pictures), which read the weights and the optimizer's state but
change neither (tests/training/test_overlap_trainer.py checks the copies of a real run against the state
at save()).
So the copies of those tensors need not stall the caller: the writer takes them first thing,
and the optimizer's next step() waits for them (a step pre-hook), or takes them itself when the
writer has not started yet (so a busy or low-priority writer cannot hold training up for longer
than the copy).

Why no other loop gets this: a change in that window that torch does not count (`p.data.mul_()`,
a write through a NumPy view, an EMA swapped in through `.data`) cannot be seen here, and the
file would hold a mix of before and after that verifies as ok. The version counters below are
only a second line of defence for counted changes, and even those can slip through: a counter
moves when its kernel ends, so a copy taken while another thread's in-place kernel runs reads
the old count.
"""

from __future__ import annotations

import threading
import weakref
from typing import Iterable

import torch

# Private but used by torch's own optimisers since 2.1; looked up so that a torch without it still works.
_foreach_copy = getattr(torch, "_foreach_copy_", None)

_WAITING, _COPYING, _DONE = "waiting", "copying", "done"
_fences_lock = threading.Lock()
# optimizer -> copies its next step() must wait for; weak, so a dropped optimizer is not kept alive
_FENCES: weakref.WeakKeyDictionary[torch.optim.Optimizer, list[DeferredCopy]] = weakref.WeakKeyDictionary()
_HOOKED: weakref.WeakSet[torch.optim.Optimizer] = weakref.WeakSet()


def copy_tensors(targets: list[torch.Tensor], sources: list[torch.Tensor]) -> None:
    """targets[i].copy_(sources[i]) for every i, in one batched call where torch has it."""
    if targets and _foreach_copy is not None:
        _foreach_copy(targets, sources)  # one dispatch instead of one per tensor
    else:
        for target, source in zip(targets, sources):
            target.copy_(source)


def optimizer_owned(optimizers: Iterable[torch.optim.Optimizer]) -> set[int]:
    """The data_ptr() of every tensor these optimizers change in step(): their parameters and their state."""
    owned: set[int] = set()
    for optimizer in optimizers:
        for group in optimizer.param_groups:
            owned.update(parameter.data_ptr() for parameter in group["params"])
        for entry in optimizer.state.values():
            owned.update(value.data_ptr() for value in entry.values() if isinstance(value, torch.Tensor))
    return owned


class DeferredCopy:
    """CPU copies of one snapshot's optimizer-owned tensors, taken by whichever thread needs them first."""

    def __init__(self, targets: list[torch.Tensor], sources: list[torch.Tensor],
                 optimizers: Iterable[torch.optim.Optimizer]) -> None:
        self._targets, self._sources = targets, sources
        self._versions = [source._version for source in sources]  # bumped by every in-place change
        self._optimizers = [type(optimizer).__name__ for optimizer in optimizers]
        self._lock = threading.Lock()
        self._state = _WAITING
        self._done = threading.Event()
        self._error: BaseException | None = None
        for optimizer in optimizers:
            _fence(optimizer, self)

    def take(self) -> None:
        """Copy now (or wait for the copy in progress); raise if a source changed before it was copied."""
        self._take()
        if self._error is not None:
            raise self._error

    def _take(self) -> None:
        with self._lock:
            mine = self._state == _WAITING
            if mine:
                self._state = _COPYING
        if not mine:
            self._done.wait()
            return
        try:
            with torch.no_grad():
                copy_tensors(self._targets, self._sources)
            changed = sum(source._version != version for source, version in zip(self._sources, self._versions))
            if changed:
                self._error = RuntimeError(
                    f"not saved: {changed} tensor(s) of the state changed in place after save() returned and "
                    f"before they were copied, outside {' and '.join(self._optimizers)}.step(); the checkpoints "
                    "already written are untouched. Change the weights only through the optimizer between save() "
                    "and its next step(), or pass optimizer.state_dict() to save() to copy everything at once")
        except BaseException as error:
            self._error = RuntimeError(f"not saved: copying the state failed: {error!r}")
            if not isinstance(error, Exception):  # Ctrl+C belongs to the thread that got it
                raise
        finally:
            self._targets = self._sources = None  # the pool owns the copies; nothing else needs these lists
            with self._lock:
                self._state = _DONE
            self._done.set()


def _fence(optimizer: torch.optim.Optimizer, copy: DeferredCopy) -> None:
    with _fences_lock:
        _FENCES.setdefault(optimizer, []).append(copy)
        if optimizer not in _HOOKED:
            optimizer.register_step_pre_hook(_before_step)
            _HOOKED.add(optimizer)


def _before_step(optimizer: torch.optim.Optimizer, args, kwargs) -> None:
    with _fences_lock:
        copies = _FENCES.pop(optimizer, ())
    for copy in copies:
        copy._take()  # an error fails that save on the writer thread; this step goes on

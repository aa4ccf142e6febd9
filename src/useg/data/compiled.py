"""Optional numba compilation of the recipe's per-pixel loops (the `fast` extra: pip install 'useg[fast]').

A compiled loop computes what its numpy version computes, with the same float32 operations in the
same order. Without fast-math, LLVM neither fuses a multiply and an add nor reorders them, so the
result does not follow the CPU's vector instructions either. Batches are therefore the same with or
without numba, on any machine: tests compare every loop with its numpy version bit for bit, and
`python -m bench --only resample_choice` checks it under each instruction set.

USEG_NO_NUMBA=1 in the environment runs the numpy versions although numba is installed (to time them,
or to rule numba out when something looks wrong); it is read at every call.
"""

from __future__ import annotations

import functools
import os

OFF_SWITCH = "USEG_NO_NUMBA"


def enabled() -> bool:
    """Whether the compiled loops run: numba is installed and USEG_NO_NUMBA is not set."""
    return os.environ.get(OFF_SWITCH, "") in ("", "0") and _numba() is not None


def compiled(function):
    """`function` compiled by numba (on first use; cached on disk, the GIL released), or None where not
    `enabled`."""
    return _compile(function) if enabled() else None


@functools.cache
def _numba():
    try:
        import numba
    except ImportError:
        return None
    return numba


@functools.cache
def _compile(function):
    return _numba().njit(cache=True, nogil=True, boundscheck=False)(function)

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


def compiled(function):
    """`function` compiled by numba (on first use; cached on disk, the GIL released), or None: numba is not
    installed, or USEG_NO_NUMBA is set."""
    if os.environ.get(OFF_SWITCH, "") not in ("", "0"):
        return None
    return _compile(function)


@functools.cache
def _compile(function):
    try:
        import numba
    except ImportError:
        return None
    return numba.njit(cache=True, nogil=True, boundscheck=False)(function)

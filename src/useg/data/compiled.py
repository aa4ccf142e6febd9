"""Optional numba compilation of the recipe's per-pixel loops (the `fast` extra: pip install 'useg[fast]').

A compiled loop computes what its numpy version computes, with the same float32 operations in the
same order. Without fast-math, LLVM neither fuses a multiply and an add nor reorders them, so the
result does not follow the CPU's vector instructions either. Batches are therefore the same with or
without numba, on any machine: tests compare every loop with its numpy version bit for bit, and
`python -m bench --only resample_choice` checks it under each instruction set.
"""

from __future__ import annotations

import functools


@functools.cache
def compiled(function):
    """`function` compiled by numba (on first use; cached on disk, the GIL released), or None without numba."""
    try:
        import numba
    except ImportError:
        return None
    return numba.njit(cache=True, nogil=True, boundscheck=False)(function)

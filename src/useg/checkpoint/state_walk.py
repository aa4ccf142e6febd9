"""Walking a nested state: the leaves of some kinds inside its dicts, lists, tuples and sets."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from typing import Any, Iterator

_MAPPINGS = (dict, OrderedDict)
_SEQUENCES = (list, tuple, set)
_PLAIN = frozenset({int, bool, str, bytes, type(None)})  # leaves no walk of ours looks for


def leaves(value: Any, kinds: type | tuple[type, ...]) -> Iterator[Any]:
    """Every instance of `kinds` inside nested mappings, lists, tuples and sets, depth first in order."""
    # A loop over a stack, exact type tests first, and a sequence of plain values (Python's
    # random state: 625 ints) skipped in one pass in C: a save walks a state of a few thousand
    # values several times, on a thread that shares the GIL with training.
    stack = [value]
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind in _MAPPINGS or (kind not in _SEQUENCES and isinstance(item, Mapping)):
            stack.extend(reversed(list(item.values())))
        elif kind in _SEQUENCES or isinstance(item, _SEQUENCES):
            types = set(map(type, item))
            if not (types <= _PLAIN and not any(issubclass(t, kinds) for t in types)):
                stack.extend(reversed(list(item)))
        elif isinstance(item, kinds):
            yield item

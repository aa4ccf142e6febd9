"""Is a state finite? NaN or inf weights are never a resume point, a best model or an export."""

from __future__ import annotations

from typing import Any, Mapping


def first_nonfinite(value: Any, where: str = "", *, floats: bool = True) -> str | None:
    """The key path of the first floating tensor (or, with `floats`, Python float) holding NaN/inf
    inside `value`, else None. Walks nested dicts, lists and tuples; integer tensors are skipped.
    """
    import torch  # here, not at the top: listing checkpoints should not pay torch's start-up

    if isinstance(value, torch.Tensor):
        if value.is_floating_point() or value.is_complex():
            return None if bool(torch.isfinite(value).all()) else (where or "<root>")
        return None
    if isinstance(value, float) and floats:
        return None if value == value and value not in (float("inf"), float("-inf")) else (where or "<root>")
    if isinstance(value, Mapping):
        items = value.items()
    elif isinstance(value, (list, tuple)):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        found = first_nonfinite(item, f"{where}.{key}" if where else str(key), floats=floats)
        if found is not None:
            return found
    return None


def nonfinite_weights(state_dict: Mapping[str, Any]) -> str | None:
    """The first parameter or buffer name of a model state_dict holding NaN/inf, else None."""
    return first_nonfinite(dict(state_dict))

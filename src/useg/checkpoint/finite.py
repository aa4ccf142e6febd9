"""Is a state finite? NaN or inf weights are never a resume point, a best model or an export."""

from __future__ import annotations

from typing import Any, Mapping

from .state_walk import leaves

_INFINITIES = (float("inf"), float("-inf"))


def first_nonfinite(value: Any, where: str = "", *, floats: bool = True) -> str | None:
    """The key path of the first floating tensor (or, with `floats`, Python float) holding NaN/inf
    inside `value`, else None. Walks nested dicts, lists and tuples; integer tensors are skipped.
    """
    # This runs on every save (on the writer thread, which shares the GIL with training), so the
    # common case, all finite, is one batched check; only a state that fails it is walked again,
    # tensor by tensor, which names the culprit (or finds there is none).
    if _maybe_all_finite(value, floats):
        return None
    return _first_nonfinite(value, where, floats)


def nonfinite_weights(state_dict: Mapping[str, Any]) -> str | None:
    """The first parameter or buffer name of a model state_dict holding NaN/inf, else None."""
    return first_nonfinite(dict(state_dict))


def _maybe_all_finite(value: Any, floats: bool) -> bool:
    """True when every value is finite; False may be a false alarm (see below)."""
    import torch  # here, not at the top: listing checkpoints should not pay torch's start-up

    by_device: dict[Any, list] = {}
    for leaf in leaves(value, (torch.Tensor, float) if floats else torch.Tensor):
        if isinstance(leaf, torch.Tensor):
            if (leaf.is_floating_point() or leaf.is_complex()) and leaf.numel():
                by_device.setdefault(leaf.device, []).append(leaf)
        elif leaf != leaf or leaf in _INFINITIES:
            return False
    foreach_norm = getattr(torch, "_foreach_norm", None)  # private; a torch without it checks one by one
    for tensors in by_device.values():
        # A tensor's 2-norm is NaN or inf when it holds one, in one fused pass over all of them.
        # Huge finite values can overflow it too: then the exact walk below decides.
        if foreach_norm is not None:
            if not bool(torch.isfinite(torch.stack(foreach_norm(tensors))).all()):
                return False
        elif not all(bool(torch.isfinite(tensor).all()) for tensor in tensors):
            return False
    return True


def _first_nonfinite(value: Any, where: str, floats: bool) -> str | None:
    import torch

    if isinstance(value, torch.Tensor):
        if value.is_floating_point() or value.is_complex():
            return None if bool(torch.isfinite(value).all()) else (where or "<root>")
        return None
    if isinstance(value, float) and floats:
        return None if value == value and value not in _INFINITIES else (where or "<root>")
    if isinstance(value, Mapping):
        items = value.items()
    elif isinstance(value, (list, tuple)):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        found = _first_nonfinite(item, f"{where}.{key}" if where else str(key), floats)
        if found is not None:
            return found
    return None

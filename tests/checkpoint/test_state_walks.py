"""The walks every save makes over the state (finite check, tensors, copies, weights_only check)
agree with plain recursive walks, on states of any shape."""

import math
import random

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from useg.checkpoint.finite import first_nonfinite
from useg.checkpoint.state import check_weights_only_safe, snapshot_state, tensors_in

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.complex64, torch.int64]
SPECIAL = [math.nan, math.inf, -math.inf, 3e38, -3e38, 0.0]  # 3e38 overflows a float32 2-norm


@st.composite
def tensors(draw):
    dtype = draw(st.sampled_from(DTYPES))
    shape = draw(st.sampled_from([(), (0,), (3,), (2, 5), (4, 0, 2), (64, 33)]))
    tensor = torch.randn(shape, dtype=torch.float64).to(dtype) if dtype != torch.int64 else torch.ones(shape).long()
    if tensor.is_floating_point() or tensor.is_complex():
        flat = tensor.view(-1)
        for _ in range(draw(st.integers(0, 2))):
            if flat.numel():
                value = draw(st.sampled_from(SPECIAL))
                if math.isfinite(value):  # the dtype's largest finite magnitude: its 2-norm overflows
                    value = math.copysign(torch.finfo(tensor.real.dtype if tensor.is_complex() else dtype).max, value)
                flat[draw(st.integers(0, flat.numel() - 1))] = value
    if draw(st.booleans()) and tensor.dim() == 2 and tensor.shape[1] > 1:
        tensor = tensor.t()  # not contiguous
    return tensor


leaves = st.one_of(tensors(), st.sampled_from(SPECIAL), st.integers(), st.text(max_size=3), st.none(),
                   st.lists(st.integers(), max_size=30).map(tuple))
states = st.recursive(leaves, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.lists(inner, max_size=3).map(tuple),
    st.dictionaries(st.text(max_size=4), inner, max_size=4)), max_leaves=25)


def reference_first_nonfinite(value, where="", floats=True):
    """What the check must answer: every tensor and float looked at one by one."""
    if isinstance(value, torch.Tensor):
        bad = (value.is_floating_point() or value.is_complex()) and not bool(torch.isfinite(value).all())
        return (where or "<root>") if bad else None
    if isinstance(value, float):
        return (where or "<root>") if floats and not math.isfinite(value) else None
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, (list, tuple)) else ()
    for key, item in items:
        found = reference_first_nonfinite(item, f"{where}.{key}" if where else str(key), floats)
        if found is not None:
            return found
    return None


def reference_tensors(value):
    if isinstance(value, torch.Tensor):
        return [value]
    items = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else ()
    return [tensor for item in items for tensor in reference_tensors(item)]


@settings(max_examples=300, deadline=None)
@given(states, st.booleans())
def test_the_finite_check_names_the_same_value_as_a_walk_over_every_tensor(state, floats):
    assert first_nonfinite(state, floats=floats) == reference_first_nonfinite(state, floats=floats)


@settings(max_examples=200, deadline=None)
@given(states)
def test_tensors_in_finds_every_tensor_in_order(state):
    assert [id(t) for t in tensors_in(state)] == [id(t) for t in reference_tensors(state)]


class Opaque:
    """A user object: weights_only refuses it."""


# Values the weights_only unpickler refuses or takes that the copy walk does not list as plain.
unusual = st.sampled_from([np.float32(0.5), np.int64(3), Opaque(), torch.Size([2, 3]), bytearray(b"ab"),
                           torch.float16, torch.device("cpu"), 1.5 + 2j])
unusual_states = st.recursive(st.one_of(leaves, unusual), lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.lists(inner, max_size=3).map(tuple),
    st.dictionaries(st.one_of(st.text(max_size=4), st.integers(), st.tuples(st.integers()),
                              st.just(np.int64(1)), st.just(frozenset())), inner, max_size=4)), max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(unusual_states)
def test_a_checked_snapshot_refuses_exactly_what_the_weights_only_check_refuses(state):
    try:
        check_weights_only_safe({"s": state})
        expected = None
    except TypeError as error:
        expected = str(error)
    try:
        snapshot_state({"s": state}, check_safe=True)
        got = None
    except TypeError as error:
        got = str(error)
    assert got == expected


def test_huge_finite_weights_are_finite_and_a_single_nan_is_found():
    state = {"model": {"w": torch.full((1000,), 3e38), "b": torch.zeros(3)}, "opt": [torch.ones(2)]}
    assert first_nonfinite(state) is None  # the batched norm overflows: the exact walk decides
    state["opt"][0][1] = math.nan
    assert first_nonfinite(state) == "opt.0"


def test_a_snapshot_of_the_random_state_is_equal_and_independent_of_later_changes():
    random.seed(3)
    history = {"train_loss": [0.5, 0.25], "classes": ("a", "b")}
    state = {"python": random.getstate(), "history": history}
    snapshot = snapshot_state(state)
    history["train_loss"].append(0.125)  # the next epoch
    assert snapshot["python"] == random.getstate()
    assert snapshot["history"] == {"train_loss": [0.5, 0.25], "classes": ("a", "b")}


def test_the_weights_only_check_still_finds_a_numpy_number_among_plain_ones():
    with pytest.raises(TypeError, match=r"history\.val_dice\[2\] is a numpy"):
        check_weights_only_safe({"history": {"val_dice": [0.5, 0.6, np.float32(0.7)]}})
    check_weights_only_safe({"python": random.getstate()})

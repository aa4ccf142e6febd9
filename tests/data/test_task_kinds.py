"""useg.data.task_kinds: the edges band, compiled and numpy alike."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from useg.data.compiled import enabled
from useg.data.task_kinds import edges, edges_numpy


@pytest.mark.skipif(not enabled(),
                   reason="numba's loops are off: the fast extra is not installed, or USEG_NO_NUMBA is set")
@settings(max_examples=80, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), shape=st.lists(st.integers(1, 12), min_size=2, max_size=4),
       dtype=st.sampled_from([np.uint8, np.float32, bool]), flipped=st.booleans())
def test_the_compiled_band_is_numpys(seed, shape, dtype, flipped):
    rng = np.random.default_rng(seed)
    labels = (rng.random(shape) < rng.random()).astype(dtype)
    labels = labels[..., ::-1, ::-1] if flipped else labels
    band = edges(labels)
    assert band.dtype == labels.dtype and band.shape == labels.shape
    assert np.array_equal(band, edges_numpy(labels > 0.5))


def test_a_squares_band_is_two_pixels_wide_and_the_image_border_is_no_edge():
    labels = np.zeros((10, 10), np.uint8)
    labels[3:7, 0:7] = 1  # touches the left border
    band = edges(labels)
    expected = np.zeros((10, 10), bool)
    expected[2:8, 0:8] = True
    expected[4:6, 0:6] = False  # the inside, two pixels from the boundary
    assert np.array_equal(band.astype(bool), expected)

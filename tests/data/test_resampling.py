"""useg.data.resampling: the compiled kernel gives numpy's bits, and both resample as the recipe needs."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from useg.data.compiled import enabled
from useg.data.resampling import resample, resample_numpy

# Positions where rounding decides: on a pixel, half way, at and beyond the padded border, signed zeros.
SPECIAL = np.array([-0.0, 0.0, 0.5, 1.0, 1.5, -3.0, 1e-7, 0.49999997, 0.50000006], np.float32)


def maps(rng: np.random.Generator, count: int, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Source positions over and around the padded source, with SPECIAL values and the far border mixed in."""
    rows = rng.uniform(-2, height + 4, (count, height, width)).astype(np.float32)
    cols = rng.uniform(-2, width + 4, (count, height, width)).astype(np.float32)
    for coordinate, size in ((rows, height), (cols, width)):
        chosen = rng.random(coordinate.shape) < 0.3
        special = np.concatenate([SPECIAL, np.float32([size, size + 0.5, size + 1, size + 1.5])])
        coordinate[chosen] = rng.choice(special, int(chosen.sum())) + rng.integers(0, 3, int(chosen.sum()))
    return rows, cols


@pytest.mark.skipif(not enabled(),
                   reason="numba's loops are off: the fast extra is not installed, or USEG_NO_NUMBA is set")
@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), count=st.integers(1, 4), height=st.integers(1, 24), width=st.integers(1, 24))
def test_the_compiled_kernel_gives_numpys_bits(seed, count, height, width):
    rng = np.random.default_rng(seed)
    images = rng.random((count + 2, height, width), dtype=np.float32)
    images[rng.random(images.shape) < 0.1] = 0.0
    labels = (rng.random(images.shape) < 0.5).astype(np.uint8)
    part = rng.choice(count + 2, count, replace=False)
    rows, cols = maps(rng, count, height, width)
    ours, reference = (function(images, labels, part, rows.copy(), cols.copy())
                       for function in (resample, resample_numpy))
    assert ours[0].tobytes() == reference[0].tobytes()
    assert ours[1].tobytes() == reference[1].tobytes()


@pytest.mark.parametrize("function", [resample, resample_numpy])
def test_a_shift_moves_image_and_label_alike_and_zero_fills_what_it_uncovers(function):
    images = np.zeros((1, 8, 8), np.float32)
    images[0, 2:5, 3:6] = 0.75
    labels = (images > 0).astype(np.uint8)
    row, col = np.mgrid[0:8, 0:8].astype(np.float32)
    # output (r, c) reads source (r - 1, c + 2): the square moves one down and two left (+ 1: padded source)
    shifted_images, shifted_labels = function(images, labels, np.array([0]), (row - 1 + 1)[None], (col + 2 + 1)[None])
    expected = np.zeros((8, 8), np.float32)
    expected[3:6, 1:4] = 0.75
    assert np.array_equal(shifted_images[0], expected)
    assert np.array_equal(shifted_labels[0], (expected > 0).astype(np.uint8))


@pytest.mark.parametrize("function", [resample, resample_numpy])
def test_half_way_is_the_mean_for_the_image_and_the_next_pixel_for_the_label(function):
    images = np.array([[[0.0, 1.0]]], np.float32)
    labels = np.array([[[0, 1]]], np.uint8)
    rows, cols = np.ones((1, 1, 1), np.float32), np.full((1, 1, 1), 1.5, np.float32)
    image, label = function(images, labels, np.array([0]), rows, cols)
    assert image[0, 0, 0] == 0.5 and label[0, 0, 0] == 1

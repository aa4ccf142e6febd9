"""useg.data.filters: blur and sharpness, compiled and numpy alike, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from useg.data import filters
from useg.data.compiled import compiled

needs_numba = pytest.mark.skipif(compiled(filters._blur_pixels) is None,
                                 reason="numba (the fast extra) is not installed")


def stack(seed: int, count: int, height: int, width: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    images = rng.random((count, height, width), dtype=np.float32)
    images[rng.random(images.shape) < 0.1] = 0.0
    return images


@needs_numba
@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), count=st.integers(1, 4), height=st.integers(1, 20), width=st.integers(1, 20),
       reach=st.integers(1, 4))
def test_compiled_blur_gives_numpys_bits(seed, count, height, width, reach):
    images = stack(seed, count, height, width)  # images no longer than reach repeat their ends instead
    sigmas = np.random.default_rng(seed).uniform(0.1, 2.0, count)
    reference = np.ascontiguousarray(filters.blur_numpy(images.copy(), sigmas, reach))
    assert filters.blur(images.copy(), sigmas, reach).tobytes() == reference.tobytes()


@needs_numba
@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), count=st.integers(1, 4), height=st.integers(1, 20), width=st.integers(1, 20))
def test_compiled_sharpness_gives_numpys_bits(seed, count, height, width):
    images = stack(seed, count, height, width)
    factors = np.random.default_rng(seed).uniform(0.0, 5.0, count)
    reference = filters.sharpen_numpy(images.copy(), *filters.sharpen_weights(factors))
    assert filters.sharpen(images.copy(), factors).tobytes() == reference.tobytes()


def test_blur_keeps_a_flat_image_and_spreads_a_point_symmetrically():
    flat = np.full((1, 9, 9), 0.25, np.float32)
    assert np.allclose(filters.blur(flat.copy(), np.array([1.0]), 2), 0.25, atol=1e-6)
    point = np.zeros((1, 9, 9), np.float32)
    point[0, 4, 4] = 1.0
    blurred = np.asarray(filters.blur(point, np.array([1.0]), 2))[0]
    assert np.isclose(blurred.sum(), 1.0, atol=1e-5) and blurred[4, 4] == blurred.max()
    assert np.array_equal(blurred, blurred[::-1]) and np.array_equal(blurred, blurred.T)


def test_sharpness_one_changes_nothing_and_zero_gives_the_smoothed_image():
    images = stack(0, 2, 6, 7)
    assert np.allclose(filters.sharpen(images.copy(), np.array([1.0, 1.0])), images, atol=1e-6)
    smoothed = filters.sharpen(images.copy(), np.array([0.0, 0.0]))
    padded = np.pad(images, ((0, 0), (1, 1), (1, 1)), mode="edge")
    box = sum(padded[:, 1 + dy:7 + dy, 1 + dx:8 + dx] for dy in (-1, 0, 1) for dx in (-1, 0, 1))
    assert np.allclose(smoothed, (box + 4 * images) / 13, atol=1e-6)

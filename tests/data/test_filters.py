"""useg.data.filters: blur and sharpness, compiled and numpy alike, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from useg.data import filters
from useg.data.compiled import enabled

needs_numba = pytest.mark.skipif(not enabled(),
                                 reason="numba's loops are off: the fast extra is not installed, or USEG_NO_NUMBA is set")


def stack(seed: int, count: int, height: int, width: int, flipped: bool = False) -> np.ndarray:
    """Random images with some exact zeros; `flipped`: a view read backwards on both axes, as the recipe
    passes images that were only flipped."""
    rng = np.random.default_rng(seed)
    images = rng.random((count, height, width), dtype=np.float32)
    images[rng.random(images.shape) < 0.1] = 0.0
    return images[:, ::-1, ::-1] if flipped else images


@needs_numba
@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), count=st.integers(1, 4), height=st.integers(1, 20), width=st.integers(1, 20),
       reach=st.integers(1, 4), flipped=st.booleans())
def test_compiled_blur_gives_numpys_bits(seed, count, height, width, reach, flipped):
    sigmas = np.random.default_rng(seed).uniform(0.1, 2.0, count)  # images no longer than reach repeat their ends
    reference = np.ascontiguousarray(filters.blur_numpy(stack(seed, count, height, width, flipped), sigmas, reach))
    ours = np.ascontiguousarray(filters.blur(stack(seed, count, height, width, flipped), sigmas, reach))
    assert ours.tobytes() == reference.tobytes()


@needs_numba
@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), count=st.integers(1, 4), height=st.integers(1, 20), width=st.integers(1, 20),
       flipped=st.booleans())
def test_compiled_sharpness_gives_numpys_bits(seed, count, height, width, flipped):
    factors = np.random.default_rng(seed).uniform(0.0, 5.0, count)
    reference = filters.sharpen_numpy(stack(seed, count, height, width, flipped), *filters.sharpen_weights(factors))
    ours = filters.sharpen(stack(seed, count, height, width, flipped), factors)
    assert ours.tobytes() == reference.tobytes()


@needs_numba
@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), count=st.integers(1, 4), height=st.integers(1, 20), width=st.integers(1, 20),
       flipped=st.booleans(), linear=st.booleans())
def test_compiled_tone_gives_numpys_bits(seed, count, height, width, flipped, linear):
    rng = np.random.default_rng(seed)
    images = stack(seed, count, height, width) * 1.5 - 0.25  # some values to clip at each end
    images[rng.random(images.shape) < 0.05] = -0.0
    bank = rng.standard_normal(4 * height * width + 7, dtype=np.float32)
    starts = rng.integers(0, len(bank) - height * width + 1, count)
    stds = np.where(rng.random(count) < 0.3, 0.0, rng.uniform(0, 0.05, count))
    gains = (rng.uniform(-1.2, 1.2, count).astype(np.float32), rng.uniform(-0.5, 1.5, count).astype(np.float32))
    ours, reference = images.copy(), images.copy()
    for changed, function in ((ours, filters.tone), (reference, filters.tone_numpy)):
        function(changed[:, ::-1, ::-1] if flipped else changed, gains if linear else None, bank, starts, stds)
    assert ours.tobytes() == reference.tobytes()


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

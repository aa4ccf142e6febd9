"""Cheap numpy augmentation of one in-context task.

Geometry is drawn once per task and applied to the target and every support
(images and labels alike), so the task stays consistent; intensity changes
are drawn per image, as acquisition settings differ between scans. All
randomness comes from the task's own generator.

Two versions of the draws exist. Version 1 (`augment_task`, runs before
draw version 2) draws fresh Gaussian noise for every pixel, which alone caps a
core at about 4,000 images/s of 128 px. Version 2 (`augment_into`, new runs)
takes each image's noise as a window of a fixed bank of Gaussian values at a
random offset: within an image the noise is still independent N(0, 1) per
pixel, and the per-pixel work is a few vectorised passes. A checkpoint records
its version, so a resumed run keeps drawing what it drew before.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FLIP_LEFT_RIGHT_PROBABILITY = 0.5  # probe orientation: always plausible
FLIP_UP_DOWN_PROBABILITY = 0.2  # task-level only: teaches reading the supports, not a fixed anatomy
ROTATE_PROBABILITY = 0.2
CONTRAST_RANGE = (0.8, 1.25)
BRIGHTNESS_RANGE = (-0.08, 0.08)
MAX_NOISE_STD = 0.03
NOISE_BANK_IMAGES = 64  # the bank holds this many images' worth of noise values (at least 2**20)


def augment_task(rng: np.random.Generator, images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`images` and `labels`: (K, H, W) float32, the task's target first, then its supports."""
    images, labels = same_geometry(rng, images, labels)
    return jitter_intensity(rng, images), labels


def same_geometry(rng: np.random.Generator, *stacks: np.ndarray) -> list[np.ndarray]:
    """One random flip / quarter-turn applied to every (K, H, W) stack."""
    flip_left_right = rng.random() < FLIP_LEFT_RIGHT_PROBABILITY
    flip_up_down = rng.random() < FLIP_UP_DOWN_PROBABILITY
    turns = int(rng.choice([1, 3])) if rng.random() < ROTATE_PROBABILITY else 0
    transformed = []
    for stack in stacks:
        if flip_left_right:
            stack = stack[:, :, ::-1]
        if flip_up_down:
            stack = stack[:, ::-1, :]
        if turns and stack.shape[1] == stack.shape[2]:
            stack = np.rot90(stack, turns, axes=(1, 2))
        transformed.append(np.ascontiguousarray(stack))
    return transformed


def jitter_intensity(rng: np.random.Generator, images: np.ndarray) -> np.ndarray:
    """Per-image contrast around the image mean, brightness shift and Gaussian noise, clipped to [0, 1]."""
    count = len(images)
    contrast = rng.uniform(*CONTRAST_RANGE, size=(count, 1, 1)).astype(np.float32)
    brightness = rng.uniform(*BRIGHTNESS_RANGE, size=(count, 1, 1)).astype(np.float32)
    noise_std = rng.uniform(0, MAX_NOISE_STD, size=(count, 1, 1)).astype(np.float32)
    mean = images.mean(axis=(1, 2), keepdims=True)
    noise = rng.standard_normal(images.shape, dtype=np.float32) * noise_std
    return np.clip((images - mean) * contrast + mean + brightness + noise, 0.0, 1.0)


def noise_bank(seed: int, pixels: int) -> np.ndarray:
    """The fixed Gaussian values draw version 2 takes its noise windows from (a pure function of its arguments)."""
    size = max(2**20, NOISE_BANK_IMAGES * pixels)
    return np.random.default_rng([seed, 0x6E6F697365]).standard_normal(size, dtype=np.float32)


def augment_into(rng: np.random.Generator, images: np.ndarray, labels: np.ndarray, bank: np.ndarray,
                 out_images: list[np.ndarray], out_labels: list[np.ndarray]) -> None:
    """Draw version 2 of `augment_task`: the same kinds of change, written straight into the batch.

    `images` (K, H, W) float32 and `labels` (K, H, W) bool are the task's images, target
    first, as they are in the dataset: (a function of) the left-right flag decides which
    copy to read, see `task_geometry`. The results go to out_images[0]/out_labels[0] (the
    target's (1, H, W) array), then out_images[1]/out_labels[1] (the supports' (S, H, W)).
    """
    geometry = task_geometry(rng)
    images, labels = images(geometry.flip_left_right), labels(geometry.flip_left_right)
    images, labels = (np.ascontiguousarray(geometry.rest(stack)) for stack in (images, labels))
    count, height, width = images.shape
    contrast = rng.uniform(*CONTRAST_RANGE, size=(count, 1, 1)).astype(np.float32)
    brightness = rng.uniform(*BRIGHTNESS_RANGE, size=(count, 1, 1)).astype(np.float32)
    noise_std = rng.uniform(0, MAX_NOISE_STD, size=(count, 1, 1)).astype(np.float32)
    offsets = rng.integers(0, len(bank) - height * width + 1, size=count)
    noise = np.lib.stride_tricks.sliding_window_view(bank, height * width)[offsets].reshape(images.shape)
    noise *= noise_std
    # (x - mean) * contrast + mean + brightness, as x * contrast plus one constant per image
    shift = images.mean(axis=(1, 2), keepdims=True) * (1 - contrast) + brightness
    start = 0
    for out, out_label in zip(out_images, out_labels):
        part = slice(start, start + len(out))
        np.multiply(images[part], contrast[part], out=out)
        out += shift[part]
        out += noise[part]
        np.clip(out, 0.0, 1.0, out=out)
        np.copyto(out_label, labels[part], casting="unsafe")  # bool -> float32 in the copy
        start += len(out)


@dataclass(frozen=True)
class TaskGeometry:
    """One task's flips and quarter-turns, drawn as `same_geometry` draws them."""

    flip_left_right: bool
    flip_up_down: bool
    turns: int

    def rest(self, stack: np.ndarray) -> np.ndarray:
        """The up-down flip and the turn of a (K, H, W) stack, as a view; the left-right flip is
        done by reading a mirrored copy of the data, because numpy copies a reversed last axis
        about ten times slower than a plain copy (it is most of the cost otherwise)."""
        if self.flip_up_down:
            stack = stack[:, ::-1, :]
        if self.turns and stack.shape[1] == stack.shape[2]:
            stack = np.rot90(stack, self.turns, axes=(1, 2))
        return stack


def task_geometry(rng: np.random.Generator) -> TaskGeometry:
    flip_left_right = rng.random() < FLIP_LEFT_RIGHT_PROBABILITY
    flip_up_down = rng.random() < FLIP_UP_DOWN_PROBABILITY
    turns = int(rng.choice([1, 3])) if rng.random() < ROTATE_PROBABILITY else 0
    return TaskGeometry(bool(flip_left_right), bool(flip_up_down), turns)

"""Cheap numpy augmentation of one in-context task.

Geometry is drawn once per task and applied to the target and every support
(images and labels alike), so the task stays consistent; intensity changes
are drawn per image, as acquisition settings differ between scans. All
randomness comes from the task's own generator.
"""

from __future__ import annotations

import numpy as np

FLIP_LEFT_RIGHT_PROBABILITY = 0.5  # probe orientation: always plausible
FLIP_UP_DOWN_PROBABILITY = 0.2  # task-level only: teaches reading the supports, not a fixed anatomy
ROTATE_PROBABILITY = 0.2
CONTRAST_RANGE = (0.8, 1.25)
BRIGHTNESS_RANGE = (-0.08, 0.08)
MAX_NOISE_STD = 0.03


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

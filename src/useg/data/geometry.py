"""Where an image of any shape lies in the model's `size x size` square, and the way back (`--resize`).

`squash` (the default, and the rule of every run saved before `--resize` existed) stretches the
whole image over the square: the aspect ratio is not kept, so a 959x533 scan is squeezed
sideways. `pad` scales the image so that its longer side fills the square, centres it and
letterboxes the rest with 0 (black in images, background in masks): shapes keep their
proportions. A prediction goes back the same way in reverse: the letterbox is cropped, then the
probability map is resized (bilinear) to the image's own size.

Every layout reads through `useg.data.images.resize_grey` / `resize_mask`, and predict and
evaluate go back through `from_square`, so each rule is one code path.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from useg.config import RESIZE_MODES
from useg.errors import ConfigError


@dataclass(frozen=True)
class Placement:
    """The image's pixels fill rows `top`..`top + height` and columns `left`..`left + width` of the square."""

    size: int
    top: int
    left: int
    height: int
    width: int

    @property
    def fills_square(self) -> bool:
        return (self.height, self.width) == (self.size, self.size)

    def paste(self, plane: np.ndarray, fill: float | bool = 0) -> np.ndarray:
        """The (height, width) `plane` in a (size, size) square of `fill`."""
        if self.fills_square:
            return plane
        square = np.full((self.size, self.size), fill, dtype=plane.dtype)
        square[self.top:self.top + self.height, self.left:self.left + self.width] = plane
        return square

    def crop(self, square: torch.Tensor) -> torch.Tensor:
        """The image's part of a (..., size, size) square."""
        return square[..., self.top:self.top + self.height, self.left:self.left + self.width]


def placement(shape: tuple[int, ...], size: int, mode: str) -> Placement:
    """Where an image of (height, width) `shape` goes in the square under `mode` ("squash" or "pad")."""
    check_mode(mode)
    if mode == "squash":
        return Placement(size, 0, 0, size, size)
    rows, columns = shape[:2]
    scale = size / max(rows, columns)
    height, width = max(1, round(rows * scale)), max(1, round(columns * scale))
    return Placement(size, (size - height) // 2, (size - width) // 2, height, width)


def check_mode(mode: str) -> None:
    if mode not in RESIZE_MODES:
        raise ConfigError(f"--resize {mode} is unknown; use {' or '.join(RESIZE_MODES)}")


def from_square(probs: torch.Tensor, shape: tuple[int, ...], mode: str) -> torch.Tensor:
    """A (..., size, size) probability map at an image's own (height, width) `shape`: the letterbox
    cropped (pad), then resized bilinearly."""
    shape = tuple(int(n) for n in shape[-2:])
    inside = placement(shape, probs.shape[-1], mode).crop(probs)
    if tuple(inside.shape[-2:]) == shape:
        return inside
    flat = inside.reshape(-1, 1, *inside.shape[-2:])
    resized = F.interpolate(flat, size=shape, mode="bilinear", align_corners=False)
    return resized.reshape(*inside.shape[:-2], *shape)

"""Reading images and masks from disk, turning them grey and resizing them.

Every layout goes through these functions, so all datasets share one rule:
images are resized to `size x size` ignoring the aspect ratio (bilinear with
antialiasing), grey is the mean of R, G and B scaled to [0, 1], and binary
masks are resized bilinearly and thresholded at one half.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from useg.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")

# EXIF orientations that swap width and height (90 or 270 degree rotations).
_TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES


def open_image(path: Path, name: str) -> Image.Image:
    """Open an image file; `name` is what error messages call it (never a personal folder)."""
    try:
        image = Image.open(path)
        image.size  # noqa: B018 - touching the header fails early on garbage
        return image
    except FileNotFoundError:
        raise DataError(f"image {name} does not exist; check the data folder") from None
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError) as error:
        raise DataError(
            f"cannot read image {name} ({type(error).__name__}); replace or remove the file"
        ) from None


def displayed_size(image: Image.Image) -> tuple[int, int]:
    """(width, height) after applying the EXIF orientation, as annotation tools show it."""
    width, height = image.size
    if image.getexif().get(0x0112, 1) in _TRANSPOSING_ORIENTATIONS:
        return height, width
    return width, height


def open_upright(path: Path, name: str) -> Image.Image:
    """The fully decoded image, turned upright by its EXIF orientation; a damaged file is one DataError."""
    image = open_image(path, name)
    try:
        upright = ImageOps.exif_transpose(image)
        upright.load()
    except (OSError, ValueError, SyntaxError) as error:
        raise DataError(f"cannot read image {name} ({type(error).__name__}); replace or remove the file") from None
    return upright


def read_grey(path: Path, name: str, size: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Read an image as a (size, size) float32 grey array in [0, 1], plus its original (width, height)."""
    image = open_image(path, name)
    try:
        # Reading the EXIF orientation decodes a PNG to its end: a truncated file fails here.
        original_size = displayed_size(image)
        # JPEG can decode at 1/2, 1/4 or 1/8 scale directly: much faster for big photos.
        image.draft(None, (size, size))
        image = ImageOps.exif_transpose(image)
        grey = to_grey(image)
    except (OSError, ValueError, SyntaxError) as error:
        raise DataError(
            f"cannot read image {name} ({type(error).__name__}); replace or remove the file"
        ) from None
    return resize_grey(grey, size), original_size


def to_grey(image: Image.Image) -> np.ndarray:
    """Grey float32 array in [0, 1]: mean of RGB for colour images, full-range scaling otherwise."""
    mode = image.mode
    if mode in ("L", "LA"):
        return np.asarray(image.convert("L"), dtype=np.float32) / 255.0
    if mode.startswith("I;16"):
        return np.asarray(image, dtype=np.float32) / 65535.0
    if mode in ("I", "F"):
        values = np.asarray(image, dtype=np.float32)
        peak = float(values.max(initial=0.0))
        scale = 1.0 if peak <= 1.0 else 255.0 if peak <= 255.0 else 65535.0 if peak <= 65535.0 else peak
        return np.clip(values / scale, 0.0, 1.0)
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    return rgb.mean(axis=2) / 255.0


def resize_grey(grey: np.ndarray, size: int) -> np.ndarray:
    if grey.shape == (size, size):
        return grey.astype(np.float32, copy=False)
    resized = Image.fromarray(grey.astype(np.float32)).resize((size, size), Image.Resampling.BILINEAR)
    return np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """Resize a boolean (H, W) mask to (size, size): bilinear, then keep pixels above one half."""
    if mask.shape == (size, size):
        return mask.astype(bool, copy=False)
    image = Image.fromarray(mask.astype(np.uint8) * 255)
    resized = image.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(resized) >= 128


def read_mask_values(path: Path, name: str) -> np.ndarray:
    """Read a mask or label map as an integer (H, W) array of its stored values."""
    image = open_image(path, name)
    try:
        image = ImageOps.exif_transpose(image)
        if image.mode in ("RGB", "RGBA", "LA", "CMYK", "YCbCr"):
            # A colour binary mask: any non-black channel counts.
            return np.asarray(image.convert("RGB")).max(axis=2).astype(np.int64)
        if image.mode == "1":
            image = image.convert("L")
        return np.asarray(image).astype(np.int64)
    except (OSError, ValueError, SyntaxError) as error:
        raise DataError(
            f"cannot read mask {name} ({type(error).__name__}); replace or remove the file"
        ) from None

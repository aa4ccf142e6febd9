"""Reading images and masks from disk, turning them grey and resizing them.

Every layout goes through these functions, so all datasets share one rule:
images are resized to `size x size` (bilinear with antialiasing) as `--resize`
says (`useg.data.geometry`: stretched by default, ignoring the aspect ratio, or
letterboxed with 0), grey is the mean of R, G and B scaled to [0, 1] for 8-bit
files, 16-bit and floating-point files are scaled per image between their
0.5th and 99.5th percentiles (`robust_unit`), and binary masks are resized
bilinearly and thresholded at one half. Masks are read as integer values
(`read_mask`); a lossy (JPEG) or fractional one is marked soft, and `useg.data.labels`
thresholds it. NIfTI and DICOM files are read by `useg.data.medical`; which file goes to which
reader is `useg.data.formats`.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from useg.data.formats import error_reason, is_medical, robust_unit
from useg.data.geometry import placement
from useg.data.medical import read_medical_image
from useg.errors import DataError

# EXIF orientations that swap width and height (90 or 270 degree rotations).
_TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)


def unreadable(kind: str, name: str, error: BaseException) -> DataError:
    """The one line for a file that cannot be decoded: which file, and why."""
    return DataError(f"cannot read {kind} {name} ({error_reason(error)}); replace or remove the file")


def open_image(path: Path, name: str, kind: str = "image") -> Image.Image:
    """Open an image file; `name` is what error messages call it (never a personal folder), `kind`
    what the file is to the user ("image" or "mask")."""
    try:
        with warnings.catch_warnings():
            # A big scan is not an attack here: it is read (slowly) or refused with the limit named.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
        image.size  # noqa: B018 - touching the header fails early on garbage
        return image
    except FileNotFoundError:
        raise DataError(f"{kind} {name} does not exist; check the data folder") from None
    except Image.DecompressionBombError as error:
        found = re.search(r"\((\d+) pixels\)", str(error))
        size = f"{found.group(1)} pixels, " if found else ""
        raise DataError(f"{kind} {name} is too large to read ({size}over the limit of {2 * Image.MAX_IMAGE_PIXELS}); "
                        f"downscale it first") from None
    except (UnidentifiedImageError, OSError, ValueError) as error:
        if _is_empty(path):
            raise DataError(f"cannot read {kind} {name} (the file is empty: 0 bytes); replace or remove the "
                            f"file") from None
        raise unreadable(kind, name, error) from None


def _is_empty(path: Path) -> bool:
    try:
        return path.stat().st_size == 0
    except OSError:
        return False


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
        raise unreadable("image", name, error) from None
    return upright


def read_grey(path: Path, name: str, size: int, mode: str = "squash") -> tuple[np.ndarray, tuple[int, int]]:
    """Read an image as a (size, size) float32 grey array in [0, 1] (placed as `mode` says), plus its original
    (width, height)."""
    if is_medical(path):
        grey = read_medical_image(path, name)
        if grey.ndim != 2:
            raise DataError(f"image {name} is a 3-D volume of {grey.shape}; pass 2-D images here")
        return resize_grey(grey, size, mode), (grey.shape[1], grey.shape[0])
    image = open_image(path, name)
    try:
        # Reading the EXIF orientation decodes a PNG to its end: a truncated file fails here.
        original_size = displayed_size(image)
        # JPEG can decode at 1/2, 1/4 or 1/8 scale directly: much faster for big photos.
        image.draft(None, (size, size))
        image = ImageOps.exif_transpose(image)
        grey = to_grey(image)
    except (OSError, ValueError, SyntaxError) as error:
        raise unreadable("image", name, error) from None
    return resize_grey(grey, size, mode), original_size


def to_grey(image: Image.Image) -> np.ndarray:
    """Grey float32 array in [0, 1]: mean of RGB for 8-bit images, per-image robust range for 16-bit and float."""
    mode = image.mode
    if mode in ("L", "LA"):
        return np.asarray(image.convert("L"), dtype=np.float32) / 255.0
    if mode.startswith("I;16") or mode in ("I", "F"):
        return robust_unit(np.asarray(image, dtype=np.float32))
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    return rgb.mean(axis=2) / 255.0


def resize_grey(grey: np.ndarray, size: int, mode: str = "squash") -> np.ndarray:
    """A grey (H, W) array as the (size, size) square `mode` makes of it (bilinear; pad's letterbox is 0)."""
    where = placement(grey.shape, size, mode)
    if grey.shape == (where.height, where.width):
        return where.paste(grey.astype(np.float32, copy=False))
    resized = Image.fromarray(grey.astype(np.float32)).resize((where.width, where.height), Image.Resampling.BILINEAR)
    return where.paste(np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0))


def resize_mask(mask: np.ndarray, size: int, mode: str = "squash") -> np.ndarray:
    """A boolean (H, W) mask as the (size, size) square `mode` makes of it: bilinear, then keep pixels above
    one half (pad's letterbox is background)."""
    where = placement(mask.shape, size, mode)
    if mask.shape == (where.height, where.width):
        return where.paste(mask.astype(bool, copy=False))
    image = Image.fromarray(mask.astype(np.uint8) * 255)
    resized = image.resize((where.width, where.height), Image.Resampling.BILINEAR)
    return where.paste(np.asarray(resized) >= 128)


class StoredMask(NamedTuple):
    """A mask file's integer values and whether they are `soft`: intensities of a lossy (JPEG) file
    or fractions of a floating-point one, to threshold at half range rather than read as labels."""

    values: np.ndarray
    soft: bool = False


LOSSY_FORMATS = ("JPEG", "MPO")  # as Pillow names them; MPO is a camera's multi-picture JPEG


def read_mask_values(path: Path, name: str) -> np.ndarray:
    """Read a 2-D mask or label map as an integer (H, W) array of what its pixels mean."""
    return read_mask(path, name).values


def read_mask(path: Path, name: str) -> StoredMask:
    """A 2-D mask's integer (H, W) values, and whether they are soft (see `StoredMask`)."""
    image = open_image(path, name, "mask")
    try:
        lossy = image.format in LOSSY_FORMATS
        image = ImageOps.exif_transpose(image)
        if image.mode == "F":
            return float_mask(np.asarray(image), name)
        return StoredMask(mask_meaning(image), lossy)
    except (OSError, ValueError, SyntaxError) as error:
        raise unreadable("mask", name, error) from None


def float_mask(values: np.ndarray, name: str) -> StoredMask:
    """A floating-point mask: whole numbers are labels as they are; fractions make it soft, and
    fractions within [0, 1] are put on the 8-bit scale so that half range is 0.5."""
    if not np.isfinite(values).all():
        raise DataError(f"mask {name} holds NaN or infinite values; store label values as integers")
    if np.array_equal(values, np.rint(values)):
        return StoredMask(values.astype(np.int64))
    unit = values.min() >= 0 and values.max() <= 1
    return StoredMask(np.rint(values * 255 if unit else values).astype(np.int64), soft=True)


def mask_meaning(image: Image.Image) -> np.ndarray:
    """Integer (H, W) values of a mask, read by what it shows rather than how it is stored.

    A palette image is read through its palette (its indices are arbitrary), an image whose
    shape is only in the alpha channel is read from alpha, a colour mask by its brightest channel.
    """
    if image.mode in ("P", "PA"):
        return palette_values(image)
    if image.mode in ("RGBA", "LA"):
        alpha = np.asarray(image.getchannel("A")).astype(np.int64)
        colour = np.asarray(image.convert("RGB")).max(axis=2).astype(np.int64)
        if colour.min() == colour.max() and alpha.min() != alpha.max():
            return alpha
        return colour
    if image.mode in ("RGB", "CMYK", "YCbCr"):
        # A colour binary mask: any non-black channel counts.
        return np.asarray(image.convert("RGB")).max(axis=2).astype(np.int64)
    if image.mode == "1":
        image = image.convert("L")
    return np.asarray(image).astype(np.int64)


def palette_values(image: Image.Image) -> np.ndarray:
    """A palette mask's values: its indices when index 0 is black (the label tools' convention, and
    what older runs were trained on); otherwise read through the palette, black entries as 0.

    Through the palette, a grey palette gives the grey level (an adaptive black-and-white palette in
    either order means what it shows) and a colour palette keeps the index of each non-black colour.
    """
    indices = np.asarray(image if image.mode == "P" else image.convert("P")).astype(np.int64)
    palette = np.asarray(image.getpalette("RGB") or [0, 0, 0], dtype=np.int64).reshape(-1, 3)
    if not palette[0].any():
        return indices
    used = np.unique(indices)
    rgb = palette[np.minimum(used, len(palette) - 1)]
    grey = bool((rgb == rgb[:, :1]).all())
    lookup = np.zeros(int(used.max()) + 1, dtype=np.int64)
    for index, colour in zip(used, rgb):
        if colour.any():
            lookup[index] = colour[0] if grey else (index or int(used.max()) + 1)
    return lookup[indices]

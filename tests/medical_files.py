"""Tiny image files for tests, shared by the data and apply tests: grey PNGs, a labelled folder of cysts,
NIfTI (nibabel) and DICOM (pydicom)."""

from __future__ import annotations

from pathlib import Path

import nibabel
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from PIL import Image
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from useg.data import make_synthetic


def save_nifti(path: Path, array: np.ndarray) -> None:
    nibabel.save(nibabel.Nifti1Image(array, np.eye(4)), path)


def save_dicom(path: Path, pixels: np.ndarray, slope: float = 1.0, intercept: float = 0.0) -> None:
    """A minimal uncompressed 16-bit DICOM file; several frames when `pixels` is (frames, rows, columns)."""
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"  # CT image storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = pixels.shape[-2:]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    if pixels.ndim == 3:
        ds.NumberOfFrames = pixels.shape[0]
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)


def save_grey(path: Path, array: np.ndarray) -> None:
    """An 8-bit grey PNG of `array` (values in [0, 1]), its folder made as needed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.clip(array, 0, 1) * 255).astype(np.uint8)).save(path)


def write_cyst_folder(root: Path) -> Path:
    """images/ + masks/ (0/255) of six synthetic cysts at 48x48, one patient each: a user's labelled folder."""
    data = make_synthetic(image_size=48, seed=1, n_patients=6, images_per_patient=1, classes=["cyst"])
    for index, (image, mask) in enumerate(zip(data.images, data.masks[:, 0])):
        save_grey(root / "images" / f"s{index}.png", image)
        save_grey(root / "masks" / f"s{index}.png", mask.astype(np.float32))
    return root


def write_synthetic_folder(root: Path, count: int, seed: int, size: tuple[int, int]) -> Path:
    """images/ + masks/ of `count` synthetic scans (one patient each) resized to `size` (width, height), every
    lesion in one binary 0/255 mask (class foreground)."""
    data = make_synthetic(image_size=48, seed=seed, n_patients=count, images_per_patient=1)
    for kind in ("images", "masks"):
        (root / kind).mkdir(parents=True)
    for index, (image, mask) in enumerate(zip(data.images, data.masks.any(axis=1))):
        Image.fromarray((image * 255).astype(np.uint8)).resize(size).save(root / "images" / f"scan{index}.png")
        Image.fromarray(mask.astype(np.uint8) * 255).resize(size, Image.Resampling.NEAREST).save(
            root / "masks" / f"scan{index}.png")
    return root


FAMILIES = ("blobs", "streaks", "rings", "dark_rings")  # write_family_folder's dataset families


def write_family_folder(root: Path, family: str, count: int, seed: int, size: int = 64) -> Path:
    """images/ + masks/ (0/255, one class) of `count` grey `size`-px images of one synthetic family, one patient
    each; the same (family, seed) always gives the same files. The first three differ in shape, texture and
    intensity, so that a run trained on two of them meets something new in the third:

    - `blobs`: one to three round bright lesions with soft edges on a smooth, dim background;
    - `streaks`: one or two thin dark elongated shapes on a bright speckled (textured) background;
    - `rings`: one or two bright annuli (the ring is the label, not its inside) on a linear intensity gradient;
    - `dark_rings`: the same annuli darker than a bright gradient: streaks' polarity with blobs' smooth
      background, so that a family held out shares its polarity with one training family either way.
    """
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {', '.join(FAMILIES)}, not {family!r}")
    draw = {"blobs": _blobs, "streaks": _streaks, "rings": _rings, "dark_rings": _dark_rings}[family]
    y, x = np.mgrid[0:size, 0:size].astype(np.float64) / size
    for index in range(count):
        rng = np.random.default_rng([seed, FAMILIES.index(family), index])
        image, mask = draw(rng, x, y)
        save_grey(root / "images" / f"{family}{index:03d}.png", image)
        save_grey(root / "masks" / f"{family}{index:03d}.png", mask.astype(np.float64))
    return root


def _smooth_field(rng: np.random.Generator, x: np.ndarray, y: np.ndarray, waves: int = 3) -> np.ndarray:
    """A smooth random field in about [-1, 1]: a few low-frequency sine waves."""
    field = np.zeros_like(x)
    for _ in range(waves):
        fx, fy, phase = rng.uniform(0.5, 2.0), rng.uniform(0.5, 2.0), rng.uniform(0, 2 * np.pi)
        field += np.sin(2 * np.pi * (fx * x + fy * y) + phase)
    return field / waves


def _ellipse(x, y, centre, radii, angle) -> np.ndarray:
    """(distance / radius)^2 of each pixel from an ellipse's centre along its turned axes (< 1 inside)."""
    dx, dy = x - centre[0], y - centre[1]
    u = dx * np.cos(angle) + dy * np.sin(angle)
    v = -dx * np.sin(angle) + dy * np.cos(angle)
    return (u / radii[0]) ** 2 + (v / radii[1]) ** 2


def _blobs(rng, x, y):
    image = 0.22 + 0.06 * _smooth_field(rng, x, y)
    mask = np.zeros(x.shape, dtype=bool)
    for _ in range(rng.integers(1, 4)):
        radius = rng.uniform(0.08, 0.16)
        radii = (radius, radius * rng.uniform(0.85, 1.0))
        distance = _ellipse(x, y, rng.uniform(0.2, 0.8, 2), radii, rng.uniform(0, np.pi))
        # a soft edge, full brightness inside (the exponent capped: far pixels would overflow exp)
        image += rng.uniform(0.45, 0.6) / (1 + np.exp(np.minimum((distance - 1) * 8, 50)))
        mask |= distance < 1
    return image + rng.normal(0, 0.02, x.shape), mask


def _streaks(rng, x, y):
    speckle = rng.gamma(3.0, 1 / 3.0, x.shape)  # multiplicative, mean 1: a grainy texture
    image = (0.65 + 0.1 * _smooth_field(rng, x, y)) * speckle
    mask = np.zeros(x.shape, dtype=bool)
    for _ in range(rng.integers(1, 3)):
        length, width = rng.uniform(0.25, 0.4), rng.uniform(0.03, 0.06)
        inside = _ellipse(x, y, rng.uniform(0.3, 0.7, 2), (length, width), rng.uniform(0, np.pi)) < 1
        image[inside] = rng.uniform(0.08, 0.18) * speckle[inside] ** 0.3
        mask |= inside
    return image, mask


def _rings(rng, x, y, level: float = 0.35, slope: float = 0.35, contrast: float = 0.3):
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (x - 0.5) * np.cos(angle) + (y - 0.5) * np.sin(angle)  # about [-0.7, 0.7]
    image = level + slope * ramp
    mask = np.zeros(x.shape, dtype=bool)
    for _ in range(rng.integers(1, 3)):
        outer = rng.uniform(0.12, 0.2)
        inner = outer * rng.uniform(0.5, 0.7)
        distance = np.sqrt(_ellipse(x, y, rng.uniform(0.25, 0.75, 2), (outer, outer), 0.0))
        ring = (distance < 1) & (distance > inner / outer)
        image[ring] += contrast
        mask |= ring
    return image + rng.normal(0, 0.03, x.shape), mask


def _dark_rings(rng, x, y):
    return _rings(rng, x, y, level=0.65, slope=0.25, contrast=-0.35)

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

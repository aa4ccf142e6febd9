"""The image formats useg reads: their suffixes, which reader takes a file, and what both readers share.

Raster files (PNG, JPEG, TIFF, BMP) are read with Pillow by `useg.data.images`; NIfTI and DICOM
files, including suffix-less DICOM, by `useg.data.medical`. Both readers explain a file they
cannot decode with `error_reason` and scale wide-range values (16-bit, floating point, CT and
MR) to [0, 1] with `robust_unit`. This module imports neither reader.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

RASTER_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
MEDICAL_SUFFIXES = (*NIFTI_SUFFIXES, ".dcm")
IMAGE_SUFFIXES = RASTER_SUFFIXES + MEDICAL_SUFFIXES
PERCENTILES = (0.5, 99.5)  # robust range of 16-bit, floating-point, CT and MR intensities


# --- which files, and which reader --------------------------------------------------------------

def file_suffix(path: Path) -> str:
    """The format suffix, lower case; `.nii.gz` counts as one."""
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def file_stem(path: Path) -> str:
    """The name without its format suffix (`scan.nii.gz` -> `scan`), for pairing images with masks."""
    return path.name[: len(path.name) - len(file_suffix(path))] if file_suffix(path) else path.name


def is_image_file(path: Path) -> bool:
    """A file in a format useg reads: by suffix, or a suffix-less DICOM file (DICM after the preamble)."""
    if not path.is_file() or path.name.startswith("."):
        return False
    suffix = file_suffix(path)
    if suffix in IMAGE_SUFFIXES:
        return True
    return suffix == "" and has_dicom_magic(path)


def has_dicom_magic(path: Path) -> bool:
    try:
        with path.open("rb") as file:
            file.seek(128)
            return file.read(4) == b"DICM"
    except OSError:
        return False


def is_medical(path: Path) -> bool:
    """Read by useg.data.medical (NIfTI, DICOM with or without a suffix), not by Pillow."""
    return file_suffix(path) in MEDICAL_SUFFIXES or file_suffix(path) == ""


def is_nifti(path: Path) -> bool:
    return file_suffix(path) in NIFTI_SUFFIXES


# --- what both readers share --------------------------------------------------------------------

def error_reason(error: BaseException, path: Path | None = None, name: str = "") -> str:
    """A short reason without folders (a folder name may be a patient's name); `path` is shown as `name`."""
    if isinstance(error, OSError) and error.filename is not None:
        return error.strerror or type(error).__name__
    reason = _REASONS.get(type(error).__name__) or (str(error).splitlines() or [""])[0][:160]
    if path is not None:
        reason = reason.replace(str(path), name)
    return type(error).__name__ if not reason or "/" in reason or "\\" in reason else reason


_REASONS = {
    "UnidentifiedImageError": "not an image in a format Pillow reads",
    "FileNotFoundError": "the file disappeared while reading",
}


def robust_unit(values: np.ndarray) -> np.ndarray:
    """Scale to [0, 1] between the 0.5th and 99.5th percentile of the finite values, clipping outliers.

    Used for 16-bit, floating-point, CT and MR data, whose stored range says little about where the
    tissue is (a CT's -1024 air, an MR scanner's arbitrary units); a flat image becomes 0.
    """
    values = np.asarray(values, dtype=np.float32)
    finite = values[np.isfinite(values)]
    if not finite.size:
        return np.zeros(values.shape, dtype=np.float32)
    low, high = np.percentile(finite, PERCENTILES)
    if high <= low:
        low, high = float(finite.min()), float(finite.max())
    if high <= low:
        return np.zeros(values.shape, dtype=np.float32)
    scaled = (np.nan_to_num(values, nan=low, posinf=high, neginf=low) - low) / (high - low)
    return np.clip(scaled, 0.0, 1.0).astype(np.float32)

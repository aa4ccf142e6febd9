"""NIfTI (`.nii`, `.nii.gz`, via nibabel) and DICOM (`.dcm` or no suffix, via pydicom) files as arrays.

A file gives a 2-D image or a 3-D volume. Axes keep the file's array order:
NIfTI's (i, j, k), and DICOM's (rows, columns, frames) - frames are moved
last so that "the last axis" is the slice axis of both. Singleton axes are
dropped (a NIfTI of shape (X, Y, 1) is a 2-D image). Images are scaled to
[0, 1] per file between the 0.5th and 99.5th percentile (a volume as a
whole, so its slices share one scale); masks keep their stored values.

Evaluation scores a volume slice by slice and asks for each slice's mask at its
stored size: inside `keeping_last_mask()` the last mask file read is kept, so a
volume is read once, not once per slice (at most one volume is held).
"""

from __future__ import annotations

import contextvars
import os
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from useg.data.formats import error_reason, file_suffix, is_nifti, robust_unit
from useg.errors import DataError


def read_medical_image(path: Path, name: str) -> np.ndarray:
    """A 2-D or 3-D float32 array in [0, 1] (robust percentiles per file)."""
    values = read_medical(path, name, as_mask=False)
    return robust_unit(values)


def read_medical_mask(path: Path, name: str) -> np.ndarray:
    """A 2-D or 3-D int64 array of stored mask values (label maps keep their numbers).

    Inside `keeping_last_mask()` the array is shared with later reads of the same unchanged file, so it is
    read-only: a caller that wants to change it copies it first.
    """
    kept = _last_mask.get()
    if kept is None:
        return _read_mask_values(path, name)
    key = _file_key(path)
    if kept.get("key") != key:
        kept.clear()  # drop the previous volume before reading the next: at most one is held
        values = _read_mask_values(path, name)
        values.flags.writeable = False
        kept.update(key=key, values=values)
    return kept["values"]


def _read_mask_values(path: Path, name: str) -> np.ndarray:
    values = read_medical(path, name, as_mask=True)
    if not np.isfinite(values).all():
        raise DataError(f"mask {name} holds NaN or infinite values; store label values as integers")
    return np.rint(values).astype(np.int64)


# The mask kept by keeping_last_mask(): {"key": ..., "values": ...}; None outside it (nothing kept).
_last_mask: contextvars.ContextVar[dict | None] = contextvars.ContextVar("useg_last_mask", default=None)


@contextmanager
def keeping_last_mask() -> Iterator[None]:
    """Within the block, reading the mask file read last (unchanged on disk) returns the array already read."""
    if _last_mask.get() is not None:  # nested: the outer block keeps it
        yield
        return
    token = _last_mask.set({})
    try:
        yield
    finally:
        _last_mask.reset(token)


def _file_key(path: Path) -> tuple:
    """A file and its version: a mask rewritten during the block is read again."""
    try:
        found = os.stat(path)
    except OSError:
        return (str(path), None)  # the read reports what is wrong with the file
    return (os.path.realpath(path), found.st_mtime_ns, found.st_size)


def read_medical(path: Path, name: str, *, as_mask: bool) -> np.ndarray:
    kind = "mask" if as_mask else "image"
    with warnings.catch_warnings():
        # nibabel and pydicom warn about header details (qfac, odd VRs) they then handle: not the user's to fix.
        warnings.simplefilter("ignore")
        if is_nifti(path):
            values = _read_nifti(path, name, kind)
        else:
            values = _read_dicom(path, name, kind, as_mask)
    values = np.squeeze(values)
    if values.ndim not in (2, 3):
        raise DataError(f"{kind} {name} has shape {values.shape}: useg reads 2-D images and 3-D volumes; "
                        f"split time series into one volume per file")
    return values


def _read_nifti(path: Path, name: str, kind: str) -> np.ndarray:
    import nibabel

    try:
        image = nibabel.load(path)
        return np.asanyarray(image.dataobj)
    except Exception as error:  # nibabel, gzip and zlib raise many types for one damaged file
        raise _unreadable(kind, name, "NIfTI", error, path) from None


def _read_dicom(path: Path, name: str, kind: str, as_mask: bool) -> np.ndarray:
    import pydicom
    from pydicom.pixels import apply_modality_lut

    try:
        dataset = pydicom.dcmread(path, force=file_suffix(path) == ".dcm")
        if all(tag.group < 8 for tag in dataset.keys()):  # garbage parses as a lone (0000,0000) element
            raise DataError(f"cannot read {kind} {name} as DICOM (no DICOM elements in it); replace or remove the "
                            f"file")
        if "PixelData" not in dataset:
            raise DataError(f"{kind} {name} is a DICOM file without pixel data (a report or a series index?); "
                            f"remove it from the folder")
        pixels = dataset.pixel_array
        if not as_mask:
            pixels = apply_modality_lut(pixels, dataset).astype(np.float32)
    except DataError:
        raise
    except Exception as error:  # pydicom raises many types: missing decoders, bad headers, short pixel data
        raise _unreadable(kind, name, "DICOM", error, path) from None
    return _dicom_axes(np.asarray(pixels), dataset, as_mask)


def _dicom_axes(pixels: np.ndarray, dataset, as_mask: bool) -> np.ndarray:
    """Grey (rows, columns[, frames]): colour samples averaged, frames last, MONOCHROME1 inverted."""
    frames = int(getattr(dataset, "NumberOfFrames", 1) or 1)
    if int(getattr(dataset, "SamplesPerPixel", 1) or 1) > 1:
        pixels = pixels.mean(axis=-1)
    if frames > 1:
        pixels = np.moveaxis(pixels, 0, -1)
    if not as_mask and getattr(dataset, "PhotometricInterpretation", "") == "MONOCHROME1":
        pixels = pixels.max() - pixels  # MONOCHROME1 shows low values white
    return pixels


def _unreadable(kind: str, name: str, format_name: str, error: BaseException, path: Path) -> DataError:
    return DataError(f"cannot read {kind} {name} as {format_name} ({error_reason(error, path, name)}); replace or "
                     f"remove the file")


def slices(volume: np.ndarray, axis: int) -> Planes:
    """The 2-D planes of a 2-D image (itself) or of a 3-D volume cut along `axis`."""
    return Planes(volume, axis)


class Planes(Sequence):
    """A volume's planes along one axis, each cut when asked for: picking one slice costs one slice.

    (`np.take` per plane copied the whole volume for every plane of a Fortran-ordered NIfTI array, and
    cutting every plane to use one made reading a slice's mask cost the whole volume.)
    """

    def __init__(self, volume: np.ndarray, axis: int):
        self.volume = volume
        self.stack = volume[None] if volume.ndim == 2 else np.moveaxis(volume, axis, 0)

    def __len__(self) -> int:
        return len(self.stack)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[number] for number in range(len(self))[index]]
        if self.volume.ndim == 2 and index in (0, -1):
            return self.volume
        return self.stack[index].copy()  # a copy: a plane kept does not hold the whole volume in memory

    def __iter__(self) -> Iterator[np.ndarray]:
        return (self[number] for number in range(len(self)))

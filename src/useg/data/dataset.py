"""The in-memory dataset every layout loads into, and the helpers the layout readers share."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from useg.errors import DataError


@dataclass(frozen=True)
class ImageSource:
    """Where one loaded image came from, relative to the layout's folder (for the run's id index).

    The layout's folder is `--data` itself, or the OTU_2d folder inside it for MMOTU.
    """

    image: str  # e.g. "images/case1/a.png"
    mask: str | None = None  # None where masks are drawn from annotations (Ovatus)
    slice: int | None = None  # the slice of a 3-D volume, along `slice_axis`
    dataset: int | None = None  # which dataset of several (0-based; useg.data.collection), None for one

    def to_dict(self) -> dict[str, Any]:
        record = {"image": self.image, "mask": self.mask, "slice": self.slice}
        if self.dataset is not None:
            record["dataset"] = self.dataset
        return record


@dataclass
class SegDataset:
    """Images, one binary mask per class, and anonymous patient and image identities."""

    images: np.ndarray  # (N, H, W) float32 in [0, 1]
    masks: np.ndarray  # (N, C, H, W) bool; classes may overlap
    classes: list[str]
    patients: np.ndarray  # (N,) int64, 0..P-1
    ids: list[str]  # "p{patient:03d}_i{image:03d}", never a patient name
    source: str  # "synthetic" | "ovatus" | "folders" | "mmotu"
    report: dict[str, int]
    predefined_split: dict[str, list[int]] | None = None
    split_origin: str = ""  # where predefined_split came from, for the data line: "OTU_2D_annotation.json"
    notes: list[str] = field(default_factory=list)  # what the data line adds: how patients and classes were found
    sources: list[ImageSource] = field(default_factory=list)  # per image, or empty (synthetic)
    # (C, H, W) bool masks of image i at the size it has on disk (evaluation scores there);
    # None where the loaded masks are the stored ones (synthetic).
    read_native_masks: Callable[[int], np.ndarray] | None = field(default=None, repr=False)
    # Several datasets merged into one (useg.data.collection); empty / None for one dataset.
    datasets: list[str] = field(default_factory=list)  # each dataset's name, in the run's order
    dataset_weights: list[float] = field(default_factory=list)  # how often tasks come from each
    image_datasets: np.ndarray | None = None  # (N,) int64: the dataset of each image
    class_datasets: list[int] = field(default_factory=list)  # the dataset of each class
    image_fingerprints: list[str] | None = field(default=None, repr=False)  # as each image's own dataset gives them

    def __post_init__(self) -> None:
        n, c = len(self.images), len(self.classes)
        if self.images.ndim != 3 or self.masks.shape != (n, c, *self.images.shape[1:]):
            raise ValueError(f"masks {self.masks.shape} do not match images {self.images.shape} and {c} classes")
        if self.patients.shape != (n,) or len(self.ids) != n:
            raise ValueError("patients and ids need one entry per image")
        if self.sources and len(self.sources) != n:
            raise ValueError("sources need one entry per image")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def num_patients(self) -> int:
        return len(np.unique(self.patients))

    def fingerprints(self) -> list[str]:
        """A short sha256 of each image's pixels and masks as loaded: saved with a run's split, so
        that resuming or evaluating on other data with the same image ids is refused, not trusted."""
        if self.image_fingerprints is not None:
            return list(self.image_fingerprints)
        return [hashlib.sha256(image.tobytes() + mask.tobytes()).hexdigest()[:16]
                for image, mask in zip(self.images, self.masks)]

    @property
    def array_bytes(self) -> int:
        """The memory the images and masks take (the data line reports it)."""
        return self.images.nbytes + self.masks.nbytes

    def classes_of(self, numbers: list[int]) -> list[str]:
        """The classes of the datasets `numbers` (0-based) of several merged ones, in the class order."""
        return [name for name, number in zip(self.classes, self.class_datasets) if number in numbers]

    def class_presence(self) -> np.ndarray:
        """(N, C) bool: image n has a non-empty mask of class c."""
        return self.masks.any(axis=(2, 3))


def image_id(patient: int, image: int) -> str:
    return f"p{patient:03d}_i{image:03d}"


def select_classes(available: list[str], wanted: list[str] | None) -> list[int]:
    """Indices of the wanted classes, kept in the layout's fixed order."""
    if wanted is None:
        return list(range(len(available)))
    unknown = [name for name in wanted if name not in available]
    if unknown:
        raise DataError(f"unknown class {', '.join(unknown)}; valid classes: {', '.join(available)}")
    return [index for index, name in enumerate(available) if name in wanted]


def single_class_name(default: str, wanted: list[str] | None, layout: str) -> str:
    """Single-class layouts accept at most one class name, which renames their class."""
    if not wanted:
        return default
    if len(wanted) > 1:
        raise DataError(f"the {layout} layout has one class; pass at most one class name, not {len(wanted)}")
    return wanted[0]


def class_report(masks: np.ndarray, classes: list[str]) -> dict[str, int]:
    """Number of images with a non-empty mask, per class."""
    counts = masks.any(axis=(2, 3)).sum(axis=0) if len(masks) else np.zeros(len(classes), int)
    return {f"masks_{name}": int(count) for name, count in zip(classes, counts)}


def no_usable_images(where: str, what_to_check: str) -> DataError:
    return DataError(f"no usable images in {where}; {what_to_check}")

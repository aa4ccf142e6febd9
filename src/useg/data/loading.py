"""`load_dataset`: which layout a data folder holds, and reading it with that layout's reader.

The readers (folders, mmotu, ovatus, synthetic) build on `dataset.SegDataset`; this module
sits above them, so that neither imports the other in a circle.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from useg.data import folders, mmotu, ovatus, synthetic
from useg.data.dataset import SegDataset
from useg.data.geometry import check_mode
from useg.errors import ConfigError, DataError

ACCEPTED_LAYOUTS = (
    "an Ovatus folder (US_map4/ + mapping_normalized4.jsonl), "
    "images/ + masks/ with matching file names, "
    "or MMOTU OTU_2d (images/ + annotations/<id>_binary.PNG)"
)


def load_dataset(
    data: str | Path | None,
    *,
    image_size: int = 128,
    annotations: str | Path | None = None,
    label: int | list[int] | None = None,
    classes: list[str] | None = None,
    seed: int = 0,
    class_names: Mapping[str | int, str] | None = None,
    patient_pattern: str | None = None,
    keep_empty: float = 0.0,
    slice_axis: int = 2,
    resize: str = "squash",
) -> SegDataset:
    """Load `data` (a folder, or None for the synthetic set) at `image_size` x `image_size`, each image made
    square as `resize` says (useg.data.geometry; the synthetic set is square already)."""
    if image_size < 1:
        raise ConfigError(f"--image-size must be a positive number of pixels, not {image_size}")
    check_mode(resize)
    if data is None:
        return synthetic.make_synthetic(image_size=image_size, seed=seed, classes=classes)
    root = check_data_folder(data)
    if ovatus.is_ovatus(root, annotations):
        _reject_label(label, "Ovatus")
        _reject_folder_options(class_names, patient_pattern, keep_empty)
        return ovatus.load_ovatus(root, image_size=image_size, annotations=annotations, classes=classes,
                                  resize=resize)
    if annotations is not None:
        raise DataError(f"--annotations applies only to the Ovatus layout, but {root} holds no US_map4/ folder")
    if folders.is_folders(root):
        options = folders.FolderOptions(label=label, classes=classes, class_names=class_names,
                                        patient_pattern=patient_pattern, keep_empty=keep_empty, slice_axis=slice_axis,
                                        resize=resize)
        return folders.load_folders(root, image_size=image_size, options=options)
    mmotu_root = mmotu.find_mmotu(root)
    if mmotu_root is not None:
        _reject_label(label, "MMOTU")
        _reject_folder_options(class_names, patient_pattern, keep_empty)
        return mmotu.load_mmotu(mmotu_root, image_size=image_size, classes=classes, resize=resize)
    raise DataError(f"unknown data layout in {root}; expected {ACCEPTED_LAYOUTS}")


def check_data_folder(data: str | Path) -> Path:
    """The folder `data` names, or one line saying that it does not exist or is a file."""
    root = Path(data).expanduser()
    if not root.exists():
        raise DataError(f"data folder {root} does not exist; pass --data with {ACCEPTED_LAYOUTS}")
    if not root.is_dir():
        raise DataError(f"--data {root} is a file; pass the folder holding {ACCEPTED_LAYOUTS}")
    return root


DATA_OPTION_KEYS = ("annotations", "label", "classes", "class_names", "patient_pattern", "keep_empty", "slice_axis",
                    "resize")


def data_options(config: Mapping[str, Any] | Any) -> dict[str, Any]:
    """The `load_dataset` keywords a run's config holds (a TrainConfig or its saved dict; older runs lack some)."""
    values = config if isinstance(config, Mapping) else vars(config)
    options = {key: values.get(key) for key in DATA_OPTION_KEYS if values.get(key) is not None}
    return options


def _reject_folder_options(class_names, patient_pattern, keep_empty) -> None:
    given = [flag for flag, value in (("--class-names", class_names), ("--patient-pattern", patient_pattern),
                                      ("--keep-empty", keep_empty or None)) if value is not None]
    if given:
        raise DataError(f"{given[0]} applies only to the images/ + masks/ layout")


def _reject_label(label: int | list[int] | None, layout: str) -> None:
    if label is not None:
        raise DataError(f"--label applies only to the images/ + masks/ layout, not to {layout} data")

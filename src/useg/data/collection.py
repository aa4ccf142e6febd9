"""Several data folders as one run's data: each loaded by its own layout, split by patient on its own,
merged into one `SegDataset`; and the held-out datasets a run never trains on.

A run's `data` is one folder (a path, as always; `load_data` is then exactly `load_dataset`) or a list of
entries, each a path or a mapping {path, weight, its own data options} (useg.config.dataset_entry). In the
merged dataset image ids are `d1/p012_i003` (the dataset's number, then its own anonymous id), patients
of different datasets are different patients, a class is named `dataset/class` where two datasets share
its name, and each image's fingerprint is the one its own dataset gives it.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np

from useg.config import DATASET_KEYS
from useg.data.dataset import ImageSource, SegDataset
from useg.data.loading import check_data_folder, load_dataset
from useg.data.splits import SPLIT_NAMES, Split, split_by_patient
from useg.errors import ConfigError, UsegError

DEFAULT_FRACTIONS = (0.6, 0.2, 0.2)


@dataclass(frozen=True)
class DataEntry:
    """One dataset of a run: its folder (None: the embedded synthetic set), weight and `load_dataset` options."""

    path: str | None
    weight: float = 1.0
    options: Mapping[str, Any] = None  # type: ignore[assignment]


def is_several(data: Any) -> bool:
    """True for a run's `data` that lists datasets (even one with its own options), False for one path or None."""
    return isinstance(data, list)


def entries(data: Any, options: Mapping[str, Any] | None = None) -> list[DataEntry]:
    """A run's `data` (or `held_out_data`) as entries; `options` (the run's data options) apply to every
    entry that does not set its own."""
    common = dict(options or {})
    items = data if isinstance(data, list) else [data]
    found = []
    for item in items:
        own = dict(item) if isinstance(item, Mapping) else {"path": item}
        path = own.pop("path")
        weight = float(own.pop("weight", 1.0))
        found.append(DataEntry(None if path is None else str(path), weight, {**common, **own}))
    return found


def absolute(data: Any) -> Any:
    """`data` with every folder made absolute, so that a run resumes from any working directory."""
    if data is None:
        return None
    if not isinstance(data, list):
        return str(Path(data).expanduser().absolute())
    return [{**item, "path": absolute(item["path"])} if isinstance(item, Mapping) else absolute(item) for item in data]


def data_paths(data: Any) -> list[str | None]:
    """The folder of each dataset of `data`, in order (one path or None: a list of one)."""
    return [entry.path for entry in entries(data)]


def load_data(data: Any, *, image_size: int, seed: int, fractions=DEFAULT_FRACTIONS, names: list[str] | None = None,
              **options) -> SegDataset:
    """A run's data: one folder through `load_dataset` unchanged, several merged (see the module docstring),
    each split by patient with `fractions` and `seed` on its own (the merged dataset's predefined split).
    `names`: the datasets' names as the run first gave them (`names_of` its saved data), so that a folder
    moved under another name keeps its classes' and scores' names; default: from the folders."""
    if not is_several(data):
        return load_dataset(data, image_size=image_size, seed=seed, **options)
    found = entries(data, options)
    parts = [load_one(entry, number, len(found), "--data", image_size, seed) for number, entry in enumerate(found)]
    splits = []
    for number, (entry, part) in enumerate(zip(found, parts)):
        with naming_dataset("--data", number, len(found), entry.path):
            splits.append(split_by_patient(part, seed=seed, fractions=tuple(fractions)))
    merged = merge(parts, names or dataset_names(found), [entry.weight for entry in found], splits)
    share_arrays(parts, merged)
    return merged


def check_folders(data: Any, held_out_data: list) -> None:
    """Each folder of `data` and `held_out_data` exists (one line naming the first that does not): checked
    before anything of an earlier run is set aside (--overwrite) for a run that could not start."""
    for flag, setting in (("--data", data), ("--held-out-data", held_out_data)):
        found = [entry for entry in entries(setting) if entry.path is not None] if setting else []
        for number, entry in enumerate(found):
            if len(found) == 1 and flag == "--data":
                check_data_folder(entry.path)
                continue
            with naming_dataset(flag, number, len(found), entry.path):
                check_data_folder(entry.path)


def load_one(entry: DataEntry, number: int, count: int, flag: str, image_size: int, seed: int) -> SegDataset:
    """One dataset of several (or one held-out dataset), a problem with it named as `naming_dataset` says."""
    options = {key: value for key, value in (entry.options or {}).items() if key in (*DATASET_KEYS, "resize")}
    with naming_dataset(flag, number, count, entry.path):
        return load_dataset(entry.path, image_size=image_size, seed=seed, **options)


@contextmanager
def naming_dataset(flag: str, number: int, count: int, path: str | None) -> Iterator[None]:
    """A problem with one dataset names which one (`--data 2 of 3 (/data/mri): ...`), and a loader's advice to
    pass --data names `flag` (a held-out dataset is given with --held-out-data)."""
    try:
        yield
    except UsegError as err:
        where = path if path is not None else "the embedded synthetic set"
        reason = re.sub(r"--data\b(?!-)", flag, str(err))
        raise type(err)(f"{flag} {number + 1} of {count} ({where}): {reason}") from None


def share_arrays(parts: list[SegDataset], merged: SegDataset) -> None:
    """Point each part's images and masks at its rows (and class columns) of the merged arrays: a part's
    native-mask reader keeps the part alive, and its own copies would double the memory the data takes."""
    rows = np.cumsum([0] + [len(part) for part in parts])
    columns = np.cumsum([0] + [len(part.classes) for part in parts])
    for index, part in enumerate(parts):
        part.images = merged.images[rows[index]:rows[index + 1]]
        part.masks = merged.masks[rows[index]:rows[index + 1], columns[index]:columns[index + 1]]


def names_of(data: Any) -> list[str] | None:
    """The names a saved `data` (or `held_out_data`) list gave its datasets; None for one folder."""
    return dataset_names(entries(data)) if is_several(data) else None


def dataset_names(found: list[DataEntry]) -> list[str]:
    """Each dataset's name for classes and messages: its folder's name (`synthetic` for the embedded set),
    made unique with `-2`, `-3` where two folders share a name."""
    names: list[str] = []
    for entry in found:
        base = Path(entry.path).name if entry.path is not None else "synthetic"
        name, number = base, 1
        while name in names:
            number += 1
            name = f"{base}-{number}"
        names.append(name)
    return names


def merge(parts: list[SegDataset], names: list[str], weights: list[float], splits: list[Split]) -> SegDataset:
    """One dataset of `parts`: images stacked, one mask column per (dataset, class), patients and ids kept
    apart, and `splits` (one per part) as its predefined split."""
    shared = {name for index, part in enumerate(parts) for name in part.classes
              if any(name in other.classes for other in parts[index + 1:])}
    classes = [f"{names[index]}/{name}" if name in shared else name
               for index, part in enumerate(parts) for name in part.classes]
    size = parts[0].images.shape[1:]
    masks = np.zeros((sum(len(part) for part in parts), len(classes), *size), dtype=bool)
    offsets = np.cumsum([0] + [len(part) for part in parts])
    columns = np.cumsum([0] + [len(part.classes) for part in parts])
    patient_offsets = np.cumsum([0] + [int(part.patients.max()) + 1 if len(part) else 0 for part in parts])
    for index, part in enumerate(parts):
        masks[offsets[index]:offsets[index + 1], columns[index]:columns[index + 1]] = part.masks
    predefined = {name: [int(i) + offsets[index] for index, split in enumerate(splits) for i in getattr(split, name)]
                  for name in SPLIT_NAMES}
    origin = "per dataset: " + "; ".join(f"d{index + 1} {split.origin}" for index, split in enumerate(splits))
    return SegDataset(
        images=np.concatenate([part.images for part in parts]), masks=masks, classes=classes,
        patients=np.concatenate([part.patients + patient_offsets[index] for index, part in enumerate(parts)]),
        ids=[f"d{index + 1}/{image}" for index, part in enumerate(parts) for image in part.ids],
        source="+".join(dict.fromkeys(part.source for part in parts)),
        report=merged_report(parts, names), predefined_split=predefined, split_origin=origin,
        notes=[f"d{index + 1} ({names[index]}): {note}" for index, part in enumerate(parts) for note in part.notes],
        sources=merged_sources(parts, offsets),
        read_native_masks=merged_native_masks(parts, masks, offsets, columns),
        datasets=list(names), dataset_weights=[float(weight) for weight in weights],
        image_datasets=np.repeat(np.arange(len(parts)), np.diff(offsets)).astype(np.int64),
        class_datasets=[index for index, part in enumerate(parts) for _ in part.classes],
        image_fingerprints=[fingerprint for part in parts for fingerprint in part.fingerprints()],
    )


def merged_report(parts: list[SegDataset], names: list[str]) -> dict[str, int]:
    """The parts' counts added up (patients, skipped files...), and each dataset's own counts as `d1/key`."""
    report: dict[str, int] = {}
    for index, part in enumerate(parts):
        for key, value in part.report.items():
            if not key.startswith("masks_"):
                report[key] = report.get(key, 0) + int(value)
            report[f"d{index + 1}/{key}"] = int(value)
    report["patients"] = sum(part.num_patients for part in parts)
    return report


def merged_sources(parts: list[SegDataset], offsets: np.ndarray) -> list[ImageSource]:
    """Each image's file relative to its own dataset's folder, and that dataset's number (0-based)."""
    if not any(part.sources for part in parts):
        return []
    sources = []
    for index, part in enumerate(parts):
        own = part.sources or [ImageSource(image="") for _ in range(len(part))]
        sources += [ImageSource(source.image, source.mask, source.slice, dataset=index) for source in own]
    return sources


def merged_native_masks(parts: list[SegDataset], masks: np.ndarray, offsets: np.ndarray,
                        columns: np.ndarray) -> Callable[[int], np.ndarray]:
    """Image i's masks at the size it has on disk, read by its own dataset, in the merged class columns
    (`masks` where its dataset's loaded masks are the stored ones). Holds the parts' readers, not the parts,
    whose arrays the merged ones replace."""
    readers = [part.read_native_masks for part in parts]

    def read(index: int) -> np.ndarray:
        part = int(np.searchsorted(offsets, index, side="right")) - 1
        own = readers[part]
        native = masks[index, columns[part]:columns[part + 1]] if own is None else own(index - int(offsets[part]))
        merged = np.zeros((masks.shape[1], *native.shape[1:]), dtype=bool)
        merged[columns[part]:columns[part + 1]] = native
        return merged
    return read


@dataclass
class HeldOut:
    """A dataset the run never trains on: targets from its val patients, supports from its train patients."""

    name: str
    dataset: SegDataset
    split: Split


def load_held_out(held_out_data: list, *, image_size: int, seed: int, fractions=DEFAULT_FRACTIONS,
                  saved: list | None = None, names: list[str] | None = None, **options) -> list[HeldOut]:
    """The run's held-out datasets, each split by patient on its own (or as `saved` with the run); `names`
    as for `load_data`."""
    found = entries(held_out_data, options)
    names = names or dataset_names(found)
    if saved is not None and len(saved) != len(found):
        raise ConfigError(f"the run was saved with {len(saved)} held-out dataset(s), not {len(found)}; resume with "
                          "the run's --held-out-data or start a new run")
    held = []
    for number, entry in enumerate(found):
        dataset = load_one(entry, number, len(found), "--held-out-data", image_size, seed)
        with naming_dataset("--held-out-data", number, len(found), entry.path):
            if saved is None:
                split = split_by_patient(dataset, seed=seed, fractions=tuple(fractions))
            else:
                split = Split.from_dict(saved[number], dataset, origin="the split saved with the run")
        held.append(HeldOut(names[number], dataset, split))
    return held


def image_dataset_names(dataset: SegDataset) -> list[str]:
    """Per image, the name of the dataset it comes from ("" for one dataset)."""
    if not dataset.datasets:
        return [""] * len(dataset)
    return [dataset.datasets[int(index)] for index in dataset.image_datasets]

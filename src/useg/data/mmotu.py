"""The MMOTU OTU_2d layout: `images/<id>.JPG`, `annotations/<id>_binary.PNG`, and its split.

One class ("tumour"), one patient per image. When a copy lacks the binary
mask, the class-coloured `annotations/<id>.PNG` is used instead (any
non-black pixel is tumour). The published split becomes `predefined_split`:
`OTU_2D_annotation.json` (a `split` per image) when the copy has it (in the
OTU_2d folder or its parent), else the `train.txt` / `val.txt` (/ `test.txt`)
id lists. A split without a test part gets one carved from its train part
(`splits.split_by_patient`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from useg.data.dataset import ImageSource, SegDataset, no_usable_images, single_class_name
from useg.data.folders import images_by_stem, pair_dataset, read_pair
from useg.data.images import read_mask_values, resize_mask
from useg.errors import DataError

SPLIT_FILES = {"train": "train.txt", "val": "val.txt", "test": "test.txt"}  # test.txt is optional
SPLIT_JSON = "OTU_2D_annotation.json"
# What a record of the JSON may call its image, and what its `split` may say.
NAME_FIELDS = ("filename", "file_name", "image_name", "image", "img", "file", "name", "image_id", "id")
PART_NAMES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
              "test": "test", "testing": "test"}
JSON_SHAPES = ('a list of records such as {"filename": "1.JPG", "split": "train"}, '
               '{"1.JPG": {"split": "train"}, ...} or {"train": ["1.JPG", ...], "val": [...], "test": [...]}')


@dataclass
class ListedSplit:
    """The split a copy of MMOTU ships: image ids per part, and where it came from."""

    ids: dict[str, list[str]]
    origin: str  # "OTU_2D_annotation.json" or "train.txt/val.txt"


def find_mmotu(root: Path) -> Path | None:
    """The OTU_2d folder: `root` itself or its `OTU_2d/` child."""
    for folder in (root, root / "OTU_2d"):
        if (folder / "images").is_dir() and (folder / "annotations").is_dir():
            return folder
    return None


def mask_path(annotations: dict[str, Path], stem: str) -> Path | None:
    return annotations.get(f"{stem}_binary.png".casefold()) or annotations.get(f"{stem}.png".casefold())


def read_split_ids(path: Path) -> list[str]:
    """Image ids of a split list: first word of each line, extension dropped (train_cls.txt style works too)."""
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"cannot read split list {path} ({type(error).__name__}); check the file") from None
    return [Path(line.split()[0]).stem for line in lines if line.strip()]


def read_split_json(path: Path) -> dict[str, list[str]] | None:
    """Image ids per part ("train", "val", "test") of OTU_2D_annotation.json; None when it holds no split."""
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise DataError(f"cannot read {path} ({type(error).__name__}); check the file") from None
    pairs = _split_pairs(data)
    if pairs is None:
        return None
    ids: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for name, part in pairs:
        if not isinstance(name, (str, int)) or isinstance(name, bool) or not str(name).strip():
            raise DataError(f"{path} has a record whose image name is {name!r}; expected {JSON_SHAPES}")
        known = PART_NAMES.get(str(part).strip().casefold())
        if known is None:
            raise DataError(f"{path}: image {name} has split {part!r}; expected train, val (valid, validation) "
                            "or test")
        ids[known].append(Path(str(name).strip()).stem)
    return ids


def _split_pairs(data: Any) -> list[tuple[Any, Any]] | None:
    """(image name, split) pairs of the JSON's plausible shapes, or None when no shape fits."""
    if isinstance(data, list):  # [records]
        return _record_pairs(data)
    if not isinstance(data, dict) or not data:
        return None
    if all(str(key).casefold() in PART_NAMES and isinstance(value, list) for key, value in data.items()):
        return [(_record_name(item) if isinstance(item, dict) else item, part)  # {"train": [names or records]}
                for part, items in data.items() for item in items]
    with_split = [value for value in data.values() if isinstance(value, list) and _record_pairs(value)]
    if len(with_split) == 1:  # {"images": [records], ...}
        return _record_pairs(with_split[0])
    if all(isinstance(value, dict) or str(value).casefold() in PART_NAMES for value in data.values()):
        pairs = [(name, value.get("split") if isinstance(value, dict) else value)  # {name: record or part}
                 for name, value in data.items()]
        return [(name, part) for name, part in pairs if part is not None] or None
    return None


def _record_pairs(records: list) -> list[tuple[Any, Any]] | None:
    """(name, split) of the records that have a split; None when none has."""
    pairs = [(_record_name(record), record["split"]) for record in records
             if isinstance(record, dict) and record.get("split") is not None]
    return pairs or None


def _record_name(record: dict) -> Any:
    return next((record[field] for field in NAME_FIELDS if record.get(field) not in (None, "")), None)


def find_split_json(root: Path) -> Path | None:
    """OTU_2D_annotation.json (any case) in the OTU_2d folder or its parent."""
    for folder in (root, root.parent):
        try:
            found = sorted(path for path in folder.iterdir() if path.name.casefold() == SPLIT_JSON.casefold())
        except OSError:  # an unreadable parent folder holds no split for us
            continue
        if found and found[0].is_file():
            return found[0]
    return None


def listed_split(root: Path) -> ListedSplit | None:
    """The split the copy ships: the JSON's when it has one, else the txt lists (train and val both needed)."""
    json_path = find_split_json(root)
    ids = read_split_json(json_path) if json_path is not None else None
    if ids is not None:
        return ListedSplit(ids, json_path.name)
    paths = {name: root / file for name, file in SPLIT_FILES.items() if (root / file).is_file()}
    if "train" not in paths or "val" not in paths:
        if json_path is not None:
            raise DataError(f"{json_path} holds no split, and {root} has no train.txt and val.txt; expected "
                            f"{JSON_SHAPES} with a split of train, val or test per image")
        return None
    origin = "/".join(path.name for path in paths.values())
    if json_path is not None:
        origin += f" as {json_path.name} holds no split"
    return ListedSplit({name: read_split_ids(path) for name, path in paths.items()}, origin)


def predefined_split(root: Path, stems: list[str], image_stems: list[str] | None = None,
                     ) -> tuple[dict[str, list[int]] | None, int, str]:
    """{"train": indices, "val": indices[, "test": indices]} of the copy's split (None when it ships none),
    how many listed ids have no image file (`image_stems`; default `stems`), and where the split came from.
    Listed images left out (an empty mask) are in no part and not counted."""
    listed = listed_split(root)
    if listed is None:
        return None, 0, ""
    index = {stem: position for position, stem in enumerate(stems)}
    files = set(stems if image_stems is None else image_stems)
    split, owner, not_found = {}, {}, 0
    for name, ids in listed.ids.items():
        not_found += sum(stem not in files for stem in ids)
        for stem in ids:
            if owner.setdefault(stem, name) != name:
                raise DataError(f"{listed.origin} in {root} lists image {stem} in both {owner[stem]} and {name}; "
                                "list it once")
        split[name] = sorted({index[stem] for stem in ids if stem in index})
    return split, not_found, listed.origin


def load_mmotu(root: Path, *, image_size: int, classes: list[str] | None, resize: str = "squash") -> SegDataset:
    class_name = single_class_name("tumour", classes, "MMOTU")
    image_files = images_by_stem(root / "images", "images")
    annotations = {path.name.casefold(): path for path in (root / "annotations").iterdir() if path.is_file()}
    kept, stems, sources = [], [], []
    for stem, path in image_files.items():
        found = mask_path(annotations, stem)
        if found is None:
            raise DataError(
                f"image {path.name} has no annotations/{stem}_binary.PNG in {root}; add it or remove the image"
            )
        grey, values = read_pair(path, found, image_size, resize)
        mask = resize_mask(values > 0, image_size, resize)
        if mask.any():
            kept.append((grey, mask))
            stems.append(stem)
            sources.append(ImageSource(path.relative_to(root).as_posix(), found.relative_to(root).as_posix()))
    if not kept:
        raise no_usable_images(
            str(root / "images"), "every image needs an annotations/<id>_binary.PNG with tumour pixels"
        )
    split, not_found, origin = predefined_split(root, stems, list(image_files))
    dataset = pair_dataset(kept, class_name, "mmotu", predefined_split=split, sources=sources, extra_report={
        "images_without_labels": len(image_files) - len(kept),
        "split_ids_not_found": not_found,
    })
    dataset.split_origin = origin
    dataset.read_native_masks = lambda index: native_masks(root, sources[index])
    dataset.notes.append("patients: one per image (MMOTU has no patient ids)")
    if len(image_files) > len(kept):
        dataset.notes.append(f"{len(image_files) - len(kept)} images with an empty mask left out")
    return dataset


def native_masks(root: Path, source: ImageSource) -> np.ndarray:
    """(1, H, W) tumour mask of one image at its stored size."""
    return (read_mask_values(root / source.mask, source.mask) > 0)[None]

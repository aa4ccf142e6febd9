"""The MMOTU OTU_2d layout: `images/<id>.JPG`, `annotations/<id>_binary.PNG`, `train.txt` / `val.txt`.

One class ("tumour"), one patient per image. When a copy lacks the binary
mask, the class-coloured `annotations/<id>.PNG` is used instead (any
non-black pixel is tumour). The id lists become `predefined_split` when both
exist.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from useg.data.dataset import ImageSource, SegDataset, no_usable_images, single_class_name
from useg.data.folders import images_by_stem, pair_dataset, read_pair
from useg.data.images import read_mask_values, resize_mask
from useg.errors import DataError

SPLIT_FILES = {"train": "train.txt", "val": "val.txt"}


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


def predefined_split(root: Path, stems: list[str]) -> tuple[dict[str, list[int]] | None, int]:
    """{"train": indices, "val": indices} from the id lists, and how many listed ids have no image."""
    paths = {name: root / file for name, file in SPLIT_FILES.items()}
    if not all(path.is_file() for path in paths.values()):
        return None, 0
    index = {stem: position for position, stem in enumerate(stems)}
    split, not_found = {}, 0
    for name, path in paths.items():
        ids = read_split_ids(path)
        not_found += sum(stem not in index for stem in ids)
        split[name] = sorted({index[stem] for stem in ids if stem in index})
    both = set(split["train"]) & set(split["val"])
    if both:
        raise DataError(f"train.txt and val.txt in {root} both list image {stems[min(both)]}; list it once")
    return split, not_found


def load_mmotu(root: Path, *, image_size: int, classes: list[str] | None) -> SegDataset:
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
        grey, values = read_pair(path, found, image_size)
        mask = resize_mask(values > 0, image_size)
        if mask.any():
            kept.append((grey, mask))
            stems.append(stem)
            sources.append(ImageSource(path.relative_to(root).as_posix(), found.relative_to(root).as_posix()))
    if not kept:
        raise no_usable_images(
            str(root / "images"), "every image needs an annotations/<id>_binary.PNG with tumour pixels"
        )
    split, not_found = predefined_split(root, stems)
    dataset = pair_dataset(kept, class_name, "mmotu", predefined_split=split, sources=sources, extra_report={
        "images_without_labels": len(image_files) - len(kept),
        "split_ids_not_found": not_found,
    })
    dataset.read_native_masks = lambda index: native_masks(root, sources[index])
    dataset.notes.append("patients: one per image (MMOTU has no patient ids)")
    if len(image_files) > len(kept):
        dataset.notes.append(f"{len(image_files) - len(kept)} images with an empty mask left out")
    return dataset


def native_masks(root: Path, source: ImageSource) -> np.ndarray:
    """(1, H, W) tumour mask of one image at its stored size."""
    return (read_mask_values(root / source.mask, source.mask) > 0)[None]

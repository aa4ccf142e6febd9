"""The plain layout: `images/<stem>.<ext>` with `masks/<stem>.<ext>`, one patient per image.

A mask is either binary (0/1 or 0/255: class "foreground") or a label map,
from which `label=K` selects the pixels equal to K.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from useg.data.dataset import SegDataset, class_report, image_id, no_usable_images, single_class_name
from useg.data.images import is_image_file, read_grey, read_mask_values, resize_mask
from useg.errors import DataError

# More distinct values than this means a soft or lossy mask (JPEG), thresholded at half range.
_MAX_LABEL_MAP_VALUES = 32


def is_folders(root: Path) -> bool:
    return (root / "images").is_dir() and (root / "masks").is_dir()


def images_by_stem(folder: Path, what: str) -> dict[str, Path]:
    """Image files of a folder keyed by stem; two files with one stem are ambiguous."""
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if not is_image_file(path):
            continue
        if path.stem in found:
            raise DataError(f"{what} {found[path.stem].name} and {path.name} in {folder} share a name; keep one")
        found[path.stem] = path
    return found


def binary_mask(values: np.ndarray, label: int | None, name: str) -> np.ndarray:
    """Foreground of a mask: pixels equal to `label`, else the non-zero pixels of a binary mask."""
    if label is not None:
        return values == label
    distinct = np.unique(values)
    if len(distinct) <= 2:
        return values > 0
    if len(distinct) <= _MAX_LABEL_MAP_VALUES:
        shown = ", ".join(str(v) for v in distinct[:8])
        raise DataError(f"mask {name} holds the values {shown}: a label map; pass --label K to pick class K")
    return values >= (128 if values.max() <= 255 else 32768)


def read_pair(image_path: Path, mask_path: Path, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(size, size) grey image and the mask's stored values at full size; both files must have one size."""
    grey, image_size = read_grey(image_path, image_path.name, size)
    values = read_mask_values(mask_path, mask_path.name)
    mask_size = (values.shape[1], values.shape[0])
    if mask_size != image_size:
        raise DataError(
            f"mask {mask_path.name} is {mask_size[0]}x{mask_size[1]} but image {image_path.name} is "
            f"{image_size[0]}x{image_size[1]}; masks must have the size of their image"
        )
    return grey, values


def load_folders(root: Path, *, image_size: int, label: int | None, classes: list[str] | None) -> SegDataset:
    class_name = single_class_name("foreground" if label is None else f"label_{label}", classes, "images/ + masks/")
    image_files = images_by_stem(root / "images", "images")
    mask_files = images_by_stem(root / "masks", "masks")
    for stem, path in image_files.items():
        if stem not in mask_files:
            raise DataError(
                f"image {path.name} has no mask in {root / 'masks'}; add {stem}.png there or remove the image"
            )
    pairs = []
    for stem, path in image_files.items():
        grey, values = read_pair(path, mask_files[stem], image_size)
        pairs.append((grey, resize_mask(binary_mask(values, label, mask_files[stem].name), image_size)))
    kept = [(grey, mask) for grey, mask in pairs if mask.any()]
    if not kept:
        raise no_usable_images(str(root / "images"), "every image needs a mask with foreground pixels"
                               + ("" if label is None else f" equal to --label {label}"))
    return pair_dataset(kept, class_name, "folders", extra_report={
        "images_without_labels": len(pairs) - len(kept),
        "masks_without_images": len(set(mask_files) - set(image_files)),
    })


def pair_dataset(
    kept: list[tuple[np.ndarray, np.ndarray]], class_name: str, source: str, extra_report: dict[str, int],
    predefined_split: dict[str, list[int]] | None = None,
) -> SegDataset:
    """A single-class dataset with one patient per image."""
    masks = np.stack([mask for _, mask in kept])[:, None]
    return SegDataset(
        images=np.stack([grey for grey, _ in kept]).astype(np.float32),
        masks=masks,
        classes=[class_name],
        patients=np.arange(len(kept), dtype=np.int64),
        ids=[image_id(index, 0) for index in range(len(kept))],
        source=source,
        report={"patients": len(kept), "images": len(kept), **class_report(masks, [class_name]), **extra_report},
        predefined_split=predefined_split,
    )

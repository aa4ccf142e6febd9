"""The plain layout: `images/[<case>/]<name>.<ext>` with `masks/[<case>/]<name>.<ext>`.

Images pair with masks by relative path and file stem, whatever the formats
(a BMP image with a PNG mask). Masks are binary, label maps, instance maps
or soft masks; `useg.data.labels` decides the classes. 3-D volumes become 2-D slices along
`slice_axis`. Patients: every file its own patient, unless files sit in
subfolders of `images/` (one patient per subfolder) or `--patient-pattern`
names them (its first group). Images whose masks are empty are counted and
dropped, or a share of them is kept (`keep_empty`) as negative examples.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Mapping

import numpy as np

from useg.data.dataset import ImageSource, SegDataset, class_report, image_id, no_usable_images, select_classes
from useg.data.formats import IMAGE_SUFFIXES, file_stem, is_image_file, is_medical
from useg.data.images import StoredMask, read_grey, read_mask, read_mask_values, resize_grey
from useg.data.labels import ClassPlan, MaskSurvey, class_names_for, plan_classes
from useg.data.medical import read_medical_image, read_medical_mask, slices
from useg.errors import DataError

MOSTLY_FOREGROUND = 0.5  # a mask covering more of its image than this is reported (inverted colours?)


@dataclass
class FolderOptions:
    """The settings of the plain layout (flags of `useg train`)."""

    label: int | list[int] | None = None
    classes: list[str] | None = None
    class_names: Mapping[str | int, str] | None = None
    patient_pattern: str | None = None
    keep_empty: float = 0.0
    slice_axis: int = 2
    resize: str = "squash"  # --resize: how images become the square (useg.data.geometry)


@dataclass
class Pair:
    key: str  # relative path without the format suffix: "case1/a"
    image: Path
    mask: Path


@dataclass
class Plane:
    """One loaded 2-D image (a file, or a slice of a volume) before the empty ones are dropped."""

    pair: int
    slice: int | None
    grey: np.ndarray
    masks: np.ndarray  # (C, size, size) bool


def is_folders(root: Path) -> bool:
    return (root / "images").is_dir() and (root / "masks").is_dir()


def images_by_stem(folder: Path, what: str, recursive: bool = False) -> dict[str, Path]:
    """Image files of a folder keyed by relative path without suffix; two files with one key are ambiguous."""
    found: dict[str, Path] = {}
    paths = folder.rglob("*") if recursive else folder.iterdir()
    for path in sorted(paths, key=lambda p: p.relative_to(folder).as_posix()):
        hidden = any(part.startswith(".") for part in path.relative_to(folder).parts)  # .ipynb_checkpoints, ._a.png
        if hidden or not is_image_file(path):
            continue
        key = (path.parent.relative_to(folder) / file_stem(path)).as_posix()
        if key in found:
            raise DataError(f"{what} {found[key].name} and {path.name} in {path.parent} share a name; keep one")
        found[key] = path
    return found


def find_pairs(root: Path) -> tuple[list[Pair], int]:
    """(image, mask) pairs in image order, and how many masks have no image."""
    image_files = images_by_stem(root / "images", "images", recursive=True)
    if not image_files:
        raise no_images(root / "images")
    mask_files = images_by_stem(root / "masks", "masks", recursive=True)
    if not mask_files:
        raise no_images(root / "masks", "mask")
    pairs = []
    for key, path in image_files.items():
        if key not in mask_files:
            raise DataError(
                f"image {_relative(path, root / 'images')} has no mask in {root / 'masks'}; add masks/{key}.png "
                f"(any image format) or remove the image"
            )
        pairs.append(Pair(key, path, mask_files[key]))
    return pairs, len(set(mask_files) - set(image_files))


def no_images(folder: Path, kind: str = "image") -> DataError:
    others = sorted({path.suffix.lower() or path.name for path in folder.rglob("*") if path.is_file()})
    found = f"it holds only {', '.join(others[:6])} files" if others else "it is empty"
    return DataError(f"no readable {kind} in {folder}: {found}; useg reads {', '.join(IMAGE_SUFFIXES)} "
                     f"and suffix-less DICOM files")


def _relative(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def read_image_planes(path: Path, name: str, size: int, axis: int,
                      mode: str = "squash") -> tuple[list[np.ndarray], tuple[int, ...]]:
    """The (size, size) grey planes of an image file (placed as `mode` says) and its full shape (rows,
    columns[, slices])."""
    if not is_medical(path):
        grey, (width, height) = read_grey(path, name, size, mode)
        return [grey], (height, width)
    volume = read_medical_image(path, name)
    return [resize_grey(plane, size, mode) for plane in slices(volume, axis)], volume.shape


def read_mask_volume(path: Path, name: str) -> StoredMask:
    """A mask file's values (NIfTI and DICOM masks hold integers: never soft)."""
    return StoredMask(read_medical_mask(path, name)) if is_medical(path) else read_mask(path, name)


def survey_masks(pairs: list[Pair], root: Path) -> MaskSurvey:
    survey = MaskSurvey()
    for pair in pairs:
        name = _relative(pair.mask, root / "masks")
        values, soft = read_mask_volume(pair.mask, name)
        survey.add(values, name, soft)
    return survey


def load_planes(pair: Pair, index: int, root: Path, plan: ClassPlan, size: int, axis: int,
                mode: str = "squash") -> list[Plane]:
    """Every plane of one pair, with its class masks; the image and mask must have one shape."""
    image_name, mask_name = _relative(pair.image, root / "images"), _relative(pair.mask, root / "masks")
    greys, shape = read_image_planes(pair.image, image_name, size, axis, mode)
    values, _ = read_mask_volume(pair.mask, mask_name)
    soft = mask_name in plan.soft_files  # as the survey found the whole file, never one slice
    if values.shape != shape:
        raise DataError(f"mask {mask_name} is {_shape(values.shape)} but image {image_name} is {_shape(shape)}; "
                        f"masks must have the size of their image")
    planes = slices(values, axis)
    is_volume = values.ndim == 3
    return [Plane(index, number if is_volume else None, grey, plan.masks(mask, size, soft, mode))
            for number, (grey, mask) in enumerate(zip(greys, planes))]


def native_masks(root: Path, source: ImageSource, plan: ClassPlan, axis: int) -> np.ndarray:
    """(C, H, W) class masks of one loaded image (a file or a volume's slice) at its stored size."""
    values, _ = read_mask_volume(root / source.mask, source.mask)
    if source.slice is not None:
        values = slices(values, axis)[source.slice]
    return plan.native_masks(values, _relative(root / source.mask, root / "masks") in plan.soft_files)


def _shape(shape: tuple[int, ...]) -> str:
    if len(shape) == 2:
        return f"{shape[1]}x{shape[0]}"  # width x height, as image viewers say it
    return "x".join(str(n) for n in shape) + " voxels"


def patient_keys(pairs: list[Pair], pattern: str | None) -> tuple[list[str], str]:
    """A patient key per pair, and how the data line says patients were found."""
    if pattern is not None:
        compiled = re.compile(pattern)
        keys = []
        for pair in pairs:
            found = compiled.search(pair.key)
            if found is None or found.group(1) is None:
                raise DataError(f"image images/{pair.key} does not match --patient-pattern {pattern!r}; "
                                f"fix the pattern (its first group is the patient) or rename the file")
            keys.append(found.group(1))
        return keys, f"patients from --patient-pattern ({len(set(keys))} found)"
    keys = [pair.key.split("/", 1)[0] if "/" in pair.key else f"file:{pair.key}" for pair in pairs]
    if any("/" in pair.key for pair in pairs):
        return keys, "patients by subfolder of images/"
    return keys, ("patients: one per file (put a case's files in images/<case>/ or pass --patient-pattern "
                  "to group them)")


def choose_plan(root: Path, pairs: list[Pair], options: FolderOptions) -> ClassPlan:
    names = class_names_for(root, options.class_names)
    survey = None if options.label is not None else survey_masks(pairs, root)
    plan = plan_classes(survey, options.label, names, str(root / "masks"))
    return select_plan_classes(plan, options.classes)


def select_plan_classes(plan: ClassPlan, wanted: list[str] | None) -> ClassPlan:
    """`--classes` picks classes by name; with one class and one other name it renames it (older runs)."""
    if not wanted:
        return plan
    if len(plan.names) == 1 and not set(wanted) <= set(plan.names):
        if len(wanted) > 1:
            raise DataError(f"the images/ + masks/ data has one class; pass at most one class name, not "
                            f"{len(wanted)}")
        return replace(plan, names=list(wanted))
    keep = select_classes(plan.names, wanted)
    return replace(plan, names=[plan.names[i] for i in keep], values=[plan.values[i] for i in keep])


def kept_empty(planes: list[Plane], share: float) -> set[int]:
    """Positions (in `planes`) of the empty planes kept: `share` of them, spread evenly."""
    empty = [position for position, plane in enumerate(planes) if not plane.masks.any()]
    count = int(round(share * len(empty)))
    if not count:
        return set()
    return {empty[int(i)] for i in np.round(np.linspace(0, len(empty) - 1, count))}


def load_folders(root: Path, *, image_size: int, options: FolderOptions | None = None) -> SegDataset:
    """The plain layout at `image_size`, classes as `options` (or the masks) say."""
    options = options or FolderOptions()
    pairs, orphan_masks = find_pairs(root)
    plan = choose_plan(root, pairs, options)
    planes = [plane for index, pair in enumerate(pairs)
              for plane in load_planes(pair, index, root, plan, image_size, options.slice_axis, options.resize)]
    extra = kept_empty(planes, options.keep_empty)
    kept = [plane for position, plane in enumerate(planes) if plane.masks.any() or position in extra]
    if not any(plane.masks.any() for plane in kept):
        raise no_usable_images(str(root / "images"), _why_empty(plan))
    _check_every_label_found(plan, kept)
    keys, how = patient_keys(pairs, options.patient_pattern)
    dataset = folder_dataset(kept, pairs, keys, root, plan)
    dataset.read_native_masks = lambda index: native_masks(root, dataset.sources[index], plan, options.slice_axis)
    dataset.report.update(_counts(planes, kept, pairs, orphan_masks))
    dataset.notes.extend([how, *plan.notes(), *_empty_notes(planes, kept, options.keep_empty),
                          *_volume_notes(planes, kept, options.slice_axis), *_coverage_notes(kept)])
    return dataset


def _check_every_label_found(plan: ClassPlan, kept: list[Plane]) -> None:
    """A `--label` value that no mask holds is a typo, not an empty class."""
    present = np.any([plane.masks.any(axis=(1, 2)) for plane in kept], axis=0)
    missing = [values[0] for values, found in zip(plan.values, present) if not found]
    if plan.kind == "label" and missing:
        given = ",".join(str(values[0]) for values in plan.values)
        raise DataError(f"no mask holds the value {missing[0]} of --label {given}; check the values in the masks")


def _why_empty(plan: ClassPlan) -> str:
    if plan.kind == "label":
        return "no mask holds the value(s) --label " + ",".join(str(v[0]) for v in plan.values)
    if plan.soft_files:
        return (f"every mask is empty (all pixels 0 or black) or, for the {len(plan.soft_files)} soft masks (JPEG, "
                f"fractional or antialiased), below half range; pass --label V to pick mask values")
    return "every mask is empty (all pixels 0 or black)"


def folder_dataset(kept: list[Plane], pairs: list[Pair], keys: list[str], root: Path, plan: ClassPlan) -> SegDataset:
    """Number patients and images in order of appearance, as ids p<patient>_i<image>."""
    patient_of: dict[str, int] = {}
    images_of: dict[int, int] = {}
    patients, ids, sources = [], [], []
    for plane in kept:
        patient = patient_of.setdefault(keys[plane.pair], len(patient_of))
        number = images_of.get(patient, 0)
        images_of[patient] = number + 1
        patients.append(patient)
        ids.append(image_id(patient, number))
        pair = pairs[plane.pair]
        sources.append(ImageSource(_relative(pair.image, root), _relative(pair.mask, root), plane.slice))
    masks = np.stack([plane.masks for plane in kept])
    return SegDataset(
        images=np.stack([plane.grey for plane in kept]).astype(np.float32),
        masks=masks,
        classes=list(plan.names),
        patients=np.asarray(patients, dtype=np.int64),
        ids=ids,
        source="folders",
        report={"patients": len(patient_of), "images": len(kept), **class_report(masks, plan.names)},
        sources=sources,
    )


def _counts(planes: list[Plane], kept: list[Plane], pairs: list[Pair], orphan_masks: int) -> dict[str, int]:
    empty = sum(not plane.masks.any() for plane in planes)
    kept_negatives = sum(not plane.masks.any() for plane in kept)
    return {
        "images_without_labels": empty - kept_negatives,
        "masks_without_images": orphan_masks,
        "empty_masks": empty,
        "empty_masks_kept": kept_negatives,
        "volumes": len({plane.pair for plane in planes if plane.slice is not None}),
        "masks_mostly_foreground": sum(_mostly_foreground(plane) for plane in kept),
    }


def _mostly_foreground(plane: Plane) -> bool:
    return bool(plane.masks.any(axis=0).mean() > MOSTLY_FOREGROUND)


def _empty_notes(planes: list[Plane], kept: list[Plane], share: float) -> list[str]:
    empty = sum(not plane.masks.any() for plane in planes)
    if not empty:
        return []
    negatives = sum(not plane.masks.any() for plane in kept)
    if negatives:
        return [f"{empty} images with an empty mask: {negatives} kept as negatives (--keep-empty {share:g})"]
    return [f"{empty} images with an empty mask left out (--keep-empty FRACTION keeps a share as negatives)"]


def _volume_notes(planes: list[Plane], kept: list[Plane], axis: int) -> list[str]:
    volumes = {plane.pair for plane in planes if plane.slice is not None}
    if not volumes:
        return []
    cut = sum(plane.slice is not None for plane in planes)
    used = sum(plane.slice is not None for plane in kept)
    return [f"{len(volumes)} volumes cut along axis {axis} (--slice-axis): {used} of {cut} slices used"]


def _coverage_notes(kept: list[Plane]) -> list[str]:
    mostly = sum(_mostly_foreground(plane) for plane in kept)
    if not mostly:
        return []
    return [f"{mostly} masks cover over {MOSTLY_FOREGROUND:.0%} of their image: check that background is stored "
            f"as 0 (black)"]


def read_pair(image_path: Path, mask_path: Path, size: int, mode: str = "squash") -> tuple[np.ndarray, np.ndarray]:
    """(size, size) grey image (placed as `mode` says) and the mask's stored values at full size; both files
    must have one size."""
    grey, image_size = read_grey(image_path, image_path.name, size, mode)
    values = read_mask_values(mask_path, mask_path.name)
    mask_size = (values.shape[1], values.shape[0])
    if mask_size != image_size:
        raise DataError(
            f"mask {mask_path.name} is {mask_size[0]}x{mask_size[1]} but image {image_path.name} is "
            f"{image_size[0]}x{image_size[1]}; masks must have the size of their image"
        )
    return grey, values


def pair_dataset(
    kept: list[tuple[np.ndarray, np.ndarray]], class_name: str, source: str, extra_report: dict[str, int],
    predefined_split: dict[str, list[int]] | None = None, sources: list[ImageSource] | None = None,
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
        sources=sources or [],
    )

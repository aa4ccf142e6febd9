"""The Ovatus layout: `US_map4/<patient folder>/<image>` plus polygons in `mapping_normalized4.jsonl`.

Patient folder names are personal data. They are used only to match JSONL
lines to folders; images are named by anonymous ids ("p003_i001") plus their
file name everywhere else.
"""

from __future__ import annotations

import json
import unicodedata
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from useg.data.dataset import ImageSource, SegDataset, class_report, image_id, no_usable_images, select_classes
from useg.data.images import read_grey, resize_mask
from useg.errors import DataError

IMAGE_FOLDER = "US_map4"
ANNOTATION_FILE = "mapping_normalized4.jsonl"
OVATUS_CLASSES = ["nang_da_thuy", "nang_don_thuy", "nang_da_thuy_dac", "nang_don_thuy_dac", "u_bi", "u_dac"]
_COUNTERS = (
    "skipped_polygons",  # fewer than 3 points
    "skipped_bad_coordinates",  # NaN, infinite, or far outside the image (e.g. 1e20): polygons skipped
    "unknown_label_polygons",
    "missing_images",
    "images_without_labels",  # no usable polygon of the selected classes
    "images_empty_after_resize",  # polygons too small to survive resizing
    "size_mismatches",  # imageWidth/imageHeight differ from the file: polygons rescaled
    "missing_patient_folders",
    "folders_without_annotations",
)


@dataclass
class AnnotatedImage:
    """One image entry of the JSONL, polygons in the coordinates of the annotated image."""

    line: int
    image_name: str
    declared_size: tuple[int, int] | None  # (imageWidth, imageHeight) when both are given
    polygons: list[tuple[str, np.ndarray]]  # (class name, (K, 2) x/y points)


def nfc(text: str) -> str:
    return unicodedata.normalize("NFC", text)


def is_ovatus(root: Path, annotations: str | Path | None) -> bool:
    """An explicit --annotations file also marks the folder as Ovatus (its image folder may be renamed)."""
    return annotations is not None or root.name == IMAGE_FOLDER or (root / IMAGE_FOLDER).is_dir()


def image_root_of(root: Path) -> Path:
    return root / IMAGE_FOLDER if (root / IMAGE_FOLDER).is_dir() else root


def find_annotations(root: Path, annotations: str | Path | None) -> Path:
    if annotations is not None:
        path = Path(annotations).expanduser()
        if not path.is_file():
            raise DataError(f"annotation file {path} does not exist; check --annotations")
        return path
    for folder in (root, root.parent):
        if (folder / ANNOTATION_FILE).is_file():
            return folder / ANNOTATION_FILE
    raise DataError(
        f"annotation file {ANNOTATION_FILE} not found in {root} or {root.parent}; "
        f"pass its path with --annotations"
    )


def read_annotations(path: Path) -> dict[str, list[AnnotatedImage]]:
    """Patient name (NFC) -> annotated images; blank lines are skipped, repeated patients merged."""
    patients: dict[str, list[AnnotatedImage]] = defaultdict(list)
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"cannot read annotation file {path} ({type(error).__name__}); check the file") from None
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        where = f"{path.name} line {number}"
        try:
            record = json.loads(text)
        except json.JSONDecodeError as error:
            problem = f"{error.msg} at column {error.colno}"
            raise DataError(f"{where}: invalid JSON ({problem}); fix or remove the line") from None
        name, images = _patient_record(record, where)
        patients[nfc(name)].extend(_annotated_image(entry, number, where) for entry in images)
    return patients


def _patient_record(record: object, where: str) -> tuple[str, list]:
    if not isinstance(record, dict) or not isinstance(record.get("patient_name"), str):
        raise DataError(f"{where}: expected an object with a 'patient_name' string and an 'images' list")
    images = record.get("images", [])
    if not isinstance(images, list):
        raise DataError(f"{where}: 'images' must be a list")
    return record["patient_name"], images


def _annotated_image(entry: object, line: int, where: str) -> AnnotatedImage:
    if not isinstance(entry, dict) or not isinstance(entry.get("image_name"), str):
        raise DataError(f"{where}: every image needs an 'image_name' string")
    name = entry["image_name"]
    labels, points = entry.get("labels") or [], entry.get("points") or []
    if not isinstance(labels, list) or not isinstance(points, list) or len(labels) != len(points):
        raise DataError(f"{where}: image {name} needs 'labels' and 'points' lists of the same length")
    polygons = [(str(label).strip(), _points(polygon, name, where)) for label, polygon in zip(labels, points)]
    width, height = entry.get("imageWidth"), entry.get("imageHeight")
    declared = (int(width), int(height)) if _positive(width) and _positive(height) else None
    return AnnotatedImage(line, name, declared, polygons)


def _positive(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


def _points(polygon: object, image_name: str, where: str) -> np.ndarray:
    try:
        points = np.asarray(polygon, dtype=np.float64)
    except (TypeError, ValueError):
        points = None
    if points is None or (points.size and (points.ndim != 2 or points.shape[1] != 2)):
        raise DataError(f"{where}: image {image_name} has a polygon that is not a list of [x, y] points")
    return points.reshape(-1, 2)


def rasterise(polygons: list[np.ndarray], width: int, height: int) -> np.ndarray:
    """Union of the filled polygons as a (height, width) bool mask."""
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    for points in polygons:
        draw.polygon([tuple(p) for p in points], fill=255, outline=255)
    return np.asarray(canvas) > 0


def usable_polygons(
    entry: AnnotatedImage, classes: list[str], counts: Counter
) -> dict[int, list[np.ndarray]]:
    """Class index (within `classes`) -> polygons; counts the polygons it has to skip."""
    by_class: dict[int, list[np.ndarray]] = defaultdict(list)
    for label, points in entry.polygons:
        if len(points) < 3:
            counts["skipped_polygons"] += 1
        elif not np.isfinite(points).all():
            counts["skipped_bad_coordinates"] += 1
        elif label not in OVATUS_CLASSES:
            counts["unknown_label_polygons"] += 1
        elif label in classes:
            by_class[classes.index(label)].append(points)
    return by_class


def within_reach(by_class: dict[int, list[np.ndarray]], size: tuple[int, int], counts: Counter
                 ) -> dict[int, list[np.ndarray]]:
    """The polygons whose points all lie within one image size of the image (`size`: width, height)."""
    low, high = -np.asarray(size, float), 2 * np.asarray(size, float)
    kept: dict[int, list[np.ndarray]] = {}
    for index, polygons in by_class.items():
        sane = [points for points in polygons if ((points >= low) & (points <= high)).all()]
        counts["skipped_bad_coordinates"] += len(polygons) - len(sane)
        if sane:
            kept[index] = sane
    return kept


def load_masks(
    by_class: dict[int, list[np.ndarray]], num_classes: int, actual: tuple[int, int],
    declared: tuple[int, int] | None, size: int, mode: str = "squash",
) -> np.ndarray:
    """(C, size, size) masks drawn at the image's own size, then resized as the image is (`mode`, --resize)."""
    drawn = native_masks(by_class, num_classes, actual, declared)
    return np.stack([resize_mask(plane, size, mode) for plane in drawn])


def native_masks(by_class: dict[int, list[np.ndarray]], num_classes: int, actual: tuple[int, int],
                 declared: tuple[int, int] | None) -> np.ndarray:
    """(C, height, width) masks drawn at the image's own (width, height)."""
    scale = np.ones(2) if declared is None else np.asarray(actual, float) / np.asarray(declared, float)
    masks = np.zeros((num_classes, actual[1], actual[0]), dtype=bool)
    for index, polygons in by_class.items():
        masks[index] = rasterise([points * scale for points in polygons], *actual)
    return masks


class _FolderFiles:
    """File lookup inside one patient folder: exact name first, then NFC and case-insensitive."""

    def __init__(self, folder: Path, patient: int) -> None:
        try:
            files = [path for path in folder.iterdir() if path.is_file()]
        except OSError as error:  # the folder's name is personal: say which patient index instead
            raise DataError(
                f"cannot list the image folder of patient p{patient:03d} ({type(error).__name__}); check permissions"
            ) from None
        self.exact = {nfc(path.name): path for path in files}
        self.folded = {nfc(path.name).casefold(): path for path in files}

    def find(self, name: str) -> Path | None:
        name = nfc(name)
        return self.exact.get(name) or self.folded.get(name.casefold())


def load_ovatus(
    root: Path, *, image_size: int, annotations: str | Path | None, classes: list[str] | None,
    resize: str = "squash",
) -> SegDataset:
    image_root = image_root_of(root)
    annotation_path = find_annotations(root, annotations)
    class_names = [OVATUS_CLASSES[i] for i in select_classes(OVATUS_CLASSES, classes)]
    annotated = read_annotations(annotation_path)
    folders = {nfc(path.name): path for path in image_root.iterdir() if path.is_dir()}
    counts: Counter = Counter(folders_without_annotations=len(set(folders) - set(annotated)))
    images, masks, patients, ids, drawings = [], [], [], [], []
    for name in sorted(annotated):
        if name not in folders:
            counts["missing_patient_folders"] += 1
            counts["missing_images"] += len(annotated[name])
            continue
        patient = len(set(patients))
        loaded = _load_patient(folders[name], annotated[name], patient, class_names, image_size, counts, resize)
        for number, (grey, mask, drawing) in enumerate(loaded):
            images.append(grey)
            masks.append(mask)
            patients.append(patient)
            ids.append(image_id(patient, number))
            drawings.append(drawing)
    if not images:
        raise no_usable_images(
            str(image_root),
            f"{annotation_path.name} lists {sum(map(len, annotated.values()))} images; "
            f"{counts['missing_images']} were not found and {counts['images_without_labels']} "
            f"had no usable polygon of the classes {', '.join(class_names)}",
        )
    sources = [ImageSource(drawing.path.relative_to(root).as_posix()) for drawing in drawings]
    dataset = _dataset(images, masks, patients, ids, class_names, counts, sources)
    dataset.read_native_masks = lambda index: drawings[index].masks(len(class_names))
    return dataset


@dataclass
class Drawing:
    """What it takes to draw one image's masks again at its own size (for native-resolution scores)."""

    path: Path
    by_class: dict[int, list[np.ndarray]]
    actual: tuple[int, int]
    declared: tuple[int, int] | None

    def masks(self, num_classes: int) -> np.ndarray:
        return native_masks(self.by_class, num_classes, self.actual, self.declared)


def _load_patient(
    folder: Path, entries: list[AnnotatedImage], patient: int, class_names: list[str], size: int, counts: Counter,
    mode: str = "squash",
) -> list[tuple[np.ndarray, np.ndarray, Drawing]]:
    files = _FolderFiles(folder, patient)
    loaded = []
    for entry in entries:
        path = files.find(entry.image_name)
        by_class = usable_polygons(entry, class_names, counts)
        if path is None:
            counts["missing_images"] += 1
        elif not by_class:
            counts["images_without_labels"] += 1
        else:
            name = f"{image_id(patient, len(loaded))} ({entry.image_name})"
            grey, actual = read_grey(path, name, size, mode)
            counts["size_mismatches"] += entry.declared_size not in (None, actual)
            by_class = within_reach(by_class, entry.declared_size or actual, counts)
            if not by_class:
                counts["images_without_labels"] += 1
                continue
            mask = load_masks(by_class, len(class_names), actual, entry.declared_size, size, mode)
            if mask.any():
                loaded.append((grey, mask, Drawing(path, by_class, actual, entry.declared_size)))
            else:
                counts["images_empty_after_resize"] += 1
    return loaded


def _dataset(images, masks, patients, ids, class_names, counts: Counter, sources: list[ImageSource]) -> SegDataset:
    mask_array = np.stack(masks)
    report = {"patients": len(set(patients)), "images": len(images), **class_report(mask_array, class_names)}
    report.update({key: int(counts[key]) for key in _COUNTERS})
    notes = ["patients: one per patient folder"]
    if counts["images_without_labels"] or counts["images_empty_after_resize"]:
        notes.append(f"{counts['images_without_labels']} images without a usable polygon and "
                     f"{counts['images_empty_after_resize']} whose polygons vanish at this size left out")
    return SegDataset(
        images=np.stack(images).astype(np.float32),
        masks=mask_array,
        classes=class_names,
        patients=np.asarray(patients, dtype=np.int64),
        ids=ids,
        source="ovatus",
        report=report,
        sources=sources,
        notes=notes,
    )

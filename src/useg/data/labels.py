"""Which stored mask values make which class: binary masks, label maps, `--label` and class names.

A folder of masks is surveyed first (how many pixels of each value, over all
files), then one `ClassPlan` says which values form each class. Binary masks
(0/1, 0/255, or one non-zero value) are one class, `foreground`; a label map
(several non-zero values) is one class per value, `label_<value>`, unless
`--class-names` or a `classes.json` beside `masks/` names them. Values that
cover under `NOISE_SHARE` of the labelled pixels (antialiased edges, stray
clicks) are reported and ignored.

Soft masks are thresholded at half range: lossy (JPEG) or fractional ones, and
integer masks with more than `SOFT_MASK_VALUES` distinct values of which the
highest, in the upper half of the range, holds most of the labelled pixels (a
binary mask with antialiased or resized edges). Other integer masks with more
than `SOFT_MASK_VALUES` values, or a folder whose values are too many to be
classes, are instance or label maps (cell ids 1..300): any non-zero value is
foreground, one class, unless `--label` picks values.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from useg.data.images import resize_mask
from useg.errors import DataError

NOISE_SHARE = 0.001  # of the labelled (non-zero) pixels of the whole mask folder
SOFT_MASK_VALUES = 32
MAX_CLASSES = 32
CLASSES_FILE = "classes.json"
_NAME = re.compile(r"^\w[\w.+-]*$")


@dataclass
class MaskSurvey:
    """Pixel counts per stored value over the mask folder, and the files read otherwise: soft
    ones (thresholded) and instance maps (too many values to be classes)."""

    counts: Counter = field(default_factory=Counter)
    soft_files: list[str] = field(default_factory=list)
    instance_files: list[str] = field(default_factory=list)
    most_values: int = 0  # the most distinct non-zero values in one integer mask

    def add(self, values: np.ndarray, name: str, soft: bool = False) -> None:
        distinct, counts = value_counts(values)
        kind = mask_kind(distinct, counts, soft)
        if kind == "soft":
            self.soft_files.append(name)
            return
        self.most_values = max(self.most_values, int(np.count_nonzero(distinct)))
        if kind == "instances":
            self.instance_files.append(name)
        else:
            self.counts.update(dict(zip(distinct.tolist(), counts.tolist())))

    def shares(self) -> dict[int, float]:
        """Each non-zero value's share of the labelled pixels."""
        labelled = {value: count for value, count in self.counts.items() if value != 0}
        total = sum(labelled.values())
        return {value: count / total for value, count in sorted(labelled.items())} if total else {}


def value_counts(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct values of a mask, ascending, and how many pixels hold each."""
    if values.size and 0 <= values.min() and values.max() < 65536:  # bincount: far faster on volumes
        counts = np.bincount(values.ravel())
        distinct = np.flatnonzero(counts)
        return distinct, counts[distinct]
    return np.unique(values, return_counts=True)


def mask_kind(distinct: np.ndarray, counts: np.ndarray, soft: bool) -> str:
    """How one mask file is read: "soft" (thresholded), "instances" (any non-zero) or "labels" (by value)."""
    if soft:
        return "soft"
    if len(distinct) <= SOFT_MASK_VALUES:
        return "labels"
    top, labelled = int(distinct[-1]), int(counts[distinct != 0].sum())
    # Antialiasing or resizing a binary mask leaves many edge values around one dominant top value;
    # in an instance map no single id holds most of the labelled pixels.
    if top >= half_range(top) and counts[-1] > labelled / 2:
        return "soft"
    return "instances"


def half_range(top: int) -> int:
    return 128 if top <= 255 else 32768


@dataclass
class ClassPlan:
    """Per class, its name and the mask values that are its pixels; `soft` masks are thresholded instead."""

    names: list[str]
    values: list[tuple[int, ...]]
    kind: str  # "binary", "label map", "label" or "instances" (any non-zero value is the one class)
    ignored: dict[int, float] = field(default_factory=dict)  # noise value -> share of labelled pixels
    soft_files: frozenset[str] = frozenset()  # masks thresholded at half range (the survey's names)
    most_values: int = 0  # instances: the most distinct non-zero values in one mask

    def masks(self, values: np.ndarray, size: int, soft: bool = False, mode: str = "squash") -> np.ndarray:
        """(C, size, size) bool masks of one stored mask, placed as `mode` (--resize) says; `soft`: its file is
        in `soft_files`."""
        return np.stack([resize_mask(plane, size, mode) for plane in self.native_masks(values, soft)])

    def native_masks(self, values: np.ndarray, soft: bool = False) -> np.ndarray:
        """(C, H, W) bool masks of one stored (H, W) mask, at its own size."""
        if self.kind in ("binary", "instances") and soft:
            chosen = values >= half_range(int(values.max()))
        elif self.kind == "instances":
            chosen = values != 0
        else:
            return np.stack([np.isin(values, class_values) for class_values in self.values])
        return np.repeat(chosen[None], len(self.names), axis=0)

    def notes(self) -> list[str]:
        """What the data line says about the classes (nothing for plain binary masks)."""
        lines = []
        if self.kind == "label map":
            lines.append(f"label map: one class per mask value ({self._pairs()})")
        elif self.kind == "label" and len(self.names) > 1:
            lines.append(f"classes from --label ({self._pairs()})")
        elif self.kind == "instances":
            lines.append(f"masks: instance/label maps with up to {self.most_values} values, any non-zero is "
                         f"foreground (--label V[,V...] picks values as classes)")
        if self.soft_files:
            lines.append(f"{len(self.soft_files)} soft masks (JPEG, fractional values or antialiased edges) thresholded "
                         f"at half range")
        if self.ignored:
            shown = ", ".join(f"{value} ({share:.2%})" for value, share in self.ignored.items())
            lines.append(f"ignored mask values {shown}: under {NOISE_SHARE:.1%} of the labelled pixels counts as "
                         f"annotation noise (--label picks values explicitly)")
        return lines

    def _pairs(self) -> str:
        return ", ".join(f"{values[0]}={name}" for name, values in zip(self.names, self.values))


def label_values(label: int | list[int] | None) -> list[int] | None:
    """`--label` as a list of values (an old config's single int is a one-value list)."""
    if label is None:
        return None
    return [label] if isinstance(label, int) else list(label)


def plan_classes(
    survey: MaskSurvey | None, label: int | list[int] | None, names: dict[int, str], where: str,
) -> ClassPlan:
    """The classes of a mask folder; `survey` may be None when `label` fixes them."""
    picked = label_values(label)
    if picked is not None:
        if len(picked) == 1:  # one --label value: the class name older runs were saved with
            return ClassPlan([names.get(picked[0], f"label_{picked[0]}")], [(picked[0],)], "label")
        return ClassPlan([names.get(v, f"label_{v}") for v in picked], [(v,) for v in picked], "label")
    assert survey is not None
    shares = survey.shares()
    real = [value for value, share in shares.items() if share >= NOISE_SHARE]
    ignored = {value: share for value, share in shares.items() if share < NOISE_SHARE}
    soft = frozenset(survey.soft_files)
    if survey.instance_files or len(real) > MAX_CLASSES:  # too many values to be classes: ids
        most = survey.most_values
        return ClassPlan(["foreground"], [()], "instances", soft_files=soft, most_values=most)  # values: any
    if len(real) <= 1 or set(real) <= {1, 255}:
        default = names.get(real[0], "foreground") if len(real) == 1 else "foreground"
        return ClassPlan([default], [tuple(real) or (1,)], "binary", ignored, soft_files=soft)
    if survey.soft_files:
        raise DataError(
            f"mask {survey.soft_files[0]} is soft or lossy (JPEG, fractional values or over {SOFT_MASK_VALUES} "
            f"values around one) while the other masks in {where} are label maps with values {_shown(real)}; save "
            f"it losslessly (PNG) with the label values or pass --label"
        )
    return ClassPlan([names.get(v, f"label_{v}") for v in real], [(v,) for v in real], "label map", ignored)


def _shown(values: list[int]) -> str:
    return ", ".join(str(v) for v in values[:8]) + (", ..." if len(values) > 8 else "")


def class_names_for(root: Path, given: dict | None) -> dict[int, str]:
    """Mask value -> class name from `--class-names`, else from `classes.json` beside `masks/`, else none."""
    if given is not None:
        return parse_class_names(given, "--class-names")
    path = root / CLASSES_FILE
    if not path.is_file():
        return {}
    try:
        mapping = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataError(f"cannot read {path} ({type(error).__name__}); it must be JSON like "
                        '{"128": "cytoplasm", "255": "nucleus"}') from None
    return parse_class_names(mapping, str(path))


def parse_class_names(mapping: object, origin: str) -> dict[int, str]:
    """{value: name} from a mapping of value (int or digit text) to a class name, checked."""
    example = 'e.g. {"128": "cytoplasm", "255": "nucleus"}'
    if not isinstance(mapping, dict):
        raise DataError(f"{origin} must map mask values to class names, {example}")
    names: dict[int, str] = {}
    for key, name in mapping.items():
        text = str(key).strip()
        if not text.isdigit() or not isinstance(name, str) or not _NAME.match(name.strip()):
            raise DataError(f"{origin}: {key!r}: {name!r} is not a mask value and a class name (letters, digits, "
                            f"_ . + -), {example}")
        names[int(text)] = name.strip()
    if len(set(names.values())) != len(names):
        raise DataError(f"{origin} gives two mask values the same class name; give each value its own name")
    return names

"""Which stored mask values make which class: binary masks, label maps, `--label` and class names.

A folder of masks is surveyed first (how many pixels of each value, over all
files), then one `ClassPlan` says which values form each class. Binary masks
(0/1, 0/255, or one non-zero value) are one class, `foreground`; a label map
(several non-zero values) is one class per value, `label_<value>`, unless
`--class-names` or a `classes.json` beside `masks/` names them. Values that
cover under `NOISE_SHARE` of the labelled pixels (antialiased edges, stray
clicks) are reported and ignored. Masks with more than `SOFT_MASK_VALUES`
distinct values are soft or lossy (JPEG) and thresholded at half range.
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
    """Pixel counts per stored value over the mask folder, and the files too soft to be label maps."""

    counts: Counter = field(default_factory=Counter)
    soft_files: list[str] = field(default_factory=list)

    def add(self, values: np.ndarray, name: str) -> None:
        if values.size and 0 <= values.min() and values.max() < 65536:  # bincount: far faster on volumes
            counts = np.bincount(values.ravel())
            distinct = np.flatnonzero(counts)
            counts = counts[distinct]
        else:
            distinct, counts = np.unique(values, return_counts=True)
        if len(distinct) > SOFT_MASK_VALUES:
            self.soft_files.append(name)
        else:
            self.counts.update(dict(zip(distinct.tolist(), counts.tolist())))

    def shares(self) -> dict[int, float]:
        """Each non-zero value's share of the labelled pixels."""
        labelled = {value: count for value, count in self.counts.items() if value != 0}
        total = sum(labelled.values())
        return {value: count / total for value, count in sorted(labelled.items())} if total else {}


@dataclass
class ClassPlan:
    """Per class, its name and the mask values that are its pixels; `soft` masks are thresholded instead."""

    names: list[str]
    values: list[tuple[int, ...]]
    kind: str  # "binary", "label map" or "label"
    ignored: dict[int, float] = field(default_factory=dict)  # noise value -> share of labelled pixels

    def masks(self, values: np.ndarray, size: int) -> np.ndarray:
        """(C, size, size) bool masks of one stored mask."""
        return np.stack([resize_mask(plane, size) for plane in self.native_masks(values)])

    def native_masks(self, values: np.ndarray) -> np.ndarray:
        """(C, H, W) bool masks of one stored (H, W) mask, at its own size."""
        soft = self.kind == "binary" and len(np.unique(values)) > SOFT_MASK_VALUES
        if soft:
            chosen = values >= (128 if values.max() <= 255 else 32768)
            return np.repeat(chosen[None], len(self.names), axis=0)
        return np.stack([np.isin(values, class_values) for class_values in self.values])

    def notes(self) -> list[str]:
        """What the data line says about the classes (nothing for plain binary masks)."""
        lines = []
        pairs = ", ".join(f"{values[0]}={name}" for name, values in zip(self.names, self.values))
        if self.kind == "label map":
            lines.append(f"label map: one class per mask value ({pairs})")
        elif self.kind == "label" and len(self.names) > 1:
            lines.append(f"classes from --label ({pairs})")
        if self.ignored:
            shown = ", ".join(f"{value} ({share:.2%})" for value, share in self.ignored.items())
            lines.append(f"ignored mask values {shown}: under {NOISE_SHARE:.1%} of the labelled pixels counts as "
                         f"annotation noise (--label picks values explicitly)")
        return lines


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
    if len(real) <= 1 or set(real) <= {1, 255}:
        default = names.get(real[0], "foreground") if len(real) == 1 else "foreground"
        return ClassPlan([default], [tuple(real) or (1,)], "binary", ignored)
    if survey.soft_files:
        raise DataError(
            f"mask {survey.soft_files[0]} has over {SOFT_MASK_VALUES} distinct values (a soft or lossy mask such as "
            f"JPEG) while the other masks in {where} are label maps with values {_shown(real)}; save it losslessly "
            f"(PNG) or pass --label"
        )
    if len(real) > MAX_CLASSES:
        raise DataError(
            f"the masks in {where} hold {len(real)} distinct non-zero values ({_shown(real)}), too many to be "
            f"classes (instance ids?); pass --label V[,V...] to pick the class values"
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

"""Patient-level train / val / test splits: no patient's images in two splits."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from useg.data.dataset import SegDataset
from useg.errors import ConfigError, DataError

SPLIT_NAMES = ("train", "val", "test")


@dataclass
class Split:
    """Indices into a dataset; `train` doubles as the support pool for val and test tasks."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    image_ids: list[str] = field(default_factory=list, repr=False)  # the dataset's ids, for `to_dict`
    fingerprints: list[str] = field(default_factory=list, repr=False)  # SegDataset.fingerprints(), same order

    def to_dict(self) -> dict[str, Any]:
        """Anonymous image ids per split, and each image's content fingerprint, for saving with a run."""
        saved: dict[str, Any] = {name: [self.image_ids[i] for i in getattr(self, name)] for name in SPLIT_NAMES}
        if self.fingerprints:
            used = sorted(int(i) for name in SPLIT_NAMES for i in getattr(self, name))
            saved["fingerprints"] = {self.image_ids[i]: self.fingerprints[i] for i in used}
        return saved

    @classmethod
    def from_dict(cls, saved: dict[str, list[str]], ds: SegDataset, origin: str = "the saved split") -> Split:
        """Rebuild a split saved by `to_dict`; fails if the data no longer has those images."""
        position = {image: index for index, image in enumerate(ds.ids)}
        parts = {}
        for name in SPLIT_NAMES:
            ids = saved.get(name)
            if not isinstance(ids, list):
                raise DataError(f"{origin} has no '{name}' list of image ids; delete it to split again")
            unknown = [image for image in ids if image not in position]
            if unknown:
                raise DataError(
                    f"{origin} names image {unknown[0]} ({len(unknown)} unknown in all) that the data does not "
                    f"have; the data changed since it was saved: use the same data or start a new run"
                )
            parts[name] = np.asarray(sorted(position[image] for image in ids), dtype=np.int64)
        split = cls(**parts, image_ids=list(ds.ids), fingerprints=ds.fingerprints())
        _check_disjoint(split, ds, origin)
        _check_same_images(split, saved.get("fingerprints"), origin)
        return split


def split_by_patient(ds: SegDataset, seed: int, fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)) -> Split:
    """Seeded patient-level split; `ds.predefined_split` (e.g. MMOTU's lists) wins, with an empty test set."""
    if ds.predefined_split is not None:
        return Split(
            train=np.asarray(ds.predefined_split.get("train", []), dtype=np.int64),
            val=np.asarray(ds.predefined_split.get("val", []), dtype=np.int64),
            test=np.asarray(ds.predefined_split.get("test", []), dtype=np.int64),
            image_ids=list(ds.ids),
            fingerprints=ds.fingerprints(),
        )
    counts = _patients_per_split(ds.num_patients, fractions)
    # `seed` is used as given: 0 is as real a seed as any other.
    order = np.random.default_rng(seed).permutation(np.unique(ds.patients))
    bounds = np.cumsum(counts)[:-1]
    groups = np.split(order, bounds)
    parts = {
        name: np.flatnonzero(np.isin(ds.patients, group)).astype(np.int64) for name, group in zip(SPLIT_NAMES, groups)
    }
    return Split(**parts, image_ids=list(ds.ids), fingerprints=ds.fingerprints())


def _patients_per_split(num_patients: int, fractions: tuple[float, float, float]) -> list[int]:
    if len(fractions) != 3 or min(fractions) < 0 or not np.isclose(sum(fractions), 1.0):
        raise ConfigError(f"split fractions must be three non-negative numbers adding up to 1, not {fractions}")
    wanted = [fraction > 0 for fraction in fractions]
    if num_patients < sum(wanted):
        raise DataError(
            f"empty split: {num_patients} patient(s) cannot fill train, val and test; "
            f"the data needs at least {sum(wanted)} patients"
        )
    val, test = (max(1, round(num_patients * f)) if f > 0 else 0 for f in fractions[1:])
    while num_patients - val - test < (1 if fractions[0] > 0 else 0):
        if val >= test and val > 1:
            val -= 1
        else:
            test -= 1
    return [num_patients - val - test, val, test]


def _check_same_images(split: Split, saved: Any, origin: str) -> None:
    # Image ids are positions (p003_i002), so other data of the same shape would match them all;
    # the fingerprints tell. Splits saved without them (a --split-file) are taken on their ids alone.
    if not isinstance(saved, dict):
        return
    now = dict(zip(split.image_ids, split.fingerprints))
    changed = [image for image, fingerprint in saved.items() if image in now and now[image] != fingerprint]
    if changed:
        raise DataError(
            f"{origin}: image {changed[0]} ({len(changed)} of {len(saved)} in all) is not the image the run was "
            "saved with; the data changed since (other files, annotations or --image-size): use the same data "
            "or start a new run"
        )


def _check_disjoint(split: Split, ds: SegDataset, origin: str) -> None:
    seen: dict[int, str] = {}
    for name in SPLIT_NAMES:
        for patient in np.unique(ds.patients[getattr(split, name)]):
            if seen.setdefault(int(patient), name) != name:
                raise DataError(f"{origin} puts patient {patient} in both {seen[int(patient)]} and {name}; split again")

"""Patient-level train / val / test splits: no patient's images in two splits."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

import numpy as np

from useg.data.dataset import SegDataset
from useg.data.formats import file_stem
from useg.errors import ConfigError, DataError

SPLIT_NAMES = ("train", "val", "test")
# A published split without a test (or val) part gets one carved from its train part: this share of the
# listed training patients, seeded: 80 listed -> 60 train / 20 test, as the default 60/20/20 has them.
CARVED_SHARE = 0.25
ANONYMOUS_ID = re.compile(r"p\d{3,}_i\d{3,}")


@dataclass
class Split:
    """Indices into a dataset; `train` doubles as the support pool for val and test tasks."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    image_ids: list[str] = field(default_factory=list, repr=False)  # the dataset's ids, for `to_dict`
    fingerprints: list[str] = field(default_factory=list, repr=False)  # SegDataset.fingerprints(), same order
    origin: str = field(default="", compare=False)  # where it came from, for the data line; not saved

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
        split = cls(**parts, image_ids=list(ds.ids), fingerprints=ds.fingerprints(), origin="saved with the run")
        _check_disjoint(split, ds, origin)
        _check_same_images(split, saved.get("fingerprints"), origin)
        return split


def split_by_patient(ds: SegDataset, seed: int, fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)) -> Split:
    """Seeded patient-level split; `ds.predefined_split` (e.g. MMOTU's published one) wins, a part it lacks
    (test, or val) carved from its train part by patient with `seed`."""
    if ds.predefined_split is not None:
        parts = {name: np.asarray(ds.predefined_split.get(name, []), dtype=np.int64) for name in SPLIT_NAMES}
        origin = ds.split_origin or "the data's split"
        # Several datasets come split each on its own (useg.data.collection): nothing left to carve.
        missing = [] if ds.datasets else [name for name in ("val", "test") if not len(parts[name])]
        split = _carved(parts, missing, ds, seed, origin)
        split.origin = _with_unmatched(split.origin, ds.report.get("split_ids_not_found", 0), "id")
        return split
    counts = _patients_per_split(ds.num_patients, fractions)
    # `seed` is used as given: 0 is as real a seed as any other.
    order = np.random.default_rng(seed).permutation(np.unique(ds.patients))
    bounds = np.cumsum(counts)[:-1]
    groups = np.split(order, bounds)
    parts = {
        name: np.flatnonzero(np.isin(ds.patients, group)).astype(np.int64) for name, group in zip(SPLIT_NAMES, groups)
    }
    shares = "/".join(f"{100 * fraction:g}" for fraction in fractions)
    return Split(**parts, image_ids=list(ds.ids), fingerprints=ds.fingerprints(),
                 origin=f"{shares} by patient, seed {seed}")


def split_from_file(saved: Any, ds: SegDataset, seed: int, file_name: str) -> Split:
    """A --split-file's split: per part a list of anonymous ids (`p003_i000`, as a run saves them) or file
    names relative to the folder holding `images/` (`images/case1/a.png`, or without `images/` or the
    suffix; a longer path is read from its last `images/`; a volume's name takes all its slices). Names
    that match no image are counted on the data line; an anonymous id the data lacks is refused (other
    data). A missing "test" (or "val") list is carved from train; an empty one stays empty."""
    where = f"--split-file {file_name}"
    if not isinstance(saved, dict) or not isinstance(saved.get("train"), list):
        raise DataError(f'{where}: expected {{"train": [ids or file names], "val": [...], "test": [...]}}')
    names = _names_to_images(ds)
    position = {image: index for index, image in enumerate(ds.ids)}
    parts, unmatched, entries = {}, 0, 0
    for name in SPLIT_NAMES:
        listed = saved.get(name, [])
        if not isinstance(listed, list):
            raise DataError(f"{where}: '{name}' is not a list of image ids or file names")
        found: set[int] = set()
        for entry in listed:
            entries += 1
            text = str(entry).strip()
            if text in position:
                found.add(position[text])
            elif _named(text, names):
                found.update(_named(text, names))
            elif ANONYMOUS_ID.fullmatch(text):
                raise DataError(f"{where} names image {text} that the data does not have; the data changed since "
                                "it was saved: use the same data or start a new run")
            else:
                unmatched += 1
        parts[name] = np.asarray(sorted(found), dtype=np.int64)
    if entries and unmatched == entries:
        raise DataError(f"{where}: none of its {entries} entries is an image id or a file of the data; list "
                        "files relative to the folder holding images/ (images/a.png, a.png or a) or anonymous ids")
    split = _carved(parts, [name for name in ("val", "test") if name not in saved], ds, seed, where)
    _check_disjoint(split, ds, where)
    _check_same_images(split, saved.get("fingerprints"), where)
    split.origin = _with_unmatched(split.origin, unmatched, "name")
    return split


def _names_to_images(ds: SegDataset) -> dict[str, list[int]]:
    """Image indices by each name a split file may use for their file: with and without `images/` and suffix."""
    names: dict[str, list[int]] = {}
    for index, source in enumerate(ds.sources):
        path = PurePosixPath(source.image)
        below = path.relative_to("images") if path.parts[:1] == ("images",) else path
        for name in {path, below, path.with_name(file_stem(path)), below.with_name(file_stem(below))}:
            names.setdefault(_name_key(name.as_posix()), []).append(index)
    return names


def _named(text: str, names: dict[str, list[int]]) -> list[int]:
    """The images a split file's entry names; a longer path (`OTU_2d/images/1.JPG`, an absolute one) is
    read from its last `images/` on."""
    key = _name_key(text)
    if key not in names and "images" in key.split("/"):
        parts = key.split("/")
        key = "/".join(parts[len(parts) - parts[::-1].index("images") - 1:])
    return names.get(key, [])




def _name_key(name: str) -> str:
    return name.replace("\\", "/").removeprefix("./").casefold()


def _carved(parts: dict[str, np.ndarray], missing: list[str], ds: SegDataset, seed: int, origin: str) -> Split:
    """The split with each `missing` part carved from the train part: CARVED_SHARE of its patients, seeded."""
    train_patients = np.unique(ds.patients[parts["train"]])
    take = max(1, round(len(train_patients) * CARVED_SHARE))
    if missing and len(train_patients) <= take * len(missing):
        raise DataError(f"{origin} has no {' or '.join(missing)} part and its train part holds "
                        f"{len(train_patients)} patient(s), too few to carve one from; list a "
                        f"{missing[-1]} part or more training images")
    order = np.random.default_rng(seed).permutation(train_patients)
    in_train = np.zeros(len(ds.patients), dtype=bool)
    in_train[parts["train"]] = True
    said = []
    for count, name in enumerate(missing):
        group = order[count * take : (count + 1) * take]
        parts[name] = np.flatnonzero(in_train & np.isin(ds.patients, group)).astype(np.int64)
        said.append(f"{len(parts[name])} {name} images carved from train by patient, seed {seed}")
    taken = np.concatenate([parts[name] for name in missing]) if missing else np.zeros(0, np.int64)
    parts["train"] = np.setdiff1d(parts["train"], taken).astype(np.int64)
    text = origin if not said else f"{origin}; no {' or '.join(missing)} part listed: " + ", ".join(said)
    return Split(**parts, image_ids=list(ds.ids), fingerprints=ds.fingerprints(), origin=text)


def _with_unmatched(origin: str, count: int, what: str) -> str:
    """`origin`, and how many of its listed ids (or names) have no image: `3 listed ids have no image`."""
    if not count:
        return origin
    return f"{origin}; {count} listed {what}{' has' if count == 1 else 's have'} no image"


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

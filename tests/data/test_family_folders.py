"""tests/medical_files.write_family_folder: synthetic dataset families unlike each other, as images/ + masks/
folders the loader reads, for runs over several datasets (issue 27's held-out benchmark)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medical_files import FAMILIES, write_family_folder
from useg.data import load_dataset
from useg.data.collection import load_data


def test_each_family_is_a_folder_of_one_class_the_loader_reads(tmp_path: Path) -> None:
    for family in FAMILIES:
        dataset = load_dataset(write_family_folder(tmp_path / family, family, 6, seed=0), image_size=64, seed=0)
        assert len(dataset) == 6 and dataset.num_patients == 6 and len(dataset.classes) == 1
        share = dataset.masks.mean(axis=(1, 2, 3))
        assert (share > 0.005).all() and (share < 0.5).all(), f"{family}: each label is a part of its image"


def test_same_seed_same_files_and_another_seed_other_images(tmp_path: Path) -> None:
    first = write_family_folder(tmp_path / "a", "rings", 3, seed=4)
    again = write_family_folder(tmp_path / "b", "rings", 3, seed=4)
    other = write_family_folder(tmp_path / "c", "rings", 3, seed=5)
    for kind in ("images", "masks"):
        names = sorted(path.name for path in (first / kind).iterdir())
        assert names == sorted(path.name for path in (again / kind).iterdir())
        assert all((first / kind / name).read_bytes() == (again / kind / name).read_bytes() for name in names)
        assert any((first / kind / name).read_bytes() != (other / kind / name).read_bytes() for name in names)


def test_families_differ_in_shape_texture_and_intensity(tmp_path: Path) -> None:
    """What makes each family its own: bright round labels (blobs), dark labels on a grainy background (streaks),
    labels with a hole in the middle on a smooth ramp (rings bright, dark_rings dark)."""
    data = {family: load_dataset(write_family_folder(tmp_path / family, family, 12, seed=0), image_size=64, seed=0)
            for family in FAMILIES}
    inside = {family: np.mean(ds.images[ds.masks[:, 0]]) for family, ds in data.items()}
    outside = {family: np.mean(ds.images[~ds.masks[:, 0]]) for family, ds in data.items()}
    assert inside["blobs"] > outside["blobs"] + 0.3  # bright on dim
    assert inside["streaks"] < outside["streaks"] - 0.3  # dark on bright
    assert inside["rings"] > outside["rings"] + 0.15 and inside["dark_rings"] < outside["dark_rings"] - 0.15
    grain = {family: np.mean(np.abs(np.diff(ds.images, axis=2))) for family, ds in data.items()}
    assert grain["streaks"] > 3 * max(grain["blobs"], grain["rings"], grain["dark_rings"])  # speckle against smooth
    holes = {family: np.mean([has_hole(mask) for mask in ds.masks[:, 0]]) for family, ds in data.items()}
    assert holes["rings"] == holes["dark_rings"] == 1.0 and holes["blobs"] == 0.0 and holes["streaks"] < 0.5


def test_the_families_load_as_datasets_of_one_run(tmp_path: Path) -> None:
    folders = [str(write_family_folder(tmp_path / family, family, 10, seed=0)) for family in FAMILIES]
    merged = load_data(folders, image_size=64, seed=0)
    assert merged.datasets == list(FAMILIES) and merged.classes == [f"{family}/foreground" for family in FAMILIES]


def test_an_unknown_family_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="blobs, streaks, rings, dark_rings"):
        write_family_folder(tmp_path, "clouds", 1, seed=0)
    assert not any(tmp_path.iterdir())


def has_hole(mask: np.ndarray) -> bool:
    """True when some background pixel is closed in by the label (not reachable from the image's border)."""
    background = ~mask
    reached = np.zeros_like(mask)
    reached[[0, -1], :], reached[:, [0, -1]] = background[[0, -1], :], background[:, [0, -1]]
    while True:  # grow from the border through background pixels, 4-connected, until nothing changes
        grown = reached.copy()
        grown[1:] |= reached[:-1]
        grown[:-1] |= reached[1:]
        grown[:, 1:] |= reached[:, :-1]
        grown[:, :-1] |= reached[:, 1:]
        grown &= background
        if (grown == reached).all():
            return bool((background & ~reached).any())
        reached = grown

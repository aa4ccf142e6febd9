"""Specification of label-map masks: one class per value, noise values ignored, classes named and picked."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from useg.config import build_config, read_config_file
from useg.data import load_dataset
from useg.errors import ConfigError, DataError


def cells(root: Path, count: int = 3, noise: bool = True) -> Path:
    """A white-blood-cell-like set: BMP images, PNG label maps 0/128/255 with a few stray 7s."""
    for number in range(count):
        labels = np.zeros((48, 48), dtype=np.uint8)
        labels[8:40, 8:40] = 128  # cytoplasm
        labels[16:32, 16:32] = 255  # nucleus
        if noise and number == 0:
            labels[0, 0:2] = 7  # antialiasing residue: 2 of 3074 labelled pixels
        (root / "images").mkdir(parents=True, exist_ok=True)
        (root / "masks").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((48, 48, 3), 40 * number, dtype=np.uint8)).save(root / "images" / f"c{number}.bmp")
        Image.fromarray(labels).save(root / "masks" / f"c{number}.png")
    return root


def test_label_map_trains_one_class_per_value_and_ignores_noise_values(tmp_path: Path) -> None:
    ds = load_dataset(cells(tmp_path / "cells"), image_size=48)
    assert ds.classes == ["label_128", "label_255"]
    assert ds.masks.shape == (3, 2, 48, 48)
    assert ds.masks[0, 0].sum() == 32 * 32 - 16 * 16 and ds.masks[0, 1].sum() == 16 * 16
    assert not ds.masks[0, :, 0, 0:2].any()  # the noise pixels belong to no class
    notes = " | ".join(ds.notes)
    assert "label map: one class per mask value (128=label_128, 255=label_255)" in notes
    assert "ignored mask values 7 (0.07%)" in notes and "under 0.1% of the labelled pixels" in notes


def test_label_list_picks_values_and_class_names_name_them(tmp_path: Path) -> None:
    root = cells(tmp_path / "cells")
    ds = load_dataset(root, image_size=48, label=[255, 7], class_names={"255": "nucleus"})
    assert ds.classes == ["nucleus", "label_7"]  # an explicit value is kept, however rare
    assert ds.masks[0, 1].sum() == 2 and not ds.masks[1, 1].any()
    assert "classes from --label (255=nucleus, 7=label_7)" in ds.notes
    with pytest.raises(DataError, match=r"no mask holds the value 9 of --label 255,9; check the values"):
        load_dataset(root, image_size=48, label=[255, 9])
    named = load_dataset(root, image_size=48, class_names={"128": "cytoplasm", "255": "nucleus"})
    assert named.classes == ["cytoplasm", "nucleus"]
    assert "128=cytoplasm, 255=nucleus" in " ".join(named.notes)


def test_classes_json_beside_masks_names_classes_and_classes_picks_by_name(tmp_path: Path) -> None:
    root = cells(tmp_path / "cells")
    (root / "classes.json").write_text(json.dumps({"128": "cytoplasm", "255": "nucleus"}))
    assert load_dataset(root, image_size=48).classes == ["cytoplasm", "nucleus"]
    only = load_dataset(root, image_size=48, classes=["nucleus"])
    assert only.classes == ["nucleus"] and only.masks[:, 0].sum() == 3 * 256
    with pytest.raises(DataError, match="valid classes: cytoplasm, nucleus"):
        load_dataset(root, image_size=48, classes=["tumour", "nucleus"])
    (root / "classes.json").write_text('{"128": "cytoplasm", "255": "cytoplasm"}')
    with pytest.raises(DataError, match="classes.json gives two mask values the same class name"):
        load_dataset(root, image_size=48)


def test_binary_masks_stay_one_foreground_class(tmp_path: Path) -> None:
    root = tmp_path / "binary"
    for number, high in enumerate((1, 255, 255)):
        mask = np.zeros((64, 64), dtype=np.uint8)
        mask[2:42, 2:42] = high
        if number == 2:
            mask[63, 63] = 3  # a stray value in a binary folder is noise too
        (root / "images").mkdir(parents=True, exist_ok=True)
        (root / "masks").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((64, 64), 90, dtype=np.uint8)).save(root / "images" / f"b{number}.png")
        Image.fromarray(mask).save(root / "masks" / f"b{number}.png")
    ds = load_dataset(root, image_size=64)
    assert ds.classes == ["foreground"] and (ds.masks[:, 0].sum(axis=(1, 2)) == 1600).all()
    assert not any(note.startswith("label map") for note in ds.notes)
    assert "ignored mask values 3" in " ".join(ds.notes)


def test_label_value_absent_from_every_mask_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"no usable images in .*no mask holds the value\(s\) --label 99"):
        load_dataset(cells(tmp_path / "cells"), image_size=48, label=99)


def test_label_and_class_names_flags_and_old_int_label_config(tmp_path: Path) -> None:
    cfg = build_config({"label": "128,255", "class_names": "128=cytoplasm, 255=nucleus"})
    assert cfg.label == [128, 255] and cfg.class_names == {"128": "cytoplasm", "255": "nucleus"}
    assert build_config({"label": "255"}).label == 255  # one value is an int, as older runs saved it
    assert build_config({"label": 3}).label == 3
    config_file = tmp_path / "run.yaml"
    config_file.write_text("label: [128, 255]\nclass_names: {128: cytoplasm, 255: nucleus}\n")
    assert read_config_file(config_file) == {"label": [128, 255], "class_names": {"128": "cytoplasm",
                                                                                  "255": "nucleus"}}
    for bad in ({"label": "128,x"}, {"label": "5,5"}, {"class_names": "128:cytoplasm"},
                {"class_names": "128=a,255=a"}, {"patient_pattern": "case"}, {"keep_empty": 1.5},
                {"slice_axis": 3}):
        with pytest.raises(ConfigError, match="--" + next(iter(bad)).replace("_", "-")):
            build_config(bad)


def test_the_data_line_says_how_classes_and_patients_were_found(tmp_path: Path) -> None:
    from useg.data import split_by_patient
    from useg.run_log import describe_data

    ds = load_dataset(cells(tmp_path / "cells", count=5), image_size=48)
    line = describe_data(ds, split_by_patient(ds, seed=0), val_tasks=2)
    assert line.startswith("Data: folders, 5 images of 5 patients, classes label_128, label_255;")
    assert "patients: one per file" in line and "label map: one class per mask value" in line
    assert "ignored mask values 7" in line and "\n" not in line

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
    from useg.training.log import describe_data

    ds = load_dataset(cells(tmp_path / "cells", count=5), image_size=48)
    line = describe_data(ds, split_by_patient(ds, seed=0), val_tasks=2)
    assert line.startswith("Data: folders, 5 images of 5 patients, classes label_128, label_255;")
    assert "patients: one per file" in line and "label map: one class per mask value" in line
    assert "ignored mask values 7" in line and "\n" not in line


# ---------------------------------------------------------------- many values: instance maps and soft masks


def instance_masks(root: Path, ids_per_mask: list[int], dtype=np.uint16) -> tuple[Path, list[np.ndarray]]:
    """Cell-like instance maps: mask k holds ids 1..ids_per_mask[k], one 2x2 cell each on a 3-pixel grid."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    stored = []
    for number, count in enumerate(ids_per_mask):
        ids = np.zeros((64, 64), dtype=dtype)
        for cell in range(count):
            row, column = divmod(cell, 21)
            ids[3 * row:3 * row + 2, 3 * column:3 * column + 2] = cell + 1
        Image.fromarray(np.full((64, 64), 30 * number, dtype=np.uint8)).save(root / "images" / f"m{number}.png")
        Image.fromarray(ids).save(root / "masks" / f"m{number}.png")
        stored.append(ids)
    return root, stored


def test_16_bit_instance_masks_train_as_one_foreground_class_and_the_data_line_says_so(tmp_path: Path) -> None:
    from useg.data import split_by_patient
    from useg.training.log import describe_data

    # Labels 1..300 (cells) in 16-bit PNG; one image has few cells, which must not make them classes.
    root, stored = instance_masks(tmp_path / "cells", [300, 300, 12, 300])
    ds = load_dataset(root, image_size=64)
    assert ds.classes == ["foreground"] and len(ds) == 4
    assert all((ds.masks[i, 0] == (ids != 0)).all() for i, ids in enumerate(stored))
    assert (ds.read_native_masks(2)[0] == (stored[2] != 0)).all()  # evaluation reads the same rule
    line = describe_data(ds, split_by_patient(ds, seed=0), val_tasks=1)
    assert "masks: instance/label maps with up to 300 values, any non-zero is foreground" in line
    picked = load_dataset(root, image_size=64, label=[5, 250])  # --label still picks values
    assert picked.classes == ["label_5", "label_250"]
    assert (picked.masks[0, 0] == (stored[0] == 5)).all() and picked.masks[0, 1].sum() == 4
    assert "classes from --label (5=label_5, 250=label_250)" in picked.notes


def test_8_bit_instance_maps_and_folders_with_too_many_values_for_classes_are_instances(tmp_path: Path) -> None:
    root, stored = instance_masks(tmp_path / "eight", [100, 60], dtype=np.uint8)  # ids under 128 of 255
    ds = load_dataset(root, image_size=64)
    assert ds.classes == ["foreground"] and (ds.masks[1, 0] == (stored[1] != 0)).all()
    # No mask over 32 values, but 45 in the folder: too many to be classes (was refused).
    spread = tmp_path / "spread"
    (spread / "images").mkdir(parents=True)
    (spread / "masks").mkdir()
    for number in range(3):
        ids = np.zeros((32, 32), dtype=np.uint8)
        for cell in range(15):
            ids[2 * cell:2 * cell + 2, 4 * number:4 * number + 3] = 15 * number + cell + 1
        Image.fromarray(np.zeros((32, 32), dtype=np.uint8)).save(spread / "images" / f"s{number}.png")
        Image.fromarray(ids).save(spread / "masks" / f"s{number}.png")
    many = load_dataset(spread, image_size=32)
    assert many.classes == ["foreground"] and many.masks.sum() == 3 * 15 * 6
    assert any(note.startswith("masks: instance/label maps with up to 15 values") for note in many.notes)


def test_antialiased_and_jpeg_binary_masks_stay_thresholded_at_half_range(tmp_path: Path) -> None:
    root = tmp_path / "soft"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rows, columns = np.mgrid[0:83, 0:97]
    distance = np.hypot(rows - 40.3, columns - 50.7)
    disk = np.clip((20.4 - distance) / 2, 0, 1) * 255  # a disk drawn with an antialiased edge
    smooth = Image.fromarray(np.rint(disk).astype(np.uint8))
    assert len(np.unique(np.asarray(smooth))) > 32
    smooth.save(root / "masks" / "a.png")
    smooth.save(root / "masks" / "b.jpg", quality=70)
    for name in ("a", "b"):
        Image.fromarray(np.zeros((83, 97), dtype=np.uint8)).save(root / "images" / f"{name}.png")
    ds = load_dataset(root, image_size=83)
    native = [ds.read_native_masks(i)[0] for i in range(2)]
    assert ds.classes == ["foreground"] and (native[0] == (np.asarray(smooth) >= 128)).all()
    assert abs(int(native[1].sum()) - int(native[0].sum())) < 40  # JPEG noise moves a few edge pixels
    assert "2 soft masks (JPEG, fractional values or antialiased edges) thresholded at half range" in ds.notes
    assert not any("instance" in note for note in ds.notes)

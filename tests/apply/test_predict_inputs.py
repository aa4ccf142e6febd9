"""`useg predict` never writes over its inputs or ground truth without --overwrite, and reads every format training
reads (PNG, 16-bit TIFF, NIfTI, DICOM; 2-D images and 3-D volumes)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import nibabel
import numpy as np
import pytest
from PIL import Image
from medical_files import save_dicom, save_grey, save_nifti, write_cyst_folder
from tiny import train_tiny, error_line

from useg.cli import main
from useg.data import make_synthetic


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return train_tiny(tmp_path_factory.mktemp("predict_inputs") / "run", 1)


@pytest.fixture
def labelled(tmp_path) -> Path:
    """D: images/ + masks/ of six synthetic cysts (binary masks, 0/255), as a user's ground truth."""
    return write_cyst_folder(tmp_path / "D")


@pytest.fixture
def two_classes(tmp_path) -> Path:
    """L: images/ + label-map masks (100 cyst, 200 solid) named by L/classes.json."""
    root = tmp_path / "L"
    data = make_synthetic(image_size=48, seed=3, n_patients=8, images_per_patient=1, classes=["cyst", "solid"])
    for index, (image, masks) in enumerate(zip(data.images, data.masks)):
        save_grey(root / "images" / f"m{index}.png", image)
        label_map = np.where(masks[0], 100, np.where(masks[1], 200, 0)).astype(np.uint8)
        (root / "masks").mkdir(exist_ok=True)
        Image.fromarray(label_map).save(root / "masks" / f"m{index}.png")
    (root / "classes.json").write_text('{"100": "cyst", "200": "solid"}\n', encoding="utf-8")
    return root


@pytest.fixture
def new_images(tmp_path) -> Path:
    folder = tmp_path / "new"
    for index, image in enumerate(make_synthetic(image_size=40, seed=7, n_patients=2, images_per_patient=1).images):
        save_grey(folder / f"n{index}.png", image)
    return folder


def predict(run: Path, *args: str) -> int:
    return main(["predict", "--run-dir", str(run), *args])


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under `root` (hidden ones too) and its bytes."""
    return {path.relative_to(root).as_posix(): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


# ---------------------------------------------------------------- inputs and ground truth are never written over


@pytest.mark.parametrize("spelling", ["plain", "dot", "double slash", "symlinked folder"])
def test_the_issues_command_is_refused_and_changes_no_byte(spelling, run, labelled, tmp_path, monkeypatch, capsys):
    before = snapshot(labelled)
    monkeypatch.chdir(tmp_path)
    out = {"plain": "D/masks", "dot": "./D/masks", "double slash": "D//masks", "symlinked folder": "preds"}[spelling]
    if spelling == "symlinked folder":
        os.symlink(labelled / "masks", tmp_path / "preds")
    assert predict(run, "--support", "D", "--images", "D/images", "--out", out) == 2
    line = error_line(capsys)
    assert "s0.png would overwrite" in line and "a file of --support D" in line
    assert "--overwrite" in line
    assert snapshot(labelled) == before


def test_overwrite_replaces_the_ground_truth_the_user_asked_to_replace(run, labelled, capsys):
    before = snapshot(labelled)
    args = ["--support", str(labelled), "--images", str(labelled / "images"), "--out", str(labelled / "masks")]
    assert predict(run, *args, "--overwrite") == 0
    after = snapshot(labelled)
    assert sorted(after) == sorted(before)  # no file added or lost
    assert all(after[name] == before[name] for name in before if name.startswith("images/"))
    masks = sorted(labelled.glob("masks/*.png"))
    assert all(Image.open(path).info.get("Software") == "useg predict" for path in masks)


def test_input_images_are_never_written_over_even_with_overwrite(run, labelled, tmp_path, capsys):
    scans = tmp_path / "scans"
    shutil.copytree(labelled / "images", scans)
    before = snapshot(scans)
    assert predict(run, "--support", str(labelled), "--images", str(scans), "--out", str(scans), "--overwrite") == 2
    line = error_line(capsys)
    assert "would overwrite an input image" in line and "--overwrite" not in line
    assert snapshot(scans) == before


def test_out_on_a_support_folder_keeps_its_classes_json(run, two_classes, new_images, capsys):
    before = snapshot(two_classes)
    args = ["--support", str(two_classes), "--images", str(new_images), "--out", str(two_classes)]
    assert predict(run, *args) == 2
    line = error_line(capsys)
    assert "classes.json would overwrite" in line and "a file of --support" in line
    assert snapshot(two_classes) == before  # nothing written, not even the masks of n0 and n1
    assert predict(run, *args, "--overwrite") == 0
    assert json.loads((two_classes / "classes.json").read_text()) == {"1": "cyst", "2": "solid"}
    assert (two_classes / "n0_label_map.png").is_file()


def test_a_labelled_folder_gets_no_classes_json_without_overwrite(run, two_classes, new_images, tmp_path, capsys):
    other = tmp_path / "other"
    shutil.copytree(two_classes, other)
    (other / "classes.json").unlink()  # its label maps 100/200 are unnamed; a classes.json would name 1 and 2
    before = snapshot(other)
    code = predict(run, "--support", str(two_classes), "--images", str(new_images), "--out", str(other))
    assert code == 2 and "renaming its classes" in error_line(capsys)
    assert snapshot(other) == before


def test_rerun_into_its_own_output_folder_needs_no_overwrite(run, two_classes, new_images, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["--support", str(two_classes), "--images", str(new_images), "--out", str(out)]
    assert predict(run, *args) == 0
    first = snapshot(out)
    assert "classes.json" in first and "n0_cyst.png" in first
    assert predict(run, *args) == 0  # masks, label maps and classes.json of the first run are replaced
    assert snapshot(out) == first
    assert predict(run, *args, "--classes", "cyst", "--overlay") == 0
    assert (out / "n0_overlay.png").is_file()


def test_predictions_into_a_masks_folder_rerun_until_a_person_edits_one(run, labelled, new_images, tmp_path,
                                                                         capsys):
    """Pre-labelling: predict T/images into T/masks, run again, then a person corrects one mask: it is ground
    truth now and a re-run refuses to replace it."""
    target = tmp_path / "T"
    shutil.copytree(new_images, target / "images")
    (target / "masks").mkdir()
    args = ["--support", str(labelled), "--images", str(target / "images"), "--out", str(target / "masks")]
    assert predict(run, *args) == 0
    assert predict(run, *args) == 0
    corrected = np.zeros((40, 40), dtype=np.uint8)
    corrected[10:20, 10:20] = 255
    Image.fromarray(corrected).save(target / "masks" / "n1.png")  # saved by a label tool: no useg mark
    before = snapshot(target)
    assert predict(run, *args) == 2
    line = error_line(capsys)
    assert "n1.png would overwrite a file of the labelled folder" in line and "--overwrite" in line
    assert snapshot(target) == before


def test_a_plain_folder_of_masks_named_like_the_supports_is_ground_truth(run, labelled, tmp_path, capsys):
    copy = tmp_path / "truth"
    shutil.copytree(labelled / "masks", copy)
    before = snapshot(copy)
    code = predict(run, "--support", str(labelled), "--images", str(labelled / "images"), "--out", str(copy))
    assert code == 2 and "named like the support image s0" in error_line(capsys)
    assert snapshot(copy) == before


def test_a_symlink_to_a_support_mask_in_out_is_refused(run, labelled, new_images, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    os.symlink(labelled / "masks" / "s2.png", out / "n0.png")
    before = snapshot(labelled)
    assert predict(run, "--support", str(labelled), "--images", str(new_images), "--out", str(out)) == 2
    assert "n0.png would overwrite" in error_line(capsys)
    assert snapshot(labelled) == before and not (out / "n1.png").exists()


# ---------------------------------------------------------------- every format training reads


def scan(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A synthetic scan as 16-bit values (0-4000), the range a CT or a 16-bit microscope gives."""
    grey = make_synthetic(image_size=max(height, width), seed=seed, n_patients=1, images_per_patient=1).images[0]
    return (grey[:height, :width] * 4000).astype(np.uint16)


def test_tiff_nifti_and_dicom_of_one_scan_give_one_mask(run, labelled, tmp_path):
    """The same 16-bit values as a TIFF, a 2-D NIfTI and a DICOM (with and without suffix) are scaled alike
    (robust percentiles, as in training), so their masks are equal PNGs of the scan's size."""
    values = scan(30, 44)
    folder = tmp_path / "scans"
    folder.mkdir()
    Image.fromarray(values).save(folder / "a.tif")
    save_nifti(folder / "b.nii.gz", values.astype(np.float32))
    save_dicom(folder / "c.dcm", values)
    save_dicom(folder / "d", values)
    out = tmp_path / "out"
    assert predict(run, "--support", str(labelled), "--images", str(folder), "--out", str(out), "--overlay") == 0
    assert sorted(path.name for path in out.iterdir()) == sorted([*(f"{s}.png" for s in "abcd"),
                                                                  *(f"{s}_overlay.png" for s in "abcd")])
    masks = [np.asarray(Image.open(out / f"{stem}.png")) for stem in "abcd"]
    assert masks[0].shape == (30, 44) and set(np.unique(masks[0])) <= {0, 255}
    for other in masks[1:]:
        assert np.array_equal(other, masks[0])
    overlays = [np.asarray(Image.open(out / f"{stem}_overlay.png")) for stem in "abcd"]
    assert overlays[0].shape == (30, 44, 3) and all(np.array_equal(other, overlays[0]) for other in overlays[1:])


def test_a_nifti_volume_gives_a_mask_volume_with_its_geometry(run, labelled, tmp_path):
    volume = np.stack([scan(20, 24, seed) for seed in range(5)], axis=2).astype(np.float32)  # (20, 24, 5)
    affine = np.diag([0.7, 0.8, 2.5, 1.0])
    path = tmp_path / "ct.nii.gz"
    nibabel.save(nibabel.Nifti1Image(volume, affine), path)
    out = tmp_path / "out"
    assert predict(run, "--support", str(labelled), "--images", str(path), "--out", str(out), "--overlay") == 0
    names = sorted(item.name for item in out.iterdir())
    assert names == ["ct.nii.gz", *[f"ct_slice{n:03d}_overlay.png" for n in range(5)]]
    mask = nibabel.load(out / "ct.nii.gz")
    assert mask.shape == (20, 24, 5) and np.allclose(mask.affine, affine)
    assert set(np.unique(np.asarray(mask.dataobj))) <= {0, 1} and mask.get_data_dtype() == np.uint8
    assert Image.open(out / "ct_slice004_overlay.png").size == (24, 20)
    # --slice-axis cuts it the other way: the mask volume keeps the input's shape, overlays follow the axis
    other = tmp_path / "axis0"
    assert predict(run, "--support", str(labelled), "--images", str(path), "--out", str(other), "--overlay",
                   "--slice-axis", "0") == 0
    assert nibabel.load(other / "ct.nii.gz").shape == (20, 24, 5)
    assert len(list(other.glob("ct_slice*_overlay.png"))) == 20
    assert Image.open(other / "ct_slice019_overlay.png").size == (5, 24)


def test_a_volume_with_several_classes_gives_a_mask_volume_per_class_and_a_label_map(run, two_classes, tmp_path):
    path = tmp_path / "ct.nii"
    save_nifti(path, np.stack([scan(20, 24, seed) for seed in range(3)], axis=2).astype(np.float32))
    out = tmp_path / "out"
    assert predict(run, "--support", str(two_classes), "--images", str(path), "--out", str(out)) == 0
    assert sorted(item.name for item in out.iterdir()) == ["classes.json", "ct_cyst.nii.gz", "ct_label_map.nii.gz",
                                                           "ct_solid.nii.gz"]
    labels = np.asarray(nibabel.load(out / "ct_label_map.nii.gz").dataobj)
    assert labels.shape == (20, 24, 3) and set(np.unique(labels)) <= {0, 1, 2}
    for value, name in ((1, "cyst"), (2, "solid")):  # a labelled voxel is in its class's mask
        assert np.asarray(nibabel.load(out / f"ct_{name}.nii.gz").dataobj)[labels == value].all()


def test_a_multi_frame_dicom_gives_a_mask_volume_in_useg_axis_order(run, labelled, tmp_path):
    frames = np.stack([scan(18, 22, seed) for seed in range(3)])  # (frames, rows, columns) on disk
    save_dicom(tmp_path / "cine.dcm", frames)
    out = tmp_path / "out"
    assert predict(run, "--support", str(labelled), "--images", str(tmp_path / "cine.dcm"), "--out", str(out)) == 0
    assert nibabel.load(out / "cine.nii.gz").shape == (18, 22, 3)  # rows, columns, frames: as training reads it


def test_a_damaged_nifti_input_is_one_line_and_nothing_is_written(run, labelled, new_images, tmp_path, capsys):
    (new_images / "zz.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    out = tmp_path / "out"
    assert predict(run, "--support", str(labelled), "--images", str(new_images), "--out", str(out)) == 2
    assert "as NIfTI" in error_line(capsys) and not out.exists()


def test_slice_axis_out_of_range_is_one_line(run, labelled, new_images, tmp_path, capsys):
    code = predict(run, "--support", str(labelled), "--images", str(new_images), "--out", str(tmp_path / "out"),
                   "--slice-axis", "3")
    assert code == 2 and "--slice-axis" in error_line(capsys)

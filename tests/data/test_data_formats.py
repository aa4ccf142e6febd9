"""Specification of the file formats of the images/ + masks/ layout: raster, NIfTI, DICOM, masks by meaning."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medical_files import save_dicom, save_nifti
from useg.data import load_dataset, split_by_patient
from useg.errors import DataError


def make_dirs(root: Path) -> Path:
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    return root


def square_mask(shape: tuple[int, ...], value: int = 255) -> np.ndarray:
    mask = np.zeros(shape, dtype=np.uint8)
    mask[4:12, 4:12] = value
    return mask


def ramp(shape: tuple[int, int], high: float) -> np.ndarray:
    return np.linspace(0, high, shape[0] * shape[1]).reshape(shape)


# ---------------------------------------------------------------- raster formats


def test_bmp_images_pair_with_png_masks_by_stem(tmp_path: Path) -> None:
    root = make_dirs(tmp_path / "wbc")
    for name in ("a", "b"):
        Image.fromarray(np.full((16, 16, 3), 200, dtype=np.uint8)).save(root / "images" / f"{name}.bmp")
        Image.fromarray(square_mask((16, 16))).save(root / "masks" / f"{name}.png")
    ds = load_dataset(root, image_size=16)
    assert len(ds) == 2 and ds.classes == ["foreground"]
    assert ds.images[0, 0, 0] == pytest.approx(200 / 255)
    assert [source.image for source in ds.sources] == ["images/a.bmp", "images/b.bmp"]


def test_16_bit_tiff_is_scaled_by_robust_percentiles(tmp_path: Path) -> None:
    root = make_dirs(tmp_path / "tiff16")
    values = ramp((16, 16), 1000).astype(np.uint16) + 3000  # a narrow band of the 16-bit range
    values[0, 0] = 65535  # one hot pixel must not squash the rest
    Image.fromarray(values).save(root / "images" / "x.tif")
    Image.fromarray(square_mask((16, 16))).save(root / "masks" / "x.png")
    grey = load_dataset(root, image_size=16).images[0]
    assert grey.min() == 0.0 and grey.max() == 1.0
    assert grey[8, 0] == pytest.approx(0.5, abs=0.05)  # mid-ramp is mid-grey, not 3500/65535


# ---------------------------------------------------------------- NIfTI


def test_2d_nifti_image_and_mask(tmp_path: Path) -> None:
    root = make_dirs(tmp_path / "nii2d")
    save_nifti(root / "images" / "scan.nii.gz", ramp((16, 16), 2000).astype(np.int16)[:, :, None])
    save_nifti(root / "masks" / "scan.nii", square_mask((16, 16), 1))
    ds = load_dataset(root, image_size=16)
    assert len(ds) == 1 and ds.masks[0, 0].sum() == 64
    assert ds.images.min() == 0.0 and ds.images.max() == 1.0
    assert ds.sources[0].slice is None


def test_3d_nifti_volumes_become_slices_of_one_patient(tmp_path: Path) -> None:
    root = make_dirs(tmp_path / "nii3d")
    for case in range(4):
        volume = np.random.default_rng(case).normal(-500, 300, (16, 16, 6)).astype(np.float32)
        mask = np.zeros((16, 16, 6), dtype=np.uint8)
        mask[4:12, 4:12, 1:4] = 1  # slices 1, 2, 3 have foreground
        save_nifti(root / "images" / f"case{case}.nii.gz", volume)
        save_nifti(root / "masks" / f"case{case}.nii.gz", mask)
    ds = load_dataset(root, image_size=16)
    assert len(ds) == 12 and ds.patients.tolist() == [p for p in range(4) for _ in range(3)]
    assert [source.slice for source in ds.sources[:3]] == [1, 2, 3]
    assert "4 volumes cut along axis 2 (--slice-axis): 12 of 24 slices used" in ds.notes
    assert ds.report["empty_masks"] == 12 and ds.report["images_without_labels"] == 12
    split = split_by_patient(ds, seed=0)
    for name in ("train", "val", "test"):  # a volume's slices never straddle two splits
        others = {n for n in ("train", "val", "test") if n != name}
        assert not set(ds.patients[getattr(split, name)]) & {p for n in others for p in ds.patients[getattr(split, n)]}
    across = load_dataset(root, image_size=16, slice_axis=0)
    assert len(across) == 4 * 8 and across.masks[0, 0, :, :].any()  # rows 4..11 hold the square
    negatives = load_dataset(root, image_size=16, keep_empty=0.5)
    assert len(negatives) == 18 and negatives.report["empty_masks_kept"] == 6
    assert "12 images with an empty mask: 6 kept as negatives (--keep-empty 0.5)" in negatives.notes


# ---------------------------------------------------------------- DICOM


def test_single_frame_dicom_with_and_without_suffix_uses_the_modality_rescale(tmp_path: Path) -> None:
    root = make_dirs(tmp_path / "dcm")
    save_dicom(root / "images" / "slice1.dcm", ramp((16, 16), 4000), slope=1.0, intercept=-1024)
    save_dicom(root / "images" / "slice2", ramp((16, 16), 4000))  # no suffix: found by its DICM marker
    save_dicom(root / "masks" / "slice1.dcm", square_mask((16, 16), 1))
    Image.fromarray(square_mask((16, 16))).save(root / "masks" / "slice2.png")
    (root / "images" / "README").write_text("not an image")  # a suffix-less file that is not DICOM is skipped
    ds = load_dataset(root, image_size=16)
    assert len(ds) == 2 and (ds.masks[:, 0].sum(axis=(1, 2)) == 64).all()
    assert ds.images.min() == 0.0 and ds.images.max() == 1.0
    assert [source.image for source in ds.sources] == ["images/slice1.dcm", "images/slice2"]


def test_multi_frame_dicom_frames_are_slices_along_the_last_axis(tmp_path: Path) -> None:
    root = make_dirs(tmp_path / "cine")
    for case in range(3):
        frames = np.stack([ramp((16, 16), 1000 + 100 * f) for f in range(5)])
        masks = np.zeros((5, 16, 16))
        masks[[0, 2], 4:12, 4:12] = 1
        save_dicom(root / "images" / f"cine{case}.dcm", frames)
        save_dicom(root / "masks" / f"cine{case}.dcm", masks)
    ds = load_dataset(root, image_size=16)
    assert len(ds) == 6 and [source.slice for source in ds.sources[:2]] == [0, 2]
    assert ds.num_patients == 3


def test_damaged_medical_files_are_one_line_naming_the_file(tmp_path: Path) -> None:
    root = make_dirs(tmp_path / "bad")
    (root / "images" / "scan.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    save_nifti(root / "masks" / "scan.nii.gz", square_mask((16, 16), 1))
    with pytest.raises(DataError, match=r"^cannot read image scan\.nii\.gz as NIfTI \(.+\); replace or remove") as e:
        load_dataset(root, image_size=16)
    assert "\n" not in str(e.value)
    (root / "images" / "scan.nii.gz").unlink()
    (root / "images" / "scan.dcm").write_bytes(b"\x00" * 200)
    with pytest.raises(DataError, match=r"cannot read image scan\.dcm as DICOM"):
        load_dataset(root, image_size=16)


# ---------------------------------------------------------------- masks by meaning


def test_palette_mask_is_read_through_its_palette(tmp_path: Path) -> None:
    root = make_dirs(tmp_path / "palette")
    indices = np.zeros((20, 20), dtype=np.uint8)  # index 0 is white: the background is index 1
    indices[:, :] = 1
    indices[2:8, 2:8] = 0  # 36 white pixels of 400: 9 % foreground
    mask = Image.fromarray(indices, mode="P")
    mask.putpalette([255, 255, 255, 0, 0, 0])
    mask.save(root / "masks" / "p.png")
    Image.fromarray(np.zeros((20, 20), dtype=np.uint8)).save(root / "images" / "p.png")
    ds = load_dataset(root, image_size=20)
    assert ds.masks[0, 0].sum() == 36 and ds.report["masks_mostly_foreground"] == 0
    mask.putpalette([0, 0, 0, 255, 255, 255])  # index 0 black: the indices are the values, as label tools mean
    mask.save(root / "masks" / "p.png")
    assert load_dataset(root, image_size=20, label=1).masks[0, 0].sum() == 400 - 36


def test_rgba_mask_with_the_shape_only_in_alpha_is_read_from_alpha(tmp_path: Path) -> None:
    root = make_dirs(tmp_path / "alpha")
    rgba = np.zeros((20, 20, 4), dtype=np.uint8)
    rgba[..., :3] = 255  # white everywhere: the colour says nothing
    rgba[5:10, 5:10, 3] = 255
    Image.fromarray(rgba, mode="RGBA").save(root / "masks" / "a.png")
    Image.fromarray(np.zeros((20, 20), dtype=np.uint8)).save(root / "images" / "a.png")
    assert load_dataset(root, image_size=20).masks[0, 0].sum() == 25


def test_mostly_foreground_masks_are_reported(tmp_path: Path) -> None:
    root = make_dirs(tmp_path / "inverted")
    mask = np.full((20, 20), 255, dtype=np.uint8)
    mask[2:6, 2:6] = 0  # drawn inverted: background white
    Image.fromarray(mask).save(root / "masks" / "i.png")
    Image.fromarray(np.zeros((20, 20), dtype=np.uint8)).save(root / "images" / "i.png")
    ds = load_dataset(root, image_size=20)
    assert ds.report["masks_mostly_foreground"] == 1
    assert any("1 masks cover over 50% of their image" in note for note in ds.notes)


# ---------------------------------------------------------------- patients


def grouped_root(tmp_path: Path, nested: bool) -> Path:
    root = make_dirs(tmp_path / ("nested" if nested else "flat"))
    for case in ("c01", "c02", "c03"):
        for frame in range(2):
            name = f"{case}/f{frame}" if nested else f"{case}_f{frame}"
            (root / "images" / name).parent.mkdir(parents=True, exist_ok=True)
            (root / "masks" / name).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((16, 16), 9, dtype=np.uint8)).save(root / "images" / f"{name}.png")
            Image.fromarray(square_mask((16, 16))).save(root / "masks" / f"{name}.png")
    return root


def test_subfolders_of_images_are_patients(tmp_path: Path) -> None:
    root = grouped_root(tmp_path, nested=True)
    (root / "images" / ".ipynb_checkpoints").mkdir()  # hidden folders and files are not data
    Image.fromarray(np.zeros((16, 16), dtype=np.uint8)).save(root / "images" / ".ipynb_checkpoints" / "x.png")
    ds = load_dataset(root, image_size=16)
    assert ds.patients.tolist() == [0, 0, 1, 1, 2, 2]
    assert ds.ids[:2] == ["p000_i000", "p000_i001"]
    assert "patients by subfolder of images/" in ds.notes
    assert ds.sources[1].image == "images/c01/f1.png"
    assert "c01" not in " ".join(ds.ids + ds.notes + [str(ds.report)])  # case folders may carry names


def test_patient_pattern_groups_flat_files_and_names_a_file_that_does_not_match(tmp_path: Path) -> None:
    root = grouped_root(tmp_path, nested=False)
    flat = load_dataset(root, image_size=16)
    assert flat.num_patients == 6 and any(note.startswith("patients: one per file") for note in flat.notes)
    ds = load_dataset(root, image_size=16, patient_pattern=r"^(c\d+)_")
    assert ds.patients.tolist() == [0, 0, 1, 1, 2, 2]
    assert "patients from --patient-pattern (3 found)" in ds.notes
    with pytest.raises(DataError, match=r"image images/c01_f0 does not match --patient-pattern '\^\(x\)'"):
        load_dataset(root, image_size=16, patient_pattern="^(x)")


# ---------------------------------------------------------------- errors


def test_an_image_folder_without_readable_images_says_so(tmp_path: Path) -> None:
    root = make_dirs(tmp_path / "gifs")
    (root / "images" / "a.gif").write_bytes(b"GIF89a")
    (root / "images" / "notes.txt").write_text("x")
    Image.fromarray(square_mask((16, 16))).save(root / "masks" / "a.png")
    with pytest.raises(DataError, match=r"no readable image in .*images: it holds only \.gif, \.txt files; "
                                        r"useg reads .*\.bmp"):
        load_dataset(root, image_size=16)
    (root / "images" / "a.png").write_bytes((root / "masks" / "a.png").read_bytes())
    (root / "masks" / "a.png").rename(root / "masks" / "a.gif")
    with pytest.raises(DataError, match=r"no readable mask in .*masks: it holds only \.gif files"):
        load_dataset(root, image_size=16)


def test_an_unreadable_image_is_one_line_with_the_reason(tmp_path: Path) -> None:
    root = make_dirs(tmp_path / "garbage")
    (root / "images" / "a.bmp").write_bytes(b"BM garbage")
    Image.fromarray(square_mask((16, 16))).save(root / "masks" / "a.png")
    with pytest.raises(DataError, match=r"^cannot read image a\.bmp \(.+\); replace or remove the file$"):
        load_dataset(root, image_size=16)


def test_a_very_large_image_gives_no_raw_pillow_warning(tmp_path: Path, monkeypatch) -> None:
    root = make_dirs(tmp_path / "big")
    Image.fromarray(np.zeros((40, 40), dtype=np.uint8)).save(root / "images" / "big.png")
    Image.fromarray(square_mask((40, 40))).save(root / "masks" / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 1600 pixels: over the warning size, under twice it
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(load_dataset(root, image_size=16)) == 1
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)  # over twice the limit: refused, with the limit named
    # The masks are surveyed first, so the mask of the pair is the file named.
    with pytest.raises(DataError, match=r"^mask big\.png is too large to read \(1600 pixels, over the limit of "
                                        r"1000\); downscale it first$"):
        load_dataset(root, image_size=16)


def test_an_empty_or_truncated_mask_is_named_as_the_mask_not_the_image(tmp_path: Path) -> None:
    root = make_dirs(tmp_path / "broken")
    noisy = np.random.default_rng(0).integers(0, 2, (64, 64)).astype(np.uint8) * 255  # compresses badly
    for name in ("s1", "s5"):
        Image.fromarray(np.full((64, 64), 80, dtype=np.uint8)).save(root / "images" / f"{name}.png")
        Image.fromarray(noisy).save(root / "masks" / f"{name}.png")
    good = (root / "masks" / "s5.png").read_bytes()
    (root / "masks" / "s5.png").write_bytes(b"")
    with pytest.raises(DataError, match=r"^cannot read mask s5\.png \(the file is empty: 0 bytes\); replace or "
                                        r"remove the file$"):
        load_dataset(root, image_size=16)
    (root / "masks" / "s5.png").write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError, match=r"^cannot read mask s5\.png \(image file is truncated\)"):
        load_dataset(root, image_size=16)
    (root / "masks" / "s5.png").write_bytes(good)
    (root / "images" / "s5.png").write_bytes(b"")
    with pytest.raises(DataError, match=r"^cannot read image s5\.png \(the file is empty: 0 bytes\)"):
        load_dataset(root, image_size=16)
    (root / "images" / "s5.png").unlink()
    (root / "masks" / "s5.png").unlink()
    Image.fromarray(np.zeros((16, 16), dtype=np.uint8)).save(root / "images" / "scan.png")
    for mask in ("scan.nii.gz", "scan.dcm"):
        (root / "masks" / mask).write_bytes(b"")
        with pytest.raises(DataError, match=rf"^cannot read mask {mask.replace('.', '[.]')} as (NIfTI|DICOM) \("):
            load_dataset(root, image_size=16)
        (root / "masks" / mask).unlink()


def test_floating_point_masks_are_labels_when_whole_and_thresholded_at_one_half_when_fractional(tmp_path):
    root = make_dirs(tmp_path / "float")
    soft = np.zeros((16, 16), dtype=np.float32)
    soft[4:12, 4:12] = 0.8  # a probability map
    soft[4:12, 2:4] = 0.3
    Image.fromarray(soft, mode="F").save(root / "masks" / "p.tif")
    Image.fromarray(np.zeros((16, 16), dtype=np.uint8)).save(root / "images" / "p.png")
    ds = load_dataset(root, image_size=16)
    assert ds.classes == ["foreground"] and ds.masks[0, 0].sum() == 64  # 0.8 kept, 0.3 dropped (was all 0)
    Image.fromarray(np.where(soft > 0.5, 2.0, 0.0).astype(np.float32), mode="F").save(root / "masks" / "p.tif")
    assert load_dataset(root, image_size=16, label=2).masks[0, 0].sum() == 64

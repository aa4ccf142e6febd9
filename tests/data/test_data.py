"""Specification of useg.data: loaders for every layout, patient-level splits, in-context tasks."""

from __future__ import annotations

import json
import re
import unicodedata
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from useg.data import (
    OVATUS_CLASSES,
    SYNTHETIC_CLASSES,
    SegDataset,
    Split,
    TaskSampler,
    load_dataset,
    make_batch,
    make_synthetic,
    split_by_patient,
    validation_tasks,
)
from useg.errors import ConfigError, DataError

# ---------------------------------------------------------------- helpers


def save_image(path: Path, width: int = 100, height: int = 80, rgb: bool = True) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :].repeat(height, 0)
    grey = x.astype(np.uint8)
    array = np.stack([grey, grey // 2, 255 - grey], axis=2) if rgb else grey
    Image.fromarray(array).save(path)


def save_mask(path: Path, mask: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask.astype(np.uint8)).save(path)


def square(x0: float, y0: float, x1: float, y1: float) -> list[list[float]]:
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]


def entry(name: str, labels: list[str], points: list) -> dict:
    return {"image_name": name, "imageWidth": 100, "imageHeight": 80, "labels": labels, "points": points}


PATIENTS = ["167_Nguyễn Thị Á", "187_BN 12345_Trần Văn B", "190_Lê Thị Ç", "195_Đỗ Minh"]
NAME_FRAGMENTS = ["Nguyễn", "Trần", "Lê", "Đỗ", "Thị", "12345", "167_", "187_"]


def ovatus_lines() -> list[dict]:
    a, b, c, d = PATIENTS
    return [
        {"patient_name": a, "images": [
            # overlapping polygons of two classes
            entry("a.jpg", ["nang_da_thuy", "u_dac"], [square(20, 20, 70, 60), square(40, 30, 90, 70)]),
            # two polygons of one class: OR'ed
            entry("b.jpg", ["u_bi", "u_bi"], [square(10, 10, 30, 30), square(60, 40, 90, 70)]),
            # a 2-point polygon is skipped, the image kept
            entry("c.jpg", ["u_dac", "nang_don_thuy"], [square(10, 10, 50, 50), [[1, 1], [5, 5]]]),
        ]},
        {"patient_name": b, "images": [
            entry("d.jpg", ["nang_don_thuy"], [square(30, 20, 60, 50)]),  # file saved as d.JPG
            entry("missing.jpg", ["u_bi"], [square(30, 20, 60, 50)]),
        ]},
        {"patient_name": c, "images": [
            entry("e.png", ["nang_da_thuy_dac"], [square(30, 20, 60, 50)]),
            entry("f.jpg", ["u_bi"], [[[1, 1], [5, 5]]]),  # no usable polygon
        ]},
        {"patient_name": d, "images": [
            entry("g.jpg", ["nang_don_thuy_dac", "u_bi"], [square(10, 10, 40, 40), square(50, 30, 80, 60)]),
        ]},
    ]


def write_jsonl(path: Path, lines: list) -> None:
    text = "\n".join(line if isinstance(line, str) else json.dumps(line, ensure_ascii=False) for line in lines)
    path.write_text(text + "\n", encoding="utf-8")


@pytest.fixture
def ovatus_root(tmp_path: Path) -> Path:
    root = tmp_path / "ovatus"
    files = {0: ["a.jpg", "b.jpg", "c.jpg"], 1: ["d.JPG"], 2: ["e.png", "f.jpg"], 3: ["g.jpg"]}
    for patient, names in files.items():
        # The third folder is stored decomposed (NFD), as macOS writes it; the JSONL uses NFC.
        folder_name = unicodedata.normalize("NFD" if patient == 2 else "NFC", PATIENTS[patient])
        for name in names:
            save_image(root / "US_map4" / folder_name / name)
    lines = ovatus_lines()
    write_jsonl(root / "mapping_normalized4.jsonl", [lines[0], "", lines[1], lines[2], "   ", lines[3]])
    return root


def assert_anonymous(*texts: str) -> None:
    for text in texts:
        for fragment in NAME_FRAGMENTS:
            assert unicodedata.normalize("NFC", fragment) not in unicodedata.normalize("NFC", text)


def tiny_dataset(presence: np.ndarray, patients: np.ndarray, classes: list[str]) -> SegDataset:
    """A dataset whose class masks are full squares wherever `presence` says so."""
    n, c = presence.shape
    masks = np.zeros((n, c, 8, 8), dtype=bool)
    masks[presence] = True
    images = (np.arange(n, dtype=np.float32)[:, None, None] / n).repeat(8, 1).repeat(8, 2)
    ids = [f"p{p:03d}_i{i:03d}" for i, p in enumerate(patients)]
    return SegDataset(images, masks, classes, patients.astype(np.int64), ids, "synthetic", {})


# ---------------------------------------------------------------- Ovatus


def test_ovatus_loads_polygons_per_class_and_counts_what_it_skipped(ovatus_root: Path) -> None:
    ds = load_dataset(ovatus_root, image_size=50)
    assert ds.source == "ovatus"
    assert ds.classes == OVATUS_CLASSES
    assert ds.images.shape == (6, 50, 50) and ds.images.dtype == np.float32
    assert ds.masks.shape == (6, 6, 50, 50) and ds.masks.dtype == bool
    assert 0.0 <= ds.images.min() and ds.images.max() <= 1.0
    assert ds.patients.tolist() == [0, 0, 0, 1, 2, 3]
    assert ds.ids == ["p000_i000", "p000_i001", "p000_i002", "p001_i000", "p002_i000", "p003_i000"]
    report = ds.report
    assert report["patients"] == 4 and report["images"] == 6
    assert report["skipped_polygons"] == 2
    assert report["missing_images"] == 1
    assert report["images_without_labels"] == 1
    assert report["masks_u_bi"] == 2 and report["masks_nang_don_thuy"] == 1
    assert ds.notes == ["patients: one per patient folder",
                        "1 images without a usable polygon and 0 whose polygons vanish at this size left out"]


def test_ovatus_masks_follow_polygons_in_original_coordinates(ovatus_root: Path) -> None:
    ds = load_dataset(ovatus_root, image_size=50)
    cls = {name: index for index, name in enumerate(ds.classes)}

    def at(image: int, name: str, x: float, y: float) -> bool:  # original-pixel coordinates (100 x 80)
        return bool(ds.masks[image, cls[name], int(y * 50 / 80), int(x * 50 / 100)])

    # overlap of two classes in image a
    assert at(0, "nang_da_thuy", 55, 45) and at(0, "u_dac", 55, 45)
    assert at(0, "nang_da_thuy", 25, 25) and not at(0, "u_dac", 25, 25)
    # both polygons of one class in image b, nothing between them
    assert at(1, "u_bi", 20, 20) and at(1, "u_bi", 75, 55) and not at(1, "u_bi", 45, 35)
    # the 2-point polygon drew nothing
    assert not ds.masks[2, cls["nang_don_thuy"]].any()


def test_ovatus_ids_and_report_carry_no_patient_names(ovatus_root: Path) -> None:
    ds = load_dataset(ovatus_root, image_size=32)
    assert all(re.fullmatch(r"p\d{3}_i\d{3}", image) for image in ds.ids)
    assert_anonymous(" ".join(ds.ids), json.dumps(ds.report), " ".join(ds.classes), " ".join(ds.notes))


def test_ovatus_class_subset_keeps_fixed_order_and_rejects_unknown_names(ovatus_root: Path) -> None:
    ds = load_dataset(ovatus_root, image_size=32, classes=["u_dac", "u_bi"])
    assert ds.classes == ["u_bi", "u_dac"]
    assert ds.masks.shape[1] == 2 and ds.masks.any(axis=(2, 3)).any(axis=1).all()
    with pytest.raises(DataError, match="valid classes: nang_da_thuy"):
        load_dataset(ovatus_root, image_size=32, classes=["tumor"])


def test_ovatus_malformed_line_names_file_and_line(ovatus_root: Path) -> None:
    lines = ovatus_lines()
    broken = '{"patient_name": "x", "images": ['
    write_jsonl(ovatus_root / "mapping_normalized4.jsonl", [lines[0], "", broken, lines[1]])
    with pytest.raises(DataError, match=r"mapping_normalized4\.jsonl line 3: invalid JSON"):
        load_dataset(ovatus_root, image_size=32)


def test_ovatus_missing_annotation_file_suggests_annotations_flag(ovatus_root: Path) -> None:
    (ovatus_root / "mapping_normalized4.jsonl").unlink()
    with pytest.raises(DataError, match="--annotations"):
        load_dataset(ovatus_root, image_size=32)
    with pytest.raises(DataError, match="--annotations"):
        load_dataset(ovatus_root, image_size=32, annotations=ovatus_root / "nope.jsonl")


def test_ovatus_annotations_override_and_image_folder_given_directly(ovatus_root: Path, tmp_path: Path) -> None:
    moved = tmp_path / "elsewhere" / "polygons.jsonl"
    moved.parent.mkdir()
    (ovatus_root / "mapping_normalized4.jsonl").rename(moved)
    assert len(load_dataset(ovatus_root, image_size=32, annotations=moved)) == 6
    moved.rename(ovatus_root / "mapping_normalized4.jsonl")
    # --data pointing at US_map4 itself finds the JSONL in its parent
    assert len(load_dataset(ovatus_root / "US_map4", image_size=32)) == 6


def test_ovatus_polygons_with_nan_infinite_or_absurd_points_are_skipped_and_counted(ovatus_root: Path) -> None:
    lines = ovatus_lines()
    lines[3]["images"][0]["labels"] += ["u_dac", "u_dac", "u_dac"]
    lines[3]["images"][0]["points"] += [
        [[10, 10], [float("nan"), 5], [40, 40]], [[10, 10], [1e20, 10], [50, 70]], [[0, 0], [9, 0], [9, 1e308 * 10]]]
    write_jsonl(ovatus_root / "mapping_normalized4.jsonl", lines)
    ds = load_dataset(ovatus_root, image_size=50)
    assert ds.report["skipped_bad_coordinates"] == 3 and ds.report["images"] == 6
    assert not ds.masks[5, ds.classes.index("u_dac")].any()  # nothing drawn from them
    assert ds.masks[5].any(axis=(1, 2)).sum() == 2  # the image keeps its two good polygons
    assert [source.image for source in ds.sources[3:4]] == [f"US_map4/{PATIENTS[1]}/d.JPG"]


def test_ovatus_unreadable_image_is_named_by_anonymous_id_and_file_name(ovatus_root: Path) -> None:
    (ovatus_root / "US_map4" / PATIENTS[3] / "g.jpg").write_bytes(b"not a jpeg at all")
    with pytest.raises(DataError, match=r"p003_i000 \(g\.jpg\)") as error:
        load_dataset(ovatus_root, image_size=32)
    assert_anonymous(str(error.value))


# ---------------------------------------------------------------- images/ + masks/


def folders_root(tmp_path: Path) -> Path:
    root = tmp_path / "folders"
    mask = np.zeros((30, 40), dtype=np.uint8)
    mask[5:20, 10:30] = 1
    save_image(root / "images" / "a.png", 40, 30, rgb=False)
    save_mask(root / "masks" / "a.png", mask * 255)
    save_image(root / "images" / "b.JPG", 40, 30, rgb=True)
    save_mask(root / "masks" / "b.png", mask)
    return root


def test_folders_binary_masks_0_255_and_0_1_and_rgb_image(tmp_path: Path) -> None:
    ds = load_dataset(folders_root(tmp_path), image_size=20)
    assert ds.source == "folders" and ds.classes == ["foreground"]
    assert ds.images.shape == (2, 20, 20) and ds.masks.shape == (2, 1, 20, 20)
    assert ds.patients.tolist() == [0, 1]
    expected = np.zeros((20, 20), dtype=bool)
    expected[4:13, 5:15] = True  # rows 5..19 of 30 and columns 10..29 of 40, scaled to 20
    for mask in ds.masks[:, 0]:
        assert (mask == expected).mean() > 0.95
    # RGB grey is the mean of the channels: (g + g // 2 + 255 - g) / 3 at the left edge is 85
    assert ds.images[1, 10, 0] == pytest.approx(85 / 255, abs=0.03)


def test_folders_label_map_trains_every_value_and_label_selects_one(tmp_path: Path) -> None:
    root = tmp_path / "labels"
    labels = np.zeros((30, 40), dtype=np.uint8)
    labels[0:10] = 1
    labels[15:25, 5:20] = 2
    save_image(root / "images" / "x.tif", 40, 30)
    save_mask(root / "masks" / "x.png", labels)
    every = load_dataset(root, image_size=30)
    assert every.classes == ["label_1", "label_2"] and every.masks.shape == (1, 2, 30, 30)
    assert any("label map" in note for note in every.notes)
    ds = load_dataset(root, image_size=30, label=2)
    assert ds.classes == ["label_2"] and ds.masks.shape == (1, 1, 30, 30)
    assert ds.masks[0, 0].sum() == ds.masks[0, 0, 15:25, 4:16].sum() > 0


def test_folders_image_without_mask_is_named(tmp_path: Path) -> None:
    root = folders_root(tmp_path)
    save_image(root / "images" / "lonely.png", 40, 30)
    with pytest.raises(DataError, match=r"image lonely\.png has no mask"):
        load_dataset(root)


def test_folders_mask_of_another_size_names_both_files(tmp_path: Path) -> None:
    root = folders_root(tmp_path)
    save_mask(root / "masks" / "a.png", np.ones((10, 10), dtype=np.uint8))
    with pytest.raises(DataError, match=r"mask a\.png is 10x10 but image a\.png is 40x30"):
        load_dataset(root)


def test_folders_unreadable_image_is_named(tmp_path: Path) -> None:
    root = folders_root(tmp_path)
    (root / "images" / "a.png").write_bytes(b"\x00garbage bytes")
    with pytest.raises(DataError, match=r"cannot read image a\.png"):
        load_dataset(root)


# ---------------------------------------------------------------- MMOTU


def test_mmotu_binary_annotations_and_predefined_split(tmp_path: Path) -> None:
    otu = tmp_path / "MMOTU" / "OTU_2d"
    for number in range(1, 6):
        save_image(otu / "images" / f"{number}.JPG", 50, 40)
        mask = np.zeros((40, 50), dtype=np.uint8)
        mask[10 : 20 + number, 10:30] = 255
        save_mask(otu / "annotations" / f"{number}_binary.PNG", mask)
    (otu / "train.txt").write_text("1\n2\n3\n")
    (otu / "val.txt").write_text("4\n5\n")
    ds = load_dataset(tmp_path / "MMOTU", image_size=16)
    assert ds.source == "mmotu" and ds.classes == ["tumour"]
    assert ds.predefined_split == {"train": [0, 1, 2], "val": [3, 4]}
    assert ds.notes == ["patients: one per image (MMOTU has no patient ids)"]
    split = split_by_patient(ds, seed=3)
    # No test list: one of the three listed training images is carved off as the test part (issue 29).
    assert split.val.tolist() == [3, 4] and len(split.test) == 1
    assert sorted(split.train.tolist() + split.test.tolist()) == [0, 1, 2]


def test_unknown_layout_and_missing_folder_are_data_errors(tmp_path: Path) -> None:
    (tmp_path / "stuff").mkdir()
    (tmp_path / "stuff" / "readme.txt").write_text("hello")
    with pytest.raises(DataError, match="unknown data layout.*US_map4.*images/ \\+ masks/"):
        load_dataset(tmp_path / "stuff")
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(tmp_path / "absent")


# ---------------------------------------------------------------- synthetic


def test_synthetic_is_deterministic_per_seed_and_has_every_class() -> None:
    first = make_synthetic(32, seed=0, n_patients=6, images_per_patient=3)
    again = make_synthetic(32, seed=0, n_patients=6, images_per_patient=3)
    other = make_synthetic(32, seed=1, n_patients=6, images_per_patient=3)
    assert np.array_equal(first.images, again.images) and np.array_equal(first.masks, again.masks)
    assert not np.array_equal(first.images, other.images)
    assert first.classes == SYNTHETIC_CLASSES and first.source == "synthetic"
    assert first.images.shape == (18, 32, 32) and first.masks.shape == (18, 3, 32, 32)
    assert 0.0 <= first.images.min() and first.images.max() <= 1.0
    assert first.class_presence().any(axis=0).all()
    assert first.class_presence().any(axis=1).all()  # every image has a lesion


def test_load_dataset_none_gives_the_synthetic_set() -> None:
    ds = load_dataset(None, image_size=16, seed=2)
    assert ds.source == "synthetic" and ds.images.shape[1:] == (16, 16)
    assert ds.report["patients"] == len(np.unique(ds.patients))


# ---------------------------------------------------------------- splits


@pytest.fixture(scope="module")
def synthetic() -> SegDataset:
    return make_synthetic(24, seed=0, n_patients=12, images_per_patient=4)


def test_split_keeps_each_patient_in_one_split_and_is_seeded(synthetic: SegDataset) -> None:
    split = split_by_patient(synthetic, seed=0)
    groups = [set(synthetic.patients[getattr(split, name)]) for name in ("train", "val", "test")]
    assert all(groups) and not (groups[0] & groups[1] or groups[0] & groups[2] or groups[1] & groups[2])
    assert sum(map(len, groups)) == 12 and [len(g) for g in groups] == [8, 2, 2]
    again = split_by_patient(synthetic, seed=0)
    assert split.to_dict() == again.to_dict()
    assert split.to_dict() != split_by_patient(synthetic, seed=1).to_dict()


def test_split_round_trips_through_anonymous_ids(synthetic: SegDataset) -> None:
    split = split_by_patient(synthetic, seed=5)
    saved = json.loads(json.dumps(split.to_dict()))
    assert all(re.fullmatch(r"p\d{3}_i\d{3}", image) for ids in saved.values() for image in ids)
    restored = Split.from_dict(saved, synthetic)
    assert all(np.array_equal(getattr(restored, n), getattr(split, n)) for n in ("train", "val", "test"))
    saved["val"].append("p999_i000")
    with pytest.raises(DataError, match="p999_i000"):
        Split.from_dict(saved, synthetic)


def test_a_saved_split_refuses_other_data_with_the_same_image_ids(synthetic: SegDataset) -> None:
    saved = json.loads(json.dumps(split_by_patient(synthetic, seed=5).to_dict()))
    assert set(saved["fingerprints"]) == {image for name in ("train", "val", "test") for image in saved[name]}
    Split.from_dict(saved, make_synthetic(24, seed=0, n_patients=12, images_per_patient=4))  # same data: accepted
    other = make_synthetic(24, seed=1, n_patients=12, images_per_patient=4)  # same ids, other pixels
    assert other.ids == synthetic.ids
    with pytest.raises(DataError, match=r"is not the image the run was saved with.*use the same data"):
        Split.from_dict(saved, other)
    del saved["fingerprints"]  # e.g. a hand-written --split-file: the ids alone decide
    Split.from_dict(saved, other)


def test_split_with_too_few_patients_is_an_error() -> None:
    ds = tiny_dataset(np.ones((4, 1), dtype=bool), np.array([0, 0, 1, 1]), ["a"])
    with pytest.raises(DataError, match="empty split"):
        split_by_patient(ds, seed=0)


# ---------------------------------------------------------------- tasks


def sampler_for(ds: SegDataset, **overrides) -> TaskSampler:
    settings = dict(support_size=4, seed=7, samples_per_epoch=10, augment=True)
    settings.update(overrides)
    return TaskSampler(ds, np.arange(len(ds)), **settings)


def test_supports_never_hold_the_target_or_its_patient(synthetic: SegDataset) -> None:
    sampler = sampler_for(synthetic, support_size=6)
    presence = synthetic.class_presence()
    for index in range(300):
        task = sampler.task(epoch=0, index=index)
        assert task.target not in task.supports
        assert synthetic.patients[task.target] not in synthetic.patients[task.supports]
        assert presence[task.target, task.cls] and presence[task.supports, task.cls].all()


def test_batches_are_pure_functions_of_seed_epoch_and_index(synthetic: SegDataset) -> None:
    first = sampler_for(synthetic).batch(epoch=2, batch_index=1, batch_size=4)
    np.random.seed(123)  # the global generators must not matter
    torch.manual_seed(123)
    second = sampler_for(synthetic).batch(epoch=2, batch_index=1, batch_size=4)
    for name, tensor in vars(first).items():
        assert torch.equal(tensor, vars(second)[name]), name
    other_epoch = sampler_for(synthetic).batch(epoch=3, batch_index=1, batch_size=4)
    assert not torch.equal(first.target_image, other_epoch.target_image)
    task = sampler_for(synthetic).task(epoch=2, index=5)
    assert first.targets[1] == task.target and first.supports[1].tolist() == task.supports.tolist()


def test_batch_shapes_labels_and_last_partial_batch(synthetic: SegDataset) -> None:
    sampler = sampler_for(synthetic)
    assert sampler.num_batches(4) == 3
    batch = sampler.batch(epoch=0, batch_index=2, batch_size=4)
    assert batch.target_image.shape == (2, 1, 24, 24) and batch.target_label.shape == (2, 1, 24, 24)
    assert batch.support_images.shape == (2, 4, 1, 24, 24) and batch.support_labels.shape == (2, 4, 1, 24, 24)
    assert batch.target_image.dtype == torch.float32 and batch.classes.dtype == torch.int64
    assert set(batch.support_labels.unique().tolist()) <= {0.0, 1.0}
    assert batch.target_label.flatten(1).amax(1).eq(1).all()  # augmentation keeps the lesion
    with pytest.raises(IndexError):
        sampler.batch(epoch=0, batch_index=3, batch_size=4)


def test_unaugmented_batch_matches_the_dataset(synthetic: SegDataset) -> None:
    batch = sampler_for(synthetic, augment=False).batch(epoch=0, batch_index=0, batch_size=3)
    for b in range(3):
        target, cls = int(batch.targets[b]), int(batch.classes[b])
        assert np.array_equal(batch.target_image[b, 0].numpy(), synthetic.images[target])
        assert np.array_equal(batch.target_label[b, 0].numpy(), synthetic.masks[target, cls])


def test_rare_class_is_sampled_as_often_as_common_one() -> None:
    presence = np.zeros((40, 2), dtype=bool)
    presence[:, 0] = True
    presence[[0, 2, 4, 6], 1] = True  # 4 images of 4 patients
    ds = tiny_dataset(presence, np.arange(40) // 2, ["common", "rare"])
    sampler = sampler_for(ds, support_size=5, augment=False)  # rare: 3 candidates -> with replacement
    tasks = [sampler.task(0, index) for index in range(600)]
    rare = [task for task in tasks if task.cls == 1]
    assert 0.42 < len(rare) / 600 < 0.58
    assert all(task.target not in task.supports and len(task.supports) == 5 for task in rare)
    common = [task for task in tasks if task.cls == 0]
    assert all(len(set(task.supports.tolist())) == 5 for task in common)  # enough: no repeats


def test_support_size_beyond_every_pool_says_how_many_there_are() -> None:
    ds = tiny_dataset(np.ones((6, 1), dtype=bool), np.arange(6), ["a"])
    with pytest.raises(DataError, match=r"only 5 training images.*--support-size 8"):
        sampler_for(ds, support_size=8)


def test_no_eligible_class_is_an_error() -> None:
    ds = tiny_dataset(np.ones((3, 1), dtype=bool), np.zeros(3, dtype=int), ["a"])  # one patient only
    with pytest.raises(DataError, match="no class has a training image"):
        sampler_for(ds)


def test_validation_tasks_are_fixed_and_leak_free(synthetic: SegDataset) -> None:
    split = split_by_patient(synthetic, seed=0)
    first = validation_tasks(synthetic, split.val, split.train, support_size=5, seed=1)
    again = validation_tasks(synthetic, split.val, split.train, support_size=5, seed=1)
    presence = synthetic.class_presence()
    assert len(first) == presence[split.val].sum()
    def described(tasks):
        return [(task.target, task.cls, task.supports.tolist()) for task in tasks]

    assert described(first) == described(again)
    train = set(split.train.tolist())
    for task in first:
        assert set(task.supports.tolist()) <= train and task.target not in task.supports
        assert synthetic.patients[task.target] not in synthetic.patients[task.supports]
    batch = make_batch(synthetic, first[:3])
    assert batch.support_images.shape == (3, 5, 1, 24, 24)


def test_images_kept_empty_are_negative_targets_and_never_supports() -> None:
    presence = np.zeros((12, 1), dtype=bool)
    presence[:8, 0] = True  # images 8..11: empty masks kept with --keep-empty
    ds = tiny_dataset(presence, np.arange(12), ["a"])
    sampler = sampler_for(ds, support_size=3, augment=False)
    tasks = [sampler.task(0, index) for index in range(400)]
    negatives = [task for task in tasks if task.target >= 8]
    assert 0.2 < len(negatives) / len(tasks) < 0.45  # 4 of 12 targets
    assert all((task.supports < 8).all() for task in tasks)
    batch = make_batch(ds, negatives[:2])
    assert batch.target_label.sum() == 0 and batch.support_labels.flatten(1).amax(1).eq(1).all()
    assert all(task.target < 8 for task in validation_tasks(ds, np.arange(12), np.arange(12), support_size=3, seed=0))


def test_draw_version_2_flips_and_turns_exactly_as_version_1_and_changes_only_the_noise(synthetic: SegDataset) -> None:
    # Version 2 draws the same tasks, flips, turns, contrasts and brightnesses from the same
    # generators as version 1; only the noise comes from a bank. Over 40 tasks every flip and
    # turn occurs, so the labels (no noise) must be bit-identical and the images close.
    old = sampler_for(synthetic, draw_version=1, samples_per_epoch=40)
    new = sampler_for(synthetic, draw_version=2, samples_per_epoch=40)
    for batch_index in range(10):
        before, after = old.batch(1, batch_index, 4), new.batch(1, batch_index, 4)
        for name in ("target_label", "support_labels", "targets", "supports", "classes"):
            assert torch.equal(getattr(before, name), getattr(after, name)), name
        for name in ("target_image", "support_images"):
            difference = (getattr(before, name) - getattr(after, name)).abs()
            assert difference.max() < 0.3 and difference.mean() < 0.03, name
            assert getattr(after, name).is_contiguous() and 0 <= getattr(after, name).min() <= 1
    again = sampler_for(synthetic, draw_version=2, samples_per_epoch=40).batch(1, 3, 4)
    for name, tensor in vars(new.batch(1, 3, 4)).items():
        assert torch.equal(tensor, vars(again)[name]), name


def test_version_2_noise_is_gaussian_with_the_drawn_strength(synthetic: SegDataset) -> None:
    from useg.data.augment import MAX_NOISE_STD, noise_bank

    bank = noise_bank(seed=7, pixels=24 * 24)
    assert len(bank) == 2**20 and abs(bank.mean()) < 0.01 and abs(bank.std() - 1) < 0.01
    assert np.array_equal(bank, noise_bank(seed=7, pixels=24 * 24))
    flat = np.full((8, 24, 24), 0.5, np.float32)  # a mid-grey image shows the noise alone (no clipping)
    rng = np.random.default_rng(3)
    images, labels = np.empty((1, 24, 24), np.float32), np.empty((7, 24, 24), np.float32)
    masks = np.zeros((8, 24, 24), bool)
    supports_out, labels_out = np.empty((7, 24, 24), np.float32), np.empty((7, 24, 24), np.float32)
    from useg.data.augment import augment_into

    augment_into(rng, lambda mirrored: flat.copy(), lambda mirrored: masks, bank, [images, supports_out],
                 [labels, labels_out])
    spread = np.concatenate([images, supports_out]).std(axis=(1, 2))
    assert (spread > 0).all() and (spread < 1.2 * MAX_NOISE_STD).all()


def test_an_unknown_draw_version_is_refused_and_old_checkpoints_keep_version_1(synthetic: SegDataset) -> None:
    from useg.data.tasks import DRAW_VERSION, draw_version_to_resume
    from useg.training.state import saved_draw_version

    with pytest.raises(ConfigError, match="version 4"):
        sampler_for(synthetic, draw_version=4)
    assert draw_version_to_resume(None) == DRAW_VERSION == 3
    assert draw_version_to_resume(saved_draw_version({"sampler_state": {"batch_index": 2}})) == 1  # before versions
    assert draw_version_to_resume(saved_draw_version({"sampler_state": (1, 2, 1.0, 2)})) == 1  # the old tuple
    assert draw_version_to_resume(saved_draw_version({"sampler_state": {"draw_version": 2}})) == 2

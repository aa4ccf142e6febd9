"""Several datasets in one run (useg.data.collection): one clear line for a bad dataset, patient-level splits
per dataset, tasks drawn from one dataset's training patients by weight, class names, one-dataset runs as
before, what a resume accepts and refuses, and the memory the merged arrays take."""

from __future__ import annotations

import gc
import json
import re
import shutil
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from medical_files import save_grey, write_synthetic_folder
from tiny import TINY, error_line, final_state

from useg.cli import main
from useg.config import build_config, read_config_file
from useg.data import (SegDataset, TaskSampler, data_options, load_dataset, make_synthetic, split_by_patient,
                       validation_tasks)
from useg.data import collection
from useg.data.collection import load_data, merge
from useg.data.index import INDEX_NAME
from useg.data.splits import ANONYMOUS_ID, SPLIT_NAMES, Split
from useg.data.tasks import SYNTHETIC, Recipe
from useg.training.state import saved_split

FLAGS = [*TINY, "--quiet", "--vis-every", "0"]


def write_cases(root: Path, patients: int, per_patient: int, seed: int, empty_every: int = 0) -> Path:
    """images/<case>/ + masks/<case>/ of `patients` cases with `per_patient` scans each (one patient per case
    folder, every lesion in one 0/255 mask); every `empty_every`-th scan gets an empty mask."""
    data = make_synthetic(image_size=40, seed=seed, n_patients=patients, images_per_patient=per_patient)
    for index, (image, mask) in enumerate(zip(data.images, data.masks.any(axis=1))):
        name = f"case{index // per_patient}/s{index % per_patient}.png"
        save_grey(root / "images" / name, image)
        save_grey(root / "masks" / name, (mask & bool(not empty_every or index % empty_every)).astype(np.float32))
    return root


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> list[Path]:
    """Three datasets of different sizes, patients of two or three scans; the third has empty scans too."""
    root = tmp_path_factory.mktemp("datasets")
    return [write_cases(root / "a", 6, 2, seed=1), write_cases(root / "b", 5, 3, seed=2),
            write_cases(root / "c", 10, 2, seed=3, empty_every=3)]


def paths(*folders: Path) -> list[str]:
    return [str(folder) for folder in folders]


# --- one clear line for a bad dataset ------------------------------------------------------------------


def unknown_layout(root: Path) -> Path:
    (root / "notes").mkdir(parents=True)
    (root / "notes" / "readme.txt").write_text("not images")
    return root


def bad_masks(root: Path) -> Path:
    write_synthetic_folder(root, 4, seed=9, size=(40, 40))
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(root / "masks" / "scan2.png")
    return root


@pytest.mark.parametrize("make_bad, reason", [
    (lambda root: root, "does not exist"),
    (unknown_layout, "unknown data layout"),
    (bad_masks, "mask scan2.png is 10x10 but image scan2.png is 40x40"),
], ids=["missing", "unknown-layout", "bad-masks"])
def test_a_bad_dataset_among_several_is_one_line_naming_which_and_leaves_nothing(folders, tmp_path, capsys,
                                                                                 make_bad, reason):
    bad = make_bad(tmp_path / "bad")
    run = tmp_path / "run"
    code = main(["train", "--run-dir", str(run), "--data", str(folders[0]), "--data", str(bad), *FLAGS])
    line = error_line(capsys)
    assert code != 0
    assert line.startswith(f"error: --data 2 of 2 ({bad}): ") and reason in line, line
    assert not run.exists()


def test_a_dataset_too_small_to_draw_a_task_from_is_one_line_naming_it(folders, tmp_path, capsys):
    tiny = write_synthetic_folder(tmp_path / "tiny", 3, seed=9, size=(40, 40))  # 1 training patient
    run = tmp_path / "run"
    code = main(["train", "--run-dir", str(run), "--data", str(folders[0]), "--data", str(tiny), *FLAGS])
    assert code != 0 and not run.exists()
    assert error_line(capsys) == "error: --data 2 of 2 (tiny) has no class with a training image and a support " \
                                 "image of another patient in its training split (1 training image); give it more " \
                                 "patients or leave it out of --data"


@pytest.mark.parametrize("flag, place", [("--data", "--data 2 of 2"), ("--held-out-data", "--held-out-data 1 of 1")])
def test_a_dataset_too_small_to_split_is_one_line_naming_it(folders, tmp_path, capsys, flag, place):
    two = write_synthetic_folder(tmp_path / "two", 2, seed=9, size=(40, 40))
    run = tmp_path / "run"
    code = main(["train", "--run-dir", str(run), "--data", str(folders[0]), flag, str(two), *FLAGS])
    assert code != 0 and not run.exists()
    assert error_line(capsys) == f"error: {place} ({two}): empty split: 2 patient(s) cannot fill train, val and " \
                                 "test; the data needs at least 3 patients"


def test_a_bad_held_out_dataset_names_its_own_flag_not_data(folders, tmp_path, capsys):
    missing = tmp_path / "missing"
    run = tmp_path / "run"
    code = main(["train", "--run-dir", str(run), "--data", str(folders[0]), "--held-out-data", str(missing), *FLAGS])
    line = error_line(capsys)
    assert code != 0 and not run.exists()
    assert line.startswith(f"error: --held-out-data 1 of 1 ({missing}): data folder {missing} does not exist; "
                           "pass --held-out-data with "), line
    assert "--data " not in line


def test_a_folder_given_twice_or_trained_on_and_held_out_is_refused(folders, tmp_path, capsys):
    # Twice, it would put the same scans in one dataset's training split and the other's test split.
    (tmp_path / "link").symlink_to(folders[1])
    run = tmp_path / "run"
    code = main(["train", "--run-dir", str(run), *data_flags(folders[1], folders[0], tmp_path / "link"), *FLAGS])
    assert code != 0 and not run.exists()
    assert error_line(capsys) == f"error: --data names the folder {folders[1]} twice (1 and 3 of 3); give each " \
                                 "dataset once"
    code = main(["train", "--run-dir", str(run), *data_flags(folders[0], folders[1]),
                 "--held-out-data", str(folders[2]), "--held-out-data", f"{folders[0]}/", *FLAGS])
    assert code != 0 and not run.exists()
    assert error_line(capsys) == f"error: --held-out-data {folders[0]} is also given as --data: a held-out " \
                                 "dataset is one the run never trains on; leave it out of one of them"


def data_flags(*folders: Path) -> list[str]:
    return [flag for folder in folders for flag in ("--data", str(folder))]


# --- patient-level splits, each dataset on its own ------------------------------------------------------


def test_each_dataset_is_split_by_patient_on_its_own_seeded_and_saved(folders):
    ds = load_data(paths(*folders), image_size=32, seed=0)
    split = split_by_patient(ds, seed=0)
    assert ds.datasets == ["a", "b", "c"]
    for number, folder in enumerate(folders):
        own = load_dataset(folder, image_size=32, seed=0)
        mine = np.flatnonzero(ds.image_datasets == number)
        assert [ds.ids[i] for i in mine] == [f"d{number + 1}/{image}" for image in own.ids]
        assert all(ANONYMOUS_ID.fullmatch(image) for image in own.ids)
        # The dataset's split is the one it gets on its own: its own train / val / test patients.
        alone = split_by_patient(own, seed=0)
        for name in SPLIT_NAMES:
            assert [ds.ids[i] for i in getattr(split, name) if i in mine] == \
                [f"d{number + 1}/{own.ids[i]}" for i in getattr(alone, name)], name
            assert len(set(getattr(split, name)) & set(mine)), (number, name)  # each part in every dataset
    parts = [set(ds.patients[getattr(split, name)]) for name in SPLIT_NAMES]
    assert not (parts[0] & parts[1]) and not (parts[0] & parts[2]) and not (parts[1] & parts[2])
    owners = [set(ds.patients[ds.image_datasets == number]) for number in range(3)]
    assert not (owners[0] & owners[1]) and not (owners[1] & owners[2]) and not (owners[0] & owners[2])
    # Seeded: the same seed splits the same; saved: the ids and fingerprints rebuild it.
    assert same_split(split, split_by_patient(load_data(paths(*folders), image_size=32, seed=0), seed=0))
    assert not same_split(split, split_by_patient(load_data(paths(*folders), image_size=32, seed=5), seed=5))
    saved = split.to_dict()
    assert set(saved["fingerprints"]) == set(ds.ids)
    assert same_split(Split.from_dict(saved, ds), split)


def same_split(first: Split, second: Split) -> bool:
    return all(np.array_equal(getattr(first, name), getattr(second, name)) for name in SPLIT_NAMES)


# --- tasks: one dataset's training patients, by weight -------------------------------------------------


def check_tasks(ds, split, batch) -> int:
    """Every real task of `batch` keeps to one dataset's training patients; returns how many were real."""
    train = set(split.train.tolist())
    real = 0
    for target, cls, supports in zip(batch.targets.tolist(), batch.classes.tolist(), batch.supports.tolist()):
        if target == SYNTHETIC:
            continue
        real += 1
        dataset = ds.class_datasets[cls]
        assert target in train and set(supports) <= train
        assert target not in supports
        assert not set(ds.patients[supports]) & {ds.patients[target]}
        assert ds.image_datasets[target] == dataset and set(ds.image_datasets[supports]) == {dataset}
        assert ds.masks[supports, cls].any(axis=(1, 2)).all()  # supports show the class
    return real


@pytest.mark.parametrize("recipe", [Recipe(), Recipe(synthetic_tasks=0.3)], ids=["real", "with-synthetic"])
def test_a_task_takes_target_and_supports_from_its_own_datasets_training_patients(folders, recipe):
    ds = load_data(paths(*folders), image_size=32, seed=0, keep_empty=1.0)
    split = split_by_patient(ds, seed=0)
    negatives = [i for i in split.train if not ds.masks[i].any()]
    assert negatives and set(ds.image_datasets[negatives]) == {2}  # the empty scans of c kept as negatives
    sampler = TaskSampler(ds, split.train, support_size=2, seed=0, samples_per_epoch=100, recipe=recipe)
    real, empty_targets = 0, 0
    for epoch in range(4):
        for index in range(sampler.num_batches(10)):
            batch = sampler.batch(epoch, index, 10)
            real += check_tasks(ds, split, batch)
            empty_targets += int(sum(t in negatives for t in batch.targets.tolist()))
    assert real >= 200 and empty_targets
    # Validation tasks too: val targets, supports of the target's own dataset from training patients.
    tasks = validation_tasks(ds, split.val, split.train, support_size=2, seed=0)
    assert {int(ds.image_datasets[task.target]) for task in tasks} == {0, 1, 2}
    for task in tasks:
        assert task.target in split.val and set(task.supports) <= set(split.train.tolist())
        dataset = ds.class_datasets[task.cls]
        assert set(ds.image_datasets[task.supports]) == {ds.image_datasets[task.target]} == {dataset}


def weighted_sampler(sizes: list[int], weights: list[float], classes: list[list[str]]) -> TaskSampler:
    parts = [make_synthetic(image_size=16, seed=number, n_patients=size, images_per_patient=1, classes=names)
             for number, (size, names) in enumerate(zip(sizes, classes))]
    names = [f"set{number}" for number in range(len(parts))]
    ds = merge(parts, names, weights, [split_by_patient(part, seed=0) for part in parts])
    return TaskSampler(ds, split_by_patient(ds, seed=0).train, support_size=1, seed=0, samples_per_epoch=4000,
                       augment=False)


def dataset_shares(sampler: TaskSampler, draws: int = 4000) -> np.ndarray:
    owners = [sampler.ds.class_datasets[sampler.task(0, index).cls] for index in range(draws)]
    return np.bincount(owners, minlength=len(sampler.ds.datasets)) / draws


def test_dataset_weights_set_the_share_of_tasks_of_each_dataset():
    shares = dataset_shares(weighted_sampler([30, 30], [3.0, 1.0], [["cyst"], ["cyst"]]))
    assert shares == pytest.approx([0.75, 0.25], abs=0.03)


def test_datasets_are_drawn_uniformly_by_default_so_a_small_one_is_not_drowned():
    # 60 images of three classes against 10 of one: still half the tasks each.
    shares = dataset_shares(weighted_sampler([60, 10], [1.0, 1.0], [None, ["solid"]]))
    assert shares == pytest.approx([0.5, 0.5], abs=0.03)


def test_weights_of_a_config_list_reach_the_sampler(folders, tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(f"data:\n  - path: {folders[0]}\n    weight: 3\n  - {folders[1]}\n")
    cfg = build_config(read_config_file(config))
    ds = load_data(cfg.data, image_size=32, seed=0, **data_options(cfg))
    assert ds.dataset_weights == [3.0, 1.0]
    sampler = TaskSampler(ds, split_by_patient(ds, seed=0).train, support_size=1, seed=0, samples_per_epoch=10,
                          augment=False)
    assert dataset_shares(sampler) == pytest.approx([0.75, 0.25], abs=0.03)


# --- classes and per-dataset options -------------------------------------------------------------------


def label_map_folder(root: Path, count: int = 6) -> Path:
    """images/ + masks/ label maps 0/128/255 (two classes), one patient per scan."""
    for number in range(count):
        labels = np.zeros((40, 40), dtype=np.uint8)
        labels[6 + number:30, 6:34] = 128
        labels[12:24, 12 + number:26] = 255
        save_grey(root / "images" / f"m{number}.png", np.full((40, 40), 0.1 * number + 0.2))
        (root / "masks").mkdir(exist_ok=True)
        Image.fromarray(labels).save(root / "masks" / f"m{number}.png")
    return root


def test_shared_class_names_get_their_dataset_and_per_dataset_options_apply(folders, tmp_path, capsys):
    maps = label_map_folder(tmp_path / "maps")
    config = tmp_path / "config.yaml"
    config.write_text(f"data:\n  - {folders[0]}\n  - {folders[1]}\n  - path: {maps}\n    label: 255\n")
    cfg = build_config(read_config_file(config))
    ds = load_data(cfg.data, image_size=32, seed=0, **data_options(cfg))
    # Both folders of binary masks call their class foreground; the label map's own class keeps its name.
    assert ds.classes == ["a/foreground", "b/foreground", "label_255"]
    assert ds.class_datasets == [0, 1, 2]
    assert load_data(paths(folders[0], maps), image_size=32, seed=0).classes == ["foreground", "label_128",
                                                                                  "label_255"]
    # The label on the third entry only: a whole run trains with it and saves the list as given.
    run = tmp_path / "run"
    assert main(["train", "--run-dir", str(run), "--config", str(config), "--epochs", "1", *FLAGS]) == 0
    state = final_state(run)
    assert state["config"]["data"] == [str(folders[0]), str(folders[1]), {"path": str(maps), "label": 255}]
    assert state["config"]["label"] is None


# --- one dataset: as it always was -----------------------------------------------------------------------


def test_a_one_dataset_run_saves_its_path_ids_and_batches_as_before(folders, tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--run-dir", str(run), "--data", str(folders[0]), "--epochs", "1", *FLAGS]) == 0
    state = final_state(run)
    assert state["config"]["data"] == str(folders[0]) and state["config"]["held_out_data"] == []
    split = saved_split(state)
    assert all(ANONYMOUS_ID.fullmatch(image) for name in SPLIT_NAMES for image in split[name])
    assert build_config({"data": [str(folders[0])]}).data == str(folders[0])
    merged, alone = (load(str(folders[0]), image_size=32, seed=0) for load in (load_data, load_dataset))
    assert merged.ids == alone.ids and not merged.datasets
    recipe = Recipe(task_augmentation=True, in_task_augmentation=True, synthetic_tasks=0.25)
    for settings in ({}, {"recipe": recipe}):
        batches = [TaskSampler(ds, split_by_patient(ds, seed=0).train, support_size=2, seed=0, samples_per_epoch=8,
                               **settings).batch(1, 0, 8) for ds in (merged, alone)]
        for name, tensor in vars(batches[0]).items():
            assert torch.equal(tensor, getattr(batches[1], name)), name


# --- resume: the same datasets ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_dataset_run(folders, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("two") / "run"
    assert main(["train", "--run-dir", str(run), "--data", str(folders[0]), "--data", str(folders[1]),
                 "--epochs", "1", *FLAGS]) == 0
    return run


@pytest.fixture
def run_copy(two_dataset_run, tmp_path) -> Path:
    return Path(shutil.copytree(two_dataset_run, tmp_path / "run"))


@pytest.mark.parametrize("chosen", [[0, 1, 2], [0]], ids=["added", "removed"])
def test_adding_or_removing_a_dataset_on_resume_is_one_line_saying_what_to_do(folders, run_copy, capsys, chosen):
    before = sorted(path.name for path in (run_copy / "checkpoints").iterdir())
    data = [flag for number in chosen for flag in ("--data", str(folders[number]))]
    code = main(["resume", "latest", "--run-dir", str(run_copy), *data, "--epochs", "2"])
    line = error_line(capsys)
    assert code != 0
    assert f"trained on 2 dataset(s) and this resume names {len(chosen)}" in line
    assert "start a new run" in line and "--pretrained" in line
    assert sorted(path.name for path in (run_copy / "checkpoints").iterdir()) == before


def test_the_datasets_in_another_order_on_resume_is_one_line_giving_the_runs_order(folders, run_copy, capsys):
    code = main(["resume", "latest", "--run-dir", str(run_copy), *data_flags(folders[1], folders[0]), "--epochs", "2"])
    assert code != 0
    assert error_line(capsys) == "error: cannot resume latest_checkpoint.pt: --data names the run's datasets in " \
                                 "another order; give them in the run's order: a, b"


def test_a_moved_dataset_folder_resumes_in_its_place(folders, run_copy, tmp_path):
    moved = Path(shutil.copytree(folders[1], tmp_path / "elsewhere" / "b"))
    assert main(["resume", "latest", "--run-dir", str(run_copy), "--data", str(folders[0]), "--data", str(moved),
                 "--epochs", "2", "--quiet"]) == 0
    state = final_state(run_copy)
    assert state["epoch"] == 2 and state["config"]["data"] == [str(folders[0]), str(moved)]
    assert state["classes"] == ["a/foreground", "b/foreground"]
    index = json.loads((run_copy / INDEX_NAME).read_text())
    assert index["data"] == [str(folders[0]), str(moved)] and index["datasets"] == ["a", "b"]
    assert {entry["dataset"] for image, entry in index["images"].items() if image.startswith("d2/")} == {1}


def test_a_dataset_folder_moved_under_another_name_keeps_the_name_the_run_gave_it(folders, run_copy, tmp_path):
    renamed = Path(shutil.copytree(folders[1], tmp_path / "b-moved"))
    assert main(["resume", "latest", "--run-dir", str(run_copy), "--data", str(folders[0]), "--data", str(renamed),
                 "--epochs", "2", "--quiet"]) == 0
    state = final_state(run_copy)
    assert state["classes"] == ["a/foreground", "b/foreground"]  # not b-moved/...: the history stays one run's
    assert json.loads((run_copy / INDEX_NAME).read_text())["datasets"] == ["a", "b"]


def test_a_changed_image_of_one_dataset_is_refused_naming_it(folders, run_copy, tmp_path, capsys):
    changed = Path(shutil.copytree(folders[1], tmp_path / "b"))
    scan = changed / "images" / "case1" / "s2.png"
    pixels = np.asarray(Image.open(scan)).copy()
    pixels[:8, :8] = 255 - pixels[:8, :8]
    Image.fromarray(pixels).save(scan)
    code = main(["resume", "latest", "--run-dir", str(run_copy), "--data", str(folders[0]), "--data", str(changed),
                 "--epochs", "2"])
    line = error_line(capsys)
    assert code != 0
    image = re.search(r"d2/p\d{3}_i\d{3}", line)
    assert image, line
    ds = load_data(paths(folders[0], changed), image_size=32, seed=0)
    assert ds.sources[ds.ids.index(image.group())].image == "images/case1/s2.png"


def test_a_held_out_dataset_resumes_moved_and_is_refused_changed_naming_the_image(folders, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--run-dir", str(run), *data_flags(folders[0], folders[1]), "--held-out-data",
                 str(folders[2]), "--epochs", "1", *FLAGS]) == 0
    changed = Path(shutil.copytree(folders[2], tmp_path / "changed" / "c"))
    scan = changed / "images" / "case3" / "s1.png"
    Image.fromarray(255 - np.asarray(Image.open(scan))).save(scan)
    code = main(["resume", "latest", "--run-dir", str(run), "--held-out-data", str(changed), "--epochs", "2"])
    line = error_line(capsys)
    assert code != 0
    image = re.search(r"the split saved with the run: image (p\d{3}_i\d{3}) \(1 of ", line)
    assert line.startswith(f"error: --held-out-data 1 of 1 ({changed}): ") and image, line
    ds = load_dataset(changed, image_size=32)
    assert ds.sources[ds.ids.index(image.group(1))].image == "images/case3/s1.png"
    moved = Path(shutil.copytree(folders[2], tmp_path / "moved" / "c"))
    assert main(["resume", "latest", "--run-dir", str(run), "--held-out-data", str(moved), "--epochs", "2",
                 "--quiet"]) == 0
    assert final_state(run)["config"]["held_out_data"] == [str(moved)]


# --- memory -------------------------------------------------------------------------------------------------


def scans(images: int, size: int, name: str, seed: int) -> SegDataset:
    """`images` scans of one class each at `size` px as a loader holds them (float32 images, bool masks; a
    loader's dtypes, checked on a small synthetic set), built without drawing 500 synthetic scans."""
    like = make_synthetic(image_size=8, seed=seed, n_patients=1, images_per_patient=1, classes=[name])
    rng = np.random.default_rng(seed)
    pixels = rng.random((images, size, size), dtype=np.float32).astype(like.images.dtype)
    masks = (pixels > 0.7)[:, None].astype(like.masks.dtype)
    return SegDataset(pixels, masks, [name], np.arange(images), [f"p{i:03d}_i000" for i in range(images)],
                      "synthetic", {})


def merged_three(size: int, images: int) -> tuple[SegDataset, list[weakref.ref]]:
    parts = [scans(images, size, name, seed) for seed, name in enumerate(["cyst", "septated_cyst", "solid"])]
    gone = [weakref.ref(array) for part in parts for array in (part.images, part.masks)]
    return merge(parts, ["a", "b", "c"], [1.0] * 3, [split_by_patient(part, seed=0) for part in parts]), gone


def test_three_datasets_of_500_images_at_128_px_stay_under_200_mb_and_keep_no_copies():
    ds, parts = merged_three(128, 500)
    gc.collect()
    assert len(ds) == 1500 and ds.array_bytes < 200_000_000
    assert ds.array_bytes == ds.images.nbytes + ds.masks.nbytes
    assert all(ref() is None for ref in parts)  # the per-dataset arrays are freed
    assert ds.read_native_masks(1000).shape == (3, 128, 128)


def test_loading_several_folders_keeps_no_per_dataset_copy(folders, monkeypatch):
    loaded = []

    def watched(*args, **kwargs):
        part = load_one(*args, **kwargs)
        loaded.append((weakref.ref(part.images), weakref.ref(part.masks)))
        return part

    load_one = collection.load_one
    monkeypatch.setattr(collection, "load_one", watched)
    ds = load_data(paths(*folders), image_size=32, seed=0)
    gc.collect()
    assert len(loaded) == 3 and all(ref() is None for refs in loaded for ref in refs)
    # Native masks are still read by each image's own dataset, in the merged class columns.
    last = len(ds) - 1
    native = ds.read_native_masks(last)
    assert native.shape == (3, 40, 40) and not native[:2].any() and native[2].any()

"""Published splits (issue 29): MMOTU's OTU_2D_annotation.json and train/val lists, a test part carved
from train when a split has none, and --split-file naming images by file name."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from useg.cli import main
from useg.data import Split, load_dataset, split_by_patient
from useg.data.splits import split_from_file
from useg.errors import DataError
from useg.training.log import describe_data
from tiny import TINY, final_state


def mmotu(tmp_path: Path, count: int = 10) -> Path:
    """A tiny OTU_2d copy: images/1..count.JPG with a tumour each, no split files yet."""
    otu = tmp_path / "MMOTU" / "OTU_2d"
    (otu / "images").mkdir(parents=True)
    (otu / "annotations").mkdir()
    x = np.linspace(0, 255, 50, dtype=np.uint8)[None].repeat(40, 0)
    for number in range(1, count + 1):
        Image.fromarray(np.stack([x, x // 2, 255 - x], axis=2)).save(otu / "images" / f"{number}.JPG")
        mask = np.zeros((40, 50), dtype=np.uint8)
        mask[10 : 20 + number, 10:30] = 255
        Image.fromarray(mask).save(otu / "annotations" / f"{number}_binary.PNG")
    return otu


def lists(otu: Path, train: list, val: list, test: list | None = None) -> None:
    (otu / "train.txt").write_text("".join(f"{name}\n" for name in train))
    (otu / "val.txt").write_text("".join(f"{name}\n" for name in val))
    if test is not None:
        (otu / "test.txt").write_text("".join(f"{name}\n" for name in test))


def names(ds, indices) -> list[str]:
    """The file stems of these images, in number order."""
    return sorted((Path(ds.sources[i].image).stem for i in indices), key=int)


def parts(ds) -> dict[str, list[str]]:
    """The predefined split as image file stems, per part."""
    return {name: names(ds, indices) for name, indices in ds.predefined_split.items()}


def data_line(out: str) -> str:
    return next(line for line in out.splitlines() if line.startswith("Data: "))


# ---------------------------------------------------------------- OTU_2D_annotation.json

RECORDS = [("1.JPG", "train"), ("2.JPG", "training"), ("3.JPG", "train"), ("4.JPG", "val"),
           ("5.JPG", "validation"), ("6.JPG", "valid"), ("7.JPG", "test"), ("8.JPG", "Test")]
WANTED = {"train": ["1", "2", "3"], "val": ["4", "5", "6"], "test": ["7", "8"]}
SHAPES = {
    "records with filename": [{"filename": name, "split": part, "label": 1} for name, part in RECORDS],
    "records with file_name": [{"file_name": name, "split": part} for name, part in RECORDS],
    "records with image path": [{"image": f"images/{name}", "split": part} for name, part in RECORDS],
    "records with a numeric id": [{"id": int(name[0]), "split": part} for name, part in RECORDS],
    "records under images": {"info": {}, "images": [{"name": name, "split": part} for name, part in RECORDS]},
    "dict of records": {name: {"split": part, "class": 2} for name, part in RECORDS},
    "dict of parts": {name: part for name, part in RECORDS},
    "lists per part": {"train": ["1.JPG", "2.JPG", "3.JPG"], "validation": ["4.JPG", "5.JPG", "6.JPG"],
                       "test": ["7.JPG", "8.JPG"]},
}


@pytest.mark.parametrize("shape", SHAPES)
def test_the_json_split_is_read_in_each_plausible_shape(tmp_path: Path, shape: str) -> None:
    otu = mmotu(tmp_path)
    (otu / "OTU_2D_annotation.json").write_text(json.dumps(SHAPES[shape]))
    ds = load_dataset(otu.parent, image_size=16)
    assert parts(ds) == WANTED
    split = split_by_patient(ds, seed=0)
    assert len(split.train) == 3 and len(split.val) == 3 and len(split.test) == 2  # its own test: nothing carved
    line = describe_data(ds, split, val_tasks=3)
    assert "split train/val/test = 3/3/2 images (OTU_2D_annotation.json); 3 validation tasks" in line


def test_the_json_wins_over_the_lists_and_its_parent_folder_counts(tmp_path: Path) -> None:
    otu = mmotu(tmp_path)
    lists(otu, [1, 2, 3, 4, 5, 6], [7, 8])
    (otu.parent / "OTU_2D_annotation.json").write_text(json.dumps(SHAPES["records with filename"]))
    assert parts(load_dataset(otu.parent, image_size=16)) == WANTED


def test_a_json_without_a_split_falls_back_to_the_lists_or_is_refused_in_one_line(tmp_path: Path) -> None:
    otu = mmotu(tmp_path)
    (otu / "OTU_2D_annotation.json").write_text(json.dumps([{"filename": "1.JPG", "label": 3}]))
    with pytest.raises(DataError) as refused:
        load_dataset(otu.parent, image_size=16)
    message = str(refused.value)
    assert "OTU_2D_annotation.json holds no split" in message and '"split": "train"' in message
    assert "\n" not in message
    lists(otu, [1, 2, 3, 4, 5, 6], [7, 8])
    ds = load_dataset(otu.parent, image_size=16)
    assert ds.split_origin == "train.txt/val.txt as OTU_2D_annotation.json holds no split"
    assert parts(ds) == {"train": ["1", "2", "3", "4", "5", "6"], "val": ["7", "8"]}


@pytest.mark.parametrize("content, expected", [
    ('[{"filename": "1.JPG", "split": "holdout"}]', "image 1.JPG has split 'holdout'; expected train, val"),
    ('[{"split": "train"}]', "has a record whose image name is None"),
    ('{"train": [1], "val": [1]}', "lists image 1 in both train and val"),
    ("{not json", "cannot read"),
])
def test_a_bad_json_split_is_one_line_naming_the_file(tmp_path: Path, content: str, expected: str) -> None:
    otu = mmotu(tmp_path)
    (otu / "OTU_2D_annotation.json").write_text(content)
    with pytest.raises(DataError, match="OTU_2D_annotation.json") as refused:
        load_dataset(otu.parent, image_size=16)
    assert expected in str(refused.value) and "\n" not in str(refused.value)


# ---------------------------------------------------------------- a split without a test part


def test_lists_without_test_get_a_seeded_test_part_carved_from_train_by_patient(tmp_path: Path) -> None:
    otu = mmotu(tmp_path)
    lists(otu, [1, 2, 3, 4, 5, 6, 7, 8], [9, 10])
    ds = load_dataset(otu.parent, image_size=16)
    first, again = split_by_patient(ds, seed=4), split_by_patient(ds, seed=4)
    assert len(first.test) == 2 and len(first.train) == 6  # a quarter of the 8 listed for training
    assert names(ds, [*first.train, *first.test]) == ["1", "2", "3", "4", "5", "6", "7", "8"]
    assert names(ds, first.val) == ["9", "10"]  # the listed validation part stays as it is
    assert set(ds.patients[first.test]).isdisjoint(ds.patients[first.train])
    assert first.test.tolist() == again.test.tolist()
    assert any(split_by_patient(ds, seed=s).test.tolist() != first.test.tolist() for s in range(5, 10))
    line = describe_data(ds, first, val_tasks=2)
    assert ("split train/val/test = 6/2/2 images (train.txt/val.txt; no test part listed: 2 test images "
            "carved from train by patient, seed 4)") in line


def test_a_listed_test_part_is_kept_and_listed_ids_without_an_image_are_counted(tmp_path: Path) -> None:
    otu = mmotu(tmp_path)
    lists(otu, [1, 2, 3, 4, 5, 6, 77, 88], [7, 8], [9, 10, 99])
    ds = load_dataset(otu.parent, image_size=16)
    assert parts(ds)["test"] == ["9", "10"] and ds.report["split_ids_not_found"] == 3
    split = split_by_patient(ds, seed=0)
    assert names(ds, split.test) == ["9", "10"]
    assert ("split train/val/test = 6/2/2 images (train.txt/val.txt/test.txt; 3 listed ids have no image)"
            in describe_data(ds, split, val_tasks=2))


def test_too_small_a_train_part_to_carve_from_is_refused(tmp_path: Path) -> None:
    otu = mmotu(tmp_path, count=3)
    lists(otu, [1], [2, 3])
    ds = load_dataset(otu.parent, image_size=16)
    with pytest.raises(DataError, match="train.txt/val.txt has no test part and its train part holds 1 patient"):
        split_by_patient(ds, seed=0)


def test_training_on_mmotu_says_where_the_split_came_from_and_resume_keeps_it(tmp_path: Path, capsys) -> None:
    otu = mmotu(tmp_path)
    lists(otu, [1, 2, 3, 4, 5, 6, 7, 8, 404], [9, 10])
    run = tmp_path / "run"
    flags = ["--data", str(otu.parent), "--run-dir", str(run), *TINY, "--vis-every", "0"]
    assert main(["train", "--epochs", "1", *flags]) == 0
    line = data_line(capsys.readouterr().out)
    assert ("split train/val/test = 6/2/2 images (train.txt/val.txt; no test part listed: 2 test images carved "
            "from train by patient, seed 0; 1 listed id has no image)") in line
    saved = final_state(run)["split"]
    assert len(saved["test"]) == 2 and set(saved["test"]).isdisjoint(saved["train"])
    assert main(["train", "--epochs", "2", "--resume", "latest", *flags]) == 0
    line = data_line(capsys.readouterr().out)
    assert "split train/val/test = 6/2/2 images (saved with the run)" in line
    assert {name: final_state(run)["split"][name] for name in ("train", "val", "test")} == {
        name: saved[name] for name in ("train", "val", "test")}


# ---------------------------------------------------------------- --split-file with file names


def folders(tmp_path: Path, count: int = 8) -> Path:
    root = tmp_path / "folders"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for number in range(count):
        image = np.full((24, 24), 40 + 20 * number, dtype=np.uint8)
        mask = np.zeros((24, 24), dtype=np.uint8)
        mask[4 : 12 + number, 6:18] = 255
        Image.fromarray(image).save(root / "images" / f"scan{number}.png")
        Image.fromarray(mask).save(root / "masks" / f"scan{number}.png")
    return root


def test_split_file_with_file_names_trains_and_counts_names_without_an_image(tmp_path: Path, capsys) -> None:
    data = folders(tmp_path)
    split_file = tmp_path / "published.json"
    split_file.write_text(json.dumps({  # a mix: paths, bare names, stems, a longer path, an anonymous id
        "train": ["images/scan0.png", "scan1.png", "scan2", "/somewhere/folders/images/scan3.png", "p004_i000",
                  "gone.png"],
        "val": ["scan5.png", "scan6.png"], "test": ["scan7"]}))
    run = tmp_path / "run"
    assert main(["train", "--data", str(data), "--split-file", str(split_file), "--run-dir", str(run),
                 "--epochs", "1", *TINY, "--vis-every", "0"]) == 0
    line = data_line(capsys.readouterr().out)
    assert "split train/val/test = 5/2/1 images (--split-file published.json; 1 listed name has no image)" in line
    saved = final_state(run)["split"]
    assert saved["train"] == [f"p{n:03d}_i000" for n in range(5)]
    assert saved["val"] == ["p005_i000", "p006_i000"] and saved["test"] == ["p007_i000"]


def test_split_file_without_test_gets_one_carved_and_an_empty_test_stays_empty(tmp_path: Path) -> None:
    ds = load_dataset(folders(tmp_path), image_size=16)
    carved = split_from_file({"train": [f"scan{n}" for n in range(6)], "val": ["scan6", "scan7"]}, ds, seed=1,
                             file_name="s.json")
    assert len(carved.train) == 4 and len(carved.test) == 2 and "no test part listed" in carved.origin
    assert set(carved.test.tolist()) < set(range(6))
    kept = split_from_file({"train": [f"scan{n}" for n in range(6)], "val": ["scan6"], "test": []}, ds, seed=1,
                           file_name="s.json")
    assert len(kept.train) == 6 and len(kept.test) == 0


def test_split_file_naming_nothing_of_the_data_is_refused(tmp_path: Path, capsys) -> None:
    data = folders(tmp_path)
    split_file = tmp_path / "other.json"
    split_file.write_text(json.dumps({"train": ["a.png", "b.png"], "val": ["c.png"], "test": []}))
    code = main(["train", "--data", str(data), "--split-file", str(split_file), "--run-dir", str(tmp_path / "run"),
                 "--epochs", "1", *TINY, "--vis-every", "0"])
    assert code != 0
    err = capsys.readouterr().err
    assert "--split-file other.json: none of its 3 entries is an image id or a file of the data" in err
    assert not (tmp_path / "run" / "checkpoints").exists() or not any((tmp_path / "run" / "checkpoints").iterdir())


def test_split_file_with_an_id_the_data_lacks_is_still_refused(tmp_path: Path) -> None:
    ds = load_dataset(folders(tmp_path), image_size=16)
    with pytest.raises(DataError, match="names image p042_i000 that the data does not have"):
        split_from_file({"train": ["p042_i000", "scan1"], "val": ["scan2"], "test": []}, ds, seed=0,
                        file_name="s.json")


def test_the_saved_split_stays_ids_and_fingerprints_only(tmp_path: Path) -> None:
    ds = load_dataset(folders(tmp_path), image_size=16)
    split = split_by_patient(ds, seed=0)
    assert split.origin == "60/20/20 by patient, seed 0"
    assert set(split.to_dict()) == {"train", "val", "test", "fingerprints"}  # the checkpoint's format is unchanged
    assert Split.from_dict(split.to_dict(), ds).origin == "saved with the run"

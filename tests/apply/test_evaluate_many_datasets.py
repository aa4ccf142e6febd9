"""`useg evaluate` on a run trained over several datasets (--data A --data B): its data read again and merged as
training did, the saved split rebuilt, each dataset's part scored and reported on its own (table, JSON, CSV);
--data naming one of its folders scores that dataset alone; any other folder is scored as before."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from medical_files import write_synthetic_folder
from tiny import error_line, evaluate_json, train_tiny

from useg.apply.evaluate import CSV_COLUMNS
from useg.cli import main


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("many")
    return {"a": write_synthetic_folder(root / "a", 8, seed=3, size=(40, 26)),
            "b": write_synthetic_folder(root / "b", 8, seed=4, size=(30, 30)),
            "other": write_synthetic_folder(root / "other", 6, seed=5, size=(30, 30))}


@pytest.fixture(scope="module")
def run(tmp_path_factory, folders) -> Path:
    """A tiny run over the two folders, nothing held out."""
    return train_tiny(tmp_path_factory.mktemp("run") / "run", 1, "--data", str(folders["a"]), "--data",
                      str(folders["b"]))


def saved_test_ids(run: Path) -> list[str]:
    state = torch.load(run / "checkpoints" / "best_model.pt", weights_only=True)
    return state["split"]["test"]


def test_each_dataset_s_test_split_is_scored_and_reported_on_its_own(run, folders, capsys, tmp_path):
    report = evaluate_json(run, capsys, "--csv", str(tmp_path / "e.csv"))
    assert report["split"] == "test" and report["held_out"] is False
    assert report["data"] == [str(folders["a"].resolve()), str(folders["b"].resolve())]
    assert report["classes"] == {"a/foreground": "trained", "b/foreground": "trained"}
    # Exactly the saved test split: every dataset's part of it, ids prefixed with their dataset.
    assert sorted(row["image"] for row in report["rows"]) == sorted(saved_test_ids(run))
    assert {row["image"][:3] for row in report["rows"]} == {"d1/", "d2/"}
    datasets = report["datasets"]
    assert list(datasets) == ["a", "b"]
    for name, number in (("a", "d1"), ("b", "d2")):
        scored = datasets[name]
        mine = [row for row in report["rows"] if row["dataset"] == name]
        assert mine and all(row["image"].startswith(number + "/") for row in mine)
        assert all(row["class"] == f"{name}/foreground" for row in mine)
        assert scored["id"] == number and scored["data"] == str(folders[name].resolve())
        assert scored["tasks"] == len(mine) and scored["targets"] == len({row["image"] for row in mine})
        assert list(scored["per_class"]) == [f"{name}/foreground"]
        assert scored["per_class"][f"{name}/foreground"] == report["per_class"][f"{name}/foreground"]
        assert scored["mean_dice"] == pytest.approx(np.mean([row["dice"] for row in mine]))
    overall = np.mean([datasets[name]["mean_dice"] for name in datasets])  # one class each: mean over classes
    assert report["mean_dice"] == pytest.approx(overall)


def test_the_csv_says_which_dataset_each_image_comes_from(run, capsys, tmp_path):
    path = tmp_path / "scores.csv"
    evaluate_json(run, capsys, "--csv", str(path), "--with-paths")
    with open(path, newline="") as file:
        reader = csv.DictReader(file)
        assert tuple(reader.fieldnames) == ("image", "dataset", *CSV_COLUMNS[1:], "file")
        rows = list(reader)
    assert {row["dataset"] for row in rows} == {"a", "b"}
    assert all(row["image"].startswith({"a": "d1/", "b": "d2/"}[row["dataset"]]) for row in rows)
    assert all(row["file"].startswith("images/scan") for row in rows)  # relative to its own dataset's folder


def test_the_table_has_a_line_per_dataset(run, capsys, tmp_path):
    capsys.readouterr()
    assert main(["evaluate", "--run-dir", str(run), "--split", "val", "--csv", str(tmp_path / "v.csv")]) == 0
    out = capsys.readouterr().out
    assert "on val of datasets a, b:" in out and "per dataset: its val split" in out
    lines = [line.split() for line in out.splitlines()]
    assert ["a", "d1/...", "a/foreground"] in [line[:3] for line in lines]
    assert ["b", "d2/...", "b/foreground"] in [line[:3] for line in lines]


def test_data_naming_one_of_the_run_s_folders_scores_that_dataset_alone(run, folders, capsys, tmp_path):
    report = evaluate_json(run, capsys, "--data", str(folders["b"]), "--csv", str(tmp_path / "b.csv"))
    assert report["held_out"] is False and list(report["datasets"]) == ["b"]
    assert list(report["per_class"]) == ["b/foreground"]
    assert sorted(row["image"] for row in report["rows"]) == sorted(
        image for image in saved_test_ids(run) if image.startswith("d2/"))


def test_classes_name_the_run_s_classes_or_are_refused_in_one_line(run, folders, capsys, tmp_path):
    picked = evaluate_json(run, capsys, "--classes", "b/foreground", "--csv", str(tmp_path / "c.csv"))
    assert {row["class"] for row in picked["rows"]} == {"b/foreground"} and list(picked["datasets"]) == ["a", "b"]
    assert picked["datasets"]["a"]["tasks"] == 0 and picked["datasets"]["a"]["mean_dice"] is None
    capsys.readouterr()
    assert main(["evaluate", "--run-dir", str(run), "--classes", "foreground"]) != 0
    line = error_line(capsys)
    assert "--classes foreground is not a class of the run (a/foreground, b/foreground)" in line
    assert main(["evaluate", "--run-dir", str(run), "--data", str(folders["a"]), "--classes", "b/foreground"]) != 0
    assert "is not a class of dataset a" in error_line(capsys)
    assert not list(run.glob("evaluation_*.csv"))  # nothing written by a refused command


def test_another_folder_is_scored_as_before(run, folders, capsys, tmp_path):
    path = tmp_path / "other.csv"
    report = evaluate_json(run, capsys, "--data", str(folders["other"]), "--csv", str(path))
    assert report["held_out"] is True and report["split"] == "all" and "datasets" not in report
    assert report["classes"] == {"foreground": "held-out"}
    assert sorted(row["image"] for row in report["rows"]) == sorted(f"p{i:03d}_i000" for i in range(6))
    assert all("dataset" not in row for row in report["rows"])
    assert path.read_text().splitlines()[0] == ",".join(CSV_COLUMNS)


def test_pictures_of_a_several_dataset_run_read_each_target_from_its_own_folder(run, tmp_path, capsys):
    from PIL import Image

    capsys.readouterr()
    assert main(["evaluate", "--run-dir", str(run), "--csv", str(tmp_path / "e.csv"), "--pictures", "2"]) == 0
    folder = tmp_path / "e_pictures"
    names = sorted(path.name for path in folder.iterdir())
    assert len(names) == 4 and all(name.split("_")[2] in ("d1-p", "d2-p") or "_d1-p" in name or "_d2-p" in name
                                   for name in names)
    for name in names:
        description = Image.open(folder / name).text["Description"]
        # folder a's scans are 40x26 on disk, b's 30x30: each target at its own dataset's native size
        assert ("native size 40x26" in description) == ("_d1-p" in name)
        assert ("native size 30x30" in description) == ("_d2-p" in name)

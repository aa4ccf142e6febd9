"""`useg evaluate --task inverted|edges`: does a model read its supports? And `--classes` naming a class of the
run's own data that the run never trained (held out by `useg train --classes`)."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tiny import error_line, evaluate_json, train_tiny

from useg.apply.evaluate import CSV_COLUMNS, evaluate
from useg.apply.predict import load_trained
from useg.cli import main
from useg.data import make_synthetic
from useg.data.index import INDEX_NAME
from useg.data.task_kinds import edges

BRIGHT, DARK = 0.9, 0.1


def write_squares(root: Path, count: int, size: tuple[int, int]) -> Path:
    """images/ + masks/ of `count` scans (one patient each): a bright rectangle on a dark ground, masked."""
    rng = np.random.default_rng(0)
    width, height = size
    for kind in ("images", "masks"):
        (root / kind).mkdir(parents=True)
    for index in range(count):
        mask = np.zeros((height, width), bool)
        top, left = rng.integers(2, height // 3), rng.integers(2, width // 3)
        mask[top:top + height // 2, left:left + width // 2] = True
        image = np.where(mask, BRIGHT, DARK)
        Image.fromarray((image * 255).astype(np.uint8)).save(root / "images" / f"scan{index}.png")
        Image.fromarray(mask.astype(np.uint8) * 255).save(root / "masks" / f"scan{index}.png")
    return root


class IgnoresSupports(torch.nn.Module):
    """A plain segmenter: the target's bright pixels, whatever the supports say."""

    def __init__(self):
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(()))  # evaluate puts inputs on the model's device

    def forward(self, target, support_images, support_labels):
        return torch.where(target > 0.5, 20.0, -20.0)


class CopiesSupportsRule(IgnoresSupports):
    """An oracle of in-context segmentation: finds which rule the supports' labels follow (bright pixels, dark
    pixels or the boundary band of the bright ones) and applies it to the target."""

    @staticmethod
    def rules(images: torch.Tensor) -> list[torch.Tensor]:
        bright = images > 0.5
        return [bright, ~bright, torch.from_numpy(edges(bright.numpy()))]

    def forward(self, target, support_images, support_labels):
        labels = support_labels > 0.5
        agreement = torch.stack([(rule == labels).float().mean(dim=(1, 2, 3, 4))
                                 for rule in self.rules(support_images)])  # (rules, B)
        chosen = agreement.argmax(dim=0)
        answers = torch.stack(self.rules(target))  # (rules, B, 1, H, W)
        picked = answers[chosen, torch.arange(len(target))]
        return torch.where(picked, 20.0, -20.0)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A tiny run on the embedded data: the shell (size, seed, resize) the hand-made models are put into."""
    return train_tiny(tmp_path_factory.mktemp("tasks") / "run", 1)


@pytest.fixture(scope="module")
def squares(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("squares")
    return {"square": write_squares(root / "square", 8, (32, 32)), "wide": write_squares(root / "wide", 8, (40, 26))}


def kind_dice(run: Path, model: torch.nn.Module, folder: Path, kinds: list[str]):
    trained = dataclasses.replace(load_trained(run), model=model)
    result = evaluate(trained, data=str(folder), support_size=3, task_kinds=kinds)
    return result, {kind: result.kinds_dict()[kind]["mean_dice"] for kind in result.task_kinds}


@pytest.mark.parametrize("shape", ["square", "wide"])
def test_a_model_that_ignores_its_supports_scores_near_zero_on_the_inverted_task(run, squares, shape):
    _, dice = kind_dice(run, IgnoresSupports(), squares[shape], ["inverted"])
    assert dice["normal"] > 0.9 and dice["inverted"] < 0.05, dice


@pytest.mark.parametrize("shape", ["square", "wide"])
def test_a_model_that_copies_its_supports_rule_scores_near_one_on_every_task(run, squares, shape):
    _, dice = kind_dice(run, CopiesSupportsRule(), squares[shape], ["inverted", "edges"])
    assert min(dice.values()) > 0.9, dice


def test_edges_are_scored_against_the_band_of_the_truth_at_the_models_size(run, squares):
    result, dice = kind_dice(run, CopiesSupportsRule(), squares["square"], ["edges"])
    assert dice["edges"] == pytest.approx(1.0)
    rows = result.kinds_dict()["edges"]["rows"]
    dataset = result.data.dataset
    for row, task in zip(rows, result.main.tasks):
        assert row["truth_pixels"] == int(edges(dataset.masks[task.target, task.cls]).sum())
        assert row["truth_pixels"] < int(dataset.masks[task.target, task.cls].sum())  # a band, not the area
    _, plain = kind_dice(run, IgnoresSupports(), squares["square"], ["edges"])
    assert plain["edges"] < 0.6, plain  # the filled rectangle is not its boundary
    assert result.kinds_dict()["edges"]["scored_at"] == "model square 32x32"


def test_every_kind_scores_the_same_targets_and_supports(run, squares):
    result, _ = kind_dice(run, CopiesSupportsRule(), squares["wide"], ["edges", "inverted"])
    assert result.task_kinds == ["normal", "inverted", "edges"]  # TASK_KINDS order, whatever was asked
    kinds = result.kinds_dict()
    keys = [[(row["image"], row["class"]) for row in kinds[kind]["rows"]] for kind in result.task_kinds]
    assert keys[0] == keys[1] == keys[2] and len(keys[0]) == 8
    assert kinds["normal"]["rows"] == result.rows and kinds["normal"]["per_class"] == result.per_class


def test_task_flag_adds_the_checks_to_the_json_csv_table_and_sweep_picture(run, capsys, tmp_path):
    csv_path = tmp_path / "checks" / "scores.csv"
    report = evaluate_json(run, capsys, "--task", "inverted", "--task", "edges", "--support-size", "1,2",
                           "--csv", str(csv_path))
    plain = evaluate_json(run, capsys, "--support-size", "1,2", "--csv", str(tmp_path / "plain.csv"))
    def without_checks(record: dict) -> dict:
        kept = {key: value for key, value in record.items() if key not in ("task_kinds", "csv", "pictures")}
        return {**kept, "sweep": [{key: value for key, value in point.items() if key != "task_kinds"}
                                  for point in record["sweep"]]}

    assert without_checks(report) == without_checks(plain)  # the normal task: as without --task
    assert list(report["task_kinds"]) == ["normal", "inverted", "edges"]
    assert report["task_kinds"]["normal"]["mean_dice"] == pytest.approx(report["mean_dice"])
    for kind, scored in report["task_kinds"].items():
        assert len(scored["rows"]) == len(report["rows"]) and scored["per_class"].keys() == report["per_class"].keys()
        assert scored["scored_at"] == ("model square 32x32" if kind == "edges" else "native")
    for record in report["sweep"]:
        assert list(record["task_kinds"]) == ["normal", "inverted", "edges"]
        assert record["task_kinds"]["normal"]["mean_dice"] == pytest.approx(record["mean_dice"])
    with open(csv_path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == [*CSV_COLUMNS, "support_size", "ensembles", "task"]  # task last: old readers keep going
    assert {row["task"] for row in rows} == {"normal", "inverted", "edges"} and len(rows) == 3 * 2 * len(report["rows"])
    with open(tmp_path / "plain.csv", newline="") as handle:
        plain_rows = list(csv.DictReader(handle))
    assert [{key: row[key] for key in plain_rows[0]} for row in rows if row["task"] == "normal"] == plain_rows
    picture = Image.open(csv_path.parent / "evaluation_support_sweep.png")
    assert picture.format == "PNG" and str(csv_path.parent / "evaluation_support_sweep.png") in report["pictures"]
    assert main(["evaluate", "--run-dir", str(run), "--task", "inverted", "--csv", str(tmp_path / "t.csv")]) == 0
    table = capsys.readouterr().out
    assert "in-context checks" in table and "inverted / normal" in table


def test_csv_without_task_is_unchanged(run, capsys, tmp_path):
    assert main(["evaluate", "--run-dir", str(run), "--csv", str(tmp_path / "plain.csv")]) == 0
    assert "in-context" not in capsys.readouterr().out
    with open(tmp_path / "plain.csv", newline="") as handle:
        assert next(csv.reader(handle)) == list(CSV_COLUMNS)
    assert "task_kinds" not in evaluate_json(run, capsys, "--csv", str(tmp_path / "again.csv"))


@pytest.mark.parametrize("kind", ["bogus", "Inverted"])
def test_an_unknown_task_kind_is_one_line_before_anything_is_read(kind, run, capsys, tmp_path):
    assert main(["evaluate", "--run-dir", str(tmp_path / "nowhere"), "--task", kind]) == 2
    assert f"--task {kind} is unknown; use inverted, edges (normal is always scored)" in error_line(capsys)


@pytest.fixture(scope="module")
def two_class_run(tmp_path_factory) -> Path:
    """A tiny run on the embedded data trained on cyst and solid only: septated_cyst is held out."""
    return train_tiny(tmp_path_factory.mktemp("held_class") / "run", 1, "--classes", "cyst,solid")


def test_a_class_the_run_never_trained_is_scored_on_its_test_patients_from_its_training_patients(two_class_run,
                                                                                                 capsys, tmp_path):
    report = evaluate_json(two_class_run, capsys, "--classes", "septated_cyst", "--support-size", "1,2",
                           "--task", "inverted", "--csv", str(tmp_path / "held.csv"))
    assert report["classes"] == {"septated_cyst": "held-out"} and report["held_out"] is False
    trained = load_trained(two_class_run)
    data = make_synthetic(image_size=32, seed=0)
    showing = {data.ids[i] for i in np.flatnonzero(data.class_presence()[:, data.classes.index("septated_cyst")])}
    expected = showing & set(trained.split["test"])
    assert expected and sorted(row["image"] for row in report["rows"]) == sorted(expected)
    assert [record["support_size"] for record in report["sweep"]] == [1, 2]
    assert (tmp_path / "evaluation_support_sweep.png").is_file()
    result = evaluate(trained, data_options={"classes": ["septated_cyst"]})
    ids = result.data.dataset.ids
    assert all(ids[index] in trained.split["train"] for task in result.main.tasks for index in task.supports)
    assert main(["evaluate", "--run-dir", str(two_class_run), "--classes", "cyst,septated_cyst",
                 "--csv", str(tmp_path / "mixed.csv")]) == 0
    table = capsys.readouterr().out
    assert "held-out" in table and "trained" in table


def test_an_unknown_class_still_names_the_datas_classes(two_class_run, capsys):
    assert main(["evaluate", "--run-dir", str(two_class_run), "--classes", "cist"]) == 2
    assert "unknown class cist; valid classes: cyst, septated_cyst, solid" in error_line(capsys)


def write_two_class_folder(root: Path, patients: int) -> Path:
    """Label maps of `patients` patients x 3 files (`patNN_K.png`): file 0 shows only class b (value 200), file 1
    a and b, file 2 only a (value 100); patient 00 shows only b. A run trained on a never loads file 0 nor patient
    00, so its image and patient numbers differ from those of the whole folder."""
    data = make_synthetic(image_size=32, seed=9, n_patients=patients, images_per_patient=3)
    for kind in ("images", "masks"):
        (root / kind).mkdir(parents=True)
    for index, image in enumerate(data.images):
        patient, number = divmod(index, 3)
        labels = np.zeros((32, 32), np.uint8)
        if number > 0 and patient > 0:
            labels[4:14, 4:14] = 100
        if number < 2:
            labels[18:28, 16:26] = 200
        name = f"pat{patient:02d}_{number}.png"
        Image.fromarray((image * 255).astype(np.uint8)).save(root / "images" / name)
        Image.fromarray(labels).save(root / "masks" / name)
    (root / "classes.json").write_text(json.dumps({"100": "a", "200": "b"}))
    return root


def test_a_held_out_class_of_a_folder_includes_images_the_run_never_loaded(tmp_path, capsys):
    folder = write_two_class_folder(tmp_path / "data", 11)
    run = train_tiny(tmp_path / "run", 1, "--data", str(folder), "--classes", "a", "--patient-pattern", r"(pat\d+)_")
    trained = load_trained(run)
    index = json.loads((run / INDEX_NAME).read_text())["images"]
    test_patients = {index[image]["image"].split("/")[-1][:5] for image in trained.split["test"]}
    train_patients = {index[image]["image"].split("/")[-1][:5] for image in trained.split["train"]}
    report = evaluate_json(run, capsys, "--classes", "b", "--with-paths", "--csv", str(tmp_path / "b.csv"))
    assert report["classes"] == {"b": "held-out"}
    files = sorted(row["file"] for row in report["rows"])
    assert files == sorted(f"images/{patient}_{number}.png"
                           for patient in test_patients for number in (0, 1))  # file 0: never loaded by the run
    assert "pat00" not in test_patients | train_patients  # in no split of the run: never a target nor a support
    result = evaluate(trained, data_options={"classes": ["b"]})
    patients_of_supports = {Path(result.data.files[index]).name[:5]
                            for task in result.main.tasks for index in task.supports}
    assert patients_of_supports <= train_patients

"""`useg evaluate`: scores per image and class, summaries, ensembling, and what a trained model gains."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tiny import RECIPE_OFF, error_line, evaluate_json
from useg.cli import main
from useg.data import load_dataset
from useg.apply.evaluate import evaluate, hausdorff95, scores
from useg.apply.predict import load_trained

# Measured with seeds 0-4 (test split, S=4): trained 0.22-0.32 mean Dice, untrained 0.03-0.12, with the
# recipe and loss of that time (256 tasks are too few for a model to learn inverted tasks too).
SMALL = ["--widths", "8,8,8", "--image-size", "32", "--support-size", "4", "--batch-size", "4",
         "--vis-every", "0", "--num-threads", "1", "--quiet", "--loss", "dice", *RECIPE_OFF]
TRAINED = ["--epochs", "8", "--samples-per-epoch", "32", "--lr", "1e-3"]
UNTRAINED = ["--epochs", "1", "--samples-per-epoch", "4", "--lr", "1e-12"]  # the weights stay at their init


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("evaluate")
    for name, schedule in (("trained", TRAINED), ("untrained", UNTRAINED)):
        assert main(["train", "--run-dir", str(root / name), *SMALL, *schedule]) == 0
    return {"trained": root / "trained", "untrained": root / "untrained"}


def test_trained_model_scores_higher_dice_than_untrained(runs):
    trained = evaluate(load_trained(runs["trained"]), split="test").mean_dice
    untrained = evaluate(load_trained(runs["untrained"]), split="test").mean_dice
    assert trained > untrained + 0.05, (trained, untrained)


def test_val_evaluation_reproduces_the_runs_best_val_dice(runs):
    trained = load_trained(runs["trained"])
    history = torch.load(trained.path, weights_only=True)["history"]
    assert evaluate(trained, split="val").mean_dice == pytest.approx(history["best_val_dice"], abs=1e-6)


def test_csv_has_one_row_per_test_image_and_class_it_shows(runs):
    assert main(["evaluate", "--run-dir", str(runs["trained"])]) == 0
    with open(runs["trained"] / "evaluation_test.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    trained = load_trained(runs["trained"])
    data = load_dataset(None, image_size=32, seed=0)
    test_ids = set(trained.split["test"])
    present = zip(*np.nonzero(data.class_presence()))
    expected = {(data.ids[i], data.classes[c]) for i, c in present if data.ids[i] in test_ids}
    assert {(row["image"], row["class"]) for row in rows} == expected and len(rows) == len(expected)
    assert list(rows[0]) == ["image", "class", "dice", "iou", "hd95_px", "truth_pixels", "predicted_pixels"]
    for row in rows:
        assert re.fullmatch(r"p\d{3}_i\d{3}", row["image"])  # anonymous ids only
        assert 0 <= float(row["iou"]) <= float(row["dice"]) <= 1
        assert (row["hd95_px"] == "") == (row["predicted_pixels"] == "0")


def test_json_schema_and_summary(runs, capsys, tmp_path):
    report = evaluate_json(runs["trained"], capsys, "--split", "val", "--csv", str(tmp_path / "val.csv"))
    schema = {"checkpoint", "split", "support_size", "ensembles", "per_class", "mean_dice", "rows", "csv"}
    assert schema <= report.keys()
    assert report["split"] == "val" and report["support_size"] == 4 and report["ensembles"] == 1
    assert Path(report["checkpoint"]).name == "best_model.pt" and Path(report["csv"]).is_file()
    for name, stats in report["per_class"].items():
        dice = [row["dice"] for row in report["rows"] if row["class"] == name]
        assert stats["dice"]["n"] == len(dice)
        assert stats["dice"]["mean"] == pytest.approx(np.mean(dice))
        assert stats["dice"]["median"] == pytest.approx(np.median(dice))
        assert stats["dice"]["std"] == pytest.approx(np.std(dice, ddof=1))
        assert {"mean", "std", "median", "n"} == stats["iou"].keys() == stats["hd95_px"].keys()
    class_means = [stats["dice"]["mean"] for stats in report["per_class"].values()]
    assert report["mean_dice"] == pytest.approx(np.mean(class_means))


def test_ensemble_of_three_support_sets_gives_valid_scores(runs, capsys):
    single = evaluate_json(runs["trained"], capsys, "--support-size", "2")
    ensemble = evaluate_json(runs["trained"], capsys, "--support-size", "2", "--ensembles", "3")
    assert ensemble["ensembles"] == 3 and len(ensemble["rows"]) == len(single["rows"])
    assert all(0 <= row["dice"] <= 1 for row in ensemble["rows"])
    assert [row["dice"] for row in ensemble["rows"]] != [row["dice"] for row in single["rows"]]


@pytest.mark.parametrize("which, name", [(None, "best_model.pt"), ("latest", "latest_checkpoint.pt"),
                                         ("best", "best_model.pt"), ("1", "epoch_001_checkpoint.pt"),
                                         ("epoch_001_checkpoint.pt", "epoch_001_checkpoint.pt")])
def test_checkpoint_argument_picks_the_file(which, name, runs, capsys):
    report = evaluate_json(runs["untrained"], capsys, *([which] if which else []))
    assert Path(report["checkpoint"]).name == name


@pytest.mark.parametrize("args, expected", [
    (["--ensembles", "0"], "--ensembles must be at least 1"),
    (["--support-size", "500"], "lower --support-size"),
    (["--run-dir", "{tmp}/nowhere"], "no checkpoints in"),
    (["{tmp}/absent.pt"], "absent.pt"),
    (["--data", "{tmp}/folders"], "none of the 1 target images has a class with a support image"),
    (["--support-size", "1,x"], "--support-size 1,x is not a number"),
    (["--support", "{tmp}/folders"], "--support applies to data the run was not trained on"),
])
def test_bad_input_is_one_line_and_exit_2(args, expected, runs, tmp_path, capsys):
    for kind in ("images", "masks"):  # a valid data folder that is not the run's data
        (tmp_path / "folders" / kind).mkdir(parents=True)
        Image.fromarray(np.full((8, 8), 255, np.uint8)).save(tmp_path / "folders" / kind / "a.png")
    args = [arg.replace("{tmp}", str(tmp_path)) for arg in args]
    assert main(["evaluate", "--run-dir", str(runs["untrained"]), *args]) == 2
    assert expected in error_line(capsys)


@pytest.mark.parametrize("pred, truth, dice, iou, hd95", [
    ((slice(0, 4), slice(0, 4)), (slice(0, 4), slice(0, 4)), 1.0, 1.0, 0.0),
    ((slice(0, 4), slice(0, 4)), (slice(0, 4), slice(2, 6)), 0.5, 1 / 3, 2.0),
    ((slice(0, 1), slice(0, 1)), (slice(3, 4), slice(4, 5)), 0.0, 0.0, 5.0),
    (None, (slice(0, 4), slice(0, 4)), 0.0, 0.0, None),
    (None, None, 1.0, 1.0, None),
])
def test_scores_of_known_shapes(pred, truth, dice, iou, hd95):
    def mask(where):
        array = np.zeros((10, 10), bool)
        if where is not None:
            array[where] = True
        return array

    result = scores(mask(pred), mask(truth))
    assert result["dice"] == pytest.approx(dice) and result["iou"] == pytest.approx(iou)
    assert result["hd95_px"] == (None if hd95 is None else pytest.approx(hd95))


def test_hausdorff95_ignores_the_farthest_five_percent():
    truth = np.zeros((64, 64), bool)
    truth[10:50, 10:50] = True
    pred = truth.copy()
    pred[60, 60] = True  # one stray pixel, far away: the max distance grows, HD95 barely moves
    assert hausdorff95(pred, truth) < 1.0
    assert hausdorff95(truth, truth) == 0.0


def test_empty_split_suggests_the_other_one(tmp_path, capsys):
    ids = [f"p{patient:03d}_i{image:03d}" for patient in range(24) for image in range(6)]
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": ids[:96], "val": ids[96:], "test": []}))
    run = tmp_path / "run"
    assert main(["train", "--run-dir", str(run), *SMALL, *UNTRAINED, "--split-file", str(split)]) == 0
    assert main(["evaluate", "--run-dir", str(run), "--split", "test"]) == 2
    assert "test split of best_model.pt is empty; evaluate --split val" in error_line(capsys)

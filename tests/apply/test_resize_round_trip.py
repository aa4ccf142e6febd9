"""`--resize pad` round trip: train on wide scans letterboxed, predict and evaluate at their own size, resume.

The geometry is checked with a model whose "probability" is the target image itself (bright is foreground):
what comes back at the input's size is then the bright shape exactly where the scan shows it, whatever a tiny
model would have learnt, so a letterbox left in (squashed back instead of cropped) shows as a flattened shape.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tiny import TINY, error_line, rewrite_saved_config

from useg.apply.predict import load_trained
from useg.apply.supports import load_support_pool
from useg.cli import main


def write_wide_folder(root: Path, count: int = 8) -> Path:
    """images/ + masks/ of 64x32 (width x height) scans, each with a bright 12x12 square and its mask."""
    rng = np.random.default_rng(0)
    for index in range(count):
        image = (rng.random((32, 64)) * 60 + 20).astype(np.uint8)
        mask = np.zeros((32, 64), dtype=np.uint8)
        top, left = 2 * rng.integers(2, 8), 2 * rng.integers(2, 22)
        image[top:top + 12, left:left + 12], mask[top:top + 12, left:left + 12] = 220, 255
        for folder, values in (("images", image), ("masks", mask)):
            (root / folder).mkdir(parents=True, exist_ok=True)
            Image.fromarray(values).save(root / folder / f"scan{index}.png")
    return root


def train(run: Path, data: Path, *extra: str) -> int:
    return main(["train", "--run-dir", str(run), "--data", str(data), *TINY, "--quiet", "--vis-every", "0", *extra])


@pytest.fixture(scope="module")
def wide(tmp_path_factory) -> Path:
    return write_wide_folder(tmp_path_factory.mktemp("wide") / "data")


@pytest.fixture(scope="module")
def pad_run(wide, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("pad") / "run"
    assert train(run, wide, "--epochs", "1", "--resize", "pad") == 0
    return run


@pytest.fixture
def image_as_probability(monkeypatch):
    """A stand-in model that answers each target with its own image (bright = foreground)."""
    def echo(model, targets, support_images, support_labels):
        return targets.clone()
    monkeypatch.setattr("useg.apply.predict.probabilities", echo)
    monkeypatch.setattr("useg.apply.evaluate.probabilities", echo)


def checkpoint(run: Path, name: str = "latest_checkpoint.pt") -> dict:
    return torch.load(run / "checkpoints" / name, weights_only=True)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return (a & b).sum() / (a | b).sum()


def test_the_run_saves_its_choice(pad_run):
    assert checkpoint(pad_run)["config"]["resize"] == "pad"
    assert checkpoint(pad_run, "best_model.pt")["config"]["resize"] == "pad"


def test_predict_crops_the_letterbox_back_to_the_inputs_size(pad_run, wide, image_as_probability, tmp_path):
    out = tmp_path / "out"
    args = ["--run-dir", str(pad_run), "--support", str(wide), "--images", str(wide / "images" / "scan0.png")]
    assert main(["predict", *args, "--out", str(out)]) == 0
    predicted = np.asarray(Image.open(out / "scan0.png")) > 0
    truth = np.asarray(Image.open(wide / "masks" / "scan0.png")) > 0
    assert predicted.shape == truth.shape == (32, 64)
    assert iou(predicted, truth) > 0.8  # squashing the letterboxed square back would halve its height: 0.5


def test_evaluate_scores_at_native_size(pad_run, image_as_probability, capsys):
    assert main(["evaluate", "--run-dir", str(pad_run), "--split", "val", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["rows"] and min(row["dice"] for row in result["rows"]) > 0.85


def test_other_data_and_supports_are_letterboxed_as_the_run_was(pad_run, image_as_probability, tmp_path, capsys):
    other = write_wide_folder(tmp_path / "other", count=4)
    assert main(["evaluate", "--run-dir", str(pad_run), "--data", str(other), "--json"]) == 0
    assert min(row["dice"] for row in json.loads(capsys.readouterr().out)["rows"]) > 0.85
    supports = load_support_pool(load_trained(pad_run), other, None, None).data.images
    assert not supports[:, :8].any() and not supports[:, 24:].any()  # the letterbox rows of 32x16 in 32x32


def test_resume_with_the_other_rule_is_refused_in_one_line(pad_run, wide, capsys):
    before = saved_files(pad_run)
    assert train(pad_run, wide, "--epochs", "2", "--resume", "--resize", "squash") == 2
    assert "resize 'pad' -> 'squash'" in error_line(capsys)
    assert saved_files(pad_run) == before


def saved_files(run: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in (run / "checkpoints").glob("*.pt*")}


def test_a_checkpoint_without_the_key_resumes_as_squash_and_refuses_pad(wide, tmp_path, capsys):
    run = tmp_path / "old"
    assert train(run, wide, "--epochs", "1") == 0
    rewrite_saved_config(run / "checkpoints" / "latest_checkpoint.pt", resize=None)  # as saved before --resize
    assert train(run, wide, "--epochs", "2", "--resume", "--resize", "pad") == 2
    assert "resize 'squash' -> 'pad'" in error_line(capsys)
    assert train(run, wide, "--epochs", "2", "--resume") == 0
    assert checkpoint(run)["config"]["resize"] == "squash" and checkpoint(run)["epoch"] == 2

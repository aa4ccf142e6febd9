"""`useg predict` and fine-tuning from official weights: masks at the inputs' sizes, per class, clear refusals."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from medical_files import save_grey, write_cyst_folder
from tiny import TINY as TINY_FLAGS, error_line
import torch
from PIL import Image

from useg.checkpoint import CheckpointManager
from useg.cli import main
from useg.data import make_synthetic
from useg.model import build_universeg
from useg.weights import load_pretrained

TINY = [*TINY_FLAGS, "--quiet", "--vis-every", "0"]


def train_tiny(run: Path, *extra: str) -> None:
    assert main(["train", "--run-dir", str(run), "--epochs", "2", *TINY, *extra]) == 0


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("predict") / "run"
    train_tiny(folder)
    return folder


@pytest.fixture(scope="module")
def support_folder(tmp_path_factory) -> Path:
    """images/ + masks/ of six synthetic cysts, at 48x48 (not the model's size)."""
    return write_cyst_folder(tmp_path_factory.mktemp("supports") / "supports")


@pytest.fixture
def inputs(tmp_path) -> Path:
    """Three scans of different sizes and modes: RGB 50x30, grey 64x64, RGB JPEG 23x17."""
    folder = tmp_path / "inputs"
    folder.mkdir()
    scans = make_synthetic(image_size=64, seed=2, n_patients=3, images_per_patient=1).images
    rgb = lambda grey: np.repeat((grey * 255).astype(np.uint8)[:, :, None], 3, axis=2)  # noqa: E731
    Image.fromarray(rgb(scans[0])).resize((50, 30)).save(folder / "wide.png")
    save_grey(folder / "square.png", scans[1])
    Image.fromarray(rgb(scans[2])).resize((23, 17)).save(folder / "small.jpg")
    return folder


def predict(run: Path, *args: str) -> int:
    return main(["predict", "--run-dir", str(run), *args])


def test_masks_have_each_inputs_original_size(run, support_folder, inputs, tmp_path):
    out = tmp_path / "out"
    assert predict(run, "--support", str(support_folder), "--images", str(inputs), "--out", str(out)) == 0
    sizes = {"wide": (50, 30), "square": (64, 64), "small": (23, 17)}
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{stem}.png" for stem in sizes)
    for stem, size in sizes.items():
        mask = Image.open(out / f"{stem}.png")
        assert mask.size == size and mask.mode == "L"
        assert set(np.unique(np.asarray(mask))) <= {0, 255}


def test_files_as_inputs_and_same_result_every_time(run, support_folder, inputs, tmp_path):
    files = [str(inputs / "wide.png"), str(inputs / "square.png")]
    for out in (tmp_path / "a", tmp_path / "b"):
        assert predict(run, "--support", str(support_folder), "--images", *files, "--out", str(out)) == 0
    for name in ("wide.png", "square.png"):
        first, second = (np.asarray(Image.open(tmp_path / out / name)) for out in ("a", "b"))
        assert np.array_equal(first, second)


def test_overlay_is_the_input_size_in_colour(run, support_folder, inputs, tmp_path):
    out = tmp_path / "out"
    args = ["--support", str(support_folder), "--images", str(inputs / "wide.png"), "--out", str(out), "--overlay"]
    assert predict(run, *args) == 0
    overlay = Image.open(out / "wide_overlay.png")
    assert overlay.size == (50, 30) and overlay.mode == "RGB"


def write_ovatus(root: Path) -> Path:
    """An Ovatus folder of four patients with two classes, u_bi (left square) and u_dac (right square)."""
    lines = []
    for patient in range(4):
        name = f"{patient}_patient"
        save_grey(root / "US_map4" / name / "scan.png", np.random.default_rng(patient).random((40, 60)))
        polygons = [[[5, 5], [25, 5], [25, 30], [5, 30]], [[35, 10], [55, 10], [55, 35], [35, 35]]]
        image = {"image_name": "scan.png", "labels": ["u_bi", "u_dac"], "points": polygons}
        lines.append(json.dumps({"patient_name": name, "images": [image]}))
    (root / "mapping_normalized4.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def test_multi_class_supports_write_one_mask_per_class(run, inputs, tmp_path, capsys):
    ovatus = write_ovatus(tmp_path / "ovatus")
    out = tmp_path / "out"
    assert predict(run, "--support", str(ovatus), "--images", str(inputs / "wide.png"), "--out", str(out)) == 0
    assert sorted(p.name for p in out.iterdir()) == ["classes.json", "wide_label_map.png", "wide_u_bi.png",
                                                     "wide_u_dac.png"]
    assert "no support image shows class" in capsys.readouterr().err  # the other four Ovatus classes
    assert json.loads((out / "classes.json").read_text()) == {"1": "u_bi", "2": "u_dac"}
    labels = np.asarray(Image.open(out / "wide_label_map.png"))
    assert labels.shape == (30, 50) and set(np.unique(labels)) <= {0, 1, 2}
    for value, name in ((1, "u_bi"), (2, "u_dac")):  # a labelled pixel is in its class's mask
        assert np.asarray(Image.open(out / f"wide_{name}.png"))[labels == value].all()
    chosen = tmp_path / "chosen"
    args = ["--support", str(ovatus), "--images", str(inputs / "wide.png"), "--out", str(chosen)]
    assert predict(run, *args, "--classes", "u_dac", "--overlay") == 0
    assert sorted(p.name for p in chosen.iterdir()) == ["wide_overlay.png", "wide_u_dac.png"]
    assert Image.open(chosen / "wide_u_dac.png").size == (50, 30)


def test_ensembles_average_seeded_draws_whose_first_is_the_single_draw(run, support_folder, inputs, tmp_path,
                                                                         capsys):
    from useg.apply.predict import load_trained
    from useg.apply.supports import load_supports

    trained = load_trained(run)
    single, _ = load_supports(trained, support_folder, None, 2)
    three, _ = load_supports(trained, support_folder, None, 2, ensembles=3)
    assert three[0].images.shape[:2] == (3, 2) and np.array_equal(three[0].images[0], single[0].images[0])
    assert not all(np.array_equal(three[0].images[0], draw) for draw in three[0].images[1:])
    other_seeds = [load_supports(trained, support_folder, None, 2, seed=seed)[0][0].images[0] for seed in (5, 6, 7)]
    assert not all(np.array_equal(draw, single[0].images[0]) for draw in other_seeds)
    capsys.readouterr()
    args = ["--support", str(support_folder), "--images", str(inputs / "wide.png"), "--out", str(tmp_path / "out")]
    assert predict(run, *args, "--ensembles", "3", "--seed", "5") == 0
    assert "3 support draws averaged" in capsys.readouterr().out
    assert Image.open(tmp_path / "out" / "wide.png").size == (50, 30)


def test_label_map_supports_take_label_and_a_binary_support_takes_the_runs_class_name(run, support_folder,
                                                                                      inputs, tmp_path, capsys):
    labelled = tmp_path / "labelled"
    shutil.copytree(support_folder, labelled)
    for mask in (labelled / "masks").iterdir():  # cyst pixels become value 200 of a 0/100/200 label map
        values = np.asarray(Image.open(mask)) > 0
        picture = np.where(values, 200, 0).astype(np.uint8)
        picture[:2, :2] = 100
        Image.fromarray(picture).save(mask)
    out = tmp_path / "out"
    capsys.readouterr()
    assert predict(run, "--support", str(labelled), "--images", str(inputs / "wide.png"), "--out", str(out),
                   "--label", "200") == 0
    assert "label_200 (S=2)" in capsys.readouterr().out and (out / "wide.png").is_file()
    from useg.data import load_dataset
    from useg.apply.predict import TrainedModel
    from useg.apply.supports import name_like_the_run

    binary = load_dataset(support_folder, image_size=32)
    one_class = TrainedModel(None, Path("best_model.pt"), 1, {"image_size": 32, "support_size": 2}, ["nucleus"], None)
    assert name_like_the_run(binary, one_class).classes == ["nucleus"]  # not `foreground`


@pytest.mark.parametrize("problem, expected", [
    ("empty support folder", "is empty"),
    ("missing support folder", "does not exist"),
    ("support masks without foreground", "no usable images"),
    ("unreadable input", "broken.png"),
    ("truncated input", "cannot read image"),
    ("missing input", "ghost.png does not exist"),
    ("empty input folder", "no images"),
    ("unknown class", "unknown class tumour"),
    ("zero ensembles", "--ensembles must be at least 1"),
    ("two support sizes", "--support-size takes one number here"),
    ("no run", "no checkpoints in"),
])
def test_bad_input_is_one_line_and_exit_2(problem, expected, run, support_folder, inputs, tmp_path, capsys):
    support, images, extra, run_dir = str(support_folder), [str(inputs)], [], run
    if problem == "empty support folder":
        support = str(tmp_path / "empty")
        (tmp_path / "empty").mkdir()
    elif problem == "missing support folder":
        support = str(tmp_path / "nowhere")
    elif problem == "support masks without foreground":
        blank = tmp_path / "blank"
        shutil.copytree(support_folder, blank)
        for mask in (blank / "masks").iterdir():
            save_grey(mask, np.zeros((48, 48)))
        support = str(blank)
    elif problem == "unreadable input":
        (inputs / "broken.png").write_bytes(b"not a png")
    elif problem == "truncated input":
        whole = (inputs / "square.png").read_bytes()
        (inputs / "square.png").write_bytes(whole[: len(whole) // 2])  # a header, then half the pixels
    elif problem == "missing input":
        images = [str(inputs / "ghost.png")]
    elif problem == "empty input folder":
        images = [str(tmp_path / "nothing")]
        (tmp_path / "nothing").mkdir()
    elif problem == "unknown class":
        extra = ["--classes", "tumour"]
    elif problem == "zero ensembles":
        extra = ["--ensembles", "0"]
    elif problem == "two support sizes":
        extra = ["--support-size", "2,4"]
    else:
        run_dir = tmp_path / "no-run"
    code = predict(run_dir, "--support", support, "--images", *images, "--out", str(tmp_path / "out"), *extra)
    assert code == 2
    assert expected in error_line(capsys)


def test_output_over_an_input_is_refused(run, support_folder, inputs, capsys):
    code = predict(run, "--support", str(support_folder), "--images", str(inputs), "--out", str(inputs))
    assert code == 2 and "would overwrite an input image" in error_line(capsys)


def test_checkpoint_whose_weights_do_not_fit_its_config_is_refused(run, support_folder, inputs, tmp_path, capsys):
    state = torch.load(run / "checkpoints" / "best_model.pt", weights_only=True)
    state["model_config"] = {"widths": [16, 16], "cross_impl": "split"}
    with CheckpointManager(tmp_path / "other" / "checkpoints", total_epochs=2, warn=lambda m: None) as manager:
        manager.save(state, epoch=state["epoch"], val_dice=0.5)
    code = predict(tmp_path / "other", "--support", str(support_folder), "--images", str(inputs),
                   "--out", str(tmp_path / "out"))
    assert code == 2
    assert "weights (widths 8,8) do not fit its model_config (widths 16,16)" in error_line(capsys)


def test_plain_weight_file_as_checkpoint_points_to_pretrained(support_folder, inputs, tmp_path, capsys):
    path = tmp_path / "weights.pt"
    torch.save(build_universeg((8, 8)).state_dict(), path)
    code = main(["predict", str(path), "--support", str(support_folder), "--images", str(inputs),
                 "--out", str(tmp_path / "out")])
    assert code == 2 and "useg train --pretrained" in error_line(capsys)


# ---------------------------------------------------------------- fine-tuning from official weights


def test_official_format_state_dict_round_trips(tmp_path):
    torch.manual_seed(0)
    official = build_universeg()
    assert sum(p.numel() for p in official.parameters()) == 1_182_785
    path = tmp_path / "universeg_v1_nf64_ss64_STA.pt"
    torch.save(official.state_dict(), path)
    torch.manual_seed(1)
    fresh = build_universeg()
    load_pretrained(fresh, path)
    gen = torch.Generator().manual_seed(0)
    target, images = torch.rand(1, 1, 32, 32, generator=gen), torch.rand(1, 2, 1, 32, 32, generator=gen)
    labels = (torch.rand(1, 2, 1, 32, 32, generator=gen) > 0.5).float()
    with torch.no_grad():
        assert torch.equal(fresh(target, images, labels), official(target, images, labels))


def test_pretrained_of_other_widths_is_refused_naming_the_widths_it_needs(tmp_path, capsys):
    path = tmp_path / "universeg_v1_nf64_ss64_STA.pt"
    torch.save(build_universeg().state_dict(), path)
    code = main(["train", "--run-dir", str(tmp_path / "run"), "--epochs", "1", *TINY, "--pretrained", str(path)])
    assert code == 2
    assert "--widths 64,64,64,64" in error_line(capsys)


def test_training_starts_from_the_pretrained_weights(tmp_path):
    torch.manual_seed(7)
    start = build_universeg((8, 8)).state_dict()
    path = tmp_path / "start.pt"
    torch.save(start, path)
    # A vanishing learning rate leaves the weights where they started: the file's, not the seed's.
    train_tiny(tmp_path / "run", "--pretrained", str(path), "--lr", "1e-12")
    trained = torch.load(tmp_path / "run" / "checkpoints" / "latest_checkpoint.pt", weights_only=True)
    for name, tensor in start.items():
        torch.testing.assert_close(trained["model_state_dict"][name], tensor, atol=1e-8, rtol=0)

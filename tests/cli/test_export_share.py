"""Sharing a trained model: `useg checkpoints export` writes one file that predict, evaluate, `--pretrained`,
`checkpoints verify` and `checkpoints info` accept, alone or with its OUT.json; files of other formats are named
as such, never blamed on the disk (issue 29)."""

from __future__ import annotations

import errno
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tiny import train_tiny
from useg.checkpoint import publish
from useg.cli import main
from useg.data import make_synthetic
from useg.model import build_universeg
from useg.weights import load_pretrained

SUFFIXES = (".safetensors", ".pt")


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> Path:
    """A tiny run, a labelled support folder and a folder of new images of other patients."""
    root = tmp_path_factory.mktemp("share")
    train_tiny(root / "run", 2)
    scans = make_synthetic(image_size=40, seed=5, n_patients=9, images_per_patient=1, classes=["cyst"])
    for number, (image, mask) in enumerate(zip(scans.images, scans.masks[:, 0])):
        folder = root / "supports" if number < 6 else root / "new"
        picture = Image.fromarray((image * 255).astype(np.uint8)).resize((45, 36))
        if number < 6:
            (folder / "images").mkdir(parents=True, exist_ok=True)
            (folder / "masks").mkdir(exist_ok=True)
            picture.save(folder / "images" / f"s{number}.png")
            Image.fromarray(mask.astype(np.uint8) * 255).resize((45, 36), Image.NEAREST).save(
                folder / "masks" / f"s{number}.png")
        else:
            folder.mkdir(exist_ok=True)
            picture.save(folder / f"scan{number}.png")
    return root


def run_cli(capsys, *args) -> tuple[int, str, str]:
    code = main([str(arg) for arg in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_error_line(err: str, *words: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


def export(capsys, shared: Path, out: Path) -> Path:
    code, _, err = run_cli(capsys, "checkpoints", "export", shared / "run" / "checkpoints" / "best_model.pt", out)
    assert code == 0, err
    return out


def predict(capsys, shared: Path, model: Path, out: Path) -> tuple[int, str, str]:
    return run_cli(capsys, "predict", model, "--support", shared / "supports", "--images", shared / "new",
                   "--out", out)


def last_tensor_byte(path: Path) -> int:
    """The offset of a byte inside the export's last tensor: a change there keeps the file readable."""
    if path.suffix == ".safetensors":
        return path.stat().st_size - 1
    with zipfile.ZipFile(path) as archive:
        entry = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.header_offset)
    with open(path, "rb") as handle:  # the local header's extra field may differ from the directory's
        handle.seek(entry.header_offset + 28)
        start = entry.header_offset + 30 + len(entry.filename.encode()) + int.from_bytes(handle.read(2), "little")
    return start + entry.file_size - 1


def files_of(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_export_verify_predict_elsewhere_gives_best_models_masks(shared, tmp_path, capsys, suffix):
    model = export(capsys, shared, tmp_path / "sent" / f"model{suffix}")
    code, out, _ = run_cli(capsys, "checkpoints", "verify", model)
    assert code == 0 and f"ok   {model}" in out
    assert sorted(path.name for path in model.parent.iterdir()) == sorted([model.name, f"{model.name}.json"])
    assert predict(capsys, shared, shared / "run" / "checkpoints" / "best_model.pt", tmp_path / "from_best")[0] == 0
    # the receiving side: another folder, the export with its .json, then the export alone
    received = tmp_path / "received"
    received.mkdir()
    shutil.copy(model, received)
    shutil.copy(f"{model}.json", received)
    assert predict(capsys, shared, received / model.name, tmp_path / "from_export")[0] == 0
    (received / f"{model.name}.json").unlink()
    code, out, _ = run_cli(capsys, "checkpoints", "verify", received / model.name)
    assert code == 0 and "checked against the checksum it carries" in out
    assert predict(capsys, shared, received / model.name, tmp_path / "from_lone_export")[0] == 0
    expected = files_of(tmp_path / "from_best")
    assert len(expected) == 3
    assert files_of(tmp_path / "from_export") == expected
    assert files_of(tmp_path / "from_lone_export") == expected


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_info_shows_what_the_export_carries(shared, tmp_path, capsys, suffix):
    model = export(capsys, shared, tmp_path / f"model{suffix}")
    code, out, _ = run_cli(capsys, "checkpoints", "info", model)
    assert code == 0, out
    for words in (f"export ({suffix[1:]}) of best_model.pt", "image size 32 (squash), support size 2, seed 0",
                  "cyst, septated_cyst, solid", "99.5th percentiles", "widths 8,8", f"useg predict {model}"):
        assert words in out, (words, out)
    code, out, _ = run_cli(capsys, "checkpoints", "info", model, "--json")
    details = json.loads(out)
    assert code == 0 and details["kind"] == "export" and details["valid"] is True
    assert details["image_size"] == 32 and details["support_size"] == 2 and details["useg_version"]
    assert details["model_config"]["widths"] == [8, 8] and "data" not in details["config"]


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_pretrained_takes_an_export(shared, tmp_path, capsys, suffix):
    model = export(capsys, shared, tmp_path / f"model{suffix}")
    best = torch.load(shared / "run" / "checkpoints" / "best_model.pt", weights_only=True)["model_state_dict"]
    built = build_universeg((8, 8))
    load_pretrained(built, model)
    assert all(torch.equal(tensor, best[name]) for name, tensor in built.state_dict().items())
    code, _, err = run_cli(capsys, "train", "--run-dir", tmp_path / "fine_tuned", "--epochs", "1", "--widths", "8,8",
                           "--image-size", "32", "--support-size", "2", "--batch-size", "2", "--samples-per-epoch",
                           "2", "--num-threads", "1", "--quiet", "--vis-every", "0", "--pretrained", model)
    assert code == 0, err


def test_a_best_model_copied_without_its_json_says_to_copy_it(shared, tmp_path, capsys):
    lone = tmp_path / "best_model.pt"
    shutil.copy(shared / "run" / "checkpoints" / "best_model.pt", lone)
    code, _, err = predict(capsys, shared, lone, tmp_path / "masks")
    assert code == 2
    one_error_line(err, "copy best_model.pt.json with it", "useg checkpoints export")
    assert not (tmp_path / "masks").exists()


def foreign_files(folder: Path) -> dict[str, tuple[Path, str]]:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "notes.json").write_text(json.dumps({"weights": "somewhere"}))
    (folder / "notes.txt").write_text("not a model\n")
    with zipfile.ZipFile(folder / "bundle.pt", "w") as archive:
        archive.writestr("readme.txt", "a zip of something else")
    (folder / "random.bin").write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    return {"json": (folder / "notes.json", "a JSON file"), "text": (folder / "notes.txt", "a text file"),
            "zip": (folder / "bundle.pt", "a zip archive that torch.save did not write"),
            "random bytes": (folder / "random.bin", "data of an unknown format")}


def test_a_file_of_another_format_is_named_as_such_never_damaged(shared, tmp_path, capsys):
    for case, (path, looks_like) in foreign_files(tmp_path / "foreign").items():
        code, _, err = predict(capsys, shared, path, tmp_path / "masks")
        assert code == 2, case
        line = one_error_line(err, str(path), f"not a useg checkpoint or export: {looks_like}")
        assert "damaged" not in line and "corrupt" not in line, line
        code, out, _ = run_cli(capsys, "checkpoints", "verify", path)
        assert code == 1 and f"BAD  {path}: foreign: not a useg checkpoint or export: {looks_like}" in out, case
        code, _, err = run_cli(capsys, "evaluate", path, "--data", shared / "supports")
        assert code == 2 and "not a useg checkpoint or export" in err, case
        built = build_universeg((8, 8))
        with pytest.raises(Exception, match="not a useg checkpoint or export"):
            load_pretrained(built, path)


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_a_changed_export_is_damaged_with_or_without_its_json(shared, tmp_path, capsys, suffix):
    model = export(capsys, shared, tmp_path / f"model{suffix}")
    data = bytearray(model.read_bytes())
    data[last_tensor_byte(model)] ^= 0x10  # a weight's low mantissa bits: the file still loads
    model.write_bytes(bytes(data))
    code, out, _ = run_cli(capsys, "checkpoints", "verify", model)
    assert code == 1 and f"BAD  {model}: corrupt" in out
    code, _, err = predict(capsys, shared, model, tmp_path / "masks")
    assert code == 2
    one_error_line(err, str(model), "corrupt", "damaged on disk")
    Path(f"{model}.json").unlink()
    code, out, _ = run_cli(capsys, "checkpoints", "verify", model)
    assert code == 1 and f"BAD  {model}: corrupt: its contents do not match the checksum the export carries" in out
    code, _, err = predict(capsys, shared, model, tmp_path / "masks")
    assert code == 2
    one_error_line(err, str(model), "corrupt", "checksum the export carries")
    assert not (tmp_path / "masks").exists()


def test_evaluate_scores_an_export_on_a_folder_and_asks_for_one(shared, tmp_path, capsys):
    model = export(capsys, shared, tmp_path / "model.safetensors")
    code, _, err = run_cli(capsys, "evaluate", model)
    assert code == 2
    one_error_line(err, "carries no split", "--data")
    code, out, err = run_cli(capsys, "evaluate", model, "--data", shared / "supports", "--json",
                             "--csv", tmp_path / "scores.csv")
    assert code == 0, err
    result = json.loads(out)
    assert result["held_out"] is True and result["mean_dice"] is not None
    assert (tmp_path / "scores.csv").read_text().startswith("image,class,dice")


def test_an_export_that_cannot_be_written_says_why_for_a_users_folder(shared, tmp_path, capsys, monkeypatch):
    # An export goes to a user's folder: the advice is about that file, never `--run-dir` or `checkpoints clean`.
    best = shared / "run" / "checkpoints" / "best_model.pt"
    (tmp_path / "taken").write_text("a file where the folder should be")
    code, _, err = run_cli(capsys, "checkpoints", "export", best, tmp_path / "taken" / "model.safetensors")
    line = one_error_line(err, "taken is a file, not a folder", "run the export again")
    assert code != 0 and "--run-dir" not in line

    def disk_full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(publish, "write_all", disk_full)
    out = tmp_path / "sent" / "model.safetensors"
    code, _, err = run_cli(capsys, "checkpoints", "export", best, out)
    line = one_error_line(err, f"cannot write {out}: the disk is full", "run the export again")
    assert code != 0 and "--run-dir" not in line and "clean" not in line
    assert not out.exists() and [path.name for path in out.parent.iterdir()] == []

"""Bad inputs across the CLI: each gives one clear error line and a non-zero exit, and changes no
byte of any existing checkpoint."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from faultkit import NOBODY, TINY, checkpoints
from useg.checkpoint import CheckpointManager, load_checkpoint

FRESH = ["--epochs", "1", *TINY, "--quiet", "--vis-every", "0"]


def snapshot(run: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in checkpoints(run).glob("*.pt*")}


def assert_one_line_error(result, *words: str) -> str:
    assert result.returncode not in (0, None) and result.returncode > 0, (result.returncode, result.stderr)
    lines = result.error_lines
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


def write_pairs(root: Path, image_size: tuple[int, int], mask_size: tuple[int, int], count: int = 4) -> None:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for index in range(count):
        pixels = np.random.default_rng(index).integers(0, 255, image_size[::-1], dtype=np.uint8)
        Image.fromarray(pixels).save(root / "images" / f"case{index}.png")
        mask = np.zeros(mask_size[::-1], dtype=np.uint8)
        mask[2:-2, 2:-2] = 255
        Image.fromarray(mask).save(root / "masks" / f"case{index}.png")


# --- data --------------------------------------------------------------------------------


def test_bad_data_folders_are_one_line_each(cli, tmp_path, ledger):
    missing = tmp_path / "no_such_folder"
    a_file = tmp_path / "data.txt"
    a_file.write_text("not a folder")
    empty = tmp_path / "empty"
    empty.mkdir()
    mismatched = tmp_path / "mismatched"
    write_pairs(mismatched, image_size=(40, 40), mask_size=(32, 32))
    garbage = tmp_path / "garbage"
    write_pairs(garbage, image_size=(32, 32), mask_size=(32, 32))
    (garbage / "images" / "case1.png").write_bytes(b"\x89PNG\r\n\x1a\n but then nothing an image needs")
    empty_mask = tmp_path / "empty_mask"
    write_pairs(empty_mask, image_size=(32, 32), mask_size=(32, 32))
    (empty_mask / "masks" / "case2.png").write_bytes(b"")  # a 0-byte mask: the mask is named, not its image
    cases = {
        "missing folder": (missing, [str(missing), "does not exist"]),
        "a file, not a folder": (a_file, [str(a_file)]),
        "no known layout": (empty, [str(empty)]),
        "mask size differs from its image": (mismatched, ["case0.png", "32x32", "40x40"]),
        "undecodable image": (garbage, ["case1.png", "cannot read"]),
        "0-byte mask": (empty_mask, ["cannot read mask case2.png (the file is empty: 0 bytes)"]),
    }
    for name, (data, words) in cases.items():
        result = cli("train", "--run-dir", tmp_path / f"run_{name.replace(' ', '_')}", "--data", data, *FRESH)
        ledger.faults[f"bad data: {name}"] += 1
        assert_one_line_error(result, *words)


@pytest.fixture
def shared_dir():
    """A folder an unprivileged user can reach (pytest's tmp_path is private to root)."""
    folder = Path(tempfile.mkdtemp(prefix="useg_faults_"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def unprivileged(cli, shared_dir):
    """The uid to run a child as so that permission bits apply: None when we are not root, else
    `nobody` (root ignores permission bits); skips where `nobody` cannot run useg."""
    if os.geteuid() != 0:
        return None
    probe = cli("checkpoints", "list", "--run-dir", shared_dir, uid=NOBODY)
    if "Traceback" in probe.stderr or probe.returncode not in (0, 2):
        pytest.skip(f"root ignores permission bits and useg cannot run as nobody here: {probe.stderr[-300:]}")
    return NOBODY


def test_unreadable_data_folder_is_one_line_naming_it(cli, shared_dir, unprivileged, ledger):
    # Root reads any folder whatever its mode: as root, the training runs as `nobody`.
    data = shared_dir / "data"
    write_pairs(data, image_size=(32, 32), mask_size=(32, 32))
    (data / "images").chmod(0o000)
    run = shared_dir / "run"
    run.mkdir(mode=0o777)
    run.chmod(0o777)
    result = cli("train", "--run-dir", run, "--data", data, *FRESH, uid=unprivileged)
    ledger.faults["unreadable data folder"] += 1
    line = assert_one_line_error(result, str(data / "images"))
    assert "--run-dir" not in line, f"a read error on the data must not send the user to --run-dir: {line}"


# --- checkpoints of another architecture or a newer format --------------------------------


def test_resume_and_evaluate_on_changed_data_are_refused_naming_the_image(cli, tmp_path, ledger):
    data, run = tmp_path / "data", tmp_path / "run"
    write_pairs(data, (40, 40), (40, 40), count=6)
    assert cli("train", "--run-dir", run, "--data", data, *FRESH).returncode == 0
    before = snapshot(run)
    replaced = np.random.default_rng(99).integers(0, 255, (40, 40), dtype=np.uint8)
    Image.fromarray(replaced).save(data / "images" / "case3.png")  # same file name, other pixels
    for command in (["resume", "latest", "--run-dir", run, "--epochs", "2"], ["evaluate", "--run-dir", run]):
        result = cli(*command)
        ledger.faults["data changed under a saved split"] += 1
        assert_one_line_error(result, "is not the image the run was saved with", "use the same data")
    assert snapshot(run) == before


def test_resume_with_other_widths_is_refused_and_changes_nothing(cli, finished_run, ledger):
    before = snapshot(finished_run)
    result = cli("resume", "latest", "--run-dir", finished_run, "--widths", "16,16", "--epochs", "6")
    ledger.faults["resume with another architecture"] += 1
    assert_one_line_error(result, "widths")
    assert snapshot(finished_run) == before


def test_pretrained_weights_of_other_widths_are_refused_naming_the_right_flag(cli, reference_run, tmp_path, ledger):
    weights = checkpoints(reference_run) / "best_model.pt"
    result = cli("train", "--run-dir", tmp_path / "new", *FRESH, "--widths", "16,16", "--pretrained", weights)
    ledger.faults["--pretrained of another architecture"] += 1
    assert_one_line_error(result, str(weights), "--widths 8,8")


def test_checkpoint_from_a_newer_useg_is_refused_by_resume_export_and_evaluate(cli, finished_run, tmp_path, ledger):
    folder = checkpoints(finished_run)
    state = load_checkpoint(folder / "latest_checkpoint.pt")
    state["format_version"] = 99
    with CheckpointManager(folder, total_epochs=4, async_save=False, warn=lambda message: None) as manager:
        manager.save(state, epoch=4)  # written like any checkpoint: valid sidecar, only the version is new
    before = snapshot(finished_run)
    latest = folder / "latest_checkpoint.pt"
    for args in (["resume", "latest", "--run-dir", finished_run, "--epochs", "6"],
                 ["resume", latest, "--run-dir", finished_run],
                 ["checkpoints", "export", latest, tmp_path / "weights.safetensors"],
                 ["evaluate", latest, "--run-dir", finished_run]):
        result = cli(*args)
        ledger.faults["checkpoint of a newer format_version"] += 1
        assert_one_line_error(result, "format_version 99", "upgrade")
        assert snapshot(finished_run) == before


# --- a run folder that cannot be written ----------------------------------------------------


def test_read_only_file_system_is_one_line_and_changes_nothing(cli, finished_run, tmpfs, ledger):
    disk = tmpfs("4m")
    run = disk / "run"
    shutil.copytree(finished_run, run)
    subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
    before = snapshot(run)
    for args in (["resume", "latest", "--run-dir", run, "--epochs", "6"],
                 ["checkpoints", "clean", "--keep", "1", "--run-dir", run]):
        result = cli(*args)
        ledger.faults["read-only run folder (ro mount)"] += 1
        assert_one_line_error(result, str(checkpoints(run)), "Read-only file system")
        assert snapshot(run) == before


def test_immutable_checkpoints_folder_fails_before_training_and_changes_nothing(cli, finished_run, ledger):
    folder = checkpoints(finished_run)
    if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not available on this file system")
    try:
        before = snapshot(finished_run)
        result = cli("resume", "latest", "--run-dir", finished_run, "--epochs", "6")
        ledger.faults["read-only run folder (chattr +i)"] += 1
        assert_one_line_error(result, str(folder))
        assert result.steps == 0, "it trained before noticing that it cannot save"
        assert snapshot(finished_run) == before
    finally:
        subprocess.run(["chattr", "-i", str(folder)], check=True)


def test_permission_denied_run_folder_is_one_line_and_changes_nothing(cli, reference_run, shared_dir, unprivileged,
                                                                       ledger):
    # chmod 0o555 binds everyone but root: as root, the resume runs as `nobody`.
    run = shared_dir / "run"
    shutil.copytree(reference_run, run)
    for folder in (run, run / "checkpoints", run / "logs"):
        folder.chmod(0o555)
    before = snapshot(run)
    result = cli("resume", "latest", "--run-dir", run, "--epochs", "6", uid=unprivileged)
    ledger.faults["read-only run folder (chmod 555)"] += 1
    assert_one_line_error(result, str(checkpoints(run)))
    assert snapshot(run) == before


def test_run_folder_that_does_not_exist_is_one_line_for_every_command(cli, tmp_path, ledger):
    missing = tmp_path / "nowhere"
    for args in (["resume", "latest", "--run-dir", missing], ["checkpoints", "list", "--run-dir", missing],
                 ["checkpoints", "verify", "--run-dir", missing], ["checkpoints", "clean", "--keep", "1", "--run-dir", missing],
                 ["history", "--run-dir", missing], ["checkpoints", "info", missing / "latest_checkpoint.pt"]):
        ledger.faults["missing run folder or file"] += 1
        assert_one_line_error(cli(*args), str(missing))
    assert not missing.exists()

"""Corruption: truncations and single-bit flips in every checkpoint kind are caught by `verify`
and by load, and `resume latest` falls back to the newest valid checkpoint, naming what it skipped."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from faultkit import RUN_FLAGS, assert_every_checkpoint_verifies, assert_same_run, checkpoints, final_state
from useg.checkpoint import load_checkpoint, verify_checkpoint
from useg.errors import CheckpointError

KINDS = {"latest": "latest_checkpoint.pt", "periodic": "epoch_002_checkpoint.pt", "best": "best_model.pt"}


def truncation_offsets(size: int) -> list[int]:
    """Empty, a few bytes, inside the zip's first entry, half, just before the central directory, one byte short."""
    return [0, 1, 64, size // 3, size // 2, size - 22, size - 1]


def flip_positions(size: int) -> list[int]:
    """Bit positions: the zip magic, a header field, the tensor data, the central directory, the last byte."""
    return [0, 8 * 30 + 3, 8 * (size // 3) + 5, 8 * (size // 2) + 7, 8 * (size - 100) + 1, 8 * size - 1]


def flip_bit(path: Path, bit: int) -> None:
    with open(path, "r+b") as handle:
        handle.seek(bit // 8)
        byte = handle.read(1)[0]
        handle.seek(bit // 8)
        handle.write(bytes([byte ^ (1 << (bit % 8))]))


def assert_refused_everywhere(cli, path: Path) -> None:
    result = verify_checkpoint(path)
    assert result.status == "corrupt", (path.name, result)
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(path)
    shown = cli("checkpoints", "verify", path)
    assert shown.returncode == 1 and f"BAD  {path}: corrupt" in shown.stdout, shown.stdout + shown.stderr


@pytest.mark.parametrize("kind", KINDS)
def test_truncation_anywhere_is_detected_by_verify_and_by_load(cli, finished_run, kind, ledger):
    path = checkpoints(finished_run) / KINDS[kind]
    pristine = path.read_bytes()
    for offset in truncation_offsets(len(pristine)):
        os.truncate(path, offset)
        assert_refused_everywhere(cli, path)
        ledger.faults[f"truncation of {kind}"] += 1
        path.write_bytes(pristine)  # in place: the hard link (latest = epoch_004) keeps sharing it
    assert verify_checkpoint(path).ok


@pytest.mark.parametrize("kind", KINDS)
def test_single_bit_flip_anywhere_is_detected_by_verify_and_by_load(cli, finished_run, kind, ledger):
    path = checkpoints(finished_run) / KINDS[kind]
    for bit in flip_positions(path.stat().st_size):
        flip_bit(path, bit)
        assert_refused_everywhere(cli, path)
        ledger.faults[f"bit flip in {kind}"] += 1
        flip_bit(path, bit)
    assert verify_checkpoint(path).ok


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_damaged_sidecar_makes_its_checkpoint_refused_not_trusted(finished_run, damage, ledger):
    for kind, name in KINDS.items():
        sidecar = checkpoints(finished_run) / (name + ".json")
        if damage == "truncate":
            os.truncate(sidecar, sidecar.stat().st_size // 2)
        else:
            text = sidecar.read_text()
            digest = text.split('"sha256": "')[1][:64]
            sidecar.write_text(text.replace(digest, digest[:10] + ("1" if digest[10] != "1" else "2") + digest[11:]))
        assert not verify_checkpoint(checkpoints(finished_run) / name).ok
        with pytest.raises(CheckpointError):
            load_checkpoint(checkpoints(finished_run) / name)
        ledger.faults[f"damaged sidecar of {kind}"] += 1


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_resume_skips_a_damaged_latest_names_it_and_still_ends_equal(cli, finished_run, reference_run, damage, ledger):
    folder = checkpoints(finished_run)
    latest = folder / "latest_checkpoint.pt"  # the same inode as epoch_004: both are damaged
    if damage == "truncate":
        os.truncate(latest, latest.stat().st_size - 1000)
    else:
        flip_bit(latest, 8 * 5000 + 2)
    ledger.faults[f"{damage} latest, then resume"] += 1
    resumed = cli("resume", "latest", "--run-dir", finished_run)
    assert resumed.returncode == 0, resumed.stderr
    assert "skipped latest_checkpoint.pt: corrupt" in resumed.stderr
    assert "skipped epoch_004_checkpoint.pt: corrupt" in resumed.stderr
    assert "resuming from epoch_003_checkpoint.pt" in resumed.stderr
    assert_every_checkpoint_verifies(finished_run)
    assert_same_run(reference_run, finished_run)  # epoch 4 redone: bitwise the same


def test_resume_skips_a_damaged_mid_epoch_latest_and_redoes_the_partial_epoch(cli, reference_run, tmp_path, ledger):
    run = tmp_path / "run"
    stopped = cli("train", "--run-dir", run, *RUN_FLAGS, env={"USEG_KILL_AT": "step:4:SIGINT"})
    assert stopped.returncode == 130, stopped.stderr
    state = final_state(run)
    assert (state["epoch"], state["sampler_state"]["batch_index"]) == (1, 1)  # saved inside epoch 2
    flip_bit(checkpoints(run) / "latest_checkpoint.pt", 8 * 700)
    ledger.faults["bit flip in a mid-epoch latest, then resume"] += 1
    resumed = cli("resume", "latest", "--run-dir", run)
    assert resumed.returncode == 0, resumed.stderr
    assert "skipped latest_checkpoint.pt" in resumed.stderr and "resuming from epoch_001_checkpoint.pt" in resumed.stderr
    assert_same_run(reference_run, run)


def test_resume_with_every_checkpoint_damaged_refuses_in_one_line_and_deletes_nothing(cli, finished_run, ledger):
    folder = checkpoints(finished_run)
    for path in folder.glob("epoch_*_checkpoint.pt"):
        flip_bit(path, 8 * 1000)
    ledger.faults["every resumable checkpoint damaged"] += 1
    before = {p.name: p.read_bytes() for p in folder.glob("*.pt")}
    resumed = cli("resume", "latest", "--run-dir", finished_run)
    assert resumed.returncode == 2
    [line] = resumed.error_lines
    assert line.startswith("error: no checkpoint to resume from") and "epoch_003_checkpoint.pt" in line
    assert {p.name: p.read_bytes() for p in folder.glob("*.pt")} == before

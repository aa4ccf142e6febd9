"""Exact resume of a run over three datasets: killed (SIGKILL) while two workers build batches ahead, then
interrupted (Ctrl+C) on the training thread, resumed each time with another number of workers, it ends
bitwise equal to the same run done without a fault."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from faultkit import RUN_FLAGS, assert_every_checkpoint_verifies, assert_same_run, final_state
from medical_files import write_synthetic_folder


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> list[str]:
    """Three folders of scans that differ in count, seed and size."""
    root = tmp_path_factory.mktemp("three_datasets")
    return [str(write_synthetic_folder(root / name, count, seed=seed, size=size))
            for name, count, seed, size in (("us", 10, 11, (40, 40)), ("ct", 8, 12, (48, 36)),
                                             ("mri", 12, 13, (36, 44)))]


def data_flags(datasets: list[str]) -> list[str]:
    return [flag for folder in datasets for flag in ("--data", folder)]


@pytest.fixture(scope="module")
def three_dataset_reference(cli, datasets, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("three_reference") / "run"
    result = cli("train", "--run-dir", run, *RUN_FLAGS, *data_flags(datasets))
    assert result.returncode == 0, result.stderr
    return run


def test_three_datasets_killed_and_interrupted_mid_epoch_with_workers_resume_bitwise(cli, datasets,
                                                                                     three_dataset_reference,
                                                                                     tmp_path, ledger):
    run = tmp_path / "run"
    killed = cli("train", "--run-dir", run, *RUN_FLAGS, *data_flags(datasets), "--data-workers", "2",
                 env={"USEG_KILL_AT": "step:5"})
    ledger.faults["kill -9 at a step, 3 datasets, 2 workers"] += 1
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    kept = final_state(run)
    assert kept["config"]["data"] == datasets and 0 < kept["step"] < 5
    # The run's datasets come back from its checkpoint: no --data on resume.
    interrupted = cli("resume", "latest", "--run-dir", run, "--data-workers", "0",
                      env={"USEG_KILL_AT": "step:4:SIGINT"})
    ledger.faults["Ctrl+C at a step, 3 datasets, 0 workers"] += 1
    assert interrupted.returncode == 130, interrupted.stderr
    assert final_state(run)["step"] == kept["step"] + 4  # saved exactly where Ctrl+C stopped it
    ledger.files_verified += assert_every_checkpoint_verifies(run)
    finished = cli("resume", "latest", "--run-dir", run, "--data-workers", "1")
    assert finished.returncode == 0, finished.stderr
    assert_same_run(three_dataset_reference, run)
    assert final_state(run)["classes"] == ["us/foreground", "ct/foreground", "mri/foreground"]

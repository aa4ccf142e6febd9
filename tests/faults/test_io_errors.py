"""EIO and ENOSPC from `write` and `fsync` in the middle of a checkpoint save: the save is reported
as failed (one line, non-zero exit), no temp file is left, earlier checkpoints still verify, and a
failed fsync is never retried into a "success" (after fsyncgate: the kernel may have dropped the
dirty pages, so a second fsync can return 0 over lost data).

Two layers: in-process, `os.write` / `os.fsync` fail at their Nth call inside one
`CheckpointManager.save()`; and libfiu's `fiu-run` failing the libc calls of a real
`python -m useg train` (skipped where fiu-run is not installed).
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from faultkit import RUN_FLAGS, assert_every_checkpoint_verifies, checkpoints
from useg.checkpoint import CheckpointManager, load_checkpoint, verify_checkpoint
from useg.checkpoint.layout import VERIFIED_CACHE_NAME
from useg.errors import CheckpointError

ERRORS = {"EIO": errno.EIO, "ENOSPC": errno.ENOSPC}
LATEST = "latest_checkpoint.pt"


def training_state(epoch: int) -> dict:
    """A state with one tensor large enough to be written in several records."""
    generator = torch.Generator().manual_seed(epoch)
    return {"epoch": epoch, "model_state_dict": {"w": torch.randn(200_000, generator=generator), "b": torch.zeros(3)},
            "optimizer_state_dict": {"state": {}, "param_groups": [{"lr": 1e-3, "params": [0, 1]}]},
            "history": {"val_dice": [0.1] * epoch}}


class Faulty:
    """Wraps an os function: calls are counted (with the path of the fd) and the `fail_at`th raises `errno_`."""

    def __init__(self, real, errno_: int, fail_at: int | None) -> None:
        self.real, self.errno, self.fail_at = real, errno_, fail_at
        self.paths: list[str] = []
        self.failed_path: str | None = None

    def __call__(self, fd, *args):
        path = os.readlink(f"/proc/self/fd/{fd}")
        if VERIFIED_CACHE_NAME in path:
            return self.real(fd, *args)  # a cache of known hashes: losing a write costs a re-hash, not the save
        self.paths.append(path)
        if len(self.paths) == self.fail_at:
            self.failed_path = self.paths[-1]
            raise OSError(self.errno, os.strerror(self.errno))
        return self.real(fd, *args)

    @property
    def after_failure(self) -> list[str]:
        return self.paths[self.fail_at:] if self.fail_at else []


def save_epoch_2(directory: Path, monkeypatch, function: str, errno_: int, fail_at: int | None) -> Faulty:
    """Epoch 1 saved cleanly, then epoch 2 (latest, periodic link, best, sidecars) with `function` faulty."""
    with CheckpointManager(directory, total_epochs=2, warn=lambda message: None) as manager:
        manager.save(training_state(1), epoch=1, val_dice=0.1)
        manager.wait()
        faulty = Faulty(getattr(os, function), errno_, fail_at)
        with monkeypatch.context() as patch:
            patch.setattr(os, function, faulty)
            manager.save(training_state(2), epoch=2, val_dice=0.2)
            try:
                manager.wait()
            except (CheckpointError, OSError) as error:
                faulty.error = error
            else:
                faulty.error = None
    return faulty


def calls_in_a_clean_save(tmp_path: Path, monkeypatch, function: str) -> int:
    return len(save_epoch_2(tmp_path / "count", monkeypatch, function, errno.EIO, None).paths)


@pytest.mark.parametrize("function", ["fsync", "write"])
@pytest.mark.parametrize("name", ERRORS)
def test_failing_write_or_fsync_at_every_call_of_a_save_fails_it_cleanly(tmp_path, monkeypatch, function, name,
                                                                          ledger):
    calls = calls_in_a_clean_save(tmp_path, monkeypatch, function)
    assert calls >= (6 if function == "fsync" else 3), calls
    for fail_at in range(1, calls + 1):
        folder = tmp_path / f"fail_{fail_at}"
        faulty = save_epoch_2(folder, monkeypatch, function, ERRORS[name], fail_at)
        where = f"{function} call {fail_at} of {calls} ({faulty.failed_path})"
        assert faulty.error is not None, f"{name} from {where} was not reported: the save counted as done"
        assert "\n" not in str(faulty.error), faulty.error
        assert isinstance(faulty.error, CheckpointError), f"{name} from {where} was not explained: {faulty.error!r}"
        assert ("not enough space" if name == "ENOSPC" else "I/O error") in str(faulty.error), where
        if function == "fsync":
            assert faulty.failed_path not in faulty.after_failure, f"{where} was fsynced again after it failed"
        assert not list(folder.glob(".*.tmp")), f"{where} left a temp file"
        for path in folder.glob("*.pt"):
            assert verify_checkpoint(path).ok, f"{path.name} fails verify after {name} from {where}"
        latest = load_checkpoint(folder / LATEST)
        assert latest["epoch"] in (1, 2), where
        ledger.faults[f"{name} from {function} in a save (in-process)"] += 1


def test_a_failed_fsync_is_reported_once_and_the_next_save_writes_everything_again(tmp_path, monkeypatch):
    """After a failed save the next one succeeds only by writing and fsyncing its own new file."""
    folder = tmp_path / "run"
    with CheckpointManager(folder, total_epochs=3, warn=lambda message: None) as manager:
        manager.save(training_state(1), epoch=1, val_dice=0.1)
        manager.wait()
        faulty = Faulty(os.fsync, errno.EIO, 1)
        with monkeypatch.context() as patch:
            patch.setattr(os, "fsync", faulty)
            manager.save(training_state(2), epoch=2, val_dice=0.2)
            with pytest.raises((CheckpointError, OSError)):
                manager.wait()
        manager.wait()  # reported once, not again
        assert load_checkpoint(folder / LATEST)["epoch"] == 1
        manager.save(training_state(2), epoch=2, val_dice=0.2)
        manager.wait()
    assert load_checkpoint(folder / LATEST)["epoch"] == 2
    assert torch.equal(load_checkpoint(folder / LATEST)["model_state_dict"]["w"], training_state(2)["model_state_dict"]["w"])


# --- libfiu: the libc calls of a real `python -m useg train` fail ------------------------------

FIU_RUN = shutil.which("fiu-run")
needs_fiu = pytest.mark.skipif(FIU_RUN is None, reason="libfiu's fiu-run is not installed (Debian package fiu-utils)")


def useg_under_fiu(command: str, run: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([FIU_RUN, "-x", "-f", "", "-c", command, sys.executable, "-m", "useg", *args,
                           "--run-dir", str(run)], capture_output=True, text=True, timeout=300)


def assert_failed_in_one_line(done: subprocess.CompletedProcess, run: Path) -> None:
    assert done.returncode != 0
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if line.strip() and not line.startswith("warning:")]
    assert len(errors) == 1 and errors[0].startswith("error: "), done.stderr[-3000:]
    assert not list(run.rglob(".*.tmp")), "a temp file was left"


@needs_fiu
@pytest.mark.parametrize("name", ERRORS)
def test_fiu_every_fsync_fails_then_train_fails_in_one_line(tmp_path, name, ledger):
    run = tmp_path / "run"
    done = useg_under_fiu(f"enable name=posix/io/sync/fsync,failinfo={ERRORS[name]}", run, "train", *RUN_FLAGS)
    ledger.faults[f"fiu: {name} from every fsync"] += 1
    assert_failed_in_one_line(done, run)
    assert not list(checkpoints(run).glob("*.pt")), "a checkpoint whose fsync failed was published"


@needs_fiu
@pytest.mark.parametrize("name", ERRORS)
def test_fiu_fsync_fails_while_resuming_then_earlier_checkpoints_still_verify(cli, tmp_path, name, ledger):
    run = tmp_path / "run"
    assert cli("train", "--run-dir", run, *RUN_FLAGS, env={"USEG_KILL_AT": "step:4:SIGTERM"}).returncode == 143
    before = {p.name: p.read_bytes() for p in checkpoints(run).glob("*.pt")}
    done = useg_under_fiu(f"enable name=posix/io/sync/fsync,failinfo={ERRORS[name]}", run, "resume", "latest")
    ledger.faults[f"fiu: {name} from every fsync while resuming"] += 1
    assert_failed_in_one_line(done, run)
    assert {p.name: p.read_bytes() for p in checkpoints(run).glob("*.pt")} == before
    assert_every_checkpoint_verifies(run)


@needs_fiu
@pytest.mark.parametrize("probability", ["0.02", "0.1"])
def test_fiu_random_write_failures_never_leave_a_bad_checkpoint(tmp_path, probability, ledger):
    """write() fails at random (EIO), also the writes to stdout and stderr, so what is printed is not
    judged (a traceback may be the message of a failed print): only what is left on disk."""
    run = tmp_path / "run"
    useg_under_fiu(f"enable_random name=posix/io/rw/write,probability={probability},failinfo={errno.EIO}",
                   run, "train", *RUN_FLAGS)
    ledger.faults[f"fiu: EIO from write() with probability {probability}"] += 1
    assert not list(run.rglob(".*.tmp")), "a temp file was left"
    for path in checkpoints(run).glob("*.pt"):
        assert verify_checkpoint(path).ok, path.name

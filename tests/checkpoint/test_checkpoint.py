"""Specification of useg.checkpoint: files on disk, crash safety, verification, safe loading."""

from __future__ import annotations

import json
import os
import random
import signal
import struct
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from useg.checkpoint import (
    atomic_write_json,
    bytes_freed,
    capture_rng_state,
    is_locked,
    list_checkpoints,
    load_checkpoint,
    periodic_epochs,
    read_metadata,
    restore_rng_state,
    verify_checkpoint,
)
from useg.checkpoint import publish
from useg.checkpoint.integrity import sha256_bytes
from checkpoint_kit import Trainer, manager, train
from useg.errors import CheckpointError, UsegError

LATEST = "latest_checkpoint.pt"
BEST = "best_model.pt"


# --- helpers ------------------------------------------------------------------------------


def periodic_on_disk(directory: Path) -> set[int]:
    return {int(p.name[6:9]) for p in directory.glob("epoch_*_checkpoint.pt")}


def flip_byte(path: Path, offset: int | None = None) -> None:
    with open(path, "r+b") as handle:
        handle.seek(path.stat().st_size // 2 if offset is None else offset)
        byte = handle.read(1)
        handle.seek(-1, os.SEEK_CUR)
        handle.write(bytes([byte[0] ^ 0xFF]))


def dead_pid() -> int:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    return pid


# --- policy -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("total", "expected"),
    [(1, {1}), (3, {1, 2, 3}), (5, {1, 2, 3, 4, 5}), (7, {2, 3, 5, 6, 7}), (10, {2, 4, 6, 8, 10}),
     (50, {10, 20, 30, 40, 50})],
)
def test_periodic_files_exist_for_the_first_epoch_at_or_after_each_percentage(tmp_path, total, expected):
    assert periodic_epochs(total) == expected
    trainer = Trainer()
    with manager(tmp_path, total) as mgr:
        for epoch in range(1, total + 1):
            trainer.step()
            mgr.save(trainer.state(epoch), epoch=epoch, val_dice=0.5)
            if epoch in expected:  # the periodic file is the same bytes as latest at that epoch
                periodic = tmp_path / f"epoch_{epoch:03d}_checkpoint.pt"
                assert periodic.read_bytes() == (tmp_path / LATEST).read_bytes()
    assert periodic_on_disk(tmp_path) == expected
    assert {p.name for p in tmp_path.glob("*.pt")} >= {LATEST, BEST}


def test_periodic_percentages_are_configurable_and_never_give_two_files_per_epoch(tmp_path):
    assert periodic_epochs(10, (50, 100)) == {5, 10}
    assert periodic_epochs(3, (10, 20, 30)) == {1}
    train(tmp_path, 10, periodic_percentages=(50, 100))
    assert periodic_on_disk(tmp_path) == {5, 10}


def test_periodic_file_is_a_hard_link_of_latest_so_its_bytes_are_stored_once(tmp_path):
    train(tmp_path, 2, total=2, periodic_percentages=(100,))
    assert (tmp_path / "epoch_002_checkpoint.pt").stat().st_ino == (tmp_path / LATEST).stat().st_ino


def test_extending_a_run_recomputes_the_periodic_schedule(tmp_path):
    with manager(tmp_path, 50) as mgr:
        assert mgr.scheduled_epochs == {10, 20, 30, 40, 50}
        mgr.total_epochs = 100
        assert mgr.scheduled_epochs == {20, 40, 60, 80, 100}
        with pytest.raises(CheckpointError):
            mgr.total_epochs = 0


# --- file contents ------------------------------------------------------------------------


def test_saved_file_opens_with_plain_weights_only_load_and_holds_keys_and_stamps(tmp_path):
    trainer = train(tmp_path, 1)
    state = torch.load(tmp_path / LATEST, weights_only=True)
    assert set(trainer.state(1)) <= set(state)
    assert state["format_version"] == 1 and state["epoch"] == 1
    assert state["created"].endswith("+00:00")
    assert set(state["versions"]) == {"torch", "python", "numpy", "useg"}
    assert torch.equal(state["model_state_dict"]["weight"], trainer.model.weight.detach())
    assert state["optimizer_state_dict"]["state"][0]["step"] == trainer.optimizer.state_dict()["state"][0]["step"]


def test_sidecar_records_checksum_and_training_metadata(tmp_path):
    train(tmp_path, 2, total=2, periodic_percentages=(100,))
    sidecar = json.loads((tmp_path / (LATEST + ".json")).read_text())
    assert sidecar["sha256"] == sha256_bytes((tmp_path / LATEST).read_bytes())
    assert sidecar["size_bytes"] == (tmp_path / LATEST).stat().st_size
    assert (sidecar["kind"], sidecar["epoch"], sidecar["train_loss"], sidecar["total_epochs"]) == ("latest", 2, 0.5, 2)
    assert sidecar["config"] == {"lr": 1e-2, "data": "toy"}
    assert json.loads((tmp_path / "epoch_002_checkpoint.pt.json").read_text())["kind"] == "periodic"


def test_best_model_lacks_training_only_parts_and_records_val_dice(tmp_path):
    train(tmp_path, 1)
    best = torch.load(tmp_path / BEST, weights_only=True)
    assert not {"optimizer_state_dict", "scheduler_state_dict", "rng_state"} & set(best)
    assert {"model_state_dict", "epoch", "config", "history", "versions"} <= set(best)
    assert best["val_dice"] == 0.5


def test_best_model_is_rewritten_only_on_strict_improvement(tmp_path):
    dice = {1: 0.5, 2: 0.5, 3: 0.4, 4: 0.6, 5: 0.6}
    best_epochs = []
    trainer = Trainer()
    with manager(tmp_path, 5) as mgr:
        for epoch, val_dice in dice.items():
            mgr.save(trainer.state(epoch), epoch=epoch, val_dice=val_dice)
            best_epochs.append(read_metadata(tmp_path / BEST)["epoch"])
    assert best_epochs == [1, 1, 1, 4, 4]


def test_planned_files_name_exactly_what_each_save_writes(tmp_path):
    dice = {1: 0.5, 2: 0.5, 3: 0.4, 4: 0.6, 5: 0.6}
    trainer = Trainer()
    with manager(tmp_path, 5, async_save=False) as mgr:
        for epoch, val_dice in dice.items():
            planned = mgr.planned_files(epoch, val_dice)
            before = {p.name: p.stat().st_ino for p in tmp_path.glob("*.pt")}  # each publish is a new inode
            mgr.save(trainer.state(epoch), epoch=epoch, val_dice=val_dice)
            after = {p.name: p.stat().st_ino for p in tmp_path.glob("*.pt")}
            assert sorted(planned) == sorted(n for n, t in after.items() if before.get(n) != t), epoch
    assert mgr.planned_files(6, 0.1, kind="interrupt") == [LATEST]


def test_a_new_manager_reads_the_best_val_dice_back_from_disk(tmp_path):
    train(tmp_path, 2, total=5, dice=lambda e: 0.7)
    trainer = Trainer()
    with manager(tmp_path, 5) as mgr:
        assert mgr.best_val_dice == 0.7
        mgr.save(trainer.state(3), epoch=3, val_dice=0.65)
    assert torch.load(tmp_path / BEST, weights_only=True)["val_dice"] == 0.7


def test_interrupt_save_rewrites_latest_only_and_records_its_kind(tmp_path):
    trainer = Trainer()
    with manager(tmp_path, total=3) as mgr:
        mgr.save(trainer.state(1), epoch=1, val_dice=0.5)
        mgr.save(trainer.state(1), epoch=1, val_dice=0.9, kind="interrupt", step=7)
        assert mgr.load("latest")["epoch"] == 1
    assert read_metadata(tmp_path / LATEST)["kind"] == "interrupt"
    assert read_metadata(tmp_path / LATEST)["step"] == 7
    assert read_metadata(tmp_path / BEST)["val_dice"] == 0.5
    assert periodic_on_disk(tmp_path) == {1}


def test_value_refused_by_weights_only_is_a_type_error_naming_its_key_path(tmp_path):
    state = Trainer().state(1)
    state["history"] = {"val_dice": [0.1, 0.2, 0.3, np.float64(0.4)]}
    with manager(tmp_path) as mgr, pytest.raises(TypeError, match=r"history\.val_dice\[3\].*numpy\.float64"):
        mgr.save(state, epoch=1)
    assert not (tmp_path / LATEST).exists()


def test_model_state_dict_metadata_survives_the_snapshot(tmp_path):
    trainer = train(tmp_path, 1)
    loaded = load_checkpoint(tmp_path / LATEST)["model_state_dict"]
    assert loaded._metadata == trainer.model.state_dict()._metadata


def test_newer_format_version_is_refused_on_load_with_upgrade_advice(tmp_path):
    with manager(tmp_path) as mgr:
        mgr.save({**Trainer().state(1), "format_version": 2}, epoch=1)
        with pytest.raises(CheckpointError, match="newer useg.*upgrade"):
            mgr.load("latest")


# --- atomicity and the pending-sidecar protocol -------------------------------------------


def test_failed_rename_leaves_previous_latest_intact_and_no_temp_files(tmp_path, monkeypatch):
    trainer = train(tmp_path, 1, total=10)
    real_replace = os.replace

    def replace_failing_once(src, dst):
        if Path(dst).name == LATEST:
            monkeypatch.setattr(os, "replace", real_replace)
            raise OSError("simulated crash before rename")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace_failing_once)
    with manager(tmp_path, 10) as mgr, pytest.raises(OSError, match="simulated"):
        mgr.save(trainer.state(2), epoch=2)
    assert verify_checkpoint(tmp_path / LATEST).status == "ok"
    assert load_checkpoint(tmp_path / LATEST)["epoch"] == 1
    assert not list(tmp_path.glob(".*.tmp")) and not list(tmp_path.glob("*.pending"))


def test_stale_temp_files_are_removed_at_start_up(tmp_path):
    train(tmp_path, 1)
    (tmp_path / ".latest_checkpoint.pt.abc123.tmp").write_bytes(b"half a checkpoint")
    warnings: list[str] = []
    manager(tmp_path, warnings=warnings).close()
    assert not list(tmp_path.glob(".*.tmp"))
    assert any("removed 1 temp file" in w for w in warnings)


def _kill_after(step: str) -> None:
    """In a forked child: wrap one protocol step so the process SIGKILLs itself right after it."""
    def killing(real, when=lambda *args: True):
        def wrapper(*args, **kwargs):
            result = real(*args, **kwargs)
            if when(*args):
                os.kill(os.getpid(), signal.SIGKILL)
            return result
        return wrapper

    if step == "temp-written":
        publish.write_state_temp = killing(publish.write_state_temp)
    elif step == "pending-written":
        publish.atomic_write_json = killing(publish.atomic_write_json)
    elif step == "checkpoint-renamed":
        publish.replace_durably = killing(publish.replace_durably, lambda src, dst: dst.suffix == ".pt")
    elif step == "sidecar-renamed":
        publish.replace_durably = killing(publish.replace_durably, lambda src, dst: dst.suffix == ".json")


def _save_in_child_killed(prepare_kill, save) -> None:
    """Fork; the child arms its kill with `prepare_kill()` and runs `save()`; assert it died of SIGKILL."""
    pid = os.fork()
    if pid == 0:
        try:
            prepare_kill()
            save()
        finally:
            os._exit(3)  # reached only if the kill point was never hit
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL


@pytest.mark.parametrize(
    ("step", "epoch_on_disk"),
    [("temp-written", 1), ("pending-written", 1), ("checkpoint-renamed", 3), ("sidecar-renamed", 3)],
)
def test_kill_at_each_step_of_a_save_leaves_a_verifiable_latest(tmp_path, step, epoch_on_disk):
    trainer = train(tmp_path, 1, total=10)
    # Epoch 3 of 10 has no periodic file and no val_dice (no best): the save writes latest alone.
    _save_in_child_killed(lambda: _kill_after(step), lambda: manager(tmp_path, 10).save(trainer.state(3), epoch=3))

    result = verify_checkpoint(tmp_path / LATEST)  # readers without the lock, e.g. `useg list`
    assert result.status == "ok" and result.metadata["epoch"] == epoch_on_disk
    assert read_metadata(tmp_path / LATEST)["epoch"] == epoch_on_disk
    assert load_checkpoint(tmp_path / LATEST)["epoch"] == epoch_on_disk

    warnings: list[str] = []
    with manager(tmp_path, 10, warnings=warnings) as mgr:  # start-up under the lock tidies up
        assert any("no longer running" in w for w in warnings)  # the killed child's lock
        assert mgr.load("latest")["epoch"] == epoch_on_disk
    assert not list(tmp_path.glob(".*.tmp")) and not list(tmp_path.glob("*.pending"))
    assert json.loads((tmp_path / (LATEST + ".json")).read_text())["epoch"] == epoch_on_disk


def _kill_at_rename(number: int) -> None:
    """In a forked child: SIGKILL right after the `number`-th rename of the publish protocol."""
    real, renames = publish.replace_durably, []

    def counting(src, dst):
        real(src, dst)
        renames.append(dst)
        if len(renames) == number:
            os.kill(os.getpid(), signal.SIGKILL)

    publish.replace_durably = counting


@pytest.mark.parametrize("renames_done", range(1, 7))
def test_a_kill_during_an_epoch_save_never_leaves_latest_ahead_of_its_periodic_and_best(tmp_path, renames_done):
    # Were latest written first, a kill right after it would lose epoch 2's periodic and best files
    # for good: resume continues from latest (epoch 2) and never writes them again.
    trainer = train(tmp_path, 1, total=10, dice=lambda e: 0.5)
    epoch_2 = trainer.state(2)  # a periodic epoch with a better val_dice: best, periodic and latest, 2 renames each
    _save_in_child_killed(lambda: _kill_at_rename(renames_done),
                          lambda: manager(tmp_path, 10).save(epoch_2, epoch=2, val_dice=0.9))

    assert all(verify_checkpoint(path).ok for path in tmp_path.glob("*.pt"))
    latest_epoch = load_checkpoint(tmp_path / LATEST)["epoch"]
    assert latest_epoch == (2 if renames_done >= 5 else 1)  # latest's own rename is the 5th
    if latest_epoch == 2:
        assert load_checkpoint(tmp_path / "epoch_002_checkpoint.pt")["epoch"] == 2
        assert load_checkpoint(tmp_path / BEST)["val_dice"] == 0.9
    with manager(tmp_path, 10) as mgr:  # what a resumed run does next: redo epoch 2 unless latest has it
        if latest_epoch == 1:
            mgr.save(epoch_2, epoch=2, val_dice=0.9)
    assert periodic_on_disk(tmp_path) == {2}
    assert read_metadata(tmp_path / BEST)["val_dice"] == 0.9 and read_metadata(tmp_path / BEST)["epoch"] == 2
    assert torch.equal(load_checkpoint(tmp_path / BEST)["model_state_dict"]["weight"], trainer.model.weight.detach())


def test_disk_full_raises_checkpoint_error_naming_folder_and_bytes_and_keeps_old_latest(tmp_path):
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount_point)],
                             capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("needs root and mount permission to make a small tmpfs")
    try:
        trainer = Trainer()
        with manager(mount_point) as mgr:
            mgr.save(trainer.state(1), epoch=1)
            big = {**trainer.state(2), "padding": torch.zeros(200_000)}
            with pytest.raises(CheckpointError, match=rf"not enough space in {mount_point}: writing needs \d+ bytes"):
                mgr.save(big, epoch=2)
        assert verify_checkpoint(mount_point / LATEST).status == "ok"
        assert not list(mount_point.glob(".*.tmp"))
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)


def test_a_folder_that_takes_no_new_files_fails_at_start_up_not_at_the_first_save(tmp_path):
    train(tmp_path, 1)
    if subprocess.run(["chattr", "+i", str(tmp_path)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i (immutable folder) is not available here")
    try:  # the lock file exists and stays writable: only creating a file shows the problem
        with pytest.raises(CheckpointError, match=rf"cannot write in {tmp_path}: Operation not permitted"):
            manager(tmp_path)
    finally:
        subprocess.run(["chattr", "-i", str(tmp_path)], check=True)
    assert not is_locked(tmp_path) and not list(tmp_path.glob(".*.tmp"))


# --- verification -------------------------------------------------------------------------


def test_one_flipped_byte_is_corrupt_and_refused_on_load(tmp_path):
    train(tmp_path, 1)
    flip_byte(tmp_path / LATEST)
    result = verify_checkpoint(tmp_path / LATEST)
    assert result.status == "corrupt" and "sha256" in result.reason
    with pytest.raises(CheckpointError, match=f"{LATEST}: corrupt"):
        load_checkpoint(tmp_path / LATEST)


def test_truncated_file_is_corrupt(tmp_path):
    train(tmp_path, 1)
    path = tmp_path / LATEST
    os.truncate(path, path.stat().st_size // 2)
    result = verify_checkpoint(path)
    assert result.status == "corrupt" and "truncated" in result.reason


def test_truncated_file_without_sidecar_is_corrupt_not_just_unchecked(tmp_path):
    train(tmp_path, 1)
    os.unlink(tmp_path / (LATEST + ".json"))
    os.truncate(tmp_path / LATEST, 100)
    assert verify_checkpoint(tmp_path / LATEST).status == "corrupt"


def test_a_damaged_pickle_without_sidecar_is_corrupt_not_an_exception(tmp_path):
    # Found by the long lifecycle mode: a sidecar deleted, then a byte flipped inside data.pkl.
    train(tmp_path, 1)
    os.unlink(tmp_path / (LATEST + ".json"))
    with zipfile.ZipFile(tmp_path / LATEST) as archive:
        entry = next(info for info in archive.infolist() if info.filename.endswith("/data.pkl"))
    with open(tmp_path / LATEST, "rb") as handle:
        handle.seek(entry.header_offset + 26)
        name_length, extra_length = struct.unpack("<HH", handle.read(4))
    pickle_start = entry.header_offset + 30 + name_length + extra_length
    with open(tmp_path / LATEST, "r+b") as handle:
        handle.seek(pickle_start + 2)  # just past PROTO 2: an opcode no pickler writes
        handle.write(bytes([252]))
    result = verify_checkpoint(tmp_path / LATEST)
    assert result.status == "corrupt" and "pickle is damaged" in result.reason, result


def test_missing_sidecar_is_missing_checksum_and_missing_file_is_missing(tmp_path):
    train(tmp_path, 1)
    os.unlink(tmp_path / (LATEST + ".json"))
    assert verify_checkpoint(tmp_path / LATEST).status == "missing-checksum"
    assert verify_checkpoint(tmp_path / "nothing.pt").status == "missing"
    with pytest.raises(CheckpointError, match="missing-checksum"):
        load_checkpoint(tmp_path / LATEST)


class _CreatesAFile:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_unsafe_pickle_is_reported_refused_and_never_executed(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "epoch_001_checkpoint.pt"
    torch.save({"format_version": 1, "epoch": 1, "payload": _CreatesAFile(marker)}, path)
    data = path.read_bytes()
    atomic_write_json(tmp_path / (path.name + ".json"),
                      {"sha256": sha256_bytes(data), "size_bytes": len(data), "kind": "periodic", "epoch": 1})

    result = verify_checkpoint(path)
    assert result.status == "unsafe" and "posix.system" in result.reason
    with pytest.raises(CheckpointError, match="posix.system"):
        load_checkpoint(path)
    with manager(tmp_path) as mgr:
        with pytest.raises(CheckpointError, match="unsafe"):
            mgr.load(1)
        with pytest.raises(CheckpointError, match="no checkpoint to resume from"):
            mgr.resolve("latest")
        assert [i.name for i in mgr.list()] == [path.name]
    assert not marker.exists()


# --- resolving ----------------------------------------------------------------------------


def test_corrupt_latest_falls_back_to_newest_valid_periodic_with_a_warning(tmp_path):
    train(tmp_path, 5, total=10)  # periodic files at epochs 2 and 4; latest is epoch 5
    flip_byte(tmp_path / LATEST)
    warnings: list[str] = []
    with manager(tmp_path, 10, warnings=warnings) as mgr:
        assert mgr.resolve("latest") == tmp_path / "epoch_004_checkpoint.pt"
        assert mgr.load("latest")["epoch"] == 4
    assert warnings and LATEST in warnings[0] and "sha256" in warnings[0] and "epoch_004" in warnings[0]


def test_best_model_is_never_a_resume_fallback(tmp_path):
    train(tmp_path, 1, total=10)  # no periodic file yet
    os.unlink(tmp_path / LATEST)
    with manager(tmp_path) as mgr, pytest.raises(CheckpointError, match=f"no checkpoint to resume from in {tmp_path}"):
        mgr.resolve("latest")


def test_resolve_names_best_epoch_numbers_and_paths(tmp_path):
    train(tmp_path, 4, total=4, periodic_percentages=(50,))
    with manager(tmp_path, 4) as mgr:
        assert mgr.resolve("best") == tmp_path / BEST
        assert mgr.resolve(2) == tmp_path / "epoch_002_checkpoint.pt"
        assert mgr.resolve(str(tmp_path / LATEST)) == tmp_path / LATEST
        with pytest.raises(CheckpointError, match="epoch_003_checkpoint.pt"):
            mgr.resolve(3)
        with pytest.raises(CheckpointError, match="missing"):
            mgr.resolve(tmp_path / "elsewhere.pt")


def test_checkpoint_errors_are_useg_errors_on_one_line(tmp_path):
    with manager(tmp_path) as mgr, pytest.raises(UsegError) as caught:
        mgr.load("latest")
    assert "\n" not in str(caught.value)


# --- listing ------------------------------------------------------------------------------


def test_list_reads_sidecars_only_and_flags_files_without_one(tmp_path):
    train(tmp_path, 4, total=4, dice=lambda e: 0.1 * e)
    flip_byte(tmp_path / "epoch_001_checkpoint.pt")  # same size: only hashing (verify) would notice
    (tmp_path / "stray.pt").write_bytes(b"not ours")
    infos = {i.name: i for i in list_checkpoints(tmp_path)}
    assert infos["epoch_001_checkpoint.pt"].valid
    assert infos["stray.pt"].status == "missing-checksum" and not infos["stray.pt"].valid
    assert (infos[LATEST].kind, infos[LATEST].epoch, infos[LATEST].train_loss) == ("latest", 4, 0.25)
    assert infos[BEST].val_dice == pytest.approx(0.4) and infos[BEST].kind == "best"
    assert infos[LATEST].best_val_dice == pytest.approx(0.4) and infos[LATEST].best_epoch == 4
    record = infos[LATEST].to_dict()
    assert {"path", "kind", "epoch", "val_dice", "train_loss", "size_bytes", "created", "valid"} <= set(record)
    json.dumps(record)


def test_list_survives_unreadable_sidecars_and_orphans(tmp_path):
    train(tmp_path, 2, total=2)
    (tmp_path / (LATEST + ".json")).write_text("{not json")
    os.unlink(tmp_path / "epoch_001_checkpoint.pt")
    infos = {i.name: i for i in list_checkpoints(tmp_path)}
    assert not infos[LATEST].valid and "unreadable" in infos[LATEST].reason
    assert infos["epoch_001_checkpoint.pt"].status == "missing"
    assert list_checkpoints(tmp_path / "no-such-dir") == []


# --- lock ---------------------------------------------------------------------------------

_HOLD_LOCK = textwrap.dedent("""
    import sys
    from useg.checkpoint import CheckpointManager
    with CheckpointManager(sys.argv[1], total_epochs=5, async_save=False):
        print("locked", flush=True)
        sys.stdin.read()
""")


def test_second_manager_in_another_process_is_refused_while_the_first_trains(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, str(tmp_path)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert is_locked(tmp_path)
        with pytest.raises(CheckpointError, match=rf"being trained by process {holder.pid}.*another --run-dir"):
            manager(tmp_path)
        with manager(tmp_path, lock=False) as reader, pytest.raises(CheckpointError, match="being trained"):
            reader.clean(keep=1)
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
        holder.stdout.close()
    assert not is_locked(tmp_path)
    manager(tmp_path).close()


def test_lock_left_by_a_dead_process_is_taken_over_with_a_warning(tmp_path):
    pid = dead_pid()
    (tmp_path / ".lock").write_text(json.dumps({"pid": pid, "hostname": "somewhere"}))
    warnings: list[str] = []
    with manager(tmp_path, warnings=warnings):
        assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()
        assert not is_locked(tmp_path)  # held by this very process, so not "another"
    assert any(str(pid) in w for w in warnings)


def test_a_forgotten_manager_releases_the_lock_when_garbage_collected(tmp_path):
    forgotten = manager(tmp_path)
    del forgotten  # never closed
    manager(tmp_path).close()


# --- clean --------------------------------------------------------------------------------


def test_clean_keeps_newest_periodic_plus_latest_and_best(tmp_path):
    train(tmp_path, 10, dice=lambda e: 1.0 if e == 1 else 0.5)  # periodic 2,4,6,8,10; best from epoch 1
    with manager(tmp_path) as mgr:
        would_remove = mgr.clean(keep=2, dry_run=True)
        assert sorted(i.epoch for i in would_remove) == [2, 4, 6]
        assert periodic_on_disk(tmp_path) == {2, 4, 6, 8, 10}
        removed = mgr.clean(keep=2)
    assert periodic_on_disk(tmp_path) == {8, 10}
    assert (tmp_path / LATEST).exists() and (tmp_path / BEST).exists()
    assert not (tmp_path / "epoch_002_checkpoint.pt.json").exists()
    assert bytes_freed(removed) == sum(i.size_bytes for i in removed)


def test_clean_counts_no_freed_bytes_for_a_hard_link_of_latest(tmp_path):
    train(tmp_path, 2, total=2, periodic_percentages=(100,))
    with manager(tmp_path, 2) as mgr:
        removed = mgr.clean(keep=0)
    assert [i.name for i in removed] == ["epoch_002_checkpoint.pt"] and bytes_freed(removed) == 0
    assert verify_checkpoint(tmp_path / LATEST).status == "ok"


def test_clean_refuses_a_negative_keep(tmp_path):
    with manager(tmp_path) as mgr, pytest.raises(CheckpointError, match="keep"):
        mgr.clean(keep=-1)


def test_clean_never_removes_the_checkpoint_the_run_resumed_from(tmp_path):
    train(tmp_path, 10)
    with manager(tmp_path) as mgr:
        mgr.load(2)
        mgr.clean(keep=1)
    # 10 is latest's twin (the kept one), 8 is what resume falls back to if that file rots, 2 is protected.
    assert periodic_on_disk(tmp_path) == {2, 8, 10}


# --- async save ---------------------------------------------------------------------------


def test_async_save_writes_the_values_at_save_time(tmp_path):
    trainer = Trainer()
    expected = trainer.model.weight.detach().clone()
    with manager(tmp_path, async_save=True) as mgr:
        mgr.save(trainer.state(1), epoch=1)
        with torch.no_grad():
            trainer.model.weight.add_(100.0)
        mgr.wait()
        assert torch.equal(mgr.load("latest")["model_state_dict"]["weight"], expected)


def test_async_writer_error_surfaces_on_wait_once(tmp_path, monkeypatch):
    def broken_publish(*args, **kwargs):
        raise OSError("disk on fire")

    monkeypatch.setattr("useg.checkpoint.manager.publish_state", broken_publish)
    mgr = manager(tmp_path, async_save=True)
    mgr.save(Trainer().state(1), epoch=1)
    with pytest.raises(OSError, match="disk on fire"):
        mgr.wait()
    mgr.wait()  # reported once, then cleared
    mgr.close()
    assert not is_locked(tmp_path)


def test_close_releases_the_lock_even_when_the_last_write_failed(tmp_path, monkeypatch):
    monkeypatch.setattr("useg.checkpoint.manager.publish_state", lambda *a, **k: (_ for _ in ()).throw(OSError("x")))
    mgr = manager(tmp_path, async_save=True)
    mgr.save(Trainer().state(1), epoch=1)
    with pytest.raises(OSError):
        mgr.close()
    manager(tmp_path).close()  # would be refused if the lock were still held


_CTRL_C_WHILE_CLOSING = textwrap.dedent("""
    import os, signal, sys, threading, time
    import torch
    from useg.checkpoint import CheckpointManager
    from useg.checkpoint import manager as manager_module

    real_publish = manager_module.publish_state
    manager_module.publish_state = lambda *a, **k: (time.sleep(1.0), real_publish(*a, **k))
    mgr = CheckpointManager(sys.argv[1], total_epochs=10, warn=lambda message: None)
    mgr.save({"weights": torch.ones(1000)}, epoch=1)  # written in the background, slowly
    threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT)).start()
    try:
        mgr.close()
    except KeyboardInterrupt:
        print("interrupted; lock held:", mgr._lock.held, flush=True)
    # and the program ends here, with the save still being written
""")


def test_ctrl_c_while_closing_keeps_the_lock_and_the_write_still_finishes_before_exit(tmp_path):
    # On Python 3.11 an interrupted Thread.join marks the writer thread as stopped: nothing would
    # then wait for it, the lock would be released mid-write and the exit would cut the write off.
    done = subprocess.run([sys.executable, "-c", _CTRL_C_WHILE_CLOSING, str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "interrupted; lock held: True"
    assert verify_checkpoint(tmp_path / LATEST).ok and load_checkpoint(tmp_path / LATEST)["epoch"] == 1
    assert not list(tmp_path.glob(".*.tmp")) and not is_locked(tmp_path)


_FAILED_SAVE_THEN_EXIT = textwrap.dedent("""
    import sys, torch
    from useg.checkpoint import CheckpointManager
    from useg.checkpoint import manager as manager_module
    from useg.errors import CheckpointError

    def full_disk(*args, **kwargs):
        raise CheckpointError("not enough space in the test's folder")

    manager_module.publish_state = full_disk
    mgr = CheckpointManager(sys.argv[1], total_epochs=10, warn=lambda message: None)
    mgr.save({"weights": torch.ones(10)}, epoch=1)
    # and the program ends here without wait() or close()
""")


def test_a_failed_background_save_nobody_waited_for_is_reported_at_exit(tmp_path):
    done = subprocess.run([sys.executable, "-c", _FAILED_SAVE_THEN_EXIT, str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert "error: a checkpoint save failed and was never reported: not enough space in the test's folder" \
        in done.stderr


# --- RNG ----------------------------------------------------------------------------------


def _draw() -> tuple:
    return random.random(), float(np.random.rand()), float(np.random.randn()), torch.rand(3).tolist()


def test_rng_state_restores_every_generator_exactly_after_a_weights_only_round_trip(tmp_path):
    np.random.randn()  # leave a cached gaussian in NumPy's legacy state
    saved = capture_rng_state()
    first = _draw()
    torch.save({"rng_state": saved}, tmp_path / "rng.pt")
    restored = torch.load(tmp_path / "rng.pt", weights_only=True)["rng_state"]
    restore_rng_state(restored)
    assert _draw() == first



# --- the verified cache: its mode, and listings racing a writer (issue 24, 6a and 6b) ----------


import stat as stat_module  # noqa: E402

from useg.checkpoint import integrity  # noqa: E402
from useg.checkpoint.layout import VERIFIED_CACHE_NAME, pending_path, sidecar_path  # noqa: E402


def _mode(path: Path) -> int:
    return stat_module.S_IMODE(path.stat().st_mode)


def _statuses(directory: Path) -> dict[str, str]:
    return {info.name: info.status for info in list_checkpoints(directory, verify=True)}


def test_verified_cache_gets_the_mode_of_the_checkpoints_whatever_the_umask(tmp_path):
    previous = os.umask(0)
    try:
        train(tmp_path, 1)
        assert verify_checkpoint(tmp_path / LATEST).ok  # the other writer of the cache
    finally:
        os.umask(previous)
    assert _mode(tmp_path / VERIFIED_CACHE_NAME) == _mode(tmp_path / LATEST) == 0o644
    assert _mode(tmp_path / (LATEST + ".json")) == 0o644
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_file_replaced_between_the_stat_and_the_cache_read_is_looked_at_again(tmp_path, monkeypatch):
    # The listing stats latest (epoch 1); the writer then publishes epoch 2 and records it,
    # dropping epoch 1's entry, before the listing reads the cache.
    trainer = train(tmp_path, 1)
    read_cache = integrity._read_cache
    calls = []

    def writer_lands_first(directory):
        if not calls:
            calls.append(directory)
            with manager(tmp_path) as mgr:
                trainer.step()
                mgr.save(trainer.state(2), epoch=2, val_dice=0.5)
        return read_cache(directory)

    monkeypatch.setattr(integrity, "_read_cache", writer_lands_first)
    result = integrity.known_verified(tmp_path / LATEST)
    assert calls and result is not None and result.metadata["epoch"] == 2


def test_a_sidecar_renamed_between_the_two_sidecar_reads_still_describes_the_file(tmp_path, monkeypatch):
    # At the writer's step 2 (new bytes in place, pending sidecar beside them) the listing
    # reads one sidecar, then the writer's step 4 renames the pending one onto the final name.
    trainer = train(tmp_path, 1)
    seen = []
    real_kill_point, read_sidecar = publish.kill_point, integrity.read_sidecar

    def list_at(point):
        latest, pending = tmp_path / LATEST, pending_path(tmp_path / LATEST)
        if point == "after-rename" and pending.exists() and not seen:
            pending_text = pending.read_text()
            integrity.remember_verified(latest, json.loads(pending_text)["sha256"])  # hashed by the writer

            def step_4_between_the_reads(path):
                sidecar = read_sidecar(path)
                if pending.exists() and path != pending:
                    os.replace(pending, sidecar_path(latest))
                return sidecar

            monkeypatch.setattr(integrity, "read_sidecar", step_4_between_the_reads)
            seen.append(integrity.known_verified(latest))
            monkeypatch.setattr(integrity, "read_sidecar", read_sidecar)
            pending.write_text(pending_text)  # put it back for the writer's own step 4
        real_kill_point(point)

    monkeypatch.setattr(publish, "kill_point", list_at)
    with manager(tmp_path) as mgr:
        trainer.step()
        mgr.save(trainer.state(2), epoch=2, val_dice=0.4)
    assert seen and seen[0] is not None and seen[0].metadata["epoch"] == 2


def test_an_entry_recorded_for_the_temp_before_its_rename_covers_both_files_meanwhile(tmp_path, monkeypatch):
    # The order a writer should follow: remember the finished temp under the final name, then
    # rename it. While the old file is still there it stays verified, and the new one is
    # verified from the instant it appears.
    trainer = train(tmp_path, 1)
    during = {}
    real_kill_point = publish.kill_point

    def writer_records_first(point):
        latest = tmp_path / LATEST
        if not pending_path(latest).exists():
            pass  # another file's save
        elif point == "before-rename" and "before" not in during:
            temp = next(tmp_path.glob(f".{LATEST}.*.tmp"))
            integrity.remember_verified(latest, json.loads(pending_path(latest).read_text())["sha256"], written=temp)
            during["before"] = _statuses(tmp_path)[LATEST]
        elif point == "after-rename" and "after" not in during:
            during["after"] = _statuses(tmp_path)[LATEST]
        real_kill_point(point)

    monkeypatch.setattr(publish, "kill_point", writer_records_first)
    with manager(tmp_path) as mgr:
        trainer.step()
        mgr.save(trainer.state(2), epoch=2, val_dice=0.4)
    assert during == {"before": "ok", "after": "ok"}
    cache = json.loads((tmp_path / VERIFIED_CACHE_NAME).read_text())
    assert isinstance(cache[LATEST], dict)  # once published, only the file there is remembered


def test_bytes_replaced_after_verify_hashed_them_are_never_listed_verified(tmp_path, monkeypatch):
    train(tmp_path, 1)
    latest = tmp_path / LATEST
    open_verified = integrity.open_verified

    def replaced_after_hashing(path):
        result = open_verified(path)
        old = latest.stat()
        other = tmp_path / "other.tmp"
        other.write_bytes(b"\0" * old.st_size)  # same size, other bytes, not written by useg
        os.utime(other, ns=(old.st_atime_ns, old.st_mtime_ns + 10**9))
        os.replace(other, latest)
        return result

    monkeypatch.setattr(integrity, "open_verified", replaced_after_hashing)
    assert verify_checkpoint(latest).ok  # the bytes it hashed were fine
    assert _statuses(tmp_path)[LATEST] == "unchecked"


def test_a_listing_during_a_save_never_shows_the_files_the_writer_hashed_unchecked(tmp_path, monkeypatch):
    trainer = train(tmp_path, 1)
    listed = []
    real_kill_point = publish.kill_point

    def list_now(point):
        if point in ("after-rename", "after-sidecar"):
            listed.append((point, _statuses(tmp_path)))
        real_kill_point(point)

    monkeypatch.setattr(publish, "kill_point", list_now)
    with manager(tmp_path, total=2) as mgr:
        trainer.step()
        mgr.save(trainer.state(2), epoch=2, val_dice=0.9)  # best, periodic and latest
    assert len(listed) == 6
    assert all(status == "ok" for _, statuses in listed for status in statuses.values()), listed

"""The verified-hash cache (integrity.py): its file mode, and listings racing a writer (issue 24, 6a and 6b)."""

from __future__ import annotations

import json
import os
import stat as stat_module
from pathlib import Path

from checkpoint_kit import LATEST, manager, train
from useg.checkpoint import integrity, list_checkpoints, publish, verify_checkpoint
from useg.checkpoint.layout import VERIFIED_CACHE_NAME, pending_path, sidecar_path


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

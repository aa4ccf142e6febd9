"""The run lock (lock.py): one trainer per checkpoints folder; a dead owner's lock is taken over."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from checkpoint_kit import manager
from useg.checkpoint import is_locked
from useg.errors import CheckpointError


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped: no process has it now."""
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    return pid


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

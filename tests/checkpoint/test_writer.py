"""Background saves (writer.py): the values at save time are written, errors surface once, and neither Ctrl+C nor the program's exit cuts a write off or loses its error."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

from checkpoint_kit import LATEST, Trainer, manager
from useg.checkpoint import is_locked, load_checkpoint, verify_checkpoint


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

    signal.signal(signal.SIGINT, signal.default_int_handler)  # as a terminal starts it, even from `make test &`
    real_publish = manager_module.publish_state
    manager_module.publish_state = lambda *a, **k: (time.sleep(1.0), real_publish(*a, **k))[1]
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


_COPIES_ON_THE_WRITER = textwrap.dedent("""
    import sys, threading, torch
    from useg.checkpoint import CheckpointManager, overlap
    torch.set_num_threads(2)
    seen = []
    copy = overlap.copy_tensors
    def spy(targets, sources):
        seen.append((threading.current_thread().name, torch.get_num_threads()))
        copy(targets, sources)
    overlap.copy_tensors = spy
    model = torch.nn.Linear(256, 256)
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.ones(1, 256)).sum().backward()
    optimizer.step()
    manager = CheckpointManager(sys.argv[1], total_epochs=2, _overlap_copies_in_useg_train=True)  # as useg train
    manager.save({"model_state_dict": model, "optimizer_state_dict": optimizer}, epoch=1, val_dice=0.5)
    manager.wait()
    print(seen, torch.get_num_threads())
""")


def test_the_writer_thread_copies_on_one_intra_op_thread_and_leaves_the_training_thread_s_count(tmp_path):
    # A second OpenMP team (the writer's) made every later training step 35 % slower on 2 cores.
    done = subprocess.run([sys.executable, "-c", _COPIES_ON_THE_WRITER, str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    seen, main_threads = done.stdout.rsplit(" ", 1)
    assert "('useg-checkpoint-writer', 1)" in seen, done.stdout + done.stderr
    assert int(main_threads) == 2

"""SIGHUP (a closed terminal or SSH session) stops training like SIGTERM: after the current step, with
the position saved, exit code 129; `resume latest` then ends bitwise equal to the uninterrupted run.
Under nohup (SIGHUP ignored) training carries on."""

from __future__ import annotations

import fcntl
import os
import select
import signal
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

from faultkit import RUN_FLAGS, assert_every_checkpoint_verifies, assert_same_run, checkpoints, final_state
from tiny import TINY
from useg.checkpoint import verify_checkpoint
from useg.cli import main
from useg.training.signals import StopRequest


def test_sighup_mid_epoch_saves_the_position_and_resume_matches_uninterrupted_run(cli, reference_run, tmp_path,
                                                                                   ledger):
    run = tmp_path / "run"
    # 3 steps per epoch: step 5 is batch 2 of epoch 2, between two saves every 2 steps (4 and 6).
    stopped = cli("train", "--run-dir", run, *RUN_FLAGS, env={"USEG_KILL_AT": "step:5:SIGHUP"})
    ledger.faults["SIGHUP at a step"] += 1
    assert stopped.returncode == 129, stopped.stderr
    assert "SIGHUP received" in stopped.stderr and "--resume latest" in stopped.stderr, stopped.stderr
    assert verify_checkpoint(checkpoints(run) / "latest_checkpoint.pt").ok
    ledger.files_verified += assert_every_checkpoint_verifies(run)
    state = final_state(run)
    assert (state["step"], state["sampler_state"]["epoch"], state["sampler_state"]["batch_index"]) == (5, 1, 2)
    resumed = cli("resume", "latest", "--run-dir", run)
    assert resumed.returncode == 0, resumed.stderr
    assert_same_run(reference_run, run)


def test_ctrl_c_during_the_last_epochs_validation_saves_says_so_and_exits_130(cli, reference_run, tmp_path, ledger):
    run = tmp_path / "run"
    stopped = cli("train", "--run-dir", run, *RUN_FLAGS, env={"USEG_KILL_AT": "validation:4:SIGINT"})
    ledger.faults["SIGINT during the last validation"] += 1
    assert stopped.returncode == 130, stopped.stderr
    assert "SIGINT received: stopping at the end of this epoch, 4 of 4 epochs complete" in stopped.stderr
    assert "the run is complete (4 of 4 epochs)" in stopped.stderr and "--epochs N" in stopped.stderr
    ledger.files_verified += assert_every_checkpoint_verifies(run)
    assert_same_run(reference_run, run)  # the last epoch's files are all written, as in a run never stopped
    resumed = cli("resume", "latest", "--run-dir", run, "--quiet")
    assert resumed.returncode == 0 and "The run is complete" in resumed.stdout, resumed.stdout + resumed.stderr


def test_ctrl_c_during_an_earlier_validation_stops_after_that_epoch_and_resume_matches(cli, reference_run, tmp_path,
                                                                                      ledger):
    run = tmp_path / "run"
    stopped = cli("train", "--run-dir", run, *RUN_FLAGS, env={"USEG_KILL_AT": "validation:2:SIGINT"})
    ledger.faults["SIGINT during a validation"] += 1
    assert stopped.returncode == 130, stopped.stderr
    assert "stopping at the end of this epoch, 2 of 4 epochs complete" in stopped.stderr, stopped.stderr
    assert "--resume latest" in stopped.stderr
    assert final_state(run)["epoch"] == 2 and final_state(run)["sampler_state"]["batch_index"] == 0
    assert cli("resume", "latest", "--run-dir", run).returncode == 0
    assert_same_run(reference_run, run)


def useg_on_a_terminal(run: Path, flags: list[str], **popen) -> tuple[subprocess.Popen, int]:
    """`python -m useg train` with a pseudo-terminal as its controlling terminal, like a shell over SSH."""
    master, slave = os.openpty()

    def take_terminal() -> None:  # in the child: a session of its own, led by useg, on this terminal
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)
        # As a shell starts it, even under `nohup make test`, whose SIG_IGN the child would inherit.
        signal.signal(signal.SIGHUP, signal.SIG_DFL)

    process = subprocess.Popen([sys.executable, "-m", "useg", "train", "--run-dir", str(run), *flags],
                               stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
                               preexec_fn=take_terminal, **popen)
    os.close(slave)
    return process, master


class TerminalReader(threading.Thread):
    """Reads what useg prints (a full terminal would block it) until hang_up() closes the terminal."""

    def __init__(self, master: int) -> None:
        super().__init__(daemon=True)
        self.master, self.closing, self.output = master, threading.Event(), bytearray()

    def run(self) -> None:
        while not self.closing.is_set():
            if select.select([self.master], [], [], 0.02)[0]:
                try:
                    self.output += os.read(self.master, 65536)
                except OSError:
                    break
        os.close(self.master)  # the last reference: the kernel hangs up the terminal and sends SIGHUP

    def hang_up(self) -> None:
        self.closing.set()
        self.join(10)


def wait_for_first_save(process: subprocess.Popen, run: Path) -> None:
    deadline = time.monotonic() + 120
    while not (checkpoints(run) / "latest_checkpoint.pt").exists():
        assert process.poll() is None, f"useg ended before saving (rc {process.returncode})"
        assert time.monotonic() < deadline, "useg never saved"
        time.sleep(0.005)


def test_closing_the_terminal_saves_and_exits_129(reference_run, tmp_path, ledger):
    # Not --quiet: on a terminal the live progress bar is drawn, and after the hang-up every write to
    # the terminal fails; none of them may stop the save.
    run = tmp_path / "run"
    flags = [flag for flag in RUN_FLAGS if flag != "--quiet"]
    process, master = useg_on_a_terminal(run, flags)
    reader = TerminalReader(master)
    reader.start()
    wait_for_first_save(process, run)
    reader.hang_up()
    process.wait(120)
    ledger.faults["terminal closed (real SIGHUP)"] += 1
    if process.returncode == 0:
        return  # a fast machine finished the run before the hang-up landed: nothing to check
    assert process.returncode == 129, (process.returncode, reader.output[-3000:].decode(errors="replace"))
    ledger.files_verified += assert_every_checkpoint_verifies(run)
    assert final_state(run)["step"] >= 2
    resumed = subprocess.run([sys.executable, "-m", "useg", "resume", "latest", "--run-dir", str(run), "--quiet"],
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert_same_run(reference_run, run)


def test_under_nohup_a_hang_up_does_not_stop_training(reference_run, tmp_path):
    run = tmp_path / "run"
    process = subprocess.Popen([sys.executable, "-m", "useg", "train", "--run-dir", str(run), *RUN_FLAGS],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN))
    wait_for_first_save(process, run)
    process.send_signal(signal.SIGHUP)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr
    assert_same_run(reference_run, run)


def test_stop_request_leaves_an_ignored_sighup_ignored():
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        stop = StopRequest()
        stop.install()
        assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
        assert signal.getsignal(signal.SIGTERM) == stop.handle
        stop.restore()
    finally:
        signal.signal(signal.SIGHUP, previous)


# --- a signal after the last epoch --------------------------------------------------------------------

TINY_RUN = ["--epochs", "2", *TINY, "--vis-every", "0"]


def test_ctrl_c_while_the_last_save_finishes_says_done_and_complete_and_exits_130(tmp_path, monkeypatch, capsys):
    import useg.training.loop

    real_finish = useg.training.loop.finish

    def ctrl_c_then_finish(run, *rest) -> None:  # after the last epoch's check for a signal, before its save is durable
        os.kill(os.getpid(), signal.SIGINT)
        real_finish(run, *rest)

    monkeypatch.setattr(useg.training.loop, "finish", ctrl_c_then_finish)
    # As a terminal starts it: a shell gives `make test &` SIGINT ignored, and the kill above would do nothing.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    run = tmp_path / "run"
    try:
        code = main(["train", "--run-dir", str(run), *TINY_RUN])
        handler_after = signal.getsignal(signal.SIGINT)
    finally:
        signal.signal(signal.SIGINT, previous)
    out, err = capsys.readouterr()
    assert code == 130, err
    assert "Done: 2 epochs" in out
    assert "warning: SIGINT received after the last epoch: every epoch is trained and saved" in err
    assert "the run is complete (2 of 2 epochs)" in err and "--epochs N" in err
    assert final_state(run)["epoch"] == 2
    assert handler_after is signal.default_int_handler  # the caller's handler is back


def test_ctrl_c_after_the_done_line_does_not_turn_the_exit_code_into_a_kill(tmp_path):
    # What is left after the Done line is the interpreter's teardown of torch (a quarter to a whole second),
    # during which Python gives SIGINT its default action back: the process died with -2.
    run = tmp_path / "run"
    process = subprocess.Popen([sys.executable, "-m", "useg", "train", "--run-dir", str(run), *TINY_RUN],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    for line in process.stdout:
        if line.startswith("Done:"):
            time.sleep(0.05)  # past the last line of Python: into the teardown
            process.send_signal(signal.SIGINT)
            break
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, (process.returncode, stderr)
    assert "Traceback" not in stderr and final_state(run)["epoch"] == 2

"""Two CPU processes with gloo through torchrun: one set of files, identical replicas, exact resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

from tiny import TINY, assert_same_training, final_state, useg

ARGS = ["--epochs", "3", *TINY, "--quiet", "--vis-every", "0"]  # batch 2: one target per rank


# Loaded by every Python process of a two-rank run (the agent and each rank): SIGUSR1 writes that
# process's stacks to a file of its own, so a hang shows each rank's stacks whole, not interleaved.
STACKS_ON_SIGNAL = """import faulthandler, os, signal
faulthandler.register(signal.SIGUSR1, all_threads=True, file=open(os.path.join(
    os.environ["USEG_TEST_STACKS"], f"rank-{os.environ.get('RANK', 'agent')}-{os.getpid()}.txt"), "w"))
"""


def torchrun(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """`useg ARGS` on two ranks; a hang fails with every process's Python stacks, one process after another."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "useg", *args]
    with tempfile.TemporaryDirectory() as stacks:
        Path(stacks, "sitecustomize.py").write_text(STACKS_ON_SIGNAL)
        path = os.pathsep.join(filter(None, [stacks, os.environ.get("PYTHONPATH")]))
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   start_new_session=True,
                                   env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path,
                                        "USEG_TEST_STACKS": stacks, **(env or {})})
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            stuck = [*descendants(process.pid), process.pid]  # the ranks run in sessions of their own
            signal_each(stuck, signal.SIGUSR1)
            time.sleep(5)
            signal_each(stuck, signal.SIGKILL)
            stdout, stderr = process.communicate()
            dumps = "\n".join(f"--- {dump.name}\n{dump.read_text()[-6000:]}"
                              for dump in sorted(Path(stacks).glob("*.txt")))
            pytest.fail(f"useg {' '.join(args)} on two ranks hung for {timeout} s; stacks:\n{dumps}\n"
                        f"stderr:\n{stderr[-3000:]}\nstdout:\n{stdout[-2000:]}")
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def signal_each(pids: list[int], signum: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:  # it ended meanwhile
            pass


def descendants(pid: int) -> list[int]:
    """Every living process below `pid` (from /proc), children before their parents."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except OSError:
            continue
        children.setdefault(parent, []).append(int(stat.parent.name))

    def below(parent: int) -> list[int]:
        return [grandchild for child in children.get(parent, []) for grandchild in [*below(child), child]]

    return below(pid)


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("ddp") / "straight"
    done = torchrun("train", "--run-dir", str(run), *ARGS)
    assert done.returncode == 0, done.stderr[-2000:]
    return run, done


def test_two_processes_write_one_set_of_files(two_process_run):
    run, done = two_process_run
    names = sorted(p.name for p in (run / "checkpoints").iterdir() if not p.name.startswith("."))
    assert names == sorted(f"{n}{s}" for n in ("best_model.pt", "latest_checkpoint.pt", "epoch_001_checkpoint.pt",
                                               "epoch_002_checkpoint.pt", "epoch_003_checkpoint.pt")
                           for s in ("", ".json"))
    assert len(list((run / "logs").glob("training_*.json"))) == 1
    assert done.stdout.count("epoch   3/3") == 1  # rank 1 prints nothing
    state = final_state(run)
    assert state["sampler_state"]["world_size"] == 2 and len(state["rng_state_per_rank"]) == 2


def test_kill_and_resume_with_two_processes_is_bitwise_exact(two_process_run, tmp_path):
    straight, _ = two_process_run
    killed = tmp_path / "killed"
    died = torchrun("train", "--run-dir", str(killed), *ARGS, env={"USEG_KILL_AT": "epoch-end:2"})
    assert died.returncode != 0
    resumed = torchrun("resume", "latest", "--run-dir", str(killed), "--quiet")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert_same_training(final_state(straight), final_state(killed))


def test_two_process_checkpoint_resumes_in_one_process(two_process_run, tmp_path):
    run, _ = two_process_run
    copy = tmp_path / "copy"
    copy.mkdir()
    subprocess.run(["cp", "-a", str(run / "checkpoints"), str(run / "logs"), str(copy)], check=True)
    done = useg("resume", "latest", "--run-dir", str(copy), "--epochs", "4", "--quiet")
    assert done.returncode == 0, done.stderr
    assert "not bit-identical" in done.stderr
    state = final_state(copy)
    assert state["epoch"] == 4 and state["sampler_state"]["world_size"] == 1
    assert torch.isfinite(torch.tensor(state["history"]["train_loss"])).all()


def test_sigterm_on_one_rank_stops_all_with_one_interrupt_checkpoint(two_process_run, tmp_path):
    straight, _ = two_process_run
    run = tmp_path / "preempted"
    stopped = torchrun("train", "--run-dir", str(run), *ARGS, env={"USEG_KILL_AT": "step:5:SIGTERM:1"})
    assert stopped.returncode != 0 and "--resume latest" in stopped.stderr
    meta = json.loads((run / "checkpoints" / "latest_checkpoint.pt.json").read_text())
    assert meta["kind"] == "interrupt"
    state = final_state(run)
    assert (state["epoch"], state["sampler_state"]["batch_index"]) == (1, 2)
    assert torchrun("resume", "--run-dir", str(run), "--quiet").returncode == 0
    assert_same_training(final_state(straight), final_state(run))


def test_a_finished_worker_runs_its_exit_hooks_and_keeps_its_exit_code():
    # end_worker_process skips interpreter finalization, never the hooks (they wait for writes in flight).
    code = ("import atexit, sys; atexit.register(lambda: print('hook ran')); sys.stdout.write('said ');"
            "from useg.compute.distributed import end_worker_process; end_worker_process(3)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout) == (3, "said hook ran\n")


def test_mid_epoch_saves_under_a_budget_keep_two_ranks_in_step_and_change_nothing_they_compute(two_process_run,
                                                                                               tmp_path):
    # Rank 0 alone knows what writing costs and the ranks' clocks differ: both decisions are shared, or one
    # rank would wait in a save the other never starts.
    straight, _ = two_process_run
    saved = tmp_path / "saved"
    done = torchrun("train", "--run-dir", str(saved), *ARGS, "--save-every-steps", "1", "--save-every-minutes", "0.0001")
    assert done.returncode == 0, done.stderr[-2000:]
    assert_same_training(final_state(straight), final_state(saved))

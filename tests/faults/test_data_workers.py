"""Mid-epoch resume with background batch builders: a run killed (SIGKILL) and interrupted (Ctrl+C) while
workers build batches ahead, resumed each time with another number of workers, ends bitwise equal to the
uninterrupted run; no worker keeps a stopped process alive."""

from __future__ import annotations

import signal

import pytest

from faultkit import RUN_FLAGS, assert_every_checkpoint_verifies, assert_same_run, final_state


# 0.5 s slower writes: the epoch-1 save is still being written at the kill, so latest is step 2.
@pytest.mark.parametrize("slow_writes", [0.0, 0.5])
def test_kill_and_ctrl_c_mid_epoch_with_workers_then_resume_with_other_counts_matches(cli, reference_run, tmp_path,
                                                                                      ledger, slow_writes):
    run = tmp_path / "run"
    # 3 steps an epoch, latest every 2 steps: killed at step 5, latest holds step 4 (epoch 2, batch 1);
    # or, when that save was still being written, the epoch-1 save (step 3); or, when that one was
    # still being written too (writes slower than steps, as on a loaded CI machine), step 2.
    killed = cli("train", "--run-dir", run, *RUN_FLAGS, "--data-workers", "2", env={"USEG_KILL_AT": "step:5"},
                 slow_writes=slow_writes)
    ledger.faults["kill -9 at a step, 2 workers"] += 1
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    state = final_state(run)
    kept = state["step"]
    # (epoch, batch index) the sampler resumes at: an epoch's save is at the next epoch's start.
    assert (kept, position_of(state)) in [(2, (0, 2)), (3, (1, 0)), (4, (1, 1))]
    # Resumed on the training thread, then Ctrl+C at its 4th step, saved exactly: mid-epoch 3, or
    # (from step 2) after the last batch of epoch 2, before its validation.
    interrupted = cli("resume", "latest", "--run-dir", run, "--data-workers", "0",
                      env={"USEG_KILL_AT": "step:4:SIGINT"})
    ledger.faults["Ctrl+C at a step, 0 workers"] += 1
    assert interrupted.returncode == 130, interrupted.stderr
    state = final_state(run)
    assert (state["step"], position_of(state)) == {2: (6, (1, 3)), 3: (7, (2, 1)), 4: (8, (2, 2))}[kept]
    ledger.files_verified += assert_every_checkpoint_verifies(run)
    finished = cli("resume", "latest", "--run-dir", run, "--data-workers", "1")
    assert finished.returncode == 0, finished.stderr
    assert_same_run(reference_run, run)


def position_of(state: dict) -> tuple[int, int]:
    """(epoch, batch index) the checkpoint's sampler resumes at."""
    return state["sampler_state"]["epoch"], state["sampler_state"]["batch_index"]

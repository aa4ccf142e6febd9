"""Mid-epoch resume with background batch builders: a run killed (SIGKILL) and interrupted (Ctrl+C) while
workers build batches ahead, resumed each time with another number of workers, ends bitwise equal to the
uninterrupted run; no worker keeps a stopped process alive."""

from __future__ import annotations

import signal

from faultkit import RUN_FLAGS, assert_every_checkpoint_verifies, assert_same_run, final_state


def test_kill_and_ctrl_c_mid_epoch_with_workers_then_resume_with_other_counts_matches(cli, reference_run, tmp_path,
                                                                                      ledger):
    run = tmp_path / "run"
    # 3 steps an epoch, latest every 2 steps: killed at step 5, latest holds step 4 (epoch 2, batch 1)
    # or, when that save was still being written, the epoch-1 save (step 3).
    killed = cli("train", "--run-dir", run, *RUN_FLAGS, "--data-workers", "2", env={"USEG_KILL_AT": "step:5"})
    ledger.faults["kill -9 at a step, 2 workers"] += 1
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    state = final_state(run)
    kept = state["step"]
    assert (kept, state["sampler_state"]["epoch"], state["sampler_state"]["batch_index"]) in [(4, 1, 1), (3, 1, 0)]
    # Resumed on the training thread, then Ctrl+C at its 4th step, mid-epoch 3, saved exactly.
    interrupted = cli("resume", "latest", "--run-dir", run, "--data-workers", "0",
                      env={"USEG_KILL_AT": "step:4:SIGINT"})
    ledger.faults["Ctrl+C at a step, 0 workers"] += 1
    assert interrupted.returncode == 130, interrupted.stderr
    state = final_state(run)
    assert (state["step"], state["sampler_state"]["epoch"], state["sampler_state"]["batch_index"]) == \
        (kept + 4, 2, kept + 4 - 6)
    ledger.files_verified += assert_every_checkpoint_verifies(run)
    finished = cli("resume", "latest", "--run-dir", run, "--data-workers", "1")
    assert finished.returncode == 0, finished.stderr
    assert_same_run(reference_run, run)

"""Kill -9 torture: a tiny training killed at every step of the save path and at random moments,
resumed after each kill, must end bitwise equal to the uninterrupted run, with every file on disk
verifying at every kill and no more lost than the steps since the last finished save.

CI: 39 faults (~30 s). Long mode (USEG_LONG_FAULTS=1 or --long): 356 more.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time

import pytest

from faultkit import MAX_LOST_STEPS, RUN_FLAGS, SAVE_POINTS, Kill, Torture, assert_every_checkpoint_verifies, assert_same_run

# A full run reaches each save point 16 times (4 mid-epoch saves + 4 epochs x latest, periodic, best),
# "mid-write" (part of the temp file written) and "after-temp-write" 12 times (the periodic file is a
# hard link: no temp write), "step" 12, "epoch-end" 4.
CI_KILLS = [f"{point}:{hit}" for hit in (1, 2, 3, 5) for point in SAVE_POINTS] + [
    "step:1", "step:4", "epoch-end:1", "epoch-end:2"]
LONG_KILLS = [f"{point}:{hit}" for point in SAVE_POINTS for hit in range(1, 17)
              if not (point in ("mid-write", "after-temp-write") and hit > 12)] + [
    f"step:{hit}" for hit in range(1, 13)] + [f"epoch-end:{hit}" for hit in range(1, 5)]


def test_kill_at_every_save_point_then_resume_matches_uninterrupted_run(cli, reference_run, tmp_path, ledger):
    torture = Torture(cli, tmp_path, reference_run, ledger)
    torture.kill_each([Kill(spec) for spec in CI_KILLS])
    torture.complete()
    assert ledger.total == len(CI_KILLS) == 24 and ledger.runs_finished >= 1


def test_kills_while_writes_lag_behind_training_lose_at_most_two_epochs(cli, reference_run, tmp_path, ledger):
    """Every write 0.15 s slower than a tiny step, so saves overlap and coalesce: the case CI met by chance."""
    torture = Torture(cli, tmp_path, reference_run, ledger, slow_writes=0.15)
    torture.kill_each([Kill(spec) for spec in ("before-rename:5", "step:5", "step:8", "after-sidecar:3")])
    torture.complete()
    assert ledger.total == 4 and max(ledger.lost_steps) <= MAX_LOST_STEPS


def test_a_first_epoch_killed_after_best_was_written_says_to_start_afresh_not_to_resume(cli, reference_run,
                                                                                         tmp_path, ledger):
    run = tmp_path / "run"
    assert RUN_FLAGS[-2:] == ["--save-every-steps", "2"]
    flags = RUN_FLAGS[:-2]  # epoch saves only
    killed = cli("train", "--run-dir", run, *flags, env={"USEG_KILL_AT": "after-sidecar:1"})  # best, before latest
    ledger.faults["kill -9 after the first best_model.pt"] += 1
    assert killed.returncode == -signal.SIGKILL
    assert sorted(p.name for p in (run / "checkpoints").glob("*.pt")) == ["best_model.pt"]
    refused = cli("train", "--run-dir", run, *flags)
    assert refused.returncode == 2 and refused.error_lines == [
        f"error: {run / 'checkpoints'} holds best_model.pt but no checkpoint to resume from; start afresh with "
        "--overwrite (it sets those files aside) or use another --run-dir"]
    again = cli("train", "--run-dir", run, *flags, "--overwrite")
    assert again.returncode == 0, again.stderr
    assert (run / "checkpoints" / "latest_checkpoint.pt").exists()


def test_kill_at_random_moments_then_resume_matches_uninterrupted_run(cli, reference_run, run_seconds, tmp_path,
                                                                      ledger):
    chance = random.Random(6)
    torture = Torture(cli, tmp_path, reference_run, ledger)
    torture.kill_randomly(10, lambda: chance.uniform(0.05, 0.9) * run_seconds)
    torture.complete()
    assert ledger.total == 10


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_and_sigterm_at_random_moments_lose_nothing(cli, reference_run, run_seconds, tmp_path, ledger,
                                                            signum):
    chance = random.Random(int(signum))
    torture = Torture(cli, tmp_path, reference_run, ledger)
    torture.kill_randomly(2, lambda: chance.uniform(0.2, 0.8) * run_seconds, signum)
    torture.complete()


def test_sigkill_of_a_real_useg_process_then_resume_matches_uninterrupted_run(reference_run, tmp_path, ledger):
    """The same with `python -m useg` itself (no forkserver), killed from outside once it is training."""
    chance = random.Random(7)
    for attempt in range(5):  # a fast machine may finish the whole run before the kill lands
        run = tmp_path / f"run_{attempt}"
        process = subprocess.Popen([sys.executable, "-m", "useg", "train", "--run-dir", str(run), *RUN_FLAGS],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120
        while not (run / "checkpoints" / "latest_checkpoint.pt").exists() and time.monotonic() < deadline:
            time.sleep(0.005)  # the first mid-epoch save is on disk: it is training now
        time.sleep(chance.uniform(0.0, 0.1))
        process.kill()
        process.communicate(timeout=60)
        if process.returncode == -signal.SIGKILL:
            break
    assert process.returncode == -signal.SIGKILL
    ledger.faults["SIGKILL of `python -m useg` at a random time"] += 1
    ledger.files_verified += assert_every_checkpoint_verifies(run)
    resumed = subprocess.run([sys.executable, "-m", "useg", "resume", "latest", "--run-dir", str(run)],
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert_same_run(reference_run, run)


@pytest.mark.long
def test_long_kill_at_every_hit_of_every_point(cli, reference_run, tmp_path, ledger):
    torture = Torture(cli, tmp_path, reference_run, ledger, cli_verify_every=10)
    torture.kill_each([Kill(spec) for spec in LONG_KILLS * 2])
    torture.complete()
    assert ledger.total == 2 * len(LONG_KILLS) == 176


@pytest.mark.long
def test_long_kill_at_random_moments(cli, reference_run, run_seconds, tmp_path, ledger):
    chance = random.Random(2026)
    torture = Torture(cli, tmp_path, reference_run, ledger, cli_verify_every=10)
    torture.kill_randomly(150, lambda: chance.uniform(0.02, 1.0) * run_seconds)
    torture.kill_randomly(15, lambda: chance.uniform(0.1, 0.9) * run_seconds, signal.SIGINT)
    torture.kill_randomly(15, lambda: chance.uniform(0.1, 0.9) * run_seconds, signal.SIGTERM)
    torture.complete()
    assert ledger.total >= 180

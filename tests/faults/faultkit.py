"""Fault-injection kit: run `useg` in child processes, kill them, and check what they left on disk.

Starting Python and importing torch costs ~1.5 s per process, far more than the tiny
training itself, so the children come from a multiprocessing *forkserver*: one process
that imports torch and useg once (and never runs a tensor operation, so forking it is
safe) and forks a fresh child for every command. Each child is a real process with its
own pid, run lock and file descriptors: it can be SIGKILLed, stopped and interrupted
like `python -m useg`, and it runs `useg.cli.main` exactly as the console script does.
"""

from __future__ import annotations

import itertools
import multiprocessing
import multiprocessing.forkserver
import os
import signal
import sys
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch._dynamo  # noqa: F401  (imported lazily by torch.optim: preload it in the forkserver too)

import useg.cli  # noqa: F401  (preloaded in the forkserver, like the two below)
import useg.cli.checkpoint_commands  # noqa: F401
import useg.cli.menu  # noqa: F401
import useg.training.loop
from useg.checkpoint import list_checkpoints, load_checkpoint, resolve_checkpoint, verify_checkpoint
from useg.errors import CheckpointError

from tiny import TINY, assert_same_training  # tests/ is on sys.path (conftest.py)

# The run every torture chain repeats: 4 epochs of 3 steps, latest rewritten every 2 steps
# (mid-epoch) and after each epoch (with a periodic file each epoch and best on improvement).
# The whole in-context recipe (every augmentation, half the tasks synthetic): every fault test also
# proves that what it draws resumes bit for bit.
RECIPE = ["--task-augmentation", "paper", "--in-task-augmentation", "paper", "--synthetic-tasks", "0.5"]
# No save budget: each due save is taken, so a kill point's N-th hit is the same save in every run.
RUN_FLAGS = ["--epochs", "4", *TINY, "--quiet", "--vis-every", "0", *RECIPE, "--save-budget", "0",
             "--save-every-steps", "2"]
SAVE_POINTS = ("mid-write", "after-temp-write", "before-rename", "after-rename", "after-sidecar")
# The writer holds one save in flight and one waiting; an epoch-end save waits for every earlier
# write. So while epoch k+1 runs (up to its own save's wait), the save of epoch k-1 or a later one
# is durable: a kill loses at most 2 epochs (6 steps). That many only when writes lag behind the
# steps: CI saw 6, killed at the last epoch's save while the epoch-3 save (step 9) was still
# being written, the step-8 save coalesced away, latest at step 6. With quick writes, 2 at most.
MAX_LOST_STEPS = 6
NOBODY = 65534


@dataclass
class Result:
    """What a finished child left: exit code (negative: killed by that signal), output, steps done."""

    returncode: int
    stdout: str
    stderr: str
    steps: int

    @property
    def error_lines(self) -> list[str]:
        """Non-empty stderr lines that are not warnings."""
        return [line for line in self.stderr.splitlines() if line.strip() and not line.startswith("warning:")]


@dataclass
class Child:
    """A running `useg` command in a forked child."""

    process: multiprocessing.process.BaseProcess
    out_dir: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait(self, timeout: float = 120) -> Result:
        self.process.join(timeout)
        if self.process.exitcode is None:
            os.kill(self.pid, signal.SIGKILL)
            self.process.join()
            raise AssertionError(f"useg child {self.pid} hung for {timeout} s: {read(self.out_dir / 'stderr')}")
        steps = read(self.out_dir / "steps").strip()
        return Result(self.process.exitcode, read(self.out_dir / "stdout"), read(self.out_dir / "stderr"),
                      int(steps) if steps else 0)

    def is_stopped(self) -> bool:
        """True once the child has stopped itself (SIGSTOP)."""
        try:
            stat = Path(f"/proc/{self.pid}/stat").read_text()
        except FileNotFoundError:
            return False
        return stat.rsplit(")", 1)[1].split()[0] == "T"


class Cli:
    """Runs `useg ARGS...` in forked children; `cli(...)` waits, `cli.start(...)` does not."""

    def __init__(self, out_root: Path) -> None:
        self._context = multiprocessing.get_context("forkserver")
        self._context.set_forkserver_preload(["faultkit"])
        _start_forkserver()
        self._out_root = out_root
        self._numbers = itertools.count()

    def start(self, *args: str, env: dict[str, str] | None = None, stdin: str = "",
              uid: int | None = None, stop_after: str | None = None, slow_writes: float = 0.0) -> Child:
        """Start `useg ARGS`; `uid`: run as that user; `stop_after="module:function"`: SIGSTOP
        the child right after that function returns (to pause it at an exact instant);
        `slow_writes`: every checkpoint write takes that many seconds longer (so saves overlap)."""
        out_dir = self._out_root / f"call_{next(self._numbers):05d}"
        out_dir.mkdir(parents=True)
        (out_dir / "stdin").write_text(stdin)
        options = {"uid": uid, "stop_after": stop_after, "slow_writes": slow_writes}
        process = self._context.Process(target=child_main, args=([str(a) for a in args], env or {}, str(out_dir), options))
        process.start()
        return Child(process, out_dir)

    def __call__(self, *args: str, env: dict[str, str] | None = None, stdin: str = "", uid: int | None = None,
                 timeout: float = 120, slow_writes: float = 0.0) -> Result:
        return self.start(*args, env=env, stdin=stdin, uid=uid, slow_writes=slow_writes).wait(timeout)


def _start_forkserver() -> None:
    # Python 3.11's forkserver ignores the sys.path it is given and skips preload modules it
    # cannot import, so hand it the path of this folder (and of test_train) through PYTHONPATH.
    here = Path(__file__).resolve().parent
    previous = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(here), str(here.parent)] + ([previous] if previous else []))
    try:
        multiprocessing.forkserver.ensure_running()
    finally:
        if previous is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = previous


def child_main(argv: list[str], env: dict[str, str], out_dir: str, options: dict) -> None:
    """In the forked child: set up env, stdio and the step counter, then run the CLI and exit with its code."""
    out = Path(out_dir)
    for name in ("USEG_KILL_AT", "PYTHONPATH"):
        os.environ.pop(name, None)
    os.environ.update(env)
    # As started from a terminal, even under `nohup make test` (the forkserver inherits SIG_IGN):
    # the signal tests send these runs hang-ups.
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    _redirect(out)
    _count_steps(out / "steps")
    if options["stop_after"]:
        _stop_after(options["stop_after"])
    if options.get("slow_writes"):
        _slow_writes(options["slow_writes"])
    if options["uid"] is not None:
        os.setgid(options["uid"])
        os.setuid(options["uid"])
    code = 1
    try:
        from useg.cli import main

        code = main(argv)
    except SystemExit as exit_:  # argparse usage errors
        code = exit_.code if isinstance(exit_.code, int) else 1
    except BaseException:  # a bug: show it like the interpreter would
        traceback.print_exc()
    finally:
        _exit_like_the_interpreter()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _exit_like_the_interpreter() -> None:
    # What `python -m useg` does after main() returns, which a multiprocessing child skips:
    # join non-daemon threads, then run the atexit hooks (the checkpoint writer has one).
    import atexit
    import threading

    try:
        threading._shutdown()
        atexit._run_exitfuncs()
    except KeyboardInterrupt:  # the interpreter reports and ignores it at exit too
        pass


def _redirect(out: Path) -> None:
    stdin = os.open(out / "stdin", os.O_RDONLY)
    os.dup2(stdin, 0)
    for fd, name in ((1, "stdout"), (2, "stderr")):
        os.dup2(os.open(out / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), fd)
    sys.stdin = open(0, closefd=False)
    sys.stdout = open(1, "w", buffering=1, closefd=False)
    sys.stderr = open(2, "w", buffering=1, closefd=False)


def _count_steps(path: Path) -> None:
    # Instrumentation only: counts optimisation steps of this process so a test knows how
    # much work a kill destroyed. The real kill point still runs after the count.
    import useg.training.loop

    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    real_kill_point = useg.training.loop.kill_point
    steps = 0

    def counting_kill_point(name: str) -> None:
        nonlocal steps
        if name == "step":
            steps += 1
            os.pwrite(fd, b"%12d" % steps, 0)
        real_kill_point(name)

    useg.training.loop.kill_point = counting_kill_point


def _stop_after(target: str) -> None:
    import importlib

    module_name, function_name = target.split(":")
    module = importlib.import_module(module_name)
    real = getattr(module, function_name)

    def stopping(*args, **kwargs):
        result = real(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGSTOP)
        return result

    setattr(module, function_name, stopping)


def _slow_writes(seconds: float) -> None:
    from useg.checkpoint import manager
    real = manager.publish_state

    def slow(*args, **kwargs):
        time.sleep(seconds)
        return real(*args, **kwargs)

    manager.publish_state = slow


def wait_until_stopped(child: Child, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not child.is_stopped():
        assert child.process.exitcode is None, f"the child ended before stopping: {read(child.out_dir / 'stderr')}"
        assert time.monotonic() < deadline, "the child never stopped"
        time.sleep(0.01)


def read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


# --- what is on disk ------------------------------------------------------------------------


def checkpoints(run_dir: Path) -> Path:
    return run_dir / "checkpoints"


def final_state(run_dir: Path) -> dict:
    return torch.load(checkpoints(run_dir) / "latest_checkpoint.pt", weights_only=True)


def has_checkpoint(run_dir: Path) -> bool:
    return any(checkpoints(run_dir).glob("*.pt"))


def assert_every_checkpoint_verifies(run_dir: Path) -> int:
    """Every visible checkpoint passes verify and the listing; returns how many there are."""
    files = sorted(checkpoints(run_dir).glob("*.pt"))
    for path in files:
        result = verify_checkpoint(path)
        assert result.ok, f"{path.name} fails verification after a kill: {result.status}: {result.reason}"
    listed = {info.name: info for info in list_checkpoints(checkpoints(run_dir))}
    assert all(info.valid for info in listed.values()), {n: i.reason for n, i in listed.items() if not i.valid}
    return len(files)


def resume_position(run_dir: Path) -> int | None:
    """Optimiser steps held by the checkpoint `resume latest` would use (None: nothing to resume)."""
    skipped: list[str] = []
    try:
        path = resolve_checkpoint(checkpoints(run_dir), "latest", warn=skipped.append)
    except CheckpointError:
        return None
    assert not skipped, f"resume had to skip a file after a kill: {skipped}"
    assert path.name == "latest_checkpoint.pt", f"resume would use {path.name}, not latest"
    return int(load_checkpoint(path)["step"])


def assert_same_run(reference: Path, run: Path) -> None:
    """Same final training state, same periodic files with the same weights, same best model."""
    assert_same_training(final_state(reference), final_state(run))
    names = lambda d: sorted(p.name for p in checkpoints(d).glob("*.pt"))  # noqa: E731
    assert names(run) == names(reference)
    for name in names(reference):
        if name == "latest_checkpoint.pt":
            continue
        expected = torch.load(checkpoints(reference) / name, weights_only=True)
        actual = load_checkpoint(checkpoints(run) / name)
        assert actual["epoch"] == expected["epoch"], name
        for key, tensor in expected["model_state_dict"].items():
            assert torch.equal(tensor, actual["model_state_dict"][key]), (name, key)


# --- the torture loop -------------------------------------------------------------------------


@dataclass
class Kill:
    """One fault: a kill point spec for USEG_KILL_AT, or a signal sent from outside after `delay` seconds."""

    spec: str | None = None
    delay: float = 0.0
    signum: int = signal.SIGKILL

    @property
    def label(self) -> str:
        if self.spec:
            return f"kill -9 at {self.spec.split(':')[0]}"
        return f"{signal.Signals(self.signum).name} at a random time"


@dataclass
class Ledger:
    """What a test did: faults injected by kind, files verified, steps lost per kill, finished runs."""

    faults: Counter = field(default_factory=Counter)
    files_verified: int = 0
    lost_steps: list[int] = field(default_factory=list)
    runs_finished: int = 0
    fresh_starts: int = 0

    @property
    def total(self) -> int:
        return sum(self.faults.values())


class Torture:
    """Repeats the reference run in fresh folders, killing and resuming it, until it finishes."""

    def __init__(self, cli: Cli, root: Path, reference: Path, ledger: Ledger,
                 cli_verify_every: int = 1, slow_writes: float = 0.0) -> None:
        self.cli, self.root, self.reference, self.ledger = cli, root, reference, ledger
        self.cli_verify_every = cli_verify_every
        self.slow_writes = slow_writes  # seconds added to every checkpoint write: saves lag behind steps
        self._folders = itertools.count()
        self.run_dir = self._new_folder()

    def _new_folder(self) -> Path:
        return self.root / f"run_{next(self._folders):03d}"

    def command(self) -> list[str]:
        """Resume when there is anything to resume from, else start the run again in the same folder
        (over a lone best_model.pt, as the refusal says: a first epoch killed after best, before latest)."""
        if resume_position(self.run_dir) is not None:
            return ["resume", "latest", "--run-dir", str(self.run_dir)]
        overwrite = ["--overwrite"] if has_checkpoint(self.run_dir) else []
        return ["train", "--run-dir", str(self.run_dir), *RUN_FLAGS, *overwrite]

    def inject(self, kill: Kill) -> bool:
        """Run once with `kill`; True when the fault hit (False: the run finished first)."""
        before = resume_position(self.run_dir) or 0
        if before == 0 and not has_checkpoint(self.run_dir):
            self.ledger.fresh_starts += 1
        result = self._run(kill)
        if result.returncode == 0:
            self.finish_checks()
            return False
        self._check_after_fault(kill, result, before)
        return True

    def _run(self, kill: Kill) -> Result:
        if kill.spec:
            return self.cli(*self.command(), env={"USEG_KILL_AT": kill.spec}, slow_writes=self.slow_writes)
        child = self.cli.start(*self.command(), slow_writes=self.slow_writes)
        time.sleep(kill.delay)
        try:
            os.kill(child.pid, kill.signum)
        except ProcessLookupError:
            pass
        return child.wait()

    def _check_after_fault(self, kill: Kill, result: Result, before: int) -> None:
        allowed = {-signal.SIGKILL} if kill.signum == signal.SIGKILL else {130, 143, -kill.signum}
        assert result.returncode in allowed, (kill, result.returncode, result.stderr[-3000:])
        if kill.signum != signal.SIGKILL and result.returncode > 0:
            assert "resume" in result.stderr, result.stderr  # says how to continue
        self.ledger.faults[kill.label] += 1
        self.ledger.files_verified += assert_every_checkpoint_verifies(self.run_dir)
        if self.cli_verify_every and self.ledger.total % self.cli_verify_every == 0 and has_checkpoint(self.run_dir):
            verified = self.cli("checkpoints", "verify", "--run-dir", str(self.run_dir))
            assert verified.returncode == 0, verified.stdout + verified.stderr
        after = resume_position(self.run_dir) or 0
        assert after >= before, f"{kill}: the resume point went back from step {before} to {after}"
        lost = before + result.steps - after
        assert 0 <= lost <= MAX_LOST_STEPS, f"{kill}: lost {lost} steps (done {before + result.steps}, kept {after})"
        if result.returncode in (130, 143):  # Ctrl+C / SIGTERM save the exact position: nothing is lost
            assert lost == 0, f"{kill}: exited {result.returncode} but lost {lost} steps"
        self.ledger.lost_steps.append(lost)

    def finish_checks(self) -> None:
        """The run completed: it must equal the uninterrupted one; the next kill starts a fresh folder."""
        assert_every_checkpoint_verifies(self.run_dir)
        assert_same_run(self.reference, self.run_dir)
        self.ledger.runs_finished += 1
        self.run_dir = self._new_folder()

    def kill_each(self, kills: list[Kill]) -> None:
        """Inject every fault once (a spec that a nearly finished run never reaches is retried fresh)."""
        for kill in kills:
            if not self.inject(kill) and kill.spec:
                assert self.inject(kill), f"{kill.spec} never reached even from a fresh start"

    def kill_randomly(self, count: int, delays: Callable[[], float], signum: int = signal.SIGKILL) -> None:
        """Send `signum` at random moments until it has hit `count` times."""
        hits = attempts = 0
        while hits < count:
            attempts += 1
            assert attempts <= count * 6, f"only {hits} of {attempts} random faults hit a running training"
            hits += self.inject(Kill(delay=delays(), signum=signum))

    def complete(self) -> None:
        """Let the current run finish without faults and compare it with the reference."""
        if self.run_dir.exists():  # else the last run finished and nothing new was started
            result = self.cli(*self.command())
            assert result.returncode == 0, result.stderr[-3000:]
            self.finish_checks()

"""A run's whole life at random: hypothesis draws sequences of what happens to a run folder
(training a few steps, kill -9 at a random kill point, SIGTERM/Ctrl+C, byte flips, truncations,
deleted sidecars, a full disk, clean, export, --overwrite, resuming from latest, best or an epoch)
and after EVERY operation checks:

(a) either nothing was ever durably saved, or `resume latest` would succeed and load a full
    training state: a state counts as saved once a training command acknowledged it (exit 0,
    130 or 143) or a checkpoint verified; only the damage the test itself did may lose it;
(b) every file `useg checkpoints list --json` calls valid passes `verify_checkpoint`;
(c) every epoch-boundary checkpoint holds bitwise the state of an uninterrupted reference run:
    the one resume would use is the current plan's state of its epoch, every other one some
    plan's (the runs the folder went through, replayed without faults), and a finished run
    ends bitwise equal to the reference.

CI: a fixed, bounded set of examples (~70 operations). Long mode (--long / USEG_LONG_FAULTS=1):
at least 1,000 operations, random. The operation mix is counted in the ledger ("lifecycle: ...").
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test

from faultkit import RUN_FLAGS, SAVE_POINTS, Cli, Ledger, Result, checkpoints, has_checkpoint
from useg.checkpoint import resolve_checkpoint, verify_checkpoint
from useg.checkpoint.layout import is_resume_name
from useg.errors import CheckpointError

PLANNED_EPOCHS = 4  # RUN_FLAGS' --epochs; resume N --epochs 5 extends a run, --epochs 4 goes back
TOTALS = (4, 5)
KILL_POINTS = (*SAVE_POINTS, "step", "epoch-end")
CI_SETTINGS = dict(max_examples=5, stateful_step_count=10, derandomize=True)
LONG_SETTINGS = dict(max_examples=25, stateful_step_count=15, derandomize=False)
LONG_OPERATIONS = 1000
DISK_SIZE = "48m"

# A plan is the sequence of commands that made the run's current line of states, without faults:
# ((0, 4),) is `useg train --epochs 4`; ((0, 4), (2, 5)) then `useg resume 2 --epochs 5`.
Plan = tuple[tuple[int, int], ...]
FRESH: Plan = ((0, PLANNED_EPOCHS),)


def state_digest(state: dict) -> str:
    """sha256 of what decides the rest of a run: the epoch, the weights and Adam's state."""
    digest = hashlib.sha256(str(state.get("epoch")).encode())
    for name, tensor in sorted(state["model_state_dict"].items()):
        digest.update(name.encode())
        digest.update(tensor.contiguous().numpy().tobytes())
    for index, slots in sorted(state["optimizer_state_dict"]["state"].items()):
        for slot, value in sorted(slots.items()):
            digest.update(f"{index}.{slot}".encode())
            digest.update(value.contiguous().numpy().tobytes() if torch.is_tensor(value) else repr(value).encode())
    return digest.hexdigest()


def load_plain(path: Path) -> dict | None:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # a damaged file: it is judged by verify, not here
        return None


def plan_total(plan: Plan) -> int:
    return plan[-1][1]


def prefix_for_epoch(plan: Plan, epoch: int) -> Plan:
    """The part of `plan` that wrote its state of `epoch` (the last command that started before it)."""
    index = max(i for i, (start, _) in enumerate(plan) if start < epoch)
    return plan[: index + 1]


def branch(source: Plan, epoch: int, total: int) -> Plan:
    """The plan after `useg resume EPOCH --epochs TOTAL` from `source`'s state of `epoch`."""
    base = prefix_for_epoch(source, epoch)
    return base if plan_total(base) == total else base + ((epoch, total),)


class References:
    """Each plan replayed once without faults (cached for the session): its state of every epoch."""

    def __init__(self, cli: Cli, root: Path) -> None:
        self.cli, self.root = cli, root
        self._chains: dict[Plan, dict[int, str]] = {}
        self._folders: dict[Plan, Path] = {}
        self.seconds = 0.0  # spent replaying plans

    def chain(self, plan: Plan) -> dict[int, str]:
        """epoch -> state digest of the plan's run, for epochs 1..its total."""
        if plan not in self._chains:
            started = time.monotonic()
            folder = self.root / f"plan_{len(self._folders):03d}"
            if len(plan) == 1:
                done = self.cli("train", "--run-dir", folder, *RUN_FLAGS)
            else:
                self.chain(plan[:-1])
                shutil.copytree(self._folders[plan[:-1]], folder)
                start, total = plan[-1]
                done = self.cli("resume", str(start), "--epochs", str(total), "--run-dir", folder)
            assert done.returncode == 0, (plan, done.stderr[-2000:])
            self._folders[plan] = folder
            self._chains[plan] = {epoch: state_digest(torch.load(
                checkpoints(folder) / f"epoch_{epoch:03d}_checkpoint.pt", weights_only=True))
                for epoch in range(1, plan_total(plan) + 1)}
            self.seconds += time.monotonic() - started
        return self._chains[plan]

    def source_of(self, digest: str, epoch: int, plans: list[Plan]) -> Plan | None:
        """The first of `plans` whose state of `epoch` is `digest`."""
        for plan in plans:
            if self.chain(plan).get(epoch) == digest:
                return plan
        return None


@dataclass
class World:
    """What every example shares: the CLI, the small disk its folders live on, references, counts."""

    cli: Cli
    disk: Path
    references: References
    ledger: Ledger
    operations: int = 0
    examples: int = 0
    seconds: dict = field(default_factory=dict)  # per operation kind, with the checks after the one before
    clock: float = field(default_factory=time.monotonic)


class Lifecycle(RuleBasedStateMachine):
    """One run folder per example, on a small tmpfs so that the disk can be filled."""

    world: World  # set on the subclass made per test

    def __init__(self) -> None:
        super().__init__()
        self.world.examples += 1
        self.run_dir = self.world.disk / f"run_{self.world.examples:04d}"
        self.plan: Plan | None = None  # None: nothing trained yet in this folder
        self.plans_seen: list[Plan] = []
        self.saved = False  # a state was durably saved and not lost to damage the test did
        self.filler = self.world.disk / "filler"

    def teardown(self) -> None:
        self.filler.unlink(missing_ok=True)
        shutil.rmtree(self.run_dir, ignore_errors=True)

    # --- helpers --------------------------------------------------------------------------

    def count(self, kind: str) -> None:
        self.world.operations += 1
        self.world.ledger.faults[f"lifecycle: {kind}"] += 1
        now = time.monotonic()
        self.world.seconds[kind] = self.world.seconds.get(kind, 0.0) + now - self.world.clock
        self.world.clock = now

    def use(self, plan: Plan) -> None:
        self.plan = plan
        if plan not in self.plans_seen:
            self.plans_seen.append(plan)

    def folder(self) -> Path:
        return checkpoints(self.run_dir)

    def files(self, pattern: str = "*.pt") -> list[Path]:
        return sorted(self.folder().glob(pattern)) if self.folder().is_dir() else []

    def advance(self, env: dict[str, str] | None = None) -> Result:
        """What a user does next: `useg train` in a folder without checkpoints (`--overwrite` over a
        lone best_model.pt, as the refusal says), else `resume latest`."""
        if any(is_resume_name(path.name) for path in self.files()):
            self.follow_the_resume_point()
            result = self.world.cli("resume", "latest", "--run-dir", self.run_dir, env=env)
        else:
            overwrite = ["--overwrite"] if self.files() else []
            result = self.world.cli("train", "--run-dir", self.run_dir, *RUN_FLAGS, *overwrite, env=env)
            self.use(FRESH)
        self.acknowledge(result)
        return result

    def follow_the_resume_point(self) -> None:
        """`resume latest` continues the state it resolves to under the run's current total: after
        a fallback to a file from before the plan's last branch, the run is on a new plan from there
        (e.g. ((0, 4), (4, 5)) falling back to epoch 2 trains epochs 3 and 4 of ((0, 2), (2, 5)))."""
        path = self.resume_point()
        if path is None or self.plan is None:
            return
        state = load_plain(path)
        if state is None or state["sampler_state"]["batch_index"] != 0 or state["epoch"] == 0:
            return  # a mid-epoch latest is always on the current plan's last command
        epoch = state["epoch"]
        source = self.plan_of(state, epoch)
        if source is not None:  # else the invariants have already said which file holds what
            self.use(branch(source, epoch, plan_total(self.plan)))

    def plan_of(self, state: dict, epoch: int) -> Plan | None:
        """The plan (current first, then those seen before) whose state of `epoch` this is."""
        return self.world.references.source_of(state_digest(state), epoch, [self.plan or FRESH, *self.plans_seen])

    def acknowledge(self, result: Result) -> None:
        if result.returncode in (0, 130, 143):
            self.saved = True

    def good_resume_points(self) -> list[Path]:
        """Files that verify and hold a full training state (what `resume latest` may use)."""
        good = []
        for path in self.files():
            if path.name != "best_model.pt" and verify_checkpoint(path).ok:
                state = load_plain(path)
                if state is not None and "optimizer_state_dict" in state:
                    good.append(path)
        return good

    def snapshot(self, pattern: str = "*.pt*") -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in self.files(pattern)}

    def assert_one_error_line(self, result: Result, *words: str) -> None:
        assert len(result.error_lines) == 1, result.stderr[-3000:]
        [line] = result.error_lines
        assert line.startswith("error: ") and all(w in line for w in words), line
        # Temp files of an earlier killed save stay until a command takes the run lock; a failed
        # command must add none of its own.
        new = set(self.run_dir.rglob(".*.tmp")) - getattr(self, "temps_before", set())
        assert not new, f"a failed command left a temp file: {sorted(new)}"

    # --- operations -----------------------------------------------------------------------

    @rule(steps=st.integers(1, 15), signum=st.sampled_from([signal.SIGTERM, signal.SIGINT]))
    def train_then_signal(self, steps: int, signum: int) -> None:
        """Train a few steps, then SIGTERM or Ctrl+C: the position is saved, exit 143 / 130
        (steps over 12, more than a run has: no signal, train or resume to the end)."""
        if steps > 12:
            self.train_to_the_end()
            return
        name = signal.Signals(signum).name
        result = self.advance({"USEG_KILL_AT": f"step:{steps}:{name}"})
        self.count(f"{name} after a few steps")
        assert result.returncode in (0, 2, 128 + signum), result.stderr[-3000:]
        self.check_outcome(result)

    @rule(point=st.sampled_from(KILL_POINTS), hit=st.integers(1, 12))
    def kill_at_a_kill_point(self, point: str, hit: int) -> None:
        result = self.advance({"USEG_KILL_AT": f"{point}:{hit}"})
        self.count(f"kill -9 at {point}")
        assert result.returncode in (0, 2, -signal.SIGKILL), result.stderr[-3000:]
        self.check_outcome(result)

    def train_to_the_end(self) -> None:
        result = self.advance()
        self.count("train/resume to the end")
        assert result.returncode in (0, 2), result.stderr[-3000:]
        self.check_outcome(result)

    def check_outcome(self, result: Result) -> None:
        """Exit 0: the plan is done and equals its reference; exit 2: only when nothing can be resumed."""
        if result.returncode == 0:
            self.assert_finished()
        elif result.returncode == 2:
            assert not self.good_resume_points(), f"resume refused though a valid resume point exists: {result.stderr}"
            self.assert_one_error_line(result, "no checkpoint")

    @precondition(lambda self: has_checkpoint(self.run_dir))
    @rule(free=st.integers(0, 400_000))
    def train_on_a_full_disk(self, free: int) -> None:
        """Fill the disk to `free` bytes, train, free it again: a failed save is one line, exit 2."""
        os.sync()
        stats = os.statvfs(self.world.disk)
        with open(self.filler, "wb") as handle:
            os.posix_fallocate(handle.fileno(), 0, max(0, stats.f_bavail * stats.f_frsize - free))
        try:
            result = self.advance()
        finally:
            self.filler.unlink()
        self.count("train on a full disk")
        assert result.returncode in (0, 2), result.stderr[-3000:]
        if result.returncode == 2:
            self.assert_one_error_line(result)

    @precondition(lambda self: has_checkpoint(self.run_dir))
    @rule(pick=st.integers(0, 99), where=st.floats(0, 1, exclude_max=True), xor=st.integers(1, 255))
    def flip_a_byte(self, pick: int, where: float, xor: int) -> None:
        """One byte of a checkpoint changes (latest and its periodic twin share it: both are hit)."""
        files = [path for path in self.files() if path.stat().st_size > 0]  # a file truncated to 0 has no byte
        if not files:
            return
        path = files[pick % len(files)]
        with open(path, "r+b") as handle:
            offset = int(where * os.fstat(handle.fileno()).st_size)
            handle.seek(offset)
            byte = handle.read(1)
            handle.seek(offset)
            handle.write(bytes([byte[0] ^ xor]))
        self.count("flip a byte")
        self.damage_done()

    @precondition(lambda self: has_checkpoint(self.run_dir))
    @rule(pick=st.integers(0, 99), keep=st.floats(0, 1, exclude_max=True))
    def truncate_a_file(self, pick: int, keep: float) -> None:
        files = self.files()
        path = files[pick % len(files)]
        os.truncate(path, int(keep * path.stat().st_size))
        self.count("truncate a checkpoint")
        self.damage_done()

    @precondition(lambda self: bool(self.files("*.pt.json")))
    @rule(pick=st.integers(0, 99))
    def delete_a_sidecar(self, pick: int) -> None:
        sidecars = self.files("*.pt.json")
        sidecars[pick % len(sidecars)].unlink()
        self.count("delete a sidecar")
        self.damage_done()

    def damage_done(self) -> None:
        # Damage may lose the files it hit, nothing else: from here, saved means "one still verifies".
        self.saved = bool(self.good_resume_points())

    @precondition(lambda self: has_checkpoint(self.run_dir))
    @rule(keep=st.integers(1, 3), dry_run=st.booleans())
    def clean(self, keep: int, dry_run: bool) -> None:
        """`checkpoints clean --keep K` never deletes the file resume would use."""
        before = self.snapshot()
        resume_point = self.resume_point()
        result = self.world.cli("checkpoints", "clean", "--keep", keep, *(["--dry-run"] if dry_run else []),
                                "--run-dir", self.run_dir)
        self.count("clean --dry-run" if dry_run else "clean --keep K")
        assert result.returncode == 0, result.stderr[-3000:]
        if dry_run:
            assert self.snapshot() == before, "clean --dry-run changed files"
        if resume_point is not None:
            assert resume_point.is_file(), f"clean --keep {keep} deleted {resume_point.name}, the file resume uses"

    @precondition(lambda self: has_checkpoint(self.run_dir))
    @rule(pick=st.integers(0, 99), suffix=st.sampled_from([".safetensors", ".pt"]))
    def export(self, pick: int, suffix: str) -> None:
        files = self.files()
        source = files[pick % len(files)]
        before = self.snapshot()
        out = self.run_dir / "exports" / f"weights{suffix}"
        out.parent.mkdir(exist_ok=True)
        result = self.world.cli("checkpoints", "export", source, out)
        self.count("export")
        assert self.snapshot() == before, "export changed the checkpoints"
        if verify_checkpoint(source).ok:
            assert result.returncode == 0, result.stderr[-3000:]
            weights = load_plain(source)["model_state_dict"]
            if suffix == ".pt":  # the weights beside the description applying them needs
                exported = torch.load(out, weights_only=True)["model_state_dict"]
            else:
                from safetensors.torch import load_file
                exported = load_file(out)
            assert exported.keys() == weights.keys() and all(torch.equal(exported[k], weights[k]) for k in weights)
        else:
            assert result.returncode == 2, result.stderr[-3000:]
            self.assert_one_error_line(result)

    @precondition(lambda self: has_checkpoint(self.run_dir))
    @rule(stop_at=st.integers(1, 13))
    def overwrite(self, stop_at: int) -> None:
        """`useg train --overwrite` sets the old checkpoints aside and starts the plan afresh
        (SIGTERM at step `stop_at`; 13: never, the run has 12)."""
        env = {"USEG_KILL_AT": f"step:{stop_at}:SIGTERM"}
        result = self.world.cli("train", "--overwrite", "--run-dir", self.run_dir, *RUN_FLAGS, env=env)
        self.count("train --overwrite")
        assert result.returncode in (0, 143), result.stderr[-3000:]
        self.plans_seen = []  # the old checkpoints were moved aside: nothing of their plans is left here
        self.use(FRESH)
        self.saved = False
        self.acknowledge(result)
        if result.returncode == 0:
            self.assert_finished()

    def resume_best(self) -> None:
        """best_model.pt has no optimiser state: refused in one line, no checkpoint changes.

        Sidecars may: the refused command still took the run lock, and under it finishes the
        sidecar of a save killed between its two renames (the invariants below still hold)."""
        before = self.snapshot("*.pt")
        result = self.world.cli("resume", "best", "--run-dir", self.run_dir)
        self.count("resume best (refused)")
        assert result.returncode == 2, result.stderr[-3000:]
        self.assert_one_error_line(result)
        assert self.snapshot("*.pt") == before

    @precondition(lambda self: has_checkpoint(self.run_dir))
    @rule(pick=st.integers(0, 99), total=st.sampled_from(TOTALS), best=st.integers(0, 3))
    def resume_an_epoch(self, pick: int, total: int, best: int) -> None:
        """`useg resume N --epochs M` to the end: equal to that plan replayed without faults
        (one time in four `useg resume best` instead)."""
        if best == 0:
            self.resume_best()
            return
        files = [p for p in self.files("epoch_*_checkpoint.pt") if int(p.name[6:9]) < total]
        if not files:
            return
        path = files[pick % len(files)]
        epoch = int(path.name[6:9])
        source = None
        if verify_checkpoint(path).ok:
            source = self.plan_of(load_plain(path), epoch)
            assert source is not None, f"{path.name} holds a state of no plan this folder went through"
        result = self.world.cli("resume", epoch, "--epochs", total, "--run-dir", self.run_dir)
        self.count("resume N --epochs M")
        if source is None:
            assert result.returncode == 2, result.stderr[-3000:]
            self.assert_one_error_line(result)
            return
        assert result.returncode == 0, result.stderr[-3000:]
        self.use(branch(source, epoch, total))
        self.saved = True
        self.assert_finished()

    # --- invariants -----------------------------------------------------------------------

    def resume_point(self) -> Path | None:
        try:
            return resolve_checkpoint(self.folder(), "latest", warn=lambda message: None)
        except CheckpointError:
            return None

    def assert_finished(self) -> None:
        """The command ended the plan: latest holds the reference's last state."""
        state = load_plain(self.folder() / "latest_checkpoint.pt")
        assert state is not None and self.plan is not None
        assert state["epoch"] == plan_total(self.plan), (state["epoch"], self.plan)
        expected = self.world.references.chain(self.plan)[plan_total(self.plan)]
        assert state_digest(state) == expected, f"the finished run differs from the reference of {self.plan}"

    @invariant()
    def remember_temp_files(self) -> None:
        """The temp files present before the next operation (what it may leave is judged against them)."""
        self.temps_before = set(self.run_dir.rglob(".*.tmp")) if self.run_dir.is_dir() else set()

    @invariant()
    def a_saved_state_can_be_resumed(self) -> None:
        good = self.good_resume_points()
        if self.saved or good:
            self.saved = True
            assert good, "a durably saved state was lost by an operation that must not lose it"
            path = self.resume_point()
            assert path is not None, f"resume latest fails although {[p.name for p in good]} verify"
            state = load_plain(path)
            assert state is not None and "optimizer_state_dict" in state, f"resume would use {path.name}"

    @invariant()
    def what_list_calls_valid_verifies(self) -> None:
        if not self.folder().is_dir():
            return
        listed = self.world.cli("checkpoints", "list", "--json", "--run-dir", self.run_dir)
        if listed.returncode == 2 and not [p for p in self.files("*.pt") if not p.name.startswith(".")]:
            # Nothing is called valid. A pending sidecar may be left beside no file (a first save
            # killed before its rename): it describes nothing, and the next locked command removes it.
            assert "no checkpoints yet" in listed.stderr, listed.stderr[-3000:]
            return
        assert listed.returncode == 0, listed.stderr[-3000:]
        for entry in json.loads(listed.stdout):
            if entry["valid"]:
                result = verify_checkpoint(entry["path"])
                assert result.ok, f"list calls {entry['name']} valid but verify says {result.status}: {result.reason}"
                self.world.ledger.files_verified += 1

    @invariant()
    def epoch_states_equal_the_reference(self) -> None:
        if self.plan is None:
            return
        path = self.resume_point()
        if path is not None:
            state = load_plain(path)
            epoch = state["epoch"]
            if state["sampler_state"]["batch_index"] == 0 and epoch > 0:
                assert epoch <= plan_total(self.plan), (
                    f"resume latest would use {path.name} (epoch {epoch}) of an abandoned plan; "
                    f"the current plan {self.plan} ends at epoch {plan_total(self.plan)}")
                expected = self.world.references.chain(self.plan)[epoch]
                assert state_digest(state) == expected, (
                    f"resume latest would use {path.name} (epoch {epoch}), which is not the state of epoch "
                    f"{epoch} of the current plan {self.plan}")
        for periodic in self.files("epoch_*_checkpoint.pt"):
            if verify_checkpoint(periodic).ok:
                epoch = int(periodic.name[6:9])
                digest = state_digest(load_plain(periodic))
                assert self.world.references.source_of(digest, epoch, self.plans_seen) is not None, (
                    f"{periodic.name} holds a state of no plan this folder went through")


def run_lifecycle(world: World, **options) -> None:
    machine = type("LifecycleExamples", (Lifecycle,), {"world": world})
    run_state_machine_as_test(machine, settings=settings(
        deadline=None, database=None, phases=[Phase.explicit, Phase.reuse, Phase.generate],
        suppress_health_check=list(HealthCheck), report_multiple_bugs=False, print_blob=True, **options))


@pytest.fixture
def world(cli, tmpfs, tmp_path_factory, ledger) -> World:
    return World(cli, tmpfs(DISK_SIZE), References(cli, tmp_path_factory.mktemp("plans")), ledger)


def report(world: World, started: float) -> None:
    kinds = ", ".join(f"{kind} {seconds:.0f} s" for kind, seconds in sorted(world.seconds.items()))
    print(f"\nlifecycle: {world.operations} operations in {world.examples} examples, "
          f"{time.monotonic() - started:.0f} s ({len(world.references._chains)} plans replayed in "
          f"{world.references.seconds:.0f} s; {kinds})")


def test_lifecycle_random_operations_keep_a_valid_resume_point(world):
    started = time.monotonic()
    try:
        run_lifecycle(world, **CI_SETTINGS)
    finally:
        report(world, started)
    assert world.operations >= 30


@pytest.mark.long
def test_long_lifecycle_at_least_1000_operations(world):
    started = time.monotonic()
    try:
        while world.operations < LONG_OPERATIONS:
            run_lifecycle(world, **LONG_SETTINGS)
    finally:
        report(world, started)

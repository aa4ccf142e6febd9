"""CheckpointManager: the one object a training loop talks to about checkpoints."""

from __future__ import annotations

import json
import os
import secrets
import sys
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from useg.errors import CheckpointError, DivergedError

from .atomic import check_writable, explain_write_errors, remove_stale_temp_files
from .finite import first_nonfinite
from .integrity import VerifyResult, open_verified, remember_verified
from .layout import BEST_NAME, LATEST_NAME, periodic_name
from .listing import CheckpointInfo, checkpoint_info, list_checkpoints
from .loading import OpenCheckpoint, Which, checkpoint_path, load_verified, open_resolved
from .lock import RunLock, acquire_run_lock, lock_owner
from .overlap import DeferredCopy
from .policy import DEFAULT_PERCENTAGES, MID_EPOCH_KINDS, BestRule, SavePlan, checked_metrics, periodic_epochs
from .policy import plan_save
from .resume_order import resume_points
from .publish import finalize_pending_sidecars, publish_link, publish_state, remove_orphan_sidecars
from .retention import CleanPlan, clean_checkpoints, plan_clean
from .state import StagingPool, snapshot_state, snapshot_state_overlapped, stamp
from .writer import BackgroundWriter

# What best_model.pt leaves out unless told otherwise: the parts only resuming needs, under the
# names of CHECKPOINT_GUIDE.md's loop and examples/own_loop.py. useg's trainer passes its own
# list (training/state.py, TRAINING_ONLY_KEYS): this package does not know the trainer's keys.
DEFAULT_BEST_EXCLUDE = ("optimizer_state_dict", "scheduler_state_dict", "rng_state", "position")
_MAX_SIDECAR_CONFIG_BYTES = 64 * 1024  # the sidecar copy of the config is for `useg checkpoints list`, not a second store
OVERLAP_REFUSED = (
    "CheckpointManager(overlap_copies=True) is not offered: a change to the weights or optimizer state between "
    "save() and the next optimizer.step() that torch does not count (p.data.mul_(), a write through a NumPy view, "
    "an EMA swapped in through .data) would be saved as a mix of before and after that still verifies as ok; "
    "leave overlap_copies out: save() then copies everything before it returns (one memory copy of the state)")


def warn_to_stderr(message: str) -> None:
    """Default warning sink."""
    print(f"warning: {message}", file=sys.stderr)


class CheckpointManager:
    """Saves, finds, verifies and cleans the checkpoints of one folder, for any training loop.

    Files: `latest_checkpoint.pt` (every save), `epoch_NNN_checkpoint.pt` (epochs from
    `periodic_epochs`), `best_model.pt` (a strictly better `best_metric`, without the
    `best_exclude` parts), each with a `.json` sidecar that `useg checkpoints list` reads.
    With `lock=True` the folder is locked for this process and leftovers of a killed save
    are cleaned up before anything else happens.

        mgr = CheckpointManager("run/checkpoints", total_epochs=20, best_metric="val_dice", mode="max")
        mgr.save({"model_state_dict": model, "optimizer_state_dict": optimizer}, epoch=1, val_dice=0.71)
        state = mgr.load("latest")

    `best_metric` / `mode` ("max": higher is better, "min": lower) are the only notion of
    best: a save whose metrics hold a strictly better value of `best_metric` writes best_model.pt.
    The manager owns "best so far" (`best_value`, `best_epoch`): read from best_model.pt on disk
    at start, never only remembered, so that a restarted run, or one resumed from an older
    epoch, never replaces a better best_model.pt. A loop that shows the best asks it.

    save() copies every tensor of the state before it returns, so nothing the loop does after
    it can reach the file. `overlap_copies=True` is refused with a ValueError: leaving copies
    for later is safe only where nothing but optimizer.step() changes the weights and the
    optimizer's state between a save and the next step, which only useg's own trainer
    guarantees (it opts in through a private switch, see __init__).
    """

    def __init__(self, directory: str | os.PathLike, total_epochs: int,
                 periodic_percentages: Iterable[int] = DEFAULT_PERCENTAGES, *, best_metric: str = "val_dice",
                 mode: str = "max", async_save: bool = True, lock: bool = True,
                 warn: Callable[[str], None] | None = None,
                 best_exclude: Iterable[str] = DEFAULT_BEST_EXCLUDE, overlap_copies: bool = False,
                 _overlap_copies_in_useg_train: bool = False) -> None:
        if overlap_copies:
            raise ValueError(OVERLAP_REFUSED)  # before the folder or its lock is touched
        self.directory = Path(directory)
        # Private to useg's own trainer (src/useg/training/loop.py), whose loop changes the parameters
        # and the optimizer's state only inside optimizer.step() between a save and the next
        # step (tests/training/test_overlap_trainer.py checks it): only then may save() leave the copies
        # of those tensors to the writer and the next step's pre-hook (overlap.py). Any other
        # loop may change them in ways torch does not count (p.data.mul_(), a NumPy view, an EMA
        # swapped in through .data) and the file would mix two states without anyone noticing.
        self._overlap = _overlap_copies_in_useg_train
        self.periodic_percentages = tuple(periodic_percentages)
        self.total_epochs = total_epochs  # validates both
        try:
            self.best_rule = BestRule(best_metric, mode)
        except ValueError as error:
            raise CheckpointError(f"checkpoint manager for {self.directory}: {error}") from None
        self.best_exclude = frozenset(best_exclude)
        self._warn = warn or warn_to_stderr
        self._writer = BackgroundWriter() if async_save else None
        self._staging = StagingPool()
        self._resumed_from: Path | None = None
        self.session = secrets.token_hex(6)  # names this process's saves in the run's lineage
        self._lineage: list[list] = []  # [[session, seq], ...] this session descends from
        self._seq = 0  # saves along the lineage; continues from the file a resume loaded
        self.saves_asked = 0  # save() calls of this manager, coalesced ones included
        with explain_write_errors(self.directory):
            self.directory.mkdir(parents=True, exist_ok=True)
            self._lock: RunLock | None = acquire_run_lock(self.directory, self._warn) if lock else None
        try:
            if self._lock is not None:
                self._recover_from_crash()
            self.best_value, self.best_epoch = self._read_best()
        except BaseException:
            self.close()
            raise

    # --- schedule -------------------------------------------------------------------------

    @property
    def total_epochs(self) -> int:
        """Planned epochs; set it when a run is extended and the periodic schedule follows."""
        return self._total_epochs

    @total_epochs.setter
    def total_epochs(self, value: int) -> None:
        try:
            periodic_epochs(value, self.periodic_percentages)
        except ValueError as error:
            raise CheckpointError(f"checkpoint schedule for {self.directory}: {error}") from error
        self._total_epochs = value

    @property
    def scheduled_epochs(self) -> frozenset[int]:
        """Epochs that get a periodic file under the current total."""
        return periodic_epochs(self._total_epochs, self.periodic_percentages)

    # --- saving ---------------------------------------------------------------------------

    def save(self, state: Mapping[str, Any], *, epoch: int, step: int | None = None,
             metrics: Mapping[str, float] | None = None, kind: str = "epoch", routine: bool | None = None,
             **keyword_metrics: float | None) -> None:
        """Save `state` (a dict of `state_dict()`-able parts and plain values) after `epoch` completed epochs.

        kind="epoch" rewrites latest, plus the periodic file when due and best_model.pt on a
        strictly better `best_metric`; kind="mid_epoch" (a routine save inside an epoch) and
        kind="interrupt" (the save on a signal) rewrite latest only. `metrics={...}` go to the
        sidecar; a metric may also be given as a keyword (`val_dice=0.71`, any name; None
        leaves it out), which counts as if it were in `metrics`. The state is snapshotted now;
        with async_save the write happens in the background (`wait()` returns when it is durable).

        `routine` (mid-epoch kinds only; the default for kind="mid_epoch") marks a save that
        may be coalesced: asked for while an earlier save is still being written, it waits as
        the pending save instead of stalling the caller, and a newer save of any kind replaces
        it before it starts (latest never goes backwards and the previous latest stays whole
        until then). Other saves are never skipped. `coalesced_saves` counts the replaced ones.
        """
        if type(epoch) is not int or epoch < 0:
            raise ValueError(f"epoch must be an int >= 0 (completed epochs), got {epoch!r}")
        routine = kind == "mid_epoch" if routine is None else routine
        if routine and kind not in MID_EPOCH_KINDS:
            raise ValueError(f"only mid-epoch saves (kind='mid_epoch' or 'interrupt') may be routine, not kind={kind!r}")
        metrics = checked_metrics(metrics, keyword_metrics)
        value = metrics.get(self.best_rule.metric)
        plan = plan_save(kind, epoch, value, self.best_value, self.scheduled_epochs, self.best_rule)
        if self._writer is not None:
            self._writer.drop_pending()  # superseded by this newer state; the snapshot reuses its host copies
        # Copies of the optimizer's tensors are left to the writer (overlap.py), except in a save
        # that will wait as the pending one: a newer save may drop it and reuse its host copies.
        overlap = self._overlap and self._writer is not None and not (routine and self._writer.busy)
        snapshot, later = self._snapshot(state, epoch, overlap)
        if plan.best:
            self.best_value, self.best_epoch = value, epoch
        self._seq += 1
        fields = self._sidecar_fields(snapshot, epoch, step, metrics)
        if self._writer is None:
            self._write_and_release(snapshot, plan, fields)
        else:
            self._writer.submit(lambda: self._write_and_release(snapshot, plan, fields, later), coalesce=routine,
                                discard=lambda: self._staging.give_back(snapshot))
        self.saves_asked += 1

    @property
    def overlap_copies(self) -> bool:
        """True only in useg's own trainer: save() leaves the copies of the optimizer's tensors to the writer."""
        return self._overlap

    @property
    def writing(self) -> bool:
        """A save is being written in the background now (or waits to be)."""
        return self._writer is not None and self._writer.busy

    @property
    def coalesced_saves(self) -> int:
        """Routine saves replaced by a newer save before they were written (see `save`)."""
        return 0 if self._writer is None else self._writer.coalesced

    def planned_files(self, epoch: int, val_dice: float | None = None, kind: str = "epoch",
                      metrics: Mapping[str, float] | None = None) -> list[str]:
        """The names of the files `save()` with these arguments would write now, by the same policy."""
        value = checked_metrics(metrics, {"val_dice": val_dice}).get(self.best_rule.metric)
        plan = plan_save(kind, epoch, value, self.best_value, self.scheduled_epochs, self.best_rule)
        return [name for name, due in ((BEST_NAME, plan.best), (periodic_name(epoch), plan.periodic),
                                       (LATEST_NAME, True)) if due]

    @property
    def best_val_dice(self) -> float | None:
        """The best value so far of `best_metric` (named for the default metric; see `best_value`)."""
        return self.best_value

    def forget_best(self) -> None:
        """Let the next save with a metric become best (after the folder's old files were moved away)."""
        self.best_value, self.best_epoch = None, None

    def wait(self) -> None:
        """Return when every save is durable on disk; re-raise a background write's error."""
        if self._writer is not None:
            self._writer.wait()

    def check(self) -> None:
        """Re-raise a background write's error as soon as it has happened, without waiting
        for a write still in flight: call it every step, so that a full disk stops training
        at once instead of at the next save."""
        if self._writer is not None:
            self._writer.check()

    def _snapshot(self, state: Mapping[str, Any], epoch: int,
                  overlap: bool) -> tuple[dict[str, Any], DeferredCopy | None]:
        if "epoch" in state and state["epoch"] != epoch:
            raise ValueError(f"save(epoch={epoch}) but state['epoch'] is {state['epoch']}")
        # Checked on the caller's thread: a value weights_only refuses fails at the line that saved it.
        state = {**state, "epoch": epoch}
        if overlap:
            snapshot, later = snapshot_state_overlapped(state, self._staging, check_safe=True)
        else:
            snapshot, later = snapshot_state(state, self._staging, check_safe=True), None
        return stamp(snapshot), later

    def _write_and_release(self, snapshot: dict[str, Any], plan: SavePlan, fields: dict[str, Any],
                           later: DeferredCopy | None = None) -> None:
        try:
            if later is not None:
                later.take()  # first: the optimizer's next step() is waiting for these copies
            self._write(snapshot, plan, fields)
        finally:
            self._staging.give_back(snapshot)  # written or failed, nothing reads these copies again

    def _write(self, snapshot: dict[str, Any], plan: SavePlan, fields: dict[str, Any]) -> None:
        # Here, on the writer thread, so that the check costs the training loop nothing: a
        # NaN or inf state never becomes latest, periodic or best.
        nonfinite = first_nonfinite(snapshot, floats=False)
        if nonfinite is not None:
            raise DivergedError(f"not saved: {nonfinite} holds NaN or inf (training diverged); the checkpoints "
                                f"already in {self.directory} are untouched and still hold the last finite state")
        # latest goes last: a save counts once latest is durable. Killed before that, the run
        # resumes from the previous latest and redoes this epoch, writing its periodic and best
        # files again; written first, latest would move on and those two would never be written.
        with explain_write_errors(self.directory):
            if plan.best:
                best = self._best_state(snapshot, fields)
                self._publish(BEST_NAME, best, {**fields, "kind": "best"})
            latest = self.directory / LATEST_NAME
            latest_fields = {**fields, "kind": plan.latest_kind}
            if plan.periodic:
                periodic = periodic_name(fields["epoch"])
                checksum = self._publish(periodic, snapshot, {**fields, "kind": "periodic"})
                checksum = publish_link(self.directory / periodic, latest, checksum, snapshot, latest_fields)
                remember_verified(latest, checksum["sha256"])
            else:
                self._publish(LATEST_NAME, snapshot, latest_fields)

    def _publish(self, name: str, state: dict[str, Any], fields: dict[str, Any]) -> dict[str, Any]:
        checksum = publish_state(self.directory / name, state, fields)
        remember_verified(self.directory / name, checksum["sha256"])  # listings need not hash it again
        return checksum

    def _best_state(self, snapshot: dict[str, Any], fields: dict[str, Any]) -> dict[str, Any]:
        best = {key: value for key, value in snapshot.items() if key not in self.best_exclude}
        best[self.best_rule.metric] = fields["metrics"][self.best_rule.metric]  # what made it best
        return best

    def _sidecar_fields(self, snapshot: dict[str, Any], epoch: int, step: int | None,
                        metrics: dict[str, float]) -> dict[str, Any]:
        best_val_dice = self.best_value if self.best_rule.metric == "val_dice" else None
        return {
            "format_version": snapshot["format_version"],
            "created": snapshot["created"],
            "epoch": epoch,
            "step": step,
            "val_dice": metrics.get("val_dice"),
            "train_loss": metrics.get("train_loss"),
            "best_val_dice": _json_number(best_val_dice),
            "best_epoch": _json_number(self.best_epoch),
            "total_epochs": self._total_epochs,
            "config": _small_config(snapshot.get("config")),
            "session": self.session,
            "lineage": [list(entry) for entry in self._lineage],
            "seq": self._seq,
            "metrics": metrics,
            "best_metric": self.best_rule.metric,
            "best_mode": self.best_rule.mode,
            "best_value": _json_number(self.best_value),
        }

    # --- reading --------------------------------------------------------------------------

    def resolve(self, which: Which = "latest") -> Path:
        """The verified file for "latest" (falling back to the newest valid periodic one),
        "best", an epoch number or a path; CheckpointError when there is none."""
        path, handle = self._open(which)
        handle.close()
        return path

    def load(self, which: Which = "latest", opened: OpenCheckpoint | None = None) -> dict[str, Any]:
        """Resolve `which`, then load it with weights_only=True on the CPU; returns the plain dict.

        `opened`: the file this command already resolved and verified for `which` (from
        `open_checkpoint`); loaded without hashing it again while it is still the file on disk.
        """
        if opened is not None and opened.still_current():
            for message in opened.warnings:
                self._warn(message)
            path, state = opened.path, opened.load()
        else:
            if opened is not None:
                opened.close()
            path, handle = self._open(which)
            with handle:
                state = load_verified(path, handle)
        self._resumed_from = path
        self._continue_lineage(path)
        return state

    def _continue_lineage(self, path: Path) -> None:
        # Saves after a resume extend the loaded file's line: resuming an older epoch starts a
        # branch, and the files written after that point on the old line become abandoned.
        info = checkpoint_info(path)
        if info.session is None:  # written before lineage was recorded
            self._lineage, self._seq = [], 0
            return
        self._lineage = [*(info.lineage or []), [info.session, info.seq or 0]]
        self._seq = info.seq or 0

    def can_resume(self) -> bool:
        """True when the folder holds a file `load("latest")` would try (latest or a periodic file).

        A loop that resumes by itself asks this first; when such files exist but none is
        valid, `load` raises instead of letting the run start over silently.
        """
        self.wait()
        return bool(resume_points(self.directory))

    @property
    def resumed_from(self) -> Path | None:
        """The file the last `load()` read (kept by `clean`)."""
        return self._resumed_from

    def verify(self, which: Which) -> VerifyResult:
        """Hash-check one file (no fallback): status ok, corrupt, missing-checksum, missing or unsafe."""
        self.wait()
        result, handle = open_verified(checkpoint_path(self.directory, which))
        if handle is not None:
            handle.close()
        return result

    def list(self) -> list[CheckpointInfo]:
        """Every checkpoint of the run from its sidecar, oldest first (reads no checkpoint bytes)."""
        self.wait()
        return list_checkpoints(self.directory)

    def _open(self, which: Which):
        self.wait()
        return open_resolved(self.directory, which, self._warn)

    # --- housekeeping ---------------------------------------------------------------------

    def clean(self, keep: int, dry_run: bool = False, plan: CleanPlan | None = None) -> list[CheckpointInfo]:
        """Delete periodic checkpoints beyond the `keep` newest valid states of the run's current
        branch; latest, best, the file this run resumed from, the newest valid resume point and
        the one resume would fall back to always stay, and files that do not verify are left
        in place. Returns what was (or, with dry_run, would be) removed; `plan` (from
        `plan_clean`) carries out a plan already shown to the user."""
        plan = plan if plan is not None else self.plan_clean(keep)
        return clean_checkpoints(self.directory, keep, dry_run, plan=plan)

    def plan_clean(self, keep: int) -> CleanPlan:
        """What `clean(keep)` would remove and keep, and why; hashes every resume point, removes nothing."""
        if type(keep) is not int or keep < 0:
            raise CheckpointError(f"keep must be 0 or more, got {keep!r}; pass e.g. --keep 2")
        owner = None if self._lock is not None else lock_owner(self.directory)
        if owner is not None:
            raise CheckpointError(f"run {self.directory} is being trained by process {owner.get('pid')}; "
                                  "clean it after that run ends")
        self.wait()
        protect = [self._resumed_from] if self._resumed_from else []
        return plan_clean(self.directory, keep, protect)

    def close(self) -> None:
        """Wait for the last save, then release the run lock (also on a write error).

        Interrupted (Ctrl+C) while a save is still being written, the lock stays held:
        another trainer must not start beside, or clean up after, a write in progress. The
        write still finishes (the writer's exit hook waits for it) and the lock goes when
        the process exits or this manager is garbage-collected.
        """
        try:
            self.wait()
        finally:
            if not (self._writer is not None and self._writer.busy):
                self._staging = StagingPool()  # frees the host copies kept for the next save
                if self._lock is not None:
                    self._lock.release()

    def __enter__(self) -> "CheckpointManager":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _recover_from_crash(self) -> None:
        # Under the lock nobody else writes here, so leftovers are from a killed save. A folder
        # we cannot write fails here, before the caller spends time training for nothing.
        with explain_write_errors(self.directory):
            check_writable(self.directory)
            removed = remove_stale_temp_files(self.directory)
            finalized = finalize_pending_sidecars(self.directory)
            orphans = remove_orphan_sidecars(self.directory)
        if removed or finalized or orphans:
            self._warn(f"recovered from an interrupted save or clean in {self.directory}: removed {len(removed)} "
                       f"temp file(s) and {len(orphans)} sidecar(s) without a checkpoint, "
                       f"finished {len(finalized)} sidecar(s)")

    def _read_best(self) -> tuple[float | None, int | None]:
        # From disk, never only remembered: a restarted run must not overwrite a better best.
        if not (self.directory / BEST_NAME).exists():
            return None, None
        info = checkpoint_info(self.directory / BEST_NAME)
        if not info.valid:
            self._warn(f"ignoring {info.name}: {info.reason}; the next validation result replaces it")
            return None, None
        return info.metric(self.best_rule.metric), info.epoch


def _json_number(value: Any) -> Any:
    return value if type(value) in (int, float, type(None)) else None


def _small_config(config: Any) -> dict[str, Any] | None:
    if isinstance(config, str):
        try:
            config = json.loads(config)
        except ValueError:
            return None
    if not isinstance(config, dict):
        return None
    try:
        text = json.dumps(config)
    except (TypeError, ValueError):
        return None
    return json.loads(text) if len(text) <= _MAX_SIDECAR_CONFIG_BYTES else None

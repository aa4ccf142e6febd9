"""Building one run: data, split, model, optimiser, the resumed state and the JSON log."""

from __future__ import annotations

import json
import statistics
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from useg.training import state as training_state
from useg.checkpoint import CheckpointManager, restore_rng_state
from useg.config import TrainConfig
from useg.data import Split, TaskSampler, data_options, split_by_patient, validation_tasks
from useg.data.collection import HeldOut, load_data, load_held_out, names_of
from useg.data.splits import split_from_file
from useg.data import recipe
from useg.data.tasks import Recipe, draw_version_to_resume
from useg.data.index import write_data_index
from useg.compute.device import choose_device, choose_threads, compile_model, describe_compute, settle_determinism
from useg.compute.device import fastest_thread_count, thread_candidates, usable_cores
from useg.compute.distributed import World, any_rank, broadcast_object, wrap_distributed
from useg.errors import ConfigError, UsegError
from useg.training.history import new_history, new_log_name
from useg.model import build_universeg
from useg.weights import load_pretrained
from useg.compute.precision import autocast, default_precision, make_scaler, restore_scaler
from useg.training.progress import Progress, ThreadRecheck, trial_seconds_record
from useg.run_folder import RunPaths
from useg.training.losses import segmentation_loss
from useg.training.log import describe_data, describe_world, log_header, new_session, open_log
from useg.training.schedule import align_schedule, build_scheduler
from useg.training.state import TrainingPosition
from useg.training.trackers import Trackers, open_trackers


CLEAN_STEPS_BETWEEN_SAVES = 4  # under a save budget, what a step costs without a write is measured between saves


@dataclass
class RoutineSaves:
    """This session's routine mid-epoch saves and what they cost training, as --save-budget weighs it: the
    time the training thread spends in them, and how much longer steps take while a checkpoint is written
    (the writer competes with the steps for the CPU cores; beside GPU steps it costs them next to nothing)."""

    asked: int = 0  # due by --save-every-steps / --save-every-minutes
    taken: int = 0  # handed to the checkpoint manager (a newer one may still replace it unwritten: coalesced)
    owed: bool = False  # one was due and waits until the budget allows it
    stall_s: float = 0.0  # the training thread's time in them: the state built, the copies taken
    slowdown_s: float = 0.0  # steps' time beyond a typical step while a checkpoint was being written
    started: float = field(default_factory=time.monotonic)  # when this session began training
    clean_steps: deque = field(default_factory=lambda: deque(maxlen=16))  # recent steps with nothing written
    clean_run: int = 0  # steps since the last one beside a write

    @property
    def spent_s(self) -> float:
        return self.stall_s + max(0.0, self.slowdown_s)

    @property
    def measured(self) -> bool:
        """Enough steps without a write since the last one to know what a step takes without saves."""
        return self.clean_run >= CLEAN_STEPS_BETWEEN_SAVES

    def weigh_step(self, seconds: float, writing: bool) -> None:
        """Count a step: beside a write, its time beyond the median recent step without one is the saves' cost
        (unclamped, so that the steps' own jitter cancels out over a run instead of adding up)."""
        if not writing:
            self.clean_steps.append(seconds)
            self.clean_run += 1
        else:
            self.clean_run = 0
            if self.clean_steps:
                self.slowdown_s += seconds - statistics.median(self.clean_steps)


@dataclass
class Run:
    """Everything the loop mutates, built once by `prepare_run`."""

    cfg: TrainConfig
    paths: RunPaths
    world: World
    device: torch.device
    manager: CheckpointManager | None  # only rank 0 writes files
    dataset: Any
    split: Split
    sampler: TaskSampler
    val_tasks: list
    model: torch.nn.Module
    train_model: torch.nn.Module  # the model, wrapped in DistributedDataParallel when distributed
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    history: dict[str, Any]
    log_path: Path
    log: dict[str, Any]
    trackers: Trackers = field(default_factory=Trackers)  # rank 0's experiment trackers (none: empty)
    scaler: torch.amp.GradScaler | None = None  # fp16 only
    skipped_steps: int = 0  # steps the fp16 scaler skipped over the whole run
    routine: RoutineSaves = field(default_factory=RoutineSaves)  # this session's mid-epoch saves (--save-every-*)
    thread_choice: dict | None = None  # how this session chose its CPU thread count (the log's session)
    threads_measured: bool = False  # the count is the one a trial step measured fastest (not --num-threads)
    position: TrainingPosition = field(default_factory=TrainingPosition)
    held_out: list[HeldOut] = field(default_factory=list)  # --held-out-data, each with its fixed tasks
    held_out_tasks: list[list] = field(default_factory=list)  # per held-out dataset, as val_tasks


def saved_split_record(run: Run) -> dict[str, Any]:
    """The split a checkpoint saves: the run's, and each held-out dataset's under `held_out`."""
    record = run.split.to_dict()
    if run.held_out:
        record["held_out"] = [held.split.to_dict() for held in run.held_out]
    return record


def build_run(cfg: TrainConfig, paths: RunPaths, world: World, manager: CheckpointManager | None,
              state: dict | None, resumed_from: Path | None, position: TrainingPosition, progress: Progress) -> Run:
    """Everything one run needs, from the resumed `state` (checked, at `position`) when there is one."""
    saved = training_state.saved_config(state) if state is not None else {}
    dataset = load_data(cfg.data, image_size=cfg.image_size, seed=cfg.seed, fractions=cfg.split_fractions,
                        names=names_of(saved.get("data")), **data_options(cfg))
    split = choose_split(cfg, dataset, state)
    held_out = load_held_out(cfg.held_out_data, image_size=cfg.image_size, seed=cfg.seed,
                             fractions=cfg.split_fractions, saved=saved_held_out(state),
                             names=names_of(saved.get("held_out_data")), **data_options(cfg))
    held_out_tasks = [held_out_validation_tasks(held, cfg) for held in held_out]
    sampler = TaskSampler(dataset, split.train, support_size=cfg.support_size, seed=cfg.seed,
                          samples_per_epoch=cfg.samples_per_epoch,
                          draw_version=draw_version_to_resume(training_state.saved_draw_version(state) if state else None),
                          recipe=Recipe(cfg.task_augmentation, cfg.in_task_augmentation, cfg.synthetic_tasks))
    val_tasks = validation_tasks(dataset, split.val, split.train, support_size=cfg.support_size, seed=cfg.seed)
    device = choose_device(cfg.device, world.local_rank, world.enabled)
    cfg.device = str(device)  # saved as chosen: a resume chooses again and compares the type
    cfg.precision = cfg.precision or default_precision(device)  # saved as chosen: a resume keeps it
    # No other --num-threads than the checkpoint's: the resume computes with the count the run computed with.
    threads_kept = state is not None and cfg.num_threads in (0, training_state.saved_compute(saved, "num_threads"))
    threads_free = settle_threads(cfg, state)
    torch.manual_seed(cfg.seed)  # the initial weights are part of what the seed fixes
    model = build_universeg(tuple(cfg.widths)).to(device)
    if state is None and cfg.pretrained:
        load_pretrained(model, cfg.pretrained)
        progress.line(f"Initialised from {cfg.pretrained}")
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    scheduler = build_scheduler(optimizer, cfg)
    run = Run(cfg, paths, world, device, manager, dataset, split, sampler, val_tasks, model, model, optimizer,
              scheduler, new_history(), log_path=paths.logs / new_log_name(), log={},
              scaler=make_scaler(cfg.precision, device), position=position, held_out=held_out,
              held_out_tasks=held_out_tasks)
    if state is not None:
        restore_state(run, state, progress)
    if threads_free:
        choose_thread_count(run, progress)
    elif threads_kept:
        time_kept_thread_count(run)
    settle_determinism(lambda: probe_step(model, cfg, device), cfg, device, lambda flag: any_rank(world, flag),
                       progress.warn)
    if state is not None:
        say_how_the_resume_computes(cfg, training_state.saved_config(state), device, progress, run.thread_choice)
    run.train_model = wrap_model(model, world, cfg)
    run.log_path = Path(broadcast_object(world, str(run.log_path)))
    if world.is_main:
        start_log(run, state, resumed_from.name if resumed_from else None)
        write_data_index(paths.root, cfg.data, dataset)  # id -> file, owner-only (useg.data.index)
        run.trackers = open_trackers(cfg, paths, run.log, run.history, position.epoch, fresh=state is None,
                                     warn=progress.warn)
    progress.line(describe_data(dataset, split, len(val_tasks), held_out) + describe_world(world, device)
                  + describe_compute(cfg))
    return run


def saved_held_out(state: dict | None) -> list | None:
    """The held-out datasets' splits a resumed checkpoint saved (None for a new run)."""
    if state is None:
        return None
    return (training_state.saved_split(state) or {}).get("held_out") or []


def held_out_validation_tasks(held: HeldOut, cfg: TrainConfig) -> list:
    """A held-out dataset's fixed tasks: its val patients' images as targets, its train patients' as supports."""
    try:
        return validation_tasks(held.dataset, held.split.val, held.split.train, support_size=cfg.support_size,
                                seed=cfg.seed)
    except UsegError as err:
        raise type(err)(f"--held-out-data {held.name}: {err}") from None


def settle_recipe(cfg: TrainConfig) -> None:
    """The recipe's switches become the settings the run draws with (and saves): on or paper -> that
    preset, a mapping -> `on` updated with it (useg.data.recipe); each setting checked, in one line naming it."""
    for key, kind in (("task_augmentation", "task"), ("in_task_augmentation", "in_task")):
        try:
            setattr(cfg, key, recipe.settings_from(kind, getattr(cfg, key)))
        except ValueError as err:
            raise ConfigError(str(err)) from None


def settle_threads(cfg: TrainConfig, state: dict | None) -> bool:
    """cfg.num_threads becomes the count this run computes with, and is saved so: --num-threads, or on
    a resume that did not name one, the checkpoint's, else the count `train` set from the cores.
    True for a new run that named none: the count is then its to choose (`choose_thread_count`); a
    resume of a checkpoint that did not record its count keeps the one `train` set, as before."""
    if not cfg.num_threads and state is not None:
        cfg.num_threads = training_state.saved_compute(training_state.saved_config(state), "num_threads") or 0
    free = state is None and not cfg.num_threads  # a resume computes with the count it computed with
    if cfg.num_threads and cfg.num_threads != torch.get_num_threads():
        torch.set_num_threads(cfg.num_threads)  # before any step; train's compute_settings restores the caller's
    cfg.num_threads = torch.get_num_threads()
    return free


def choose_thread_count(run: Run, progress: Progress) -> None:
    """A new CPU run that named no --num-threads computes with the count that ran a trial step fastest
    here, before its first step: the trial leaves weights and random streams alone, so the run computes
    exactly what it would with --num-threads forced to that count (which a resume then keeps)."""
    cfg = run.cfg
    timed = time_thread_counts(run)
    if timed is None:
        return
    chosen, seconds = timed
    torch.set_num_threads(chosen)  # train's compute_settings restores the caller's count at the end
    cfg.num_threads = chosen
    run.thread_choice = {"chosen": chosen, "seconds_per_trial_step": trial_seconds_record(seconds)}
    progress.line(f"CPU threads: {chosen}, the fastest here (one trial step with {trial_timings(seconds)}); "
                  f"--num-threads N forces a count")


def time_kept_thread_count(run: Run) -> None:
    """A resume computes with the count its checkpoint saved; here a trial step is timed at each candidate
    count, so that the resume can say when this machine runs faster with another (and the log keeps it)."""
    timed = time_thread_counts(run)
    if timed is not None:
        fastest, seconds = timed
        run.thread_choice = {"kept": run.cfg.num_threads, "fastest_here": fastest,
                             "seconds_per_trial_step": trial_seconds_record(seconds)}


def timeable_counts(run: Run) -> list[int]:
    """The thread counts worth timing for this run: none on a GPU (a step barely uses CPU threads), under
    torchrun (ranks must not choose differently) or on one core."""
    candidates = thread_candidates(usable_cores())
    return [] if run.device.type != "cpu" or run.world.enabled or len(candidates) < 2 else candidates


def time_thread_counts(run: Run) -> tuple[int, dict[int, float]] | None:
    """The fastest count here and each candidate's seconds per trial step, the run's own count restored
    after; None where there is nothing to time (`timeable_counts`)."""
    candidates = timeable_counts(run)
    if not candidates:
        return None
    kept = torch.get_num_threads()
    try:
        return fastest_thread_count(lambda: timing_step(run.model, run.cfg, run.device), candidates)
    finally:
        torch.set_num_threads(kept)  # the count is what the run computes with


def trial_timings(seconds: dict) -> str:
    """`1: 0.20 s, 2: 0.12 s`: seconds per trial step by thread count."""
    return ", ".join(f"{n}: {s:.2f} s" for n, s in seconds.items())


def recheck_thread_count(run: Run) -> ThreadRecheck | None:
    """After a SLOW epoch, `choose_thread_count`'s trial step timed again at each candidate count, for a
    one-process CPU run whose count was measured (not --num-threads); None for any other run.

    The run keeps its count whatever the timings say, and the SLOW note advises instead. Switching
    would make what the run computes depend on when this machine was busy: the count changes a step's
    floating-point result (with 1 and 2 threads the weights differ after one step), so the weights would
    no longer be a function of the seed and settings, nor equal to a run with --num-threads forced to its
    starting count. A stop and resume with --num-threads N is the switch, said as not bit-identical.
    The trial leaves weights, gradients and random streams untouched; the run's count comes back."""
    if not run.threads_measured or not timeable_counts(run):
        return None
    if run.manager is not None:
        run.manager.wait()  # a checkpoint being written would compete with the trial steps for the cores
    timed = time_thread_counts(run)
    return None if timed is None else ThreadRecheck(timed[1], timed[0], run.cfg.num_threads)


def count_was_measured(sessions: list[dict[str, Any]], threads: int) -> bool:
    """Whether a run computes with the count its first session measured fastest (`thread_choice`), kept
    by every resume since, rather than one that --num-threads set."""
    return any((session.get("thread_choice") or {}).get("chosen") == threads for session in sessions)


def say_how_the_resume_computes(cfg: TrainConfig, saved: dict[str, Any], device: torch.device,
                                progress: Progress, thread_choice: dict | None = None) -> None:
    """Say which settings that change the arithmetic were kept although this machine would choose
    otherwise (the thread count as a trial step measured it here, `time_kept_thread_count`, where it
    could), and warn about any that changed; a change marks the run as no longer bit-identical."""
    measured = (thread_choice or {}).get("fastest_here")
    machine = {"num_threads": measured or choose_threads(0, cfg.data_workers), "precision": default_precision(device)}
    timings = trial_timings(thread_choice["seconds_per_trial_step"]) if measured else None
    for line in training_state.kept_but_not_chosen(saved, cfg, machine, timings):
        progress.line(line)
    changes = training_state.compute_changes(saved, cfg, device.type)
    if changes:
        cfg.bit_identical = False
    if not cfg.deterministic:
        progress.warn(f"--no-deterministic: {training_state.NOT_EXACT}")
        changes.pop("deterministic", None)
    if changes:
        progress.warn(f"resuming with {training_state.changes_text(changes)}: {training_state.NOT_EXACT}")


def start_log(run: Run, state: dict | None, resumed_from: str | None) -> None:
    header = log_header(run.cfg, run.model, run.dataset, run.split, run.device, run.world.world_size,
                        held_out=run.held_out)
    saved = training_state.saved_config(state) if state is not None else None
    session = new_session(run.position, run.world.world_size, resumed_from, saved, run.cfg)
    if run.thread_choice is not None:
        session["thread_choice"] = run.thread_choice
    run.log = open_log(run.log_path, header, session, run.history, continuing=state is not None)
    run.threads_measured = count_was_measured(run.log["sessions"], run.cfg.num_threads)


def wrap_model(model: torch.nn.Module, world: World, cfg: TrainConfig) -> torch.nn.Module:
    """What the training steps call: the model, in DistributedDataParallel, compiled with --compile.
    Checkpoints always save `model` itself, whose parameter names stay plain."""
    wrapped = wrap_distributed(model, world)
    return compile_model(wrapped) if cfg.compile else wrapped


def choose_split(cfg: TrainConfig, dataset, state: dict | None) -> Split:
    """The patient-level split: the saved one on resume, else a --split-file's (ids or file names), else the
    data's published one (MMOTU) or a seeded new one; `split.origin` says which for the data line."""
    if state is not None:
        return Split.from_dict(training_state.saved_split(state), dataset)  # origin: "saved with the run"
    if cfg.split_file:
        try:
            saved = json.loads(Path(cfg.split_file).read_text(encoding="utf-8-sig"))
        except (OSError, ValueError) as err:
            raise ConfigError(f"--split-file {cfg.split_file}: cannot read it ({type(err).__name__})") from None
        return split_from_file(saved, dataset, seed=cfg.seed, file_name=Path(cfg.split_file).name)
    return split_by_patient(dataset, seed=cfg.seed, fractions=tuple(cfg.split_fractions))


def restore_state(run: Run, state: dict[str, Any], progress: Progress) -> None:
    """Put model, optimiser, scheduler, history, RNG and data position back as saved."""
    training_state.restore_training_parts(state, run.model, run.optimizer, run.scheduler)
    align_schedule(run.optimizer, run.scheduler, run.cfg)
    run.history = training_state.saved_history(state)
    run.history.setdefault("resumed_at", []).append(run.position.epoch)
    rng, exact = training_state.rng_for_rank(state, run.world.rank, run.world.world_size)
    if not exact:
        run.cfg.bit_identical = False
        progress.warn(f"resuming a {training_state.saved_rank_count(state)}-process checkpoint with "
                      f"{run.world.world_size} process(es): training continues correctly but is not "
                      "bit-identical to an uninterrupted run")
    restore_rng_state(rng)
    restore_scaler(run.scaler, state.get(training_state.GRAD_SCALER))
    run.skipped_steps = state.get(training_state.SKIPPED_STEPS, 0)
    log_file = state.get(training_state.LOG_FILE)
    if log_file:
        run.log_path = run.paths.logs / log_file


def probe_step(model: torch.nn.Module, cfg, device: torch.device) -> None:
    """One forward, loss and backward at the smallest input the model takes (the determinism check)."""
    trial_step(model, cfg, device, 2 ** len(cfg.widths), min(cfg.support_size, 2))


def timing_step(model: torch.nn.Module, cfg, device: torch.device) -> None:
    """One forward, loss and backward of one target at the run's image and support size (thread timing)."""
    trial_step(model, cfg, device, cfg.image_size, cfg.support_size)


def trial_step(model: torch.nn.Module, cfg, device: torch.device, size: int, supports: int) -> None:
    """A training step's forward, loss and backward on made-up inputs; leaves no gradient behind.

    The op types are those of a real step; the inputs come from their own generator and no
    optimizer steps, so the run's weights and random streams are untouched.
    """
    generator = torch.Generator().manual_seed(0)
    target = torch.rand(1, 1, size, size, generator=generator).to(device)
    images = torch.rand(1, supports, 1, size, size, generator=generator).to(device)
    labels = (images > 0.5).float()
    with autocast(cfg.precision, device):
        loss = segmentation_loss(model(target, images, labels).float(), (target > 0.5).float(), cfg.loss)
    loss.backward()
    model.zero_grad(set_to_none=True)

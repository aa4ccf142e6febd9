"""The training loop: data, model, optimiser, validation, checkpoints and logs for one run."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shlex
import signal
import time
import warnings
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from useg.checkpoint import CheckpointManager, capture_rng_state, is_locked, load_checkpoint, lock_owner
from useg.checkpoint import read_metadata, resolve_checkpoint, restore_rng_state
from useg.checkpoint.atomic import fsync_directory
from useg.checkpoint.faults import kill_point, kill_point_named
from useg.checkpoint.layout import LOCK_NAME
from useg.checkpoint.replaced import replaced_name
from useg.config import RETUNABLE_KEYS, TrainConfig, incompatible_keys
from useg.data import Split, TaskSampler, data_options, load_dataset, split_by_patient, validation_tasks
from useg.data.prefetch import Prefetcher, data_workers
from useg.data.tasks import draw_version_to_resume
from useg.data_index import write_data_index
from useg.device import choose_device, compile_model, compute_settings, default_threads, settle_determinism
from useg.device import describe_compute, to_device, usable_cores
from useg.distributed import World, any_rank, barrier, broadcast_object, close_world, gather_objects, init_world
from useg.distributed import mean_over_ranks
from useg.errors import CheckpointError, ConfigError, DivergedError, UsegError
from useg.history import append_epoch, log_tensorboard, new_history, new_log_name, open_tensorboard, write_log
from useg.metrics import segmentation_loss
from useg.model import build_universeg, load_pretrained, model_config
from useg.precision import autocast, default_precision, make_scaler, optimizer_step, restore_scaler, scaler_state
from useg.progress import Progress, plural, position_text
from useg.run_log import describe_data, describe_world, open_log, record_saves
from useg.signals import StopRequest, TrainingInterrupted
from useg.validation import picture_tasks, save_pictures, validate


@dataclass
class RunPaths:
    root: Path
    checkpoints: Path
    logs: Path
    visualizations: Path


def run_paths(run_dir: str | Path) -> RunPaths:
    root = Path(run_dir)
    return RunPaths(root, root / "checkpoints", root / "logs", root / "visualizations_training")


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
    tensorboard: Any = None
    scaler: torch.amp.GradScaler | None = None  # fp16 only
    skipped_steps: int = 0  # steps the fp16 scaler skipped over the whole run
    start_epoch: int = 0
    start_batch: int = 0
    partial_loss: tuple[float, int] = (0.0, 0)
    step: int = 0


def resume_config(run_dir: str | Path, which: str) -> dict[str, Any]:
    """The config saved with the checkpoint `which` names (read from its sidecar, no tensors)."""
    folder = run_paths(run_dir).checkpoints
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{folder} is a file, not a folder; move it away or use another --run-dir")
    if not folder.is_dir():
        raise CheckpointError(f"no checkpoint to resume from: {folder} does not exist; start with useg train")
    meta = read_metadata(resolve_checkpoint(folder, which, warn=lambda message: None)) or {}
    config = dict(meta.get("config") or {})
    planned = planned_total_epochs(folder) if which == "latest" else None
    if planned is not None:
        # Falling back to an older file must not fall back to its older plan: the run's newest
        # save says how many epochs the run is now meant to have (e.g. after --epochs 8).
        config["epochs"] = planned
    return config


def planned_total_epochs(folder: Path) -> int | None:
    """The total epochs recorded by the run's newest save (latest's sidecar, else its branch's newest file)."""
    from useg.checkpoint.resume_points import resume_points

    points = resume_points(folder)
    return points[0].info.total_epochs if points and not points[0].abandoned else None


def train(cfg: TrainConfig, *, resume: str | None = None, overwrite: bool = False, console=None) -> dict[str, Any]:
    """Train (or resume) one run; returns the history. Raises TrainingInterrupted on a signal."""
    # Before anything touches CUDA: cuBLAS reads its deterministic workspace setting once.
    threads = cfg.num_threads or default_threads(usable_cores(), data_workers(cfg.data_workers))
    with compute_settings(threads, cfg.deterministic):
        return train_in_settings(cfg, resume, overwrite, console)


def train_in_settings(cfg: TrainConfig, resume: str | None, overwrite: bool, console) -> dict[str, Any]:
    world = init_world()
    progress = Progress(console=console, quiet=cfg.quiet, silent=not world.is_main)
    try:
        try:
            run = prepare_run(cfg, world, resume, overwrite, progress)
        except RunComplete as complete:  # nothing was trained or written
            return complete.history
        stop = StopRequest()
        stop.install()
        together = False
        try:
            run_epochs(run, stop, progress)
            together = True
        except TrainingInterrupted:
            together = True  # every rank stops at the same step
            raise
        finally:
            finish(run)  # a Ctrl+C while the last save is written is still handled by `stop`
            stop.restore()
            if together:
                barrier(world)  # no rank tears the process group down while another still uses it
    finally:
        close_world(world)
    history = run.history
    untrained = history.get("initial_val_dice")
    progress.line(f"Done: {plural(cfg.epochs, 'epoch')}, best val Dice {history['best_val_dice']:.4f} at epoch "
                  f"{history['best_epoch']}" + (f" (untrained {untrained:.4f})" if untrained is not None else "")
                  + f"; checkpoints in {run.paths.checkpoints}")
    return run.history


def finish(run: Run) -> None:
    """Close the TensorBoard writer and wait until every checkpoint write is durable."""
    if run.tensorboard is not None:
        run.tensorboard.close()
    if run.manager is not None:
        run.manager.close()


def on_main(world: World, action, share: bool = False):
    """Run `action` on rank 0 only; a user error there is raised on every rank.

    Returns its result on rank 0 (and on every rank with `share`), None elsewhere.
    """
    result, outcome = None, ("ok", None)
    if world.is_main:
        try:
            result = action()
        except UsegError as error:
            if not world.enabled:
                raise
            outcome = ("error", (type(error), str(error)))
    if not world.enabled:
        return result
    outcome = broadcast_object(world, outcome if not share or outcome[0] == "error" else ("ok", result))
    if outcome[0] == "error":
        kind, message = outcome[1]
        raise kind(message)
    return outcome[1] if share else result


class RunComplete(Exception):
    """The checkpoint to resume already has every planned epoch; carries its history."""

    def __init__(self, history: dict[str, Any]):
        super().__init__("the run is complete")
        self.history = history


def prepare_run(cfg: TrainConfig, world: World, resume: str | None, overwrite: bool, progress: Progress) -> Run:
    """Lock the run folder (rank 0), load data, build the model and restore state when resuming.

    Raises RunComplete (after saying so) when the checkpoint resumed has every epoch already."""
    paths = run_paths(cfg.run_dir)
    if cfg.data:  # saved absolute, so the run resumes from any working directory
        cfg.data = os.path.abspath(cfg.data)
    if cfg.batch_size % world.world_size:
        raise ConfigError(f"--batch-size {cfg.batch_size} must be divisible by the {world.world_size} processes")
    choose_device(cfg.device, world.local_rank, world.enabled)  # an unavailable device fails before the lock
    created = [folder for folder in (paths.checkpoints, paths.root) if not folder.exists()]
    manager = on_main(world, lambda: open_manager(cfg, paths, resume, overwrite, progress))
    try:
        path, state = load_resume_state(world, manager, resume)
        state = check_resume_state(state, path, cfg, progress) if path is not None else None
        if state is not None and run_is_complete(state, cfg, progress):
            raise RunComplete(state.get("history") or {})
        return build_run(cfg, paths, world, manager, state, path.name if path else None, progress)
    except BaseException:
        if manager is not None:
            manager.close()
            remove_unused_folders(created)
        raise


def remove_unused_folders(folders: list[Path]) -> None:
    """A run that failed before writing anything (bad data, bad weights) leaves no folders behind."""
    for folder in folders:
        lock = folder / ".lock"
        if lock.is_file() and lock.stat().st_size == 0:
            lock.unlink()
        try:
            folder.rmdir()  # only succeeds when empty: nothing written is ever removed
        except OSError:
            pass


def load_resume_state(world: World, manager, resume: str | None) -> tuple[Path | None, dict | None]:
    """The checkpoint to resume from: rank 0 resolves and loads it (one verification), the others load that file."""
    if resume is None:
        return None, None
    state = on_main(world, lambda: manager.load(resume))
    path = on_main(world, lambda: manager.resumed_from, share=True)
    return path, state if world.is_main else load_checkpoint(path)


def open_manager(cfg: TrainConfig, paths: RunPaths, resume, overwrite: bool, progress: Progress):
    check_run_dir(paths, resume, overwrite)
    manager = CheckpointManager(paths.checkpoints, total_epochs=cfg.epochs,
                                periodic_percentages=tuple(cfg.periodic_percentages), lock=True, warn=progress.warn)
    try:
        if resume is None and manager.list():
            if not overwrite:
                # Another trainer finished here between our check and our lock: never write over its run.
                raise CheckpointError(f"{paths.checkpoints} already holds checkpoints; continue with --resume latest")
            set_aside_checkpoints(paths, manager, progress)
    except BaseException:
        manager.close()
        raise
    return manager


def check_run_dir(paths: RunPaths, resume: str | None, overwrite: bool) -> None:
    """Refuse a run folder whose parts are files, or existing checkpoints unless told to resume or overwrite."""
    for folder in (paths.root, paths.checkpoints, paths.logs, paths.visualizations):
        if folder.exists() and not folder.is_dir():
            raise ConfigError(f"{folder} is a file, not a folder; move it away or use another --run-dir")
    existing = sorted(paths.checkpoints.glob("*.pt")) if paths.checkpoints.is_dir() else []
    if resume is not None or not existing:
        return
    if not overwrite:
        raise CheckpointError(f"{paths.checkpoints} already holds {len(existing)} checkpoint(s); "
                              "continue with --resume latest, or start afresh with --overwrite")
    if is_locked(paths.checkpoints):
        owner = lock_owner(paths.checkpoints) or {}
        raise CheckpointError(f"{paths.root} is being trained by process {owner.get('pid', '?')}; "
                              "it cannot be overwritten now")


def set_aside_checkpoints(paths: RunPaths, manager: CheckpointManager, progress: Progress) -> None:
    """--overwrite: move the previous run's files into checkpoints_replaced_<time>/ instead of deleting them.

    Called while `manager` holds the run lock, so no other trainer can start in the folder
    between the move and our first save; `.lock` itself stays (we hold it).
    """
    kill_point("overwrite-set-aside")
    stamp = datetime.now().strftime("%Y%m%d_%H%M%S")
    kept, number = paths.root / replaced_name(stamp), 1
    while kept.exists():  # a second --overwrite within the same second
        number += 1
        kept = paths.root / replaced_name(stamp, number)
    kept.mkdir()
    for entry in sorted(paths.checkpoints.iterdir()):
        if entry.name != LOCK_NAME:
            entry.rename(kept / entry.name)
    if paths.visualizations.is_dir():  # the old run's pictures go with its checkpoints, not into the new run
        paths.visualizations.rename(kept / paths.visualizations.name)
    for folder in (kept, paths.checkpoints, paths.root):
        fsync_directory(folder)  # the moves are durable before this run writes anything
    manager.best_val_dice, manager.best_epoch = None, None  # the best it read from disk was the old run's
    progress.warn(f"--overwrite: moved the previous checkpoints (and pictures) to {kept}")


def check_resume_state(state: dict, path: Path, cfg: TrainConfig, progress: Progress) -> dict:
    """Refuse a checkpoint that is not a full training state or whose config no longer fits."""
    if "optimizer_state_dict" not in state or "sampler_state" not in state:
        raise CheckpointError(f"{path.name} holds model weights only (no optimizer or data position) and cannot "
                              "be resumed; resume from latest or an epoch_NNN checkpoint, or fine-tune with --pretrained")
    saved = state.get("config") or {}
    bad = [key for key in incompatible_keys(saved, cfg) if not (key == "data" and same_data(saved, cfg, state))]
    if bad:
        details = ", ".join(f"{key} {saved[key]!r} -> {getattr(cfg, key)!r}" for key in bad)
        raise ConfigError(f"cannot resume {path.name}: the config differs in {details}; "
                          "use the checkpoint's values or start a new --run-dir")
    retuned = {key: (saved[key], getattr(cfg, key)) for key in sorted(RETUNABLE_KEYS)
               if key in saved and saved[key] != getattr(cfg, key)}
    if retuned:
        details = ", ".join(f"{key} {old!r} -> {new!r}" for key, (old, new) in retuned.items())
        progress.warn(f"resuming with {details}: the run continues, but no longer as originally planned "
                      "(the change is recorded in the log's sessions)")
    progress.line(f"Resuming from {path} at {saved_position_text(state, cfg.epochs)}")
    return state


def saved_position_text(state: dict, total: int) -> str:
    """A checkpoint's position in the words every message uses (see progress.position_text)."""
    position = state["sampler_state"]
    batches = -(-position["samples_per_epoch"] // position["batch_size"]) if "samples_per_epoch" in position else None
    return position_text(state["epoch"], position["batch_index"], batches, total)


def run_is_complete(state: dict, cfg: TrainConfig, progress: Progress) -> bool:
    """True (and said, even with --quiet) when the checkpoint already has cfg.epochs complete epochs."""
    done = state["epoch"]
    if done < cfg.epochs:
        return False
    if done == cfg.epochs and not state["sampler_state"]["batch_index"]:
        history = state.get("history") or {}
        best = history.get("best_val_dice")
        best_text = f", best val Dice {best:.4f} at epoch {history.get('best_epoch')}" if best is not None else ""
        said = f"The run is complete: {done} of {plural(done, 'epoch')} trained{best_text}"
    else:
        said = f"The checkpoint is at {saved_position_text(state, None)}, beyond --epochs {cfg.epochs}"
    progress.notice(f"{said}; nothing to do. To train further, resume with a larger total, e.g.: "
                    f"useg resume latest --run-dir {shlex.quote(str(cfg.run_dir))} --epochs {done + max(done // 2, 1)}")
    return True


def same_data(saved: dict, cfg: TrainConfig, state: dict) -> bool:
    """A moved or re-spelled data path is the same data when it is the same folder, or when the
    saved split's image fingerprints (checked when the split is loaded) will prove it."""
    if saved.get("data") is None or cfg.data is None:
        return False
    if os.path.realpath(saved["data"]) == os.path.realpath(cfg.data):
        return True
    return bool((state.get("split") or {}).get("fingerprints"))


def build_run(cfg, paths, world, manager, state, resumed_from, progress) -> Run:
    dataset = load_dataset(cfg.data, image_size=cfg.image_size, seed=cfg.seed, **data_options(cfg))
    split = choose_split(cfg, dataset, state)
    sampler = TaskSampler(dataset, split.train, support_size=cfg.support_size, seed=cfg.seed,
                          samples_per_epoch=cfg.samples_per_epoch, draw_version=draw_version_to_resume(state))
    val_tasks = validation_tasks(dataset, split.val, split.train, support_size=cfg.support_size, seed=cfg.seed)
    device = choose_device(cfg.device, world.local_rank, world.enabled)
    cfg.precision = cfg.precision or default_precision(device)  # saved as chosen: a resume keeps it
    torch.manual_seed(cfg.seed)  # the initial weights are part of what the seed fixes
    model = build_universeg(tuple(cfg.widths)).to(device)
    if state is None and cfg.pretrained:
        load_pretrained(model, cfg.pretrained)
        progress.line(f"Initialised from {cfg.pretrained}")
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    scheduler = build_scheduler(optimizer, cfg)
    run = Run(cfg, paths, world, device, manager, dataset, split, sampler, val_tasks, model, model, optimizer,
              scheduler, new_history(), log_path=paths.logs / new_log_name(), log={},
              scaler=make_scaler(cfg.precision, device))
    if state is not None:
        restore_state(run, state, progress)
    settle_determinism(model, cfg, device, lambda flag: any_rank(world, flag), progress.warn)
    if state is not None and not cfg.deterministic:
        progress.warn("--no-deterministic: the resumed run continues correctly, not bit-identical to an "
                      "uninterrupted run")
    run.train_model = wrap_model(model, world, cfg)
    run.log_path = Path(broadcast_object(world, str(run.log_path)))
    if world.is_main:
        open_log(run, state, resumed_from)
        write_data_index(paths.root, cfg.data, dataset)  # id -> file, owner-only (useg.data_index)
        if cfg.tensorboard:
            run.tensorboard = open_tensorboard(paths.logs / "tensorboard", progress.warn)
    progress.line(describe_data(dataset, split, len(val_tasks)) + describe_world(world, device) + describe_compute(cfg))
    return run


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.LRScheduler:
    """Cosine decay from cfg.lr to cfg.lr * min_lr_ratio over cfg.epochs, stepped once per epoch."""
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs, eta_min=cfg.lr * cfg.min_lr_ratio)


def align_schedule(optimizer: torch.optim.Optimizer, scheduler, cfg: TrainConfig) -> None:
    """After loading, make the lr follow a fresh run of the current settings (an extended run, a lower --lr).

    CosineAnnealingLR steps from the previous lr, so changing T_max after loading does nothing:
    replay a fresh schedule to the saved epoch instead, which gives a fresh run's lr bit for bit.
    Unchanged settings leave the loaded state alone (an exact resume).
    """
    if (scheduler.T_max, scheduler.base_lrs[0], scheduler.eta_min) == (cfg.epochs, cfg.lr, cfg.lr * cfg.min_lr_ratio):
        return
    replay_optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=cfg.lr)
    replay = build_scheduler(replay_optimizer, cfg)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "scheduler.step() before optimizer.step()": nothing is trained here
        for _ in range(scheduler.last_epoch):
            replay.step()
    for group in optimizer.param_groups:
        group["lr"], group["initial_lr"] = replay_optimizer.param_groups[0]["lr"], cfg.lr
    scheduler.load_state_dict(replay.state_dict())


def wrap_model(model: torch.nn.Module, world: World, cfg: TrainConfig) -> torch.nn.Module:
    """What the training steps call: the model, in DistributedDataParallel, compiled with --compile.
    Checkpoints always save `model` itself, whose parameter names stay plain."""
    wrapped = wrap_distributed(model, world)
    return compile_model(wrapped) if cfg.compile else wrapped


def wrap_distributed(model: torch.nn.Module, world: World) -> torch.nn.Module:
    if not world.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    # The last decoder block's support conv is never used (its output is discarded), hence unused parameters.
    device_ids = [world.local_rank] if torch.cuda.is_available() else None
    return DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=True)


def choose_split(cfg: TrainConfig, dataset, state: dict | None) -> Split:
    """The patient-level split: the saved one on resume, else a file's or a seeded new one."""
    if state is not None:
        return Split.from_dict(state["split"], dataset)
    if cfg.split_file:
        try:
            saved = json.loads(Path(cfg.split_file).read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise ConfigError(f"--split-file {cfg.split_file}: cannot read it ({type(err).__name__})") from None
        return Split.from_dict(saved, dataset)
    return split_by_patient(dataset, seed=cfg.seed, fractions=tuple(cfg.split_fractions))


def restore_state(run: Run, state: dict[str, Any], progress: Progress) -> None:
    """Put model, optimiser, scheduler, history, RNG and data position back as saved."""
    run.model.load_state_dict(state["model_state_dict"])
    run.optimizer.load_state_dict(state["optimizer_state_dict"])
    run.scheduler.load_state_dict(state["scheduler_state_dict"])
    align_schedule(run.optimizer, run.scheduler, run.cfg)
    run.history = state["history"]
    run.history.setdefault("resumed_at", []).append(state["epoch"])
    restore_rng(run.world, state, progress)
    position = state["sampler_state"]
    run.start_epoch = state["epoch"]
    run.start_batch = position["batch_index"]
    run.partial_loss = (position["loss_sum"], position["loss_count"])
    run.step = state["step"]
    restore_scaler(run.scaler, state.get("grad_scaler_state_dict"))
    run.skipped_steps = state.get("skipped_steps", 0)
    if state.get("log_file"):
        run.log_path = run.paths.logs / state["log_file"]


def restore_rng(world: World, state: dict[str, Any], progress: Progress) -> None:
    """Each rank gets its own saved RNG state back when the number of processes is unchanged."""
    per_rank = state.get("rng_state_per_rank") or [state["rng_state"]]
    if len(per_rank) != world.world_size:
        progress.warn(f"resuming a {len(per_rank)}-process checkpoint with {world.world_size} process(es): "
                      "training continues correctly but is not bit-identical to an uninterrupted run")
    restore_rng_state(per_rank[world.rank] if len(per_rank) == world.world_size else per_rank[0])


def run_epochs(run: Run, stop: StopRequest, progress: Progress) -> None:
    """Train from the saved position to cfg.epochs, checkpointing after each epoch."""
    cfg = run.cfg
    pictured = picture_tasks(run.val_tasks, cfg.vis_count)
    if run.start_epoch == 0 and run.start_batch == 0:
        record_untrained_dice(run, progress)
    for epoch in range(run.start_epoch, cfg.epochs):
        started = time.perf_counter()
        loss_sum, loss_count = run_one_epoch(run, epoch, stop, progress)
        with warnings.catch_warnings():
            # Resumed after the epoch's last step, this process ran no optimizer step before the
            # epoch's scheduler step, which torch warns about; the order is right for the run.
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)`")
            run.scheduler.step()
        kill_point("validation")
        record = validate(run.model, run.dataset, run.val_tasks, 2 * cfg.batch_size, run.device, run.world)
        train_time = time.perf_counter() - started
        record.update(skipped_steps=run.skipped_steps - sum(n or 0 for n in run.history.get("skipped_steps", [])),
                      train_loss=loss_sum / max(loss_count, 1), lr=run.optimizer.param_groups[0]["lr"],
                      epoch_time_s=round(train_time, 3),
                      samples_per_s=round(cfg.samples_per_epoch / max(train_time, 1e-9), 2))
        improved = append_epoch(run.history, record)
        save_epoch_checkpoint(run, epoch + 1, record)
        epoch_end_kill_point(run)
        progress.epoch_summary(epoch + 1, cfg.epochs, record, improved, run.history)
        # Pictures after the checkpoint: a picture that cannot be written must not cost the epoch.
        if cfg.vis_every and (epoch + 1) % cfg.vis_every == 0:
            on_main(run.world, lambda: save_pictures(run.model, run.dataset, pictured, run.paths.visualizations,
                                                     epoch + 1, run.device))
        run.start_batch, run.partial_loss = 0, (0.0, 0)
        if any_rank(run.world, stop.signum is not None):
            # The signal came during validation, the save or the pictures: the epoch checkpoint is
            # the position, also after the last epoch (a Ctrl+C is never ignored).
            stop_after_epoch(run, stop, epoch + 1, progress)


def epoch_end_kill_point(run: Run) -> None:
    """The `epoch-end` fault point means what its name says: the epoch's checkpoint is durable."""
    if run.manager is not None and kill_point_named("epoch-end"):
        run.manager.wait()  # only under USEG_KILL_AT: a normal run keeps writing in the background
    kill_point("epoch-end")


def stop_after_epoch(run: Run, stop: StopRequest, epochs_done: int, progress: Progress) -> None:
    """A signal that came after the epoch's last step: its checkpoint is the position; wait for it and stop."""
    signals = [s for s in gather_objects(run.world, stop.signum) if s is not None]
    stop.signum = stop.signum or signals[0]
    progress.warn(f"{signal.Signals(stop.signum).name} received: stopping at the end of this epoch, "
                  f"{position_text(epochs_done, total=run.cfg.epochs)} ...")
    if run.manager is not None:
        run.manager.wait()
    raise TrainingInterrupted(stop.exit_code, resume_hint(run, complete=epochs_done >= run.cfg.epochs))


def record_untrained_dice(run: Run, progress: Progress) -> None:
    """Validation Dice before any step: the baseline that shows what training achieved."""
    record = validate(run.model, run.dataset, run.val_tasks, 2 * run.cfg.batch_size, run.device, run.world)
    run.history["initial_val_dice"] = record["val_dice"]
    progress.line(f"val Dice before training: {record['val_dice']:.4f}")


def local_part(batch, world: World):
    """This rank's share of the global batch (the batch is the same definition at any world size)."""
    if not world.enabled:
        return batch
    return dataclasses.replace(batch, **{f.name: getattr(batch, f.name)[world.rank::world.world_size]
                                         for f in dataclasses.fields(batch)})


def run_one_epoch(run: Run, epoch: int, stop: StopRequest, progress: Progress) -> tuple[float, int]:
    """Optimisation steps of one epoch, from the saved batch on; returns (loss sum, batches)."""
    cfg = run.cfg
    run.train_model.train()
    loss_sum, loss_count = run.partial_loss
    batches = run.sampler.num_batches(cfg.batch_size)
    last_save = time.monotonic()

    def build(index: int):
        return local_part(run.sampler.batch(epoch, index, cfg.batch_size), run.world)

    ahead = Prefetcher(build, range(run.start_batch, batches), data_workers(cfg.data_workers))
    with progress.epoch_bar(epoch + 1, cfg.epochs, batches, run.start_batch, cfg.batch_size) as bar, ahead:
        for batch_index, batch in ahead:
            batch = to_device(batch, run.device)
            with autocast(cfg.precision, run.device):
                logits = run.train_model(batch.target_image, batch.support_images, batch.support_labels)
                loss = segmentation_loss(logits.float(), batch.target_label, cfg.loss)
            if any_rank(run.world, not math.isfinite(loss.item())):
                raise divergence(run, epoch, batch_index, loss.item())  # before the step: the weights stay finite
            run.optimizer.zero_grad(set_to_none=True)
            # An fp16 step skipped for inf gradients (finite loss) is counted, never taken for divergence.
            run.skipped_steps += not optimizer_step(loss, run.optimizer, run.scaler)
            run.step += 1
            if run.manager is not None:
                run.manager.check()  # a failed background save stops the run now, not an epoch later
            kill_point("step")
            loss_sum, loss_count = loss_sum + mean_over_ranks(run.world, loss.item()), loss_count + 1
            bar.advance(loss_sum / loss_count)
            position = (epoch, batch_index + 1, loss_sum, loss_count)
            if any_rank(run.world, stop.signum is not None):
                save_interrupt(run, position, stop, progress)
            if mid_epoch_save_due(cfg, run.step, last_save) and batch_index + 1 < batches:
                save_checkpoint(run, position[0], position, kind="interrupt", routine=True)
                last_save = time.monotonic()
    return loss_sum, loss_count


def divergence(run: Run, epoch: int, batch_index: int, loss: float) -> DivergedError:
    """The one line for a non-finite loss: where, which file holds the last finite state, how to go on."""
    lower = f"{run.cfg.lr / 3:.1g}"
    at = position_text(epoch, batch_index + 1, run.sampler.num_batches(run.cfg.batch_size), run.cfg.epochs)
    where = f"training diverged in {at} (loss {loss}); nothing was saved from it"
    run_dir = shlex.quote(str(run.paths.root))
    try:
        if run.manager is None:
            raise CheckpointError("not rank 0")
        run.manager.wait()
        latest = run.manager.resolve("latest")
    except CheckpointError:
        return DivergedError(f"{where} and no checkpoint was written before; start again with a lower learning "
                             f"rate: useg train --run-dir {run_dir} --lr {lower}")
    return DivergedError(f"{where}: {latest} still holds the last finite state; continue with a lower learning "
                         f"rate: useg resume latest --run-dir {run_dir} --lr {lower}")


def mid_epoch_save_due(cfg: TrainConfig, step: int, last_save: float) -> bool:
    by_steps = cfg.save_every_steps and step % cfg.save_every_steps == 0
    by_time = cfg.save_every_minutes and time.monotonic() - last_save >= cfg.save_every_minutes * 60
    return bool(by_steps or by_time)


def training_state(run: Run, epoch: int, position: tuple[int, int, float, int]) -> dict[str, Any]:
    """The full state a checkpoint holds: the seed's keys plus what exact resume needs."""
    data_epoch, batch_index, loss_sum, loss_count = position
    rng_per_rank = gather_objects(run.world, capture_rng_state())
    return {
        "epoch": epoch,
        "step": run.step,
        "model_state_dict": run.model.state_dict(),
        "optimizer_state_dict": run.optimizer.state_dict(),
        "scheduler_state_dict": run.scheduler.state_dict(),
        "grad_scaler_state_dict": scaler_state(run.scaler),
        "skipped_steps": run.skipped_steps,
        "history": run.history,
        "rng_state": rng_per_rank[0],
        "rng_state_per_rank": rng_per_rank,
        "sampler_state": {"seed": run.cfg.seed, "epoch": data_epoch, "batch_index": batch_index,
                          "loss_sum": loss_sum, "loss_count": loss_count, "world_size": run.world.world_size,
                          "samples_per_epoch": run.cfg.samples_per_epoch, "batch_size": run.cfg.batch_size,
                          "draw_version": run.sampler.draw_version},
        "config": run.cfg.to_dict(),
        "model_config": model_config(run.model),
        "split": run.split.to_dict(),
        "classes": list(run.dataset.classes),
        "log_file": run.log_path.name,
    }


def save_checkpoint(run: Run, epoch: int, position, **save_args) -> None:
    """Rank 0 saves; with several processes every rank waits until the file is durable."""
    state = training_state(run, epoch, position)  # a collective: every rank takes part
    if run.manager is not None:
        run.manager.save(state, epoch=epoch, step=run.step, **save_args)
        if run.world.enabled:
            run.manager.wait()
    barrier(run.world)


def check_replicas_agree(run: Run) -> None:
    """With several processes, every rank must hold the same weights, or the checkpoint is a lie."""
    if not run.world.enabled:
        return
    digest = hashlib.sha256()
    for tensor in run.model.state_dict().values():
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    fingerprints = gather_objects(run.world, digest.hexdigest())
    if len(set(fingerprints)) != 1:
        raise RuntimeError(f"model replicas diverged across ranks: {fingerprints}")


def save_epoch_checkpoint(run: Run, epoch: int, record: dict[str, Any]) -> None:
    """Checkpoint after a finished epoch (written in the background), then rewrite the log."""
    check_replicas_agree(run)
    if run.manager is not None:
        run.history["checkpoints_written"][-1] = run.manager.planned_files(epoch, record["val_dice"])
    started = time.perf_counter()
    save_checkpoint(run, epoch, (epoch, 0, 0.0, 0), val_dice=record["val_dice"], train_loss=record["train_loss"])
    run.history["checkpoint_time_s"][-1] = round(time.perf_counter() - started, 4)
    if run.world.is_main:
        record_saves(run)
        write_log(run.log_path, run.log, run.history)
        log_tensorboard(run.tensorboard, epoch, record)


def save_interrupt(run: Run, position, stop: StopRequest, progress: Progress) -> None:
    """Write the interrupt checkpoint, wait until it is durable, and stop with the signal's exit code (130, 143, 129)."""
    signals = [s for s in gather_objects(run.world, stop.signum) if s is not None]
    stop.signum = stop.signum or signals[0]
    batches = run.sampler.num_batches(run.cfg.batch_size)
    progress.warn(f"{signal.Signals(stop.signum).name} received: saving the position at "
                  f"{position_text(position[0], position[1], batches, run.cfg.epochs)} ...")
    save_checkpoint(run, position[0], position, kind="interrupt")
    if run.manager is not None:
        run.manager.wait()
        record_saves(run)
        write_log(run.log_path, run.log, run.history)
    raise TrainingInterrupted(stop.exit_code, resume_hint(run))


def resume_hint(run: Run, complete: bool = False) -> str:
    # The command is meant to be pasted into a shell: a folder with spaces must stay one word.
    saved, run_dir = run.paths.checkpoints / "latest_checkpoint.pt", shlex.quote(str(run.paths.root))
    if complete:
        epochs = run.cfg.epochs
        return (f"Saved {saved}; the run is complete ({epochs} of {plural(epochs, 'epoch')}); to train further: "
                f"useg resume latest --run-dir {run_dir} --epochs N (N > {epochs})")
    return f"Saved {saved}; continue with: useg train --run-dir {run_dir} --resume latest"

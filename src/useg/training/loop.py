"""The training loop: data, model, optimiser, validation, checkpoints and logs for one run."""

from __future__ import annotations

import math
import shlex
import signal
import time
from pathlib import Path
from typing import Any

from useg.training import state as training_state
from useg.checkpoint import LATEST_NAME, BestRule, CheckpointManager, OpenCheckpoint, capture_rng_state, is_locked
from useg.checkpoint import BEST_NAME, load_checkpoint, lock_owner, mid_epoch_save_due, read_metadata
from useg.checkpoint import within_budget
from useg.faults import kill_point, kill_point_named
from useg.config import TrainConfig
from useg.compute.device import choose_device, choose_threads, compute_settings, split_cores, to_device
from useg.compute.distributed import World, any_rank, barrier, broadcast_object, check_replicas_agree, close_world
from useg.compute.distributed import gather_objects
from useg.compute.distributed import init_world, local_part, mean_over_ranks, on_main
from useg.errors import CheckpointError, ConfigError, DivergedError
from useg.training.history import append_epoch, best_text, set_best, write_log
from useg.training.losses import segmentation_loss
from useg.model import model_config
from useg.compute.precision import autocast, optimizer_step, scaler_state
from useg.training.progress import Progress, SaveCounts, plural, position_text, remaining_time, whole_epoch_time
from useg.training.progress import DEFAULT_SLOW_ADVICE, slow_advice, slow_median
from useg.run_folder import ExistingRun, RunPaths, existing_run, remove_unused_folders, run_paths
from useg.run_folder import set_aside_checkpoints
from useg.data.collection import absolute, check_folders
from useg.data.prefetch import Prefetcher
from useg.training.log import record_saves, record_thread_recheck
from useg.training.setup import Run, build_run, recheck_thread_count, saved_split_record, settle_recipe
from useg.training.state import TrainingPosition, check_resume_state, saved_position_text
from useg.training.schedule import step_epoch_schedule
from useg.training.signals import StopRequest, TrainingInterrupted
from useg.training.validation import picture_tasks, save_pictures, score_held_out, validate


def best_rule(cfg: TrainConfig) -> BestRule:
    """What best_model.pt holds: the highest --best-metric (val_dice, or held_out_dice). The checkpoint
    manager applies the rule and owns the best so far; the history and the screen ask it
    (`take_managers_best`, `record_epoch_best`)."""
    return BestRule(cfg.best_metric, "max")


def train(cfg: TrainConfig, *, resume: str | None = None, overwrite: bool = False, console=None,
          opened: OpenCheckpoint | None = None) -> dict[str, Any]:
    """Train (or resume) one run; returns the history. Raises TrainingInterrupted on a signal.

    `opened`: the resume point this command already verified (`open_resume_point`), loaded
    without hashing it again.
    """
    settle_recipe(cfg)  # before a resume compares its settings with the checkpoint's
    # Before anything touches CUDA: cuBLAS reads its deterministic workspace setting once. A resume
    # through the CLI has the checkpoint's thread count in cfg already (from its sidecar).
    with compute_settings(choose_threads(cfg.num_threads, cfg.data_workers), cfg.deterministic):
        return train_in_settings(cfg, resume, overwrite, console, opened)


def train_in_settings(cfg: TrainConfig, resume: str | None, overwrite: bool, console,
                      opened: OpenCheckpoint | None) -> dict[str, Any]:
    world = init_world()
    progress = Progress(console=console, quiet=cfg.quiet, silent=not world.is_main)
    # Signals are caught from the first step until the run's outcome is said (restored on leaving):
    # one that comes after the last epoch's check still ends in the Done line and its exit code.
    with StopRequest() as stop:
        try:
            try:
                run = prepare_run(cfg, world, resume, overwrite, progress, opened)
            except RunComplete as complete:  # nothing was trained or written
                return complete.history
            run_and_finish(run, stop, progress)
        finally:
            close_world(world)
        say_done(run, progress)
        if stop.signum is not None:
            raise stopped_after_the_run(run, stop, progress)
    return run.history


def say_done(run: Run, progress: Progress) -> None:
    history, epochs = run.history, run.cfg.epochs
    # The untrained value of the metric the best is named by: what training achieved on it.
    untrained = history.get("initial_held_out_dice" if run.cfg.best_metric == "held_out_dice" else "initial_val_dice")
    # Next: goes out with Done: in one print, so that nothing of the run is left once Done: is on the screen.
    progress.line(f"Done: {plural(epochs, 'epoch')}, {best_text(history) or 'no best epoch'}"
                  + (f" (untrained {untrained:.4f})" if untrained is not None else "")
                  + f"; checkpoints in {run.paths.checkpoints}\n{next_steps(run.paths)}")


def next_steps(paths: RunPaths) -> str:
    """What to do with a trained run, as commands to paste (a folder with spaces stays one word)."""
    run_dir = shlex.quote(str(paths.root))
    steps = [f"useg history --run-dir {run_dir}", f"useg evaluate --run-dir {run_dir}"]
    if paths.visualizations.is_dir() and any(paths.visualizations.glob("*.png")):
        steps.append(f"pictures in {shlex.quote(str(paths.visualizations))}")
    return "Next: " + " | ".join(steps)


def stopped_after_the_run(run: Run, stop: StopRequest, progress: Progress) -> TrainingInterrupted:
    """A signal that came while the last save was finishing: nothing was cut short, and the exit code
    still says which signal ended the command (130 for Ctrl+C)."""
    progress.warn(f"{signal.Signals(stop.signum).name} received after the last epoch: every epoch is trained "
                  "and saved")
    return TrainingInterrupted(stop.exit_code, resume_hint(run, complete=True))


def run_and_finish(run: Run, stop: StopRequest, progress: Progress) -> None:
    """Train with signals caught by `stop`; always close the log writer and the checkpoint manager."""
    stop.install()
    together, outcome = False, "failed"
    try:
        run_epochs(run, stop, progress)
        together, outcome = True, "finished"
    except TrainingInterrupted:
        together, outcome = True, "interrupted"  # every rank stops at the same step
        raise
    finally:
        finish(run, outcome)  # a Ctrl+C while the last save is written is still handled by `stop`
        if together:
            barrier(run.world)  # no rank tears the process group down while another still uses it


def finish(run: Run, outcome: str) -> None:
    """Wait until every checkpoint write is durable, then close the trackers (`outcome`: finished,
    interrupted or failed; a finished run gives them its best checkpoint's path and SHA-256)."""
    try:
        if run.manager is not None:
            run.manager.close()
    finally:
        run.trackers.close(outcome, run.history, run.paths, run.cfg.tracker_upload_best)


class RunComplete(Exception):
    """The checkpoint to resume already has every planned epoch; carries its history."""

    def __init__(self, history: dict[str, Any]):
        super().__init__("the run is complete")
        self.history = history


def prepare_run(cfg: TrainConfig, world: World, resume: str | None, overwrite: bool, progress: Progress,
                opened: OpenCheckpoint | None = None) -> Run:
    """Lock the run folder (rank 0), load data, build the model and restore state when resuming.

    Raises RunComplete (after saying so) when the checkpoint resumed has every epoch already."""
    paths = run_paths(cfg.run_dir)
    cfg.data = absolute(cfg.data)  # saved absolute, so the run resumes from any working directory
    cfg.held_out_data = absolute(cfg.held_out_data)
    check_folders(cfg.data, cfg.held_out_data)  # before --overwrite sets the earlier run aside
    if cfg.batch_size % world.world_size:
        raise ConfigError(f"--batch-size {cfg.batch_size} must be divisible by the {world.world_size} processes")
    choose_device(cfg.device, world.local_rank, world.enabled)  # an unavailable device fails before the lock
    created = [folder for folder in (paths.checkpoints, paths.root) if not folder.exists()]
    manager = on_main(world, lambda: open_manager(cfg, paths, resume, overwrite, progress))
    try:
        path, state = load_resume_state(world, manager, resume, opened)
        position = TrainingPosition()
        if state is not None:
            position = check_resume_state(state, path, cfg, warn=progress.warn, say=progress.line)
            take_managers_best(world, manager, training_state.saved_history(state), cfg)
            if run_is_complete(state, position, cfg, progress):
                raise RunComplete(training_state.saved_history(state))
        return build_run(cfg, paths, world, manager, state, path, position, progress)
    except BaseException:
        if manager is not None:
            manager.close()
            remove_unused_folders(created)
        raise


def take_managers_best(world: World, manager: CheckpointManager | None, history: dict[str, Any],
                       cfg: TrainConfig) -> None:
    """The resumed history's best becomes best_model.pt's, as the manager read it from disk: after a
    resume from an older epoch it may be an epoch of the branch the run leaves, which a worse
    epoch of the new branch does not replace."""
    best = on_main(world, lambda: (manager.best_value, manager.best_epoch), share=True)
    set_best(history, *best, metric=cfg.best_metric)


def run_is_complete(state: dict, position: TrainingPosition, cfg: TrainConfig, progress: Progress) -> bool:
    """True (and said, even with --quiet) when the checkpoint already has cfg.epochs complete epochs."""
    done = position.epoch
    if done < cfg.epochs:
        return False
    if done == cfg.epochs and not position.batch:
        best = best_text(training_state.saved_history(state))
        said = f"The run is complete: {done} of {plural(done, 'epoch')} trained" + (f", {best}" if best else "")
    else:
        said = f"The checkpoint is at {saved_position_text(state, None)}, beyond --epochs {cfg.epochs}"
    progress.notice(f"{said}; nothing to do. To train further, resume with a larger total, e.g.: "
                    f"useg resume latest --run-dir {shlex.quote(str(cfg.run_dir))} --epochs {done + max(done // 2, 1)}")
    return True


def load_resume_state(world: World, manager, resume: str | None,
                      opened: OpenCheckpoint | None) -> tuple[Path | None, dict | None]:
    """The checkpoint to resume from: rank 0 resolves and loads it (one verification), the others load that file."""
    if resume is None:
        return None, None
    state = on_main(world, lambda: manager.load(resume, opened=opened))
    path = on_main(world, lambda: manager.resumed_from, share=True)
    if world.is_main:
        return path, state
    if opened is not None and opened.path == path and opened.still_current():
        return path, opened.load()
    return path, load_checkpoint(path)


def open_manager(cfg: TrainConfig, paths: RunPaths, resume, overwrite: bool, progress: Progress):
    check_run_dir(paths, resume, overwrite)
    manager = CheckpointManager(paths.checkpoints, total_epochs=cfg.epochs,
                                periodic_percentages=tuple(cfg.periodic_percentages), lock=True, warn=progress.warn,
                                best_metric=best_rule(cfg).metric, mode=best_rule(cfg).mode,
                                best_exclude=training_state.TRAINING_ONLY_KEYS, _overlap_copies_in_useg_train=True)
    try:
        if resume is None and manager.list():
            if not overwrite:
                # Another trainer finished here between our check and our lock: never write over its run.
                raise CheckpointError(already_holds(existing_run(paths.root)))
            set_aside_checkpoints(paths, progress.warn)
            manager.forget_best()  # the best it read from disk was the old run's
    except BaseException:
        manager.close()
        raise
    return manager


def check_run_dir(paths: RunPaths, resume: str | None, overwrite: bool) -> None:
    """Refuse a run folder whose parts are files, or existing checkpoints unless told to resume or overwrite."""
    for folder in (paths.root, paths.checkpoints, paths.logs, paths.visualizations):
        if folder.exists() and not folder.is_dir():
            raise ConfigError(f"{folder} is a file, not a folder; move it away or use another --run-dir")
    existing = existing_run(paths.root)
    if resume is not None or not existing.files:
        return
    if not overwrite:
        raise CheckpointError(already_holds(existing))
    if is_locked(paths.checkpoints):
        owner = lock_owner(paths.checkpoints) or {}
        raise CheckpointError(f"{paths.root} is being trained by process {owner.get('pid', '?')}; "
                              "it cannot be overwritten now")


def already_holds(existing: ExistingRun) -> str:
    """Why a fresh run may not start in this folder, and what to do: resume only when there is a resume point."""
    if existing.resumable:
        return (f"{existing.folder} already holds {len(existing.files)} checkpoint(s); "
                "continue with --resume latest, or start afresh with --overwrite")
    names = ", ".join(path.name for path in existing.files)
    return (f"{existing.folder} holds {names} but no checkpoint to resume from; start afresh with --overwrite "
            "(it sets those files aside) or use another --run-dir")


def run_epochs(run: Run, stop: StopRequest, progress: Progress) -> None:
    """Train from the saved position to cfg.epochs, checkpointing after each epoch."""
    cfg, position = run.cfg, run.position
    pictured = picture_tasks(run.val_tasks, cfg.vis_count)
    if position.at_start:
        record_untrained_dice(run, progress)
    whole_epochs: list[float] = []  # this session's epochs, each as the seconds a whole one takes
    mark = time.perf_counter()
    run.routine.started = time.monotonic()  # the save budget is a share of the time training has run
    while position.epoch < cfg.epochs:
        started, first_batch = time.perf_counter(), position.batch
        saves_before = save_counts(run)
        run_one_epoch(run, stop, progress)
        steps_time = time.perf_counter() - started
        step_epoch_schedule(run.scheduler)
        kill_point("validation")
        record = validate_epoch(run)
        train_time = time.perf_counter() - started
        # A resume mid-epoch trains only the rest of it: the rate counts those samples, not a whole epoch's.
        samples = max(0, cfg.samples_per_epoch - first_batch * cfg.batch_size)  # saved after the last step: none
        record.update(skipped_steps=run.skipped_steps - sum(n or 0 for n in run.history.get("skipped_steps", [])),
                      train_loss=position.mean_loss, lr=run.optimizer.param_groups[0]["lr"],
                      epoch_time_s=round(train_time, 3), samples_trained=samples,
                      samples_per_s=round(samples / max(train_time, 1e-9), 2))
        append_epoch(run.history, record)
        position.finish_epoch()
        improved = save_epoch_checkpoint(run, record)
        epoch_end_kill_point(run)
        advice, rechecked_s = slow_epoch_advice(run)
        now = time.perf_counter()  # since the last summary: this epoch, its save and the last pictures
        whole_epochs.append(whole_epoch_time(now - mark - rechecked_s, steps_time, samples, cfg.samples_per_epoch))
        mark = now
        saves = epoch_saves(run, saves_before)
        progress.epoch_summary(position.epoch, cfg.epochs, record, improved, run.history,
                               saves=saves, samples_per_epoch=cfg.samples_per_epoch,
                               remaining_s=remaining_time(whole_epochs, cfg.epochs - position.epoch),
                               slow_advice=advice)
        # Pictures after the checkpoint: a picture that cannot be written must not cost the epoch.
        if cfg.vis_every and position.epoch % cfg.vis_every == 0:
            on_main(run.world, lambda: save_pictures(run.model, run.dataset, pictured, run.paths.visualizations,
                                                     position.epoch, run.device))
        track_epoch(run, saves)
        if any_rank(run.world, stop.signum is not None):
            # The signal came during validation, the save or the pictures: the epoch checkpoint is
            # the position, also after the last epoch (a Ctrl+C is never ignored).
            stop_after_epoch(run, stop, progress)


def slow_epoch_advice(run: Run) -> tuple[str, float]:
    """What the epoch line's SLOW note advises after a slow epoch, and the seconds it took to find out
    (not part of the epoch's time). A one-process CPU run whose count was measured times the candidate
    counts again (`recheck_thread_count`, once the epoch's checkpoint is written) and records it in the
    log; the run keeps computing with its count."""
    history = run.history
    if slow_median(history["samples_per_s"], history.get("samples_trained"), run.cfg.samples_per_epoch) is None:
        return DEFAULT_SLOW_ADVICE, 0.0  # no SLOW note this epoch
    started = time.perf_counter()
    recheck = recheck_thread_count(run)
    if recheck is not None and run.world.is_main:
        record_thread_recheck(run.log, recheck.record(run.position.epoch))
        write_log(run.log_path, run.log, run.history)
    one_cpu_process = run.device.type == "cpu" and not run.world.enabled
    advice = slow_advice(recheck, run.cfg.num_threads if one_cpu_process else None)
    return advice, time.perf_counter() - started


def track_epoch(run: Run, saves: SaveCounts) -> None:
    """The trackers get the epoch once its checkpoint is durable (usually written during the pictures), so a
    kill never leaves a tracker ahead of the checkpoints a resume continues from."""
    if run.trackers:
        run.manager.wait()
        run.trackers.log_epochs(run.history, {"routine_saves": saves.asked, "coalesced_saves": saves.coalesced,
                                              "deferred_saves": saves.deferred})


def save_counts(run: Run) -> SaveCounts:
    """Routine mid-epoch saves asked for, deferred by the budget and coalesced so far in this session
    (rank 0 counts them)."""
    coalesced = run.manager.coalesced_saves if run.manager is not None else 0
    return SaveCounts(asked=run.routine.asked, coalesced=coalesced, deferred=run.routine.asked - run.routine.taken,
                      budget=run.cfg.save_budget)


def epoch_saves(run: Run, before: SaveCounts) -> SaveCounts:
    """This epoch's routine saves; when some were coalesced, also the step latest is at now, which
    says how many steps a kill at this moment would lose."""
    now = save_counts(run)
    counts = SaveCounts(asked=now.asked - before.asked, coalesced=now.coalesced - before.coalesced,
                        deferred=now.deferred - before.deferred, budget=now.budget, step=run.position.step)
    if (counts.coalesced or counts.deferred) and run.manager is not None:
        counts.latest_step = (read_metadata(run.paths.checkpoints / LATEST_NAME) or {}).get("step")
    return counts


def epoch_end_kill_point(run: Run) -> None:
    """The `epoch-end` fault point means what its name says: the epoch's checkpoint is durable."""
    if run.manager is not None and kill_point_named("epoch-end"):
        run.manager.wait()  # only under USEG_KILL_AT: a normal run keeps writing in the background
    kill_point("epoch-end")


def stop_after_epoch(run: Run, stop: StopRequest, progress: Progress) -> None:
    """A signal that came after the epoch's last step: its checkpoint is the position; wait for it and stop."""
    signals = [s for s in gather_objects(run.world, stop.signum) if s is not None]
    stop.signum = stop.signum or signals[0]
    epochs_done = run.position.epoch
    progress.warn(f"{signal.Signals(stop.signum).name} received: stopping at the end of this epoch, "
                  f"{position_text(epochs_done, total=run.cfg.epochs)} ...")
    if run.manager is not None:
        run.manager.wait()
    raise TrainingInterrupted(stop.exit_code, resume_hint(run, complete=epochs_done >= run.cfg.epochs))


def validate_epoch(run: Run) -> dict[str, Any]:
    """The epoch's validation record: val Dice over the fixed tasks (per class, and per dataset with several),
    and with --held-out-data each held-out dataset's Dice and their mean, `held_out_dice`."""
    size = 2 * run.cfg.batch_size
    record = validate(run.model, run.dataset, run.val_tasks, size, run.device, run.world)
    record.update(score_held_out(run.model, run.held_out, run.held_out_tasks, size, run.device, run.world))
    return record


def record_untrained_dice(run: Run, progress: Progress) -> None:
    """Validation Dice (and held-out Dice) before any step: the baseline that shows what training achieved."""
    record = validate_epoch(run)
    run.history["initial_val_dice"] = record["val_dice"]
    said = f"val Dice before training: {record['val_dice']:.4f}"
    if "held_out_dice" in record:
        run.history["initial_held_out_dice"] = record["held_out_dice"]
        run.history["initial_held_out_dice_per_dataset"] = record["held_out_dice_per_dataset"]
        said += f", held-out Dice {record['held_out_dice']:.4f}"
    progress.line(said)


def run_one_epoch(run: Run, stop: StopRequest, progress: Progress) -> None:
    """Optimisation steps of the current epoch, from the saved batch on; the position keeps the loss."""
    cfg, position = run.cfg, run.position
    run.train_model.train()
    batches = run.sampler.num_batches(cfg.batch_size)
    last_save = time.monotonic()
    run.routine.owed = False  # the epoch's own save has just refreshed latest
    epoch = position.epoch

    def build(index: int):
        return local_part(run.sampler.batch(epoch, index, cfg.batch_size), run.world)

    ahead = Prefetcher(build, range(position.batch, batches), split_cores(cfg.num_threads, cfg.data_workers).workers)
    with progress.epoch_bar(position.epoch + 1, cfg.epochs, batches, position.batch, cfg.batch_size) as bar, ahead:
        for _, batch in ahead:
            began, writing = time.perf_counter(), writing_now(run)
            train_step(run, batch)
            run.routine.weigh_step(time.perf_counter() - began, writing or writing_now(run))
            bar.advance(position.mean_loss)
            if any_rank(run.world, stop.signum is not None):
                save_interrupt(run, stop, progress)
            if position.batch < batches:
                due = mid_epoch_save_due(position.step, time.monotonic() - last_save, cfg.save_every_steps,
                                         cfg.save_every_minutes)
                if cfg.save_every_minutes:
                    due = any_rank(run.world, due)  # ranks' clocks differ; all must take the same saves
                # The minutes restart when a save falls due, taken or not: one that waits for the budget
                # is one save owed, not a new one due at every step until it is taken.
                last_save = time.monotonic() if due else last_save
                routine_save(run, due)


def routine_save(run: Run, due: bool) -> None:
    """Take a mid-epoch save when one is due, or was due and waited, and the save budget allows it
    (rank 0 decides: it alone knows what writing costs); else it is owed."""
    saves = run.routine
    saves.asked += due
    if not (due or saves.owed):
        return
    if not broadcast_object(run.world, save_affordable(run)):
        saves.owed = True
        return
    started = time.perf_counter()
    save_checkpoint(run, kind="mid_epoch", routine=True)
    saves.stall_s += time.perf_counter() - started
    saves.taken, saves.owed = saves.taken + 1, False


def save_affordable(run: Run) -> bool:
    """Whether routine saves have cost, so far, within --save-budget of the session's training time."""
    manager, budget = run.manager, run.cfg.save_budget
    if manager is None or not budget:
        return True
    if manager.writing or not run.routine.measured:
        return False  # what the last write cost is not known yet, and a save now would only wait behind it
    return within_budget(run.routine.spent_s, time.monotonic() - run.routine.started, budget)


def writing_now(run: Run) -> bool:
    return run.manager is not None and run.manager.writing


def train_step(run: Run, batch) -> None:
    """One optimisation step on the position's batch; a non-finite loss stops before the step."""
    cfg, position = run.cfg, run.position
    batch = to_device(batch, run.device)
    with autocast(cfg.precision, run.device):
        logits = run.train_model(batch.target_image, batch.support_images, batch.support_labels)
        loss = segmentation_loss(logits.float(), batch.target_label, cfg.loss)
    if any_rank(run.world, not math.isfinite(loss.item())):
        raise divergence(run, loss.item())  # before the step: the weights stay finite
    run.optimizer.zero_grad(set_to_none=True)
    # An fp16 step skipped for inf gradients (finite loss) is counted, never taken for divergence.
    run.skipped_steps += not optimizer_step(loss, run.optimizer, run.scaler)
    position.finish_batch()
    if run.manager is not None:
        run.manager.check()  # a failed background save stops the run now, not an epoch later
    kill_point("step")
    position.add_loss(mean_over_ranks(run.world, loss.item()))


def divergence(run: Run, loss: float) -> DivergedError:
    """The one line for a non-finite loss: where, which file holds the last finite state, how to go on."""
    lower = f"{run.cfg.lr / 3:.1g}"
    at = position_text(run.position.epoch, run.position.batch + 1, run.sampler.num_batches(run.cfg.batch_size),
                       run.cfg.epochs)
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


def current_state(run: Run) -> dict[str, Any]:
    """The checkpoint dict for the run's position (a collective: every rank takes part)."""
    return training_state.build_training_state(
        position=run.position, cfg=run.cfg, world_size=run.world.world_size,
        draw_version=run.sampler.draw_version, model=run.model,
        optimizer=run.optimizer, scheduler=run.scheduler, grad_scaler=scaler_state(run.scaler),
        skipped_steps=run.skipped_steps, history=run.history,
        rng_per_rank=gather_objects(run.world, capture_rng_state()), model_config=model_config(run.model),
        split=saved_split_record(run), classes=run.dataset.classes, log_file=run.log_path.name)


def save_checkpoint(run: Run, **save_args) -> None:
    """Rank 0 saves; with several processes every rank waits until the file is durable."""
    state = current_state(run)
    if run.manager is not None:
        run.manager.save(state, epoch=run.position.epoch, step=run.position.step, **save_args)
        if run.world.enabled:
            run.manager.wait()
    barrier(run.world)


def save_epoch_checkpoint(run: Run, record: dict[str, Any]) -> bool:
    """Checkpoint after a finished epoch (written in the background), then rewrite the log.
    Returns whether the epoch is a new best (best_model.pt is written)."""
    check_replicas_agree(run.world, run.model)
    improved = record_epoch_best(run, record)
    started = time.perf_counter()
    save_checkpoint(run, metrics=saved_metrics(record))
    run.history["checkpoint_time_s"][-1] = round(time.perf_counter() - started, 4)
    if run.world.is_main:
        record_saves(run.log, run.manager, save_counts(run))
        write_log(run.log_path, run.log, run.history)
    return improved


def saved_metrics(record: dict[str, Any]) -> dict[str, float]:
    """What the epoch's checkpoint records as its metrics (the sidecar's, best_model.pt's best among them)."""
    metrics = {"val_dice": record["val_dice"], "train_loss": record["train_loss"]}
    if record.get("held_out_dice") is not None:
        metrics["held_out_dice"] = record["held_out_dice"]
    return metrics


def record_epoch_best(run: Run, record: dict[str, Any]) -> bool:
    """Ask the checkpoint manager which files this epoch's save writes and what the best is then;
    record both in the history (before the save, which holds it) and return whether this epoch is
    the new best. Rank 0 asks; every rank's history gets the answer."""
    metric = best_rule(run.cfg).metric
    epoch, value = run.position.epoch, record[metric]

    def ask() -> tuple[list[str], tuple[float | None, int | None]]:
        planned = run.manager.planned_files(epoch, metrics={metric: value})
        improved = BEST_NAME in planned  # save() then makes (value, epoch) the manager's best
        return planned, (value, epoch) if improved else (run.manager.best_value, run.manager.best_epoch)

    planned, best = on_main(run.world, ask, share=True)
    run.history["checkpoints_written"][-1] = planned
    set_best(run.history, *best, metric=metric)
    return BEST_NAME in planned


def save_interrupt(run: Run, stop: StopRequest, progress: Progress) -> None:
    """Write the interrupt checkpoint, wait until it is durable, and stop with the signal's exit code (130, 143, 129)."""
    signals = [s for s in gather_objects(run.world, stop.signum) if s is not None]
    stop.signum = stop.signum or signals[0]
    batches = run.sampler.num_batches(run.cfg.batch_size)
    progress.warn(f"{signal.Signals(stop.signum).name} received: saving the position at "
                  f"{position_text(run.position.epoch, run.position.batch, batches, run.cfg.epochs)} ...")
    save_checkpoint(run, kind="interrupt")
    if run.manager is not None:
        run.manager.wait()
        record_saves(run.log, run.manager, save_counts(run))
        write_log(run.log_path, run.log, run.history)
    raise TrainingInterrupted(stop.exit_code, resume_hint(run))


def resume_hint(run: Run, complete: bool = False) -> str:
    # The command is meant to be pasted into a shell: a folder with spaces must stay one word.
    saved, run_dir = run.paths.checkpoints / LATEST_NAME, shlex.quote(str(run.paths.root))
    if complete:
        epochs = run.cfg.epochs
        return (f"Saved {saved}; the run is complete ({epochs} of {plural(epochs, 'epoch')}); to train further: "
                f"useg resume latest --run-dir {run_dir} --epochs N (N > {epochs})")
    return f"Saved {saved}; continue with: useg train --run-dir {run_dir} --resume latest"

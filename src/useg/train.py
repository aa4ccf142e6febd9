"""The training loop: data, model, optimiser, validation, checkpoints and logs for one run."""

from __future__ import annotations

import platform
import shutil
import signal
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

import useg
from useg.checkpoint import CheckpointManager, capture_rng_state, is_locked, read_metadata, resolve_checkpoint
from useg.checkpoint import restore_rng_state
from useg.checkpoint.faults import kill_point
from useg.config import TrainConfig, changed_keys, incompatible_keys
from useg.data import Split, TaskSampler, load_dataset, make_batch, split_by_patient, validation_tasks
from useg.errors import CheckpointError, ConfigError
from useg.history import append_epoch, log_tensorboard, new_history, new_log_name, open_tensorboard, read_log
from useg.history import utc_now, write_log
from useg.metrics import hard_dice, segmentation_loss
from useg.model import build_universeg, load_pretrained, model_config
from useg.progress import Progress
from useg.viz import save_prediction_figure

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


@dataclass
class RunPaths:
    root: Path
    checkpoints: Path
    logs: Path
    visualizations: Path


def run_paths(run_dir: str | Path) -> RunPaths:
    root = Path(run_dir)
    return RunPaths(root, root / "checkpoints", root / "logs", root / "visualizations_training")


class TrainingInterrupted(Exception):
    """Raised after an interrupt checkpoint is durable; carries the exit code."""

    def __init__(self, exit_code: int, message: str):
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class StopRequest:
    """Set by SIGINT/SIGTERM; the loop stops after the current optimisation step."""

    signum: int | None = None
    saving: bool = False
    previous: dict[int, Any] = field(default_factory=dict)

    def install(self) -> None:
        for signum in EXIT_CODES:
            self.previous[signum] = signal.signal(signum, self.handle)

    def restore(self) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)

    def handle(self, signum, frame) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            # A second Ctrl+C aborts at once; atomic writes keep every file on disk whole.
            raise KeyboardInterrupt
        self.signum = signum


@dataclass
class Run:
    """Everything the loop mutates, built once by `prepare_run`."""

    cfg: TrainConfig
    paths: RunPaths
    manager: CheckpointManager
    dataset: Any
    split: Split
    sampler: TaskSampler
    val_tasks: list
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    history: dict[str, Any]
    log_path: Path
    log: dict[str, Any]
    tensorboard: Any = None
    start_epoch: int = 0
    start_batch: int = 0
    partial_loss: tuple[float, int] = (0.0, 0)
    step: int = 0


def resume_config(run_dir: str | Path, which: str) -> dict[str, Any]:
    """The config saved with the checkpoint `which` names (read from its sidecar, no tensors)."""
    folder = run_paths(run_dir).checkpoints
    if not folder.is_dir():
        raise CheckpointError(f"no checkpoint to resume from: {folder} does not exist; start with useg train")
    meta = read_metadata(resolve_checkpoint(folder, which, warn=lambda message: None)) or {}
    return dict(meta.get("config") or {})


def train(cfg: TrainConfig, *, resume: str | None = None, overwrite: bool = False, console=None) -> dict[str, Any]:
    """Train (or resume) one run; returns the history. Raises TrainingInterrupted on a signal."""
    progress = Progress(console=console, quiet=cfg.quiet)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    run = prepare_run(cfg, resume, overwrite, progress)
    stop = StopRequest()
    stop.install()
    try:
        run_epochs(run, stop, progress)
    finally:
        stop.restore()
        if run.tensorboard is not None:
            run.tensorboard.close()
        run.manager.close()
    best = run.history["best_val_dice"]
    progress.line(f"Done: {cfg.epochs} epochs, best val Dice {best:.4f} at epoch {run.history['best_epoch']}; "
                  f"checkpoints in {run.paths.checkpoints}")
    return run.history


def prepare_run(cfg: TrainConfig, resume: str | None, overwrite: bool, progress: Progress) -> Run:
    """Lock the run folder, load data, build the model and restore state when resuming."""
    paths = run_paths(cfg.run_dir)
    check_run_dir(paths, resume, overwrite, progress)
    manager = CheckpointManager(paths.checkpoints, total_epochs=cfg.epochs,
                                periodic_percentages=tuple(cfg.periodic_percentages), lock=True, warn=progress.warn)
    try:
        state, resumed_from = load_resume_state(manager, resume, cfg, progress)
        return build_run(cfg, paths, manager, state, resumed_from, progress)
    except BaseException:
        manager.close()
        raise


def check_run_dir(paths: RunPaths, resume: str | None, overwrite: bool, progress: Progress) -> None:
    """Refuse to train over existing checkpoints unless told to resume or overwrite."""
    existing = sorted(paths.checkpoints.glob("*.pt")) if paths.checkpoints.is_dir() else []
    if resume is not None or not existing:
        return
    if not overwrite:
        raise CheckpointError(f"{paths.checkpoints} already holds {len(existing)} checkpoint(s); "
                              "continue with --resume latest, or start afresh with --overwrite")
    if is_locked(paths.checkpoints):
        raise CheckpointError(f"{paths.root} is being trained by another process; it cannot be overwritten now")
    # --overwrite sets the old checkpoints aside instead of deleting them: nothing is lost silently.
    kept = paths.root / f"checkpoints_replaced_{datetime.now().strftime('%Y%m%d_%H%M%S')}"
    shutil.move(str(paths.checkpoints), str(kept))
    progress.warn(f"--overwrite: moved the previous checkpoints to {kept}")


def load_resume_state(manager, resume, cfg, progress) -> tuple[dict | None, str | None]:
    """Load the checkpoint to resume from and check that the config still fits it."""
    if resume is None:
        return None, None
    path = manager.resolve(resume)
    state = manager.load(path)
    saved = state.get("config") or {}
    bad = incompatible_keys(saved, cfg)
    if bad:
        details = ", ".join(f"{key} {saved[key]!r} -> {getattr(cfg, key)!r}" for key in bad)
        raise ConfigError(f"cannot resume {path.name}: the config differs in {details}; "
                          "use the checkpoint's values or start a new --run-dir")
    progress.line(f"Resuming from {path} (epoch {state['epoch']}"
                  + (f", batch {state['sampler_state']['batch_index']}" if state["sampler_state"]["batch_index"] else "")
                  + ")")
    return state, path.name


def build_run(cfg, paths, manager, state, resumed_from, progress) -> Run:
    dataset = load_dataset(cfg.data, image_size=cfg.image_size, annotations=cfg.annotations, label=cfg.label,
                           classes=cfg.classes, seed=cfg.seed)
    split = choose_split(cfg, dataset, state)
    sampler = TaskSampler(dataset, split.train, support_size=cfg.support_size, seed=cfg.seed,
                          samples_per_epoch=cfg.samples_per_epoch)
    val_tasks = validation_tasks(dataset, split.val, split.train, support_size=cfg.support_size, seed=cfg.seed)
    torch.manual_seed(cfg.seed)  # the initial weights are part of what the seed fixes
    model = build_universeg(tuple(cfg.widths))
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs, eta_min=cfg.lr * cfg.min_lr_ratio)
    history = new_history()
    if state is None and cfg.pretrained:
        load_pretrained(model, cfg.pretrained)
        progress.line(f"Initialised from {cfg.pretrained}")
    run = Run(cfg, paths, manager, dataset, split, sampler, val_tasks, model, optimizer, scheduler, history,
              log_path=paths.logs / new_log_name(), log={})
    if state is not None:
        restore_state(run, state)
    open_log(run, state, resumed_from)
    if cfg.tensorboard:
        run.tensorboard = open_tensorboard(paths.logs / "tensorboard", progress.warn)
    progress.line(describe_data(dataset, split, len(val_tasks)))
    return run


def choose_split(cfg: TrainConfig, dataset, state: dict | None) -> Split:
    """The patient-level split: the saved one on resume, else a file's or a seeded new one."""
    if state is not None:
        return Split.from_dict(state["split"], dataset)
    if cfg.split_file:
        import json

        try:
            saved = json.loads(Path(cfg.split_file).read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise ConfigError(f"--split-file {cfg.split_file}: cannot read it ({err})") from None
        return Split.from_dict(saved, dataset)
    return split_by_patient(dataset, seed=cfg.seed, fractions=tuple(cfg.split_fractions))


def describe_data(dataset, split: Split, val_tasks: int) -> str:
    report = dataset.report
    skipped = {key: value for key, value in report.items() if key.startswith(("skipped", "missing")) and value}
    text = (f"Data: {dataset.source}, {len(dataset.ids)} images of {report.get('patients', '?')} patients, "
            f"classes {', '.join(dataset.classes)}; split train/val/test = "
            f"{len(split.train)}/{len(split.val)}/{len(split.test)} images; {val_tasks} validation tasks")
    if skipped:
        text += "; skipped: " + ", ".join(f"{key}={value}" for key, value in skipped.items())
    return text


def restore_state(run: Run, state: dict[str, Any]) -> None:
    """Put model, optimiser, scheduler, history, RNG and data position back as saved."""
    run.model.load_state_dict(state["model_state_dict"])
    run.optimizer.load_state_dict(state["optimizer_state_dict"])
    run.scheduler.load_state_dict(state["scheduler_state_dict"])
    # Extending a run (--epochs larger than saved) stretches the cosine schedule to the new total.
    run.scheduler.T_max = run.cfg.epochs
    run.history = state["history"]
    run.history.setdefault("resumed_at", []).append(state["epoch"])
    restore_rng_state(state["rng_state"])
    position = state["sampler_state"]
    run.start_epoch = state["epoch"]
    run.start_batch = position["batch_index"]
    run.partial_loss = (position["loss_sum"], position["loss_count"])
    run.step = state["step"]
    if state.get("log_file"):
        run.log_path = run.paths.logs / state["log_file"]


def open_log(run: Run, state: dict | None, resumed_from: str | None) -> None:
    """Start the JSON log, or continue the one the run has been writing."""
    run.log_path.parent.mkdir(parents=True, exist_ok=True)
    previous = read_log(run.log_path) if state is not None else None
    session = {"started": utc_now(), "resumed_from": resumed_from,
               "start_epoch": run.start_epoch, "start_batch": run.start_batch}
    if state is not None:
        session["config_changes"] = changed_keys(state.get("config") or {}, run.cfg)
    run.log = {
        "format": "useg-training-log", "format_version": 1,
        "config": run.cfg.to_dict(), "model": model_config(run.model), "environment": environment(),
        "data": {"source": run.dataset.source, "classes": run.dataset.classes, "report": run.dataset.report,
                 "split_sizes": {name: len(getattr(run.split, name)) for name in ("train", "val", "test")}},
        "sessions": (previous or {}).get("sessions", []) + [session],
    }
    write_log(run.log_path, run.log, run.history)


def environment() -> dict[str, Any]:
    return {"useg": useg.__version__, "torch": torch.__version__, "numpy": np.__version__,
            "python": platform.python_version(), "platform": platform.platform(),
            "device": "cpu", "threads": torch.get_num_threads()}


def run_epochs(run: Run, stop: StopRequest, progress: Progress) -> None:
    """Train from the saved position to cfg.epochs, checkpointing after each epoch."""
    cfg = run.cfg
    for epoch in range(run.start_epoch, cfg.epochs):
        started = time.perf_counter()
        loss_sum, loss_count = run_one_epoch(run, epoch, stop, progress)
        run.scheduler.step()
        record = validate(run)
        train_time = time.perf_counter() - started
        record.update(train_loss=loss_sum / max(loss_count, 1), lr=run.optimizer.param_groups[0]["lr"],
                      epoch_time_s=round(train_time, 3),
                      samples_per_s=round(cfg.samples_per_epoch / max(train_time, 1e-9), 2))
        improved = append_epoch(run.history, record)
        if cfg.vis_every and (epoch + 1) % cfg.vis_every == 0:
            save_pictures(run, epoch + 1)
        save_epoch_checkpoint(run, epoch + 1, record)
        log_tensorboard(run.tensorboard, epoch + 1, record)
        kill_point("epoch-end")
        progress.epoch_summary(epoch + 1, cfg.epochs, record, improved, run.history)
        run.start_batch, run.partial_loss = 0, (0.0, 0)
        if stop.signum is not None and epoch + 1 < cfg.epochs:
            # The signal came during validation or the save: the epoch checkpoint is the position.
            raise TrainingInterrupted(EXIT_CODES[stop.signum], resume_hint(run))


def run_one_epoch(run: Run, epoch: int, stop: StopRequest, progress: Progress) -> tuple[float, int]:
    """Optimisation steps of one epoch, from the saved batch on; returns (loss sum, batches)."""
    cfg, model = run.cfg, run.model
    model.train()
    loss_sum, loss_count = run.partial_loss
    batches = run.sampler.num_batches(cfg.batch_size)
    last_save = time.monotonic()
    with progress.epoch_bar(epoch + 1, cfg.epochs, batches, run.start_batch) as bar:
        for batch_index in range(run.start_batch, batches):
            batch = run.sampler.batch(epoch, batch_index, cfg.batch_size)
            logits = model(batch.target_image, batch.support_images, batch.support_labels)
            loss = segmentation_loss(logits, batch.target_label, cfg.loss)
            run.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            run.optimizer.step()
            run.step += 1
            kill_point("step")
            loss_sum, loss_count = loss_sum + loss.item(), loss_count + 1
            bar.advance(loss_sum / loss_count)
            position = (epoch, batch_index + 1, loss_sum, loss_count)
            if stop.signum is not None:
                save_interrupt(run, position, stop, progress)
            if mid_epoch_save_due(cfg, run.step, last_save) and batch_index + 1 < batches:
                save_mid_epoch(run, position)
                last_save = time.monotonic()
    return loss_sum, loss_count


def mid_epoch_save_due(cfg: TrainConfig, step: int, last_save: float) -> bool:
    by_steps = cfg.save_every_steps and step % cfg.save_every_steps == 0
    by_time = cfg.save_every_minutes and time.monotonic() - last_save >= cfg.save_every_minutes * 60
    return bool(by_steps or by_time)


@torch.no_grad()
def validate(run: Run) -> dict[str, Any]:
    """Dice of every fixed validation task; per class, their mean ('best' uses it) and spread."""
    run.model.eval()
    scores, classes = [], []
    size = max(run.cfg.batch_size, 1) * 2
    for start in range(0, len(run.val_tasks), size):
        tasks = run.val_tasks[start:start + size]
        batch = make_batch(run.dataset, tasks)
        logits = run.model(batch.target_image, batch.support_images, batch.support_labels)
        scores.append(hard_dice(logits, batch.target_label))
        classes.append(batch.classes)
    dice, cls = torch.cat(scores), torch.cat(classes)
    per_class = {run.dataset.classes[c]: float(dice[cls == c].mean()) for c in sorted(set(cls.tolist()))}
    return {"val_dice": float(np.mean(list(per_class.values()))), "val_dice_per_class": per_class,
            "val_dice_std": float(dice.std()) if len(dice) > 1 else 0.0,
            "val_dice_min": float(dice.min()), "val_dice_max": float(dice.max())}


@torch.no_grad()
def save_pictures(run: Run, epoch: int) -> None:
    """Pictures of a few fixed validation targets, comparable across epochs."""
    count = min(run.cfg.vis_count, len(run.val_tasks))
    picks = np.linspace(0, len(run.val_tasks) - 1, count).round().astype(int) if count else []
    run.model.eval()
    for number, task_index in enumerate(picks):
        task = run.val_tasks[task_index]
        batch = make_batch(run.dataset, [task])
        logits = run.model(batch.target_image, batch.support_images, batch.support_labels)
        dice = float(hard_dice(logits, batch.target_label)[0])
        title = (f"epoch {epoch} · {run.dataset.ids[task.target]} · class {run.dataset.classes[task.cls]} · "
                 f"Dice {dice:.3f}")
        save_prediction_figure(run.paths.visualizations / f"epoch_{epoch:03d}_batch_{number:03d}.png",
                               batch.target_image[0, 0].numpy(), batch.target_label[0, 0].numpy(),
                               (logits[0, 0] > 0).float().numpy(), batch.support_images[0, :, 0].numpy(),
                               batch.support_labels[0, :, 0].numpy(), title)


def training_state(run: Run, epoch: int, position: tuple[int, int, float, int]) -> dict[str, Any]:
    """The full state a checkpoint holds: the seed's keys plus what exact resume needs."""
    data_epoch, batch_index, loss_sum, loss_count = position
    return {
        "epoch": epoch,
        "step": run.step,
        "model_state_dict": run.model.state_dict(),
        "optimizer_state_dict": run.optimizer.state_dict(),
        "scheduler_state_dict": run.scheduler.state_dict(),
        "history": run.history,
        "rng_state": capture_rng_state(),
        "sampler_state": {"seed": run.cfg.seed, "epoch": data_epoch, "batch_index": batch_index,
                          "loss_sum": loss_sum, "loss_count": loss_count,
                          "samples_per_epoch": run.cfg.samples_per_epoch, "batch_size": run.cfg.batch_size},
        "config": run.cfg.to_dict(),
        "model_config": model_config(run.model),
        "split": run.split.to_dict(),
        "classes": list(run.dataset.classes),
        "log_file": run.log_path.name,
    }


def save_epoch_checkpoint(run: Run, epoch: int, record: dict[str, Any]) -> None:
    """Checkpoint after a finished epoch (written in the background), then rewrite the log."""
    manager = run.manager
    written = ["latest_checkpoint.pt"]
    if epoch in manager.scheduled_epochs:
        written.append(f"epoch_{epoch:03d}_checkpoint.pt")
    if manager.best_val_dice is None or record["val_dice"] > manager.best_val_dice:
        written.append("best_model.pt")
    run.history["checkpoints_written"][-1] = written
    started = time.perf_counter()
    manager.save(training_state(run, epoch, (epoch, 0, 0.0, 0)), epoch=epoch,
                 val_dice=record["val_dice"], train_loss=record["train_loss"])
    run.history["checkpoint_time_s"][-1] = round(time.perf_counter() - started, 4)
    write_log(run.log_path, run.log, run.history)


def save_mid_epoch(run: Run, position: tuple[int, int, float, int]) -> None:
    """Rewrite latest_checkpoint.pt inside a long epoch (--save-every-steps/--save-every-minutes)."""
    run.manager.save(training_state(run, position[0], position), epoch=position[0], kind="interrupt")


def save_interrupt(run: Run, position, stop: StopRequest, progress: Progress) -> None:
    """Write the interrupt checkpoint, wait until it is durable, and stop with 130/143."""
    stop.saving = True
    name = signal.Signals(stop.signum).name
    progress.warn(f"{name} received: saving the position (epoch {position[0] + 1}, batch {position[1]}) ...")
    save_mid_epoch(run, position)
    run.manager.wait()
    write_log(run.log_path, run.log, run.history)
    raise TrainingInterrupted(EXIT_CODES[stop.signum], resume_hint(run))


def resume_hint(run: Run) -> str:
    return (f"Saved {run.paths.checkpoints / 'latest_checkpoint.pt'}; continue with: "
            f"useg train --run-dir {run.paths.root} --resume latest")

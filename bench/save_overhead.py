"""Checkpointing every few steps: what it costs a training run, and what the writer thread costs training.

Overhead: `useg train` at its defaults for one epoch of 256 samples, with `--save-every-steps 1`,
with `--save-every-steps 10` and with epoch saves only, launched in turn (the order alternating
each round); each run's epoch time is read from its JSON log (`epoch_time_s`: the training steps
and the epoch's validation, not the process start). The ratios compare the medians.

Writer contention: the default model's training steps, in one process, timed while nothing
else runs, while the writer's work (torch.save of the training state into a temp file with
its sha256, fsync, unlink: what one save does after the snapshot) loops on a thread of the
same process (at normal priority, and at nice 19 as routine saves are written), and while the
same loop runs in a separate process. The process competes for the cores only; the thread
competes for the cores and the GIL, so the difference between the two is the GIL's share.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import threading
import time
from pathlib import Path

import torch

from useg.config import TrainConfig
from useg.checkpoint import LOW_PRIORITY_NICE, lower_thread_priority, snapshot_state, write_state_temp
from useg.data import TaskSampler, load_dataset, split_by_patient
from useg.training.losses import segmentation_loss
from useg.model import build_universeg

from .common import Row, Section, Settings, child_env, interleaved, median, run_timed, seconds, shell, spread
from .common import useg_args, verdict

GOALS = {1: 0.02, 10: 0.01}  # at most this much longer than epoch saves only (issue 17)
SAMPLES = 256


def run(settings: Settings) -> list[Section]:
    return [_overhead(settings), _contention(settings)]


def _overhead(settings: Settings) -> Section:
    section = Section(f"Per-step checkpoints: training time against epoch saves only (defaults, {SAMPLES} samples)",
                      "`--save-every-steps N`", "epoch saves only")
    started = time.perf_counter()
    command = useg_args("train", "--run-dir", "RUN", "--epochs", "1", "--samples-per-epoch", str(SAMPLES),
                        "--vis-every", "0", "--quiet")
    runs = iter(range(10**6))
    # (steps between saves, --save-budget): the default budget, and no budget (every due save taken)
    variants = {(1, None): [], (10, None): [], (1, 0): []}

    def timed(every: int, budget: float | None):
        def one() -> float:
            run_dir = settings.workdir / f"overhead_{next(runs)}"
            extra = ["--save-every-steps", str(every)] if every else []
            extra += ["--save-budget", str(budget)] if budget is not None else []
            run_timed([str(run_dir) if arg == "RUN" else arg for arg in command] + extra, env=child_env())
            log = json.loads(next((run_dir / "logs").glob("training_*.json")).read_text())
            if every:
                variants[every, budget].append(log["sessions"][-1].get("checkpoint_saves") or {})
            return log["epochs"][-1]["epoch_time_s"]
        return one

    rounds = 2 if settings.quick else 7  # runs differ by a few % on their own: the goals are 1-2 %
    times = interleaved({(0, None): timed(0, None), **{key: timed(*key) for key in variants}}, rounds)
    baseline = median(times[0, None])
    for (every, budget), saves in variants.items():
        extra = median(times[every, budget]) / baseline - 1
        counts = {name: median([entry.get(name, 0) for entry in saves]) for name in ("routine_due", "deferred",
                                                                                     "coalesced")}
        written = counts["routine_due"] - counts["deferred"] - counts["coalesced"]
        flags = f"--save-every-steps {every}" + (f" --save-budget {budget}" if budget is not None else "")
        goal = GOALS[every] if budget is None else None
        section.rows.append(Row(
            case=f"`{flags}` ({counts['routine_due']:.0f} due, {counts['deferred']:.0f} deferred by the budget, "
                 f"{counts['coalesced']:.0f} coalesced, {written:.0f} written)",
            command=f"`{shell(command)} {flags}` vs without, epoch_time_s of RUN/logs",
            ours=spread(times[every, budget]), baseline=spread(times[0, None]), ratio=f"{extra:+.1%}",
            goal=f"<= +{goal:.0%}" if goal else "", verdict=verdict(extra <= goal) if goal else ""))
        section.results[every if budget is None else f"{every}, budget {budget}"] = extra
    section.reading.append(
        f"With a save due after every optimiser step ({SAMPLES // 4} steps) the epoch took "
        f"{section.results[1]:+.1%} against epoch saves only, and {section.results[10]:+.1%} with one due every 10 "
        f"steps, at the default save budget ({TrainConfig().save_budget:g}% of training time); with no budget, a "
        f"save every step cost {section.results['1, budget 0']:+.1%}. Medians of interleaved runs on a 2-core "
        "machine (load from other work, when there is any, hits every variant alike, but it widens the spread: "
        "runs of one variant differ by several % on their own, so compare the ranges before reading much into a "
        "ratio within them). Each save stalls the step for the state and its snapshot (a few ms at this size, see "
        "the stall table), and the writer then serialises, hashes and writes on another thread, competing with "
        "training for the two cores (next table). The budget weighs what it can see of both (the training "
        "thread's time in the saves, and how much longer steps take while a checkpoint is written than the steps "
        "between writes) against the time trained: a due save over it waits, and is "
        "taken at the first step the budget allows (deferred when the next one falls due first). Without a "
        "budget, a routine save asked for while the previous one is still being written waits as the pending "
        "save, and a newer one replaces it (coalesced).")
    section.seconds = time.perf_counter() - started
    return section


def _contention(settings: Settings) -> Section:
    section = Section("Writer contention: training steps while the checkpoint writer works",
                      "writer busy", "writer idle")
    started = time.perf_counter()
    trainer = DefaultTrainer()
    folder = settings.workdir / "contention"
    folder.mkdir(parents=True)
    state_file = folder / "state.pt"
    snapshot = snapshot_state(trainer.state())
    torch.save(snapshot, state_file)
    steps = 6 if settings.quick else 12
    rounds = 3 if settings.quick else 5
    writes: dict[str, list[int]] = {"thread": [], "low-priority thread": [], "process": []}

    def idle() -> float:
        return trainer.time_steps(steps)

    def on_thread(kind: str, low_priority: bool):
        def timed() -> float:
            stop, count = threading.Event(), [0]
            writer = threading.Thread(target=_write_loop, args=(snapshot, folder / "thread", stop, count, low_priority))
            writer.start()
            try:
                return trainer.time_steps(steps)
            finally:
                stop.set()
                writer.join()
                writes[kind].append(count[0])
        return timed

    def with_process() -> float:
        context = multiprocessing.get_context("spawn")
        stop, ready, count = context.Event(), context.Event(), context.Value("i", 0)
        child = context.Process(target=_write_process, args=(str(state_file), str(folder / "process"), stop, ready,
                                                             count))
        child.start()
        ready.wait(120)  # past the child's imports: time only the writing
        try:
            return trainer.time_steps(steps)
        finally:
            stop.set()
            child.join()
            writes["process"].append(count.value)

    times = interleaved({"idle": idle, "thread": on_thread("thread", False),
                         "low-priority thread": on_thread("low-priority thread", True), "process": with_process},
                        rounds, warmup=1)
    base = median(times["idle"])
    cases = {"thread": " (same process: cores and GIL)", "process": " (cores only)",
             "low-priority thread": f" (nice {LOW_PRIORITY_NICE}, as routine saves are written)"}
    for kind, note in cases.items():
        section.rows.append(Row(
            case=f"writer on a {kind}{note}",
            command=f"{steps} default training steps while write_state_temp(state) loops on a {kind} "
                    f"({median(writes[kind][1:] or writes[kind]):.0f} saves written meanwhile)",
            ours=spread(times[kind]), baseline=spread(times["idle"]),
            ratio=f"{median(times[kind]) / base - 1:+.0%}"))
    thread_cost, process_cost, low_cost = (median(times[kind]) / base - 1 for kind in cases)
    low_writes = median(writes["low-priority thread"][1:] or writes["low-priority thread"])
    section.reading.append(
        f"Training {steps} default steps took {thread_cost:+.0%} with the writer looping on a thread and "
        f"{process_cost:+.0%} with the same loop in another process, against {seconds(base)} with no writer. The "
        f"difference between the two, {thread_cost - process_cost:+.0%}, is what sharing the GIL costs beyond "
        "sharing the cores (negative or within the spread: nothing measurable; torch.save's pickling holds the "
        "GIL only for the containers, the storages' bytes are written and hashed with it released). The rest is "
        "the two cores: torch runs each step on both, and a core busy with the writer slows the step's parallel "
        "parts. A writer process fed through shared memory would therefore save little here. A writer thread at "
        f"nice {LOW_PRIORITY_NICE} cost training {low_cost:+.0%} and still wrote {low_writes:.0f} saves meanwhile: "
        "it runs on the cycles training leaves idle, which is how routine mid-epoch saves are written (epoch, "
        "Ctrl+C and final saves, which a run may wait for, at normal priority). The loop writes continuously, a "
        "worst case: a save every step writes only as often as the writer finishes, with the rest coalesced.")
    section.seconds = time.perf_counter() - started
    return section


class DefaultTrainer:
    """The default configuration's model, optimiser and batches, stepped in this process."""

    def __init__(self) -> None:
        dataset = load_dataset(None, image_size=64, seed=0)
        split = split_by_patient(dataset, seed=0)
        self.sampler = TaskSampler(dataset, split.train, support_size=4, seed=0, samples_per_epoch=10**6)
        torch.manual_seed(0)
        self.model = build_universeg((32, 32, 32, 32))
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-4)
        self.batches = iter(range(10**6))
        self.time_steps(2)  # allocations and Adam's state

    def state(self) -> dict:
        return {"model_state_dict": self.model, "optimizer_state_dict": self.optimizer}

    def time_steps(self, steps: int) -> float:
        batches = [self.sampler.batch(0, next(self.batches), 4) for _ in range(steps)]
        begin = time.perf_counter()
        for batch in batches:
            logits = self.model(batch.target_image, batch.support_images, batch.support_labels)
            loss = segmentation_loss(logits, batch.target_label, "dice")
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        return time.perf_counter() - begin


def _write_loop(state: dict, folder: Path, stop, count, low_priority: bool = False) -> None:
    if low_priority:
        lower_thread_priority()
    folder.mkdir(exist_ok=True)
    while not stop.is_set():
        written = write_state_temp(folder, "latest_checkpoint.pt", state)
        os.unlink(written.path)
        if isinstance(count, list):
            count[0] += 1
        else:
            with count.get_lock():
                count.value += 1


def _write_process(state_file: str, folder: str, stop, ready, count) -> None:
    torch.set_num_threads(1)
    state = torch.load(state_file, weights_only=True)
    ready.set()
    _write_loop(state, Path(folder), stop, count)

"""`bench/gpu.sh`: what issue 17 asks to measure on one GPU, within a fixed time budget.

    python -m bench.gpu --out DIR [--budget-s 270] [--dry-run]

Writes DIR/gpu_results.json and DIR/gpu_results.md: forward+backward step time and peak
memory at the official size (128 px, support 64, batch 4, widths 64) for fp32 / bf16 / fp16,
deterministic on and off, eager and compiled; the task sampler's images/s; the checkpoint
stall of the default state and of a 1 GiB state (GPU tensors, pinned copies) against a plain
torch.save; and a kill-and-resume bitwise check with --deterministic. Every step case runs in
its own process (clean peak memory, clean determinism and compile state). Cases that would
not fit in the budget are reported as skipped, never silently dropped.

`--dry-run` runs every part tiny on the CPU (compile with the "eager" backend), to check the
script itself on a machine without a GPU; its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from .common import REPO, child_env

OFFICIAL = {"size": 128, "support": 64, "batch": 4, "width": 64}
DRY = {"size": 32, "support": 2, "batch": 2, "width": 8}
STEP_CASES = [  # eager first (they are the point), then compile while the budget lasts
    (precision, deterministic, compiled)
    for compiled in (False, True) for precision in ("bf16", "fp32", "fp16") for deterministic in (True, False)]

DRY_CASES = [("bf16", True, False), ("fp16", False, False), ("fp32", True, True)]  # every code path once


@dataclass
class StepResult:
    precision: str
    deterministic: bool
    compiled: bool
    median_ms: float | None = None
    min_ms: float | None = None
    max_ms: float | None = None
    steps: int = 0
    first_step_s: float | None = None
    peak_mib: float | None = None
    missing_deterministic_kernels: list | None = None
    skipped_steps: int = 0
    status: str = "ok"


# --- one step case, in its own process --------------------------------------------------------------

def step_case(args: argparse.Namespace) -> dict:
    """Time `args.steps` training steps of UniverSeg at `args` sizes (after one warm-up step)."""
    import torch

    from useg.compute.device import compile_model, missing_deterministic_kernels, probe_step, set_deterministic
    from useg.training.losses import segmentation_loss
    from useg.model import build_universeg
    from useg.compute.precision import autocast, make_scaler, optimizer_step

    use_training_threads()
    device = torch.device(args.device)
    set_deterministic(args.deterministic)
    torch.manual_seed(0)
    model = build_universeg((args.width,) * 4).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    scaler = make_scaler(args.precision, device)
    missing = None
    if args.deterministic:
        probe_cfg = argparse.Namespace(widths=[args.width] * 4, support_size=args.support, loss="dice",
                                       precision=args.precision)
        missing = missing_deterministic_kernels(lambda: probe_step(model, probe_cfg, device))
    generator = torch.Generator().manual_seed(0)
    shape = (args.batch, args.support, 1, args.size, args.size)
    target = torch.rand(args.batch, 1, args.size, args.size, generator=generator).to(device)
    images = torch.rand(shape, generator=generator).to(device)
    labels = (torch.rand(shape, generator=generator) > 0.5).float().to(device)
    truth = (target > 0.5).float()
    step_model = compile_model(model, backend="eager" if args.dry_run else "inductor") if args.compiled else model

    def step() -> tuple[float, bool]:
        sync(device)
        begin = time.perf_counter()
        with autocast(args.precision, device):
            loss = segmentation_loss(step_model(target, images, labels).float(), truth, "dice")
        optimizer.zero_grad(set_to_none=True)
        stepped = optimizer_step(loss, optimizer, scaler)
        sync(device)
        return time.perf_counter() - begin, stepped

    first, _ = step()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times, skipped = [], 0
    for _ in range(args.steps):
        elapsed, stepped = step()
        times.append(elapsed)
        skipped += not stepped
    peak = (torch.cuda.max_memory_allocated(device) if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return asdict(StepResult(args.precision, args.deterministic, args.compiled,
                             median_ms=statistics.median(times) * 1000, min_ms=min(times) * 1000,
                             max_ms=max(times) * 1000, steps=len(times), first_step_s=first,
                             peak_mib=peak / 2**20, missing_deterministic_kernels=missing, skipped_steps=skipped))


def use_training_threads() -> None:
    """The thread count `useg train` would pick here (torch's default of every core collapses on a busy machine)."""
    import torch

    from useg.compute.device import default_threads, usable_cores

    torch.set_num_threads(default_threads(usable_cores()))


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_step_cases(options: argparse.Namespace, cases: list[tuple], deadline: float) -> list[dict]:
    """Each case in a child process, given what is left of the budget (less `options.reserve_s`)."""
    sizes = DRY if options.dry_run else OFFICIAL
    results = []
    for precision, deterministic, compiled in cases:
        left = deadline - time.monotonic() - options.reserve_s
        skipped = asdict(StepResult(precision, deterministic, compiled, status="skipped: time budget"))
        if options.dry_run and (precision, deterministic, compiled) not in DRY_CASES:
            results.append({**skipped, "status": "skipped: dry run"})
            continue
        if left < (60 if compiled and not options.dry_run else 15):
            results.append(skipped)
            continue
        command = [sys.executable, "-m", "bench.gpu", "step", "--device", options.device, "--precision", precision,
                   "--steps", "3" if options.dry_run else "10", *(["--deterministic"] if deterministic else []),
                   *(["--compiled"] if compiled else []), *(["--dry-run"] if options.dry_run else []),
                   *[part for key, value in sizes.items() for part in (f"--{key}", str(value))]]
        results.append(run_child(command, left, skipped))
    return results


def run_child(command: list[str], timeout: float, fallback: dict) -> dict:
    """The JSON a child prints on its last line; `fallback` with the reason when it fails or overruns."""
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=child_env(), cwd=REPO)
    except subprocess.TimeoutExpired:
        return {**fallback, "status": f"stopped after {timeout:.0f} s: time budget"}
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {**fallback, "status": f"failed (exit {done.returncode}): {last[:300]}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


# --- the sampler, the checkpoint stall, kill-and-resume -------------------------------------------

def sampler_rate(options: argparse.Namespace) -> dict:
    """Images per second of TaskSampler.batch at the benchmark size (one thread, the embedded dataset)."""
    from useg.data import TaskSampler, load_dataset, split_by_patient

    sizes = DRY if options.dry_run else OFFICIAL
    dataset = load_dataset(None, image_size=sizes["size"], seed=0)
    split = split_by_patient(dataset, seed=0)
    sampler = TaskSampler(dataset, split.train, support_size=sizes["support"], seed=0, samples_per_epoch=64)
    batches = sampler.num_batches(sizes["batch"])
    sampler.batch(0, 0, sizes["batch"])  # warm caches
    begin = time.perf_counter()
    for index in range(batches):
        sampler.batch(1, index, sizes["batch"])
    elapsed = time.perf_counter() - begin
    images = batches * sizes["batch"] * (sizes["support"] + 1)
    return {"images_per_s": images / elapsed, "batches": batches, "seconds": elapsed, **sizes}


def checkpoint_stall(options: argparse.Namespace, workdir: Path) -> list[dict]:
    """save() time of the default training state and of a ~1 GiB state, on the device, against torch.save."""
    import torch

    from bench.states import training_state
    from useg.checkpoint import CheckpointManager

    device = torch.device(options.device)
    results = []
    for name, target in (("default (widths 32 + Adam)", None), ("1 GiB (UniverSeg + Adam)", 2**30)):
        if options.dry_run and target:
            target = 8 * 2**20
        state = training_state(target or 0) if target else default_state()
        state.model.to(device)
        move_optimizer(state.optimizer, device)
        folder = workdir / f"stall_{len(results)}"
        manager = CheckpointManager(folder / "checkpoints", total_epochs=10**6, periodic_percentages=(100,))
        stalls, plain = [], []
        try:
            for epoch in range(1, 5):
                sync(device)
                begin = time.perf_counter()
                manager.save(state.parts(), epoch=epoch)
                stalls.append(time.perf_counter() - begin)
                manager.wait()
                begin = time.perf_counter()
                torch.save(state.plain(epoch), folder / "sync.pt")
                plain.append(time.perf_counter() - begin)
        finally:
            manager.close()
        results.append({"state": name, "bytes": state.nbytes, "first_save_ms": stalls[0] * 1000,
                        "save_ms": statistics.median(stalls[1:]) * 1000,
                        "torch_save_ms": statistics.median(plain[1:]) * 1000})
        del state
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return results


def default_state():
    from bench.states import TrainingState

    import torch

    from useg.model import build_universeg

    torch.manual_seed(0)
    model = build_universeg((32,) * 4)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    for parameter in model.parameters():
        parameter.grad = torch.full_like(parameter, 1e-3)
    optimizer.step()
    return TrainingState(model, optimizer, 32)


def move_optimizer(optimizer, device) -> None:
    for slots in optimizer.state.values():
        for key, value in slots.items():
            if hasattr(value, "to") and key != "step":
                slots[key] = value.to(device)


def kill_and_resume(options: argparse.Namespace, workdir: Path) -> dict:
    """Train 2 epochs straight; train again, SIGKILL it mid-epoch 2 (after a --save-every-steps save),
    resume; the final weights and optimiser state must be bitwise equal."""
    import torch

    flags = ["--epochs", "2", "--vis-every", "0", "--quiet", "--device", options.device, "--deterministic",
             "--save-every-steps", "2", "--samples-per-epoch", "32", "--batch-size", "4",
             *(["--widths", "8,8", "--image-size", "32", "--support-size", "2"] if options.dry_run
               else ["--widths", "16,16,16,16", "--image-size", "64", "--support-size", "8"])]
    straight, killed = workdir / "straight", workdir / "killed"
    env = child_env()
    commands = [([str(straight)], {}), ([str(killed)], {"USEG_KILL_AT": "step:11"})]
    codes = []
    for run_dir, extra in commands:
        done = subprocess.run([sys.executable, "-m", "useg", "train", "--run-dir", *run_dir, *flags],
                              env={**env, **extra}, capture_output=True, text=True, timeout=180)
        codes.append(done.returncode)
    resumed = subprocess.run([sys.executable, "-m", "useg", "resume", "latest", "--run-dir", str(killed), "--quiet"],
                             env=env, capture_output=True, text=True, timeout=180)
    if codes != [0, -9] or resumed.returncode != 0:
        return {"equal": False, "status": f"exit codes {codes} then {resumed.returncode}: {resumed.stderr[-300:]}"}
    a, b = (torch.load(run / "checkpoints" / "latest_checkpoint.pt", weights_only=True) for run in (straight, killed))
    weights = all(torch.equal(t, b["model_state_dict"][k]) for k, t in a["model_state_dict"].items())
    moments = all(torch.equal(v, b["optimizer_state_dict"]["state"][i][s])
                  for i, slots in a["optimizer_state_dict"]["state"].items() for s, v in slots.items())
    return {"equal": weights and moments and a["history"]["train_loss"] == b["history"]["train_loss"],
            "precision": a["config"]["precision"], "deterministic": a["config"]["deterministic"],
            "resumed_at": b["history"]["resumed_at"], "status": "ok", "flags": " ".join(flags)}


# --- the report -----------------------------------------------------------------------------------------

def machine(device: str) -> str:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{gpu}; {os.cpu_count()} CPU cores; torch {torch.__version__} (CUDA {torch.version.cuda}, "
            f"cuDNN {torch.backends.cudnn.version()}); Python {platform.python_version()}; device {device}")


def markdown(results: dict) -> str:
    """The results as the tables BENCHMARKS.md takes; parts not reached yet say so."""
    title = "# bench/gpu.sh results" + (" (dry run on the CPU: the numbers mean nothing)" if results["dry_run"] else "")
    lines = [title, "", f"Machine: {results['machine']}", f"Seconds so far: {results.get('seconds', 0):.0f}", "",
             "| precision | deterministic | compile | step (median, min-max) | first step | peak memory | "
             "missing deterministic kernels | status |", "|---|---|---|---|---|---|---|---|"]
    lines += [step_row(row) for row in results.get("steps", [])]
    sampler = results.get("sampler")
    lines += ["", "Sampler: not reached" if sampler is None else (
        f"Sampler: {sampler['images_per_s']:,.0f} images/s ({sampler['batches']} batches of {sampler['batch']} x "
        f"(1 + {sampler['support']}) images at {sampler['size']} px, one thread)")]
    lines += ["", "| state | size | save() returns after (first save) | torch.save |", "|---|---|---|---|"]
    lines += [f"| {row['state']} | {row['bytes'] / 2**20:,.0f} MiB | {row['save_ms']:.1f} ms "
              f"({row['first_save_ms']:.1f} ms) | {row['torch_save_ms']:.1f} ms |" for row in results.get("stall", [])]
    resume = results.get("kill_and_resume")
    lines += ["", "Kill and resume: not reached" if resume is None else (
        f"Kill and resume ({resume.get('flags', '')}): {'bitwise equal' if resume['equal'] else 'NOT equal'} "
        f"({resume['status']})")]
    return "\n".join(lines) + "\n"


def step_row(row: dict) -> str:
    def shown(value, text: str) -> str:
        return "-" if value is None else text

    timing = shown(row["median_ms"], f"{row['median_ms'] or 0:.1f} ms ({row['min_ms'] or 0:.1f}-"
                                     f"{row['max_ms'] or 0:.1f}, {row['steps']} steps)")
    missing = row["missing_deterministic_kernels"]
    cells = [row["precision"], "on" if row["deterministic"] else "off", "yes" if row["compiled"] else "no", timing,
             shown(row["first_step_s"], f"{row['first_step_s'] or 0:.2f} s"),
             shown(row["peak_mib"], f"{row['peak_mib'] or 0:,.0f} MiB"),
             "-" if missing is None else ", ".join(missing) or "none", row["status"]]
    return "| " + " | ".join(cells) + " |"


def run_all(options: argparse.Namespace) -> int:
    """Every part in order of importance, each given what is left of the budget. Both files are
    rewritten after each part, so a run stopped by the time limit still leaves what it measured."""
    started = time.monotonic()
    deadline = started + options.budget_s
    out = Path(options.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict = {"machine": machine(options.device), "dry_run": options.dry_run, "steps": []}
    use_training_threads()

    def record(key: str, value) -> None:
        results[key] = results.get(key, []) + value if key == "steps" else value
        results["seconds"] = time.monotonic() - started
        (out / "gpu_results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
        (out / "gpu_results.md").write_text(markdown(results), encoding="utf-8")

    with tempfile.TemporaryDirectory(prefix="useg-gpu-bench-") as scratch:
        options.reserve_s = 0 if options.dry_run else 75  # what sampler, stall and resume need after them
        record("steps", run_step_cases(options, [case for case in STEP_CASES if not case[2]], deadline))
        options.reserve_s = 0
        record("sampler", sampler_rate(options))
        record("stall", checkpoint_stall(options, Path(scratch)))
        record("kill_and_resume", kill_and_resume(options, Path(scratch)))
        record("steps", run_step_cases(options, [case for case in STEP_CASES if case[2]], deadline))
    print(markdown(results))
    return 0 if results["kill_and_resume"]["equal"] else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu")
    parser.add_argument("mode", nargs="?", default="all", choices=["all", "step"])
    parser.add_argument("--out", default="bench-gpu-results")
    parser.add_argument("--budget-s", type=float, default=270.0)
    parser.add_argument("--reserve-s", type=float, default=0.0, help=argparse.SUPPRESS)
    parser.add_argument("--device", default=None)
    parser.add_argument("--dry-run", action="store_true")
    for name in ("precision", "size", "support", "batch", "width", "steps"):
        parser.add_argument(f"--{name}", type=str if name == "precision" else int)
    parser.add_argument("--deterministic", action="store_true")
    parser.add_argument("--compiled", action="store_true")
    options = parser.parse_args(argv)
    options.device = options.device or ("cpu" if options.dry_run else "cuda")
    if options.mode == "step":
        print(json.dumps(step_case(options)))
        return 0
    return run_all(options)


if __name__ == "__main__":
    sys.exit(main())

"""Options 2 and 3 of `useg menu`: resume the run from its latest save or from a checkpoint the user
chooses (saying what going back leaves behind), with the total epochs asked first."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from useg.checkpoint import BEST_NAME, LATEST_NAME, ResumePoint, left_behind, resume_points
from useg.cli import checkpoint_actions as manage
from useg.cli import display
from useg.cli import menu_chores as chores
from useg.cli import menu_prompts as prompts
from useg.errors import CheckpointError
from useg.run_folder import checkpoints_folder


def ask_total_epochs(run_dir: str, console: Console) -> list[str]:
    """`--epochs N`: the user's new total, or on Enter the run's current total (as its newest save records
    it), so that going back to an older file does not go back to that file's older plan."""
    from useg.run_folder import planned_total_epochs

    planned = planned_total_epochs(checkpoints_folder(run_dir))
    keep = f"Enter keeps the run's total, {planned}" if planned else "Enter keeps the checkpoint's total"

    def parse(answer: str) -> str:
        if not answer.isdigit() or int(answer) < 1:
            raise ValueError(f"Please give a whole number of at least 1 (got {answer!r}).")
        return answer

    total = prompts.ask_until_valid(f"Total epochs ({keep}): ", parse, console)
    total = total or (str(planned) if planned else None)
    return ["--epochs", total] if total else []


def resume_latest(run_dir: str, console: Console) -> None:
    manage.run_checkpoints(run_dir)  # a clear error when there is nothing to resume
    prompts.run_useg(["resume", "latest", "--run-dir", run_dir, *ask_total_epochs(run_dir, console)])


def resume_specific(run_dir: str, console: Console) -> None:
    """Choose, by its number in the run's list, a file that can resume the run; going back to an older
    one says what it leaves behind."""
    points, numbers = resumable_points(run_dir, console)
    by_number = {numbers[point.info.path]: point for point in points}
    choices = ", ".join(map(str, by_number))

    def parse(answer: str) -> ResumePoint:
        if answer.isdigit() and int(answer) in by_number:
            return by_number[int(answer)]
        name = next((path.name for path, number in numbers.items() if str(number) == answer), None)
        if name is not None:
            raise ValueError(f"{name} cannot resume the run; type {choices}, or Enter to go back.")
        raise ValueError(f"No checkpoint number {answer!r}; type {choices}, or Enter to go back.")

    chosen = prompts.ask_until_valid(f"Resume from checkpoint number ({choices}; Enter to go back): ", parse, console)
    if chosen is None:
        return
    if not confirm_going_back(points, chosen, console):
        console.print("Nothing started.")
        return
    prompts.run_useg(["resume", str(chosen.path), "--run-dir", run_dir, *ask_total_epochs(run_dir, console)])


def resumable_points(run_dir: str, console: Console) -> tuple[list[ResumePoint], dict[Path, int]]:
    """Show the run's checkpoints numbered as every listing numbers them, then which can resume the run
    (valid, or not hashed yet: resume hashes them) in the order resume tries them, and why the others
    cannot, best_model.pt included. Returns those points and each listed file's number."""
    infos = chores.show_checkpoints(run_dir, console)
    numbers = {info.path: number for number, info in enumerate(infos, 1)}
    points = resume_points(checkpoints_folder(run_dir), infos)
    usable = [point for point in points if point.info.valid or point.info.status == "unchecked"]
    for point in points:
        if point not in usable:
            info = point.info
            prompts.say(console, f"  {numbers[info.path]}  {info.name} cannot resume: not valid ({info.reason})")
    for info in infos:
        if info.name == BEST_NAME:
            prompts.say(console, f"  {numbers[info.path]}  {BEST_NAME} (epoch {info.epoch}, val Dice "
                                 f"{display.format_number(info.val_dice)}) holds weights only and cannot resume; use "
                                 "it with evaluate, predict, export or a new run's --pretrained")
    if not usable:
        raise CheckpointError(f"no checkpoint in {Path(run_dir) / 'checkpoints'} can resume the run; "
                              "see why with: useg checkpoints verify --run-dir " + run_dir)
    prompts.say(console, "Can resume the run, in the order `useg resume latest` tries them: "
                         + ", ".join(f"{numbers[point.info.path]} {point.info.name}" for point in usable))
    return usable, numbers


def confirm_going_back(points: list[ResumePoint], chosen: ResumePoint, console: Console) -> bool:
    """True when nothing newer is left behind, or the user agrees after reading what is."""
    behind = left_behind(points, chosen)
    if not behind:
        return True
    prompts.say(console, f"Going back to {chosen.info.name} (epoch {chosen.info.epoch}) leaves newer saves behind:")
    twin = next((p.info.name for p in points if p.same_as_latest and p.info.name != LATEST_NAME), None)
    for point in behind:
        info = point.info
        where = f"{info.kind}, epoch {info.epoch}, step {info.step}"
        if info.name == LATEST_NAME:
            fate = f"replaced by the first save from {chosen.info.name}" + (
                f"; its state stays in {twin}" if twin else
                "; its mid-epoch position is kept nowhere else" if info.kind == "interrupt" else "")
        else:
            fate = ("kept, as an abandoned branch: resume uses it only as a last resort, clean --keep removes it "
                    "first, and training rewrites it when it reaches that epoch again")
        prompts.say(console, f"  {info.name} ({where}): {fate}")
    return prompts.yes(f"Go back to epoch {chosen.info.epoch}? [y/N] ")

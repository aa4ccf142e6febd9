"""The interactive training manager (`useg menu`): the seed's numbered menu over the same library."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from useg import manage
from useg.cli import display
from useg.errors import UsegError

OPTIONS = (
    ("1", "Start new training"),
    ("2", "Resume from latest"),
    ("3", "Resume from a specific checkpoint"),
    ("4", "View checkpoint info"),
    ("5", "Clean old checkpoints"),
    ("6", "Show training history"),
    ("q", "Quit"),
)


class EndOfInput(Exception):
    """stdin closed (a pipe ran out): leave the menu cleanly."""


def ask(prompt: str) -> str:
    """One answer from the user; EndOfInput when stdin has closed."""
    try:
        answer = input(prompt).strip()
    except EOFError:
        print()
        raise EndOfInput from None
    if not sys.stdin.isatty():
        print(answer)  # a terminal echoes what was typed; echo piped answers so the transcript reads the same
    return answer


def enable_line_editing() -> None:
    """In a terminal, arrow keys edit the answer and recall earlier ones (readline), where Python has it."""
    if sys.stdin.isatty():
        try:
            import readline  # noqa: F401 - importing it is what makes input() use it
        except ImportError:
            pass


def run_menu(run_dir: str) -> int:
    """Show the menu until the user quits or input ends; each option reports its own errors."""
    console = Console(highlight=False, width=None if sys.stdout.isatty() else 120)
    enable_line_editing()
    actions = {"1": start_training, "2": resume_latest, "3": resume_specific, "4": view_info,
               "5": clean_old, "6": show_history}
    while True:
        console.print(f"\n[bold]UniverSeg training manager[/bold]  (run folder: {escape(str(Path(run_dir).resolve()))})")
        for key, label in OPTIONS:
            console.print(f"  {key}  {label}")
        try:
            choice = ask("Choose an option: ").lower()
        except EndOfInput:
            return 0
        except KeyboardInterrupt:
            print()
            return 130
        if choice in ("q", "quit", "exit"):
            return 0
        if choice not in actions:
            console.print(f"Unknown option {choice!r}; type 1-6 or q.", markup=False)
            continue
        try:
            actions[choice](run_dir, console)
        except UsegError as err:
            console.print(f"error: {err}", markup=False, soft_wrap=True)  # one line, however long
        except KeyboardInterrupt:
            console.print("\ncancelled")  # Ctrl+C inside an option goes back to the menu, not out of it
        except EndOfInput:
            return 0


def run_useg(arguments: list[str]) -> int:
    """Run training as a child process, so Ctrl+C there stops training, not the menu."""
    print("$ useg " + " ".join(arguments))
    with subprocess.Popen([sys.executable, "-m", "useg", *arguments]) as child:
        while True:
            try:
                return child.wait()
            except KeyboardInterrupt:
                # The terminal sent Ctrl+C to the child too; it is saving its position, so wait for it.
                # (subprocess.call would SIGKILL it here, mid-save.)
                continue


def start_training(run_dir: str, console: Console) -> None:
    epochs = ask("Epochs (Enter for the default): ")
    data = ask("Data folder (Enter for the embedded synthetic set): ")
    arguments = ["train", "--run-dir", run_dir]
    if epochs:
        arguments += ["--epochs", epochs]
    if data:
        arguments += ["--data", data]
    run_useg(arguments)


def ask_total_epochs() -> list[str]:
    """`--epochs N` when the user wants to extend the run, else nothing."""
    total = ask("Total epochs (Enter to keep the run's total): ")
    return ["--epochs", total] if total else []


def resume_latest(run_dir: str, console: Console) -> None:
    manage.run_checkpoints(run_dir)  # a clear error when there is nothing to resume
    run_useg(["resume", "latest", "--run-dir", run_dir, *ask_total_epochs()])


def choose_checkpoint(run_dir: str, console: Console):
    """Show the numbered list and return the chosen checkpoint, or None."""
    infos = manage.run_checkpoints(run_dir)
    console.print(display.list_table(infos, "Checkpoints"))
    answer = ask(f"Checkpoint number (1-{len(infos)}, Enter to go back): ")
    if not answer:
        return None
    if not answer.isdigit() or not 1 <= int(answer) <= len(infos):
        console.print(f"No checkpoint number {answer!r}.", markup=False)
        return None
    return infos[int(answer) - 1]


def resume_specific(run_dir: str, console: Console) -> None:
    info = choose_checkpoint(run_dir, console)
    if info is None:
        return
    if info.kind == "best":
        console.print("best_model.pt holds weights only (no optimizer state); choose a full checkpoint to resume.")
        return
    if not info.valid and info.status != "unchecked":  # unchecked: resume hashes it before loading anyway
        console.print(f"{info.name} is not valid ({info.reason}); choose another checkpoint.", markup=False)
        return
    run_useg(["resume", str(info.path), "--run-dir", run_dir, *ask_total_epochs()])


def view_info(run_dir: str, console: Console) -> None:
    info = choose_checkpoint(run_dir, console)
    if info is not None:
        console.print("\n".join(display.info_lines(manage.describe(info.path, run_dir))), markup=False)


def clean_old(run_dir: str, console: Console) -> None:
    """Ask N, show what would go, and remove it only after a yes."""
    keep = ask("Keep how many periodic checkpoints? ")
    if not keep.isdigit() or int(keep) < 1:
        console.print(f"Please give a whole number of at least 1 (got {keep!r}).", markup=False)
        return
    plan, freed = manage.clean_with_plan(run_dir, int(keep), dry_run=True)
    doomed = plan.remove
    for line in display.clean_notes(plan):  # a damaged latest, files left in place, the fallback kept
        console.print(f"  {line}", markup=False)
    if not doomed:
        console.print("Nothing to remove.")
        return
    for info in doomed:
        console.print(f"  will remove {info.name}", markup=False)
    if ask(f"Remove these {len(doomed)} file(s), freeing {display.format_size(freed)}? [y/N] ").lower() not in ("y", "yes"):
        console.print("Nothing removed.")
        return
    removed, freed = manage.clean_run(run_dir, int(keep), dry_run=False)
    console.print(f"Removed {len(removed)} file(s), freed {display.format_size(freed)}.")


def show_history(run_dir: str, console: Console) -> None:
    from useg.history import history_table, plot_curves

    history = manage.run_history(run_dir)
    console.print(history_table(history))
    # A curves file that cannot be written is a UsegError: run_menu prints it and shows the menu again.
    curves = plot_curves(history, Path(run_dir) / "training_curves.png", then="choose 6 again")
    console.print(f"curves saved to {curves}", markup=False)

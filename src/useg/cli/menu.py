"""The interactive training manager (`useg menu`): the original scripts' numbered menu over the same library.
This module holds the loop; each option lives in the module named for it: menu_new_run (1), menu_resume (2, 3),
menu_chores (4 to 8), all asking through menu_prompts."""

from __future__ import annotations

from pathlib import Path

from rich.markup import escape

from useg.cli import display
from useg.cli import menu_chores as chores
from useg.cli import menu_new_run as new_run
from useg.cli import menu_prompts as prompts
from useg.cli import menu_resume as resume
from useg.errors import UsegError

OPTIONS = (
    ("1", "Start new training"),
    ("2", "Resume from latest"),
    ("3", "Resume from a specific checkpoint"),
    ("4", "View checkpoint info"),
    ("5", "Clean old checkpoints"),
    ("6", "Show training history"),
    ("7", "List checkpoints"),
    ("8", "Compare with other runs"),
    ("q", "Quit"),
)
# Every listing (3, 4, 7) numbers the run's files as `useg checkpoints list` does: oldest first.


def run_menu(run_dir: str) -> int:
    """Show the menu until the user quits or input ends; each option reports its own errors."""
    console = display.console()
    prompts.enable_line_editing()
    actions = {"1": new_run.start_training, "2": resume.resume_latest, "3": resume.resume_specific,
               "4": chores.view_info, "5": chores.clean_old, "6": chores.show_history, "7": chores.list_all,
               "8": chores.compare_runs}
    while True:
        console.print(f"\n[bold]UniverSeg training manager[/bold]  (run folder: {escape(str(Path(run_dir).resolve()))})")
        for key, label in OPTIONS:
            console.print(f"  {key}  {label}")
        try:
            choice = prompts.ask("Choose an option: ").lower()
        except prompts.EndOfInput:
            return 0
        except KeyboardInterrupt:
            print()
            return 130
        if choice in ("q", "quit", "exit"):
            return 0
        if choice not in actions:
            prompts.say(console, f"Unknown option {choice!r}; type 1-{len(actions)} or q.")
            continue
        try:
            actions[choice](run_dir, console)
        except UsegError as err:
            prompts.say(console, f"error: {err}")  # one line, however long
        except KeyboardInterrupt:
            console.print("\ncancelled")  # Ctrl+C inside an option goes back to the menu, not out of it
        except prompts.EndOfInput:
            return 0

"""Options 4 to 8 of `useg menu`: view a checkpoint's info, clean old checkpoints, show the training history,
list the checkpoints, compare with other runs. Every listing numbers the run's files as `useg checkpoints list`
does (oldest first); option 3 (menu_resume) numbers them the same."""

from __future__ import annotations

import shlex
from pathlib import Path

from rich.console import Console

from useg.cli import checkpoint_actions as manage
from useg.cli import display
from useg.cli import menu_prompts as prompts
from useg.errors import UsegError
from useg.run_folder import checkpoints_folder, replaced_folders


def ask_number_from(items: list, console: Console) -> int | None:
    """The index the user chooses in a numbered list (asked again until it is one), None on Enter."""
    def parse(answer: str) -> int:
        if not answer.isdigit() or not 1 <= int(answer) <= len(items):
            raise ValueError(f"No checkpoint number {answer!r}; type 1-{len(items)}, or Enter to go back.")
        return int(answer) - 1

    return prompts.ask_until_valid(f"Checkpoint number (1-{len(items)}, Enter to go back): ", parse, console)


def show_checkpoints(run_dir: str, console: Console) -> list:
    """Print the run's checkpoints as `useg checkpoints list` does (oldest first, numbered from 1) and
    return them in that order: options 3, 4 and 7 give a file the same number."""
    infos = manage.run_checkpoints(run_dir)
    console.print(display.list_table(infos, f"Checkpoints in {checkpoints_folder(run_dir)}"))
    return infos


def view_info(run_dir: str, console: Console) -> None:
    infos = show_checkpoints(run_dir, console)
    number = ask_number_from(infos, console)
    if number is not None:
        prompts.say(console, "\n".join(display.info_lines(manage.describe(infos[number].path, run_dir))))


def list_all(run_dir: str, console: Console) -> None:
    """Option 7: what `useg checkpoints list` prints, the folders --overwrite set aside included."""
    show_checkpoints(run_dir, console)
    for line in display.replaced_lines(replaced_folders(run_dir), run_dir):
        prompts.say(console, line)


def clean_old(run_dir: str, console: Console) -> None:
    """Ask N, show what would go, and remove it only after a yes; then the same for set-aside runs."""
    def parse(answer: str) -> int:
        if not answer.isdigit() or int(answer) < 1:
            raise ValueError(f"Please give a whole number of at least 1 (got {answer!r}), or Enter to go back.")
        return int(answer)

    keep = prompts.ask_until_valid("Keep how many periodic checkpoints? ", parse, console)
    if keep is None:
        return
    clean_periodic(run_dir, keep, console)
    clean_set_aside(run_dir, console)


def clean_periodic(run_dir: str, keep: int, console: Console) -> None:
    plan, freed = manage.clean_with_plan(run_dir, keep, dry_run=True)
    doomed = plan.remove
    for line in display.clean_notes(plan):  # a damaged latest, files left in place, the fallback kept
        prompts.say(console, f"  {line}")
    if not doomed:
        console.print("Nothing to remove.")
        return
    for info in doomed:
        prompts.say(console, f"  will remove {info.name}")
    if not prompts.yes(f"Remove these {len(doomed)} file(s), freeing {display.format_size(freed)}? [y/N] "):
        console.print("Nothing removed.")
        return
    removed, freed = manage.clean_run(run_dir, keep, dry_run=False)
    console.print(f"Removed {len(removed)} file(s), freed {display.format_size(freed)}.")


def clean_set_aside(run_dir: str, console: Console) -> None:
    """Offer to remove the folders --overwrite set aside (old runs; the live checkpoints/ stays)."""
    folders = manage.clean_replaced(run_dir, dry_run=True)
    if not folders:
        return
    for line in display.replaced_lines(folders, run_dir)[1:]:
        prompts.say(console, line)
    size = display.format_size(sum(folder.size_bytes for folder in folders))
    if not prompts.yes(f"Also remove these {len(folders)} folder(s) that --overwrite set aside, freeing {size}? "
                       "[y/N] "):
        console.print("Set-aside folders kept.")
        return
    removed = manage.clean_replaced(run_dir, dry_run=False)
    console.print(f"Removed {len(removed)} set-aside folder(s).")


def show_history(run_dir: str, console: Console) -> None:
    from useg.training.history import history_table, plot_curves

    history = manage.run_history(run_dir)
    console.print(history_table(history))
    # A curves file that cannot be written is a UsegError: run_menu prints it and shows the menu again.
    curves = plot_curves(history, Path(run_dir) / "training_curves.png", then="choose 6 again")
    prompts.say(console, f"curves saved to {curves}")


def compare_runs(run_dir: str, console: Console) -> None:
    """`useg runs compare` of this run and the folders the user names: the table, and compare.png in this run."""
    from useg.cli.runs import compare_runs as compare, compare_table, save_compare_picture

    answer = prompts.ask("Other run folders to compare with this one (separated by spaces): ")
    try:
        others = shlex.split(answer)  # a folder with spaces is typed in quotes, as in a shell
    except ValueError as err:
        raise UsegError(f"cannot read those folders ({err}); put a folder with spaces in quotes") from None
    comparison = compare([Path(run_dir), *map(Path, others)])
    console.print(compare_table(comparison))
    picture = save_compare_picture(comparison["runs"], Path(run_dir) / "compare.png")
    prompts.say(console, f"picture saved to {picture}")

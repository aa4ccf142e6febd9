"""The interactive training manager (`useg menu`): the original scripts' numbered menu over the same library."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

from rich.console import Console
from rich.markup import escape

from useg.cli import checkpoint_actions as manage
from useg.checkpoint import BEST_NAME, LATEST_NAME, ResumePoint, checkpoint_files, left_behind, resume_points
from useg.cli import display
from useg.errors import CheckpointError, UsegError
from useg.run_folder import checkpoints_folder, existing_run
from useg.training.progress import position_text

OPTIONS = (
    ("1", "Start new training"),
    ("2", "Resume from latest"),
    ("3", "Resume from a specific checkpoint"),
    ("4", "View checkpoint info"),
    ("5", "Clean old checkpoints"),
    ("6", "Show training history"),
    ("q", "Quit"),
)

# What option 1 asks, after an optional config file: (config key, flag, question). Enter keeps
# the config file's value, else the default; these are the settings a run on new data needs.
RUN_QUESTIONS = (
    ("data", "--data", "Data folder"),
    ("classes", "--classes", "Classes to train on, comma-separated"),
    ("label", "--label", "Label-map masks: the mask value(s) to train, e.g. 255 or 128,255"),
    ("epochs", "--epochs", "Epochs"),
    ("image_size", "--image-size", "Image size in pixels (square)"),
    ("support_size", "--support-size", "Support images per target"),
)
INTEGER_KEYS = frozenset({"epochs", "image_size", "support_size"})
UNSET_MEANS = {"data": "the embedded synthetic set", "classes": "all", "label": "every value"}


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


def ask_until_valid(prompt: str, parse: Callable[[str], Any], console: Console) -> Any:
    """Ask until `parse` accepts the answer (it raises ValueError or UsegError with the reason);
    None when the user just presses Enter."""
    while True:
        answer = ask(prompt)
        if not answer:
            return None
        try:
            return parse(answer)
        except (ValueError, UsegError) as err:
            say(console, str(err))


def say(console: Console, text: str) -> None:
    """Print plain text (no markup), one line per line however long: pipes and logs keep it whole."""
    console.print(text, markup=False, soft_wrap=True)


def enable_line_editing() -> None:
    """In a terminal, arrow keys edit the answer and recall earlier ones (readline), where Python has it."""
    if sys.stdin.isatty():
        try:
            import readline  # noqa: F401 - importing it is what makes input() use it
        except ImportError:
            pass


def run_menu(run_dir: str) -> int:
    """Show the menu until the user quits or input ends; each option reports its own errors."""
    console = display.console()
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
            say(console, f"Unknown option {choice!r}; type 1-6 or q.")
            continue
        try:
            actions[choice](run_dir, console)
        except UsegError as err:
            say(console, f"error: {err}")  # one line, however long
        except KeyboardInterrupt:
            console.print("\ncancelled")  # Ctrl+C inside an option goes back to the menu, not out of it
        except EndOfInput:
            return 0


def run_useg(arguments: list[str]) -> int:
    """Run training as a child process, so Ctrl+C there stops training, not the menu."""
    print("$ " + shlex.join(["useg", *arguments]))  # a line that can be pasted into a shell
    with subprocess.Popen([sys.executable, "-m", "useg", *arguments]) as child:
        while True:
            try:
                return child.wait()
            except KeyboardInterrupt:
                # The terminal sent Ctrl+C to the child too; it is saving its position, so wait for it.
                # (subprocess.call would SIGKILL it here, mid-save.)
                continue


# --- 1: a new run ---------------------------------------------------------------------------


def start_training(run_dir: str, console: Console) -> None:
    """Ask for the run's settings and train; a folder that holds a run is resumed or set aside first."""
    overwrite = []
    if existing_run(run_dir).files:
        decision = ask_about_existing_run(run_dir, console)
        if decision == "resume":
            resume_latest(run_dir, console)
            return
        if decision != "overwrite":
            return
        overwrite = ["--overwrite"]
    settings = ask_run_settings(console)
    run_useg(["train", "--run-dir", run_dir, *settings, *overwrite])


def ask_about_existing_run(run_dir: str, console: Console) -> str | None:
    """'resume', 'overwrite' or None (go back), asked before any other question; resume only when it can."""
    existing = existing_run(run_dir)
    folder = existing.folder
    afresh = ("  o  start afresh: move its checkpoints and pictures to checkpoints_replaced_<time>/ "
              "(nothing is deleted; `useg checkpoints clean --replaced` removes such folders)")
    if existing.resumable:
        say(console, f"{folder} already holds a run ({describe_latest(folder)}).")
        say(console, "  r  resume it (as option 2)\n" + afresh)
        choices, prompt = {"r": "resume", "o": "overwrite"}, "Resume, overwrite, or Enter to go back? [r/o] "
    else:
        say(console, f"{folder} holds {', '.join(path.name for path in existing.files)} but no checkpoint to resume "
                     "from.")
        say(console, afresh)
        choices, prompt = {"o": "overwrite"}, "Overwrite, or Enter to go back? [o] "

    def parse(answer: str) -> str:
        if answer.lower() not in choices:
            raise ValueError(f"Type {', '.join(choices)}, or Enter to go back (got {answer!r}).")
        return choices[answer.lower()]

    return ask_until_valid(prompt, parse, console)


def describe_latest(folder: Path) -> str:
    from useg.checkpoint import list_checkpoints
    latest = next((info for info in list_checkpoints(folder) if info.name == LATEST_NAME), None)
    if latest is None or latest.epoch is None:
        return f"{len(checkpoint_files(folder))} checkpoint file(s)"
    batch, batches = manage.batch_position(latest)
    return f"latest: {position_text(latest.epoch, batch or 0, batches, latest.total_epochs)}"


def ask_run_settings(console: Console) -> list[str]:
    """The flags of a new run: a config file, then each of RUN_QUESTIONS (Enter keeps the shown value)."""
    from useg.config import read_config_file

    config_file = ask_until_valid("Config file, YAML or TOML with the flags' keys (Enter for none): ",
                                  lambda path: (path, read_config_file(path)), console)
    arguments, file_layer = (["--config", config_file[0]], config_file[1]) if config_file else ([], {})
    answers: dict[str, Any] = {}
    for key, flag, question in RUN_QUESTIONS:
        if key == "label" and answers.get("data") is None and file_layer.get("data") is None:
            continue  # the embedded set has no label maps
        shown = shown_value(key, file_layer)
        value = ask_until_valid(f"{question} (Enter: {shown}): ",
                                lambda text: checked_setting(key, text, file_layer, answers), console)
        if value is not None:
            answers[key] = value
            arguments += [flag, ",".join(value) if isinstance(value, list) else str(value)]
    return arguments


def shown_value(key: str, file_layer: dict[str, Any]) -> str:
    """What Enter keeps for `key`: the config file's value, else the default, in words when unset."""
    from useg.config import TrainConfig

    value = file_layer[key] if file_layer.get(key) is not None else getattr(TrainConfig(), key)
    if value is None:
        return UNSET_MEANS[key]
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)


def checked_setting(key: str, text: str, file_layer: dict[str, Any], answers: dict[str, Any]) -> Any:
    """One answer as the config holds it, checked alone and with the answers so far (e.g. an image
    size the model's levels divide); a ConfigError names the flag and the rule."""
    from useg.config import build_config, check_value

    if key == "data":
        if not Path(text).expanduser().is_dir():
            raise ValueError(f"{text} is not a folder; give the folder that holds your images "
                             "(Enter for the synthetic set)")
        text = str(Path(text).expanduser())  # no shell expands ~ for the training process
    value = text
    if key in INTEGER_KEYS:
        try:
            value = int(text)
        except ValueError:
            pass  # check_value names the rule
    value = check_value(key, value)
    build_config(file_layer, answers, {key: value})
    return value


# --- 2 and 3: resuming ------------------------------------------------------------------------


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

    total = ask_until_valid(f"Total epochs ({keep}): ", parse, console)
    total = total or (str(planned) if planned else None)
    return ["--epochs", total] if total else []


def resume_latest(run_dir: str, console: Console) -> None:
    manage.run_checkpoints(run_dir)  # a clear error when there is nothing to resume
    run_useg(["resume", "latest", "--run-dir", run_dir, *ask_total_epochs(run_dir, console)])


def resume_specific(run_dir: str, console: Console) -> None:
    """Choose among the files that can resume the run; going back to an older one says what it leaves behind."""
    points = resumable_points(run_dir, console)
    number = ask_number_from([point.info for point in points], console)
    if number is None:
        return
    chosen = points[number]
    if not confirm_going_back(points, chosen, console):
        console.print("Nothing started.")
        return
    run_useg(["resume", str(chosen.path), "--run-dir", run_dir, *ask_total_epochs(run_dir, console)])


def resumable_points(run_dir: str, console: Console) -> list[ResumePoint]:
    """Show the run's resume points that can be used (valid, or not hashed yet: resume hashes them),
    in the order resume tries them; name what is left out and why, best_model.pt included."""
    infos = manage.run_checkpoints(run_dir)
    points = resume_points(checkpoints_folder(run_dir), infos)
    usable = [point for point in points if point.info.valid or point.info.status == "unchecked"]
    for point in points:
        if point not in usable:
            say(console, f"  not listed: {point.info.name} is not valid ({point.info.reason})")
    if not usable:
        raise CheckpointError(f"no checkpoint in {Path(run_dir) / 'checkpoints'} can resume the run; "
                              "see why with: useg checkpoints verify --run-dir " + run_dir)
    console.print(display.list_table([point.info for point in usable], "Checkpoints that can resume the run"))
    for info in infos:
        if info.name == BEST_NAME:
            say(console, f"  best: {BEST_NAME} (epoch {info.epoch}, val Dice {display.format_number(info.val_dice)}) "
                          "holds weights only and cannot resume; use it with evaluate, predict, export or "
                          "a new run's --pretrained")
    return usable


def confirm_going_back(points: list[ResumePoint], chosen: ResumePoint, console: Console) -> bool:
    """True when nothing newer is left behind, or the user agrees after reading what is."""
    behind = left_behind(points, chosen)
    if not behind:
        return True
    say(console, f"Going back to {chosen.info.name} (epoch {chosen.info.epoch}) leaves newer saves behind:")
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
        say(console, f"  {info.name} ({where}): {fate}")
    return yes(f"Go back to epoch {chosen.info.epoch}? [y/N] ")


# --- 4 to 6 ------------------------------------------------------------------------------------


def ask_number_from(items: list, console: Console) -> int | None:
    """The index the user chooses in a numbered list (asked again until it is one), None on Enter."""
    def parse(answer: str) -> int:
        if not answer.isdigit() or not 1 <= int(answer) <= len(items):
            raise ValueError(f"No checkpoint number {answer!r}; type 1-{len(items)}, or Enter to go back.")
        return int(answer) - 1

    return ask_until_valid(f"Checkpoint number (1-{len(items)}, Enter to go back): ", parse, console)


def view_info(run_dir: str, console: Console) -> None:
    infos = manage.run_checkpoints(run_dir)
    console.print(display.list_table(infos, "Checkpoints"))
    number = ask_number_from(infos, console)
    if number is not None:
        say(console, "\n".join(display.info_lines(manage.describe(infos[number].path, run_dir))))


def clean_old(run_dir: str, console: Console) -> None:
    """Ask N, show what would go, and remove it only after a yes; then the same for set-aside runs."""
    def parse(answer: str) -> int:
        if not answer.isdigit() or int(answer) < 1:
            raise ValueError(f"Please give a whole number of at least 1 (got {answer!r}), or Enter to go back.")
        return int(answer)

    keep = ask_until_valid("Keep how many periodic checkpoints? ", parse, console)
    if keep is None:
        return
    clean_periodic(run_dir, keep, console)
    clean_set_aside(run_dir, console)


def clean_periodic(run_dir: str, keep: int, console: Console) -> None:
    plan, freed = manage.clean_with_plan(run_dir, keep, dry_run=True)
    doomed = plan.remove
    for line in display.clean_notes(plan):  # a damaged latest, files left in place, the fallback kept
        say(console, f"  {line}")
    if not doomed:
        console.print("Nothing to remove.")
        return
    for info in doomed:
        say(console, f"  will remove {info.name}")
    if not yes(f"Remove these {len(doomed)} file(s), freeing {display.format_size(freed)}? [y/N] "):
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
        say(console, line)
    size = display.format_size(sum(folder.size_bytes for folder in folders))
    if not yes(f"Also remove these {len(folders)} folder(s) that --overwrite set aside, freeing {size}? [y/N] "):
        console.print("Set-aside folders kept.")
        return
    removed = manage.clean_replaced(run_dir, dry_run=False)
    console.print(f"Removed {len(removed)} set-aside folder(s).")


def yes(prompt: str) -> bool:
    return ask(prompt).lower() in ("y", "yes")


def show_history(run_dir: str, console: Console) -> None:
    from useg.training.history import history_table, plot_curves

    history = manage.run_history(run_dir)
    console.print(history_table(history))
    # A curves file that cannot be written is a UsegError: run_menu prints it and shows the menu again.
    curves = plot_curves(history, Path(run_dir) / "training_curves.png", then="choose 6 again")
    say(console, f"curves saved to {curves}")

"""Option 1 of `useg menu`: start a new training run (the run folder, what to do with a run already there,
the settings, then the `useg train` command, started only after a yes)."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from rich.console import Console

from useg.checkpoint import LATEST_NAME, checkpoint_files
from useg.cli import checkpoint_actions as manage
from useg.cli import menu_prompts as prompts
from useg.cli import menu_resume as resume
from useg.cli.menu_run_settings import (RUN_QUESTIONS, SYNTHETIC, RunSettings, data_folders, describe_datasets,
                                        flags_carry, previous_settings)
from useg.errors import DataError
from useg.run_folder import checkpoints_folder, existing_run
from useg.training.progress import position_text


def start_training(run_dir: str, console: Console) -> None:
    """Ask for the run folder, then (when it holds a run) resume it or set it aside, then the settings;
    show the `useg train` command and start it only after a yes."""
    folder = ask_run_folder(run_dir, console)
    overwrite, previous = False, {}
    if existing_run(folder).files:
        decision = ask_about_existing_run(folder, console)
        if decision == "resume":
            resume.resume_latest(folder, console)
            return
        if decision != "overwrite":
            return
        overwrite, previous = True, previous_settings(checkpoints_folder(folder))
    arguments = ["train", "--run-dir", folder, *ask_run_settings(console, previous)]
    arguments += ["--overwrite"] if overwrite else []
    if not confirm_start(arguments, folder, overwrite, console):
        prompts.say(console, "Nothing started"
                    + (f"; {checkpoints_folder(folder)} is as it was." if overwrite else "."))
        return
    prompts.run_useg(arguments, echo=False)


def ask_run_folder(run_dir: str, console: Console) -> str:
    """The folder the new run trains into; Enter: the menu's run folder."""
    def parse(answer: str) -> str:
        path = Path(answer).expanduser()  # no shell expands ~ for the training process
        if path.exists() and not path.is_dir():
            raise ValueError(f"{answer} is a file; give a folder for the run (it is created when missing)")
        return str(path)

    return prompts.ask_until_valid(f"Run folder (Enter: {run_dir}): ", parse, console) or run_dir


def ask_about_existing_run(run_dir: str, console: Console) -> str | None:
    """'resume', 'overwrite' or None (go back), asked before any setting; resume only when it can."""
    existing = existing_run(run_dir)
    folder = existing.folder
    afresh = ("  o  start afresh: move its checkpoints and pictures to checkpoints_replaced_<time>/ "
              "(nothing is deleted; `useg checkpoints clean --replaced` removes such folders); "
              "its settings are the defaults and you confirm the command first")
    if existing.resumable:
        prompts.say(console, f"{folder} already holds a run ({describe_latest(folder)}).")
        prompts.say(console, "  r  resume it (as option 2)\n" + afresh)
        choices, prompt = {"r": "resume", "o": "overwrite"}, "Resume, overwrite, or Enter to go back? [r/o] "
    else:
        prompts.say(console, f"{folder} holds {', '.join(path.name for path in existing.files)} but no checkpoint "
                             "to resume from.")
        prompts.say(console, afresh)
        choices, prompt = {"o": "overwrite"}, "Overwrite, or Enter to go back? [o] "

    def parse(answer: str) -> str:
        if answer.lower() not in choices:
            raise ValueError(f"Type {', '.join(choices)}, or Enter to go back (got {answer!r}).")
        return choices[answer.lower()]

    return prompts.ask_until_valid(prompt, parse, console)


def describe_latest(folder: Path) -> str:
    from useg.checkpoint import list_checkpoints
    latest = next((info for info in list_checkpoints(folder) if info.name == LATEST_NAME), None)
    if latest is None or latest.epoch is None:
        return f"{len(checkpoint_files(folder))} checkpoint file(s)"
    batch, batches = manage.batch_position(latest)
    return f"latest: {position_text(latest.epoch, batch or 0, batches, latest.total_epochs)}"


def ask_run_settings(console: Console, previous: dict[str, Any] | None = None) -> list[str]:
    """The flags of a new run: a config file, then each of RUN_QUESTIONS (Enter keeps the shown value;
    `previous`: the replaced run's settings, the defaults when starting afresh in a run folder)."""
    from useg.config import build_config, read_config_file

    data = (previous or {}).get("data")
    if not flags_carry(data):  # say it before the question that can keep them
        prompts.say(console, f"The replaced run trained on {describe_datasets(data)}; their own weights or options "
                             "exist only in a config file's data list: give that config file to keep them.")
    config_file = prompts.ask_until_valid("Config file, YAML or TOML with the flags' keys (Enter for none): ",
                                          lambda path: (path, read_config_file(path)), console)
    arguments, file_layer = (["--config", config_file[0]], config_file[1]) if config_file else ([], {})
    settings = RunSettings(file_layer, previous or {})
    for key, question in RUN_QUESTIONS:
        if key == "data":
            ask_data(settings, console)
            continue
        if key == "label" and not settings.label_applies():
            continue  # the data's masks are binary (or not masks at all): no values to pick
        value = prompts.ask_until_valid(f"{settings.question(key, question)} (Enter: {settings.shown(key)}): ",
                                        lambda text: settings.check(key, text), console)
        if value is not None:
            settings.answers[key] = value
    build_config(*settings.layers())  # the whole run, checked before its command is shown
    refuse_missing_held_out(settings.current("held_out_data"))
    left = settings.without_flag()
    if left:
        prompts.say(console, f"Not kept from the replaced run (config-file keys, no flag): {'; '.join(left)}; put "
                             "them in a config file to keep them.")
    return arguments + settings.flags()


def refuse_missing_held_out(held_out_data: list) -> None:
    """A held-out folder gone would fail the run only after --overwrite has set the replaced run aside."""
    for folder in data_folders(held_out_data):
        if not Path(folder).expanduser().is_dir():
            raise DataError(f"held-out dataset {folder} is not a folder; nothing started. Give the held-out datasets "
                            "in a config file's held_out_data ([] for none)")


def ask_data(settings: RunSettings, console: Console) -> None:
    """The data question: one folder (a one-dataset run), SYNTHETIC, or Enter, which keeps the shown data
    (one folder or several datasets) while flags or the config file can give it and its folders are there."""
    data = settings.current("data")
    offer = f"Enter: {settings.shown('data')}"
    if settings.kept.get("data") is not None and not flags_carry(data):
        offer = f"the replaced run's {describe_datasets(data)} need a config file; give a folder"
    elif isinstance(data, list):
        offer += "; or one folder instead"
    other = "" if data is None else f"; {SYNTHETIC}: the embedded set"
    while True:
        answer = prompts.ask_until_valid(f"Data folder ({offer}{other}): ", settings.check_data, console)
        problem = settings.data_left_behind() if answer is None else None
        if problem:
            prompts.say(console, problem)
            continue
        settings.settle_data(answer)
        return


def confirm_start(arguments: list[str], folder: str, overwrite: bool, console: Console) -> bool:
    """Show the exact command; Enter starts a run in a fresh folder, setting a run aside takes a typed y."""
    prompts.say(console, "The run starts with:\n$ " + shlex.join(["useg", *arguments]))  # can be pasted into a shell
    if not overwrite:
        return prompts.ask("Start it? [Y/n] ").lower() in ("", "y", "yes")
    prompts.say(console, f"It first moves the run in {checkpoints_folder(folder)} (checkpoints and pictures) to "
                         f"{Path(folder) / 'checkpoints_replaced_<time>'}/; nothing is deleted.")
    return prompts.yes("Set that run aside and start? [y/N] ")

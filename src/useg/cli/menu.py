"""The interactive training manager (`useg menu`): the original scripts' numbered menu over the same library."""

from __future__ import annotations

import shlex
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable

from rich.console import Console
from rich.markup import escape

from useg.cli import checkpoint_actions as manage
from useg.checkpoint import BEST_NAME, LATEST_NAME, ResumePoint, checkpoint_files, left_behind, resume_points
from useg.cli import display
from useg.errors import CheckpointError, DataError, UsegError
from useg.run_folder import checkpoints_folder, existing_run, replaced_folders
from useg.training.progress import position_text

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
               "5": clean_old, "6": show_history, "7": list_all,
               "8": compare_runs}
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
            say(console, f"Unknown option {choice!r}; type 1-{len(actions)} or q.")
            continue
        try:
            actions[choice](run_dir, console)
        except UsegError as err:
            say(console, f"error: {err}")  # one line, however long
        except KeyboardInterrupt:
            console.print("\ncancelled")  # Ctrl+C inside an option goes back to the menu, not out of it
        except EndOfInput:
            return 0


def run_useg(arguments: list[str], echo: bool = True) -> int:
    """Run training as a child process, so Ctrl+C there stops training, not the menu; `echo`: print the
    command first (option 1 has shown it already, to confirm it)."""
    if echo:
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

# What option 1 asks after the run folder and an optional config file: (config key, question). Enter keeps
# the value shown: the config file's, else the replaced run's (starting afresh in a run folder), else
# TrainConfig's default.
RUN_QUESTIONS = (
    ("data", "Data folder"),
    ("classes", "Classes to train on, comma-separated"),
    ("label", "Label-map masks: the mask value(s) to train, e.g. 255 or 128,255"),
    ("epochs", "Epochs"),
    ("widths", "Channels per level (--widths), comma-separated"),
    ("image_size", "Image size in pixels (square)"),
    ("support_size", "Support images per target"),
    ("batch_size", "Batch size (targets per step)"),
    ("lr", "Learning rate"),
)
QUESTION_KEYS = tuple(key for key, _ in RUN_QUESTIONS)
INTEGER_KEYS = frozenset({"epochs", "image_size", "support_size", "batch_size"})
FLOAT_KEYS = frozenset({"lr"})
UNSET_MEANS = {"data": "the embedded synthetic set", "classes": "all", "label": "every value"}
SYNTHETIC = "synthetic"  # the answer to the data question that chooses the embedded set over the run's data
# A new run in a run folder also keeps the replaced run's recipe (the command shows it), not what each
# machine or session chooses for itself (threads, device, precision, workers, output) ...
RECIPE_KEYS = ("loss", "seed", "samples_per_epoch", "min_lr_ratio", "split_fractions", "periodic_percentages",
               "vis_every", "vis_count", "save_every_steps", "save_every_minutes", "save_budget")
# ... and, while its data stays the run's data, the settings that describe that data (data_keys()): its
# options, its split and the held-out datasets it is scored beside (another data folder may be one of them).
LABEL_SAMPLE = 4  # masks read to tell label maps from binary masks before asking for --label
DATASET_LIST_KEYS = ("data", "held_out_data")  # several datasets: one flag each, --data A --data B


def data_keys() -> tuple[str, ...]:
    from useg.data.loading import DATA_OPTION_KEYS

    return ("data", *DATA_OPTION_KEYS, "split_file", "held_out_data", "best_metric")


def start_training(run_dir: str, console: Console) -> None:
    """Ask for the run folder, then (when it holds a run) resume it or set it aside, then the settings;
    show the `useg train` command and start it only after a yes."""
    folder = ask_run_folder(run_dir, console)
    overwrite, previous = False, {}
    if existing_run(folder).files:
        decision = ask_about_existing_run(folder, console)
        if decision == "resume":
            resume_latest(folder, console)
            return
        if decision != "overwrite":
            return
        overwrite, previous = True, previous_settings(checkpoints_folder(folder))
    arguments = ["train", "--run-dir", folder, *ask_run_settings(console, previous)]
    arguments += ["--overwrite"] if overwrite else []
    if not confirm_start(arguments, folder, overwrite, console):
        say(console, "Nothing started" + (f"; {checkpoints_folder(folder)} is as it was." if overwrite else "."))
        return
    run_useg(arguments, echo=False)


def ask_run_folder(run_dir: str, console: Console) -> str:
    """The folder the new run trains into; Enter: the menu's run folder."""
    def parse(answer: str) -> str:
        path = Path(answer).expanduser()  # no shell expands ~ for the training process
        if path.exists() and not path.is_dir():
            raise ValueError(f"{answer} is a file; give a folder for the run (it is created when missing)")
        return str(path)

    return ask_until_valid(f"Run folder (Enter: {run_dir}): ", parse, console) or run_dir


def ask_about_existing_run(run_dir: str, console: Console) -> str | None:
    """'resume', 'overwrite' or None (go back), asked before any setting; resume only when it can."""
    existing = existing_run(run_dir)
    folder = existing.folder
    afresh = ("  o  start afresh: move its checkpoints and pictures to checkpoints_replaced_<time>/ "
              "(nothing is deleted; `useg checkpoints clean --replaced` removes such folders); "
              "its settings are the defaults and you confirm the command first")
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


def previous_settings(folder: Path) -> dict[str, Any]:
    """What the run in `folder` was trained with, as far as a new run there keeps it: the config of its
    newest save (read from the sidecar, no tensors), else of any file that has one (a lone best_model.pt)."""
    from useg.checkpoint import list_checkpoints
    from useg.config import config_keys

    infos = list_checkpoints(folder)
    newest_first = [point.info for point in resume_points(folder, infos)] + infos[::-1]
    saved = next((info.config for info in newest_first if info.config), {})
    wanted = {*QUESTION_KEYS, *RECIPE_KEYS, *data_keys()} & set(config_keys())
    return {key: value for key, value in saved.items() if key in wanted and value is not None}


class RunSettings:
    """Option 1's answers over what Enter keeps: the config file's values, else the replaced run's
    (`kept`: none in a fresh folder), else TrainConfig's defaults."""

    def __init__(self, file_layer: dict[str, Any], previous: dict[str, Any]) -> None:
        from useg.config import FILE_ONLY_KEYS

        self.file_layer = file_layer
        self.previous_data = previous.get("data")  # what the kept data settings describe
        self.kept = {key: value for key, value in previous.items() if file_layer.get(key) is None}
        # What no flag carries is not kept (the command is the whole run): the file-only keys, and held-out
        # datasets with their own options (best_metric held_out_dice goes with them: it needs them).
        self.not_kept = {key: self.kept.pop(key) for key in list(self.kept)
                         if key in FILE_ONLY_KEYS or key == "held_out_data" and not flags_carry(self.kept[key])}
        if "held_out_data" in self.not_kept and self.kept.get("best_metric") == "held_out_dice":
            self.not_kept["best_metric"] = self.kept.pop("best_metric")
        self.answers: dict[str, Any] = {}

    def layers(self) -> tuple[dict[str, Any], ...]:
        return self.kept, self.file_layer, self.answers  # kept and file_layer share no key

    def current(self, key: str) -> Any:
        from useg.config import TrainConfig

        for layer in reversed(self.layers()):
            if layer.get(key) is not None:
                return layer[key]
        return getattr(TrainConfig(), key)

    def shown(self, key: str) -> str:
        value = self.current(key)
        if value is None:
            return UNSET_MEANS[key]
        return describe_datasets(value) if key == "data" else display.flag_text(value)

    def check(self, key: str, text: str) -> Any:
        """One answer as the config holds it, checked alone and with the answers so far (e.g. an image
        size the model's levels divide); a ConfigError names the flag and the rule."""
        from useg.config import build_config, check_value

        value: Any = text
        try:
            value = int(text) if key in INTEGER_KEYS else float(text) if key in FLOAT_KEYS else text
        except ValueError:
            pass  # check_value names the rule
        value = check_value(key, value)
        build_config(*self.layers(), {key: value})
        return value

    def check_data(self, text: str) -> str:
        """A data folder in a layout useg reads, or SYNTHETIC."""
        from useg.config import dataset_folders
        from useg.data.loading import ACCEPTED_LAYOUTS

        if text.lower() == SYNTHETIC:
            if self.file_layer.get("data") is not None:
                raise ValueError(f"the config file sets data: {describe_datasets(self.file_layer['data'])}; give a "
                                 "data folder, or leave data out of the config file for the synthetic set")
            return SYNTHETIC
        root = Path(text).expanduser()  # no shell expands ~ for the training process
        if not root.is_dir():
            other = "Enter for the synthetic set" if self.current("data") is None else f"{SYNTHETIC}: the embedded set"
            raise ValueError(f"{text} is not a folder; give the folder that holds your images ({other})")
        if data_layout(root, self.current("annotations")) is None:
            raise ValueError(f"{text} holds no data useg reads; expected {ACCEPTED_LAYOUTS}")
        # The replaced run's held-out datasets go with its data (settle_data); the config file's stay.
        if dataset_folders(str(root))[0] in dataset_folders(self.file_layer.get("held_out_data") or []):
            raise ValueError(f"{text} is held out by the config file (held_out_data): a run never trains on its "
                             "held-out datasets; give another folder")
        return str(root)

    def settle_data(self, answer: str | None) -> None:
        """Record the data answer; data other than the replaced run's (other folders, or another number of
        them) drops what described its data."""
        if answer == SYNTHETIC:
            now = None
        elif answer is not None:
            self.answers["data"] = now = answer
        else:
            now = self.current("data")
        if not same_data(self.previous_data, now):
            for key in data_keys():
                self.kept.pop(key, None)

    def data_left_behind(self) -> str | None:
        """Why Enter cannot keep the data shown (a folder gone, or datasets with their own settings that
        only a config file carries); None when it can."""
        data = self.current("data")
        if self.kept.get("data") is not None and not flags_carry(data):
            return (f"Enter cannot keep the replaced run's {describe_datasets(data)}: their own weights or options "
                    "exist only in a config file's data list; give a data folder or synthetic, or press Ctrl+C "
                    "and start again with that config file")
        folders = data_folders(data)
        for number, folder in enumerate(folders, 1):
            if not Path(folder).expanduser().is_dir():
                which = f" (dataset {number} of {len(folders)})" if len(folders) > 1 else ""
                return (f"{folder}{which} is not a folder any more; give the data folder, or {SYNTHETIC} for the "
                        "embedded set")
        return None

    def label_applies(self) -> bool:
        """--label picks mask values: asked for images/ + masks/ data whose masks hold several values (in
        any dataset that does not pick its own), or where the run or config file picked some."""
        from useg.data.collection import entries

        if self.current("label") is not None:
            return True
        found = entries(self.current("data"), {"annotations": self.current("annotations")})
        return any(entry.path is not None and entry.options.get("label") is None
                   and several_mask_values(Path(entry.path).expanduser(), entry.options.get("annotations"))
                   for entry in found)

    def question(self, key: str, text: str) -> str:
        """RUN_QUESTIONS' text; with several datasets, --label applies to each that picks no values of its own."""
        data = self.current("data")
        if key != "label" or not isinstance(data, list):
            return text
        own = any("label" in own_settings(entry) for entry in data)
        return text + (", in every dataset without its own label" if own else ", in every dataset")

    def flags(self) -> list[str]:
        """Each answer as its flag, and each kept value that `useg train` would not use without one."""
        from useg.config import FILE_ONLY_KEYS, TrainConfig

        default = TrainConfig()
        arguments = []
        for key in (*QUESTION_KEYS, *(key for key in self.kept if key not in QUESTION_KEYS)):
            value = self.answers.get(key)
            if value is None:
                value = self.kept.get(key)
                if value is None or value == getattr(default, key):
                    continue
            if key in FILE_ONLY_KEYS:
                continue
            flag = key.replace("_", "-")
            if isinstance(value, bool):  # a switch: --compile / --no-compile
                arguments.append(f"--{flag}" if value else f"--no-{flag}")
            elif key in DATASET_LIST_KEYS and isinstance(value, list):
                for folder in value:  # plain folders: flags_carry, checked before (init, data_left_behind)
                    arguments += [f"--{flag}", folder]
            else:
                arguments += [f"--{flag}", display.flag_text(value)]
        return arguments

    def without_flag(self) -> list[str]:
        """The replaced run's values that no flag carries (not_kept): `key value` each; those describing its
        data only while the new run trains on that data (other data drops them anyway)."""
        from useg.config import TrainConfig

        default = TrainConfig()
        other_data = not same_data(self.previous_data, self.current("data"))
        return [f"{key} {describe_datasets(value) if key in DATASET_LIST_KEYS else display.flag_text(value)}"
                for key, value in self.not_kept.items()
                if value != getattr(default, key) and not (other_data and key in data_keys())]


def data_folders(data: Any) -> list[str]:
    """The folder of each dataset a `data` or `held_out_data` value names, in order (none: the embedded set)."""
    from useg.data.collection import data_paths

    return [] if data is None else [path for path in data_paths(data) if path is not None]


def same_data(a: Any, b: Any) -> bool:
    """Whether two `data` values name the same folders in the same order (however each path is written)."""
    from useg.config import dataset_folders

    return dataset_folders(a) == dataset_folders(b)


def own_settings(entry: Any) -> dict[str, Any]:
    """What one entry of a dataset list sets for its own dataset besides its folder (weight, label, ...)."""
    return {key: value for key, value in entry.items() if key != "path"} if isinstance(entry, Mapping) else {}


def flags_carry(data: Any) -> bool:
    """Whether flags can give a `data` or `held_out_data` value: one folder, or a list of plain folders
    (repeated flags); a dataset's own weight or options exist only in a config file's list."""
    return not isinstance(data, list) or not any(own_settings(entry) for entry in data)


def describe_datasets(data: Any) -> str:
    """One folder as it is; a list as `2 datasets: /a (weight 3), /b`."""
    if not isinstance(data, list):
        return str(data)

    def one(entry: Any) -> str:
        own = own_settings(entry)
        folder = entry["path"] if isinstance(entry, Mapping) else entry
        settings = ", ".join(f"{key} {display.flag_text(value)}" for key, value in own.items())
        return f"{folder} ({settings})" if own else str(folder)

    return f"{len(data)} dataset{'s' if len(data) != 1 else ''}: " + ", ".join(map(one, data))


def data_layout(root: Path, annotations: str | None = None) -> str | None:
    """The layout `load_dataset` reads `root` as, told from its folders alone (in load_dataset's order)."""
    from useg.data import folders, mmotu, ovatus

    if ovatus.is_ovatus(root, annotations):
        return "Ovatus"
    if folders.is_folders(root):
        return "images/ + masks/"
    return "MMOTU" if mmotu.find_mmotu(root) is not None else None


def several_mask_values(root: Path, annotations: str | None = None) -> bool:
    """Whether images/ + masks/ data holds label or instance maps (values --label can pick), judged as
    loading judges the whole mask folder, from its first LABEL_SAMPLE masks so that asking stays quick."""
    from useg.data import folders, labels

    if data_layout(root, annotations) != "images/ + masks/":
        return False
    try:
        survey = labels.MaskSurvey()
        for key, path in list(folders.images_by_stem(root / "masks", "masks", recursive=True).items())[:LABEL_SAMPLE]:
            values, soft = folders.read_mask_volume(path, key)
            survey.add(values, key, soft)
        return labels.plan_classes(survey, None, {}, str(root / "masks")).kind in ("label map", "instances")
    except UsegError:
        return False  # training names what is wrong with the masks


def ask_run_settings(console: Console, previous: dict[str, Any] | None = None) -> list[str]:
    """The flags of a new run: a config file, then each of RUN_QUESTIONS (Enter keeps the shown value;
    `previous`: the replaced run's settings, the defaults when starting afresh in a run folder)."""
    from useg.config import build_config, read_config_file

    data = (previous or {}).get("data")
    if not flags_carry(data):  # say it before the question that can keep them
        say(console, f"The replaced run trained on {describe_datasets(data)}; their own weights or options exist "
                     "only in a config file's data list: give that config file to keep them.")
    config_file = ask_until_valid("Config file, YAML or TOML with the flags' keys (Enter for none): ",
                                  lambda path: (path, read_config_file(path)), console)
    arguments, file_layer = (["--config", config_file[0]], config_file[1]) if config_file else ([], {})
    settings = RunSettings(file_layer, previous or {})
    for key, question in RUN_QUESTIONS:
        if key == "data":
            ask_data(settings, console)
            continue
        if key == "label" and not settings.label_applies():
            continue  # the data's masks are binary (or not masks at all): no values to pick
        value = ask_until_valid(f"{settings.question(key, question)} (Enter: {settings.shown(key)}): ",
                                lambda text: settings.check(key, text), console)
        if value is not None:
            settings.answers[key] = value
    build_config(*settings.layers())  # the whole run, checked before its command is shown
    refuse_missing_held_out(settings.current("held_out_data"))
    left = settings.without_flag()
    if left:
        say(console, f"Not kept from the replaced run (config-file keys, no flag): {'; '.join(left)}; put them in a "
                     "config file to keep them.")
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
        answer = ask_until_valid(f"Data folder ({offer}{other}): ", settings.check_data, console)
        problem = settings.data_left_behind() if answer is None else None
        if problem:
            say(console, problem)
            continue
        settings.settle_data(answer)
        return


def confirm_start(arguments: list[str], folder: str, overwrite: bool, console: Console) -> bool:
    """Show the exact command; Enter starts a run in a fresh folder, setting a run aside takes a typed y."""
    say(console, "The run starts with:\n$ " + shlex.join(["useg", *arguments]))  # can be pasted into a shell
    if not overwrite:
        return ask("Start it? [Y/n] ").lower() in ("", "y", "yes")
    say(console, f"It first moves the run in {checkpoints_folder(folder)} (checkpoints and pictures) to "
                 f"{Path(folder) / 'checkpoints_replaced_<time>'}/; nothing is deleted.")
    return yes("Set that run aside and start? [y/N] ")


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

    chosen = ask_until_valid(f"Resume from checkpoint number ({choices}; Enter to go back): ", parse, console)
    if chosen is None:
        return
    if not confirm_going_back(points, chosen, console):
        console.print("Nothing started.")
        return
    run_useg(["resume", str(chosen.path), "--run-dir", run_dir, *ask_total_epochs(run_dir, console)])


def resumable_points(run_dir: str, console: Console) -> tuple[list[ResumePoint], dict[Path, int]]:
    """Show the run's checkpoints numbered as every listing numbers them, then which can resume the run
    (valid, or not hashed yet: resume hashes them) in the order resume tries them, and why the others
    cannot, best_model.pt included. Returns those points and each listed file's number."""
    infos = show_checkpoints(run_dir, console)
    numbers = {info.path: number for number, info in enumerate(infos, 1)}
    points = resume_points(checkpoints_folder(run_dir), infos)
    usable = [point for point in points if point.info.valid or point.info.status == "unchecked"]
    for point in points:
        if point not in usable:
            info = point.info
            say(console, f"  {numbers[info.path]}  {info.name} cannot resume: not valid ({info.reason})")
    for info in infos:
        if info.name == BEST_NAME:
            say(console, f"  {numbers[info.path]}  {BEST_NAME} (epoch {info.epoch}, val Dice "
                         f"{display.format_number(info.val_dice)}) holds weights only and cannot resume; use it with "
                         "evaluate, predict, export or a new run's --pretrained")
    if not usable:
        raise CheckpointError(f"no checkpoint in {Path(run_dir) / 'checkpoints'} can resume the run; "
                              "see why with: useg checkpoints verify --run-dir " + run_dir)
    say(console, "Can resume the run, in the order `useg resume latest` tries them: "
                 + ", ".join(f"{numbers[point.info.path]} {point.info.name}" for point in usable))
    return usable, numbers


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


# --- 4 to 7 ------------------------------------------------------------------------------------


def ask_number_from(items: list, console: Console) -> int | None:
    """The index the user chooses in a numbered list (asked again until it is one), None on Enter."""
    def parse(answer: str) -> int:
        if not answer.isdigit() or not 1 <= int(answer) <= len(items):
            raise ValueError(f"No checkpoint number {answer!r}; type 1-{len(items)}, or Enter to go back.")
        return int(answer) - 1

    return ask_until_valid(f"Checkpoint number (1-{len(items)}, Enter to go back): ", parse, console)


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
        say(console, "\n".join(display.info_lines(manage.describe(infos[number].path, run_dir))))


def list_all(run_dir: str, console: Console) -> None:
    """Option 7: what `useg checkpoints list` prints, the folders --overwrite set aside included."""
    show_checkpoints(run_dir, console)
    for line in display.replaced_lines(replaced_folders(run_dir), run_dir):
        say(console, line)


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


def compare_runs(run_dir: str, console: Console) -> None:
    """`useg runs compare` of this run and the folders the user names: the table, and compare.png in this run."""
    from useg.cli.runs import compare_runs as compare, compare_table, save_compare_picture

    answer = ask("Other run folders to compare with this one (separated by spaces): ")
    try:
        others = shlex.split(answer)  # a folder with spaces is typed in quotes, as in a shell
    except ValueError as err:
        raise UsegError(f"cannot read those folders ({err}); put a folder with spaces in quotes") from None
    comparison = compare([Path(run_dir), *map(Path, others)])
    console.print(compare_table(comparison))
    picture = save_compare_picture(comparison["runs"], Path(run_dir) / "compare.png")
    say(console, f"picture saved to {picture}")

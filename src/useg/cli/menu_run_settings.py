"""Option 1's settings (`useg menu`): the questions it asks, what Enter keeps (the config file's values,
the replaced run's, TrainConfig's defaults), each answer checked, and the `useg train` flags they become."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from useg.checkpoint import resume_points
from useg.cli import display
from useg.errors import UsegError


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

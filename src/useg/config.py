"""The training configuration: defaults < config file (YAML/TOML) < command-line flags."""

from __future__ import annotations

import dataclasses
import math
import os
import re
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from useg.errors import ConfigError

# The values of the choice settings, for the rules below and the command line's choices (torch-free:
# useg.compute.precision maps each precision to its dtype, useg.compute.device reads the device).
LOSSES = ("dice", "dice+bce")
# Where a useg checkpoint or .pt export keeps the model's weights (the original scripts' key): shared,
# torch-free, by training/state.py (which owns the other keys) and weights.py (which reads weights).
MODEL_WEIGHTS = "model_state_dict"
PRECISIONS = ("fp32", "bf16", "fp16")
RESIZE_MODES = ("squash", "pad")  # how images become the square input: useg.data.geometry
TRACKERS = ("tensorboard", "mlflow", "wandb")  # experiment trackers: useg.training.trackers
BEST_METRICS = ("val_dice", "held_out_dice")  # held_out_dice: the mean Dice over --held-out-data
# What an entry of a several-dataset `data` (or of `held_out_data`) may set for its own dataset;
# a flag (or top-level config key) of the same name applies to every dataset that does not set it.
DATASET_KEYS = ("annotations", "label", "classes", "class_names", "patient_pattern", "keep_empty", "slice_axis")
DEVICE_FORMAT = r"cpu|cuda(:[0-9]+)?"


@dataclass
class TrainConfig:
    """Everything a training run depends on; saved with every checkpoint."""

    # None: the embedded synthetic dataset; a path; or several datasets (useg.data.collection), each a path
    # or a mapping {path, weight, and its own data options}: one path stays a string, as runs always saved it.
    data: str | list | None = None
    annotations: str | None = None
    label: int | list[int] | None = None  # one value stays an int, as older runs saved it
    classes: list[str] | None = None
    class_names: dict[str, str] | None = None  # mask value (as text) -> class name
    patient_pattern: str | None = None
    keep_empty: float = 0.0
    slice_axis: int = 2
    held_out_data: list = field(default_factory=list)  # datasets never trained on, scored at every validation
    best_metric: str = "val_dice"  # one of BEST_METRICS: what makes an epoch best_model.pt
    # The in-context training recipe (useg.data.recipe): on (its defaults), off, or a mapping of its
    # settings over the defaults; a run saves the settings it resolved, so a resume draws the same.
    task_augmentation: bool | str | dict = True
    in_task_augmentation: bool | str | dict = True
    synthetic_tasks: float = 0.0  # share of training tasks drawn from useg.data.synthetic_tasks (0: measured, see recipe.ON)
    run_dir: str = "."
    epochs: int = 12
    batch_size: int = 4
    support_size: int = 4
    image_size: int = 64
    resize: str = "squash"  # one of RESIZE_MODES
    widths: list[int] = field(default_factory=lambda: [32, 32, 32, 32])
    lr: float = 3e-4  # the paper uses 1e-4; on the default 12-epoch run 3e-4 learns more (BENCHMARKS.md, "In-context")
    min_lr_ratio: float = 0.05
    loss: str = "dice+bce"  # one of LOSSES; BCE scores every pixel, which inverted tasks need (useg.data.recipe.ON)
    seed: int = 0
    samples_per_epoch: int = 512
    split_fractions: list[float] = field(default_factory=lambda: [0.6, 0.2, 0.2])
    split_file: str | None = None
    periodic_percentages: list[int] = field(default_factory=lambda: [20, 40, 60, 80, 100])
    vis_every: int = 1
    vis_count: int = 3
    save_every_steps: int = 0
    save_every_minutes: float = 0.0
    # Routine mid-epoch saves may cost at most this % of the training time (their stall, and the steps' time
    # beyond a typical step while one is written); a due save over it waits until the budget allows (0: no
    # budget). Per-step saves cost ~8-10% of a 2-core CPU epoch without it. The steps show about half of what a
    # write costs such a run (BENCHMARKS.md, per-step checkpoints), so 0.25 keeps it near 0.5%.
    save_budget: float = 0.25
    num_threads: int = 0  # 0: chosen from the cores this process may use (useg.compute.device.choose_threads); saved as chosen
    device: str | None = None  # None: CUDA when present, else the CPU; saved as chosen, chosen again on resume
    precision: str | None = None  # None: fp32 on the CPU, bf16 (else fp16) on CUDA; saved as chosen
    deterministic: bool = True  # exact resume is the promise; False after a start-up fallback too
    compile: bool = False
    data_workers: int | None = None  # threads building batches ahead; None: from the usable cores
    pretrained: str | None = None
    tensorboard: bool = False  # an alias: adds "tensorboard" to the trackers
    trackers: list[str] = field(default_factory=list)  # from TRACKERS; kept when the run is resumed
    tracker_upload_best: bool = False  # also give the trackers best_model.pt itself, not only its path and SHA-256
    quiet: bool = False
    # Recorded by the run, not a setting: False once a resume changed how the run computes
    # (COMPUTE_KEYS, the device type or the number of processes); later resumes carry it on.
    bit_identical: bool = True

    def to_dict(self) -> dict[str, Any]:
        """A plain, JSON- and weights_only-safe dict."""
        return dataclasses.asdict(self)


# Keys that may differ between the run that wrote a checkpoint and the one resuming it
# without changing what the model computes at each step. (`device` is chosen per session;
# a resume on another device type says that it is not bit-identical.)
HARMLESS_KEYS = frozenset(
    {"epochs", "run_dir", "vis_every", "vis_count", "save_every_steps", "save_every_minutes", "save_budget",
     "data_workers", "pretrained", "tensorboard", "quiet", "periodic_percentages", "device", "bit_identical",
     "trackers", "tracker_upload_best"}
)
# Keys that change the optimisation but not the model or the data: a resume may change them
# (e.g. a lower lr after divergence), with a warning, and the log's sessions record it.
RETUNABLE_KEYS = frozenset({"lr", "min_lr_ratio", "loss"})
# Keys that change a step's arithmetic (1 and 2 CPU threads already give other weights after one
# step): a resume keeps them from the checkpoint; a flag may change them, with a warning that the
# run continues correctly but not bit-identically to an uninterrupted one.
COMPUTE_KEYS = ("num_threads", "compile", "precision", "deterministic")
# What the run records about itself in its config: no flag, no config-file key.
RECORDED_KEYS = frozenset({"bit_identical"})
# Keys that checkpoints saved before the key existed lack, with the value those runs computed with.
OLDER_RUN_VALUES = {"resize": "squash", "task_augmentation": False, "in_task_augmentation": False,
                    "synthetic_tasks": 0.0, "held_out_data": [], "best_metric": "val_dice"}
# The same inside a saved recipe (useg.data.recipe's settings, stored whole): a setting added later, with
# the value that leaves what older runs drew unchanged.
OLDER_RECIPE_VALUES = {"task_augmentation": {"inverted_pairs": 0.0}}


def with_older_values(saved: dict[str, Any]) -> dict[str, Any]:
    """A saved config with what older runs computed with filled in where they lack a key."""
    return {key: saved_value(saved, key) for key in {**OLDER_RUN_VALUES, **saved}}


def saved_value(saved: dict[str, Any], key: str) -> Any:
    """A saved config's value of `key`; what older runs computed with where they lack it."""
    value = saved.get(key, OLDER_RUN_VALUES.get(key))
    if isinstance(value, dict) and key in OLDER_RECIPE_VALUES:
        return {**OLDER_RECIPE_VALUES[key], **value}
    return value


def batches_per_epoch(samples_per_epoch: int, batch_size: int) -> int:
    """Batches (optimisation steps) in one epoch; the last one takes the samples left over."""
    return -(-samples_per_epoch // batch_size)


def config_keys() -> list[str]:
    """The settings: every TrainConfig key a flag or a config file may set."""
    return [f.name for f in fields(TrainConfig) if f.name not in RECORDED_KEYS]


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML or TOML config file into a dict of TrainConfig keys."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} not found; check the --config path")
    text = path.read_text(encoding="utf-8")
    try:
        values = tomllib.loads(text) if path.suffix == ".toml" else yaml.load(text, Loader=YamlLoader)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as err:
        first_line = str(err).splitlines()[0]
        raise ConfigError(f"config file {path} is not valid {path.suffix[1:].upper() or 'YAML'}: {first_line}") from None
    values = values or {}
    if not isinstance(values, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys to values")
    values = {str(key).replace("-", "_"): value for key, value in values.items()}
    unknown = sorted(set(values) - set(config_keys()))
    if unknown:
        raise ConfigError(f"config file {path}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(config_keys())}")
    return {key: None if value is None else check_value(key, value, path) for key, value in values.items()}


class YamlLoader(yaml.SafeLoader):
    """PyYAML's safe loader, reading `1e-4` as the number YAML 1.2 says it is (YAML 1.1 wants `1.0e-4`)."""


YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."))


def build_config(*layers: dict[str, Any]) -> TrainConfig:
    """Merge layers of settings (later wins; None means 'not set') over the defaults and validate."""
    merged: dict[str, Any] = {}
    for layer in layers:
        merged.update({key: value for key, value in layer.items() if value is not None})
    cfg = TrainConfig(**merged)
    for key in (*config_keys(), *RECORDED_KEYS):
        setattr(cfg, key, check_value(key, getattr(cfg, key)))
    validate(cfg)
    return cfg


# --- what each setting may hold: one table, one rule per key -------------------------------

# Keys set only in a config file (or kept from the run): the CLI has no flag for them.
FILE_ONLY_KEYS = frozenset({"min_lr_ratio", "split_fractions", "periodic_percentages"})


def setting_name(key: str) -> str:
    """How a message names a setting: its flag, or its config key where there is no flag."""
    if key == "trackers":
        return "--tracker"  # one flag per tracker, repeated
    return f"config value {key}" if key in FILE_ONLY_KEYS else "--" + key.replace("_", "-")


def check_value(key: str, value: Any, config_file: str | Path | None = None) -> Any:
    """`value` in the form TrainConfig holds it, or a ConfigError naming the key, the rule and the value."""
    parse, rule = RULES[key]
    try:
        return parse(value)
    except (TypeError, ValueError):
        pass
    if config_file is None:
        raise ConfigError(f"{setting_name(key)} must be {rule}; got {value!r}")
    flag = "" if key in FILE_ONLY_KEYS else f" ({setting_name(key)})"
    raise ConfigError(f"config file {config_file}: {key}{flag} must be {rule}; got {value!r}")


def integer(low: int, high: int | None = None):
    # bool is an int to Python, and 2.5 or "64" are not ints: refuse them rather than guess.
    def parse(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(value)
        if value < low or (high is not None and value > high):
            raise ValueError(value)
        return value
    return parse


def number(low: float, high: float = math.inf, *, above_low: bool = False):
    def parse(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(value)
        if value < low or value > high or (above_low and value == low):
            raise ValueError(value)
        return float(value)
    return parse


def listed(item, count_ok=lambda count: True, convert=int):
    """A list of items, or the same as comma-separated text ("32,32,32")."""
    def parse(value: Any) -> list:
        if isinstance(value, str):
            value = [convert(part.strip()) for part in value.split(",") if part.strip()]
        if not isinstance(value, (list, tuple)) or not count_ok(len(value)):
            raise ValueError(value)
        return [item(part) for part in value]
    return parse


def optional(parse):
    return lambda value: None if value is None else parse(value)


def path_text(value: Any) -> str:
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(value)
    return value


def boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(value)
    return value


def dataset_entry(value: Any) -> str | dict[str, Any]:
    """One dataset: a folder path, or a mapping {path, weight (> 0, default 1), DATASET_KEYS options}."""
    if not isinstance(value, dict):
        return path_text(value)
    entry = {str(key).replace("-", "_"): setting for key, setting in value.items()}
    unknown = set(entry) - {"path", "weight", *DATASET_KEYS}
    if unknown or "path" not in entry:
        raise ValueError(value)
    checked: dict[str, Any] = {"path": path_text(entry.pop("path"))}
    if "weight" in entry:
        checked["weight"] = number(0, above_low=True)(entry.pop("weight"))
    for key, setting in entry.items():
        if setting is not None:
            checked[key] = RULES[key][0](setting)
    return checked


def dataset_list(value: Any) -> list[str | dict[str, Any]]:
    """Datasets as a list of `dataset_entry`s (one path or mapping is a list of one)."""
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    return [dataset_entry(item) for item in items]


def data_setting(value: Any) -> str | list[str | dict[str, Any]]:
    """--data: one folder stays its path (what runs always saved); several (or one with its own options)
    stay a list of entries."""
    entries = dataset_list(value)
    if not entries:
        raise ValueError(value)
    return entries[0] if len(entries) == 1 and isinstance(entries[0], str) else entries


def switch_or_settings(value: Any) -> bool | dict[str, Any]:
    """on / off (or true / false), paper, or a mapping of settings; useg.data.recipe resolves and checks them."""
    if isinstance(value, str) and value.strip().lower() in ("on", "off"):
        return value.strip().lower() == "on"
    if isinstance(value, str) and value.strip().lower() == "paper":
        return "paper"
    if isinstance(value, bool):
        return value
    if isinstance(value, dict) and all(isinstance(key, str) for key in value):
        return {key.replace("-", "_"): setting for key, setting in value.items()}
    raise ValueError(value)


def choice(*options: str):
    def parse(value: Any) -> str:
        if value not in options:
            raise ValueError(value)
        return value
    return parse


def one_of(options: tuple[str, ...], quote: str = "") -> str:
    """`'dice' or 'dice+bce'`, `fp32, bf16 or fp16`: a choice's options in a rule's words."""
    named = [f"{quote}{option}{quote}" for option in options]
    return ", ".join(named[:-1]) + " or " + named[-1]


def pattern(regex: str):
    def parse(value: Any) -> str:
        if not isinstance(value, str) or not re.fullmatch(regex, value):
            raise ValueError(value)
        return value
    return parse


def class_names(value: Any) -> list[str]:
    if isinstance(value, str):
        value = value.split(",")
    if not isinstance(value, (list, tuple)) or not all(isinstance(name, str) for name in value):
        raise ValueError(value)
    return [name.strip() for name in value if name.strip()]


def label_values(value: Any) -> int | list[int]:
    """One mask value as an int (what older runs saved), several as a list: 255, "128,255" or [128, 255]."""
    if isinstance(value, str):
        value = [int(part.strip()) for part in value.split(",") if part.strip()]
    if isinstance(value, (list, tuple)):
        values = [integer(0)(part) for part in value]
        if not values or len(set(values)) != len(values):
            raise ValueError(value)
        return values[0] if len(values) == 1 else values
    return integer(0)(value)


def value_names(value: Any) -> dict[str, str]:
    """Mask value -> class name from "128=cytoplasm,255=nucleus" or a mapping; keys kept as digit text."""
    if isinstance(value, str):
        pairs = [part.split("=", 1) for part in value.split(",") if part.strip()]
        if any(len(pair) != 2 for pair in pairs):
            raise ValueError(value)
        value = {key.strip(): name.strip() for key, name in pairs}
    if not isinstance(value, dict) or not value:
        raise ValueError(value)
    names = {}
    for key, name in value.items():
        key = str(key).strip()
        if not key.isdigit() or not isinstance(name, str) or not re.fullmatch(r"\w[\w.+-]*", name.strip()):
            raise ValueError(value)
        names[str(int(key))] = name.strip()
    if len(set(names.values())) != len(names):
        raise ValueError(value)
    return names


def patient_pattern(value: Any) -> str:
    """A regular expression with at least one group (the first group is the patient)."""
    text = path_text(value)
    try:
        compiled = re.compile(text)
    except re.error:
        raise ValueError(value) from None
    if compiled.groups < 1:
        raise ValueError(value)
    return text


def split_fractions(value: Any) -> list[float]:
    # Validation needs images, so val must be above 0; an empty test split is allowed.
    train, val, test = listed(number(0), lambda count: count == 3, convert=float)(value)
    if not (train > 0 and val > 0 and math.isclose(train + val + test, 1.0, abs_tol=1e-6)):
        raise ValueError(value)
    return [train, val, test]


RULES: dict[str, tuple[Any, str]] = {
    "data": (optional(data_setting), "a folder path, or a list of them, each a path or a mapping "
                                     "{path: FOLDER, weight: 2, label: 255, ...}"),
    "held_out_data": (dataset_list, "a list of folder paths (or mappings {path: FOLDER, label: 255, ...})"),
    "best_metric": (choice(*BEST_METRICS), one_of(BEST_METRICS)),
    "annotations": (optional(path_text), "a file path"),
    "label": (optional(label_values), "an integer >= 0 (the mask value of the class) or several, e.g. 128,255"),
    "classes": (optional(class_names), "comma-separated class names"),
    "class_names": (optional(value_names), "comma-separated VALUE=NAME pairs with distinct names, e.g. "
                                           "128=cytoplasm,255=nucleus"),
    "patient_pattern": (optional(patient_pattern), "a regular expression whose first group is the patient, "
                                                   "e.g. '^(case[0-9]+)_'"),
    "keep_empty": (number(0, 1), "a fraction from 0 to 1 (the share of empty-mask images kept as negatives)"),
    "slice_axis": (integer(0, 2), "0, 1 or 2 (the volume axis cut into 2-D slices; default "
                                  f"{TrainConfig.slice_axis}, the last)"),
    "task_augmentation": (switch_or_settings, "on, off, paper or a mapping of its settings, e.g. "
                                              "{label_inversion: 0.5}"),
    "in_task_augmentation": (switch_or_settings, "on, off, paper or a mapping of its settings, e.g. {affine: 0.5}"),
    "synthetic_tasks": (number(0, 1), "a fraction from 0 to 1 (the share of training tasks that are synthetic)"),
    "run_dir": (path_text, "a folder path"),
    "epochs": (integer(1), "a positive integer"),
    "batch_size": (integer(1), "a positive integer"),
    "support_size": (integer(1), "a positive integer"),
    "image_size": (integer(1), "a positive integer"),
    "resize": (choice(*RESIZE_MODES), "squash (stretch to the square) or pad (keep the aspect ratio, letterbox "
                                      "with 0)"),
    "widths": (listed(integer(1), lambda count: count >= 2),
               "at least two comma-separated positive integers, e.g. 32,32,32,32"),
    "lr": (number(0, above_low=True), "a positive number, e.g. 1e-4"),
    "min_lr_ratio": (number(0, 1), "a number from 0 to 1 (the final lr as a fraction of --lr)"),
    "loss": (choice(*LOSSES), one_of(LOSSES, quote="'")),
    "seed": (integer(0), "an integer >= 0 (0 is a real seed)"),
    "samples_per_epoch": (integer(1), "a positive integer"),
    "split_fractions": (split_fractions, "three numbers train, val, test adding up to 1 with train and val "
                                         "above 0, e.g. [0.6, 0.2, 0.2]"),
    "split_file": (optional(path_text), "a file path"),
    "periodic_percentages": (listed(integer(1, 100)), "percentages of the run from 1 to 100, e.g. [20, 40, 100]"),
    "vis_every": (integer(0), "an integer >= 0 (0: no pictures)"),
    "vis_count": (integer(0), "an integer >= 0"),
    "save_every_steps": (integer(0), "an integer >= 0 (0: only at epoch ends)"),
    "save_every_minutes": (number(0), "a number >= 0 (0: only at epoch ends)"),
    "save_budget": (number(0, 100), "a percent from 0 to 100 (0: no budget, every due save is taken)"),
    "num_threads": (integer(0), "an integer >= 0 (0: chosen from the usable cores)"),
    "device": (optional(pattern(DEVICE_FORMAT)), "cpu, cuda or cuda:N"),
    "precision": (optional(choice(*PRECISIONS)), one_of(PRECISIONS)),
    "deterministic": (boolean, "true or false"),
    "compile": (boolean, "true or false"),
    "data_workers": (optional(integer(0)), "an integer >= 0 (0: build batches on the training thread)"),
    "pretrained": (optional(path_text), "a file path"),
    "tensorboard": (boolean, "true or false"),
    "trackers": (listed(choice(*TRACKERS), convert=str), f"a list of {one_of(TRACKERS)}, e.g. [mlflow]"),
    "tracker_upload_best": (boolean, "true or false"),
    "quiet": (boolean, "true or false"),
    "bit_identical": (boolean, "true or false"),
}


def validate(cfg: TrainConfig) -> None:
    """Refuse combinations of values that cannot work, naming the flag (each value is checked by RULES)."""
    if cfg.best_metric == "held_out_dice" and not cfg.held_out_data:
        raise ConfigError("--best-metric held_out_dice needs --held-out-data: the datasets it is measured on")
    refuse_repeated_datasets(cfg)
    factor = 2 ** (len(cfg.widths) - 1)
    if cfg.image_size % factor:
        raise ConfigError(f"--image-size {cfg.image_size} must be divisible by {factor} for {len(cfg.widths)} levels")


def refuse_repeated_datasets(cfg: TrainConfig) -> None:
    """Each folder once: a folder given twice as --data would put the same scans in one dataset's training
    split and the other's test split, and one also given as --held-out-data would not be held out."""
    trained, held = dataset_folders(cfg.data), dataset_folders(cfg.held_out_data)
    for flag, folders in (("--data", trained), ("--held-out-data", held)):
        for number, folder in enumerate(folders):
            if folder is not None and folder in folders[:number]:
                raise ConfigError(f"{flag} names the folder {folder} twice ({folders.index(folder) + 1} and "
                                  f"{number + 1} of {len(folders)}); give each dataset once")
    for folder in held:
        if folder is not None and folder in trained:
            raise ConfigError(f"--held-out-data {folder} is also given as --data: a held-out dataset is one the "
                              "run never trains on; leave it out of one of them")


def dataset_folders(data: Any) -> list[str | None]:
    """The real folder of each dataset of a `data` or `held_out_data` value (None: the embedded set)."""
    items = data if isinstance(data, list) else [data]
    paths = [item.get("path") if isinstance(item, dict) else item for item in items]
    return [None if path is None else os.path.realpath(os.path.expanduser(path)) for path in paths]


def incompatible_keys(saved: dict[str, Any], current: TrainConfig) -> list[str]:
    """Keys whose change would make a resumed run compute something else."""
    now = current.to_dict()
    allowed = HARMLESS_KEYS | RETUNABLE_KEYS | set(COMPUTE_KEYS)
    known = set(saved) | set(OLDER_RUN_VALUES)
    return sorted(key for key in now if key not in allowed and key in known and saved_value(saved, key) != now[key])


def changed_keys(saved: dict[str, Any], current: TrainConfig) -> dict[str, list[Any]]:
    """Every key that differs, as {key: [old, new]}, for the history."""
    now = current.to_dict()
    return {key: [saved_value(saved, key), now[key]] for key in now if saved_value(saved, key) != now[key]}

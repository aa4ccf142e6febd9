"""The training configuration: defaults < config file (YAML/TOML) < command-line flags."""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from useg.errors import ConfigError


@dataclass
class TrainConfig:
    """Everything a training run depends on; saved with every checkpoint."""

    data: str | None = None  # None: the embedded synthetic dataset
    annotations: str | None = None
    label: int | None = None
    classes: list[str] | None = None
    run_dir: str = "."
    epochs: int = 12
    batch_size: int = 4
    support_size: int = 4
    image_size: int = 64
    widths: list[int] = field(default_factory=lambda: [32, 32, 32, 32])
    lr: float = 1e-4
    min_lr_ratio: float = 0.05
    loss: str = "dice"  # "dice" or "dice+bce"
    seed: int = 0
    samples_per_epoch: int = 512
    split_fractions: list[float] = field(default_factory=lambda: [0.6, 0.2, 0.2])
    split_file: str | None = None
    periodic_percentages: list[int] = field(default_factory=lambda: [20, 40, 60, 80, 100])
    vis_every: int = 1
    vis_count: int = 3
    save_every_steps: int = 0
    save_every_minutes: float = 0.0
    num_threads: int = 0  # 0: torch's default
    pretrained: str | None = None
    tensorboard: bool = False
    quiet: bool = False

    def to_dict(self) -> dict[str, Any]:
        """A plain, JSON- and weights_only-safe dict."""
        return dataclasses.asdict(self)


# Keys that may differ between the run that wrote a checkpoint and the one resuming it
# without changing what the model computes at each step.
HARMLESS_KEYS = frozenset(
    {"epochs", "run_dir", "vis_every", "vis_count", "save_every_steps", "save_every_minutes",
     "num_threads", "pretrained", "tensorboard", "quiet", "periodic_percentages"}
)


def config_keys() -> list[str]:
    return [f.name for f in fields(TrainConfig)]


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML or TOML config file into a dict of TrainConfig keys."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} not found; check the --config path")
    text = path.read_text(encoding="utf-8")
    try:
        values = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as err:
        first_line = str(err).splitlines()[0]
        raise ConfigError(f"config file {path} is not valid {path.suffix[1:].upper() or 'YAML'}: {first_line}") from None
    values = values or {}
    if not isinstance(values, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys to values")
    values = {key.replace("-", "_"): value for key, value in values.items()}
    unknown = sorted(set(values) - set(config_keys()))
    if unknown:
        raise ConfigError(f"config file {path}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(config_keys())}")
    return values


def build_config(*layers: dict[str, Any]) -> TrainConfig:
    """Merge layers of settings (later wins; None means 'not set') over the defaults and validate."""
    merged: dict[str, Any] = {}
    for layer in layers:
        merged.update({key: value for key, value in layer.items() if value is not None})
    cfg = TrainConfig(**merged)
    cfg.widths = parse_int_list(cfg.widths, "widths")
    cfg.periodic_percentages = parse_int_list(cfg.periodic_percentages, "periodic_percentages")
    if isinstance(cfg.classes, str):
        cfg.classes = [name.strip() for name in cfg.classes.split(",") if name.strip()]
    cfg.split_fractions = [float(x) for x in cfg.split_fractions]
    validate(cfg)
    return cfg


def parse_int_list(value: Any, name: str) -> list[int]:
    """Accept "64,64,64" or a list of ints."""
    try:
        if isinstance(value, str):
            return [int(part) for part in value.split(",") if part.strip()]
        return [int(part) for part in value]
    except (TypeError, ValueError):
        raise ConfigError(f"--{name.replace('_', '-')} must be comma-separated integers, got {value!r}") from None


def validate(cfg: TrainConfig) -> None:
    """Refuse values that cannot work, naming the flag."""
    positive = {"epochs": cfg.epochs, "batch_size": cfg.batch_size, "support_size": cfg.support_size,
                "image_size": cfg.image_size, "samples_per_epoch": cfg.samples_per_epoch}
    for name, value in positive.items():
        if not isinstance(value, int) or value < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be a positive integer, got {value!r}")
    if len(cfg.widths) < 2 or min(cfg.widths) < 1:
        raise ConfigError(f"--widths needs at least two positive widths, got {cfg.widths}")
    factor = 2 ** (len(cfg.widths) - 1)
    if cfg.image_size % factor:
        raise ConfigError(f"--image-size {cfg.image_size} must be divisible by {factor} for {len(cfg.widths)} levels")
    if not cfg.lr > 0:
        raise ConfigError(f"--lr must be positive, got {cfg.lr}")
    if cfg.loss not in ("dice", "dice+bce"):
        raise ConfigError(f"loss must be 'dice' or 'dice+bce', got {cfg.loss!r}")
    if cfg.seed < 0:
        raise ConfigError(f"--seed must be >= 0 (0 is a real seed), got {cfg.seed}")
    if any(not 0 < p <= 100 for p in cfg.periodic_percentages):
        raise ConfigError(f"periodic_percentages must lie in (0, 100], got {cfg.periodic_percentages}")


def incompatible_keys(saved: dict[str, Any], current: TrainConfig) -> list[str]:
    """Keys whose change would make a resumed run compute something else."""
    now = current.to_dict()
    return sorted(key for key in now if key not in HARMLESS_KEYS and key in saved and saved[key] != now[key])


def changed_keys(saved: dict[str, Any], current: TrainConfig) -> dict[str, list[Any]]:
    """Every key that differs, as {key: [old, new]}, for the history."""
    now = current.to_dict()
    return {key: [saved.get(key), now[key]] for key in now if saved.get(key) != now[key]}

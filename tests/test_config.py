import argparse
import re

import pytest

from useg.cli.main import build_parser
from useg.config import LOSSES, PRECISIONS, TrainConfig, batches_per_epoch, build_config, changed_keys, check_value
from useg.config import incompatible_keys, read_config_file
from useg.errors import ConfigError

LITERAL_DEFAULT = re.compile(r"\bdefault (\S+?)(?=[;)]|, |$)")  # "(default 12)", not "(default: all)"
SWITCH = {"on": True, "off": False}


def test_flags_override_config_file_which_overrides_defaults(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("epochs: 7\nbatch-size: 3\nwidths: [16, 16, 16]\n")
    cfg = build_config(read_config_file(path), {"epochs": 9, "batch_size": None})
    assert (cfg.epochs, cfg.batch_size, cfg.widths) == (9, 3, [16, 16, 16])
    assert cfg.lr == TrainConfig().lr


def test_toml_config_and_comma_widths(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('widths = "8,8"\nimage_size = 32\n')
    cfg = build_config(read_config_file(path))
    assert cfg.widths == [8, 8] and cfg.image_size == 32


@pytest.mark.parametrize("text, words", [
    ("epochs: [1\n", "not valid YAML"),
    ("epoch: 3\n", "unknown key(s) epoch"),
    ("- 1\n", "mapping"),
])
def test_bad_config_file_is_one_clear_error(tmp_path, text, words):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=words.replace("(", r"\(").replace(")", r"\)")):
        read_config_file(path)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        read_config_file(tmp_path / "nope.yaml")


@pytest.mark.parametrize("layer, flag", [
    ({"epochs": 0}, "--epochs"),
    ({"image_size": 30, "widths": "8,8,8"}, "--image-size"),
    ({"widths": "a,b"}, "--widths"),
    ({"seed": -1}, "--seed"),
    ({"lr": 0.0}, "--lr"),
])
def test_invalid_values_name_the_flag(layer, flag):
    with pytest.raises(ConfigError, match=flag):
        build_config(layer)


def test_incompatible_keys_ignore_harmless_changes():
    saved = TrainConfig().to_dict()
    cfg = build_config(saved, {"epochs": 99, "quiet": True, "widths": "16,16,16,16"})
    assert incompatible_keys(saved, cfg) == ["widths"]
    assert changed_keys(saved, cfg)["epochs"] == [saved["epochs"], 99]


# --- the command line follows the config ------------------------------------------------------


def subcommand(*names: str) -> argparse.ArgumentParser:
    """The parser of `useg NAME ...`, e.g. subcommand("checkpoints", "export")."""
    parser = build_parser()
    for name in names:
        [commands] = [action for action in parser._actions if isinstance(action, argparse._SubParsersAction)]
        parser = commands.choices[name]
    return parser


def said_value(action: argparse.Action, text: str):
    """A default as --help writes it, read back the way the flag's value is read."""
    if isinstance(action, argparse.BooleanOptionalAction):
        return SWITCH[text]
    return check_value(action.dest, action.type(text) if action.type else text)


def test_every_default_in_train_help_is_train_configs():
    defaults, said = TrainConfig(), []
    for action in subcommand("train")._actions:
        for text in LITERAL_DEFAULT.findall(action.help or ""):
            said.append(action.dest)
            assert said_value(action, text) == getattr(defaults, action.dest), (action.option_strings, text)
    assert len(said) >= 16 and len(set(said)) == len(said)  # e.g. epochs, widths, lr, run_dir, deterministic


def test_defaults_train_help_says_in_words_are_chosen_when_the_run_starts():
    worded = [action.dest for action in subcommand("train")._actions if "default:" in (action.help or "")]
    assert {"data", "num_threads", "device", "precision", "data_workers"} <= set(worded)
    assert all(getattr(TrainConfig(), key) in (None, 0) for key in worded)


def test_choices_on_the_command_line_are_the_configs():
    from useg.compute.precision import DTYPES

    choices = {action.dest: action.choices for action in subcommand("train")._actions}
    export = {action.dest: action.choices for action in subcommand("checkpoints", "export")._actions}
    assert tuple(choices["precision"]) == tuple(export["dtype"]) == tuple(DTYPES) == PRECISIONS
    assert tuple(choices["loss"]) == LOSSES


def test_batches_per_epoch_count_a_last_partial_batch():
    assert [batches_per_epoch(samples, 4) for samples in (1, 4, 5, 8, 10)] == [1, 1, 2, 2, 3]


def test_a_value_written_as_a_flag_reads_back_exactly():
    # The menu writes a replaced run's kept values as flags: a rounded lr would silently change the run.
    from useg.cli.display import flag_text

    for value in (1e-4, 3e-4, 0.5, 1.2345678e-4, 0.123456789, 2.5e-7):
        assert float(flag_text(value)) == value
    assert flag_text(1e-4) == "1e-4" and flag_text([32, 32]) == "32,32" and flag_text(True) == "on"

"""Bad setting values, a truncated image, a saved --quiet and paths with spaces, tried through the CLI:
each bad value is one `error:` line naming the key or flag and what it must be, exit code 2, no
traceback and no run folder written."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from faultkit import TINY, checkpoints
from test_bad_inputs import FRESH, assert_one_line_error, write_pairs
from useg.cli import build_parser


def flags_without(key: str) -> list[str]:
    """FRESH without the flag that would override config key `key`."""
    flag = "--" + key.replace("_", "-")
    if flag not in FRESH:
        return list(FRESH)
    at = FRESH.index(flag)
    return FRESH[:at] + FRESH[at + 2:]


CONFIG_CASES = [  # (config file text, words the error line must hold)
    ("lr: abc\n", ["lr", "'abc'", "positive number", "--lr"]),
    ("lr: .inf\n", ["lr", "inf", "positive number"]),
    ('seed: "x"\n', ["seed", "'x'", "integer", "--seed"]),
    ("classes: 5\n", ["classes", "5", "class names"]),
    ("split_fractions: abc\n", ["split_fractions", "'abc'", "three numbers"]),
    ("split_fractions: [0.8, 0, 0.2]\n", ["split_fractions", "val"]),
    ("split_fractions: [0.5, 0.2, 0.2]\n", ["split_fractions", "adding up to 1"]),
    ("save_every_minutes: abc\n", ["save_every_minutes", "'abc'", "--save-every-minutes"]),
    ("min_lr_ratio: -1\n", ["min_lr_ratio", "-1", "from 0 to 1"]),
    ("min_lr_ratio: 2\n", ["min_lr_ratio", "from 0 to 1"]),
    ('tensorboard: "false"\n', ["tensorboard", "'false'", "true or false"]),
    ("widths: abc\n", ["widths", "'abc'"]),
    ("widths: [8.5, 8]\n", ["widths", "8.5"]),
    ("epochs: 2.5\n", ["epochs", "2.5", "positive integer"]),
    ('image_size: "64"\n', ["image_size", "'64'", "positive integer"]),
    ("data: 5\n", ["data", "folder path"]),
]


@pytest.mark.parametrize("text, words", CONFIG_CASES, ids=[case[0].strip() for case in CONFIG_CASES])
def test_bad_config_file_value_is_one_line_naming_key_and_fix(cli, tmp_path, ledger, text, words):
    config, run = tmp_path / "run.yaml", tmp_path / "run"
    config.write_text(text)
    key = text.split(":")[0]
    result = cli("train", "--run-dir", run, "--config", config, *flags_without(key))
    ledger.faults["bad config file value"] += 1
    line = assert_one_line_error(result, str(config), *words)
    assert result.returncode == 2, line
    assert not run.exists(), "a refused setting must not create the run folder"


def test_bad_toml_value_is_one_line_too(cli, tmp_path):
    config, run = tmp_path / "run.toml", tmp_path / "run"
    config.write_text("epochs = 2.5\n")
    result = cli("train", "--run-dir", run, "--config", config, *flags_without("epochs"))
    assert_one_line_error(result, str(config), "epochs", "2.5")
    assert result.returncode == 2 and not run.exists()


FLAG_CASES = [  # (flag, value, words)
    ("--vis-count", "-1", [">= 0"]),
    ("--num-threads", "-1", [">= 0"]),
    ("--save-every-minutes", "-1", [">= 0"]),
    ("--save-every-minutes", "nan", ["nan"]),
    ("--save-every-steps", "-1", [">= 0"]),
    ("--save-budget", "101", ["from 0 to 100"]),
    ("--save-budget", "-1", ["from 0 to 100"]),
    ("--vis-every", "-1", [">= 0"]),
    ("--lr", "inf", ["positive number"]),
    ("--label", "-1", [">= 0"]),
]


@pytest.mark.parametrize("flag, value, words", FLAG_CASES, ids=[f"{c[0]} {c[1]}" for c in FLAG_CASES])
def test_bad_flag_value_is_one_line_naming_the_flag(cli, tmp_path, ledger, flag, value, words):
    run = tmp_path / "run"
    result = cli("train", "--run-dir", run, *flags_without(flag[2:].replace("-", "_")), flag, value)
    ledger.faults["bad flag value"] += 1
    line = assert_one_line_error(result, flag, value, *words)
    assert result.returncode == 2, line
    assert not run.exists(), "a refused flag must not create the run folder"


def test_bad_flag_on_resume_changes_no_checkpoint(cli, finished_run):
    before = {p.name: p.read_bytes() for p in checkpoints(finished_run).glob("*.pt*")}
    result = cli("resume", "latest", "--run-dir", finished_run, "--epochs", "6", "--save-every-steps", "-1")
    assert_one_line_error(result, "--save-every-steps", "-1")
    assert {p.name: p.read_bytes() for p in checkpoints(finished_run).glob("*.pt*")} == before


def test_yaml_exponent_numbers_are_numbers(cli, tmp_path):
    # YAML 1.1 reads `1e-4` as text; users write it so, and it must mean the number.
    config, run = tmp_path / "run.yaml", tmp_path / "run"
    config.write_text("lr: 1e-4\nmin_lr_ratio: 5E-2\n")
    result = cli("train", "--run-dir", run, "--config", config, *FRESH)
    assert result.returncode == 0, result.stderr
    assert checkpoints(run).joinpath("latest_checkpoint.pt").exists()


def test_every_setting_has_a_flag_except_the_file_only_keys():
    # The messages name `--flag` for a key unless it is file-only: the two lists must agree with the CLI.
    from useg.config import FILE_ONLY_KEYS, config_keys

    train = build_parser()._subparsers._group_actions[0].choices["train"]
    flags = {option for action in train._actions for option in action.option_strings}
    for key in config_keys():
        assert (("--" + key.replace("_", "-")) in flags) == (key not in FILE_ONLY_KEYS), key


# --- data ------------------------------------------------------------------------------------


def test_truncated_image_is_one_line_naming_the_file(cli, tmp_path, ledger):
    data, run = tmp_path / "data", tmp_path / "run"
    write_pairs(data, image_size=(32, 32), mask_size=(32, 32))
    image = data / "images" / "case1.png"
    image.write_bytes(image.read_bytes()[: image.stat().st_size // 2])
    result = cli("train", "--run-dir", run, "--data", data, *FRESH)
    ledger.faults["bad data: truncated image"] += 1
    line = assert_one_line_error(result, "case1.png", "cannot read image", "replace or remove")
    assert result.returncode == 2, line


# --- per-session display ---------------------------------------------------------------------


def test_quiet_saved_with_a_run_does_not_silence_a_later_session(cli, tmp_path):
    run = tmp_path / "run"
    flags = ["--epochs", "1", *TINY, "--vis-every", "0"]
    assert cli("train", "--run-dir", run, *flags, "--quiet").returncode == 0
    resumed = cli("resume", "latest", "--run-dir", run, "--epochs", "2")
    assert resumed.returncode == 0, resumed.stderr
    assert "epoch 2/2 batch" in resumed.stdout and "Done: 2 epochs" in resumed.stdout, resumed.stdout
    again = cli("resume", "latest", "--run-dir", run, "--epochs", "3", "--quiet")
    assert again.returncode == 0 and "batch" not in again.stdout and "Done" not in again.stdout, again.stdout
    loud = cli("resume", "latest", "--run-dir", run, "--epochs", "4", "--no-quiet")
    assert loud.returncode == 0 and "Done: 4 epochs" in loud.stdout, loud.stdout


# --- resume hints ----------------------------------------------------------------------------


def run_hint(cli, hint: str, *extra: str):
    """Run a printed `useg ...` command as a shell would split it."""
    words = shlex.split(hint)
    assert words[0] == "useg", hint
    return cli(*words[1:], *extra)


def test_resume_hints_quote_a_run_folder_with_spaces(cli, tmp_path):
    run = tmp_path / "my runs" / "run 1"
    flags = ["--epochs", "2", *TINY, "--quiet", "--vis-every", "0"]
    stopped = cli("train", "--run-dir", run, *flags, env={"USEG_KILL_AT": "step:2:SIGINT"})
    assert stopped.returncode == 130, stopped.stderr
    hint = stopped.stderr.rsplit("continue with: ", 1)[1].strip()
    resumed = run_hint(cli, hint)
    assert resumed.returncode == 0, (hint, resumed.stderr)
    assert Path(run, "checkpoints", "epoch_002_checkpoint.pt").exists()

    for name in ("latest_checkpoint.pt", "epoch_001_checkpoint.pt"):
        info = cli("checkpoints", "info", checkpoints(run) / name)
        assert info.returncode == 0, info.stderr
        [command] = [line.split(":", 1)[1].strip() for line in info.stdout.splitlines()
                     if line.startswith("resume with:")]
        resumed = run_hint(cli, command, "--epochs", "3")
        assert resumed.returncode == 0, (command, resumed.stderr)

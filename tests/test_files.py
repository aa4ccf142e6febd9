"""Atomic writes of ordinary files (useg.files): old file or new file, never a torn one or a stray temp file."""

import json
import math
import os
import stat

import pytest

from useg.errors import UsegError
from useg.files import explain_file_errors, is_temp_name, json_text, new_temp_file, write_file_atomically


def test_json_text_writes_nan_and_inf_as_null_at_any_depth_and_stays_strict():
    text = json_text({"dice": math.nan, "curve": [1.5, math.inf, (-math.inf, 2)], "n": 3})
    assert json.loads(text, parse_constant=lambda name: pytest.fail(name)) == {
        "dice": None, "curve": [1.5, None, [None, 2]], "n": 3}


def test_write_file_atomically_replaces_the_file_with_its_mode_and_leaves_no_temp_file(tmp_path):
    target = tmp_path / "curve.csv"
    target.write_bytes(b"old")
    assert write_file_atomically(target, b"new") == target
    private = write_file_atomically(tmp_path / "token", b"secret", mode=0o600)
    assert target.read_bytes() == b"new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curve.csv", "token"]


def test_write_file_atomically_makes_missing_folders_only_when_asked(tmp_path):
    target = tmp_path / "a" / "b" / "mask.png"
    with pytest.raises(UsegError, match=r"the folder .*b does not exist .*, then rerun predict$"):
        write_file_atomically(target, b"x", then="rerun predict")
    write_file_atomically(target, b"x", create_folder=True)
    assert target.read_bytes() == b"x"


def test_a_file_where_a_folder_should_be_is_named_in_the_error(tmp_path):
    (tmp_path / "out").write_text("not a folder")
    with pytest.raises(UsegError, match=r"out is a file, not a folder; move it away"):
        write_file_atomically(tmp_path / "out" / "deeper" / "x.png", b"x", create_folder=True)


def test_errors_nobody_can_fix_pass_through_unexplained(tmp_path):
    with pytest.raises(OSError, match="odd"), explain_file_errors(tmp_path / "x"):
        raise OSError(0, "odd")


def test_a_failing_fill_leaves_no_temp_file_and_temp_names_are_recognised(tmp_path):
    def fill(fd):
        os.write(fd, b"part")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        new_temp_file(tmp_path, "latest_checkpoint.pt", 4, fill)
    assert list(tmp_path.iterdir()) == []
    made = new_temp_file(tmp_path, "best_model.pt", 1, lambda fd: os.write(fd, b"x"))
    assert is_temp_name(made.name) and made.name.startswith(".best_model.pt.")
    assert not is_temp_name("best_model.pt") and not is_temp_name("x.tmp")

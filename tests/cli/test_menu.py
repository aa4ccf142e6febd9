"""`useg menu`: typed at a real pseudo-terminal, fed through a pipe, and each option's flow."""

from __future__ import annotations

import fcntl
import importlib.util
import io
import os
import re
import select
import shutil
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from useg.checkpoint import list_checkpoints
from tiny import train_tiny
from useg.cli import main

PROMPT = b"Choose an option:"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """One tiny 3-epoch run shared by the module (periodic files for epochs 1, 2, 3)."""
    return train_tiny(tmp_path_factory.mktemp("shared") / "run", 3)


def menu(monkeypatch, capsys, run: Path, answers: str) -> tuple[int, str]:
    """Drive the menu in-process with `answers` as stdin (a pipe, as far as it can tell)."""
    monkeypatch.setattr(sys, "stdin", io.StringIO(answers))
    code = main(["menu", "--run-dir", str(run)])
    return code, capsys.readouterr().out


def periodic_names(run: Path) -> list[str]:
    return sorted(p.name for p in (run / "checkpoints").glob("epoch_*.pt"))


def read_until(fd: int, marker: bytes, seen: bytearray, timeout: float = 60) -> None:
    """Read the terminal's output into `seen` until `marker` appears after what was there."""
    start, deadline = len(seen), time.monotonic() + timeout
    while marker not in seen[start:]:
        assert time.monotonic() < deadline, f"no {marker!r} in {bytes(seen[start:])!r}"
        if select.select([fd], [], [], 1)[0]:
            seen += os.read(fd, 65536)


def read_to_end(fd: int, seen: bytearray) -> None:
    while select.select([fd], [], [], 30)[0]:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: the child closed its side of the terminal
            return
        if not chunk:
            return
        seen += chunk


def start_in_terminal(run: Path) -> tuple[subprocess.Popen, int]:
    """`useg menu` on a real pseudo-terminal (120 columns); returns the child and our side of the terminal."""
    controller, terminal = os.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 120, 0, 0))
    child = subprocess.Popen([sys.executable, "-m", "useg", "menu", "--run-dir", str(run)],
                             stdin=terminal, stdout=terminal, stderr=terminal, start_new_session=True,
                             env={**os.environ, "TERM": "xterm-256color"})
    os.close(terminal)
    return child, controller


def type_at_terminal(run: Path, steps: list[tuple[bytes, bytes]]) -> str:
    """Answer each question of `useg menu` typed at a real terminal: wait for `marker`, type `answer` and Enter;
    return the screen without its colour codes once the menu has exited 0."""
    child, controller = start_in_terminal(run)
    seen = bytearray()
    try:
        for marker, answer in steps:
            read_until(controller, marker, seen, timeout=120)
            os.write(controller, answer + b"\r")  # Enter sends a carriage return
        read_to_end(controller, seen)
        assert child.wait(timeout=60) == 0
    finally:
        child.kill()
        os.close(controller)
    return ANSI.sub("", seen.decode(errors="replace"))


def folder_data(root: Path, values: tuple[int, ...] = (255,)) -> Path:
    """images/ + masks/ data of 8 small scans; one value: binary masks, several: a label map."""
    rng = np.random.default_rng(0)
    for folder in ("images", "masks"):
        (root / folder).mkdir(parents=True)
    for i in range(8):
        Image.fromarray(rng.integers(0, 255, (24, 24), dtype=np.uint8)).save(root / "images" / f"scan{i}.png")
        mask = np.zeros((24, 24), dtype=np.uint8)
        for row, value in enumerate(values):
            mask[2 + 8 * row:8 + 8 * row, 3 + i:12 + i] = value
        Image.fromarray(mask).save(root / "masks" / f"scan{i}.png")
    return root


def listed_numbers(out: str) -> list[dict[str, int]]:
    """Each checkpoint table printed in `out`: file name -> its number."""
    tables = re.split(r"^Checkpoints in ", out, flags=re.M)[1:]
    return [{name: int(number) for number, name in re.findall(r"^ +(\d+) +(\S+\.pt)", table, flags=re.M)}
            for table in tables]


def number_of(run: Path, name: str) -> int:
    """The number every listing gives `name`: its place in `useg checkpoints list`."""
    return [info.name for info in list_checkpoints(run / "checkpoints")].index(name) + 1


def snapshot(run: Path) -> dict[str, bytes]:
    return {str(path.relative_to(run)): path.read_bytes() for path in run.rglob("*") if path.is_file()}


def tiny_config(folder: Path) -> Path:
    """A config file with the tiny model sizes, as a user would pass to option 1."""
    config = folder / "tiny.yaml"
    config.write_text("widths: [8, 8]\nbatch_size: 2\nsamples_per_epoch: 6\nvis_count: 1\nnum_threads: 1\n"
                      "quiet: true\n")
    return config


def test_menu_through_a_pipe_prints_history_and_exits_0(trained):
    result = subprocess.run([sys.executable, "-m", "useg", "menu", "--run-dir", str(trained)],
                            input="6\nq\n", capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "Training history" in result.stdout and "* best" in result.stdout
    assert result.stdout.count("Choose an option: ") == 2
    assert (trained / "training_curves.png").is_file()


def test_menu_typed_at_a_real_terminal_shows_history_and_quits_with_0(trained):
    has_readline = importlib.util.find_spec("readline") is not None
    child, controller = start_in_terminal(trained)
    seen = bytearray()
    try:
        read_until(controller, PROMPT, seen)
        os.write(controller, b"6\r")  # Enter sends a carriage return; the terminal turns it into a newline
        read_until(controller, PROMPT, seen)
        if has_readline:
            os.write(controller, b"\x1b[A\r")  # the up arrow recalls the previous answer, 6
            read_until(controller, PROMPT, seen)
        os.write(controller, b"q\r")
        read_to_end(controller, seen)
        assert child.wait(timeout=60) == 0
    finally:
        child.kill()
        os.close(controller)
    screen = ANSI.sub("", seen.decode(errors="replace"))
    assert "Choose an option: 6" in screen  # echoed by the terminal, not by the menu
    assert screen.count("Training history") == (2 if has_readline else 1) and "* best" in screen


def test_clean_option_shows_what_goes_and_n_removes_nothing(run, monkeypatch, capsys):
    code, out = menu(monkeypatch, capsys, run, "5\n1\nn\nq\n")
    assert code == 0
    assert "will remove epoch_001_checkpoint.pt" in out and "will remove epoch_002_checkpoint.pt" in out
    assert "Nothing removed." in out
    assert periodic_names(run) == ["epoch_001_checkpoint.pt", "epoch_002_checkpoint.pt", "epoch_003_checkpoint.pt"]


def test_clean_option_with_y_removes_and_reports_space_freed(run, monkeypatch, capsys):
    code, out = menu(monkeypatch, capsys, run, "5\n1\ny\nq\n")
    assert code == 0 and "Removed 2 file(s), freed" in out
    assert periodic_names(run) == ["epoch_003_checkpoint.pt"]
    assert (run / "checkpoints" / "latest_checkpoint.pt").is_file() and (run / "checkpoints" / "best_model.pt").is_file()


def test_clean_option_says_what_it_keeps_when_a_file_is_damaged(run, monkeypatch, capsys):
    damaged = run / "checkpoints" / "epoch_003_checkpoint.pt"
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0xFF
    damaged.write_bytes(bytes(data))
    code, out = menu(monkeypatch, capsys, run, "5\n1\nn\nq\n")
    assert code == 0
    assert "left epoch_003_checkpoint.pt in place, not counted toward --keep: corrupt" in out
    assert "kept epoch_002_checkpoint.pt: what resume falls back to" in out
    assert "will remove epoch_001_checkpoint.pt" in out and "will remove epoch_002" not in out


def test_menu_answers_bad_input_by_asking_again(run, monkeypatch, capsys):
    best = number_of(run, "best_model.pt")
    code, out = menu(monkeypatch, capsys, run, f"x\n5\n0\nmany\n\n4\n99\n\n3\nabc\n{best}\n")
    assert code == 0  # input ran out: the menu ends cleanly
    assert "Unknown option 'x'" in out
    assert out.count("Please give a whole number of at least 1") == 2
    assert out.count("Keep how many periodic checkpoints?") == 3  # asked again until Enter went back
    assert "No checkpoint number '99'" in out and "No checkpoint number 'abc'" in out
    assert "best_model.pt cannot resume the run; type" in out  # listed, but not a resume point
    assert out.count("Checkpoint number (1-5") == 2 and out.count("Resume from checkpoint number (") == 3
    assert len(periodic_names(run)) == 3


def test_info_option_shows_the_chosen_checkpoint(run, monkeypatch, capsys):
    names = [info.name for info in list_checkpoints(run / "checkpoints")]
    number = names.index("latest_checkpoint.pt") + 1
    code, out = menu(monkeypatch, capsys, run, f"4\n{number}\nq\n")
    assert code == 0 and "kind:          latest" in out and f"useg resume latest --run-dir {run}" in out


def resume_line(out: str) -> list[str]:
    """Option 3's resume points as it names them, `number name`, in the order resume tries them."""
    [line] = re.findall(r"^Can resume the run, in the order `useg resume latest` tries them: (.*)$", out, flags=re.M)
    return line.split(", ")


def test_resume_option_numbers_files_as_the_list_and_names_the_resume_points_in_order(run, monkeypatch, capsys):
    code, out = menu(monkeypatch, capsys, run, "3\n\nq\n")
    assert code == 0
    [table] = listed_numbers(out)
    assert table == {info.name: number for number, info in enumerate(list_checkpoints(run / "checkpoints"), 1)}
    assert resume_line(out) == [f"{table[name]} {name}" for name in (  # the order resume tries them
        "latest_checkpoint.pt", "epoch_003_checkpoint.pt", "epoch_002_checkpoint.pt", "epoch_001_checkpoint.pt")]
    [best] = [info for info in list_checkpoints(run / "checkpoints") if info.name == "best_model.pt"]
    assert f"{table['best_model.pt']}  best_model.pt (epoch {best.epoch}" in out
    assert "holds weights only and cannot resume" in out


def test_resume_option_leaves_out_a_damaged_file_and_says_why(run, monkeypatch, capsys):
    damaged = run / "checkpoints" / "epoch_001_checkpoint.pt"
    damaged.write_bytes(damaged.read_bytes()[:-10])
    number = number_of(run, "epoch_001_checkpoint.pt")
    code, out = menu(monkeypatch, capsys, run, f"3\n{number}\n\nq\n")
    assert code == 0 and f"{number}  epoch_001_checkpoint.pt cannot resume: not valid" in out
    assert f"{number} epoch_001_checkpoint.pt" not in resume_line(out)
    assert "epoch_001_checkpoint.pt cannot resume the run; type" in out  # chosen anyway: asked again


def test_going_back_says_what_is_left_behind_and_no_starts_nothing(run, monkeypatch, capsys):
    before = {p.name: p.read_bytes() for p in (run / "checkpoints").glob("*.pt")}
    code, out = menu(monkeypatch, capsys, run, f"3\n{number_of(run, 'epoch_002_checkpoint.pt')}\nn\nq\n")
    assert code == 0
    assert "Going back to epoch_002_checkpoint.pt (epoch 2) leaves newer saves behind:" in out
    assert "latest_checkpoint.pt (latest, epoch 3, step 9): replaced by the first save from epoch_002" in out
    assert "epoch_003_checkpoint.pt (periodic, epoch 3" in out and "abandoned branch" in out
    assert "Nothing started." in out and "$ useg" not in out
    assert {p.name: p.read_bytes() for p in (run / "checkpoints").glob("*.pt")} == before


def test_every_listing_gives_a_file_the_same_number_and_7_lists_the_checkpoints(run, monkeypatch, capsys):
    # Before: 3 numbered only the resume points, newest first, 4 every file oldest first, and 7 did not exist.
    code, out = menu(monkeypatch, capsys, run, "7\n4\n\n3\n\nq\n")
    assert code == 0 and "Unknown option" not in out
    listed, info, resume = listed_numbers(out)
    assert listed == info == resume and len(listed) == 5
    assert listed == {info.name: number for number, info in enumerate(list_checkpoints(run / "checkpoints"), 1)}
    assert all(listed[item.split(" ", 1)[1]] == int(item.split(" ", 1)[0]) for item in resume_line(out))
    assert main(["checkpoints", "list", "--run-dir", str(run)]) == 0
    assert listed_numbers(capsys.readouterr().out) == [listed]  # the command's numbers too


def test_going_back_after_extending_keeps_the_runs_current_total_on_enter(run, monkeypatch, capfd):
    import torch

    assert main(["resume", "latest", "--run-dir", str(run), "--epochs", "4", "--quiet"]) == 0  # total now 4
    capfd.readouterr()
    code, out = menu(monkeypatch, capfd, run, f"3\n{number_of(run, 'epoch_002_checkpoint.pt')}\ny\n\nq\n")
    assert code == 0
    assert "Going back to epoch_002_checkpoint.pt" in out and "Total epochs (Enter keeps the run's total, 4)" in out
    assert re.search(r"\$ useg resume \S+epoch_002_checkpoint\.pt --run-dir \S+ --epochs 4$", out, flags=re.M)
    state = torch.load(run / "checkpoints" / "latest_checkpoint.pt", weights_only=True)
    assert state["epoch"] == 4 and state["config"]["epochs"] == 4 and state["history"]["resumed_at"] == [2]


def test_start_option_on_a_run_asks_first_and_offers_to_resume_it(run, monkeypatch, capsys):
    code, out = menu(monkeypatch, capsys, run, "1\n\nmaybe\n\n1\n\nr\n")  # input ends at the epochs question
    assert code == 0
    assert out.count(f"Run folder (Enter: {run}): ") == 2
    assert out.count("already holds a run (latest: 3 of 3 epochs complete)") == 2
    assert "Type r, o, or Enter to go back (got 'maybe')" in out
    assert "Config file" not in out  # no question about a new run before the folder was settled
    assert out.rstrip().endswith("Total epochs (Enter keeps the run's total, 3):")  # option 2's question


def test_start_option_on_a_lone_best_model_offers_only_to_start_afresh(tmp_path, monkeypatch, capsys):
    run = train_tiny(tmp_path / "run", 1)
    for path in (run / "checkpoints").glob("*.pt*"):
        if not path.name.startswith("best_model.pt"):
            path.unlink()  # what a first epoch killed after best, before latest, leaves
    code, out = menu(monkeypatch, capsys, run, "1\n\nr\n\nq\n")
    assert code == 0
    assert f"{run / 'checkpoints'} holds best_model.pt but no checkpoint to resume from." in out
    assert "resume it" not in out and "Type o, or Enter to go back (got 'r')" in out
    assert "Config file" not in out  # Enter went back to the menu


def test_start_option_asks_the_settings_of_a_run_and_checks_each(tmp_path, monkeypatch, capfd):
    import torch

    config, run = tiny_config(tmp_path), tmp_path / "new run"
    answers = (f"1\n\nmissing.yaml\n{config}\n{tmp_path / 'nowhere'}\n\nsolid\n0\n1\n\n31\n32\nmany\n2\n"
               "\n\n\nq\n")  # widths, batch size and lr: the config file's; Enter at the confirmation starts it
    code, out = menu(monkeypatch, capfd, run, answers)
    assert code == 0
    assert "config file missing.yaml not found" in out and "is not a folder" in out
    assert "--epochs must be a positive integer; got 0" in out and "--image-size 31 must be divisible by 2" in out
    assert "--support-size must be a positive integer; got 'many'" in out
    assert "Label-map masks" not in out  # the embedded set has no label maps
    assert "Channels per level (--widths), comma-separated (Enter: 8,8)" in out  # the config file's value
    assert f"--config {config} --classes solid --epochs 1 --image-size 32 --support-size 2\n" in out
    assert "Start it? [Y/n]" in out  # a fresh folder: Enter starts
    state = torch.load(run / "checkpoints" / "latest_checkpoint.pt", weights_only=True)
    assert state["classes"] == ["solid"] and state["config"]["widths"] == [8, 8]
    assert (state["config"]["image_size"], state["config"]["support_size"], state["epoch"]) == (32, 2, 1)


def test_start_option_asks_the_folder_widths_batch_size_and_lr_and_trains_with_them(tmp_path, monkeypatch, capfd):
    # Before: the folder, widths, batch size and lr were never asked; the run went into the menu's folder.
    import torch

    config, other = tiny_config(tmp_path), tmp_path / "other run"
    answers = f"1\n{other}\n{config}\n\n\n1\n4,4,4\n16\n\n3\n0\n2e-3\ny\nq\n"
    code, out = menu(monkeypatch, capfd, tmp_path / "menu run", answers)
    assert code == 0
    assert "--lr must be a positive number, e.g. 1e-4; got 0.0" in out
    assert "--epochs 1 --widths 4,4,4 --image-size 16 --batch-size 3 --lr 2e-3\n" in out
    state = torch.load(other / "checkpoints" / "latest_checkpoint.pt", weights_only=True)
    assert (state["config"]["widths"], state["config"]["batch_size"], state["config"]["lr"]) == ([4, 4, 4], 3, 2e-3)
    assert not (tmp_path / "menu run" / "checkpoints").exists()


def test_starting_afresh_in_a_run_folder_shows_the_command_and_no_leaves_the_run_in_place(run, monkeypatch, capsys):
    # Before: the old checkpoints were set aside and training started without a last question.
    before = snapshot(run)
    code, out = menu(monkeypatch, capsys, run, "1\n\no\n" + "\n" * 9 + "\nq\n")  # Enter at [y/N]: no
    assert code == 0
    assert re.search(r"^\$ useg train --run-dir \S+ --epochs 3 --widths 8,8 --image-size 32 --support-size 2 "
                     r"--batch-size 2 .*--samples-per-epoch 6 .*--overwrite$", out, flags=re.M)
    assert "Set that run aside and start? [y/N]" in out and f"Nothing started; {run / 'checkpoints'} is as it was." in out
    assert snapshot(run) == before and not list(run.glob("checkpoints_replaced_*"))


def test_label_question_only_for_masks_that_hold_several_values(tmp_path, monkeypatch, capsys):
    binary, label_map = folder_data(tmp_path / "binary"), folder_data(tmp_path / "labels", (128, 255))
    mmotu = tmp_path / "mmotu"
    (mmotu / "images").mkdir(parents=True)
    (mmotu / "annotations").mkdir()
    for data in (binary, mmotu, label_map):  # input ends at the question after classes
        code, out = menu(monkeypatch, capsys, tmp_path / "run", f"1\n\n\n{data}\n\n")
        assert code == 0 and out.rstrip().endswith(
            "(Enter: every value):" if data == label_map else "Epochs (Enter: 12):"), (data, out[-300:])


def test_starting_afresh_on_label_maps_keeps_the_runs_values_and_names(tmp_path, monkeypatch, capfd):
    import torch

    data = folder_data(tmp_path / "labels", (128, 255))
    run = train_tiny(tmp_path / "run", 1, "--data", str(data), "--label", "255", "--class-names", "128=cyto,255=nucleus")
    capfd.readouterr()
    code, out = menu(monkeypatch, capfd, run, "1\n\no\n" + "\n" * 10 + "y\nq\n")
    assert code == 0
    assert "Label-map masks: the mask value(s) to train, e.g. 255 or 128,255 (Enter: 255):" in out
    assert f"--data {data} --label 255 --epochs 1" in out and "--class-names 128=cyto,255=nucleus" in out
    state = torch.load(run / "checkpoints" / "latest_checkpoint.pt", weights_only=True)
    assert state["classes"] == ["nucleus"] and state["config"]["class_names"] == {"128": "cyto", "255": "nucleus"}


def test_start_option_refuses_a_folder_without_data_useg_reads(tmp_path, monkeypatch, capsys):
    (tmp_path / "photos").mkdir()
    code, out = menu(monkeypatch, capsys, tmp_path / "run", f"1\n\n\n{tmp_path / 'photos'}\n")
    assert code == 0 and f"{tmp_path / 'photos'} holds no data useg reads; expected an Ovatus folder" in out


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory) -> Path:
    """A tiny 2-epoch run trained on binary images/ + masks/ data."""
    folder = tmp_path_factory.mktemp("folders")
    return train_tiny(folder / "run", 2, "--data", str(folder_data(folder / "scans")))


def test_start_afresh_typed_at_a_terminal_keeps_the_runs_data_and_asks_what_matters(folder_run, tmp_path):
    # Before: the data question offered the embedded set, a label-map question came for binary masks,
    # widths, batch size, lr and the folder were never asked, and the run was set aside without a last question.
    import torch

    run = Path(shutil.copytree(folder_run, tmp_path / "run"))
    data = torch.load(run / "checkpoints" / "latest_checkpoint.pt", weights_only=True)["config"]["data"]
    old_latest = (run / "checkpoints" / "latest_checkpoint.pt").read_bytes()
    screen = type_at_terminal(run, [
        (PROMPT, b"1"), (b"Run folder", b""), (b"[r/o]", b"o"), (b"Config file", b""),
        (f"Data folder (Enter: {data}; synthetic: the embedded set)".encode(), b""),
        (b"Classes", b""), (b"Epochs (Enter: 2)", b"1"), (b"(--widths), comma-separated (Enter: 8,8)", b""),
        (b"Image size in pixels (square) (Enter: 32)", b""), (b"Support images per target (Enter: 2)", b""),
        (b"Batch size (targets per step) (Enter: 2)", b"3"), (b"Learning rate (Enter: 3e-4)", b"1e-3"),
        (b"Set that run aside and start? [y/N]", b"y"), (PROMPT, b"q")])
    assert "Label-map masks" not in screen  # binary masks: no values to pick
    assert re.search(rf"\$ useg train --run-dir \S+ --data {re.escape(data)} --epochs 1 --widths 8,8 --image-size 32 "
                     r"--support-size 2 --batch-size 3 --lr 1e-3 --samples-per-epoch 6 .*--overwrite", screen)
    assert "moved the previous checkpoints (and pictures) to" in screen
    [kept] = run.glob("checkpoints_replaced_*")
    assert (kept / "latest_checkpoint.pt").read_bytes() == old_latest
    config = torch.load(run / "checkpoints" / "latest_checkpoint.pt", weights_only=True)["config"]
    assert (config["data"], config["widths"], config["batch_size"], config["lr"], config["epochs"]) == (
        data, [8, 8], 3, 1e-3, 1)
    assert config["samples_per_epoch"] == 6  # the replaced run's recipe, kept


def test_start_option_overwrite_typed_at_a_terminal_sets_the_run_and_its_pictures_aside(run, tmp_path):
    (run / "visualizations_training").mkdir()
    (run / "visualizations_training" / "epoch_003_batch_000.png").write_bytes(b"old picture")
    old_latest = (run / "checkpoints" / "latest_checkpoint.pt").read_bytes()
    screen = type_at_terminal(run, [
        (PROMPT, b"1"), (b"Run folder", b""), (b"[r/o]", b"o"), (b"Config file", str(tiny_config(tmp_path)).encode()),
        (b"Data folder", b""), (b"Classes", b""), (b"Epochs", b"1"), (b"Channels", b""), (b"Image size", b""),
        (b"Support", b""), (b"Batch size", b""), (b"Learning rate", b""), (b"[y/N]", b"y"), (PROMPT, b"q")])
    assert "--overwrite" in screen and "moved the previous checkpoints (and pictures) to" in screen
    [kept] = run.glob("checkpoints_replaced_*")
    assert (kept / "latest_checkpoint.pt").read_bytes() == old_latest
    assert (kept / "visualizations_training" / "epoch_003_batch_000.png").read_bytes() == b"old picture"
    assert not (run / "visualizations_training" / "epoch_003_batch_000.png").exists()
    assert sorted(p.name for p in (run / "checkpoints").glob("epoch_*.pt")) == ["epoch_001_checkpoint.pt"]


def test_history_option_on_a_folder_without_a_run_says_so(tmp_path, monkeypatch, capsys):
    code, out = menu(monkeypatch, capsys, tmp_path, "6\nq\n")
    assert code == 0 and "error: no training history" in out


# --- runs over several datasets (issue 27) ---------------------------------------------------------------


@pytest.fixture(scope="module")
def several_run(tmp_path_factory) -> Path:
    """A tiny 1-epoch run over two datasets (a: binary masks, b: a label map), c held out and choosing the best."""
    folder = tmp_path_factory.mktemp("several")
    a, b, c = folder_data(folder / "a"), folder_data(folder / "b", (128, 255)), folder_data(folder / "c")
    return train_tiny(folder / "run", 1, "--data", str(a), "--data", str(b), "--held-out-data", str(c),
                      "--best-metric", "held_out_dice")


def saved_config(run: Path) -> dict:
    import torch

    return torch.load(run / "checkpoints" / "latest_checkpoint.pt", weights_only=True)["config"]


def test_a_several_dataset_run_resumes_from_options_2_and_1(several_run, tmp_path, monkeypatch, capfd):
    import torch

    run = Path(shutil.copytree(several_run, tmp_path / "run"))
    code, out = menu(monkeypatch, capfd, run, "2\n2\n1\n\nr\n3\nq\n")  # option 2 to epoch 2, option 1's r to 3
    assert code == 0 and "Traceback" not in out
    assert f"$ useg resume latest --run-dir {run} --epochs 2" in out and f"--run-dir {run} --epochs 3" in out
    state = torch.load(run / "checkpoints" / "latest_checkpoint.pt", weights_only=True)
    assert state["epoch"] == 3 and state["config"]["data"] == saved_config(several_run)["data"]
    assert len(state["config"]["data"]) == 2 and state["history"]["resumed_at"] == [1, 2]
    assert len(state["history"]["held_out_dice"]) == 3  # c scored at every epoch, before and after each resume


def test_starting_afresh_on_a_several_dataset_run_keeps_its_datasets_on_enter(several_run, tmp_path, monkeypatch,
                                                                             capfd):
    # Before: the data question crashed (Path of a list); the flags would have read --data a,b.
    run = Path(shutil.copytree(several_run, tmp_path / "run"))
    before = saved_config(run)
    a, b = before["data"]
    [c] = before["held_out_data"]
    code, out = menu(monkeypatch, capfd, run, "1\n\no\n" + "\n" * 10 + "y\nq\n")
    assert code == 0 and "Traceback" not in out
    assert f"Data folder (Enter: 2 datasets: {a}, {b}; or one folder instead; synthetic: the embedded set): " in out
    # b's masks are a label map: the label question is asked, for every dataset
    assert "e.g. 255 or 128,255, in every dataset (Enter: every value): " in out
    assert re.search(rf"^\$ useg train --run-dir \S+ --data {re.escape(a)} --data {re.escape(b)} --epochs 1 .*"
                     rf"--held-out-data {re.escape(c)} --best-metric held_out_dice .*--overwrite$", out, flags=re.M)
    after = saved_config(run)
    assert (after["data"], after["held_out_data"], after["best_metric"]) == ([a, b], [c], "held_out_dice")


def test_one_folder_for_a_several_dataset_run_starts_a_one_dataset_run(several_run, monkeypatch, capsys):
    before = snapshot(several_run)
    a, b = saved_config(several_run)["data"]
    [c] = saved_config(several_run)["held_out_data"]
    code, out = menu(monkeypatch, capsys, several_run, f"1\n\no\n\n{c}\n" + "\n" * 8 + "\nq\n")  # [y/N]: no
    assert code == 0 and "Traceback" not in out
    assert "Label-map masks" not in out  # c's masks are binary
    [command] = [line for line in out.splitlines() if line.startswith("$ useg train")]
    # the run's held-out datasets and best metric went with its data: c is now the data
    assert f"--data {c} --epochs 1" in command and "--held-out-data" not in command and "--best-metric" not in command
    assert a not in command and b not in command
    assert snapshot(several_run) == before


def test_a_config_file_with_a_data_list_keeps_it_in_the_file(tmp_path, monkeypatch, capfd):
    # Before: the data and label questions crashed on the list (Path of a list).
    a, b = folder_data(tmp_path / "a", (128, 255)), folder_data(tmp_path / "b", (128, 255))
    c = folder_data(tmp_path / "c")
    config = tiny_config(tmp_path)
    config.write_text(config.read_text() + f"data:\n  - {a}\n  - {{path: {b}, weight: 3, label: 255}}\n"
                      f"held_out_data: [{c}]\n")
    run = tmp_path / "run"
    code, out = menu(monkeypatch, capfd, run, f"1\n\n{config}\nsynthetic\n\n\n\n1\n\n32\n2\n\n\n\nq\n")
    assert code == 0 and "Traceback" not in out
    described = f"2 datasets: {a}, {b} (weight 3, label 255)"
    assert f"the config file sets data: {described}; give a data folder" in out
    assert f"Data folder (Enter: {described}; or one folder instead;" in out
    assert "e.g. 255 or 128,255, in every dataset without its own label (Enter: every value): " in out
    [command] = [line for line in out.splitlines() if line.startswith("$ useg train")]
    # the list stays in the file: no --data flag flattens it
    assert command == f"$ useg train --run-dir {run} --config {config} --epochs 1 --image-size 32 --support-size 2"
    after = saved_config(run)
    assert after["data"] == [str(a), {"path": str(b), "weight": 3, "label": 255}]
    assert after["held_out_data"] == [str(c)]


def test_a_folder_held_out_by_the_config_file_is_refused_as_the_data(tmp_path, monkeypatch, capsys):
    a, c = folder_data(tmp_path / "a"), folder_data(tmp_path / "c")
    config = tiny_config(tmp_path)
    config.write_text(config.read_text() + f"held_out_data: [{c}]\n")
    code, out = menu(monkeypatch, capsys, tmp_path / "run", f"1\n\n{config}\n{c}\n{a}\n")
    assert code == 0 and "Traceback" not in out
    assert f"{c} is held out by the config file (held_out_data): a run never trains on its held-out datasets" in out
    assert out.count("Data folder (") == 2
    assert out.rstrip().endswith("Classes to train on, comma-separated (Enter: all):")


def test_datasets_with_their_own_settings_are_never_flattened_into_flags(tmp_path, monkeypatch, capsys):
    a, b, c = folder_data(tmp_path / "a"), folder_data(tmp_path / "b", (128, 255)), folder_data(tmp_path / "c")
    config = tmp_path / "several.yaml"
    config.write_text(f"data:\n  - {a}\n  - {{path: {b}, weight: 3, label: 255}}\n"
                      f"held_out_data: [{{path: {c}, label: 255}}]\nbest_metric: held_out_dice\n")
    run = train_tiny(tmp_path / "run", 1, "--config", str(config))
    capsys.readouterr()
    before = snapshot(run)
    code, out = menu(monkeypatch, capsys, run, f"1\n\no\n\n\n{a}\n" + "\n" * 8 + "\nq\n")  # [y/N]: no
    assert code == 0 and "Traceback" not in out
    described = f"2 datasets: {a}, {b} (weight 3, label 255)"
    assert (f"The replaced run trained on {described}; their own weights or options exist only in a config file's "
            "data list: give that config file to keep them.") in out
    assert f"Data folder (the replaced run's {described} need a config file; give a folder; synthetic:" in out
    assert f"Enter cannot keep the replaced run's {described}: their own weights or options" in out
    assert "Label-map masks" not in out  # a's masks are binary, and b's label is b's own
    [command] = [line for line in out.splitlines() if line.startswith("$ useg train")]
    assert f"--data {a} --epochs 1" in command and str(b) not in command and "weight" not in command
    assert "--held-out-data" not in command and "--best-metric" not in command
    assert "Not kept from the replaced run" not in out  # c and its metric went with the replaced run's data
    assert snapshot(run) == before


def test_held_out_datasets_with_their_own_settings_are_named_as_not_kept(tmp_path, monkeypatch, capsys):
    a, b, c = folder_data(tmp_path / "a"), folder_data(tmp_path / "b"), folder_data(tmp_path / "c", (128, 255))
    config = tmp_path / "held.yaml"
    config.write_text(f"held_out_data: [{{path: {c}, label: 255}}]\nbest_metric: held_out_dice\n")
    run = train_tiny(tmp_path / "run", 1, "--data", str(a), "--data", str(b), "--config", str(config))
    capsys.readouterr()
    code, out = menu(monkeypatch, capsys, run, "1\n\no\n" + "\n" * 9 + "\nq\n")  # [y/N]: no
    assert code == 0 and "Traceback" not in out
    assert (f"Not kept from the replaced run (config-file keys, no flag): held_out_data 1 dataset: {c} (label 255); "
            "best_metric held_out_dice; put them in a config file to keep them.") in out
    [command] = [line for line in out.splitlines() if line.startswith("$ useg train")]
    assert f"--data {a} --data {b} --epochs 1" in command
    assert "--held-out-data" not in command and "--best-metric" not in command


def test_a_dataset_folder_gone_is_named_before_enter_keeps_the_runs_data(tmp_path, monkeypatch, capsys):
    a, b = folder_data(tmp_path / "a"), folder_data(tmp_path / "b")
    run = train_tiny(tmp_path / "run", 1, "--data", str(a), "--data", str(b))
    capsys.readouterr()
    b.rename(tmp_path / "b moved")
    code, out = menu(monkeypatch, capsys, run, "1\n\no\n\n\nsynthetic\n")
    assert code == 0 and "Traceback" not in out
    assert f"{b} (dataset 2 of 2) is not a folder any more; give the data folder, or synthetic" in out
    assert out.rstrip().endswith("Classes to train on, comma-separated (Enter: all):")


def test_a_held_out_folder_gone_stops_before_the_run_is_set_aside(tmp_path, monkeypatch, capsys):
    a, c = folder_data(tmp_path / "a"), folder_data(tmp_path / "c")
    run = train_tiny(tmp_path / "run", 1, "--data", str(a), "--held-out-data", str(c))
    capsys.readouterr()
    c.rename(tmp_path / "c moved")
    before = snapshot(run)
    code, out = menu(monkeypatch, capsys, run, "1\n\no\n" + "\n" * 9 + "q\n")
    assert code == 0 and "Traceback" not in out and "$ useg train" not in out
    assert (f"error: held-out dataset {c} is not a folder; nothing started. Give the held-out datasets in a config "
            "file's held_out_data ([] for none)") in out
    assert snapshot(run) == before

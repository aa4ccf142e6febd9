"""`useg checkpoints list|latest|info|verify|clean|export` and `useg history`: text, --json, bad input."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path, PurePosixPath

import pytest
import torch

from tiny import train_tiny
from useg.cli import main
from useg.cli.checkpoint_actions import RECORD_KEYS

NAMES = ["best_model.pt", "epoch_001_checkpoint.pt", "epoch_002_checkpoint.pt", "epoch_003_checkpoint.pt",
         "epoch_004_checkpoint.pt", "epoch_005_checkpoint.pt", "latest_checkpoint.pt"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """One tiny 5-epoch run shared by the module; tests that change files work on a copy."""
    return train_tiny(tmp_path_factory.mktemp("shared") / "run", 5)


def useg_json(capsys, *args: str):
    """Run `useg ... --json` in-process; (exit code, parsed stdout)."""
    code = main([*args, "--json"])
    return code, json.loads(capsys.readouterr().out)


def useg_text(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def checkpoint(run: Path, name: str) -> Path:
    return run / "checkpoints" / name


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


# --- list ----------------------------------------------------------------------------------


def test_list_table_shows_every_file_and_marks_best_and_latest(trained, capsys):
    code, out, _ = useg_text(capsys, "checkpoints", "list", "--run-dir", str(trained))
    assert code == 0
    for name in NAMES:
        assert name in out
    assert "best_model.pt *" in out and "latest_checkpoint.pt <" in out
    assert "NO:" not in out


def test_list_json_is_an_array_of_documented_records(trained, capsys):
    code, records = useg_json(capsys, "checkpoints", "list", "--run-dir", str(trained))
    assert code == 0
    assert sorted(r["name"] for r in records) == NAMES
    for record in records:
        assert tuple(record) == RECORD_KEYS
        assert record["valid"] is True and record["status"] == "ok" and record["reason"] == ""
        assert record["size_bytes"] == Path(record["path"]).stat().st_size
        assert isinstance(record["val_dice"], float) and isinstance(record["train_loss"], float)
        assert record["created"].endswith("+00:00")
    kinds = {r["name"]: r["kind"] for r in records}
    assert kinds["best_model.pt"] == "best" and kinds["latest_checkpoint.pt"] == "latest"
    assert [r["epoch"] for r in records if r["kind"] == "periodic"] == [1, 2, 3, 4, 5]


def test_list_shows_a_truncated_file_and_a_garbled_sidecar_as_invalid(run, capsys):
    truncated = checkpoint(run, "epoch_002_checkpoint.pt")
    truncated.write_bytes(truncated.read_bytes()[:1000])
    checkpoint(run, "epoch_003_checkpoint.pt.json").write_text("{not json")
    code, out, _ = useg_text(capsys, "checkpoints", "list", "--run-dir", str(run))
    assert code == 0 and out.count("NO:") == 2
    code, records = useg_json(capsys, "checkpoints", "list", "--run-dir", str(run))
    invalid = {r["name"]: r for r in records if not r["valid"]}
    assert sorted(invalid) == ["epoch_002_checkpoint.pt", "epoch_003_checkpoint.pt"]
    assert invalid["epoch_002_checkpoint.pt"]["status"] == "corrupt"
    assert "1000 bytes" in invalid["epoch_002_checkpoint.pt"]["reason"]
    assert invalid["epoch_003_checkpoint.pt"]["status"] == "missing-checksum"


def test_list_reads_no_checkpoint_bytes_100_files_of_1_gb_under_a_second(tmp_path, capsys):
    folder = tmp_path / "big" / "checkpoints"
    folder.mkdir(parents=True)
    size = 2**30
    for epoch in range(1, 101):
        path = folder / f"epoch_{epoch:03d}_checkpoint.pt"
        with open(path, "wb") as handle:
            handle.truncate(size)  # sparse: 1 GB that takes no disk, and minutes to hash if anyone did
        sidecar = {"sha256": "0" * 64, "size_bytes": size, "epoch": epoch, "kind": "periodic",
                   "val_dice": 0.5, "train_loss": 0.1, "created": "2026-01-01T00:00:00+00:00"}
        (folder / f"{path.name}.json").write_text(json.dumps(sidecar))
    started = time.perf_counter()
    code, records = useg_json(capsys, "checkpoints", "list", "--run-dir", str(tmp_path / "big"))
    assert time.perf_counter() - started < 1.0
    assert code == 0 and len(records) == 100 and all(r["size_bytes"] == size for r in records)


def test_list_from_the_shell_does_not_import_torch(trained):
    # Importing torch is most of a second; `useg checkpoints list` reads only sidecars and must not pay it.
    probe = ("import sys; from useg.cli import main; code = main(['checkpoints', 'list', '--run-dir', sys.argv[1]]); "
             "print('torch imported' if 'torch' in sys.modules else 'no torch', code)")
    listed = subprocess.run([sys.executable, "-c", probe, str(trained)], capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0, listed.stderr
    assert "latest_checkpoint.pt" in listed.stdout
    assert listed.stdout.strip().endswith("no torch 0")


# --- latest / info -------------------------------------------------------------------------


def test_latest_shows_progress_best_config_and_the_resume_command(trained, capsys):
    code, out, _ = useg_text(capsys, "checkpoints", "latest", "--run-dir", str(trained))
    assert code == 0
    assert "position:      5 of 5 epochs complete" in out and "best so far:" in out and "widths=[8, 8]" in out
    assert f"resume with:   useg resume latest --run-dir {trained}" in out
    code, details = useg_json(capsys, "checkpoints", "latest", "--run-dir", str(trained))
    assert set(RECORD_KEYS) | {"sha256", "config", "batch", "batches_per_epoch", "resume_command",
                               "resumes_from"} == set(details)
    assert (details["batch"], details["batches_per_epoch"]) == (0, 3)  # 6 samples per epoch, batches of 2
    assert details["epoch"] == 5 and details["total_epochs"] == 5 and details["valid"] is True
    assert details["best_epoch"] == details["epoch"] or details["best_val_dice"] >= details["val_dice"]
    assert details["config"]["widths"] == [8, 8]
    assert details["resume_command"] == f"useg resume latest --run-dir {trained}"


def test_latest_when_damaged_names_the_file_resume_falls_back_to(run, capsys):
    latest = checkpoint(run, "latest_checkpoint.pt")
    latest.write_bytes(latest.read_bytes()[:-10])
    code, details = useg_json(capsys, "checkpoints", "latest", "--run-dir", str(run))
    assert code == 0 and details["valid"] is False and details["status"] == "corrupt"
    assert details["resumes_from"] == str(checkpoint(run, "epoch_005_checkpoint.pt"))


def test_info_of_a_periodic_file_resumes_by_epoch_and_best_says_it_cannot_resume(trained, capsys):
    code, details = useg_json(capsys, "checkpoints", "info", str(checkpoint(trained, "epoch_003_checkpoint.pt")))
    assert code == 0 and details["kind"] == "periodic" and details["epoch"] == 3
    assert details["resume_command"] == f"useg resume 3 --run-dir {trained}"
    code, out, _ = useg_text(capsys, "checkpoints", "info", str(checkpoint(trained, "epoch_003_checkpoint.pt")))
    assert code == 0 and "deterministic: yes: a resume is bit-identical" in out, out
    code, out, _ = useg_text(capsys, "checkpoints", "info", str(checkpoint(trained, "best_model.pt")))
    assert code == 0 and "kind:          best" in out and "weights only" in out
    # best_model.pt has no optimizer or data position: no resume of it can be bit-identical
    assert "deterministic: - (weights only: not a resume point" in out and "yes: a resume" not in out, out


# --- verify --------------------------------------------------------------------------------


def test_verify_all_valid_exits_0(trained, capsys):
    code, out, _ = useg_text(capsys, "checkpoints", "verify", "--run-dir", str(trained))
    assert code == 0 and out.strip().endswith("7 valid, 0 invalid")
    code, rows = useg_json(capsys, "checkpoints", "verify", "--run-dir", str(trained))
    assert code == 0 and len(rows) == 7 and all(tuple(r) == RECORD_KEYS and r["valid"] for r in rows)


def test_verify_names_a_file_with_one_flipped_byte_and_exits_1(run, capsys):
    bad = checkpoint(run, "epoch_002_checkpoint.pt")
    flip_byte(bad, bad.stat().st_size // 2)
    code, out, _ = useg_text(capsys, "checkpoints", "verify", "--run-dir", str(run))
    assert code == 1
    [line] = [line for line in out.splitlines() if line.startswith("BAD")]
    assert str(bad) in line and "sha256" in line
    assert out.strip().endswith("6 valid, 1 invalid")
    code, rows = useg_json(capsys, "checkpoints", "verify", str(bad))
    assert code == 1 and [(r["name"], r["status"]) for r in rows] == [(bad.name, "corrupt")]


def test_verify_reports_a_truncated_file_and_unsafe_content(run, tmp_path, capsys):
    truncated = checkpoint(run, "epoch_001_checkpoint.pt")
    truncated.write_bytes(truncated.read_bytes()[:2000])
    unsafe = tmp_path / "unsafe.pt"
    torch.save({"epoch": 1, "extra": PurePosixPath("a pickled object")}, unsafe)
    assert main(["checkpoints", "verify", str(truncated)]) == 1
    assert "truncated" in capsys.readouterr().out
    assert main(["checkpoints", "verify", str(unsafe)]) == 1
    out = capsys.readouterr().out
    assert "unsafe" in out and "pathlib.PurePosixPath" in out


# --- clean ---------------------------------------------------------------------------------


def test_clean_dry_run_removes_nothing_and_clean_frees_what_it_reported(run, capsys):
    folder = run / "checkpoints"
    before = sorted(p.name for p in folder.iterdir())
    code, preview = useg_json(capsys, "checkpoints", "clean", "--keep", "2", "--dry-run", "--run-dir", str(run))
    assert code == 0 and preview["dry_run"] is True and preview["keep"] == 2
    assert [r["epoch"] for r in preview["removed"]] == [3, 2, 1]
    assert sorted(p.name for p in folder.iterdir()) == before
    expected_bytes = sum(checkpoint(run, r["name"]).stat().st_size for r in preview["removed"])
    assert preview["freed_bytes"] == expected_bytes
    code, out, _ = useg_text(capsys, "checkpoints", "clean", "--keep", "2", "--run-dir", str(run))
    assert code == 0 and out.count("removed ") == 4 and "freed" in out
    left = sorted(p.name for p in folder.glob("*.pt"))
    assert left == ["best_model.pt", "epoch_004_checkpoint.pt", "epoch_005_checkpoint.pt", "latest_checkpoint.pt"]
    assert not list(folder.glob("epoch_00[123]_checkpoint.pt.json"))


LOCK_HOLDER = """
import fcntl, json, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, json.dumps({"pid": os.getpid(), "hostname": "trainer"}).encode())
print("ready", flush=True)
sys.stdin.read()
"""


def test_clean_refuses_while_a_training_process_holds_the_lock(run, capsys):
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(run / "checkpoints" / ".lock")],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        for extra in ([], ["--dry-run"]):
            code, _, err = useg_text(capsys, "checkpoints", "clean", "--keep", "1", "--run-dir", str(run), *extra)
            assert code == 2 and "being trained by process" in err and str(holder.pid) in err
            assert len(err.strip().splitlines()) == 1
    finally:
        holder.communicate("")
    assert len(list((run / "checkpoints").glob("epoch_*.pt"))) == 5


# --- export --------------------------------------------------------------------------------


def test_export_round_trip_pt_and_safetensors_load_strictly(trained, tmp_path, capsys):
    from safetensors.torch import load_file

    from useg.model import build_universeg

    source = checkpoint(trained, "latest_checkpoint.pt")
    saved = torch.load(source, weights_only=True)["model_state_dict"]
    code, result = useg_json(capsys, "checkpoints", "export", str(source), str(tmp_path / "out" / "w.pt"))
    assert code == 0 and result["format"] == "pt" and result["model_config"]["widths"] == [8, 8]
    model = build_universeg((8, 8))
    # a .pt export is a dict (model_state_dict beside what applying needs), readable with weights_only
    model.load_state_dict(torch.load(tmp_path / "out" / "w.pt", weights_only=True)["model_state_dict"], strict=True)
    assert main(["checkpoints", "export", str(source), str(tmp_path / "w.safetensors")]) == 0
    assert "w.safetensors" in capsys.readouterr().out
    weights = load_file(tmp_path / "w.safetensors")
    model.load_state_dict(weights, strict=True)
    assert all(torch.equal(weights[name], tensor) for name, tensor in saved.items())
    meta = json.loads((tmp_path / "w.safetensors.json").read_text())
    assert meta["epoch"] == 5 and meta["source"] == "latest_checkpoint.pt" and meta["image_size"] == 32
    assert meta["sha256"] == hashlib.sha256((tmp_path / "w.safetensors").read_bytes()).hexdigest()


# --- history -------------------------------------------------------------------------------


def test_history_table_marks_best_and_writes_curves(run, capsys):
    code, out, _ = useg_text(capsys, "history", "--run-dir", str(run))
    assert code == 0 and "Training history" in out and "* best" in out
    assert (run / "training_curves.png").stat().st_size > 0
    code, history = useg_json(capsys, "history", "--run-dir", str(run))
    assert [row["epoch"] for row in history["epochs"]] == [1, 2, 3, 4, 5]
    assert {"best_val_dice", "best_epoch", "resumed_at", "epochs", "curves"} == set(history)


# --- bad input -----------------------------------------------------------------------------


def bad_inputs(trained: Path, tmp: Path) -> dict[str, tuple[list[str], str]]:
    (tmp / "empty").mkdir()
    (tmp / "notes.txt").write_text("not a checkpoint")
    latest = str(checkpoint(trained, "latest_checkpoint.pt"))
    return {
        "unknown run folder": (["checkpoints", "list", "--run-dir", str(tmp / "nope")], "does not exist"),
        "no checkpoints yet (list)": (["checkpoints", "list", "--run-dir", str(tmp / "empty")], "no checkpoints yet"),
        "no checkpoints yet (latest)": (["checkpoints", "latest", "--run-dir", str(tmp / "empty")], "no checkpoints yet"),
        "no checkpoints yet (verify)": (["checkpoints", "verify", "--run-dir", str(tmp / "empty")], "no checkpoints yet"),
        "no checkpoints yet (clean)": (["checkpoints", "clean", "--keep", "1", "--run-dir", str(tmp / "empty")],
                                       "no checkpoints yet"),
        "not a checkpoint (info)": (["checkpoints", "info", str(tmp / "notes.txt")], "not a useg checkpoint"),
        "not a checkpoint (export)": (["checkpoints", "export", str(tmp / "notes.txt"), str(tmp / "w.pt")], "notes.txt"),
        "missing file (info)": (["checkpoints", "info", str(tmp / "gone.pt")], "does not exist"),
        "a folder (verify)": (["checkpoints", "verify", str(trained / "checkpoints")], "is a folder"),
        "a folder (export)": (["checkpoints", "export", str(trained), str(tmp / "w.pt")], "is a folder"),
        "export suffix": (["checkpoints", "export", latest, str(tmp / "w.bin")], ".safetensors or .pt"),
        "keep 0": (["checkpoints", "clean", "--keep", "0", "--run-dir", str(trained)], "--keep must be at least 1"),
        "keep negative": (["checkpoints", "clean", "--keep", "-3", "--run-dir", str(trained)], "--keep must be at least 1"),
        "history of unknown run": (["history", "--run-dir", str(tmp / "nope")], "does not exist"),
    }


def test_bad_input_is_one_error_line_and_exit_2(trained, tmp_path, capsys):
    for case, (args, words) in bad_inputs(trained, tmp_path).items():
        for as_json in ([], ["--json"]):
            code, out, err = useg_text(capsys, *args, *as_json)
            assert code == 2, case
            assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, (case, err)
            assert words in err, (case, err)
            assert out == "", case
    assert sorted(p.name for p in (trained / "checkpoints").glob("*.pt")) == NAMES


def test_resume_from_best_is_refused_in_one_line_naming_what_is_missing(run, capsys):
    code, _, err = useg_text(capsys, "resume", "best", "--run-dir", str(run))
    assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert "best_model.pt" in err and "optimizer" in err

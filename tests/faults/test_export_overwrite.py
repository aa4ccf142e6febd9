"""Weights leaving or entering a run: `--pretrained` and export verify and refuse NaN weights,
export never writes over a checkpoint and survives kill -9 over an earlier export,
`--overwrite` cannot race a starting trainer, and a run folder whose parts are files is
refused before any training."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import struct
import time
import zipfile
from pathlib import Path

import pytest
import torch

from faultkit import RUN_FLAGS, assert_same_run, checkpoints, wait_until_stopped
from useg.checkpoint import verify_checkpoint
from useg.checkpoint.integrity import sha256_bytes


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every visible file under `folder` by relative path (folders as a marker; hidden files such as
    `.lock` and caches that readers may refresh are left out)."""
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else b"<dir>")
            for p in sorted(folder.rglob("*")) if not p.name.startswith(".")}


def one_error_line(result, *words: str) -> str:
    assert result.returncode == 2, (result.returncode, result.stderr[-3000:])
    assert "Traceback" not in result.stderr, result.stderr
    [line] = result.error_lines
    assert line.startswith("error: "), line
    for word in words:
        assert word in line, (word, line)
    return line


def first_tensor_offset(path: Path) -> int:
    """Byte offset in the file of the first float tensor's data (torch.save stores tensors uncompressed)."""
    with zipfile.ZipFile(path) as archive:
        entry = sorted((i for i in archive.infolist() if "/data/" in i.filename),
                       key=lambda i: int(i.filename.rsplit("/", 1)[1]))[0]
    with open(path, "rb") as handle:
        handle.seek(entry.header_offset)
        header = handle.read(30)
    name_length, extra_length = struct.unpack("<HH", header[26:30])
    return entry.header_offset + 30 + name_length + extra_length


def plant_weights(path: Path, state: dict) -> None:
    """Write `state` at `path` with a sidecar that matches its bytes (a valid checkpoint holding anything)."""
    torch.save(state, path)
    data = path.read_bytes()
    sidecar = json.loads(Path(f"{path}.json").read_text())
    sidecar.update(sha256=sha256_bytes(data), size_bytes=len(data), inode=path.stat().st_ino)
    Path(f"{path}.json").write_text(json.dumps(sidecar))


def with_nan(state: dict) -> tuple[dict, str]:
    weights = dict(state["model_state_dict"])
    name = next(iter(weights))
    weights[name] = weights[name].clone()
    weights[name].view(-1)[0] = float("nan")
    return {**state, "model_state_dict": weights}, name


# --- --pretrained -------------------------------------------------------------------------


def test_pretrained_best_model_with_a_flipped_exponent_byte_is_refused(cli, finished_run, tmp_path, ledger):
    best = checkpoints(finished_run) / "best_model.pt"
    data = bytearray(best.read_bytes())
    offset = first_tensor_offset(best)
    data[offset + 3] ^= 0x40  # the high exponent bits of the first float32: a small weight becomes ~1e37
    best.write_bytes(bytes(data))
    weights = torch.load(best, weights_only=True)["model_state_dict"]
    assert weights[next(iter(weights))].abs().max() > 1e30  # still loads, finite but absurd
    assert verify_checkpoint(best).status == "corrupt"
    result = cli("train", "--run-dir", tmp_path / "new", *RUN_FLAGS, "--pretrained", best)
    ledger.faults["--pretrained of a bit-flipped best model"] += 1
    one_error_line(result, str(best), "corrupt")
    assert result.steps == 0 and not (tmp_path / "new").exists()


def test_pretrained_weights_holding_nan_are_refused_naming_the_parameter(cli, finished_run, tmp_path, ledger):
    best = checkpoints(finished_run) / "best_model.pt"
    state, name = with_nan(torch.load(best, weights_only=True))
    plain = tmp_path / "nan_state_dict.pt"
    torch.save(state["model_state_dict"], plain)  # like an official weight file: no sidecar
    plant_weights(best, state)  # a NaN best model whose sidecar matches (verifies)
    assert verify_checkpoint(best).ok
    for weights in (plain, best):
        result = cli("train", "--run-dir", tmp_path / "new", *RUN_FLAGS, "--pretrained", weights)
        ledger.faults["--pretrained of NaN weights"] += 1
        one_error_line(result, str(weights), name, "NaN")
        assert result.steps == 0 and not (tmp_path / "new").exists()


def test_export_and_evaluate_refuse_a_nan_best_model(cli, finished_run, tmp_path, ledger):
    best = checkpoints(finished_run) / "best_model.pt"
    state, name = with_nan(torch.load(best, weights_only=True))
    plant_weights(best, state)
    before = snapshot(finished_run)
    for args in (["checkpoints", "export", best, tmp_path / "out" / "w.safetensors"],
                 ["checkpoints", "export", best, tmp_path / "out" / "w.pt"],
                 ["evaluate", best, "--run-dir", finished_run]):
        result = cli(*args)
        ledger.faults["export/evaluate of a NaN model"] += 1
        one_error_line(result, name, "NaN")
        assert snapshot(finished_run) == before
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


# --- export targets -----------------------------------------------------------------------


def test_export_onto_its_source_or_any_checkpoint_is_refused_and_changes_nothing(cli, finished_run, tmp_path, ledger):
    folder = checkpoints(finished_run)
    best, latest = folder / "best_model.pt", folder / "latest_checkpoint.pt"
    os.link(best, tmp_path / "best_link.pt")
    copied = tmp_path / "copied_checkpoint.pt"
    copied.write_bytes(latest.read_bytes())
    Path(f"{copied}.json").write_text(Path(f"{latest}.json").read_text())
    targets = {
        "itself": (best, best, "being exported"),
        "itself, spelled differently": (best, folder / ".." / "checkpoints" / "best_model.pt", "being exported"),
        "a hard link of it": (best, tmp_path / "best_link.pt", "being exported"),
        "another checkpoint of the run": (latest, folder / "epoch_002_checkpoint.pt", "checkpoint"),
        "a checkpoint name not yet written": (latest, folder / "epoch_099_checkpoint.pt", "checkpoint"),
        "a checkpoint copied elsewhere": (best, copied, "sidecar"),
    }
    before_run, before_tmp = snapshot(finished_run), snapshot(tmp_path)
    for case, (source, out, words) in targets.items():
        result = cli("checkpoints", "export", source, out)
        ledger.faults["export onto a checkpoint"] += 1
        one_error_line(result, str(out), words)
        assert snapshot(finished_run) == before_run, case
        assert snapshot(tmp_path) == before_tmp, case
    assert all(verify_checkpoint(path).ok for path in folder.glob("*.pt"))
    # An earlier export is not a checkpoint: exporting over it is the normal case.
    for source in (latest, best):
        assert cli("checkpoints", "export", source, tmp_path / "exported.pt").returncode == 0
    assert verify_checkpoint(tmp_path / "exported.pt").ok  # its metadata records sha256 and size


EXPORT_STEPS = ("export-temps-written", "export-metadata-removed", "export-weights-renamed")


def export_pair(out: Path) -> tuple[bytes, dict | None]:
    """The weights at `out` and the metadata beside them (None when absent)."""
    meta = Path(f"{out}.json")
    return out.read_bytes(), json.loads(meta.read_text()) if meta.exists() else None


def hidden_temps(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize("step", EXPORT_STEPS)
def test_export_killed_over_an_earlier_export_never_pairs_new_weights_with_old_metadata(
        cli, finished_run, tmp_path, step, ledger):
    folder, out = checkpoints(finished_run), tmp_path / "exported" / "w.pt"
    old_source, new_source = folder / "latest_checkpoint.pt", folder / "epoch_001_checkpoint.pt"
    assert cli("checkpoints", "export", old_source, out).returncode == 0
    old_weights, _ = export_pair(out)
    killed = cli("checkpoints", "export", new_source, out, env={"USEG_KILL_AT": f"{step}:1"})
    ledger.faults["kill -9 mid-export over an earlier export"] += 1
    assert killed.returncode == -signal.SIGKILL, (step, killed.returncode, killed.stderr[-2000:])
    weights, meta = export_pair(out)
    assert meta is None or (meta["sha256"] == hashlib.sha256(weights).hexdigest()
                            and meta["size_bytes"] == len(weights)), f"{step}: metadata describes other weights"
    assert meta is not None or step != "export-temps-written", "the old pair was complete before any rename"
    assert weights == old_weights or meta is None or meta["source"] == new_source.name
    again = cli("checkpoints", "export", new_source, out)
    assert again.returncode == 0, again.stderr
    weights, meta = export_pair(out)
    assert meta["sha256"] == hashlib.sha256(weights).hexdigest() and meta["source"] == new_source.name
    assert hidden_temps(out.parent) == [], f"{step}: the killed export's temp files survived the next export"


# --- --overwrite against a starting trainer ---------------------------------------------------


def stopped_or_ended(child, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while child.process.exitcode is None and not child.is_stopped():
        assert time.monotonic() < deadline, "the child neither stopped nor ended"
        time.sleep(0.01)


def test_overwrite_racing_a_resume_one_refuses_and_the_folder_holds_one_run(cli, finished_run, reference_run, ledger):
    run = finished_run
    previous = snapshot(checkpoints(run))
    # The overwriting trainer freezes just before it sets the old checkpoints aside; a resume
    # of the old run starts in that window (and would freeze at its first step).
    overwrite = cli.start("train", "--overwrite", "--run-dir", run, *RUN_FLAGS,
                          env={"USEG_KILL_AT": "overwrite-set-aside:1:SIGSTOP"})
    resume = None
    try:
        wait_until_stopped(overwrite)
        resume = cli.start("resume", "latest", "--run-dir", run, "--epochs", "6",
                           env={"USEG_KILL_AT": "step:1:SIGSTOP"})
        stopped_or_ended(resume)
    finally:
        os.kill(overwrite.pid, signal.SIGCONT)
    overwritten = overwrite.wait()
    if resume.is_stopped():
        os.kill(resume.pid, signal.SIGCONT)
    resumed = resume.wait()
    ledger.faults["--overwrite racing a resume"] += 1
    assert overwritten.returncode == 0, overwritten.stderr[-3000:]
    one_error_line(resumed, "being trained")
    assert resumed.steps == 0
    assert_same_run(reference_run, run)  # only the new run's files, equal to an undisturbed run
    names = lambda d: sorted(p.name for p in d.iterdir() if not p.name.startswith("."))  # noqa: E731
    assert names(checkpoints(run)) == names(checkpoints(reference_run))
    [kept] = run.glob("checkpoints_replaced_*")
    assert snapshot(kept) == previous


# --- run folder parts that are files --------------------------------------------------------


@pytest.mark.parametrize("part", ["checkpoints", "logs", "visualizations_training"])
def test_a_run_folder_part_that_is_a_file_is_refused_before_training(cli, tmp_path, part, ledger):
    run = tmp_path / "run"
    run.mkdir()
    (run / part).write_text("not a folder\n")
    before = snapshot(run)
    result = cli("train", "--run-dir", run, *RUN_FLAGS, "--vis-every", "1")
    ledger.faults["a run folder part that is a file"] += 1
    one_error_line(result, str(run / part), "is a file")
    assert result.steps == 0 and snapshot(run) == before


def test_resume_with_logs_replaced_by_a_file_is_refused_before_training(cli, finished_run, ledger):
    logs = finished_run / "logs"
    logs.rename(finished_run / "logs_moved")
    logs.write_text("not a folder\n")
    before = snapshot(finished_run)
    result = cli("resume", "latest", "--run-dir", finished_run, "--epochs", "6")
    ledger.faults["a run folder part that is a file"] += 1
    one_error_line(result, str(logs), "is a file")
    assert result.steps == 0 and snapshot(finished_run) == before

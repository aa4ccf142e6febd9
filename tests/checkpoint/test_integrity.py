"""Verification (integrity.verify_checkpoint): corrupt, truncated, missing and unsafe files are named and refused on load."""

from __future__ import annotations

import os
import struct
import zipfile
from pathlib import Path

import pytest
import torch

from checkpoint_kit import LATEST, flip_byte, manager, train
from useg.checkpoint import atomic_write_json, load_checkpoint, verify_checkpoint
from useg.checkpoint.integrity import sha256_bytes
from useg.errors import CheckpointError


def test_one_flipped_byte_is_corrupt_and_refused_on_load(tmp_path):
    train(tmp_path, 1)
    flip_byte(tmp_path / LATEST)
    result = verify_checkpoint(tmp_path / LATEST)
    assert result.status == "corrupt" and "sha256" in result.reason
    with pytest.raises(CheckpointError, match=f"{LATEST}: corrupt"):
        load_checkpoint(tmp_path / LATEST)


def test_truncated_file_is_corrupt(tmp_path):
    train(tmp_path, 1)
    path = tmp_path / LATEST
    os.truncate(path, path.stat().st_size // 2)
    result = verify_checkpoint(path)
    assert result.status == "corrupt" and "truncated" in result.reason


def test_truncated_file_without_sidecar_is_corrupt_not_just_unchecked(tmp_path):
    train(tmp_path, 1)
    os.unlink(tmp_path / (LATEST + ".json"))
    os.truncate(tmp_path / LATEST, 100)
    assert verify_checkpoint(tmp_path / LATEST).status == "corrupt"


def test_a_damaged_pickle_without_sidecar_is_corrupt_not_an_exception(tmp_path):
    # Found by the long lifecycle mode: a sidecar deleted, then a byte flipped inside data.pkl.
    train(tmp_path, 1)
    os.unlink(tmp_path / (LATEST + ".json"))
    with zipfile.ZipFile(tmp_path / LATEST) as archive:
        entry = next(info for info in archive.infolist() if info.filename.endswith("/data.pkl"))
    with open(tmp_path / LATEST, "rb") as handle:
        handle.seek(entry.header_offset + 26)
        name_length, extra_length = struct.unpack("<HH", handle.read(4))
    pickle_start = entry.header_offset + 30 + name_length + extra_length
    with open(tmp_path / LATEST, "r+b") as handle:
        handle.seek(pickle_start + 2)  # just past PROTO 2: an opcode no pickler writes
        handle.write(bytes([252]))
    result = verify_checkpoint(tmp_path / LATEST)
    assert result.status == "corrupt" and "pickle is damaged" in result.reason, result


def test_missing_sidecar_is_missing_checksum_and_missing_file_is_missing(tmp_path):
    train(tmp_path, 1)
    os.unlink(tmp_path / (LATEST + ".json"))
    assert verify_checkpoint(tmp_path / LATEST).status == "missing-checksum"
    assert verify_checkpoint(tmp_path / "nothing.pt").status == "missing"
    with pytest.raises(CheckpointError, match="missing-checksum"):
        load_checkpoint(tmp_path / LATEST)


class _CreatesAFile:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_unsafe_pickle_is_reported_refused_and_never_executed(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "epoch_001_checkpoint.pt"
    torch.save({"format_version": 1, "epoch": 1, "payload": _CreatesAFile(marker)}, path)
    data = path.read_bytes()
    atomic_write_json(tmp_path / (path.name + ".json"),
                      {"sha256": sha256_bytes(data), "size_bytes": len(data), "kind": "periodic", "epoch": 1})

    result = verify_checkpoint(path)
    assert result.status == "unsafe" and "posix.system" in result.reason
    with pytest.raises(CheckpointError, match="posix.system"):
        load_checkpoint(path)
    with manager(tmp_path) as mgr:
        with pytest.raises(CheckpointError, match="unsafe"):
            mgr.load(1)
        with pytest.raises(CheckpointError, match="no checkpoint to resume from"):
            mgr.resolve("latest")
        assert [i.name for i in mgr.list()] == [path.name]
    assert not marker.exists()

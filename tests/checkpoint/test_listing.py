"""Listing a folder from sidecars alone (listing.list_checkpoints)."""

from __future__ import annotations

import json
import os

import pytest

from checkpoint_kit import BEST, LATEST, flip_byte, train
from useg.checkpoint import list_checkpoints


def test_list_reads_sidecars_only_and_flags_files_without_one(tmp_path):
    train(tmp_path, 4, total=4, dice=lambda e: 0.1 * e)
    flip_byte(tmp_path / "epoch_001_checkpoint.pt")  # same size: only hashing (verify) would notice
    (tmp_path / "stray.pt").write_bytes(b"not ours")
    infos = {i.name: i for i in list_checkpoints(tmp_path)}
    assert infos["epoch_001_checkpoint.pt"].valid
    assert infos["stray.pt"].status == "missing-checksum" and not infos["stray.pt"].valid
    assert (infos[LATEST].kind, infos[LATEST].epoch, infos[LATEST].train_loss) == ("latest", 4, 0.25)
    assert infos[BEST].val_dice == pytest.approx(0.4) and infos[BEST].kind == "best"
    assert infos[LATEST].best_val_dice == pytest.approx(0.4) and infos[LATEST].best_epoch == 4
    record = infos[LATEST].to_dict()
    assert {"path", "kind", "epoch", "val_dice", "train_loss", "size_bytes", "created", "valid"} <= set(record)
    json.dumps(record)


def test_list_survives_unreadable_sidecars_and_orphans(tmp_path):
    train(tmp_path, 2, total=2)
    (tmp_path / (LATEST + ".json")).write_text("{not json")
    os.unlink(tmp_path / "epoch_001_checkpoint.pt")
    infos = {i.name: i for i in list_checkpoints(tmp_path)}
    assert not infos[LATEST].valid and "unreadable" in infos[LATEST].reason
    assert infos["epoch_001_checkpoint.pt"].status == "missing"
    assert list_checkpoints(tmp_path / "no-such-dir") == []

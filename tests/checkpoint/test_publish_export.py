"""publish_export: the publish protocol for a pair that other programs read (a weights export)."""

from __future__ import annotations

import json

import pytest

from useg.checkpoint import publish, publish_export, sha256_bytes


def sidecar_of(data: bytes, **extra) -> dict:
    return {"weights": "w.pt", "sha256": sha256_bytes(data), "size_bytes": len(data), **extra}


def test_export_replaces_an_earlier_pair_leaving_only_the_pair(tmp_path):
    out = tmp_path / "w.pt"
    publish_export(out, b"old bytes", sidecar_of(b"old bytes", epoch=1, val_dice=float("nan")))
    assert json.loads((tmp_path / "w.pt.json").read_text())["val_dice"] is None  # strict JSON, as --json prints it
    (tmp_path / ".w.pt.abcd1234.tmp").write_bytes(b"left by a killed export")
    (tmp_path / ".w.pt.json.abcd_123.tmp").write_bytes(b"{}")
    publish_export(out, b"new bytes", sidecar_of(b"new bytes", epoch=2))
    assert out.read_bytes() == b"new bytes"
    text = (tmp_path / "w.pt.json").read_text()
    assert json.loads(text) == sidecar_of(b"new bytes", epoch=2)  # as given: no inode of ours in the user's JSON
    assert text.endswith("}\n") and text.startswith('{\n  "weights"')
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.pt", "w.pt.json"]  # no temps, no hash cache


def test_a_failure_before_the_rename_leaves_the_old_pair_and_no_temps(tmp_path, monkeypatch):
    out = tmp_path / "w.pt"
    publish_export(out, b"old bytes", sidecar_of(b"old bytes"))
    old_meta = (tmp_path / "w.pt.json").read_bytes()

    def failing(temp, final):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(publish, "replace_durably", failing)
    with pytest.raises(OSError):
        publish_export(out, b"new bytes", sidecar_of(b"new bytes"))
    assert out.read_bytes() == b"old bytes"
    assert not (tmp_path / "w.pt.json").exists() or (tmp_path / "w.pt.json").read_bytes() == old_meta
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []

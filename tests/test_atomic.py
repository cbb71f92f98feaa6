"""Atomic files (shipseg.core.atomic): complete or absent, with normal permissions."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from shipseg.core import atomic, errors


def test_atomic_writes_leave_normal_permissions(tmp_path):
    path = tmp_path / "out.json"
    atomic.write_json_atomically(path, {"a": 1})
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_a_staged_folder_replaces_the_old_one_only_when_complete(tmp_path):
    final = tmp_path / "final"
    final.mkdir()
    (final / "model.keras").write_text("old")
    with atomic.staged_folder(final) as staging:
        (staging / "model.keras").write_text("new")
        assert (final / "model.keras").read_text() == "old"  # untouched while it runs
    assert (final / "model.keras").read_text() == "new"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["final"]


def test_an_interrupted_staged_folder_leaves_the_old_one_and_is_named_next_time(tmp_path):
    final = tmp_path / "final"
    final.mkdir()
    (final / "model.keras").write_text("old")
    with pytest.raises(KeyboardInterrupt):
        with atomic.staged_folder(final) as staging:
            (staging / "model.keras").write_text("half")
            raise KeyboardInterrupt
    assert (final / "model.keras").read_text() == "old"
    messages = []
    with atomic.staged_folder(final, log=messages.append) as staging:
        assert not (staging / "model.keras").exists()  # the partial run is discarded
    assert len(messages) == 1 and "interrupted" in messages[0] and "final.partial" in messages[0]


def test_a_swap_cut_between_its_two_renames_is_undone_next_time(tmp_path):
    final = tmp_path / "final"
    (tmp_path / "final.previous").mkdir()
    (tmp_path / "final.previous" / "model.keras").write_text("old")
    messages = []
    with atomic.staged_folder(final, log=messages.append):
        assert (final / "model.keras").read_text() == "old"
    assert "restored" in messages[0]


def test_atomic_writes_are_flushed_to_disk_before_and_after_the_rename(tmp_path, monkeypatch):
    flushed = []
    real_fsync = os.fsync

    def spy(handle):
        flushed.append(Path(os.readlink(f"/proc/self/fd/{handle}")))
        real_fsync(handle)

    monkeypatch.setattr(os, "fsync", spy)
    atomic.write_text_atomically(tmp_path / "metrics.json", "{}")
    assert flushed[0].parent == tmp_path and flushed[0].name.startswith(".metrics.json.")
    assert flushed[-1] == tmp_path


def test_a_json_file_read_back_names_the_file_when_it_is_missing_or_not_json(tmp_path):
    path = tmp_path / "config.json"
    with pytest.raises(errors.UserError, match=f"^{re.escape(str(path))}: file not found$"):
        atomic.read_json(path)
    path.write_text('{"seed": 1,\n "epochs": }')
    with pytest.raises(
        errors.UserError,
        match=rf"^{re.escape(str(path))}: not valid JSON \(Expecting value, line 2\)$",
    ):
        atomic.read_json(path)
    path.write_bytes(b"PK\x03\x04\xff\xfe")  # e.g. a model.keras given for a JSON file
    with pytest.raises(errors.UserError, match="not a JSON file"):
        atomic.read_json(path)
    with pytest.raises(errors.UserError, match="cannot be read"):
        atomic.read_json(tmp_path)
    atomic.write_json_atomically(path, {"seed": 1})
    assert atomic.read_json(path) == {"seed": 1}

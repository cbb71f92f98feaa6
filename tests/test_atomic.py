"""Atomic files (shipseg.atomic): complete or absent, with normal permissions."""

from __future__ import annotations

import os

from shipseg import atomic


def test_atomic_writes_leave_normal_permissions(tmp_path):
    path = tmp_path / "out.json"
    atomic.write_json_atomically(path, {"a": 1})
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]

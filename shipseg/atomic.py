"""Atomic file writing: a result file either holds its whole content or does not exist.

Every result the toolkit writes goes through a temporary file in the same folder, renamed into
place, so that a run killed mid-write never leaves a half-written file under a complete name.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


def _read_umask() -> int:
    # os.umask can only be read by setting it: done once, at import, before any thread runs
    # (two threads doing this at once could leave the process's umask at 0).
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


_UMASK = _read_umask()


def write_atomically(path: str | os.PathLike, write, suffix: str | None = None) -> None:
    """Writes a file through a temporary file in the same folder, then renames it into place.

    Args:
        path: Destination.
        write: Function that takes the temporary path and writes the content there.
        suffix: Ending of the temporary file's name, for writers that check it (default: the
            destination's last suffix).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.", suffix=suffix or path.suffix
    )
    os.close(handle)
    try:
        write(temporary)
        # mkstemp creates owner-only files; give the result the permissions of a normal file.
        os.chmod(temporary, 0o666 & ~_UMASK)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_text_atomically(path: str | os.PathLike, text: str) -> None:
    """Writes text to ``path`` atomically."""
    write_atomically(path, lambda temporary: Path(temporary).write_text(text))


def write_json_atomically(path: str | os.PathLike, data) -> None:
    """Writes JSON to ``path`` atomically."""
    write_text_atomically(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")

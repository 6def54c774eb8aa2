"""Atomic file writes: a crash or an exception mid-write never leaves a partial file or corrupts the previous one.

The temporary file lies next to the target as ``.<name>.<pid>.<32 hex>.tmp``. A process killed mid-write (kill -9,
power loss) leaves it behind; ``remove_stale_temps`` deletes those whose writer is no longer running, and every
``atomic_path`` does so for its own target first.
"""
from __future__ import annotations

import contextlib
import os
import re
import time
import uuid
from pathlib import Path
from typing import Iterator

_TEMP = re.compile(r"^\.(?P<target>.+?)\.(?:(?P<pid>\d+)\.)?[0-9a-f]{32}\.tmp$")
"""Temporary files of atomic_path: ``.<target name>.<pid>.<32 hex>.tmp`` (no pid in files written before it was
recorded)."""
LEGACY_TEMP_AGE_S = 600.0
"""A temporary file without a writer pid counts as stale once it is this old, seconds."""


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success fsync it and rename it over ``path``, else delete it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path.parent, path.name)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def remove_stale_temps(directory: str | Path, name: str | None = None, suffix: str = "") -> list[Path]:
    """Delete the temporary files of interrupted atomic writes in ``directory`` (only those for target ``name``
    when given, and for targets ending in ``suffix``) whose writing process is gone; returns the deleted paths.
    Missing directories hold none."""
    directory = Path(directory)
    prefix = "." if name is None else f".{name}."
    try:
        candidates = [p for p in directory.iterdir() if p.name.startswith(prefix) and (m := _TEMP.match(p.name))
                      and (name is None or m["target"] == name) and m["target"].endswith(suffix)]
    except OSError:
        return []
    removed = []
    for path in candidates:
        if _writer_gone(path):
            with contextlib.suppress(OSError):
                path.unlink()
                removed.append(path)
    return removed


def _writer_gone(path: Path) -> bool:
    """Whether the process that wrote temporary file ``path`` no longer runs (by its pid, else by the file's age)."""
    pid = _TEMP.match(path.name)["pid"]
    if pid is None:
        try:
            return time.time() - path.stat().st_mtime > LEGACY_TEMP_AGE_S
        except OSError:
            return False
    if int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # another user's live process
        return False
    return False

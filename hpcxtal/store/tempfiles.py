"""Temporary files that writers left behind: ``.NAME.tmp-PID@HOST`` (and the
``.NAME.old-PID@HOST`` of a folder being swapped), see :func:`hpcxtal.store.hdf5.atomic_path`.

A killed writer never renames its temporary file. Such files are never read; this
module finds them, says whether their writer is gone, and removes those whose writer
ran on this host and no longer exists. A file of another host (or of an hpcxtal that
did not record the host) is only reported: on a shared file system its writer may
still be running elsewhere.
"""
from __future__ import annotations

import os
import re
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path

_NAME = re.compile(r"^\.(?P<name>.+)\.(?:tmp|old)-(?P<pid>\d+)(?:@(?P<host>.+))?$")


@dataclass(frozen=True)
class TempFile:
    """One leftover temporary file (or folder) and the writer that made it."""

    path: Path
    pid: int
    host: str | None  # None: written by an hpcxtal that did not record its host

    @property
    def writer_gone(self) -> bool:
        """Whether the writer ran on this host and its process no longer exists."""
        return self.host == socket.gethostname() and not _alive(self.pid)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def find_temp_files(root: str | os.PathLike) -> list[TempFile]:
    """Every leftover temporary file or folder under ``root``, in path order."""
    found = []
    for folder, dirs, files in os.walk(root):
        for name in files + dirs:
            match = _NAME.match(name)
            if match:
                found.append(TempFile(Path(folder) / name, int(match["pid"]), match["host"]))
        dirs[:] = [d for d in dirs if not _NAME.match(d)]
    return sorted(found, key=lambda t: t.path)


def remove_stale_temp_files(root: str | os.PathLike) -> list[Path]:
    """Remove the temporary files under ``root`` whose writer is gone (see
    :attr:`TempFile.writer_gone`); return their paths."""
    removed = []
    for temp in find_temp_files(root):
        if not temp.writer_gone:
            continue
        if temp.path.is_dir():
            shutil.rmtree(temp.path, ignore_errors=True)
        else:
            temp.path.unlink(missing_ok=True)
        removed.append(temp.path)
    return removed

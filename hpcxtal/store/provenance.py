"""What an output was made from, and whether it still is current.

Every stage output records the checksums of its inputs (``inputs_sha256``, a JSON list
in input order) and the fingerprint of its science settings (``stage_config``, see
:func:`hpcxtal.config.fingerprint`: resources such as devices, threads, workers and
batch budgets are left out, since they cannot change a number). An output is current
while it verifies, its inputs verify, and both records match the present inputs and
settings. Verification reads and hashes a whole file, so a :class:`Provenance` keeps
each answer per (path, inode, size, mtime): one process checks each file once, and never
a file it wrote itself (it knows the checksum it wrote).

Across processes, a campaign keeps a ledger (``DIR/.hpcxtal/verified.json``, a cache that
is safe to delete): ``hpcxtal status`` saves what it verified there, and every stage run
leaves what it wrote in a small file of its own beside it (``written/HOST-PID-N.json``,
one per run, so concurrent array tasks never share a file), which the next status folds
into the ledger. A file changed since (another inode, size or mtime) is read again.
"""
from __future__ import annotations

import itertools
import json
import os
import socket
from pathlib import Path
from typing import Sequence

from hpcxtal.config import fingerprint
from hpcxtal.store.hdf5 import atomic_path, checked_attrs, on_write

#: The attributes a ledger keeps per file (all that deciding current/stale reads).
_LEDGER_ATTRS = ("sha256", "inputs_sha256", "stage_config")


class Provenance:
    """Writes and reads what outputs were made from; caches file verification."""

    def __init__(self) -> None:
        self._seen: dict[Path, tuple[tuple[int, int, int], str | None, dict]] = {}
        self._written: set[Path] = set()  # written here since the last save_written
        self._folded: list[Path] = []  # other processes' written/ files loaded
        self._runs = itertools.count()

    def written(self, path: Path, attrs: dict[str, object]) -> None:
        """Note a table file this process has just written (complete, with ``attrs``)."""
        path = _absolute(path)
        st = path.stat()
        self._seen[path] = ((st.st_ino, st.st_size, st.st_mtime_ns), None,
                            {k: attrs[k] for k in _LEDGER_ATTRS if k in attrs})
        self._written.add(path)

    def forget(self, paths: Sequence[Path]) -> None:
        """Drop what this process knows of ``paths`` (files it is about to delete, such
        as kept chunks), so that no ledger records them."""
        for path in map(_absolute, paths):
            self._seen.pop(path, None)
            self._written.discard(path)

    def load_ledger(self, ledger: Path) -> None:
        """Trust the verifications a previous process saved in ``ledger``, and what stage
        runs wrote since (``written/`` beside it), for files that have not changed since
        (same inode, size and mtime): ``hpcxtal status`` on a campaign of thousands of
        shards then re-reads only what changed."""
        ledger = Path(ledger)
        written = sorted(p for p in _written_dir(ledger).glob("*.json")
                         if not p.name.startswith("."))
        for path in [ledger, *written]:
            try:
                entries = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            for name, (key, problem, attrs) in entries.items():
                self._seen[Path(name)] = (tuple(key), problem, attrs)
        self._folded = written

    def save_ledger(self, ledger: Path, under: Path) -> None:
        """Save the verifications of files below ``under`` into ``ledger`` and remove the
        ``written/`` files it folded in (atomically; a read-only campaign just keeps no
        ledger)."""
        try:
            _save_entries(Path(ledger), self._entries(under, self._seen))
            for path in self._folded:
                path.unlink(missing_ok=True)
        except OSError:
            pass
        self._folded = []

    def save_written(self, ledger: Path, under: Path) -> None:
        """Leave the files below ``under`` that this process wrote since the last call in
        a new file of ``written/`` beside ``ledger``, for the next status (an unwritable
        campaign just keeps none)."""
        mine = [p for p in self._written if _absolute(under) in p.parents]
        if not mine:
            return
        self._written.difference_update(mine)
        name = f"{socket.gethostname()}-{os.getpid()}-{next(self._runs)}.json"
        try:
            _save_entries(_written_dir(ledger) / name,
                          self._entries(under, {p: self._seen[p] for p in mine}))
        except OSError:
            pass

    @staticmethod
    def _entries(under: Path, seen: dict) -> dict[str, list]:
        under = _absolute(under)
        return {str(p): [list(key), problem, {k: attrs[k] for k in _LEDGER_ATTRS if k in attrs}]
                for p, (key, problem, attrs) in seen.items() if under in p.parents}

    def check(self, path: str | os.PathLike) -> tuple[str | None, dict]:
        """(None, attributes) if ``path`` is a complete, uncorrupted table file, else
        (what is wrong, {})."""
        path = _absolute(path)
        try:
            st = path.stat()
        except OSError:
            return f"{path}: no such file", {}
        key = (st.st_ino, st.st_size, st.st_mtime_ns)
        seen = self._seen.get(path)
        if seen is not None and seen[0] == key:
            return seen[1], seen[2]
        problem, attrs = checked_attrs(path)
        self._seen[path] = (key, problem, attrs)
        return problem, attrs

    def problem(self, path: str | os.PathLike) -> str | None:
        """None if ``path`` verifies, else what is wrong (naming it)."""
        return self.check(path)[0]

    def checksums(self, sources: Sequence[Path]) -> str:
        """The ``inputs_sha256`` record of ``sources`` (each must verify)."""
        return json.dumps([str(self.check(p)[1].get("sha256", "")) for p in sources])

    def stamp(self, sources: Sequence[Path], cfg: object) -> dict[str, str]:
        """The attributes an output made from ``sources`` with ``cfg`` records."""
        return {"inputs_sha256": self.checksums(sources), "stage_config": fingerprint(cfg)}

    def stale_reason(self, dest: Path, sources: Sequence[Path], cfg: object) -> str | None:
        """None if ``dest`` verifies and was made from the present ``sources`` with the
        science settings of ``cfg``, else why not, naming ``dest``."""
        problem, made = self.check(dest)
        if problem is not None:
            return problem
        for src in sources:
            problem = self.problem(src)
            if problem is not None:
                return f"{dest}: its input does not verify ({problem})"
        if made.get("inputs_sha256") != self.checksums(sources):
            what = (str(sources[0]) if len(sources) == 1
                    else f"its {len(sources)} inputs ({sources[0]}, ...)")
            return f"{dest}: made from another version of {what}"
        if made.get("stage_config") != fingerprint(cfg):
            return f"{dest}: made with another stage config"
        return None


def _absolute(path: str | os.PathLike) -> Path:
    """One spelling per file (a campaign run as ``camp`` and checked as ``/x/camp``)."""
    return Path(os.path.abspath(path))


def _written_dir(ledger: Path) -> Path:
    return Path(ledger).with_name("written")


def _save_entries(path: Path, entries: dict[str, list]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(entries))


#: The process's provenance reader (one cache for every stage it runs, and every table
#: file it writes).
PROVENANCE = Provenance()
on_write(PROVENANCE.written)

"""What an output was made from, and whether it still is current.

Every stage output records the checksums of its inputs (``inputs_sha256``, a JSON list
in input order) and the fingerprint of its science settings (``stage_config``, see
:func:`hpcxtal.config.fingerprint`: resources such as devices, threads, workers and
batch budgets are left out, since they cannot change a number). An output is current
while it verifies, its inputs verify, and both records match the present inputs and
settings. Verification reads and hashes a whole file, so a :class:`Provenance` keeps
each answer per (path, inode, size, mtime): one process checks each file once.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

from hpcxtal.config import fingerprint
from hpcxtal.store.hdf5 import atomic_path, checked_attrs

#: The attributes a ledger keeps per file (all that deciding current/stale reads).
_LEDGER_ATTRS = ("sha256", "inputs_sha256", "stage_config")


class Provenance:
    """Writes and reads what outputs were made from; caches file verification."""

    def __init__(self) -> None:
        self._seen: dict[Path, tuple[tuple[int, int, int], str | None, dict]] = {}

    def load_ledger(self, ledger: Path) -> None:
        """Trust the verifications a previous process saved in ``ledger`` for files that
        have not changed since (same inode, size and mtime): ``hpcxtal status`` on a
        campaign of thousands of shards then re-reads only what changed."""
        try:
            entries = json.loads(Path(ledger).read_text())
        except (OSError, ValueError):
            return
        for name, (key, problem, attrs) in entries.items():
            self._seen.setdefault(Path(name), (tuple(key), problem, attrs))

    def save_ledger(self, ledger: Path, under: Path) -> None:
        """Save the verifications of files below ``under`` into ``ledger`` (atomically; a
        read-only campaign just keeps no ledger)."""
        under = Path(under)
        entries = {str(p): [list(key), problem, {k: attrs[k] for k in _LEDGER_ATTRS if k in attrs}]
                   for p, (key, problem, attrs) in self._seen.items() if under in p.parents}
        try:
            Path(ledger).parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(ledger) as tmp:
                tmp.write_text(json.dumps(entries))
        except OSError:
            pass

    def check(self, path: str | os.PathLike) -> tuple[str | None, dict]:
        """(None, attributes) if ``path`` is a complete, uncorrupted table file, else
        (what is wrong, {})."""
        path = Path(path)
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


#: The process's provenance reader (one cache for every stage it runs).
PROVENANCE = Provenance()

"""Checks that files given together belong together.

A stage that takes several files (merge: relax outputs and the pool they came from)
must not mix campaigns: ids run 0, 1, 2 ... in every pool, so equal ids prove
nothing. Rows keep their ``origin`` (file and line, or generator) from the pool to
the database, so a row of another pool shows up as a different origin.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from hpcxtal.store.hdf5 import StoreError
from hpcxtal.store.table import Table


def check_pool_matches(pool: Table, pool_path: str | Path, tables: Sequence[Table]) -> None:
    """Raise :class:`StoreError` naming ``pool_path`` unless the rows of ``tables`` are
    exactly the pool's rows: the same ids, each with the pool's origin, space group and
    Wyckoff positions (which no stage changes)."""
    have = np.concatenate([t["id"] for t in tables]) if tables else np.zeros(0, np.uint64)
    if not np.array_equal(np.sort(have), np.sort(pool["id"])):
        lost = np.setdiff1d(pool["id"], have)[:10].tolist()
        extra = np.setdiff1d(have, pool["id"])[:10].tolist()
        raise StoreError(f"{pool_path}: the relax outputs do not hold exactly the pool's rows "
                         f"(missing ids {lost}, ids not in the pool {extra})")
    where = {int(i): k for k, i in enumerate(pool["id"])}
    for table in tables:
        k = np.array([where[int(i)] for i in table["id"]], dtype=np.int64)
        differs = ((np.asarray(table["origin"]) != np.asarray(pool["origin"])[k])
                   | (table["spg"] != pool["spg"][k])
                   | (table["wps"] != pool["wps"][k]).any(axis=1))
        if differs.any():
            j = int(np.flatnonzero(differs)[0])
            raise StoreError(
                f"{pool_path}: not the pool these rows came from (id {int(table['id'][j])} is "
                f"{table['origin'][j]!r}, space group {int(table['spg'][j])} in the relax output "
                f"but {pool['origin'][k[j]]!r}, space group {int(pool['spg'][k[j]])} in the pool, "
                "or its Wyckoff positions differ); "
                "give the pool of this campaign")

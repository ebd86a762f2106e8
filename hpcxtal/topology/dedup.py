"""First de-duplication across shards: one representative per net in the whole campaign.

The topology stage de-duplicates within its shard. Before relaxation the campaign's
shard representatives are compared by (topology key, dimensionality, atoms per primitive
cell); of a net found in several shards only the lowest id is relaxed. The index this
writes holds every shard representative that is a duplicate of one in another shard,
with that representative's id; relax applies it to its shard's rows.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from hpcxtal.store.hdf5 import read_table, write_table
from hpcxtal.store.table import Table


def cross_shard_index(sources: list[Path], dest: Path, **attrs: object) -> dict[str, int]:
    """Write to ``dest`` the shard representatives of the topology files ``sources`` whose
    net has a lower-id representative in another shard (columns id, duplicate_of,
    shard); returns counts (representatives, nets, cross_shard_duplicates)."""
    first: dict[tuple, int] = {}  # (key, dimension, n_prim) -> lowest representative id
    reps: list[tuple[int, tuple, int]] = []  # (id, net, shard)
    for shard, path in enumerate(sources):
        table, _ = read_table(path)
        ids = np.asarray(table["id"], dtype=np.uint64)
        own = (np.asarray(table["duplicate_of"], dtype=np.uint64) == ids) \
            & (np.asarray(table["dimension"]) >= 0)
        if "valid" in table:
            own &= np.asarray(table["valid"], dtype=bool)
        for k in np.flatnonzero(own):
            net = (str(table["topology"][k]), int(table["dimension"][k]), int(table["n_prim"][k]))
            rid = int(ids[k])
            reps.append((rid, net, shard))
            first[net] = min(first.get(net, rid), rid)
    dup = [(rid, first[net], shard) for rid, net, shard in reps if first[net] != rid]
    columns = {
        "id": np.array([d[0] for d in dup], dtype=np.uint64),
        "duplicate_of": np.array([d[1] for d in dup], dtype=np.uint64),
        "shard": np.array([d[2] for d in dup], dtype=np.int32),
    }
    counts = {"representatives": len(reps), "nets": len(first), "cross_shard_duplicates": len(dup)}
    write_table(dest, Table(columns), kind="dedup", **counts, **attrs)
    return counts


def apply_index(table: Table, index: Table) -> Table:
    """``table`` (a topology file's rows) with ``duplicate_of`` pointing at the campaign's
    representative wherever the index names a lower-id one in another shard (the rows
    of the shard that followed their shard representative follow it too)."""
    if not len(index):
        return table
    lower = dict(zip(np.asarray(index["id"], dtype=np.uint64).tolist(),
                     np.asarray(index["duplicate_of"], dtype=np.uint64).tolist()))
    dup = np.asarray(table["duplicate_of"], dtype=np.uint64).copy()
    for k, rep in enumerate(dup.tolist()):
        if rep in lower:
            dup[k] = lower[rep]
    out = Table(dict(table.columns), table.structures, dict(table.attrs))
    out.columns["duplicate_of"] = dup
    return out

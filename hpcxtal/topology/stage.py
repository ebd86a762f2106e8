"""The topology stage: signature, dimensionality and first de-duplication of a table."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from hpcxtal.config import to_mapping
from hpcxtal.store.hdf5 import file_summary, read_table, write_table
from hpcxtal.store.table import Table, str_array

#: Columns the stage adds.
TOPOLOGY_COLUMNS = ("topology", "dimension", "n_prim", "duplicate_of")


def topology_output(campaign_root: Path, shard: int) -> Path:
    """Where the campaign's topology output of shard ``shard`` lives."""
    return Path(campaign_root) / "topology" / f"topology-{shard:04d}.h5"


def topology_file(src: Path, dest: Path, cfg, workers: int | None = None,
                  **attrs: object) -> dict[str, int]:
    """Add topology, dimension, n_prim and duplicate_of to every row of ``src``.

    Where the table has a ``valid`` column (refined rows), only valid rows get a
    signature and take part in the de-duplication; the others keep an empty key,
    dimension -1 and their own id. Nothing is dropped."""
    from hpcxtal.topology.annotate import SignatureParams, annotate_table

    table, quarantine = read_table(src)
    params = SignatureParams(cutoffs=cfg.cutoffs(), depth=cfg.depth, max_ring=cfg.max_ring)
    chosen = np.flatnonzero(table["valid"]) if "valid" in table else np.arange(len(table))
    done = annotate_table(table.take(chosen), params, workers or cfg.workers)
    columns = {k: v for k, v in table.columns.items() if k not in TOPOLOGY_COLUMNS}
    keys = [""] * len(table)
    for k, key in zip(chosen, done["topology"]):
        keys[k] = key
    dimension = np.full(len(table), -1, dtype=np.int8)
    n_prim = np.zeros(len(table), dtype=np.int32)
    duplicate_of = np.asarray(table["id"], dtype=np.uint64).copy()
    dimension[chosen], n_prim[chosen] = done["dimension"], done["n_prim"]
    duplicate_of[chosen] = done["duplicate_of"]
    columns.update(topology=str_array(keys), dimension=dimension, n_prim=n_prim,
                   duplicate_of=duplicate_of)
    out = Table(columns, table.structures, dict(table.attrs))
    write_table(dest, out, kind="topology", quarantine=quarantine, source=str(src),
                source_sha256=str(file_summary(src)["attrs"].get("sha256", "")),
                stage_config=json.dumps(to_mapping(cfg)), **attrs)
    signed = len(chosen)
    failed = int((done["dimension"] < 0).sum())
    duplicates = int((done["duplicate_of"] != done["id"]).sum())
    return {"rows": len(out), "signed": signed, "unique": signed - duplicates - failed,
            "duplicates": duplicates, "failed": failed}

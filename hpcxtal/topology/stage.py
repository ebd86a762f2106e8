"""The topology stage: signature, dimensionality and first de-duplication of a table."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hpcxtal.config import resource
from hpcxtal.store.hdf5 import read_table, write_table
from hpcxtal.store.table import Table, str_array


@dataclass(frozen=True, kw_only=True)
class TopologyConfig:
    """Bond graph and signature settings for the topology stage."""

    cutoff_A: float = 1.872
    pair_cutoffs_A: dict[str, float] = field(default_factory=dict)
    depth: int = 12
    max_ring: int = 12
    workers: int | None = resource(None)  # processes (None: all usable cores)

    def __post_init__(self) -> None:
        if not 0 < self.cutoff_A < 10:
            raise ValueError(f"cutoff_A must be in (0, 10) Å, got {self.cutoff_A}")
        if self.depth < 10:
            raise ValueError(f"depth must be at least 10, got {self.depth}")
        if self.max_ring < 3:
            raise ValueError(f"max_ring must be at least 3, got {self.max_ring}")
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"workers must be at least 1 or null (all cores), got {self.workers}")
        self.cutoffs()

    def cutoffs(self) -> dict[tuple[str, str], float]:
        """Per element-pair cutoffs: C-C from ``cutoff_A``, then ``pair_cutoffs_A``
        (keys like ``"C-N"``)."""
        from ase.data import atomic_numbers

        out = {("C", "C"): self.cutoff_A}
        for name, value in self.pair_cutoffs_A.items():
            pair = tuple(str(name).split("-"))
            if len(pair) != 2 or any(p not in atomic_numbers for p in pair):
                raise ValueError(f"pair_cutoffs_A: key {name!r} is not an element pair like 'C-N'")
            if not isinstance(value, (int, float)) or not 0 < value < 10:
                raise ValueError(f"pair_cutoffs_A[{name!r}] must be a number in (0, 10) Å")
            out[pair] = float(value)
        return out

#: Columns the stage adds.
TOPOLOGY_COLUMNS = ("topology", "dimension", "n_prim", "duplicate_of")



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
    write_table(dest, out, kind="topology", quarantine=quarantine, source=str(src), **attrs)
    signed = len(chosen)
    failed = int((done["dimension"] < 0).sum())
    duplicates = int((done["duplicate_of"] != done["id"]).sum())
    return {"rows": len(out), "signed": signed, "unique": signed - duplicates - failed,
            "duplicates": duplicates, "failed": failed}

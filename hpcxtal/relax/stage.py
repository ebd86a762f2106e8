"""The relax stage on files: a table in, the same rows with energies out.

The rows are cut into chunks of near-equal atom count of the rows to relax
(:mod:`hpcxtal.parallel`) relaxed by ``cfg.workers`` processes (default: one per
usable core, one on a GPU), each loading the model once; the output does not depend
on the number of workers.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from hpcxtal.parallel import (ChunkKernel, KeptChunks, Workers, default_workers, n_chunks,
                              plan_chunks)
from hpcxtal.relax.config import RelaxConfig
from hpcxtal.store.hdf5 import read_table, write_table
from hpcxtal.store.table import Table

log = logging.getLogger(__name__)


class RelaxRunner:
    """The relax stage's energy model, optimiser settings and graphite reference, set up
    once (on first use) and reused for every file a process relaxes."""

    def __init__(self, cfg: RelaxConfig):
        self.cfg = cfg
        self._setup: tuple | None = None
        self._references: dict[int, float] = {}
        self._workers = Workers(relax_kernel, cfg, cfg.workers or default_workers(cfg.device),
                                "relax")

    def setup(self) -> tuple:
        """(model, optimiser parameters, graphite energy per atom), built on first call."""
        if self._setup is None:
            from hpcxtal.relax.engine import RelaxParams
            from hpcxtal.relax.models import load_model
            from hpcxtal.relax.reference import graphite_energy

            cfg = self.cfg
            model = load_model(cfg.backend, cfg.model, cfg.dtype, cfg.device, cfg.model_dir)
            log.info("energy model: %s (%s)", model.source, cfg.dtype)
            params = RelaxParams(optimizer=cfg.optimizer, fmax_eV_per_A=cfg.fmax_eV_per_A,
                                 max_steps=cfg.max_steps, steps_per_atom=cfg.steps_per_atom,
                                 batch_atom_budget=cfg.batch_atom_budget,
                                 batch_edge_budget=cfg.batch_edge_budget,
                                 symmetrize=cfg.symmetrize, symprec_A=cfg.symprec_A)
            self._setup = (model, params, graphite_energy(model, params))
        return self._setup

    def references(self, numbers: np.ndarray) -> dict[int, float]:
        """Energy per atom of the standard state of every element in ``numbers`` (and
        carbon: graphite), each relaxed once per runner with its model and settings."""
        from hpcxtal.relax.reference import elemental_energy

        model, params, e_graphite = self.setup()
        self._references.setdefault(6, e_graphite)
        for z in sorted(set(np.asarray(numbers, dtype=int).tolist()) - set(self._references)):
            model.check_elements(np.array([z]))
            self._references[z] = elemental_energy(z, model, params)
            log.info("elemental reference Z=%d: %.4f eV/atom", z, self._references[z])
        return self._references

    def relax_rows(self, table: Table) -> Table:
        """The rows of ``table`` that are worth it relaxed (one chunk's work), with the
        graphite reference (and those of other elements), and the model's description in
        the table's attributes."""
        from hpcxtal.relax.table import relax_selection, relax_table

        model, params, e_graphite = self.setup()
        chosen, skipped = relax_selection(table)
        numbers = np.concatenate([table["species"][chosen][table["wps"][chosen] >= 0],
                                  [] if table.structures is None else
                                  table.structures.take(chosen).numbers]).astype(int)
        references = self.references(numbers)
        out = relax_table(table, model, params, references, chosen, skipped)
        out.attrs.update(e_graphite_eV_per_atom=e_graphite, **model.describe())
        others = {z: e for z, e in references.items() if z != 6 and z in numbers}
        if others:
            from ase.data import chemical_symbols

            out.attrs["elemental_references_eV_per_atom"] = json.dumps(
                {chemical_symbols[z]: e for z, e in sorted(others.items())})
        return out

    def relax(self, table: Table, kept: KeptChunks | None = None) -> Table:
        """The rows of ``table`` that are worth it relaxed by this runner's workers, in
        chunks fixed by the rows (:func:`relax_chunks`; finished ones kept in ``kept``);
        the table needs a row to relax."""
        return self._workers.map(table, relax_chunks(table, self.cfg), kept)

    def run(self, src: Path, dest: Path, dedup: Path | None = None,
            **attrs: object) -> dict[str, int]:
        """Relax the rows of ``src`` that are worth it into ``dest``: every row of a plain
        table, or the CN-valid topology representatives of a topology file (the rest
        pass through with the reason in ``status``), leaving out those the campaign's
        cross-shard index ``dedup`` names as duplicates of another shard's; quarantined
        rows pass through; ``attrs`` (e.g. the provenance stamp) are recorded on the file."""
        from hpcxtal.relax.table import status_counts
        from hpcxtal.topology.dedup import apply_index

        table, quarantine = read_table(src)
        if dedup is not None:
            table = apply_index(table, read_table(dedup)[0])
        kept = KeptChunks(dest, attrs)
        out = self.relax(table, kept)
        counts = status_counts(out, self.cfg.low_energy_window_eV)
        write_table(dest, out, kind="relax", quarantine=quarantine, source=str(src),
                    low_energy_window_eV=self.cfg.low_energy_window_eV,
                    **{f"n_{k}": v for k, v in counts.items() if k != "rows"}, **attrs)
        kept.clear()
        log.info("%s: %d rows, %d relaxed: %d converged, %d not converged, %d failed, %d within "
                 "%.2f eV/atom of graphite", dest, counts["rows"], counts["relaxed"],
                 counts["converged"], counts["not_converged"], counts["failed"],
                 counts["low_energy"], self.cfg.low_energy_window_eV)
        return counts


def relax_kernel(cfg: RelaxConfig) -> ChunkKernel:
    """The chunk kernel of a relax worker: its own runner, the model loaded once."""
    return RelaxRunner(cfg).relax_rows


def relax_chunks(table: Table, cfg: RelaxConfig) -> list[np.ndarray]:
    """The chunks a table is relaxed in: table order, ``cfg.chunk_rows`` rows to relax
    each on average, near-equal atoms to relax (skipped rows cost nothing)."""
    from hpcxtal.crystal.freevars import row_layout
    from hpcxtal.relax.table import relax_selection

    chosen, _ = relax_selection(table)
    stored = table.structures.natoms if table.structures is not None else np.zeros(len(table), int)
    cost = np.zeros(len(table))
    cost[chosen] = [stored[i] or row_layout(int(table["spg"][i]), table["wps"][i]).n_atoms
                    for i in chosen]
    return plan_chunks(np.arange(len(table)), cost, n_chunks(len(chosen), cfg.chunk_rows))


def relax_file(src: Path, dest: Path, cfg: RelaxConfig, **attrs: object) -> dict[str, int]:
    """The relax stage on explicit files: ``src`` relaxed into ``dest``."""
    return RelaxRunner(cfg).run(src, dest, **attrs)

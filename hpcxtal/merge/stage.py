"""The merge stage on files: verified relax outputs (and their pool) into one database."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from hpcxtal.data import resolve_input
from hpcxtal.merge.database import MergeConfig, build_database, read_relax_outputs
from hpcxtal.relax.config import RelaxConfig
from hpcxtal.store.hdf5 import read_table, write_table
from hpcxtal.store.lineage import check_pool_matches
from hpcxtal.topology.stage import TopologyConfig

log = logging.getLogger(__name__)


def merge_files(sources: list[Path], dest: Path, cfg: MergeConfig,
                topology: TopologyConfig | None = None, pool: Path | None = None,
                workers: int | None = None, target: str = "graphite",
                **attrs: object) -> dict[str, int]:
    """The merge stage on explicit files: relax outputs ``sources`` into one ranked
    database ``dest``. Every input is verified first; with ``pool`` (the pool the rows
    came from) its quarantine is carried for the accounting, and every pool row must be
    in exactly one input. ``topology`` gives the signature settings for relaxed
    structures, known phases and training structures (default: the topology stage's
    defaults); relaxed structures must keep the coordination rule of ``target``;
    ``attrs`` (e.g. the provenance stamp) are recorded on the database."""
    from hpcxtal.descriptor.target import load_targets
    from hpcxtal.screen.known import known_phases
    from hpcxtal.screen.validate import RowClass
    from hpcxtal.topology.annotate import SignatureParams
    from hpcxtal.topology.training import training_set

    inputs = read_relax_outputs(sources)
    pool_quarantine = None
    if pool is not None:
        pool_table, pool_quarantine = read_table(pool)
        check_pool_matches(pool_table, pool, [t for t, _ in inputs])
    topology = topology or TopologyConfig()
    params = SignatureParams(cutoffs=topology.cutoffs(), depth=topology.depth,
                             max_ring=topology.max_ring)
    training = training_set(resolve_input(cfg.training), params, workers) if cfg.training else {}
    first = inputs[0][0].attrs
    window = (cfg.low_energy_window_eV if cfg.low_energy_window_eV is not None
              else float(first.get("low_energy_window_eV", RelaxConfig().low_energy_window_eV)))
    targets = load_targets()
    if target not in targets:
        raise ValueError(f"unknown target {target!r}; defined: {sorted(targets)}")
    table, quarantine = build_database(inputs, cfg, training, window, pool_quarantine,
                                       target=targets[target], params=params,
                                       known=known_phases(params, workers), workers=workers)
    model = {k: v for k, v in first.items() if k.startswith(("model_", "rescore_"))}
    n_sampled = (len(table) + len(quarantine) if pool is None
                 else len(pool_table) + len(pool_quarantine or []))
    counts = {"rows": len(table), "quarantined": len(quarantine),
              "relaxed": int((table.structures.natoms > 0).sum()),
              "unique": int(table["unique"].sum()), "low_energy": int(table["low_energy"].sum()),
              "in_training": int(table["in_training"].sum()),
              "new": int((table["class"] == RowClass.NEW).sum()),
              "known": int((table["class"] == RowClass.KNOWN).sum()),
              "rescored": int((table["tier"] == "rescore").sum())}
    write_table(dest, table, kind="database", quarantine=quarantine,
                sources=json.dumps([str(p) for p in sources]), target=target,
                symprec_A=cfg.symprec_A,
                e_graphite_eV_per_atom=float(first.get("e_graphite_eV_per_atom", np.nan)),
                low_energy_window_eV=window, n_sampled=n_sampled,
                **model, **attrs)
    log.info("%s: %d rows (%d relaxed, %d unique, %d new, %d known, %d within %.2f eV/atom of "
             "graphite, %d in the training set), %d quarantined", dest, counts["rows"],
             counts["relaxed"], counts["unique"], counts["new"], counts["known"],
             counts["low_energy"], window, counts["in_training"], counts["quarantined"])
    return counts

"""Stage functions: files in, files out, no Parsl, MPI or argparse inside.

Each stage has a function on explicit files and one on a campaign directory; the
campaign version resolves paths from the campaign, skips outputs that already exist
and verify, and records the stage in the manifest.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hpcxtal.campaign import Campaign, ImportConfig, RelaxConfig, ShardConfig
from hpcxtal.config import ConfigError, to_mapping
from hpcxtal.data import resolve_input
from hpcxtal.store.formats import import_files
from hpcxtal.store.hdf5 import file_summary, read_table, verify_file, write_table
from hpcxtal.store.shard import shard_path, write_shards

log = logging.getLogger(__name__)


@dataclass
class StageReport:
    """What a stage did: files written (or found complete) and row counts."""

    outputs: list[Path]
    counts: dict[str, int] = field(default_factory=dict)
    skipped: bool = False


def import_pool(sources: list[str], dest: Path, cfg: ImportConfig,
                **attrs: object) -> StageReport:
    """Import CSV / CIF / extxyz / ASE db / hpcxtal tables into one pool file."""
    paths = [resolve_input(s) for s in sources]
    table, quarantine = import_files(paths, cfg.snap_tolerance_A, cfg.symmetry_tolerance_A)
    write_table(dest, table, kind="pool", quarantine=quarantine,
                sources=[str(p) for p in paths], **attrs)
    return StageReport([dest], {"rows": len(table), "quarantined": len(quarantine)})


def shard_pool(src: Path, dest_dir: Path, cfg: ShardConfig, **attrs: object) -> StageReport:
    """Cut a pool into ``cfg.n_shards`` cost-balanced shard files."""
    table, _ = read_table(src)
    paths = write_shards(table, cfg.n_shards, dest_dir, source=str(src), **attrs)
    return StageReport(paths, {"rows": len(table), "shards": len(paths)})


def _outputs_complete(paths: list[Path]) -> bool:
    return bool(paths) and all(verify_file(p) is None for p in paths)


def import_campaign(campaign: Campaign, force: bool = False) -> StageReport:
    """The campaign's ``import`` stage: its configured inputs into ``pool.h5``."""
    dest = campaign.pool_path
    if not force and _outputs_complete([dest]):
        return StageReport([dest], skipped=True)
    cfg = campaign.config.import_
    campaign.start("import", [resolve_input(s) for s in cfg.inputs], cfg)
    report = import_pool(cfg.inputs, dest, cfg, campaign_id=campaign.campaign_id)
    campaign.finish("import", report.outputs, **report.counts)
    return report


def shard_campaign(campaign: Campaign, force: bool = False) -> StageReport:
    """The campaign's ``shard`` stage: ``pool.h5`` into ``shards/shard-NNNN.h5``."""
    cfg = campaign.config.shard
    dests = [shard_path(campaign.shard_dir, i) for i in range(cfg.n_shards)]
    if not force and _outputs_complete(dests):
        return StageReport(dests, skipped=True)
    if verify_file(campaign.pool_path) is not None:
        raise FileNotFoundError(f"{campaign.pool_path}: the pool is missing or does not verify; "
                                f"run 'hpcxtal import {campaign.root}' first")
    campaign.start("shard", [campaign.pool_path], cfg)
    for stale in campaign.shard_dir.glob("shard-*.h5"):
        stale.unlink()
    report = shard_pool(campaign.pool_path, campaign.shard_dir, cfg,
                        campaign_id=campaign.campaign_id)
    campaign.finish("shard", report.outputs, **report.counts)
    return report



class RelaxRunner:
    """The relax stage's energy model, FIRE settings and graphite reference, set up
    once (on first use) and reused for every file a process relaxes."""

    def __init__(self, cfg: RelaxConfig):
        self.cfg = cfg
        self._setup: tuple | None = None

    def setup(self) -> tuple:
        """(model, FIRE parameters, graphite energy per atom), built on first call."""
        if self._setup is None:
            from hpcxtal.relax.fire import FireParams
            from hpcxtal.relax.models import load_model
            from hpcxtal.relax.reference import graphite_energy

            cfg = self.cfg
            model = load_model(cfg.backend, cfg.model, cfg.dtype, cfg.device, cfg.model_dir)
            log.info("energy model: %s (%s)", model.source, cfg.dtype)
            params = FireParams(fmax_eV_per_A=cfg.fmax_eV_per_A, max_steps=cfg.max_steps,
                                steps_per_atom=cfg.steps_per_atom,
                                batch_atom_budget=cfg.batch_atom_budget)
            self._setup = (model, params, graphite_energy(model, params))
        return self._setup

    def run(self, src: Path, dest: Path, **attrs: object) -> StageReport:
        """Relax every row of ``src`` into ``dest`` (quarantined rows pass through)."""
        from hpcxtal.relax.table import relax_table, status_counts

        table, quarantine = read_table(src)
        model, params, e_graphite = self.setup()
        out = relax_table(table, model, params, e_graphite)
        counts = status_counts(out, self.cfg.low_energy_window_eV)
        write_table(dest, out, kind="relax", quarantine=quarantine, source=str(src),
                    source_sha256=file_summary(src)["attrs"]["sha256"],
                    relax_parameters=json.dumps(to_mapping(self.cfg)),
                    e_graphite_eV_per_atom=e_graphite,
                    low_energy_window_eV=self.cfg.low_energy_window_eV,
                    **model.describe(), **{f"n_{k}": v for k, v in counts.items() if k != "rows"}, **attrs)
        log.info("%s: %d rows, %d converged, %d not converged, %d failed, %d within %.2f "
                 "eV/atom of graphite", dest, counts["rows"], counts["converged"],
                 counts["not_converged"], counts["failed"], counts["low_energy"],
                 self.cfg.low_energy_window_eV)
        return StageReport([dest], counts)


def relax_file(src: Path, dest: Path, cfg: RelaxConfig, **attrs: object) -> StageReport:
    """The relax stage on explicit files: ``src`` relaxed into ``dest``."""
    return RelaxRunner(cfg).run(src, dest, **attrs)


def relax_campaign(campaign: Campaign, shard: int | None = None,
                   force: bool = False) -> StageReport:
    """The campaign's ``relax`` stage: ``shards/shard-I.h5`` into ``relax/relax-I.h5``
    for one shard (``shard``, as one task of a job array would) or all of them. A shard
    whose output exists and verifies is skipped unless ``force``."""
    n_shards = campaign.config.shard.n_shards
    if shard is not None and not 0 <= shard < n_shards:
        raise ConfigError(f"--shard {shard}: the campaign has shards 0..{n_shards - 1}")
    todo = [shard] if shard is not None else list(range(n_shards))
    dests = [campaign.relax_path(i) for i in todo]
    work = [(i, d) for i, d in zip(todo, dests) if force or verify_file(d) is not None]
    if not work:
        return StageReport(dests, skipped=True)
    for i, _ in work:
        src = shard_path(campaign.shard_dir, i)
        if verify_file(src) is not None:
            raise FileNotFoundError(f"{src}: the shard is missing or does not verify; run "
                                    f"'hpcxtal shard {campaign.root}' first")
    cfg = campaign.config.relax
    campaign.start("relax", [shard_path(campaign.shard_dir, i) for i, _ in work], cfg)
    campaign.relax_dir.mkdir(exist_ok=True)
    runner = RelaxRunner(cfg)
    counts: dict[str, int] = {}
    for i, dest in work:
        report = runner.run(shard_path(campaign.shard_dir, i), dest,
                            campaign_id=campaign.campaign_id, shard=i, n_shards=n_shards)
        for k, v in report.counts.items():
            counts[k] = counts.get(k, 0) + v
    all_dests = [campaign.relax_path(i) for i in range(n_shards)]
    if _outputs_complete(all_dests):
        campaign.finish("relax", all_dests, **_relax_totals(all_dests))
    else:
        campaign.record("relax", status="partial",
                        outputs=[campaign._rel(p) for p in all_dests if verify_file(p) is None])
    return StageReport(dests, counts)


def _relax_totals(paths: list[Path]) -> dict[str, int]:
    """Row counts summed over relax outputs, from their attributes."""
    totals: dict[str, int] = {}
    for p in paths:
        for k, v in file_summary(p)["attrs"].items():
            if k.startswith("n_") and k != "n_shards" and isinstance(v, (int, np.integer)):
                totals[k[2:]] = totals.get(k[2:], 0) + int(v)
    return totals

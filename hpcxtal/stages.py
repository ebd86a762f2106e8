"""Stage functions: files in, files out, no Parsl, MPI or argparse inside.

Each stage has a function on explicit files and one on a campaign directory; the
campaign version resolves paths from the campaign, skips outputs that already exist
and verify, and records the stage in the manifest.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from hpcxtal.campaign import Campaign, ImportConfig, SampleConfig, ShardConfig
from hpcxtal.data import resolve_input
from hpcxtal.store.formats import import_files
from hpcxtal.store.hdf5 import read_table, verify_file, write_table
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


def sample_to_pool(dest: Path, cfg: SampleConfig, seed: int, **attrs: object) -> StageReport:
    """Sample ``cfg.n`` candidates from the generator into one pool file."""
    from hpcxtal.generate.sample import sample_pool

    table, quarantine = sample_pool(cfg.model, cfg.n, seed=seed, mode=cfg.conditions)
    write_table(dest, table, kind="pool", quarantine=quarantine, **attrs)
    return StageReport([dest], {"rows": len(table), "quarantined": len(quarantine)})


def shard_pool(src: Path, dest_dir: Path, cfg: ShardConfig, **attrs: object) -> StageReport:
    """Cut a pool into ``cfg.n_shards`` cost-balanced shard files."""
    table, _ = read_table(src)
    paths = write_shards(table, cfg.n_shards, dest_dir, source=str(src), **attrs)
    return StageReport(paths, {"rows": len(table), "shards": len(paths)})


def _outputs_complete(paths: list[Path]) -> bool:
    return bool(paths) and all(verify_file(p) is None for p in paths)


def sample_campaign(campaign: Campaign, force: bool = False) -> StageReport:
    """The campaign's ``sample`` stage: ``pool.h5`` from the generator, when the config
    has a ``sample`` section (else nothing: the ``import`` stage makes the pool)."""
    cfg = campaign.config.sample
    dest = campaign.pool_path
    if cfg is None:
        campaign.record("sample", status="off", note="no 'sample' section: the pool is imported")
        return StageReport([], skipped=True)
    if not force and _outputs_complete([dest]):
        return StageReport([dest], skipped=True)
    from hpcxtal.generate.sample import resolve_model

    campaign.start("sample", [resolve_model(cfg.model)], cfg)
    report = sample_to_pool(dest, cfg, campaign.config.seed, campaign_id=campaign.campaign_id)
    campaign.finish("sample", report.outputs, **report.counts)
    return report


def import_campaign(campaign: Campaign, force: bool = False) -> StageReport:
    """The campaign's ``import`` stage: its configured inputs into ``pool.h5`` (nothing
    when the config has a ``sample`` section: then the ``sample`` stage makes the pool)."""
    dest = campaign.pool_path
    if campaign.config.sample is not None:
        campaign.record("import", status="off", note="the 'sample' section makes the pool")
        return StageReport([], skipped=True)
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
                                f"run 'hpcxtal import {campaign.root}' (or 'hpcxtal sample "
                                f"{campaign.root}') first")
    campaign.start("shard", [campaign.pool_path], cfg)
    for stale in campaign.shard_dir.glob("shard-*.h5"):
        stale.unlink()
    report = shard_pool(campaign.pool_path, campaign.shard_dir, cfg,
                        campaign_id=campaign.campaign_id)
    campaign.finish("shard", report.outputs, **report.counts)
    return report



@dataclass(frozen=True)
class StageSpec:
    """A campaign stage as the drivers see it: which executor runs it, whether it runs
    once per shard, and the function that runs it on a campaign (``shard`` is None
    for whole-campaign stages)."""

    name: str
    executor: str  # "gpu" or "cpu"
    per_shard: bool
    run: Callable[[Campaign, int | None, bool], StageReport]


#: The campaign's stages in order; drivers (CLI, Parsl, job arrays, MPI) run these.
PIPELINE: tuple[StageSpec, ...] = (
    StageSpec("sample", "cpu", False, lambda c, shard, force: sample_campaign(c, force)),
    StageSpec("import", "cpu", False, lambda c, shard, force: import_campaign(c, force)),
    StageSpec("shard", "cpu", False, lambda c, shard, force: shard_campaign(c, force)),
)


def stage_spec(name: str) -> StageSpec:
    """The pipeline entry called ``name``."""
    for spec in PIPELINE:
        if spec.name == name:
            return spec
    raise KeyError(f"unknown stage {name!r}; stages are {[s.name for s in PIPELINE]}")

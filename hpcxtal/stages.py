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

from hpcxtal.campaign import Campaign, ImportConfig, ShardConfig, TopologyConfig
from hpcxtal.config import to_mapping
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



def topology_path(directory: Path, index: int) -> Path:
    """Where the topology output of shard ``index`` lives in ``directory``."""
    return Path(directory) / f"topology-{index:04d}.h5"


def topology_file(src: Path, dest: Path, cfg: TopologyConfig, workers: int | None = None,
                  **attrs: object) -> StageReport:
    """Signature, dimensionality, atoms per primitive cell and first de-duplication of
    every row of ``src``, written with its quarantine to ``dest``."""
    from hpcxtal.topology.annotate import SignatureParams, annotate_table

    table, quarantine = read_table(src)
    params = SignatureParams(cutoffs=cfg.cutoffs(), depth=cfg.depth, max_ring=cfg.max_ring)
    out = annotate_table(table, params, workers or cfg.workers)
    failed = int((out["dimension"] < 0).sum())
    duplicates = int((out["duplicate_of"] != out["id"]).sum())
    write_table(dest, out, kind="topology", quarantine=quarantine, source=str(src),
                source_sha256=str(table_checksum_of(src)),
                topology_config=json.dumps(to_mapping(cfg)), **attrs)
    return StageReport([dest], {"rows": len(out), "unique": len(out) - duplicates - failed,
                                "duplicates": duplicates, "failed": failed,
                                "quarantined": 0 if quarantine is None else len(quarantine)})


def table_checksum_of(path: Path) -> str:
    """The checksum a table file records for itself (not recomputed)."""
    return str(file_summary(path)["attrs"].get("sha256", ""))


def _topology_current(dest: Path, src: Path, cfg: TopologyConfig) -> bool:
    """Whether ``dest`` verifies and was made from the current ``src`` with ``cfg``."""
    if verify_file(dest) is not None:
        return False
    attrs = file_summary(dest)["attrs"]
    return (attrs.get("source_sha256") == table_checksum_of(src)
            and attrs.get("topology_config") == json.dumps(to_mapping(cfg)))


def topology_campaign(campaign: Campaign, shard: int | None = None, force: bool = False,
                      workers: int | None = None) -> StageReport:
    """The campaign's ``topology`` stage: ``shards/shard-I.h5`` into
    ``topology/topology-I.h5`` for one shard (an array task) or all of them. Outputs
    that verify and match their shard and config are kept."""
    cfg = campaign.config.topology
    n_shards = campaign.config.shard.n_shards
    if shard is not None and not 0 <= shard < n_shards:
        raise ValueError(f"--shard {shard} out of range: the campaign has {n_shards} shards "
                         f"(0..{n_shards - 1})")
    indices = range(n_shards) if shard is None else [shard]
    srcs = [shard_path(campaign.shard_dir, i) for i in indices]
    dests = [topology_path(campaign.topology_dir, i) for i in indices]
    for src in srcs:
        if verify_file(src) is not None:
            raise FileNotFoundError(f"{src}: the shard is missing or does not verify; "
                                    f"run 'hpcxtal shard {campaign.root}' first")
    todo = [k for k, (src, dest) in enumerate(zip(srcs, dests))
            if force or not _topology_current(dest, src, cfg)]
    if not todo:
        return StageReport(dests, skipped=True)
    campaign.start("topology", [srcs[k] for k in todo], cfg)
    totals: dict[str, int] = {}
    for k in todo:
        report = topology_file(srcs[k], dests[k], cfg, workers, campaign_id=campaign.campaign_id)
        log.info("%s: %s", dests[k], ", ".join(f"{n} {v}" for n, v in report.counts.items()))
        for name, value in report.counts.items():
            totals[name] = totals.get(name, 0) + value
    all_dests = [topology_path(campaign.topology_dir, i) for i in range(n_shards)]
    if all(verify_file(p) is None for p in all_dests):
        counts = _sum_counts(all_dests)
        campaign.finish("topology", all_dests, **counts)
    else:
        campaign.record("topology", status="partial",
                        outputs=[str(p.relative_to(campaign.root)) for p in all_dests
                                 if verify_file(p) is None])
    return StageReport([dests[k] for k in todo], totals)


def _sum_counts(paths: list[Path]) -> dict[str, int]:
    """Rows, unique, duplicates and failed over finished topology files."""
    counts = {"rows": 0, "unique": 0, "duplicates": 0, "failed": 0}
    for p in paths:
        table, _ = read_table(p)
        failed = int((table["dimension"] < 0).sum())
        dup = int((table["duplicate_of"] != table["id"]).sum())
        counts["rows"] += len(table)
        counts["duplicates"] += dup
        counts["failed"] += failed
        counts["unique"] += len(table) - dup - failed
    return counts

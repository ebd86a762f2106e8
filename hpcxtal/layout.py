"""Where every file of a campaign directory lives: the one campaign layout.

::

    DIR/pool.h5                    the candidate pool (stage ``sample`` or ``import``)
    DIR/shards/shard-NNNN.h5       the pool cut into cost-balanced shards (``shard``)
    DIR/STAGE/STAGE-NNNN.h5        a per-shard output: refine, rounds, topology, relax
    DIR/rounds/round-R/part-PPPP-of-NNNN.h5   one process's part of refinement round R
    DIR/database.h5                every shard merged and ranked (``merge``)
    DIR/progress/STAGE-NNNN.json   rows done, rate and host of a per-shard stage's run
    DIR/hpcxtal.log                what ran where and when (every process appends)
    DIR/.hpcxtal/verified.json     files ``status`` verified, by inode, size and mtime
"""
from __future__ import annotations

from pathlib import Path


def pool_path(root: Path) -> Path:
    """The campaign's candidate pool."""
    return Path(root) / "pool.h5"


def shard_path(folder: Path, shard: int) -> Path:
    """Shard ``shard`` in a folder of shard files (a campaign's ``DIR/shards``)."""
    return Path(folder) / f"shard-{shard:04d}.h5"


def shard_dir(root: Path) -> Path:
    """The campaign's folder of shard files."""
    return Path(root) / "shards"


def stage_output(stage: str, root: Path, shard: int) -> Path:
    """Per-shard output of ``stage`` for shard ``shard``."""
    return Path(root) / stage / f"{stage}-{shard:04d}.h5"


def dedup_output(root: Path) -> Path:
    """The campaign's cross-shard de-duplication index (see :mod:`hpcxtal.topology.dedup`)."""
    return Path(root) / "dedup.h5"


def part_path(root: Path, round_: int, part: int, n_parts: int) -> Path:
    """One process's part of refinement round ``round_`` (of ``n_parts`` processes)."""
    return Path(root) / "rounds" / f"round-{round_}" / f"part-{part:04d}-of-{n_parts:04d}.h5"


def database_output(root: Path) -> Path:
    """The campaign's ranked database."""
    return Path(root) / "database.h5"


def ledger_path(root: Path) -> Path:
    """The verification ledger ``hpcxtal status`` keeps (a cache; safe to delete)."""
    return Path(root) / ".hpcxtal" / "verified.json"


def progress_path(root: Path, stage: str, shard: int) -> Path:
    """The progress file of ``stage`` on shard ``shard`` (see :mod:`hpcxtal.progress`)."""
    return Path(root) / "progress" / f"{stage}-{shard:04d}.json"


def log_path(root: Path) -> Path:
    """The campaign's log file."""
    return Path(root) / "hpcxtal.log"

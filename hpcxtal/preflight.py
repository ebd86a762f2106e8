"""Checks of a new campaign before ``hpcxtal init`` writes anything.

A config can be valid on its own and still fail later: a site name with no site
config, an input file that does not exist, more shards than the pool can have rows.
:func:`check_new_campaign` finds these up front, as :class:`ConfigError` naming the key.
"""
from __future__ import annotations

from pathlib import Path

from hpcxtal.config import ConfigError


def pool_size_bound(config) -> int | None:
    """The most rows the campaign's pool can get (sampled candidates, or the rows of its
    input tables and CSV lines), or None where structure files make it unknown without
    reading them. Raises ConfigError for an input that does not exist."""
    from hpcxtal.data import resolve_input
    from hpcxtal.store.hdf5 import StoreError, file_summary

    if config.sample is not None:
        return config.sample.n
    total: int | None = 0
    for k, name in enumerate(config.import_.inputs):
        path = resolve_input(name)
        if not path.is_file():
            raise ConfigError(f"import.inputs[{k}]: {name}: no such file (give CSV, CIF, "
                              "extxyz, ASE db or .h5 files, or 'sacada')")
        if path.suffix.lower() == ".h5":
            try:
                rows = int(file_summary(path)["attrs"].get("n_rows", 0))
            except StoreError as err:
                raise ConfigError(f"import.inputs[{k}]: {err}") from None
        elif path.suffix.lower() == ".csv":
            with open(path, "rb") as fh:
                rows = max(sum(1 for _ in fh) - 1, 0)
        else:
            rows = None
        total = None if total is None or rows is None else total + rows
    return total


def check_new_campaign(config, root: Path) -> None:
    """Raise ConfigError unless the site config of ``config`` loads, its inputs exist and
    its pool can fill ``shard.n_shards`` shards (where the pool size is known)."""
    from hpcxtal.hpc.site import load_site

    load_site(config.site, search=[Path(root)])
    bound = pool_size_bound(config)
    if bound is not None and config.shard.n_shards > bound:
        raise ConfigError(f"shard.n_shards: {config.shard.n_shards} shards, but the pool can "
                          f"have at most {bound} rows; use at most {max(bound, 1)}")

"""A campaign directory: its config (one section per stage) and its manifest.

::

    DIR/campaign.yaml      the campaign config (validated on every load)
    DIR/manifest.json      per stage: status, inputs, outputs, parameters, counts, times

Every other file's place is given by :mod:`hpcxtal.layout`. Stages are functions of files; the manifest records what whole-campaign stages did,
and a stage whose outputs exist and verify is done whatever the manifest says.
Per-shard stages (many array tasks at once) write only their own output files: their
progress is read from those files, so no two processes ever write one file.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import os
import socket
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hpcxtal.config import ConfigError, from_mapping, load_yaml, science, to_mapping
from hpcxtal.generate.config import SampleConfig
from hpcxtal.layout import log_path, pool_path, shard_dir
from hpcxtal.merge.database import MergeConfig
from hpcxtal.refine.config import RefineConfig, RoundsConfig
from hpcxtal.relax.config import RelaxConfig
from hpcxtal.rescore.config import RescoreConfig
from hpcxtal.store.formats import ImportConfig
from hpcxtal.store.hdf5 import atomic_path, write_text_atomic
from hpcxtal.store.shard import ShardConfig
from hpcxtal.topology.stage import TopologyConfig

CONFIG_NAME = "campaign.yaml"
MANIFEST_NAME = "manifest.json"


@dataclass(frozen=True, kw_only=True)
class CampaignConfig:
    """Everything a campaign needs, one section per stage."""

    name: str
    seed: int = 0
    site: str = "local"  # a shipped site name, one in the campaign dir or $HPCXTAL_SITE_DIR, or a YAML path
    sample: SampleConfig | None = None  # set: the pool is sampled, and import is off
    import_: ImportConfig = field(default_factory=ImportConfig)
    shard: ShardConfig = field(default_factory=ShardConfig)
    refine: RefineConfig = field(default_factory=RefineConfig)
    rounds: RoundsConfig = field(default_factory=RoundsConfig)
    topology: TopologyConfig = field(default_factory=TopologyConfig)
    relax: RelaxConfig = field(default_factory=RelaxConfig)
    rescore: RescoreConfig | None = None  # set (``rescore: {}`` for the defaults): the
    # rescoring tier re-relaxes the screen's low-energy rows with a second model
    merge: MergeConfig = field(default_factory=MergeConfig)

    @property
    def low_energy_window_eV(self) -> float:
        """The campaign's low-energy window (eV/atom above graphite): the merge
        section's where set, else the relax section's."""
        return (self.merge.low_energy_window_eV if self.merge.low_energy_window_eV is not None
                else self.relax.low_energy_window_eV)

    @classmethod
    def from_file(cls, path: str | Path) -> "CampaignConfig":
        data = load_yaml(path)
        if isinstance(data, dict) and data.get("sample") is not None and "import" in data:
            raise ConfigError(f"{path}: give either a 'sample' section (pool from the "
                              f"generator) or an 'import' section (pool from files), not both")
        if isinstance(data, dict) and "import" in data:
            data = {("import_" if k == "import" else k): v for k, v in data.items()}
        return from_mapping(cls, data, str(path))

    def to_yaml(self) -> str:
        data = {("import" if k == "import_" else k): v for k, v in to_mapping(self).items()}
        if self.sample is None:
            del data["sample"]
        else:
            del data["import"]
        return yaml.safe_dump(data, sort_keys=False)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


class Campaign:
    """A campaign directory on disk."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        if not (self.root / CONFIG_NAME).exists():
            raise ConfigError(f"{self.root}: not a campaign directory (no {CONFIG_NAME}); "
                              f"create one with 'hpcxtal init {self.root}'")
        self.config = CampaignConfig.from_file(self.root / CONFIG_NAME)

    @classmethod
    def create(cls, root: str | Path, config: CampaignConfig) -> "Campaign":
        """Write the config and an empty manifest into a new (or empty) directory, after
        :func:`~hpcxtal.preflight.check_new_campaign`; each file atomically, the config
        (which makes the directory a campaign) last, and nothing left on failure."""
        from hpcxtal.preflight import check_new_campaign

        root = Path(root)
        if (root / CONFIG_NAME).exists():
            raise ConfigError(f"{root}: already a campaign directory; remove it or pick another")
        check_new_campaign(config, root)
        made = [p for p in (root, *root.parents) if not p.exists()]
        root.mkdir(parents=True, exist_ok=True)
        try:
            manifest = {"campaign_id": uuid.uuid4().hex, "name": config.name, "created": _now(),
                        "stages": {}}
            _write_json(root / MANIFEST_NAME, manifest)
            write_text_atomic(root / CONFIG_NAME, config.to_yaml())
            return cls(root)
        except BaseException:
            for name in (CONFIG_NAME, MANIFEST_NAME):
                (root / name).unlink(missing_ok=True)
            for folder in made:  # innermost first; only what this call created
                with contextlib.suppress(OSError):
                    folder.rmdir()
            raise

    @property
    def pool_path(self) -> Path:
        return pool_path(self.root)

    @property
    def shard_dir(self) -> Path:
        return shard_dir(self.root)

    def attach_log(self) -> None:
        """Append this process's hpcxtal log records (INFO and up, with time, host and
        pid) to ``DIR/hpcxtal.log``, once per process: what ran where and when."""
        path = log_path(self.root).resolve()
        logger = logging.getLogger("hpcxtal")
        if any(getattr(h, "baseFilename", None) == str(path) for h in logger.handlers):
            return
        try:
            handler = logging.FileHandler(path)
        except OSError:  # a read-only campaign keeps no log
            return
        handler.setLevel(logging.INFO)
        handler.setFormatter(logging.Formatter(
            f"%(asctime)s {socket.gethostname()} %(process)d %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
        if logger.getEffectiveLevel() > logging.INFO:
            logger.setLevel(logging.INFO)

    def manifest(self) -> dict[str, Any]:
        try:
            return json.loads((self.root / MANIFEST_NAME).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ConfigError(f"{self.root / MANIFEST_NAME}: unreadable manifest ({err})") from None

    @property
    def campaign_id(self) -> str:
        return self.manifest()["campaign_id"]

    def record(self, stage: str, **entry: Any) -> None:
        """Merge ``entry`` into the manifest record of ``stage`` (atomically)."""
        manifest = self.manifest()
        manifest["stages"].setdefault(stage, {}).update(entry)
        _write_json(self.root / MANIFEST_NAME, manifest)

    def _rel(self, path: Path) -> str:
        """``path`` relative to the campaign root where it lies inside it."""
        try:
            return str(Path(path).resolve().relative_to(self.root.resolve()))
        except ValueError:
            return str(Path(path).resolve())

    def start(self, stage: str, inputs: list[Path], parameters: Any) -> None:
        self.record(stage, status="running", started=_now(), inputs=[self._rel(p) for p in inputs],
                    parameters=science(parameters))

    def finish(self, stage: str, outputs: list[Path], **counts: int) -> None:
        self.record(stage, status="done", finished=_now(), outputs=[self._rel(p) for p in outputs],
                    counts=counts)

def _write_json(path: Path, data: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")


def find_campaign(path: str | os.PathLike) -> Campaign | None:
    """The campaign at ``path`` if it is a campaign directory, else None."""
    path = Path(path)
    return Campaign(path) if (path / CONFIG_NAME).is_file() else None

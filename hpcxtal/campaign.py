"""A campaign directory: its config, its manifest of stages, and where files live.

::

    DIR/campaign.yaml      the campaign config (validated on every load)
    DIR/manifest.json      per stage: status, inputs, outputs, parameters, counts, times
    DIR/pool.h5            the candidate pool (stage ``sample`` or ``import``)
    DIR/shards/shard-NNNN.h5   the pool cut into cost-balanced shards (stage ``shard``)
    DIR/refine/refine-NNNN.h5  refined shards (stage ``refine``)
    DIR/rounds/rounds-NNNN.h5  refined shards after all rounds (stage ``rounds``)
    DIR/topology/topology-NNNN.h5  each shard with topology columns (stage ``topology``)
    DIR/relax/relax-NNNN.h5    each shard relaxed, with energies (stage ``relax``)
    DIR/database.h5            every relaxed shard merged and ranked (stage ``merge``)

Stages are functions of files; the manifest records what whole-campaign stages did,
and a stage whose outputs exist and verify is done whatever the manifest says.
Per-shard stages (many array tasks at once) write only their own output files: their
progress is read from those files, so no two processes ever write one file.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hpcxtal.config import ConfigError, from_mapping, load_yaml, to_mapping
from hpcxtal.hpc.site import load_site
from hpcxtal.refine.represent import RefineConfig
from hpcxtal.refine.rounds import RoundsConfig
from hpcxtal.store.database import MergeConfig
from hpcxtal.store.hdf5 import atomic_path, set_file_locking

CONFIG_NAME = "campaign.yaml"
MANIFEST_NAME = "manifest.json"
#: Stages in campaign order.
STAGES = ("sample", "import", "shard", "refine", "rounds", "topology", "relax", "merge")


@dataclass(frozen=True, kw_only=True)
class SampleConfig:
    """Sample the candidate pool from a trained generator (instead of importing it)."""

    n: int = 200
    model: str = "default"  # 'default' = the generator shipped with hpcxtal, or a path
    conditions: str = "mix"  # train | learned | mix (see hpcxtal.generate.conditions)

    def __post_init__(self) -> None:
        from hpcxtal.generate.conditions import MODES

        if self.n < 1:
            raise ValueError(f"n must be at least 1, got {self.n}")
        if self.conditions not in MODES:
            raise ValueError(f"conditions must be one of {list(MODES)}, got {self.conditions!r}")


@dataclass(frozen=True, kw_only=True)
class ImportConfig:
    """Where the candidate pool comes from."""

    inputs: list[str] = field(default_factory=lambda: ["sacada"])
    snap_tolerance_A: float | None = None
    symmetry_tolerance_A: float = 0.01

    def __post_init__(self) -> None:
        if not self.inputs:
            raise ValueError("inputs: give at least one file (CSV, CIF, extxyz, ASE db, "
                             ".h5) or 'sacada' for the bundled set")
        if self.snap_tolerance_A is not None and self.snap_tolerance_A <= 0:
            raise ValueError("snap_tolerance_A must be positive or null")


@dataclass(frozen=True, kw_only=True)
class ShardConfig:
    """How the pool is cut for parallel stages."""

    n_shards: int = 2

    def __post_init__(self) -> None:
        if self.n_shards < 1:
            raise ValueError(f"n_shards must be at least 1, got {self.n_shards}")


#: Energy backends the relax stage knows (see hpcxtal.relax.models).
RELAX_BACKENDS = ("chgnet", "mace")
#: Optimisers of the relax stage (see hpcxtal.relax.engine.OPTIMIZERS).
RELAX_OPTIMIZERS = ("lbfgs", "fire")


@dataclass(frozen=True, kw_only=True)
class RelaxConfig:
    """Energy model and batched optimiser settings of the relax stage.

    ``backend``: ``mace`` (the default; ``model``: a model file path, ``hpcxtal-carbon``
    (the default, the small carbon model shipped as package data) or a foundation name
    such as ``mace-mp-0-small``, looked up in ``model_dir`` and mace's cache directory,
    never downloaded) or ``chgnet`` (bundled weights; ``model`` may name a bundled
    version). ``optimizer``: ``lbfgs`` (the default; fewest model calls) or ``fire``.
    A structure of n atoms may take ``max_steps + steps_per_atom * n`` steps; batches
    hold at most ``batch_atom_budget`` atoms and ``batch_edge_budget`` neighbour pairs (unset: 6,000
    on a CPU, where small batches stay in cache, 150,000 on a GPU); ``symmetrize``
    keeps each structure's space group (found within ``symprec_A``) while it relaxes;
    "low energy" means within ``low_energy_window_eV`` per atom of graphite relaxed the
    same way.
    """

    backend: str = "mace"
    model: str | None = None
    model_dir: str | None = None
    dtype: str = "float64"
    device: str = "cpu"
    optimizer: str = "lbfgs"
    fmax_eV_per_A: float = 0.05
    max_steps: int = 300
    steps_per_atom: float = 2.0
    batch_atom_budget: int = 2000
    batch_edge_budget: int | None = None
    symmetrize: bool = False
    symprec_A: float = 1e-3
    low_energy_window_eV: float = 0.55

    def __post_init__(self) -> None:
        if self.backend not in RELAX_BACKENDS:
            raise ValueError(f"backend {self.backend!r}: use one of {list(RELAX_BACKENDS)}")
        if self.dtype not in ("float64", "float32"):
            raise ValueError(f"dtype {self.dtype!r}: use float64 or float32")
        if self.optimizer not in RELAX_OPTIMIZERS:
            raise ValueError(f"optimizer {self.optimizer!r}: use one of {list(RELAX_OPTIMIZERS)}")
        if self.fmax_eV_per_A <= 0:
            raise ValueError(f"fmax_eV_per_A must be positive, got {self.fmax_eV_per_A}")
        if self.max_steps < 0 or self.steps_per_atom < 0:
            raise ValueError("max_steps and steps_per_atom must not be negative")
        if self.batch_atom_budget < 1 or (self.batch_edge_budget is not None
                                          and self.batch_edge_budget < 1):
            raise ValueError("batch_atom_budget and batch_edge_budget must be at least 1")
        if self.symprec_A <= 0:
            raise ValueError(f"symprec_A must be positive, got {self.symprec_A}")
        if self.low_energy_window_eV < 0:
            raise ValueError("low_energy_window_eV must not be negative")


@dataclass(frozen=True, kw_only=True)
class TopologyConfig:
    """Bond graph and signature settings for the topology stage."""

    cutoff_A: float = 1.872
    pair_cutoffs_A: dict[str, float] = field(default_factory=dict)
    depth: int = 12
    max_ring: int = 12
    workers: int | None = None

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


@dataclass(frozen=True, kw_only=True)
class CampaignConfig:
    """Everything a campaign needs, one section per stage."""

    name: str
    seed: int = 0
    site: str = "local"  # a name in site_configs/ (or the campaign dir), or a YAML path
    sample: SampleConfig | None = None  # set: the pool is sampled, and import is off
    import_: ImportConfig = field(default_factory=ImportConfig)
    shard: ShardConfig = field(default_factory=ShardConfig)
    refine: RefineConfig = field(default_factory=RefineConfig)
    rounds: RoundsConfig = field(default_factory=RoundsConfig)
    topology: TopologyConfig = field(default_factory=TopologyConfig)
    relax: RelaxConfig = field(default_factory=RelaxConfig)
    merge: MergeConfig = field(default_factory=MergeConfig)

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
        # Opening a campaign applies its site's file policy to this process.
        self.site = load_site(self.config.site, search=[self.root])
        set_file_locking(self.site.hdf5_file_locking)

    @classmethod
    def create(cls, root: str | Path, config: CampaignConfig) -> "Campaign":
        """Write the config and an empty manifest into a new (or empty) directory."""
        root = Path(root)
        if (root / CONFIG_NAME).exists():
            raise ConfigError(f"{root}: already a campaign directory; remove it or pick another")
        root.mkdir(parents=True, exist_ok=True)
        (root / CONFIG_NAME).write_text(config.to_yaml())
        manifest = {"campaign_id": uuid.uuid4().hex, "name": config.name, "created": _now(),
                    "stages": {s: {"status": "pending"} for s in STAGES}}
        _write_json(root / MANIFEST_NAME, manifest)
        return cls(root)

    @property
    def pool_path(self) -> Path:
        return self.root / "pool.h5"

    @property
    def shard_dir(self) -> Path:
        return self.root / "shards"

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
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; stages are {STAGES}")
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
                    parameters=to_mapping(parameters) if dataclasses.is_dataclass(parameters)
                    else parameters)

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

"""The relax stage's config section: energy model and optimiser settings."""
from __future__ import annotations

from dataclasses import dataclass

from hpcxtal.config import resource

#: Energy backends the relax stage knows (see hpcxtal.relax.models).
RELAX_BACKENDS = ("chgnet", "mace")
#: Optimisers of the relax stage (see hpcxtal.relax.engine.OPTIMIZERS).
RELAX_OPTIMIZERS = ("lbfgs", "fire")


def check_relax_settings(cfg) -> None:
    """The checks the stage's config section and the engine's parameters share: raise
    ValueError naming the setting."""
    if cfg.optimizer not in RELAX_OPTIMIZERS:
        raise ValueError(f"optimizer {cfg.optimizer!r}: use one of {list(RELAX_OPTIMIZERS)}")
    if cfg.fmax_eV_per_A <= 0:
        raise ValueError(f"fmax_eV_per_A must be positive, got {cfg.fmax_eV_per_A}")
    if cfg.max_steps < 0 or cfg.steps_per_atom < 0:
        raise ValueError("max_steps and steps_per_atom must not be negative")
    if cfg.batch_atom_budget < 1 or (cfg.batch_edge_budget is not None
                                     and cfg.batch_edge_budget < 1):
        raise ValueError("batch_atom_budget and batch_edge_budget must be at least 1, got "
                         f"{cfg.batch_atom_budget} and {cfg.batch_edge_budget}")
    if cfg.symprec_A <= 0:
        raise ValueError(f"symprec_A must be positive, got {cfg.symprec_A}")


@dataclass(frozen=True, kw_only=True)
class RelaxSettings:
    """The optimiser settings and resources every relaxing stage shares (relax, rescore);
    each stage adds its model and what it selects."""

    dtype: str = "float64"
    optimizer: str = "lbfgs"
    fmax_eV_per_A: float = 0.05
    max_steps: int = 300
    steps_per_atom: float = 2.0
    symmetrize: bool = False
    symprec_A: float = 1e-3
    # Resources (how it runs, never in a fingerprint):
    device: str = resource("cpu")
    batch_atom_budget: int = resource(2000)
    batch_edge_budget: int | None = resource(None)
    workers: int | None = resource(None)  # processes on a file (None: one per usable core,
    # one on a GPU); each pinned to a core with one thread
    chunk_rows: int = resource(32)  # rows to relax per chunk of a file: chunks are relaxed
    # apart (in turn, or by whichever worker is free), so results never depend on workers

    def __post_init__(self) -> None:
        if self.dtype not in ("float64", "float32"):
            raise ValueError(f"dtype {self.dtype!r}: use float64 or float32")
        check_relax_settings(self)
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"workers must be at least 1 or null (all cores), got {self.workers}")
        if self.chunk_rows < 1:
            raise ValueError(f"chunk_rows must be at least 1, got {self.chunk_rows}")


@dataclass(frozen=True, kw_only=True)
class RelaxConfig(RelaxSettings):
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
    low_energy_window_eV: float = 0.55

    def __post_init__(self) -> None:
        if self.backend not in RELAX_BACKENDS:
            raise ValueError(f"backend {self.backend!r}: use one of {list(RELAX_BACKENDS)}")
        super().__post_init__()
        if self.low_energy_window_eV < 0:
            raise ValueError("low_energy_window_eV must not be negative")

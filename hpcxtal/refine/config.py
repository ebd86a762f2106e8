"""The refine and rounds stages' config sections (no torch here, so reading a campaign's
config stays cheap): optimiser, representation refinement, latent refinement, rounds."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING

from hpcxtal.config import from_mapping, resource
from hpcxtal.data import target_names

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True, kw_only=True)
class OptimConfig:
    """Hyper-parameters of the per-sample optimiser (scalars apply to every sample)."""

    lr: float = 0.01  # base step; Adam moves each variable by about lr * scale per step
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0  # decoupled (AdamW); 0 keeps variables unbiased
    clip_norm: float = 10.0  # per-sample gradient-norm clip
    patience: int = 20  # steps without relative improvement before the step shrinks
    min_rel_improvement: float = 1e-3
    shrink: float = 0.5  # step scale multiplier on a plateau
    grow: float = 1.2  # multiplier after `patience` improving steps, up to max_scale
    min_scale: float = 1e-3  # floor of the step scale
    max_scale: float = 1.0

    def __post_init__(self) -> None:
        if not 0 < self.shrink < 1 <= self.grow:
            raise ValueError("need 0 < shrink < 1 <= grow")
        if not 0 < self.min_scale <= self.max_scale:
            raise ValueError("need 0 < min_scale <= max_scale")
        if self.clip_norm <= 0 or self.lr <= 0 or self.patience < 1:
            raise ValueError("clip_norm, lr and patience must be positive")


#: Entry-point group under which installed packages register refinement objectives.
OBJECTIVE_GROUP = "hpcxtal.objectives"


@dataclass(frozen=True, kw_only=True)
class SO3Settings:
    """Settings of the ``so3`` objective: the target environment (None: ``refine.target``)."""

    target: str | None = None

    def __post_init__(self) -> None:
        if self.target is not None and self.target not in target_names():
            raise ValueError(f"target {self.target!r} is not defined; targets are "
                             f"{list(target_names())}")


@dataclass(frozen=True, kw_only=True)
class DistanceMatrixSettings:
    """Settings of the ``distance_matrix`` objective (lengths in Å).

    The target is a reference structure file (``reference``: any file ASE reads, CIF,
    extxyz ...) or a file of pair distances (``distances``: whitespace-separated
    numbers, every ordered pair i != j of the cell once, any order; or an N x N matrix,
    with ``elements``, the element of each of its atoms in order). ``mode`` ``sorted``
    compares the sorted minimum-image distance matrix (rows must have the target's atom
    count), element-resolved when the target's elements are known (a reference, or
    ``elements``: pairs compared within each (element, element) class, so rows must have
    the target's composition); ``histogram`` compares Gaussian-smeared pair-distance
    distributions per atom within ``cutoff_A``, one per (element, element) class of the
    reference (any atom count). A row is valid for this objective when its
    distance-matrix RMSE is below ``valid_rmse_A`` (None: the objective sets no
    validity).
    Files enter the fingerprint by path (as ``relax.model`` does): give a changed target
    a new file name. Relative paths are taken from the directory a command runs in.
    """

    reference: str | None = None
    distances: str | None = None
    elements: list[str] | None = None  # with distances: the element of each matrix atom
    mode: str = "sorted"
    cutoff_A: float = 6.0  # histogram mode: pairs within this distance
    sigma_A: float = 0.1  # histogram mode: Gaussian width
    bin_A: float = 0.05  # histogram mode: grid spacing
    overlap_tolerance_A: float = 0.1  # distance-map overlap: entries agreeing within this
    valid_rmse_A: float | None = None

    def __post_init__(self) -> None:
        if (self.reference is None) == (self.distances is None):
            raise ValueError("give exactly one of reference (a structure file) and distances "
                             "(a file of pair distances)")
        if self.mode not in ("sorted", "histogram"):
            raise ValueError(f"mode must be sorted or histogram, got {self.mode!r}")
        if self.elements is not None:
            from ase.data import atomic_numbers

            if self.distances is None:
                raise ValueError("elements go with distances (a reference names its own)")
            unknown = [e for e in self.elements if e not in atomic_numbers or e == "X"]
            if unknown:
                raise ValueError(f"elements: {unknown[0]!r} is no element symbol")
        if self.mode == "histogram" and self.reference is None:
            raise ValueError("mode histogram needs a reference structure file")
        if min(self.cutoff_A, self.sigma_A, self.bin_A, self.overlap_tolerance_A) <= 0:
            raise ValueError("cutoff_A, sigma_A, bin_A and overlap_tolerance_A must be positive")
        if self.valid_rmse_A is not None and self.valid_rmse_A <= 0:
            raise ValueError("valid_rmse_A must be positive or null")
        for name in ("reference", "distances"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise ValueError(f"{name} {path}: no such file")


@dataclass(frozen=True, kw_only=True)
class EnergySettings:
    """Settings of the ``energy`` objective: ``backend`` ``mace`` (``model`` as
    ``relax.model``: the shipped ``hpcxtal-carbon``, the default, a file, or a foundation
    name found offline in ``model_dir``) or ``chgnet`` (any element H-Pu; ``model``: a
    bundled version, default 0.3.0); the loss is eV/atom above ``reference_eV_per_atom``
    (None: the standard states of the row's elements relaxed with the same model, as the
    relax stage's ``e_rel``; graphite for carbon)."""

    backend: str = "mace"
    model: str | None = None
    model_dir: str | None = None
    reference_eV_per_atom: float | None = None

    def __post_init__(self) -> None:
        if self.backend not in ("mace", "chgnet"):
            raise ValueError(f"backend {self.backend!r}: use mace or chgnet")


@dataclass(frozen=True, kw_only=True)
class TorchScriptSettings:
    """Settings of the ``torchscript`` objective: ``file``, a TorchScript module saved
    with ``torch.jit.save`` whose ``forward`` follows the contract of
    :mod:`hpcxtal.refine.scripted` (docs/OBJECTIVES.md). The file enters the fingerprint
    by path: give a changed module a new file name."""

    file: str

    def __post_init__(self) -> None:
        if not Path(self.file).is_file():
            raise ValueError(f"file {self.file}: no such file")


#: Built-in objectives: name -> (``module:class``, settings class). The classes are
#: imported (with torch) only when an objective is built.
BUILTIN_OBJECTIVES: dict[str, tuple[str, type]] = {
    "so3": ("hpcxtal.refine.objective:SO3Objective", SO3Settings),
    "distance_matrix": ("hpcxtal.refine.distance:DistanceMatrixObjective", DistanceMatrixSettings),
    "energy": ("hpcxtal.refine.energy:EnergyObjective", EnergySettings),
    "torchscript": ("hpcxtal.refine.scripted:TorchScriptObjective", TorchScriptSettings),
}


def objective_names() -> list[str]:
    """Names an objective term may use: built-ins and installed entry points."""
    return [*BUILTIN_OBJECTIVES, *(ep.name for ep in entry_points(group=OBJECTIVE_GROUP))]


@dataclass(frozen=True, kw_only=True)
class ObjectiveTerm:
    """One term of the refinement objective: ``name`` (a built-in, an entry point of
    the ``hpcxtal.objectives`` group, or ``package.module:attr``), its ``weight``, and
    ``settings``, the objective's own config section (checked against the built-ins'
    settings classes when the config loads; a plug-in checks its own when built)."""

    name: str
    weight: float = 1.0
    settings: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.weight) and self.weight > 0):
            raise ValueError(f"objective {self.name!r}: weight must be positive, got {self.weight}")
        if self.name in BUILTIN_OBJECTIVES:  # parsed again when the objective is built
            from_mapping(BUILTIN_OBJECTIVES[self.name][1], self.settings,
                         f"objective {self.name} settings")
        elif ":" not in self.name and self.name not in objective_names():
            raise ValueError(f"unknown objective {self.name!r}; objectives are {objective_names()} "
                             "or package.module:attr")


@dataclass(frozen=True, kw_only=True)
class RefineConfig:
    """Representation refinement settings (lengths in Å, angles in degrees)."""

    target: str = "graphite"  # the environment of the so3 objective and the CN-validity rule
    # What refinement minimises: an objective's name, or a list of weighted terms
    # ({name, weight, settings}); see docs/OBJECTIVES.md.
    objective: str | list[ObjectiveTerm] = "so3"
    max_steps: int = 1000
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=0.01, patience=10))
    lr_length_A: float = 1.0  # step multiplier for lattice lengths (Å per unit lr)
    lr_angle_deg: float = 20.0  # for angles (degrees per unit lr)
    loss_tolerance: float = 1e-3  # below this a sample has converged
    flat_tolerance: float = 0.02  # valid and loss down by less than this share over a check
    check_every: int = 10  # steps between validity checks (and restart decisions)
    skin_A: float = 0.5  # neighbour-list skin: a list is rebuilt once a pair may cross it
    restarts: int = 15  # perturbed restarts of a sample that stalls invalid (basin hopping)
    restart_coord_sigma: float = 0.08  # fractional-coordinate noise of the last restart
    restart_length_sigma: float = 0.05  # relative lattice-length noise of the last restart
    # (restart k of `restarts` gets k / restarts of these, around the lowest-loss state)
    seed: int = 0
    length_bounds_A: tuple[float, float] = (1.5, 50.0)
    angle_bounds_deg: tuple[float, float] = (30.0, 150.0)
    dtype: str = "float64"
    # Resources (how it runs, never in a fingerprint):
    max_batch_atoms: int = resource(60000)  # memory budget of one batch
    device: str = resource("auto")  # auto: cuda if available, else cpu
    threads: int | None = resource(1)  # torch CPU threads per process (None: torch's
    # default); the kernels are small, so one thread per process and one process per core
    # is fastest
    workers: int | None = resource(None)  # processes on a file (None: one per usable core,
    # one on a GPU); each pinned to a core with one thread
    chunk_rows: int = resource(512)  # rows per chunk of a file: chunks are refined apart
    # (in turn, or by whichever worker is free), so results never depend on the workers

    def __post_init__(self) -> None:
        if self.max_steps < 1 or self.check_every < 1:
            raise ValueError("max_steps and check_every must be at least 1")
        if self.dtype not in ("float64", "float32"):
            raise ValueError(f"dtype must be float64 or float32, got {self.dtype!r}")
        if self.max_batch_atoms < 1:
            raise ValueError("max_batch_atoms must be positive")
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"workers must be at least 1 or null (all cores), got {self.workers}")
        if self.chunk_rows < 1:
            raise ValueError(f"chunk_rows must be at least 1, got {self.chunk_rows}")
        targets = target_names()
        if self.target not in targets:
            raise ValueError(f"target {self.target!r} is not defined; targets are {list(targets)}")
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", self.device):
            raise ValueError(f"device {self.device!r}: use auto, cpu, cuda or cuda:N")
        if isinstance(self.objective, list) and not self.objective:
            raise ValueError("objective: give a name or at least one term")
        self.terms()  # names and settings checked here

    def terms(self) -> tuple[ObjectiveTerm, ...]:
        """The objective as weighted terms (a bare name is one term of weight 1)."""
        if isinstance(self.objective, str):
            return (ObjectiveTerm(name=self.objective),)
        return tuple(self.objective)

    def torch_dtype(self) -> torch.dtype:
        import torch

        return torch.float64 if self.dtype == "float64" else torch.float32

    def torch_device(self) -> torch.device:
        """The device to refine on; ValueError if it is not on this machine."""
        import torch

        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        device = torch.device(self.device)
        if device.type == "cuda" and (not torch.cuda.is_available()
                                      or (device.index or 0) >= torch.cuda.device_count()):
            raise ValueError(f"device {self.device}: this machine has "
                             f"{torch.cuda.device_count() if torch.cuda.is_available() else 'no'} "
                             "CUDA device(s); use cpu or auto")
        if device.type == "mps" and not torch.backends.mps.is_available():
            raise ValueError(f"device {self.device}: no MPS device here; use cpu or auto")
        return device


@dataclass(frozen=True, kw_only=True)
class LatentConfig:
    """Latent-space refinement settings."""

    generator: str = "default"  # the shipped CVAE, or a cvae / diffusion / gan model file
    steps: int = 100
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=0.05, patience=10))
    max_batch_rows: int = resource(2000)  # memory budget; rows do not depend on it

    def __post_init__(self) -> None:
        if self.steps < 1 or self.max_batch_rows < 1:
            raise ValueError("steps and max_batch_rows must be at least 1")


@dataclass(frozen=True, kw_only=True)
class RoundsConfig:
    """Refinement rounds: round 1 refines each shard; rounds 2..n_rounds take every row
    still invalid from all shards, rebalance them over the processes (MPI ranks) and
    refine them again: ``later = "latent"`` starts each from a latent vector optimised
    through the generator (Algorithm 2), ``"perturb"`` from its perturbed last state."""

    n_rounds: int = 1
    later: str = "latent"
    latent: LatentConfig = field(default_factory=LatentConfig)

    def __post_init__(self) -> None:
        if not 1 <= self.n_rounds <= 20:
            raise ValueError(f"n_rounds must be within 1-20, got {self.n_rounds}")
        if self.later not in ("latent", "perturb"):
            raise ValueError(f"later must be 'latent' or 'perturb', got {self.later!r}")


def rounds_config(cfg: RefineConfig, rounds: RoundsConfig) -> dict:
    """What a rounds output is made with: its fingerprint is recorded and compared on
    resume (resources such as devices and batch budgets left out)."""
    return {"refine": cfg, "rounds": rounds}

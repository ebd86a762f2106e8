"""The refine and rounds stages' config sections (no torch here, so reading a campaign's
config stays cheap): optimiser, representation refinement, latent refinement, rounds."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from hpcxtal.config import resource
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


@dataclass(frozen=True, kw_only=True)
class RefineConfig:
    """Representation refinement settings (lengths in Å, angles in degrees)."""

    target: str = "graphite"
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

"""The generator plug-in interface: every model kind trains, saves, loads and samples
the same way.

A kind is one entry of :data:`KINDS`: its config class (the ``model`` of
:class:`~hpcxtal.generate.train.TrainConfig`), its :class:`Trainer` (data tensors,
networks, optimisers, one optimisation step; the resumable loop in
:func:`~hpcxtal.generate.train.train` is shared) and its :class:`RowGenerator` (a
frozen trained model). A model file is one ``torch.save`` dict: the provenance every
kind records (format, kind, model id, config, seed, training file and its sha256,
rows, parameters, wall time, loss history) plus the kind's own state
(:meth:`Trainer.model_state`). :func:`load_generator` reads any kind's file.

A generator samples raw rows as (spg, wps, 30 continuous values, condition source);
:func:`hpcxtal.generate.sample.decode_values` turns them into rows, the same for all
kinds. A kind with a latent space sets ``latent_dim`` and implements ``decode(z, spg,
wps)`` differentiably in ``z``; latent refinement (:mod:`hpcxtal.refine.latent`) uses
nothing else.
"""
from __future__ import annotations

import importlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hpcxtal.generate.conditions import ConditionSampler

if TYPE_CHECKING:
    import torch

MODEL_FORMAT = "hpcxtal-generator"
MODEL_VERSION = 1
#: The model shipped with the package (scripts/train_default_model.sh rebuilds it).
DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "data" / "generator_default.pt"


@dataclass(frozen=True)
class Kind:
    """Where a model kind's parts live, each as ``module:name`` (imported on first use,
    so the registry costs no import: no torch here), and the default schedule of
    ``hpcxtal train --model KIND``."""

    config: str
    trainer: str
    generator: str
    epochs: int
    batch_size: int
    learning_rate: float

    def part(self, name: str) -> Any:
        module, _, attr = getattr(self, name).partition(":")
        return getattr(importlib.import_module(module), attr)


_VAE = Kind("hpcxtal.generate.cvae:ModelConfig", "hpcxtal.generate.train:VAETrainer",
            "hpcxtal.generate.sample:Generator", epochs=20, batch_size=2048,
            learning_rate=1e-3)
#: Model kinds by name (the ``kind`` of a model file, ``hpcxtal train --model``).
KINDS: dict[str, Kind] = {
    "cvae": _VAE,
    "vae": _VAE,
    "diffusion": Kind("hpcxtal.generate.diffusion:DiffusionConfig",
                      "hpcxtal.generate.diffusion:DiffusionTrainer",
                      "hpcxtal.generate.diffusion:DiffusionGenerator", epochs=200, batch_size=256,
                      learning_rate=1e-3),
    "gan": Kind("hpcxtal.generate.gan:GANConfig", "hpcxtal.generate.gan:GANTrainer",
                "hpcxtal.generate.gan:GANGenerator", epochs=100, batch_size=256, learning_rate=1e-4),
}


def resolve_model(name: str | Path) -> Path:
    """``default`` -> the shipped model; anything else is a path."""
    return DEFAULT_MODEL if str(name) == "default" else Path(name)


def read_model_file(path: str | Path) -> tuple[Path, dict]:
    """(resolved path, contents) of a generator model file; a clear error if it is
    missing or no hpcxtal generator."""
    import torch

    path = resolve_model(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no generator model file; train one with "
                                f"'hpcxtal train' (or scripts/train_default_model.sh)")
    blob = torch.load(path, weights_only=True)
    if not isinstance(blob, dict) or blob.get("format") != MODEL_FORMAT:
        raise ValueError(f"{path}: not an hpcxtal generator model")
    if blob.get("kind") not in KINDS:
        raise ValueError(f"{path}: generator kind {blob.get('kind')!r} unknown to this "
                         f"hpcxtal (kinds: {', '.join(KINDS)})")
    return path, blob


def load_generator(path: str | Path, dtype: "torch.dtype | None" = None) -> "RowGenerator":
    """The frozen generator in model file ``path`` (``default``: the shipped one),
    whatever its kind; its networks run in ``dtype`` (default float32)."""
    import torch

    path, blob = read_model_file(path)
    return KINDS[blob["kind"]].part("generator")(path, dtype or torch.float32, blob)


def numpy_state(state: dict) -> dict:
    """A model file's sub-dict of tensors as numpy arrays (other values unchanged)."""
    import torch

    return {k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in state.items()}


def tensor_state(state: dict) -> dict:
    """Arrays as tensors, so a model file loads with ``weights_only=True``."""
    import torch

    return {k: torch.as_tensor(np.asarray(v)) if not isinstance(v, float) else v
            for k, v in state.items()}


class RowGenerator:
    """A trained generator loaded from its model file (any kind).

    Subclasses build their networks from the file's contents in :meth:`build` and
    implement :meth:`sample_raw`, and :meth:`decode` where the model has a latent space
    (``latent_dim`` not None)."""

    #: Width of the latent vector ``decode`` takes; None where the model has none.
    latent_dim: int | None = None
    #: Whether sampling draws a condition first (else the model predicts spg and wps).
    conditional: bool = True

    def __init__(self, path: str | Path, dtype: "torch.dtype | None" = None,
                 blob: dict | None = None):
        """``dtype``: the networks' precision (default float32)."""
        import torch

        if blob is None:
            path, blob = read_model_file(path)
        self.path = Path(path)
        self.dtype = torch.float32 if dtype is None else dtype
        self.kind: str = blob["kind"]
        self.model_id: str = blob["model_id"]
        self.config: dict = json.loads(blob["config"])
        self.info = {k: blob[k] for k in ("seed", "training_file", "training_sha256",
                                          "n_training_rows", "n_parameters", "train_seconds")}
        self.conditions = ConditionSampler.from_state(numpy_state(blob["conditions"]))
        self.build(blob)

    def build(self, blob: dict) -> None:
        """Build the kind's networks and transforms from the model file's ``blob``."""
        raise NotImplementedError

    @property
    def origin(self) -> str:
        """``KIND:MODEL_ID``, the origin of every row this model samples."""
        return f"{self.kind}:{self.model_id}"

    def sample_raw(self, n: int, rng: np.random.Generator, mode: str = "mix"
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(spg (n,), wps (n, 8), values (n, 30), condition source (n,)) of ``n`` new
        samples; deterministic for ``rng``'s state."""
        raise NotImplementedError

    def decode(self, z: torch.Tensor, spg: torch.Tensor | None = None,
               wps: torch.Tensor | None = None) -> torch.Tensor:
        """(N, 30) continuous values for latent ``z`` under condition (``spg``, ``wps``),
        differentiable in ``z``."""
        raise ValueError(f"{self.path}: a {self.kind} model has no latent space to decode")


class Trainer:
    """One model kind's training on a training table: the shared loop in
    :func:`~hpcxtal.generate.train.train` shuffles rows and calls :meth:`step` per batch
    with its torch generator (the only randomness after construction)."""

    kind: str
    #: Tensors with one entry per training row; batches are slices of these.
    data: dict[str, torch.Tensor]

    def step(self, batch: dict[str, torch.Tensor], rng: torch.Generator) -> dict[str, float]:
        """One optimisation step on ``batch``; the loss parts (batch means)."""
        raise NotImplementedError

    #: The networks (one module) and their optimiser; kinds with more override the
    #: checkpoint methods.
    model: torch.nn.Module
    opt: torch.optim.Optimizer

    def state(self) -> dict:
        """Networks and optimisers, for the per-epoch checkpoint."""
        return {"model": self.model.state_dict(), "optimizer": self.opt.state_dict()}

    def load_state(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])

    def weights(self) -> dict[str, torch.Tensor]:
        """The networks' weights as the model file stores them (half precision)."""
        return {k: v.detach().half() for k, v in self.model.state_dict().items()}

    def model_state(self) -> dict:
        """What the model file holds besides the provenance: ``weights`` (the networks
        sampling needs) and the fitted transforms and condition sampler."""
        raise NotImplementedError

    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

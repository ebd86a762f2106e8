"""What refinement minimises: the :class:`Objective` interface, the built-in SO(3)
environment objective, weighted sums, and loading objectives by name.

An objective evaluates a whole :class:`~hpcxtal.descriptor.batch.Batch` at free
variables R (B, D) in one tensor program: a (B,) loss differentiable in R, optionally a
(B,) validity, and the site-centred neighbour pairs it needs (``cutoff``; 0 = none, the
objective finds its own geometry). The refinement loop (:mod:`hpcxtal.refine.represent`)
and latent refinement only call these methods, so any objective, built in or a user's,
refines with the same restarts, step control, bounds and batching.

``refine.objective`` in the campaign config names the objective or lists weighted terms
(:class:`~hpcxtal.refine.config.ObjectiveTerm`); :func:`build_objective` turns it into
one object. A name is a built-in (``so3``, ``distance_matrix``, ``energy``), an entry
point of the ``hpcxtal.objectives`` group, or ``package.module:attr``; the object it
names is called as ``factory(settings, refine=cfg, dtype=..., device=...)``
(docs/OBJECTIVES.md).
"""
from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from importlib.metadata import entry_points
from typing import Any, Callable

import torch

from hpcxtal.config import from_mapping
from hpcxtal.descriptor.batch import Batch, neighbors
from hpcxtal.descriptor.neighbors import Pairs
from hpcxtal.descriptor.target import Environment
from hpcxtal.refine.config import (
    BUILTIN_OBJECTIVES, OBJECTIVE_GROUP, ObjectiveTerm, RefineConfig, SO3Settings,
)


class Objective(ABC):
    """A batched refinement objective.

    Subclasses set ``name``, optionally ``settings_type`` (a dataclass: the objective's
    config section, built from the term's ``settings`` with clear errors) and
    ``cutoff`` (Å of site-centred pairs :meth:`loss` reads from ``pairs``), and
    implement :meth:`loss`; :meth:`validity` (with ``sets_validity`` true) and
    :meth:`metrics` are optional.
    """

    name: str = ""
    settings_type: type | None = None
    cutoff: float = 0.0
    sets_validity: bool = False  # whether :meth:`validity` gives a verdict

    def pairs(self, batch: Batch, R: torch.Tensor, skin: float = 0.0) -> Pairs | None:
        """Site-centred pairs within ``cutoff + skin`` Å (None if the loss needs none);
        the refinement loop reuses them while no pair can have crossed the skin."""
        return neighbors(batch, R, self.cutoff + skin) if self.cutoff > 0 else None

    @abstractmethod
    def loss(self, batch: Batch, R: torch.Tensor, pairs: Pairs | None = None) -> torch.Tensor:
        """(B,) loss, differentiable in R; ``pairs`` (from :meth:`pairs`, possibly within
        a larger cutoff) or None (find them). Refinement stops a row below
        ``refine.loss_tolerance`` and reads relative improvements, so a loss should be
        near zero at the optimum and not negative."""

    def validity(self, batch: Batch, R: torch.Tensor, pairs: Pairs | None = None) -> torch.Tensor:
        """(B,) bool: the rows this objective accepts (only if ``sets_validity``);
        ``pairs``, if given, are complete within :attr:`cutoff` for R (as for :meth:`loss`)."""
        raise NotImplementedError(f"objective {self.name!r} sets no validity")

    def metrics(self, batch: Batch, R: torch.Tensor) -> dict[str, torch.Tensor]:
        """Named (B,) figures for reports and benchmarks (no gradients)."""
        return {}


class SO3Objective(Objective):
    """The SO(3) environment objective (:class:`~hpcxtal.descriptor.target.Environment`):
    every site's power spectrum against the target's reference site, multiplicity
    weighted; valid = the target's coordination rule."""

    name = "so3"
    settings_type = SO3Settings
    sets_validity = True

    def __init__(self, settings: SO3Settings, *, refine: RefineConfig, dtype: torch.dtype,
                 device: torch.device | str | None = None) -> None:
        self.env = Environment(settings.target or refine.target, dtype=dtype, device=device)
        self.cutoff = self.env.cutoff

    def pairs(self, batch: Batch, R: torch.Tensor, skin: float = 0.0) -> Pairs:
        return self.env.pairs(batch, R, skin)

    def loss(self, batch: Batch, R: torch.Tensor, pairs: Pairs | None = None) -> torch.Tensor:
        return self.env.loss(batch, R, pairs)

    def validity(self, batch: Batch, R: torch.Tensor, pairs: Pairs | None = None) -> torch.Tensor:
        return self.env.validity(batch, R, pairs)


class WeightedSum(Objective):
    """``sum_k w_k L_k`` over several objectives. Pairs are found once within the
    largest cutoff (each term keeps its own); a row is valid when every term that sets
    a validity accepts it, and with none, by ``fallback`` (the campaign's CN rule)."""

    name = "weighted_sum"
    sets_validity = True

    def __init__(self, terms: list[Objective], weights: list[float],
                 fallback: Callable[[Batch, torch.Tensor], torch.Tensor]) -> None:
        self.terms, self.weights, self.fallback = terms, weights, fallback
        self.cutoff = max(t.cutoff for t in terms)

    def loss(self, batch: Batch, R: torch.Tensor, pairs: Pairs | None = None) -> torch.Tensor:
        if pairs is None:
            pairs = self.pairs(batch, R)
        total = 0
        for term, weight in zip(self.terms, self.weights):
            total = total + weight * term.loss(batch, R, pairs if term.cutoff > 0 else None)
        return total

    def validity(self, batch: Batch, R: torch.Tensor, pairs: Pairs | None = None) -> torch.Tensor:
        verdicts = [t.validity(batch, R, pairs if t.cutoff > 0 else None)
                    for t in self.terms if t.sets_validity]
        if not verdicts:
            return self.fallback(batch, R)
        return torch.stack(verdicts).all(0)

    def metrics(self, batch: Batch, R: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {}
        for term in self.terms:
            out.update(term.metrics(batch, R))
        return out


def _factory(name: str) -> Callable[..., Objective]:
    """The object a term's name stands for: built-in, entry point or ``module:attr``."""
    if name in BUILTIN_OBJECTIVES:
        spec = BUILTIN_OBJECTIVES[name][0]
    else:
        found = [ep for ep in entry_points(group=OBJECTIVE_GROUP) if ep.name == name]
        if found:
            return found[0].load()
        spec = name
    module, _, attr = spec.partition(":")
    try:
        obj: Any = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"objective {name!r}: cannot load {spec} ({err})") from None
    return obj


def make_objective(term: ObjectiveTerm, refine: RefineConfig, *, dtype: torch.dtype = torch.float64,
                   device: torch.device | str | None = None) -> Objective:
    """One term's objective (its weight not applied); its ``settings`` parsed into the
    objective's ``settings_type`` when it declares one."""
    factory = _factory(term.name)
    settings_type = getattr(factory, "settings_type", None)
    settings = (from_mapping(settings_type, term.settings, f"objective {term.name} settings")
                if settings_type is not None else dict(term.settings))
    objective = factory(settings, refine=refine, dtype=dtype, device=device)
    if not isinstance(objective, Objective):
        raise ValueError(f"objective {term.name!r} gave {type(objective).__name__}, not an "
                         "hpcxtal.refine.objective.Objective")
    return objective


def build_objective(cfg: RefineConfig, *, dtype: torch.dtype = torch.float64,
                    device: torch.device | str | None = None) -> Objective:
    """The objective ``cfg.objective`` names. One term of weight 1 that sets a validity
    is used as it is (the default ``so3`` refines exactly as before objectives were
    plug-ins); otherwise a :class:`WeightedSum` whose validity falls back to the
    coordination rule of ``cfg.target``."""
    terms = cfg.terms()
    objectives = [make_objective(t, cfg, dtype=dtype, device=device) for t in terms]
    if len(objectives) == 1 and terms[0].weight == 1.0 and objectives[0].sets_validity:
        return objectives[0]
    env = next((o.env for o in objectives if isinstance(o, SO3Objective)
                and o.env.target.name == cfg.target), None)
    fallback = (env or Environment(cfg.target, dtype=dtype, device=device)).validity
    return WeightedSum(objectives, [t.weight for t in terms], fallback)


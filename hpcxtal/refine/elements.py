"""Element choice as a variable: per-site softmax over allowed elements, charge-neutral by
construction, annealed to one-hot; and Goldschmidt's tolerance factor.

A template (e.g. perovskite ABX3 in Pm-3m, sites 1a/1b/3c) names the elements each
Wyckoff site may take. Every (element, oxidation state) a site may hold is one of
pymatgen's common or ICSD oxidation states of the element with a Shannon radius at the
site's coordination (``XII``, ``VI`` ...). :class:`ElementChoice` enumerates the joint
assignments of elements to sites that are charge-neutral for some choice of those states
(``sum_s multiplicity_s * q_s = 0``): the *mask*. A sample's logits (S, E) give per-site
distributions ``softmax(logits_s / T)``; its distribution over assignments is their
product restricted to the neutral ones and renormalised, so every sample, soft or
annealed to one-hot (T -> 0), stands for charge-neutral compositions only. Any property
known per assignment (the tolerance factor, an energy) has a differentiable expectation
under it (:meth:`ElementChoice.expectation`).

Goldschmidt's tolerance factor of ABX3 is ``t = (r_A + r_X) / (sqrt(2) (r_B + r_X))`` with
Shannon ionic radii (A twelve-fold, B and X six-fold coordinated, as usual);
``0.8 <= t <= 1.0`` is the usual window for a perovskite.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

import numpy as np
import torch

#: The usual tolerance-factor window of a perovskite.
PEROVSKITE_T_RANGE = (0.8, 1.0)


@lru_cache(maxsize=None)
def ionic_states(element: str, coordination: str) -> tuple[tuple[int, float], ...]:
    """(oxidation state, Shannon ionic radius in Å) of ``element`` at ``coordination``
    (Roman numerals, e.g. ``VI``) for each of pymatgen's common and ICSD oxidation states
    that has a tabulated radius there; common states first."""
    import warnings

    from pymatgen.core.periodic_table import Element, Species

    el = Element(element)
    states = list(dict.fromkeys([*el.common_oxidation_states, *el.icsd_oxidation_states]))
    out = []
    for q in states:
        if q == 0:
            continue
        for spin in ("", "High Spin"):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    radius = Species(element, q).get_shannon_radius(cn=coordination, spin=spin)
            except (KeyError, ValueError):
                continue
            out.append((int(q), float(radius)))
            break
    return tuple(out)


@dataclass(frozen=True)
class SiteChoice:
    """The elements one Wyckoff site may take, its multiplicity (atoms per cell) and the
    coordination its Shannon radii are read at."""

    elements: tuple[str, ...]
    multiplicity: int
    coordination: str = "VI"


class ElementChoice:
    """Charge-neutral joint element assignments of a template's sites (module docstring).

    ``assignments`` (K, S) indexes each site's ``elements``; ``oxidation`` and ``radius``
    (K, S) are the states and Shannon radii that make assignment k neutral (the first
    neutral combination in the order of :func:`ionic_states`).
    """

    def __init__(self, sites: Sequence[SiteChoice]) -> None:
        self.sites = tuple(sites)
        if not self.sites:
            raise ValueError("no sites to choose elements for")
        options = [[ionic_states(el, s.coordination) for el in s.elements] for s in self.sites]
        found: dict[tuple[int, ...], tuple[tuple[int, ...], tuple[float, ...]]] = {}
        for elements in itertools.product(*(range(len(s.elements)) for s in self.sites)):
            for states in itertools.product(*(options[s][e] for s, e in enumerate(elements))):
                charge = sum(site.multiplicity * q for site, (q, _) in zip(self.sites, states))
                if charge == 0:
                    found[elements] = (tuple(q for q, _ in states), tuple(r for _, r in states))
                    break
        if not found:
            raise ValueError("no charge-neutral assignment of the allowed elements (with "
                             "pymatgen's oxidation states and Shannon radii at the sites' "
                             "coordination)")
        keys = sorted(found)
        self.assignments = np.array(keys, dtype=np.int64).reshape(len(keys), len(self.sites))
        self.oxidation = np.array([found[k][0] for k in keys], dtype=np.int64)
        self.radius = np.array([found[k][1] for k in keys], dtype=float)
        self.width = max(len(s.elements) for s in self.sites)

    def __len__(self) -> int:
        return len(self.assignments)

    def symbols(self, k: int) -> list[str]:
        """Element of each site in assignment ``k``."""
        return [s.elements[e] for s, e in zip(self.sites, self.assignments[k])]

    def mask(self) -> np.ndarray:
        """(S, E) bool: the elements of each site that occur in some neutral assignment
        (the rest can never be chosen)."""
        out = np.zeros((len(self.sites), self.width), dtype=bool)
        for s in range(len(self.sites)):
            out[s, np.unique(self.assignments[:, s])] = True
        return out

    def log_probabilities(self, logits: torch.Tensor, temperature: float) -> torch.Tensor:
        """(B, K) log-probability of each neutral assignment: the product of the
        per-site softmax of ``logits`` (B, S, E) at ``temperature``, restricted to
        neutral assignments and renormalised. Padding entries (past a site's elements)
        never enter."""
        idx = torch.as_tensor(self.assignments, device=logits.device)
        log_p = torch.log_softmax(self._padded(logits) / temperature, dim=-1)  # (B, S, E)
        per_site = log_p[:, torch.arange(len(self.sites), device=logits.device)[None, :], idx]
        return torch.log_softmax(per_site.sum(-1), dim=-1)  # (B, K)

    def expectation(self, logits: torch.Tensor, temperature: float,
                    values: torch.Tensor) -> torch.Tensor:
        """(B,) expectation of per-assignment ``values`` (K,) under each sample's
        distribution: differentiable in the logits."""
        return (self.log_probabilities(logits, temperature).exp() * values).sum(-1)

    def choose(self, logits: torch.Tensor) -> np.ndarray:
        """(B,) the most probable neutral assignment of each sample (the one-hot limit)."""
        with torch.no_grad():
            return self.log_probabilities(logits, 1.0).argmax(-1).cpu().numpy()

    def _padded(self, logits: torch.Tensor) -> torch.Tensor:
        """``logits`` with -inf past each site's own number of elements."""
        pad = torch.tensor([[e >= len(s.elements) for e in range(self.width)] for s in self.sites],
                           device=logits.device)
        return logits.masked_fill(pad, float("-inf"))


def tolerance_factor(r_a: np.ndarray | torch.Tensor, r_b: np.ndarray | torch.Tensor,
                     r_x: np.ndarray | torch.Tensor):
    """Goldschmidt's tolerance factor ``(r_A + r_X) / (sqrt(2) (r_B + r_X))``."""
    return (r_a + r_x) / (math.sqrt(2.0) * (r_b + r_x))


def window_penalty(t: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """Squared distance of ``t`` outside ``[lo, hi]`` (0 inside)."""
    return torch.relu(lo - t) ** 2 + torch.relu(t - hi) ** 2


def anneal(step: int, steps: int, start: float, end: float) -> float:
    """Temperature at ``step`` of ``steps``: geometric from ``start`` to ``end``."""
    if steps <= 1:
        return end
    return start * (end / start) ** (step / (steps - 1))


def design(choice: ElementChoice, values: torch.Tensor, n_samples: int, *, steps: int = 200,
           lr: float = 0.1, t_start: float = 1.0, t_end: float = 0.05,
           seed: int = 0) -> np.ndarray:
    """Minimise the expectation of per-assignment losses ``values`` (K,) over
    ``n_samples`` samples, each from its own random logits (N(0, 1), ``seed``), by Adam
    while the softmax temperature anneals from ``t_start`` to ``t_end``; returns each
    sample's chosen assignment (B,), charge-neutral by construction."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(n_samples, len(choice.sites), choice.width, generator=gen,
                         dtype=values.dtype).requires_grad_(True)
    opt = torch.optim.Adam([logits], lr=lr)
    for step in range(steps):
        opt.zero_grad()
        loss = choice.expectation(logits, anneal(step, steps, t_start, t_end), values).sum()
        loss.backward()
        opt.step()
    return choice.choose(logits.detach())

"""Target environments: reference spectrum, SO(3) loss and coordination validity.

A target (``hpcxtal/data/environments.yaml``; graphite by default) is data: a reference
crystal, which of its sites is the reference environment, the descriptor settings, and
the coordination rule. :class:`Environment` turns a target into tensors for one dtype
and device and evaluates, for a whole :class:`~hpcxtal.descriptor.batch.Batch`:

- :meth:`Environment.spectrum`: (S, K) SO(3) power spectrum of every site's
  representative atom;
- :meth:`Environment.loss`: per structure ``sum_s m_s |p_s - p_ref|^2 / sum_s m_s``
  (m_s = multiplicity, so the sum in the denominator is the atom count), which is
  pyxtal's ``lego.util.calculate_S`` objective;
- :meth:`Environment.validity`: per structure, every site's representative atom has an
  allowed coordination number within ``cn_cutoff_A`` (neighbours at distance strictly
  below the cutoff, all images, as pyxtal's ``check_validity(CN=...)`` counts them with
  ASE's ``neighbor_list``), no atom closer than ``min_distance_A``, and a finite cell of
  positive volume.

The module functions :func:`spectrum`, :func:`loss` and :func:`validity` use the default
graphite target.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import yaml
from ase.data import atomic_numbers

from hpcxtal.crystal.row import Row, decode
from hpcxtal.crystal.symmetry import space_group
from hpcxtal.descriptor.batch import (
    Batch, build_batch, cell_ok, cell_parameters, neighbors, site_pair_vectors,
)
from hpcxtal.descriptor.neighbors import Pairs
from hpcxtal.descriptor.so3 import SO3, SO3Config

ENVIRONMENTS_PATH = Path(__file__).resolve().parent.parent / "data" / "environments.yaml"
DEFAULT_TARGET = "graphite"
#: Neighbours closer than this (Å) are left out of the spectrum, as pyxtal's SO3 does
#: on the path its loss uses (``compute_p(atoms, ids)``): a coincident atom has no
#: direction. The coordination check still counts them.
MIN_PAIR_DISTANCE_A = 1e-2


@dataclass(frozen=True, kw_only=True)
class Target:
    """A reference environment and its coordination rule (lengths in Å)."""

    name: str
    species: str
    reference: Row
    reference_site: int
    so3: SO3Config
    cn: tuple[int, ...]
    cn_cutoff_A: float
    min_distance_A: float
    description: str = ""

    def __post_init__(self) -> None:
        if not 0 <= self.reference_site < self.reference.n_sites:
            raise ValueError(f"target {self.name}: reference_site {self.reference_site} not in "
                             f"0-{self.reference.n_sites - 1}")
        if self.cn_cutoff_A <= 0 or self.min_distance_A < 0:
            raise ValueError(f"target {self.name}: cn_cutoff_A must be > 0 and min_distance_A >= 0")


def target_from_mapping(name: str, spec: dict) -> Target:
    """A :class:`Target` from one entry of ``environments.yaml``; ValueError names the
    target and the problem."""
    try:
        species = str(spec["species"])
        spg = int(spec["spg"])
        group = space_group(spg)
        by_label = {wp.label: wp.index for wp in group.wyckoff}
        sites = spec["sites"]
        wps = [by_label[str(s[0])] for s in sites]
        xyz = np.array([[float(v) for v in s[1:4]] for s in sites])
        reference = decode(spg, np.array(spec["cell"], dtype=float), np.array(wps), xyz,
                           species=np.full(len(wps), atomic_numbers[species]))
        cn = spec["cn"][species]
        return Target(
            name=name,
            species=species,
            reference=reference,
            reference_site=int(spec.get("reference_site", 0)),
            so3=SO3Config(**spec.get("so3", {})),
            cn=tuple(int(v) for v in (cn if isinstance(cn, (list, tuple)) else [cn])),
            cn_cutoff_A=float(spec["cn_cutoff_A"]),
            min_distance_A=float(spec.get("min_distance_A", 0.0)),
            description=str(spec.get("description", "")),
        )
    except KeyError as err:
        raise ValueError(f"target {name}: missing or unknown entry {err}") from None
    except (TypeError, IndexError) as err:
        raise ValueError(f"target {name}: {err}") from None


def load_targets(path: Path | str = ENVIRONMENTS_PATH) -> dict[str, Target]:
    """All targets defined in a YAML file (default: the bundled environments)."""
    with open(path) as fh:
        data = yaml.safe_load(fh)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of target names")
    return {name: target_from_mapping(name, spec) for name, spec in data.items()}


class Environment:
    """A target on one dtype and device: reference spectrum, loss and validity."""

    def __init__(self, target: Target | str = DEFAULT_TARGET, *, dtype: torch.dtype = torch.float64,
                 device: torch.device | str | None = None) -> None:
        if isinstance(target, str):
            targets = load_targets()
            if target not in targets:
                raise ValueError(f"unknown target {target!r}; defined: {sorted(targets)}")
            target = targets[target]
        self.target = target
        self.so3 = SO3(self.target.so3, dtype=dtype, device=device)
        ref = build_batch([self.target.reference], dtype=dtype, device=device)
        with torch.no_grad():
            p = self.spectrum(ref, ref.R0)
        self.reference = p[self.target.reference_site].clone()

    @property
    def cutoff(self) -> float:
        """Neighbour-list cutoff covering both the descriptor and the CN check (Å)."""
        return max(self.target.so3.rcut, self.target.cn_cutoff_A)

    def pairs(self, batch: Batch, R: torch.Tensor, skin: float = 0.0) -> Pairs:
        """Site-centred pairs within ``cutoff + skin`` Å for the current R; pass them to
        :meth:`spectrum` or :meth:`loss` to reuse one list over several steps (exact
        while no atom moves more than ``skin / 2`` relative to a centre)."""
        return neighbors(batch, R, self.cutoff + skin)

    def spectrum(self, batch: Batch, R: torch.Tensor, pairs: Pairs | None = None) -> torch.Tensor:
        """(S, K) power spectrum of each site's representative atom."""
        if pairs is None:
            pairs = neighbors(batch, R, self.target.so3.rcut)
        with torch.no_grad():  # the pairs within rcut, found before any graph is recorded
            vec = site_pair_vectors(batch, R, pairs)
            r2 = (vec * vec).sum(1)
            keep = (r2 < self.target.so3.rcut ** 2) & (r2 > MIN_PAIR_DISTANCE_A ** 2)
        centre, atom = pairs.centre[keep], pairs.atom[keep]
        if R.requires_grad:
            vec = site_pair_vectors(batch, R, Pairs(centre, atom, pairs.shift[keep], pairs.searched))
        else:
            vec = vec[keep]
        return self.so3.power_spectrum(vec, centre, batch.n_sites, batch.atom_weight[atom])

    def loss(self, batch: Batch, R: torch.Tensor, pairs: Pairs | None = None) -> torch.Tensor:
        """(B,) multiplicity-weighted mean over sites of ``|p_site - p_ref|^2``."""
        p = self.spectrum(batch, R, pairs)
        per_site = ((p - self.reference) ** 2).sum(1) * batch.site_mult.to(p.dtype)
        total = torch.zeros(len(batch), dtype=p.dtype, device=p.device)
        total = total.index_add(0, batch.site_struct, per_site)
        return total / batch.n_atoms.to(p.dtype)

    @torch.no_grad()
    def coordination(self, batch: Batch, R: torch.Tensor, pairs: Pairs | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(S,) coordination number within ``cn_cutoff_A``, (S,) distance to the nearest
        other atom (inf if none within :attr:`cutoff`) and (B,) whether the structure's
        cell could be searched at all. ``pairs``: a list complete within :attr:`cutoff`
        for R (e.g. a refinement's, within a skin), used instead of a search; the
        figures are the same either way."""
        if pairs is None:
            pairs = neighbors(batch, R, self.cutoff)
        vec = site_pair_vectors(batch, R, pairs)
        dist = torch.linalg.norm(vec, dim=1)
        if len(dist) and bool((dist >= self.cutoff).any()):  # a list within a skin
            near = dist < self.cutoff
            pairs = Pairs(pairs.centre[near], pairs.atom[near], pairs.shift[near], pairs.searched)
            dist = dist[near]
        bonded = (dist < self.target.cn_cutoff_A).to(torch.long)
        cn = torch.zeros(batch.n_sites, dtype=torch.long, device=dist.device)
        cn = cn.index_add(0, pairs.centre, bonded)
        nearest = torch.full((batch.n_sites,), float("inf"), dtype=dist.dtype, device=dist.device)
        nearest = nearest.scatter_reduce(0, pairs.centre, dist, reduce="amin")
        return cn, nearest, pairs.searched

    @torch.no_grad()
    def validity(self, batch: Batch, R: torch.Tensor, pairs: Pairs | None = None) -> torch.Tensor:
        """(B,) bool: every site has an allowed CN, no atom too close, cell sound
        (``pairs`` as for :meth:`coordination`)."""
        cn, nearest, searched = self.coordination(batch, R, pairs)
        allowed = torch.tensor(self.target.cn, device=cn.device)
        site_ok = (cn.unsqueeze(1) == allowed).any(1) & (nearest >= self.target.min_distance_A)
        bad = torch.zeros(len(batch), dtype=torch.long, device=cn.device)
        bad = bad.index_add(0, batch.site_struct, (~site_ok).to(torch.long))
        sound = cell_ok(cell_parameters(batch, R)) & torch.isfinite(R).all(1) & searched
        return (bad == 0) & sound


@lru_cache(maxsize=8)
def default_environment(dtype: torch.dtype = torch.float64, device: str = "cpu") -> Environment:
    """The cached graphite :class:`Environment` for a dtype and device."""
    return Environment(DEFAULT_TARGET, dtype=dtype, device=device)


def _env(batch: Batch) -> Environment:
    return default_environment(batch.dtype, str(batch.device))


def spectrum(batch: Batch, R: torch.Tensor) -> torch.Tensor:
    """(S, 15) SO(3) spectrum of every site (default target's settings)."""
    return _env(batch).spectrum(batch, R)


def loss(batch: Batch, R: torch.Tensor) -> torch.Tensor:
    """(B,) SO(3) loss against graphite."""
    return _env(batch).loss(batch, R)


def validity(batch: Batch, R: torch.Tensor) -> torch.Tensor:
    """(B,) CN = 3 validity within 1.872 Å (graphite target)."""
    return _env(batch).validity(batch, R)

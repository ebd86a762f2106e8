"""The energy objective: energy-guided refinement through a differentiable potential.

Every atom's Cartesian position and the cell come from (batch, R) by the same gathers
and products as the descriptor (:func:`~hpcxtal.descriptor.batch.positions`), and a
MACE model (the relax stage's, by default the shipped carbon model) gives each row's
energy with its computational graph kept (:meth:`~hpcxtal.relax.models.MACEModel.energy`),
so the gradient reaches R through positions and cell: the structure moves downhill
without leaving its space group and Wyckoff layout. The loss is the energy per atom
above a reference (default: graphite relaxed with the same model, the relax stage's
``e_rel``), so it is near zero for good carbon structures, as refinement's step
control expects. It sets no validity (the campaign's coordination rule applies).
Use it alone or as a weighted term beside ``so3`` or ``distance_matrix``.
"""
from __future__ import annotations

import torch

from hpcxtal.descriptor.batch import Batch, positions
from hpcxtal.descriptor.neighbors import Pairs
from hpcxtal.refine.config import EnergySettings, RefineConfig
from hpcxtal.refine.objective import Objective


class EnergyObjective(Objective):
    """Energy per atom (eV) above the reference, differentiable in R."""

    name = "energy"
    settings_type = EnergySettings

    def __init__(self, settings: EnergySettings, *, refine: RefineConfig | None = None,
                 dtype: torch.dtype = torch.float64, device: torch.device | str | None = None) -> None:
        from hpcxtal.relax.models import MACEModel, resolve_mace_model

        path = resolve_mace_model(settings.model, settings.model_dir)
        self.model = MACEModel(path, dtype=str(dtype).removeprefix("torch."),
                               device=str(device or "cpu"), neighbour_skin_A=0)
        self.dtype = dtype
        if settings.reference_eV_per_atom is None:
            from hpcxtal.relax.engine import RelaxParams
            from hpcxtal.relax.reference import graphite_energy

            self.reference = graphite_energy(self.model, RelaxParams())
        else:
            self.reference = settings.reference_eV_per_atom

    def energy_per_atom(self, batch: Batch, R: torch.Tensor) -> torch.Tensor:
        """(B,) energy per atom (eV) of every row at R, differentiable in R."""
        geo = positions(batch, R)
        numbers = batch.atom_weight.round().to(torch.long)
        energy = self.model.energy(geo.cart, numbers, geo.lattice, batch.atom_struct)
        return energy.to(R.dtype) / batch.n_atoms.to(R.dtype)

    def loss(self, batch: Batch, R: torch.Tensor, pairs: Pairs | None = None) -> torch.Tensor:
        return self.energy_per_atom(batch, R) - self.reference

    @torch.no_grad()
    def metrics(self, batch: Batch, R: torch.Tensor) -> dict[str, torch.Tensor]:
        """``e_rel_eV_per_atom``: energy per atom above the reference."""
        with torch.enable_grad():  # mace's forward asks for gradients of its inputs
            return {"e_rel_eV_per_atom": self.loss(batch, R.detach()).detach()}

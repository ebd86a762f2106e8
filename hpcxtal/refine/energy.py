"""The energy objective: energy-guided refinement through a differentiable potential.

Every atom's Cartesian position and the cell come from (batch, R) by the same gathers
and products as the descriptor (:func:`~hpcxtal.descriptor.batch.positions`), and a
MACE model (by default the shipped carbon model) or CHGNet (any element H-Pu) gives
each row's energy with its computational graph kept (``energy`` of
:class:`~hpcxtal.relax.models.MACEModel` and :class:`~hpcxtal.relax.models.CHGNetModel`),
so the gradient reaches R through positions and cell: the structure moves downhill
without leaving its space group and Wyckoff layout. The loss is the energy per atom
above a reference (default: the standard states of the row's elements relaxed with the
same model, the relax stage's ``e_rel``: graphite for carbon, so the formation energy
for other rows), so it is near zero for good structures, as refinement's step
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
        from hpcxtal.relax.models import CHGNetModel, MACEModel, resolve_mace_model

        name = str(dtype).removeprefix("torch.")
        if settings.backend == "chgnet":
            self.model = CHGNetModel(settings.model or "0.3.0", dtype=name,
                                     device=str(device or "cpu"))
        else:
            path = resolve_mace_model(settings.model or "hpcxtal-carbon", settings.model_dir)
            self.model = MACEModel(path, dtype=name, device=str(device or "cpu"),
                                   neighbour_skin_A=0)
        self.dtype = dtype
        self.fixed = settings.reference_eV_per_atom
        self.references: dict[int, float] = {}  # element's standard state, eV/atom

    def reference(self, batch: Batch) -> torch.Tensor | float:
        """(B,) reference energy per atom of each row: the fixed one if given, else the
        composition-weighted standard states of its elements relaxed with the same
        model (graphite for carbon: exactly the relax stage's ``e_rel`` reference)."""
        if self.fixed is not None:
            return self.fixed
        from hpcxtal.relax.engine import RelaxParams
        from hpcxtal.relax.reference import elemental_energy

        numbers = batch.atom_weight.round().to(torch.long)
        elements = torch.unique(numbers)
        self.model.check_elements(elements.cpu().numpy())
        for z in elements.tolist():
            if z not in self.references:
                self.references[z] = elemental_energy(z, self.model, RelaxParams())
        mu = torch.tensor([self.references[z] for z in elements.tolist()], dtype=self.dtype,
                          device=numbers.device)
        counts = torch.zeros(len(batch), len(elements), dtype=self.dtype, device=numbers.device)
        counts.index_put_((batch.atom_struct, torch.searchsorted(elements, numbers)),
                          torch.ones_like(numbers, dtype=self.dtype), accumulate=True)
        # A one-element row gets (n / n) * mu + 0 = mu exactly.
        return (counts / batch.n_atoms.to(self.dtype)[:, None] * mu).sum(1)

    def energy_per_atom(self, batch: Batch, R: torch.Tensor) -> torch.Tensor:
        """(B,) energy per atom (eV) of every row at R, differentiable in R."""
        geo = positions(batch, R)
        numbers = batch.atom_weight.round().to(torch.long)
        energy = self.model.energy(geo.cart, numbers, geo.lattice, batch.atom_struct)
        return energy.to(R.dtype) / batch.n_atoms.to(R.dtype)

    def loss(self, batch: Batch, R: torch.Tensor, pairs: Pairs | None = None) -> torch.Tensor:
        return self.energy_per_atom(batch, R) - self.reference(batch)

    @torch.no_grad()
    def metrics(self, batch: Batch, R: torch.Tensor) -> dict[str, torch.Tensor]:
        """``e_rel_eV_per_atom``: energy per atom above the reference."""
        with torch.enable_grad():  # mace's forward asks for gradients of its inputs
            return {"e_rel_eV_per_atom": self.loss(batch, R.detach()).detach()}

"""User objectives from a TorchScript file (the ``torchscript`` objective).

The file is a module saved with ``torch.jit.save`` (``torch.jit.script(MyModule())``);
``torch.jit.load`` reads it into the TorchScript interpreter, so no Python code of the
file's author is imported or run. The module has a float attribute ``cutoff`` (Å; 0 for
none) and a ``forward`` with this contract, in the refine dtype and device::

    forward(lattice, n_atoms, pair_vec, pair_row, pair_weight, pair_z) -> loss

    lattice      (B, 3, 3)  each row's conventional cell, lattice vectors as rows (Å)
    n_atoms      (B,) int64 atoms in each row's conventional cell
    pair_vec     (P, 3)     vector from a centre atom to a neighbour image within
                            ``cutoff`` (Å); the centres are each Wyckoff site's
                            representative atom (symmetry makes the orbit's other atoms'
                            lists copies of it)
    pair_row     (P,) int64 the row of each pair
    pair_weight  (P,)       the centre site's multiplicity: ``sum_p w_p f(p)`` is the sum
                            of ``f`` over every atom of the cell and its neighbours
    pair_z       (P, 2) int64 atomic numbers of centre and neighbour
    loss         (B,)       per row, >= 0, near 0 at the optimum

The loss must be differentiable in ``lattice`` and ``pair_vec`` (refinement takes its
gradient through them to the free variables) and smooth where pairs cross ``cutoff``.
"""
from __future__ import annotations

import torch

from hpcxtal.descriptor.batch import Batch, cell_parameters, lattice_matrix, site_pair_vectors
from hpcxtal.descriptor.neighbors import Pairs
from hpcxtal.refine.config import RefineConfig, TorchScriptSettings
from hpcxtal.refine.objective import Objective

#: The arguments ``forward`` takes after ``self``, in order.
ARGUMENTS = ("lattice", "n_atoms", "pair_vec", "pair_row", "pair_weight", "pair_z")


def load_module(path: str, dtype: torch.dtype, device: torch.device | str | None = None):
    """The TorchScript module in ``path`` on ``device`` in ``dtype`` and its cutoff;
    ValueError (one line) if it is no TorchScript file or breaks the contract."""
    try:
        module = torch.jit.load(path, map_location=device)
    except Exception as err:  # noqa: BLE001  (torch raises RuntimeError, ValueError, ...)
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"objective file {path}: not a TorchScript module torch.jit.load "
                         f"reads ({reason})") from None
    try:
        args = [a.name for a in module.forward.schema.arguments][1:]
    except (AttributeError, RuntimeError):
        args = None
    if args is None or len(args) != len(ARGUMENTS):
        raise ValueError(f"objective file {path}: forward must take {len(ARGUMENTS)} tensors "
                         f"({', '.join(ARGUMENTS)}), it takes {args}")
    cutoff = getattr(module, "cutoff", None)
    if not isinstance(cutoff, (int, float)) or isinstance(cutoff, bool) or not cutoff >= 0:
        raise ValueError(f"objective file {path}: the module needs a float attribute cutoff "
                         f"(Å, 0 for no pairs), it has {cutoff!r}")
    return module.to(dtype), float(cutoff)


class TorchScriptObjective(Objective):
    """A scripted module's loss (module docstring); sets no validity (a weighted sum
    falls back to the campaign's coordination rule)."""

    name = "torchscript"
    settings_type = TorchScriptSettings

    def __init__(self, settings: TorchScriptSettings, *, refine: RefineConfig | None = None,
                 dtype: torch.dtype = torch.float64,
                 device: torch.device | str | None = None) -> None:
        self.file = settings.file
        self.module, self.cutoff = load_module(settings.file, dtype, device)

    def loss(self, batch: Batch, R: torch.Tensor, pairs: Pairs | None = None) -> torch.Tensor:
        lattice = lattice_matrix(cell_parameters(batch, R))
        long = dict(dtype=torch.long, device=R.device)
        if self.cutoff > 0:
            if pairs is None:
                pairs = self.pairs(batch, R)
            vec = site_pair_vectors(batch, R, pairs)
            near = (vec.detach() ** 2).sum(1) < self.cutoff ** 2  # pairs may be from a
            # longer list (skin, or a weighted sum's largest cutoff)
            vec, centre, atom = vec[near], pairs.centre[near], pairs.atom[near]
            z = torch.round(batch.atom_weight).long()
            row, weight = batch.site_struct[centre], batch.site_mult[centre].to(R.dtype)
            pair_z = torch.stack([z[batch.site_atom[centre]], z[atom]], 1)
        else:
            vec = torch.zeros((0, 3), dtype=R.dtype, device=R.device)
            row, pair_z = torch.zeros(0, **long), torch.zeros((0, 2), **long)
            weight = torch.zeros(0, dtype=R.dtype, device=R.device)
        out = self.module(lattice, batch.n_atoms, vec, row, weight, pair_z)
        if not isinstance(out, torch.Tensor) or out.shape != (len(batch),):
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"objective file {self.file}: forward returned {shape}, not one "
                             f"loss per row ({len(batch)},)")
        return out

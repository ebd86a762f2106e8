"""Batched energy models: one small interface, CHGNet and MACE behind it.

Like an ASE calculator, but for many structures at once: the atoms of all structures
are concatenated, ``batch[k]`` says which structure atom ``k`` belongs to, and one call
returns every structure's energy and stress and every atom's force. Neighbour lists
are built per structure (they are cheap); the network runs once for the whole batch. A
MACE model with ``neighbour_skin_A > 0`` (the default) keeps each structure's list
across calls that name it by the same key (a Verlet list, :mod:`hpcxtal.relax.neighbours`).

Weights are never downloaded: CHGNet uses the checkpoint its wheel carries, MACE a
model file given by path, the carbon model hpcxtal ships (``hpcxtal-carbon``, the
default) or a foundation name found in mace's cache directory (or a directory named in
the config). A missing file raises :class:`ModelSetupError` naming the file and where
to put it.
"""
from __future__ import annotations

import contextlib
import functools
import io
import logging
import os
import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from ase.calculators.calculator import Calculator, all_changes
from ase.stress import full_3x3_to_voigt_6_stress

from hpcxtal.data import DATA_DIR
from hpcxtal.relax.errors import ModelSetupError
from hpcxtal.relax.neighbours import VerletLists, fresh_edges

log = logging.getLogger(__name__)

#: Known backends.
BACKENDS = ("chgnet", "mace")
#: Verlet-list skin (Å) of MACE models unless told otherwise: lists built at the
#: cutoff + 1 Å last whole relaxations of these carbon structures and halve the
#: neighbour search (BENCHMARKS.md "Neighbour-list reuse").
DEFAULT_NEIGHBOUR_SKIN_A = 1.0
#: Dtypes a model may run in.
DTYPES = {"float64": torch.float64, "float32": torch.float32}
#: MACE models shipped with hpcxtal (``scripts/train_mace_model.py``; provenance in the
#: ``.yaml`` beside each file).
BUILTIN_MACE_MODELS = {"hpcxtal-carbon": DATA_DIR / "mace_carbon.model"}
#: The MACE model used when a config names none.
DEFAULT_MACE_MODEL = "hpcxtal-carbon"
#: MACE-MP foundation names and the file names mace's downloader caches them under.
MACE_FOUNDATION_FILES = {
    "mace-mp-0-small": "2023-12-10-mace-128-L0_energy_epoch-249.model",
    "mace-mp-0-medium": "2023-12-03-mace-128-L1_epoch-199.model",
    "mace-mp-0-large": "MACE_MPtrj_2022.9.model",
    "mace-mp-0b3-medium": "mace-mp-0b3-medium.model",
    "mace-mpa-0-medium": "mace-mpa-0-medium.model",
}


@dataclass
class BatchResult:
    """What a model returns for a batch: total energies (eV) per structure, forces
    (eV/Å) per atom, stresses (eV/Å³, ASE sign convention) and the shortest
    interatomic distance (Å, ``inf`` if none within the cutoff) per structure."""

    energy: torch.Tensor  # (N,)
    forces: torch.Tensor  # (n, 3)
    stress: torch.Tensor  # (N, 3, 3)
    min_distance: torch.Tensor  # (N,)

    def to(self, dtype: torch.dtype, device: torch.device | str = "cpu") -> "BatchResult":
        """The same result in ``dtype`` on ``device`` (the optimisers keep their float64
        state on the CPU whatever the model's precision and device)."""
        return BatchResult(*(t.to(device, dtype) for t in (self.energy, self.forces,
                                                           self.stress, self.min_distance)))


class EnergyModel(ABC):
    """A batched energy model: positions (n, 3) Å, atomic numbers (n,), cells (N, 3, 3)
    as row vectors in Å, batch index (n,) -> :class:`BatchResult`."""

    backend: str
    source: str
    dtype: torch.dtype
    device: torch.device
    cutoff: float  # Å: pairs further apart do not interact (sizes batches by edge count)
    #: Whether ``__call__`` takes ``keys``: stable ids of the structures across calls,
    #: under which it may keep per-structure work (neighbour lists) from call to call.
    takes_keys: bool = False
    #: Atomic numbers the model was trained on.
    elements: frozenset[int]

    def check_elements(self, numbers: np.ndarray) -> None:
        """Raise :class:`ModelSetupError` naming the elements of ``numbers`` this model
        does not know (a carbon model asked about NaCl), before any work is done."""
        from ase.data import chemical_symbols

        missing = sorted(set(np.asarray(numbers, dtype=int).tolist()) - self.elements)
        if missing:
            known = ", ".join(chemical_symbols[z] for z in sorted(self.elements)[:10])
            raise ModelSetupError(
                f"{self.backend} model {self.source} knows {known}"
                f"{' ...' if len(self.elements) > 10 else ''}, not "
                f"{', '.join(chemical_symbols[z] for z in missing)}; relax these rows with "
                f"backend: chgnet (elements H-Pu)")

    @abstractmethod
    def __call__(self, positions: torch.Tensor, numbers: torch.Tensor, cells: torch.Tensor,
                 batch: torch.Tensor) -> BatchResult:
        """Energies, forces and stresses of every structure in the batch."""

    def evaluate(self, images: Sequence) -> BatchResult:
        """One batched call on ASE Atoms ``images`` (positions, numbers, cells joined)."""
        counts = torch.tensor([len(a) for a in images])
        return self(torch.tensor(np.concatenate([a.positions for a in images])),
                    torch.tensor(np.concatenate([a.numbers for a in images])),
                    torch.tensor(np.array([np.asarray(a.cell) for a in images])),
                    torch.repeat_interleave(torch.arange(len(images)), counts))

    #: The file the weights were read from (its SHA-256 identifies the model).
    weights: Path

    def describe(self) -> dict[str, str]:
        """Backend, model file, the SHA-256 of its weights file and dtype, for logs and
        file attributes (which model produced a number)."""
        return {"model_backend": self.backend, "model_file": self.source,
                "model_sha256": _sha256(self.weights),
                "model_dtype": str(self.dtype).removeprefix("torch.")}

    def _split(self, positions: torch.Tensor, numbers: torch.Tensor, cells: torch.Tensor,
               batch: torch.Tensor) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Per structure (positions, numbers, cell) as float64 numpy arrays."""
        counts = torch.bincount(batch, minlength=len(cells)).tolist()
        pos = positions.detach().cpu().double().numpy()
        num = numbers.cpu().numpy()
        cel = cells.detach().cpu().double().numpy()
        out, lo = [], 0
        for i, c in enumerate(counts):
            out.append((pos[lo:lo + c], num[lo:lo + c], cel[i]))
            lo += c
        return out


@functools.lru_cache(maxsize=None)
def _sha256(path: Path) -> str:
    """SHA-256 of a weights file, hashed once per process."""
    from hpcxtal.store.hdf5 import file_sha256

    return file_sha256(path)


def chgnet_weights(version: str) -> Path:
    """The checkpoint the chgnet wheel carries for ``version`` (what ``CHGNet.load``
    reads); :class:`ModelSetupError` if the wheel lacks it."""
    import chgnet

    folder = Path(chgnet.__file__).parent / "pretrained" / version
    found = sorted(folder.glob("*.pth.tar"))
    if len(found) != 1:
        raise ModelSetupError(f"CHGNet {version}: expected one checkpoint in {folder}, found "
                              f"{len(found)}; reinstall the chgnet wheel, which carries them")
    return found[0]


def _min_distance(distances: np.ndarray) -> float:
    return float(distances.min()) if len(distances) else float("inf")


#: CHGNet's element embedding covers atomic numbers 1-94 (H-Pu).
CHGNET_MAX_Z = 94


class CHGNetModel(EnergyModel):
    """CHGNet (Deng et al. 2023) with the checkpoint its wheel carries.

    Graphs are built per structure with CHGNet's own graph code; the network runs once
    on CHGNet's batched graph. Forces and stresses come from one autograd pass through a
    per-structure strain, so the same code serves float32 and float64.
    """

    backend = "chgnet"

    def __init__(self, version: str = "0.3.0", dtype: str = "float64", device: str = "cpu"):
        try:
            from chgnet.model import CHGNet
        except ImportError as err:
            raise ModelSetupError(f"the chgnet backend needs the chgnet package ({err}); "
                                  "pip install chgnet") from None
        self.dtype, self.device = DTYPES[dtype], torch.device(device)
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # chgnet prints on load
                model = CHGNet.load(model_name=version, use_device="cpu", verbose=False)
        except ValueError as err:
            raise ModelSetupError(f"CHGNet: {err}; bundled versions are 0.3.0, 0.2.0, r2scan") \
                from None
        except FileNotFoundError as err:
            raise ModelSetupError(f"CHGNet weights missing: {err.filename}; reinstall the "
                                  "chgnet wheel, which carries them") from None
        self.model = model.to(device=self.device, dtype=self.dtype).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.source = f"chgnet {version} (bundled weights)"
        self.weights = chgnet_weights(version)
        self.cutoff = float(self.model.graph_converter.atom_graph_cutoff)
        self.bond_cutoff = float(self.model.graph_converter.bond_graph_cutoff)
        self.elements = frozenset(range(1, CHGNET_MAX_Z + 1))

    def _graph(self, pos: np.ndarray, num: np.ndarray, cell: np.ndarray, frac: torch.Tensor,
               lattice: torch.Tensor):
        from chgnet.graph.crystalgraph import CrystalGraph
        from pymatgen.optimization.neighbors import find_points_in_spheres

        center, neighbor, image, dist = find_points_in_spheres(
            pos, pos, r=self.cutoff, pbc=np.array([1, 1, 1], dtype=np.int64),
            lattice=np.ascontiguousarray(cell), tol=1e-8)
        keep = (center != neighbor) | np.any(image != 0, axis=1)  # drop only self-pairs
        center, neighbor, image, dist = center[keep], neighbor[keep], image[keep], dist[keep]
        graph = self.model.graph_converter.create_graph(len(num), center, neighbor, image, dist)
        atom_graph, d2u = graph.adjacency_list()
        bond_graph, u2d = graph.line_graph_adjacency_list(cutoff=self.bond_cutoff)

        def tensor(a) -> torch.Tensor:
            return torch.as_tensor(np.asarray(a), dtype=torch.int32, device=self.device)

        g = CrystalGraph(
            atomic_number=torch.as_tensor(num, dtype=torch.int32, device=self.device),
            atom_frac_coord=frac, atom_graph=tensor(atom_graph).reshape(-1, 2),
            neighbor_image=torch.as_tensor(image, dtype=self.dtype, device=self.device),
            directed2undirected=tensor(d2u), undirected2directed=tensor(u2d),
            bond_graph=tensor(bond_graph), lattice=lattice, graph_id=None, mp_id=None,
            composition="", atom_graph_cutoff=self.cutoff, bond_graph_cutoff=self.bond_cutoff)
        return g, _min_distance(dist)

    def __call__(self, positions, numbers, cells, batch):
        pos = positions.detach().to(self.device, self.dtype).requires_grad_(True)
        cel = cells.detach().to(self.device, self.dtype)
        strain = torch.zeros_like(cel, requires_grad=True)
        eye = torch.eye(3, dtype=self.dtype, device=self.device)
        # Cartesian positions move with the strain: r' = r (1 + e)
        energy, dmin = self._energies(positions, numbers, cells, batch, pos,
                                      torch.linalg.inv(cel), cel @ (eye + strain))
        grad_pos, grad_strain = torch.autograd.grad(energy.sum(), [pos, strain])
        volume = torch.linalg.det(cel).abs()
        return BatchResult(energy.detach(), -grad_pos, grad_strain / volume[:, None, None],
                           torch.tensor(dmin, dtype=self.dtype, device=self.device))

    def energy(self, positions: torch.Tensor, numbers: torch.Tensor, cells: torch.Tensor,
               batch: torch.Tensor) -> torch.Tensor:
        """(N,) total energies (eV) that stay differentiable in ``positions`` and
        ``cells`` (energy-guided refinement backpropagates through them); the graphs
        are built anew for the current geometry."""
        pos = positions.to(self.device, self.dtype)
        cel = cells.to(self.device, self.dtype)
        return self._energies(positions, numbers, cells, batch, pos, torch.linalg.inv(cel), cel)[0]

    def _energies(self, positions: torch.Tensor, numbers: torch.Tensor, cells: torch.Tensor,
                  batch: torch.Tensor, pos: torch.Tensor, inv: torch.Tensor,
                  lattices: torch.Tensor) -> tuple[torch.Tensor, list[float]]:
        """(N,) energies and shortest distances; the graphs' pairs come from the detached
        geometry, their fractional coordinates (``pos`` times ``inv`` per structure) and
        ``lattices`` carry the gradients."""
        from chgnet.model.model import BatchedGraph

        graphs, dmin = [], []
        counts = torch.bincount(batch, minlength=len(cells)).tolist()
        lo = 0
        for i, (p, z, c) in enumerate(self._split(positions, numbers, cells, batch)):
            frac = pos[lo:lo + counts[i]] @ inv[i]
            g, d = self._graph(p, z, c, frac, lattices[i])
            graphs.append(g)
            dmin.append(d)
            lo += counts[i]
        with warnings.catch_warnings():  # chgnet copies tensors it was given in from_graphs
            warnings.simplefilter("ignore", UserWarning)
            bg = BatchedGraph.from_graphs(graphs, self.model.bond_basis_expansion,
                                          self.model.angle_basis_expansion, compute_stress=False)
        pred = self.model._compute(bg, compute_force=False, compute_stress=False)
        natoms = torch.as_tensor(counts, dtype=self.dtype, device=self.device)
        e_atom = pred["e"].to(self.dtype)
        comp = self.model.composition_model
        if comp is not None:
            feas = comp._assemble_graphs(graphs).to(self.dtype)
            e_atom = e_atom + comp._get_energy(feas)
        return (e_atom * natoms if self.model.is_intensive else e_atom), dmin


class MACEModel(EnergyModel):
    """A MACE model (mace-torch) loaded from a file: a foundation model or our own.

    The batch is assembled the way mace's data loader does it (node one-hot over the
    model's elements, edges with unit-cell shifts, ``batch``/``ptr``), and the model's
    own force and stress code runs once for the whole batch. With ``neighbour_skin_A``
    > 0 (the default), calls given ``keys`` reuse each structure's Verlet list while it
    is valid; 0 builds every list anew.
    """

    backend = "mace"

    def __init__(self, path: str | os.PathLike, dtype: str = "float64", device: str = "cpu",
                 neighbour_skin_A: float = DEFAULT_NEIGHBOUR_SKIN_A):
        path = Path(path)
        if not path.is_file():
            raise ModelSetupError(f"MACE model file {path} not found; copy the model file there "
                                  "or set relax.model in the campaign config to its path")
        import mace.modules  # noqa: F401  (mace before e3nn: mace pins the e3nn it needs)

        self.dtype, self.device = DTYPES[dtype], torch.device(device)
        try:
            model = torch.load(path, map_location=self.device, weights_only=False)
        except Exception as err:  # noqa: BLE001  (torch.load raises many kinds)
            raise ModelSetupError(f"{path}: not a loadable MACE model file ({err})") from None
        if not isinstance(model, torch.nn.Module) or not hasattr(model, "atomic_numbers"):
            raise ModelSetupError(f"{path}: holds {type(model).__name__}, not a MACE model")
        self.model = model.to(self.dtype).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.source = str(path.resolve())
        self.weights = path.resolve()
        self.cutoff = float(self.model.r_max)
        self.verlet = VerletLists(self.cutoff, neighbour_skin_A) if neighbour_skin_A > 0 else None
        self.takes_keys = self.verlet is not None
        self.z_index = torch.full((119,), -1, dtype=torch.long)
        zs = [int(z) for z in self.model.atomic_numbers]
        self.z_index[zs] = torch.arange(len(zs))
        self.elements = frozenset(zs)

    def __call__(self, positions, numbers, cells, batch, keys: list[int] | None = None):
        if self.verlet is not None and keys is not None:
            graph = self.verlet.edges(keys, positions, cells, batch)
        else:
            graph = fresh_edges(positions, cells, batch, self.cutoff)
        data = self._inputs(positions.detach(), numbers, cells.detach(), batch, graph)
        out = self.model(data, training=False, compute_force=True, compute_stress=True)
        return BatchResult(out["energy"].detach(), out["forces"].detach(),
                           out["stress"].detach().reshape(len(cells), 3, 3),
                           graph.min_distance.to(self.device, self.dtype))

    def energy(self, positions: torch.Tensor, numbers: torch.Tensor, cells: torch.Tensor,
               batch: torch.Tensor) -> torch.Tensor:
        """(N,) total energies (eV) that stay differentiable in ``positions`` and
        ``cells`` (energy-guided refinement backpropagates through them); the neighbour
        list is built anew for the current geometry."""
        graph = fresh_edges(positions, cells, batch, self.cutoff)
        data = self._inputs(positions, numbers, cells, batch, graph)
        return self.model(data, training=False, compute_force=False, compute_stress=False)["energy"]

    def _inputs(self, positions: torch.Tensor, numbers: torch.Tensor, cells: torch.Tensor,
                batch: torch.Tensor, graph) -> dict[str, torch.Tensor]:
        """The model's input dict, as mace's data loader builds it."""
        n_struct = len(cells)
        idx = self.z_index[numbers.cpu()]
        if (idx < 0).any():
            missing = sorted(set(numbers.cpu()[idx < 0].tolist()))
            raise ModelSetupError(f"MACE model {self.source} has no elements {missing}")
        node_attrs = torch.nn.functional.one_hot(idx, len(self.model.atomic_numbers))
        counts = torch.bincount(batch, minlength=n_struct)
        us = graph.unit_shifts.to(self.device, self.dtype)
        cel = cells.to(self.device, self.dtype)
        bt = batch.to(self.device)
        ei = graph.pairs.to(self.device)
        return {
            "positions": positions.to(self.device, self.dtype).clone(),
            "node_attrs": node_attrs.to(self.device, self.dtype),
            "edge_index": ei,
            "unit_shifts": us,
            "shifts": torch.einsum("ej,ejk->ek", us, cel[bt[ei[0]]]),
            "cell": cel.reshape(-1, 3),
            "batch": bt,
            "ptr": torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)]).to(self.device),
            "head": torch.zeros(n_struct, dtype=torch.long, device=self.device),
        }


def resolve_mace_model(name: str, model_dir: str | os.PathLike | None = None) -> Path:
    """The file of a MACE model given as a path, a built-in name or a foundation name.

    Built-in names (``hpcxtal-carbon``) are package data; foundation names
    (``mace-mp-0-small`` ...) are looked up in ``model_dir`` (if given) and in mace's
    cache directory; nothing is downloaded.
    """
    if name in BUILTIN_MACE_MODELS:
        path = BUILTIN_MACE_MODELS[name]
        if not path.is_file():
            raise ModelSetupError(f"built-in MACE model {name!r}: {path} is missing from this "
                                  "installation; reinstall hpcxtal or rebuild it with "
                                  "scripts/train_mace_model.py")
        return path
    if name not in MACE_FOUNDATION_FILES:
        path = Path(name).expanduser()
        if not path.is_file():
            known = ", ".join([*BUILTIN_MACE_MODELS, *MACE_FOUNDATION_FILES])
            raise ModelSetupError(f"MACE model file {path} not found; copy the model file "
                                  f"there or set relax.model (--model) to its path or to a "
                                  f"built-in or foundation name ({known})")
        return path
    from mace.tools.utils import get_cache_dir

    filename = MACE_FOUNDATION_FILES[name]
    dirs = ([Path(model_dir)] if model_dir else []) + [Path(get_cache_dir())]
    # mace's downloader keeps only letters, digits and '_' of the file name
    cached = "".join(c for c in filename if c.isalnum() or c == "_")
    for d in dirs:
        for candidate in (d / filename, d / cached):
            if candidate.is_file():
                log.info("MACE foundation model %s: %s", name, candidate)
                return candidate
    raise ModelSetupError(
        f"MACE foundation model {name!r} is not on this machine and hpcxtal never downloads: "
        f"put {filename} into {dirs[0]}" + (f" (or {dirs[1]})" if len(dirs) > 1 else "")
        + " or set relax.model to the file's path")


def load_model(backend: str = "mace", model: str | None = None, dtype: str = "float64",
               device: str = "cpu", model_dir: str | None = None,
               neighbour_skin_A: float = DEFAULT_NEIGHBOUR_SKIN_A) -> EnergyModel:
    """Build the energy model a config names.

    ``backend`` is ``mace`` (``model``: a file path, a built-in name, default
    ``hpcxtal-carbon``, or a foundation name resolved offline from ``model_dir`` or
    mace's cache; ``neighbour_skin_A``: Verlet-list skin, 0 = rebuild every call) or ``chgnet``
    (``model``: bundled version, default 0.3.0; builds its graphs every call). Raises
    :class:`ModelSetupError` on anything missing.
    """
    if dtype not in DTYPES:
        raise ModelSetupError(f"dtype {dtype!r}: use one of {sorted(DTYPES)}")
    if backend == "chgnet":
        return CHGNetModel(model or "0.3.0", dtype=dtype, device=device)
    if backend == "mace":
        path = resolve_mace_model(model or DEFAULT_MACE_MODEL, model_dir)
        return MACEModel(path, dtype=dtype, device=device, neighbour_skin_A=neighbour_skin_A)
    raise ModelSetupError(f"unknown energy backend {backend!r}; backends are {BACKENDS}")



class ModelCalculator(Calculator):
    """An ASE calculator around an :class:`EnergyModel` (one structure per call), so
    ASE's optimisers, filters and tools can use the same model."""

    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def __init__(self, model: EnergyModel):
        super().__init__()
        self.model = model

    def calculate(self, atoms=None, properties=None, system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        r = self.model.evaluate([self.atoms])
        energy = float(r.energy[0])
        self.results = {"energy": energy, "free_energy": energy,
                        "forces": r.forces.cpu().double().numpy(),
                        "stress": full_3x3_to_voigt_6_stress(r.stress[0].cpu().double().numpy())}

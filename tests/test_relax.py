"""Energy stage: batched models, batched optimisers (L-BFGS, FIRE) with cell filter, reference."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from hpcxtal.relax.errors import ModelSetupError
from hpcxtal.relax.engine import OPTIMIZERS, RelaxParams, relax
from hpcxtal.relax.models import BatchResult, MACE_FOUNDATION_FILES, ModelCalculator, load_model


def tiny_mace(path, seed: int = 0):
    """A small randomly initialised carbon MACE model saved to ``path`` (real mace code)."""
    import mace.modules
    from e3nn import o3

    torch.manual_seed(seed)
    model = mace.modules.ScaleShiftMACE(
        r_max=3.0, num_bessel=4, num_polynomial_cutoff=5, max_ell=1,
        interaction_cls=mace.modules.interaction_classes["RealAgnosticResidualInteractionBlock"],
        interaction_cls_first=mace.modules.interaction_classes["RealAgnosticInteractionBlock"],
        num_interactions=1, num_elements=1, hidden_irreps=o3.Irreps("8x0e"),
        MLP_irreps=o3.Irreps("8x0e"), atomic_energies=np.array([-1.0]), avg_num_neighbors=8.0,
        atomic_numbers=[6], correlation=2, gate=torch.nn.functional.silu, pair_repulsion=True,
        atomic_inter_scale=1.0, atomic_inter_shift=0.0)
    torch.save(model.double(), path)
    return path


@pytest.fixture(scope="module")
def mace_file(tmp_path_factory):
    return tiny_mace(tmp_path_factory.mktemp("mace") / "tiny.model")


@pytest.fixture(scope="module")
def mace_model(mace_file):
    return load_model("mace", str(mace_file))


@pytest.fixture(scope="module")
def chgnet():
    return load_model("chgnet")


@pytest.fixture(scope="module")
def shipped():
    """The carbon MACE model shipped as package data (the default energy model)."""
    return load_model()


def diamond(a=3.567, strain=0.0, rattle=0.0, seed=0, repeat=(1, 1, 1)):
    from ase.build import bulk

    atoms = bulk("C", "diamond", a=a) * repeat
    if strain:
        atoms.set_cell(np.asarray(atoms.cell) @ (np.eye(3) + strain * np.array(
            [[1.0, 0.3, 0.0], [0.3, -0.5, 0.1], [0.0, 0.1, 0.8]])), scale_atoms=True)
    if rattle:
        atoms.rattle(rattle, seed=seed)
    return atoms


def graphite_distorted(seed=0):
    from hpcxtal.relax.reference import graphite

    atoms = graphite()
    atoms.set_cell(np.asarray(atoms.cell) * [[1.03], [1.03], [0.97]], scale_atoms=True)
    atoms.rattle(0.03, seed=seed)
    return atoms


# --- energy models -------------------------------------------------------------------

def test_chgnet_batch_matches_chgnet_own_prediction(chgnet):
    from chgnet.model import CHGNet
    from pymatgen.io.ase import AseAtomsAdaptor

    images = [diamond(rattle=0.05, seed=1), diamond(a=3.7, rattle=0.05, seed=2, repeat=(1, 1, 2))]
    out = chgnet.evaluate(images)
    assert out.energy.dtype == torch.float64
    ref = CHGNet.load(verbose=False)
    lo = 0
    for i, atoms in enumerate(images):
        p = ref.predict_structure(AseAtomsAdaptor.get_structure(atoms), task="efs")
        n = len(atoms)
        assert out.energy[i].item() / n == pytest.approx(float(p["e"]), abs=2e-5)
        np.testing.assert_allclose(out.forces[lo:lo + n].numpy(), p["f"], atol=2e-4)
        np.testing.assert_allclose(out.stress[i].numpy(), p["s"] / 160.21766208, atol=2e-5)
        lo += n


@pytest.mark.parametrize("which", ["mace_model", "chgnet"])
def test_forces_and_stress_are_energy_derivatives(which, request):
    """Finite differences of the batched energy agree with forces and stress (float64)."""
    model = request.getfixturevalue(which)
    atoms = diamond(a=3.6, strain=0.02, rattle=0.05, seed=3)
    out = model.evaluate([atoms])
    h = 1e-4
    for k, d in [(0, 0), (1, 2)]:
        plus, minus = atoms.copy(), atoms.copy()
        plus.positions[k, d] += h
        minus.positions[k, d] -= h
        fd = -(model.evaluate([plus]).energy - model.evaluate([minus]).energy).item() / (2 * h)
        assert fd == pytest.approx(out.forces[k, d].item(), abs=1e-4)
    eps = np.zeros((3, 3))
    eps[0, 1] = eps[1, 0] = h
    e = []
    for sign in (1, -1):
        a = atoms.copy()
        a.set_cell(np.asarray(atoms.cell) @ (np.eye(3) + sign * eps), scale_atoms=True)
        e.append(model.evaluate([a]).energy.item())
    fd = (e[0] - e[1]) / (2 * 2 * h) / atoms.cell.volume
    assert fd == pytest.approx(out.stress[0, 0, 1].item(), abs=1e-5)


def test_mace_batch_equals_single(mace_model):
    images = [diamond(rattle=0.05, seed=1), graphite_distorted(), diamond(repeat=(2, 1, 1))]
    batched = mace_model.evaluate(images)
    lo = 0
    for i, atoms in enumerate(images):
        single = mace_model.evaluate([atoms])
        assert batched.energy[i].item() == pytest.approx(single.energy.item(), abs=1e-10)
        np.testing.assert_allclose(batched.forces[lo:lo + len(atoms)], single.forces, atol=1e-10)
        np.testing.assert_allclose(batched.stress[i], single.stress[0], atol=1e-10)
        lo += len(atoms)


def test_float32_runs_close_to_float64(mace_file):
    images = [diamond(rattle=0.05, seed=1)]
    e64 = load_model("mace", str(mace_file), dtype="float64").evaluate(images).energy
    e32 = load_model("mace", str(mace_file), dtype="float32").evaluate(images).energy
    assert e32.dtype == torch.float32
    assert e32.item() == pytest.approx(e64.item(), abs=1e-4)


# --- missing weights ------------------------------------------------------------------

def test_missing_mace_file_names_the_file(tmp_path):
    missing = tmp_path / "nowhere" / "carbon.model"
    with pytest.raises(ModelSetupError, match="carbon.model not found.*relax.model"):
        load_model("mace", str(missing))


def test_mace_foundation_name_resolves_offline_or_says_where(tmp_path, monkeypatch, mace_file):
    import urllib.request

    def no_network(*args, **kwargs):
        raise AssertionError("tried to download")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    monkeypatch.setattr(urllib.request, "urlretrieve", no_network)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    filename = MACE_FOUNDATION_FILES["mace-mp-0-small"]
    with pytest.raises(ModelSetupError) as err:
        load_model("mace", "mace-mp-0-small", model_dir=str(tmp_path / "models"))
    message = str(err.value)
    assert filename in message and str(tmp_path / "models") in message
    assert str(tmp_path / "cache" / "mace") in message and "never downloads" in message
    # the same name resolves once the file is where the message said
    (tmp_path / "models").mkdir()
    os.symlink(mace_file, tmp_path / "models" / filename)
    model = load_model("mace", "mace-mp-0-small", model_dir=str(tmp_path / "models"))
    assert model.source.endswith(filename) or model.source == str(mace_file.resolve())


def test_missing_chgnet_weights_give_a_clear_error(tmp_path, monkeypatch):
    import chgnet.model.model as chgnet_model

    monkeypatch.setattr(chgnet_model, "module_dir", str(tmp_path / "model"))
    with pytest.raises(ModelSetupError, match="CHGNet weights missing: .*chgnet_0.3.0"):
        load_model("chgnet")


def test_shipped_model_loads_offline_with_its_provenance(monkeypatch):
    import hashlib
    import socket
    import urllib.request

    import yaml

    from hpcxtal.relax.models import BUILTIN_MACE_MODELS

    def no_network(*args, **kwargs):
        raise AssertionError("tried to use the network")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    model = load_model()  # the default: backend mace, model hpcxtal-carbon
    path = BUILTIN_MACE_MODELS["hpcxtal-carbon"]
    assert model.backend == "mace" and model.source == str(path.resolve())
    assert load_model("mace", "hpcxtal-carbon").source == model.source
    assert [int(z) for z in model.model.atomic_numbers] == [6]
    sidecar = yaml.safe_load(path.with_suffix(".yaml").read_text())
    assert sidecar["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert sidecar["data"]["test"]["configurations"] > 0


def test_shipped_model_ranks_graphite_below_diamond(shipped):
    from hpcxtal.relax.reference import graphite

    params = RelaxParams(fmax_eV_per_A=0.02, max_steps=300)
    g, d = relax([graphite(), diamond()], shipped, params)
    assert g.status == d.status == "converged"
    e_g, e_d = g.energy / len(g.atoms), d.energy / len(d.atoms)
    assert 0.02 < e_d - e_g < 0.4  # CHGNet (its teacher): about 0.1 eV/atom
    a, _, c = g.atoms.cell.cellpar()[:3]
    assert 2.40 < a < 2.52 and 6.2 < c < 8.2  # CHGNet: a 2.47 Å, c 7.72 Å (weak interlayer)


def test_unknown_backend():
    with pytest.raises(ModelSetupError, match="unknown energy backend"):
        load_model("nequip")


# --- batched optimisers ---------------------------------------------------------------

@pytest.mark.parametrize("which", ["chgnet", "shipped"])
def test_relaxation_lowers_energy_and_forces_on_diamond_and_graphite(which, request):
    model = request.getfixturevalue(which)
    images = [diamond(strain=0.04, rattle=0.05, seed=1), graphite_distorted(seed=2)]
    start = model.evaluate(images).energy
    params = RelaxParams(fmax_eV_per_A=0.05, max_steps=200)
    results = relax(images, model, params)
    for r, e0, atoms in zip(results, start, images):
        assert r.status == "converged", r.status
        assert r.energy < e0.item() - 1e-3
        final = model.evaluate([r.atoms])
        assert final.energy.item() == pytest.approx(r.energy, abs=1e-8)
        assert final.forces.norm(dim=1).max().item() < params.fmax_eV_per_A
        # the cell is relaxed too: stress x volume per atom below fmax-like tolerance
        assert (final.stress.abs().max() * r.atoms.cell.volume).item() < params.fmax_eV_per_A * len(r.atoms) * 2
    a_diamond = results[0].atoms.cell.cellpar()[0] * np.sqrt(2)
    assert 3.50 < a_diamond < 3.65  # CHGNet (and its student): diamond near 3.57 Å


def ase_optimizer(name: str):
    """ASE's optimiser class that the batched optimiser ``name`` follows."""
    from ase.optimize import FIRE, LBFGS

    return {"fire": FIRE, "lbfgs": LBFGS}[name]


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
def test_batched_optimizer_follows_ase_with_frechet_filter(chgnet, optimizer):
    """Step for step: same step count, energy and cell as ASE's optimiser of that name."""
    from ase.filters import FrechetCellFilter

    atoms = diamond(strain=0.03, rattle=0.05, seed=4)
    params = RelaxParams(optimizer=optimizer, fmax_eV_per_A=0.05, max_steps=100)
    (ours,) = relax([atoms], chgnet, params)
    ref = atoms.copy()
    ref.calc = ModelCalculator(chgnet)
    opt = ase_optimizer(optimizer)(FrechetCellFilter(ref), logfile=None)
    converged = opt.run(fmax=0.05, steps=params.step_cap(len(ref)))
    assert converged and ours.status == "converged"
    assert ours.steps == opt.nsteps
    assert ours.energy == pytest.approx(ref.get_potential_energy(), abs=1e-6)
    np.testing.assert_allclose(ours.atoms.cell, ref.cell, atol=1e-6)


def test_lbfgs_energies_match_ase_bfgs_and_fire_in_one_batch(shipped):
    """Batched L-BFGS on a mixed batch of the shipped model ends within 1 meV/atom of
    ASE's BFGS and FIRE on FrechetCellFilter, in fewer steps than FIRE."""
    from ase.filters import FrechetCellFilter
    from ase.optimize import BFGS, FIRE

    images = [diamond(strain=0.03, rattle=0.05, seed=4), graphite_distorted(seed=2),
              diamond(rattle=0.1, seed=3, repeat=(2, 1, 1))]
    params = RelaxParams(optimizer="lbfgs", fmax_eV_per_A=0.02)
    ours = relax(images, shipped, params)
    fire_steps = 0
    for atoms, r in zip(images, ours):
        assert r.status == "converged"
        for cls in (BFGS, FIRE):
            ref = atoms.copy()
            ref.calc = ModelCalculator(shipped)
            opt = cls(FrechetCellFilter(ref), logfile=None)
            assert opt.run(fmax=0.02, steps=params.step_cap(len(ref)))
            assert abs(r.energy - ref.get_potential_energy()) / len(ref) < 1e-3
            fire_steps += opt.nsteps if cls is FIRE else 0
    assert sum(r.steps for r in ours) < fire_steps


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
def test_mixed_batch_equals_one_by_one(mace_model, optimizer):
    images = [diamond(rattle=0.05, seed=1), graphite_distorted(seed=2),
              diamond(rattle=0.05, seed=3, repeat=(2, 1, 1)), diamond(rattle=0.04, seed=5)]
    params = RelaxParams(optimizer=optimizer, max_steps=6, steps_per_atom=1.0,
                         batch_atom_budget=10)
    batched = relax(images, mace_model, params)
    for atoms, b in zip(images, batched):
        (single,) = relax([atoms], mace_model, params)
        assert b.status == single.status and b.steps == single.steps
        assert b.energy / len(atoms) == pytest.approx(single.energy / len(atoms), abs=1e-9)
        np.testing.assert_allclose(b.atoms.positions, single.atoms.positions, atol=1e-9)


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
def test_float32_model_relaxes_like_float64(mace_file, mace_model, optimizer):
    """A float32 model (``relax.dtype: float32``) drives the float64 optimiser state."""
    images = [diamond(strain=0.02, rattle=0.05, seed=1), graphite_distorted(seed=2)]
    params = RelaxParams(optimizer=optimizer, fmax_eV_per_A=0.05, max_steps=200)
    single = relax(images, load_model("mace", str(mace_file), dtype="float32"), params)
    double = relax(images, mace_model, params)
    for atoms, s, d in zip(images, single, double):
        assert s.status == d.status == "converged"
        assert s.energy / len(atoms) == pytest.approx(d.energy / len(atoms), abs=1e-4)


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
def test_step_cap_gives_not_converged(mace_model, optimizer):
    params = RelaxParams(optimizer=optimizer, fmax_eV_per_A=1e-6, max_steps=3, steps_per_atom=0.5)
    (r,) = relax([diamond(rattle=0.1, seed=2)], mace_model, params)
    assert r.status == "not_converged" and r.steps == 3 + 1  # 3 + 0.5 * 2 atoms


class FailingModel:
    """A real model whose output turns NaN for structures of ``natoms`` atoms from the
    ``after``-th call on (fault injection for the isolation test)."""

    def __init__(self, model, natoms: int, after: int):
        self.model, self.natoms, self.after, self.calls = model, natoms, after, 0
        self.cutoff, self.device = model.cutoff, model.device

    def __call__(self, positions, numbers, cells, batch) -> BatchResult:
        out = self.model(positions, numbers, cells, batch)
        self.calls += 1
        if self.calls >= self.after:
            bad = torch.bincount(batch, minlength=len(cells)) == self.natoms
            out.energy[bad] = float("nan")
            out.forces[bad[batch]] = float("nan")
        return out


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
def test_failures_do_not_affect_the_rest(mace_model, optimizer):
    good = [diamond(rattle=0.05, seed=1), diamond(rattle=0.05, seed=3, repeat=(3, 1, 1))]
    nan_input = diamond(rattle=0.05, seed=2)
    nan_input.positions[1, 2] = np.nan
    overlap = diamond(repeat=(1, 1, 2))
    overlap.positions[3] = overlap.positions[2] + [0.1, 0.0, 0.0]
    midway = graphite_distorted()  # 4 atoms: its energy turns NaN at the 3rd model call
    params = RelaxParams(optimizer=optimizer, max_steps=8, steps_per_atom=0)
    clean = relax(good, mace_model, params)
    mixed = relax([good[0], nan_input, overlap, midway, good[1]],
                  FailingModel(mace_model, natoms=4, after=3), params)
    assert mixed[1].status == "failed: non-finite positions or cell"
    assert mixed[2].status.startswith("failed: overlapping atoms")
    assert mixed[3].status == "failed: energy is not finite" and mixed[3].steps > 0  # mid-run
    # the others match a run without the bad structures (to rounding: batch sizes differ)
    for a, b in zip(clean, [mixed[0], mixed[4]]):
        assert np.isfinite(b.energy) and a.status == b.status and a.steps == b.steps
        assert a.energy == pytest.approx(b.energy, abs=1e-10)
        np.testing.assert_allclose(a.atoms.positions, b.atoms.positions, atol=1e-10)
        np.testing.assert_allclose(a.atoms.cell, b.atoms.cell, atol=1e-10)


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
def test_model_error_in_one_structure_fails_only_it(mace_model, optimizer):
    class Picky:
        cutoff, device = mace_model.cutoff, mace_model.device

        def __call__(self, positions, numbers, cells, batch):
            if (torch.bincount(batch, minlength=len(cells)) == 4).any():
                raise RuntimeError("cannot handle 4 atoms")
            return mace_model(positions, numbers, cells, batch)

    params = RelaxParams(optimizer=optimizer, max_steps=2, steps_per_atom=0)
    results = relax([diamond(rattle=0.05, seed=1), graphite_distorted()], Picky(), params)
    assert results[0].status == "not_converged"
    assert results[1].status == "failed: model error: RuntimeError: cannot handle 4 atoms"


def test_edge_budget_splits_batches_like_the_atom_budget(mace_model):
    from hpcxtal.relax.engine import _edge_count

    images = [diamond(rattle=0.05, seed=1), diamond(rattle=0.05, seed=3, repeat=(2, 1, 1))]
    edges = [_edge_count(a, mace_model.cutoff) for a in images]
    assert edges[1] > edges[0] > 0

    class Counting:
        cutoff, device, sizes = mace_model.cutoff, mace_model.device, []

        def __call__(self, positions, numbers, cells, batch):
            self.sizes.append(len(cells))
            return mace_model(positions, numbers, cells, batch)

    counting = Counting()
    params = RelaxParams(max_steps=3, steps_per_atom=0, batch_edge_budget=edges[1])
    split = relax(images, counting, params)  # both do not fit: one structure at a time
    assert max(counting.sizes) == 1
    counting.sizes.clear()
    together = relax(images, counting, RelaxParams(max_steps=3, steps_per_atom=0))
    assert max(counting.sizes) == 2  # the CPU default holds both
    for a, b in zip(split, together):
        assert a.energy == pytest.approx(b.energy, abs=1e-9)


def _edge_set(edges):
    return {(int(i), int(j), *map(int, s)) for (i, j), s in
            zip(edges.pairs.T.tolist(), edges.unit_shifts.round().tolist())}


def test_verlet_lists_hold_every_pair_and_rebuild_when_moved_too_far():
    from hpcxtal.relax.neighbours import VerletLists, fresh_edges

    images = [diamond(rattle=0.05, seed=1), graphite_distorted(seed=2)]
    pos = torch.tensor(np.concatenate([a.positions for a in images]))
    cells = torch.tensor(np.array([np.asarray(a.cell) for a in images]))
    batch = torch.tensor([0, 0, 1, 1, 1, 1])
    lists = VerletLists(cutoff=3.0, skin_A=0.5)
    gen = torch.Generator().manual_seed(0)
    strain = torch.eye(3, dtype=torch.float64) + 0.01 * torch.randn(3, 3, generator=gen,
                                                                     dtype=torch.float64)
    steps = [(pos, cells), (pos @ strain, cells @ strain),  # affine: still valid
             (pos @ strain + 0.08 * torch.randn(6, 3, generator=gen, dtype=torch.float64),
              cells @ strain),  # moved less than half the skin: still valid
             (pos + torch.tensor([[0.3, 0, 0]] + [[0, 0, 0]] * 5), cells)]  # too far: rebuilt
    builds = []
    for p, c in steps:
        reused, fresh = lists.edges([7, 9], p, c, batch), fresh_edges(p, c, batch, 3.0)
        assert _edge_set(reused) == _edge_set(fresh)
        torch.testing.assert_close(reused.min_distance, fresh.min_distance)
        builds.append(lists.builds)
    assert builds == [2, 2, 2, 3]  # the first structure alone rebuilt at the last step


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
def test_neighbour_reuse_relaxes_like_fresh_lists(mace_file, optimizer):
    """Verlet lists (even a thin skin that forces rebuilds) give the relaxation that
    rebuilding every step gives, to rounding."""
    images = [diamond(strain=0.03, rattle=0.05, seed=1), graphite_distorted(seed=2),
              diamond(rattle=0.1, seed=3, repeat=(2, 1, 1))]
    params = RelaxParams(optimizer=optimizer, fmax_eV_per_A=0.01, max_steps=60)
    fresh = relax(images, load_model("mace", str(mace_file), neighbour_skin_A=0.0), params)
    thin = load_model("mace", str(mace_file), neighbour_skin_A=0.02)
    for model in (thin, load_model("mace", str(mace_file), neighbour_skin_A=1.0)):
        for a, b in zip(fresh, relax(images, model, params)):
            assert a.status == b.status and a.steps == b.steps
            assert a.energy == pytest.approx(b.energy, abs=1e-9)
            np.testing.assert_allclose(a.atoms.positions, b.atoms.positions, atol=1e-9)
    assert thin.verlet.builds > len(images)


def test_lbfgs_keeps_concave_pairs_out_of_its_history():
    """A step along which the force grew (y . s < 0) is not stored, so the next step is
    steepest descent, downhill; a convex pair is stored (rho > 0)."""
    from hpcxtal.relax.lbfgs import lbfgs_init, lbfgs_step

    params = RelaxParams(optimizer="lbfgs", lbfgs_memory=3)
    zero_cell = torch.zeros((1, 3, 3), dtype=torch.float64)
    for grow, stored in ((2.0, False), (0.5, True)):
        state = lbfgs_init([diamond()], [0], params)
        force = torch.tensor([[0.7, 0.0, 0.0], [-0.7, 0.0, 0.0]], dtype=torch.float64)
        lbfgs_step(state, force, zero_cell, params)  # first step: along the force
        start = state.x.clone()
        lbfgs_step(state, grow * force, zero_cell, params)
        assert (state.rho[0, -1] > 0) == stored and (state.rho[0, :-1] == 0).all()
        move = state.x - start
        assert (move * force).sum() > 0  # downhill
        if not stored:
            torch.testing.assert_close(move, grow * force / params.lbfgs_alpha_eV_per_A2)


def test_unknown_optimizer_is_rejected_with_the_choices():
    with pytest.raises(ValueError, match="optimizer 'bfgs': use one of .*lbfgs.*fire"):
        RelaxParams(optimizer="bfgs")
    with pytest.raises(ValueError, match="lbfgs_memory"):
        RelaxParams(lbfgs_memory=0)


def test_default_edge_budget_follows_the_device():
    from hpcxtal.relax.engine import CPU_EDGE_BUDGET, GPU_EDGE_BUDGET

    params = RelaxParams()
    assert params.edge_budget(torch.device("cpu")) == CPU_EDGE_BUDGET
    assert params.edge_budget(torch.device("cuda", 1)) == GPU_EDGE_BUDGET > CPU_EDGE_BUDGET
    assert RelaxParams(batch_edge_budget=123).edge_budget(torch.device("cuda")) == 123
    with pytest.raises(ValueError, match="at least 1"):
        RelaxParams(batch_edge_budget=0)


def symmetric_graphite():
    from hpcxtal.relax.reference import graphite

    atoms = graphite() * (1, 1, 2)
    atoms.set_cell(np.asarray(atoms.cell) * 1.04, scale_atoms=True)
    return atoms


def test_symmetrized_forces_and_stress_are_invariant():
    from hpcxtal.relax.symmetry import symmetry_ops

    atoms = symmetric_graphite()
    ops = symmetry_ops(atoms)
    assert ops.spacegroup == 194 and len(ops.rotations) == 48  # 24 operations x 2 cells
    gen = torch.Generator().manual_seed(0)
    f = ops.symmetrize_forces(torch.randn(len(atoms), 3, generator=gen, dtype=torch.float64))
    for r, perm in zip(ops.rotations, ops.perm):
        torch.testing.assert_close(f[perm], f @ r.T)
    torch.testing.assert_close(ops.symmetrize_forces(f), f)  # a projection
    s = ops.symmetrize_stress(torch.randn(3, 3, generator=gen, dtype=torch.float64))
    for r in ops.rotations:
        torch.testing.assert_close(r @ s @ r.T, s)
    assert abs(s[0, 1]) < 1e-12 and s[0, 0] == pytest.approx(s[1, 1].item())  # hexagonal


def test_symmetrize_keeps_the_space_group(mace_model):
    import spglib

    atoms = symmetric_graphite()
    atoms.rattle(2e-5, seed=3)  # well below symprec: the same group, but not exactly
    params = RelaxParams(optimizer="fire", fmax_eV_per_A=1e-5, max_steps=15, steps_per_atom=0,
                         symmetrize=True)
    (r,) = relax([atoms], mace_model, params)
    assert r.steps == 15 and np.isfinite(r.energy)
    assert np.abs(r.atoms.positions - atoms.positions).max() > 1e-3  # it moved
    cell = (np.asarray(r.atoms.cell), r.atoms.get_scaled_positions(), r.atoms.numbers)
    assert spglib.get_symmetry_dataset(cell, symprec=1e-6).number == 194
    free = relax([atoms], mace_model, RelaxParams(optimizer="fire", fmax_eV_per_A=1e-5, max_steps=15,
                                                 steps_per_atom=0))[0]
    cell = (np.asarray(free.atoms.cell), free.atoms.get_scaled_positions(), free.atoms.numbers)
    assert spglib.get_symmetry_dataset(cell, symprec=1e-6).number != 194

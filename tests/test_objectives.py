"""Refinement objectives as plug-ins: config, the SO(3) default, weighted sums, user
objectives (module:attr and entry points), distance-matrix and energy objectives."""
import dataclasses
import textwrap

import numpy as np
import pytest
import torch

from conftest import one_line_error

from hpcxtal.config import ConfigError, fingerprint, from_mapping
from hpcxtal.descriptor.batch import build_batch
from hpcxtal.descriptor.target import Environment
from hpcxtal.refine.config import DistanceMatrixSettings, ObjectiveTerm, RefineConfig
from hpcxtal.refine.distance import DistanceMatrixObjective, load_distances, pair_distances
from hpcxtal.refine.objective import SO3Objective, WeightedSum, build_objective
from hpcxtal.refine.represent import refine_batch, refine_table
from hpcxtal.store.table import Table

CFG = RefineConfig(max_steps=60, restarts=2)


@pytest.fixture(scope="module")
def small(sacada):
    """SACADA rows 1-4 and 13: 6 or 8 atoms, space groups 214, 141, 180, 181, 180."""
    table, _ = sacada
    return table.take(np.flatnonzero(np.isin(table["id"], [1, 2, 3, 4, 13])))


def _dm_file(tmp_path, row_table, k=0, name="target.txt"):
    """A distance file holding row k's exact sorted distance matrix."""
    batch = build_batch(row_table.take([k]))
    path = tmp_path / name
    np.savetxt(path, pair_distances(batch, batch.R0)[0].numpy())
    return path


def test_config_names_weights_and_settings_are_checked_at_load(tmp_path):
    def load(objective):
        return from_mapping(RefineConfig, {"objective": objective}, "refine")

    assert load("so3").terms() == (ObjectiveTerm(name="so3"),)
    with pytest.raises(ConfigError, match="unknown objective 'nope'"):
        load("nope")
    with pytest.raises(ConfigError, match="weight must be positive"):
        load([{"name": "so3", "weight": 0}])
    with pytest.raises(ConfigError, match=r"objective\[0\]: objective so3 settings: unknown key 'tagret'"):
        load([{"name": "so3", "settings": {"tagret": "diamond"}}])
    with pytest.raises(ConfigError, match="give exactly one of reference"):
        load([{"name": "distance_matrix"}])
    with pytest.raises(ConfigError, match="no such file"):
        load([{"name": "distance_matrix", "settings": {"distances": str(tmp_path / "x")}}])
    # settings are science: they change the refine fingerprint
    a = load([{"name": "so3", "weight": 1.0}])
    b = load([{"name": "so3", "weight": 1.0, "settings": {"target": "diamond"}}])
    assert fingerprint(a) != fingerprint(b) != fingerprint(RefineConfig())


def test_default_objective_is_the_so3_environment_and_refines_bit_identically(small):
    objective = build_objective(CFG)
    assert isinstance(objective, SO3Objective)
    rows = small.take(np.arange(3))
    ids = np.asarray(rows["id"])
    a = refine_batch(build_batch(rows), ids, Environment(CFG.target), CFG)
    b = refine_batch(build_batch(rows), ids, objective, CFG)
    for x, y in zip(a[:4], b[:4]):
        assert torch.equal(x, y)
    assert a[4] == b[4]


def test_weighted_sum_adds_terms_and_falls_back_to_the_campaign_rule(small, tmp_path):
    path = _dm_file(tmp_path, small, 0)
    dm = {"name": "distance_matrix", "weight": 0.5, "settings": {"distances": str(path)}}
    cfg = dataclasses.replace(CFG, objective=[ObjectiveTerm(name="so3", weight=2.0),
                                              ObjectiveTerm(**dm)])
    objective = build_objective(cfg)
    assert isinstance(objective, WeightedSum)
    batch = build_batch(small.take([0, 0]))
    env = Environment("graphite")
    single = DistanceMatrixObjective(DistanceMatrixSettings(distances=str(path)))
    expected = 2.0 * env.loss(batch, batch.R0) + 0.5 * single.loss(batch, batch.R0)
    torch.testing.assert_close(objective.loss(batch, batch.R0), expected)
    # so3 sets a validity (its CN rule); a lone distance term without valid_rmse_A does not,
    # so the campaign's CN rule of refine.target applies
    lone = build_objective(dataclasses.replace(CFG, objective=[ObjectiveTerm(**dm)]))
    assert isinstance(lone, WeightedSum)
    assert torch.equal(lone.validity(batch, batch.R0), env.validity(batch, batch.R0))


PLUGIN = '''
import torch
from hpcxtal.descriptor.batch import cell_parameters
from hpcxtal.refine.objective import Objective


class Volume(Objective):
    """Pull every cell's first length toward a value (a user's objective)."""
    name = "volume"

    def __init__(self, settings, *, refine, dtype, device):
        self.length = float(settings.get("length_A", 4.0))

    def loss(self, batch, R, pairs=None):
        return (cell_parameters(batch, R)[:, 0] - self.length) ** 2


def not_an_objective(settings, *, refine, dtype, device):
    return 42
'''


def test_user_objective_by_module_attr_and_by_entry_point(tmp_path, monkeypatch, small):
    (tmp_path / "my_objectives.py").write_text(PLUGIN)
    dist = tmp_path / "my_objectives-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-objectives\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(textwrap.dedent("""
        [hpcxtal.objectives]
        volume = my_objectives:Volume
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    rows = small.take(np.arange(3))
    target = rows["cell"][:, 0] + 0.2  # within reach of 60 steps
    for name in ("my_objectives:Volume", "volume"):
        settings = {"length_A": float(target[0])}
        cfg = dataclasses.replace(CFG, objective=[ObjectiveTerm(name=name, settings=settings)])
        result = refine_table(rows.take([0]), cfg)
        assert result.loss[0] < cfg.loss_tolerance  # moved 0.2 Å to within 0.03 Å
        assert abs(result.cell[0, 0] - target[0]) < np.sqrt(cfg.loss_tolerance)
    with pytest.raises(ValueError, match="not an hpcxtal.refine.objective.Objective"):
        build_objective(dataclasses.replace(CFG, objective="my_objectives:not_an_objective"))
    with pytest.raises(ValueError, match="cannot load"):
        build_objective(dataclasses.replace(CFG, objective="my_objectives:Missing"))


def test_sorted_distances_equal_pymatgens_distance_matrix(sacada):
    from pymatgen.io.ase import AseAtomsAdaptor

    from hpcxtal.store.formats import table_images

    table, _ = sacada
    part = table.take(np.arange(1, 9))
    for k, atoms in enumerate(table_images(part)):
        batch = build_batch(part.take([k]))
        dm = AseAtomsAdaptor.get_structure(atoms).distance_matrix
        expected = np.sort(dm[~np.eye(len(dm), dtype=bool)])
        np.testing.assert_allclose(pair_distances(batch, batch.R0)[0].numpy(), expected, atol=1e-10)


def test_distance_targets_from_a_structure_file_a_matrix_or_a_list(small, tmp_path):
    from hpcxtal.crystal.row import decode, to_atoms

    row = decode(int(small["spg"][0]), small["cell"][0], small["wps"][0], small["xyz"][0])
    atoms = to_atoms(row)
    atoms.write(tmp_path / "ref.cif")
    listed = _dm_file(tmp_path, small)
    matrix = tmp_path / "matrix.txt"
    np.savetxt(matrix, atoms.get_all_distances(mic=True))
    targets = [DistanceMatrixObjective(DistanceMatrixSettings(**kw)).target.numpy() for kw in
               ({"reference": str(tmp_path / "ref.cif")}, {"distances": str(listed)},
                {"distances": str(matrix)})]
    for t in targets[1:]:
        np.testing.assert_allclose(t, targets[0], atol=1e-6)
    bad = tmp_path / "bad.txt"
    bad.write_text("1.0 2.0 3.0\n")
    with pytest.raises(ValueError, match=r"need N\(N-1\) positive distances"):
        load_distances(bad)


def test_distance_loss_is_zero_at_the_target_with_correct_gradients(small, tmp_path):
    path = _dm_file(tmp_path, small)
    objective = DistanceMatrixObjective(DistanceMatrixSettings(distances=str(path), valid_rmse_A=0.01))
    batch = build_batch(small.take([0]))
    assert objective.loss(batch, batch.R0).item() < 1e-20
    metrics = objective.metrics(batch, batch.R0)
    assert metrics["dm_rmse_A"].item() < 1e-10 and metrics["dm_overlap"].item() == 1.0
    assert bool(objective.validity(batch, batch.R0).all())
    R = batch.R0.clone()
    R[0, 0] *= 1.05  # stretch the first lattice length
    R.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda r: objective.loss(batch, r), (R,))
    other = build_batch(small.take([len(small) - 1]))
    if int(other.n_atoms[0]) != int(batch.n_atoms[0]):
        with pytest.raises(ValueError, match="the target has"):
            objective.loss(other, other.R0)


def test_refinement_recovers_a_structure_from_its_distance_matrix(small, tmp_path):
    path = _dm_file(tmp_path, small)
    start = small.take([0])
    cell = start["cell"].copy()
    cell[:, :3] *= 1.1  # a strained start
    start = Table({**start.columns, "cell": cell})
    cfg = dataclasses.replace(CFG, max_steps=600, loss_tolerance=1e-8, objective=[ObjectiveTerm(
        name="distance_matrix", settings={"distances": str(path), "valid_rmse_A": 1e-3})])
    result = refine_table(start, cfg)
    assert result.valid[0] and result.loss[0] < 1e-6
    np.testing.assert_allclose(result.cell[0], small["cell"][0], atol=1e-3)


def _perovskite(a_site: str, b_site: str):
    """Cubic perovskite ABO3 (Pm-3m, A on 1a, B on 1b, O on 3c) of a = 3.905 Å."""
    from ase.data import atomic_numbers

    from hpcxtal.crystal.row import decode
    from hpcxtal.crystal.symmetry import space_group

    by_label = {wp.label: wp.index for wp in space_group(221).wyckoff}
    return decode(221, np.array([3.905] * 3 + [90] * 3), [by_label[x] for x in ("1a", "1b", "3c")],
                  [[0, 0, 0], [0.5, 0.5, 0.5], [0, 0.5, 0.5]],
                  species=[atomic_numbers[x] for x in (a_site, b_site, "O")])


def test_element_resolved_distances_tell_elements_apart(tmp_path):
    """With the target's elements, Sr-O distances are compared with Sr-O distances only:
    SrTiO3 with Sr and Ti swapped has the same pooled distance list (loss 0 without
    elements) but not the same per-class lists; the loss is exact at the target, its
    gradient correct, and a row of another composition is a one-line error (sorted) or
    far from the target (histogram)."""
    from hpcxtal.crystal.row import to_atoms

    right, swapped = _perovskite("Sr", "Ti"), _perovskite("Ti", "Sr")
    atoms = to_atoms(right)
    atoms.write(tmp_path / "ref.cif")
    np.savetxt(tmp_path / "dm.txt", atoms.get_all_distances(mic=True))
    resolved = [DistanceMatrixObjective(DistanceMatrixSettings(**kw)) for kw in (
        {"reference": str(tmp_path / "ref.cif")},
        {"distances": str(tmp_path / "dm.txt"), "elements": atoms.get_chemical_symbols()})]
    pooled = DistanceMatrixObjective(DistanceMatrixSettings(distances=str(tmp_path / "dm.txt")))
    torch.testing.assert_close(resolved[0].target, resolved[1].target)
    batch = build_batch([right, swapped])
    for objective in resolved:
        loss = objective.loss(batch, batch.R0)
        assert loss[0].item() < 1e-20 < 0.1 < loss[1].item()
    assert pooled.loss(batch, batch.R0).max().item() < 1e-20
    R = batch.R0.clone()
    R[:, 0] *= 1.05
    R.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda r: resolved[0].loss(batch, r), (R,))
    other = build_batch([_perovskite("Ba", "Ti")])
    with pytest.raises(ValueError, match="the target's composition is O3SrTi, a row's is BaO3Ti"):
        resolved[0].loss(other, other.R0)
    # histogram mode: one histogram per pair class; Ba-O pairs the reference lacks count
    histogram = DistanceMatrixObjective(DistanceMatrixSettings(
        reference=str(tmp_path / "ref.cif"), mode="histogram", cutoff_A=4.0))
    three = build_batch([right, swapped, _perovskite("Ba", "Ti")])
    loss = histogram.loss(three, three.R0)
    assert loss[0].item() < 1e-12 and loss[1].item() > 0.1 and loss[2].item() > 0.1
    with pytest.raises(ValueError, match="elements .* need an N x N matrix"):
        load_distances(tmp_path / "dm.txt", ["Sr", "Ti"])


def test_histogram_mode_is_zero_at_the_reference_and_positive_elsewhere(small, tmp_path):
    from hpcxtal.crystal.row import decode, to_atoms

    row = decode(int(small["spg"][0]), small["cell"][0], small["wps"][0], small["xyz"][0])
    to_atoms(row).write(tmp_path / "ref.cif")
    settings = DistanceMatrixSettings(reference=str(tmp_path / "ref.cif"), mode="histogram",
                                      cutoff_A=4.0)
    objective = DistanceMatrixObjective(settings)
    batch = build_batch(small.take([0, 0]))
    R = batch.R0.clone()
    R[1, 0] *= 1.1
    loss = objective.loss(batch, R, objective.pairs(batch, R, 0.5))
    assert loss[0].item() < 1e-12 < loss[1].item()
    torch.testing.assert_close(loss, objective.loss(batch, R))  # finds its own pairs


@pytest.mark.slow
def test_energy_objective_gradients_flow_and_refinement_lowers_the_energy(sacada):
    from hpcxtal.refine.config import EnergySettings
    from hpcxtal.refine.energy import EnergyObjective

    table, _ = sacada
    rows = table.take(np.arange(1, 4))
    objective = EnergyObjective(EnergySettings(reference_eV_per_atom=-9.0))
    batch = build_batch(rows)
    R = batch.new_R()
    loss = objective.loss(batch, R)
    loss.sum().backward()
    assert torch.isfinite(R.grad).all() and R.grad.abs().sum() > 0
    k, j, h = 1, 0, 1e-5  # central difference of one row's first variable
    plus, minus = R.detach().clone(), R.detach().clone()
    plus[k, j] += h
    minus[k, j] -= h
    numeric = (objective.loss(batch, plus)[k] - objective.loss(batch, minus)[k]).item() / (2 * h)
    assert numeric == pytest.approx(R.grad[k, j].item(), rel=1e-5, abs=1e-8)
    cfg = dataclasses.replace(CFG, max_steps=20, objective=[ObjectiveTerm(
        name="energy", settings={"reference_eV_per_atom": -9.0})])
    result = refine_table(rows, cfg)
    np.testing.assert_array_less(result.loss, loss.detach().numpy())


def test_refine_stage_on_files_uses_the_configured_objective(small, tmp_path):
    """The refine kernel (file mode, as a campaign shard runs it) refines rows of several
    sizes toward one reference's pair-distance histogram and records the objective."""
    import json

    from hpcxtal.crystal.row import decode, to_atoms
    from hpcxtal.stages import stage_spec
    from hpcxtal.store.hdf5 import read_table, write_table

    row = decode(int(small["spg"][0]), small["cell"][0], small["wps"][0], small["xyz"][0])
    to_atoms(row).write(tmp_path / "ref.cif")
    settings = {"reference": str(tmp_path / "ref.cif"), "mode": "histogram", "cutoff_A": 3.0}
    cfg = dataclasses.replace(CFG, device="cpu", workers=1, objective=[
        ObjectiveTerm(name="distance_matrix", settings=settings)])
    rows = small.take(np.arange(1, 4))  # 6 and 8 atoms, none the reference
    src = write_table(tmp_path / "pool.h5", rows, kind="pool")
    stage_spec("refine").run_file(src, tmp_path / "out.h5", cfg)
    out, _ = read_table(tmp_path / "out.h5")
    objective = build_objective(cfg)
    batch = build_batch(rows)
    before = objective.loss(batch, batch.R0).detach().numpy()
    # a row valid by the CN rule (no term sets a validity) keeps its last state, which
    # may be a hair above its start; the others descend
    np.testing.assert_array_less(out["loss"], before * 1.01)
    assert out["loss"].sum() < 0.9 * before.sum()
    assert json.loads(out.attrs["stage_config"])["objective"][0]["settings"] == settings


class _Spring(torch.nn.Module):
    """A TorchScript user objective: every pair within 1.8 Å pulled toward 1.42 Å,
    (multiplicity-weighted) mean over the cell's atoms."""

    def __init__(self, cutoff: float = 1.8) -> None:
        super().__init__()
        self.cutoff = cutoff

    def forward(self, lattice: torch.Tensor, n_atoms: torch.Tensor, pair_vec: torch.Tensor,
                pair_row: torch.Tensor, pair_weight: torch.Tensor,
                pair_z: torch.Tensor) -> torch.Tensor:
        d = torch.sqrt((pair_vec * pair_vec).sum(1))
        per_pair = pair_weight * (d - 1.42) ** 2
        total = torch.zeros(lattice.shape[0], dtype=pair_vec.dtype, device=pair_vec.device)
        return total.index_add(0, pair_row, per_pair) / n_atoms.to(pair_vec.dtype)


class _TwoArguments(torch.nn.Module):
    cutoff: float = 0.0

    def forward(self, lattice: torch.Tensor, n_atoms: torch.Tensor) -> torch.Tensor:
        return lattice.sum((1, 2)) * 0


def _scripted(module, path):
    with pytest.warns(DeprecationWarning):  # torch 2.13 deprecates torch.jit.script
        torch.jit.script(module).save(str(path))
    return path


def test_a_torchscript_objective_refines_rows_from_the_cli_and_lowers_its_loss(tmp_path, cli):
    from conftest import small_pool_file

    from hpcxtal.refine.config import TorchScriptSettings
    from hpcxtal.refine.scripted import TorchScriptObjective
    from hpcxtal.store.hdf5 import read_table

    from hpcxtal.store.hdf5 import write_table

    spring = _scripted(_Spring(), tmp_path / "spring.pt")
    table, _ = read_table(small_pool_file(tmp_path / "sacada.h5", n=3))
    table = table.take([1, 2])  # 6 and 8 atoms, space groups 214 and 141
    cell = table["cell"].copy()
    cell[:, :3] *= 1.08  # bonds stretched from about 1.42 to 1.53 Å
    table = Table({**table.columns, "cell": cell})
    pool = write_table(tmp_path / "pool.h5", table, kind="pool")
    objective = TorchScriptObjective(TorchScriptSettings(file=str(spring)))
    batch = build_batch(table)
    before = objective.loss(batch, batch.R0).detach().numpy()
    # the loss is the scripted sum over every atom's pairs (pymatgen's neighbours)
    from pymatgen.io.ase import AseAtomsAdaptor

    from hpcxtal.store.formats import table_images
    for k, atoms in enumerate(table_images(table)):
        structure = AseAtomsAdaptor.get_structure(atoms)
        d = np.array([n.nn_distance for site in structure.get_all_neighbors(1.8) for n in site])
        assert before[k] == pytest.approx(((d - 1.42) ** 2).sum() / len(atoms), rel=1e-9)
    R = batch.R0.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda r: objective.loss(batch, r), (R,))
    out = tmp_path / "out.h5"
    code, _, err = cli("refine", pool, "-o", out, "--objective", spring, "--steps", 60,
                       "-j", 1, "-q")
    assert code == 0, err
    refined, _ = read_table(out)
    assert np.array_equal(refined["id"], table["id"])
    assert np.all(before > 1e-2) and np.all(refined["loss"] < 0.1 * before)
    batch = build_batch(refined)
    np.testing.assert_allclose(objective.loss(batch, batch.R0).detach().numpy(), refined["loss"],
                               rtol=1e-6, atol=1e-12)
    # a weighted sum from repeated flags, one of them a term in the config's YAML form
    code, _, err = cli("refine", pool, "-o", tmp_path / "sum.h5", "--objective", f"{spring}=0.5",
                       "--objective", "{name: so3, weight: 2, settings: {target: graphite}}",
                       "--steps", 5, "-j", 1, "-q")
    assert code == 0, err


def test_a_bad_objective_on_the_command_line_is_one_line(tmp_path, cli):
    from conftest import small_pool_file

    pool = small_pool_file(tmp_path / "pool.h5", n=1)
    junk = tmp_path / "junk.pt"
    junk.write_text("import os; os.remove('/')\n")
    two = _scripted(_TwoArguments(), tmp_path / "two.pt")
    for spec, message in ((junk, "not a TorchScript module torch.jit.load reads"),
                          (two, "forward must take 6 tensors"),
                          (tmp_path / "missing.pt", "missing.pt: no such file"),
                          ("so3=heavy", "the weight after '=' is not a number"),
                          ("so3=-1", "weight must be positive"),
                          ("nope", "unknown objective 'nope'"),
                          ("{name: so3, settings: {colour: red}}", "unknown key 'colour'")):
        code, _, err = cli("refine", pool, "-o", tmp_path / "r.h5", "--objective", spec)
        assert code == 2 and message in one_line_error(err), (spec, err)
        assert not (tmp_path / "r.h5").exists()


def test_refine_without_objective_is_bit_identical_to_the_default(tmp_path, cli):
    from conftest import small_pool_file

    from hpcxtal.store.hdf5 import read_table

    pool = small_pool_file(tmp_path / "pool.h5", n=3)
    outputs = []
    for name, extra in (("plain.h5", ()), ("so3.h5", ("--objective", "so3"))):
        code, _, err = cli("refine", pool, "-o", tmp_path / name, "--steps", 40, "-j", 1, "-q",
                           *extra)
        assert code == 0, err
        outputs.append(read_table(tmp_path / name)[0])
    table, _ = read_table(pool)
    direct = refine_table(table, RefineConfig(max_steps=40, device="cpu"))
    for col in ("cell", "xyz", "loss", "valid", "steps"):
        np.testing.assert_array_equal(outputs[0][col], outputs[1][col])
    np.testing.assert_array_equal(outputs[0]["loss"], direct.loss)
    np.testing.assert_array_equal(outputs[0]["cell"], direct.cell)


def test_a_campaign_refuses_objective_on_the_command_line(tmp_path, cli):
    camp = tmp_path / "camp"
    assert cli("init", camp, "-q")[0] == 0
    for extra in ((), ("--shard", 0)):
        code, _, err = cli("refine", camp, "--objective", "so3", *extra)
        assert code == 2, err
        assert "--objective: a campaign takes this from its config" in one_line_error(err)

"""Topology: bond graph, dimensionality, signature invariance and distinctness, the
first de-duplication, the stage on files and campaigns, and the CLI."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk

from hpcxtal.campaign import Campaign, CampaignConfig, ShardConfig, TopologyConfig
from hpcxtal.cli import main
from hpcxtal.config import ConfigError, from_mapping
from hpcxtal.data import SACADA_PATH, sacada_structures
from hpcxtal.layout import stage_output
from hpcxtal.stages import stage_spec
from hpcxtal.topology.stage import topology_file
from hpcxtal.store.hdf5 import read_table, write_table
from hpcxtal.store.shard import write_shards
from hpcxtal.store.table import Structures, Table
from hpcxtal.topology.annotate import SignatureParams, annotate_table, first_duplicates
from hpcxtal.topology.graph import PeriodicGraph, components, graph_of_atoms
from hpcxtal.topology.orbits import vertex_orbits
from hpcxtal.topology.signature import atoms_signature, coordination_sequences, signature

GRAPHITE = Atoms("C4", scaled_positions=[[0, 0, 0.25], [0, 0, 0.75], [1 / 3, 2 / 3, 0.25],
                                          [2 / 3, 1 / 3, 0.75]],
                 cell=[[2.46, 0, 0], [-1.23, 2.130422, 0], [0, 0, 6.70]], pbc=True)


@pytest.fixture(scope="module")
def sacada():
    return sacada_structures()


@pytest.fixture(scope="module")
def sample(sacada):
    """A spread of small SACADA structures (different space groups, up to 48 atoms)."""
    seen, out = set(), []
    for atoms in sacada:
        if len(atoms) <= 48 and atoms.info["space_group_number"] not in seen:
            seen.add(atoms.info["space_group_number"])
            out.append(atoms)
    return out[::3][:10]


def test_bond_graph_diamond_and_thin_cells():
    diamond = bulk("C", "diamond", a=3.567)
    g = graph_of_atoms(diamond)
    assert g.n_bonds == 4 and np.all(g.degree == 4)
    # The same net in a strongly skewed cell (a' = a + 3b): more image shells are needed.
    skew = diamond.copy()
    cell = np.asarray(diamond.cell)
    skew.set_cell(np.array([cell[0] + 3 * cell[1], cell[1], cell[2]]), scale_atoms=False)
    gs = graph_of_atoms(skew)
    assert np.all(gs.degree == 4)
    assert atoms_signature(skew).key == atoms_signature(diamond).key
    # A one-atom chain bonded to its own images along c.
    chain = Atoms("C", positions=[[0, 0, 0]], cell=[10, 10, 1.4], pbc=True)
    gc = graph_of_atoms(chain)
    assert gc.n_bonds == 1 and set(map(tuple, gc.shift.tolist())) == {(0, 0, 1), (0, 0, -1)}


def test_pair_cutoffs_are_configurable():
    diamond = bulk("C", "diamond", a=3.567)  # bond 1.545 Å
    assert graph_of_atoms(diamond, {("C", "C"): 1.5}).n_bonds == 0
    assert graph_of_atoms(diamond, {("C", "C"): 1.6}).n_bonds == 4


def test_dimensionality():
    assert components(graph_of_atoms(GRAPHITE)).dimension == 2
    comps = components(graph_of_atoms(GRAPHITE))
    assert len(comps.dimensions) == 2 and comps.uniform  # two layers per cell
    assert components(graph_of_atoms(bulk("C", "diamond", a=3.567))).dimension == 3
    chain = Atoms("C", positions=[[0, 0, 0]], cell=[10, 10, 1.4], pbc=True)
    assert components(graph_of_atoms(chain)).dimension == 1
    dimers = Atoms("C2", positions=[[0, 0, 0], [1.3, 0, 0]], cell=[8, 8, 8], pbc=True)
    assert components(graph_of_atoms(dimers)).dimension == 0
    mixed = Atoms("C4", positions=[[0, 0, 0], [1.3, 0, 0], [4, 4, 0], [4, 4, 1.5]],
                  cell=[8, 8, 3.0], pbc=True)  # a dimer beside a chain along c
    comps = components(graph_of_atoms(mixed))
    assert sorted(comps.dimensions.tolist()) == [0, 1] and not comps.uniform


def _graph(n: int, bonds: list[tuple[int, int, tuple[int, int, int]]]) -> PeriodicGraph:
    """A quotient graph from undirected bonds (i, j, shift)."""
    edges = bonds + [(j, i, tuple(-np.array(t))) for i, j, t in bonds]
    edges.sort(key=lambda e: (e[0], e[1], e[2]))
    return PeriodicGraph(n, np.full(n, 6), np.array([e[0] for e in edges]),
                         np.array([e[1] for e in edges]), np.array([e[2] for e in edges]))


def test_interpenetrating_copies_change_the_key():
    axes = [(0, 0, 1), (0, 1, 0)]
    pcu = _graph(1, [(0, 0, (1, 0, 0))] + [(0, 0, a) for a in axes])
    pcu_2x = _graph(2, [(0, 1, (0, 0, 0)), (1, 0, (1, 0, 0))]
                    + [(v, v, a) for v in (0, 1) for a in axes])
    # One vertex whose a-bond jumps two cells: two disjoint pcu nets (index 2).
    twofold = _graph(1, [(0, 0, (2, 0, 0))] + [(0, 0, a) for a in axes])
    twofold_2x = _graph(2, [(v, v, (1, 0, 0)) for v in (0, 1)]
                        + [(v, v, a) for v in (0, 1) for a in axes])
    assert components(twofold).copies.tolist() == [2]
    assert components(pcu).copies.tolist() == [1]
    assert signature(pcu).key == signature(pcu_2x).key
    assert signature(twofold).key == signature(twofold_2x).key != signature(pcu).key
    assert signature(pcu).vertices[0][3][:3] == (6, 18, 38)


def test_sacada_structures_are_three_periodic(sacada):
    for atoms in sacada:
        assert components(graph_of_atoms(atoms)).dimension == int(atoms.info["dimension"]) == 3


def test_known_coordination_sequences():
    diamond = graph_of_atoms(bulk("C", "diamond", a=3.567))
    assert coordination_sequences(diamond, 10)[0].tolist() == [4, 12, 24, 42, 64, 92, 124, 162,
                                                                204, 252]
    sig = signature(graph_of_atoms(GRAPHITE))
    ((z, dim, share, cs, rings, frac),) = sig.vertices  # honeycomb: 6-rings, 3k per shell
    assert cs == tuple(3 * k for k in range(1, 13)) and rings == ((6, 1),) * 3 and frac == 1
    assert (z, dim, share) == (6, 2, 0)
    assert sig.dimension == 2


def _shift(atoms: Atoms, rng) -> Atoms:
    out = atoms.copy()
    out.set_scaled_positions(atoms.get_scaled_positions() + rng.random(3))
    return out


def _subgroup(atoms: Atoms, seed: int) -> Atoms:
    from pyxtal import pyxtal

    np.random.seed(seed)  # pyxtal picks the subgroup with numpy's global generator
    xtal = pyxtal()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        xtal.from_seed(atoms, tol=0.01)
        sub = xtal.subgroup_once(eps=0, group_type="t")
    assert sub.group.number != xtal.group.number
    return sub.to_ase()


def test_signature_invariance(sample):
    rng = np.random.default_rng(7)
    for k, atoms in enumerate(sample):
        key = atoms_signature(atoms).key
        variants = {
            "supercell": atoms.repeat((2, 2, 1)),
            "shift": _shift(atoms, rng),
            "permutation": atoms[rng.permutation(len(atoms))],
            "subgroup": _subgroup(atoms, k),
            "no symmetry": atoms,
        }
        distorted = atoms.copy()
        distorted.positions += rng.normal(scale=0.01, size=(len(atoms), 3))
        variants["distortion"] = distorted
        for name, variant in variants.items():
            kw = {"symprec": None} if name == "no symmetry" else {}
            assert atoms_signature(variant, **kw).key == key, (atoms.info["origin"], name)


def test_named_nets_get_distinct_keys(sacada):
    named = [a for a in sacada if a.info["topology"] != "aaa"]
    assert len(named) == 25
    sigs = [atoms_signature(a) for a in named]
    assert all(sig.dimension == 3 and sig.uniform for sig in sigs)
    keys = {sig.key for sig in sigs}
    assert len(keys) == 25
    graphite = atoms_signature(GRAPHITE).key
    diamond = atoms_signature(bulk("C", "diamond", a=3.567)).key
    assert graphite not in keys and diamond not in keys and graphite != diamond


def test_orbits_and_primitive_size(sacada):
    atoms = next(a for a in sacada if a.info["pearson_symbol"].startswith("cF"))
    g = graph_of_atoms(atoms)
    orbits = vertex_orbits(g, np.asarray(atoms.cell), atoms.get_scaled_positions(), atoms.numbers)
    assert orbits.n_prim == len(atoms) // 4  # F centring: 4 lattice points per cell
    assert len(orbits.representatives) == len(atoms.info["sacada_wps"].split())
    assert atoms_signature(atoms.repeat((1, 1, 2))).n_prim == orbits.n_prim


def _sacada_table(n: int) -> Table:
    table, _ = read_table(SACADA_PATH)
    small = np.flatnonzero(table.structures.natoms <= 24)[:n]
    return table.take(small)


def test_first_duplicates_and_workers():
    base = _sacada_table(4)
    idx = np.array([0, 1, 2, 3, 0, 2, 2])
    table = base.take(idx)
    table.columns["id"] = np.array([50, 51, 52, 53, 40, 62, 60], dtype=np.uint64)
    # Row 5 becomes a 2x2x1 supercell of row 2: same net and primitive size, so a duplicate.
    images = [table.structures.atoms(i) for i in range(len(table))]
    images[5] = images[5].repeat((2, 2, 1))
    table.structures = Structures.from_atoms(images)
    out = annotate_table(table, workers=1)
    assert out["duplicate_of"].tolist() == [40, 51, 52, 53, 40, 52, 52]
    assert out["dimension"].tolist() == [3] * 7
    assert np.array_equal(annotate_table(table, workers=2)["topology"], out["topology"])
    # Different n_prim keeps rows apart even with equal keys.
    dup = first_duplicates(np.array([1, 2]), np.array(["k", "k"], dtype=object),
                           np.array([3, 3]), np.array([4, 8]))
    assert dup.tolist() == [1, 2]
    failed = first_duplicates(np.array([1, 2]), np.array(["", ""], dtype=object),
                              np.array([-1, -1]), np.array([0, 0]))
    assert failed.tolist() == [1, 2]


def test_rows_without_structures_match_stored_structures():
    table = _sacada_table(5)
    with_structures = annotate_table(table, workers=1)
    rows_only = annotate_table(Table(dict(table.columns)), workers=1)
    assert np.array_equal(with_structures["topology"], rows_only["topology"])
    assert np.array_equal(with_structures["n_prim"], rows_only["n_prim"])


def test_failed_rows_are_recorded_not_raised():
    table = _sacada_table(2)
    images = [table.structures.atoms(i) for i in range(2)]
    images[1].set_cell(np.diag([1.0, 1.0, 1e-9]), scale_atoms=True)  # degenerate cell
    table.structures = Structures.from_atoms(images)
    out = annotate_table(table, workers=1)
    assert out["dimension"].tolist()[1] == -1 and out["topology"][1] == ""
    assert out["duplicate_of"][1] == out["id"][1]


def test_topology_file_and_campaign(tmp_path):
    src = tmp_path / "pool.h5"
    write_table(src, _sacada_table(6), kind="pool")
    counts = stage_spec("topology").run_file(src, tmp_path / "out.h5", TopologyConfig())
    out, _ = read_table(tmp_path / "out.h5")
    assert counts["rows"] == 6 and {"topology", "dimension", "n_prim",
                                    "duplicate_of"} <= set(out.columns)
    assert json.loads(out.attrs["stage_config"])["depth"] == 12

    # The campaign stage reads refined shards; only CN-valid rows are signed.
    campaign = Campaign.create(tmp_path / "camp", CampaignConfig(
        name="t", shard=ShardConfig(n_shards=2)))
    refined = _sacada_table(6)
    refined.columns["valid"] = np.array([True] * 5 + [False])
    for i, idx in enumerate((np.arange(3), np.arange(3, 6))):
        write_table(stage_output("rounds", campaign.root, i), refined.take(idx), kind="rounds")
    first = stage_spec("topology").run(campaign, shard=1)
    assert first.outputs == [stage_output("topology", campaign.root, 1)]
    part, _ = read_table(first.outputs[0])
    assert part["dimension"][-1] == -1 and part["topology"][-1] == ""
    assert part["duplicate_of"][-1] == part["id"][-1]
    assert (part["dimension"][:-1] == 3).all()
    assert not stage_spec("topology").done(campaign, None)
    stage_spec("topology").run(campaign, None)
    assert stage_spec("topology").done(campaign, None)
    assert stage_spec("topology").run(campaign, None).skipped
    # A recomputed input makes its output stale: only that one is redone.
    kept = stage_output("topology", campaign.root, 1).stat().st_mtime_ns
    table, _ = read_table(stage_output("rounds", campaign.root, 0))
    write_table(stage_output("rounds", campaign.root, 0), table.take(np.arange(len(table))[::-1]),
                kind="rounds")
    assert not stage_spec("topology").done(campaign, 0)
    assert not stage_spec("topology").run(campaign, None).skipped
    assert stage_output("topology", campaign.root, 1).stat().st_mtime_ns == kept
    assert stage_spec("topology").done(campaign, None)


def test_topology_config_validation(tmp_path):
    cfg = from_mapping(CampaignConfig, {"name": "x", "topology": {"pair_cutoffs_A": {"C-N": 1.8}}},
                       "c.yaml")
    assert cfg.topology.cutoffs() == {("C", "C"): 1.872, ("C", "N"): 1.8}
    for bad in ({"depth": 5}, {"pair_cutoffs_A": {"CN": 1.8}}, {"cutoff_A": "x"},
                {"workers": 0}, {"ring": 3}):
        with pytest.raises(ConfigError):
            from_mapping(CampaignConfig, {"name": "x", "topology": bad}, "c.yaml")
    assert SignatureParams().depth == TopologyConfig().depth


def test_cli_topology(tmp_path, capsys):
    src = tmp_path / "pool.h5"
    write_table(src, _sacada_table(3), kind="pool")
    assert main(["topology", str(src), "-o", str(tmp_path / "t.h5"), "-j", "1", "-q"]) == 0
    assert len(read_table(tmp_path / "t.h5")[0]) == 3
    assert main(["topology", str(tmp_path / "missing.h5"), "-o", str(tmp_path / "x.h5")]) == 2
    with pytest.raises(SystemExit) as err:
        main(["topology", str(src)])
    assert err.value.code == 2
    with pytest.raises(SystemExit):
        main(["topology", str(src), "-o", str(tmp_path / "y.h5"), "--depth", "3"])


def test_a_net_in_two_shards_is_relaxed_once(tmp_path, caplog):
    """The dedup stage finds a net that two shards both hold: relax relaxes only the
    lower id; the other row names it; an unrelated campaign net is kept."""
    from hpcxtal.layout import dedup_output
    from hpcxtal.relax.table import relax_selection
    from hpcxtal.topology.dedup import apply_index

    campaign = Campaign.create(tmp_path / "camp", CampaignConfig(
        name="t", shard=ShardConfig(n_shards=2)))
    rows = _sacada_table(4).take(np.array([0, 1, 2, 0, 3, 3]))
    rows.columns["id"] = np.array([10, 11, 12, 5, 13, 14], dtype=np.uint64)
    rows.columns["valid"] = np.ones(6, dtype=bool)
    for i, idx in enumerate((np.arange(3), np.arange(3, 6))):
        write_table(stage_output("rounds", campaign.root, i), rows.take(idx), kind="rounds")
    stage_spec("topology").run(campaign, None)
    assert not stage_spec("dedup").done(campaign)
    with caplog.at_level("INFO"):
        assert main(["dedup", str(campaign.root)]) == 0
    assert "4 nets: 1 duplicates of a net in another shard" in caplog.text
    index, _ = read_table(dedup_output(campaign.root))
    assert index["id"].tolist() == [10] and index["duplicate_of"].tolist() == [5]
    assert index["shard"].tolist() == [0]
    assert stage_spec("relax").inputs(campaign, 0)[-1] == dedup_output(campaign.root)

    first, _ = read_table(stage_output("topology", campaign.root, 0))
    chosen, skipped = relax_selection(apply_index(first, index))
    assert chosen.tolist() == [1, 2] and skipped == {0: "topology duplicate of id 5"}
    second, _ = read_table(stage_output("topology", campaign.root, 1))
    assert relax_selection(apply_index(second, index))[0].tolist() == [0, 1]
    assert relax_selection(second)[1] == {2: "topology duplicate of id 13"}
    # A changed topology output makes the index stale.
    assert stage_spec("dedup").done(campaign)
    write_table(stage_output("topology", campaign.root, 1), second.take(np.arange(2)), kind="topology")
    assert not stage_spec("dedup").done(campaign)

"""Descriptor + gradient throughput of hpcxtal's batched SO(3) loss vs pyxtal's SO3.

Run from the repository root:

    python benchmarks/bench_descriptor.py [--generated N] [--repeats K] [--checks]

Structures: the 144 bundled SACADA rows plus the first N decodable rows of
``../shared/data/generated_candidates_1k.csv``. For each structure, pyxtal computes
the power spectrum of one atom per Wyckoff site with derivatives
(``SO3.calculate(atoms, atom_ids, derivative=True)``, the per-structure path of its
LEGO workflow) one structure at a time; hpcxtal computes the neighbour list, the
spectra of the same atoms, the loss against graphite and its gradient with respect to
the free variables R for all structures in one batch. Both are timed in the same
process; each figure is the median of ``--repeats`` runs. Throughput counts all atoms
of the structures (atoms/s) and structures (structures/s).

``--checks`` adds the full agreement runs kept out of the test suite: spectra of every
site of every decodable generated row against pyxtal (max relative error) and the
CN validity against pyxtal's ``check_validity`` on all of them.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import scipy.special
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hpcxtal.crystal.row import to_pyxtal  # noqa: E402
from hpcxtal.data import SACADA_PATH  # noqa: E402
from hpcxtal.descriptor import Environment, build_batch, positions  # noqa: E402
from hpcxtal.store.formats import read_csv  # noqa: E402
from hpcxtal.store.hdf5 import read_table  # noqa: E402
from hpcxtal.store.table import Table  # noqa: E402

CSV = Path(os.environ.get("HPCXTAL_SHARED_DATA", ROOT.parent / "shared" / "data")) / \
    "generated_candidates_1k.csv"


def pyxtal_so3():
    """pyxtal's SO3 with the scipy >= 1.17 shim (sph_harm was removed)."""
    if not hasattr(scipy.special, "sph_harm"):
        scipy.special.sph_harm = lambda m, l, phi, theta: scipy.special.sph_harm_y(l, m, theta, phi)
    from pyxtal.lego.SO3 import SO3

    return SO3(nmax=2, lmax=4, rcut=2.0, alpha=1.5)


def structures(n_generated: int) -> Table:
    sacada, _ = read_table(SACADA_PATH)
    gen, _ = read_csv(CSV)
    gen = gen.take(np.arange(min(n_generated, len(gen))))
    keep = [c for c in sacada.columns if c in gen.columns]
    table = Table.concat([Table({c: sacada[c] for c in keep}), Table({c: gen[c] for c in keep})])
    return table.take(table.layout_order())


def pyxtal_inputs(table: Table):
    """ASE Atoms and representative-atom ids of every row, built by pyxtal."""
    out = []
    for k in range(len(table)):
        xtal = to_pyxtal(table.row(k))
        ids = list(np.cumsum([0] + [s.wp.multiplicity for s in xtal.atom_sites])[:-1])
        out.append((xtal.to_ase(resort=False), ids))
    return out


def time_pyxtal(inputs) -> float:
    calc = pyxtal_so3()
    t0 = time.perf_counter()
    for atoms, ids in inputs:
        calc.calculate(atoms, atom_ids=ids, derivative=True)
    return time.perf_counter() - t0


def time_ours(table: Table, dtype: torch.dtype) -> float:
    env = Environment(dtype=dtype)
    batch = build_batch(table, dtype=dtype)
    t0 = time.perf_counter()
    R = batch.new_R()
    loss = env.loss(batch, R)
    loss.sum().backward()
    assert torch.isfinite(R.grad).all()
    return time.perf_counter() - t0


def full_checks(report) -> None:
    """Spectra and validity of every decodable generated row against pyxtal."""
    table, quarantine = read_csv(CSV)
    env = Environment()
    batch = build_batch(table)
    p = env.spectrum(batch, batch.R0).numpy()
    geo = positions(batch, batch.R0)
    calc = pyxtal_so3()
    off = np.concatenate([[0], np.cumsum(batch.n_atoms.numpy())])
    from ase import Atoms

    worst = 0.0
    for k in range(len(batch)):
        frac = geo.frac[off[k]:off[k + 1]].numpy() % 1.0
        atoms = Atoms("C" * len(frac), scaled_positions=frac, cell=geo.lattice[k].numpy(), pbc=True)
        sites = (batch.site_struct == k).nonzero().flatten().numpy()
        ids = list(batch.site_atom[sites].numpy() - off[k])
        heights = atoms.cell.volume / np.linalg.norm(
            np.cross(atoms.cell[[1, 2, 0]], atoms.cell[[2, 0, 1]]), axis=1)
        ref = calc.compute_p(atoms, ids) if heights.min() > 2.0 else calc.compute_p(atoms)[ids]
        err = np.abs(p[sites] - ref).max(1) / np.maximum(np.abs(ref).max(1), 1e-300)
        worst = max(worst, float(err.max()))
    report(f"- SO(3) spectra, all {len(table)} decodable generated rows ({len(quarantine)} of "
           f"the 999 do not decode), every site vs pyxtal: max relative error {worst:.1e}")
    cn_only = Environment(dataclasses.replace(env.target, min_distance_A=0.0))
    t0 = time.perf_counter()
    ours = cn_only.validity(batch, batch.R0).numpy()
    full = env.validity(batch, batch.R0).numpy()
    t_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    ref = np.array([to_pyxtal(table.row(k)).check_validity({"CN": {"C": [3]}, "cutoff": None})
                    for k in range(len(table))])
    t_ref = time.perf_counter() - t0
    report(f"- CN validity on the same {len(table)} rows: pyxtal {ref.sum()} valid, hpcxtal CN rule "
           f"{ours.sum()} valid, {int((ours != ref).sum())} disagreements; with the default "
           f"minimum distance ({env.target.min_distance_A} Å) {full.sum()} valid. Time: hpcxtal "
           f"{t_ours:.2f} s (both checks) vs pyxtal {t_ref:.1f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--generated", type=int, default=300, help="generated rows to add (default 300)")
    ap.add_argument("--repeats", type=int, default=3, help="runs per figure; the median is reported")
    ap.add_argument("--checks", action="store_true", help="also run the full agreement checks")
    args = ap.parse_args()

    def report(line: str) -> None:
        print(line, flush=True)

    table = structures(args.generated)
    n_atoms = int(sum(table.row(k).n_atoms() for k in range(len(table))))
    n_sites = int((table["wps"] >= 0).sum())
    inputs = pyxtal_inputs(table)
    report(f"Descriptor benchmark: {len(table)} structures (144 SACADA + {len(table) - 144} "
           f"generated), {n_atoms} atoms, {n_sites} sites; {platform.processor() or platform.machine()}, "
           f"{os.cpu_count()} cores, torch {torch.__version__}, median of {args.repeats} runs\n")
    rows = []
    t_ref = statistics.median(time_pyxtal(inputs) for _ in range(args.repeats))
    rows.append(("pyxtal SO3, derivative=True, one structure at a time", t_ref))
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for dtype in (torch.float64, torch.float32):
            time_ours(table, dtype)  # warm-up: tables, caches
            t = statistics.median(time_ours(table, dtype) for _ in range(args.repeats))
            name = str(dtype).replace("torch.", "")
            rows.append((f"hpcxtal loss + dL/dR, one batch, {name}, {threads} thread(s)", t))
    report("| method | time (s) | structures/s | atoms/s | speed-up (atoms/s) |")
    report("|---|---|---|---|---|")
    for name, t in rows:
        report(f"| {name} | {t:.3f} | {len(table) / t:,.0f} | {n_atoms / t:,.0f} | {t_ref / t:.0f}x |")
    if args.checks:
        report("")
        torch.set_num_threads(1)
        full_checks(report)


if __name__ == "__main__":
    main()

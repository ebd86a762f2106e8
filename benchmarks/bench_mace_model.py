"""The shipped carbon MACE model (``hpcxtal-carbon``) against CHGNet, its teacher.

Run once per model (same settings), e.g.

    PYTHONPATH=. python benchmarks/bench_mace_model.py --backend mace \\
        --test-file build/mace-carbon/test.xyz --json benchmarks/results/mace-model-mace.json
    PYTHONPATH=. python benchmarks/bench_mace_model.py --backend chgnet --relax-max-atoms 18 \\
        --single-points --json benchmarks/results/mace-model-chgnet.json

Parts (one torch thread unless ``--threads``):
1. ``--test-file``: energy (meV/atom), force (meV/Å) and stress (GPa) MAE against the
   CHGNet labels of the held-out test configurations of ``scripts/train_mace_model.py``.
2. Ranking: the SACADA structures of at most ``--relax-max-atoms`` atoms relaxed with
   batched FIRE (fmax, flat step cap), Spearman rho of the relaxed energies with the
   stored DFT ``vasp_energy``, over all relaxed structures and over the converged ones;
   the stored MACE-MP-0 ``mace_energy`` ranked the same way for the record.
   ``--single-points``: the same rho for single points at the stored geometries (all 150).
3. Graphite and diamond relaxed to fmax 0.01 eV/Å: lattice constants, E(diamond)-E(graphite).
4. Speed: model calls (energy, forces, stress: one FIRE step) on single SACADA structures
   of 20, 40 and 96 atoms; atom-steps per second and seconds per step of the 96-atom cell.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

ROOT = Path(__file__).resolve().parents[1]
SPEED_SIZES = (20, 40, 96)


def rho(energies, vasp) -> tuple[float, int]:
    """Spearman rho over the finite entries and how many there were."""
    e, v = np.asarray(energies, float), np.asarray(vasp, float)
    ok = np.isfinite(e) & np.isfinite(v)
    return float(spearmanr(e[ok], v[ok]).statistic), int(ok.sum())


def speed(model, images, calls: int) -> dict:
    """Atom-steps per second and seconds per call, per structure size."""
    out = {}
    for atoms in images:
        model.evaluate([atoms])  # warm-up
        t0 = time.perf_counter()
        for _ in range(calls):
            model.evaluate([atoms])
        dt = (time.perf_counter() - t0) / calls
        out[len(atoms)] = {"s_per_step": dt, "atom_steps_per_s": len(atoms) / dt,
                           "sacada_id": atoms.info["id"]}
    total = sum(len(a) for a in images) / sum(v["s_per_step"] for v in out.values())
    return {"per_size": out, "atom_steps_per_s": total}


def references(model) -> dict:
    """Relaxed graphite and diamond: lattice constants (Å) and energy difference (eV/atom)."""
    from ase.build import bulk

    from hpcxtal.relax.engine import RelaxParams, relax
    from hpcxtal.relax.reference import graphite

    params = RelaxParams(fmax_eV_per_A=0.01, max_steps=500)
    g, d = relax([graphite(), bulk("C", "diamond", 3.567)], model, params)
    a, _, c = g.atoms.cell.cellpar()[:3]
    return {"graphite_a_A": a, "graphite_c_A": c, "graphite_status": g.status,
            "diamond_a_A": d.atoms.cell.cellpar()[0] * np.sqrt(2), "diamond_status": d.status,
            "dE_diamond_graphite_eV_per_atom": d.energy / len(d.atoms) - g.energy / len(g.atoms)}


def ranking(model, images, chosen: list[int], params, mace: np.ndarray) -> dict:
    """Relax ``images[chosen]`` together; rho of the relaxed energies with ``vasp_energy``."""
    from hpcxtal.relax.engine import CONVERGED, relax

    vasp = np.array([images[i].info["vasp_energy"] for i in chosen])
    t0 = time.perf_counter()
    res = relax([images[i] for i in chosen], model, params)
    wall = time.perf_counter() - t0
    e = np.array([r.energy / len(r.atoms) for r in res])
    conv = np.array([r.status == CONVERGED for r in res])
    return {
        "structures": len(chosen), "atoms": sum(len(images[i]) for i in chosen),
        "skipped_ids_larger": [a.info["id"] for k, a in enumerate(images) if k not in chosen],
        "status": {s: sum(r.status == s for r in res) for s in sorted({r.status for r in res})},
        "wall_s": wall, "atom_steps": sum(len(r.atoms) * r.steps for r in res),
        "rho_all": rho(e, vasp), "rho_converged": rho(e[conv], vasp[conv]),
        "rho_stored_mace_mp0_same": rho(mace[chosen], vasp),
        "ids": [images[i].info["id"] for i in chosen], "energy_per_atom": e.tolist(),
        "converged": conv.tolist(), "steps": [r.steps for r in res]}


def main() -> None:
    import ase.io

    from hpcxtal.data import sacada_structures
    from hpcxtal.relax.engine import RelaxParams
    from hpcxtal.relax.models import load_model

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", default="mace")
    p.add_argument("--model", default=None, help="default: hpcxtal-carbon / CHGNet 0.3.0")
    p.add_argument("--dtype", default="float64")
    p.add_argument("--test-file", help="held-out extxyz written by scripts/train_mace_model.py")
    p.add_argument("--relax-max-atoms", type=int, default=700)
    p.add_argument("--fmax", type=float, default=0.05)
    p.add_argument("--max-steps", type=int, default=300, help="flat FIRE step cap")
    p.add_argument("--single-points", action="store_true")
    p.add_argument("--speed-calls", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(args.backend, args.model, args.dtype)
    report = {"machine": f"{platform.machine()}, {os.cpu_count()} cores (shared), torch "
                         f"{torch.__version__}, {args.threads} thread(s)",
              "model": model.describe(), "args": vars(args), "load_before": os.getloadavg()}
    images = sacada_structures()
    vasp = np.array([a.info["vasp_energy"] for a in images])

    if args.test_file:
        spec = importlib.util.spec_from_file_location("train", ROOT / "scripts" / "train_mace_model.py")
        train = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(train)
        test = ase.io.read(args.test_file, ":")
        report["test"] = {"configurations": len(test), "atoms": sum(len(a) for a in test),
                          **train.test_errors(Path(model.source), test)}
        print("test errors:", report["test"], flush=True)

    report["speed"] = speed(model, [next(a for a in images if len(a) == n) for n in SPEED_SIZES],
                            args.speed_calls)
    print("speed:", report["speed"], flush=True)
    report["references"] = references(model)
    print("references:", report["references"], flush=True)

    mace = np.array([a.info.get("mace_energy", np.nan) for a in images], dtype=float)
    report["rho_stored_mace_mp0"] = rho(mace, vasp)
    if args.single_points:
        t0 = time.perf_counter()
        sp = [float(model.evaluate([a]).energy[0]) / len(a) for a in images]
        report["single_points"] = {"rho": rho(sp, vasp), "s": time.perf_counter() - t0,
                                   "energy_per_atom": sp}
        print("single points rho:", report["single_points"]["rho"], flush=True)

    chosen = [i for i, a in enumerate(images) if len(a) <= args.relax_max_atoms]
    if chosen:  # --relax-max-atoms 0: speed and references only
        params = RelaxParams(fmax_eV_per_A=args.fmax, max_steps=args.max_steps, steps_per_atom=0.0)
        report["relaxed"] = ranking(model, images, chosen, params, mace)
        print("relaxed:", {k: v for k, v in report["relaxed"].items()
                           if k not in ("ids", "energy_per_atom", "converged", "steps")}, flush=True)
    report["load_after"] = os.getloadavg()
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()

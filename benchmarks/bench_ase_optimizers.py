"""Which optimiser needs the fewest model calls? ASE's own optimisers, one structure at a
time on FrechetCellFilter with hpcxtal's energy model: FIRE, LBFGS (memory 100 and 10),
BFGS and PreconLBFGS with the Exp preconditioner (Armijo line search). Reports per
optimiser the model calls (every energy/force evaluation), converged count, energies
and wall time; what chose the batched engine's default optimiser.

    PYTHONPATH=. python benchmarks/bench_ase_optimizers.py --max-atoms 48 --limit 8
"""
from __future__ import annotations

import argparse
import os
import time
import warnings

import torch
from bench_relax import pick
from benchlib import finish, machine


def main() -> None:
    from ase.filters import FrechetCellFilter
    from ase.optimize import BFGS, FIRE, LBFGS
    from ase.optimize.precon import Exp, PreconLBFGS

    from hpcxtal.data import sacada_structures
    from hpcxtal.relax.engine import RelaxParams
    from hpcxtal.relax.models import ModelCalculator, load_model

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--max-atoms", type=int, default=48)
    p.add_argument("--limit", type=int, default=8)
    p.add_argument("--fmax", type=float, default=0.05)
    p.add_argument("--json")
    args = p.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", message="logm result may be inaccurate")
    model = load_model()
    images = pick(sacada_structures(), args.max_atoms, args.limit)
    optimizers = {
        "FIRE": lambda f: FIRE(f, logfile=None),
        "LBFGS": lambda f: LBFGS(f, logfile=None),
        "LBFGS memory 10": lambda f: LBFGS(f, logfile=None, memory=10),
        "BFGS": lambda f: BFGS(f, logfile=None),
        "PreconLBFGS Exp": lambda f: PreconLBFGS(f, precon=Exp(A=3), use_armijo=True, logfile=None),
    }

    class Counting(ModelCalculator):
        calls = 0

        def calculate(self, *a, **kw) -> None:
            Counting.calls += 1
            super().calculate(*a, **kw)

    report = {"machine": machine(1), "model": model.describe(), "fmax": args.fmax,
              "sizes": [len(a) for a in images], "load_before": os.getloadavg()}
    for name, make in optimizers.items():
        t0, rows = time.perf_counter(), []
        for atoms in images:
            a = atoms.copy()
            a.calc = Counting(model)
            Counting.calls = 0
            ok = make(FrechetCellFilter(a)).run(fmax=args.fmax,
                                                steps=RelaxParams().step_cap(len(a)))
            rows.append({"atoms": len(a), "calls": Counting.calls, "converged": bool(ok),
                         "eV_per_atom": a.get_potential_energy() / len(a)})
        report[name] = {"wall_s": time.perf_counter() - t0,
                        "calls": sum(r["calls"] for r in rows), "structures": rows}
        print(name, report[name]["calls"], "calls", flush=True)
    finish(report, args.json)


if __name__ == "__main__":
    main()

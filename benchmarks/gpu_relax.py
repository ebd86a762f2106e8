"""Relaxation on a GPU: batched L-BFGS and FIRE, with and without neighbour-list reuse,
and a short per-structure ASE FIRE loop for scale; skips cleanly without CUDA.

The same SACADA structures (at most --max-atoms atoms, --limit of them spread over the
sizes) relaxed on ``cuda`` under each edge budget in --edge-budgets (neighbour pairs in
flight; the relax stage's GPU default is 150,000; --atom-budget, the other bound on a
batch, defaults to the stage's 2,000 atoms; the report gives the sample's atoms and
neighbour pairs, so which bound sized the batches can be read off). Reports per side:
wall time, model evaluations per structure (steps + 1), converged count, seconds per
converged structure, peak GPU memory; energy differences of L-BFGS against FIRE
(meV/atom, converged in both); the ASE loop on the first --ase-limit structures gives
seconds per structure.

    PYTHONPATH=. python benchmarks/gpu_relax.py --limit 64 --json gpu-relax.json
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch
from bench_relax import ase_loop, pick
from benchlib import finish, machine


def timed(fn, device: str):
    """``fn()`` and its wall time in seconds, a GPU drained before and after."""
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    sync()
    t0 = time.perf_counter()
    out = fn()
    sync()
    return out, time.perf_counter() - t0


def main() -> int:
    from ase.neighborlist import neighbor_list

    from hpcxtal.data import sacada_structures
    from hpcxtal.relax.engine import CONVERGED, RelaxParams, relax
    from hpcxtal.relax.models import load_model

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="hpcxtal-carbon")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--max-atoms", type=int, default=100)
    p.add_argument("--limit", type=int, default=64)
    p.add_argument("--edge-budgets", default="50000,150000")
    p.add_argument("--atom-budget", type=int, default=RelaxParams.batch_atom_budget,
                   help="batch_atom_budget (atoms per batch) beside each edge budget")
    p.add_argument("--ase-limit", type=int, default=4)
    p.add_argument("--fmax", type=float, default=0.05)
    p.add_argument("--device", default="cuda", help="cpu: a quick check of this script")
    p.add_argument("--json")
    args = p.parse_args()
    gpu = args.device.startswith("cuda")
    if gpu and not torch.cuda.is_available():
        print("no CUDA device: skipped", file=sys.stderr)
        finish({"skipped": "no CUDA device", "machine": machine(torch.get_num_threads())}, args.json)
        return 0

    images = pick(sacada_structures(), args.max_atoms, args.limit)
    models = {skin: load_model("mace", args.model, args.dtype, args.device, neighbour_skin_A=skin)
              for skin in (0.0, 1.0)}
    report = {"machine": machine(torch.get_num_threads()),
              "device": torch.cuda.get_device_name() if gpu else args.device,
              "model": models[1.0].describe(), "fmax": args.fmax, "sizes": [len(a) for a in images],
              "atoms": sum(len(a) for a in images), "atom_budget": args.atom_budget,
              "edges": sum(len(neighbor_list("i", a, models[1.0].cutoff)) for a in images),
              "load_before": os.getloadavg(), "sides": {}}
    relax(images[:2], models[1.0], RelaxParams(max_steps=3, steps_per_atom=0))  # warm-up
    results = {}
    for budget in [int(b) for b in args.edge_budgets.split(",")]:
        for optimizer, skin in (("fire", 1.0), ("lbfgs", 1.0), ("lbfgs", 0.0)):
            params = RelaxParams(optimizer=optimizer, fmax_eV_per_A=args.fmax,
                                 batch_edge_budget=budget, batch_atom_budget=args.atom_budget)
            if gpu:
                torch.cuda.reset_peak_memory_stats()
            out, wall = timed(lambda: relax(images, models[skin], params), args.device)
            conv = sum(r.status == CONVERGED for r in out)
            name = f"{optimizer}-skin{skin:g}-edges{budget}"
            results[name] = out
            report["sides"][name] = dict(
                wall_s=wall, converged=conv, s_per_converged=wall / conv if conv else None,
                evaluations_per_structure=statistics.mean(r.steps + 1 for r in out),
                peak_gpu_GiB=torch.cuda.max_memory_allocated() / 2**30 if gpu else None)
            print(name, report["sides"][name], flush=True)
        fire, lbfgs = results[f"fire-skin1-edges{budget}"], results[f"lbfgs-skin1-edges{budget}"]
        diff = [abs(a.energy / len(a.atoms) - b.energy / len(b.atoms)) * 1000
                for a, b in zip(fire, lbfgs) if a.status == b.status == CONVERGED]
        report["sides"][f"lbfgs-skin1-edges{budget}"]["max_diff_vs_fire_meV_per_atom"] = \
            max(diff) if diff else None
    if args.ase_limit:
        subset = images[:args.ase_limit]
        fire = RelaxParams(optimizer="fire", fmax_eV_per_A=args.fmax)
        ref, wall = timed(lambda: ase_loop(subset, models[0.0], fire), args.device)
        report["ase_fire_loop"] = dict(structures=len(subset), wall_s=wall,
                                       s_per_structure=wall / len(subset),
                                       converged=sum(c for _, c, _ in ref))
    finish(report, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

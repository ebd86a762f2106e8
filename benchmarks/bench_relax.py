"""Batched relaxation vs a per-structure ASE loop, and energy ranking vs DFT.

Part 1: the same SACADA structures relaxed (positions and cell, fmax) by each side named
in --sides, taking turns in every run: ``ase`` (ASE's FIRE on FrechetCellFilter, one
structure at a time, the reference), ``fire`` and ``lbfgs`` (hpcxtal's batched
optimisers), with the same energy model object (ASE gets it through ModelCalculator),
the same FIRE settings and step caps; and ``ts-fire``, ``ts-lbfgs``, ``ts-bfgs``:
torch-sim's batched optimisers on its Fréchet cell filter with the same model file,
settings and fmax, run by ``torchsim_relax.py`` as a subprocess in a side virtual
environment (--torchsim-python; ``make_torchsim_venv.sh`` builds it). Without that
environment the torch-sim sides are skipped with a message saying how to make it.
Per side: wall and process CPU times (median over --runs; on a shared machine the CPU
time is the steadier measure; a torch-sim side's are its subprocess's, imports and model
loading excluded as on our sides), model evaluations per structure (steps + 1),
converged count, wall and CPU time per converged structure; ratios of the ASE loop's
medians to each side's; energy differences (meV/atom) against the ASE loop and against
batched FIRE among structures converged in both.

Part 2: Spearman rank correlation of model energies with the stored DFT
``vasp_energy`` of all 150 SACADA structures: single points at the stored geometries,
and (``--rank-relax``) after batched relaxation; the stored MACE-MP-0 ``mace_energy``
is ranked the same way for reference.

    PYTHONPATH=. python benchmarks/bench_relax.py --max-atoms 100 --limit 8 --runs 3
    PYTHONPATH=. python benchmarks/bench_relax.py --backend mace --model hpcxtal-carbon \
        --sides ase,fire,lbfgs,ts-fire,ts-lbfgs --skip-rank
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from benchlib import finish, machine
from scipy.stats import spearmanr


def pick(images, max_atoms: int, limit: int):
    """Up to ``limit`` structures of at most ``max_atoms`` atoms, spread over the sizes."""
    small = sorted((a for a in images if len(a) <= max_atoms), key=lambda a: (len(a), a.info["id"]))
    if limit >= len(small):
        return small
    return [small[int(k)] for k in np.linspace(0, len(small) - 1, limit).round()]


def part(text: str) -> tuple[int, int]:
    """``K/N`` (0 <= K < N) for ``--part``."""
    try:
        k, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give K/N, e.g. 0/2") from None
    if not 0 <= k < n:
        raise argparse.ArgumentTypeError(f"{text!r}: need 0 <= K < N")
    return k, n


#: Sides of part 1: ours, and torch-sim's (``ts-`` + its optimiser's name).
SIDES = ("ase", "fire", "lbfgs", "ts-fire", "ts-lbfgs", "ts-bfgs")
#: Where make_torchsim_venv.sh puts the side environment unless told otherwise.
TORCHSIM_PYTHON = os.environ.get("HPCXTAL_TORCHSIM_PYTHON", "/work/venv-ts312/bin/python")


def sides(text: str) -> list[str]:
    """Comma-separated sides for ``--sides``."""
    names = [x for x in text.split(",") if x]
    bad = sorted(set(names) - set(SIDES))
    if bad or not names:
        raise argparse.ArgumentTypeError(f"{text!r}: give some of {', '.join(SIDES)}")
    return names


def torchsim_missing(python: str) -> str | None:
    """Why the torch-sim sides cannot run with interpreter ``python``, or None."""
    if not Path(python).is_file():
        return (f"torch-sim sides skipped: no side environment at {python}; build it with "
                "`bash benchmarks/make_torchsim_venv.sh` (or name one with --torchsim-python)")
    probe = subprocess.run([python, "-c", "import mace.modules, torch_sim, vesin"],
                           capture_output=True, text=True)
    if probe.returncode:
        last = (probe.stderr.strip().splitlines() or ["?"])[-1]
        return (f"torch-sim sides skipped: {python} cannot import torch_sim, mace and vesin "
                f"({last}); rebuild it with `bash benchmarks/make_torchsim_venv.sh`")
    return None


def torchsim_side(images, optimizer: str, model, params, threads: int, python: str,
                  steps_between_swaps: int) -> dict:
    """torch-sim's ``optimizer`` on ``images`` in the side environment (a subprocess
    running torchsim_relax.py); its JSON result for that optimiser, plus its versions."""
    job = {"structures": [{"numbers": a.numbers.tolist(), "positions": a.positions.tolist(),
                           "cell": np.asarray(a.cell).tolist()} for a in images],
           "model_file": model.source, "dtype": str(model.dtype).removeprefix("torch."),
           "threads": threads, "fmax": params.fmax_eV_per_A,
           "max_steps": max(params.step_cap(len(a)) for a in images),
           "steps_between_swaps": steps_between_swaps, "optimizers": [optimizer],
           "fire": {k: getattr(params, k) for k in ("dt_start", "dt_max", "n_min", "f_inc",
                                                    "f_dec", "alpha_start", "f_alpha",
                                                    "max_move_A")},
           "lbfgs": {"alpha": params.lbfgs_alpha_eV_per_A2, "memory": params.lbfgs_memory}}
    with tempfile.TemporaryDirectory() as tmp:
        job_path, out_path = Path(tmp, "job.json"), Path(tmp, "out.json")
        job_path.write_text(json.dumps(job))
        script = Path(__file__).with_name("torchsim_relax.py")
        subprocess.run([python, str(script), str(job_path), str(out_path)], check=True,
                       env={**os.environ, "PYTHONPATH": ""})
        report = json.loads(out_path.read_text())
    return {**report.pop("optimizers")[optimizer], "setup": report}


def ase_loop(images, model, params):
    from ase.filters import FrechetCellFilter
    from ase.optimize import FIRE

    from hpcxtal.relax.models import ModelCalculator

    # scipy's logm (inside ASE's filter) warns at 1e-13 error on every step
    warnings.filterwarnings("ignore", message="logm result may be inaccurate")
    out = []
    for atoms in images:
        a = atoms.copy()
        a.calc = ModelCalculator(model)
        opt = FIRE(FrechetCellFilter(a), logfile=None, dt=params.dt_start,
                   maxstep=params.max_move_A, dtmax=params.dt_max, Nmin=params.n_min,
                   finc=params.f_inc, fdec=params.f_dec, astart=params.alpha_start,
                   fa=params.f_alpha)
        converged = opt.run(fmax=params.fmax_eV_per_A, steps=params.step_cap(len(a)))
        out.append((a.get_potential_energy() / len(a), bool(converged), opt.nsteps))
    return out


def single_points(images, model, budget: int = 400):
    """Energy per atom of every image, evaluated in batches of at most ``budget`` atoms."""
    energies, batch = [], []

    def flush():
        e = model.evaluate(batch).energy
        energies.extend((e / torch.tensor([len(a) for a in batch], dtype=e.dtype)).tolist())
        batch.clear()

    for a in images:
        if batch and sum(len(b) for b in batch) + len(a) > budget:
            flush()
        batch.append(a)
    flush()
    return np.array(energies)


def main() -> None:
    from hpcxtal.data import sacada_structures
    from hpcxtal.relax.engine import CONVERGED, RelaxParams, relax
    from hpcxtal.relax.models import load_model

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", default="chgnet")
    p.add_argument("--model", default=None)
    p.add_argument("--dtype", default="float64")
    p.add_argument("--max-atoms", type=int, default=100)
    p.add_argument("--limit", type=int, default=8, help="structures in part 1")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch threads (both sides)")
    p.add_argument("--edge-budget", type=int, default=None,
                   help="batched side's batch_edge_budget (default: the device's default)")
    p.add_argument("--fmax", type=float, default=0.05)
    p.add_argument("--sides", type=sides, default=["ase", "fire", "lbfgs", "ts-fire", "ts-lbfgs"],
                   help="part 1 sides, comma-separated: ase (per-structure ASE FIRE loop), "
                        "fire, lbfgs (hpcxtal batched), ts-fire, ts-lbfgs, ts-bfgs (torch-sim "
                        "batched, in the side environment); default all but ts-bfgs")
    p.add_argument("--torchsim-python", default=TORCHSIM_PYTHON,
                   help="interpreter of the torch-sim side environment (default "
                        "$HPCXTAL_TORCHSIM_PYTHON or /work/venv-ts312/bin/python; build it "
                        "with benchmarks/make_torchsim_venv.sh)")
    p.add_argument("--steps-between-swaps", type=int, default=1,
                   help="torch-sim: steps between its convergence checks (its default 5 "
                        "lets a converged structure take up to 4 more steps)")
    p.add_argument("--part", type=part, default=(0, 1),
                   help="K/N: part 1 relaxes every N-th structure from the K-th, so that N "
                        "processes started together share the subset (one per core); part 2 "
                        "runs only for 0/1")
    p.add_argument("--rank-relax", action="store_true", help="part 2 also after relaxation")
    p.add_argument("--skip-compare", action="store_true")
    p.add_argument("--skip-rank", action="store_true", help="no part 2")
    p.add_argument("--json", help="write results here")
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    model = load_model(args.backend, args.model, args.dtype)
    params = RelaxParams(fmax_eV_per_A=args.fmax, batch_edge_budget=args.edge_budget)
    by_side = {name: replace(params, optimizer=name) for name in ("fire", "lbfgs")}
    images = sacada_structures()
    report = {"machine": machine(args.threads), "model": model.describe(), "fmax": args.fmax,
              "batch_edge_budget": params.edge_budget(model.device), "load_before": os.getloadavg()}

    if not args.skip_compare:
        k, n = args.part
        subset = pick(images, args.max_atoms, args.limit)[k::n]
        report["compare_sizes"] = [len(a) for a in subset]
        run_sides = list(args.sides)
        if any(side.startswith("ts-") for side in run_sides):
            why = (torchsim_missing(args.torchsim_python) if args.backend == "mace"
                   else "torch-sim sides skipped: they run only the mace backend")
            if why:
                print(why, file=sys.stderr, flush=True)
                report["torchsim_skipped"] = why
                run_sides = [side for side in run_sides if not side.startswith("ts-")]
        times: dict[str, list[float]] = {side: [] for side in run_sides}
        cpu: dict[str, list[float]] = {side: [] for side in run_sides}
        out: dict[str, list[tuple[float, bool]]] = {}  # (eV/atom, converged) per structure
        evaluations: dict[str, float] = {}
        for run in range(args.runs):
            for side in run_sides:
                if side.startswith("ts-"):  # times measured inside the subprocess
                    ts = torchsim_side(subset, side[3:], model, params, args.threads,
                                       args.torchsim_python, args.steps_between_swaps)
                    report["torchsim_setup"] = ts["setup"]
                    wall, used = ts["wall_s"], ts["cpu_s"]
                    out[side] = list(zip(ts["energies_eV_per_atom"], ts["converged"]))
                    evaluations[side] = ts["evaluations_per_structure"]
                else:
                    t0, c0 = time.perf_counter(), time.process_time()
                    if side == "ase":
                        res = ase_loop(subset, model, params)
                    else:
                        res = [(r.energy / len(r.atoms), r.status == CONVERGED, r.steps)
                               for r in relax(subset, model, by_side[side])]
                    wall, used = time.perf_counter() - t0, time.process_time() - c0
                    out[side] = [(e, c) for e, c, _ in res]
                    evaluations[side] = statistics.mean(s + 1 for _, _, s in res)
                    report.setdefault(side, {})["steps"] = [s for _, _, s in res]
                times[side].append(wall)
                cpu[side].append(used)
                print(f"run {run}: {side} {times[side][-1]:.1f} s (CPU {cpu[side][-1]:.1f} s)",
                      flush=True)
        for side in run_sides:
            med, med_cpu = statistics.median(times[side]), statistics.median(cpu[side])
            conv = sum(c for _, c in out[side])
            report.setdefault(side, {}).update(
                wall_s=times[side], median_s=med, cpu_s=cpu[side], median_cpu_s=med_cpu,
                converged=conv, evaluations_per_structure=evaluations[side],
                s_per_converged=med / conv if conv else None,
                cpu_s_per_converged=med_cpu / conv if conv else None,
                energies_eV_per_atom=[e for e, _ in out[side]],
                converged_each=[c for _, c in out[side]])
        for ref in ("ase", "fire"):
            for side in run_sides:
                if side == ref or ref not in out:
                    continue
                diff = [abs(a - b) * 1000 for (a, ca), (b, cb) in zip(out[side], out[ref])
                        if ca and cb]
                report[side][f"vs_{ref}"] = dict(
                    speedup=statistics.median(times[ref]) / statistics.median(times[side]),
                    cpu_speedup=statistics.median(cpu[ref]) / statistics.median(cpu[side]),
                    converged_both=len(diff), max_diff_meV_per_atom=max(diff) if diff else None,
                    median_diff_meV_per_atom=statistics.median(diff) if diff else None)
        ranked = out.get("lbfgs") or out.get("fire")
        if ranked and len(subset) > 2:
            vasp = np.array([a.info["vasp_energy"] for a in subset])
            report["spearman_subset_relaxed"] = float(spearmanr([e for e, _ in ranked],
                                                                vasp).statistic)

    if args.part != (0, 1) or args.skip_rank:  # part 2 would disturb the other parts' timing
        return finish(report, args.json)
    vasp = np.array([a.info["vasp_energy"] for a in images])
    t0 = time.perf_counter()
    sp = single_points(images, model)
    report["single_point_s"] = time.perf_counter() - t0
    report["spearman_single_point_150"] = float(spearmanr(sp, vasp).statistic)
    mace = np.array([a.info.get("mace_energy", np.nan) for a in images], dtype=float)
    ok = np.isfinite(mace)
    report["spearman_stored_mace_mp0"] = (float(spearmanr(mace[ok], vasp[ok]).statistic), int(ok.sum()))
    if args.rank_relax:
        t0 = time.perf_counter()
        res = relax(images, model, params)
        report["rank_relax_s"] = time.perf_counter() - t0
        e = np.array([r.energy / len(r.atoms) for r in res])
        good = np.isfinite(e)
        report["spearman_relaxed_150"] = (float(spearmanr(e[good], vasp[good]).statistic), int(good.sum()))
        report["relaxed_status"] = {s: sum(r.status == s for r in res) for s in {r.status for r in res}}
    finish(report, args.json)


if __name__ == "__main__":
    main()

"""torch-sim's side of the relaxation benchmark: run by ``bench_relax.py`` in the side
virtual environment that ``make_torchsim_venv.sh`` builds (Python >= 3.12, torch-sim,
mace-torch, vesin), never in hpcxtal's own environment.

Reads a JSON job (structures as numbers / positions / cell, the MACE model file, dtype,
fmax, step cap, FIRE and L-BFGS settings, optimisers to run) and writes a JSON result per
optimiser: wall and process CPU time, model evaluations per structure (systems in each
model call, summed, divided by the structure count: the same count as hpcxtal's
steps + 1), energy per atom and convergence of every structure (largest atom-force and
Fréchet cell-force row below fmax, as ASE's filter and hpcxtal judge it), and the
versions used. It uses torch-sim's own batched optimisers on its Fréchet cell filter,
with vesin's neighbour list (torch-sim's default list aborts above 80 neighbours on these
structures).

    /work/venv-ts312/bin/python benchmarks/torchsim_relax.py job.json result.json
"""
from __future__ import annotations

import json
import sys
import time
from importlib.metadata import version


def main(job_path: str, out_path: str) -> None:
    import mace.modules  # noqa: F401  (mace before e3nn: it pins the e3nn it needs)
    import torch
    import torch_sim as ts
    from ase import Atoms
    from mace.calculators.mace_torchsim import MaceTorchSimModel
    from torch_sim.neighbors import vesin_nl_ts
    from torch_sim.optimizers.cell_filters import CellFilter

    with open(job_path) as f:
        job = json.load(f)
    torch.set_num_threads(job["threads"])
    dtype = {"float64": torch.float64, "float32": torch.float32}[job["dtype"]]
    images = [Atoms(numbers=s["numbers"], positions=s["positions"], cell=s["cell"], pbc=True)
              for s in job["structures"]]
    model = MaceTorchSimModel(torch.load(job["model_file"], map_location="cpu",
                                         weights_only=False),
                              device=torch.device("cpu"), dtype=dtype,
                              neighbor_list_fn=vesin_nl_ts)
    calls = {"systems": 0}
    forward = model.forward

    def counted(state, *args, **kwargs):
        calls["systems"] += state.n_systems
        return forward(state, *args, **kwargs)

    model.forward = counted
    fire, fmax = job["fire"], job["fmax"]
    settings = {
        "fire": ({"dt_start": fire["dt_start"], "alpha_start": fire["alpha_start"],
                  "fire_flavor": "ase_fire"},
                 {"dt_max": fire["dt_max"], "n_min": fire["n_min"], "f_inc": fire["f_inc"],
                  "f_dec": fire["f_dec"], "alpha_start": fire["alpha_start"],
                  "f_alpha": fire["f_alpha"], "max_step": fire["max_move_A"],
                  "fire_flavor": "ase_fire"}),
        "lbfgs": ({"alpha": job["lbfgs"]["alpha"]},
                  {"max_history": job["lbfgs"]["memory"], "max_step": fire["max_move_A"]}),
        "bfgs": ({"alpha": job["lbfgs"]["alpha"], "max_step": fire["max_move_A"]}, {}),
    }
    converged_fn = ts.generate_force_convergence_fn(fmax, include_cell_forces=True)
    report = {"versions": {p: version(p) for p in ("torch-sim-atomistic", "torch", "mace-torch",
                                                   "e3nn", "vesin", "ase")},
              "python": sys.version.split()[0], "neighbour_list": "vesin_nl_ts",
              "cell_filter": "frechet", "steps_between_swaps": job["steps_between_swaps"],
              "optimizers": {}}
    for name in job["optimizers"]:
        init_kwargs, step_kwargs = settings[name]
        calls["systems"] = 0
        t0, c0 = time.perf_counter(), time.process_time()
        final = ts.optimize(images, model, optimizer=ts.Optimizer[name],
                            convergence_fn=converged_fn, max_steps=job["max_steps"],
                            steps_between_swaps=job["steps_between_swaps"],
                            init_kwargs={**init_kwargs, "cell_filter": CellFilter.frechet},
                            **step_kwargs)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        natoms = torch.bincount(final.system_idx, minlength=final.n_systems)
        report["optimizers"][name] = {
            "wall_s": wall, "cpu_s": cpu,
            "evaluations_per_structure": calls["systems"] / len(images),
            "converged": [bool(c) for c in converged_fn(final, None)],
            "energies_eV_per_atom": (final.energy.detach() / natoms).tolist()}
        print(f"torch-sim {name}: {wall:.1f} s (CPU {cpu:.1f} s)", file=sys.stderr, flush=True)
    with open(out_path, "w") as f:
        json.dump(report, f, indent=1)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: torchsim_relax.py JOB.json RESULT.json")
    main(*sys.argv[1:])

#!/usr/bin/env python
"""Generation metrics of every generator kind on the same number of samples.

    python benchmarks/bench_generators.py --model cvae=default \\
        --model diffusion=build/gen/diffusion.pt --samples 1000 --seed 0 \\
        [--threads 1] [--json benchmarks/results/generators.json]

Each model (any kind, :func:`hpcxtal.generate.plugin.load_generator`) draws
``--samples`` candidates with the same seed and condition mode (``mix``: half training
conditions, half learned; the unconditional VAE predicts its own) through
:func:`hpcxtal.generate.sample.sample_pool`, and :func:`hpcxtal.generate.metrics.pool_metrics`
scores them against the 150 bundled SACADA structures (the training crystals: there is
no held-out split; the Wasserstein distances say how far the valid samples' density and
primitive atom count distributions are from those of the known allotropes). Raw
samples, before any refinement. Sampling time: median of ``--repeats`` draws of the same
samples, after one small warm-up draw (symmetry tables load on first use). Prints one
Markdown table; ``--json`` keeps the numbers. For conditional autoencoders (cvae), the
reconstruction of the 144 SACADA rows (:func:`hpcxtal.generate.metrics.reconstruction`:
match rate and mean normalised RMS distance, CDVAE's StructureMatcher tolerances).
``--cov N``: on the first N samples of each pool (ids < N), CDVAE's COV-R / COV-P
against the SACADA structures (:func:`hpcxtal.generate.metrics.coverage`, cutoff 0.2)
and, between every two models, how many of one's distinct valid samples
(StructureMatcher groups of the samples with no pair < 0.5 Å) match one of the other's.
"""
from __future__ import annotations

import argparse
import statistics
import time
from itertools import combinations

import numpy as np
import torch

from benchlib import finish, machine
from hpcxtal.data import sacada_structures
from hpcxtal.store.hdf5 import read_table
from hpcxtal.data import SACADA_PATH
from hpcxtal.generate.metrics import (coverage, distinct, overlap, pool_metrics, reconstruction,
                                     structure_checks, structure_fingerprint)
from hpcxtal.generate.plugin import load_generator
from hpcxtal.generate.sample import sample_pool


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", action="append", required=True, metavar="NAME=PATH",
                    help="a model file ('default': the shipped CVAE); repeat for each")
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cov", type=int, default=0, metavar="N",
                    help="COV-R/COV-P and overlaps on the first N samples of each pool (0: off)")
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    structures = sacada_structures()
    reference = [structure_checks(a) for a in structures]
    if args.cov:
        from pymatgen.io.ase import AseAtomsAdaptor

        t0 = time.perf_counter()
        ref_fps = [structure_fingerprint(a) for a in structures]
        ref = [(fp, a.get_chemical_formula(empirical=True)) for fp, a in zip(ref_fps, structures)
               if fp is not None]
        print(f"reference fingerprints: {len(ref)} of {len(structures)} in "
              f"{time.perf_counter() - t0:.0f} s", flush=True)
        mine = {}
    known, _ = read_table(SACADA_PATH)
    report = {"machine": machine(args.threads), "samples": args.samples, "seed": args.seed,
              "reference": f"{len(reference)} SACADA structures", "models": {}}
    for item in args.model:
        name, _, path = item.partition("=")
        gen = load_generator(path)
        sample_pool(path, 10, seed=args.seed + 1)  # warm-up
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            pool, _ = sample_pool(path, args.samples, seed=args.seed)
            times.append(time.perf_counter() - t0)
        seconds = statistics.median(times)
        report["models"][name] = {
            "origin": gen.origin, "training_file": gen.info["training_file"],
            "training_rows": gen.info["n_training_rows"], "epochs": gen.config["epochs"],
            "train_s": round(gen.info["train_seconds"]), "parameters": gen.info["n_parameters"],
            "sample_s": round(seconds, 2), **pool_metrics(pool, args.samples, reference)}
        if args.cov:
            t0 = time.perf_counter()
            first = pool.take(np.flatnonzero(np.asarray(pool["id"]) < args.cov))
            atoms = [first.atoms(i) for i in range(len(first))]
            cov = coverage([structure_fingerprint(a) for a in atoms],
                           [a.get_chemical_formula(empirical=True) for a in atoms],
                           [fp for fp, _ in ref], [f for _, f in ref], n_generated=args.cov)
            valid = [AseAtomsAdaptor.get_structure(a) for a in atoms if structure_checks(a).valid]
            mine[name] = distinct(valid)
            report["models"][name].update(cov, n_distinct_valid=len(mine[name]),
                                          cov_s=round(time.perf_counter() - t0))
        if gen.kind == "cvae":
            recon = reconstruction(gen, known)
            report["models"][name].update(match_rate=recon["match_rate"], rms=recon["rms"])
    print(f"| model | training rows | epochs | parameters | training wall time | decoded | "
          f"stated spg | valid (no pair < 0.5 Å) | W(density, g/cm³) | W(atoms/prim. cell) | "
          f"sampling {args.samples} (median of {args.repeats}) | reconstruction: match rate, RMS |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, r in report["models"].items():
        print(f"| {name} `{r['origin']}` | {r['training_rows']} | {r['epochs']} | {r['parameters']:,} | "
              f"{r['train_s']} s | {100 * r['decoded']:.1f} % | {100 * r['stated_spg']:.1f} % | "
              f"{100 * r['valid']:.1f} % | {r['w_density']:.3f} | {r['w_n_atoms']:.2f} | "
              f"{r['sample_s']:.1f} s | " + (f"{100 * r['match_rate']:.1f} %, {r['rms']:.3f} |"
                                           if "match_rate" in r else "- |"))
    if args.cov:
        names = list(mine)
        report["cov_samples"] = args.cov
        report["overlap"] = {f"{a}|{b}": overlap(mine[a], mine[b]) for a, b in combinations(names, 2)}
        print(f"\n| model | COV-R | COV-P | AMSD-R | AMSD-P | distinct valid of the first {args.cov} |")
        print("|---|---|---|---|---|---|")
        for name in names:
            r = report["models"][name]
            print(f"| {name} | {100 * r['cov_r']:.1f} % | {100 * r['cov_p']:.1f} % | "
                  f"{r['amsd_r']:.3f} | {r['amsd_p']:.3f} | {r['n_distinct_valid']} |")
        print("\nDistinct valid samples of the row model that match one of the column model's:\n")
        print("| | " + " | ".join(names) + " |")
        print("|---" * (len(names) + 1) + "|")
        for a in names:
            print(f"| {a} | " + " | ".join(
                str(len(mine[a]) if a == b else report["overlap"].get(f"{a}|{b}", overlap(mine[a], mine[b])))
                for b in names) + " |")
    finish(report, args.json)


if __name__ == "__main__":
    main()

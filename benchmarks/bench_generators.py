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
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from benchlib import finish, machine
from hpcxtal.data import sacada_structures
from hpcxtal.store.hdf5 import read_table
from hpcxtal.data import SACADA_PATH
from hpcxtal.generate.metrics import pool_metrics, reconstruction, structure_checks
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
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    reference = [structure_checks(a) for a in sacada_structures()]
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
    finish(report, args.json)


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""Dual-level refinement rounds on sampled candidates, and CVAE vs unconditional VAE.

    PYTHONPATH=. python benchmarks/bench_rounds.py --samples 1000 --rounds 3 --processes 2 \\
        [--later latent|perturb] --model cvae=default --model vae=build/generator/vae.pt \\
        --matcher --json benchmarks/results/rounds.json

For each ``--model LABEL=PATH`` (``default``: the shipped CVAE):

1. ``--samples`` candidates with ``sample_pool`` (seed ``--seed``); rows that do not
   decode stay in the quarantine and count as invalid;
2. the pool cut into ``--processes`` cost-balanced shards (``write_shards``);
3. under ``mpirun -n P`` (this script again, ``--worker``): round 1 = each rank refines
   its shard (``refine_file``, representation space, default ``RefineConfig``, 1 torch
   thread per rank), then rounds 2..``--rounds`` (``run_rounds``: the invalid rows of
   all shards rebalanced over the ranks; ``--later latent``: latent refinement through
   the model's decoder, then representation refinement; ``--later perturb``:
   representation refinement from perturbed starts alone, the control without the
   generator). The clock of each round starts after a barrier, so interpreter start-up
   is not counted. Latent refinement needs a conditional model: with ``--later latent``
   an unconditional one gets round 1 only (recorded as such);
4. CN=3-valid rows after round 1 and cumulative after the last round; unique among
   them by the pipeline's first de-duplication (topology key, dimension, atoms per
   primitive cell: ``hpcxtal.topology.annotate``, default ``TopologyConfig``), and with
   ``--matcher`` by pymatgen's StructureMatcher (the merge stage's tolerances: ltol
   0.2, stol 0.3, angle 5°) over the whole valid set, compared only within groups of
   equal primitive-cell size (structures of different size never match).

Prints Markdown tables; ``--json`` stores the raw figures.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve()


# ----------------------------------------------------------------------------- MPI worker

def worker(root: Path, n_rounds: int, model: str, later: str) -> None:
    """Round 1 of this rank's shard, then rounds 2..n_rounds over all ranks (``later``:
    latent or perturb); rank 0 writes the per-round timings to ``root/timing.json``."""
    import torch

    from hpcxtal.generate.sample import Generator
    from hpcxtal.hpc.mpi import abort_on_error, world
    from hpcxtal.refine.latent import LatentConfig
    from hpcxtal.refine.represent import RefineConfig
    from hpcxtal.refine.rounds import RoundsConfig, run_rounds
    from hpcxtal.refine.stage import refine_file
    from hpcxtal.layout import stage_output

    torch.set_num_threads(1)
    comm = world()
    rank, size = (comm.Get_rank(), comm.Get_size()) if comm is not None else (0, 1)
    cfg = RefineConfig(threads=1)
    last = n_rounds if later == "perturb" or Generator(model).model.cfg.conditional else 1
    timing: list[dict] = []
    with abort_on_error(comm):
        def barrier() -> None:
            if comm is not None:
                comm.Barrier()

        barrier()
        load, t0 = os.getloadavg(), time.perf_counter()
        refine_file(root / "shards" / f"shard-{rank:04d}.h5", stage_output("refine", root, rank), cfg)
        mine = time.perf_counter() - t0
        barrier()
        timing.append({"round": 1, "seconds": time.perf_counter() - t0, "load_at_start": load,
                       "process_s": comm.gather(mine, root=0) if comm is not None else [mine]})
        for r in range(2, last + 1):
            rounds = RoundsConfig(n_rounds=r, later=later, latent=LatentConfig(generator=model))
            barrier()
            load, t0 = os.getloadavg(), time.perf_counter()
            counts = run_rounds(root, size, lambda i: stage_output("refine", root, i), cfg, rounds, comm)
            timing.append({"round": r, "seconds": time.perf_counter() - t0, "load_at_start": load,
                           "rows": counts.get(f"round_{r}_rows")})
    if rank == 0:
        (root / "timing.json").write_text(json.dumps(timing, indent=1))


# ----------------------------------------------------------------------------- analysis

def final_rows(root: Path, n_shards: int, rounds_done: bool):
    """All shards' rows after the last round (or after round 1), one table."""
    from hpcxtal.layout import stage_output
    from hpcxtal.store.hdf5 import read_table
    from hpcxtal.store.table import Table

    stage = "rounds" if rounds_done else "refine"
    table = Table.concat([read_table(stage_output(stage, root, i))[0] for i in range(n_shards)])
    return table.take(np.argsort(table["id"], kind="stable"))


def unique_by_topology(ids: np.ndarray, sig: dict[str, np.ndarray], chosen: np.ndarray) -> dict:
    """Topology de-duplication restricted to the rows ``chosen`` (indices into ``sig``)."""
    from hpcxtal.topology.annotate import first_duplicates

    dim, npr, keys = sig["dimension"][chosen], sig["n_prim"][chosen], sig["topology"][chosen]
    dup = first_duplicates(ids[chosen], keys, dim, npr)
    signed = dim >= 0
    rep = signed & (dup == ids[chosen])
    return {"valid": int(len(chosen)), "signed": int(signed.sum()), "unique": int(rep.sum()),
            "unique_3d": int((rep & (dim == 3)).sum()), "no_signature": int((~signed).sum())}


def matcher_groups(structures: list) -> np.ndarray:
    """Group label of every structure by StructureMatcher (merge tolerances), compared
    within groups of equal primitive-cell size only."""
    from hpcxtal.merge.database import MergeConfig

    matcher = MergeConfig().matcher()
    label = np.full(len(structures), -1)
    by_size: dict[int, list[int]] = {}
    for i, s in enumerate(structures):
        by_size.setdefault(len(s.get_primitive_structure()), []).append(i)
    index = {id(s): i for i, s in enumerate(structures)}
    next_label = 0
    for size in sorted(by_size):
        for group in matcher.group_structures([structures[i] for i in by_size[size]]):
            label[[index[id(s)] for s in group]] = next_label
            next_label += 1
    return label


def analyse(root: Path, n_shards: int, n_sampled: int, multi_round: bool, workers: int,
            matcher: bool) -> dict:
    """Valid and unique after round 1 and after the last round."""
    from hpcxtal.topology.stage import TopologyConfig
    from hpcxtal.crystal.row import to_atoms
    from hpcxtal.topology.annotate import SignatureParams, annotate_table

    table = final_rows(root, n_shards, multi_round)
    valid = np.asarray(table["valid"], bool)
    rnd = np.asarray(table["round"])
    ids = np.asarray(table["id"], np.uint64)
    chosen = np.flatnonzero(valid)
    tc = TopologyConfig()
    t0 = time.perf_counter()
    signed = annotate_table(table.take(chosen), SignatureParams(cutoffs=tc.cutoffs(), depth=tc.depth,
                                                                max_ring=tc.max_ring), workers)
    topo_s = time.perf_counter() - t0
    sig = {k: np.asarray(signed[k]) for k in ("topology", "dimension", "n_prim")}
    vid = ids[chosen]
    first = np.flatnonzero(rnd[chosen] == 1)
    out = {"n_sampled": n_sampled, "rows": len(table), "topology_seconds": topo_s,
           "after_round_1": unique_by_topology(vid, sig, first),
           "per_round_valid": {int(r): int((rnd[chosen] == r).sum()) for r in np.unique(rnd[chosen])}}
    if multi_round:
        out["cumulative"] = unique_by_topology(vid, sig, np.arange(len(chosen)))
    if matcher:
        from pymatgen.io.ase import AseAtomsAdaptor

        t0 = time.perf_counter()
        structures = [AseAtomsAdaptor.get_structure(to_atoms(table.row(int(i)))) for i in chosen]
        label = matcher_groups(structures)
        out["matcher_seconds"] = time.perf_counter() - t0
        out["after_round_1"]["unique_matcher"] = int(len(set(label[first].tolist())))
        if multi_round:
            out["cumulative"]["unique_matcher"] = int(len(set(label.tolist())))
    return out


# ----------------------------------------------------------------------------- driver

def run_model(label: str, model: str, args: argparse.Namespace) -> dict:
    """Sample, shard, refine (rounds under mpirun) and analyse one model."""
    from hpcxtal.campaign import SampleConfig, ShardConfig
    from hpcxtal.generate.sample import Generator
    from hpcxtal.stages import sample_to_pool, shard_pool

    root = args.work / f"{label}-{args.later}"
    if root.exists():
        raise SystemExit(f"{root} exists: remove it or give another --work")
    root.mkdir(parents=True)
    gen = Generator(model)
    t0 = time.perf_counter()
    sampled = sample_to_pool(root / "pool.h5", SampleConfig(n=args.samples, model=model), args.seed)
    sample_s = time.perf_counter() - t0
    shard_pool(root / "pool.h5", root / "shards", ShardConfig(n_shards=args.processes))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(HERE.parents[1]))
    cmd = ["mpirun", "-n", str(args.processes), sys.executable, str(HERE), "--worker", str(root),
           "--rounds", str(args.rounds), "--later", args.later, "--model", f"{label}={model}"]
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, check=True)
    total = time.perf_counter() - t0
    timing = json.loads((root / "timing.json").read_text())
    multi = len(timing) > 1
    result = {"label": label, "later": args.later, "model": gen.origin, "model_file": str(gen.path),
              "conditional": gen.model.cfg.conditional, "training_rows": gen.info["n_training_rows"],
              "training_sha256": gen.info["training_sha256"], "decoded": sampled.counts["rows"],
              "quarantined": sampled.counts["quarantined"], "sample_seconds": sample_s,
              "rounds_run": len(timing), "timing": timing, "mpirun_seconds": total,
              **analyse(root, args.processes, args.samples, multi, args.processes, args.matcher)}
    return result


def pct(k: int, n: int) -> str:
    """``k (percent of n)``."""
    return f"{k} ({100 * k / n:.1f} %)"


def report(results: list[dict]) -> None:
    """Markdown tables of the results."""
    for r in results:
        n = r["n_sampled"]
        print(f"\n{r['label']} {r['model']}, later rounds: {r['later']}; {n} sampled, "
              f"{r['decoded']} decode")
        print("| round | rows refined | newly CN=3-valid | time (s) | load at start |")
        print("|---|---|---|---|---|")
        for t in r["timing"]:
            rows = r["decoded"] if t["round"] == 1 else t["rows"]
            print(f"| {t['round']} | {rows} | {r['per_round_valid'].get(t['round'], 0)} | "
                  f"{t['seconds']:.0f} | {t['load_at_start'][0]:.1f} |")
        print("| set | CN=3-valid | with a signature | unique (topology) | of those 3-periodic | "
              "unique (StructureMatcher) |")
        print("|---|---|---|---|---|---|")
        for name in ("after_round_1", "cumulative"):
            if name in r:
                s = r[name]
                print(f"| {name} | {pct(s['valid'], n)} | {s['signed']} | {s['unique']} | "
                      f"{s['unique_3d']} | {s.get('unique_matcher', '-')} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", action="append", metavar="LABEL=PATH",
                    help="generator to benchmark (repeatable; default cvae=default)")
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=3, help="R_max")
    ap.add_argument("--later", choices=["latent", "perturb"], default="latent",
                    help="rounds 2..R_max: latent + representation refinement (conditional "
                         "models only), or representation refinement from perturbed starts")
    ap.add_argument("--processes", type=int, default=2, help="MPI ranks = shards")
    ap.add_argument("--matcher", action="store_true", help="also de-duplicate by StructureMatcher")
    ap.add_argument("--work", type=Path, default=Path("build/bench-rounds"))
    ap.add_argument("--json", type=Path)
    ap.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    models = [m.split("=", 1) for m in (args.model or ["cvae=default"])]
    if args.worker is not None:
        worker(args.worker, args.rounds, models[0][1], args.later)
        return
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    results = [run_model(label, path, args) for label, path in models]
    report(results)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "started": started, "machine": f"{platform.machine()}, {os.cpu_count()} cores",
            "args": {k: str(v) for k, v in vars(args).items()}, "results": results}, indent=1))


if __name__ == "__main__":
    main()

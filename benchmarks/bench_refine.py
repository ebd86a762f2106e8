"""Representation-space refinement (issue 4): speed, valid fraction, scaling, recovery.

Parts (``--parts``, default all):

- ``candidates``: the 999 rows of ``generated_candidates_1k.csv`` (951 decode) cut into
  2 cost-balanced halves (``plan_shards``) refined by 2 processes with 1 torch thread
  each; wall time (median of ``--runs``), seconds per 1k rows, CN=3-valid fraction of
  the decodable rows with the default target (min distance 1.0 Å) and with
  min_distance_A=0 (pyxtal's pure CN rule), recomputed from the refined rows.
- ``baseline``: pyxtal's LEGO builder (``optimize_reps``, opt_type='local', one CPU) on
  ``--baseline-rows`` of the same rows, seconds per structure and its valid fraction;
  the ratio is taken against the ``candidates`` time of the same run.
- ``scaling``: perturbed copies (free coordinates ±0.03, lattice lengths ±5 %, fixed
  seed, new ids) of ``--scaling-base`` decodable rows at ``--sizes``; wall time and
  peak RSS per process (a fresh pool per size) under ``--scaling-batch-atoms``.
- ``sacada``: the 144 bundled SACADA rows with lattice lengths and angles ±5 % and free
  coordinates ±0.03; fraction CN=3-valid after refinement and fraction matching the
  original (StructureMatcher ltol 0.2, stol 0.3, angle_tol 5).
- ``float32``: the ``candidates`` measurement in float32 (one run).

    PYTHONPATH=. python benchmarks/bench_refine.py --runs 3 --json benchmarks/results/refine.json

Worker processes are started (spawn) and warmed up (imports, target environment) before
the clock starts, so wall times count refinement, not interpreter start-up.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import os
import platform
import resource
import statistics
import subprocess
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np

CSV = Path(os.environ.get("HPCXTAL_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
           ) / "generated_candidates_1k.csv"


# ----------------------------------------------------------------------------- workers

def _warm(dtype: str) -> int:
    """Import the refinement code and build the target in a worker; returns its pid."""
    import torch

    from hpcxtal.descriptor.target import Environment

    torch.set_num_threads(1)
    Environment("graphite", dtype=torch.float64 if dtype == "float64" else torch.float32)
    time.sleep(0.5)  # keep this worker busy so the other one gets the other warm-up
    return os.getpid()


def _refine_part(table, cfg_kw: dict) -> dict:
    """Refine one part in this worker; returns the refined columns, time and peak RSS."""
    from hpcxtal.refine.represent import RefineConfig, refine_table

    t0 = time.perf_counter()
    res = refine_table(table, RefineConfig(**cfg_kw))
    return {"cell": res.cell, "xyz": res.xyz, "loss": res.loss, "valid": res.valid,
            "steps": res.steps, "status": res.status, "seconds": time.perf_counter() - t0,
            "maxrss_MB": peak_rss_MB(), "pid": os.getpid()}


def peak_rss_MB() -> float:
    """This process's peak resident memory (MB). VmHWM, not getrusage's ru_maxrss: on
    Linux a spawned worker's ru_maxrss starts at its parent's RSS at fork time (kept
    across exec), which hides the worker's own peak."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def refine_parallel(table, nproc: int, cfg_kw: dict) -> dict:
    """Refine ``table`` split by ``plan_shards`` over ``nproc`` fresh, warmed-up worker
    processes; refined columns come back in table order."""
    from hpcxtal.store.shard import plan_shards

    parts = plan_shards(table, nproc)
    with ProcessPoolExecutor(nproc, mp_context=get_context("spawn")) as pool:
        pids = list(pool.map(_warm, [cfg_kw.get("dtype", "float64")] * nproc))
        load = os.getloadavg()
        t0 = time.perf_counter()
        outs = list(pool.map(_refine_part, [table.take(p) for p in parts], [cfg_kw] * nproc))
        wall = time.perf_counter() - t0
    n = len(table)
    merged = {"cell": np.zeros((n, 6)), "xyz": np.zeros((n, 8, 3)), "loss": np.zeros(n),
              "valid": np.zeros(n, bool), "steps": np.zeros(n, np.int64), "status": [""] * n}
    for idx, out in zip(parts, outs):
        for key in ("cell", "xyz", "loss", "valid", "steps"):
            merged[key][idx] = out[key]
        for i, s in zip(idx, out["status"]):
            merged["status"][i] = s
    merged.update(wall_s=wall, load_at_start=load, load_at_end=os.getloadavg(),
                  process_s=[o["seconds"] for o in outs], process_rows=[len(p) for p in parts],
                  maxrss_MB=[o["maxrss_MB"] for o in outs], distinct_workers=len(set(pids)))
    return merged


# ----------------------------------------------------------------------------- helpers

def with_rows(table, cell: np.ndarray, xyz: np.ndarray, ids: np.ndarray | None = None):
    """A copy of ``table`` with new cell/xyz (and ids)."""
    from hpcxtal.store.table import Table

    cols = dict(table.columns)
    cols["cell"], cols["xyz"] = np.asarray(cell, float), np.asarray(xyz, float)
    if ids is not None:
        cols["id"] = np.asarray(ids, dtype=np.uint64)
    return Table(cols, None, dict(table.attrs))


def validity(table, min_distance_A: float | None = None) -> np.ndarray:
    """CN=3 validity of every row of ``table`` (default graphite target, or with its
    minimum distance replaced)."""
    import torch

    from hpcxtal.descriptor.batch import build_batch
    from hpcxtal.descriptor.target import Environment, load_targets

    target = load_targets()["graphite"]
    if min_distance_A is not None:
        target = dataclasses.replace(target, min_distance_A=min_distance_A)
    env = Environment(target, dtype=torch.float64)
    batch = build_batch(table, dtype=torch.float64)
    return env.validity(batch, batch.R0).numpy()


def perturb(table, rng: np.random.Generator, *, coord: float = 0.03, length: float = 0.05,
            angle: float = 0.0, first_id: int = 0):
    """``table`` with its free coordinates moved by U(-coord, coord), lattice lengths
    scaled by 1 + U(-length, length) and angles by 1 + U(-angle, angle) (free variables
    only, so the rows keep their symmetry); ids first_id, first_id + 1, ..."""
    import torch

    from hpcxtal.crystal.freevars import ANGLE, COORD, LENGTH
    from hpcxtal.descriptor.batch import build_batch, rows_from_R

    batch = build_batch(table, dtype=torch.float64)
    R = batch.R0.clone()
    u = torch.from_numpy(rng.uniform(-1.0, 1.0, R.shape))
    R = torch.where(batch.kind == COORD, R + coord * u, R)
    R = torch.where(batch.kind == LENGTH, R * (1 + length * u), R)
    R = torch.where(batch.kind == ANGLE, R * (1 + angle * u), R)
    cell, xyz = rows_from_R(batch, R)
    return with_rows(table, cell, xyz, first_id + np.arange(len(table)))


def copies(table, n: int, seed: int):
    """``n`` rows: perturbed copies of the rows of ``table``, cycling through them."""
    from hpcxtal.store.table import Table

    rng = np.random.default_rng(seed)
    out, made = [], 0
    while made < n:
        part = table.take(np.arange(min(len(table), n - made)))
        out.append(perturb(part, rng, first_id=10_000_000 + made))
        made += len(part)
    return Table.concat(out)


def load_candidates():
    from hpcxtal.store.formats import read_csv

    return read_csv(CSV)


def summary(out: dict, n_total: int | None = None) -> dict:
    n = len(out["valid"])
    statuses = {}
    for s in out["status"]:
        statuses[s] = statuses.get(s, 0) + 1
    return {"rows": n, "wall_s": out["wall_s"], "s_per_1k_rows": 1000 * out["wall_s"] / (n_total or n),
            "valid": int(out["valid"].sum()), "valid_fraction": float(out["valid"].mean()),
            "process_s": out["process_s"], "process_rows": out["process_rows"],
            "maxrss_MB": out["maxrss_MB"], "load_at_start": out["load_at_start"],
            "load_at_end": out["load_at_end"], "median_steps": float(np.median(out["steps"])),
            "status_counts": statuses, "distinct_workers": out["distinct_workers"]}


# ----------------------------------------------------------------------------- parts

def part_candidates(runs: int, dtype: str) -> tuple[dict, dict]:
    table, quarantine = load_candidates()
    n_csv = len(table) + len(quarantine)
    before = validity(table)
    res, last = [], None
    for run in range(runs):
        last = refine_parallel(table, 2, {"dtype": dtype, "threads": 1})
        res.append(summary(last))
        print(f"candidates {dtype} run {run}: {last['wall_s']:.1f} s, valid "
              f"{int(last['valid'].sum())}/{len(table)}, load {last['load_at_start'][0]:.1f}", flush=True)
    refined = with_rows(table, last["cell"], last["xyz"])
    valid_default = validity(refined)
    valid_cn_only = validity(refined, min_distance_A=0.0)
    walls = [r["wall_s"] for r in res]
    report = {
        "dtype": dtype, "csv_rows": n_csv, "decodable": len(table), "quarantined": len(quarantine),
        "runs": res, "median_wall_s": statistics.median(walls),
        "median_s_per_1k_decodable": 1000 * statistics.median(walls) / len(table),
        "median_s_per_1k_csv_rows": 1000 * statistics.median(walls) / n_csv,
        "valid_before_refine": int(before.sum()),
        "valid_after_refine_reported": int(last["valid"].sum()),
        "valid_recomputed_default": int(valid_default.sum()),
        "valid_recomputed_min_distance_0": int(valid_cn_only.sum()),
        "valid_fraction_default": float(valid_default.mean()),
        "valid_fraction_min_distance_0": float(valid_cn_only.mean()),
    }
    return report, {"table": table, "refined": last}


def _baseline_worker(reps: list, cif: str, workdir: str) -> tuple[float, int]:
    """pyxtal LEGO ``optimize_reps`` (local) on ``reps``; (seconds, number valid)."""
    import scipy.special

    if not hasattr(scipy.special, "sph_harm"):  # same shim as tests/descriptor_reference.py
        scipy.special.sph_harm = lambda m, l, phi, theta: scipy.special.sph_harm_y(l, m, theta, phi)
    from pyxtal.lego.builder import builder

    os.chdir(workdir)
    b = builder(["C"], [1], db_file=os.path.join(workdir, "lego.db"),
                log_file=os.path.join(workdir, "lego.log"))
    b.set_descriptor_calculator(mykwargs={"nmax": 2, "lmax": 4, "rcut": 2.0, "alpha": 1.5})
    b.set_reference_enviroments(cif)
    b.set_criteria(CN={"C": [3]})
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        valid = b.optimize_reps(reps, ncpu=1, opt_type="local", add_db=False)
    return time.perf_counter() - t0, len(valid)


def tabular_rep(table, i: int) -> list[float]:
    """pyxtal's tabular representation of row ``i`` (angles in radians, -1 padding)."""
    spg, cell, wps, xyz = table["spg"][i], table["cell"][i], table["wps"][i], table["xyz"][i]
    rep = [float(spg), *cell[:3], *np.radians(cell[3:])]
    for w, x in zip(wps, xyz):
        rep += [float(w), *x] if w >= 0 else [-1.0] * 4
    return rep


def part_baseline(n_rows: int, ours: dict | None) -> dict:
    from pymatgen.core import Lattice, Structure

    table, _ = load_candidates()
    pick = np.unique(np.linspace(0, len(table) - 1, n_rows).round().astype(int))
    reps = [tabular_rep(table, int(i)) for i in pick]
    with tempfile.TemporaryDirectory() as tmp:
        cif = os.path.join(tmp, "graphite.cif")
        Structure.from_spacegroup(194, Lattice.hexagonal(2.46, 6.70), ["C", "C"],
                                  [[0, 0, 0.25], [1 / 3, 2 / 3, 0.25]]).to(filename=cif)
        load = os.getloadavg()
        with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
            seconds, n_valid = pool.submit(_baseline_worker, reps, cif, tmp).result()
    report = {"rows": [int(table["id"][i]) for i in pick], "n": len(pick), "seconds": seconds,
              "s_per_structure": seconds / len(pick), "valid": n_valid,
              "valid_fraction": n_valid / len(pick), "load_at_start": load,
              "load_at_end": os.getloadavg()}
    if ours is not None:
        wall = ours["median_wall_s"]
        per = wall / ours["decodable"]
        report["ours_s_per_structure_2proc_wall"] = per
        report["ours_s_per_structure_1core"] = 2 * per
        report["ratio_per_structure_wall"] = report["s_per_structure"] / per
        report["ratio_per_core"] = report["s_per_structure"] / (2 * per)
    return report


def part_candidates_subset(extra: dict, rows: list[int]) -> dict:
    """Our valid count on the baseline's rows (from the candidates run)."""
    ids = np.asarray(extra["table"]["id"])
    idx = [int(np.flatnonzero(ids == r)[0]) for r in rows]
    return {"ours_valid_on_baseline_rows": int(extra["refined"]["valid"][idx].sum())}


def part_scaling(sizes: list[int], seed: int, base: int, batch_atoms: int,
                 max_steps: int | None) -> dict:
    """Perturbed copies of ``base`` decodable rows (spread over the layout order, so every
    size has the same mix of layouts) refined at each size with a batch budget of
    ``batch_atoms`` atoms."""
    from hpcxtal.crystal.freevars import row_layout

    table, _ = load_candidates()
    order = table.layout_order()
    pick = order[np.linspace(0, len(order) - 1, min(base, len(order))).round().astype(int)]
    base_rows = table.take(np.sort(pick))
    out = []
    for n in sizes:
        rows = copies(base_rows, n, seed)
        cfg = {"threads": 1, "max_batch_atoms": batch_atoms}
        if max_steps:
            cfg["max_steps"] = max_steps
        res = refine_parallel(rows, 2, cfg)
        s = summary(res)
        s["atoms"] = int(sum(row_layout(int(g), w).n_atoms for g, w in zip(rows["spg"], rows["wps"])))
        out.append(s)
        print(f"scaling {n}: {s['wall_s']:.1f} s, valid {s['valid']}, rss {s['maxrss_MB']}, "
              f"load {s['load_at_start'][0]:.1f}", flush=True)
    return {"seed": seed, "base_rows": len(base_rows), "max_batch_atoms": batch_atoms,
            "max_steps": max_steps, "sizes": out}


def part_sacada(seed: int) -> dict:
    from pymatgen.analysis.structure_matcher import StructureMatcher

    from hpcxtal.crystal.row import to_structure
    from hpcxtal.data import SACADA_PATH
    from hpcxtal.store.hdf5 import read_table

    table, _ = read_table(SACADA_PATH)
    rng = np.random.default_rng(seed)
    moved = perturb(table, rng, angle=0.05, first_id=20_000_000)
    valid_orig, valid_moved = validity(table), validity(moved)
    res = refine_parallel(moved, 2, {"threads": 1})
    refined = with_rows(moved, res["cell"], res["xyz"])
    sm = StructureMatcher(ltol=0.2, stol=0.3, angle_tol=5)
    match_moved = np.array([sm.fit(to_structure(table.row(i)), to_structure(moved.row(i)))
                            for i in range(len(table))])
    match = np.array([sm.fit(to_structure(table.row(i)), to_structure(refined.row(i)))
                      for i in range(len(table))])
    s = summary(res)
    s.update(seed=seed, valid_original=int(valid_orig.sum()), valid_perturbed=int(valid_moved.sum()),
             valid_refined=int(res["valid"].sum()),
             valid_refined_of_originally_valid=int((res["valid"] & valid_orig).sum()),
             matches_original_before_refine=int(match_moved.sum()), matches_original=int(match.sum()),
             matches_and_valid=int((match & res["valid"]).sum()),
             recovered_fraction=float(res["valid"].mean()), match_fraction=float(match.mean()))
    print(f"sacada: valid {s['valid_refined']}/{len(table)}, match {s['matches_original']}", flush=True)
    return s


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parts", default="candidates,baseline,scaling,sacada,float32")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--baseline-rows", type=int, default=6)
    p.add_argument("--sizes", default="1000,3000,10000")
    p.add_argument("--scaling-base", type=int, default=951, help="distinct rows the copies cycle through")
    p.add_argument("--scaling-batch-atoms", type=int, default=60000, help="RefineConfig.max_batch_atoms")
    p.add_argument("--scaling-max-steps", type=int, default=None,
                   help="RefineConfig.max_steps for the scaling part (default: the config default)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--json", help="write the results here")
    args = p.parse_args()
    parts = args.parts.split(",")
    import torch

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip()
    report: dict = {"machine": f"{platform.machine()}, {os.cpu_count()} cores (shared with other "
                               f"jobs), torch {torch.__version__}, 2 processes x 1 torch thread",
                    "commit": commit, "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
                    "load_before": os.getloadavg()}

    def save() -> None:
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(report, indent=1, default=float))

    extra = None
    if "candidates" in parts:
        report["candidates"], extra = part_candidates(args.runs, "float64")
        save()
    if "baseline" in parts:
        report["baseline"] = part_baseline(args.baseline_rows, report.get("candidates"))
        if extra is not None:
            report["baseline"].update(part_candidates_subset(extra, report["baseline"]["rows"]))
        print(f"baseline: {report['baseline']['s_per_structure']:.1f} s/structure, valid "
              f"{report['baseline']['valid']}/{report['baseline']['n']}", flush=True)
        save()
    if "sacada" in parts:
        report["sacada"] = part_sacada(args.seed)
        save()
    if "scaling" in parts:
        report["scaling"] = part_scaling([int(s) for s in args.sizes.split(",")], args.seed,
                                         args.scaling_base, args.scaling_batch_atoms,
                                         args.scaling_max_steps)
        save()
    if "float32" in parts:
        report["float32"], _ = part_candidates(1, "float32")
        save()
    report["load_after"] = os.getloadavg()
    save()
    print(json.dumps({k: v for k, v in report.items() if k in ("candidates", "baseline")},
                     indent=1, default=float)[:4000])


if __name__ == "__main__":
    main()

"""Benchmark commands: the reference tasks, each run from a config file."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from hpcxtal.cli.common import command, group


def cmd_dm_reconstruction(args: argparse.Namespace) -> int:
    """Recover known structures from their distance matrix.

    For known structures (bundled SACADA carbon rows, or binary and ternary prototypes
    with source: prototypes), given space group, Wyckoff layout with each site's element
    and a target distance matrix (exact or noisy), refine random starts on the
    element-resolved distance_matrix objective and compare with random search (pyxtal
    crystals ranked by distance-matrix RMSE, same number of evaluations): match rate
    (StructureMatcher), RMSD, DM RMSE, distance-map overlap, time. Example configs:
    examples/dm_reconstruction.yaml (carbon), examples/dm_prototypes.yaml.
    """
    from hpcxtal.bench.dm_reconstruction import load_config, run

    cfg = load_config(args.config)
    result = run(cfg)
    print(format_summary(result["summary"]))
    if args.output is not None:
        args.output.write_text(json.dumps(result, indent=1))
    return 0


def format_summary(summary: dict) -> str:
    """One line per noise level and method."""
    lines = ["noise_A  method  structures  match_rate  mean_rmsd  dm_rmse_A  overlap  "
             "median_s  median_evals"]
    for sigma, per in summary.items():
        for method, s in per.items():
            rmsd = "-" if s["mean_rmsd"] is None else f"{s['mean_rmsd']:.3f}"
            lines.append(f"{sigma:>7}  {method:6}  {s['structures']:10d}  {s['match_rate']:10.2f}  "
                         f"{rmsd:>9}  {s['mean_dm_rmse_A']:9.3f}  {s['mean_dm_overlap']:7.2f}  "
                         f"{s['median_seconds']:8.2f}  {s['median_evaluations']:12.0f}")
    return "\n".join(lines)


def cmd_perovskite(args: argparse.Namespace) -> int:
    """Design ABX3 perovskites in Pm-3m against a TPE baseline.

    Element choice as a variable (per-site softmax over the allowed A, B and X elements,
    charge-neutral by construction, annealed to one-hot) minimises the probability of a
    tolerance factor outside t_range for n_samples samples; each chosen composition's
    lattice is refined on the CHGNet energy. TPE (optuna) searches (A, B, X) with as
    many energy evaluations. Targets: formation energy below e_form_max_eV (elemental
    references), tolerance factor in t_range, charge neutrality, perovskite fidelity.
    Needs optuna (pip install 'hpcxtal[bench]'). Example config: examples/perovskite.yaml.
    """
    from hpcxtal.bench.perovskite import load_config, run

    try:
        import optuna  # noqa: F401
    except ImportError:
        raise ValueError("the TPE baseline needs optuna; pip install 'hpcxtal[bench]'") \
            from None
    result = run(load_config(args.config))
    lines = ["method  samples  success_rate  distinct_successes  distinct_compositions  "
             "neutral_rate  energy_evals  seconds"]
    for method, s in result["summary"].items():
        lines.append(f"{method:6}  {s['samples']:7d}  {s['success_rate']:12.3f}  "
                     f"{s['distinct_successes']:18d}  {s['distinct_compositions']:21d}  "
                     f"{s['neutral_rate']:12.2f}  {s['energy_evaluations']:12d}  "
                     f"{s['seconds']:7.1f}")
    print("\n".join(lines))
    if args.output is not None:
        args.output.write_text(json.dumps(result, indent=1))
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """The benchmark commands' parsers."""
    tasks = group(sub, "benchmark", "Reference tasks with their baselines (config files)",
                  "Run a reference task from a YAML config and print its figures beside its "
                  "baseline's, measured in the same run.", dest="task")
    q = command(tasks, "dm-reconstruction", cmd_dm_reconstruction)
    q.add_argument("config", type=Path, help="benchmark config (YAML)")
    q.add_argument("-o", "--output", type=Path, help="write every record and the summary as JSON")
    q = command(tasks, "perovskite", cmd_perovskite)
    q.add_argument("config", type=Path, help="benchmark config (YAML)")
    q.add_argument("-o", "--output", type=Path, help="write every record and the summary as JSON")

"""File commands: training data and models, databases, reports, exports and checks."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from hpcxtal import cli_args as num
from hpcxtal.cli.common import UsageError, command, open_campaign

log = logging.getLogger("hpcxtal")


def cmd_prepare(args: argparse.Namespace) -> int:
    """Augment known crystals into a generator training table.

    Describe every crystal in its subgroups (translationengleiche and klassengleiche,
    pyxtal) and with other generator choices per Wyckoff site; keep rows that decode back to
    the same crystal (at most 500 atoms, 8 sites, lengths < 50 Å, angles 30-150 degrees).
    Parallel over crystals; deterministic for a seed.
    """
    import dataclasses

    from hpcxtal.data import resolve_input
    from hpcxtal.generate.augment import SIZES, prepare

    cfg = dataclasses.replace(SIZES[args.size], seed=args.seed)
    if args.max_reps is not None:
        cfg = dataclasses.replace(cfg, max_reps=args.max_reps)
    if args.choices is not None:
        cfg = dataclasses.replace(cfg, n_choices=args.choices)
    prepare(resolve_input(args.source), args.output, cfg, args.workers)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """Train a generator (cvae, vae, diffusion or gan) on a training table.

    --model cvae: the conditional VAE (the shipped default's kind); vae: the unconditional
    VAE baseline; diffusion: symmetry-aware tabular diffusion on the free lattice
    parameters and coordinates, conditioned on space group and Wyckoff sites; gan: a
    conditional WGAN-GP on the same free columns. --discrete (cvae, vae, gan): LEGO-xtal's
    binned representation, each fractional coordinate one of BINS equal bins (default
    100) as a category, cell parameters continuous. A checkpoint
    MODEL.pt.ckpt is written every epoch; running again resumes from it. The model file
    records kind, config, seed and the data checksum; 'hpcxtal sample --model' and a
    campaign's sample.model take any kind.
    """
    from hpcxtal.config import ConfigError
    from hpcxtal.generate.cvae import ModelConfig
    from hpcxtal.generate.diffusion import DiffusionConfig
    from hpcxtal.generate.gan import GANConfig
    from hpcxtal.generate.plugin import KINDS
    from hpcxtal.generate.train import TrainConfig, train

    kind = KINDS[args.model]
    bins = args.discrete or 0
    try:
        if args.model == "diffusion":
            if bins:
                raise ValueError("--discrete: the diffusion model has no binned representation "
                                 "(cvae, vae and gan have)")
            model = DiffusionConfig(hidden=args.hidden)
        elif args.model == "gan":
            model = GANConfig(hidden=args.hidden, latent_dim=args.latent, n_bins=bins)
        else:
            model = ModelConfig(conditional=args.model == "cvae", n_components=args.components,
                                latent_dim=args.latent, hidden=args.hidden, n_bins=bins)
        cfg = TrainConfig(model=model, epochs=args.epochs or kind.epochs,
                          batch_size=args.batch_size or kind.batch_size,
                          learning_rate=args.lr or kind.learning_rate, seed=args.seed,
                          threads=args.threads)
    except ValueError as err:
        raise UsageError(str(err)) from None
    try:
        train(args.source, args.output, cfg, restart=args.restart, stop_after=args.stop_after)
    except ValueError as err:  # checkpoint of another config
        raise ConfigError(str(err)) from None
    return 0


def _export(table, fmt: str, dest: Path, symprec: float | None = None) -> None:
    """Export ``table`` (CIFs symmetrised at ``symprec`` Å if given); structure formats
    leave out rows whose stored structure is empty (rows a stage did not relax), and say
    how many."""
    import numpy as np

    from hpcxtal.store.formats import export_table

    if fmt != "csv" and table.structures is not None:
        empty = table.structures.natoms == 0
        if empty.any():
            log.info("%d rows have no stored structure (not relaxed); left out", int(empty.sum()))
            table = table.take(np.flatnonzero(~empty))
    dest = export_table(table, fmt, dest, symprec)
    log.info("wrote %d rows as %s to %s", len(table), fmt, dest)


def _merge_symprec(path: Path) -> float | None:
    """The spglib tolerance a database was merged with (None if ``path`` is no database)."""
    from hpcxtal.merge.database import MergeConfig
    from hpcxtal.store.hdf5 import file_summary

    attrs = file_summary(path)["attrs"]
    if attrs.get("kind") != "database":
        return None
    return float(attrs.get("symprec_A", MergeConfig().symprec_A))


def cmd_export(args: argparse.Namespace) -> int:
    """Export a table to CSV, CIF, extxyz or an ASE db.

    Export rows (or the stored structures, where the file has them) to the published CSV
    layout, a folder of CIF files named by id, one extxyz file, or an ASE SQLite database.
    """
    from hpcxtal.store.hdf5 import read_table

    table, _ = read_table(args.file)
    _export(table, args.format, args.output, _merge_symprec(args.file))
    return 0


def _database_path(source: Path) -> Path:
    from hpcxtal.layout import database_output

    campaign = open_campaign(source)
    return database_output(campaign.root) if campaign is not None else source


def cmd_db(args: argparse.Namespace) -> int:
    """Query a database: top N, energy window, symmetry, size.

    Print the rows of a database that pass every filter, in rank order (lowest energy above
    graphite first); with -f and -o, export their relaxed structures instead.
    """
    from hpcxtal.merge.database import query, read_database

    if (args.format is None) != (args.output is None):
        raise UsageError("export needs both -f FORMAT and -o DEST")
    path = _database_path(args.file)
    table, _ = read_database(path)
    idx = query(table, args.top or None, args.max_e_rel, args.spg, args.dimension,
                args.min_atoms, args.max_atoms, args.unique_only, args.row_class)
    if args.format:
        _export(table.take(idx), args.format, args.output, _merge_symprec(path))
        return 0
    natoms = table.structures.natoms
    print(f"{'rank':>5} {'id':>8} {'e_rel':>8} {'spg':>4} {'relax':>5} {'atoms':>5} {'dim':>3} "
          f"{'topology':16s} {'dup_of':>8} {'flags':9s} {'class':15s} {'status':13s} why")
    for i in idx:
        flags = "".join(c if table[k][i] else "." for c, k in
                        (("U", "unique"), ("L", "low_energy"), ("C", "cubic"), ("T", "in_training")))
        print(f"{i + 1:5d} {int(table['id'][i]):8d} {table['e_rel'][i]:8.4f} "
              f"{int(table['spg'][i]):4d} {int(table['spg_relaxed'][i]):5d} {int(natoms[i]):5d} "
              f"{int(table['dimension_relaxed'][i]):3d} {table['topology_relaxed'][i] or '-':16s} "
              f"{int(table['duplicate_of'][i]):8d} {flags:9s} {table['class'][i]:15s} "
              f"{table['status'][i]:13s} {table['class_reason'][i]}")
    log.info("%d of %d rows (flags: U unique, L low energy, C cubic, T in training set)",
             len(idx), len(table))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """Metrics, accounting, plots and an HTML page.

    From a database: N_sampled, N_valid_xtal, N_valid_env, N_unique, N_train, N_low_E (and
    cubic) before and after the post-relax checks, N_new, known phases re-found, per round
    and cumulative; the accounting of every sampled row (exit status 1 if it does not
    close); PNG plots, metrics.json and a self-contained report.html.
    """
    campaign = open_campaign(args.source)
    if campaign is not None:
        return report_campaign(campaign, args.output, args.top)
    return _print_report(args.source, args.output or args.source.with_name(args.source.stem + "-report"),
                         None, args.top)


def report_campaign(campaign, output: Path | None = None, top: int = 20) -> int:
    """Write a campaign's report (DIR/report) from its database and pool."""
    from hpcxtal.layout import database_output
    from hpcxtal.store.hdf5 import file_summary

    pool = file_summary(campaign.pool_path)
    n_sampled = int(pool["attrs"]["n_rows"]) + pool["n_quarantined"]
    return _print_report(database_output(campaign.root), output or campaign.root / "report",
                         n_sampled, top)


def _print_report(db: Path, out: Path, n_sampled: int | None, top: int) -> int:
    from hpcxtal.report import CLASSES, HEADLINE, METRICS, write_report

    report = write_report(db, out, n_sampled, top)
    m, books = report.metrics, report.accounting
    print(f"N_sampled {m['N_sampled']}; before -> after the post-relax checks: " + ", ".join(
        f"{k} {m['before'][k]} -> {m['after'][k]}" for k in HEADLINE)
        + f"; N_new {m['N_new']}, N_new_low_E {m['N_new_low_E']}")
    for phase in m["known_phases"]:
        print(f"  known phase re-found: {phase['phase']} ({phase['rows']} rows, best id "
              f"{phase['id']}, e_rel {phase['e_rel']:.4f} eV/atom)")
    t = m["tiers"]
    if t["rescored"]:
        print(f"tiers: {t['rescored']} rows rescored ({t['converged']} converged), "
              f"{t['moved_in']} moved into and {t['moved_out']} out of the window; N_low_E "
              f"by the screen {t['N_low_E_screen']}, by the rescore {t['N_low_E_rescore']}, "
              f"best tier {t['N_low_E_best']}")
    for r in m["per_round"]:
        print(f"  round {r['round']}: " + ", ".join(
            f"{k} {r[k]} (cumulative {r['cumulative'][k]})" for k in METRICS))
    print("accounting: " + " + ".join(f"{books.counts[c]} {c}" for c in CLASSES)
          + f" = {books.total} of {books.n_sampled} sampled")
    print(f"report: {report.html}")
    if not books.closes:
        print(f"hpcxtal report: error: the accounting does not close: "
              f"{'; '.join(books.problems)}", file=sys.stderr)
        return 1
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    """Rows, columns, attributes and verification of a file.

    Describe an hpcxtal HDF5 file and verify it (row count and checksum); exit status 1 if
    it does not verify.
    """
    from hpcxtal.store.hdf5 import StoreError, file_summary, verify_file

    problem = verify_file(args.file)
    try:
        summary = file_summary(args.file)
    except StoreError:
        summary = {"attrs": {}, "columns": {}, "n_quarantined": 0}
    if args.json:
        out = {"file": str(args.file), "verifies": problem is None, "problem": problem,
               "attrs": summary["attrs"], "n_quarantined": summary["n_quarantined"],
               "columns": {k: {"shape": list(v[0]), "dtype": v[1]} for k, v in summary["columns"].items()}}
        print(json.dumps(out, indent=2, default=str))
    elif not summary["attrs"]:
        print(f"verifies: NO ({problem})")
    else:
        attrs = summary["attrs"]
        print(f"{args.file}: {attrs.get('kind', '?')} table, {attrs.get('n_rows', '?')} rows, "
              f"{summary['n_quarantined']} quarantined")
        print("columns:")
        for name, (shape, dtype) in summary["columns"].items():
            print(f"  {name:28s} {dtype:10s} {shape}")
        print("attributes:")
        for key, value in attrs.items():
            print(f"  {key}: {value}")
        print("verifies: yes" if problem is None else f"verifies: NO ({problem})")
    return 0 if problem is None else 1



def add_parsers(sub: argparse._SubParsersAction) -> None:
    """The files commands' parsers."""
    p = command(sub, "prepare", cmd_prepare)
    p.add_argument("source", nargs="?", default="sacada",
                   help="hpcxtal .h5 table of known crystals (default: the bundled SACADA set)")
    p.add_argument("-o", "--output", required=True, type=Path, help="training table to write")
    p.add_argument("--size", default="tiny", choices=["tiny", "small", "full"],
                   help="preset: subgroup descriptions and generator choices per crystal "
                        "(default tiny; full: ~21k rows from SACADA, ~12 min on 2 cores)")
    p.add_argument("--max-reps", type=num.positive_int, metavar="N", help="subgroup descriptions per crystal")
    p.add_argument("--choices", type=num.positive_int, metavar="N", help="generator choices per description")
    p.add_argument("--seed", type=num.seed, default=0, help="random seed (default 0)")
    p.add_argument("--workers", type=num.positive_int, help="processes (default: one per core)")

    from hpcxtal.generate.plugin import KINDS

    p = command(sub, "train", cmd_train)
    p.add_argument("source", type=Path, help="training table (from 'hpcxtal prepare')")
    p.add_argument("-o", "--output", required=True, type=Path, help="model file to write (.pt)")
    p.add_argument("--model", choices=list(KINDS), default="cvae",
                   help="generator kind (default cvae; vae: unconditional baseline; diffusion; gan)")
    p.add_argument("--discrete", type=num.positive_int, nargs="?", const=100, metavar="BINS",
                   help="cvae, vae, gan: binned coordinates as LEGO-xtal's discrete models, "
                        "BINS equal bins per fractional coordinate (default 100)")
    p.add_argument("--epochs", type=num.positive_int,
                   help="epochs (default: cvae/vae 20, published 250; diffusion 200; gan 100)")
    p.add_argument("--batch-size", type=num.positive_int,
                   help="batch size (default: cvae/vae 2048; diffusion and gan 256)")
    p.add_argument("--hidden", type=num.positive_int, default=256,
                   help="hidden width (default 256; cvae/vae/gan 2 layers, published 1024; "
                        "diffusion 3 layers)")
    p.add_argument("--latent", type=num.positive_int, default=32,
                   help="latent dimension of cvae/vae/gan (default 32; diffusion: its 30 values)")
    p.add_argument("--components", type=num.positive_int, default=10,
                   help="GMM components per column of cvae/vae (default 10)")
    p.add_argument("--lr", type=num.positive_float,
                   help="Adam learning rate (default: 1e-3; gan 1e-4)")
    p.add_argument("--seed", type=num.seed, default=0, help="random seed (default 0)")
    p.add_argument("--threads", type=num.nonnegative_int, default=0, help="torch CPU threads (default: torch's)")
    p.add_argument("--restart", action="store_true", help="ignore an existing checkpoint")
    p.add_argument("--stop-after", type=num.positive_int, metavar="N",
                   help="stop after N epochs in this call (short walltimes); run again to continue")

    p = command(sub, "db", cmd_db)
    p.add_argument("file", type=Path, help="database (.h5) from 'hpcxtal merge', or a campaign "
                   "directory")
    p.add_argument("--top", type=num.nonnegative_int, default=20, metavar="N", help="at most N rows (default 20; "
                   "0 = all)")
    p.add_argument("--max-e-rel", type=num.finite_float, metavar="EV", help="at most EV eV/atom above graphite")
    p.add_argument("--spg", type=num.space_group, help="space group of the relaxed structure")
    p.add_argument("--dimension", type=int, choices=[0, 1, 2, 3],
                   help="periodicity of the relaxed net")
    p.add_argument("--class", dest="row_class", metavar="CLASS",
                   choices=["new", "known", "motif_lost", "low_dimensional", "duplicate",
                            "invalid", "failed"],
                   help="only rows of this class (new, known, motif_lost, low_dimensional, "
                        "duplicate, invalid, failed)")
    p.add_argument("--min-atoms", type=num.nonnegative_int, metavar="N", help="at least N atoms in the relaxed cell")
    p.add_argument("--max-atoms", type=num.nonnegative_int, metavar="N", help="at most N atoms in the relaxed cell")
    p.add_argument("--unique-only", action="store_true",
                   help="only unique structures (own representative, 3-D, motif kept after "
                        "relaxation: class new and known 3-D nets)")
    p.add_argument("-f", "--format", choices=["csv", "cif", "extxyz", "ase"],
                   help="export the selection in this format (with -o)")
    p.add_argument("-o", "--output", type=Path, help="export destination (with -f)")

    p = command(sub, "report", cmd_report)
    p.add_argument("source", type=Path, help="campaign directory or database (.h5)")
    p.add_argument("-o", "--output", type=Path,
                   help="folder for the report (default: DIR/report, or beside the database)")
    p.add_argument("--top", type=num.nonnegative_int, default=25, metavar="N", help="structures listed (default 25)")

    p = command(sub, "export", cmd_export)
    p.add_argument("file", type=Path, help="hpcxtal .h5 table")
    p.add_argument("-f", "--format", required=True, choices=["csv", "cif", "extxyz", "ase"])
    p.add_argument("-o", "--output", required=True, type=Path, help="destination file or folder")

    p = command(sub, "info", cmd_info)
    p.add_argument("file", type=Path)
    p.add_argument("--json", action="store_true", help="machine-readable output")

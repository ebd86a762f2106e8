"""The ``hpcxtal`` command: one subcommand per stage plus campaign and file tools.

Every stage runs on explicit files (``hpcxtal STAGE IN -o OUT``) or on a campaign
directory (``hpcxtal STAGE DIR``), where paths come from the campaign and the stage
is recorded in its manifest. Errors in input, config or files print one line and
exit with status 2 (1 for ``info`` on a file that does not verify).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from hpcxtal import __version__

log = logging.getLogger("hpcxtal")


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv: debug)")
    p.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hpcxtal",
        description="Find crystal structures with a chosen local environment, at cluster "
                    "scale. Stages read and write HDF5 tables; see 'hpcxtal COMMAND --help'.",
    )
    parser.add_argument("--version", action="version", version=f"hpcxtal {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("init", help="create a campaign directory with a validated config",
                       description="Create a campaign directory: campaign.yaml (edit it, or "
                                   "start from --config) and an empty manifest of stages.")
    p.add_argument("dir", type=Path, help="campaign directory to create")
    p.add_argument("--config", type=Path, help="start from this campaign YAML instead of defaults")
    p.add_argument("--name", help="campaign name (default: the directory name)")
    p.add_argument("--input", dest="inputs", action="append", metavar="SRC",
                   help="input for the import stage (repeatable; default: the bundled "
                        "SACADA set, 'sacada')")
    p.add_argument("--sample", type=int, metavar="N",
                   help="sample N candidates from the shipped generator instead of importing "
                        "(sets the config's 'sample' section)")
    p.add_argument("--shards", type=int, help="number of shards for parallel stages")
    p.add_argument("--seed", type=int, help="campaign random seed")
    _add_common(p)

    p = sub.add_parser("import", help="import crystals into a pool (HDF5)",
                       description="Import published tabular CSV (angles in radians), CIF, "
                                   "extxyz, ASE db or hpcxtal .h5 files into one pool. Rows that "
                                   "cannot be decoded are kept in the pool's quarantine with "
                                   "the reason. With a campaign DIR and no -o, imports the "
                                   "campaign's configured inputs into DIR/pool.h5.")
    p.add_argument("sources", nargs="+", metavar="SRC",
                   help="input files ('sacada' = bundled set), or one campaign directory")
    p.add_argument("-o", "--output", type=Path, help="pool file to write")
    p.add_argument("--snap-tolerance", type=float, metavar="A",
                   help="quarantine CSV rows whose sites sit more than A Å from their Wyckoff "
                        "position (default: snap any distance)")
    p.add_argument("--symmetry-tolerance", type=float, default=0.01, metavar="A",
                   help="symmetry-finding tolerance for structure files (default 0.01 Å)")
    p.add_argument("--force", action="store_true", help="redo a campaign stage that is complete")
    _add_common(p)

    p = sub.add_parser("prepare", help="augment known crystals into a generator training table",
                       description="Describe every crystal in its subgroups (translationengleiche "
                                   "and klassengleiche, pyxtal) and with other generator choices "
                                   "per Wyckoff site; keep rows that decode back to the same "
                                   "crystal (at most 500 atoms, 8 sites, lengths < 50 Å, angles "
                                   "30-150 degrees). Parallel over crystals; deterministic for "
                                   "a seed.")
    p.add_argument("source", nargs="?", default="sacada",
                   help="hpcxtal .h5 table of known crystals (default: the bundled SACADA set)")
    p.add_argument("-o", "--output", required=True, type=Path, help="training table to write")
    p.add_argument("--size", default="tiny", choices=["tiny", "small", "full"],
                   help="preset: subgroup descriptions and generator choices per crystal "
                        "(default tiny; full: ~21k rows from SACADA, ~12 min on 2 cores)")
    p.add_argument("--max-reps", type=int, metavar="N", help="subgroup descriptions per crystal")
    p.add_argument("--choices", type=int, metavar="N", help="generator choices per description")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--workers", type=int, help="processes (default: one per core)")
    _add_common(p)

    p = sub.add_parser("train", help="train the generator (CVAE or unconditional VAE)",
                       description="Train a conditional VAE (or with --unconditional the VAE "
                                   "baseline) on a training table. A checkpoint MODEL.pt.ckpt is "
                                   "written every epoch; running again resumes from it. The "
                                   "model file records config, seed and the data checksum.")
    p.add_argument("source", type=Path, help="training table (from 'hpcxtal prepare')")
    p.add_argument("-o", "--output", required=True, type=Path, help="model file to write (.pt)")
    p.add_argument("--epochs", type=int, default=20, help="epochs (default 20; published 250)")
    p.add_argument("--batch-size", type=int, default=2048, help="batch size (default 2048)")
    p.add_argument("--hidden", type=int, default=256,
                   help="hidden width, 2 layers (default 256; published 1024)")
    p.add_argument("--latent", type=int, default=32, help="latent dimension (default 32)")
    p.add_argument("--components", type=int, default=10, help="GMM components per column (default 10)")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 1e-3)")
    p.add_argument("--unconditional", action="store_true", help="train the unconditional VAE baseline")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's)")
    p.add_argument("--restart", action="store_true", help="ignore an existing checkpoint")
    p.add_argument("--stop-after", type=int, metavar="N",
                   help="stop after N epochs in this call (short walltimes); run again to continue")
    _add_common(p)

    p = sub.add_parser("sample", help="sample a candidate pool from a trained generator",
                       description="Draw N conditions (training set and/or the learned condition "
                                   "model), latent vectors and mixture components; decode rows. "
                                   "Rows that do not decode go to the pool's quarantine with the "
                                   "reason. With a campaign DIR, uses its 'sample' section and "
                                   "writes DIR/pool.h5.")
    p.add_argument("dir", nargs="?", type=Path, help="campaign directory (instead of -o)")
    p.add_argument("-n", type=int, help="number of candidates")
    p.add_argument("-o", "--output", type=Path, help="pool file to write")
    p.add_argument("--model", default="default",
                   help="model file, or 'default' for the model shipped with hpcxtal")
    p.add_argument("--conditions", default="mix", choices=["train", "learned", "mix"],
                   help="where conditions come from (default mix: half each)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--force", action="store_true", help="redo a campaign stage that is complete")
    _add_common(p)

    p = sub.add_parser("shard", help="cut a pool into cost-balanced shard files",
                       description="Sort rows by space group and Wyckoff layout and cut them "
                                   "into K shards of near-equal estimated cost (atoms x free "
                                   "variables), one file each.")
    p.add_argument("source", type=Path, help="pool file, or a campaign directory")
    p.add_argument("-o", "--output", type=Path, help="directory for shard-NNNN.h5 files")
    p.add_argument("-k", "--shards", type=int, help="number of shards (campaign: from its config)")
    p.add_argument("--force", action="store_true", help="redo a campaign stage that is complete")
    _add_common(p)

    p = sub.add_parser("refine", help="pull candidates toward the target environment (Algorithm 1)",
                       description="Representation-space refinement: batched gradient descent "
                                   "of each row's free variables so every Wyckoff site's SO(3) "
                                   "spectrum approaches the target's (default graphite), with "
                                   "per-sample clipping, plateau step control and perturbed "
                                   "restarts. Writes every row with loss, valid (CN), steps, "
                                   "round and refine_status.")
    p.add_argument("source", type=Path, help="pool or shard file, or a campaign directory")
    p.add_argument("-o", "--output", type=Path, help="refined file to write (file mode)")
    p.add_argument("--shard", type=int, help="campaign: refine only this shard")
    p.add_argument("--steps", type=int, help="step cap per row (file mode; default 1000)")
    p.add_argument("--dtype", choices=["float64", "float32"], help="precision (file mode)")
    p.add_argument("--device", help="torch device, e.g. cpu or cuda:0 (file mode; default auto)")
    p.add_argument("--threads", type=int, help="torch CPU threads (file mode)")
    p.add_argument("--force", action="store_true", help="redo outputs that are complete")
    _add_common(p)

    p = sub.add_parser("rounds", help="later refinement rounds over all shards' invalid rows",
                       description="Rounds 2..n_rounds (campaign config, section rounds): gather "
                                   "the rows still invalid after round 1 from every shard, "
                                   "rebalance them by cost over the processes (MPI ranks under "
                                   "mpiexec or srun), refine them again from perturbed starts, "
                                   "and write each shard's final rows to DIR/rounds/. Finished "
                                   "rounds are kept, so an interrupted run resumes.")
    p.add_argument("dir", type=Path, help="campaign directory")
    p.add_argument("--force", action="store_true", help="redo rounds that are complete")
    _add_common(p)

    p = sub.add_parser("topology", help="net signature, dimensionality and first de-duplication",
                       description="Build the periodic C-C bond graph of every row (stored "
                                   "structure, else the expanded row; only CN-valid rows of a "
                                   "refined file), its dimensionality "
                                   "(0-3 periodic) and a cell-independent topology key "
                                   "(coordination sequences + shortest-ring counts), and mark "
                                   "rows sharing (key, dimensionality, atoms per primitive cell) "
                                   "as duplicates of the lowest id. Adds the columns topology, "
                                   "dimension, n_prim and duplicate_of; no row is dropped. With a "
                                   "campaign DIR: DIR/refine/refine-I.h5 -> "
                                   "DIR/topology/topology-I.h5, skipping outputs that verify.")
    p.add_argument("source", type=Path, help="table file (.h5), or a campaign directory")
    p.add_argument("-o", "--output", type=Path, help="table file to write (file mode)")
    p.add_argument("--shard", type=int, metavar="I",
                   help="campaign: only shard I (one job-array task); default all shards")
    p.add_argument("--cutoff", type=float, metavar="A",
                   help="C-C bond cutoff in Å (file mode; default 1.872)")
    p.add_argument("--depth", type=int, help="coordination-sequence depth (file mode; default 12)")
    p.add_argument("-j", "--workers", type=int, metavar="N",
                   help="worker processes (default: the config's, else all usable cores)")
    p.add_argument("--force", action="store_true", help="redo outputs that are complete")
    _add_common(p)

    p = sub.add_parser("relax", help="relax structures with an ML potential; energies vs graphite",
                       description="Relax every row (positions and cell) with batched L-BFGS "
                                   "(or FIRE) and "
                                   "a machine-learned potential (by default hpcxtal's own small "
                                   "carbon MACE model, shipped with the package; or another "
                                   "MACE model file, or CHGNet with its bundled weights), and "
                                   "add the columns energy (eV/atom), e_rel (eV/atom above "
                                   "graphite relaxed the same way), status (converged / not_converged / failed: "
                                   "reason / skipped: reason) and relax_steps. On a campaign "
                                   "DIR, relaxes the CN-valid topology representatives of "
                                   "DIR/topology/topology-I.h5 into DIR/relax/relax-I.h5 (one "
                                   "shard with --shard I, as one task of a job array); outputs "
                                   "that are current are not redone.")
    p.add_argument("source", type=Path, help="table file (.h5), or a campaign directory")
    p.add_argument("-o", "--output", type=Path, help="relaxed table to write (file mode)")
    p.add_argument("--shard", type=int, metavar="I", help="campaign: relax only shard I")
    p.add_argument("--backend", choices=["chgnet", "mace"],
                   help="energy model (file mode; default mace, campaign: from its config)")
    p.add_argument("--model", metavar="PATH|NAME",
                   help="mace: model file, hpcxtal-carbon (default) or foundation name "
                        "(mace-mp-0-small ...); chgnet: bundled version (default 0.3.0)")
    p.add_argument("--dtype", choices=["float64", "float32"], help="model precision "
                   "(default float64)")
    p.add_argument("--optimizer", choices=["lbfgs", "fire"],
                   help="batched optimiser (default lbfgs: fewest model calls)")
    p.add_argument("--fmax", type=float, metavar="EV_PER_A",
                   help="force convergence threshold in eV/Å (default 0.05)")
    p.add_argument("--max-steps", type=int, metavar="N",
                   help="step cap before size scaling (default 300, + 2 per atom)")
    p.add_argument("--force", action="store_true", help="redo campaign shards that are complete")
    _add_common(p)

    p = sub.add_parser("merge", help="merge relax outputs into one ranked database",
                       description="Merge relax outputs into ONE database ranked by energy above "
                                   "graphite: every input is verified; relaxed structures get "
                                   "their space group (spglib, 0.1 Å); converged ones are "
                                   "de-duplicated a second time (StructureMatcher stol 0.3, "
                                   "ltol 0.2, angle_tol 5, only within a topology key) and "
                                   "compared with the training structures (bundled SACADA set). "
                                   "With a campaign DIR: DIR/relax/relax-*.h5 and the pool's "
                                   "quarantine into DIR/database.h5 (skipped when current).")
    p.add_argument("sources", nargs="+", type=Path, metavar="SRC",
                   help="relax outputs (.h5), or one campaign directory")
    p.add_argument("-o", "--output", type=Path, help="database to write (file mode)")
    p.add_argument("--pool", type=Path, help="file mode: the pool the rows came from (its "
                   "quarantine enters the accounting; every pool row must be merged)")
    p.add_argument("--training", metavar="SRC", help="training structures to compare with "
                   "('sacada', an .h5 table with structures, or 'none'; file mode)")
    p.add_argument("-j", "--workers", type=int, metavar="N",
                   help="processes for the training structures' topology keys (first run only)")
    p.add_argument("--force", action="store_true", help="redo a campaign database that is current")
    _add_common(p)

    p = sub.add_parser("db", help="query a database: top N, energy window, symmetry, size",
                       description="Print the rows of a database that pass every filter, in "
                                   "rank order (lowest energy above graphite first); with -f "
                                   "and -o, export their relaxed structures instead.")
    p.add_argument("file", type=Path, help="database (.h5) from 'hpcxtal merge', or a campaign "
                   "directory")
    p.add_argument("--top", type=int, default=20, metavar="N", help="at most N rows (default 20; "
                   "0 = all)")
    p.add_argument("--max-e-rel", type=float, metavar="EV", help="at most EV eV/atom above graphite")
    p.add_argument("--spg", type=int, help="space group of the relaxed structure")
    p.add_argument("--dimension", type=int, choices=[0, 1, 2, 3], help="periodicity of the net")
    p.add_argument("--min-atoms", type=int, metavar="N", help="at least N atoms in the relaxed cell")
    p.add_argument("--max-atoms", type=int, metavar="N", help="at most N atoms in the relaxed cell")
    p.add_argument("--unique-only", action="store_true",
                   help="only unique converged structures (no duplicates, failures, skipped rows)")
    p.add_argument("-f", "--format", choices=["csv", "cif", "extxyz", "ase"],
                   help="export the selection in this format (with -o)")
    p.add_argument("-o", "--output", type=Path, help="export destination (with -f)")
    _add_common(p)

    p = sub.add_parser("report", help="metrics, accounting, plots and an HTML page",
                       description="From a database: N_sampled, N_valid_xtal, N_valid_env, "
                                   "N_unique, N_train, N_low_E (and cubic) per round and "
                                   "cumulative; the accounting of every sampled row (exit status "
                                   "1 if it does not close); PNG plots, metrics.json and a "
                                   "self-contained report.html.")
    p.add_argument("source", type=Path, help="campaign directory or database (.h5)")
    p.add_argument("-o", "--output", type=Path,
                   help="folder for the report (default: DIR/report, or beside the database)")
    p.add_argument("--top", type=int, default=25, metavar="N", help="structures listed (default 25)")
    _add_common(p)

    p = sub.add_parser("export", help="export a table to CSV, CIF, extxyz or an ASE db",
                       description="Export rows (or the stored structures, where the file has "
                                   "them) to the published CSV layout, a folder of CIF files "
                                   "named by id, one extxyz file, or an ASE SQLite database.")
    p.add_argument("file", type=Path, help="hpcxtal .h5 table")
    p.add_argument("-f", "--format", required=True, choices=["csv", "cif", "extxyz", "ase"])
    p.add_argument("-o", "--output", required=True, type=Path, help="destination file or folder")
    _add_common(p)

    p = sub.add_parser("info", help="rows, columns, attributes and verification of a file",
                       description="Describe an hpcxtal HDF5 file and verify it (row count and "
                                   "checksum); exit status 1 if it does not verify.")
    p.add_argument("file", type=Path)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    _add_common(p)

    for name, text in (("run", "run a campaign's stages with Parsl on its site"),
                       ("resume", "finish an interrupted campaign (same as run: done work is kept)")):
        p = sub.add_parser(name, help=text, description=text[0].upper() + text[1:] + ". Each stage "
                           "runs as Parsl apps on the site's executors (gpu: refinement; cpu: the "
                           "rest); stages whose output files exist and verify are skipped, so an "
                           "interrupted campaign resumes from its HDF5 files.")
        p.add_argument("dir", type=Path, help="campaign directory")
        p.add_argument("--site", help="site config name or path (default: the campaign's)")
        p.add_argument("--stage", dest="stages", action="append", metavar="STAGE",
                       help="run only this stage (repeatable)")
        _add_common(p)

    p = sub.add_parser("submit", help="submit stages to SLURM/PBS as chained job arrays",
                       description="Render batch scripts into DIR/jobs/ from the templates in "
                                   "jobs/ and submit them: per-shard stages as job arrays over "
                                   "their unfinished shards (submit again to resubmit failed "
                                   "tasks alone), whole-campaign stages as single jobs, each "
                                   "waiting for the one before (afterok).")
    p.add_argument("dir", type=Path, help="campaign directory")
    p.add_argument("--stage", dest="stages", action="append", metavar="STAGE",
                   help="stage to submit (repeatable; default: every stage)")
    p.add_argument("--site", help="site config name or path (default: the campaign's)")
    p.add_argument("--dry-run", action="store_true", help="write the scripts, submit nothing")
    _add_common(p)

    p = sub.add_parser("site", help="site configs: validate and show what would be submitted",
                       description="Site configs (site_configs/*.yaml) say where stages run.")
    site_sub = p.add_subparsers(dest="site_command", required=True, metavar="ACTION")
    q = site_sub.add_parser("check", help="validate a site config and print its job scripts",
                            description="Validate a site config (a path, or a name looked up "
                                        "in site_configs/) and print the batch script each "
                                        "executor would submit for a 4-shard array.")
    q.add_argument("site", help="site name (e.g. local, slurm_generic) or YAML path")
    _add_common(q)

    p = sub.add_parser("status", help="where a campaign stands",
                       description="Print each stage of a campaign: status, counts, and "
                                   "whether its output files exist and verify.")
    p.add_argument("dir", type=Path)
    _add_common(p)
    return parser


def _setup_logging(args: argparse.Namespace) -> None:
    level = logging.WARNING if args.quiet else (logging.DEBUG if args.verbose > 1 else logging.INFO)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s"
                        if args.verbose > 1 else "%(message)s", stream=sys.stderr)
    if args.verbose < 2:  # Parsl logs every task and block; its run_dir keeps them
        logging.getLogger("parsl").propagate = False


def cmd_init(args: argparse.Namespace) -> int:
    import dataclasses

    from hpcxtal.campaign import Campaign, CampaignConfig, SampleConfig

    if args.config:
        cfg = CampaignConfig.from_file(args.config)
    else:
        cfg = CampaignConfig(name=args.name or args.dir.resolve().name)
    if args.name:
        cfg = dataclasses.replace(cfg, name=args.name)
    if args.inputs:
        cfg = dataclasses.replace(cfg, import_=dataclasses.replace(cfg.import_, inputs=args.inputs))
    if args.sample is not None:
        if args.inputs:
            raise UsageError("give --sample or --input, not both")
        try:
            cfg = dataclasses.replace(cfg, sample=SampleConfig(n=args.sample))
        except ValueError as err:
            raise UsageError(str(err)) from None
    if args.shards is not None:
        cfg = dataclasses.replace(cfg, shard=dataclasses.replace(cfg.shard, n_shards=args.shards))
    if args.seed is not None:
        cfg = dataclasses.replace(cfg, seed=args.seed)
    campaign = Campaign.create(args.dir, cfg)
    log.info("created campaign %r in %s (id %s)", cfg.name, campaign.root, campaign.campaign_id)
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from hpcxtal.campaign import ImportConfig, find_campaign
    from hpcxtal.stages import import_campaign, import_pool

    campaign = find_campaign(args.sources[0]) if len(args.sources) == 1 and not args.output else None
    if campaign is not None and campaign.config.sample is not None:
        log.info("%s samples its pool (its config has a 'sample' section); nothing to import; "
                 "run 'hpcxtal sample %s'", campaign.root, campaign.root)
        return 0
    if campaign is not None:
        report = import_campaign(campaign, force=args.force)
    else:
        if args.output is None:
            raise UsageError("give -o POOL.h5 (or a single campaign directory)")
        cfg = ImportConfig(inputs=args.sources, snap_tolerance_A=args.snap_tolerance,
                           symmetry_tolerance_A=args.symmetry_tolerance)
        report = import_pool(args.sources, args.output, cfg)
    if report.skipped:
        log.info("%s is complete and verifies; nothing to do (--force to redo)", report.outputs[0])
        return 0
    log.info("%s: %d rows, %d quarantined", report.outputs[0], report.counts["rows"],
             report.counts["quarantined"])
    if report.counts["quarantined"]:
        _print_quarantine(report.outputs[0])
    return 0


def _print_quarantine(path: Path, limit: int = 20) -> None:
    from hpcxtal.store.hdf5 import read_table

    _, quarantine = read_table(path)
    for k in range(min(limit, len(quarantine))):
        log.info("  quarantined %s (id %d): %s", quarantine["origin"][k],
                 quarantine["id"][k], quarantine["reason"][k])
    if len(quarantine) > limit:
        log.info("  ... %d more; 'hpcxtal export' or h5py's /quarantine lists all",
                 len(quarantine) - limit)


def cmd_prepare(args: argparse.Namespace) -> int:
    import dataclasses

    from hpcxtal.data import resolve_input
    from hpcxtal.generate.augment import SIZES, prepare

    cfg = dataclasses.replace(SIZES[args.size], seed=args.seed)
    if args.max_reps is not None:
        cfg = dataclasses.replace(cfg, max_reps=args.max_reps)
    if args.choices is not None:
        cfg = dataclasses.replace(cfg, n_choices=args.choices)
    if args.workers is not None and args.workers < 1:
        raise UsageError("--workers must be at least 1")
    prepare(resolve_input(args.source), args.output, cfg, args.workers)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from hpcxtal.config import ConfigError
    from hpcxtal.generate.cvae import ModelConfig
    from hpcxtal.generate.train import TrainConfig, train

    try:
        model = ModelConfig(conditional=not args.unconditional, n_components=args.components,
                            latent_dim=args.latent, hidden=args.hidden)
        cfg = TrainConfig(model=model, epochs=args.epochs, batch_size=args.batch_size,
                          learning_rate=args.lr, seed=args.seed, threads=args.threads)
    except ValueError as err:
        raise UsageError(str(err)) from None
    try:
        train(args.source, args.output, cfg, restart=args.restart, stop_after=args.stop_after)
    except ValueError as err:  # checkpoint of another config
        raise ConfigError(str(err)) from None
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    from hpcxtal.campaign import SampleConfig, find_campaign
    from hpcxtal.stages import sample_campaign, sample_to_pool

    campaign = find_campaign(args.dir) if args.dir is not None else None
    if args.dir is not None and campaign is None:
        raise UsageError(f"{args.dir} is not a campaign directory (give -o POOL.h5 for a file)")
    if campaign is not None:
        cfg = campaign.config.sample
        if cfg is None:
            raise UsageError(f"{campaign.root / 'campaign.yaml'} has no 'sample' section "
                             f"(e.g. 'sample: {{n: 200, model: default}}')")
        if args.n is not None and args.n != cfg.n:
            raise UsageError(f"the campaign config samples {cfg.n} candidates; edit "
                             f"{campaign.root / 'campaign.yaml'} to change it")
        report = sample_campaign(campaign, force=args.force)
    else:
        if args.output is None or args.n is None:
            raise UsageError("give -n N and -o POOL.h5 (or a campaign directory)")
        try:
            cfg = SampleConfig(n=args.n, model=args.model, conditions=args.conditions)
        except ValueError as err:
            raise UsageError(str(err)) from None
        report = sample_to_pool(args.output, cfg, args.seed)
    if report.skipped:
        log.info("%s is complete and verifies; nothing to do (--force to redo)", report.outputs[0])
        return 0
    log.info("%s: %d rows, %d quarantined", report.outputs[0], report.counts["rows"],
             report.counts["quarantined"])
    return 0


def cmd_shard(args: argparse.Namespace) -> int:
    import numpy as np

    from hpcxtal.campaign import ShardConfig, find_campaign
    from hpcxtal.stages import shard_campaign, shard_pool
    from hpcxtal.store.hdf5 import file_summary

    campaign = find_campaign(args.source)
    if campaign is not None:
        if args.shards is not None and args.shards != campaign.config.shard.n_shards:
            raise UsageError(f"the campaign config sets {campaign.config.shard.n_shards} shards; "
                             f"edit {campaign.root / 'campaign.yaml'} to change it")
        report = shard_campaign(campaign, force=args.force)
    else:
        if args.output is None or args.shards is None:
            raise UsageError("give -k K and -o DIR (or a campaign directory)")
        report = shard_pool(args.source, args.output, ShardConfig(n_shards=args.shards))
    if report.skipped:
        log.info("%d shards are complete and verify; nothing to do (--force to redo)",
                 len(report.outputs))
        return 0
    costs = np.array([file_summary(p)["attrs"]["estimated_cost"] for p in report.outputs])
    log.info("%d rows into %d shards in %s; cost balance max/mean %.3f",
             report.counts["rows"], len(report.outputs), report.outputs[0].parent,
             costs.max() / costs.mean())
    return 0


def _file_mode_config(args: argparse.Namespace, default, overrides: dict):
    """The config of a per-shard stage run on explicit files: ``-o`` is required,
    ``--shard`` is not allowed, and the command-line ``overrides`` (None = not given)
    are applied to ``default`` with their validation errors as usage errors."""
    import dataclasses

    if args.output is None:
        raise UsageError("give -o OUT.h5 (or a campaign directory)")
    if args.shard is not None:
        raise UsageError("--shard needs a campaign directory")
    try:
        return dataclasses.replace(default, **{k: v for k, v in overrides.items() if v is not None})
    except ValueError as err:
        raise UsageError(str(err)) from None


def cmd_refine(args: argparse.Namespace) -> int:
    from hpcxtal.campaign import find_campaign
    from hpcxtal.refine.represent import RefineConfig
    from hpcxtal.hpc.mpi import abort_on_error, world
    from hpcxtal.refine.stage import refine_file
    from hpcxtal.stages import refine_campaign, rounds_campaign

    campaign = find_campaign(args.source)
    if campaign is not None:
        if args.shard is not None:  # one array task: round 1 of one shard
            if refine_campaign(campaign, args.shard, args.force).skipped:
                log.info("shard %d is refined and current; nothing to do (--force to redo)",
                         args.shard)
            return 0
        # The whole stage: round 1 of this rank's shards, then the later rounds.
        comm = world()
        rank, size = (comm.Get_rank(), comm.Get_size()) if comm is not None else (0, 1)
        campaign = _bind_rank_device(campaign, comm)
        with abort_on_error(comm):
            for i in range(rank, campaign.config.shard.n_shards, size):
                refine_campaign(campaign, i, args.force)
            if comm is not None:
                comm.Barrier()
            rounds_campaign(campaign, None, args.force, comm)
        return 0
    cfg = _file_mode_config(args, RefineConfig(), {"max_steps": args.steps, "dtype": args.dtype,
                                                   "device": args.device, "threads": args.threads})
    refine_file(args.source, args.output, cfg)
    return 0


def _bind_rank_device(campaign, comm):
    """Under MPI with GPUs, give this rank its node-local GPU (refine.device 'auto')."""
    import dataclasses

    from hpcxtal.hpc.mpi import rank_device

    if comm is None or campaign.config.refine.device != "auto":
        return campaign
    device = rank_device(comm)
    if device is not None:
        refine = dataclasses.replace(campaign.config.refine, device=device)
        campaign.config = dataclasses.replace(campaign.config, refine=refine)
    return campaign


def cmd_rounds(args: argparse.Namespace) -> int:
    from hpcxtal.campaign import Campaign
    from hpcxtal.hpc.mpi import abort_on_error, world
    from hpcxtal.stages import rounds_campaign

    comm = world()
    campaign = _bind_rank_device(Campaign(args.dir), comm)
    with abort_on_error(comm):
        report = rounds_campaign(campaign, None, args.force, comm)
    if report.skipped:
        log.info("rounds are complete and current; nothing to do (--force to redo)")
    return 0


def cmd_topology(args: argparse.Namespace) -> int:
    from hpcxtal.campaign import TopologyConfig, find_campaign
    from hpcxtal.stages import StageReport, topology_campaign
    from hpcxtal.topology.stage import topology_file

    if args.workers is not None and args.workers < 1:
        raise UsageError("--workers must be at least 1")
    campaign = find_campaign(args.source)
    if campaign is not None:
        if args.output or args.cutoff is not None or args.depth is not None:
            raise UsageError(f"a campaign takes cutoff and depth from its config; edit "
                             f"{campaign.root / 'campaign.yaml'} (section topology)")
        report = topology_campaign(campaign, args.shard, args.force, args.workers)
        if report.skipped:
            log.info("%d topology files are complete and verify; nothing to do (--force to "
                     "redo)", len(report.outputs))
            return 0
    else:
        cfg = _file_mode_config(args, TopologyConfig(), {"cutoff_A": args.cutoff,
                                                         "depth": args.depth})
        report = StageReport([args.output], topology_file(args.source, args.output, cfg, args.workers))
    c = report.counts
    log.info("%d rows in %d file(s), %d signed: %d unique, %d duplicates, %d without topology",
             c["rows"], len(report.outputs), c["signed"], c["unique"], c["duplicates"], c["failed"])
    return 0


def cmd_relax(args: argparse.Namespace) -> int:
    from hpcxtal.campaign import RelaxConfig, find_campaign
    from hpcxtal.stages import StageReport, relax_campaign, relax_file

    overrides = {k: v for k, v in {"backend": args.backend, "model": args.model,
                                   "dtype": args.dtype, "optimizer": args.optimizer,
                                   "fmax_eV_per_A": args.fmax,
                                   "max_steps": args.max_steps}.items() if v is not None}
    campaign = find_campaign(args.source) if args.output is None else None
    if campaign is not None:
        if overrides:
            raise UsageError(f"model and optimiser settings of a campaign come from its config; "
                             f"edit the relax section of {campaign.root / 'campaign.yaml'}")
        report = relax_campaign(campaign, shard=args.shard, force=args.force)
        if report.skipped:
            log.info("%d relax output(s) are complete and verify; nothing to do (--force to "
                     "redo)", len(report.outputs))
            return 0
    else:
        cfg = _file_mode_config(args, RelaxConfig(), overrides)
        report = StageReport([args.output], relax_file(args.source, args.output, cfg))
    c = report.counts
    log.info("%d rows, %d relaxed: %d converged, %d not converged, %d failed, %d low-energy",
             c.get("rows", 0), c.get("relaxed", 0), c.get("converged", 0),
             c.get("not_converged", 0), c.get("failed", 0), c.get("low_energy", 0))
    return 0


def _export(table, fmt: str, dest: Path) -> None:
    """Export ``table``; structure formats leave out rows whose stored structure is
    empty (rows a stage did not relax), and say how many."""
    import numpy as np

    from hpcxtal.store.formats import export_table

    if fmt != "csv" and table.structures is not None:
        empty = table.structures.natoms == 0
        if empty.any():
            log.info("%d rows have no stored structure (not relaxed); left out", int(empty.sum()))
            table = table.take(np.flatnonzero(~empty))
    dest = export_table(table, fmt, dest)
    log.info("wrote %d rows as %s to %s", len(table), fmt, dest)


def cmd_export(args: argparse.Namespace) -> int:
    from hpcxtal.store.hdf5 import read_table

    table, _ = read_table(args.file)
    _export(table, args.format, args.output)
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    import dataclasses

    from hpcxtal.campaign import find_campaign
    from hpcxtal.stages import merge_campaign, merge_files
    from hpcxtal.store.database import MergeConfig

    if args.workers is not None and args.workers < 1:
        raise UsageError("--workers must be at least 1")
    campaign = find_campaign(args.sources[0]) if len(args.sources) == 1 and not args.output else None
    if campaign is not None:
        if args.pool or args.training:
            raise UsageError(f"a campaign merges its own pool with the training set of its "
                             f"config; edit the merge section of {campaign.root / 'campaign.yaml'}")
        report = merge_campaign(campaign, args.force, args.workers)
        if report.skipped:
            log.info("%s is current; nothing to do (--force to redo)", report.outputs[0])
        return 0
    if args.output is None:
        raise UsageError("give -o DB.h5 (or a single campaign directory)")
    cfg = MergeConfig()
    if args.training:
        cfg = dataclasses.replace(cfg, training=None if args.training == "none" else args.training)
    merge_files(args.sources, args.output, cfg, pool=args.pool, workers=args.workers)
    return 0


def _database_path(source: Path) -> Path:
    from hpcxtal.campaign import find_campaign
    from hpcxtal.store.database import database_output

    campaign = find_campaign(source)
    return database_output(campaign.root) if campaign is not None else source


def cmd_db(args: argparse.Namespace) -> int:
    from hpcxtal.store.database import query, read_database

    if (args.format is None) != (args.output is None):
        raise UsageError("export needs both -f FORMAT and -o DEST")
    table, _ = read_database(_database_path(args.file))
    idx = query(table, args.top or None, args.max_e_rel, args.spg, args.dimension,
                args.min_atoms, args.max_atoms, args.unique_only)
    if args.format:
        _export(table.take(idx), args.format, args.output)
        return 0
    natoms = table.structures.natoms
    print(f"{'rank':>5} {'id':>8} {'e_rel':>8} {'spg':>4} {'relax':>5} {'atoms':>5} {'dim':>3} "
          f"{'topology':16s} {'dup_of':>8} {'flags':9s} status")
    for i in idx:
        flags = "".join(c if table[k][i] else "." for c, k in
                        (("U", "unique"), ("L", "low_energy"), ("C", "cubic"), ("T", "in_training")))
        print(f"{i + 1:5d} {int(table['id'][i]):8d} {table['e_rel'][i]:8.4f} "
              f"{int(table['spg'][i]):4d} {int(table['spg_relaxed'][i]):5d} {int(natoms[i]):5d} "
              f"{int(table['dimension'][i]):3d} {table['topology'][i] or '-':16s} "
              f"{int(table['duplicate_of'][i]):8d} {flags:9s} {table['status'][i]}")
    log.info("%d of %d rows (flags: U unique, L low energy, C cubic, T in training set)",
             len(idx), len(table))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from hpcxtal.campaign import find_campaign

    campaign = find_campaign(args.source)
    if campaign is not None:
        return _report_campaign(campaign, args.output, args.top)
    return _print_report(args.source, args.output or args.source.with_name(args.source.stem + "-report"),
                         None, args.top)


def _report_campaign(campaign, output: Path | None = None, top: int = 20) -> int:
    """Write a campaign's report (DIR/report) from its database and pool."""
    from hpcxtal.store.database import database_output
    from hpcxtal.store.hdf5 import file_summary

    pool = file_summary(campaign.pool_path)
    n_sampled = int(pool["attrs"]["n_rows"]) + pool["n_quarantined"]
    return _print_report(database_output(campaign.root), output or campaign.root / "report",
                         n_sampled, top)


def _print_report(db: Path, out: Path, n_sampled: int | None, top: int) -> int:
    from hpcxtal.report import CLASSES, METRICS, write_report

    report = write_report(db, out, n_sampled, top)
    m, books = report.metrics, report.accounting
    print(" ".join(f"{k} {m[k]}" for k in ("N_sampled", "N_valid_xtal", *METRICS)))
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


def cmd_status(args: argparse.Namespace) -> int:
    from hpcxtal.campaign import Campaign
    from hpcxtal.hpc.submit import job_states, submitted
    from hpcxtal.stages import PIPELINE

    campaign = Campaign(args.dir)
    manifest = campaign.manifest()
    print(f"campaign {manifest['name']!r} ({manifest['campaign_id']}) in {campaign.root}")
    for spec in PIPELINE:
        entry = manifest["stages"].get(spec.name, {})
        if spec.per_shard:
            n = campaign.config.shard.n_shards
            good = sum(spec.done(campaign, i) for i in range(n))
            state = "done" if good == n else ("partial" if good else "pending")
            print(f"  {spec.name:10s} {state:8s} {good}/{n} shards complete")
            continue
        recorded = entry.get("status", "pending")
        state = recorded if recorded == "off" else (
            "done" if spec.done(campaign, None) else ("pending" if recorded == "done" else recorded))
        counts = ", ".join(f"{k} {v}" for k, v in entry.get("counts", {}).items())
        print(f"  {spec.name:10s} {state:8s} {counts}")
    jobs = submitted(campaign)
    if jobs and campaign.site.scheduler != "local":
        states = job_states(campaign.site, [j["job_id"] for j in jobs])
        print("batch jobs:")
        for job in jobs:
            shards = "" if job["shards"] is None else f" shards {job['shards']}"
            print(f"  {job['stage']:10s} job {job['job_id']:10s} {states[job['job_id']]}{shards}")
    return 0


def cmd_site(args: argparse.Namespace) -> int:
    from hpcxtal.hpc.jobs import render_job
    from hpcxtal.hpc.site import load_site, site_path

    path = site_path(args.site)
    site = load_site(path)
    print(f"{path}: site {site.name!r}, scheduler {site.scheduler}, "
          f"HDF5 file locking {'on' if site.hdf5_file_locking else 'off'}: valid")
    for kind, example in (("gpu", "refine"), ("cpu", "relax")):
        ex = site.executor(kind)
        print(f"\n{kind} executor: partition {ex.partition or '-'}, account {ex.account or '-'}, "
              f"{ex.nodes_per_block} node(s) x {ex.max_blocks} block(s), {ex.cores_per_node} "
              f"cores and {ex.gpus_per_node} GPUs per node, walltime {ex.walltime}, "
              f"launcher {ex.launcher}")
        if site.scheduler == "local":
            print("  runs on this machine: no batch script")
            continue
        camp = Path("CAMPAIGN").resolve()
        print(f"  a 4-shard {example} array would submit:\n")
        script = render_job(site, kind, example, camp, 4, camp / "jobs" / f"{example}-shards.txt",
                              camp / "jobs" / "logs")
        print("    " + script.replace("\n", "\n    ").rstrip())
    return 0


def _campaign_site_stages(args: argparse.Namespace):
    """The campaign, the site it runs on (``--site`` or its own) and the stages asked
    for (``--stage``, default all), checked against the pipeline."""
    from hpcxtal.campaign import Campaign
    from hpcxtal.hpc.site import load_site
    from hpcxtal.stages import PIPELINE

    campaign = Campaign(args.dir)
    names = [s.name for s in PIPELINE]
    unknown = [s for s in args.stages or [] if s not in names]
    if unknown:
        raise UsageError(f"unknown stage {unknown[0]!r}; stages are {names}")
    site = load_site(args.site, search=[campaign.root]) if args.site else campaign.site
    return campaign, site, args.stages or names


def cmd_run(args: argparse.Namespace) -> int:
    from hpcxtal.hpc.driver import run_campaign

    campaign, site, names = _campaign_site_stages(args)
    log.info("campaign %s on site %r (%s): stages %s", campaign.root, site.name, site.scheduler,
             ", ".join(names))
    run_campaign(campaign, site, args.stages)
    status = cmd_status(args)
    if args.stages is None:  # the whole campaign ran: report on its database
        return _report_campaign(campaign) or status
    return status


def cmd_submit(args: argparse.Namespace) -> int:
    from hpcxtal.hpc.submit import submit_campaign

    campaign, site, names = _campaign_site_stages(args)
    subs = submit_campaign(campaign, site, names, dry_run=args.dry_run)
    if not subs:
        log.info("nothing to submit: every requested stage is complete")
    for sub in subs:
        what = "whole campaign" if sub.shards is None else f"shards {sub.shards}"
        log.info("%s: job %s (%s), script %s", sub.stage, sub.job_id, what, sub.script)
    return 0


class UsageError(Exception):
    """Wrong combination of command-line arguments."""


COMMANDS = {"init": cmd_init, "prepare": cmd_prepare, "train": cmd_train, "sample": cmd_sample,
            "import": cmd_import, "shard": cmd_shard, "refine": cmd_refine, "rounds": cmd_rounds,
            "topology": cmd_topology, "relax": cmd_relax, "merge": cmd_merge, "db": cmd_db,
            "report": cmd_report, "export": cmd_export, "info": cmd_info,
            "site": cmd_site, "status": cmd_status, "run": cmd_run, "resume": cmd_run,
            "submit": cmd_submit}


def main(argv: list[str] | None = None) -> int:
    from hpcxtal.config import ConfigError
    from hpcxtal.crystal.row import DecodeError
    from hpcxtal.hpc.driver import StageFailed
    from hpcxtal.hpc.submit import SubmitError
    from hpcxtal.relax.errors import ModelSetupError
    from hpcxtal.store.formats import FormatError
    from hpcxtal.store.hdf5 import StoreError

    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args)
    try:
        return COMMANDS[args.command](args)
    except UsageError as err:
        parser.error(str(err))
    except (ConfigError, StoreError, FormatError, DecodeError, ModelSetupError, FileNotFoundError,
            StageFailed, SubmitError) as err:
        print(f"hpcxtal {args.command}: error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into head or less that closed early
        sys.stdout = open(os.devnull, "w")
        return 0
    except KeyboardInterrupt:
        print(f"hpcxtal {args.command}: interrupted; completed files are kept, "
              "partial ones were removed", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

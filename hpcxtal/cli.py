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


def cmd_export(args: argparse.Namespace) -> int:
    from hpcxtal.store.formats import export_table
    from hpcxtal.store.hdf5 import read_table

    table, _ = read_table(args.file)
    dest = export_table(table, args.format, args.output)
    log.info("wrote %d rows as %s to %s", len(table), args.format, dest)
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
    from hpcxtal.campaign import STAGES, Campaign

    campaign = Campaign(args.dir)
    manifest = campaign.manifest()
    print(f"campaign {manifest['name']!r} ({manifest['campaign_id']}) in {campaign.root}")
    for stage in STAGES:
        entry = manifest["stages"].get(stage, {})
        good, total = campaign.stage_outputs_ok(stage)
        counts = ", ".join(f"{k} {v}" for k, v in entry.get("counts", {}).items())
        files = f"{good}/{total} files verify" if total else "no files yet"
        print(f"  {stage:10s} {entry.get('status', 'pending'):8s} {files:22s} {counts}")
    return 0


def cmd_site(args: argparse.Namespace) -> int:
    from hpcxtal.hpc.jobs import render_array
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
        script = render_array(site, kind, example, camp, 4, camp / "jobs" / f"{example}-shards.txt",
                              camp / "jobs" / "logs")
        print("    " + script.replace("\n", "\n    ").rstrip())
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from hpcxtal.campaign import Campaign
    from hpcxtal.hpc.driver import run_campaign
    from hpcxtal.hpc.site import load_site
    from hpcxtal.stages import PIPELINE

    campaign = Campaign(args.dir)
    names = [s.name for s in PIPELINE]
    unknown = [s for s in args.stages or [] if s not in names]
    if unknown:
        raise UsageError(f"unknown stage {unknown[0]!r}; stages are {names}")
    site = load_site(args.site, search=[campaign.root]) if args.site else campaign.site
    log.info("campaign %s on site %r (%s): stages %s", campaign.root, site.name, site.scheduler,
             ", ".join(args.stages or names))
    run_campaign(campaign, site, args.stages)
    return cmd_status(args)


class UsageError(Exception):
    """Wrong combination of command-line arguments."""


COMMANDS = {"init": cmd_init, "prepare": cmd_prepare, "train": cmd_train, "sample": cmd_sample,
            "import": cmd_import, "shard": cmd_shard, "export": cmd_export,
            "info": cmd_info, "site": cmd_site, "status": cmd_status, "run": cmd_run,
            "resume": cmd_run}


def main(argv: list[str] | None = None) -> int:
    from hpcxtal.config import ConfigError
    from hpcxtal.crystal.row import DecodeError
    from hpcxtal.hpc.driver import StageFailed
    from hpcxtal.store.formats import FormatError
    from hpcxtal.store.hdf5 import StoreError

    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args)
    try:
        return COMMANDS[args.command](args)
    except UsageError as err:
        parser.error(str(err))
    except (ConfigError, StoreError, FormatError, DecodeError, FileNotFoundError,
            StageFailed) as err:
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

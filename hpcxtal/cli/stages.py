"""Stage commands: each runs one registry stage on a campaign directory (paths, settings
and provenance from the campaign) or on explicit files (``-o OUT``)."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from hpcxtal import cli_args as num
from hpcxtal.cli.common import (UsageError, add_workers, command, open_campaign,
                                per_shard_stage, stage_command)

log = logging.getLogger("hpcxtal")


def _print_quarantine(path: Path, limit: int = 20) -> None:
    from hpcxtal.store.hdf5 import read_table

    _, quarantine = read_table(path)
    for k in range(min(limit, len(quarantine))):
        log.info("  quarantined %s (id %d): %s", quarantine["origin"][k],
                 quarantine["id"][k], quarantine["reason"][k])
    if len(quarantine) > limit:
        log.info("  ... %d more; 'hpcxtal export' or h5py's /quarantine lists all",
                 len(quarantine) - limit)


def _pool_report(report) -> int:
    if report is None:
        return 0
    log.info("%s: %d rows, %d quarantined", report.outputs[0], report.counts["rows"],
             report.counts["quarantined"])
    if report.counts["quarantined"]:
        _print_quarantine(report.outputs[0])
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    """Import crystals into a pool (HDF5).

    Import published tabular CSV (angles in radians), CIF, extxyz, ASE db or hpcxtal .h5
    files into one pool. Rows that cannot be decoded are kept in the pool's quarantine with
    the reason. With a campaign DIR and no -o, imports the campaign's configured inputs into
    DIR/pool.h5.
    """
    from hpcxtal.stages import import_pool
    from hpcxtal.store.formats import ImportConfig

    def file_mode():
        if args.output is None:
            raise UsageError("give -o POOL.h5 (or a single campaign directory)")
        cfg = ImportConfig(inputs=args.sources, snap_tolerance_A=args.snap_tolerance,
                           symmetry_tolerance_A=args.symmetry_tolerance)
        return import_pool(args.sources, args.output, cfg)

    single = args.sources[0] if len(args.sources) == 1 else None
    campaign = open_campaign(single) if single is not None and args.output is None else None
    if campaign is not None and campaign.config.sample is not None:
        log.info("%s samples its pool (its config has a 'sample' section); nothing to import; "
                 "run 'hpcxtal sample %s'", campaign.root, campaign.root)
        return 0
    source = Path(single) if campaign is not None else Path(args.sources[0])
    return _pool_report(stage_command(args, "import", source, file_mode))


def cmd_sample(args: argparse.Namespace) -> int:
    """Sample a candidate pool from a trained generator.

    Any model kind (cvae, vae, diffusion; the model file says which): draw N conditions
    (training set and/or the learned condition model; the unconditional vae predicts its
    own) and the model's samples; decode rows. Rows that do not decode go to the pool's quarantine
    with the reason. With a campaign DIR, uses its 'sample' section and writes DIR/pool.h5.
    """
    from hpcxtal.generate.config import SampleConfig
    from hpcxtal.stages import sample_to_pool

    campaign = open_campaign(args.dir) if args.dir is not None else None
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

    def file_mode():
        if args.output is None or args.n is None:
            raise UsageError("give -n N and -o POOL.h5 (or a campaign directory)")
        try:
            cfg = SampleConfig(n=args.n, model=args.model, conditions=args.conditions)
        except ValueError as err:
            raise UsageError(str(err)) from None
        return sample_to_pool(args.output, cfg, args.seed)

    return _pool_report(stage_command(args, "sample", args.dir or Path("."), file_mode))


def cmd_shard(args: argparse.Namespace) -> int:
    """Cut a pool into cost-balanced shard files.

    Sort rows by space group and Wyckoff layout and cut them into K shards of near-equal
    estimated cost (atoms x free variables), one file each.
    """
    import numpy as np

    from hpcxtal.stages import shard_pool
    from hpcxtal.store.hdf5 import file_summary
    from hpcxtal.store.shard import ShardConfig

    campaign = open_campaign(args.source) if args.output is None else None
    if campaign is not None and args.shards not in (None, campaign.config.shard.n_shards):
        raise UsageError(f"the campaign config sets {campaign.config.shard.n_shards} shards; "
                         f"edit {campaign.root / 'campaign.yaml'} to change it")

    def file_mode():
        if args.output is None or args.shards is None:
            raise UsageError("give -k K and -o DIR (or a campaign directory)")
        return shard_pool(args.source, args.output, ShardConfig(n_shards=args.shards))

    report = stage_command(args, "shard", args.source, file_mode)
    if report is not None:
        costs = np.array([file_summary(p)["attrs"]["estimated_cost"] for p in report.outputs])
        log.info("%d rows into %d shards in %s; cost balance max/mean %.3f",
                 report.counts["rows"], len(report.outputs), report.outputs[0].parent,
                 costs.max() / costs.mean())
    return 0


def _rank_resources(campaign, comm, workers: int | None = None):
    """This process's resources under MPI: the communicator, where the refine device is
    ``auto`` and there are GPUs the rank's node-local GPU, and ``workers`` processes
    (default: one per rank when there are several ranks, whose cores a launcher may
    not have split). Devices and workers are resources: they never make an output stale."""
    from hpcxtal.hpc import mpi
    from hpcxtal.stages import Resources

    auto = comm is not None and campaign.config.refine.device == "auto"
    if workers is None and comm is not None and comm.Get_size() > 1:
        workers = 1
    return Resources(comm=comm, device=mpi.rank_device(comm) if auto else None, workers=workers)


def cmd_refine(args: argparse.Namespace) -> int:
    """Pull candidates toward the target environment (Algorithm 1).

    Representation-space refinement: batched gradient descent of each row's free variables
    so every Wyckoff site's SO(3) spectrum approaches the target's (default graphite), with
    per-sample clipping, plateau step control and perturbed restarts. Writes every row with
    loss, valid (CN), steps, round, refine_status and refine_reason. A campaign refines on
    its refine.objective (so3 by default; distance_matrix, energy, weighted sums, plug-ins:
    docs/OBJECTIVES.md); on files, --objective chooses it (repeat it for a weighted sum).
    """
    from hpcxtal.hpc import mpi
    from hpcxtal.refine.config import RefineConfig
    from hpcxtal.stages import stage_spec

    options = {
        "objective": ("--objective", args.objective),
        "max_steps": ("--steps", args.steps), "dtype": ("--dtype", args.dtype),
        "device": ("--device", args.device), "threads": ("--threads", args.threads),
        "chunk_rows": ("--chunk-rows", args.chunk_rows)}
    campaign = open_campaign(args.source) if args.output is None else None
    if campaign is not None and args.shard is None:
        given = [flag for flag, value in options.values() if value is not None]
        if given:
            raise UsageError(f"{given[0]}: a campaign takes this from its config; edit the "
                             f"refine section of {campaign.root / 'campaign.yaml'}")
        # The whole stage: round 1 of this rank's shards, then the later rounds.
        comm = mpi.world()
        rank, size = (comm.Get_rank(), comm.Get_size()) if comm is not None else (0, 1)
        resources = _rank_resources(campaign, comm, args.workers)
        with mpi.abort_on_error(comm):
            for i in range(rank, campaign.config.shard.n_shards, size):
                stage_spec("refine").run(campaign, i, args.force, resources)
            if comm is not None:
                comm.Barrier()
            stage_spec("rounds").run(campaign, None, args.force, resources)
        return 0

    if args.objective is not None and args.output is not None:
        import torch

        from hpcxtal.refine.scripted import load_module

        for term in args.objective:  # a bad TorchScript file fails here, in one line
            if term.name == "torchscript":
                load_module(term.settings["file"], torch.float64)
    per_shard_stage(args, "refine", RefineConfig(), options)
    return 0


def cmd_rounds(args: argparse.Namespace) -> int:
    """Later refinement rounds over all shards' invalid rows.

    Rounds 2..n_rounds (campaign config, section rounds): gather the rows still invalid
    after round 1 from every shard, rebalance them by cost over the processes (MPI ranks
    under mpiexec or srun), refine them again from perturbed starts, and write each shard's
    final rows to DIR/rounds/. Finished rounds are kept, so an interrupted run resumes.
    """
    from hpcxtal.hpc import mpi
    from hpcxtal.stages import stage_spec

    campaign = open_campaign(args.dir, required=True)
    comm = mpi.world()
    with mpi.abort_on_error(comm):
        report = stage_spec("rounds").run(campaign, None, args.force,
                                          _rank_resources(campaign, comm))
    if report.skipped:
        log.info("rounds are complete and current; nothing to do (--force to redo)")
    return 0


def cmd_topology(args: argparse.Namespace) -> int:
    """Net signature, dimensionality and first de-duplication.

    Build the periodic C-C bond graph of every row (stored structure, else the expanded row;
    only CN-valid rows of a refined file), its dimensionality (0-3 periodic) and a cell-
    independent topology key (coordination sequences + shortest-ring counts), and mark rows
    sharing (key, dimensionality, atoms per primitive cell) as duplicates of the lowest id.
    Adds the columns topology, dimension, n_prim and duplicate_of; no row is dropped. With a
    campaign DIR: DIR/rounds/rounds-I.h5 -> DIR/topology/topology-I.h5, skipping outputs
    that verify.
    """
    from hpcxtal.topology.stage import TopologyConfig

    report = per_shard_stage(args, "topology", TopologyConfig(), {
        "cutoff_A": ("--cutoff", args.cutoff), "depth": ("--depth", args.depth)})
    if report is not None:
        c = report.counts
        log.info("%d rows in %d file(s), %d signed: %d unique, %d duplicates, %d without "
                 "topology", c["rows"], len(report.outputs), c["signed"], c["unique"],
                 c["duplicates"], c["failed"])
    return 0


def cmd_dedup(args: argparse.Namespace) -> int:
    """First de-duplication across shards, before relaxation.

    Compare the topology representatives of every shard by (topology key, dimensionality,
    atoms per primitive cell) and write DIR/dedup.h5: each representative whose net has a
    lower-id representative in another shard, with that id. The relax stage then relaxes
    each net once per campaign, not once per shard.
    """
    from hpcxtal.stages import stage_spec

    campaign = open_campaign(args.dir, required=True)
    report = stage_spec("dedup").run(campaign, None, args.force)
    if report.skipped:
        log.info("dedup is complete and current; nothing to do (--force to redo)")
    else:
        c = report.counts
        log.info("%d topology representatives, %d nets: %d duplicates of a net in another "
                 "shard will not be relaxed", c["representatives"], c["nets"],
                 c["cross_shard_duplicates"])
    return 0


def cmd_relax(args: argparse.Namespace) -> int:
    """Relax structures with an ML potential; energies vs graphite.

    Relax every row (positions and cell) with batched L-BFGS (or FIRE) and a machine-learned
    potential (by default hpcxtal's own small carbon MACE model, shipped with the package;
    or another MACE model file, or CHGNet with its bundled weights), and add the columns
    energy (eV/atom), e_rel (eV/atom above graphite relaxed the same way), status (converged
    / not_converged / failed / skipped), status_reason, relax_steps, energy_initial,
    rms_displacement_A and volume_change. On a campaign DIR, relaxes the CN-valid topology
    representatives of DIR/topology/topology-I.h5 into DIR/relax/relax-I.h5 (one shard with
    --shard I, as one task of a job array); outputs that are current are not redone.
    """
    from hpcxtal.relax.config import RelaxConfig

    report = per_shard_stage(args, "relax", RelaxConfig(), {
        "backend": ("--backend", args.backend), "model": ("--model", args.model),
        **relax_settings(args)})
    if report is not None:
        c = report.counts
        log.info("%d rows, %d relaxed: %d converged, %d not converged, %d failed, %d "
                 "low-energy", c.get("rows", 0), c.get("relaxed", 0), c.get("converged", 0),
                 c.get("not_converged", 0), c.get("failed", 0), c.get("low_energy", 0))
    return 0


def cmd_rescore(args: argparse.Namespace) -> int:
    """Re-relax the screen's low-energy rows with a second, more accurate model (CHGNet by default).

    The rescoring tier. The relax stage's model screens every candidate; rows it relaxed to
    convergence within the low-energy window plus a margin (default 0.15 eV/atom) are
    re-relaxed from their screened structures with a foundation-grade model: CHGNet with the
    weights its wheel carries (default), or a mace-torch model file (e.g. MACE-MP-0) given
    by path or foundation name in --model-dir; nothing is downloaded. Energies are taken
    above graphite relaxed with the same model. Both tiers' energies are kept
    (energy_screen, e_rel_screen, energy_rescore, e_rel_rescore, status_rescore); energy,
    e_rel, status and the structure are the best tier's (tier: rescore where the rescore
    converged, else screen), which merge ranks and classes. On a campaign DIR with a
    'rescore:' section, DIR/relax/relax-I.h5 into DIR/rescore/rescore-I.h5 (one shard with
    --shard I).
    """
    from hpcxtal.rescore.config import RescoreConfig

    report = per_shard_stage(args, "rescore", RescoreConfig(), {
        "model": ("--model", args.model), "model_dir": ("--model-dir", args.model_dir),
        "margin_eV": ("--margin", args.margin), "window_eV": ("--window", args.window),
        **relax_settings(args)})
    if report is not None:
        c = report.counts
        log.info("%d rows, %d rescored: %d converged, %d not converged, %d failed; %d moved "
                 "into and %d out of the window; %d low-energy by the best tier",
                 c.get("rows", 0), c.get("rescored", 0), c.get("converged", 0),
                 c.get("not_converged", 0), c.get("failed", 0), c.get("moved_in", 0),
                 c.get("moved_out", 0), c.get("low_energy", 0))
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    """Merge relax outputs into one ranked database.

    Merge relax outputs into ONE database ranked by energy above graphite: every input is
    verified; every converged relaxed structure is re-validated (the target's coordination
    rule, topology key and dimensionality recomputed, space group by spglib at 0.1 Å, match
    with graphite, diamond, lonsdaleite and the SACADA nets), de-duplicated a second time
    across all inputs (StructureMatcher stol 0.3, ltol 0.2, angle_tol 5, within a relaxed
    topology key and atoms per primitive cell), compared with the training structures and
    given a class (new, known, motif_lost, low_dimensional, duplicate, invalid, failed).
    With a campaign DIR: DIR/relax/relax-*.h5 and the pool's quarantine into DIR/database.h5
    (skipped when current).
    """
    import dataclasses

    from hpcxtal.merge.database import MergeConfig
    from hpcxtal.merge.stage import merge_files
    from hpcxtal.stages import Resources

    if len(args.sources) > 1 and args.output is None:
        raise UsageError("give -o DB.h5 (or a single campaign directory)")

    def file_mode():
        if args.output is None:
            raise UsageError("give -o DB.h5 (or a single campaign directory)")
        cfg = MergeConfig()
        if args.training:
            cfg = dataclasses.replace(cfg, training=None if args.training == "none"
                                      else args.training)
        return merge_files(args.sources, args.output, cfg, pool=args.pool, workers=args.workers,
                           target=args.target or "graphite")

    stage_command(args, "merge", args.sources[0], file_mode,
                  {"--pool": args.pool, "--training": args.training, "--target": args.target},
                  Resources(workers=args.workers))
    return 0


def per_shard_io(p: argparse.ArgumentParser, output: str) -> None:
    """What a per-shard stage runs on: a table file with ``-o`` (``output``: what it
    writes), or a campaign directory, all shards or ``--shard I``."""
    p.add_argument("source", type=Path, help="table file (.h5), or a campaign directory")
    p.add_argument("-o", "--output", type=Path, help=f"{output} to write (file mode)")
    p.add_argument("--shard", type=num.nonnegative_int, metavar="I",
                   help="campaign: only shard I (one job-array task); default all shards")


def add_chunk_rows(p: argparse.ArgumentParser, default: int) -> None:
    """--chunk-rows on a stage whose rows workers take in chunks."""
    p.add_argument("--chunk-rows", type=num.positive_int, metavar="N",
                   help=f"rows per chunk, taken by the next free worker (file mode; default "
                        f"{default}): smaller chunks balance workers better, but each costs its "
                        f"own tail of steps; results do not depend on the worker count")


def add_relax_settings(p: argparse.ArgumentParser, chunk_rows: int) -> None:
    """The optimiser options of a relaxing stage (relax, rescore; file mode) and its
    workers."""
    p.add_argument("--dtype", choices=["float64", "float32"],
                   help="model precision (file mode; default float64)")
    p.add_argument("--optimizer", choices=["lbfgs", "fire"],
                   help="batched optimiser (file mode; default lbfgs: fewest model calls)")
    p.add_argument("--fmax", type=num.positive_float, metavar="EV_PER_A",
                   help="force convergence threshold in eV/Å (file mode; default 0.05)")
    p.add_argument("--max-steps", type=num.nonnegative_int, metavar="N",
                   help="step cap before size scaling (file mode; default 300, + 2 per atom)")
    add_workers(p, "worker processes, each on one core with one thread, the model loaded once")
    add_chunk_rows(p, chunk_rows)


def relax_settings(args: argparse.Namespace) -> dict[str, tuple[str, object]]:
    """What :func:`add_relax_settings` read, as :func:`per_shard_stage` options."""
    return {"dtype": ("--dtype", args.dtype), "optimizer": ("--optimizer", args.optimizer),
            "fmax_eV_per_A": ("--fmax", args.fmax), "max_steps": ("--max-steps", args.max_steps),
            "chunk_rows": ("--chunk-rows", args.chunk_rows)}


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """The stages commands' parsers."""
    p = command(sub, "import", cmd_import,
                force="redo a campaign stage that is complete")
    p.add_argument("sources", nargs="+", metavar="SRC",
                   help="input files ('sacada' = bundled set), or one campaign directory")
    p.add_argument("-o", "--output", type=Path, help="pool file to write")
    p.add_argument("--snap-tolerance", type=num.positive_float, metavar="A",
                   help="quarantine CSV rows whose sites sit more than A Å from their Wyckoff "
                        "position (default: snap any distance)")
    p.add_argument("--symmetry-tolerance", type=num.symmetry_tolerance, default=0.01, metavar="A",
                   help="symmetry-finding tolerance for structure files (default 0.01 Å; "
                        "1e-05-1 Å)")

    p = command(sub, "sample", cmd_sample,
                force="redo a campaign stage that is complete")
    p.add_argument("dir", nargs="?", type=Path, help="campaign directory (instead of -o)")
    p.add_argument("-n", type=num.positive_int, help="number of candidates")
    p.add_argument("-o", "--output", type=Path, help="pool file to write")
    p.add_argument("--model", default="default",
                   help="model file, or 'default' for the model shipped with hpcxtal")
    p.add_argument("--conditions", default="mix", choices=["train", "learned", "mix"],
                   help="where conditions come from (default mix: half each)")
    p.add_argument("--seed", type=num.seed, default=0, help="random seed (default 0)")

    p = command(sub, "shard", cmd_shard,
                force="redo a campaign stage that is complete")
    p.add_argument("source", type=Path, help="pool file, or a campaign directory")
    p.add_argument("-o", "--output", type=Path, help="directory for shard-NNNN.h5 files")
    p.add_argument("-k", "--shards", type=num.positive_int, help="number of shards (campaign: from its config)")

    p = command(sub, "refine", cmd_refine,
                force="redo outputs that are complete")
    per_shard_io(p, "refined table")
    p.add_argument("--steps", type=num.positive_int, help="step cap per row (file mode; default 1000)")
    p.add_argument("--objective", type=num.objective_term, action="append", metavar="TERM",
                   help="what to minimise (file mode; default so3): NAME[=WEIGHT] (so3, "
                        "energy, an entry point, module:attr), FILE.pt[=WEIGHT] (a TorchScript "
                        "module, docs/OBJECTIVES.md) or a YAML term as in the config, e.g. "
                        "'{name: distance_matrix, settings: {reference: ref.cif}}'; repeat "
                        "for a weighted sum")
    p.add_argument("--dtype", choices=["float64", "float32"], help="precision (file mode)")
    p.add_argument("--device", type=num.device,
                   help="torch device, e.g. cpu or cuda:0 (file mode; default auto)")
    p.add_argument("--threads", type=num.threads,
                   help="torch CPU threads of one worker process (file mode, -j 1; default 1)")
    add_workers(p, "worker processes, each on one core with one thread")
    add_chunk_rows(p, 512)

    p = command(sub, "rounds", cmd_rounds,
                force="redo rounds that are complete")
    p.add_argument("dir", type=Path, help="campaign directory")

    p = command(sub, "topology", cmd_topology,
                force="redo outputs that are complete")
    per_shard_io(p, "table")
    p.add_argument("--cutoff", type=num.positive_float, metavar="A",
                   help="C-C bond cutoff in Å (file mode; default 1.872)")
    p.add_argument("--depth", type=num.positive_int, help="coordination-sequence depth (file mode; default 12)")
    add_workers(p, "worker processes")

    p = command(sub, "dedup", cmd_dedup, force="redo an index that is current")
    p.add_argument("dir", type=Path, help="campaign directory")

    p = command(sub, "relax", cmd_relax,
                force="redo campaign shards that are complete")
    per_shard_io(p, "relaxed table")
    p.add_argument("--backend", choices=["chgnet", "mace"],
                   help="energy model (file mode; default mace, campaign: from its config)")
    p.add_argument("--model", metavar="PATH|NAME",
                   help="mace: model file, hpcxtal-carbon (default) or foundation name "
                        "(mace-mp-0-small ...); chgnet: bundled version (default 0.3.0)")
    add_relax_settings(p, 32)

    p = command(sub, "rescore", cmd_rescore, force="redo campaign shards that are complete")
    per_shard_io(p, "rescored table")
    p.add_argument("--model", metavar="chgnet|PATH|NAME",
                   help="rescoring model (file mode): chgnet (default, bundled weights), a "
                        "MACE model file, or a MACE foundation name found in --model-dir")
    p.add_argument("--model-dir", metavar="DIR", help="where MACE foundation files are (file mode)")
    p.add_argument("--margin", type=num.nonnegative_float, metavar="EV",
                   help="eV/atom above the window still rescored (file mode; default 0.15)")
    p.add_argument("--window", type=num.nonnegative_float, metavar="EV",
                   help="low-energy window in eV/atom (file mode; default: the input's)")
    add_relax_settings(p, 8)

    p = command(sub, "merge", cmd_merge,
                force="redo a campaign database that is current")
    p.add_argument("sources", nargs="+", type=Path, metavar="SRC",
                   help="relax outputs (.h5), or one campaign directory")
    p.add_argument("-o", "--output", type=Path, help="database to write (file mode)")
    p.add_argument("--pool", type=Path, help="file mode: the pool the rows came from (its "
                   "quarantine enters the accounting; every pool row must be merged)")
    p.add_argument("--training", metavar="SRC", help="training structures to compare with "
                   "('sacada', an .h5 table with structures, or 'none'; file mode)")
    p.add_argument("--target", help="file mode: the environment relaxed structures must keep "
                   "(a name in hpcxtal/data/environments.yaml; default graphite; a campaign "
                   "uses its refine target)")
    p.add_argument("-j", "--workers", type=num.positive_int, metavar="N",
                   help="processes for the training structures' topology keys (first run only)")

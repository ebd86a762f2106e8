"""Stage functions: files in, files out, no Parsl, MPI or argparse inside.

Each stage has a function on explicit files and one on a campaign directory; the
campaign version resolves paths from the campaign, skips outputs that already exist
and verify, and records the stage in the manifest.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from hpcxtal.campaign import (Campaign, ImportConfig, RelaxConfig, SampleConfig, ShardConfig,
                              TopologyConfig)
from hpcxtal.config import ConfigError, to_mapping
from hpcxtal.data import resolve_input
from hpcxtal.refine.rounds import rounds_config, rounds_output, run_rounds
from hpcxtal.refine.stage import refine_file, refine_output
from hpcxtal.relax.table import relax_output
from hpcxtal.store.database import MergeConfig, database_output
from hpcxtal.store.formats import import_files
from hpcxtal.store.hdf5 import file_summary, read_table, verify_file, write_table
from hpcxtal.store.shard import shard_path, write_shards
from hpcxtal.topology.stage import topology_file, topology_output

log = logging.getLogger(__name__)


@dataclass
class StageReport:
    """What a stage did: files written (or found complete) and row counts."""

    outputs: list[Path]
    counts: dict[str, int] = field(default_factory=dict)
    skipped: bool = False


def import_pool(sources: list[str], dest: Path, cfg: ImportConfig,
                **attrs: object) -> StageReport:
    """Import CSV / CIF / extxyz / ASE db / hpcxtal tables into one pool file."""
    paths = [resolve_input(s) for s in sources]
    table, quarantine = import_files(paths, cfg.snap_tolerance_A, cfg.symmetry_tolerance_A)
    write_table(dest, table, kind="pool", quarantine=quarantine,
                sources=[str(p) for p in paths], **attrs)
    return StageReport([dest], {"rows": len(table), "quarantined": len(quarantine)})


def sample_to_pool(dest: Path, cfg: SampleConfig, seed: int, **attrs: object) -> StageReport:
    """Sample ``cfg.n`` candidates from the generator into one pool file."""
    from hpcxtal.generate.sample import sample_pool

    table, quarantine = sample_pool(cfg.model, cfg.n, seed=seed, mode=cfg.conditions)
    write_table(dest, table, kind="pool", quarantine=quarantine, **attrs)
    return StageReport([dest], {"rows": len(table), "quarantined": len(quarantine)})


def shard_pool(src: Path, dest_dir: Path, cfg: ShardConfig, **attrs: object) -> StageReport:
    """Cut a pool into ``cfg.n_shards`` cost-balanced shard files."""
    table, _ = read_table(src)
    paths = write_shards(table, cfg.n_shards, dest_dir, source=str(src), **attrs)
    return StageReport(paths, {"rows": len(table), "shards": len(paths)})


def _outputs_complete(paths: list[Path]) -> bool:
    return bool(paths) and all(verify_file(p) is None for p in paths)


def _log_recomputed(paths: list[Path], why: Callable[[Path], str | None] = verify_file) -> None:
    """Warn, naming the file and the cause, about each existing output in ``paths`` that
    is about to be recomputed because ``why`` finds it corrupted or stale."""
    for path in paths:
        problem = why(path) if path.exists() else None
        if problem is not None:
            log.warning("%s; recomputing it", problem)


def sample_campaign(campaign: Campaign, force: bool = False) -> StageReport:
    """The campaign's ``sample`` stage: ``pool.h5`` from the generator, when the config
    has a ``sample`` section (else nothing: the ``import`` stage makes the pool)."""
    cfg = campaign.config.sample
    dest = campaign.pool_path
    if cfg is None:
        campaign.record("sample", status="off", note="no 'sample' section: the pool is imported")
        return StageReport([], skipped=True)
    if not force and _outputs_complete([dest]):
        return StageReport([dest], skipped=True)
    from hpcxtal.generate.sample import resolve_model

    if not force:
        _log_recomputed([dest])
    campaign.start("sample", [resolve_model(cfg.model)], cfg)
    report = sample_to_pool(dest, cfg, campaign.config.seed, campaign_id=campaign.campaign_id)
    campaign.finish("sample", report.outputs, **report.counts)
    return report


def import_campaign(campaign: Campaign, force: bool = False) -> StageReport:
    """The campaign's ``import`` stage: its configured inputs into ``pool.h5`` (nothing
    when the config has a ``sample`` section: then the ``sample`` stage makes the pool)."""
    dest = campaign.pool_path
    if campaign.config.sample is not None:
        campaign.record("import", status="off", note="the 'sample' section makes the pool")
        return StageReport([], skipped=True)
    if not force and _outputs_complete([dest]):
        return StageReport([dest], skipped=True)
    cfg = campaign.config.import_
    if not force:
        _log_recomputed([dest])
    campaign.start("import", [resolve_input(s) for s in cfg.inputs], cfg)
    report = import_pool(cfg.inputs, dest, cfg, campaign_id=campaign.campaign_id)
    campaign.finish("import", report.outputs, **report.counts)
    return report


def shard_campaign(campaign: Campaign, force: bool = False) -> StageReport:
    """The campaign's ``shard`` stage: ``pool.h5`` into ``shards/shard-NNNN.h5``."""
    cfg = campaign.config.shard
    dests = _shard_files(campaign)
    if not force and _outputs_complete(dests):
        return StageReport(dests, skipped=True)
    if verify_file(campaign.pool_path) is not None:
        raise FileNotFoundError(f"{campaign.pool_path}: the pool is missing or does not verify; "
                                f"run 'hpcxtal import {campaign.root}' (or 'hpcxtal sample "
                                f"{campaign.root}') first")
    if not force:
        _log_recomputed(dests)
    campaign.start("shard", [campaign.pool_path], cfg)
    for stale in campaign.shard_dir.glob("shard-*.h5"):
        stale.unlink()
    report = shard_pool(campaign.pool_path, campaign.shard_dir, cfg,
                        campaign_id=campaign.campaign_id)
    campaign.finish("shard", report.outputs, **report.counts)
    return report



def _shard_input(campaign: Campaign, shard: int) -> Path:
    return shard_path(campaign.shard_dir, shard)


def _rounds_input(campaign: Campaign, shard: int) -> Path:
    return rounds_output(campaign.root, shard)


def rounds_campaign(campaign: Campaign, shard: int | None = None, force: bool = False,
                    comm=None) -> StageReport:
    """The campaign's ``rounds`` stage (whole campaign; MPI ranks share it through
    ``comm``): later refinement rounds over all shards' invalid rows, then one final
    file per shard."""
    n = campaign.config.shard.n_shards
    outputs = [rounds_output(campaign.root, i) for i in range(n)]
    if not force and stage_spec("rounds").done(campaign, None):
        return StageReport(outputs, skipped=True)
    missing = [i for i in range(n) if verify_file(refine_output(campaign.root, i)) is not None]
    if missing:
        raise FileNotFoundError(f"round 1 is missing for shards {missing}; run 'hpcxtal refine "
                                f"{campaign.root}' first")
    if not force:
        cfg = rounds_config(campaign.config.refine, campaign.config.rounds)
        for i in range(n):
            _log_recomputed([outputs[i]], lambda p: stale_reason(
                p, refine_output(campaign.root, i), cfg))
    counts = run_rounds(campaign.root, n, lambda i: refine_output(campaign.root, i),
                        campaign.config.refine, campaign.config.rounds, comm)
    return StageReport(outputs, counts)


def refine_campaign(campaign: Campaign, shard: int | None, force: bool = False) -> StageReport:
    """The campaign's ``refine`` stage on one shard (or every shard in turn)."""
    cfg = campaign.config.refine
    return _per_shard(campaign, shard, force, _shard_input, refine_output, cfg,
                      lambda src, dest: refine_file(src, dest, cfg, campaign_id=campaign.campaign_id))


def topology_campaign(campaign: Campaign, shard: int | None, force: bool = False,
                      workers: int | None = None) -> StageReport:
    """The campaign's ``topology`` stage on the refined shard ``shard`` (or all)."""
    cfg = campaign.config.topology
    return _per_shard(campaign, shard, force, _rounds_input, topology_output, cfg,
                      lambda src, dest: topology_file(src, dest, cfg, workers,
                                                      campaign_id=campaign.campaign_id))


def stale_reason(dest: Path, src: Path, cfg: object) -> str | None:
    """None if ``dest`` verifies and was made from the present ``src`` with ``cfg``,
    else why not, naming ``dest``: a recomputed input or a changed config makes a
    per-shard output stale, a truncated or modified one does not verify."""
    problem = verify_file(dest)
    if problem is not None:
        return problem
    problem = verify_file(src)
    if problem is not None:
        return f"{dest}: its input does not verify ({problem})"
    made = file_summary(dest)["attrs"]
    if made.get("source_sha256") != file_summary(src)["attrs"].get("sha256"):
        return f"{dest}: made from another version of {src}"
    if made.get("stage_config") != json.dumps(to_mapping(cfg)):
        return f"{dest}: made with another stage config"
    return None


def is_current(dest: Path, src: Path, cfg: object) -> bool:
    """Whether ``dest`` is current (see :func:`stale_reason`)."""
    return stale_reason(dest, src, cfg) is None


def _per_shard(campaign: Campaign, shard: int | None, force: bool,
               source: Callable[[Campaign, int], Path], output: Callable[[Path, int], Path],
               cfg: object, run: Callable[[Path, Path], dict[str, int]]) -> StageReport:
    """Run a per-shard stage on shard ``shard`` (None: all in turn), ``source`` file
    in, ``output`` file out; outputs that are current (see :func:`is_current`) are
    kept unless ``force``. Writes no manifest: array tasks run this concurrently."""
    n = campaign.config.shard.n_shards
    if shard is not None and not 0 <= shard < n:
        raise ConfigError(f"shard {shard} does not exist; the campaign has shards 0-{n - 1}")
    outputs, counts, skipped = [], {}, True
    for i in range(n) if shard is None else [shard]:
        src, dest = source(campaign, i), output(campaign.root, i)
        outputs.append(dest)
        why = None if force else stale_reason(dest, src, cfg)
        if not force and why is None:
            continue
        problem = verify_file(src)
        if problem is not None:
            raise FileNotFoundError(f"input of shard {i} is missing or corrupted ({problem}); "
                                    "run the stage before this one for that shard")
        _log_recomputed([dest], lambda _: why)
        skipped = False
        for key, value in run(src, dest).items():
            counts[key] = counts.get(key, 0) + value
    return StageReport(outputs, counts, skipped)


class RelaxRunner:
    """The relax stage's energy model, optimiser settings and graphite reference, set up
    once (on first use) and reused for every file a process relaxes."""

    def __init__(self, cfg: RelaxConfig):
        self.cfg = cfg
        self._setup: tuple | None = None

    def setup(self) -> tuple:
        """(model, optimiser parameters, graphite energy per atom), built on first call."""
        if self._setup is None:
            from hpcxtal.relax.engine import RelaxParams
            from hpcxtal.relax.models import load_model
            from hpcxtal.relax.reference import graphite_energy

            cfg = self.cfg
            model = load_model(cfg.backend, cfg.model, cfg.dtype, cfg.device, cfg.model_dir)
            log.info("energy model: %s (%s)", model.source, cfg.dtype)
            params = RelaxParams(optimizer=cfg.optimizer, fmax_eV_per_A=cfg.fmax_eV_per_A,
                                 max_steps=cfg.max_steps,
                                 steps_per_atom=cfg.steps_per_atom,
                                 batch_atom_budget=cfg.batch_atom_budget,
                                 batch_edge_budget=cfg.batch_edge_budget,
                                 symmetrize=cfg.symmetrize, symprec_A=cfg.symprec_A)
            self._setup = (model, params, graphite_energy(model, params))
        return self._setup

    def run(self, src: Path, dest: Path, **attrs: object) -> dict[str, int]:
        """Relax the rows of ``src`` that are worth it into ``dest``: every row of a plain
        table, or the CN-valid topology representatives of a topology file (the rest
        pass through with the reason in ``status``); quarantined rows pass through."""
        from hpcxtal.relax.table import relax_table, relax_selection, status_counts

        table, quarantine = read_table(src)
        model, params, e_graphite = self.setup()
        chosen, skipped = relax_selection(table)
        out = relax_table(table, model, params, e_graphite, chosen, skipped)
        counts = status_counts(out, self.cfg.low_energy_window_eV)
        write_table(dest, out, kind="relax", quarantine=quarantine, source=str(src),
                    source_sha256=file_summary(src)["attrs"]["sha256"],
                    stage_config=json.dumps(to_mapping(self.cfg)),
                    e_graphite_eV_per_atom=e_graphite,
                    low_energy_window_eV=self.cfg.low_energy_window_eV,
                    **model.describe(), **{f"n_{k}": v for k, v in counts.items() if k != "rows"}, **attrs)
        log.info("%s: %d rows, %d relaxed: %d converged, %d not converged, %d failed, %d within "
                 "%.2f eV/atom of graphite", dest, counts["rows"], counts["relaxed"],
                 counts["converged"], counts["not_converged"], counts["failed"],
                 counts["low_energy"], self.cfg.low_energy_window_eV)
        return counts


def relax_file(src: Path, dest: Path, cfg: RelaxConfig, **attrs: object) -> dict[str, int]:
    """The relax stage on explicit files: ``src`` relaxed into ``dest``."""
    return RelaxRunner(cfg).run(src, dest, **attrs)


def _topology_input(campaign: Campaign, shard: int) -> Path:
    return topology_output(campaign.root, shard)


def relax_campaign(campaign: Campaign, shard: int | None, force: bool = False) -> StageReport:
    """The campaign's ``relax`` stage on the topology output of shard ``shard`` (or all);
    one energy model serves every shard the process relaxes."""
    runner = RelaxRunner(campaign.config.relax)
    return _per_shard(campaign, shard, force, _topology_input, relax_output,
                      campaign.config.relax,
                      lambda src, dest: runner.run(src, dest, campaign_id=campaign.campaign_id))


def merge_files(sources: list[Path], dest: Path, cfg: MergeConfig,
                topology: TopologyConfig | None = None, pool: Path | None = None,
                workers: int | None = None, **attrs: object) -> dict[str, int]:
    """The merge stage on explicit files: relax outputs ``sources`` into one ranked
    database ``dest``. Every input is verified first; with ``pool`` (the pool the rows
    came from) its quarantine is carried for the accounting, and every pool row must be
    in exactly one input. ``topology`` gives the signature settings for the training
    structures' keys (default: the topology stage's defaults)."""
    import numpy as np

    from hpcxtal.store.database import build_database, read_relax_outputs
    from hpcxtal.store.hdf5 import StoreError
    from hpcxtal.topology.annotate import SignatureParams
    from hpcxtal.topology.training import training_set

    inputs = read_relax_outputs(sources)
    pool_quarantine = None
    digest = [file_summary(p)["attrs"]["sha256"] for p in sources]
    if pool is not None:
        pool_table, pool_quarantine = read_table(pool)
        digest.append(file_summary(pool)["attrs"]["sha256"])
        have = np.sort(np.concatenate([t["id"] for t, _ in inputs]))
        if not np.array_equal(have, np.sort(pool_table["id"])):
            lost = np.setdiff1d(pool_table["id"], have)[:10].tolist()
            extra = np.setdiff1d(have, pool_table["id"])[:10].tolist()
            raise StoreError(f"{pool}: the relax outputs do not hold exactly the pool's rows "
                             f"(missing ids {lost}, ids not in the pool {extra})")
    topology = topology or TopologyConfig()
    params = SignatureParams(cutoffs=topology.cutoffs(), depth=topology.depth,
                             max_ring=topology.max_ring)
    training = training_set(resolve_input(cfg.training), params, workers) if cfg.training else {}
    first = inputs[0][0].attrs
    window = (cfg.low_energy_window_eV if cfg.low_energy_window_eV is not None
              else float(first.get("low_energy_window_eV", RelaxConfig().low_energy_window_eV)))
    table, quarantine = build_database(inputs, cfg, training, window, pool_quarantine)
    model = {k: v for k, v in first.items() if k.startswith("model_")}
    n_sampled = (len(table) + len(quarantine) if pool is None
                 else len(pool_table) + len(pool_quarantine or []))
    counts = {"rows": len(table), "quarantined": len(quarantine),
              "relaxed": int((table.structures.natoms > 0).sum()),
              "unique": int(table["unique"].sum()), "low_energy": int(table["low_energy"].sum()),
              "in_training": int(table["in_training"].sum())}
    write_table(dest, table, kind="database", quarantine=quarantine,
                sources=json.dumps([str(p) for p in sources]),
                inputs_sha256=json.dumps(sorted(digest)),
                merge_config=json.dumps(to_mapping(cfg)),
                topology_config=json.dumps(to_mapping(topology)),
                e_graphite_eV_per_atom=float(first.get("e_graphite_eV_per_atom", np.nan)),
                low_energy_window_eV=window, n_sampled=n_sampled,
                **model, **attrs)
    log.info("%s: %d rows (%d relaxed, %d unique, %d within %.2f eV/atom of graphite, %d in "
             "the training set), %d quarantined", dest, counts["rows"], counts["relaxed"],
             counts["unique"], counts["low_energy"], window, counts["in_training"],
             counts["quarantined"])
    return counts


def _merge_inputs(campaign: Campaign) -> list[Path]:
    """The campaign's relax outputs, each checked current against its topology input."""
    paths = []
    for i in range(campaign.config.shard.n_shards):
        path = relax_output(campaign.root, i)
        if not is_current(path, _topology_input(campaign, i), campaign.config.relax):
            problem = verify_file(path) or "made from another topology file or relax config"
            raise FileNotFoundError(f"relax output of shard {i} is missing, corrupted or stale "
                                    f"({problem}); run 'hpcxtal relax {campaign.root} --shard "
                                    f"{i}' first")
        paths.append(path)
    return paths


def _merge_fingerprint(campaign: Campaign) -> dict[str, str] | None:
    """The attributes a current database records: its inputs' checksums and the
    configs (None while some input is missing or corrupted)."""
    paths = [relax_output(campaign.root, i) for i in range(campaign.config.shard.n_shards)]
    paths.append(campaign.pool_path)
    if any(verify_file(p) is not None for p in paths):
        return None
    cfg = campaign.config
    return {"inputs_sha256": json.dumps(sorted(file_summary(p)["attrs"]["sha256"] for p in paths)),
            "merge_config": json.dumps(to_mapping(cfg.merge)),
            "topology_config": json.dumps(to_mapping(cfg.topology))}


def merge_done(campaign: Campaign) -> bool:
    """Whether ``DIR/database.h5`` verifies and was merged from the present relax
    outputs and pool with the present config."""
    dest = database_output(campaign.root)
    want = _merge_fingerprint(campaign)
    if want is None or verify_file(dest) is not None:
        return False
    made = file_summary(dest)["attrs"]
    return all(made.get(k) == v for k, v in want.items())


def merge_campaign(campaign: Campaign, force: bool = False,
                   workers: int | None = None) -> StageReport:
    """The campaign's ``merge`` stage: every ``relax/relax-NNNN.h5`` (all must be
    current) and the pool's quarantine into ``DIR/database.h5``."""
    dest = database_output(campaign.root)
    if not force and merge_done(campaign):
        return StageReport([dest], skipped=True)
    sources = _merge_inputs(campaign)
    if not force:
        _log_recomputed([dest], lambda p: verify_file(p) or f"{p}: merged from other relax "
                                                           f"outputs, pool or config")
    cfg = campaign.config
    campaign.start("merge", sources + [campaign.pool_path], cfg.merge)
    counts = merge_files(sources, dest, cfg.merge, cfg.topology, campaign.pool_path,
                         workers or cfg.topology.workers, campaign_id=campaign.campaign_id)
    campaign.finish("merge", [dest], **counts)
    return StageReport([dest], counts)


@dataclass(frozen=True)
class StageSpec:
    """A campaign stage as the drivers see it: which executor runs it, whether it runs
    once per shard, the function that runs it on a campaign, and the outputs that show
    it complete (``shard`` is None for whole-campaign stages)."""

    name: str
    executor: str  # "gpu" or "cpu"
    per_shard: bool
    run: Callable[[Campaign, int | None, bool], StageReport]
    done: Callable[[Campaign, int | None], bool]  # complete (one shard of it, if per shard)


def _shard_files(campaign: Campaign) -> list[Path]:
    return [shard_path(campaign.shard_dir, i) for i in range(campaign.config.shard.n_shards)]


def _per_shard_done(source: Callable[[Campaign, int], Path], output: Callable[[Path, int], Path],
                    config: Callable[[Campaign], object]) -> Callable[[Campaign, int | None], bool]:
    def done(campaign: Campaign, shard: int | None) -> bool:
        shards = range(campaign.config.shard.n_shards) if shard is None else [shard]
        return all(is_current(output(campaign.root, i), source(campaign, i), config(campaign))
                   for i in shards)
    return done


#: The campaign's stages in order; drivers (CLI, Parsl, job arrays, MPI) run these.
PIPELINE: tuple[StageSpec, ...] = (
    StageSpec("sample", "cpu", False, lambda c, shard, force: sample_campaign(c, force),
              lambda c, shard: c.config.sample is None or _outputs_complete([c.pool_path])),
    StageSpec("import", "cpu", False, lambda c, shard, force: import_campaign(c, force),
              lambda c, shard: c.config.sample is not None or _outputs_complete([c.pool_path])),
    StageSpec("shard", "cpu", False, lambda c, shard, force: shard_campaign(c, force),
              lambda c, shard: _outputs_complete(_shard_files(c))),
    StageSpec("refine", "gpu", True, refine_campaign,
              _per_shard_done(_shard_input, refine_output, lambda c: c.config.refine)),
    StageSpec("rounds", "gpu", False, rounds_campaign,
              _per_shard_done(lambda c, i: refine_output(c.root, i), rounds_output,
                              lambda c: rounds_config(c.config.refine, c.config.rounds))),
    StageSpec("topology", "cpu", True, topology_campaign,
              _per_shard_done(_rounds_input, topology_output, lambda c: c.config.topology)),
    StageSpec("relax", "cpu", True, relax_campaign,
              _per_shard_done(_topology_input, relax_output, lambda c: c.config.relax)),
    StageSpec("merge", "cpu", False, lambda c, shard, force: merge_campaign(c, force),
              lambda c, shard=None: merge_done(c)),
)


def stage_spec(name: str) -> StageSpec:
    """The pipeline entry called ``name``."""
    for spec in PIPELINE:
        if spec.name == name:
            return spec
    raise KeyError(f"unknown stage {name!r}; stages are {[s.name for s in PIPELINE]}")

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

from hpcxtal.campaign import Campaign, ImportConfig, RelaxConfig, SampleConfig, ShardConfig
from hpcxtal.config import ConfigError, to_mapping
from hpcxtal.data import resolve_input
from hpcxtal.refine.rounds import rounds_config, rounds_output, run_rounds
from hpcxtal.refine.stage import refine_file, refine_output
from hpcxtal.relax.table import relax_output
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


def is_current(dest: Path, src: Path, cfg: object) -> bool:
    """Whether ``dest`` verifies and was made from the present ``src`` with ``cfg``:
    a recomputed input or a changed config makes a per-shard output stale."""
    if verify_file(dest) is not None or verify_file(src) is not None:
        return False
    made = file_summary(dest)["attrs"]
    return (made.get("source_sha256") == file_summary(src)["attrs"].get("sha256")
            and made.get("stage_config") == json.dumps(to_mapping(cfg)))


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
        if not force and is_current(dest, src, cfg):
            continue
        problem = verify_file(src)
        if problem is not None:
            raise FileNotFoundError(f"input of shard {i} is missing or corrupted ({problem}); "
                                    "run the stage before this one for that shard")
        skipped = False
        for key, value in run(src, dest).items():
            counts[key] = counts.get(key, 0) + value
    return StageReport(outputs, counts, skipped)


class RelaxRunner:
    """The relax stage's energy model, FIRE settings and graphite reference, set up
    once (on first use) and reused for every file a process relaxes."""

    def __init__(self, cfg: RelaxConfig):
        self.cfg = cfg
        self._setup: tuple | None = None

    def setup(self) -> tuple:
        """(model, FIRE parameters, graphite energy per atom), built on first call."""
        if self._setup is None:
            from hpcxtal.relax.fire import FireParams
            from hpcxtal.relax.models import load_model
            from hpcxtal.relax.reference import graphite_energy

            cfg = self.cfg
            model = load_model(cfg.backend, cfg.model, cfg.dtype, cfg.device, cfg.model_dir)
            log.info("energy model: %s (%s)", model.source, cfg.dtype)
            params = FireParams(fmax_eV_per_A=cfg.fmax_eV_per_A, max_steps=cfg.max_steps,
                                steps_per_atom=cfg.steps_per_atom,
                                batch_atom_budget=cfg.batch_atom_budget)
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
)


def stage_spec(name: str) -> StageSpec:
    """The pipeline entry called ``name``."""
    for spec in PIPELINE:
        if spec.name == name:
            return spec
    raise KeyError(f"unknown stage {name!r}; stages are {[s.name for s in PIPELINE]}")

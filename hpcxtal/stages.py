"""The stage registry: every campaign stage declared once.

A :class:`Stage` names the stage, the config section it computes with (its science
settings, defined next to its kernel), its inputs and outputs in the campaign layout
(:mod:`hpcxtal.layout`), the kernel that runs it on files, whether it runs once per
shard, its default executor and whether it can use a GPU (a site may move it there). The CLI's stage commands, the Parsl driver, job
arrays, MPI ranks, ``status`` and ``resume`` all read :data:`PIPELINE`: adding a stage
means adding one entry and its kernel. Whether an output is current is decided by
:mod:`hpcxtal.store.provenance` alone; resources (device, threads, workers, batch
budgets) never make an output stale.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from hpcxtal.campaign import Campaign, CampaignConfig
from hpcxtal.config import ConfigError
from hpcxtal.data import resolve_input
from hpcxtal.generate.config import SampleConfig
from hpcxtal.layout import (database_output, dedup_output, ledger_path, progress_path,
                            shard_path, stage_output)
from hpcxtal.progress import recording
from hpcxtal.refine.config import rounds_config
from hpcxtal.store.formats import ImportConfig, import_files
from hpcxtal.store.hdf5 import read_table, write_table
from hpcxtal.store.provenance import PROVENANCE
from hpcxtal.store.shard import ShardConfig, write_shards

log = logging.getLogger(__name__)

#: A stage's kernel on files: (inputs, output, attributes to record) -> row counts; the
#: first input is the table it works on, any others are what it consults.
Kernel = Callable[[list[Path], Path, dict], dict[str, int]]


@dataclass
class StageReport:
    """What a stage did: files written (or found complete) and row counts."""

    outputs: list[Path]
    counts: dict[str, int] = field(default_factory=dict)
    skipped: bool = False


@dataclass(frozen=True)
class Resources:
    """How a stage runs in this process; never part of a fingerprint."""

    workers: int | None = None  # processes of stages that fan out (refine, topology, relax, merge)
    device: str | None = None  # torch device for this process (an MPI rank's GPU)
    comm: Any = None  # mpi4py communicator of the rounds stage (None: one process)

    def apply(self, cfg: Any) -> Any:
        """``cfg`` with this process's device and workers where the section has them."""
        names = {f.name for f in dataclasses.fields(cfg)}
        changes = {k: v for k, v in (("device", self.device), ("workers", self.workers))
                   if v is not None and k in names}
        return dataclasses.replace(cfg, **changes) if changes else cfg


def import_pool(sources: list[str], dest: Path, cfg: ImportConfig,
                **attrs: object) -> StageReport:
    """Import CSV / CIF / extxyz / ASE db / hpcxtal tables into one pool file."""
    paths = [resolve_input(s) for s in sources]
    table, quarantine = import_files(paths, cfg.snap_tolerance_A, cfg.symmetry_tolerance_A,
                                     cfg.elements)
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


def _log_recomputed(dest: Path, why: str | None) -> None:
    """Warn, naming the file and the cause, about an existing output about to be
    recomputed because it is corrupted or stale."""
    if why is not None and dest.exists():
        log.warning("%s; recomputing it", why)


@dataclass(frozen=True)
class Stage:
    """One campaign stage: everything the drivers need to know about it.

    Per-shard stages (and ``rounds``, whose outputs are per shard) pair output i with
    ``inputs(campaign, i)``; whole-campaign stages pair each output with
    ``inputs(campaign, None)``. ``science`` gives the settings that enter the
    fingerprint (None: an output is complete once it verifies). Per-shard stages run
    ``kernel(cfg)`` on each stale shard (built once per process, so a model loads once);
    whole-campaign stages run ``run_whole``.
    """

    name: str
    executor: str  # default executor: "gpu" or "cpu"
    per_shard: bool
    inputs: Callable[[Campaign, int | None], list[Path]]
    outputs: Callable[[Campaign, int], list[Path]]  # shard i's outputs (whole stages: all)
    science: Callable[[CampaignConfig], Any] | None = None
    kernel: Callable[[Any], Kernel] | None = None
    run_whole: Callable[[Campaign, bool, Resources], StageReport] | None = None
    enabled: Callable[[CampaignConfig], bool] = lambda cfg: True
    shard_outputs: bool = False  # outputs are per shard although the stage runs whole
    uses_gpu: bool = False  # a site may place it on GPU nodes (``stages:`` in a site config)
    mpi: bool = False  # an MPI application: its ranks span a block of GPU nodes (rounds)

    def _shards(self, campaign: Campaign, shard: int | None) -> list[int | None]:
        if not (self.per_shard or self.shard_outputs):
            return [None]
        n = campaign.config.shard.n_shards
        if shard is None:
            return list(range(n))
        if not 0 <= shard < n:
            raise ConfigError(f"shard {shard} does not exist; the campaign has shards 0-{n - 1}")
        return [shard]

    def stale(self, campaign: Campaign, shard: int | None) -> list[tuple[Path, str]]:
        """Each output of ``shard`` (None: all) that is missing, corrupted or stale, with
        the reason in words; empty when the stage (that shard) is complete."""
        if not self.enabled(campaign.config):
            return []
        cfg = self.science(campaign.config) if self.science is not None else None
        out = []
        for i in self._shards(campaign, shard):
            sources = self.inputs(campaign, i)
            for dest in self.outputs(campaign, i if i is not None else 0):
                why = (PROVENANCE.problem(dest) if cfg is None
                       else PROVENANCE.stale_reason(dest, sources, cfg))
                if why is not None:
                    out.append((dest, why))
        return out

    def done(self, campaign: Campaign, shard: int | None = None) -> bool:
        """Whether the stage (shard ``shard`` of it) is complete and current."""
        return not self.stale(campaign, shard)

    def run(self, campaign: Campaign, shard: int | None = None, force: bool = False,
            resources: Resources | None = None) -> StageReport:
        """Run the stage (one shard of it) on the campaign; complete, current outputs are
        kept unless ``force``. What it wrote is left for the next ``status`` (see
        :mod:`hpcxtal.store.provenance`), which then need not read it again."""
        resources = resources or Resources()
        try:
            if self.run_whole is not None:
                return self.run_whole(campaign, force, resources)
            return self._run_shards(campaign, shard, force, resources)
        finally:
            PROVENANCE.save_written(ledger_path(campaign.root), campaign.root)

    def run_file(self, src: Path, dest: Path, cfg: Any,
                 resources: Resources | None = None) -> dict[str, int]:
        """A per-shard stage on explicit files: ``src`` into ``dest`` with the section
        ``cfg``, its provenance recorded as in a campaign; returns row counts."""
        kernel = self.kernel((resources or Resources()).apply(cfg))
        return kernel([Path(src)], Path(dest), PROVENANCE.stamp([Path(src)], cfg))

    def _run_shards(self, campaign: Campaign, shard: int | None, force: bool,
                    resources: Resources) -> StageReport:
        """Run a per-shard stage on shard ``shard`` (None: all in turn). Writes no
        manifest: array tasks run this concurrently, each on its own output file; a stage
        that is off in the config does nothing."""
        if not self.enabled(campaign.config):
            return StageReport([], skipped=True)
        cfg = self.science(campaign.config)
        kernel = None
        outputs, counts, skipped = [], {}, True
        for i in self._shards(campaign, shard):
            sources, (dest,) = self.inputs(campaign, i), self.outputs(campaign, i)
            outputs.append(dest)
            stale = [(dest, f"{dest}: --force")] if force else self.stale(campaign, i)
            if not stale:
                continue
            why = stale[0][1]
            for src in sources:
                problem = PROVENANCE.problem(src)
                if problem is not None:
                    raise FileNotFoundError(f"input of shard {i} is missing or corrupted "
                                            f"({problem}); run the stage before this one")
            if not force:
                _log_recomputed(dest, why)
            kernel = kernel or self.kernel(resources.apply(cfg))
            skipped = False
            stamp = dict(PROVENANCE.stamp(sources, cfg), campaign_id=campaign.campaign_id)
            log.info("%s shard %d: %s -> %s", self.name, i, sources[0], dest)
            with recording(progress_path(campaign.root, self.name, i), self.name, i):
                done = kernel(sources, dest, stamp)
            for key, value in done.items():
                counts[key] = counts.get(key, 0) + value
        return StageReport(outputs, counts, skipped)


def _redo(stage: Stage, campaign: Campaign, force: bool) -> bool:
    """Whether a whole-campaign stage must run: when ``force``, or when an output is
    missing or stale (each such output gets one warning naming it and the cause)."""
    stale = stage.stale(campaign, None)
    if not force:
        for dest, why in stale:
            _log_recomputed(dest, why)
    return force or bool(stale)


def _whole(name: str, make: Callable[[Campaign, Resources], StageReport],
           inputs: Callable[[Campaign], list[Path]],
           section: Callable[[CampaignConfig], Any]) -> Callable[[Campaign, bool, Resources], StageReport]:
    """A whole-campaign stage's run: skip while complete, else warn about what is
    redone and record the stage (inputs, ``section`` settings, counts) in the manifest
    around ``make``."""
    def run(campaign: Campaign, force: bool, resources: Resources) -> StageReport:
        stage = stage_spec(name)
        outputs = stage.outputs(campaign, 0)
        if not stage.enabled(campaign.config):
            campaign.record(name, status="off")
            return StageReport([], skipped=True)
        if not _redo(stage, campaign, force):
            return StageReport(outputs, skipped=True)
        campaign.start(name, inputs(campaign), section(campaign.config))
        report = make(campaign, resources)
        campaign.finish(name, report.outputs, **report.counts)
        return report
    return run


def _sample(campaign: Campaign, resources: Resources) -> StageReport:
    return sample_to_pool(campaign.pool_path, campaign.config.sample, campaign.config.seed,
                          campaign_id=campaign.campaign_id)


def _import(campaign: Campaign, resources: Resources) -> StageReport:
    cfg = campaign.config.import_
    return import_pool(cfg.inputs, campaign.pool_path, cfg, campaign_id=campaign.campaign_id)


def _shard(campaign: Campaign, resources: Resources) -> StageReport:
    if PROVENANCE.problem(campaign.pool_path) is not None:
        raise FileNotFoundError(f"{campaign.pool_path}: the pool is missing or does not verify; "
                                f"run 'hpcxtal import {campaign.root}' (or 'hpcxtal sample "
                                f"{campaign.root}') first")
    for old in campaign.shard_dir.glob("shard-*.h5"):
        old.unlink()
    return shard_pool(campaign.pool_path, campaign.shard_dir, campaign.config.shard,
                      campaign_id=campaign.campaign_id,
                      **PROVENANCE.stamp([campaign.pool_path], campaign.config.shard))


def _rounds(campaign: Campaign, force: bool, resources: Resources) -> StageReport:
    """The ``rounds`` stage (whole campaign; MPI ranks share it through
    ``resources.comm``): later rounds over all shards' invalid rows, then one final file
    per shard."""
    stage = stage_spec("rounds")
    n = campaign.config.shard.n_shards
    outputs = [stage_output("rounds", campaign.root, i) for i in range(n)]
    missing = [i for i in range(n)
               if PROVENANCE.problem(stage_output("refine", campaign.root, i)) is not None]
    if missing:  # (then every output is stale too)
        raise FileNotFoundError(f"round 1 is missing for shards {missing}; run 'hpcxtal refine "
                                f"{campaign.root}' first")
    if not _redo(stage, campaign, force):
        return StageReport(outputs, skipped=True)
    from hpcxtal.refine.rounds import run_rounds

    refine = resources.apply(campaign.config.refine)
    counts = run_rounds(campaign.root, n, lambda i: stage_output("refine", campaign.root, i),
                        refine, campaign.config.rounds, resources.comm)
    return StageReport(outputs, counts)


def _merge(campaign: Campaign, resources: Resources) -> StageReport:
    from hpcxtal.merge.stage import merge_files

    cfg = campaign.config
    energy = _energy_stage(cfg)
    sources = _energy_outputs(campaign)
    for i, path in enumerate(sources):
        stale = stage_spec(energy).stale(campaign, i)
        if stale:
            raise FileNotFoundError(f"{energy} output of shard {i} is missing, corrupted or stale "
                                    f"({stale[0][1]}); run 'hpcxtal {energy} {campaign.root} "
                                    f"--shard {i}' first")
    dest = database_output(campaign.root)
    stamp = PROVENANCE.stamp(_merge_inputs(campaign), _merge_science(cfg))
    counts = merge_files(sources, dest, cfg.merge, cfg.topology, campaign.pool_path,
                         resources.workers or cfg.topology.workers, cfg.refine.target,
                         campaign_id=campaign.campaign_id, **stamp)
    return StageReport([dest], counts)


def _dedup(campaign: Campaign, resources: Resources) -> StageReport:
    from hpcxtal.topology.dedup import cross_shard_index

    sources = _topology_outputs(campaign)
    missing = [i for i, p in enumerate(sources) if PROVENANCE.problem(p) is not None]
    if missing:
        raise FileNotFoundError(f"topology is missing or corrupted for shards {missing}; run "
                                f"'hpcxtal topology {campaign.root}' first")
    dest = dedup_output(campaign.root)
    counts = cross_shard_index(sources, dest, campaign_id=campaign.campaign_id,
                               **PROVENANCE.stamp(sources, campaign.config.topology))
    return StageReport([dest], counts)


def _topology_outputs(campaign: Campaign) -> list[Path]:
    return [stage_output("topology", campaign.root, i)
            for i in range(campaign.config.shard.n_shards)]



def _energy_stage(cfg: CampaignConfig) -> str:
    """The last stage that gives rows energies: rescore where it is on, else relax."""
    return "rescore" if cfg.rescore is not None else "relax"


def _energy_outputs(campaign: Campaign) -> list[Path]:
    stage = _energy_stage(campaign.config)
    return [stage_output(stage, campaign.root, i) for i in range(campaign.config.shard.n_shards)]


def _merge_inputs(campaign: Campaign) -> list[Path]:
    return [*_energy_outputs(campaign), campaign.pool_path]


def _rescore_science(cfg: CampaignConfig) -> Any:
    """The rescore section with its window resolved to the campaign's low-energy window
    (the rows it picks depend on it)."""
    window = cfg.rescore.window_eV
    return dataclasses.replace(cfg.rescore, window_eV=cfg.low_energy_window_eV
                               if window is None else window)


def _rescore_kernel(cfg: Any) -> Kernel:
    from hpcxtal.rescore.stage import rescore_kernel

    return rescore_kernel(cfg)


def _merge_science(cfg: CampaignConfig) -> dict:
    """The merge stage computes with its own section, the topology signature settings
    (relaxed, known and training structures' keys) and the target's coordination rule."""
    return {"merge": cfg.merge, "topology": cfg.topology, "target": cfg.refine.target}


def _relax_kernel(cfg: Any) -> Kernel:
    from hpcxtal.relax.stage import RelaxRunner

    runner = RelaxRunner(cfg)
    return lambda sources, dest, attrs: runner.run(sources[0], dest, *sources[1:], **attrs)


def _refine_kernel(cfg: Any) -> Kernel:
    from hpcxtal.refine.stage import refine_file

    return lambda sources, dest, attrs: refine_file(sources[0], dest, cfg, **attrs)


def _topology_kernel(cfg: Any) -> Kernel:
    from hpcxtal.topology.stage import topology_file

    return lambda sources, dest, attrs: topology_file(sources[0], dest, cfg, cfg.workers, **attrs)


def _shard_files(campaign: Campaign) -> list[Path]:
    return [shard_path(campaign.shard_dir, i) for i in range(campaign.config.shard.n_shards)]


def _shard_output(stage: str) -> Callable[[Campaign, int], list[Path]]:
    """Shard i's output file of ``stage``: a per-shard stage's output, and the input of
    the stage after it."""
    return lambda c, i: [stage_output(stage, c.root, i)]


#: The campaign's stages in order; drivers (CLI, Parsl, job arrays, MPI) run these.
PIPELINE: tuple[Stage, ...] = (
    Stage("sample", "cpu", False,
          inputs=lambda c, i: [], outputs=lambda c, i: [c.pool_path],
          run_whole=_whole("sample", _sample, lambda c: [], lambda cfg: cfg.sample),
          enabled=lambda cfg: cfg.sample is not None),
    Stage("import", "cpu", False,
          inputs=lambda c, i: [], outputs=lambda c, i: [c.pool_path],
          run_whole=_whole("import", _import,
                           lambda c: [resolve_input(s) for s in c.config.import_.inputs],
                           lambda cfg: cfg.import_),
          enabled=lambda cfg: cfg.sample is None),
    Stage("shard", "cpu", False,
          inputs=lambda c, i: [c.pool_path], outputs=lambda c, i: _shard_files(c),
          run_whole=_whole("shard", _shard, lambda c: [c.pool_path], lambda cfg: cfg.shard),
          science=lambda cfg: cfg.shard),
    Stage("refine", "gpu", True, inputs=lambda c, i: [shard_path(c.shard_dir, i)],
          outputs=_shard_output("refine"), science=lambda cfg: cfg.refine, kernel=_refine_kernel,
          uses_gpu=True),
    Stage("rounds", "gpu", False, inputs=_shard_output("refine"), outputs=_shard_output("rounds"),
          science=lambda cfg: rounds_config(cfg.refine, cfg.rounds), run_whole=_rounds,
          shard_outputs=True, uses_gpu=True, mpi=True),
    Stage("topology", "cpu", True, inputs=_shard_output("rounds"), outputs=_shard_output("topology"),
          science=lambda cfg: cfg.topology, kernel=_topology_kernel),
    Stage("dedup", "cpu", False, inputs=lambda c, i: _topology_outputs(c),
          outputs=lambda c, i: [dedup_output(c.root)], science=lambda cfg: cfg.topology,
          run_whole=_whole("dedup", _dedup, _topology_outputs, lambda cfg: cfg.topology)),
    Stage("relax", "cpu", True,
          inputs=lambda c, i: [stage_output("topology", c.root, i), dedup_output(c.root)],
          outputs=_shard_output("relax"), science=lambda cfg: cfg.relax, kernel=_relax_kernel,
          uses_gpu=True),
    Stage("rescore", "cpu", True, inputs=_shard_output("relax"), outputs=_shard_output("rescore"),
          science=_rescore_science, kernel=_rescore_kernel,
          enabled=lambda cfg: cfg.rescore is not None, uses_gpu=True),
    Stage("merge", "cpu", False, inputs=lambda c, i: _merge_inputs(c),
          outputs=lambda c, i: [database_output(c.root)], science=_merge_science,
          run_whole=_whole("merge", _merge, _merge_inputs, _merge_science)),
)


def stage_spec(name: str) -> Stage:
    """The pipeline entry called ``name``."""
    for spec in PIPELINE:
        if spec.name == name:
            return spec
    raise KeyError(f"unknown stage {name!r}; stages are {[s.name for s in PIPELINE]}")

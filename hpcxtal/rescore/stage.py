"""The rescore stage on files: a relax output in, the same rows with both tiers out.

The screen (the relax stage's model) ranks every candidate; rows it relaxed to
convergence within the low-energy window plus a margin are re-relaxed, starting from
their screen-relaxed structures, with the rescoring model
(:class:`~hpcxtal.rescore.config.RescoreConfig`), its energies taken relative to
graphite relaxed with that same model. The output holds every row of the input with:

========================  ========  ================================================
``energy``, ``e_rel``     float64   eV/atom (above graphite) of the row's best tier
``status``                str       that tier's relax outcome (``status_reason``,
                                    ``relax_steps`` likewise)
``tier``                  str       ``rescore`` where the rescore converged, else
                                    ``screen``: which model produced the three above
                                    and the structure
``energy_screen``         float64   the screen's numbers, every row
``e_rel_screen``, ``status_screen``
``energy_rescore``        float64   the rescoring model's numbers (NaN, ``skipped``
``e_rel_rescore``                   and why where a row was not rescored)
``status_rescore``, ``status_reason_rescore``, ``relax_steps_rescore``
========================  ========  ================================================

The structures are the best tier's relaxed structures; the closeness columns
(``energy_initial``, ``rms_displacement_A``, ``volume_change``) stay the screen's
(refined -> screen-relaxed). Attributes keep the screen model's (``model_*``,
``e_graphite_eV_per_atom``) and add the rescoring model's (``rescore_model_backend``,
``rescore_model_file``, ``rescore_model_sha256``, ``rescore_model_dtype``,
``rescore_e_graphite_eV_per_atom``) with ``rescore_window_eV`` and ``rescore_margin_eV``.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from hpcxtal.relax.config import RelaxConfig
from hpcxtal.relax.status import RelaxStatus
from hpcxtal.rescore.config import RescoreConfig
from hpcxtal.store.hdf5 import read_table, write_table
from hpcxtal.store.table import ROW_COLUMNS, Structures, Table, str_array

log = logging.getLogger(__name__)

#: Tiers a row's energy can come from, in the order a row reaches them.
TIERS = ("screen", "rescore")
#: Columns a rescore output adds to a relax output.
RESCORE_COLUMNS = ("tier", "energy_screen", "e_rel_screen", "status_screen", "energy_rescore",
                   "e_rel_rescore", "status_rescore", "status_reason_rescore",
                   "relax_steps_rescore")


def rescore_selection(table: Table, window_eV: float, margin_eV: float) -> np.ndarray:
    """Row indices the rescore re-relaxes: converged in the screen, with ``e_rel`` at
    most ``window_eV + margin_eV`` above graphite."""
    converged = table["status"] == RelaxStatus.CONVERGED
    return np.flatnonzero(converged & (np.asarray(table["e_rel"]) <= window_eV + margin_eV))


def _skip_reason(table: Table, i: int, limit: float) -> str:
    if table["status"][i] != RelaxStatus.CONVERGED:
        return f"screen relaxation {table['status'][i]}"
    return f"screen e_rel {table['e_rel'][i]:.3f} eV/atom above the rescore limit {limit:g}"


class RescoreRunner:
    """The rescoring model's runner (the relax stage's, with the rescore section's
    model and settings), built once per process and used for every shard it rescores."""

    def __init__(self, cfg: RescoreConfig):
        from hpcxtal.relax.stage import RelaxRunner

        from hpcxtal.relax.models import chgnet_weights, resolve_mace_model

        if cfg.backend == "mace":  # a missing file stops the stage here, in one line
            resolve_mace_model(cfg.model, cfg.model_dir)
        else:
            chgnet_weights("0.3.0")
        self.cfg = cfg
        self.runner = RelaxRunner(cfg.relax_config())

    def run(self, src: Path, dest: Path, **attrs: object) -> dict[str, int]:
        """Rescore the relax output ``src`` into ``dest`` (every row; the chosen ones
        re-relaxed); ``attrs`` (the provenance stamp) are recorded on the file."""
        table, quarantine = read_table(src)
        missing = [c for c in ("energy", "e_rel", "status") if c not in table]
        if missing or table.structures is None:
            raise ValueError(f"{src}: not a relax output (missing {missing or ['structures']}); "
                             "run 'hpcxtal relax' on it first")
        window = (self.cfg.window_eV if self.cfg.window_eV is not None
                  else float(table.attrs.get("low_energy_window_eV", RelaxConfig().low_energy_window_eV)))
        limit = window + self.cfg.margin_eV
        chosen = rescore_selection(table, window, self.cfg.margin_eV)
        n = len(table)
        energy, e_rel = np.full(n, np.nan), np.full(n, np.nan)
        status = [RelaxStatus.SKIPPED.value] * n
        reason = [_skip_reason(table, i, limit) for i in range(n)]
        steps = np.zeros(n, dtype=np.int32)
        if len(chosen):
            sub = Table({k: table[k] for k in ROW_COLUMNS}, table.structures).take(chosen)
            done = self.runner.relax(sub)
            reference = {k: v for k, v in done.attrs.items()
                         if k.startswith("model_") or k == "e_graphite_eV_per_atom"}
            energy[chosen], e_rel[chosen] = done["energy"], done["e_rel"]
            steps[chosen] = done["relax_steps"]
            for k, i in enumerate(chosen):
                status[i], reason[i] = str(done["status"][k]), str(done["status_reason"][k])
        else:  # nothing to rescore: the model's reference is still recorded
            model, _, e_graphite = self.runner.setup()
            reference = dict(model.describe(), e_graphite_eV_per_atom=e_graphite)
        out = _tiers(table, energy, e_rel, str_array(status), str_array(reason), steps,
                     None if not len(chosen) else (chosen, done))
        counts = _counts(out, window)
        write_table(dest, out, kind="rescore", quarantine=quarantine, source=str(src),
                    **{k: v for k, v in table.attrs.items()
                       if k.startswith("model_") or k in ("e_graphite_eV_per_atom",
                                                         "low_energy_window_eV")},
                    **{f"rescore_{k}": v for k, v in reference.items()},
                    rescore_window_eV=window, rescore_margin_eV=self.cfg.margin_eV,
                    **{f"n_{k}": v for k, v in counts.items() if k != "rows"}, **attrs)
        log.info("%s: %d rows, %d rescored (screen e_rel <= %.2f eV/atom): %d converged; "
                 "%d moved into and %d out of the %.2f eV/atom window", dest, counts["rows"],
                 counts["rescored"], limit, counts["converged"], counts["moved_in"],
                 counts["moved_out"], window)
        return counts


def _tiers(table: Table, energy: np.ndarray, e_rel: np.ndarray, status: np.ndarray,
           reason: np.ndarray, steps: np.ndarray,
           rescored: tuple[np.ndarray, Table] | None) -> Table:
    """``table`` with the best tier in the energy columns and structures, and both
    tiers' numbers in their own columns."""
    best = status == RelaxStatus.CONVERGED
    cols = dict(table.columns)
    cols.update(energy_screen=np.asarray(table["energy"], np.float64),
                e_rel_screen=np.asarray(table["e_rel"], np.float64),
                status_screen=table["status"], energy_rescore=energy, e_rel_rescore=e_rel,
                status_rescore=status, status_reason_rescore=reason,
                relax_steps_rescore=steps,
                tier=str_array(TIERS[1] if b else TIERS[0] for b in best))
    cols["energy"] = np.where(best, energy, table["energy"])
    cols["e_rel"] = np.where(best, e_rel, table["e_rel"])
    cols["status"] = str_array(np.where(best, status, table["status"]))
    cols["status_reason"] = str_array(np.where(best, reason, table["status_reason"]))
    cols["relax_steps"] = np.where(best, steps, table["relax_steps"]).astype(np.int32)
    structures = table.structures
    if rescored is not None:
        chosen, done = rescored
        where = {int(i): k for k, i in enumerate(chosen)}
        pick = [len(table) + where[i] if best[i] else i for i in range(len(table))]
        structures = Structures.concat([structures, done.structures]).take(np.array(pick))
    return Table(cols, structures, dict(table.attrs))


def _counts(out: Table, window_eV: float) -> dict[str, int]:
    """Rows, rows rescored and how they ended, rows the rescore moved into or out of
    the window, and low-energy rows by the best tier."""
    rescored = out["status_rescore"] != RelaxStatus.SKIPPED
    converged = out["status_rescore"] == RelaxStatus.CONVERGED
    inside_screen = out["e_rel_screen"] <= window_eV
    inside_rescore = out["e_rel_rescore"] <= window_eV
    best_converged = out["status"] == RelaxStatus.CONVERGED
    return {"rows": len(out), "rescored": int(rescored.sum()),
            "converged": int(converged.sum()),
            "not_converged": int((out["status_rescore"] == RelaxStatus.NOT_CONVERGED).sum()),
            "failed": int((out["status_rescore"] == RelaxStatus.FAILED).sum()),
            "moved_in": int((converged & ~inside_screen & inside_rescore).sum()),
            "moved_out": int((converged & inside_screen & ~inside_rescore).sum()),
            "low_energy": int((best_converged & (out["e_rel"] <= window_eV)).sum())}


def rescore_kernel(cfg: RescoreConfig):
    """The rescore stage's kernel on files, its model set up once per process."""
    runner = RescoreRunner(cfg)
    return lambda sources, dest, attrs: runner.run(sources[0], dest, **attrs)

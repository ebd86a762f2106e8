"""Agreement of the two energy tiers on the same structures: the screen (the relax
stage's model, hpcxtal-carbon by default) and the rescore (CHGNet 0.3.0, bundled).

The SACADA structures of at most --max-atoms atoms are relaxed by the relax stage's
kernel with the screen's settings, then every converged one is re-relaxed from its
screened structure by the rescore stage's kernel (margin large enough to take them
all), each tier's energies above graphite relaxed with its own model. From the two
files: Spearman rank correlation of screen and rescore e_rel (and of each with the
stored DFT ``vasp_energy``), the shift rescore - screen (quantiles, histogram), and
for the low-energy window (--window) and each margin m the rows a campaign would rescore
(screen e_rel <= window + m) and the false negatives it would miss (screen e_rel >
window + m but rescore e_rel <= window). The files stay in --work, so a second call
only analyses (delete them to re-run a tier).

With --campaign DIR the same figures come from a campaign's own rescore outputs
(DIR/rescore/rescore-*.h5) instead: its relaxed candidates, not SACADA. There the rescore
took only the rows within the campaign's window + margin, so false negatives can be
counted only for margins up to the campaign's; wider margins are left out.

    PYTHONPATH=. python benchmarks/bench_rescore.py --max-atoms 48 --workers 2 \\
        --json benchmarks/results/rescore-2026-12-03.json --figures benchmarks/results
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch
from benchlib import finish, machine
from scipy.stats import spearmanr

MARGINS = (0.0, 0.05, 0.10, 0.15, 0.20, 0.25, 0.30, 0.40)


def run_tiers(work: Path, max_atoms: int, workers: int, screen_fmax: float) -> dict:
    """Screen then rescore the small SACADA structures into ``work``; wall times."""
    from hpcxtal.data import SACADA_PATH
    from hpcxtal.relax.config import RelaxConfig
    from hpcxtal.rescore.config import RescoreConfig
    from hpcxtal.stages import Resources, stage_spec
    from hpcxtal.store.hdf5 import read_table, write_table

    work.mkdir(parents=True, exist_ok=True)
    times = {}
    if not (work / "pool.h5").exists():
        table, _ = read_table(SACADA_PATH)
        write_table(work / "pool.h5", table.take(np.flatnonzero(table.structures.natoms
                                                                <= max_atoms)), kind="pool")
    if not (work / "relax.h5").exists():
        start = time.perf_counter()
        stage_spec("relax").run_file(work / "pool.h5", work / "relax.h5",
                                     RelaxConfig(fmax_eV_per_A=screen_fmax),
                                     Resources(workers=workers))
        times["screen_s"] = time.perf_counter() - start
    if not (work / "rescore.h5").exists():
        start = time.perf_counter()
        stage_spec("rescore").run_file(work / "relax.h5", work / "rescore.h5",
                                       RescoreConfig(window_eV=0.0, margin_eV=1e3),
                                       Resources(workers=workers))
        times["rescore_s"] = time.perf_counter() - start
    return times


def campaign_rescore(campaign: Path):
    """A campaign's rescore outputs joined (every shard's rows, the attributes of the
    first) and the margin its rescore took."""
    from hpcxtal.store.hdf5 import read_table
    from hpcxtal.store.table import Table

    paths = sorted((campaign / "rescore").glob("rescore-*.h5"))
    if not paths:
        raise SystemExit(f"{campaign}: no rescore/rescore-*.h5 (has its rescore stage run?)")
    tables = [read_table(p)[0] for p in paths]
    out = Table.concat(tables)
    out.attrs = dict(tables[0].attrs)
    return out, float(out.attrs["rescore_margin_eV"])


def analyse(work: Path, window: float, campaign: Path | None = None) -> tuple[dict, dict]:
    """The agreement figures, and the arrays the plots need."""
    from hpcxtal.store.hdf5 import read_table

    max_margin = np.inf
    if campaign is None:
        out, _ = read_table(work / "rescore.h5")
        pool, _ = read_table(work / "pool.h5")
        dft = dict(zip(pool["id"].tolist(), pool["vasp_energy"].tolist()))
    else:
        out, max_margin = campaign_rescore(campaign)
        dft = {}
    both = (out["status_screen"] == "converged") & (out["status_rescore"] == "converged")
    screen, rescore = out["e_rel_screen"][both], out["e_rel_rescore"][both]
    vasp = np.array([dft.get(i, np.nan) for i in out["id"][both].tolist()])
    has_dft = np.isfinite(vasp)
    shift = rescore - screen
    q = np.quantile(shift, [0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0])
    margins = []
    for m in (m for m in MARGINS if m <= max_margin + 1e-9):
        take = screen <= window + m
        margins.append({"margin_eV": m, "rescored": int(take.sum()),
                        "false_negatives": int((~take & (rescore <= window)).sum()),
                        "screen_only_in_window": int(((screen <= window) & (rescore > window)).sum())})
    natoms = out.structures.natoms[both]
    result = {
        "structures": int(len(out)), "converged_both": int(both.sum()),
        "atoms": [int(natoms.min()), int(np.median(natoms)), int(natoms.max())],
        "screen_converged": int((out["status_screen"] == "converged").sum()),
        "rescore_status": {s: int((out["status_rescore"] == s).sum())
                           for s in sorted(set(out["status_rescore"].tolist()))},
        "spearman_screen_rescore": float(spearmanr(screen, rescore)[0]),
        "spearman_screen_dft": (float(spearmanr(screen[has_dft], vasp[has_dft])[0])
                                if has_dft.sum() > 1 else None),
        "spearman_rescore_dft": (float(spearmanr(rescore[has_dft], vasp[has_dft])[0])
                                 if has_dft.sum() > 1 else None),
        "n_dft": int(has_dft.sum()),
        "shift_eV_per_atom": dict(zip(("min", "p05", "q25", "median", "q75", "p95", "max"),
                                      map(float, q))),
        "mean_abs_shift_eV_per_atom": float(np.abs(shift).mean()),
        "window_eV": window,
        "in_window": {"screen": int((screen <= window).sum()),
                      "rescore": int((rescore <= window).sum())},
        "margins": margins,
        "graphite_eV_per_atom": {"screen": float(out.attrs["e_graphite_eV_per_atom"]),
                                 "rescore": float(out.attrs["rescore_e_graphite_eV_per_atom"])},
        "models": {k: str(v) for k, v in out.attrs.items() if "model_" in k},
        "rescore_steps_median": float(np.median(out["relax_steps_rescore"][both])),
    }
    return result, {"screen": screen, "rescore": rescore, "shift": shift}


def plot(arrays: dict, window: float, folder: Path, stem: str) -> list[str]:
    """Scatter (screen vs rescore e_rel, the window marked) and shift histogram PNGs."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 4))
    ax = fig.add_subplot(1, 2, 1)
    x, y = arrays["screen"], arrays["rescore"]
    ax.scatter(x, y, s=12, edgecolors="none")
    lo, hi = min(x.min(), y.min()), max(x.max(), y.max())
    ax.plot([lo, hi], [lo, hi], color="0.6", lw=0.8)
    ax.axvline(window, color="tab:red", ls="--", lw=0.8)
    ax.axhline(window, color="tab:red", ls="--", lw=0.8)
    ax.set(xlabel="screen (hpcxtal-carbon) E - E_graphite, eV/atom",
           ylabel="rescore (CHGNet) E - E_graphite, eV/atom", title="Same structures, two tiers")
    ax = fig.add_subplot(1, 2, 2)
    ax.hist(arrays["shift"], bins=30, color="tab:cyan")
    ax.set(xlabel="rescore - screen (eV/atom)", ylabel="structures", title="Energy shift")
    fig.tight_layout()
    path = folder / f"{stem}.png"
    fig.savefig(path, dpi=90)
    return [str(path)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--max-atoms", type=int, default=48)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--screen-fmax", type=float, default=0.05)
    p.add_argument("--window", type=float, default=0.55)
    p.add_argument("--work", type=Path, default=Path("build/bench-rescore"))
    p.add_argument("--campaign", type=Path,
                   help="analyse this campaign's rescore outputs instead of SACADA")
    p.add_argument("--json")
    p.add_argument("--figures", type=Path)
    args = p.parse_args()
    torch.set_num_threads(1)  # workers are pinned to one core, one thread each; so is this
    load_before = os.getloadavg()
    times = ({} if args.campaign else
             run_tiers(args.work, args.max_atoms, args.workers, args.screen_fmax))
    result, arrays = analyse(args.work, args.window, args.campaign)
    report = {"machine": machine(1), "workers": args.workers, "args": vars(args) | {
        "work": str(args.work), "figures": str(args.figures), "campaign": str(args.campaign)}, "times": times,
        "load_before": load_before, **result}
    if args.figures:
        report["figures"] = plot(arrays, args.window, args.figures, Path(args.json or "rescore").stem)
    finish(report, args.json)


if __name__ == "__main__":
    main()

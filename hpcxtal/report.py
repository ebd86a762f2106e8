"""Campaign metrics, the accounting of every sampled row, plots and one HTML page.

Everything is computed from a database (``hpcxtal merge``): its rows (every decodable
sampled row, relaxed or not, with its class in ``class``) and its quarantine (rows
that never decoded). Headline metrics follow the published workflow, each given
*before* the post-relax checks (on refined structures, as the workflow counted them
before this stage existed) and *after* them (on relaxed, re-validated structures):

- ``N_sampled``: rows sampled (pool rows + quarantined)
- ``N_valid_xtal``: rows whose structure has the stated space group (spglib at the
  merge tolerance); a property of the sampled rows, the same before and after
- ``N_valid_env``: before, rows CN-valid after refinement; after, those whose relaxed
  structure (their own, or their representative's) still keeps the coordination rule
- ``N_unique``: before, converged relaxations (topology representatives of the refined
  structures); after, own representative after the relaxed de-duplication, 3-D, motif
  kept (class new, or known 3-D nets)
- ``N_train``: unique structures that match a training structure
- ``N_low_E`` (``N_low_E_cubic``): unique structures within the low-energy window (cubic)
- ``N_new``, ``N_new_low_E`` (after only): class ``new``, and those within the window

per refinement round (rows counted in the round they were last refined in; after the
checks) and cumulative. The accounting puts every sampled row in exactly one class of
:class:`~hpcxtal.screen.validate.RowClass` (read from the ``class`` column) and checks
that they add up to N_sampled.
"""
from __future__ import annotations

import base64
import html
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hpcxtal.merge.database import FIRST_CUBIC_SPG, MergeConfig, read_database
from hpcxtal.relax.status import RelaxStatus
from hpcxtal.screen.validate import RowClass
from hpcxtal.store.hdf5 import atomic_path, file_summary, write_text_atomic
from hpcxtal.store.table import Table

log = logging.getLogger(__name__)
#: Accounting classes, in the order they are printed.
CLASSES = tuple(c.value for c in RowClass)
#: Headline metrics, given before and after the post-relax checks.
HEADLINE = ("N_valid_xtal", "N_valid_env", "N_unique", "N_train", "N_low_E", "N_low_E_cubic")
#: Metrics per round (after the checks).
METRICS = HEADLINE[1:] + ("N_new", "N_new_low_E")


@dataclass
class Accounting:
    """Every sampled row in one class; ``closes`` if they add up to ``n_sampled`` and
    the database is self-consistent (``problems`` says what is wrong otherwise)."""

    counts: dict[str, int]
    n_sampled: int
    detail: dict[str, dict[str, int]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def closes(self) -> bool:
        return self.total == self.n_sampled and not self.problems


def _detail(table: Table, i: int, cls: str) -> str:
    """What kind of ``cls`` row ``i`` is, from data columns (never from reason text)."""
    status = table["status"][i]
    if cls == RowClass.DUPLICATE:
        return ("structure after relaxation" if status == RelaxStatus.CONVERGED
                else "topology before relaxation")
    if cls == RowClass.FAILED:
        return ("no signature after relaxation" if status == RelaxStatus.CONVERGED
                else "no signature before relaxation" if status == RelaxStatus.SKIPPED
                else f"relaxation {status}")
    if cls == RowClass.KNOWN:
        return str(table["known_phase"][i])
    if cls == RowClass.LOW_DIMENSIONAL:
        return f"{int(table['dimension_relaxed'][i])}-periodic"
    return ""


def accounting(table: Table, quarantine: Table, n_sampled: int) -> Accounting:
    """Count every row's class, count kinds per class and check the books."""
    classes = table["class"]
    counts = {c: int((classes == c).sum()) for c in CLASSES if c != RowClass.QUARANTINED}
    counts[RowClass.QUARANTINED.value] = len(quarantine)
    detail: dict[str, dict[str, int]] = {}
    for i, c in enumerate(classes):
        kind = _detail(table, i, c)
        if kind:
            d = detail.setdefault(str(c), {})
            d[kind] = d.get(kind, 0) + 1
    for r in quarantine["reason"]:
        d = detail.setdefault(RowClass.QUARANTINED.value, {})
        key = str(r).split(":")[0][:60]  # the quarantine's reason is text only: its first clause
        d[key] = d.get(key, 0) + 1
    problems = []
    unknown = sorted(set(classes.tolist()) - set(CLASSES))
    if unknown:
        problems.append(f"unknown classes {unknown}")
    ids = np.concatenate([table["id"], quarantine["id"]])
    if len(np.unique(ids)) != len(ids):
        problems.append("some ids occur more than once")
    # A duplicate points to the row that stands for its structure: any row that is not
    # itself a duplicate (a failed one too: its duplicates were never relaxed).
    kind = dict(zip(table["id"].tolist(), classes.tolist()))
    dangling = [int(i) for i, d, c in zip(table["id"], table["duplicate_of"], classes)
                if c == RowClass.DUPLICATE and kind.get(int(d), RowClass.DUPLICATE) == RowClass.DUPLICATE]
    if dangling:
        problems.append(f"{len(dangling)} duplicates point to no representative row "
                        f"(ids {dangling[:5]})")
    total = sum(counts.values())
    if total != n_sampled:
        problems.append(f"classes add up to {total}, but {n_sampled} rows were sampled")
    return Accounting(counts, n_sampled, detail, problems)


def _flags(table: Table, window: float) -> dict[str, dict[str, np.ndarray]]:
    """Per side (before / after the post-relax checks) and metric, which rows it counts."""
    converged = table["status"] == RelaxStatus.CONVERGED
    low = table["e_rel"] <= window
    cubic = table["spg_relaxed"] >= FIRST_CUBIC_SPG
    new = table["class"] == RowClass.NEW
    valid_xtal = np.asarray(table["valid_xtal"], bool)
    before = {"N_valid_xtal": valid_xtal, "N_valid_env": np.asarray(table["valid"], bool),
              "N_unique": converged, "N_train": converged & (table["training_match"] != ""),
              "N_low_E": converged & low, "N_low_E_cubic": converged & low & cubic}
    after = {"N_valid_xtal": valid_xtal, "N_valid_env": table["valid_relaxed"],
             "N_unique": table["unique"], "N_train": table["in_training"],
             "N_low_E": table["low_energy"], "N_low_E_cubic": table["low_energy"] & table["cubic"],
             "N_new": new, "N_new_low_E": new & low}
    return {"before": before, "after": after}


def _quantiles(values: np.ndarray) -> dict[str, float | int]:
    v = values[np.isfinite(values)]
    if not len(v):
        return {"n": 0}
    q = np.quantile(v, [0.0, 0.25, 0.5, 0.75, 1.0])
    return {"n": int(len(v)), **{k: float(x) for k, x in zip(("min", "q25", "median", "q75", "max"), q)}}


def closeness(table: Table) -> dict[str, object]:
    """Distributions of how far relaxation moved the converged structures."""
    conv = table["status"] == RelaxStatus.CONVERGED
    return {"n_converged": int(conv.sum()),
            "matched": int(np.sum(table["relaxed_match"] & conv)),
            "rms_displacement_A": _quantiles(table["rms_displacement_A"][conv]),
            "volume_change": _quantiles(table["volume_change"][conv]),
            "energy_change_eV_per_atom": _quantiles(table["energy_change"][conv])}


def known_refound(table: Table) -> list[dict[str, object]]:
    """Every known phase a converged relaxed structure matches: rows (duplicates
    included), the lowest-energy one's id and e_rel; by e_rel."""
    out: dict[str, dict[str, object]] = {}
    for i in np.flatnonzero(table["known_phase"] != ""):  # rows are in rank order
        entry = out.setdefault(str(table["known_phase"][i]), {
            "phase": str(table["known_phase"][i]), "rows": 0, "id": int(table["id"][i]),
            "e_rel": float(table["e_rel"][i]), "dimension": int(table["dimension_relaxed"][i])})
        entry["rows"] = int(entry["rows"]) + 1  # type: ignore[call-overload]
    return list(out.values())


def tiers(table: Table, window: float) -> dict[str, object]:
    """The two energy tiers side by side: rows rescored and how the rescore ended, rows
    it moved into or out of the window, unique rows within the window by the screen's
    energy, by the rescore's (rows it reached) and by the best tier (the headline), the
    Spearman rank correlation of the two tiers' e_rel and the shift rescore - screen."""
    from scipy.stats import spearmanr

    rescored = table["status_rescore"] != RelaxStatus.SKIPPED
    both = (table["status_rescore"] == RelaxStatus.CONVERGED) & np.isfinite(table["e_rel_screen"])
    screen_in, rescore_in = table["e_rel_screen"] <= window, table["e_rel_rescore"] <= window
    shift = table["e_rel_rescore"][both] - table["e_rel_screen"][both]
    rho = (float(spearmanr(table["e_rel_screen"][both], table["e_rel_rescore"][both])[0])
           if both.sum() > 2 else None)
    unique = table["unique"]
    return {"rescored": int(rescored.sum()), "converged": int(both.sum()),
            "not_converged": int((table["status_rescore"] == RelaxStatus.NOT_CONVERGED).sum()),
            "failed": int((table["status_rescore"] == RelaxStatus.FAILED).sum()),
            "moved_in": int((both & ~screen_in & rescore_in).sum()),
            "moved_out": int((both & screen_in & ~rescore_in).sum()),
            "N_low_E_screen": int((unique & screen_in).sum()),
            "N_low_E_rescore": int((unique & both & rescore_in).sum()),
            "N_low_E_best": int(table["low_energy"].sum()),
            "spearman": rho, "shift_eV_per_atom": _quantiles(shift)}


def metrics(table: Table, n_sampled: int, window: float = 0.55) -> dict[str, object]:
    """Headline metrics after the checks (also under ``after``), the same ``before`` them,
    class counts, known phases re-found, closeness, the two energy tiers, and per-round rows (``per_round``:
    round, the metrics found in it, and ``cumulative``)."""
    flags = _flags(table, window)
    sides = {side: {k: int(np.sum(v)) for k, v in f.items()} for side, f in flags.items()}
    overall: dict[str, object] = {"N_sampled": n_sampled, **sides["after"], **sides}
    overall["classes"] = {c: int(np.sum(table["class"] == c)) for c in CLASSES
                          if c != RowClass.QUARANTINED}
    overall["known_phases"] = known_refound(table)
    overall["closeness"] = closeness(table)
    overall["tiers"] = tiers(table, window)
    after = flags["after"]
    per_round, running = [], {k: 0 for k in METRICS}
    for r in np.unique(table["round"]).tolist():
        here = table["round"] == r
        found = {k: int(np.sum(after[k] & here)) for k in METRICS}
        running = {k: running[k] + found[k] for k in METRICS}
        per_round.append({"round": int(r), **found, "cumulative": dict(running)})
    overall["per_round"] = per_round
    return overall


def _figures(table: Table, out_dir: Path, window: float) -> dict[str, Path]:
    """The report's PNGs: energy histogram, energy vs volume by class, closeness of
    refined and relaxed structures, cumulative counts per round, space groups, the two
    energy tiers (where rows were rescored), sizes
    (matplotlib without pyplot: no global state, no display needed)."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    unique = table["unique"]
    e = table["e_rel"][unique]
    natoms = table.structures.natoms[unique]
    paths = {}

    def save(fig: Figure, name: str, counts: bool = True) -> None:
        for ax in fig.axes if counts else []:  # counts are whole numbers
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        fig.tight_layout()
        paths[name] = out_dir / f"{name}.png"
        with atomic_path(paths[name]) as tmp:
            fig.savefig(tmp, dpi=100, format="png")

    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    conv = (table["status"] == RelaxStatus.CONVERGED) & np.isfinite(table["e_rel"])
    converged = table["e_rel"][conv]
    bins = np.histogram_bin_edges(np.append(converged, [0.0, window]), bins=40)
    ax.hist(converged, bins=bins, color="0.8", label="converged (all)")
    ax.hist(e, bins=bins, color="tab:blue", label="unique")
    ax.axvline(window, color="tab:red", ls="--", label=f"low-energy window {window:g} eV/atom")
    ax.set(xlabel="energy above graphite (eV/atom)", ylabel="structures",
           title="Energy above graphite")
    ax.legend()
    save(fig, "energy_histogram")

    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    s = table.structures
    volume = np.array([abs(np.linalg.det(s.lattice[i])) / max(int(s.natoms[i]), 1)
                       for i in range(len(table))])
    for c, colour in zip(CLASSES, ("tab:red", "tab:blue", "tab:orange", "tab:purple", "0.75",
                                   "k", "tab:brown")):
        pick = conv & (table["class"] == c)
        if pick.any():
            ax.scatter(volume[pick], table["e_rel"][pick], s=14, color=colour,
                       label=f"{c} ({int(pick.sum())})", alpha=0.8, edgecolors="none")
    ax.axhline(window, color="tab:red", ls="--", lw=0.8)
    ax.set(xlabel="volume per atom (Å³)", ylabel="energy above graphite (eV/atom)",
           title="Relaxed structures by class")
    ax.legend(fontsize="small")
    save(fig, "energy_volume", counts=False)

    fig = Figure(figsize=(9, 3.2))
    for k, (name, label) in enumerate((("rms_displacement_A", "RMS displacement (Å)"),
                                       ("volume_change", "relative volume change"),
                                       ("energy_change", "energy change (eV/atom)"))):
        ax = fig.add_subplot(1, 3, k + 1)
        values = table[name][conv]
        ax.hist(values[np.isfinite(values)], bins=30, color="tab:cyan")
        ax.set(xlabel=label, ylabel="structures")
    fig.suptitle(f"Refined -> relaxed: {int(np.sum(table['relaxed_match'] & conv))} of "
                 f"{int(conv.sum())} still match (StructureMatcher)")
    save(fig, "closeness")

    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    rounds = np.unique(table["round"])
    after = _flags(table, window)["after"]
    for k in METRICS:
        flags = after[k]
        cum = np.cumsum([np.sum(flags & (table["round"] == r)) for r in rounds])
        ax.plot(rounds, cum, marker="o", label=k)
    ax.set(xlabel="refinement round", ylabel="cumulative count", title="Counts per round",
           xticks=rounds)
    ax.legend()
    save(fig, "rounds")

    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot()
    spg, count = np.unique(table["spg_relaxed"][unique], return_counts=True)
    top = np.argsort(-count, kind="stable")[:30]
    x = np.arange(len(top))  # positions, labelled: no categorical-units warning
    ax.bar(x, count[top], color="tab:green")
    ax.set_xticks(x, [str(s) for s in spg[top]])
    ax.set(xlabel="space group of the relaxed structure", ylabel="unique structures",
           title="Space groups (most frequent 30)")
    ax.tick_params(axis="x", labelrotation=90)
    save(fig, "space_groups")

    both = table["status_rescore"] == RelaxStatus.CONVERGED
    if both.any():
        fig = Figure(figsize=(5, 5))
        ax = fig.add_subplot()
        x, y = table["e_rel_screen"][both], table["e_rel_rescore"][both]
        ax.scatter(x, y, s=16, color="tab:blue", edgecolors="none")
        lo, hi = min(x.min(), y.min(), 0.0), max(x.max(), y.max(), window)
        ax.plot([lo, hi], [lo, hi], color="0.6", lw=0.8)
        ax.axvline(window, color="tab:red", ls="--", lw=0.8)
        ax.axhline(window, color="tab:red", ls="--", lw=0.8)
        ax.set(xlabel="screen: E - E_graphite (eV/atom)",
               ylabel="rescore: E - E_graphite (eV/atom)",
               title=f"Two tiers ({int(both.sum())} rows rescored)")
        save(fig, "tiers", counts=False)

    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    width = max(1, int(np.ceil(natoms.max(initial=0) / 40)))
    ax.hist(natoms, bins=np.arange(0, natoms.max(initial=0) + 2 * width, width) - width / 2,
            color="tab:purple")
    ax.set(xlabel="atoms in the relaxed cell", ylabel="unique structures", title="Sizes")
    save(fig, "sizes")
    return paths


class _Html(str):
    """Table cell text that is already HTML (a link), not to be escaped."""


def _table_html(header: list[str], rows: list[list[object]]) -> str:
    def cell(v: object) -> str:
        return v if isinstance(v, _Html) else html.escape(str(v))

    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _cif_link(row_id: int) -> _Html:
    return _Html(f"<a href='cif/{row_id}.cif'>{row_id}.cif</a>")


def top_rows(table: Table, n: int) -> list[list[object]]:
    """Rank, id, e_rel with its tier, the screen's e_rel, energy, space groups, Wyckoff, atoms, relaxed dimension and key,
    class, known phase, training overlap, origin and CIF of the ``n`` best unique
    structures."""
    out = []
    for rank, i in enumerate(np.flatnonzero(table["unique"])[:n], 1):
        out.append([rank, int(table["id"][i]), f"{table['e_rel'][i]:.4f}", table["tier"][i],
                    f"{table['e_rel_screen'][i]:.4f}", f"{table['energy'][i]:.4f}",
                    int(table["spg"][i]), int(table["spg_relaxed"][i]),
                    table["wyckoff_relaxed"][i], int(table.structures.natoms[i]),
                    int(table["dimension_relaxed"][i]), table["topology_relaxed"][i],
                    table["class"][i], table["known_phase"][i] or "-",
                    table["training_match"][i] or "-", table["origin"][i],
                    _cif_link(int(table["id"][i]))])
    return out


TOP_HEADER = ["rank", "id", "E - E_graphite (eV/atom)", "tier", "screen E - E_graphite",
              "E (eV/atom)", "spg (refined)",
              "spg (relaxed)", "Wyckoff (relaxed)", "atoms", "dim", "topology (relaxed)",
              "class", "known phase", "training match", "origin", "CIF"]


def _thumbnail(atoms, path: Path) -> Path:
    """A small PNG of ``atoms`` (2x2x1 cells, viewed slightly off axis)."""
    from ase.visualize.plot import plot_atoms
    from matplotlib.figure import Figure

    fig = Figure(figsize=(2.6, 2.6))
    ax = fig.add_subplot()
    plot_atoms(atoms.repeat((2, 2, 1)), ax, rotation="10x,20y,0z", radii=0.35)
    ax.set_axis_off()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=80, format="png")
    return path


def _data_uri(path: Path) -> str:
    return f"data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()}"


def _write_cifs(table: Table, rows: np.ndarray, out_dir: Path, symprec: float) -> None:
    """CIFs (symmetrised at ``symprec`` Å, named by id) of ``rows`` into ``out_dir/cif``."""
    from hpcxtal.store.formats import table_images, write_cif

    (out_dir / "cif").mkdir(exist_ok=True)
    for atoms in table_images(table.take(rows)):
        write_cif(atoms, out_dir / "cif" / f"{atoms.info['id']}.cif", symprec)


@dataclass
class Report:
    """What :func:`write_report` produced."""

    html: Path
    figures: dict[str, Path]
    metrics: dict[str, object]
    accounting: Accounting
    thumbnails: dict[int, Path] = field(default_factory=dict)


def write_report(db_path: Path, out_dir: Path, n_sampled: int | None = None,
                 top: int = 25, thumbnails: int = 8) -> Report:
    """Metrics, accounting, PNGs, ``metrics.json``, symmetrised CIFs of the ``top``
    unique structures, thumbnails of the best ``thumbnails`` new ones and a
    self-contained ``report.html`` (figures embedded, no scripts) for the database
    ``db_path`` into ``out_dir``. ``n_sampled`` (e.g. from the campaign's pool) defaults
    to the database's record."""
    table, quarantine = read_database(db_path)
    attrs = file_summary(db_path)["attrs"]
    n_sampled = int(attrs.get("n_sampled", len(table) + len(quarantine))
                    if n_sampled is None else n_sampled)
    window = float(attrs.get("low_energy_window_eV", 0.55))
    symprec = float(attrs.get("symprec_A", MergeConfig().symprec_A))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    books = accounting(table, quarantine, n_sampled)
    values = metrics(table, n_sampled, window)
    figures = _figures(table, out_dir, window)
    new_rows = np.flatnonzero(table["class"] == RowClass.NEW)[:thumbnails]
    _write_cifs(table, np.union1d(np.flatnonzero(table["unique"])[:top], new_rows), out_dir, symprec)
    (out_dir / "thumbs").mkdir(exist_ok=True)
    thumbs = {int(table["id"][i]): _thumbnail(table.structures.atoms(int(i)),
                                              out_dir / "thumbs" / f"{int(table['id'][i])}.png")
              for i in new_rows}
    write_text_atomic(out_dir / "metrics.json", json.dumps(
        {**values, "accounting": books.counts, "accounting_detail": books.detail,
         "accounting_closes": books.closes, "accounting_problems": books.problems},
        indent=2) + "\n")

    headline = [[k, values["before"][k], values["after"][k]] for k in HEADLINE]  # type: ignore[index]
    headline += [[k, "-", values[k]] for k in ("N_new", "N_new_low_E")]
    rounds = [[r["round"], *(f"{r[k]} ({r['cumulative'][k]})" for k in METRICS)]
              for r in values["per_round"]]  # type: ignore[union-attr]
    books_rows = [[c, books.counts[c], ", ".join(f"{k}: {v}" for k, v in
                                                 sorted(books.detail.get(c, {}).items()))]
                  for c in CLASSES]
    books_rows.append(["total", books.total, f"sampled: {books.n_sampled}"])
    verdict = ("<p class=ok>The accounting closes: every sampled row is counted once.</p>"
               if books.closes else "<p class=bad>The accounting does NOT close: "
               + html.escape("; ".join(books.problems)) + "</p>")
    known = [[p["phase"], p["rows"], p["id"], f"{p['e_rel']:.4f}", p["dimension"]]
             for p in values["known_phases"]]  # type: ignore[union-attr]
    close = values["closeness"]
    close_rows = [[name, *(f"{close[name].get(q, float('nan')):.4g}"  # type: ignore[index]
                           for q in ("min", "q25", "median", "q75", "max"))]
                  for name in ("rms_displacement_A", "volume_change", "energy_change_eV_per_atom")]
    images = "".join(
        f"<figure><img alt='{name}' src='{_data_uri(path)}'><figcaption>"
        f"{name.replace('_', ' ')}</figcaption></figure>" for name, path in figures.items())
    gallery = "".join(
        f"<figure class=thumb><img alt='structure {rid}' src='{_data_uri(path)}'><figcaption>"
        f"{_cif_link(rid)} e_rel {table['e_rel'][table['id'] == rid][0]:.3f}</figcaption></figure>"
        for rid, path in thumbs.items()) or "<p>No structure of class new.</p>"
    model = ", ".join(f"{k[6:]} {v}" for k, v in attrs.items() if k.startswith("model_"))
    rescore_model = ", ".join(f"{k[14:]} {v}" for k, v in attrs.items()
                              if k.startswith("rescore_model_"))
    tier = values["tiers"]
    tier_rows = [["screen (relax)", model or "unknown",
                  f"{attrs.get('e_graphite_eV_per_atom', float('nan')):.4f}",
                  tier["N_low_E_screen"]],  # type: ignore[index]
                 ["rescore", rescore_model or "off",
                  f"{attrs.get('rescore_e_graphite_eV_per_atom', float('nan')):.4f}",
                  tier["N_low_E_rescore"]],  # type: ignore[index]
                 ["best tier (headline)", "-", "-", tier["N_low_E_best"]]]  # type: ignore[index]
    shift = tier["shift_eV_per_atom"]  # type: ignore[index]
    rho = "-" if tier["spearman"] is None else f"{tier['spearman']:.3f}"  # type: ignore[index]
    tier_text = (f"{tier['rescored']} rows rescored (screen e_rel within "  # type: ignore[index]
                 f"{attrs.get('rescore_window_eV', window):g} + "
                 f"{attrs.get('rescore_margin_eV', float('nan')):g} eV/atom), "
                 f"{tier['converged']} converged, {tier['not_converged']} not converged, "
                 f"{tier['failed']} failed; the rescore moved {tier['moved_in']} rows into "
                 f"and {tier['moved_out']} out of the window. Spearman (screen vs rescore "
                 f"e_rel): {rho}; shift rescore - screen: median "
                 f"{shift.get('median', float('nan')):.3f}, range "
                 f"{shift.get('min', float('nan')):.3f} to {shift.get('max', float('nan')):.3f}"
                 " eV/atom.")
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>hpcxtal report: {html.escape(db_path.name)}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
th, td {{ border: 1px solid #bbb; padding: 0.25em 0.6em; text-align: right; }}
th {{ background: #eee; }}
figure {{ display: inline-block; margin: 0.5em; }}
img {{ max-width: 640px; }}
figure.thumb img {{ width: 200px; }}
.ok {{ color: #060; }} .bad {{ color: #a00; font-weight: bold; }}
</style></head><body>
<h1>hpcxtal campaign report</h1>
<p>Database {html.escape(str(db_path))}: {len(table)} rows, {len(quarantine)} quarantined.
Energies per atom above graphite relaxed with the same model ({html.escape(model or 'unknown')});
low energy = within {window:g} eV/atom. Target environment: {html.escape(str(attrs.get('target', 'graphite')))}.</p>
<h2>Headline counts before and after the post-relax checks</h2>
<p>Before: on refined structures (CN rule after refinement; unique = converged topology
representatives). After: on relaxed, re-validated structures (motif kept, 3-D, relaxed
de-duplication across shards; new = matches no known phase).</p>
{_table_html(["metric", "before", "after"], headline)}
<h2>Energy tiers</h2>
<p>Each row is ranked and classed by the best tier it reached (rescore where the rescore
converged, else screen); each tier's energies are above graphite relaxed with its own
model. {html.escape(tier_text)}</p>
{_table_html(["tier", "model", "E_graphite (eV/atom)", "unique within the window"], tier_rows)}
<h2>Per round, after the checks (cumulative in brackets)</h2>{_table_html(["round", *METRICS], rounds)}
<h2>Accounting</h2>{_table_html(["class", "rows", "kinds"], books_rows)}{verdict}
<h2>Known phases re-found</h2>{_table_html(["phase", "rows", "best id", "E - E_graphite (eV/atom)", "dim"], known)}
<h2>Refined to relaxed</h2><p>{close['matched']} of {close['n_converged']} converged
structures still match their refined structure (StructureMatcher).</p>
{_table_html(["quantity", "min", "25%", "median", "75%", "max"], close_rows)}
<h2>Best new structures</h2>{gallery}
<h2>Plots</h2>{images}
<h2>Top {top} unique structures</h2>{_table_html(TOP_HEADER, top_rows(table, top))}
</body></html>
"""
    path = write_text_atomic(out_dir / "report.html", page)
    return Report(path, figures, values, books, thumbs)

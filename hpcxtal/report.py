"""Campaign metrics, the accounting of every sampled row, plots and one HTML page.

Everything is computed from a database (``hpcxtal merge``): its rows (every decodable
sampled row, relaxed or not, with the reason in ``status``) and its quarantine (rows
that never decoded). Metrics follow the published workflow:

- ``N_sampled``: rows sampled (pool rows + quarantined)
- ``N_valid_xtal``: rows that decode to a crystal of the stated symmetry
- ``N_valid_env``: rows CN-valid after refinement
- ``N_unique``: converged relaxed structures that are their own representative after
  both de-duplications
- ``N_train``: unique structures that match a training structure
- ``N_low_E`` (``N_low_E_cubic``): unique structures within the low-energy window (cubic)

per refinement round (rows counted in the round they were last refined in) and
cumulative. The accounting puts every sampled row in exactly one class: unique,
duplicate (topology or structure), invalid (not CN-valid), failed (no signature, not
converged, relaxation failed) or quarantined, and checks that they add up to N_sampled.
"""
from __future__ import annotations

import base64
import html
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hpcxtal.merge.database import read_database
from hpcxtal.store.hdf5 import atomic_path, file_summary, write_text_atomic
from hpcxtal.store.table import Table

log = logging.getLogger(__name__)
#: Accounting classes, in the order they are printed.
CLASSES = ("unique", "duplicate", "invalid", "failed", "quarantined")
METRICS = ("N_valid_env", "N_unique", "N_train", "N_low_E", "N_low_E_cubic")


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


def row_classes(table: Table) -> np.ndarray:
    """The accounting class of every database row (quarantined rows are not rows)."""
    status = table["status"]
    out = np.empty(len(table), dtype=object)
    for i, s in enumerate(status):
        if table["unique"][i]:
            out[i] = "unique"
        elif s.startswith("skipped: topology duplicate") or (
                s == "converged" and table["duplicate_of"][i] != table["id"][i]):
            out[i] = "duplicate"
        elif not table["valid"][i]:
            out[i] = "invalid"
        else:
            out[i] = "failed"
    return out


def _reason(status: str) -> str:
    """A status without the ids it names, for counting reasons."""
    if status.startswith("skipped: topology duplicate"):
        return "topology duplicate"
    if status == "converged":
        return "structure duplicate"
    return status.split(" (")[0][:80]


def accounting(table: Table, quarantine: Table, n_sampled: int) -> Accounting:
    """Classify every row, count reasons per class and check the books."""
    classes = row_classes(table)
    counts = {c: int((classes == c).sum()) for c in CLASSES[:-1]}
    counts["quarantined"] = len(quarantine)
    detail: dict[str, dict[str, int]] = {}
    for c, s in zip(classes, table["status"]):
        if c in ("duplicate", "failed"):
            d = detail.setdefault(c, {})
            d[_reason(s)] = d.get(_reason(s), 0) + 1
    for r in quarantine["reason"]:
        d = detail.setdefault("quarantined", {})
        key = str(r).split(":")[0][:60]
        d[key] = d.get(key, 0) + 1
    problems = []
    ids = np.concatenate([table["id"], quarantine["id"]])
    if len(np.unique(ids)) != len(ids):
        problems.append("some ids occur more than once")
    # A duplicate points to the row that stands for its structure: a unique row, or a
    # representative whose relaxation failed (its duplicates were never relaxed).
    kind = dict(zip(table["id"].tolist(), classes))
    dangling = [int(i) for i, d, c in zip(table["id"], table["duplicate_of"], classes)
                if c == "duplicate" and kind.get(int(d), "duplicate") == "duplicate"]
    if dangling:
        problems.append(f"{len(dangling)} duplicates point to no representative row "
                        f"(ids {dangling[:5]})")
    total = sum(counts.values())
    if total != n_sampled:
        problems.append(f"classes add up to {total}, but {n_sampled} rows were sampled")
    return Accounting(counts, n_sampled, detail, problems)


def _flags(table: Table) -> dict[str, np.ndarray]:
    """Per metric, which rows it counts."""
    return {"N_valid_env": np.asarray(table["valid"], bool), "N_unique": table["unique"],
            "N_train": table["in_training"], "N_low_E": table["low_energy"],
            "N_low_E_cubic": table["low_energy"] & table["cubic"]}


def metrics(table: Table, n_sampled: int) -> dict[str, object]:
    """Overall metrics and per-round rows (``per_round``: round, the metrics found in it,
    and ``cumulative``)."""
    flags = _flags(table)
    overall: dict[str, object] = {"N_sampled": n_sampled, "N_valid_xtal": len(table)}
    overall.update({k: int(np.sum(v)) for k, v in flags.items()})
    per_round, running = [], {k: 0 for k in METRICS}
    for r in np.unique(table["round"]).tolist():
        here = table["round"] == r
        found = {k: int(np.sum(flags[k] & here)) for k in METRICS}
        running = {k: running[k] + found[k] for k in METRICS}
        per_round.append({"round": int(r), **found, "cumulative": dict(running)})
    overall["per_round"] = per_round
    return overall


def _figures(table: Table, out_dir: Path, window: float) -> dict[str, Path]:
    """The report's PNGs: energy histogram, cumulative counts per round, space groups,
    sizes (matplotlib without pyplot: no global state, no display needed)."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    unique = table["unique"]
    e = table["e_rel"][unique]
    natoms = table.structures.natoms[unique]
    paths = {}

    def save(fig: Figure, name: str) -> None:
        for ax in fig.axes:  # counts are whole numbers
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        fig.tight_layout()
        paths[name] = out_dir / f"{name}.png"
        with atomic_path(paths[name]) as tmp:
            fig.savefig(tmp, dpi=100, format="png")

    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    converged = table["e_rel"][(table["status"] == "converged") & np.isfinite(table["e_rel"])]
    bins = np.histogram_bin_edges(np.append(converged, [0.0, window]), bins=40)
    ax.hist(converged, bins=bins, color="0.8", label="converged (all)")
    ax.hist(e, bins=bins, color="tab:blue", label="unique")
    ax.axvline(window, color="tab:red", ls="--", label=f"low-energy window {window:g} eV/atom")
    ax.set(xlabel="energy above graphite (eV/atom)", ylabel="structures",
           title="Energy above graphite")
    ax.legend()
    save(fig, "energy_histogram")

    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    rounds = np.unique(table["round"])
    for k, flags in _flags(table).items():
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
    ax.bar([str(s) for s in spg[top]], count[top], color="tab:green")
    ax.set(xlabel="space group of the relaxed structure", ylabel="unique structures",
           title="Space groups (most frequent 30)")
    ax.tick_params(axis="x", labelrotation=90)
    save(fig, "space_groups")

    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    width = max(1, int(np.ceil(natoms.max(initial=0) / 40)))
    ax.hist(natoms, bins=np.arange(0, natoms.max(initial=0) + 2 * width, width) - width / 2,
            color="tab:purple")
    ax.set(xlabel="atoms in the relaxed cell", ylabel="unique structures", title="Sizes")
    save(fig, "sizes")
    return paths


def _table_html(header: list[str], rows: list[list[object]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in r) + "</tr>"
                   for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def top_rows(table: Table, n: int) -> list[list[object]]:
    """Rank, id, e_rel, energy, space groups, Wyckoff, atoms, dimension, key, training
    overlap and origin of the ``n`` best unique structures."""
    out = []
    for rank, i in enumerate(np.flatnonzero(table["unique"])[:n], 1):
        out.append([rank, int(table["id"][i]), f"{table['e_rel'][i]:.4f}",
                    f"{table['energy'][i]:.4f}", int(table["spg"][i]), int(table["spg_relaxed"][i]),
                    table["wyckoff_relaxed"][i], int(table.structures.natoms[i]),
                    int(table["dimension"][i]), table["topology"][i],
                    table["training_match"][i] or "-", table["origin"][i]])
    return out


TOP_HEADER = ["rank", "id", "E - E_graphite (eV/atom)", "E (eV/atom)", "spg (refined)",
              "spg (relaxed)", "Wyckoff (relaxed)", "atoms", "dim", "topology", "training match",
              "origin"]


@dataclass
class Report:
    """What :func:`write_report` produced."""

    html: Path
    figures: dict[str, Path]
    metrics: dict[str, object]
    accounting: Accounting


def write_report(db_path: Path, out_dir: Path, n_sampled: int | None = None,
                 top: int = 25) -> Report:
    """Metrics, accounting, PNGs, ``metrics.json`` and a self-contained ``report.html``
    (figures embedded, no scripts) for the database ``db_path`` into ``out_dir``.
    ``n_sampled`` (e.g. from the campaign's pool) defaults to the database's record."""
    table, quarantine = read_database(db_path)
    attrs = file_summary(db_path)["attrs"]
    n_sampled = int(attrs.get("n_sampled", len(table) + len(quarantine))
                    if n_sampled is None else n_sampled)
    window = float(attrs.get("low_energy_window_eV", 0.55))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    books = accounting(table, quarantine, n_sampled)
    values = metrics(table, n_sampled)
    figures = _figures(table, out_dir, window)
    write_text_atomic(out_dir / "metrics.json", json.dumps(
        {**values, "accounting": books.counts, "accounting_detail": books.detail,
         "accounting_closes": books.closes, "accounting_problems": books.problems},
        indent=2) + "\n")

    overall = [[k, values[k]] for k in ("N_sampled", "N_valid_xtal", *METRICS)]
    rounds = [[r["round"], *(f"{r[k]} ({r['cumulative'][k]})" for k in METRICS)]
              for r in values["per_round"]]  # type: ignore[union-attr]
    books_rows = [[c, books.counts[c], ", ".join(f"{k}: {v}" for k, v in
                                                 sorted(books.detail.get(c, {}).items()))]
                  for c in CLASSES]
    books_rows.append(["total", books.total, f"sampled: {books.n_sampled}"])
    verdict = ("<p class=ok>The accounting closes: every sampled row is counted once.</p>"
               if books.closes else "<p class=bad>The accounting does NOT close: "
               + html.escape("; ".join(books.problems)) + "</p>")
    images = "".join(
        f"<figure><img alt='{name}' src='data:image/png;base64,"
        f"{base64.b64encode(path.read_bytes()).decode()}'><figcaption>{name.replace('_', ' ')}"
        "</figcaption></figure>" for name, path in figures.items())
    model = ", ".join(f"{k[6:]} {v}" for k, v in attrs.items() if k.startswith("model_"))
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>hpcxtal report: {html.escape(db_path.name)}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
th, td {{ border: 1px solid #bbb; padding: 0.25em 0.6em; text-align: right; }}
th {{ background: #eee; }}
figure {{ display: inline-block; margin: 0.5em; }}
img {{ max-width: 640px; }}
.ok {{ color: #060; }} .bad {{ color: #a00; font-weight: bold; }}
</style></head><body>
<h1>hpcxtal campaign report</h1>
<p>Database {html.escape(str(db_path))}: {len(table)} rows, {len(quarantine)} quarantined.
Energies per atom above graphite relaxed with the same model ({html.escape(model or 'unknown')});
low energy = within {window:g} eV/atom.</p>
<h2>Metrics</h2>{_table_html(["metric", "value"], overall)}
<h2>Per round (cumulative in brackets)</h2>{_table_html(["round", *METRICS], rounds)}
<h2>Accounting</h2>{_table_html(["class", "rows", "why"], books_rows)}{verdict}
<h2>Plots</h2>{images}
<h2>Top {top} unique structures</h2>{_table_html(TOP_HEADER, top_rows(table, top))}
</body></html>
"""
    path = write_text_atomic(out_dir / "report.html", page)
    return Report(path, figures, values, books)

"""Refinement rounds across processes: gather the invalid rows, rebalance, refine again.

Round 1 refines each shard on its own (``refine-NNNN.h5``, per-shard stage). Rounds
2..R take every row still invalid after the round before, from all shards, cut them
into chunks dealt to the processes by estimated cost, refine the parts (latent refinement
through the generator, then representation refinement; or representation refinement
from perturbed starts alone) (each process its own,
one file per part: ``rounds/round-R/part-PPPP-of-NNNN.h5``) and collect the rows that
became valid with their round number. Then every shard's final rows are written to
``rounds/rounds-NNNN.h5``. With MPI (mpi4py ``comm``) the processes are ranks and
rank 0 does the partitioning; without, one process does everything. A row's restarts
are seeded by its id and the round, not by the part it lands in, and the rows are cut into
chunks fixed by the rows alone (``refine.chunk_rows``), each refined on its own and dealt
whole to the processes, so a row's batch mates, and its result, are those of one process
whatever the number of ranks; finished rounds
are kept, so an interrupted run resumes at the first unfinished round. Each part
records the checksums it started from (round-1 files, earlier parts) and the config:
a part made from a recomputed round-1 file, or with another config, is redone.
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Callable

import numpy as np

from hpcxtal.layout import part_path, stage_output
from hpcxtal.parallel import n_chunks, plan_chunks
from hpcxtal.refine.config import RefineConfig, RoundsConfig, rounds_config
from hpcxtal.refine.latent import latent_refine
from hpcxtal.refine.represent import refine_table, use_threads
from hpcxtal.store.hdf5 import read_table, write_table
from hpcxtal.store.provenance import PROVENANCE
from hpcxtal.store.shard import row_cost
from hpcxtal.store.table import Table, str_array, structure_rows

log = logging.getLogger(__name__)
#: Columns a later round may change in a row.
ROUND_COLUMNS = ("cell", "xyz", "loss", "valid", "steps", "round", "refine_status",
                 "refine_reason")




def deal_chunks(table: Table, n_parts: int, rows_per_chunk: int) -> list[list[np.ndarray]]:
    """Row indices of ``n_parts`` parts, each a list of chunks: the chunks are fixed by the
    rows alone (layout order, near-equal estimated cost, about ``rows_per_chunk`` rows
    each) and dealt costliest first to the part with the least cost so far. Every chunk
    is refined on its own, so a row's batch mates, and its result, do not depend on the
    number of parts (MPI ranks)."""
    order = table.layout_order()
    if len(order) == 0:
        return [[] for _ in range(n_parts)]
    cost = row_cost(table["spg"][order], table["wps"][order]).astype(np.float64)
    chunks = plan_chunks(order, cost, n_chunks(len(order), rows_per_chunk))
    position = np.empty(len(table), dtype=np.int64)
    position[order] = np.arange(len(order))
    chunk_cost = [float(cost[position[c]].sum()) for c in chunks]
    parts: list[list[np.ndarray]] = [[] for _ in range(n_parts)]
    load = [0.0] * n_parts
    for k in sorted(range(len(chunks)), key=lambda k: (-chunk_cost[k], k)):
        p = min(range(n_parts), key=lambda p: (load[p], p))
        parts[p].append(chunks[k])
        load[p] += chunk_cost[k]
    return parts


def _with_home(table: Table, shard: int) -> Table:
    table.columns["home_shard"] = np.full(len(table), shard, dtype=np.int32)
    return table


def state_after(round1: Path, shard: int, parts_by_round: list[list[Path]]) -> Table:
    """Shard ``shard``'s rows after the rounds whose part files are given: the round-1
    file with the rows that later rounds refined updated (matched by id)."""
    table, _ = read_table(round1)
    position = {int(i): k for k, i in enumerate(table["id"])}
    for parts in parts_by_round:
        for path in parts:
            part, _ = read_table(path)
            for k in np.flatnonzero(part["home_shard"] == shard):
                row = position[int(part["id"][k])]
                for col in ROUND_COLUMNS:
                    table.columns[col][row] = part[col][k]
    return table


def _round_inputs(round1: list[Path], parts_by_round: list[list[Path]]) -> list[Path]:
    """What a round starts from: every shard's round-1 file and the earlier rounds'
    parts (their checksums are recorded in each part; a part made from others is stale)."""
    return [*round1, *(p for parts in parts_by_round for p in parts)]


def _refine_chunk(table: Table, cfg: RefineConfig, rounds: RoundsConfig, round_: int) -> Table:
    """One chunk of a round refined (latent, then representation refinement, or the
    latter alone from perturbed starts)."""
    if rounds.later == "latent":
        from hpcxtal.refine.objective import build_objective

        objective = build_objective(cfg, dtype=cfg.torch_dtype())
        cell, xyz = latent_refine(table, objective, rounds.latent, cfg.seed, round_,
                                  cfg.torch_dtype())
        table.columns.update(cell=cell, xyz=xyz)
    result = refine_table(table, dataclasses.replace(cfg, seed=cfg.seed + 7919 * round_))
    improved = result.valid
    table.columns.update(cell=result.cell, xyz=result.xyz, loss=result.loss, valid=improved,
                         steps=table["steps"] + result.steps.astype(np.int32),
                         refine_status=str_array(result.status),
                         refine_reason=str_array(result.reason))
    table.columns["round"] = np.where(improved, round_, table["round"]).astype(np.int8)
    return table


def _refine_part(chunks: list[Table], cfg: RefineConfig, rounds: RoundsConfig, round_: int,
                 dest: Path, n_parts: int, inputs: list[Path]) -> None:
    """This process's part of a round: its chunks refined one by one, into one file."""
    use_threads(cfg)
    done = [_refine_chunk(c, cfg, rounds, round_) for c in chunks]
    table = (Table.concat(done) if done else
             Table({"id": np.zeros(0, np.uint64), "home_shard": np.zeros(0, np.int32)}))
    write_table(dest, table, kind="round", round=round_, n_parts=n_parts,
                **PROVENANCE.stamp(inputs, rounds_config(cfg, rounds)))


def run_rounds(campaign_root: Path, n_shards: int, round1: Callable[[int], Path],
               cfg: RefineConfig, rounds: RoundsConfig, comm=None) -> dict[str, int]:
    """Rounds 2..``rounds.n_rounds`` over the round-1 files ``round1(i)`` of all shards, then
    the final per-shard files. ``comm``: an mpi4py communicator, or None (serial).
    Returns per-round counts on rank 0 (rows moved, valid gained)."""
    rank, size = (comm.Get_rank(), comm.Get_size()) if comm is not None else (0, 1)
    root = Path(campaign_root)
    parts_by_round: list[list[Path]] = []
    counts: dict[str, int] = {}
    config = rounds_config(cfg, rounds)
    if comm is not None:  # the campaign log's host column then says where each rank ran
        log.info("MPI rank %d of %d: part %d of each round, final files of shards %s", rank,
                 size, rank, list(range(rank, n_shards, size)))
    for r in range(2, rounds.n_rounds + 1):
        parts = [part_path(root, r, p, size) for p in range(size)]
        inputs = _round_inputs([round1(i) for i in range(n_shards)], parts_by_round)
        problems = [PROVENANCE.stale_reason(p, inputs, config) for p in parts]
        if not any(problems):
            parts_by_round.append(parts)
            continue
        if rank == 0:
            for path, problem in zip(parts, problems):
                if problem is not None and path.exists():
                    log.warning("%s; recomputing round %d", problem, r)
        # Every rank gathers the invalid rows of its own shards (after earlier rounds).
        mine = [_with_home(state_after(round1(i), i, parts_by_round), i)
                for i in range(rank, n_shards, size)]
        # (structure rows are never refined: they stay as round 1 left them)
        invalid = [t.take(np.flatnonzero(~t["valid"].astype(bool) & ~structure_rows(t))) for t in mine]
        invalid = [t for t in invalid if len(t)]
        gathered = comm.gather(invalid, root=0) if comm is not None else [invalid]
        if rank == 0:
            pieces = [t for per_rank in gathered for t in per_rank]
            everything = Table.concat(pieces) if pieces else None
            if everything is not None:
                everything = everything.take(np.argsort(everything["id"], kind="stable"))
                dealt = deal_chunks(everything, size, cfg.chunk_rows)
                work = [[everything.take(c) for c in chunks] for chunks in dealt]
            else:
                work = [[] for _ in range(size)]
            counts[f"round_{r}_rows"] = 0 if everything is None else len(everything)
            log.info("round %d: %d invalid rows over %d process(es): %s rows each", r,
                     counts[f"round_{r}_rows"], size, [sum(map(len, w)) for w in work])
        else:
            work = None
        part = comm.scatter(work, root=0) if comm is not None else work[0]
        _refine_part(part, cfg, rounds, r, parts[rank], size, inputs)
        if comm is not None:
            comm.Barrier()
        missing = [str(p) for p in parts if PROVENANCE.problem(p) is not None]
        if missing:
            raise RuntimeError(f"round {r}: part files missing after the round: {missing}")
        parts_by_round.append(parts)
    for i in range(rank, n_shards, size):
        final = state_after(round1(i), i, parts_by_round)
        write_table(stage_output("rounds", root, i), final, kind="rounds", rounds=rounds.n_rounds,
                    **PROVENANCE.stamp([round1(i)], config))
    if comm is not None:
        comm.Barrier()
    return counts

"""File-mode workers: a stage's rows split into chunks that worker processes compute.

A per-row stage (refine, relax) cuts its table into chunks fixed by the table alone
(:func:`plan_chunks`: contiguous runs of near-equal estimated cost in a given order, a
number that grows with the rows, never with the workers). :class:`Workers` hands the
chunks to worker processes as they become free (dynamic balancing: a worker that
finishes early takes the next chunk), each worker pinned to one core with one torch
thread and its kernel built once, and the results are put back in row order. Because
every chunk is computed the same way whichever worker takes it, the output does not
depend on the number of workers; one worker computes the chunks in turn in this process.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import active_children, get_context
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from hpcxtal.progress import note, span
from hpcxtal.store.table import Table

log = logging.getLogger(__name__)

#: A chunk kernel: rows in, the same rows with the stage's columns out.
ChunkKernel = Callable[[Table], Table]
#: Builds a chunk kernel from a config section, once per process (loads models etc.).
KernelFactory = Callable[[Any], ChunkKernel]
#: Threads of numeric libraries in a worker: one per process, pinned to one core.
_ONE_THREAD = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


class WorkerError(RuntimeError):
    """A worker process failed on a chunk; nothing was written."""


def usable_cores() -> list[int]:
    """The cores this process may run on (the scheduler's or Parsl's affinity mask)."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


#: Device nodes without which no CUDA device is visible to a Linux process.
_CUDA_NODES = ("/dev/nvidiactl", "/dev/nvidia0", "/dev/dxg")


def on_gpu(device: str | None) -> bool:
    """Whether ``device`` (a torch device name, ``auto`` or None) resolves to a GPU.
    ``auto`` asks torch only where a CUDA device node exists, so that a CPU machine's
    main process need not import torch (seconds of start-up) to plan its workers."""
    if device is None or device == "cpu":
        return False
    if device == "auto":
        if not any(os.path.exists(node) for node in _CUDA_NODES):
            return False
        import torch

        return torch.cuda.is_available()
    return not device.startswith("cpu")


def default_workers(device: str | None = None) -> int:
    """Worker processes a stage uses unless told: one per usable core on a CPU, one
    per process on a GPU device (the device is the parallel part)."""
    return 1 if on_gpu(device) else len(usable_cores())


def plan_chunks(order: np.ndarray, cost: np.ndarray, n_chunks: int) -> list[np.ndarray]:
    """Row indices of at most ``n_chunks`` chunks: ``order`` (row indices) cut into
    contiguous runs of near-equal ``cost`` (one entry per row of ``order``); no chunk is
    empty (no rows: one empty chunk). Callers derive ``n_chunks`` from the rows alone,
    never from the workers, so the chunks (and the results) do not depend on them."""
    order = np.asarray(order, dtype=np.int64)
    if len(order) == 0:
        return [order]
    n = max(1, min(n_chunks, len(order)))
    total = np.cumsum(np.maximum(np.asarray(cost, dtype=np.float64), 0.0))
    if total[-1] <= 0:
        total = np.arange(1, len(order) + 1, dtype=np.float64)
    cuts = np.searchsorted(total, total[-1] * np.arange(1, n) / n, side="left") + 1
    return [c for c in np.split(order, np.unique(np.minimum(cuts, len(order)))) if len(c)]


def n_chunks(n_rows: int, rows_per_chunk: int) -> int:
    """Chunks for ``n_rows`` rows of about ``rows_per_chunk`` each (at least one)."""
    return max(1, -(-n_rows // rows_per_chunk))


def gather(n_rows: int, chunks: list[np.ndarray], results: list[Table]) -> Table:
    """The chunks' result tables as one table in row order (``chunks`` hold the row
    indices each result came from; together every row once)."""
    order = np.concatenate(chunks)
    if len(order) != n_rows or not np.array_equal(np.sort(order), np.arange(n_rows)):
        raise ValueError("chunks do not cover every row exactly once")
    return Table.concat(results).take(np.argsort(order))


def one_thread(cfg: Any) -> Any:
    """``cfg`` with ``threads = 1`` where it is a config section with threads (a
    pinned worker)."""
    if not dataclasses.is_dataclass(cfg):
        return cfg
    names = {f.name for f in dataclasses.fields(cfg)}
    return dataclasses.replace(cfg, threads=1) if "threads" in names else cfg


# Per worker process: its kernel, built on its first chunk (so a setup error reaches
# the parent with its message) and kept for the rest.
_KERNEL: ChunkKernel | None = None


def _pin(cores: Any) -> None:
    """Worker initializer: take one core from ``cores`` and run on it, one thread."""
    core = cores.get()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {core})
    import torch

    torch.set_num_threads(1)


def _run_chunk(factory: KernelFactory, cfg: Any, chunk: Table) -> Table:
    """Worker task: the stage's columns of ``chunk`` (the kernel is built once)."""
    global _KERNEL
    if _KERNEL is None:
        _KERNEL = factory(cfg)
    return _KERNEL(chunk)


@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """Torch (if a kernel loaded it) on ``n`` threads for the block, as in a pinned worker,
    then back: float sums depend on the thread count, and a stage's output must not
    depend on whether its chunks ran here or in workers (a kernel may still choose its
    own count, as refine's ``threads`` does)."""
    torch = sys.modules.get("torch")
    if torch is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """``values`` in os.environ while worker processes start (they inherit it)."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _ids(chunk: Table, shown: int = 5) -> str:
    """``chunk``'s rows in words: how many, and the first ids."""
    ids = [str(int(i)) for i in np.asarray(chunk["id"])[:shown]]
    more = ", ..." if len(chunk) > shown else ""
    return f"{len(chunk)} rows (ids {', '.join(ids)}{more})"


class KeptChunks:
    """Finished chunks of one output file, kept beside it (``.NAME.chunks/``) until the
    file is written, so that a stage interrupted after hours resumes at its first
    unfinished chunk, not its first row. A kept chunk is used only if it was made from
    the same inputs and science config (the output's provenance stamp) and the same rows;
    without such a stamp nothing is kept."""

    def __init__(self, dest: Path, stamp: dict[str, object]):
        self.folder = Path(dest).with_name(f".{Path(dest).name}.chunks")
        self.active = {"inputs_sha256", "stage_config"} <= set(stamp)
        self._stamp = json.dumps({k: stamp[k] for k in sorted(stamp)}, default=str)

    def _path(self, k: int) -> Path:
        return self.folder / f"chunk-{k:05d}.h5"

    def _key(self, part: Table) -> str:
        ids = np.ascontiguousarray(np.asarray(part["id"], dtype=np.uint64)).tobytes()
        return hashlib.sha256(self._stamp.encode() + ids).hexdigest()

    def load(self, k: int, part: Table) -> Table | None:
        """Chunk ``k``'s kept result if it was made from ``part`` under this stamp."""
        from hpcxtal.store.hdf5 import StoreError, read_table

        path = self._path(k)
        if not self.active or not path.exists():
            return None
        try:
            table, _ = read_table(path)
        except StoreError:
            return None
        if table.attrs.get("chunk_key") != self._key(part):
            return None
        names = json.loads(str(table.attrs["chunk_attrs"]))
        table.attrs = {name: table.attrs[name] for name in names}
        return table

    def save(self, k: int, part: Table, result: Table) -> None:
        """Keep chunk ``k``'s result (made from ``part``)."""
        from hpcxtal.store.hdf5 import write_table

        if not self.active:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        write_table(self._path(k), result, kind="chunk", chunk_key=self._key(part),
                    chunk_attrs=json.dumps(sorted(result.attrs)))

    def clear(self) -> None:
        """Drop the kept chunks (their output file is written)."""
        from hpcxtal.store.provenance import PROVENANCE

        PROVENANCE.forget(list(self.folder.glob("*.h5")))
        shutil.rmtree(self.folder, ignore_errors=True)


class Workers:
    """Compute a stage's chunks over ``n`` worker processes (``n == 1``: in this
    process, the kernel built once and kept across calls). Workers are spawned, so
    ``factory`` must be a module-level function and ``cfg`` picklable."""

    def __init__(self, factory: KernelFactory, cfg: Any, n: int, label: str = "stage"):
        if n < 1:
            raise ValueError(f"workers must be at least 1, got {n}")
        self.factory, self.cfg, self.n, self.label = factory, cfg, n, label
        self._kernel: ChunkKernel | None = None

    def map(self, table: Table, chunks: list[np.ndarray], kept: KeptChunks | None = None) -> Table:
        """The kernel's output for every row of ``table``, in row order. With ``kept``,
        chunks an interrupted run finished are taken from it and each chunk finished now
        is kept there until the caller has written its output."""
        parts = [table.take(c) for c in chunks]
        results: list[Table | None] = [kept.load(k, part) if kept else None
                                       for k, part in enumerate(parts)]
        todo = [k for k, r in enumerate(results) if r is None]
        if len(todo) < len(parts):
            log.info("%s: %d of %d chunks kept from an interrupted run (%s)", self.label,
                     len(parts) - len(todo), len(parts), kept.folder)
        start = time.monotonic()
        if self.n == 1 or len(todo) <= 1:
            if self._kernel is None and todo:
                self._kernel = self.factory(self.cfg)
            with _torch_threads(1):
                for k in todo:
                    with span(sum(len(r) for r in results if r is not None), len(parts[k]),
                              len(table)):
                        results[k] = self._kernel(parts[k])
                    self._finished(k, parts, results, kept, start)
        else:
            self._pool_map(parts, results, todo, kept, start)
        return gather(len(table), chunks, results)  # type: ignore[arg-type]

    def _finished(self, k: int, parts: list[Table], results: list[Table | None],
                  kept: KeptChunks | None, start: float) -> None:
        """Chunk ``k`` is done: keep it (if asked), log chunks done and note the rows
        done in the progress file being recorded."""
        if kept is not None:
            kept.save(k, parts[k], results[k])  # type: ignore[arg-type]
        done = [r for r in results if r is not None]
        note(sum(len(r) for r in done), sum(len(p) for p in parts))
        log.info("%s: %d/%d chunks done (%.0f s)", self.label, len(done), len(parts),
                 time.monotonic() - start)

    def _pool_map(self, parts: list[Table], results: list[Table | None], todo: list[int],
                  kept: KeptChunks | None, start: float) -> None:
        """Chunks ``todo`` computed into ``results`` by pinned worker processes, each
        taking the next chunk as it becomes free; the first failure stops the rest."""
        ctx = get_context("spawn")
        n = min(self.n, len(todo))
        cores = ctx.Queue()
        usable = usable_cores()
        for i in range(n):
            cores.put(usable[i % len(usable)])
        cfg = one_thread(self.cfg)
        with _environment(_ONE_THREAD), ProcessPoolExecutor(
                n, mp_context=ctx, initializer=_pin, initargs=(cores,)) as pool:
            futures = {pool.submit(_run_chunk, self.factory, cfg, parts[k]): k for k in todo}
            try:
                for future in as_completed(futures):
                    k = futures[future]
                    results[k] = future.result()
                    self._finished(k, parts, results, kept, start)
            except KeyboardInterrupt:  # Ctrl-C or SIGTERM (the CLI raises it): stop the workers now
                pool.shutdown(wait=False, cancel_futures=True)
                for child in active_children():
                    child.terminate()
                raise
            except BrokenProcessPool:
                pool.shutdown(wait=False, cancel_futures=True)
                raise WorkerError(f"{self.label}: a worker process died (killed, or out of "
                                  f"memory?); nothing was written") from None
            except Exception as err:  # a worker's exception, re-raised here
                pool.shutdown(wait=False, cancel_futures=True)
                part = parts[futures[future]]
                message = str(err).splitlines()[0] if str(err) else ""
                raise WorkerError(f"{self.label}: a worker failed on a chunk of "
                                  f"{_ids(part)}: {type(err).__name__}: {message}; nothing "
                                  f"was written") from None


"""Topology keys of the training structures, computed once and cached.

The merge stage compares each unique candidate only with the training structures of
the same topology key. Their keys depend on the structures, the signature settings and
the signature code, so the cache (``$XDG_CACHE_HOME/hpcxtal``, else ``~/.cache/hpcxtal``;
one JSON file) is named by a hash of all three; in a process the result is also kept
in memory.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from functools import lru_cache
from pathlib import Path

import numpy as np

from hpcxtal.store.formats import table_images
from hpcxtal.store.hdf5 import atomic_path, file_summary, read_table
from hpcxtal.store.table import Structures, Table
from hpcxtal.topology.annotate import SignatureParams, signatures

log = logging.getLogger(__name__)
_CODE = ("graph.py", "orbits.py", "signature.py")


def cache_dir() -> Path:
    """Where cached training keys are kept."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "hpcxtal"


def _images(path: Path) -> list:
    """Every structure of an hpcxtal table file (rows and quarantined rows that carry
    a structure), ``atoms.info['origin']`` set."""
    table, quarantine = read_table(path)
    images = table_images(table)
    if quarantine is not None and quarantine.structures is not None:
        images += [a for a in table_images(quarantine) if len(a)]
    return images


def _digest(path: Path, params: SignatureParams) -> str:
    h = hashlib.sha256(str(file_summary(path)["attrs"].get("sha256")).encode())
    h.update(json.dumps({"cutoffs": sorted((list(k), v) for k, v in params.cutoffs.items()),
                         "depth": params.depth, "max_ring": params.max_ring}).encode())
    here = Path(__file__).parent
    for name in _CODE:
        h.update((here / name).read_bytes())
    return h.hexdigest()[:20]


def training_keys(path: Path, params: SignatureParams, workers: int | None = None
                  ) -> list[tuple[str, str]]:
    """(origin, topology key) of every structure in ``path``, from the cache if there."""
    cached = cache_dir() / f"training-keys-{_digest(path, params)}.json"
    if cached.exists():
        try:
            return [tuple(p) for p in json.loads(cached.read_text())]  # type: ignore[misc]
        except (OSError, ValueError):
            log.warning("%s: unreadable cache, recomputing", cached)
    images = _images(path)
    log.info("topology keys of %d training structures in %s (cached afterwards)",
             len(images), path)
    table = Table({"id": np.arange(len(images), dtype=np.uint64)}, Structures.from_atoms(images))
    pairs = [(str(a.info["origin"]), r[0]) for a, r in zip(images, signatures(table, params, workers))]
    try:
        with atomic_path(cached) as tmp:
            tmp.write_text(json.dumps(pairs))
    except OSError as err:
        log.warning("cannot cache training keys in %s (%s)", cached, err)
    return pairs


@lru_cache(maxsize=4)
def _training_set(path: str, params_json: str, workers: int | None) -> dict[str, list]:
    from pymatgen.io.ase import AseAtomsAdaptor

    raw = json.loads(params_json)
    params = SignatureParams(cutoffs={tuple(k): v for k, v in raw["cutoffs"]},
                             depth=raw["depth"], max_ring=raw["max_ring"])
    keys = dict(training_keys(Path(path), params, workers))
    out: dict[str, list] = {}
    for atoms in _images(Path(path)):
        origin = str(atoms.info["origin"])
        if keys.get(origin):
            atoms.info = {}
            out.setdefault(keys[origin], []).append((origin, AseAtomsAdaptor.get_structure(atoms)))
    return out


def training_set(path: Path, params: SignatureParams, workers: int | None = None
                 ) -> dict[str, list]:
    """Topology key -> [(origin, pymatgen Structure)] of the training structures in
    ``path`` (an hpcxtal table file with structures)."""
    params_json = json.dumps({"cutoffs": sorted((list(k), v) for k, v in params.cutoffs.items()),
                              "depth": params.depth, "max_ring": params.max_ring})
    return _training_set(str(Path(path).resolve()), params_json, workers)

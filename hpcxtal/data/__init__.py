"""Data shipped with hpcxtal.

``sacada_sp2.h5``: the 150 three-periodic sp2 carbon allotropes of SACADA (Hoffmann
et al., Angew. Chem. Int. Ed. 55, 10962 (2016)) as used by LEGO-xtal (MIT licence),
converted by ``scripts/convert_sacada.py``: rows for the 144 that fit 8 Wyckoff
sites, every source structure, and SACADA's metadata (energies in eV/atom).
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

DATA_DIR = Path(__file__).parent
SACADA_PATH = DATA_DIR / "sacada_sp2.h5"
#: Names that stand for bundled files wherever an input file is expected.
BUNDLED = {"sacada": SACADA_PATH}


@lru_cache(maxsize=1)
def target_names() -> tuple[str, ...]:
    """Names of the bundled refinement targets (``environments.yaml``), read without
    torch so configs can check ``refine.target`` when they load."""
    import yaml

    return tuple(yaml.safe_load((DATA_DIR / "environments.yaml").read_text()))


def resolve_input(name: str) -> Path:
    """A bundled data set's path for its name, else ``name`` as a path."""
    return BUNDLED.get(name, Path(name))


def sacada_structures() -> list:
    """All 150 SACADA structures as ASE Atoms, metadata in ``atoms.info``."""
    from hpcxtal.store.formats import table_images
    from hpcxtal.store.hdf5 import read_table

    table, quarantine = read_table(SACADA_PATH)
    images = []
    for part in (table, quarantine):
        for atoms, k in zip(table_images(part), range(len(part))):
            for key, col in part.columns.items():
                if key not in ("wps", "xyz", "cell", "species", "raw"):
                    value = col[k]
                    atoms.info[key] = value.item() if hasattr(value, "item") else value
            images.append(atoms)
    return sorted(images, key=lambda a: a.info["id"])

#!/usr/bin/env python
"""Convert the SACADA sp2 carbon set (an ASE database) into hpcxtal's bundled table.

    python scripts/convert_sacada.py ../shared/data/sp2_sacada.db hpcxtal/data/sacada_sp2.h5

Every structure keeps its source geometry (ragged ``structures``) and its SACADA
metadata; the ones that fit 8 Wyckoff sites also get a tabular row, the rest are kept
in the file's quarantine with the reason, still usable as structures.
"""
from __future__ import annotations

import argparse
import ast
import logging

import numpy as np
from ase.db import connect

from hpcxtal.store.formats import rows_from_images
from hpcxtal.store.hdf5 import write_table
from hpcxtal.store.table import str_array

NUMERIC = ("vasp_energy", "mace_energy", "ff_energy", "density", "dof", "dimension",
           "space_group_number")
TEXT = ("topology", "pearson_symbol")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("db", help="ASE database of the SACADA sp2 set")
    parser.add_argument("out", help="HDF5 table to write")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with connect(args.db) as db:
        records = list(db.select())
    images = [(f"sacada:{r.id}", r.toatoms()) for r in records]
    table, quarantine = rows_from_images(images)
    meta = {r.id: r.key_value_pairs for r in records}
    for part in (table, quarantine):
        src = [int(o.split(":")[1]) for o in part["origin"]]
        for key in NUMERIC:
            part.columns[key] = np.array([float(meta[i].get(key, np.nan)) for i in src])
        for key in TEXT:
            part.columns[key] = str_array(meta[i].get(key, "") for i in src)
        part.columns["sacada_wps"] = str_array(
            " ".join(ast.literal_eval(meta[i]["wps"])) for i in src)
    write_table(args.out, table, kind="known_structures", quarantine=quarantine,
                source="SACADA sp2 carbon allotropes via LEGO-xtal (MIT licence)",
                energy_units="eV/atom")
    logging.info("%s: %d rows, %d structures kept without a row (%s)", args.out, len(table),
                 len(quarantine), "; ".join(sorted(set(quarantine["reason"]))))


if __name__ == "__main__":
    main()

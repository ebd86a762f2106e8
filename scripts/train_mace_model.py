"""Train the carbon MACE model shipped as ``hpcxtal/data/mace_carbon.model``.

One command, seeds fixed; the recipe (every setting below) is written to the model's
sidecar ``hpcxtal/data/mace_carbon.yaml`` beside data sizes and held-out test errors.

1. Configurations, grouped by the structure they come from ("prototype"):
   graphite (AB and AA), diamond, lonsdaleite and graphene references (strain scans,
   strained + rattled supercells); the bundled SACADA sp2 structures up to
   ``--max-atoms`` (the structure, +-3 % volume, a random strain with a small rattle,
   rattles of increasing amplitude as a stand-in for MD snapshots); decoded candidates
   of the generated-candidates CSV (raw geometry and a rattled copy).
2. Labels (energy, forces, stress) from CHGNet 0.3.0 with its bundled weights, batched
   through hpcxtal's ``CHGNetModel``; configurations more than ``--max-e-rel`` eV/atom
   above graphite (same model) or with forces above 20 eV/Å are dropped.
3. Split train/valid/test by prototype (the references always train).
4. Training with mace-torch's own ``mace.cli.run_train`` (float64, CPU, no SWA).
5. Test errors of the trained model against CHGNet, through hpcxtal's ``MACEModel``.

    PYTHONPATH=. python scripts/train_mace_model.py --work build/mace-carbon
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import yaml

log = logging.getLogger("train_mace_model")

DATA_DIR = Path(__file__).resolve().parents[1] / "hpcxtal" / "data"
CANDIDATES = "/work/shared/data/generated_candidates_1k.csv"
#: mace run_train settings (besides files, keys, seed and epochs).
MACE_ARGS = {
    "model": "MACE", "num_channels": 32, "max_L": 0, "r_max": 4.5, "correlation": 2,
    "num_interactions": 2, "num_radial_basis": 8, "max_ell": 3, "E0s": "average",
    "loss": "stress", "energy_weight": 100.0, "forces_weight": 10.0, "stress_weight": 1000.0,
    "batch_size": 8, "valid_batch_size": 16, "lr": 0.01, "scheduler_patience": 4,
    "default_dtype": "float64", "device": "cpu", "error_table": "PerAtomMAEstressvirials",
}


def references(rng: np.random.Generator) -> list[tuple[str, object]]:
    """(prototype, Atoms) of the carbon references: strain scans and rattled supercells."""
    from ase import Atoms
    from ase.build import bulk, graphene

    from hpcxtal.relax.reference import graphite

    aa = Atoms("C2", scaled_positions=[[0, 0, 0], [1 / 3, 2 / 3, 0]],
               cell=graphite().cell.array * [[1], [1], [0.52]], pbc=True)
    sheet = graphene(a=2.46, vacuum=6.0)
    sheet.pbc = True
    protos = {"graphite": graphite(), "graphite_AA": aa, "diamond": bulk("C", "diamond", 3.567),
              "lonsdaleite": bulk("CC", "wurtzite", a=2.51, c=4.12), "graphene": sheet}
    out = []
    for name, atoms in protos.items():
        for s in (0.94, 0.97, 1.0, 1.03, 1.06):  # in-plane / isotropic scan
            a = atoms.copy()
            f = np.diag([s, s, 1.0 if name == "graphene" else s])
            a.set_cell(a.cell.array @ f, scale_atoms=True)
            out.append((name, a))
        if name.startswith("graphite"):
            for s in (0.85, 0.92, 1.1, 1.25):  # interlayer scan
                a = atoms.copy()
                a.set_cell(a.cell.array @ np.diag([1, 1, s]), scale_atoms=True)
                out.append((name, a))
        big = atoms * ((2, 2, 1) if name.startswith("graph") else (2, 2, 2))
        for amp in (0.03, 0.06, 0.1, 0.15):
            out.append((name, strained(big, rng, 0.03, amp)))
    return out


def strained(atoms, rng: np.random.Generator, strain: float, rattle: float):
    """A copy with a random symmetric cell strain (up to ``strain``) and Gaussian rattle (Å)."""
    a = atoms.copy()
    e = rng.uniform(-strain, strain, (3, 3))
    a.set_cell(a.cell.array @ (np.eye(3) + (e + e.T) / 2), scale_atoms=True)
    a.positions += rng.normal(0.0, rattle, a.positions.shape)
    return a


def rattled(atoms, rng: np.random.Generator, amp: float):
    """A copy with every atom displaced by a Gaussian of ``amp`` Å."""
    a = atoms.copy()
    a.positions += rng.normal(0.0, amp, a.positions.shape)
    return a


def sacada(rng: np.random.Generator, max_atoms: int) -> list[tuple[str, object]]:
    """(prototype, Atoms) from the bundled SACADA structures of at most ``max_atoms`` atoms."""
    from hpcxtal.data import sacada_structures

    out = []
    for atoms in sacada_structures():
        if len(atoms) > max_atoms:
            continue
        base = atoms.copy()
        base.info.clear()
        name = f"sacada:{atoms.info['id']}"
        variants = [base, strained(base, rng, 0.03, 0.04), rattled(base, rng, 0.1),
                    rattled(base, rng, 0.2)]
        if len(base) <= 24:
            for s in (0.97, 1.03):
                a = base.copy()
                a.set_cell(a.cell.array * s ** (1 / 3), scale_atoms=True)
                variants.append(a)
        out += [(name, a) for a in variants]
    return out


def candidates(path: str, rng: np.random.Generator, n: int, max_atoms: int
               ) -> list[tuple[str, object]]:
    """(prototype, Atoms): ``n`` decoded candidates of at most ``max_atoms`` atoms whose
    atoms are at least 1.15 Å apart, raw and rattled."""
    from hpcxtal.store.formats import read_csv, table_images

    table, _ = read_csv(path)
    images = [a for a in table_images(table) if 4 <= len(a) <= max_atoms]
    rng.shuffle(images)
    out = []
    for atoms in images:
        d = atoms.get_all_distances(mic=True) + np.eye(len(atoms)) * 10
        if d.min() < 1.15 or atoms.get_volume() / len(atoms) > 30:
            continue
        base = atoms.copy()
        name = f"candidate:{atoms.info['id']}"
        base.info.clear()
        out += [(name, base), (name, rattled(base, rng, 0.06))]
        if len(out) >= 2 * n:
            break
    return out


def label(configs: list[tuple[str, object]], budget: int = 600) -> list:
    """Atoms with CHGNet energy, forces and stress in ``info``/``arrays`` (mace's REF_ keys)."""
    from ase.stress import full_3x3_to_voigt_6_stress

    from hpcxtal.relax.models import load_model

    model = load_model("chgnet", dtype="float32")
    out, batch = [], []
    t0, done = time.perf_counter(), 0

    def flush() -> None:
        nonlocal done
        r = model.evaluate([a for _, a in batch])
        lo = 0
        for k, (name, a) in enumerate(batch):
            a = a.copy()
            a.info = {"prototype": name, "REF_energy": float(r.energy[k]),
                      "REF_stress": full_3x3_to_voigt_6_stress(r.stress[k].double().numpy())}
            a.arrays["REF_forces"] = r.forces[lo:lo + len(a)].double().numpy()
            lo += len(a)
            out.append(a)
        done += lo
        log.info("labelled %d/%d configurations (%.0f atom-evaluations/s)", len(out),
                 len(configs), done / (time.perf_counter() - t0))
        batch.clear()

    for name, a in configs:
        if batch and sum(len(b) for _, b in batch) + len(a) > budget:
            flush()
        batch.append((name, a))
    flush()
    return out


def split(labelled: list, rng: np.random.Generator, fractions=(0.8, 0.1)) -> dict[str, list]:
    """Train/valid/test by prototype; reference prototypes always go to train."""
    protos = sorted({a.info["prototype"] for a in labelled})
    others = [p for p in protos if ":" in p]
    rng.shuffle(others)
    n_train = int(round(fractions[0] * len(others)))
    n_valid = int(round(fractions[1] * len(others)))
    which = {p: "train" for p in protos if ":" not in p}
    which.update({p: "train" for p in others[:n_train]})
    which.update({p: "valid" for p in others[n_train:n_train + n_valid]})
    which.update({p: "test" for p in others[n_train + n_valid:]})
    return {s: [a for a in labelled if which[a.info["prototype"]] == s]
            for s in ("train", "valid", "test")}


def test_errors(model_path: Path, test: list) -> dict[str, float]:
    """MAE of energy (meV/atom), forces (meV/Å), stress (GPa) vs the CHGNet labels."""
    from ase.stress import voigt_6_to_full_3x3_stress
    from ase.units import GPa

    from hpcxtal.relax.models import load_model

    model = load_model("mace", str(model_path))
    de, df, ds = [], [], []
    for a in test:
        r = model.evaluate([a])
        de.append(abs(float(r.energy[0]) - a.info["REF_energy"]) / len(a))
        df.append(np.abs(r.forces.numpy() - a.arrays["REF_forces"]).ravel())
        ds.append(np.abs(r.stress[0].numpy() - voigt_6_to_full_3x3_stress(a.info["REF_stress"])).ravel())
    return {"energy_mae_meV_per_atom": 1000 * float(np.mean(de)),
            "forces_mae_meV_per_A": 1000 * float(np.mean(np.concatenate(df))),
            "stress_mae_GPa": float(np.mean(np.concatenate(ds))) / GPa}


def sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def main() -> None:
    import ase.io

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default="build/mace-carbon", help="data sets, logs, checkpoints")
    p.add_argument("--out", default=str(DATA_DIR / "mace_carbon.model"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--max-atoms", type=int, default=48, help="largest SACADA structure used")
    p.add_argument("--candidates", default=CANDIDATES, help="generated-candidates CSV")
    p.add_argument("--n-candidates", type=int, default=60)
    p.add_argument("--candidate-max-atoms", type=int, default=24)
    p.add_argument("--max-e-rel", type=float, default=2.0,
                   help="drop configurations this far above graphite (eV/atom)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--restart", action="store_true",
                   help="continue an interrupted run from the latest checkpoint in --work "
                        "(mace trains that checkpoint's epoch again, then up to --epochs)")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    recipe = {k: v for k, v in vars(args).items() if k not in ("work", "out", "threads", "restart")}
    recipe["mace_args"] = MACE_ARGS
    files = {s: work / f"{s}.xyz" for s in ("train", "valid", "test")}
    stamp = work / "labels.json"
    data_recipe = {k: v for k, v in recipe.items() if k not in ("epochs", "mace_args")}

    if stamp.is_file() and json.loads(stamp.read_text()) == data_recipe:
        log.info("reusing labelled data in %s (same recipe)", work)
        sets = {s: ase.io.read(f, ":") for s, f in files.items()}
    else:
        rng = np.random.default_rng(args.seed)
        configs = (references(rng) + sacada(rng, args.max_atoms)
                   + candidates(args.candidates, rng, args.n_candidates, args.candidate_max_atoms))
        log.info("%d configurations, %d atoms", len(configs), sum(len(a) for _, a in configs))
        labelled = label(configs)
        e_graphite = min(a.info["REF_energy"] / len(a) for a in labelled
                         if a.info["prototype"] == "graphite")
        keep = [a for a in labelled if a.info["REF_energy"] / len(a) - e_graphite <= args.max_e_rel
                and np.abs(a.arrays["REF_forces"]).max() <= 20.0]
        log.info("kept %d of %d configurations (window %.1f eV/atom above graphite %.4f eV/atom)",
                 len(keep), len(labelled), args.max_e_rel, e_graphite)
        sets = split(keep, rng)
        for s, f in files.items():
            ase.io.write(f, sets[s], format="extxyz")
        stamp.write_text(json.dumps(data_recipe))

    argv = [f"--{k}={v}" for k, v in MACE_ARGS.items()] + [
        "--name=mace_carbon", f"--seed={args.seed}", f"--max_num_epochs={args.epochs}",
        f"--work_dir={work}", f"--train_file={files['train']}", f"--valid_file={files['valid']}",
        f"--test_file={files['test']}", "--energy_key=REF_energy", "--forces_key=REF_forces",
        "--stress_key=REF_stress", "--save_cpu", "--num_workers=0"] + (
        ["--restart_latest"] if args.restart else [])
    from mace.cli.run_train import run
    from mace.tools import build_default_arg_parser

    t0 = time.perf_counter()
    run(build_default_arg_parser().parse_args(argv))
    train_s = time.perf_counter() - t0
    trained = work / "mace_carbon.model"
    out = Path(args.out)
    # keep only the module (run_train may save a model holding training-only state)
    model = torch.load(trained, map_location="cpu", weights_only=False).double().eval()
    torch.save(model, out)
    errors = test_errors(out, sets["test"])
    log.info("test errors vs CHGNet: %s", errors)

    def sizes(s: list) -> dict:
        return {"configurations": len(s), "atoms": int(sum(len(a) for a in s)),
                "structures": len({a.info["prototype"] for a in s})}

    sidecar = {
        "model": out.name, "sha256": sha256(out), "mace_torch": __import__("mace").__version__,
        "torch": str(torch.__version__), "parameters": int(sum(p.numel() for p in model.parameters())),
        "labels": "CHGNet 0.3.0 (bundled weights), float32, energy/forces/stress",
        "command": "PYTHONPATH=. python scripts/train_mace_model.py --work build/mace-carbon",
        "recipe": recipe, "candidates_sha256": sha256(args.candidates),
        "best_epoch": max(int(f.stem.rsplit("-", 1)[1])  # the checkpoint run_train kept
                          for f in (work / "checkpoints").glob("mace_carbon_run-*_epoch-*.pt")),
        "data": {s: sizes(v) for s, v in sets.items()},
        "test_errors_vs_chgnet": {k: round(v, 3) for k, v in errors.items()},
        "train_wall_s": round(train_s), "load_average": [round(x, 2) for x in os.getloadavg()],
    }
    out.with_suffix(".yaml").write_text(yaml.safe_dump(sidecar, sort_keys=False))
    shutil.copy(out.with_suffix(".yaml"), work / "mace_carbon.yaml")
    log.info("wrote %s (%d bytes) and %s", out, out.stat().st_size, out.with_suffix(".yaml"))


if __name__ == "__main__":
    main()

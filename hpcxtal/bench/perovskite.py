"""Reference task (b): perovskite design, ABX3 in Pm-3m (A 1a, B 1b, X 3c).

Targets: formation energy per atom below ``e_form_max_eV`` (CHGNet, each element's
standard state relaxed with the same model, :func:`hpcxtal.relax.reference.elemental_energy`),
Goldschmidt tolerance factor within ``t_range`` (Shannon radii, A twelve-fold, B and X
six-fold), charge neutrality (pymatgen oxidation states) and perovskite fidelity (after
the lattice is refined the B-X distance a/2 is within ``fidelity_tolerance`` of r_B + r_X:
octahedra neither collapsed nor blown up; Pm-3m is kept by construction).

Two methods in the same run, the same energy model and the same lattice refinement:

- **design**: ``n_samples`` samples of element choice as a variable
  (:mod:`hpcxtal.refine.elements`: per-site softmax, charge-neutral assignments only,
  annealed to one-hot) minimise the probability of a tolerance factor outside the
  window (the expectation of its indicator, smooth in the logits) by gradient descent;
  each distinct composition chosen then has its cubic lattice parameter refined by
  batched gradient descent on the CHGNet ``energy`` objective (the refine stage's loop,
  ``lattice_steps`` steps, all compositions in one batch).
- **tpe**: optuna's TPE sampler over (A, B, X); a trial's value is the formation energy
  plus ``10 * `` the squared tolerance-factor distance outside the window, or 10 for a
  composition that is not charge-neutral (no energy evaluation). Each new neutral
  composition's lattice is refined alone the same way. Trials run until TPE has spent
  as many energy evaluations as the design did.

An *energy evaluation* is one CHGNet energy and gradient of one structure (a refinement
step of one row, plus the one it stops at); compositions already evaluated are reused by
both methods at no cost. Success rate = share of samples (design) or trials (tpe) whose
composition meets every target; distinct successful compositions are counted too. Times
exclude the elemental references (computed once, shared) and model loading.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

import numpy as np

from hpcxtal.config import from_mapping, load_yaml
from hpcxtal.refine.config import ObjectiveTerm, OptimConfig, RefineConfig

log = logging.getLogger(__name__)

#: Penalty weight of the tolerance-factor window in TPE's value, and the value of a
#: composition that is not charge-neutral.
T_WEIGHT = 10.0
NOT_NEUTRAL = 10.0
#: The refinement's energy reference (eV/atom): below any compound's energy, so the loss
#: stays positive as refinement expects; the formation energy is computed after.
ENERGY_FLOOR_EV = -10.0


@dataclass(frozen=True, kw_only=True)
class PerovskiteConfig:
    """The benchmark's config file."""

    a_elements: list[str] = field(default_factory=lambda: [
        "Na", "K", "Rb", "Cs", "Ca", "Sr", "Ba", "La"])
    b_elements: list[str] = field(default_factory=lambda: [
        "Ti", "Zr", "Nb", "Ta", "V", "Fe", "Co", "Ni", "Al", "Pb", "Ge", "Mg"])
    x_elements: list[str] = field(default_factory=lambda: ["O", "F", "Cl", "Br", "I"])
    n_samples: int = 256
    t_range: tuple[float, float] = (0.8, 1.0)
    e_form_max_eV: float = -1.0
    fidelity_tolerance: float = 0.15
    design_steps: int = 200
    design_lr: float = 0.1
    temperature: tuple[float, float] = (1.0, 0.05)
    lattice_steps: int = 30
    lattice_lr: float = 0.02
    chgnet: str = "0.3.0"
    seed: int = 0

    def __post_init__(self) -> None:
        if not (self.a_elements and self.b_elements and self.x_elements):
            raise ValueError("a_elements, b_elements and x_elements: give at least one each")
        if self.n_samples < 1 or self.design_steps < 1 or self.lattice_steps < 1:
            raise ValueError("n_samples, design_steps and lattice_steps must be at least 1")
        lo, hi = self.t_range
        if not 0 < lo < hi:
            raise ValueError(f"t_range {list(self.t_range)}: give 0 < low < high")
        if not 0 < self.temperature[1] <= self.temperature[0]:
            raise ValueError("temperature: [start, end] with 0 < end <= start")


def load_config(path) -> PerovskiteConfig:
    """The benchmark config in a YAML file (ConfigError names the key and the fix)."""
    return from_mapping(PerovskiteConfig, load_yaml(path), str(path))


def perovskite_row(a: float, elements: list[str]):
    """The Pm-3m row of ABX3 with lattice parameter ``a``: A 1a, B 1b, X 3c."""
    from ase.data import atomic_numbers

    from hpcxtal.crystal.row import decode
    from hpcxtal.crystal.symmetry import space_group

    by_label = {wp.label: wp.index for wp in space_group(221).wyckoff}
    return decode(221, np.array([a, a, a, 90.0, 90.0, 90.0]),
                  [by_label["1a"], by_label["1b"], by_label["3c"]],
                  [[0, 0, 0], [0.5, 0.5, 0.5], [0, 0.5, 0.5]],
                  species=[atomic_numbers[el] for el in elements])


class Evaluator:
    """CHGNet lattice refinement and formation energy of compositions, each composition
    evaluated once; counts energy evaluations."""

    def __init__(self, cfg: PerovskiteConfig, choice, shared: "Evaluator | None" = None) -> None:
        """A fresh evaluator (no composition evaluated yet); ``shared`` lends its model
        and elemental references (computed once per run)."""
        self.cfg, self.choice = cfg, choice
        self.results: dict[int, dict] = {}
        self.evaluations = 0
        if shared is not None:
            self.refine, self.objective, self.mu = shared.refine, shared.objective, shared.mu
            self.reference_seconds = 0.0
            return
        from ase.data import atomic_numbers

        from hpcxtal.refine.objective import build_objective
        from hpcxtal.relax.engine import RelaxParams
        from hpcxtal.relax.reference import elemental_energy

        settings = {"backend": "chgnet", "model": cfg.chgnet,
                    "reference_eV_per_atom": ENERGY_FLOOR_EV}
        self.refine = RefineConfig(
            objective=[ObjectiveTerm(name="energy", settings=settings)],
            max_steps=cfg.lattice_steps, restarts=0, check_every=cfg.lattice_steps,
            flat_tolerance=0.0,
            optim=OptimConfig(lr=cfg.lattice_lr, patience=cfg.lattice_steps), device="cpu")
        self.objective = build_objective(self.refine)  # validity: the campaign rule, unused
        model = self.objective.terms[0].model
        elements = {el for s in choice.sites for el in s.elements}
        t0 = time.perf_counter()
        self.mu = {el: elemental_energy(atomic_numbers[el], model, RelaxParams())
                   for el in sorted(elements)}
        self.reference_seconds = time.perf_counter() - t0

    def evaluate(self, assignments: list[int]) -> None:
        """Refine (one batch) and score the assignments not evaluated yet."""
        from hpcxtal.descriptor.batch import build_batch
        from hpcxtal.refine.represent import refine_batch

        new = sorted({int(k) for k in assignments} - set(self.results))
        if not new:
            return
        rows = [perovskite_row(self.start_a(k), self.choice.symbols(k)) for k in new]
        batch = build_batch(rows)
        R, loss, _, steps, status, _ = refine_batch(batch, np.asarray(new), self.objective,
                                                    self.refine)
        self.evaluations += int((steps + 1).sum())
        a = R[:, 0].detach().numpy()
        for k, a_k, l_k, st in zip(new, a, loss.numpy(), status):
            symbols = self.choice.symbols(k)
            ref = (self.mu[symbols[0]] + self.mu[symbols[1]] + 3 * self.mu[symbols[2]]) / 5
            e_form = float(l_k) + ENERGY_FLOOR_EV - ref
            _, r_b, r_x = self.choice.radius[k]
            t = self.t_factor(k)
            lo, hi = self.cfg.t_range
            fidelity = abs(a_k / 2 - (r_b + r_x)) <= self.cfg.fidelity_tolerance * (r_b + r_x)
            self.results[k] = {
                "formula": f"{symbols[0]}{symbols[1]}{symbols[2]}3", "a_A": float(a_k),
                "e_form_eV_per_atom": e_form, "t": t, "status": str(st.value),
                "success": bool(e_form < self.cfg.e_form_max_eV and lo <= t <= hi and fidelity
                                and np.isfinite(e_form)),
                "fidelity": bool(fidelity)}

    def t_factor(self, k: int) -> float:
        """Goldschmidt tolerance factor of assignment ``k`` (its neutral states' radii)."""
        from hpcxtal.refine.elements import tolerance_factor

        r_a, r_b, r_x = self.choice.radius[k]
        return float(tolerance_factor(r_a, r_b, r_x))

    def start_a(self, k: int) -> float:
        """Starting lattice parameter from the radii: the larger of 2 (r_B + r_X) and
        sqrt(2) (r_A + r_X)."""
        r_a, r_b, r_x = self.choice.radius[k]
        return float(max(2 * (r_b + r_x), math.sqrt(2) * (r_a + r_x)))


def run(cfg: PerovskiteConfig) -> dict:
    """Run both methods; returns per-method records and a summary."""
    import torch

    from hpcxtal.refine.elements import ElementChoice, SiteChoice, design

    torch.set_num_threads(1)
    choice = ElementChoice([SiteChoice(tuple(cfg.a_elements), 1, "XII"),
                            SiteChoice(tuple(cfg.b_elements), 1, "VI"),
                            SiteChoice(tuple(cfg.x_elements), 3, "VI")])
    evaluator = Evaluator(cfg, choice)
    t_all = torch.tensor([evaluator.t_factor(k) for k in range(len(choice))], dtype=torch.float64)

    t0 = time.perf_counter()
    outside = ((t_all < cfg.t_range[0]) | (t_all > cfg.t_range[1])).to(t_all.dtype)
    chosen = design(choice, outside, cfg.n_samples,
                    steps=cfg.design_steps, lr=cfg.design_lr, t_start=cfg.temperature[0],
                    t_end=cfg.temperature[1], seed=cfg.seed)
    evaluator.evaluate(chosen.tolist())
    design_seconds = time.perf_counter() - t0
    budget = evaluator.evaluations
    design_records = [evaluator.results[int(k)] for k in chosen]

    tpe_records, tpe_seconds, tpe_evals = _tpe(cfg, choice, budget, evaluator)
    return {"summary": {
        "design": _summary(design_records, budget, design_seconds),
        "tpe": _summary(tpe_records, tpe_evals, tpe_seconds),
    }, "neutral_compositions": len(choice), "reference_seconds": evaluator.reference_seconds,
        "design": design_records, "tpe": tpe_records}


def _tpe(cfg: PerovskiteConfig, choice, budget: int, shared: Evaluator
         ) -> tuple[list[dict], float, int]:
    """TPE trials until ``budget`` energy evaluations are spent (a fresh evaluator: no
    composition the design evaluated is free to TPE)."""
    import optuna
    import torch

    from hpcxtal.refine.elements import window_penalty

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    evaluator = Evaluator(cfg, choice, shared)
    index = {tuple(a): k for k, a in enumerate(choice.assignments.tolist())}
    records: list[dict] = []
    t0 = time.perf_counter()
    sampler = optuna.samplers.TPESampler(seed=cfg.seed)
    study = optuna.create_study(direction="minimize", sampler=sampler)
    lo, hi = cfg.t_range
    max_trials = 50 * cfg.n_samples  # guard: a search that never finds neutral ones
    while evaluator.evaluations < budget and len(study.trials) < max_trials:
        trial = study.ask()
        key = tuple(trial.suggest_categorical(name, list(range(len(s.elements))))
                    for name, s in zip(("A", "B", "X"), choice.sites))
        k = index.get(key)
        if k is None:
            a, b, x = (s.elements[e] for s, e in zip(choice.sites, key))
            records.append({"formula": f"{a}{b}{x}3",
                            "neutral": False, "success": False})
            study.tell(trial, NOT_NEUTRAL)
            continue
        evaluator.evaluate([k])
        rec = evaluator.results[k]
        records.append({**rec, "neutral": True})
        penalty = float(window_penalty(torch.tensor(rec["t"]), lo, hi))
        study.tell(trial, rec["e_form_eV_per_atom"] + T_WEIGHT * penalty)
    return records, time.perf_counter() - t0, evaluator.evaluations


def _summary(records: list[dict], evaluations: int, seconds: float) -> dict:
    """Success rate, distinct (successful) compositions, neutral share, cost of a method."""
    ok = [r for r in records if r["success"]]
    return {"samples": len(records), "success_rate": len(ok) / max(len(records), 1),
            "distinct_successes": len({r["formula"] for r in ok}),
            "distinct_compositions": len({r["formula"] for r in records}),
            "neutral_rate": float(np.mean([r.get("neutral", True) for r in records])),
            "energy_evaluations": evaluations, "seconds": seconds}


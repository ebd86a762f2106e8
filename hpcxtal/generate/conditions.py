"""Conditions for sampling: which space group and Wyckoff sites a new crystal gets.

A condition is ``(spg, wps)`` with ``wps`` the 8 Wyckoff indices of the row slots
(-1 = empty). :class:`ConditionSampler` draws them from the training multiset, or from
a learned discrete model that can propose combinations never seen in training:
space group from the training frequencies, number of sites given the group, then each
slot's Wyckoff index given the group and the previous slot (a smoothed per-group
bigram over the group's valid positions). Every proposal is checked with
:func:`check_condition` before use.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hpcxtal.crystal.row import N_SITES
from hpcxtal.crystal.symmetry import wyckoff_cost_tables

MAX_ATOMS = 500
#: Wyckoff index classes per slot: 27 positions (largest group) + "empty".
N_WP = 27
EMPTY = N_WP
MODES = ("train", "learned", "mix")


def check_condition(spg: int, wps: np.ndarray, max_atoms: int = MAX_ATOMS) -> str | None:
    """Why ``(spg, wps)`` is not a usable condition, or None if it is.

    Usable: a group in 1-230; 1-8 occupied slots packed to the front; every index a
    Wyckoff position of the group; a position without free coordinates at most once
    (it has one point per orbit, so a second site would put atoms on the first);
    at most ``max_atoms`` atoms in the conventional cell.
    """
    mult, dof, ok = wyckoff_cost_tables()
    if not 1 <= int(spg) <= 230:
        return f"space group {spg} not in 1-230"
    wps = np.asarray(wps, dtype=np.int64)
    if wps.shape != (N_SITES,):
        return f"{wps.shape} Wyckoff slots, expected ({N_SITES},)"
    occupied = wps >= 0
    n = int(occupied.sum())
    if n == 0:
        return "no occupied site"
    if not occupied[:n].all():
        return "occupied sites are not packed to the front"
    used = wps[:n]
    if np.any(used >= N_WP) or not ok[spg, used].all():
        return f"Wyckoff index not in space group {spg}: {used.tolist()}"
    fixed, counts = np.unique(used[dof[spg, used] == 0], return_counts=True)
    if np.any(counts > 1):
        return f"fixed position {int(fixed[counts > 1][0])} used {int(counts.max())} times"
    atoms = int(mult[spg, used].sum())
    if atoms > max_atoms:
        return f"{atoms} atoms > {max_atoms}"
    return None


@dataclass
class ConditionSampler:
    """Training conditions with their counts, plus the learned discrete model."""

    conditions: np.ndarray  # (M, 9) int: spg, wp0..wp7 (unique)
    counts: np.ndarray  # (M,) int
    smoothing: float = 0.5

    @classmethod
    def fit(cls, spg: np.ndarray, wps: np.ndarray, smoothing: float = 0.5) -> "ConditionSampler":
        rows = np.concatenate([np.asarray(spg, np.int64)[:, None], np.asarray(wps, np.int64)], 1)
        unique, counts = np.unique(rows, axis=0, return_counts=True)
        return cls(unique, counts, smoothing)

    def state(self) -> dict:
        return {"conditions": self.conditions, "counts": self.counts, "smoothing": self.smoothing}

    @classmethod
    def from_state(cls, state: dict) -> "ConditionSampler":
        return cls(np.asarray(state["conditions"], np.int64), np.asarray(state["counts"], np.int64),
                   float(state["smoothing"]))

    def _tables(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Group frequencies, P(n sites | group), bigram P(wp | group, previous)."""
        groups, inverse = np.unique(self.conditions[:, 0], return_inverse=True)
        g_count = np.bincount(inverse, weights=self.counts).astype(float)
        n_sites = (self.conditions[:, 1:] >= 0).sum(1)
        n_count = np.zeros((len(groups), N_SITES + 1))
        np.add.at(n_count, (inverse, n_sites), self.counts)
        bigram = np.zeros((len(groups), N_WP + 1, N_WP))  # previous (EMPTY = start) -> next
        for row, gi, c in zip(self.conditions[:, 1:], inverse, self.counts):
            prev = EMPTY
            for w in row[row >= 0]:
                bigram[gi, prev, w] += c
                prev = w
        return groups, g_count, n_count, bigram

    def sample_training(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` conditions drawn from the training multiset (with replacement)."""
        idx = rng.choice(len(self.conditions), size=n, p=self.counts / self.counts.sum())
        return self.conditions[idx].copy()

    def sample_learned(self, n: int, rng: np.random.Generator,
                       max_tries: int = 50) -> np.ndarray:
        """``n`` consistent conditions from the learned model (rejection sampling;
        a slot of a group's bigram gets ``smoothing`` pseudo-counts for every valid
        position of the group, so unseen combinations have probability > 0)."""
        mult, _, ok = wyckoff_cost_tables()
        groups, g_count, n_count, bigram = self._tables()
        out = np.empty((0, 1 + N_SITES), dtype=np.int64)
        for _ in range(max_tries):
            need = n - len(out)
            if need <= 0:
                break
            batch = []
            for gi in rng.choice(len(groups), size=2 * need, p=g_count / g_count.sum()):
                spg = int(groups[gi])
                valid = ok[spg, :N_WP].astype(float)
                p_n = n_count[gi, 1:] + self.smoothing * 0.1
                k = 1 + int(rng.choice(N_SITES, p=p_n / p_n.sum()))
                wps = -np.ones(N_SITES, dtype=np.int64)
                prev = EMPTY
                for slot in range(k):
                    p = (bigram[gi, prev] + self.smoothing) * valid
                    wps[slot] = prev = int(rng.choice(N_WP, p=p / p.sum()))
                if check_condition(spg, wps) is None:
                    batch.append(np.concatenate([[spg], wps]))
            if batch:
                out = np.concatenate([out, np.array(batch)[:need]])
        if len(out) < n:
            raise RuntimeError(f"only {len(out)} of {n} consistent conditions in {max_tries} rounds")
        return out

    def sample(self, n: int, rng: np.random.Generator, mode: str = "mix") -> tuple[np.ndarray, np.ndarray]:
        """(conditions (n, 9), source per row: "train" or "learned"). ``mix`` draws half
        from each."""
        if mode not in MODES:
            raise ValueError(f"condition mode {mode!r}; choose one of {MODES}")
        n_learned = {"train": 0, "learned": n, "mix": n // 2}[mode]
        parts = [self.sample_training(n - n_learned, rng), self.sample_learned(n_learned, rng)]
        source = np.array(["train"] * (n - n_learned) + ["learned"] * n_learned, dtype=object)
        return np.concatenate(parts), source

    def is_training(self, conditions: np.ndarray) -> np.ndarray:
        """(n,) bool: which conditions occur in the training set."""
        known = {tuple(c) for c in self.conditions.tolist()}
        return np.array([tuple(c) in known for c in np.asarray(conditions).tolist()], dtype=bool)

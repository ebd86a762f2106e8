"""A trained (C)VAE, and sampling a candidate pool from any generator kind.

:meth:`Generator.decode` is the differentiable path latent refinement uses:
``z`` (N, latent) and a condition -> the 30 continuous row values (cell, xyz) through the
frozen decoder and the inverse GMM transform. :func:`sample_pool` loads a model of any
kind (:func:`hpcxtal.generate.plugin.load_generator`), draws raw samples and turns the
values into rows with :func:`hpcxtal.crystal.row.decode`; rows that do not decode go to
the quarantine with the reason, so every sampled id is accounted for.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch

from hpcxtal.crystal.row import N_SITES, DecodeError, Row, decode
from hpcxtal.generate.conditions import EMPTY, check_condition
from hpcxtal.generate.cvae import ModelConfig, RowVAE, condition_onehot
from hpcxtal.generate.gmm import ColumnGMM
from hpcxtal.generate.plugin import DEFAULT_MODEL, RowGenerator, load_generator, numpy_state
from hpcxtal.store.table import Table, str_array


log = logging.getLogger(__name__)
__all__ = ["DEFAULT_MODEL", "Generator", "decode_values", "sample_pool"]


class Generator(RowGenerator):
    """A frozen trained (C)VAE with its GMM transform and condition sampler; the network
    runs in ``dtype`` (float64 makes a row's decoding independent of its batch)."""

    def build(self, blob: dict) -> None:
        if self.kind not in ("cvae", "vae"):
            raise ValueError(f"{self.path}: a {self.kind} model, not a (C)VAE; load it with "
                             f"hpcxtal.generate.plugin.load_generator")
        self.model = RowVAE(ModelConfig(**self.config["model"])).to(self.dtype)
        try:
            self.model.load_state_dict(blob["weights"])  # copied into the model's dtype
        except RuntimeError:
            raise ValueError(f"{self.path}: the weights do not fit the model config "
                             f"(a damaged or edited model file)") from None
        self.model.eval().requires_grad_(False)
        self.gmm = ColumnGMM.from_state(numpy_state(blob["gmm"]))
        self.active = torch.as_tensor(self.gmm.active)
        self.conditional = self.model.cfg.conditional

    @property
    def latent_dim(self) -> int:
        return self.model.cfg.latent_dim

    @torch.no_grad()
    def encode(self, table: Table) -> torch.Tensor:
        """(N, latent) posterior means of the rows of ``table`` (reconstruction)."""
        from hpcxtal.generate.train import encode_table

        batch, _ = encode_table(table, self.gmm, self.gmm.n_components, 0)
        batch = {k: v.to(self.dtype) if v.is_floating_point() else v for k, v in batch.items()}
        return self.model.encode(*self.model.encoder_input(batch))[0]

    def heads(self, z: torch.Tensor, spg: torch.Tensor | None = None,
              wps: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Decoder heads for latent ``z`` under condition (``spg`` (N,), ``wps`` (N, 8));
        the unconditional model takes no condition."""
        cond = None
        if self.model.cfg.conditional:
            if spg is None or wps is None:
                raise ValueError("the conditional model needs spg and wps")
            cond = self.model.embed_condition(condition_onehot(spg, wps).to(z.dtype))
        out = self.model.decode(z, cond)
        out["logits"] = out["logits"].masked_fill(~self.active, -1e9)
        return out

    def decode(self, z: torch.Tensor, spg: torch.Tensor | None = None,
               wps: torch.Tensor | None = None) -> torch.Tensor:
        """(N, 30) continuous values (a, b, c, alpha, beta, gamma, x0, y0, z0, ...) for
        latent ``z``: component probabilities and residual means through the inverse
        GMM. Differentiable in ``z`` (the model is frozen)."""
        out = self.heads(z, spg, wps)
        return self.gmm.inverse(torch.softmax(out["logits"], -1), out["res_mu"])

    @torch.no_grad()
    def sample_raw(self, n: int, rng: np.random.Generator, mode: str = "mix"
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(spg (n,), wps (n, 8), values (n, 30), condition source (n,)) for ``n`` new
        latent vectors; mixture components are drawn from the decoder's probabilities."""
        gen = torch.Generator().manual_seed(int(rng.integers(2 ** 62)))
        z = torch.randn(n, self.latent_dim, generator=gen).to(self.dtype)
        if self.model.cfg.conditional:
            cond, source = self.conditions.sample(n, rng, mode)
            spg, wps = torch.as_tensor(cond[:, 0]), torch.as_tensor(cond[:, 1:])
            out = self.heads(z, spg, wps)
        else:
            out = self.heads(z)
            spg = torch.multinomial(torch.softmax(out["spg_logits"], -1), 1, generator=gen)[:, 0] + 1
            wp = torch.multinomial(torch.softmax(out["wp_logits"], -1).flatten(0, 1), 1,
                                   generator=gen).view(n, N_SITES)
            # empty slots may come anywhere; pack the occupied ones to the front
            order = torch.sort((wp == EMPTY).to(torch.int8), dim=1, stable=True).indices
            wp = torch.gather(wp, 1, order)
            wps = torch.where(wp == EMPTY, torch.full_like(wp, -1), wp)
            source = np.array(["model"] * n, dtype=object)
        probs = torch.softmax(out["logits"], -1)
        comp = torch.multinomial(probs.flatten(0, 1), 1, generator=gen).view(probs.shape[:2])
        onehot = torch.nn.functional.one_hot(comp, probs.shape[-1]).to(out["res_mu"].dtype)
        values = self.gmm.inverse(onehot, out["res_mu"])
        return spg.numpy(), wps.numpy(), values.numpy().astype(float), source


def condition_text(spg: int, wps: np.ndarray) -> str:
    """``"194:2,3"``: space group and occupied Wyckoff indices, as stored in pools."""
    return f"{int(spg)}:" + ",".join(str(int(w)) for w in wps if w >= 0)


def decode_values(spg: np.ndarray, wps: np.ndarray, values: np.ndarray) -> list[Row | str]:
    """Rows from conditions (spg (N,), wps (N, 8)) and decoded values (N, 30), as
    :meth:`Generator.decode` gives them: per row a :class:`Row`, or the reason it does
    not decode (an inconsistent condition, or :func:`hpcxtal.crystal.row.decode`'s)."""
    out: list[Row | str] = []
    for s, w, v in zip(spg, wps, np.asarray(values, dtype=float)):
        problem = check_condition(int(s), w)
        if problem is not None:
            out.append(f"inconsistent condition: {problem}")
            continue
        xyz = np.where(w[:, None] >= 0, v[6:].reshape(N_SITES, 3) % 1.0, -1.0)
        try:
            # columns tied by symmetry are not trained (free_mask): check the cell after
            # the symmetry mean only
            out.append(decode(s, v[:6], w.astype(float), xyz, check_raw=False))
        except DecodeError as err:
            out.append(str(err))
    return out


def sample_pool(model: str | Path, n: int, seed: int = 0, mode: str = "mix",
                first_id: int = 0) -> tuple[Table, Table]:
    """``n`` candidates from the generator: (pool, quarantine). Pool rows carry
    ``origin`` (``KIND:MODEL_ID``), ``condition`` and ``condition_source``; the
    quarantine holds the rest with the reason and the raw values."""
    from hpcxtal.store.formats import quarantine_table

    gen = load_generator(model)
    rng = np.random.default_rng(seed)
    spg, wps, values, source = gen.sample_raw(n, rng, mode)
    rows, ids, conds, srcs = [], [], [], []
    bad_ids, bad_reasons, bad_raw = [], [], []
    for i, result in enumerate(decode_values(spg, wps, values)):
        if isinstance(result, str):
            bad_ids.append(first_id + i)
            bad_reasons.append(result)
            bad_raw.append(json.dumps({"spg": int(spg[i]), "wps": wps[i].tolist(),
                                       "values": np.round(values[i], 6).tolist()}))
            continue
        rows.append(result)
        ids.append(first_id + i)
        conds.append(condition_text(spg[i], wps[i]))
        srcs.append(source[i])
    pool = Table.from_rows(rows, ids, [gen.origin] * len(rows), condition=str_array(conds),
                           condition_source=str_array(srcs))
    pool.attrs.update({"generator": gen.origin, "generator_file": str(gen.path), "seed": seed,
                       "condition_mode": mode, "n_sampled": n})
    quarantine = quarantine_table(bad_ids, [gen.origin] * len(bad_ids), bad_reasons, bad_raw)
    log.info("sampled %d candidates from %s: %d decode, %d quarantined", n, gen.origin,
             len(pool), len(quarantine))
    return pool, quarantine

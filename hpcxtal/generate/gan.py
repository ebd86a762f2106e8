"""A conditional tabular WGAN-GP over the free columns of a row (the GAN LEGO-xtal
compares with its VAEs, here on this package's symmetry-aware representation).

Generator: (z, embedded condition) -> the 30 standardised continuous values of
:mod:`hpcxtal.generate.tabular`, the columns the condition fixes zeroed. Critic: (values,
free-column mask, embedded condition) -> a score. Wasserstein loss with gradient penalty
(Gulrajani et al. 2017: lambda 10, Adam betas (0.5, 0.9)); the critic updates on every
batch, the generator on every ``n_critic``-th. ``decode(z, spg, wps)`` is the generator,
so latent refinement can optimise ``z``. Deterministic for a seed.

Binned (``n_bins`` > 0, LEGO-xtal's "GAN-Dis" representation): each coordinate column
is one of ``n_bins`` bins (value ``k / n_bins``, as pyxtal's discrete tabular
representation); the generator gives per coordinate column ``n_bins`` logits, the
critic sees a Gumbel-softmax draw of them (temperature 0.2, as CTGAN) and the real rows'
one-hot bins, and sampling draws each bin from the generator's softmax. ``decode`` is
then the probability-weighted mean bin value (differentiable, like the (C)VAE's decode
through its GMM), not a draw.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn

from hpcxtal.generate.conditions import ConditionSampler
from hpcxtal.generate.cvae import CONDITION_DIM
from hpcxtal.generate.gmm import COORD_COLUMNS, N_COLUMNS, row_values
from hpcxtal.generate.plugin import RowGenerator, Trainer, numpy_state, tensor_state
from hpcxtal.generate.tabular import ColumnScaler, condition_tensors, scaled_table, values_from_scaled
from hpcxtal.store.table import Table


@dataclass(frozen=True, kw_only=True)
class GANConfig:
    """Network sizes and the WGAN-GP settings."""

    latent_dim: int = 32
    hidden: int = 256
    n_hidden_layers: int = 2
    condition_embedding: int = 128
    n_critic: int = 5
    gp_weight: float = 10.0
    #: Bins per coordinate column; 0 = continuous coordinates.
    n_bins: int = 0
    #: Gumbel-softmax temperature of the binned generator's output the critic sees.
    tau: float = 0.2

    def __post_init__(self) -> None:
        if min(self.latent_dim, self.hidden, self.n_hidden_layers, self.condition_embedding,
               self.n_critic) < 1 or self.gp_weight < 0 or self.tau <= 0:
            raise ValueError("model sizes and n_critic must be positive, gp_weight >= 0, tau > 0")
        if self.n_bins < 0 or self.n_bins == 1:
            raise ValueError("n_bins must be 0 (continuous) or at least 2")

    @property
    def kind(self) -> str:
        return "gan"


def _mlp(n_in: int, hidden: int, layers: int, n_out: int,
         act: Callable[[], nn.Module]) -> nn.Sequential:
    parts: list[nn.Module] = []
    for k in range(layers):
        parts += [nn.Linear(n_in if k == 0 else hidden, hidden), act()]
    parts.append(nn.Linear(hidden, n_out))
    return nn.Sequential(*parts)


N_COORDS = COORD_COLUMNS.stop - COORD_COLUMNS.start


def bin_values(n_bins: int) -> torch.Tensor:
    """(n_bins,) the value of each bin (its lower edge ``k / n_bins``, as pyxtal)."""
    return torch.arange(n_bins, dtype=torch.float64) / n_bins


class RowGAN(nn.Module):
    """Generator and critic, each with its own condition embedding. What the critic
    scores (a "rep"): the 30 standardised values, or (binned) the 6 cell values and
    ``n_bins`` bin weights per coordinate column; fixed columns are 0."""

    def __init__(self, cfg: GANConfig):
        super().__init__()
        self.cfg = cfg
        e = cfg.condition_embedding
        self.rep_dim = 6 + N_COORDS * cfg.n_bins if cfg.n_bins else N_COLUMNS
        self.g_embed = nn.Sequential(nn.Linear(CONDITION_DIM, e), nn.ReLU())
        self.generator = _mlp(cfg.latent_dim + e, cfg.hidden, cfg.n_hidden_layers, self.rep_dim, nn.ReLU)
        self.d_embed = nn.Sequential(nn.Linear(CONDITION_DIM, e), nn.LeakyReLU(0.2))
        self.critic = _mlp(self.rep_dim + N_COLUMNS + e, cfg.hidden, cfg.n_hidden_layers, 1,
                           lambda: nn.LeakyReLU(0.2))

    def rep_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """The free-column mask (N, 30) widened to the rep."""
        if not self.cfg.n_bins:
            return mask
        return torch.cat([mask[:, :6], mask[:, 6:].repeat_interleave(self.cfg.n_bins, 1)], 1)

    def generate(self, z: torch.Tensor, cond: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The generator's output: continuous, the free values (N, 30); binned, the cell
        values and the bin logits (N, 6 + 24 n_bins), fixed columns 0."""
        return self.generator(torch.cat([z, self.g_embed(cond)], 1)) * self.rep_mask(mask)

    def fake_rep(self, out: torch.Tensor, mask: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
        """What the critic sees of the generator's output: binned, a Gumbel-softmax draw
        (temperature ``tau``) per coordinate column."""
        if not self.cfg.n_bins:
            return out
        logits = out[:, 6:].view(len(out), N_COORDS, self.cfg.n_bins)
        gumbel = -torch.log(-torch.log(torch.rand(logits.shape, generator=rng).clamp_min(1e-20)))
        soft = torch.softmax((logits + gumbel) / self.cfg.tau, -1) * mask[:, 6:, None]
        return torch.cat([out[:, :6], soft.flatten(1)], 1)

    def score(self, x: torch.Tensor, cond: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.critic(torch.cat([x * self.rep_mask(mask), mask, self.d_embed(cond)], 1))[:, 0]


class GANTrainer(Trainer):
    """WGAN-GP training on the standardised free columns."""

    kind = "gan"

    def __init__(self, cfg, table: Table):
        self.cfg = cfg.model
        self.data, self.scaler = scaled_table(table)
        if self.cfg.n_bins:  # the critic's real rep: cell values, one-hot coordinate bins
            values = row_values(table["cell"], table["xyz"])[:, COORD_COLUMNS]
            bins = np.minimum(np.floor((values % 1.0) * self.cfg.n_bins + 1e-9), self.cfg.n_bins - 1)
            onehot = nn.functional.one_hot(torch.as_tensor(bins, dtype=torch.long), self.cfg.n_bins)
            onehot = onehot * self.data["mask"][:, 6:, None]
            self.data["x"] = torch.cat([self.data["x"][:, :6], onehot.flatten(1).float()], 1)
        self.sampler = ConditionSampler.fit(table["spg"], table["wps"])
        torch.manual_seed(cfg.seed)
        self.model = RowGAN(self.cfg)
        g_params = [*self.model.g_embed.parameters(), *self.model.generator.parameters()]
        d_params = [*self.model.d_embed.parameters(), *self.model.critic.parameters()]
        self.opt_g = torch.optim.Adam(g_params, lr=cfg.learning_rate, betas=(0.5, 0.9))
        self.opt_d = torch.optim.Adam(d_params, lr=cfg.learning_rate, betas=(0.5, 0.9))
        self.steps = 0

    def step(self, batch: dict[str, torch.Tensor], rng: torch.Generator) -> dict[str, float]:
        real, mask, cond = batch["x"], batch["mask"].float(), batch["cond"]
        n = len(real)
        z = torch.randn(n, self.cfg.latent_dim, generator=rng)
        fake = self.model.fake_rep(self.model.generate(z, cond, mask), mask, rng).detach()
        alpha = torch.rand(n, 1, generator=rng)
        mixed = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
        grad, = torch.autograd.grad(self.model.score(mixed, cond, mask).sum(), mixed, create_graph=True)
        penalty = ((grad.norm(dim=1) - 1) ** 2).mean()
        wasserstein = self.model.score(real, cond, mask).mean() - self.model.score(fake, cond, mask).mean()
        loss_d = -wasserstein + self.cfg.gp_weight * penalty
        self.opt_d.zero_grad()
        loss_d.backward()
        self.opt_d.step()
        self.steps += 1
        parts = {"critic": float(loss_d.detach()), "wasserstein": float(wasserstein.detach())}
        if self.steps % self.cfg.n_critic == 0:
            z = torch.randn(n, self.cfg.latent_dim, generator=rng)
            fake = self.model.fake_rep(self.model.generate(z, cond, mask), mask, rng)
            loss_g = -self.model.score(fake, cond, mask).mean()
            self.opt_g.zero_grad()
            loss_g.backward()
            self.opt_g.step()
        return parts

    def state(self) -> dict:
        return {"model": self.model.state_dict(), "opt_g": self.opt_g.state_dict(),
                "opt_d": self.opt_d.state_dict(), "steps": self.steps}

    def load_state(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        self.steps = state["steps"]

    def model_state(self) -> dict:
        """The generator only (sampling needs no critic)."""
        weights = {k: v for k, v in self.weights().items()
                   if k.startswith(("g_embed.", "generator."))}
        return {"scaler": tensor_state(self.scaler.state()),
                "conditions": tensor_state(self.sampler.state()), "weights": weights}



class GANGenerator(RowGenerator):
    """A frozen trained GAN generator; ``decode`` is the generator network (binned: with
    the probability-weighted mean bin of each coordinate)."""

    def build(self, blob: dict) -> None:
        self.cfg = GANConfig(**self.config["model"])
        self.model = RowGAN(self.cfg).to(self.dtype)
        try:
            missing = self.model.load_state_dict(blob["weights"], strict=False).missing_keys
        except RuntimeError:
            raise ValueError(f"{self.path}: the weights do not fit the model config "
                             f"(a damaged or edited model file)") from None
        if any(not k.startswith(("d_embed.", "critic.")) for k in missing):  # no critic in the file
            raise ValueError(f"{self.path}: GAN generator weights incomplete")
        self.model.eval().requires_grad_(False)
        self.scaler = ColumnScaler.from_state(numpy_state(blob["scaler"]))
        self.latent_dim = self.cfg.latent_dim

    def _values(self, z: torch.Tensor, spg: torch.Tensor | None, wps: torch.Tensor | None,
                gen: torch.Generator | None) -> torch.Tensor:
        """(N, 30) row values from latent ``z`` under condition (``spg``, ``wps``); binned
        coordinates drawn from ``gen`` if given, else their probability-weighted mean."""
        if spg is None or wps is None:
            raise ValueError("the GAN needs spg and wps")
        cond, mask = condition_tensors(spg, wps, z.dtype)
        out = self.model.generate(z, cond, mask)
        n_bins = self.cfg.n_bins
        if not n_bins:
            return values_from_scaled(out, self.scaler, spg, mask)
        probs = torch.softmax(out[:, 6:].view(len(z), N_COORDS, n_bins), -1)
        edges = bin_values(n_bins).to(z.dtype)
        if gen is None:
            coords = (probs * edges).sum(-1)
        else:
            coords = edges[torch.multinomial(probs.flatten(0, 1), 1, generator=gen).view(len(z), N_COORDS)]
        cell = values_from_scaled(torch.cat([out[:, :6], torch.zeros_like(coords)], 1),
                                  self.scaler, spg, mask)[:, :6]
        return torch.cat([cell, coords * mask[:, 6:]], 1)

    def decode(self, z: torch.Tensor, spg: torch.Tensor | None = None,
               wps: torch.Tensor | None = None) -> torch.Tensor:
        """(N, 30) row values from latent ``z`` under condition (``spg``, ``wps``)."""
        return self._values(z, spg, wps, None)

    @torch.no_grad()
    def sample_raw(self, n: int, rng: np.random.Generator, mode: str = "mix"
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        gen = torch.Generator().manual_seed(int(rng.integers(2 ** 62)))
        cond, source = self.conditions.sample(n, rng, mode)
        z = torch.randn(n, self.latent_dim, generator=gen).to(self.dtype)
        values = self._values(z, torch.as_tensor(cond[:, 0]), torch.as_tensor(cond[:, 1:]),
                              gen if self.cfg.n_bins else None)
        return cond[:, 0], cond[:, 1:], values.numpy().astype(float), source

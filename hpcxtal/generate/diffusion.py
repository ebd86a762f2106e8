"""Symmetry-aware tabular diffusion: a denoising diffusion model of a row's continuous
columns conditioned on its space group and Wyckoff sites.

The data are the free columns of a row (:mod:`hpcxtal.generate.tabular`: free lattice
parameters and free site coordinates, standardised); the columns the condition fixes
are no data: noise is never added to them and the loss never sees them, so every
sample respects its condition's lattice system and Wyckoff positions by construction.
A network (MLP on noisy values, free-column mask, time and condition embeddings)
predicts the noise (DDPM training, cosine schedule). Sampling is the deterministic
DDIM map from the initial noise ``z`` (N, 30) to values: that map is :meth:`decode`,
so the initial noise is this model's latent space and latent refinement can optimise
it through ``decode``. Deterministic for a seed (shuffling, time steps and noise come
from one torch generator).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from hpcxtal.generate.conditions import ConditionSampler
from hpcxtal.generate.cvae import CONDITION_DIM
from hpcxtal.generate.gmm import N_COLUMNS
from hpcxtal.generate.plugin import RowGenerator, Trainer, numpy_state, tensor_state
from hpcxtal.generate.tabular import ColumnScaler, condition_tensors, scaled_table, values_from_scaled
from hpcxtal.store.table import Table

#: Standardised values are clipped here when the network's estimate of x0 is formed.
X0_CLIP = 6.0


@dataclass(frozen=True, kw_only=True)
class DiffusionConfig:
    """Network and noise schedule: ``steps`` diffusion steps in training,
    ``sample_steps`` DDIM steps in sampling and :meth:`DiffusionGenerator.decode`."""

    hidden: int = 256
    n_hidden_layers: int = 3
    condition_embedding: int = 128
    time_embedding: int = 32
    steps: int = 500
    sample_steps: int = 40

    def __post_init__(self) -> None:
        if min(self.hidden, self.n_hidden_layers, self.condition_embedding, self.time_embedding) < 1:
            raise ValueError("model sizes must be positive")
        if not 2 <= self.sample_steps <= self.steps:
            raise ValueError(f"sample_steps must be in 2-steps ({self.steps}), got {self.sample_steps}")

    @property
    def kind(self) -> str:
        return "diffusion"


def cosine_alpha_bar(steps: int) -> torch.Tensor:
    """(steps,) cumulative signal fraction of the cosine schedule (Nichol & Dhariwal 2021),
    float64, each step's beta capped at 0.999."""
    s = 0.008
    t = torch.arange(steps + 1, dtype=torch.float64) / steps
    f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
    beta = (1 - f[1:] / f[:-1]).clamp(max=0.999)
    return torch.cumprod(1 - beta, 0)


class Denoiser(nn.Module):
    """eps(x_t, t, condition): an MLP on the noisy free values, the free-column mask and
    the time and condition embeddings."""

    def __init__(self, cfg: DiffusionConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Sequential(nn.Linear(CONDITION_DIM, cfg.condition_embedding), nn.SiLU(),
                                   nn.Linear(cfg.condition_embedding, cfg.condition_embedding))
        layers: list[nn.Module] = []
        width = 2 * N_COLUMNS + cfg.time_embedding + cfg.condition_embedding
        for k in range(cfg.n_hidden_layers):
            layers += [nn.Linear(width if k == 0 else cfg.hidden, cfg.hidden), nn.SiLU()]
        layers.append(nn.Linear(cfg.hidden, N_COLUMNS))
        self.net = nn.Sequential(*layers)
        half = cfg.time_embedding // 2
        self.register_buffer("freq", torch.exp(-math.log(1000.0) * torch.arange(half) / max(half, 1)),
                             persistent=False)

    def time_features(self, t: torch.Tensor) -> torch.Tensor:
        """Sinusoidal features of step ``t`` (N,) scaled to [0, 1000)."""
        arg = (t.to(self.freq.dtype) * (1000.0 / self.cfg.steps))[:, None] * self.freq
        out = torch.cat([torch.sin(arg), torch.cos(arg)], 1)
        pad = self.cfg.time_embedding - out.shape[1]
        return nn.functional.pad(out, (0, pad)) if pad else out

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor,
                mask: torch.Tensor) -> torch.Tensor:
        h = torch.cat([x * mask, mask, self.time_features(t), self.embed(cond)], 1)
        return self.net(h) * mask


class DiffusionTrainer(Trainer):
    """DDPM training: x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps on free columns;
    loss = mean squared error of the predicted noise over each row's free columns."""

    kind = "diffusion"

    def __init__(self, cfg, table: Table):
        self.cfg = cfg.model
        self.data, self.scaler = scaled_table(table)
        self.sampler = ConditionSampler.fit(table["spg"], table["wps"])
        self.alpha_bar = cosine_alpha_bar(self.cfg.steps).float()
        torch.manual_seed(cfg.seed)
        self.model = Denoiser(self.cfg)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=cfg.learning_rate)

    def step(self, batch: dict[str, torch.Tensor], rng: torch.Generator) -> dict[str, float]:
        x0, mask, cond = batch["x"], batch["mask"].float(), batch["cond"]
        t = torch.randint(0, self.cfg.steps, (len(x0),), generator=rng)
        eps = torch.randn(x0.shape, generator=rng) * mask
        ab = self.alpha_bar[t][:, None]
        xt = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
        pred = self.model(xt, t, cond, mask)
        loss = (((pred - eps) ** 2).sum(1) / mask.sum(1).clamp(min=1)).mean()
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        return {"loss": float(loss.detach())}

    def model_state(self) -> dict:
        return {"scaler": tensor_state(self.scaler.state()),
                "conditions": tensor_state(self.sampler.state()),
                "weights": self.weights()}


class DiffusionGenerator(RowGenerator):
    """A frozen trained diffusion model; ``decode`` is the DDIM map from noise to values."""

    def build(self, blob: dict) -> None:
        self.cfg = DiffusionConfig(**self.config["model"])
        self.model = Denoiser(self.cfg).to(self.dtype)
        self.model.load_state_dict(blob["weights"])
        self.model.eval().requires_grad_(False)
        self.scaler = ColumnScaler.from_state(numpy_state(blob["scaler"]))
        self.alpha_bar = cosine_alpha_bar(self.cfg.steps).to(self.dtype)
        self.latent_dim = N_COLUMNS

    def decode(self, z: torch.Tensor, spg: torch.Tensor | None = None,
               wps: torch.Tensor | None = None) -> torch.Tensor:
        """(N, 30) row values from initial noise ``z`` (N, 30) by ``sample_steps`` DDIM
        steps (eta = 0) under condition (``spg``, ``wps``); differentiable in ``z``."""
        if spg is None or wps is None:
            raise ValueError("the diffusion model needs spg and wps")
        cond, mask = condition_tensors(spg, wps, z.dtype)
        times = np.linspace(self.cfg.steps - 1, 0, self.cfg.sample_steps).round().astype(int)
        x = z * mask
        x0 = x
        for k, t in enumerate(times):
            ab = self.alpha_bar[t]
            ab_next = self.alpha_bar[times[k + 1]] if k + 1 < len(times) else torch.ones((), dtype=z.dtype)
            eps = self.model(x, torch.full((len(z),), int(t)), cond, mask)
            x0 = ((x - (1 - ab).sqrt() * eps) / ab.sqrt()).clamp(-X0_CLIP, X0_CLIP)
            x = ab_next.sqrt() * x0 + (1 - ab_next).sqrt() * eps
        return values_from_scaled(x0, self.scaler, spg, mask)

    @torch.no_grad()
    def sample_raw(self, n: int, rng: np.random.Generator, mode: str = "mix"
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        gen = torch.Generator().manual_seed(int(rng.integers(2 ** 62)))
        cond, source = self.conditions.sample(n, rng, mode)
        spg, wps = torch.as_tensor(cond[:, 0]), torch.as_tensor(cond[:, 1:])
        z = torch.randn(n, N_COLUMNS, generator=gen).to(self.dtype)
        values = self.decode(z, spg, wps)
        return cond[:, 0], cond[:, 1:], values.numpy().astype(float), source

"""The conditional VAE over tabular rows, and its unconditional baseline.

Conditional (``cvae``): the condition (one-hot space group + one-hot Wyckoff index per
slot) is embedded by an MLP; the encoder sees the GMM-encoded continuous columns and the
embedded condition and gives (mu, log sigma^2); the decoder maps (z, embedded condition)
to mixture-component logits and residual means/log-variances of every continuous column.
Unconditional (``vae``): no condition; the row's space group and Wyckoff indices are part
of the data and the decoder predicts them as categories too.

Binned (``n_bins`` > 0, LEGO-xtal's discrete representation): the coordinate columns are
categories of ``n_bins`` bins (:mod:`hpcxtal.generate.gmm`), the heads are
``max(n_components, n_bins)`` wide and the residual NLL counts the cell columns only.

Loss = ``w_ce`` x cross-entropy of the components (and, unconditional, of the group and
the Wyckoff indices) + ``w_nll`` x Gaussian NLL of the residuals + ``w_kl`` x KL, over the
free columns of each row only (the rest are fixed by symmetry and restored by decode).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from hpcxtal.crystal.row import N_SITES
from hpcxtal.generate.conditions import EMPTY, N_WP
from hpcxtal.generate.gmm import N_COLUMNS

N_SPG = 230
#: Width of the one-hot condition: space group + (27 positions + empty) per slot.
CONDITION_DIM = N_SPG + N_SITES * (N_WP + 1)


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """Network shape and loss weights. Published: hidden 1024 x 2, weights 2 / 0.1 / 1,
    250 epochs on a GPU; the default width here is 256 so that the default training
    finishes in minutes on a 2-core CPU (``--hidden 1024`` for the published net)."""

    conditional: bool = True
    n_components: int = 10
    latent_dim: int = 32
    hidden: int = 256
    n_hidden_layers: int = 2
    condition_embedding: int = 128
    w_ce: float = 2.0
    w_nll: float = 0.1
    w_kl: float = 1.0
    #: Bins per coordinate column; 0 = continuous (GMM) coordinates.
    n_bins: int = 0

    def __post_init__(self) -> None:
        if min(self.n_components, self.latent_dim, self.hidden, self.n_hidden_layers,
               self.condition_embedding) < 1:
            raise ValueError("model sizes must be positive")
        if self.n_bins < 0 or self.n_bins == 1:
            raise ValueError("n_bins must be 0 (continuous) or at least 2")

    @property
    def width(self) -> int:
        """Categories per column head: GMM components, or bins if more."""
        return max(self.n_components, self.n_bins)

    @property
    def kind(self) -> str:
        """The model file's kind: ``cvae`` or ``vae``."""
        return "cvae" if self.conditional else "vae"


def condition_onehot(spg: torch.Tensor, wps: torch.Tensor) -> torch.Tensor:
    """(N, CONDITION_DIM) one-hot of space groups (N,) and Wyckoff slots (N, 8)."""
    wp_class = torch.where(wps >= 0, wps, torch.full_like(wps, EMPTY))
    return torch.cat([nn.functional.one_hot(spg - 1, N_SPG),
                      nn.functional.one_hot(wp_class, N_WP + 1).flatten(1)], 1).float()


def _mlp(n_in: int, hidden: int, layers: int, n_out: int) -> nn.Sequential:
    parts: list[nn.Module] = []
    for k in range(layers):
        parts += [nn.Linear(n_in if k == 0 else hidden, hidden), nn.ReLU()]
    parts.append(nn.Linear(hidden, n_out))
    return nn.Sequential(*parts)


class RowVAE(nn.Module):
    """CVAE (``cfg.conditional``) or unconditional VAE over GMM-encoded rows."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        k = cfg.width
        data_dim = N_COLUMNS * (k + 1) + (0 if cfg.conditional else CONDITION_DIM)
        cond_dim = cfg.condition_embedding if cfg.conditional else 0
        if cfg.conditional:
            self.embed = nn.Sequential(nn.Linear(CONDITION_DIM, cfg.condition_embedding), nn.ReLU(),
                                       nn.Linear(cfg.condition_embedding, cfg.condition_embedding))
        self.encoder = _mlp(data_dim + cond_dim, cfg.hidden, cfg.n_hidden_layers, 2 * cfg.latent_dim)
        self.n_out = N_COLUMNS * (k + 2) + (0 if cfg.conditional else CONDITION_DIM)
        self.decoder = _mlp(cfg.latent_dim + cond_dim, cfg.hidden, cfg.n_hidden_layers, self.n_out)

    def embed_condition(self, cond: torch.Tensor | None) -> torch.Tensor | None:
        return self.embed(cond) if self.cfg.conditional else None

    def encoder_input(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(encoder data, embedded condition) of a batch as :meth:`loss` takes it."""
        maskf = batch["mask"].to(batch["resid"].dtype)
        onehot = nn.functional.one_hot(batch["comp"], self.cfg.width).to(maskf.dtype) * maskf[..., None]
        data = torch.cat([onehot, (batch["resid"] * maskf)[..., None]], -1).flatten(1)
        cond_emb = self.embed_condition(batch["cond"])
        if not self.cfg.conditional:
            data = torch.cat([data, batch["cond"]], 1)
        return data, cond_emb

    def encode(self, data: torch.Tensor, cond_emb: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        h = data if cond_emb is None else torch.cat([data, cond_emb], 1)
        mu, logvar = self.encoder(h).chunk(2, dim=1)
        return mu, logvar

    def decode(self, z: torch.Tensor, cond_emb: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """Raw decoder heads: ``logits`` (N, 30, K), ``res_mu`` and ``res_logvar`` (N, 30),
        and (unconditional) ``spg_logits`` (N, 230), ``wp_logits`` (N, 8, 28)."""
        h = self.decoder(z if cond_emb is None else torch.cat([z, cond_emb], 1))
        k = self.cfg.width
        n = len(z)
        cont = h[:, :N_COLUMNS * (k + 2)]
        out = {"logits": cont[:, :N_COLUMNS * k].reshape(n, N_COLUMNS, k),
               "res_mu": cont[:, N_COLUMNS * k:N_COLUMNS * (k + 1)],
               "res_logvar": cont[:, N_COLUMNS * (k + 1):].clamp(-10, 10)}
        if not self.cfg.conditional:
            disc = h[:, N_COLUMNS * (k + 2):]
            out["spg_logits"] = disc[:, :N_SPG]
            out["wp_logits"] = disc[:, N_SPG:].reshape(n, N_SITES, N_WP + 1)
        return out

    def loss(self, batch: dict[str, torch.Tensor], noise: torch.Tensor,
             active: torch.Tensor, continuous: torch.Tensor
             ) -> tuple[torch.Tensor, dict[str, float]]:
        """Loss of a batch (``comp`` (N, 30) long, ``resid`` (N, 30), ``mask`` (N, 30) bool,
        ``cond`` (N, CONDITION_DIM)); ``noise`` (N, latent) drives the reparameterisation;
        ``active`` (30, K) marks real mixture components; ``continuous`` (30,) bool the
        columns with a residual (not binned)."""
        cfg = self.cfg
        comp, resid, mask, cond = batch["comp"], batch["resid"], batch["mask"], batch["cond"]
        maskf = mask.float()
        data, cond_emb = self.encoder_input(batch)
        mu, logvar = self.encode(data, cond_emb)
        z = mu + torch.exp(0.5 * logvar) * noise
        out = self.decode(z, cond_emb)
        logits = out["logits"].masked_fill(~active, -1e9)
        ce = nn.functional.cross_entropy(logits.flatten(0, 1), comp.flatten(), reduction="none")
        ce = (ce.view_as(maskf) * maskf).sum(1)
        nll = 0.5 * (out["res_logvar"] + (resid - out["res_mu"]) ** 2 * torch.exp(-out["res_logvar"]))
        nll = (nll * maskf * continuous).sum(1)
        if not cfg.conditional:
            spg = cond[:, :N_SPG].argmax(1)
            wp = cond[:, N_SPG:].view(-1, N_SITES, N_WP + 1).argmax(-1)
            ce = ce + nn.functional.cross_entropy(out["spg_logits"], spg, reduction="none")
            ce = ce + nn.functional.cross_entropy(out["wp_logits"].flatten(0, 1), wp.flatten(),
                                                  reduction="none").view(-1, N_SITES).sum(1)
        kl = -0.5 * (1 + logvar - mu ** 2 - logvar.exp()).sum(1)
        total = (cfg.w_ce * ce + cfg.w_nll * nll + cfg.w_kl * kl).mean()
        return total, {"loss": float(total.detach()), "ce": float(ce.detach().mean()), "nll": float(nll.detach().mean()),
                       "kl": float(kl.detach().mean())}



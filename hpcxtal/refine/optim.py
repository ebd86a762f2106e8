"""Batched per-sample Adam with the controls Algorithm 1 needs.

Every sample (one crystal's free variables, a padded row of ``R``) gets its own
gradient-norm clip, its own step scale that shrinks when its loss plateaus and grows
back while it improves, and its own stop flag, so hard samples neither dominate nor
hold back easy ones and converged samples stop costing compute. Pure torch, no loop
over samples: ``adam_init`` then ``adam_step`` on an :class:`AdamState`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from hpcxtal.refine.config import OptimConfig


@dataclass
class AdamState:
    """Optimiser state of B samples with P (padded) variables each."""

    m: torch.Tensor  # (B, P) first moment
    v: torch.Tensor  # (B, P) second moment
    t: torch.Tensor  # (B,) steps taken by each sample
    scale: torch.Tensor  # (B,) step scale in [min_scale, max_scale]
    best: torch.Tensor  # (B,) best loss seen
    since_best: torch.Tensor  # (B,) steps since the best loss improved enough
    improving: torch.Tensor  # (B,) consecutive improving steps

    def take(self, idx: torch.Tensor) -> "AdamState":
        """The state of samples ``idx`` (to compact a batch when samples stop)."""
        return AdamState(*(getattr(self, f)[idx] for f in self.__dataclass_fields__))


def adam_init(params: torch.Tensor) -> AdamState:
    """Fresh state for a (B, P) parameter tensor."""
    b = params.shape[0]
    zeros = torch.zeros_like(params)
    like = dict(device=params.device)
    return AdamState(zeros, zeros.clone(), torch.zeros(b, dtype=torch.long, **like),
                     torch.ones(b, dtype=params.dtype, **like),
                     torch.full((b,), float("inf"), dtype=params.dtype, **like),
                     torch.zeros(b, dtype=torch.long, **like), torch.zeros(b, dtype=torch.long, **like))


def clip_per_sample(grad: torch.Tensor, max_norm: float) -> torch.Tensor:
    """Scale each row of ``grad`` down to at most ``max_norm`` (non-finite rows -> 0)."""
    finite = torch.isfinite(grad).all(dim=1, keepdim=True)
    grad = torch.where(finite, grad, torch.zeros_like(grad))
    norm = grad.norm(dim=1, keepdim=True)
    return grad * torch.clamp(max_norm / (norm + 1e-12), max=1.0)


def update_scale(state: AdamState, loss: torch.Tensor, cfg: OptimConfig,
                 active: torch.Tensor) -> None:
    """Plateau control for the ``active`` samples: shrink a sample's step after
    ``patience`` steps without a relative improvement of ``min_rel_improvement``, grow
    it after ``patience`` improving steps. ``loss`` is each sample's current loss."""
    improved = loss < state.best * (1 - cfg.min_rel_improvement)
    zero = torch.zeros_like(state.since_best)
    since_best = torch.where(improved, zero, state.since_best + 1)
    improving = torch.where(improved, state.improving + 1, zero)
    plateau = since_best >= cfg.patience
    streak = improving >= cfg.patience
    scale = torch.where(plateau, state.scale * cfg.shrink, state.scale)
    scale = torch.where(streak, scale * cfg.grow, scale).clamp(cfg.min_scale, cfg.max_scale)
    state.best = torch.where(active, torch.minimum(state.best, loss), state.best)
    state.since_best = torch.where(active, torch.where(plateau, zero, since_best), state.since_best)
    state.improving = torch.where(active, torch.where(streak, zero, improving), state.improving)
    state.scale = torch.where(active, scale, state.scale)


def adam_step(params: torch.Tensor, grad: torch.Tensor, loss: torch.Tensor, state: AdamState,
              cfg: OptimConfig, active: torch.Tensor, lr_per_var: torch.Tensor | None = None
              ) -> torch.Tensor:
    """One step for the ``active`` samples; returns the new (B, P) parameters.

    ``lr_per_var`` (P or B x P) rescales the step of each variable kind (lattice
    lengths, angles, coordinates move on different scales). Inactive samples and
    samples with a non-finite loss keep their parameters and state.
    """
    active = active & torch.isfinite(loss)
    update_scale(state, loss, cfg, active)
    g = clip_per_sample(grad, cfg.clip_norm)
    b1, b2 = cfg.betas
    a = active[:, None]
    state.m = torch.where(a, b1 * state.m + (1 - b1) * g, state.m)
    state.v = torch.where(a, b2 * state.v + (1 - b2) * g * g, state.v)
    state.t = state.t + active.long()
    t = state.t.clamp(min=1).to(params.dtype)[:, None]
    m_hat = state.m / (1 - b1 ** t)
    v_hat = state.v / (1 - b2 ** t)
    step = (cfg.lr * state.scale)[:, None] * m_hat / (v_hat.sqrt() + cfg.eps)
    if lr_per_var is not None:
        step = step * lr_per_var
    new = params - step
    if cfg.weight_decay:
        new = new - (cfg.lr * cfg.weight_decay * state.scale)[:, None] * params
    return torch.where(a, new, params)

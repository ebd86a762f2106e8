"""Per-sample optimiser controls on synthetic losses (no crystals needed)."""
import pytest
import torch

from hpcxtal.refine.optim import OptimConfig, adam_init, adam_step, clip_per_sample, update_scale


def _run(loss_fn, params, cfg, steps, active=None):
    state = adam_init(params)
    active = torch.ones(len(params), dtype=torch.bool) if active is None else active
    for _ in range(steps):
        p = params.detach().requires_grad_(True)
        loss = loss_fn(p)
        (grad,) = torch.autograd.grad(loss.sum(), p)
        params = adam_step(p.detach(), grad, loss.detach(), state, cfg, active)
    return params, state


def test_every_sample_of_a_mixed_batch_descends():
    torch.manual_seed(0)
    target = torch.randn(6, 4, dtype=torch.float64)
    curvature = torch.tensor([1e-2, 1, 10, 100, 1e3, 1e4], dtype=torch.float64)[:, None]
    loss_fn = lambda p: (curvature * (p - target) ** 2).sum(dim=1)
    start = torch.zeros(6, 4, dtype=torch.float64)
    end, _ = _run(loss_fn, start, OptimConfig(lr=0.05), 200)
    assert torch.all(loss_fn(end) < 0.05 * loss_fn(start))


def test_clip_is_per_sample_and_zeroes_non_finite_rows():
    g = torch.tensor([[3.0, 4.0], [0.3, 0.4], [float("nan"), 1.0]])
    c = clip_per_sample(g, 1.0)
    assert c[0].norm() == pytest.approx(1.0)
    assert torch.equal(c[1], g[1])  # under the limit: untouched
    assert torch.equal(c[2], torch.zeros(2))


def test_plateau_shrinks_and_improvement_grows_the_step():
    cfg = OptimConfig(patience=3, shrink=0.5, grow=2.0, min_scale=0.1, max_scale=1.0)
    state = adam_init(torch.zeros(2, 1))
    active = torch.tensor([True, True])
    for k in range(3):  # sample 0 flat, sample 1 improving
        update_scale(state, torch.tensor([1.0, 1.0 / (k + 1)]), cfg, active)
    # first call sets the best for both; sample 0 then waits 2 more steps
    update_scale(state, torch.tensor([1.0, 0.2]), cfg, active)
    assert state.scale[0] == pytest.approx(0.5)
    for _ in range(20):
        update_scale(state, torch.tensor([1.0, 0.2]), cfg, active)
    assert state.scale[0] == pytest.approx(0.1)  # floor
    state.scale[1] = 0.25
    for k in range(3):
        update_scale(state, torch.tensor([1.0, 0.1 / 2 ** k]), cfg, active)
    assert state.scale[1] == pytest.approx(0.5)  # grew after 3 improving steps
    for k in range(3, 30):
        update_scale(state, torch.tensor([1.0, 0.1 / 2 ** k]), cfg, active)
    assert state.scale[1] == pytest.approx(1.0)  # ceiling


def test_inactive_and_broken_samples_are_untouched():
    torch.manual_seed(1)
    target = torch.randn(3, 2, dtype=torch.float64)

    broken = torch.tensor([1.0, 1.0, float("nan")], dtype=torch.float64)

    def loss_fn(p):  # sample 2's loss and gradient are NaN, the others' are finite
        return ((p - target) ** 2).sum(dim=1) * broken

    start = torch.zeros(3, 2, dtype=torch.float64)
    active = torch.tensor([True, False, True])
    end, state = _run(loss_fn, start, OptimConfig(lr=0.05), 50, active)
    assert torch.equal(end[1], start[1]) and torch.equal(end[2], start[2])
    assert state.t.tolist() == [50, 0, 0]
    # sample 0 behaves exactly as when run alone
    alone, _ = _run(lambda p: ((p - target[:1]) ** 2).sum(dim=1), start[:1], OptimConfig(lr=0.05), 50)
    assert torch.equal(end[0], alone[0])

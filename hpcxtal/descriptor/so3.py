"""Batched SO(3) power spectrum (Bartók, Kondor, Csányi 2013) in torch, as pyxtal defines it.

The neighbour density of a centre atom ``i`` is a sum of Gaussians
``Z_j exp(-alpha |r - r_ij|^2)`` over its neighbours ``j`` within ``rcut`` (the centre
itself excluded), each Gaussian weighted by the neighbour's atomic number and by the
cosine cutoff ``0.5 (cos(pi r / rcut) + 1)``. It is expanded in a radial basis of
polynomials ``(rcut - r)^(a+2)``, a = 1..nmax, orthonormalised on [0, rcut], times
spherical harmonics up to ``lmax``:

    c_nlm = sum_j Z_j f_cut(r_ij) 4 pi exp(-alpha r_ij^2) norm_l Y_lm(r_ij hat)
            * int_0^rcut g_n(r) r^2 exp(-alpha r^2) i_l(2 alpha r r_ij) dr

with ``norm_l = sqrt(2 sqrt(2) pi / sqrt(2l + 1))`` and ``i_l`` the modified spherical
Bessel function of the first kind. The radial integral uses pyxtal's Gauss-Chebyshev
quadrature (``10 (nmax + lmax + 1)`` nodes), so the numbers agree with
``pyxtal.lego.SO3`` to rounding. The power spectrum is
``p_nn'l = sum_m c_nlm conj(c_n'lm)`` for n >= n' (pyxtal's lower-triangle order,
pair-major, l-minor): nmax (nmax + 1) / 2 (lmax + 1) numbers per centre.

Real spherical harmonics are used (built from the Cartesian unit vector, so there is
no pole singularity); ``sum_m`` of products is invariant under the unitary change from
complex to real harmonics, so ``p`` is the same. Everything is differentiable by
autograd. The radial functions depend on the distance only, so they are tabulated once
(from the quadrature, in float64) and interpolated by cubic Hermite splines.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True, kw_only=True)
class SO3Config:
    """Parameters of the SO(3) power spectrum (lengths in Å, alpha in Å^-2)."""

    nmax: int = 2
    lmax: int = 4
    rcut: float = 2.0
    alpha: float = 1.5

    def __post_init__(self) -> None:
        if not 1 <= self.nmax <= 11:
            raise ValueError(f"nmax={self.nmax} must be in 1-11")
        if not 0 <= self.lmax <= 32:
            raise ValueError(f"lmax={self.lmax} must be in 0-32")
        if self.rcut <= 0 or self.alpha <= 0:
            raise ValueError(f"rcut={self.rcut} and alpha={self.alpha} must be positive")

    @property
    def n_components(self) -> int:
        """Length of the power spectrum of one centre."""
        return self.nmax * (self.nmax + 1) // 2 * (self.lmax + 1)


def _double_factorial_odd(l: int) -> float:
    """(2l + 1)!!"""
    return float(np.prod(np.arange(1, 2 * l + 2, 2, dtype=float)))


def _scaled_in(x: torch.Tensor, n_orders: int, x0: float, n_terms: int) -> torch.Tensor:
    """``exp(-x) i_l(x)``, l = 0..n_orders-1, by series (x < x0) or recurrence."""
    l = torch.arange(n_orders, dtype=x.dtype, device=x.device)
    small = x < x0
    xs = torch.where(small, x, torch.zeros_like(x)).unsqueeze(-1)
    half_x2 = xs * xs / 2
    term = torch.ones(*x.shape, n_orders, dtype=x.dtype, device=x.device)
    total = term.clone()
    for k in range(1, n_terms + 1):
        term = term * half_x2 / (k * (2 * l + 2 * k + 1))
        total = total + term
    dfact = torch.tensor([_double_factorial_odd(i) for i in range(n_orders)],
                         dtype=x.dtype, device=x.device)
    series = total * xs.pow(l) / dfact * torch.exp(-xs)
    xl = torch.where(small, torch.full_like(x, x0), x)
    e = torch.exp(-2 * xl)
    orders = [(1 - e) / (2 * xl)]
    if n_orders > 1:
        orders.append((1 + e) / (2 * xl) - (1 - e) / (2 * xl * xl))
    for k in range(1, n_orders - 1):
        orders.append(orders[k - 1] - (2 * k + 1) / xl * orders[k])
    large = torch.stack(orders, -1)
    return torch.where(small.unsqueeze(-1), series, large)


def scaled_spherical_in(x: torch.Tensor, n_orders: int) -> torch.Tensor:
    """``exp(-x) i_l(x)`` for l = 0..n_orders-1 and x >= 0; shape (..., n_orders).

    Power series below ``x0`` (all terms positive: no cancellation), upward recurrence
    from the closed forms of l = 0, 1 above it (stable once x exceeds about l). Relative
    error about 1e-14 in float64 (checked against scipy in the tests).
    """
    x0 = max(8.0, 2.0 * n_orders)
    n_terms, ratio = 0, 1.0
    while ratio > 1e-18:  # terms for the series to converge to double precision at x0
        n_terms += 1
        ratio *= x0 * x0 / 2 / (n_terms * (2 * n_terms + 1))
    return _scaled_in(x, n_orders, x0, n_terms)


def real_spherical_harmonics(u: torch.Tensor, lmax: int) -> torch.Tensor:
    """Orthonormal real spherical harmonics of unit vectors ``u`` (..., 3), packed
    ``l^2 + l + m`` for m = -l..l; shape (..., (lmax + 1)^2)."""
    x, y, z = u[..., 0], u[..., 1], u[..., 2]
    # cos(m phi) sin^m(theta) and sin(m phi) sin^m(theta) from (x + i y)^m
    re = [torch.ones_like(x)]
    im = [torch.zeros_like(x)]
    for _ in range(lmax):
        re.append(re[-1] * x - im[-1] * y)
        im.append(re[-2] * y + im[-1] * x)
    # q[l][m] = P_l^m(z) / sin^m(theta), with the Condon-Shortley phase
    q = [[None] * (lmax + 1) for _ in range(lmax + 1)]
    for m in range(lmax + 1):
        q[m][m] = torch.full_like(z, (-1) ** m * _double_factorial_odd(m - 1))  # (2m - 1)!!
        if m + 1 <= lmax:
            q[m + 1][m] = (2 * m + 1) * z * q[m][m]
        for l in range(m + 2, lmax + 1):
            q[l][m] = ((2 * l - 1) * z * q[l - 1][m] - (l + m - 1) * q[l - 2][m]) / (l - m)
    out = []
    for l in range(lmax + 1):
        for m in range(-l, l + 1):
            am = abs(m)
            norm = math.sqrt((2 * l + 1) / (4 * math.pi)
                             * math.factorial(l - am) / math.factorial(l + am))
            if m == 0:
                out.append(norm * q[l][0])
            elif m > 0:
                out.append(math.sqrt(2) * norm * q[l][am] * re[am])
            else:
                out.append(math.sqrt(2) * norm * q[l][am] * im[am])
    return torch.stack(out, -1)


#: Intervals of the radial tables on [0, rcut]; cubic Hermite interpolation on this grid
#: reproduces the quadrature to about 1e-13 relative (checked in the tests).
RADIAL_GRID = 2048


def radial_functions(r: np.ndarray, config: SO3Config) -> tuple[np.ndarray, np.ndarray]:
    """Radial part of the expansion and its r-derivative, each (len(r), nmax, lmax + 1):

    ``f_nl(r) = 4 pi norm_l f_cut(r) exp(-alpha r^2) sum_q G_nq i_l(2 alpha r r_q)``, the
    radial integral by pyxtal's Gauss-Chebyshev quadrature, evaluated in float64.
    """
    c = config
    n_quad = (c.nmax + c.lmax + 1) * 10
    xq = np.cos((2 * np.arange(1, n_quad + 1) - 1) * np.pi / 2 / n_quad)
    weight = np.pi / n_quad * c.rcut / 2
    rq = c.rcut / 2 * (xq + 1)
    # G_nq without exp(-alpha r_q^2), which joins the Bessel kernel below
    g = _orthonormal_radial_basis(rq, c.nmax, c.rcut) * rq**2 * np.sqrt(1 - xq**2) * weight
    ls = np.arange(c.lmax + 1)
    norm = np.sqrt(2 * np.sqrt(2) * np.pi / np.sqrt(2 * ls + 1)) * 4 * np.pi
    rt = torch.as_tensor(r, dtype=torch.float64)[:, None]
    rqt = torch.as_tensor(rq, dtype=torch.float64)
    x = 2 * c.alpha * rt * rqt  # (R, Q)
    s = scaled_spherical_in(x, c.lmax + 2)  # (R, Q, L + 1)
    # exp(-alpha r^2) exp(-alpha r_q^2) i_l(x) = exp(-alpha (r - r_q)^2) s_l(x)
    gauss = torch.exp(-c.alpha * (rt - rqt) ** 2)
    ls_t = torch.arange(c.lmax + 1, dtype=torch.float64)
    xs = x.unsqueeze(-1)
    # s_l'(x) = s_{l+1} + (l / x - 1) s_l; l s_l / x -> 0 at x = 0 for l > 0
    ratio = torch.where(ls_t > 0, ls_t * s[..., :-1] / xs.clamp_min(1e-300), torch.zeros(()))
    ds = s[..., 1:] + ratio - s[..., :-1]
    s = s[..., :-1]
    kern = gauss.unsqueeze(-1) * s
    dkern = gauss.unsqueeze(-1) * (-2 * c.alpha * (rt - rqt).unsqueeze(-1) * s
                                   + 2 * c.alpha * rqt[:, None] * ds)
    gt = torch.as_tensor(g, dtype=torch.float64)
    integral = torch.einsum("nq,rql->rnl", gt, kern).numpy()
    dintegral = torch.einsum("nq,rql->rnl", gt, dkern).numpy()
    cut = 0.5 * (np.cos(np.pi * r / c.rcut) + 1)
    dcut = -0.5 * np.pi / c.rcut * np.sin(np.pi * r / c.rcut)
    val = integral * cut[:, None, None] * norm
    der = (dintegral * cut[:, None, None] + integral * dcut[:, None, None]) * norm
    return val, der


class SO3:
    """The SO(3) power spectrum for a configuration, on one dtype and device.

    Build once: it tabulates the radial functions (value and derivative at
    ``RADIAL_GRID + 1`` points on [0, rcut], computed in float64 by the quadrature),
    then :meth:`power_spectrum` works on pair vectors of any number of centres and
    structures at once by cubic Hermite interpolation of the table and real spherical
    harmonics; gradients by autograd.
    """

    def __init__(self, config: SO3Config | None = None, *, dtype: torch.dtype = torch.float64,
                 device: torch.device | str | None = None) -> None:
        self.config = config or SO3Config()
        c = self.config
        self.dtype = dtype
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self._h = c.rcut / RADIAL_GRID
        grid = np.linspace(0.0, c.rcut, RADIAL_GRID + 1)
        val, der = radial_functions(grid, c)
        kw = dict(dtype=dtype, device=self.device)
        val, der = val.reshape(len(grid), -1), der.reshape(len(grid), -1) * self._h
        # row k: value and scaled derivative at grid points k and k + 1, so that one
        # gather gives a pair's four Hermite coefficients (G - 1, 4, nmax * L)
        self._hermite = torch.tensor(np.stack([val[:-1], der[:-1], val[1:], der[1:]], 1), **kw)
        ls = np.arange(c.lmax + 1)
        self._l_of_lm = torch.tensor(np.repeat(ls, 2 * ls + 1), device=self.device)
        tri_i, tri_j = np.tril_indices(c.nmax)
        self._tri = (torch.tensor(tri_i, device=self.device), torch.tensor(tri_j, device=self.device))
        self._sum_m = torch.nn.functional.one_hot(self._l_of_lm, c.lmax + 1).to(dtype)

    @property
    def n_components(self) -> int:
        return self.config.n_components

    def radial(self, r: torch.Tensor) -> torch.Tensor:
        """(P, nmax, lmax + 1) radial functions at distances ``r`` (P,) in [0, rcut]."""
        u = r / self._h
        k = torch.floor(u.detach()).clamp(0, RADIAL_GRID - 1).to(torch.long)
        t = (u - k).unsqueeze(-1)
        t2, t3 = t * t, t * t * t
        v0, d0, v1, d1 = self._hermite.index_select(0, k).unbind(1)
        out = ((2 * t3 - 3 * t2 + 1) * v0 + (t3 - 2 * t2 + t) * d0
               + (3 * t2 - 2 * t3) * v1 + (t3 - t2) * d1)
        return out.reshape(len(r), self.config.nmax, self.config.lmax + 1)

    def coefficients(self, vectors: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Expansion coefficients of each pair's Gaussian, (P, nmax, (lmax + 1)^2).

        ``vectors`` (P, 3) from centre to neighbour in Å (non-zero, shorter than rcut),
        ``weights`` (P,) the neighbour's weight (pyxtal: its atomic number).
        """
        r = torch.linalg.norm(vectors, dim=-1)
        ylm = real_spherical_harmonics(vectors / r.unsqueeze(-1), self.config.lmax)  # (P, LM)
        radial = self.radial(r).index_select(2, self._l_of_lm)  # (P, nmax, LM)
        return radial * (weights.unsqueeze(-1) * ylm).unsqueeze(1)

    def power_spectrum(self, vectors: torch.Tensor, centre: torch.Tensor, n_centres: int,
                       weights: torch.Tensor | None = None) -> torch.Tensor:
        """Power spectrum (n_centres, n_components) from pair vectors.

        ``centre`` (P,) long gives each pair's centre in 0..n_centres-1; centres with
        no pair get zeros (as in pyxtal). ``weights`` defaults to 6 (carbon).
        """
        if weights is None:
            weights = torch.full(vectors.shape[:1], 6.0, dtype=vectors.dtype, device=vectors.device)
        coef = self.coefficients(vectors, weights)
        total = torch.zeros(n_centres, *coef.shape[1:], dtype=coef.dtype, device=coef.device)
        total = total.index_add(0, centre, coef)
        i, j = self._tri
        prod = total.index_select(1, i) * total.index_select(1, j)  # (C, T, LM)
        return (prod @ self._sum_m).reshape(n_centres, -1)


def _orthonormal_radial_basis(r: np.ndarray, nmax: int, rcut: float) -> np.ndarray:
    """g_n(r), n = 1..nmax: the polynomials (rcut - r)^(a+2), a = 1..nmax, normalised
    and orthonormalised on [0, rcut] with the symmetric inverse square root of their
    overlap matrix (Bartók et al. 2013, eq. 25)."""
    a = np.arange(1, nmax + 1, dtype=float)
    t = (2 * a + 5) * (2 * a + 6) * (2 * a + 7)
    s = a[:, None] + a[None, :]
    overlap = np.sqrt(np.outer(t, t)) / ((5 + s) * (6 + s) * (7 + s))
    vals, vecs = np.linalg.eigh(overlap)
    w = vecs @ np.diag(vals**-0.5) @ vecs.T
    phi = (rcut - r[None, :]) ** (a[:, None] + 2) / np.sqrt(
        2 * rcut ** (2 * a[:, None] + 7) / (2 * a[:, None] + 5) / (2 * a[:, None] + 6) / (2 * a[:, None] + 7))
    return w @ phi

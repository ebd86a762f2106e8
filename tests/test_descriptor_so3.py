"""SO(3) power spectrum: building blocks, agreement with pyxtal's SO3, gradients."""
import numpy as np
import pytest
import torch
from scipy.special import spherical_in, sph_harm_y

from descriptor_reference import (
    batch_atoms, generated, pyxtal_so3, relative_error, sacada,
)
from hpcxtal.descriptor import Environment, build_batch, positions
from hpcxtal.descriptor.neighbors import neighbor_pairs, pair_vectors
from hpcxtal.descriptor.so3 import (
    SO3, SO3Config, radial_functions, real_spherical_harmonics, scaled_spherical_in,
)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Small tensors run faster on one thread on a shared 2-core machine."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def test_scaled_bessel_matches_scipy():
    x = torch.cat([torch.zeros(1), torch.logspace(-8, 2.3, 3000, dtype=torch.float64)])
    mine = scaled_spherical_in(x, 7).numpy()
    xn = x.numpy()
    for l in range(7):
        ref = spherical_in(l, xn) * np.exp(-xn)
        ok = ref > 0
        assert np.max(np.abs(mine[ok, l] - ref[ok]) / ref[ok]) < 1e-12, l
        assert np.all(mine[~ok, l] == 0)


def test_real_harmonics_are_a_unitary_transform_of_complex_ones():
    rng = np.random.default_rng(0)
    u = rng.normal(size=(200, 3))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    lmax = 6
    real = real_spherical_harmonics(torch.tensor(u), lmax).numpy()
    theta, phi = np.arccos(u[:, 2]), np.arctan2(u[:, 1], u[:, 0])
    for l in range(lmax + 1):
        ms = np.arange(-l, l + 1)
        cplx = np.stack([sph_harm_y(l, m, theta, phi) for m in ms], 1)
        blk = real[:, l * l:(l + 1) ** 2]
        # sum_m Y_lm(u) Y_lm(v)^* is the same for both bases (addition theorem)
        assert np.allclose(blk @ blk.T, (cplx @ cplx.conj().T).real, atol=1e-12)
        assert np.allclose(np.sum(blk**2, 1), (2 * l + 1) / (4 * np.pi))


def test_radial_table_reproduces_quadrature():
    so3 = SO3()
    r = np.random.default_rng(1).uniform(0.05, 2.0, 500)
    direct, _ = radial_functions(r, so3.config)
    table = so3.radial(torch.tensor(r)).numpy()
    assert np.max(np.abs(table - direct)) < 1e-11 * np.abs(direct).max()


def pyxtal_site_spectra(calc, atoms, centres):
    """pyxtal's spectra of the centres as its loss computes them (``compute_p(atoms,
    ids)``: 27 images, neighbours closer than 0.01 Å ignored) where 27 images reach
    every neighbour, else its full neighbour-list path (all atoms)."""
    heights = atoms.cell.volume / np.linalg.norm(
        np.cross(atoms.cell[[1, 2, 0]], atoms.cell[[2, 0, 1]]), axis=1)
    if heights.min() > calc.rcut:
        return calc.compute_p(atoms, list(centres))
    return calc.compute_p(atoms)[centres]


def _compare_rows(table):
    """Max relative error of every site's spectrum against pyxtal, float64."""
    env = Environment()
    batch = build_batch(table)
    R = batch.new_R()
    p = env.spectrum(batch, R).detach().numpy()
    geo = positions(batch, R)
    ref_calc = pyxtal_so3()
    worst = 0.0
    for k in range(len(batch)):
        atoms, centres, sites = batch_atoms(batch, geo, k)
        ref = pyxtal_site_spectra(ref_calc, atoms, centres)
        worst = max(worst, relative_error(p[sites], ref))
    return worst


def test_matches_pyxtal_on_all_sacada_rows():
    table, _ = sacada()
    assert len(table) == 144
    assert _compare_rows(table) < 1e-6


def test_matches_pyxtal_on_sacada_structures_without_rows():
    """The 6 SACADA structures that need more than 8 Wyckoff sites: every atom a centre."""
    _, quarantine = sacada()
    images = [quarantine.structures.atoms(i) for i in range(len(quarantine))]
    assert len(images) == 6
    so3 = SO3()
    ref_calc = pyxtal_so3()
    for atoms in images:
        frac = torch.tensor(atoms.get_scaled_positions())
        lattice = torch.tensor(atoms.cell.array).unsqueeze(0)
        struct = torch.zeros(len(atoms), dtype=torch.long)
        centres = torch.arange(len(atoms))
        pairs = neighbor_pairs(frac, lattice, struct, centres, 2.0)
        vec = pair_vectors(pairs, frac, lattice, struct, centres)
        p = so3.power_spectrum(vec, pairs.centre, len(atoms)).numpy()
        assert relative_error(p, ref_calc.compute_p(atoms)) < 1e-6


def test_matches_pyxtal_on_generated_rows():
    table = generated()
    assert _compare_rows(table.take(np.arange(100))) < 1e-6


def test_float32_is_close_to_float64():
    table, _ = sacada()
    rows = table.take(np.arange(0, 144, 12))
    env64, env32 = Environment(), Environment(dtype=torch.float32)
    b64 = build_batch(rows)
    b32 = b64.to(dtype=torch.float32)
    p64 = env64.spectrum(b64, b64.R0).numpy()
    p32 = env32.spectrum(b32, b32.R0).double().numpy()
    assert p32.dtype == np.float64 and b32.R0.dtype == torch.float32
    assert relative_error(p32, p64) < 1e-4


def test_rotation_invariance():
    rng = np.random.default_rng(3)
    vec = torch.tensor(rng.uniform(-1.1, 1.1, (40, 3)))
    centre = torch.tensor(rng.integers(0, 5, 40))
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    so3 = SO3(SO3Config(nmax=3, lmax=5, rcut=2.0, alpha=1.5))
    p = so3.power_spectrum(vec, centre, 5)
    p_rot = so3.power_spectrum(vec @ torch.tensor(q), centre, 5)
    assert torch.allclose(p, p_rot, rtol=1e-10, atol=1e-12)


def test_gradcheck_small_batch():
    table, _ = sacada()
    small = [i for i in range(len(table)) if table.row(i).n_atoms() <= 16][:3]
    batch = build_batch(table.take(np.array(small)))
    env = Environment()
    R = batch.new_R()
    # perturb off the symmetric optimum so gradients are not trivially zero
    with torch.no_grad():
        R += 0.01 * torch.randn(R.shape, generator=torch.Generator().manual_seed(0)) * (batch.kind > 0)
    pairs = env.pairs(batch, R, skin=0.3)
    assert torch.autograd.gradcheck(lambda x: env.loss(batch, x, pairs), (R,), eps=1e-6, atol=1e-6)
    assert torch.autograd.gradcheck(lambda x: env.spectrum(batch, x, pairs), (R,), eps=1e-6, atol=1e-5)


def test_gradient_matches_finite_differences_on_larger_batch():
    table = generated()
    batch = build_batch(table.take(np.arange(40)))
    env = Environment()
    R = batch.new_R()
    pairs = env.pairs(batch, R, skin=0.2)
    loss = env.loss(batch, R, pairs)
    (grad,) = torch.autograd.grad(loss.sum(), R)
    rng = np.random.default_rng(5)
    direction = torch.tensor(rng.normal(size=R.shape)) * (batch.kind > 0)
    eps = 1e-5
    with torch.no_grad():
        up = env.loss(batch, R + eps * direction, pairs)
        down = env.loss(batch, R - eps * direction, pairs)
    fd = ((up - down) / (2 * eps)).numpy()
    analytic = (grad * direction).sum(1).numpy()
    scale = np.maximum(np.abs(fd), 1e-3)
    assert np.max(np.abs(fd - analytic) / scale) < 1e-5

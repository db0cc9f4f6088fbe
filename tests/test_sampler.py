"""Walker initialisation and the Metropolis sampler against a known density (hydrogen 1s)."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vmc.analysis import reblock
from vmc.sampler import MCMCState, electron_assignment, init_walkers, make_sampler
from vmc.system import ATOMIC_NUMBER, make_molecule


def _mol(*atoms, spin=0, charge=0):
    return make_molecule([{"symbol": s, "position": list(p)} for s, p in atoms],
                         spin=spin, charge=charge)


H2O = _mol(("O", (0.0, 0.0, 0.0)), ("H", (1.43042881, 1.10715704, 0.0)),
           ("H", (-1.43042881, 1.10715704, 0.0)))

# name: (molecule, expected (up, down) per atom; None where several splits are right)
CASES = {
    "H2O": (H2O, None),
    "O triplet": (_mol(("O", (0.0, 0.0, 0.0)), spin=2), [(5, 3)]),
    "N quartet": (_mol(("N", (0.0, 0.0, 0.0)), spin=3), [(5, 2)]),
    "LiH cation": (_mol(("Li", (0.0, 0.0, 0.0)), ("H", (3.015, 0.0, 0.0)), charge=1, spin=1),
                   [(1, 1), (1, 0)]),
    "F anion": (_mol(("F", (0.0, 0.0, 0.0)), charge=-1), [(5, 5)]),
    "O2 triplet": (_mol(("O", (0.0, 0.0, 0.0)), ("O", (2.28, 0.0, 0.0)), spin=2), None),
    # all electrons in one spin channel, lighter atom first (used to give -1 electrons)
    "HLi quintet": (_mol(("H", (0.0, 0.0, 0.0)), ("Li", (3.0, 0.0, 0.0)), spin=4),
                    [(1, 0), (3, 0)]),
    "HLi spin -4": (_mol(("H", (0.0, 0.0, 0.0)), ("Li", (3.0, 0.0, 0.0)), spin=-4),
                    [(0, 1), (0, 3)]),
}


def _per_atom(mol):
    up, down = electron_assignment(mol)
    return (np.bincount(up, minlength=mol.n_atoms), np.bincount(down, minlength=mol.n_atoms),
            up, down)


@pytest.mark.parametrize("name", list(CASES))
def test_electron_assignment_per_atom(name):
    mol, expected = CASES[name]
    n_up, n_down, up, down = _per_atom(mol)
    assert len(up) == mol.n_up and len(down) == mol.n_down
    assert n_up.sum() == mol.n_up and n_down.sum() == mol.n_down
    assert np.all(n_up >= 0) and np.all(n_down >= 0)
    assert np.all(np.diff(up) >= 0) and np.all(np.diff(down) >= 0)    # grouped by atom
    if expected is not None:
        assert list(zip(n_up.tolist(), n_down.tolist())) == expected
    if mol.charge == 0:   # a neutral molecule starts with Z electrons at each atom
        np.testing.assert_array_equal(n_up + n_down, mol.charges.astype(int))
    if name == "H2O":     # O keeps a closed shell, the two H pair up across the molecule
        assert (n_up[0], n_down[0]) == (4, 4)
        assert sorted(zip(n_up[1:], n_down[1:])) == [(0, 1), (1, 0)]
    if name == "O2 triplet":  # 8 per O; the two unpaired electrons spread, no atom above 2S=2
        np.testing.assert_array_equal(n_up + n_down, [8, 8])
        assert np.all(np.abs(n_up - n_down) <= 2)


def test_electron_assignment_every_valid_charge_and_spin():
    """All charges and spins of a few small molecules: right totals, no negative counts."""
    geometries = [("H", "Li"), ("Li", "H"), ("O", "H", "H"), ("H", "H", "H"), ("N", "O"),
                  ("He",), ("B", "H", "Ne")]
    n_checked = 0
    for symbols in geometries:
        z = sum(ATOMIC_NUMBER[s] for s in symbols)
        for charge in range(-2, z):
            n_el = z - charge
            for spin in range(-n_el, n_el + 1):
                if (n_el - spin) % 2:
                    continue
                mol = _mol(*[(s, (1.7 * i, 0.0, 0.0)) for i, s in enumerate(symbols)],
                           spin=spin, charge=charge)
                n_up, n_down, _, _ = _per_atom(mol)
                assert np.all(n_up >= 0) and np.all(n_down >= 0), (symbols, charge, spin)
                assert (n_up.sum(), n_down.sum()) == (mol.n_up, mol.n_down)
                n_checked += 1
    assert n_checked > 500


def test_init_walkers_sit_around_their_atoms():
    mol = H2O
    up, down = electron_assignment(mol)
    atom_of = np.concatenate([up, down])
    walkers = np.asarray(init_walkers(jax.random.PRNGKey(0), mol, 4000, spread=0.5))
    assert walkers.shape == (4000, mol.n_electrons, 3) and walkers.dtype == np.float32
    np.testing.assert_allclose(walkers.mean(axis=0), mol.positions[atom_of], rtol=0, atol=0.05)
    np.testing.assert_allclose(walkers.std(axis=0), 0.5, rtol=0.1)
    assert np.all(np.isfinite(walkers))


def _hydrogen_log_psi(params, x):
    """ψ = e^{−r}: |ψ|² ∝ e^{−2r}, <r> = 3/2, <r²> = 3 bohr²."""
    return jnp.ones((), x.dtype), -jnp.linalg.norm(x[0])


def test_sampler_reproduces_hydrogen_1s_moments():
    n_walkers, burn_in, steps = 256, 100, 1200
    mol = _mol(("H", (0.0, 0.0, 0.0)), spin=1)
    init_state, step = make_sampler(_hydrogen_log_psi, moves=4, target_pmove=0.5)
    walkers = init_walkers(jax.random.PRNGKey(1), mol, n_walkers)
    state = init_state({}, walkers, 0.05)    # far too small: adaptation must fix it
    assert isinstance(state, MCMCState)

    @jax.jit
    def run(state, keys):
        def body(s, k):
            s, pmove = step({}, s, k)
            x = s.walkers[:, 0]
            r2 = jnp.sum(x * x, axis=-1)
            return s, (jnp.mean(jnp.sqrt(r2)), jnp.mean(r2), jnp.mean(x[:, 2]), pmove, s.width)
        return jax.lax.scan(body, state, keys)

    keys = jax.random.split(jax.random.PRNGKey(2), burn_in + steps)
    state, (r, r2, z, pmove, width) = run(state, keys)
    r, r2, z, pmove, width = (np.asarray(a, np.float64)[burn_in:] for a in (r, r2, z, pmove, width))
    # the cached log|ψ| matches the walkers it belongs to
    np.testing.assert_allclose(np.asarray(state.logabs),
                               -np.linalg.norm(np.asarray(state.walkers)[:, 0], axis=-1),
                               rtol=1e-5)
    assert 0.35 < pmove.mean() < 0.65
    assert width.min() > 0.2                   # grew from 0.05
    for series, exact in ((r, 1.5), (r2, 3.0), (z, 0.0)):
        rb = reblock(series)
        assert rb.plateau
        assert 0 < rb.stderr < 0.05
        assert abs(rb.mean - exact) < 4 * rb.stderr, (exact, rb)


def test_sampler_is_reproducible_and_keeps_spins_ordered():
    """Same key, same walkers; the all-electron move keeps the electron layout (n_w, n, 3)."""
    init_state, step = make_sampler(_hydrogen_log_psi, moves=2)
    walkers = jnp.asarray(np.random.default_rng(0).normal(size=(16, 3, 3)), jnp.float32)
    state = init_state({}, walkers, 0.3)
    step = jax.jit(step)
    a, pa = step({}, state, jax.random.PRNGKey(5))
    b, pb = step({}, state, jax.random.PRNGKey(5))
    np.testing.assert_array_equal(np.asarray(a.walkers), np.asarray(b.walkers))
    assert a.walkers.shape == (16, 3, 3) and float(pa) == float(pb)
    moved = np.any(np.asarray(a.walkers) != np.asarray(walkers), axis=(1, 2))
    assert 0 < moved.mean() <= 1
    # a walker that moved has all its electrons moved (all-electron proposals)
    per_el = np.any(np.asarray(a.walkers) != np.asarray(walkers), axis=2)
    np.testing.assert_array_equal(per_el[moved], True)

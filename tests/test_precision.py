"""float32 local energies next to a node of one determinant (issue: float32-safe determinants).

The wavefunction is a trained He FermiNet (tests/data/he_trained.h5, the final checkpoint of
`vmc run systems/He.yaml`, 1000 steps, E = -2.90372 Ha): in the quick start one of its K = 8
determinants, nearly singular at an ordinary configuration, made the float32 local energy NaN.
Here configurations are bisected (in float64) onto a node of one determinant and rounded to
float32-representable points with condition number >= 1e8; the determinant must carry real
kinetic energy there (leaving it out shifts E_L by > 10 mHa), and the float32 E_L, inside a vmap
of 256 walkers, must be finite and within 1e-4 Ha of float64, for both Laplacians.
"""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vmc import checkpoint as ckpt
from vmc.config import config_from_dict
from vmc.hamiltonian import kinetic_from_logabs, make_local_energy
from vmc.train import build

from helpers import load_he_trained

# one worker runs this module: its module fixtures are built once (pyproject: loadgroup)
pytestmark = pytest.mark.xdist_group("precision")

DATA = pathlib.Path(__file__).parent / "data" / "he_trained.h5"
N_WALKERS = 256
K = 8


def _setup(precision: str, x64: bool):
    d = {"atoms": [{"symbol": "He", "position": [0.0, 0.0, 0.0]}], "charge": 0, "spin": 0,
         "ansatz": {"hidden_one": [32, 32, 32], "hidden_two": [8, 8, 8], "determinants": K,
                    "det_precision": precision},
         "run": {"x64": x64}}
    return build(config_from_dict(d, name="He"))




def _nudge(x, rng):
    """Move every coordinate of x (float32) by -1, 0 or +1 ulp at random."""
    step = rng.integers(-1, 2, size=x.shape)
    up, down = np.nextafter(x, np.float32(np.inf)), np.nextafter(x, np.float32(-np.inf))
    return np.where(step > 0, up, np.where(step < 0, down, x))


@pytest.fixture(scope="module")
def near_node():
    """(setup64, params64, params32, X (256, 2, 3) float32 points, k (256,) det index)."""
    with jax.enable_x64(True):
        s64 = _setup("float64", True)
        p32 = load_he_trained(s64, jnp.float32)
        p64 = load_he_trained(s64, jnp.float64)   # the same numbers, exactly

        def dets(x):
            m = s64.ansatz.orbitals(p64, x)[0]
            return jnp.linalg.det(m), jnp.linalg.cond(m)
        dets = jax.jit(jax.vmap(dets))
        rng = np.random.default_rng(0)
        walkers = np.asarray(ckpt.read_tree_raw(DATA, "mcmc")["walkers"], np.float64)
        xa = np.repeat(walkers, 4, axis=0)
        xb = xa + 0.5 * rng.normal(size=xa.shape)
        da, db = np.asarray(dets(xa)[0]), np.asarray(dets(xb)[0])
        change = np.sign(da) != np.sign(db)
        has = change.any(1)
        xa, xb, da, change = xa[has], xb[has], da[has], change[has]
        k = np.array([rng.choice(np.flatnonzero(c)) for c in change])
        rows = np.arange(len(k))
        sa = np.sign(da[rows, k])
        lo, hi = np.zeros(len(k)), np.ones(len(k))
        for _ in range(45):
            mid = 0.5 * (lo + hi)
            same = np.sign(np.asarray(dets(xa + mid[:, None, None] * (xb - xa))[0])[rows, k]) == sa
            lo, hi = np.where(same, mid, lo), np.where(same, hi, mid)
        x = (xa + 0.5 * (lo + hi)[:, None, None] * (xb - xa)).astype(np.float32)

        def cond_k(y):
            return np.asarray(dets(y.astype(np.float64))[1])[rows, k]
        best, cond = x, cond_k(x)
        for _ in range(32):   # the float32 grid point nearest the node
            cand = _nudge(x, rng)
            c = cond_k(cand)
            better = (c > cond) & (c < 1e11)   # beyond ~1e11 float64 itself loses digits
            best, cond = np.where(better[:, None, None], cand, best), np.where(better, c, cond)
        keep = np.flatnonzero(cond >= 1e8)
        assert len(keep) >= N_WALKERS, f"only {len(keep)} configurations reached cond >= 1e8"
        x, k = best[keep], k[keep]

        # keep those where the nearly singular determinant carries > 10 mHa of E_L
        def kinetic_without(y, drop):
            def logabs(z):
                m = s64.ansatz.orbitals(p64, z)[0]
                s, l = jnp.linalg.slogdet(m)
                top = jax.lax.stop_gradient(jnp.max(l))
                w = jnp.where(jnp.arange(K) == drop, 0.0, 1.0)
                return jnp.log(jnp.abs(jnp.sum(w * s * jnp.exp(l - top)))) + top
            full = kinetic_from_logabs(lambda z: s64.ansatz.log_psi(p64, z)[1], y, "forward")
            return kinetic_from_logabs(logabs, y, "forward") - full
        shift = np.abs(np.asarray(jax.jit(jax.vmap(kinetic_without))(
            jnp.asarray(x, jnp.float64), jnp.asarray(k))))
        carry = np.flatnonzero(shift > 0.010)
        assert len(carry) >= N_WALKERS, f"only {len(carry)} near-node determinants carry 10 mHa"
        pick = carry[:N_WALKERS]
        return s64, p64, p32, x[pick], k[pick], cond[keep][pick], shift[pick]


def test_near_node_configurations_are_real(near_node):
    """The fixture's teeth: every configuration is within cond >= 1e8 of a node of one
    determinant that carries more than 10 mHa of local energy."""
    *_, cond, shift = near_node
    assert np.all(cond >= 1e8)
    assert np.all(shift > 0.010)
    assert np.median(shift) > 0.02


@pytest.mark.parametrize("laplacian", ["forward", "hessian"])
def test_float32_local_energy_near_a_determinant_node(near_node, laplacian):
    """float32 network + float64 determinant stage: finite and within 1e-4 Ha of float64."""
    s64, p64, p32, x, *_ = near_node
    with jax.enable_x64(True):
        e64 = jax.jit(jax.vmap(make_local_energy(s64.ansatz.log_psi, s64.molecule, laplacian,
                                                 jnp.float64), in_axes=(None, 0)))
        reference = np.asarray(e64(p64, jnp.asarray(x, jnp.float64)))
        s32 = _setup("float64", False)
        e32 = jax.jit(jax.vmap(make_local_energy(s32.ansatz.log_psi, s32.molecule, laplacian,
                                                 jnp.float32), in_axes=(None, 0)))
        values = np.asarray(e32(p32, jnp.asarray(x, jnp.float32)))
    assert values.dtype == np.float32 and values.shape == (N_WALKERS,)
    assert np.all(np.isfinite(values))
    assert np.max(np.abs(values - reference)) < 1e-4
    assert np.all((reference > -3.5) & (reference < -2.3))   # ordinary He configurations


def test_float32_determinants_fail_there(near_node):
    """The same points with the determinant stage in float32 (the old code): wrong or NaN,
    so the test above would have failed before the fix."""
    s64, p64, p32, x, *_ = near_node
    with jax.enable_x64(True):
        e64 = jax.jit(jax.vmap(make_local_energy(s64.ansatz.log_psi, s64.molecule, "forward",
                                                 jnp.float64), in_axes=(None, 0)))
        reference = np.asarray(e64(p64, jnp.asarray(x, jnp.float64)))
        s32 = _setup("network", False)
        e32 = jax.jit(jax.vmap(make_local_energy(s32.ansatz.log_psi, s32.molecule, "forward",
                                                 jnp.float32), in_axes=(None, 0)))
        values = np.asarray(e32(p32, jnp.asarray(x, jnp.float32)))
    bad = ~np.isfinite(values) | (np.abs(values - reference) > 1e-3)
    assert bad.sum() >= 10

"""The float64 rescue of the evaluation's E_L next to a node of ψ (hamiltonian.f64_rescue).

Li with one determinant per spin block: a node of that determinant is a node of ψ. A
configuration is bisected (float64) onto ψ's node and rounded to float32; there Δ log|ψ| and
|∇ log|ψ||² are huge and of opposite sign, and the float32 network's E_L is off by far more than
0.1 mHa (checked, so the test has teeth). Among 63 ordinary walkers, the rescued evaluation E_L
(`Setup.eval_local_energy`, the one `vmc.evaluate` uses) must equal the float64 network's E_L
at that walker within 0.1 mHa, and leave every walker it did not pick at its float32 E_L.
"""

import jax
import jax.numpy as jnp
import numpy as np

from vmc.config import config_from_dict
from vmc.train import build

LI = {"atoms": [{"symbol": "Li", "position": [0.0, 0.0, 0.0]}], "spin": 1,
      "ansatz": {"hidden_one": [8, 8], "hidden_two": [4, 4], "determinants": 1}}
N_W, AT = 64, 17


def _setups():
    s32 = build(config_from_dict({**LI, "hamiltonian": {"f64_rescue": 2}}, name="Li"))
    s64 = build(config_from_dict({**LI, "run": {"x64": True}}, name="Li"))
    return s32, s64


def _near_node(s64, p64, walkers):
    """A float32 point next to ψ's node with 10⁷ <= |∇ log|ψ||² (bohr⁻²) < 10¹⁰: float32
    cannot hold its E_L (error ~10–250 ε₃₂ g² >> 0.1 mHa), float64 can (~10⁻⁷ Ha). Float64
    bisection between two walkers of opposite sign onto the node, then a step back towards
    one of them; returns (x float32, g²)."""
    sign = jax.jit(jax.vmap(lambda x: s64.ansatz.log_psi(p64, x)[0]))
    grad2 = jax.jit(jax.vmap(lambda x: jnp.sum(jax.grad(
        lambda y: s64.ansatz.log_psi(p64, y)[1])(x) ** 2)))
    signs = np.asarray(sign(walkers.astype(jnp.float64)))
    a0 = np.asarray(walkers[np.argmax(signs > 0)], np.float64)
    a, b = a0, np.asarray(walkers[np.argmax(signs < 0)], np.float64)
    for _ in range(60):
        mid = 0.5 * (a + b)
        if float(sign(mid[None])[0]) > 0:
            a = mid
        else:
            b = mid
    away = (a0 - a) / np.linalg.norm(a0 - a)
    for t in 10.0 ** -np.arange(2.0, 8.0, 0.25):
        x = (a + t * away).astype(np.float32)
        g2 = float(grad2(jnp.asarray(x[None], jnp.float64))[0])
        if g2 >= 1e7:
            return x, g2
    raise AssertionError("no point with |grad log psi|^2 >= 1e7 found")


def test_rescue_gives_float64_energy_next_to_a_node(x64):
    s32, s64 = _setups()
    assert s32.local_energy64 is not None and s64.local_energy64 is None
    p32 = jax.jit(s32.ansatz.init)(jax.random.PRNGKey(0))
    p64 = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), p32)
    walkers = np.asarray(jax.random.normal(jax.random.PRNGKey(1), (N_W, 3, 3)), np.float32)
    x, g2 = _near_node(s64, p64, walkers)
    walkers[AT] = x
    w32 = jnp.asarray(walkers)
    plain = np.asarray(jax.jit(s32.batched_local_energy)(p32, w32), np.float64)
    rescued = np.asarray(jax.jit(s32.eval_local_energy)(p32, w32))
    exact = np.asarray(jax.jit(s64.batched_local_energy)(p64, w32.astype(jnp.float64)))
    assert 1e7 <= g2 < 1e10, g2                          # really next to ψ's node
    assert not abs(plain[AT] - exact[AT]) <= 1e-3, (plain[AT], exact[AT])   # float32 fails
    assert rescued.dtype == np.float64
    assert abs(rescued[AT] - exact[AT]) <= 1e-4, (rescued[AT], exact[AT])
    # exactly f64_rescue = 2 walkers carry the float64 network's E_L; the others are the
    # float32 E_L (of the scored program, equal to the plain one up to float32 rounding)
    from_64 = np.flatnonzero(np.abs(rescued - exact) < 1e-9 * np.maximum(1, np.abs(exact)))
    assert AT in from_64 and len(from_64) == 2, from_64
    others = np.setdiff1d(np.arange(N_W), from_64)
    np.testing.assert_allclose(rescued[others], plain[others], rtol=1e-5, atol=1e-5)

"""Local energy E_L = (Hψ)/ψ of the clamped-nuclei electronic Hamiltonian (MATH.md §1).

    E_L = −½ Σ_i (Δ_i log|ψ| + |∇_i log|ψ||²) + V(x)

The kinetic term comes from the forward Laplacian (folx; Li et al., Nat. Mach. Intell. 2024)
or, as the reference it is tested against, from a Hessian diagonal by jvp-of-grad.
"""

from __future__ import annotations

from typing import Callable, Optional

import folx
import jax
import jax.numpy as jnp

from vmc.ansatz.common import pair_distances

LAPLACIANS = ("forward", "hessian")


def potential_energy(x, atoms, charges, nuclear_repulsion: float = 0.0):
    """Coulomb potential energy of one configuration, hartree.

    Args:
      x: (n_electrons, 3) electrons, bohr.
      atoms: (n_atoms, 3) nuclei, bohr; charges: (n_atoms,) Z.
      nuclear_repulsion: the constant Σ_{I<J} Z_I Z_J / R_IJ (hartree).
    Returns:
      () V = −Σ_{iI} Z_I/|r_i − R_I| + Σ_{i<j} 1/|r_i − r_j| + nuclear_repulsion.
    """
    r_ae = jnp.linalg.norm(x[:, None, :] - atoms[None, :, :], axis=-1)
    v_en = -jnp.sum(charges[None, :] / r_ae)
    n = x.shape[0]
    _, r_ee = pair_distances(x)
    upper = jnp.triu(jnp.ones((n, n), bool), k=1)
    v_ee = jnp.sum(jnp.where(upper, 1.0 / jnp.where(upper, r_ee[..., 0], 1.0), 0.0))
    return v_en + v_ee + nuclear_repulsion


def kinetic_from_logabs(logabs_fn: Callable, x, laplacian: str = "forward"):
    """Kinetic energy −½ (Δ log|ψ| + |∇ log|ψ||²) of one configuration, hartree.

    Args:
      logabs_fn: x (n_electrons, 3) -> log|ψ| scalar.
      x: (n_electrons, 3) bohr.
      laplacian: 'forward' (folx forward Laplacian) or 'hessian' (Σ_k e_kᵀ ∇²f e_k by
        jvp-of-grad over the 3 n_electrons coordinates).
    Raises:
      ValueError: unknown laplacian.
    """
    shape = x.shape
    flat = x.reshape(-1)

    def f(v):
        return logabs_fn(v.reshape(shape))

    if laplacian == "forward":
        out = folx.forward_laplacian(f, sparsity_threshold=0)(flat)
        lap = out.laplacian
        grad = out.jacobian.dense_array.reshape(-1)
    elif laplacian == "hessian":
        grad_f = jax.grad(f)
        grad = grad_f(flat)
        eye = jnp.eye(flat.shape[0], dtype=flat.dtype)

        def second(i):
            return jax.jvp(grad_f, (flat,), (eye[i],))[1][i]
        lap = jnp.sum(jax.lax.map(second, jnp.arange(flat.shape[0])))
    else:
        raise ValueError(f"hamiltonian.laplacian: unknown {laplacian!r}; valid: forward, hessian")
    return -0.5 * (lap + jnp.sum(grad * grad))


def ecp_table(molecule):
    """The `vmc.ecp.ECPTable` of the molecule's ECP atoms, or None when all-electron."""
    if not getattr(molecule, "has_ecp", False):
        return None
    from vmc.ecp import make_table
    from vmc.hf import load_ecp
    ecps = {}
    for i, (sym, name) in enumerate(zip(molecule.symbols, molecule.ecp)):
        if name is not None:
            n_core, chans = load_ecp(name, sym)
            ecps[i] = (name, n_core, chans)
    return make_table(ecps)


def make_local_energy(log_psi: Callable, molecule, laplacian: str = "forward",
                      dtype=jnp.float32, ecp_rule: str = "icosahedron") -> Callable:
    """E_L(params, x, key=None) for one configuration x: (n_electrons, 3) bohr; () hartree.

    With ECP atoms (`molecule.ecp`, charges Z_eff) E_L adds the ECP's local part and its
    non-local part by the rotated-quadrature estimator (`vmc.ecp.nonlocal_energy`, MATH.md
    §8); `key` draws the rotations (None: the rule unrotated, deterministic; tests only).
    All-electron molecules ignore `key`.

    Args:
      log_psi: (params, x) -> (sign, logabs).
      molecule: `vmc.system.Molecule`.
      laplacian: 'forward' or 'hessian'.
      dtype: dtype of the nuclear coordinates fed to the potential.
      ecp_rule: spherical rule of the non-local estimator (`vmc.ecp.quadrature`).
    Raises:
      ValueError: unknown laplacian or rule.
    """
    if laplacian not in LAPLACIANS:
        raise ValueError(f"hamiltonian.laplacian: unknown {laplacian!r}; valid: forward, hessian")
    atoms = jnp.asarray(molecule.positions, dtype)
    charges = jnp.asarray(molecule.charges, dtype)
    e_nn = molecule.nuclear_repulsion
    table = ecp_table(molecule)
    if table is not None:
        from vmc import ecp
        ecp.quadrature(ecp_rule)   # fail early on an unknown rule

    def local_energy(params, x, key=None):
        kinetic = kinetic_from_logabs(lambda y: log_psi(params, y)[1], x, laplacian)
        e = kinetic + potential_energy(x, atoms, charges, e_nn)
        if table is not None:
            e = e + ecp.local_potential(table, x, atoms)
            e = e + ecp.nonlocal_energy(table, lambda y: log_psi(params, y), x, atoms, key,
                                        ecp_rule).astype(e.dtype)
        return e

    return local_energy


def over_walkers(fn: Callable, chunk: Optional[int] = None, n_devices: int = 1) -> Callable:
    """A per-configuration `fn(params, x (n_electrons, 3))` made batched over walkers.

    Args:
      fn: one configuration -> a scalar or array (e.g. the local energy, hartree).
      chunk: None: all walkers at once (`vmap`); else at most `chunk` walkers of each device
        at a time (`lax.map` over chunks of a `vmap`), so the memory of the intermediate
        values (the forward Laplacian's Jacobians grow as n_walkers · n_electrons²) is
        bounded by the chunk, at the cost of a sequential loop. The results are the same
        up to rounding (each walker's computation is independent).
      n_devices: devices the walker axis is split over (chunks are taken per device, so no
        walker moves between devices).
    Returns:
      (params, walkers (n_walkers, n_electrons, 3), key=None) -> (n_walkers, ...). With a
      key, walker w gets `fold_in(key, w)` as `fn`'s third argument (the ECP rotations), so
      the result does not depend on the chunking; without one `fn(params, x)` is called.
    """
    def batched(params, walkers, key=None):
        n_w = walkers.shape[0]
        if key is None:
            one = lambda x, k: fn(params, x)           # noqa: E731
            keys = jnp.zeros((n_w,), jnp.int32)
        else:
            one = lambda x, k: fn(params, x, k)        # noqa: E731
            keys = jax.vmap(lambda w: jax.random.fold_in(key, w))(jnp.arange(n_w))
        per = n_w // n_devices
        if chunk is None or per <= chunk:
            return jax.vmap(one)(walkers, keys)
        w = walkers.reshape((n_devices, per) + walkers.shape[1:])
        k = keys.reshape((n_devices, per) + keys.shape[1:])
        out = jax.vmap(lambda wd, kd: jax.lax.map(lambda a: one(*a), (wd, kd),
                                                  batch_size=chunk))(w, k)
        return out.reshape((n_w,) + out.shape[2:])

    return batched

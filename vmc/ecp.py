"""Effective core potentials (MATH.md §8): ccECP from PySCF, local and non-local energy.

An ECP on atom I replaces its n_core core electrons (charge Z_eff = Z − n_core is left) and
adds, for each valence electron at r = |r_i − R_I|,

    V_loc(r) + Σ_l V_l(r) Σ_m |lm⟩⟨lm|,   V(r) = Σ_t c_t r^(n_t − 2) exp(−α_t r²)

with the radial terms as PySCF's ``gto.basis.load_ecp`` returns them (l = −1 is the local
channel; list index n gives the power r^(n−2)). The Coulomb −Z_eff/r is NOT in V_loc (it
stays in the Coulomb potential; ccECP's local channel carries + Z_eff/r · e^(−αr²), which
cancels it at the nucleus, so the total is finite there). The non-local projector acts in VMC
through the estimator (Mitas, Shirley & Ceperley, J. Chem. Phys. 95, 3467 (1991))

    Σ_l V_l(r) (2l + 1) Σ_q w_q P_l(r̂ · q̂') ψ(…, R_I + r q̂', …)/ψ(…, r_i, …),   q̂' = U q̂

over a spherical rule (Σ_q w_q = 1) rotated by a rotation U drawn uniformly from SO(3)
per electron, ECP atom and step, which makes it unbiased for the sphere integral. ccECP:
Bennett et al., J. Chem. Phys. 146, 204107 (2017) and 147, 224106 (2017).

This module holds numerics only; PySCF's ECP tables are read by `vmc.hf.load_ecp`.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

RULES = ("tetrahedron", "octahedron", "icosahedron", "lebedev9", "lebedev11", "lebedev17",
         "lebedev23")
# Exact polynomial degree of each rule (for the docs and the tests).
RULE_DEGREE = {"tetrahedron": 2, "octahedron": 3, "icosahedron": 5, "lebedev9": 9,
               "lebedev11": 11, "lebedev17": 17, "lebedev23": 23}
CUTOFF_TOL = 1e-8   # |V_l(r)| below this (hartree) for every channel: the non-local part is skipped


@dataclasses.dataclass(frozen=True, eq=False)
class ECPTable:
    """The ECP atoms of a molecule as padded numpy arrays (static data; hashes by identity).

    Attributes:
      atoms: (n_ecp,) index into the molecule's atoms of each ECP atom.
      local: (n_ecp, T, 3) local terms [power p = n − 2, α (bohr⁻²), c (hartree·bohr^−p)];
        padding rows have c = 0.
      nonlocal_: (n_ecp, L, T, 3) the same per non-local channel l = 0 .. L−1.
      cutoff: (n_ecp,) radius (bohr) beyond which every |V_l| < CUTOFF_TOL.
      n_core: (n_ecp,) core electrons removed.
      names: ECP name per ECP atom (e.g. 'ccecp').
    """
    atoms: np.ndarray
    local: np.ndarray
    nonlocal_: np.ndarray
    cutoff: np.ndarray
    n_core: np.ndarray
    names: tuple

    @property
    def n_channels(self) -> int:
        return self.nonlocal_.shape[1]


def with_nonlocal(table: ECPTable) -> Optional[ECPTable]:
    """The rows of `table` whose ECP has a non-local channel (cutoff > 0), or None when none
    has: a local-only ECP (ccECP's H and He) would cost n_electrons × n_q evaluations of ψ per
    walker for a non-local part that is exactly 0."""
    keep = np.flatnonzero(table.cutoff > 0)
    if keep.size == 0:
        return None
    return ECPTable(atoms=table.atoms[keep], local=table.local[keep],
                    nonlocal_=table.nonlocal_[keep], cutoff=table.cutoff[keep],
                    n_core=table.n_core[keep], names=tuple(table.names[i] for i in keep))


def _radial_np(terms: np.ndarray, r: np.ndarray) -> np.ndarray:
    p, a, c = terms[..., 0], terms[..., 1], terms[..., 2]
    return np.sum(c * r[:, None] ** p * np.exp(-a * r[:, None] ** 2), axis=-1)


def make_table(ecps: dict) -> Optional[ECPTable]:
    """Pad per-atom ECPs into an `ECPTable`.

    Args:
      ecps: {atom index: (name, n_core, channels)} with channels as from `vmc.hf.load_ecp`.
    Returns:
      the table, or None when `ecps` is empty.
    """
    if not ecps:
        return None
    idx = sorted(ecps)
    n_l = max([max([l for l in ecps[i][2] if l >= 0], default=-1) + 1 for i in idx])
    n_t = max(len(t) for i in idx for t in ecps[i][2].values())
    local = np.zeros((len(idx), n_t, 3))
    nonloc = np.zeros((len(idx), max(n_l, 1), n_t, 3))
    cutoff = np.zeros(len(idx))
    r = np.linspace(1e-3, 20.0, 20000)
    for k, i in enumerate(idx):
        for l, terms in ecps[i][2].items():
            arr = np.asarray(terms, np.float64).reshape(-1, 3)
            if l < 0:
                local[k, :len(arr)] = arr
            else:
                nonloc[k, l, :len(arr)] = arr
        big = np.zeros_like(r, dtype=bool)
        for l in range(nonloc.shape[1]):
            big |= np.abs(_radial_np(nonloc[k, l], r)) >= CUTOFF_TOL
        cutoff[k] = r[big].max() if big.any() else 0.0
    return ECPTable(atoms=np.asarray(idx, np.int64), local=local, nonlocal_=nonloc,
                    cutoff=cutoff, n_core=np.asarray([ecps[i][1] for i in idx], np.int64),
                    names=tuple(ecps[i][0] for i in idx))


def radial(terms, r):
    """Σ_t c_t r^p_t exp(−α_t r²) for r (...,) bohr and terms (..., T, 3); returns (...,) Ha.

    r broadcasts against terms[..., 0]; padding terms (c = 0) add exactly 0.
    """
    p, a, c = terms[..., 0], terms[..., 1], terms[..., 2]
    rr = r[..., None]
    return jnp.sum(c * jnp.power(rr, p) * jnp.exp(-a * rr * rr), axis=-1)


def legendre(l_max: int, t):
    """P_0 .. P_{l_max−1} at t (...,), stacked on a last axis (Bonnet's recursion)."""
    out = [jnp.ones_like(t), t]
    for l in range(1, l_max - 1):
        out.append(((2 * l + 1) * t * out[l] - l * out[l - 1]) / (l + 1))
    return jnp.stack(out[:max(l_max, 1)], axis=-1)


def quadrature(rule: str = "icosahedron") -> tuple[np.ndarray, np.ndarray]:
    """A spherical rule: points (n_q, 3) on the unit sphere and weights (n_q,) summing to 1.

    tetrahedron (4 points, exact to degree 2), octahedron (6, degree 3), icosahedron (12
    vertices, degree 5), lebedevN (Lebedev–Laikov rules of degree N, from
    ``scipy.integrate.lebedev_rule``).

    Raises:
      ValueError: unknown rule.
    """
    if rule == "tetrahedron":
        pts = np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]], float) / np.sqrt(3)
    elif rule == "octahedron":
        pts = np.concatenate([np.eye(3), -np.eye(3)])
    elif rule == "icosahedron":
        g = (1 + np.sqrt(5)) / 2
        base = []
        for s1 in (1, -1):
            for s2 in (g, -g):
                base += [[0, s1, s2], [s1, s2, 0], [s2, 0, s1]]
        pts = np.asarray(base, float) / np.sqrt(1 + g * g)
    elif rule.startswith("lebedev") and rule in RULES:
        from scipy.integrate import lebedev_rule
        x, w = lebedev_rule(int(rule[len("lebedev"):]))
        return np.ascontiguousarray(x.T), w / np.sum(w)
    else:
        raise ValueError(f"hamiltonian.ecp_rule: unknown rule {rule!r}; valid: {', '.join(RULES)}")
    return pts, np.full(len(pts), 1.0 / len(pts))


def random_rotations(key, shape, dtype=jnp.float32) -> jax.Array:
    """Rotation matrices (*shape, 3, 3) of `dtype` drawn uniformly (Haar) from SO(3).

    A unit quaternion from a normalised 4-d Gaussian is uniform on S³, and S³ → SO(3) is a
    double cover that carries the uniform measure to the Haar measure (Shoemake, Graphics
    Gems III (1992)); uniform Euler angles would not be.
    """
    q = jax.random.normal(key, tuple(shape) + (4,), dtype)
    q = q / jnp.linalg.norm(q, axis=-1, keepdims=True)
    w, x, y, z = q[..., 0], q[..., 1], q[..., 2], q[..., 3]
    rows = [[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]]
    return jnp.stack([jnp.stack(r, axis=-1) for r in rows], axis=-2)


def local_potential(table: ECPTable, x, atoms):
    """Σ_{i, I∈ECP} V_loc,I(|r_i − R_I|) of one configuration, hartree.

    Args:
      table: the ECP atoms; x: (n_electrons, 3) bohr; atoms: (n_atoms, 3) bohr.
    """
    centres = atoms[table.atoms]                                        # (A, 3)
    r = jnp.linalg.norm(x[:, None, :] - centres[None], axis=-1)         # (n, A)
    return jnp.sum(radial(jnp.asarray(table.local, x.dtype)[None], r))


def nonlocal_energy(table: ECPTable, log_psi_fn: Callable, x, atoms, key=None,
                    rule: str = "icosahedron"):
    """Non-local ECP energy (Hψ_NL)/ψ of one configuration by the rotated-quadrature estimator.

    All n_electrons × n_ecp × n_q wavefunction ratios are evaluated in one vmapped call;
    electron–atom pairs beyond the table's cutoff contribute exactly 0 (they are still
    evaluated: shapes are static).

    Args:
      table: the ECP atoms; log_psi_fn: x (n_electrons, 3) -> (sign, logabs).
      x: (n_electrons, 3) bohr; atoms: (n_atoms, 3) bohr.
      key: PRNG key for the random rotations (one per electron and ECP atom); None uses the
        rule unrotated (deterministic, biased by the rule's error; for tests only).
      rule: see `quadrature`.
    Returns:
      () hartree, in x's dtype.
    """
    pts, w = quadrature(rule)
    dtype = x.dtype
    n, n_a, n_l = x.shape[0], table.atoms.shape[0], table.n_channels
    centres = atoms[table.atoms]                                        # (A, 3)
    d = x[:, None, :] - centres[None]                                   # (n, A, 3)
    r = jnp.linalg.norm(d, axis=-1)                                     # (n, A)
    r_hat = d / jnp.maximum(r, 1e-12)[..., None]
    q = jnp.asarray(pts, dtype)                                         # (Q, 3)
    if key is not None:
        rot = random_rotations(key, (n, n_a), dtype)            # (n, A, 3, 3)
        q = jnp.einsum("naij,qj->naqi", rot, q)                         # (n, A, Q, 3)
    else:
        q = jnp.broadcast_to(q, (n, n_a) + q.shape)
    cos = jnp.einsum("nai,naqi->naq", r_hat, q)                         # (n, A, Q)
    new_pos = centres[None, :, None, :] + r[..., None, None] * q        # (n, A, Q, 3)
    v_l = radial(jnp.asarray(table.nonlocal_, dtype)[None], r[..., None])   # (n, A, L)
    inside = r < jnp.asarray(table.cutoff, dtype)[None]                 # (n, A)

    sign0, log0 = log_psi_fn(x)
    elec = jnp.broadcast_to(jnp.arange(n)[:, None, None], (n, n_a, len(w))).reshape(-1)
    moved = jax.vmap(lambda i, p: x.at[i].set(p))(elec, new_pos.reshape(-1, 3))
    sign1, log1 = jax.vmap(log_psi_fn)(moved)
    ratio = (sign1 * sign0 * jnp.exp(log1 - log0)).reshape(n, n_a, len(w))   # ψ(r')/ψ(r)
    ratio = jnp.where(inside[..., None], ratio, 0.0)
    p_l = legendre(n_l, cos)                                            # (n, A, Q, L)
    ang = jnp.einsum("q,naq,naql->nal", jnp.asarray(w, dtype), ratio, p_l)
    two_l1 = jnp.asarray(2 * np.arange(n_l) + 1, dtype)
    return jnp.sum(jnp.where(inside[..., None], v_l, 0.0) * two_l1 * ang)

"""Observables beyond the energy, sampled on the evaluation chain (MATH.md §9).

Numerics only (no files): `make_observables` returns one function that, inside the jitted
evaluation step, turns the step's walkers and local energies into per-step walker means of

- ``s2``: ⟨S²⟩ = S_z² + N/2 − Σ_{i↑, j↓} E[ψ(x with r_i ↔ r_j)/ψ(x)] (= S_z(S_z+1) + n↓ −
  Σ for n↑ ≥ n↓), the ψ ratio including the sign; all n↑·n↓ pairs per walker, or an unbiased
  random subset of `s2_max_pairs` pairs (without replacement, scaled by n↑n↓/m) when more;
- ``dipole``: d = Σ_I Z_I (R_I − R_c) − Σ_i (r_i − R_c), atomic units (e·bohr), about the
  centre of nuclear charge R_c (which only matters for ions);
- ``forces`` (hartree/bohr, every nucleus): plain Hellmann–Feynman, its zero-variance
  version and the zero-bias (Pulay) term, all three per step (see `force_terms`);
- ``density``: radial and axial histograms of the electron positions.

A walker whose local energy or observable is not finite is left out of that step's mean and
counted (``<name>_nonfinite``), as the energy's are (vmc.evaluate).
"""

from __future__ import annotations

import itertools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from vmc.errors import InputError

from vmc.obs_report import (AU_TO_DEBYE, OBSERVABLES, check_forces_supported,  # noqa: F401
                             parse_observables)


def centre_of_charge(positions, charges) -> np.ndarray:
    """R_c = Σ Z_I R_I / Σ Z_I, (3,) bohr."""
    z = np.asarray(charges, np.float64)
    return np.asarray(positions, np.float64).T @ z / z.sum()


# ------------------------------------------------------------------ per-walker estimators
def swap_ratios(log_psi: Callable, params, x, pairs):
    """ψ(x with r_i ↔ r_j)/ψ(x) for each pair.

    Args:
      log_psi: (params, x) -> (sign, log|ψ|); x: (n, 3) bohr.
      pairs: (m, 2) int electron indices (i spin up, j spin down).
    Returns:
      (m,) ratios including the sign (evaluated one pair at a time: the memory of one ψ).
    """
    sign, logabs = log_psi(params, x)

    def one(p):
        i, j = p[0], p[1]
        y = x.at[i].set(x[j]).at[j].set(x[i])
        s, l = log_psi(params, y)
        return (s * sign).astype(jnp.float64) * jnp.exp((l - logabs).astype(jnp.float64))
    return jax.lax.map(one, pairs)


def s2_sample(log_psi: Callable, params, x, key, n_up: int, n_down: int, max_pairs: int):
    """One walker's unbiased estimate of ⟨S²⟩ (dimensionless), MATH.md §9.

    S_z² + N/2 − (n↑n↓/m) Σ_{sampled pairs} ψ(swap)/ψ, with all n↑n↓ pairs when
    n↑n↓ ≤ max_pairs, else m = max_pairs pairs drawn without replacement by `key`.
    """
    sz = 0.5 * (n_up - n_down)
    base = sz * sz + 0.5 * (n_up + n_down)
    if n_up == 0 or n_down == 0:
        return jnp.asarray(base, jnp.float64)
    pairs = jnp.asarray(list(itertools.product(range(n_up), range(n_up, n_up + n_down))),
                        jnp.int32)
    total = pairs.shape[0]
    if total > max_pairs:
        pairs = pairs[jax.random.permutation(key, total)[:max_pairs]]
    ratios = swap_ratios(log_psi, params, x, pairs)
    return base - (total / pairs.shape[0]) * jnp.sum(ratios)


def dipole_sample(x, positions, charges):
    """One walker's dipole d = Σ_I Z_I (R_I − R_c) − Σ_i (r_i − R_c), (3,) e·bohr.

    positions: (n_atoms, 3) bohr; charges: (n_atoms,); R_c the centre of nuclear charge.
    """
    rc = centre_of_charge(positions, charges)
    nuclear = np.asarray(charges) @ (np.asarray(positions) - rc)
    return jnp.asarray(nuclear, jnp.float64) - jnp.sum(x.astype(jnp.float64) - rc, axis=0)


def nuclear_forces(positions, charges) -> np.ndarray:
    """Σ_{J≠I} Z_I Z_J (R_I − R_J)/|R_I − R_J|³, (n_atoms, 3) hartree/bohr."""
    pos = np.asarray(positions, np.float64)
    z = np.asarray(charges, np.float64)
    out = np.zeros_like(pos)
    for i in range(len(z)):
        for j in range(len(z)):
            if i != j:
                d = pos[i] - pos[j]
                out[i] += z[i] * z[j] * d / np.linalg.norm(d) ** 3
    return out


def force_terms(log_psi_at: Callable, params, x, positions, charges):
    """One walker's force estimators on every nucleus, hartree/bohr.

    With Q_I = Z_I Σ_i (r_i − R_I)/|r_i − R_I|, −½ Δ Q_I is the electronic Hellmann–Feynman
    force, and E[(HQψ)/ψ − E_L Q] = 0 gives its zero-variance form ∇Q·∇log|ψ| (Assaraf &
    Caffarel, J. Chem. Phys. 113, 4028 (2000); 119, 10536 (2003)), which stays finite at the
    nuclei (only the tangential part of ∇_i log|ψ| enters, divided by |r_i − R_I|).

    Args:
      log_psi_at: (params, x, atoms) -> (sign, log|ψ|) with the nuclei traced.
      x: (n, 3) bohr; positions: (n_atoms, 3) bohr (jnp, the network's dtype); charges.
    Returns:
      hf: (n_atoms, 3) Z_I Σ_i (r_i − R_I)/|r_i − R_I|³ + nuclear term (plain HF);
      zv: (n_atoms, 3) Z_I Σ_i [g_i − n̂ (n̂·g_i)]/|r_i − R_I| + nuclear term, g_i = ∇_i log|ψ|;
      grad_r: (n_atoms, 3) ∂ log|ψ|/∂R_I (for the zero-bias term, `step_means`).
    """
    z = jnp.asarray(charges, jnp.float64)
    nuc = jnp.asarray(nuclear_forces(np.asarray(positions), charges))
    g_x, g_r = jax.grad(lambda y, a: log_psi_at(params, y, a)[1], argnums=(0, 1))(x, positions)
    d = (x[:, None, :] - positions[None, :, :]).astype(jnp.float64)   # (n, A, 3)
    r = jnp.linalg.norm(d, axis=-1, keepdims=True)
    hf = z[:, None] * jnp.sum(d / r ** 3, axis=0) + nuc
    n = d / r
    g = g_x.astype(jnp.float64)[:, None, :]
    tangential = g - n * jnp.sum(n * g, axis=-1, keepdims=True)
    zv = z[:, None] * jnp.sum(tangential / r, axis=0) + nuc
    return hf, zv, g_r.astype(jnp.float64)


def histogram_counts(values, n_bins: int, lo: float, hi: float):
    """Counts (n_bins,) of `values` (k,) in equal bins on [lo, hi) and the number outside."""
    b = jnp.floor((values - lo) / (hi - lo) * n_bins).astype(jnp.int32)
    inside = (values >= lo) & (values < hi)
    counts = jnp.sum(jax.nn.one_hot(jnp.where(inside, b, 0), n_bins) * inside[:, None], axis=0)
    return counts.astype(jnp.float64), jnp.sum(~inside).astype(jnp.float64)


def density_edges(n_bins: int, r_max: float) -> tuple[np.ndarray, np.ndarray]:
    """Bin edges, bohr: radial (n_bins + 1,) on [0, r_max], axial (n_bins + 1,) on
    [−r_max, r_max]."""
    return np.linspace(0.0, r_max, n_bins + 1), np.linspace(-r_max, r_max, n_bins + 1)


def density_sample(x, centre, n_bins: int, r_max: float):
    """Electron counts of one walker: radial (n_bins,) in shells |r − c| ∈ bins of [0, r_max)
    and axial (n_bins,) of z − c_z in bins of [−r_max, r_max); the numbers outside each."""
    d = x.astype(jnp.float64) - jnp.asarray(centre, jnp.float64)
    radial, out_r = histogram_counts(jnp.linalg.norm(d, axis=-1), n_bins, 0.0, r_max)
    axial, out_z = histogram_counts(d[:, 2], n_bins, -r_max, r_max)
    return radial, out_r, axial, out_z


# ----------------------------------------------------------------------------- step means
def _masked_mean(v, good):
    """Mean over the walkers (first axis) where good; NaN when none is."""
    w = good.reshape(good.shape + (1,) * (v.ndim - 1))
    n = jnp.sum(good).astype(jnp.float64)
    return jnp.sum(jnp.where(w, v, 0.0), axis=0) / n


def _finite(v):
    return jnp.all(jnp.isfinite(v.reshape(v.shape[0], -1)), axis=1)


def make_observables(setup, names, eval_cfg) -> Callable:
    """The per-step observable reduction for the evaluation step.

    Args:
      setup: `vmc.train.Setup`; names: from `parse_observables`.
      eval_cfg: `vmc.config.EvalConfig` (s2_max_pairs, density_bins, density_rmax,
        observables_chunk).
    Returns:
      fn(params, walkers (n_w, n, 3), e_l (n_w,), good (n_w,) bool, key) -> dict of float64
      arrays: 's2' (); 'dipole' (3,) e·bohr; 'force_hf', 'force_zv', 'force_pulay'
      (n_atoms, 3) hartree/bohr, the last −2 cov(E_L, ∂_R log|ψ|) over the good walkers
      with the n/(n−1) correction, so that each step's value is unbiased; 'density_radial',
      'density_axial' (bins,) electrons per walker and bin, 'density_radial_outside',
      'density_axial_outside' () electrons per walker outside; and '<obs>_nonfinite' ()
      walkers left out, for obs in s2, dipole, forces.
    """
    mol = setup.molecule
    log_psi = setup.ansatz.log_psi
    chunk = eval_cfg.observables_chunk
    positions = jnp.asarray(mol.positions, setup.dtype)
    charges = np.asarray(mol.charges)
    if "forces" in names and setup.ansatz.log_psi_at is None:
        raise InputError("eval.observables: forces need an ansatz with the nuclei as traced "
                         "inputs; valid: s2, dipole, density")
    if "forces" in names:
        check_forces_supported(setup.cfg)

    def per_walker(f, *xs):
        if chunk is None:
            return jax.vmap(f)(*xs)
        return jax.lax.map(lambda a: f(*a), xs, batch_size=chunk)

    def fn(params, walkers, e_l, good, key):
        out = {}
        n_w = walkers.shape[0]
        if "s2" in names:
            keys = jax.random.split(key, n_w)
            s2 = per_walker(lambda x, k: s2_sample(log_psi, params, x, k, mol.n_up,
                                                   mol.n_down, eval_cfg.s2_max_pairs),
                            walkers, keys)
            ok = good & jnp.isfinite(s2)
            out["s2"] = _masked_mean(s2, ok)
            out["s2_nonfinite"] = n_w - jnp.sum(ok).astype(jnp.float64)
        if "dipole" in names:
            d = jax.vmap(lambda x: dipole_sample(x, mol.positions, charges))(walkers)
            ok = good & _finite(d)
            out["dipole"] = _masked_mean(d, ok)
            out["dipole_nonfinite"] = n_w - jnp.sum(ok).astype(jnp.float64)
        if "forces" in names:
            hf, zv, g_r = per_walker(
                lambda x: force_terms(setup.ansatz.log_psi_at, params, x, positions, charges),
                walkers)
            ok = good & _finite(hf) & _finite(zv) & _finite(g_r)
            n = jnp.sum(ok).astype(jnp.float64)
            e = jnp.where(ok, e_l.astype(jnp.float64), 0.0)
            de = e - jnp.sum(e) / n
            dg = g_r - _masked_mean(g_r, ok)
            cov = _masked_mean(de[:, None, None] * dg, ok) * n / (n - 1.0)
            out["force_hf"] = _masked_mean(hf, ok)
            out["force_zv"] = _masked_mean(zv, ok)
            out["force_pulay"] = -2.0 * cov
            out["forces_nonfinite"] = n_w - n
        if "density" in names:
            centre = (np.asarray(eval_cfg.density_centre, np.float64) if eval_cfg.density_centre
                      else centre_of_charge(mol.positions, charges))
            rad, out_r, ax, out_z = jax.vmap(
                lambda x: density_sample(x, centre, eval_cfg.density_bins,
                                         eval_cfg.density_rmax))(walkers)
            out["density_radial"] = _masked_mean(rad, good)
            out["density_radial_outside"] = _masked_mean(out_r, good)
            out["density_axial"] = _masked_mean(ax, good)
            out["density_axial_outside"] = _masked_mean(out_z, good)
        return out

    return fn

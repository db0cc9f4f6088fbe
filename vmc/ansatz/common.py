"""Pieces shared by the ansätze: input features, envelopes, Jastrow factor, log-sum-det."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


def spin_blocks(n_up: int, n: int) -> tuple[slice, slice]:
    """Index slices of the spin-up (first) and spin-down electrons."""
    return slice(0, n_up), slice(n_up, n)


def concat_blocks(local, shared):
    """The input a `SharedRowsDense` stands for: (rows, Σ d), the local blocks, then the
    shared ones broadcast to every row.

    Args:
      local: blocks (rows, d_b), one row per electron (or pair).
      shared: blocks (d_b,), the same vector for every row (may be empty).
    """
    rows = local[0].shape[0]
    return jnp.concatenate(list(local) + [jnp.broadcast_to(b, (rows, b.shape[-1]))
                                          for b in shared], axis=-1)


class SharedRowsDense(nn.Dense):
    """`nn.Dense` of `concat_blocks(local, shared)`, without multiplying the shared blocks
    once per row.

    FermiNet's one-electron layer input [h_i, ⟨h2_i·⟩_up, ⟨h2_i·⟩_down | ⟨h⟩_up, ⟨h⟩_down]
    (Pfau et al. 2020, eq. 5) repeats the spin means ⟨h⟩ in every electron's row, so
    W·[l_i; g] + b = W_l l_i + (W_g g + b) costs (d_l n + d_g) d_out multiply-adds instead
    of (d_l + d_g) n d_out (41 % fewer in Li's benchmark-width layers, 53 % in N's), in the
    forward pass, its parameter gradient and the forward Laplacian alike. The parameters
    are nn.Dense's (kernel (d_l + d_g, d_out): the local rows first, then the shared ones,
    so W_l and W_g are two contiguous slices and the per-walker gradient is one copy;
    bias (d_out,)), with nn.Dense's initialisers; the result equals nn.Dense on the
    concatenation up to float rounding. KFAC (`vmc.optim.kfac_capture`) records
    `concat_blocks(local, shared)` as the layer's input, so its factors are those of that
    nn.Dense.

    Call: (local, shared) as in `concat_blocks`; returns (rows, d_out).
    """

    @nn.compact
    def __call__(self, local, shared):   # noqa: D102 (the class docstring)
        from flax.linen.dtypes import promote_dtype
        local = jnp.concatenate(list(local), axis=-1)
        d_l = local.shape[-1]
        d_g = sum(b.shape[-1] for b in shared)
        kernel = self.param("kernel", self.kernel_init, (d_l + d_g, self.features),
                            self.param_dtype)
        bias = (self.param("bias", self.bias_init, (self.features,), self.param_dtype)
                if self.use_bias else None)
        local, kernel = promote_dtype(local, kernel, dtype=self.dtype)
        y = jnp.matmul(local, kernel[:d_l], precision=self.precision)
        per_row = None
        if d_g:
            g, = promote_dtype(jnp.concatenate(list(shared), axis=-1), dtype=self.dtype)
            per_row = jnp.matmul(g, kernel[d_l:], precision=self.precision)
        if bias is not None:
            bias, = promote_dtype(bias, dtype=self.dtype)
            per_row = bias if per_row is None else per_row + bias
        return y if per_row is None else y + per_row[None, :]


def pair_distances(x):
    """Electron–electron displacements and distances with a safe diagonal.

    Args:
      x: (n, 3) electron positions, bohr.
    Returns:
      ee: (n, n, 3) r_i − r_j; r_ee: (n, n, 1) |r_i − r_j|, exactly 0 on the diagonal with
      finite derivatives there (the norm is taken of a shifted, non-zero vector).
    """
    n = x.shape[0]
    ee = x[:, None, :] - x[None, :, :]
    eye = jnp.eye(n, dtype=x.dtype)[..., None]
    r_ee = jnp.linalg.norm(ee + eye, axis=-1, keepdims=True) * (1.0 - eye)
    return ee, r_ee


def soft_norm(sq, a: float):
    """√(sq + a²) − a for a squared length `sq` (bohr²) and a > 0 (bohr): ≈ sq/(2a) near 0,
    √sq − a far away. The cusp-free distance at ECP atoms (`smooth_distance`, `Envelope`)."""
    return jnp.sqrt(sq + a * a) - a


def per_atom(length, n_atoms: int, dtype):
    """A smoothing length a as an array that broadcasts over (n, n_atoms, ·): a float (the
    same for every atom) stays a float; a tuple of n_atoms floats becomes (1, n_atoms, 1) of
    `dtype` (the network's: a float64 array here would turn a float32 ψ into float64)."""
    if isinstance(length, (tuple, list)):
        return jnp.asarray(length, dtype).reshape(1, n_atoms, 1)
    return length


def smooth_distance(ae, r_ae, smooth=(), length=1.0):
    """|r − R_I| at atoms with a cusp; √(|r − R_I|² + a²) − a (bohr, smooth at the nucleus,
    |r − R_I| − a + O(1/r) far away) at the atoms flagged in `smooth`: ECP atoms, whose
    potential is finite at the nucleus, so ψ must have no cusp there (a =
    `ansatz.ecp_smoothing`), and, with `ansatz.nuclear_cusp`, all-electron atoms, whose
    exact cusp `NuclearCusp` supplies (a = `ansatz.cusp_length`/(2 Z_I)).

    Args:
      ae: (n, n_atoms, 3) bohr; r_ae: (n, n_atoms, 1) bohr; smooth: n_atoms bools or ();
      length: a > 0, bohr, one for every atom or a tuple of n_atoms: below it the distance
        is ≈ r²/(2a), so the network's features are flat on that scale around the nucleus.
    Returns:
      (n, n_atoms, 1) bohr.
    """
    if not any(smooth):
        return r_ae
    soft = soft_norm(jnp.sum(ae * ae, axis=-1, keepdims=True),
                     per_atom(length, ae.shape[1], ae.dtype))
    return jnp.where(jnp.asarray(smooth)[None, :, None], soft, r_ae)


def electron_features(x, atoms, smooth=(), smooth_length: float = 1.0):
    """FermiNet's input features (Pfau et al. 2020, sec. 3).

    Args:
      x: (n, 3) electrons, bohr; atoms: (n_atoms, 3) nuclei, bohr.
      smooth: n_atoms bools: ECP atoms, whose distance is `smooth_distance`'s smooth one.
      smooth_length: its length a, bohr.
    Returns:
      h1: (n, 4 n_atoms) [r_i − R_I, |r_i − R_I|]; h2: (n, n, 4) [r_i − r_j, |r_i − r_j|];
      ae: (n, n_atoms, 3); r_ae: (n, n_atoms, 1).
    """
    ae = x[:, None, :] - atoms[None, :, :]
    r_ae = smooth_distance(ae, jnp.linalg.norm(ae, axis=-1, keepdims=True), smooth,
                           smooth_length)
    ee, r_ee = pair_distances(x)
    h1 = jnp.concatenate([ae, r_ae], axis=-1).reshape(x.shape[0], -1)
    h2 = jnp.concatenate([ee, r_ee], axis=-1)
    return h1, h2, ae, r_ae


class Envelope(nn.Module):
    """Exponential envelopes Σ_I π_{kI} exp(−|σ_{kI}(r_i − R_I)|) for each orbital k.

    'isotropic': σ_{kI} scalar; 'full': σ_{kI} a 3×3 matrix (FermiNet's full envelope).
    Input ae: (n, n_atoms, 3), r_ae: (n, n_atoms, 1) bohr (already smooth at ECP atoms,
    `smooth_distance`). Output (n, n_orbitals). At atoms flagged in `smooth` the full
    envelope's |σ d| becomes √(|σ d|² + a²) − a (a = `smooth_length`, bohr), so no cusp is
    imposed there. `sigma_init`: per atom the initial exponent (σ, or σ·I for 'full');
    () = 1 everywhere (FermiNet's initialisation).
    """
    n_atoms: int
    n_orbitals: int
    kind: str = "isotropic"
    dtype: jnp.dtype = jnp.float32
    smooth: tuple = ()
    smooth_length: float | tuple = 1.0
    sigma_init: tuple = ()

    def _scale(self, dtype):
        """(n_atoms,) initial exponent per atom."""
        return jnp.asarray(self.sigma_init or (1.0,) * self.n_atoms, dtype)

    @nn.compact
    def __call__(self, ae, r_ae):
        pi = self.param("pi", nn.initializers.ones, (self.n_atoms, self.n_orbitals), self.dtype)
        if self.kind == "isotropic":
            sigma = self.param("sigma", lambda key, shape, dtype: jnp.broadcast_to(
                self._scale(dtype)[:, None], shape), (self.n_atoms, self.n_orbitals), self.dtype)
            dist = r_ae * sigma[None]                                        # (n, A, k)
        elif self.kind == "full":
            def init(key, shape, dtype):
                return jnp.broadcast_to(jnp.eye(3, dtype=dtype)[None, :, :, None]
                                        * self._scale(dtype)[:, None, None, None], shape)
            sigma = self.param("sigma", init, (self.n_atoms, 3, 3, self.n_orbitals), self.dtype)
            v = jnp.einsum("nai,aijk->najk", ae, sigma)                      # (n, A, 3, k)
            dist = jnp.sqrt(jnp.sum(v * v, axis=2) + 1e-12)
            if any(self.smooth):
                soft = soft_norm(jnp.sum(v * v, axis=2),
                                 per_atom(self.smooth_length, self.n_atoms, v.dtype))
                dist = jnp.where(jnp.asarray(self.smooth)[None, :, None], soft, dist)
        else:
            raise ValueError(f"ansatz.envelope: unknown kind {self.kind!r}; valid: isotropic, full")
        return jnp.sum(pi[None] * jnp.exp(-dist), axis=1)


class Jastrow(nn.Module):
    """Electron–electron Jastrow J = Σ_{i<j} −c α²/(α + r_ij) (von Glehn et al. 2023).

    c = 1/4 for parallel and 1/2 for antiparallel spins, so ∂J/∂r_ij at r_ij = 0 equals the
    Kato cusp values; one learnable α per spin pairing (initialised to 1 bohr).
    Input x: (n, 3) bohr; returns J (scalar) to be added to log|ψ|.
    """
    n_up: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        n = x.shape[0]
        alpha_par = self.param("alpha_parallel", nn.initializers.ones, (), self.dtype)
        alpha_anti = self.param("alpha_antiparallel", nn.initializers.ones, (), self.dtype)
        _, r_ee = pair_distances(x)
        r = r_ee[..., 0]
        spin = jnp.arange(n) < self.n_up
        parallel = spin[:, None] == spin[None, :]
        upper = jnp.triu(jnp.ones((n, n), bool), k=1)
        j_par = -0.25 * alpha_par ** 2 / (alpha_par + r)
        j_anti = -0.5 * alpha_anti ** 2 / (alpha_anti + r)
        terms = jnp.where(parallel, j_par, j_anti)
        return jnp.sum(jnp.where(upper, terms, 0.0))


class NuclearCusp(nn.Module):
    """Kato's electron–nucleus cusp as a factor of every orbital: row i of each orbital
    matrix is multiplied by exp(u_i), u_i = Σ_I −Z_I α_I f(r_iI/α_I), with f(s) = s/(1 + s)
    (form 'pade') or tanh(s) (form 'tanh').

    ∂u/∂r_iI at r_iI = 0 is −Z_I, Kato's cusp (Kato, Commun. Pure Appl. Math. 10, 151
    (1957)); the network and the envelopes see the smooth distance at these atoms
    (`smooth_distance`), so the rest of ψ is smooth there and ψ's cusp is exactly −Z_I.
    The factor is a one-body Jastrow (the same for every orbital, so det scales by
    Π_i exp(u_i)): 1 at the nucleus, exp(−Z_I α_I) beyond α_I, so with α_I = c/Z_I it
    changes a valence orbital by at most e^(−c) and supplies the 1s orbital's e^(−Z r) over
    the first α_I. The e–n part of the exact-cusp Jastrow of Drummond, Towler & Needs,
    Phys. Rev. B 70, 235119 (2004), in the Padé form of the electron–electron `Jastrow`.

    The Padé form is −Z r + Z r²/α + O(r³), so −½∇²u adds the constant −3Z/α (−108 Ha at C
    with α = 1/6 bohr) to E_L at the nucleus, which the rest of ψ must cancel; tanh has no r²
    term (−Z r + Z r³/(3α²)), so its −½∇²u is Z/r + O(r) there and adds no constant.

    Attributes:
      charges: per atom Z_I, 0 where no cusp is imposed (ECP atoms).
      lengths: per atom the initial α_I, bohr (learnable: α_I = lengths_I·|θ_I|, θ_I = 1).
      form: 'pade' or 'tanh' (`ansatz.cusp_form`).
    Call: r_ae (n, n_atoms, 1) true distances, bohr; returns u (n,).
    """
    charges: tuple
    lengths: tuple
    dtype: jnp.dtype = jnp.float32
    form: str = "pade"

    @nn.compact
    def __call__(self, r_ae):
        theta = self.param("alpha", nn.initializers.ones, (len(self.charges),), self.dtype)
        alpha = jnp.asarray(self.lengths, self.dtype) * jnp.abs(theta)
        z = jnp.asarray(self.charges, self.dtype)
        r = r_ae[..., 0]                                                     # (n, A)
        shape = jnp.tanh(r / alpha) if self.form == "tanh" else r / (alpha + r)
        return jnp.sum(-z * alpha * shape, axis=-1)


def orbital_matrices(h, ae, r_ae, n_up: int, orbital_dense, envelopes, determinants: int,
                     n_out, full_det: bool, row_log=None):
    """Spin-dependent orbitals times envelopes, as K orbital matrices (FermiNet and Psiformer).

    Args:
      h: (n, d) final electron stream; ae: (n, n_atoms, 3); r_ae: (n, n_atoms, 1) bohr.
      orbital_dense, envelopes: [up, down] bound modules, each giving (n_s, K·n_out[s]).
      n_out: [up, down] columns per determinant (n for full determinants, else n_s).
      row_log: optional (n,): row i of every matrix is multiplied by exp(row_log[i])
        (`NuclearCusp`).
    Returns:
      full_det: [(K, n, n)]; else [(K, n_up, n_up), (K, n_down, n_down)] (empty blocks
      omitted). Row i is electron i (within its spin block).
    """
    mats = []
    for s, sl in enumerate(spin_blocks(n_up, h.shape[0])):
        ns = sl.stop - sl.start
        if ns == 0:
            continue
        orb = orbital_dense[s](h[sl]) * envelopes[s](ae[sl], r_ae[sl])      # (ns, K*n_out)
        if row_log is not None:
            orb = orb * jnp.exp(row_log[sl])[:, None]
        orb = orb.reshape(ns, determinants, n_out[s])
        mats.append(jnp.transpose(orb, (1, 0, 2)))                           # (K, ns, n_out)
    if full_det:
        return [jnp.concatenate(mats, axis=1)]
    return mats


DET_PRECISIONS = ("float64", "network")


def log_sum_det(mats, precision: str = "float64"):
    """log|Σ_k Π_b det(M_bk)| and its sign, combined stably in the log domain.

    The determinant stage runs in float64 by default, whatever the network's dtype: near a
    node of one determinant (condition number κ ≳ 1/ε₃₂ ≈ 10⁷) float32 LU gives a log|det|
    and an A⁻¹ (the derivative rules of slogdet, folx's and JAX's alike) that disagree by
    O(ε κ); that determinant's Laplacian is a difference of two O(1/σ²) terms, so in float32
    its kinetic energy is rounding noise or NaN. In float64 the error is O(ε₆₄ κ) ≈ 10⁻⁸ at
    κ = 10⁸ (measured in `scripts/bench_precision.py`; tested in tests/test_precision.py).
    The result is cast back to the matrices' dtype: its value and derivatives are O(1).

    Args:
      mats: list of blocks, each (K, m_b, m_b); the determinants of block b and determinant k
        multiply, and the K products are summed.
      precision: 'float64' (default) or 'network' (the matrices' own dtype; for comparison).
    Returns:
      (sign, logabs): scalars in the matrices' dtype.
    Raises:
      ValueError: unknown precision.
    """
    if precision not in DET_PRECISIONS:
        raise ValueError(f"ansatz.det_precision: unknown {precision!r}; valid: "
                         f"{', '.join(DET_PRECISIONS)}")
    if not mats:
        return jnp.ones(()), jnp.zeros(())
    out_dtype = mats[0].dtype
    if precision == "float64":
        mats = [m.astype(jnp.float64) for m in mats]
    sign, logdet = 1.0, 0.0
    for m in mats:
        s, l = jnp.linalg.slogdet(m)
        sign, logdet = sign * s, logdet + l
    if mats[0].shape[0] == 1:
        return sign[0].astype(out_dtype), logdet[0].astype(out_dtype)
    logmax = jax.lax.stop_gradient(jnp.max(logdet))
    total = jnp.sum(sign * jnp.exp(logdet - logmax))
    return (jnp.sign(total).astype(out_dtype),
            (jnp.log(jnp.abs(total)) + logmax).astype(out_dtype))


def cusp_rows(module, ae):
    """`NuclearCusp`'s u_i (n,) of a bound FermiNet or Psiformer from the true e–n vectors
    ae (n, n_atoms, 3) bohr, or None when the module has no `cusp_charges` (the
    `row_log` of `orbital_matrices`)."""
    if not any(module.cusp_charges):
        return None
    return module.nuclear_cusp(jnp.linalg.norm(ae, axis=-1, keepdims=True))


def psi_from_orbitals(module, mats, x):
    """(sign, log|ψ|) of one configuration from its orbital matrices (`module.orbitals(x)`):
    log|Σ_k det_k| in `module.det_precision`, plus the Jastrow factor when `module.jastrow`.

    Args:
      module: a bound FermiNet or Psiformer; mats: its orbital matrices at x;
      x: (n_electrons, 3) bohr.
    """
    sign, logabs = log_sum_det(mats, module.det_precision)
    if module.jastrow:
        logabs = logabs + module.jastrow_factor(x.astype(module.dtype))
    return sign, logabs

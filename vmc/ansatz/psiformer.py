"""Psiformer (von Glehn, Spencer, Pfau, ICLR 2023): self-attention over electrons.

Written for ONE configuration `x: (n_electrons, 3)` bohr, spin-up electrons first; the rest of
the code vmaps over walkers.

    h⁰_i = W_embed [f(r_i − R_1), …, f(r_i − R_A), s_i]                  (no bias)
    for each layer l:
        h ← h + W_o Attention(W_q h, W_k h, W_v h)          (multi-head, softmax over j)
        h ← LayerNorm(h)                                      (if layer_norm)
        h ← h + tanh(W_mlp h + b)
        h ← LayerNorm(h)                                      (if layer_norm)
    φ^k_{σ,j}(r_i) = (W^σ h_i + b^σ)_{kj} · Σ_I π^σ_{kjI} exp(−σ^σ_{kjI}|r_i − R_I|)

with FermiNet's log-rescaled one-electron features f(d) = [d·log(1+|d|)/|d|, log(1+|d|)]
(Pfau et al., `rescale_inputs`) and the spin s_i = +1 (up) / −1 (down) as the only
information about which electron is which: there is no two-electron stream. The orbital head,
envelopes, determinants and Jastrow factor are FermiNet's (vmc.ansatz.common).

Attention is written with `nn.Dense` projections (no bias, as in the reference code) and
`jax.nn.softmax`, so KFAC sees only Dense layers and folx's forward Laplacian sees only
dot products, exp and sums (tests/test_psiformer.py checks it against the Hessian).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vmc.ansatz.common import (Envelope, Jastrow, NuclearCusp, cusp_rows,
                               orbital_matrices, psi_from_orbitals, smooth_distance)


def rescaled_features(x, atoms, smooth=(), smooth_length: float = 1.0):
    """Log-rescaled electron–nucleus features.

    Args:
      x: (n, 3) electrons, bohr; atoms: (n_atoms, 3) nuclei, bohr.
      smooth: n_atoms bools: ECP atoms, whose distance is smooth at the nucleus
        (`vmc.ansatz.common.smooth_distance`); smooth_length: its length a, bohr.
    Returns:
      h: (n, 4 n_atoms) [d·log(1+r)/r, log(1+r)] per atom; ae: (n, n_atoms, 3) d = r_i − R_I;
      r_ae: (n, n_atoms, 1) |d|.
    """
    ae = x[:, None, :] - atoms[None, :, :]
    r_ae = smooth_distance(ae, jnp.linalg.norm(ae, axis=-1, keepdims=True), smooth,
                           smooth_length)
    log_r = jnp.log1p(r_ae)
    # log(1+r)/r, 1 at r = 0, by arithmetic on a 0/1 mask rather than jnp.where: folx's
    # sparse forward Laplacian needs a select_n's predicate known at trace time, and this
    # one depends on x, so it materialized every Jacobian (its "could not perform index
    # operation select_n" warning). The values are the same: r + 0 = r where r > 0.
    at_nucleus = (r_ae <= 0).astype(r_ae.dtype)
    scale = (1.0 - at_nucleus) * log_r / (r_ae + at_nucleus) + at_nucleus
    h = jnp.concatenate([ae * scale, log_r], axis=-1).reshape(x.shape[0], -1)
    return h, ae, r_ae


class SelfAttention(nn.Module):
    """Multi-head dot-product self-attention over electrons.

    Input h: (n, width); output (n, width) = W_o concat_heads(softmax(q kᵀ/√d) v).
    """
    heads: int
    head_dim: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, h):
        n, width = h.shape
        inner = self.heads * self.head_dim

        def proj(name):
            return nn.Dense(inner, use_bias=False, dtype=self.dtype, param_dtype=self.dtype,
                            name=name)(h).reshape(n, self.heads, self.head_dim)

        q, k, v = proj("query"), proj("key"), proj("value")
        logits = jnp.einsum("ihd,jhd->hij", q, k) / np.sqrt(self.head_dim)
        weights = jax.nn.softmax(logits, axis=-1)                       # (heads, n, n)
        out = jnp.einsum("hij,jhd->ihd", weights, v).reshape(n, inner)
        return nn.Dense(width, use_bias=False, dtype=self.dtype, param_dtype=self.dtype,
                        name="out")(out)


class Psiformer(nn.Module):
    """Psiformer wavefunction log|ψ|.

    Attributes:
      atoms: (n_atoms, 3) nuclear positions, bohr (as nested tuples).
      charges: (n_atoms,) nuclear charges (unused by the network; kept for the interface).
      n_up, n_down: electrons per spin; electrons 0..n_up-1 are spin up.
      heads, head_dim: attention heads and width per head; the stream width is their product.
      layers: number of attention + MLP blocks.
      layer_norm: LayerNorm after each residual update.
      determinants: K, the number of determinants.
      full_det: one n×n determinant per k (True, as in the paper) or det(up)·det(down).
      envelope: 'isotropic' or 'full' exponential envelopes.
      jastrow: add the electron–electron Jastrow factor (the paper always uses it).
    """
    atoms: tuple
    charges: tuple
    n_up: int
    n_down: int
    heads: int = 4
    head_dim: int = 16
    layers: int = 2
    layer_norm: bool = False
    determinants: int = 8
    full_det: bool = True
    envelope: str = "isotropic"
    jastrow: bool = True
    det_precision: str = "float64"
    dtype: jnp.dtype = jnp.float32
    smooth_atoms: tuple = ()   # per atom: True at ECP atoms (no cusp, common.smooth_distance)
    smooth_length: float | tuple = 1.0   # its length a, bohr, one or per atom
    cusp_charges: tuple = ()   # per atom Z_I where NuclearCusp imposes Kato's cusp, else 0
    cusp_lengths: tuple = ()   # per atom NuclearCusp's initial α_I, bohr
    cusp_form: str = "pade"    # NuclearCusp's form: 'pade' or 'tanh'
    envelope_sigma: tuple = ()   # per atom initial envelope exponent (() = 1)

    def setup(self):
        width = self.heads * self.head_dim
        dense = dict(dtype=self.dtype, param_dtype=self.dtype)
        self.embed = nn.Dense(width, use_bias=False, name="embed", **dense)
        self.attention = [SelfAttention(self.heads, self.head_dim, self.dtype,
                                        name=f"attention_{i}") for i in range(self.layers)]
        self.mlp = [nn.Dense(width, name=f"mlp_{i}", **dense) for i in range(self.layers)]
        if self.layer_norm:
            self.norms = [(nn.LayerNorm(dtype=self.dtype, param_dtype=self.dtype,
                                        name=f"norm_attention_{i}"),
                           nn.LayerNorm(dtype=self.dtype, param_dtype=self.dtype,
                                        name=f"norm_mlp_{i}")) for i in range(self.layers)]
        n = self.n_up + self.n_down
        self.n_out = [n if self.full_det else ns for ns in (self.n_up, self.n_down)]
        self.orbital_dense = [nn.Dense(self.determinants * n_out, name=f"orbital_{s}", **dense)
                              for s, n_out in zip(("up", "down"), self.n_out)]
        self.envelopes = [Envelope(len(self.atoms), self.determinants * n_out, self.envelope,
                                   self.dtype, self.smooth_atoms, self.smooth_length,
                                   self.envelope_sigma, name=f"envelope_{s}")
                          for s, n_out in zip(("up", "down"), self.n_out)]
        if self.jastrow:
            self.jastrow_factor = Jastrow(self.n_up, self.dtype)
        if any(self.cusp_charges):
            self.nuclear_cusp = NuclearCusp(self.cusp_charges, self.cusp_lengths,
                                            self.dtype, self.cusp_form)

    def stream(self, x, atoms=None):
        """The electron stream after the attention blocks: (n, heads·head_dim), and the
        electron–nucleus vectors ae (n, n_atoms, 3) and distances r_ae (n, n_atoms, 1).
        `atoms`: optional traced (n_atoms, 3) nuclei, bohr (None: the static ones)."""
        atoms = jnp.asarray(self.atoms if atoms is None else atoms, self.dtype)
        n = x.shape[0]
        feats, ae, r_ae = rescaled_features(x, atoms, self.smooth_atoms,
                                            self.smooth_length)
        spin = jnp.where(jnp.arange(n) < self.n_up, 1.0, -1.0).astype(self.dtype)
        h = self.embed(jnp.concatenate([feats, spin[:, None]], axis=-1))
        for i in range(self.layers):
            h = h + self.attention[i](h)
            if self.layer_norm:
                h = self.norms[i][0](h)
            h = h + jnp.tanh(self.mlp[i](h))
            if self.layer_norm:
                h = self.norms[i][1](h)
        return h, ae, r_ae

    def orbitals(self, x, atoms=None):
        """Orbital matrices.

        Args:
          x: (n_electrons, 3) electron positions, bohr.
          atoms: optional (n_atoms, 3) nuclear positions, bohr, as a traced input; None:
            the module's static `atoms`.
        Returns:
          full_det: [(K, n, n)]; else [(K, n_up, n_up), (K, n_down, n_down)] (empty blocks
          omitted). Row i is electron i (within its spin block), as in FermiNet.orbitals.
        """
        x = x.astype(self.dtype)
        h, ae, r_ae = self.stream(x, atoms)
        return orbital_matrices(h, ae, r_ae, self.n_up, self.orbital_dense, self.envelopes,
                                self.determinants, self.n_out, self.full_det,
                                cusp_rows(self, ae))

    def __call__(self, x, atoms=None):
        """(sign, log|ψ|) of one configuration x: (n_electrons, 3) bohr; `atoms` as in
        `orbitals` (None: the static nuclear positions)."""
        return psi_from_orbitals(self, self.orbitals(x, atoms), x)

"""KFAC statistics from a flax linen ansatz: Dense-layer inputs and output-derivatives.

Every `nn.Dense` call inside `log_psi` is intercepted (`nn.intercept_methods`): its input a
is recorded and a zero "perturbation" δ is added to its output y, so that
b = ∂log|ψ|/∂y = ∂log|ψ|/∂δ comes out of one per-walker gradient (vmapped over walkers).
FermiNet applies each Dense to many rows of one walker (electrons for `layer_i/one` and the
orbital layers, electron pairs for `layer_i/two`): S shared uses per walker.

Factors (the "expand" rule of the seed's slide / MATH.md §3, with the bias folded in as a
1 appended to a; n_w walkers, uncentred):

    A = 1/(n_w S) Σ_{walkers, uses} ã ãᵀ      (d_in + 1, d_in + 1)
    B = 1/n_w     Σ_{walkers, uses} b bᵀ      (d_out, d_out)

so that A ⊗ B matches (1/n_w) Σ_i Σ_s ã ãᵀ ⊗ b bᵀ, the same-use part of the exact block.
A kernel W (d_in, d_out) and bias (d_out,) are handled as one matrix W̃ = [W; bias]
(d_in + 1, d_out), vec'd row-major, so (A ⊗ B)⁻¹ vec W̃ = vec(A⁻¹ W̃ B⁻¹).

All other parameters (envelope π, σ; Jastrow α; anything not in an nn.Dense) get the
diagonal of the exact centred Fisher, diag(ŌᵀŌ), from per-walker gradients.

The gradient ĝ = Ōᵀε = Σ_i O_i ε_i/√n_w comes from the same pass: for a Dense layer
∂log|ψ|/∂W̃ = Σ_s ã_s b_sᵀ exactly. So does the walker mean of that per-walker gradient,

    Ḡ = 1/n_w Σ_{walkers, uses} ã bᵀ = E[G]      (d̃_in, d_out),   m = vec Ḡ,

the mean term of the centred block (`vmc.optim.kfac`, centred KFAC; MATH.md §7): with the
factors' normalisation, F's block is E[vec G vec Gᵀ] − m mᵀ exactly.

Shared rows. A `SharedRowsDense` call's input is ã_s = [l_s; u] with u = [g; 1] the same for
its R rows s (g the spin means, 1 the bias), so its sums are formed by blocks without
broadcasting u to every row (the same numbers up to float rounding):

    Σ_s ã_s ã_sᵀ = [[Σ_s l_s l_sᵀ, L uᵀ], [u Lᵀ, R u uᵀ]],   Σ_s ã_s c_sᵀ = [Σ_s l_s c_sᵀ; u Cᵀ],

L = Σ_s l_s, C = Σ_s c_s. In Li's benchmark network that is 47 M instead of 133 M
multiply-adds for each 417-wide factor A.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util

from vmc.ansatz.common import SharedRowsDense, concat_blocks

F64 = jnp.float64


class DenseLayer(NamedTuple):
    """A captured Dense layer (static). name: 'layer_0.one'; path: ('layer_0', 'one');
    out_shapes: the output shape of each call in one walker; uses: S, rows per walker."""
    name: str
    path: tuple
    d_in: int
    d_out: int
    bias: bool
    out_shapes: tuple
    uses: int


class Statistics(NamedTuple):
    """One batch's KFAC statistics (float64).

    a, b: {layer name: A (d̃_in, d̃_in), B (d_out, d_out)}; grad: ĝ in split form
    ({name: (d̃_in, d_out)}, other); diag: diag(ŌᵀŌ) of the other parameters; mean:
    {layer name: Ḡ = E[∂log|ψ|/∂W̃] (d̃_in, d_out)} over the (good) walkers; activations:
    {layer name: (ã (n_w, S, d̃_in), b (n_w, S, d_out))} per walker and use, in the network's
    dtype, zero for walkers left out (for exact projections G_i·V = Σ_s ã_sᵀ V b_s; unused,
    XLA drops them); walker_weights: (n_w,) float64, 1/n_good for the walkers that count,
    else 0.
    """
    a: dict
    b: dict
    grad: tuple
    diag: dict
    mean: dict
    activations: dict
    walker_weights: jax.Array


def _is_dense_call(context) -> bool:
    return isinstance(context.module, nn.Dense) and context.method_name == "__call__"


def _dense_input(context, args):
    """A Dense call's input a (rows, d_in): a `SharedRowsDense`'s blocks concatenated with
    their shared rows broadcast (what nn.Dense on the concatenation would have seen)."""
    if isinstance(context.module, SharedRowsDense):
        return concat_blocks(*args)
    return args[0]


def _recorded_input(context, args):
    """What the statistics pass records of a Dense call's input: a (rows, d_in), or for a
    `SharedRowsDense` the pair (l (rows, d_l), g (d_g,)) of its local rows and shared
    vector (summed by `_shared_rows_sums`)."""
    if isinstance(context.module, SharedRowsDense):
        local, shared = args
        local = jnp.concatenate(list(local), axis=-1)
        g = (jnp.concatenate(list(shared), axis=-1) if shared
             else jnp.zeros((0,), local.dtype))
        return (local, g)
    return args[0]


def _name(path) -> str:
    return ".".join(path)


def discover_layers(log_psi: Callable, params, n_electrons: int) -> tuple[DenseLayer, ...]:
    """The Dense layers `log_psi` calls for one configuration (by abstract evaluation).

    A layer called several times per walker has all its calls' rows as its S uses.
    """
    calls: dict[tuple, list] = {}

    def interceptor(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if _is_dense_call(context):
            calls.setdefault(tuple(context.module.path), []).append(
                (_dense_input(context, args).shape, out.shape))
        return out

    def run(p, x):
        with nn.intercept_methods(interceptor):
            return log_psi(p, x)

    dtype = jax.tree_util.tree_leaves(params)[0].dtype
    jax.eval_shape(run, params, jax.ShapeDtypeStruct((n_electrons, 3), dtype))
    flat = traverse_util.flatten_dict(_unfreeze(params))
    layers = []
    for path, uses in calls.items():
        key = ("params", *path)
        if key + ("kernel",) not in flat:
            continue
        d_in, d_out = flat[key + ("kernel",)].shape
        rows = sum(math.prod(s[:-1]) for s, _ in uses)
        layers.append(DenseLayer(_name(path), path, d_in, d_out, key + ("bias",) in flat,
                                 tuple(o for _, o in uses), rows))
    return tuple(layers)


def _unfreeze(params):
    return params.unfreeze() if hasattr(params, "unfreeze") else params


def split_params(layers, tree):
    """A params-shaped pytree -> (dense {name: W̃ (d̃_in, d_out)}, other flat dict)."""
    flat = traverse_util.flatten_dict(_unfreeze(tree))
    dense = {}
    for layer in layers:
        key = ("params", *layer.path)
        w = flat.pop(key + ("kernel",))
        if layer.bias:
            w = jnp.concatenate([w, flat.pop(key + ("bias",))[None, :]], axis=0)
        dense[layer.name] = w
    return dense, flat


def merge_params(layers, dense, other):
    """Inverse of `split_params`: a params-shaped nested dict."""
    flat = dict(other)
    for layer in layers:
        key = ("params", *layer.path)
        w = dense[layer.name]
        flat[key + ("kernel",)] = w[:layer.d_in]
        if layer.bias:
            flat[key + ("bias",)] = w[layer.d_in]
    return traverse_util.unflatten_dict(flat)


def _gram(x, y):
    """xᵀy over the rows, full float32 precision (no TF32), returned as float64."""
    return jnp.matmul(x.T, y, precision=jax.lax.Precision.HIGHEST).astype(F64)


def _shared_rows_sums(calls, bs, b2, bw2, w, keep, bias: bool):
    """Σ ã ãᵀ, Σ ã (w b)ᵀ and Σ ã bᵀ over walkers and rows of a `SharedRowsDense` layer, by
    the blocks of the module docstring ("Shared rows"), float64.

    Args:
      calls: per call, (l (n_w, R, d_l), g (n_w, d_g)); bs: per call, b (n_w, R, d_out),
        zero at masked walkers; b2, bw2: (n_w S, d_out) all calls' b and w·b, rows in the
        order of `calls`; w: (n_w,) float64 walker weights; keep: (n_w, 1, 1) bool.
    Returns:
      (ã (n_w, S, d̃_in) for the diagnostics (unused otherwise, so XLA drops it), the three
      sums (d̃_in, d̃_in), (d̃_in, d_out), (d̃_in, d_out)).
    """
    n_w = keep.shape[0]
    locs = [jnp.where(keep, loc, 0.0) for loc, _ in calls]
    us = []
    for _, g in calls:
        u = g if not bias else jnp.concatenate([g, jnp.ones((n_w, 1), g.dtype)], -1)
        us.append(jnp.where(keep[:, 0], u, 0.0))                       # (n_w, d_u)
    l2 = jnp.concatenate(locs, 1).reshape(-1, locs[0].shape[-1])      # (n_w S, d_l)
    u_all = jnp.concatenate(us, 0)                                    # (C n_w, d_u)
    l_sum = jnp.concatenate([jnp.sum(loc, 1) for loc in locs], 0)     # (C n_w, d_l)
    b_sum = jnp.concatenate([jnp.sum(b, 1) for b in bs], 0)           # (C n_w, d_out)
    wb = w.astype(b2.dtype)[:, None, None]
    bw_sum = jnp.concatenate([jnp.sum(b * wb, 1) for b in bs], 0)
    rows = jnp.concatenate([jnp.full((n_w, 1), loc.shape[1], u_all.dtype) for loc in locs], 0)
    lu = _gram(l_sum, u_all)
    a_sum = jnp.block([[_gram(l2, l2), lu], [lu.T, _gram(u_all * rows, u_all)]])
    g_sum = jnp.concatenate([_gram(l2, bw2), _gram(u_all, bw_sum)], 0)
    m_sum = jnp.concatenate([_gram(l2, b2), _gram(u_all, b_sum)], 0)
    a = jnp.concatenate([jnp.concatenate([loc, jnp.broadcast_to(u[:, None], loc.shape[:2]
                                                                + u.shape[-1:])], -1)
                         for loc, u in zip(locs, us)], 1)
    return a, a_sum, g_sum, m_sum


def make_statistics(log_psi: Callable, layers: tuple[DenseLayer, ...]) -> Callable:
    """`stats(params, walkers (n_w, n, 3), eps (n_w,), mask=None) -> Statistics` (jittable).

    eps: centred energies ε = (E_L − mean)/√n_w, so ĝ = Σ_i O_i ε_i/√n_w. mask: (n_w,) bool,
    the walkers that count (None: all); the others' activations and backward factors are
    zeroed before any product, and n_w becomes the number of good walkers.
    """
    names = {layer.path: layer.name for layer in layers}

    def walker_logabs(other, dense_raw, perturb, x):
        acts: dict[str, list] = {}

        def interceptor(next_fun, args, kwargs, context):
            out = next_fun(*args, **kwargs)
            name = names.get(tuple(context.module.path)) if _is_dense_call(context) else None
            if name is None:
                return out
            uses = acts.setdefault(name, [])
            uses.append(_recorded_input(context, args))
            return out + perturb[name][len(uses) - 1]

        p = traverse_util.unflatten_dict({**dense_raw, **other})
        with nn.intercept_methods(interceptor):
            _, logabs = log_psi(p, x)
        return logabs, acts

    grad_fn = jax.vmap(jax.grad(walker_logabs, argnums=(0, 2), has_aux=True),
                       in_axes=(None, None, None, 0))

    def stats(params, walkers, eps, mask=None):
        flat = traverse_util.flatten_dict(_unfreeze(params))
        dense_keys = {("params", *ly.path, k) for ly in layers for k in ("kernel", "bias")}
        dense_raw = {k: v for k, v in flat.items() if k in dense_keys}
        other = {k: v for k, v in flat.items() if k not in dense_keys}
        dtype = jax.tree_util.tree_leaves(params)[0].dtype
        perturb = {ly.name: [jnp.zeros(s, dtype) for s in ly.out_shapes] for ly in layers}
        (o_other, b_raw), acts = grad_fn(other, dense_raw, perturb, walkers)
        n_w = walkers.shape[0]
        mask = jnp.ones((n_w,), bool) if mask is None else mask
        keep = mask[:, None, None]
        n_g = jnp.maximum(jnp.sum(mask), 1).astype(F64)
        w = jnp.where(mask, eps.astype(F64), 0.0) / jnp.sqrt(n_g)
        fa, fb, g_dense, g_mean, acts_out = {}, {}, {}, {}, {}
        for layer in layers:
            calls = acts[layer.name]
            bs = [jnp.where(keep, x.reshape(n_w, -1, layer.d_out), 0.0)
                  for x in b_raw[layer.name]]
            b = jnp.concatenate(bs, 1)
            b2 = b.reshape(-1, b.shape[-1])
            bw = (b * w.astype(b.dtype)[:, None, None]).reshape(b2.shape)
            fb[layer.name] = _gram(b2, b2) / n_g
            if isinstance(calls[0], tuple):          # SharedRowsDense: by blocks
                a, fa_sum, g_sum, m_sum = _shared_rows_sums(calls, bs, b2, bw, w, keep,
                                                            layer.bias)
                fa[layer.name] = fa_sum / (n_g * layer.uses)
                g_dense[layer.name], g_mean[layer.name] = g_sum, m_sum / n_g
            else:
                a = jnp.concatenate([x.reshape(n_w, -1, layer.d_in) for x in calls], 1)
                a = jnp.where(keep, a, 0.0)
                if layer.bias:
                    ones = jnp.where(keep, jnp.ones(a.shape[:-1] + (1,), a.dtype), 0.0)
                    a = jnp.concatenate([a, ones], -1)
                a2 = a.reshape(-1, a.shape[-1])
                fa[layer.name] = _gram(a2, a2) / (n_g * layer.uses)
                g_dense[layer.name] = _gram(a2, bw)
                g_mean[layer.name] = _gram(a2, b2) / n_g
            acts_out[layer.name] = (a, b)
        g_other, diag = {}, {}
        for k, o in o_other.items():
            m = mask.reshape((n_w,) + (1,) * (o.ndim - 1))
            o = jnp.where(m, o.astype(F64), 0.0)
            g_other[k] = jnp.tensordot(w, o, axes=1)
            mean = jnp.sum(o, axis=0) / n_g
            diag[k] = jnp.sum(jnp.where(m, (o - mean) ** 2, 0.0), axis=0) / n_g
        return Statistics(fa, fb, (g_dense, g_other), diag, g_mean, acts_out,
                          jnp.where(mask, 1.0 / n_g, 0.0))

    return stats

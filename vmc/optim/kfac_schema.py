"""The KFAC state as checkpoints of schema ≤ 2 hold it, and its conversion.

Schema ≤ 2 stored the damped factors' explicit inverses (`a_inv`, `b_inv`); schema 3 stores
their lower Cholesky factors (`KfacState.a_chol`, `b_chol`; issue #13). A checkpoint's
dataset names follow the NamedTuple's field names, so an old checkpoint is read with
`schema2_layout`'s template and converted by `from_schema2`: L = chol((A_λ⁻¹)⁻¹), the same
preconditioner up to float64 rounding (a resumed run is not bit-identical to one that
never stopped across the upgrade).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from vmc.optim.kfac import KfacState

F64 = jnp.float64


class KfacStateSchema2(NamedTuple):
    """`KfacState` with schema 2's field names: a_inv, b_inv {layer: damped inverse}."""
    count: jax.Array
    a: dict
    b: dict
    a_inv: dict
    b_inv: dict
    diag: dict
    diag_inv: dict
    mean: dict
    mean_inv: dict
    weight: dict
    denominator: dict
    fallbacks: jax.Array


def schema2_layout(opt_state):
    """The template to read a schema ≤ 2 checkpoint's optimizer state with: a KfacState
    becomes a `KfacStateSchema2` of the same shapes; any other state is returned as is."""
    if isinstance(opt_state, KfacState):
        return KfacStateSchema2(*opt_state)
    return opt_state


def _chol_of_inverse(inv):
    """Lower Cholesky factor of M from M⁻¹ (n, n) SPD float64: M = (M⁻¹)⁻¹."""
    inv = jnp.asarray(inv, F64)
    c = jax.scipy.linalg.cho_factor(0.5 * (inv + inv.T), lower=True)
    m = jax.scipy.linalg.cho_solve(c, jnp.eye(inv.shape[0], dtype=F64))
    return jnp.linalg.cholesky(0.5 * (m + m.T))


def from_schema2(opt_state):
    """A restored schema-2 optimizer state in this version's layout (`KfacState` with
    Cholesky factors); any other state is returned as is."""
    if not isinstance(opt_state, KfacStateSchema2):
        return opt_state
    fields = opt_state._asdict()
    a_inv, b_inv = fields.pop("a_inv"), fields.pop("b_inv")
    return KfacState(a_chol={k: _chol_of_inverse(v) for k, v in a_inv.items()},
                     b_chol={k: _chol_of_inverse(v) for k, v in b_inv.items()}, **fields)

"""The KFAC state as checkpoints of schema ≤ 2 hold it, and its conversion.

Schema ≤ 2 stored the damped factors' explicit inverses (`a_inv`, `b_inv`); schema 3 stores
their lower Cholesky factors (`KfacState.a_chol`, `b_chol`; issue #13). A checkpoint's
dataset names follow the NamedTuple's field names, so an old checkpoint is read with
`schema2_layout`'s template and converted by `from_schema2`: L = chol((A_λ⁻¹)⁻¹), the same
preconditioner up to float64 rounding (a resumed run is not bit-identical to one that
never stopped across the upgrade).
"""

from __future__ import annotations

from collections import namedtuple

import jax.numpy as jnp

from vmc.optim.kfac import KfacState, cholesky_inverse, spd_cholesky

_RENAMED = {"a_chol": "a_inv", "b_chol": "b_inv"}

# `KfacState` with schema 2's field names: a_inv, b_inv {layer: damped inverse}; derived
# from KfacState's fields, so the two stay in the same order
KfacStateSchema2 = namedtuple("KfacStateSchema2",
                              [_RENAMED.get(f, f) for f in KfacState._fields])


def schema2_layout(opt_state):
    """The template to read a schema ≤ 2 checkpoint's optimizer state with: a KfacState
    becomes a `KfacStateSchema2` of the same shapes; any other state is returned as is."""
    if isinstance(opt_state, KfacState):
        return KfacStateSchema2(*opt_state)
    return opt_state


def _chol_of_inverse(inv):
    """Lower Cholesky factor of M from M⁻¹ (n, n) SPD float64: M = (M⁻¹)⁻¹."""
    return spd_cholesky(cholesky_inverse(spd_cholesky(jnp.asarray(inv, jnp.float64))))


def from_schema2(opt_state):
    """A restored schema-2 optimizer state in this version's layout (`KfacState` with
    Cholesky factors); any other state is returned as is."""
    if not isinstance(opt_state, KfacStateSchema2):
        return opt_state
    fields = opt_state._asdict()
    a_inv, b_inv = fields.pop("a_inv"), fields.pop("b_inv")
    return KfacState(a_chol={k: _chol_of_inverse(v) for k, v in a_inv.items()},
                     b_chol={k: _chol_of_inverse(v) for k, v in b_inv.items()}, **fields)

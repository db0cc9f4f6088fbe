"""Metropolis walkers sampling |ψ|² (MATH.md §4).

All-electron Gaussian proposals x' = x + σ ξ, accepted with min(1, |ψ(x')|²/|ψ(x)|²). The
proposal width σ adapts after every step, log σ += rate·(pmove − target), so the acceptance
stays near the target (0.5 by default).
"""

from __future__ import annotations

from typing import Callable

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from vmc.parallel import shard_walkers
from vmc.system import Molecule


@flax.struct.dataclass
class MCMCState:
    """Sampler state (a pytree).

    walkers: (n_walkers, n_electrons, 3) bohr; logabs: (n_walkers,) log|ψ| at the walkers for
    the parameters they were last moved with; width: () proposal width, bohr.
    """
    walkers: jax.Array
    logabs: jax.Array
    width: jax.Array


def electron_assignment(molecule: Molecule) -> tuple[np.ndarray, np.ndarray]:
    """Which atom each spin-up and spin-down electron starts at.

    Neutral atoms get Z electrons; a cation's electrons are taken from the atoms holding the
    most, an anion's added to the highest Z. Each atom's electrons alternate up/down, then
    whole electrons are flipped at atoms with a surplus until the totals are n_up and n_down.
    Every loop runs a bounded number of times.

    Returns:
      (atom index of each spin-up electron (n_up,), of each spin-down electron (n_down,)).
    """
    counts = np.asarray(molecule.charges, int).copy()
    order_z = np.argsort(-molecule.charges, kind="stable")
    for _ in range(max(molecule.charge, 0)):          # cation: remove from the fullest atom
        counts[int(np.argmax(counts))] -= 1
    for i in range(max(-molecule.charge, 0)):          # anion: add to the heaviest atoms
        counts[order_z[i % len(order_z)]] += 1
    up = (counts + 1) // 2
    down = counts // 2
    # Balance spins: move electrons between channels at atoms where that keeps counts valid.
    for _ in range(int(counts.sum()) + 1):
        diff = int(up.sum()) - molecule.n_up
        if diff == 0:
            break
        if diff > 0:
            i = int(np.argmax(np.where(up > 0, up - down, np.iinfo(int).min)))
            up[i] -= 1
            down[i] += 1
        else:
            i = int(np.argmax(np.where(down > 0, down - up, np.iinfo(int).min)))
            down[i] -= 1
            up[i] += 1
    assert up.sum() == molecule.n_up and down.sum() == molecule.n_down
    return (np.repeat(np.arange(len(counts)), up), np.repeat(np.arange(len(counts)), down))


def init_walkers(key, molecule: Molecule, n_walkers: int, spread: float = 1.0,
                 dtype=jnp.float32) -> jax.Array:
    """Walkers placed around the nuclei with the right spins per atom.

    Args:
      key: PRNG key; molecule: the Molecule; n_walkers: number of walkers.
      spread: Gaussian spread around each nucleus, bohr.
    Returns:
      (n_walkers, n_electrons, 3) bohr, spin-up electrons first.
    """
    up, down = electron_assignment(molecule)
    centres = jnp.asarray(molecule.positions[np.concatenate([up, down])], dtype)
    noise = jax.random.normal(key, (n_walkers, molecule.n_electrons, 3), dtype)
    return centres[None] + spread * noise


def make_moves(log_psi: Callable) -> Callable:
    """Metropolis moves from a known log|ψ| (no refresh), a traced number of them.

    Args:
      log_psi: (params, x (n_electrons, 3)) -> (sign, logabs) for one configuration.
    Returns:
      moves(params, x (n_w, n, 3), logabs (n_w,), width (), key, n) -> (x, logabs,
      accepted): `n` (an int, may be traced; 0 allowed) all-electron moves x' = x + width·ξ,
      each accepted with min(1, |ψ(x')|²/|ψ(x)|²); accepted: () float32, the sum over the
      moves of the accepted share. A non-finite proposal is never accepted; a walker whose
      own log|ψ| is not finite takes any finite proposal, so it cannot stay stuck.
    """
    batched_logabs = jax.vmap(lambda p, x: log_psi(p, x)[1], in_axes=(None, 0))

    def moves(params, x, logabs, width, key, n):
        def one(i, carry):
            x, logabs, accepted = carry
            k_prop, k_acc = jax.random.split(jax.random.fold_in(key, i))
            proposal = x + width * jax.random.normal(k_prop, x.shape, x.dtype)
            logabs_new = batched_logabs(params, proposal)
            log_ratio = 2.0 * (logabs_new - logabs)
            u = jax.random.uniform(k_acc, logabs.shape, x.dtype)
            accept = jnp.isfinite(logabs_new) & ((jnp.log(u) < log_ratio)
                                                 | ~jnp.isfinite(logabs))
            x = jnp.where(accept[:, None, None], proposal, x)
            logabs = jnp.where(accept, logabs_new, logabs)
            return x, logabs, accepted + jnp.mean(accept.astype(jnp.float32))
        return jax.lax.fori_loop(0, n, one, (x, logabs, jnp.zeros((), jnp.float32)))

    return moves


def adapt_width(width, pmove, target_pmove: float, adapt_rate: float):
    """log σ += rate·(pmove − target): the proposal width after a step, bohr."""
    return width * jnp.exp(adapt_rate * (pmove - target_pmove)).astype(width.dtype)


def make_sampler(log_psi: Callable, moves: int, target_pmove: float = 0.5,
                 adapt_rate: float = 1.0):
    """Build the batched sampler functions.

    Args:
      log_psi: (params, x (n_electrons, 3)) -> (sign, logabs) for one configuration.
      moves: Metropolis moves per call of `step`.
    Returns:
      (init_state(params, walkers, width) -> MCMCState,
       step(params, state, key) -> (state, pmove)) — `step` first refreshes log|ψ| for the
       current parameters, makes `moves` all-electron moves, then adapts the width.
    """
    batched_logabs = jax.vmap(lambda p, x: log_psi(p, x)[1], in_axes=(None, 0))

    jit_logabs = jax.jit(batched_logabs)   # (eager, the network would run op by op)

    def init_state(params, walkers, width):
        walkers = shard_walkers(jnp.asarray(walkers))   # split over devices (vmc.parallel)
        return MCMCState(walkers, jit_logabs(params, walkers),
                         jnp.asarray(width, walkers.dtype))

    run_moves = make_moves(log_psi)

    def step(params, state: MCMCState, key):
        logabs = batched_logabs(params, state.walkers)
        x, logabs, accepted = run_moves(params, state.walkers, logabs, state.width, key, moves)
        pmove = accepted / moves
        return MCMCState(x, logabs, adapt_width(state.width, pmove, target_pmove,
                                                adapt_rate)), pmove

    return init_state, step

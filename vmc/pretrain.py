"""Hartree–Fock pretraining: fit the network's orbitals to the occupied HF orbitals (MATH.md §5).

Loss (FermiNet's pretraining loss, Pfau et al. 2020), for walkers x_w:

    L = mean_w Σ_k Σ_b ‖M^net_{bk}(x_w) − M^HF_b(x_w)‖²_F

over the K determinants k and the orbital blocks b the ansatz returns:

* block determinants: the spin-up block (n_up × n_up) targets φ^HF_up,j(r_i) for the up
  electrons, the spin-down block (n_down × n_down) φ^HF_down,j(r_i) for the down electrons;
  both blocks are fitted, also when n_up ≠ n_down (an empty block is skipped).
* full determinants: the n × n matrix targets the block-diagonal matrix
  [[Φ_up(x_up), 0], [0, Φ_down(x_down)]]: up electrons × the first n_up columns hold the up
  HF orbitals, down electrons × the last n_down columns the down HF orbitals, and the
  off-diagonal spin blocks are fitted to ZERO (as in FermiNet).

Every determinant k is fitted to the same target. Each step makes `pretrain.moves`
Metropolis moves (default 1, as FermiNet's pretraining), split between |ψ_net|² and |ψ_HF|²:
step t makes ⌊(m + [t even])/2⌋ under the network and the rest under Hartree–Fock (m = 1:
the network on even steps, HF on odd ones), one shared adaptive width, so the fit covers the
regions both densities visit (`pretrain.sampling: hf` moves every walker under |ψ_HF|²
only, as FermiNet's default `scf_fraction` 1 does: cheaper, but a worse start where HF puts
little density; README "Pretraining"); the walkers are kept and VMC burn-in starts from them. The
network's moves start from the log|ψ| of the loss's own forward pass (the orbitals and
log|ψ| come from one pass, `Ansatz.orbitals_and_log_psi`), so they cost one network
evaluation per move and no refresh; the HF moves refresh log|ψ_HF| (cheap). The Adam update
comes after the moves, which are therefore exact moves under |ψ_net(θ_t)|².

`pretrain` is the host loop (progress bar, train.h5 group "pretrain" with rows {step, loss});
`make_pretrain_block` builds the pure jit-compiled block of steps.
"""

from __future__ import annotations

import math
import pathlib
import sys
import time
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from vmc import parallel
from vmc.sampler import MCMCState, adapt_width, make_moves, make_sampler

GROUP = "pretrain"
SYNC_EVERY = 50    # pretraining steps per compiled block (even), between reads of the loss


class PretrainState(NamedTuple):
    """Pretraining state (a pytree): network params, Adam state, walkers."""
    params: object
    opt_state: object
    mcmc: MCMCState


def hf_targets(hf, x, n_up: int, mats_shapes) -> list:
    """HF target matrices matching the network's orbital blocks.

    Args:
      hf: `vmc.hf.HartreeFock`.
      x: (n, 3) electrons, bohr, spin up first.
      n_up: number of spin-up electrons.
      mats_shapes: shapes of the network's orbital blocks, [(K, m_b, m_b)].
    Returns:
      list of (m_b, m_b) targets: one block-diagonal n × n matrix (full determinant; the
      off-diagonal spin blocks are zero) or the up and down blocks (empty ones omitted).
    Raises:
      ValueError: blocks that fit neither layout.
    """
    from vmc.hf import eval_orbitals

    n = x.shape[0]
    up, down = eval_orbitals(hf, x)
    up, down = up[:n_up], down[n_up:]                      # (n_up, n_up), (n_down, n_down)
    sizes = [s[-1] for s in mats_shapes]
    if len(sizes) == 1 and sizes[0] == n:
        n_down = n - n_up
        top = jnp.concatenate([up, jnp.zeros((n_up, n_down), up.dtype)], axis=1)
        bottom = jnp.concatenate([jnp.zeros((n_down, n_up), up.dtype), down], axis=1)
        return [jnp.concatenate([top, bottom], axis=0)]
    blocks = [m for m in (up, down) if m.shape[0] > 0]
    if sizes != [m.shape[0] for m in blocks]:
        raise ValueError(f"pretraining: orbital blocks of sizes {sizes} fit neither a full "
                         f"{n}x{n} determinant nor spin blocks {[m.shape[0] for m in blocks]}")
    return blocks


def pretrain_loss(orbitals: Callable, hf, n_up: int, params, walkers) -> jax.Array:
    """mean over walkers of Σ_k Σ_b ‖M^net_bk − M^HF_b‖²_F (see the module docstring).

    Args:
      orbitals: (params, x (n, 3)) -> list of (K, m_b, m_b) (`Ansatz.orbitals`).
      walkers: (n_walkers, n, 3) bohr.
    """
    return _loss_and_logabs(lambda p, x: (orbitals(p, x), None), hf, n_up, params, walkers)[0]


def _loss_and_logabs(orbitals_and_log_psi: Callable, hf, n_up: int, params, walkers):
    """(pretraining loss, (n_walkers,) log|ψ_net| or None) from one forward pass."""
    def one(x):
        mats, psi = orbitals_and_log_psi(params, x)
        targets = hf_targets(hf, x.astype(mats[0].dtype), n_up, [m.shape for m in mats])
        loss = sum(jnp.sum((m - t[None]) ** 2) for m, t in zip(mats, targets))
        return loss, None if psi is None else psi[1]

    losses, logabs = jax.vmap(one)(walkers)
    return jnp.mean(losses), logabs


def make_pretrain_block(setup, hf, lr: float):
    """The jit-compiled pretraining block and the Adam transformation.

    One block is n consecutive steps in one `lax.scan` over (even, odd) pairs: one dispatch
    and no host work between its steps (Li benchmark network, 2 cores: see README
    "Pretraining"). Step t uses fold_in(key, t) and
    does, in order: the loss, its gradient and log|ψ_net| at the walkers from one forward
    pass; m = pretrain.moves Metropolis moves, ⌊(m + [t even])/2⌋ under |ψ_net|² with the
    current parameters (none with `pretrain.sampling: hf`), the rest under |ψ_HF|² (each
    parity's split is static, so a step with
    no network move takes the loss without log|ψ| and one with no HF move evaluates no HF
    log|ψ|); the width adapted to the step's acceptance; one Adam step, with non-finite
    gradient entries taken as 0 (parameters stay finite).

    Returns:
      (tx, block) with `block(state: PretrainState, key, t0, n) -> (state, losses (n,),
      pmove)`: steps t0, ..., t0 + n − 1, t0 even (traced), n ≥ 1 static (each n compiles
      once); losses[i] is step t0 + i's loss at the walkers it started from, pmove the
      last step's acceptance.
    """
    from vmc.hf import hf_log_psi

    s = setup.cfg.sampler
    m = int(setup.cfg.pretrain.moves)
    hf_only = setup.cfg.pretrain.sampling == "hf"
    n_even, n_odd = (0, 0) if hf_only else ((m + 1) // 2, m // 2)    # network moves per parity
    net_moves = make_moves(setup.ansatz.log_psi)
    hf_fn = lambda p, x: hf_log_psi(hf, x)  # noqa: E731
    hf_moves = make_moves(hf_fn)
    hf_logabs = jax.vmap(lambda x: hf_fn(None, x)[1])
    tx = optax.adam(lr)
    n_up = setup.molecule.n_up

    def one_step(state: PretrainState, key, n_net: int):
        k_net, k_hf = jax.random.split(key)
        x, width = state.mcmc.walkers, state.mcmc.width
        accepted = jnp.zeros((), jnp.float32)
        if n_net > 0:
            (loss, logabs), grad = jax.value_and_grad(
                lambda q: _loss_and_logabs(setup.ansatz.orbitals_and_log_psi, hf, n_up, q, x),
                has_aux=True)(state.params)
            x, _, acc = net_moves(state.params, x, logabs.astype(x.dtype), width, k_net, n_net)
            accepted = accepted + acc
        else:
            loss, grad = jax.value_and_grad(
                lambda q: pretrain_loss(setup.ansatz.orbitals, hf, n_up, q, x))(state.params)
        if m - n_net > 0:
            x, _, acc = hf_moves(None, x, hf_logabs(x).astype(x.dtype), width, k_hf, m - n_net)
            accepted = accepted + acc
        pmove = accepted / m
        # a numerical fault must not reach the parameters: non-finite gradient entries count
        # as 0 (one elementwise select, fused into Adam's; a NaN walker makes the whole
        # gradient NaN, so the step then only decays Adam's moments). `pretrain` counts the
        # steps with a non-finite loss.
        grad = jax.tree_util.tree_map(lambda g: jnp.where(jnp.isfinite(g), g, 0), grad)
        updates, opt_state = tx.update(grad, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        # log|ψ| is left stale (the walkers' values under HF or old params): `pretrain`
        # refreshes it for the network once at the end
        mcmc = MCMCState(x, state.mcmc.logabs,
                         adapt_width(width, pmove, s.target_pmove, s.adapt_rate))
        return PretrainState(params, opt_state, mcmc), loss, pmove

    def block(state: PretrainState, key, t0, n: int):
        def pair(state, t):
            state, loss_even, _ = one_step(state, jax.random.fold_in(key, t), n_even)
            state, loss_odd, pmove = one_step(state, jax.random.fold_in(key, t + 1), n_odd)
            return state, (jnp.stack([loss_even, loss_odd]), pmove)
        state, (losses, pmoves) = jax.lax.scan(pair, state, t0 + 2 * jnp.arange(n // 2))
        losses, pmove = losses.reshape(-1), pmoves[-1] if n >= 2 else None
        if n % 2:   # a last even step
            state, loss, pmove = one_step(state, jax.random.fold_in(key, t0 + n - 1), n_even)
            losses = jnp.concatenate([losses, loss[None]])
        return state, losses, pmove

    return tx, jax.jit(block, static_argnums=3)


def _progress(cfg, total: int):
    if not getattr(cfg.run, "progress", True) or not sys.stderr.isatty():
        return None
    from tqdm import tqdm
    return tqdm(total=total, desc="pretrain", leave=False, dynamic_ncols=True, file=sys.stderr)


def pretrain(setup, state, key, run_dir, log: Callable = print):
    """Fit the ansatz's orbitals to Hartree–Fock for `cfg.pretrain.steps` Adam steps.

    Args:
      setup: `vmc.train.Setup`; the HF result is `setup.hf`, or run here with
        `cfg.pretrain.basis` and `cfg.pretrain.method`.
      state: `vmc.train.TrainState` (initial params and walkers).
      key: PRNG key; step t uses fold_in(key, t).
      run_dir: run folder; the loss per step goes to train.h5, group "pretrain".
      log: one-line logger.
    Returns:
      TrainState with the pretrained params, the pretraining walkers (log|ψ| refreshed for
      the network) and a fresh optimizer state `setup.optimizer.init(params)`.
    """
    cfg = setup.cfg
    steps = int(cfg.pretrain.steps)
    hf = setup.hf
    t0 = time.time()
    if hf is None:
        from vmc.hf import run_hf
        hf = run_hf(setup.molecule, cfg.pretrain.basis, cfg.pretrain.method)
        log(f"pretrain: {hf.method.upper()}/{hf.basis} energy {hf.energy:.6f} Ha "
            f"({time.time() - t0:.1f} s); {steps} steps")
    else:   # computed (and its energy logged) by the run's input checks
        log(f"pretrain: fitting the {hf.method.upper()}/{hf.basis} orbitals; {steps} steps")
    tx, block = make_pretrain_block(setup, hf, cfg.pretrain.lr)
    pstate = PretrainState(state.params, tx.init(state.params), state.mcmc)
    writer = parallel.stats_writer(pathlib.Path(run_dir) / "train.h5", group=GROUP,
                                   flush_every=100)
    bar = _progress(cfg, steps) if parallel.is_writer() else None
    t0 = time.time()
    first = loss = pmove = float("nan")
    nonfinite = 0
    try:
        for start in range(0, steps, SYNC_EVERY):   # one host read of the losses per block
            n = min(SYNC_EVERY, steps - start)      # (a shorter last block compiles anew)
            pstate, losses, pmove_b = block(pstate, key, start, n)
            values = [float(v) for v in jax.device_get(losses)]
            nonfinite += sum(1 for v in values if not math.isfinite(v))
            for i, v in enumerate(values):
                writer.append({"step": start + i, "loss": v})
            first = values[0] if start == 0 else first
            loss = values[-1]
            if bar is not None:
                bar.update(len(values))
                bar.set_postfix(loss=f"{loss:.3g}", refresh=False)
        pmove = float(pmove_b) if steps else pmove
    finally:
        writer.close()
        if bar is not None:
            bar.close()
    log(f"pretrain: {steps} steps in {time.time() - t0:.1f} s, loss {first:.4g} -> {loss:.4g}, "
        f"pmove {pmove:.3f}")
    if nonfinite:
        log(f"pretrain: warning: {nonfinite} of {steps} steps had a non-finite loss (their "
            f"non-finite gradient entries were taken as 0)")
    # replicated parameters must not drift apart in the last bits: process 0's everywhere
    params = pstate.params
    if jax.process_count() > 1:
        params = parallel.replicate(parallel.broadcast_from_writer(parallel.to_host(params)))
    init_mcmc, _ = make_sampler(setup.ansatz.log_psi, cfg.sampler.moves)
    mcmc = init_mcmc(params, pstate.mcmc.walkers, pstate.mcmc.width)
    return state._replace(params=params, opt_state=setup.optimizer.init(params), mcmc=mcmc)

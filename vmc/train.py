"""Building a run's pieces and the jit-compiled VMC step.

`build(cfg)` makes the molecule, ansatz, local energy, sampler and optimizer once;
`make_train_step(setup)` returns ONE pure function

    step(state: TrainState, key, t) -> (TrainState, StepStats)

with no device axis in its API: walkers may carry a sharding along their first axis and every
mean is global. The host loop (vmc.loop) owns logging, files and the NaN policy.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

from vmc.ansatz import Ansatz, count_params, make_ansatz
from vmc.hamiltonian import (make_local_energy, over_walkers, resolve_chunk,
                             with_float64_rescue)
from vmc.optim import Optimizer, make_optimizer
from vmc.sampler import MCMCState, init_walkers, make_sampler
from vmc.system import Molecule


ECP_STREAM = 0x0EC9   # fold_in index of the ECP rotations' key in a step's key


class TrainState(NamedTuple):
    """Everything that changes during training (a pytree)."""
    params: Any
    opt_state: Any
    mcmc: MCMCState


class StepStats(NamedTuple):
    """Per-step scalars: energies in hartree (float64), width in bohr."""
    energy: jax.Array          # unclipped mean E_L
    variance: jax.Array        # variance of E_L over walkers, Ha²
    median: jax.Array
    pmove: jax.Array
    width: jax.Array
    lr: jax.Array
    update_norm: jax.Array
    constraint_scale: jax.Array
    clip_fraction: jax.Array
    iterations: jax.Array
    residual: jax.Array
    bad_walkers: jax.Array     # walkers left out: non-finite E_L or log|ψ| (float64 count)
    # the optimizer's diagnostics (vmc.optim.sr.OptStats): centred-KFAC fall-backs, cosines to
    # the exact SR direction (optim.kfac_cosines; NaN when not measured), the damping λ of F + λI
    # (sample, dense, cg, nystrom-cg, kfac-cg; NaN for kfac, adam, spring)
    fallbacks: jax.Array = 0.0
    cosine_uncentred: jax.Array = float("nan")
    cosine_centred: jax.Array = float("nan")
    cosine_applied: jax.Array = float("nan")
    damping: jax.Array = float("nan")


@dataclasses.dataclass(frozen=True)
class Setup:
    """The static pieces of a run, built once from the config."""
    cfg: Any
    molecule: Molecule
    ansatz: Ansatz
    local_energy: Callable       # (params, x) -> E_L, one configuration
    optimizer: Optimizer
    dtype: Any
    hf: Any = None
    # (params64, x, key=None) -> E_L of the same network built in float64: the float64
    # rescue of the walkers nearest a node (hamiltonian.f64_rescue); None: off
    local_energy64: Optional[Callable] = None

    @property
    def batched_local_energy(self) -> Callable:
        """(params, walkers (n_w, n, 3), key=None) -> (n_w,) E_L, hartree; in chunks of
        `chunk_walkers` walkers per device (`vmc.hamiltonian.over_walkers`).
        `key` (see `ecp_key`) draws the ECP quadrature rotations; all-electron runs ignore it.
        Training uses it as is (its E_L are clipped); see `eval_local_energy`."""
        return over_walkers(self.local_energy, self.chunk_walkers, jax.device_count())

    @property
    def chunk_walkers(self) -> Optional[int]:
        """Walkers per device whose E_L is evaluated at once (None: all):
        `hamiltonian.chunk_walkers`, or when that is null the platform's and size's choice
        (`vmc.hamiltonian.resolve_chunk`)."""
        return resolve_chunk(self.cfg.hamiltonian.chunk_walkers, self.cfg.ansatz.name,
                             self.molecule.n_electrons, jax.default_backend())

    @property
    def eval_local_energy(self) -> Callable:
        """`batched_local_energy` with the `hamiltonian.f64_rescue` walkers per device nearest
        a node of ψ recomputed in float64 (`vmc.hamiltonian.with_float64_rescue`): the E_L
        of the evaluation, whose unclipped mean is the run's result."""
        h = self.cfg.hamiltonian
        if self.local_energy64 is None:
            return self.batched_local_energy
        one = make_local_energy(self.ansatz.log_psi, self.molecule, h.laplacian, self.dtype,
                                h.ecp_rule, with_grad2=True)   # (E_L, |∇ log|ψ||²)
        scored = over_walkers(one, self.chunk_walkers, jax.device_count())
        return with_float64_rescue(scored, self.local_energy64, h.f64_rescue,
                                   jax.device_count())

    def ecp_key(self, key):
        """The key of a step's ECP rotations: a stream of the step's key apart from the
        sampler's (all-electron runs draw exactly what they drew before), None without ECP."""
        if not self.molecule.has_ecp:
            return None
        return jax.random.fold_in(key, ECP_STREAM)


def build(cfg, hf=None) -> Setup:
    """Build molecule, ansatz, local energy and optimizer from a resolved `Config`.

    Raises:
      InputError: invalid molecule or unavailable solver.
    """
    molecule = cfg.build_molecule()
    dtype = jnp.float64 if cfg.run.x64 else jnp.float32
    if cfg.ansatz.name == "hf" and hf is None:
        from vmc.hf import run_hf
        hf = run_hf(molecule, cfg.pretrain.basis, cfg.pretrain.method)
    ansatz = make_ansatz(cfg.ansatz, molecule, dtype, hf=hf)
    h = cfg.hamiltonian
    local_energy = make_local_energy(ansatz.log_psi, molecule, h.laplacian, dtype, h.ecp_rule)
    local64 = None
    if h.f64_rescue > 0 and dtype != jnp.float64 and jax.config.jax_enable_x64:
        # the same network in float64 for the walkers nearest a node (with_float64_rescue)
        ansatz64 = make_ansatz(cfg.ansatz, molecule, jnp.float64, hf=hf)
        local64 = make_local_energy(ansatz64.log_psi, molecule, h.laplacian, jnp.float64,
                                    h.ecp_rule)
    optimizer = make_optimizer(cfg.optim, ansatz.log_psi, **_optimizer_extras(cfg, ansatz))
    return Setup(cfg, molecule, ansatz, local_energy, optimizer, dtype, hf, local64)


def _optimizer_extras(cfg, ansatz) -> dict:
    """Extra arguments some solvers need (the flax module for KFAC's layer capture)."""
    if cfg.optim.solver in ("kfac", "kfac-cg"):
        return {"module": ansatz.module}
    return {}


def init_state(setup: Setup, key) -> TrainState:
    """Initial parameters, optimizer state and walkers from one key."""
    k_params, k_walkers = jax.random.split(key)
    cfg = setup.cfg
    params = jax.jit(setup.ansatz.init)(k_params)   # eager init runs op by op
    walkers = init_walkers(k_walkers, setup.molecule, cfg.sampler.walkers,
                           cfg.sampler.init_width, setup.dtype)
    init_mcmc, _ = make_sampler(setup.ansatz.log_psi, cfg.sampler.moves)
    mcmc = init_mcmc(params, walkers, cfg.sampler.width)
    return TrainState(params, setup.optimizer.init(params), mcmc)


def make_burn_in_step(setup: Setup) -> Callable:
    """jit-compiled `(params, mcmc, key) -> (mcmc, pmove)`: Metropolis moves, fixed params."""
    s = setup.cfg.sampler
    _, step = make_sampler(setup.ansatz.log_psi, s.moves, s.target_pmove, s.adapt_rate)
    return jax.jit(step)


def screen_walkers(batched_logabs: Callable, params, mcmc: MCMCState, previous, e_l):
    """Find the bad walkers and put each back at its last finite position.

    A walker is bad when its E_L or log|ψ| is not finite. Masking a value after the fact does
    not work (0·NaN is NaN inside jvp, vjp, Gram products and KFAC factors), so a bad
    walker's configuration is replaced by `previous` (its position before this step's moves,
    where E_L was finite at the last step) before any product is formed, and its E_L by 0;
    the optimizer then leaves it out through the mask.

    Args:
      batched_logabs: (params, walkers) -> (n_w,) log|ψ|.
      mcmc: the state after this step's moves; previous: (n_w, n_electrons, 3) bohr.
      e_l: (n_w,) local energies at mcmc.walkers, hartree.
    Returns:
      (mcmc with bad walkers replaced (a log|ψ| still non-finite is stored as a large
      negative number, so the next move accepts any finite proposal), e_l with 0 at bad
      walkers, good (n_w,) bool).
    """
    good = jnp.isfinite(e_l) & jnp.isfinite(mcmc.logabs)
    walkers = jnp.where(good[:, None, None], mcmc.walkers, previous)
    logabs = jax.lax.cond(jnp.all(good), lambda: mcmc.logabs,
                          lambda: jnp.where(good, mcmc.logabs, batched_logabs(params, walkers)))
    floor = jnp.asarray(-1e30, logabs.dtype)
    logabs = jnp.where(jnp.isfinite(logabs), logabs, floor)
    return (MCMCState(walkers, logabs, mcmc.width), jnp.where(good, e_l, 0.0), good)


def step_accepted(energy, update_norm, bad_walkers, n_walkers: int, max_bad_walkers: float):
    """Whether a step's result is kept: finite energy and update, and at most
    `max_bad_walkers` (a fraction) of the `n_walkers` walkers left out. Works on device
    arrays (inside the jitted step) and on host floats (vmc.loop) alike, with the same
    float64 comparison."""
    return ((energy == energy) & (abs(energy) < float("inf"))
            & (update_norm == update_norm) & (abs(update_norm) < float("inf"))
            & (bad_walkers <= max_bad_walkers * n_walkers))


def make_train_step(setup: Setup, max_bad_walkers: Optional[float] = None) -> Callable:
    """The jit-compiled VMC step `(state, key, t, poison=0) -> (state, StepStats)`.

    Sampling (`sampler.moves` Metropolis moves with the current parameters), local energies,
    bad walkers screened out (`screen_walkers`), then one optimizer update on the good ones;
    the proposal width adapts towards `sampler.target_pmove`. Energy, variance and median are
    over the good walkers. `poison` (test-only fault injection, vmc.loop) makes the E_L of
    the first `poison` walkers NaN.

    A step that `step_accepted` rejects (non-finite energy or update, or more than
    `max_bad_walkers` of the walkers left out; default `run.max_bad_walkers`) returns its
    input state unchanged (parameters, optimizer state and walkers), selected on the device.
    The host loop then needs no read-back before it queues the next step (vmc.loop), and
    takes the same decision from the stats.
    """
    s = setup.cfg.sampler
    _, sampler_step = make_sampler(setup.ansatz.log_psi, s.moves, s.target_pmove, s.adapt_rate)
    batched_e_l = setup.batched_local_energy
    batched_logabs = jax.vmap(lambda p, x: setup.ansatz.log_psi(p, x)[1], in_axes=(None, 0))
    optimizer = setup.optimizer
    if max_bad_walkers is None:
        max_bad_walkers = setup.cfg.run.max_bad_walkers

    def step(state: TrainState, key, t, poison=0):
        mcmc, pmove = sampler_step(state.params, state.mcmc, key)
        e_l = batched_e_l(state.params, mcmc.walkers, setup.ecp_key(key))
        e_l = jnp.where(jnp.arange(e_l.shape[0]) < poison, jnp.nan, e_l)
        mcmc, e_l, good = screen_walkers(batched_logabs, state.params, mcmc,
                                         state.mcmc.walkers, e_l)
        params, opt_state, ostats = optimizer.update(state.params, state.opt_state,
                                                     mcmc.walkers, e_l, t, mask=good)
        e64 = e_l.astype(jnp.float64)
        n_good = jnp.sum(good).astype(jnp.float64)
        mean = jnp.sum(jnp.where(good, e64, 0.0)) / n_good
        variance = jnp.sum(jnp.where(good, (e64 - mean) ** 2, 0.0)) / n_good
        stats = StepStats(
            energy=mean, variance=variance,
            median=jnp.nanmedian(jnp.where(good, e64, jnp.nan)),
            pmove=pmove.astype(jnp.float64), width=mcmc.width.astype(jnp.float64),
            bad_walkers=e64.shape[0] - n_good,
            # every optimizer diagnostic (OptStats' fields are StepStats fields), float64
            **{k: jnp.asarray(v, jnp.float64) for k, v in ostats._asdict().items()})
        keep = step_accepted(stats.energy, stats.update_norm, stats.bad_walkers,
                             e64.shape[0], max_bad_walkers)
        new = jax.tree_util.tree_map(lambda a, b: jnp.where(keep, a, b),
                                     TrainState(params, opt_state, mcmc), state)
        return new, stats

    return jax.jit(step)


def n_params(setup: Setup, params) -> int:
    """Number of trained parameters."""
    return count_params(params)

"""Local energy E_L = (Hψ)/ψ of the clamped-nuclei electronic Hamiltonian (MATH.md §1).

    E_L = −½ Σ_i (Δ_i log|ψ| + |∇_i log|ψ||²) + V(x)

The kinetic term comes from the forward Laplacian (folx; Li et al., Nat. Mach. Intell. 2024)
or, as the reference it is tested against, from a Hessian diagonal by jvp-of-grad.
"""

from __future__ import annotations

from typing import Callable, Optional

import folx
import jax
import jax.numpy as jnp

from vmc.ansatz.common import pair_distances

LAPLACIANS = ("forward", "forward-sparse", "hessian")
# folx's sparsity_threshold for 'forward-sparse': a Jacobian with at most this many non-zero
# input coordinates stays sparse (one electron: 3, one pair: 6, e.g. FermiNet's h2 stream)
SPARSE_THRESHOLD = 6


# 'auto' (hamiltonian.laplacian's default): folx sparse from this many electrons on, else
# folx dense. From scripts/bench_laplacian.py's table at 256 walkers, the batch a run uses
# (README, "Laplacian methods"; CPU, best of 5 interleaved): FermiNet's sparse pass took
# 0.97-3.9x dense's time up to O (8 electrons) and 0.38-0.91x at Ne and H2O (10); the
# Psiformer's at its default width (4 heads x 16) 0.53-0.92x from Li (3) on and 2.5-3.2x for
# He. At PSIFORMER_WIDE attention features (the benchmark's 4 x 32) sparse gained nothing
# below 10 electrons (Li 0.99x, N 1.31x, reproduced 1.33x, O 0.98x) and did at Ne and H2O
# (0.82x, 0.55x): there the rule is the FermiNet's. The Hessian loop took 1.2-3.3x the
# fastest. folx's sparse pass compiles 3-5x longer (7-17 against 2-4 s); the tiny preset,
# whose runs are mostly compilation, sets 'forward'.
SPARSE_FROM = {"ferminet": 10, "psiformer": 3}
PSIFORMER_WIDE = 128
SPARSE_FROM_WIDE_PSIFORMER = 10


def resolve_laplacian(setting: str, ansatz: str, n_electrons: int,
                      width: Optional[int] = None) -> str:
    """The method of `kinetic_parts` that `hamiltonian.laplacian: setting` means for a case.

    Args:
      setting: 'auto' (folx sparse, 'forward-sparse', for an ansatz with at least
        SPARSE_FROM[ansatz] electrons, or SPARSE_FROM_WIDE_PSIFORMER for a Psiformer with
        at least PSIFORMER_WIDE attention features; else folx dense, 'forward') or one of
        LAPLACIANS, returned as is.
      ansatz: 'ferminet', 'psiformer' or 'hf' (the last always dense under 'auto').
      n_electrons: electrons of the molecule.
      width: the Psiformer's attention features, heads x head_dim (None: the default's).
    Returns:
      one of LAPLACIANS.
    Raises:
      ValueError: unknown setting.
    """
    if setting in LAPLACIANS:
        return setting
    if setting == "auto":
        from_n = SPARSE_FROM.get(ansatz)
        if ansatz == "psiformer" and width is not None and width >= PSIFORMER_WIDE:
            from_n = SPARSE_FROM_WIDE_PSIFORMER
        return "forward-sparse" if from_n is not None and n_electrons >= from_n else "forward"
    raise ValueError(f"hamiltonian.laplacian: unknown {setting!r}; valid: auto, "
                     f"{', '.join(LAPLACIANS)}")


# 'hamiltonian.chunk_walkers: null' on a CPU: a FermiNet's local energy in chunks of CPU_CHUNK
# walkers per device from CPU_CHUNK_FROM electrons on; all walkers at once below that, for the
# other ansätze and on other platforms. The forward Laplacian's Jacobians (n_walkers · 3n
# floats per activation) fall out of the cache at 256 walkers; chunks of 32 keep them there
# (scripts/bench_chunks.py, README "Local energy in walker chunks"; 2 cores, 256 walkers,
# FermiNet default network: B 0.56x, C 0.55x, N 0.60x, O 0.55x, Ne 0.62x the time of one
# batch; Li, LiH and Be 1.00-1.24x, so not below CPU_CHUNK_FROM; the Psiformer, sparse there,
# 0.96-1.02x at N, O, Ne). A GPU wants the whole batch at once.
CPU_CHUNK = 32
CPU_CHUNK_FROM = 5
CPU_CHUNK_ANSATZE = ("ferminet",)


def resolve_chunk(setting: Optional[int], ansatz: str, n_electrons: int,
                  platform: str) -> Optional[int]:
    """Walkers per device whose local energy is evaluated at once (`over_walkers`' chunk).

    Args:
      setting: `hamiltonian.chunk_walkers`: an int is returned as is; None picks by
        platform, ansatz and size: CPU_CHUNK on a CPU for an ansatz in CPU_CHUNK_ANSATZE
        with at least CPU_CHUNK_FROM electrons, else None (all walkers at once).
      ansatz: `ansatz.name`.
      n_electrons: electrons of the molecule (valence electrons with an ECP).
      platform: `jax.default_backend()`, e.g. 'cpu', 'gpu'.
    Returns:
      a positive int, or None for all walkers at once.
    """
    if setting is not None:
        return setting
    if platform == "cpu" and ansatz in CPU_CHUNK_ANSATZE and n_electrons >= CPU_CHUNK_FROM:
        return CPU_CHUNK
    return None


def potential_energy(x, atoms, charges, nuclear_repulsion: float = 0.0):
    """Coulomb potential energy of one configuration, hartree.

    Args:
      x: (n_electrons, 3) electrons, bohr.
      atoms: (n_atoms, 3) nuclei, bohr; charges: (n_atoms,) Z.
      nuclear_repulsion: the constant Σ_{I<J} Z_I Z_J / R_IJ (hartree).
    Returns:
      () V = −Σ_{iI} Z_I/|r_i − R_I| + Σ_{i<j} 1/|r_i − r_j| + nuclear_repulsion.
    """
    r_ae = jnp.linalg.norm(x[:, None, :] - atoms[None, :, :], axis=-1)
    v_en = -jnp.sum(charges[None, :] / r_ae)
    n = x.shape[0]
    _, r_ee = pair_distances(x)
    upper = jnp.triu(jnp.ones((n, n), bool), k=1)
    v_ee = jnp.sum(jnp.where(upper, 1.0 / jnp.where(upper, r_ee[..., 0], 1.0), 0.0))
    return v_en + v_ee + nuclear_repulsion


def kinetic_parts(logabs_fn: Callable, x, laplacian: str = "forward"):
    """(Δ log|ψ|, |∇ log|ψ||²) of one configuration, bohr⁻² each (see kinetic_from_logabs).

    Near a node of ψ both are large and of opposite sign: |∇ log|ψ||² is the scale of the
    rounding error of their sum in the network's dtype (`with_float64_rescue`).
    """
    shape = x.shape
    flat = x.reshape(-1)

    def f(v):
        return logabs_fn(v.reshape(shape))

    if laplacian in ("forward", "forward-sparse"):
        threshold = SPARSE_THRESHOLD if laplacian == "forward-sparse" else 0
        out = folx.forward_laplacian(f, sparsity_threshold=threshold)(flat)
        lap = out.laplacian
        grad = out.jacobian.dense_array.reshape(-1)
    elif laplacian == "hessian":
        grad_f = jax.grad(f)
        grad = grad_f(flat)
        eye = jnp.eye(flat.shape[0], dtype=flat.dtype)

        def second(i):
            return jax.jvp(grad_f, (flat,), (eye[i],))[1][i]
        lap = jnp.sum(jax.lax.map(second, jnp.arange(flat.shape[0])))
    else:
        raise ValueError(f"hamiltonian.laplacian: unknown {laplacian!r}; valid: "
                         f"{', '.join(LAPLACIANS)}")
    return lap, jnp.sum(grad * grad)


def kinetic_from_logabs(logabs_fn: Callable, x, laplacian: str = "forward"):
    """Kinetic energy −½ (Δ log|ψ| + |∇ log|ψ||²) of one configuration, hartree.

    Args:
      logabs_fn: x (n_electrons, 3) -> log|ψ| scalar.
      x: (n_electrons, 3) bohr.
      laplacian: 'forward' (folx forward Laplacian, dense Jacobians), 'forward-sparse'
        (folx, Jacobians with at most SPARSE_THRESHOLD non-zero coordinates kept sparse) or
        'hessian' (Σ_k e_kᵀ ∇²f e_k by jvp-of-grad over the 3 n_electrons coordinates).
    Raises:
      ValueError: unknown laplacian.
    """
    lap, grad2 = kinetic_parts(logabs_fn, x, laplacian)
    return -0.5 * (lap + grad2)


def ecp_table(molecule):
    """The `vmc.ecp.ECPTable` of the molecule's ECP atoms, or None when all-electron."""
    if not getattr(molecule, "has_ecp", False):
        return None
    from vmc.ecp import make_table
    from vmc.hf import load_ecp
    ecps = {}
    for i, (sym, name) in enumerate(zip(molecule.symbols, molecule.ecp)):
        if name is not None:
            n_core, chans = load_ecp(name, sym)
            ecps[i] = (name, n_core, chans)
    return make_table(ecps)


def ecp_l_max(molecule) -> Optional[int]:
    """The largest angular momentum l of the molecule's non-local ECP channels (0 when its
    ECPs have only a local part), or None when it has no ECP atom."""
    table = ecp_table(molecule)
    if table is None:
        return None
    return int(table.n_channels) - 1


def make_local_energy(log_psi: Callable, molecule, laplacian: str = "forward",
                      dtype=jnp.float32, ecp_rule: str = "icosahedron",
                      with_grad2: bool = False) -> Callable:
    """E_L(params, x, key=None) for one configuration x: (n_electrons, 3) bohr; () hartree.
    With `with_grad2` it returns (E_L, |∇ log|ψ||²) (the score of `with_float64_rescue`).

    With ECP atoms (`molecule.ecp`, charges Z_eff) E_L adds the ECP's local part and its
    non-local part by the rotated-quadrature estimator (`vmc.ecp.nonlocal_energy`, MATH.md
    §8); `key` draws the rotations (None: the rule unrotated, deterministic; tests only).
    All-electron molecules ignore `key`.

    Args:
      log_psi: (params, x) -> (sign, logabs).
      molecule: `vmc.system.Molecule`.
      laplacian: one of LAPLACIANS (kinetic_from_logabs; the setting 'auto' is resolved
        to one of them by the configuration, `resolve_laplacian`).
      dtype: dtype of the nuclear coordinates fed to the potential.
      ecp_rule: spherical rule of the non-local estimator (`vmc.ecp.quadrature`).
    Raises:
      ValueError: unknown laplacian or rule.
    """
    if laplacian not in LAPLACIANS:
        raise ValueError(f"hamiltonian.laplacian: unknown {laplacian!r}; valid: "
                         f"{', '.join(LAPLACIANS)}")
    atoms = jnp.asarray(molecule.positions, dtype)
    charges = jnp.asarray(molecule.charges, dtype)
    e_nn = molecule.nuclear_repulsion
    table = ecp_table(molecule)
    if table is not None:
        from vmc import ecp
        ecp.quadrature(ecp_rule)   # fail early on an unknown rule
        nonlocal_table = ecp.with_nonlocal(table)   # local-only ECPs skip the estimator

    def local_energy(params, x, key=None):
        lap, grad2 = kinetic_parts(lambda y: log_psi(params, y)[1], x, laplacian)
        e = -0.5 * (lap + grad2) + potential_energy(x, atoms, charges, e_nn)
        if table is not None:
            e = e + ecp.local_potential(table, x, atoms)
            if nonlocal_table is not None:
                e = e + ecp.nonlocal_energy(nonlocal_table, lambda y: log_psi(params, y), x,
                                            atoms, key, ecp_rule).astype(e.dtype)
        return (e, grad2) if with_grad2 else e

    return local_energy


def over_walkers(fn: Callable, chunk: Optional[int] = None, n_devices: int = 1) -> Callable:
    """A per-configuration `fn(params, x (n_electrons, 3))` made batched over walkers.

    Args:
      fn: one configuration -> a scalar or array (e.g. the local energy, hartree).
      chunk: None: all walkers at once (`vmap`); else at most `chunk` walkers of each device
        at a time (`lax.map` over chunks of a `vmap`), so the memory of the intermediate
        values (the forward Laplacian's Jacobians grow as n_walkers · n_electrons²) is
        bounded by the chunk, at the cost of a sequential loop. The results are the same
        up to rounding (each walker's computation is independent).
      n_devices: devices the walker axis is split over (chunks are taken per device, so no
        walker moves between devices).
    Returns:
      (params, walkers (n_walkers, n_electrons, 3), key=None) -> (n_walkers, ...). With a
      key, walker w gets `fold_in(key, w)` as `fn`'s third argument (the ECP rotations), so
      the result does not depend on the chunking; without one `fn(params, x)` is called.
    """
    def batched(params, walkers, key=None):
        n_w = walkers.shape[0]
        if key is None:
            one = lambda x, k: fn(params, x)           # noqa: E731
            keys = jnp.zeros((n_w,), jnp.int32)
        else:
            one = lambda x, k: fn(params, x, k)        # noqa: E731
            keys = jax.vmap(lambda w: jax.random.fold_in(key, w))(jnp.arange(n_w))
        per = n_w // n_devices
        if chunk is None or per <= chunk:
            return jax.vmap(one)(walkers, keys)
        w = walkers.reshape((n_devices, per) + walkers.shape[1:])
        k = keys.reshape((n_devices, per) + keys.shape[1:])
        out = jax.vmap(lambda wd, kd: jax.lax.map(lambda a: one(*a), (wd, kd),
                                                  batch_size=chunk))(w, k)
        return jax.tree_util.tree_map(lambda o: o.reshape((n_w,) + o.shape[2:]), out)

    return batched


def with_float64_rescue(scored: Callable, local_energy64: Callable, m: int,
                        n_devices: int = 1) -> Callable:
    """Batched E_L whose `m` most node-adjacent walkers per device are recomputed in float64.

    Near a node of ψ, Δ log|ψ| ≈ −|∇ log|ψ||² are each huge and their float32 sum (and the
    float32 network's own derivatives) leave an error of ~10–250 ε₃₂ |∇ log|ψ||² in E_L,
    up to kilohartree for N (README, float32 precision): no determinant stage in float64
    removes it. Per device, the m walkers of largest |∇ log|ψ||² (a non-finite E_L counts
    as largest) get E_L again from the same parameters cast to float64 and the network
    built in float64 (`local_energy64`), at their float32 positions, with the same ECP key.
    Cost: m float64 walkers per device and step (`hamiltonian.f64_rescue`).

    Args:
      scored: (params, walkers (n_w, n, 3), key=None) -> ((n_w,) E_L, (n_w,) |∇ log|ψ||²),
        e.g. `over_walkers` of `make_local_energy(..., with_grad2=True)`.
      local_energy64: one configuration in float64: (params64, x, key=None) -> () hartree.
      m: walkers per device to recompute (>= 1).
      n_devices: devices the walker axis is split over (m are taken on each).
    Returns:
      (params, walkers, key=None) -> (n_w,) E_L, hartree, float64 (a float32 E_L of 10⁴ Ha
      near a node would round by 10⁻³ Ha).
    """
    def batched(params, walkers, key=None):
        e, grad2 = scored(params, walkers, key)
        n_w = e.shape[0]
        per = n_w // n_devices
        k = min(m, per)
        score = jnp.where(jnp.isfinite(e) & jnp.isfinite(grad2), grad2, jnp.inf)
        _, idx = jax.lax.top_k(score.reshape(n_devices, per), k)
        idx = (idx + per * jnp.arange(n_devices)[:, None]).reshape(-1)
        p64 = jax.tree_util.tree_map(
            lambda a: a.astype(jnp.float64) if jnp.issubdtype(a.dtype, jnp.floating) else a,
            params)
        x64 = walkers[idx].astype(jnp.float64)
        if key is None:
            e64 = jax.vmap(lambda x: local_energy64(p64, x))(x64)
        else:   # walker w's key is fold_in(key, w), as over_walkers gives it
            keys = jax.vmap(lambda w: jax.random.fold_in(key, w))(idx)
            e64 = jax.vmap(lambda x, kk: local_energy64(p64, x, kk))(x64, keys)
        return e.astype(jnp.float64).at[idx].set(e64)

    return batched

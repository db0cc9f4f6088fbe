"""Hartree–Fock orbitals from PySCF, evaluated in JAX.

PySCF is used here and only here (STYLE.md §8): `run_hf` runs the SCF once and turns the
result into plain numpy arrays (`HartreeFock`); `eval_orbitals` and `hf_log_psi` are pure
JAX and can be jitted, vmapped and differentiated twice (the local energy takes the
Laplacian of log|ψ| through them). The orbitals seed the ansatz in pretraining
(MATH.md §5).

Basis functions follow PySCF's spherical GTOs (``mol.eval_gto("GTOval_sph")``): for a shell
of angular momentum l centred at C, with d = x − C and r = |d|,

    χ_cart(x) = d_x^i d_y^j d_z^k · Σ_p c_p exp(−α_p r²),   i + j + k = l,
    χ_sph = χ_cart @ cart2sph(l),

where c_p are the coefficients PySCF hands to libcint (``mol._libcint_ctr_coeff``, i.e.
``bas_ctr_coeff`` times ``gto_norm(l, α_p)``, normalising r^l exp(−α r²) radially) and
cart2sph(l) is ``pyscf.gto.cart2sph(l)`` with its default normalisation, which carries the
angular factor: 1/√(4π) for s, √(3/(4π)) for p (libcint's ``CINTcommon_fac_sp``), the
real-spherical-harmonic normalisation for l ≥ 2. tests/test_hf.py checks this against
``eval_gto`` to 1e-10.

Sources: PySCF (Sun et al., WIREs Comput. Mol. Sci. 8, e1340 (2018)), pyscf/gto/mole.py
(`bas_ctr_coeff`, `cart2sph`), libcint `CINTcommon_fac_sp`.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from vmc.errors import InputError
from vmc.system import Molecule

METHODS = ("auto", "rhf", "rohf", "uhf")


class SCFError(RuntimeError):
    """The SCF did not converge, even after a level shift and a second-order solver."""


@dataclasses.dataclass(frozen=True, eq=False)
class HartreeFock:
    """A converged Hartree–Fock determinant and its basis, as numpy arrays.

    Static data: close over it in jitted functions (``jax.jit(lambda x:
    eval_orbitals(hf, x))``) or pass it as a static argument (it hashes by identity).

    Attributes:
      energy: total SCF energy (incl. nuclear repulsion), hartree.
      method: the method that ran: 'rhf', 'rohf' or 'uhf'.
      basis: basis-set name as given to PySCF.
      coeff_up: (n_ao, n_up) float64 occupied spin-up MO coefficients (spherical AOs).
      coeff_down: (n_ao, n_down) float64 occupied spin-down MO coefficients.
      shell_center: (n_shells, 3) float64 shell centres, bohr. One shell per contracted
        function (PySCF's general contractions are split).
      shell_l: (n_shells,) int angular momentum of each shell.
      prim_shell: (n_prim,) int shell that each primitive term belongs to (sorted).
      prim_exp: (n_prim,) float64 Gaussian exponents α, bohr⁻².
      prim_coef: (n_prim,) float64 contraction coefficients incl. PySCF's primitive norm
        (``mol._libcint_ctr_coeff``, see the module docstring).
      cart2sph: (n_cart, n_ao) float64 block-diagonal cart→spherical transform incl. the
        angular normalisation; cartesian functions of a shell in PySCF order (xx, xy, xz,
        yy, yz, zz for d).
    """

    energy: float
    method: str
    basis: str
    coeff_up: np.ndarray
    coeff_down: np.ndarray
    shell_center: np.ndarray
    shell_l: np.ndarray
    prim_shell: np.ndarray
    prim_exp: np.ndarray
    prim_coef: np.ndarray
    cart2sph: np.ndarray

    @property
    def n_up(self) -> int:
        return self.coeff_up.shape[1]

    @property
    def n_down(self) -> int:
        return self.coeff_down.shape[1]

    @property
    def n_ao(self) -> int:
        return self.cart2sph.shape[1]


# ---------------------------------------------------------------------------------------
# PySCF edge
# ---------------------------------------------------------------------------------------

def run_hf(molecule: Molecule, basis: str = "cc-pvdz", method: str = "auto") -> HartreeFock:
    """Run Hartree–Fock with PySCF and return its occupied orbitals and basis as arrays.

    PySCF runs on one OpenMP thread (beside JAX on a small CPU, two threads were ~10x
    slower). If the default SCF does not converge, it is retried with a level shift of
    0.5 Ha, then with PySCF's second-order (Newton) solver.

    Args:
      molecule: the molecule (positions in bohr, charge, spin = n_up − n_down).
      basis: PySCF basis-set name, e.g. 'cc-pvdz', 'cc-pvtz'.
      method: 'auto' (RHF for closed shells, ROHF for open shells), 'rhf', 'rohf', 'uhf'.

    Returns:
      HartreeFock with energy in hartree and occupied coefficients of shapes
      (n_ao, molecule.n_up) and (n_ao, molecule.n_down).

    Raises:
      InputError: unknown method or basis, or 'rhf' for an open shell.
      SCFError: no convergence after all retries.
    """
    if method not in METHODS:
        raise InputError(f"pretrain.method: unknown method {method!r}; valid: "
                         + ", ".join(METHODS))
    if method == "auto":
        method = "rhf" if molecule.spin == 0 else "rohf"
    if method == "rhf" and molecule.spin != 0:
        raise InputError(f"pretrain.method: 'rhf' needs a closed shell but molecule.spin is "
                         f"{molecule.spin}; valid here: auto, rohf, uhf")
    from pyscf import lib

    with lib.with_omp_threads(1):
        mol = _build_mol(molecule, basis)
        mf = _scf(mol, method)
        c_up, c_down = _occupied(mf, method)
        shells = _shells(mol)
    if molecule.spin < 0:  # PySCF ran with the spins flipped, see _build_mol
        c_up, c_down = c_down, c_up
    if c_up.shape[1] != molecule.n_up or c_down.shape[1] != molecule.n_down:
        raise SCFError(f"{method.upper()} occupied {c_up.shape[1]} up and {c_down.shape[1]} "
                       f"down orbitals; expected {molecule.n_up} and {molecule.n_down}")
    return HartreeFock(energy=float(mf.e_tot), method=method, basis=basis,
                       coeff_up=c_up, coeff_down=c_down, **shells)


def load_ecp(name: str, symbol: str):
    """(n_core, channels) of PySCF's ECP `name` for element `symbol`, or None if PySCF has none.

    channels: {l: [(power n − 2, α (bohr⁻²), c), ...]}: V_l(r) = Σ c r^(n−2) e^(−αr²) Ha,
    l = −1 the local part (PySCF's ``gto.basis.load_ecp`` lists the terms by n). ECPs with
    spin-orbit terms (e.g. crenbl: [α, c, c_SO]) give their scalar part c, as PySCF's own
    non-relativistic Hartree–Fock uses them.
    """
    import warnings

    from pyscf import gto
    try:
        with warnings.catch_warnings():   # "ECP may be available in basis-set-exchange"
            warnings.simplefilter("ignore", UserWarning)
            raw = gto.basis.load_ecp(name, symbol)
    except (KeyError, RuntimeError, ValueError, OSError, TypeError, IndexError):
        return None
    if not raw:
        return None
    n_core, chans = raw
    out = {}
    for l, by_n in chans:
        out[int(l)] = [(n - 2, float(t[0]), float(t[1])) for n, terms in enumerate(by_n)
                       for t in terms]
    return int(n_core), out


def _build_mol(molecule: Molecule, basis: str):
    """PySCF Mole in bohr, with the molecule's ECPs; a negative spin is flipped (PySCF wants
    n_alpha >= n_beta)."""
    from pyscf import gto

    try:
        return gto.M(atom=[(s, tuple(map(float, p)))
                           for s, p in zip(molecule.symbols, molecule.positions)],
                     unit="Bohr", basis=basis, ecp=molecule.pyscf_ecp(), charge=molecule.charge,
                     spin=abs(molecule.spin), verbose=0)
    except (KeyError, RuntimeError, ValueError, OSError, TypeError, IndexError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        ecps = sorted(set(molecule.pyscf_ecp().values()))
        valid = (f"a PySCF basis made for the {'/'.join(ecps)} ECP (ccecp-cc-pvdz for ccecp, "
                 f"otherwise often the ECP's own name, e.g. lanl2dz) or def2-svp" if ecps
                 else "a PySCF basis name such as cc-pvdz, cc-pvtz")
        raise InputError(f"pretrain.basis: PySCF cannot build basis {basis!r} for "
                         f"{'/'.join(sorted(set(molecule.symbols)))} ({first}); valid: "
                         f"{valid}") from None


def _scf(mol, method: str):
    from pyscf import scf

    make = {"rhf": scf.RHF, "rohf": scf.ROHF, "uhf": scf.UHF}[method]
    mf = make(mol)
    mf.kernel()
    if mf.converged:
        return mf
    dm = mf.make_rdm1()
    mf2 = make(mol)
    mf2.level_shift = 0.5
    mf2.max_cycle = 200
    mf2.kernel(dm0=dm)
    if mf2.converged:
        return mf2
    mf3 = make(mol).newton()
    mf3.max_cycle = 100
    mf3.kernel(dm0=mf2.make_rdm1())
    if mf3.converged:
        return mf3
    raise SCFError(f"{method.upper()}/{mol.basis} did not converge (default, level shift "
                   f"0.5, Newton); last energy {mf3.e_tot:.8f} Ha. Try another method or basis")


def _occupied(mf, method: str) -> tuple[np.ndarray, np.ndarray]:
    """Occupied (n_ao, n_alpha) and (n_ao, n_beta) coefficients, lowest orbitals first."""
    if method == "uhf":
        c, occ = np.asarray(mf.mo_coeff), np.asarray(mf.mo_occ)
        return (np.ascontiguousarray(c[0][:, occ[0] > 0.5]),
                np.ascontiguousarray(c[1][:, occ[1] > 0.5]))
    c, occ = np.asarray(mf.mo_coeff), np.asarray(mf.mo_occ)
    return (np.ascontiguousarray(c[:, occ > 0.5]),   # doubly + singly occupied
            np.ascontiguousarray(c[:, occ > 1.5]))   # doubly occupied


def _shells(mol) -> dict:
    """PySCF's basis as flat arrays: one shell per contracted function."""
    from pyscf import gto

    centers, ls, p_shell, p_exp, p_coef, blocks = [], [], [], [], [], []
    for b in range(mol.nbas):
        l = int(mol.bas_angular(b))
        exps = np.asarray(mol.bas_exp(b), dtype=np.float64)
        coefs = np.asarray(mol._libcint_ctr_coeff(b), dtype=np.float64)  # (nprim, nctr)
        for k in range(coefs.shape[1]):
            keep = coefs[:, k] != 0.0
            p_shell.extend([len(ls)] * int(keep.sum()))
            p_exp.extend(exps[keep])
            p_coef.extend(coefs[keep, k])
            centers.append(mol.bas_coord(b))
            ls.append(l)
            blocks.append(np.asarray(gto.cart2sph(l), dtype=np.float64))
    n_cart = sum(blk.shape[0] for blk in blocks)
    n_sph = sum(blk.shape[1] for blk in blocks)
    if n_sph != mol.nao:
        raise SCFError(f"basis flattening gave {n_sph} AOs, PySCF has {mol.nao}")
    c2s = np.zeros((n_cart, n_sph))
    i = j = 0
    for blk in blocks:
        c2s[i:i + blk.shape[0], j:j + blk.shape[1]] = blk
        i, j = i + blk.shape[0], j + blk.shape[1]
    return dict(shell_center=np.asarray(centers, dtype=np.float64).reshape(-1, 3),
                shell_l=np.asarray(ls, dtype=np.int64),
                prim_shell=np.asarray(p_shell, dtype=np.int64),
                prim_exp=np.asarray(p_exp, dtype=np.float64),
                prim_coef=np.asarray(p_coef, dtype=np.float64),
                cart2sph=c2s)


# ---------------------------------------------------------------------------------------
# JAX evaluation
# ---------------------------------------------------------------------------------------

def _cart_powers(shell_l: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Shell index (n_cart,) and powers (n_cart, 3) of each cartesian function, PySCF order."""
    shell, powers = [], []
    for s, l in enumerate(shell_l):
        for lx in range(l, -1, -1):
            for ly in range(l - lx, -1, -1):
                shell.append(s)
                powers.append((lx, ly, l - lx - ly))
    return np.asarray(shell, dtype=np.int64), np.asarray(powers, dtype=np.int64).reshape(-1, 3)


def eval_aos(hf: HartreeFock, x: jax.Array) -> jax.Array:
    """Spherical atomic orbitals at positions x.

    Args:
      hf: the basis (static data).
      x: (n, 3) positions, bohr.

    Returns:
      (n, n_ao) values, equal to PySCF's ``mol.eval_gto("GTOval_sph", x)``.
    """
    x = jnp.asarray(x)
    return _eval_cart(hf, x) @ jnp.asarray(hf.cart2sph, x.dtype)


def shell_atoms(hf: HartreeFock, positions) -> np.ndarray:
    """Index of the nucleus (n_shells,) that each shell of `hf` sits on.

    Args:
      positions: (n_atoms, 3) nuclear positions, bohr, of the molecule `hf` was run for.
    Raises:
      ValueError: a shell centre more than 1e-6 bohr from every nucleus.
    """
    pos = np.asarray(positions, np.float64)
    d = np.linalg.norm(hf.shell_center[:, None, :] - pos[None, :, :], axis=-1)
    idx = np.argmin(d, axis=1) if d.size else np.zeros(0, np.int64)
    if d.size and np.max(d[np.arange(len(idx)), idx]) > 1e-6:
        raise ValueError("hf: a basis shell is not centred on a nucleus")
    return idx.astype(np.int64)


def _eval_cart(hf: HartreeFock, x: jax.Array, centers=None) -> jax.Array:
    """(n, n_cart) cartesian functions χ_cart (before the cart→sph transform); `centers`
    (n_shells, 3) bohr replaces hf.shell_center (traced, for derivatives in the nuclei)."""
    dtype = x.dtype
    centers = jnp.asarray(hf.shell_center if centers is None else centers, dtype)
    l_max = int(hf.shell_l.max()) if hf.shell_l.size else 0
    cart_shell, powers = _cart_powers(hf.shell_l)
    n_shells = hf.shell_l.shape[0]

    def one(xi):
        d = xi[None, :] - centers                                   # (n_shells, 3)
        r2 = jnp.sum(d * d, axis=-1)                                # (n_shells,)
        gauss = (jnp.asarray(hf.prim_coef, dtype)
                 * jnp.exp(-jnp.asarray(hf.prim_exp, dtype) * r2[hf.prim_shell]))
        radial = jax.ops.segment_sum(gauss, hf.prim_shell, num_segments=n_shells,
                                     indices_are_sorted=True)       # (n_shells,)
        pw = [jnp.ones_like(d)]                                     # d^0, d^1, ... d^l_max
        for _ in range(l_max):
            pw.append(pw[-1] * d)
        pw = jnp.stack(pw, axis=-1)                                 # (n_shells, 3, l_max+1)
        mono = (pw[cart_shell, 0, powers[:, 0]] * pw[cart_shell, 1, powers[:, 1]]
                * pw[cart_shell, 2, powers[:, 2]])                  # (n_cart,)
        return mono * radial[cart_shell]

    return jax.vmap(one)(x)                                         # (n, n_cart)


def eval_orbitals(hf: HartreeFock, x: jax.Array, centers=None) -> tuple[jax.Array, jax.Array]:
    """Occupied Hartree–Fock orbitals at positions x.

    Pure JAX: jit-able (close over `hf`), vmap-able, twice differentiable in x.

    Args:
      hf: result of `run_hf`.
      x: (n, 3) positions, bohr.
      centers: optional (n_shells, 3) shell centres, bohr (default hf.shell_center): the
        basis moved with the nuclei, MO coefficients fixed (traced, for ∂ψ/∂R_I).

    Returns:
      (phi_up, phi_down) of shapes (n, n_up) and (n, n_down): φ_k(x_i) in bohr^(-3/2).
    """
    x = jnp.asarray(x)
    # Fold cart→sph into the coefficients once, in numpy float64.
    c_up = jnp.asarray(hf.cart2sph @ hf.coeff_up, x.dtype)
    c_down = jnp.asarray(hf.cart2sph @ hf.coeff_down, x.dtype)
    cart = _eval_cart(hf, x, centers)
    return cart @ c_up, cart @ c_down


def hf_log_psi(hf: HartreeFock, x: jax.Array, centers=None) -> tuple[jax.Array, jax.Array]:
    """Slater determinant ψ = det φ_up(x_up) · det φ_down(x_down), in the log domain.

    Args:
      hf: result of `run_hf`.
      x: (n_electrons, 3) positions, bohr; the first n_up electrons are spin up.
      centers: optional (n_shells, 3) shell centres, bohr (see `eval_orbitals`).

    Returns:
      (sign, logabs): () sign of ψ and () log|ψ|.
    """
    x = jnp.asarray(x)
    phi_up, phi_down = eval_orbitals(hf, x, centers)
    s_up, l_up = jnp.linalg.slogdet(phi_up[:hf.n_up])
    s_dn, l_dn = jnp.linalg.slogdet(phi_down[hf.n_up:])
    return s_up * s_dn, l_up + l_dn

"""The configuration's schema: one frozen dataclass per section, with each field's default
and valid range (`_field`), the solver names and the presets.

Loading, merging and resolving the defaults that depend on the molecule are in `vmc.config`
(which re-exports these names).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

from vmc.system import Molecule, make_molecule


REFERENCE_KINDS = ("exact", "estimated exact", "CCSD(T)/CBS", "other")


# Seeds are 0 .. 2³¹ − 1: every later seed a run picks itself (one above those used) still
# fits JAX's PRNG seed (a C long), and negative seeds are not a second name for a positive one.
SEED_MAX = 2**31 - 1


def _field(default, *, choices=None, lo=None, hi=None, gt=None, lt=None, doc=""):
    """A dataclass field with validation metadata (choices, inclusive bounds lo/hi,
    exclusive bounds gt/lt)."""
    if isinstance(default, (list, dict)):
        raise TypeError("use tuples for sequence defaults")
    return dataclasses.field(default=default,
                             metadata={"choices": choices, "lo": lo, "hi": hi, "gt": gt,
                                       "lt": lt, "doc": doc})


@dataclasses.dataclass(frozen=True)
class Reference:
    """A reference energy (hartree) with its source and kind."""
    energy: Optional[float] = None
    source: str = ""
    kind: str = _field("exact", choices=REFERENCE_KINDS)
    hf_limit: Optional[float] = None
    # the Hamiltonian the energy is for: "all-electron", or the ECP, e.g. "ccecp" (a run whose
    # hamiltonian.ecp differs reports no error against it, vmc.summary)
    hamiltonian: str = "all-electron"
    # the charge and 2S the energy is for; None: the molecule's as the file writes it (a run
    # whose --charge, --spin or molecule.* override differs reports no error against it)
    charge: Optional[int] = None
    spin: Optional[int] = None


@dataclasses.dataclass(frozen=True)
class MoleculeConfig:
    """The molecule as written in YAML (positions in `units`)."""
    atoms: tuple = ()
    units: str = "bohr"
    charge: int = 0
    spin: int = 0
    reference: Reference = Reference()


@dataclasses.dataclass(frozen=True)
class AnsatzConfig:
    """Wavefunction ansatz (FermiNet: Pfau et al. 2020; Psiformer: von Glehn et al. 2023)."""
    name: str = _field("ferminet", choices=("ferminet", "psiformer", "hf"))
    hidden_one: tuple = (32, 32, 32)   # one-electron stream widths, one per layer
    hidden_two: tuple = (8, 8, 8)      # two-electron stream widths, one per layer
    determinants: int = _field(8, lo=1)
    full_det: bool = True
    envelope: str = _field("isotropic", choices=("isotropic", "full"))
    jastrow: Optional[bool] = None     # None: true for psiformer (as in its paper), else false
    heads: int = _field(4, lo=1)           # Psiformer attention heads
    head_dim: int = _field(16, lo=1)       # Psiformer width per head
    layers: int = _field(2, lo=1)          # Psiformer attention layers
    layer_norm: bool = False
    # determinant stage (orbital matrices -> log|sum det|): float64, or the network's dtype
    det_precision: str = _field("float64", choices=("float64", "network"))
    # length a (bohr) of the smooth distance √(r² + a²) − a the network sees at ECP atoms
    # (vmc.ansatz.common.smooth_distance; README "Pseudopotentials"); all-electron atoms: r
    ecp_smoothing: float = _field(1.0, lo=1e-3, hi=10.0)
    # Kato's e–n cusp built in at all-electron atoms (vmc.ansatz.common.NuclearCusp): every
    # orbital row gets exp(Σ_I −Z_I α_I r/(α_I + r)), α_I = cusp_length/Z_I at the start,
    # and the network sees √(r² + a²) − a there, a = cusp_length/(2 Z_I) bohr
    nuclear_cusp: bool = False
    cusp_length: float = _field(1.0, lo=1e-3, hi=100.0)
    # NuclearCusp's shape: 'pade' α r/(α + r), or 'tanh' α tanh(r/α) (no r² term, so no
    # constant −3Z/α in E_L at the nucleus)
    cusp_form: str = _field("pade", choices=("pade", "tanh"))
    # with nuclear_cusp: the envelope exponents at those atoms start at Z_I instead of 1
    cusp_envelope_z: bool = False


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
    """Metropolis walkers sampling |ψ|² (all-electron Gaussian proposals)."""
    walkers: Optional[int] = _field(None, lo=2)   # None: 256 for <= 5 electrons or an ECP, else 512
    moves: int = _field(10, lo=1)              # Metropolis moves per optimization step
    width: float = _field(0.2, lo=1e-6)        # initial proposal width, bohr
    target_pmove: float = _field(0.5, lo=0.05, hi=0.95)
    adapt_rate: float = _field(1.0, lo=0.0)    # log(width) += rate*(pmove-target) each step
    burn_in: int = _field(100, lo=0)           # steps (of `moves` moves) before training
    init_width: float = _field(1.0, lo=1e-3)   # walker initialisation spread around nuclei, bohr


@dataclasses.dataclass(frozen=True)
class HamiltonianConfig:
    """Local energy settings."""
    # kinetic energy: "forward" (folx, dense Jacobians), "forward-sparse" (folx, sparse ones),
    # "hessian" (jvp-of-grad loop), or "auto": forward-sparse for a FermiNet of >= 10
    # electrons, a Psiformer of >= 3 (>= 10 from 128 attention features on), else forward
    # (vmc.hamiltonian.resolve_laplacian,
    # from scripts/bench_laplacian.py); config.yaml holds the resolved method
    laplacian: str = _field("auto", choices=("auto", "forward", "forward-sparse", "hessian"))
    # walkers per device whose E_L is evaluated at once; bounds the memory of the forward
    # Laplacian, which grows as walkers x electrons^2 (scripts/profile_step.py --memory).
    # None: chosen per platform, ansatz and size, 32 for a FermiNet on a CPU from 5 electrons
    # on (faster: the Jacobians stay in cache), else all at once (vmc.hamiltonian.resolve_chunk)
    chunk_walkers: Optional[int] = _field(None, lo=1)
    # evaluation: walkers per device and step whose E_L is recomputed in float64, those of
    # largest |grad log|psi||^2, i.e. nearest a node of psi, where float32 cannot hold E_L
    # (vmc.hamiltonian.with_float64_rescue); 0: off. Only for a float32 network; training's
    # E_L are clipped and skip it.
    f64_rescue: int = _field(4, lo=0)
    # effective core potentials (MATH.md §8, vmc.ecp): null (all-electron), "ccecp" (every
    # atom heavier than He), or a mapping element -> ECP name, e.g. {S: ccecp}
    ecp: Optional[Any] = None
    # spherical rule of the non-local ECP estimator, rotated at random per electron and step;
    # None: by the ECPs' largest non-local l (vmc.size_rule.ecp_rule), icosahedron without ECP
    ecp_rule: Optional[str] = _field(None, choices=("tetrahedron", "octahedron", "icosahedron",
                                                    "lebedev9", "lebedev11", "lebedev17",
                                                    "lebedev23"))


SOLVERS = ("sample", "dense", "adam", "cg", "kfac", "kfac-cg", "spring", "nystrom-cg")


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """Optimizer. SR settings use FermiNet's convention: the direction solves (F + λI) d = g/2."""
    solver: str = _field("sample", choices=SOLVERS)
    steps: Optional[int] = _field(None, lo=1)  # None: 1000 for <= 3 electrons (no ECP), else 4000
    lr: Optional[float] = None        # None: 0.2 for SR solvers, 1e-3 for adam
    lr_decay_steps: float = _field(1000.0, lo=1e-9)  # t0 in η_t = η0 / (1 + t/t0)
    # λ in F + λI; None: 0.1 for > 5 electrons (no ECP) with sample/dense/cg/nystrom-cg,
    # except 6-7 electrons in runs of >= 8000 steps; else 1e-3 (`vmc.size_rule.optim_damping`)
    damping: Optional[float] = _field(None, lo=0.0)
    # sample, dense, cg, nystrom-cg: λ_t = max(damping_min, λ0 / (1 + t/damping_decay_steps)),
    # λ0 = damping; None: λ constant (vmc.optim.schedules.damping_schedule)
    damping_decay_steps: Optional[float] = _field(None, gt=0.0)
    damping_min: float = _field(1e-3, lo=0.0)
    norm_constraint: Optional[float] = _field(1e-3, gt=0.0)  # C; None: no trust region
    # E_L clipping width in mean abs. deviations (for the gradient); unset: 5.0 all-electron,
    # null (no clipping) when an ECP is on (`ecp_clip_default`)
    clip: Optional[float] = _field(5.0, gt=0.0)
    adam_b1: float = _field(0.9, lo=0.0, lt=1.0)
    adam_b2: float = _field(0.999, lo=0.0, lt=1.0)
    cg_maxiter: int = _field(100, lo=0)
    cg_tol: float = _field(1e-4, lo=0.0)
    spring_mu: float = _field(0.9, lo=0.0, hi=0.999)
    kfac_cov_ema: float = _field(0.95, lo=0.0, lt=1.0)
    # kfac, kfac-cg: subtract the rank-1 mean term per Dense layer, M − c m mᵀ, c = 1
    # ("walker"), 1/uses ("use"), fitted to the exact F along M⁻¹m ("fit"), or not ("none")
    # (vmc.optim.kfac); kfac_cosines: log each update's cosines to the exact SR direction
    # (forms O: n_w p)
    kfac_centring: str = _field("none", choices=("none", "walker", "use", "fit"))
    kfac_cosines: bool = False
    kfac_inverse_every: int = _field(1, lo=1)
    # nystrom-cg: sketch rank ℓ, rebuilt every k updates or after a solve of more iterations
    # (measured on He, README: ℓ = 16 gives the fastest update on CPU; k = 1)
    nystrom_rank: int = _field(16, lo=1)
    nystrom_refresh_every: int = _field(1, lo=1)
    nystrom_refresh_iters: int = _field(20, lo=0)
    # sample, spring: per-walker gradients O in chunks of this many walkers per device
    # (None: all at once); bounds the backward pass's temporaries, not O itself (n_w x p)
    jacobian_chunk: Optional[int] = _field(None, lo=1)


@dataclasses.dataclass(frozen=True)
class PretrainConfig:
    """Hartree–Fock pretraining of the orbitals."""
    steps: Optional[int] = _field(None, lo=0)  # None: 0 for <= 2 electrons, else 1000
    basis: Optional[str] = None   # None: cc-pvdz, or ccecp-cc-pvdz when an ECP is on
    method: str = _field("auto", choices=("auto", "rhf", "rohf", "uhf"))
    lr: float = _field(3e-3, lo=0.0)
    moves: int = _field(1, lo=1)   # Metropolis moves per step, network and HF alternating
    # which densities the moves sample: "alternate" (|ψ_net|² and |ψ_HF|² by turns) or "hf"
    # (|ψ_HF|² only, FermiNet's pretrain.scf_fraction 1: no network pass besides the loss's)
    sampling: str = _field("alternate", choices=("alternate", "hf"))


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """Frozen-parameter evaluation after training."""
    steps: int = _field(2000, lo=0)
    # go on past `steps` until the reblocked error bar is at most this, mHa (None: exactly
    # `steps`), recording at most max_steps (vmc.evaluate.next_length)
    target_stderr_mha: Optional[float] = _field(None, gt=0.0)
    max_steps: int = _field(50000, lo=16)
    walkers: Optional[int] = None     # None: sampler.walkers
    burn_in: int = _field(100, lo=0)
    seed: Optional[int] = _field(None, lo=0, hi=SEED_MAX)   # None: run.seed + 1
    # above this share of non-finite local energies the summary marks the estimate unreliable
    max_nonfinite_fraction: float = _field(1e-4, lo=0.0, hi=1.0)
    # observables beyond the energy (vmc.observables): any of s2, dipole, density, forces
    observables: tuple = ()
    s2_max_pairs: int = _field(16, lo=1)   # more up-down pairs: an unbiased random subset
    density_bins: int = _field(40, lo=1)
    density_rmax: float = _field(6.0, gt=0.0)   # radial grid [0, r_max), axial [-r_max, r_max), bohr
    density_centre: tuple = ()                  # [x, y, z] bohr; empty: centre of nuclear charge
    observables_chunk: Optional[int] = _field(None, lo=1)   # walkers per chunk (None: all at once)


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Run control: seeds, precision, logging and checkpoints."""
    seed: int = _field(0, lo=0, hi=SEED_MAX)
    x64: bool = False
    log_every: int = _field(50, lo=1)
    progress: bool = True
    checkpoint_every: int = _field(500, lo=1)
    checkpoint_minutes: float = _field(15.0, lo=0.0)
    keep_checkpoints: int = _field(3, lo=1)
    # steps at which a checkpoint is also written and never pruned (scripts/ladder.py)
    keep_steps: tuple = ()
    max_minutes: Optional[float] = _field(None, gt=0.0)
    max_bad_steps: int = _field(10, lo=1)
    # a step is rejected when more than this share of walkers has a non-finite E_L or log|ψ|
    max_bad_walkers: float = _field(0.05, lo=0.0, hi=1.0)
    # several processes: a process that stops answering for this long ends the others
    heartbeat_seconds: int = _field(30, lo=5)
    # JAX's persistent compilation cache: "auto" (the user cache folder, see
    # vmc.compile_cache), "off", or a folder; the environment variable VMC_JAX_CACHE wins
    compile_cache: str = "auto"


@dataclasses.dataclass(frozen=True)
class Config:
    """The whole resolved configuration of one run."""
    name: str = "molecule"
    molecule: MoleculeConfig = MoleculeConfig()
    ansatz: AnsatzConfig = AnsatzConfig()
    sampler: SamplerConfig = SamplerConfig()
    hamiltonian: HamiltonianConfig = HamiltonianConfig()
    optim: OptimConfig = OptimConfig()
    pretrain: PretrainConfig = PretrainConfig()
    eval: EvalConfig = EvalConfig()
    run: RunConfig = RunConfig()

    def build_molecule(self) -> Molecule:
        """The validated Molecule (bohr). Raises InputError."""
        m = self.molecule
        return make_molecule(list(m.atoms), m.units, m.charge, m.spin, self.hamiltonian.ecp)


PRESETS: dict[str, dict[str, Any]] = {
    # FermiNet's published sizes (Pfau et al. 2020, Table S1) for GPU runs.
    "paper": {
        "ansatz": {"hidden_one": (256, 256, 256, 256), "hidden_two": (32, 32, 32, 32),
                   "determinants": 16},
        "sampler": {"walkers": 4096, "moves": 10, "burn_in": 100},
        "optim": {"solver": "kfac", "steps": 200000, "lr": 0.05, "lr_decay_steps": 10000.0,
                  "damping": 1e-3, "norm_constraint": 1e-3},
        "pretrain": {"steps": 1000},
        "eval": {"steps": 10000},
        "run": {"log_every": 100},
    },
    # Tiny network and few steps: smoke tests and CI. No float64 rescue: its second
    # (float64) network adds ~5 s to every evaluation's compilation (tests/test_rescue.py
    # tests it; the README's quick start runs it). folx dense: the sparse pass that 'auto'
    # picks for larger cases compiles 3-5x longer, and these runs are mostly compilation.
    "tiny": {
        "hamiltonian": {"f64_rescue": 0, "laplacian": "forward"},
        "ansatz": {"hidden_one": (8, 8), "hidden_two": (4, 4), "determinants": 2,
                   "layers": 1, "heads": 2, "head_dim": 8},   # (the Psiformer: 1 × 2 × 8)
        "sampler": {"walkers": 32, "moves": 2, "burn_in": 5},
        "optim": {"steps": 10},
        "pretrain": {"steps": 0},
        "eval": {"steps": 20, "burn_in": 5},
        "run": {"log_every": 5, "progress": False},
    },
}

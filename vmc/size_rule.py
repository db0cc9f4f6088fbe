"""The size rule: defaults that depend on the system (electron count, ECP) or on other
settings, each with the reason it was chosen, and where every setting of a run came from.

`vmc.config` resolves its defaults through the rules here (one place for the numbers and
their reasons); `vmc check` prints `describe_choices`, `vmc presets` prints `describe_presets`.

Settings the issue (#14) names as candidates for scaling with the system — network width and
determinants, learning-rate schedule, clipping, evaluation length — keep one value for every
size until measurements beyond five electrons choose a rule (scripts/ladder.py); `vmc check`
says so for each. The SR damping (`optim_damping`, measured on N and He) and the walkers
(`sampler_walkers`, measured on N and O) have rules, the damping by the run's length too
(README "Ladder beyond five electrons"); so has the ECP estimator's spherical rule
(`ecp_rule`, by the ECPs' largest non-local l; README "Pseudopotentials").
"""

from __future__ import annotations

import pathlib
from typing import Any, NamedTuple, Optional, Sequence

import yaml

# the electron counts at which the rule changes (README "Ladder beyond five electrons")
STEPS_SMALL_MAX = 3      # <= this many electrons (no ECP): 1000 optimization steps
PRETRAIN_NONE_MAX = 2    # <= this many electrons: no Hartree–Fock pretraining
PRETRAIN_SHORT_MAX = 5   # <= this many electrons: 1000 pretraining steps, else 3000
DAMPING_SMALL_MAX = 5    # <= this many electrons (or any ECP): SR damping 1e-3, else 0.1 ...
DAMPING_LONG_STEPS = 8000  # ... for runs shorter than this many steps, 1e-3 from here on
DAMPING_LONG_MAX = 7       # ... for up to this many electrons (C, N measured; O not)
WALKERS_SMALL_MAX = 5    # <= this many (valence) electrons: 256 walkers, else 512
# the solvers whose damping is λ of the exact F + λI (one direction, up to a tolerance)
EXACT_SR_SOLVERS = ("sample", "dense", "cg", "nystrom-cg")

PRESET_DOCS = {
    "paper": "FermiNet's published recipe (Pfau et al. 2020, Table S1), for GPUs",
    "tiny": "tiny network and few steps: smoke tests and CI (not an accurate energy)",
}

# the settings `vmc check` reports, in order: those issue #14 names, then the dependent ones
REPORTED = ("ansatz.hidden_one", "ansatz.hidden_two", "ansatz.determinants", "sampler.walkers",
            "optim.steps", "optim.lr", "optim.lr_decay_steps", "optim.damping",
            "optim.damping_decay_steps", "optim.clip", "pretrain.steps", "pretrain.basis",
            "eval.steps", "eval.target_stderr_mha", "eval.max_steps", "eval.walkers",
            "ansatz.jastrow", "hamiltonian.ecp_rule")

_ONE_SIZE = "the same for every size: no size rule measured yet, issue #14"


class Choice(NamedTuple):
    """One resolved setting: dotted `key`, its `value` and why it has it (`reason`)."""
    key: str
    value: Any
    reason: str


def optim_steps(n_electrons: int, ecp: bool) -> Choice:
    """Default `optim.steps`: 1000 for <= 3 electrons without an ECP, else 4000.

    1000 steps bring He, H2 and Li to well under 1 mHa with the default network; LiH and Be
    (4 electrons) need about 4000 for chemical accuracy (README "Results"). With an ECP, 4000
    whatever the valence count: the rarely visited core converges slowly (Mg: +1.25 mHa after
    1000 steps, +0.29 after 4000; README "Pseudopotentials")."""
    if ecp:
        return Choice("optim.steps", 4000, "default with an ECP, whatever the electron count")
    if n_electrons <= STEPS_SMALL_MAX:
        return Choice("optim.steps", 1000,
                      f"default for <= {STEPS_SMALL_MAX} electrons without an ECP")
    return Choice("optim.steps", 4000, f"default for > {STEPS_SMALL_MAX} electrons")


def pretrain_steps(n_electrons: int, ansatz: str) -> Choice:
    """Default `pretrain.steps`: 0 for the 'hf' ansatz (nothing to pretrain) and for <= 2
    electrons (one orbital per spin: the envelope is enough), 1000 for 3-5 electrons, 3000
    beyond (valence electrons with an ECP).

    Measured on CH4 (10 electrons, README "Pretraining length"): after 1000 pretraining
    steps the orbital loss is 0.60 and the first 100 training steps average 480 mHa above
    those after 3000 (loss 0.094); the mean of training steps 901-1000 is -40.273 against
    -40.394 Ha. On the N atom (loss 0.068 against 0.015) the 1000-step evaluation is the
    same within its error (+45.9 ± 4.1 against +46.8 ± 3.0 mHa). 2000 more steps cost
    50 s on CH4 and 14 s on N (one core), about 100 and 60 training steps."""
    if ansatz == "hf":
        return Choice("pretrain.steps", 0, "the hf ansatz has nothing to pretrain")
    if n_electrons <= PRETRAIN_NONE_MAX:
        return Choice("pretrain.steps", 0,
                      f"default for <= {PRETRAIN_NONE_MAX} electrons: no pretraining")
    if n_electrons <= PRETRAIN_SHORT_MAX:
        return Choice("pretrain.steps", 1000, f"default for {PRETRAIN_NONE_MAX + 1}-"
                      f"{PRETRAIN_SHORT_MAX} electrons")
    return Choice("pretrain.steps", 3000, f"default for > {PRETRAIN_SHORT_MAX} electrons "
                  f"(CH4: 1000 steps leave the orbital loss at 0.60 and training 0.48 Ha "
                  f"behind at first)")


def sampler_walkers(n_electrons: int, ecp: bool) -> Choice:
    """Default `sampler.walkers`: 256 for <= 5 electrons, 512 beyond; with an ECP the count
    is of valence electrons.

    Measured at 4000 steps with every other default (README "Width and walkers beyond five
    electrons"; seeds 0 and 1, E − exact): N +11.5 and +13.9 mHa with 512 walkers against
    +17.3 and +20.4 with 256; O +23.8 and +26.3 against +27.7 and +46.9. On one CPU core
    the step costs 2.2x, and 256 walkers for 8000 steps (about the same time) end where
    512 walkers end after 4000 (N +12.2, O +24.1 mHa): on a CPU more walkers buy what more
    steps buy. The rule takes the walkers: a GPU runs 512 walkers of a small molecule in
    about the time of 256, the evaluation's error bar shrinks with them, and the brief
    variance spikes that single walkers cause are fewer (N, seed 1: 30 against 69 after
    step 500). <= 5 electrons keep 256, where every README result below six electrons was
    measured. With an ECP (README "Pseudopotentials", "Walkers with an ECP"): O with ccECP
    (6 valence electrons), 4000 steps, evaluated +10.8 ± 0.6 mHa with 512 walkers against
    +28.9 ± 1.4 with 256; the training means lead by 13 mHa at equal CPU time too (512's
    steps 2000–3000 against 256's 3000–4000)."""
    where = "valence electrons with an ECP" if ecp else "electrons"
    if n_electrons <= WALKERS_SMALL_MAX:
        return Choice("sampler.walkers", 256, f"default for <= {WALKERS_SMALL_MAX} {where}")
    if ecp:
        return Choice("sampler.walkers", 512, f"default for > {WALKERS_SMALL_MAX} {where} "
                      f"(O ccECP, 4000 steps: +10.8 mHa; 256 walkers: +28.9)")
    return Choice("sampler.walkers", 512, f"default for > {WALKERS_SMALL_MAX} electrons "
                  f"(4000 steps, seeds 0/1: N +11.5/+13.9, O +23.8/+26.3 mHa; 256 walkers: "
                  f"+17.3/+20.4, +27.7/+46.9)")


# the spherical rule of the non-local ECP estimator by the ECPs' largest non-local l: the
# lowest-degree rule of vmc.ecp.quadrature exact to degree >= 2 l + 1 (tetrahedron: 2)
ECP_RULE_BY_L = ("tetrahedron", "octahedron", "icosahedron", "lebedev9")


def ecp_rule(l_max: Optional[int]) -> Choice:
    """Default `hamiltonian.ecp_rule`, by the largest angular momentum `l_max` of the
    molecule's non-local ECP channels (None: no ECP atom): tetrahedron for l_max = 0 (ccECP
    of H–Ne; H and He have a local part only), octahedron for 1 (Na–Zn), icosahedron for 2
    (Ga–Kr and heavier), lebedev9 for 3 and more. The icosahedron without an ECP, where the
    rule is not used.

    The rotated-quadrature estimator is unbiased for any rule (Haar-random rotations; MATH.md
    §8), so the rule sets only its noise and its cost (n_electrons × n_ECP-atoms × n_q
    evaluations of ψ per walker). The projector of channel l keeps ψ's angular momentum-l
    part about the atom; a rule exact to degree d integrates P_l times ψ's parts up to
    L = d − l exactly, and ψ's higher-L parts are small within the cutoff radius. Measured
    with `scripts/ecp_rules.py` (README "Pseudopotentials"), share of the E_L variance that
    the rule adds: O ccECP (l_max 0; 512 walkers, step 1500) tetrahedron 0.3 %, training step
    0.70× the icosahedron's; S ccECP (l_max 1; step 100) octahedron 0.2 %, tetrahedron 5 %,
    training step 0.69× and 0.62×. A whole O run (4000 steps, 512 walkers) with the
    tetrahedron: +12.0 ± 0.8 mHa at 0.45 s/step against the icosahedron's +10.8 ± 0.6 at
    0.73–0.77 s/step."""
    if l_max is None:
        return Choice("hamiltonian.ecp_rule", "icosahedron", "default without an ECP (unused)")
    rule = ECP_RULE_BY_L[min(max(l_max, 0), len(ECP_RULE_BY_L) - 1)]
    return Choice("hamiltonian.ecp_rule", rule,
                  f"default for non-local ECP channels up to l = {l_max}: the lowest-degree "
                  f"rule exact to degree >= {2 * l_max + 1}")


def optim_lr(solver: str) -> Choice:
    """Default `optim.lr` (η₀): 1e-3 for adam, 0.2 for the SR solvers."""
    if solver == "adam":
        return Choice("optim.lr", 1e-3, "default for adam")
    return Choice("optim.lr", 0.2, f"default for SR solvers ({solver}), " + _ONE_SIZE)


def optim_damping(n_electrons: int, ecp: bool, solver: str, steps: int = 4000) -> Choice:
    """Default `optim.damping` (λ of F + λI) with the exact-SR solvers (sample, dense, cg,
    nystrom-cg): 0.1 for > 5 electrons without an ECP, except 1e-3 for 6-7 electrons in runs
    of 8000 steps or more (`optim.steps`); 1e-3 for <= 5 electrons or with an ECP.

    Measured with `sample` and the default network (README "Ladder beyond five electrons").
    256 walkers: on N (7 electrons) λ = 1e-3 leaves the norm constraint active at every step
    and the training energy biased low (with n_w ≪ p the solve fits the batch's noise);
    after 4000 steps λ = 0.1 gives +11.9 mHa against +60.7 mHa for 1e-3 (1e-2: +29.7); on
    the ladder C +19.4 and N +18.5 mHa at 4000 steps against +27.1 and +60.7. At 16000 steps
    1e-3 ends better (C +3.8 against +11.8, N +7.2 against +12.1 mHa). 512 walkers (the
    default beyond five electrons), 0.1 against 1e-3: C +12.7 against +8.9 mHa at 4000 steps,
    +7.5 against +2.25 at 16000 (evaluations of 0.48 and 0.40 mHa); N's and O's training
    means run 10-90 mHa behind with 1e-3 before step 4000, and N's are 1.5-4 mHa ahead from
    step 7000 on. Hence the step count: a run of 8000 steps or more takes 1e-3 from its first
    step (switching λ half-way sent N 112 mHa uphill). Not beyond seven electrons: O (8)
    with 1e-3 was +65.3 mHa at 4000 steps against +23.8 with 0.1, and longer O runs with
    1e-3 are not measured. On He the same 0.1 costs accuracy
    (+0.92 ± 0.25 mHa against +0.01 ± 0.07 after 1000 steps), so <= 5 electrons keep 1e-3,
    where the README's results were measured. With an ECP, and for kfac, kfac-cg, spring and
    adam (whose λ means something else or nothing), 1e-3 whatever the size."""
    if solver not in EXACT_SR_SOLVERS:
        return Choice("optim.damping", 1e-3, f"default for {solver}, the same for every "
                      f"size: the rule is for the exact-SR solvers ({', '.join(EXACT_SR_SOLVERS)})")
    if ecp:
        return Choice("optim.damping", 1e-3, "default with an ECP, whatever the electron "
                      "count: measured against 0.1 on O with ccECP (README \"Pseudopotentials\")")
    if n_electrons <= DAMPING_SMALL_MAX:
        return Choice("optim.damping", 1e-3, f"default for <= {DAMPING_SMALL_MAX} electrons")
    if steps >= DAMPING_LONG_STEPS and n_electrons <= DAMPING_LONG_MAX:
        return Choice("optim.damping", 1e-3, f"default for {DAMPING_SMALL_MAX + 1}-"
                      f"{DAMPING_LONG_MAX} electrons in runs of >= {DAMPING_LONG_STEPS} "
                      f"steps (C at 16000 steps, 512 walkers: +2.25 mHa; 0.1: +7.5)")
    if n_electrons <= DAMPING_LONG_MAX:
        return Choice("optim.damping", 0.1, f"default for > {DAMPING_SMALL_MAX} electrons "
                      f"with {solver} in runs of < {DAMPING_LONG_STEPS} steps (4000 steps: "
                      f"C +19.4, N +18.5 mHa; 1e-3: +27.1, +60.7)")
    return Choice("optim.damping", 0.1, f"default for > {DAMPING_LONG_MAX} electrons with "
                  f"{solver}, whatever the steps (O, 4000 steps, 512 walkers: +23.8 mHa; "
                  f"1e-3: +65.3)")


def pretrain_basis(ecp_names: Sequence[Optional[str]] = ()) -> Choice:
    """Default `pretrain.basis` from the atoms' ECP names (`Molecule.ecp`; None: all-electron):
    cc-pvdz all-electron, ccecp-cc-pvdz with ccECP (or a mix of ECPs), and with one other
    ECP the PySCF basis of its name (lanl2dz, sbkjc, crenbl and stuttgart come as ECP and
    basis pairs)."""
    names = sorted({n for n in ecp_names if n is not None})
    if not names:
        return Choice("pretrain.basis", "cc-pvdz", "default all-electron")
    if len(names) == 1 and names[0] != "ccecp":
        return Choice("pretrain.basis", names[0], f"default with the {names[0]} ECP: PySCF's "
                      f"basis of the same name")
    return Choice("pretrain.basis", "ccecp-cc-pvdz", "default with an ECP")


def jastrow(ansatz: str) -> Choice:
    """Default `ansatz.jastrow`: on for psiformer (as in its paper), off otherwise."""
    return Choice("ansatz.jastrow", ansatz == "psiformer",
                  "default for psiformer (as in its paper)" if ansatz == "psiformer"
                  else f"default for {ansatz}: no Jastrow")


def _rule_reason(key: str, cfg, n_electrons: int, ecp: bool) -> str:
    """Why a setting nobody set has its value (the size rule, a dependency, or one size)."""
    rules = {"optim.steps": lambda: optim_steps(n_electrons, ecp),
             "pretrain.steps": lambda: pretrain_steps(n_electrons, cfg.ansatz.name),
             "optim.lr": lambda: optim_lr(cfg.optim.solver),
             "optim.damping": lambda: optim_damping(n_electrons, ecp, cfg.optim.solver,
                                                   cfg.optim.steps),
             "sampler.walkers": lambda: sampler_walkers(n_electrons, ecp),
             "pretrain.basis": lambda: pretrain_basis(cfg.build_molecule().ecp),
             "ansatz.jastrow": lambda: jastrow(cfg.ansatz.name),
             "hamiltonian.ecp_rule": lambda: ecp_rule(_l_max(cfg))}
    if key in rules:
        return rules[key]().reason
    if key == "optim.clip":
        return ("default with an ECP: no clipping (README \"Pseudopotentials\")" if ecp
                else "default all-electron, " + _ONE_SIZE)
    if key == "eval.target_stderr_mha":
        return ("default: exactly eval.steps; with a value the evaluation goes on until its "
                "reblocked error bar is at most this (mHa)")
    if key == "eval.max_steps":
        return "default: the cap of an evaluation with eval.target_stderr_mha"
    if key == "eval.walkers":
        return "default: sampler.walkers"
    if key == "eval.steps":
        return "default, " + _ONE_SIZE + "; `vmc eval RUN --steps N` evaluates longer"
    if key == "optim.damping_decay_steps":
        return ("default: λ constant; t_λ of max(optim.damping_min, λ/(1 + t/t_λ)) "
                "(sample, dense, cg, nystrom-cg)")
    if key == "optim.lr_decay_steps":
        return ("default, " + _ONE_SIZE + "; t0 of lr/(1 + t/t0), independent of "
                "optim.steps")
    return "default, " + _ONE_SIZE


def _l_max(cfg) -> Optional[int]:
    from vmc.hamiltonian import ecp_l_max
    return ecp_l_max(cfg.build_molecule())


def _get(tree: Any, key: str) -> tuple[bool, Any]:
    """(found, value) of a dotted key in nested dicts."""
    for part in key.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return False, None
        tree = tree[part]
    return True, tree


def _value(cfg, key: str) -> Any:
    section, name = key.split(".")
    value = getattr(getattr(cfg, section), name)
    return list(value) if isinstance(value, tuple) else value


def choices(cfg, data: dict, *, n_electrons: int, ecp: bool, preset: Optional[str] = None,
            overrides: tuple[str, ...] = (), file_label: str = "the file") -> list[Choice]:
    """Each REPORTED setting of the resolved `cfg` with where its value comes from.

    Args:
      data: the config file's mapping (molecule keys may stand at the top level).
      n_electrons: electrons treated explicitly (valence electrons with an ECP).
      ecp: whether any atom has an ECP.
      preset, overrides: as given to `vmc.config.load_config`; the last source wins
        (--set, then the file, then the preset, then the rule).
    """
    from vmc.config import PRESETS
    from vmc.config_parse import _parse_override
    parsed = [_parse_override(item) for item in overrides]
    out = []
    for key in REPORTED:
        if key == "hamiltonian.ecp_rule" and not ecp:
            continue                # unused without an ECP
        # the source that wins; an explicit null there leaves the value to the rule
        sources = [("set by --set", _get(p, key)) for p in reversed(parsed)]
        sources += [(f"set in {file_label}", _get(data, key))]
        sources += [(f"preset {preset}", _get(PRESETS[preset], key))] if preset else []
        winner = next(((why, value) for why, (found, value) in sources if found), None)
        reason = (winner[0] if winner is not None and winner[1] is not None
                  else _rule_reason(key, cfg, n_electrons, ecp))
        out.append(Choice(key, _value(cfg, key), reason))
    return out


def describe_choices(found: list[Choice], n_electrons: int, ecp: bool) -> str:
    """The `vmc check` section: one line `key: value (reason)` per setting."""
    lines = [f"# size rule ({n_electrons} electrons, {'with' if ecp else 'no'} ECP): "
             f"each setting that may scale with the system, and why it has its value"]
    lines += [f"  {c.key}: {_text(c.value)} ({c.reason})" for c in found]
    return "\n".join(lines)


def describe_presets(names: Optional[list[str]] = None) -> str:
    """What each preset sets (`vmc presets [NAME ...]`), one `section.key: value` a line;
    everything a preset does not set keeps its default (or the size rule's value).

    Raises:
      InputError: an unknown preset name.
    """
    from vmc.config import PRESETS
    from vmc.errors import InputError, did_you_mean
    names = list(names or PRESETS)
    for name in names:
        if name not in PRESETS:
            raise InputError(f"preset: unknown preset {name!r}; valid: {', '.join(PRESETS)}"
                             + did_you_mean(name, PRESETS))
    blocks = []
    for name in names:
        lines = [f"# preset {name}: {PRESET_DOCS.get(name, '')}".rstrip(": ")]
        for section, settings in PRESETS[name].items():
            for key, value in settings.items():
                lines.append(f"  {section}.{key}: {_text(value)}")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + ("\neverything else: its default, or the size rule's "
                                  "(`vmc check CONFIG --preset NAME` shows which)")


def read_data(path) -> dict:
    """The mapping of a config file as `vmc.config.load_config` reads it (YAML, or an .xyz
    geometry); call after load_config has validated the file."""
    path = pathlib.Path(path)
    if path.suffix.lower() == ".xyz":
        from vmc.config_parse import read_xyz
        return read_xyz(path)
    from vmc.config_parse import load_yaml
    data = load_yaml(path.read_text(), repr(str(path)))
    return dict(data) if isinstance(data, dict) else {}


def file_choices(cfg, path, *, preset=None, overrides=()) -> str:
    """The `vmc check` size-rule section for the config file at `path`."""
    mol = cfg.build_molecule()
    found = choices(cfg, read_data(path), n_electrons=mol.n_electrons, ecp=mol.has_ecp, preset=preset,
                    overrides=tuple(overrides), file_label=pathlib.Path(path).name)
    return describe_choices(found, mol.n_electrons, mol.has_ecp)


def _text(value: Any) -> str:
    """A value as YAML writes it in one line: 4000, 0.001, null, [32, 32, 32]."""
    value = list(value) if isinstance(value, tuple) else value
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()

"""Run configuration: YAML → frozen dataclasses, defaults, presets, `--set` overrides (the
dataclasses and presets themselves are in `vmc.config_schema`).

A YAML file needs only the molecule; every other section is optional:

    name: LiH                      # optional, default: the file's stem
    molecule:                      # or the molecule keys at top level (atoms, units, charge, spin, reference)
      atoms:
        - {symbol: Li, position: [0.0, 0.0, 0.0]}
        - {symbol: H, position: [3.015, 0.0, 0.0]}
      units: bohr
      charge: 0
      spin: 0
      reference: {energy: -8.070548, source: "...", kind: exact}
    ansatz: {...}   sampler: {...}   hamiltonian: {...}   optim: {...}
    pretrain: {...} eval: {...}      run: {...}

Errors are raised as `vmc.errors.InputError` with one line naming the field.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Optional

import yaml

from vmc.config_parse import (_build, _merge, _parse_override, ecp_clip_default,  # noqa: F401
                               number)
from vmc.config_schema import (PRESETS, REFERENCE_KINDS, SOLVERS, AnsatzConfig,  # noqa: F401
                               Config, EvalConfig, HamiltonianConfig, MoleculeConfig,
                               OptimConfig, PretrainConfig, Reference, RunConfig,
                               SamplerConfig, _field)
from vmc.errors import InputError, did_you_mean
from vmc.system import Molecule


_MOLECULE_KEYS = {f.name for f in dataclasses.fields(MoleculeConfig)}


def default_steps(n_electrons: int, ecp: bool = False) -> int:
    """Default number of optimization steps for a system of `n_electrons` electrons: 1000
    for <= 3 electrons without an ECP, else 4000 (the rule and its measurements:
    `vmc.size_rule.optim_steps`)."""
    from vmc.size_rule import optim_steps
    return optim_steps(n_electrons, ecp).value


def hamiltonian_label(ecp_setting, symbols) -> str:
    """'all-electron', or the ECP names in use joined by '+' (e.g. 'ccecp'): what a reference's
    `hamiltonian` must say to be compared with a run of this `hamiltonian.ecp` setting."""
    from vmc.system import resolve_ecp
    names = sorted({e for e in resolve_ecp(list(symbols), ecp_setting) if e is not None})
    return "+".join(names) if names else "all-electron"


def reference_mismatch(cfg: Config) -> Optional[str]:
    """None when the reference (if any) is for this run's Hamiltonian, else one line why the run
    reports no error against it (e.g. an all-electron reference is ~59 Ha from O with ccECP)."""
    data = to_dict(cfg)
    return mismatch_note(data["molecule"], data.get("hamiltonian", {}).get("ecp"))


def mismatch_note(molecule: dict, ecp_setting) -> Optional[str]:
    """`reference_mismatch` of a config.yaml's `molecule` mapping (with its `reference`) and
    its `hamiltonian.ecp` setting, as `vmc analyze` reads them from a run directory: the
    reference's charge and spin (where it gives them) and Hamiltonian must be the run's."""
    ref = molecule.get("reference") or {}
    if ref.get("energy") is None:
        return None
    charge, spin = molecule.get("charge", 0), molecule.get("spin", 0)
    if (ref.get("charge") is not None and ref["charge"] != charge) or (
            ref.get("spin") is not None and ref["spin"] != spin):
        return (f"the reference is for charge {ref.get('charge')}, spin {ref.get('spin')} but "
                f"this run has charge {charge}, spin {spin} (molecule.charge, molecule.spin): "
                f"no error against it")
    run = hamiltonian_label(ecp_setting, [a.get("symbol") for a in molecule.get("atoms") or []
                                          if isinstance(a, dict)])
    theirs = ref.get("hamiltonian") or "all-electron"
    if run == theirs:
        return None
    return f"the reference is {theirs} but this run is {run} (hamiltonian.ecp): no error against it"


def _resolve_defaults(cfg: Config, molecule: Molecule) -> Config:
    """Fill the settings whose default depends on others (written out in config.yaml)."""
    from vmc import size_rule as rule   # the rules and their reasons (`vmc check`)
    optim, pre, ev = cfg.optim, cfg.pretrain, cfg.eval
    n_electrons, ecp_on = molecule.n_electrons, molecule.has_ecp
    if optim.lr is None:
        optim = dataclasses.replace(optim, lr=rule.optim_lr(optim.solver).value)
    if pre.basis is None:
        pre = dataclasses.replace(pre, basis=rule.pretrain_basis(molecule.ecp).value)
    if pre.steps is None:
        pre = dataclasses.replace(pre, steps=rule.pretrain_steps(n_electrons,
                                                                 cfg.ansatz.name).value)
    if optim.steps is None:
        optim = dataclasses.replace(optim, steps=rule.optim_steps(n_electrons, ecp_on).value)
    if optim.damping is None:   # after the steps: the damping's rule depends on them
        optim = dataclasses.replace(optim, damping=rule.optim_damping(
            n_electrons, ecp_on, optim.solver, optim.steps).value)
    ansatz = cfg.ansatz
    from vmc.hamiltonian import resolve_laplacian
    ham = dataclasses.replace(cfg.hamiltonian, laplacian=resolve_laplacian(
        cfg.hamiltonian.laplacian, ansatz.name, n_electrons, ansatz.heads * ansatz.head_dim))
    if ham.ecp_rule is None:
        from vmc.hamiltonian import ecp_l_max
        ham = dataclasses.replace(ham, ecp_rule=rule.ecp_rule(ecp_l_max(molecule)).value)
    if ansatz.jastrow is None:
        ansatz = dataclasses.replace(ansatz, jastrow=rule.jastrow(ansatz.name).value)
    sampler = cfg.sampler
    if sampler.walkers is None:
        sampler = dataclasses.replace(sampler, walkers=rule.sampler_walkers(n_electrons,
                                                                            ecp_on).value)
    if ev.walkers is None:
        ev = dataclasses.replace(ev, walkers=sampler.walkers)
    if ev.seed is None:
        ev = dataclasses.replace(ev, seed=cfg.run.seed + 1)
    if optim.lr <= 0:
        raise InputError(f"optim.lr: {optim.lr} is not valid; valid: > 0")
    if optim.solver in ("kfac", "kfac-cg", "nystrom-cg") and optim.damping <= 0:
        raise InputError(f"optim.damping: {optim.damping} is not valid for {optim.solver}; "
                         f"valid: > 0")
    if optim.damping_decay_steps is not None and optim.solver not in rule.EXACT_SR_SOLVERS:
        raise InputError(f"optim.damping_decay_steps: not supported by {optim.solver}; "
                         f"valid: null, or optim.solver {', '.join(rule.EXACT_SR_SOLVERS)}")
    if ansatz.name == "ferminet" and len(ansatz.hidden_one) != len(ansatz.hidden_two):
        raise InputError(f"ansatz.hidden_two: {len(ansatz.hidden_two)} layers but "
                         f"ansatz.hidden_one has {len(ansatz.hidden_one)}; valid: lists of "
                         f"the same length, e.g. [32, 32, 32] and [8, 8, 8]")
    from vmc.obs_report import check_forces_supported, parse_observables
    ev = dataclasses.replace(ev, observables=parse_observables(ev.observables))
    if "forces" in ev.observables:
        check_forces_supported(cfg)
    if ev.density_centre and (len(ev.density_centre) != 3 or not all(
            isinstance(c, (int, float)) and not isinstance(c, bool) for c in ev.density_centre)):
        raise InputError(f"eval.density_centre: {list(ev.density_centre)!r} is not valid; "
                         f"valid: [] (centre of nuclear charge) or three numbers (bohr)")
    if 0 < ev.steps < 16:
        raise InputError(f"eval.steps: {ev.steps} is not valid; valid: 0 (no evaluation) or "
                         f">= 16 (reblocking needs 16 samples)")
    return dataclasses.replace(cfg, ansatz=ansatz, optim=optim, pretrain=pre, eval=ev,
                               hamiltonian=ham, sampler=sampler)


def config_from_dict(data: dict, *, name: str = "molecule", preset: Optional[str] = None,
                     overrides: tuple[str, ...] = ()) -> Config:
    """Build a validated Config from a YAML-like dict.

    Order of precedence (last wins): defaults, preset, the file, `--set` overrides.
    Molecule keys (atoms, units, charge, spin, reference) may stand at the top level.

    Raises:
      InputError: unknown key (with a did-you-mean), wrong type or range, bad molecule.
    """
    if not isinstance(data, dict):
        raise InputError("config: the file must hold a mapping with at least `atoms` "
                         "(or `molecule: {atoms: ...}`)")
    data = dict(data)
    top_mol = {k: data.pop(k) for k in list(data) if k in _MOLECULE_KEYS}
    if top_mol:
        if "molecule" in data:
            raise InputError(f"config: molecule keys {sorted(top_mol)} at the top level beside "
                             "a `molecule` section; put them all under `molecule`")
        data["molecule"] = top_mol
    if "molecule" not in data or "atoms" not in (data.get("molecule") or {}):
        raise InputError("molecule.atoms: missing; give a list of "
                         "{symbol: X, position: [x, y, z]}")
    merged: dict = {"name": name}
    if preset is not None:
        if preset not in PRESETS:
            raise InputError(f"--preset: unknown preset {preset!r}; valid: "
                             f"{', '.join(PRESETS)}" + did_you_mean(preset, PRESETS))
        merged = _merge(merged, PRESETS[preset])
    merged = _merge(merged, data)
    # a reference is for the molecule as the file writes it: record that charge and spin
    # before the overrides, so a run with another charge or spin is not compared with it
    ref = merged["molecule"].get("reference")
    if isinstance(ref, dict) and ref.get("energy") is not None:
        ref = dict(ref)
        for key in ("charge", "spin"):
            if ref.get(key) is None:
                ref[key] = merged["molecule"].get(key, 0)
        merged["molecule"] = {**merged["molecule"], "reference": ref}
    for item in overrides:
        merged = _merge(merged, _parse_override(item))
    cfg = _build(Config, merged, "")
    molecule = cfg.build_molecule()
    cfg = ecp_clip_default(cfg, merged, molecule.has_ecp)
    return _one_electron_reference(_resolve_defaults(cfg, molecule), molecule)


def _one_electron_reference(cfg: Config, molecule: Molecule) -> Config:
    """A one-electron atom or ion without a reference gets its exact energy, −Z²/2 Ha."""
    if molecule.n_electrons != 1 or len(molecule.symbols) != 1 or molecule.has_ecp or \
            cfg.molecule.reference.energy is not None:
        return cfg
    z = float(molecule.charges[0])
    ref = Reference(energy=-0.5 * z * z, source="exact: -Z^2/2 for one electron", kind="exact",
                    charge=cfg.molecule.charge, spin=cfg.molecule.spin)
    return dataclasses.replace(cfg, molecule=dataclasses.replace(cfg.molecule, reference=ref))


def load_config(path, *, preset: Optional[str] = None, overrides: tuple[str, ...] = (),
                charge: Optional[int] = None, spin: Optional[int] = None) -> Config:
    """Read a YAML config file (or an .xyz geometry, Å) and return the resolved Config.

    `charge` and `spin` (2S), when given, set molecule.charge and molecule.spin (an .xyz file
    holds neither; default 0).

    Raises:
      InputError: missing file or a directory, invalid YAML or xyz, a key given twice
        (`vmc.config_parse.load_yaml`), or any invalid setting (see config_from_dict).
    """
    path = pathlib.Path(path)
    from vmc.config_parse import load_yaml
    if path.is_dir():
        raise InputError(f"config file {str(path)!r}: is a directory; valid: a molecule .yaml "
                         f"file, or an .xyz file (Å), e.g. systems/H2.yaml")
    if not path.is_file():
        raise InputError(f"config file {str(path)!r}: not found")
    extra = tuple(f"molecule.{k}={v}" for k, v in (("charge", charge), ("spin", spin))
                  if v is not None)
    overrides = tuple(overrides) + extra
    if path.suffix.lower() == ".xyz":
        from vmc.config_parse import read_xyz
        return config_from_dict(read_xyz(path), name=path.stem, preset=preset,
                                overrides=overrides)
    try:
        data = load_yaml(path.read_text(), repr(str(path)))
    except yaml.YAMLError as err:
        line = getattr(getattr(err, "problem_mark", None), "line", None)
        where = f" at line {line + 1}" if line is not None else ""
        problem = getattr(err, "problem", None)
        what = f": {problem}" if problem else ""
        raise InputError(f"config file {str(path)!r}: invalid YAML{where}{what}; valid: "
                         f"`key: value` lines, lists as `- item` or [a, b]") from None
    return config_from_dict(data if data is not None else {}, name=path.stem, preset=preset,
                            overrides=overrides)


def to_dict(cfg: Config) -> dict:
    """The resolved config as plain YAML-able data (tuples become lists)."""
    def plain(v):
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v
    return plain(cfg)


def dump_yaml(cfg: Config) -> str:
    """The resolved config as YAML text (every default written out)."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=None)

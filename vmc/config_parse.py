"""Reading config values: type and range checks against the dataclass fields of vmc.config,
numbers as people write them, `--set` overrides and merging (used by vmc.config), and the
YAML reading that refuses a key given twice (`load_yaml`).

Errors are `vmc.errors.InputError` with one line naming the field and what would be valid.
"""

from __future__ import annotations

import dataclasses
import re
import typing

import yaml

from vmc.config_schema import MoleculeConfig
from vmc.errors import InputError, did_you_mean


# A decimal number as people write it: 1e-3, 1E3, -2.5, .5, 3., +1.0e-10 (YAML 1.1, which
# PyYAML implements, reads the forms without a dot, like 1e-3, as strings).
_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def number(value):
    """`value` as a float if it is a string holding a decimal number ('1e-3'), else itself.

    Only plain decimal notation counts: 'nan', 'inf', '0x10' or '1_000' stay strings (and
    fail where a number is expected, naming the field).
    """
    if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        return float(value)
    return value


def integral(value):
    """Numbers as people write them for an integer: '3e2', 300.0 or '300.0' is the integer
    300; anything else (32.5, 'many', True) is returned unchanged, for the caller's check."""
    if isinstance(value, bool) or isinstance(value, int):
        return value
    as_number = number(value)
    if isinstance(as_number, float) and as_number.is_integer() and abs(as_number) < 2 ** 53:
        return int(as_number)
    return value


def _numeric_positions(atoms):
    """Atoms with numeric-string coordinates ('1e-3') as floats; anything else unchanged
    (vmc.system validates it)."""
    if not isinstance(atoms, (list, tuple)):
        return atoms
    out = []
    for atom in atoms:
        if isinstance(atom, dict) and isinstance(atom.get("position"), (list, tuple)):
            atom = {**atom, "position": [number(c) for c in atom["position"]]}
        out.append(atom)
    return out


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp)).replace("typing.", "")


def _coerce(path: str, value, tp, meta):
    """Check `value` against the annotation `tp` and metadata; return the coerced value."""
    origin = typing.get_origin(tp)
    if origin is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(path, value, args[0], {**meta, "optional": True})
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise InputError(f"{path}: expected a mapping of {sorted(f.name for f in dataclasses.fields(tp))}, got {value!r}")
        return _build(tp, value, path)
    if tp is bool:
        if not isinstance(value, bool):
            raise InputError(f"{path}: expected true or false, got {value!r}")
        return value
    if tp is int:
        value = integral(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise InputError(f"{path}: expected an integer, got {value!r}")
    elif tp is float:
        value = number(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InputError(f"{path}: expected a number, got {value!r}")
        value = float(value)
        if value != value or value in (float("inf"), float("-inf")):
            raise InputError(f"{path}: expected a finite number, got {value!r}")
    elif tp is str:
        if not isinstance(value, str):
            listed = meta.get("choices")
            raise InputError(f"{path}: expected a string, got {value!r}" + (
                f"; valid: {', '.join(map(str, listed))}" if listed else ""))
    elif tp is tuple:
        if path == "molecule.atoms":
            value = _numeric_positions(value)
        if path == "eval.observables" and isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if isinstance(value, (int, float)) and not isinstance(value, bool) and "hidden" in path:
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise InputError(f"{path}: expected a list, got {value!r}")
        if "hidden" in path or path == "run.keep_steps":
            value = [integral(v) for v in value]
        if "hidden" in path:
            if not value or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0
                                    for v in value):
                raise InputError(f"{path}: expected a non-empty list of positive integers, got {value!r}")
        if path == "run.keep_steps" and not all(
                isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value):
            raise InputError(f"{path}: expected a list of positive integers (steps), got "
                             f"{value!r}")
        return tuple(sorted(set(value))) if path == "run.keep_steps" else tuple(value)
    choices, lo, hi = meta.get("choices"), meta.get("lo"), meta.get("hi")
    gt, lt = meta.get("gt"), meta.get("lt")
    if choices is not None and value not in choices:
        raise InputError(f"{path}: {value!r} is not valid; valid: {', '.join(map(str, choices))}"
                         + did_you_mean(value, map(str, choices)))
    if lo is not None and value < lo:
        raise InputError(f"{path}: {value!r} is too small; valid: >= {lo}")
    if hi is not None and value > hi:
        raise InputError(f"{path}: {value!r} is too large; valid: <= {hi}")
    if gt is not None and value <= gt:
        raise InputError(f"{path}: {value!r} is too small; valid: > {gt}"
                         + (" or null" if meta.get("optional") else ""))
    if lt is not None and value >= lt:
        raise InputError(f"{path}: {value!r} is too large; valid: < {lt}")
    return value


def _build(cls, data: dict, prefix: str):
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if key not in fields:
            # at the top level the molecule's own keys are valid too (vmc.config moves them)
            valid = list(fields) + ([] if prefix else
                                    [f.name for f in dataclasses.fields(MoleculeConfig)])
            raise InputError(f"{path}: unknown setting; valid keys in "
                             f"{prefix or 'the top level'}: {', '.join(valid)}"
                             + did_you_mean(key, valid))
        kwargs[key] = _coerce(path, value, hints[key], fields[key].metadata)
    return cls(**kwargs)


def _merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def _parse_override(item: str) -> dict:
    if "=" not in item:
        raise InputError(f"--set {item!r}: expected section.key=value, e.g. optim.lr=0.1")
    key, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    parts = key.strip().split(".")
    if not all(parts):
        raise InputError(f"--set {item!r}: expected section.key=value, e.g. optim.lr=0.1")
    for p in reversed(parts):
        value = {p: value}
    return value


def load_yaml(text: str, where: str = "the file"):
    """`yaml.safe_load(text)`, but a mapping key given twice at any depth is refused (PyYAML
    keeps the last one silently: `spin: 0` and later `spin: 2` would run a triplet).

    Raises:
      InputError: a key given twice, naming its path (e.g. molecule.spin), `where` and the
        lines.
      yaml.YAMLError: text that is not YAML (the caller words that error).
    """
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _refuse_duplicate_keys(loader, node, "", where, set())
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _refuse_duplicate_keys(loader, node, path: str, where: str, seen: set) -> None:
    """Walk the composed YAML `node` (an alias is walked once) and raise InputError at the
    first mapping that gives a key twice."""
    if id(node) in seen:
        return
    seen.add(id(node))
    if isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _refuse_duplicate_keys(loader, item, f"{path}[{i}]", where, seen)
        return
    if not isinstance(node, yaml.MappingNode):
        return
    first: dict = {}
    for key_node, value_node in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":   # `<<: *anchor` may repeat keys
            continue
        try:
            key = loader.construct_object(key_node, deep=True)
            hash(key)
        except (yaml.YAMLError, TypeError):   # a key that is no scalar: left to the checks
            continue
        name = f"{path}.{key}" if path else str(key)
        if key in first:
            a, b = first[key] + 1, key_node.start_mark.line + 1
            lines = f"lines {a} and {b}" if a != b else f"both on line {a}"
            raise InputError(f"{name}: given twice in {where} ({lines}); valid: one value per "
                             f"key")
        first[key] = key_node.start_mark.line
        _refuse_duplicate_keys(loader, value_node, name, where, seen)


def read_xyz(path) -> dict:
    """The molecule of an .xyz file: {atoms: [{symbol, position}], units: angstrom}.

    Format: a line with the atom count, a comment line, then one line per atom
    ``Symbol x y z`` in Å (extra columns ignored; the symbol in any case, or the atomic
    number); nothing but blank lines after the last atom.

    Raises:
      InputError: a count that does not match the atom lines (too few, or more lines
        after them), or a line that is not ``Symbol x y z``, naming the file and line.
    """
    import pathlib
    path = pathlib.Path(path)
    lines = path.read_text().splitlines()
    try:
        n = int(lines[0].split()[0])
    except (IndexError, ValueError):
        raise InputError(f"{path}: line 1 must be the number of atoms (xyz format)") from None
    atoms = []
    for k, line in enumerate(lines[2:2 + n], start=3):
        parts = line.split()
        try:
            atoms.append({"symbol": parts[0], "position": [float(v) for v in parts[1:4]]})
            if len(parts) < 4:
                raise ValueError
        except (IndexError, ValueError):
            raise InputError(f"{path}: line {k}: expected 'Symbol x y z' (Å), got "
                             f"{line.strip()!r}") from None
    if len(atoms) != n:
        raise InputError(f"{path}: line 1 says {n} atoms but {len(atoms)} atom lines follow")
    for k, line in enumerate(lines[2 + n:], start=3 + n):
        if line.strip():
            raise InputError(f"{path}: line {k}: {line.strip()!r} after the {n} atoms line 1 "
                             f"announces; valid: exactly {n} atom lines (one frame), or "
                             f"correct the count")
    for atom in atoms:
        atom["symbol"] = _xyz_symbol(atom["symbol"])
    return {"atoms": atoms, "units": "angstrom"}


def _xyz_symbol(text: str) -> str:
    """An xyz file's element as written by other programs: 'li' or 'LI' is Li, '3' is Li
    (an atomic number); anything else is left for the element check to name."""
    if text.isdigit():
        from pyscf.data.elements import ELEMENTS
        z = int(text)
        return ELEMENTS[z] if 0 < z < len(ELEMENTS) else text
    return text[:1].upper() + text[1:].lower() if text.isalpha() else text


def ecp_clip_default(cfg, given: dict, has_ecp: bool):
    """With an ECP (`has_ecp`: `Molecule.has_ecp`) and `optim.clip` not given (`given`: the
    merged preset/file/--set dict), no E_L clipping.

    The median ± 5·MAD clip is made for the symmetric, noisy E_L tails near nodes. With an
    ECP the early network is too large inside the core, where the repulsive non-local s
    channel makes E_L ≈ +15 Ha (Na); those walkers are rare once the bulk has converged
    (variance ~1e-5 Ha²) and the clip cuts their systematic signal ~50×, so training stalls
    at a biased fixed point: Na +13.5 mHa, Mg +54 mHa after the default steps, against
    −0.01 and +1.2 mHa unclipped (README, "Pseudopotentials")."""
    if "clip" in (given.get("optim") or {}) or not has_ecp:
        return cfg
    return dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, clip=None))

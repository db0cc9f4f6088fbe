"""Numbers as people write them: PyYAML (YAML 1.1) reads 1e-3, with no dot, as a string; the
config takes it as the number it is for every float setting, every coordinate and the
reference energy, from YAML files and from `--set`. Strings that are not numbers still give
one line naming the field."""

import dataclasses
import pathlib
import typing

import pytest
import yaml

from vmc import config as C
from vmc.cli import main
from vmc.config import Config, dump_yaml, load_config, number
from vmc.errors import InputError

H2_FILE = """\
atoms:
  - {symbol: H, position: [0, 0, -7e-1]}
  - {symbol: H, position: [1E-2, -2e-2, 7E-1]}
reference: {energy: -1.1744757142e0, hf_limit: -1.1336e0, kind: exact}
optim: {lr: 5e-2, damping: 1e-4, norm_constraint: 3E-3, cg_tol: 1e-5}
sampler: {width: 2e-1}
"""


def _float_fields():
    """(dotted path, default) of every float setting of Config (Optional[float] included)."""
    out = []

    def walk(cls, prefix):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            tp, path = hints[f.name], f"{prefix}{f.name}"
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            if dataclasses.is_dataclass(tp):
                walk(tp, path + ".")
            elif tp is float or args == [float]:
                out.append((path, f.default))
    walk(Config, "")
    return out


FLOAT_FIELDS = _float_fields()
# a valid value for the settings whose default is None
NONE_DEFAULTS = {"molecule.reference.energy": -2.5, "molecule.reference.hf_limit": -2.25,
                 "optim.lr": 0.05, "optim.damping": 2e-3, "run.max_minutes": 30.0,
                 "optim.damping_decay_steps": 2e3, "eval.target_stderr_mha": 5e-1}


def test_every_float_setting_is_found():
    paths = {p for p, _ in FLOAT_FIELDS}
    assert {"optim.lr", "optim.damping", "sampler.width", "molecule.reference.energy",
            "run.checkpoint_minutes", "optim.lr_decay_steps", "pretrain.lr"} <= paths
    assert len(paths) >= 20


@pytest.mark.parametrize("path,default", FLOAT_FIELDS, ids=[p for p, _ in FLOAT_FIELDS])
def test_every_float_setting_takes_1e_notation_from_set_and_yaml(tmp_path, path, default):
    value = NONE_DEFAULTS.get(path, default)
    mantissa, exponent = f"{value:e}".split("e")
    text = f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"   # e.g. 2e-1, -1.17e0
    assert "." not in text or not text.split("e")[0].endswith(".")
    if "." not in text:
        assert isinstance(yaml.safe_load(text), str)   # what PyYAML does with it
    section, key = path.rsplit(".", 1)
    from_set = load_config(_he(tmp_path), overrides=(f"{path}={text}",))
    nested = {key: text}
    for part in reversed(section.split(".")):
        nested = {part: nested}
    data = {"atoms": [{"symbol": "He", "position": [0.0, 0.0, 0.0]}], **nested}
    if "molecule" in data:   # molecule keys stand beside atoms
        data = {**data.pop("molecule"), "atoms": data["atoms"]}
    path_yaml = tmp_path / "f.yaml"
    path_yaml.write_text(yaml.safe_dump(data))
    from_file = load_config(path_yaml)
    for cfg in (from_set, from_file):
        got = cfg
        for part in path.split("."):
            got = getattr(got, part)
        assert isinstance(got, float) and got == float(text), (path, text, got)


def _he(tmp_path):
    p = tmp_path / "he.yaml"
    p.write_text("atoms:\n  - {symbol: He, position: [0.0, 0.0, 0.0]}\n")
    return p


def test_yaml_file_with_exponents_everywhere(tmp_path):
    path = tmp_path / "h2.yaml"
    path.write_text(H2_FILE)
    cfg = load_config(path)
    assert [a["position"] for a in cfg.molecule.atoms] == [[0.0, 0.0, -0.7],
                                                         [0.01, -0.02, 0.7]]
    mol = cfg.build_molecule()
    assert mol.positions.tolist() == [[0.0, 0.0, -0.7], [0.01, -0.02, 0.7]]
    assert abs(mol.nuclear_repulsion - 1 / (0.01 ** 2 + 0.02 ** 2 + 1.4 ** 2) ** 0.5) < 1e-15
    assert cfg.molecule.reference.energy == -1.1744757142
    assert cfg.molecule.reference.hf_limit == -1.1336
    assert (cfg.optim.lr, cfg.optim.damping, cfg.optim.norm_constraint, cfg.optim.cg_tol,
            cfg.sampler.width) == (0.05, 1e-4, 3e-3, 1e-5, 0.2)
    # config.yaml as written by `vmc run` reads back to the same config
    again = tmp_path / "again.yaml"
    again.write_text(dump_yaml(cfg))
    assert load_config(again) == cfg


def test_coordinates_and_reference_from_set(tmp_path):
    cfg = load_config(_he(tmp_path), overrides=(
        "molecule.atoms=[{symbol: He, position: [1e-1, 0, -2E0]}]",
        "molecule.reference.energy=-2.903724377034e0", "molecule.units=angstrom"))
    assert cfg.molecule.atoms[0]["position"] == [0.1, 0, -2.0]
    assert cfg.molecule.reference.energy == -2.903724377034
    assert cfg.build_molecule().positions[0, 2] == -2.0 * 1.8897261246


@pytest.mark.parametrize("text,expected", [("1e-3", 1e-3), ("1E3", 1000.0), ("-2.5e+1", -25.0),
                                           (".5e1", 5.0), ("3.e0", 3.0), (" 2e-1 ", 0.2),
                                           ("+7e0", 7.0)])
def test_number_reads_decimal_notation(text, expected):
    assert number(text) == expected and isinstance(number(text), float)


@pytest.mark.parametrize("text", ["nan", "inf", "1e-3x", "e3", "0x10", "1_000", "1e", "", "fast"])
def test_number_leaves_other_strings_alone(text):
    assert number(text) == text


BAD = [
    (("optim.lr=1e-3x",), ["optim.lr", "expected a number", "'1e-3x'"]),
    (("optim.damping=nan",), ["optim.damping", "expected a number", "'nan'"]),
    (("sampler.width=.nan",), ["sampler.width", "finite"]),
    (("molecule.reference.energy=minus two",), ["molecule.reference.energy", "'minus two'"]),
    (("molecule.atoms=[{symbol: He, position: [1e-1, zero, 0]}]",),
     ["molecule.atoms[0].position", "three finite numbers", "'zero'"]),
    (("optim.steps=10.5",), ["optim.steps", "expected an integer", "10.5"]),
    (("optim.solver=kfac", "optim.damping_decay_steps=1000"),
     ["optim.damping_decay_steps", "kfac", "sample, dense, cg, nystrom-cg"]),
]


@pytest.mark.parametrize("overrides,words", BAD, ids=[b[0][0] for b in BAD])
def test_strings_that_are_not_numbers_name_the_field(tmp_path, capsys, overrides, words):
    with pytest.raises(InputError) as err:
        load_config(_he(tmp_path), overrides=overrides)
    for w in words:
        assert w in str(err.value), (w, str(err.value))
    argv = ["check", str(_he(tmp_path))] + [a for o in overrides for a in ("--set", o)]
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0] == f"error: {err.value}"


def test_hf_ansatz_resolves_no_pretraining(tmp_path):
    li = tmp_path / "li.yaml"
    li.write_text("atoms:\n  - {symbol: Li, position: [0.0, 0.0, 0.0]}\nspin: 1\n")
    assert load_config(li).pretrain.steps == 1000
    assert load_config(li, overrides=("ansatz.name=hf",)).pretrain.steps == 0
    assert C.load_config(li, overrides=("ansatz.name=hf", "pretrain.steps=5")).pretrain.steps == 5


def test_reference_is_for_the_files_charge_and_spin():
    """A reference holds for the molecule as its file writes it: --charge/--spin or a
    molecule.* override that changes either leaves the run with no error against it (the
    summary's note, `vmc analyze`), while the file's own charge and spin keep it."""
    from vmc.analysis import parse_reference
    from vmc.config import load_config, reference_mismatch, to_dict
    root = pathlib.Path(__file__).resolve().parents[1] / "systems"
    h2 = load_config(root / "H2.yaml")
    assert (h2.molecule.reference.charge, h2.molecule.reference.spin) == (0, 0)
    assert reference_mismatch(h2) is None
    ref, why = parse_reference(to_dict(h2))
    assert ref.energy == h2.molecule.reference.energy and why is None
    triplet = load_config(root / "H2.yaml", overrides=("molecule.spin=2",))
    note = reference_mismatch(triplet)
    assert "charge 0, spin 0" in note and "charge 0, spin 2" in note, note
    assert parse_reference(to_dict(triplet)) == (None, note)   # vmc analyze's note
    cation = load_config(root / "LiH.yaml", charge=1, spin=1)
    assert "charge 1, spin 1" in reference_mismatch(cation)
    assert parse_reference(to_dict(cation)) == (None, reference_mismatch(cation))
    # the same charge given again, or an override of the reference itself, still compares
    assert reference_mismatch(load_config(root / "LiH.yaml", charge=0, spin=0)) is None
    li_cation = load_config(root / "Li.yaml", charge=1, spin=0,
                            overrides=("molecule.reference.energy=-7.279913",))
    assert (li_cation.molecule.reference.charge, li_cation.molecule.reference.spin) == (0, 1)
    assert reference_mismatch(li_cation) is not None      # still Li's charge and spin ...
    li_cation = load_config(root / "Li.yaml", charge=1, spin=0, overrides=(
        "molecule.reference.energy=-7.279913", "molecule.reference.charge=1",
        "molecule.reference.spin=0"))
    assert reference_mismatch(li_cation) is None           # ... unless the override says so
    # a one-electron system without a reference gets its exact −Z²/2, for the molecule as run
    he_ion = C.config_from_dict({"atoms": [{"symbol": "He", "position": [0, 0, 0]}],
                                 "charge": 1, "spin": 1})
    assert he_ion.molecule.reference.energy == -2.0 and reference_mismatch(he_ion) is None


def test_integers_written_as_people_write_them():
    """3e2 and 300.0 are the integer 300 for an integer setting; 32.5 is not an integer."""
    from vmc.config import config_from_dict
    from vmc.errors import InputError
    atoms = {"atoms": [{"symbol": "He", "position": [0, 0, 0]}]}
    for text in ("3e2", "300.0", "300"):
        c = config_from_dict(dict(atoms), overrides=(f"sampler.walkers={text}",))
        assert c.sampler.walkers == 300 and isinstance(c.sampler.walkers, int)
    with pytest.raises(InputError, match="expected an integer"):
        config_from_dict(dict(atoms), overrides=("sampler.walkers=32.5",))
    c = config_from_dict(dict(atoms), overrides=("ansatz.hidden_one=[1.6e1, 16.0]",
                                                 "ansatz.hidden_two=[4, 4]",
                                                 "run.keep_steps=[1e3, 4e3]"))
    assert c.ansatz.hidden_one == (16, 16) and c.run.keep_steps == (1000, 4000)
    from vmc.cli import _integer
    assert _integer("3e1") == 30 and _integer("30") == 30
    with pytest.raises(Exception, match="invalid integer"):
        _integer("3.5")


def test_load_yaml_refuses_a_key_given_twice_at_any_depth():
    """PyYAML keeps the last of two equal keys; the config loader names the key path and
    the lines instead (in a list item too), and still reads merge keys and aliases."""
    from vmc.config_parse import load_yaml
    with pytest.raises(InputError, match=r"^molecule\.spin: given twice in 'f\.yaml' "
                                         r"\(lines 3 and 5\); valid: one value per key$"):
        load_yaml("molecule:\n  atoms: []\n  spin: 0\n  charge: 0\n  spin: 2\n", "'f.yaml'")
    with pytest.raises(InputError, match=r"^molecule\.atoms\[1\]\.symbol: given twice in .* "
                                         r"\(both on line 4\)"):
        load_yaml("molecule:\n  atoms:\n    - {symbol: H, position: [0, 0, 0]}\n"
                  "    - {symbol: H, position: [0, 0, 1], symbol: He}\n", "'f.yaml'")
    text = "base: &b {lr: 0.1, steps: 3}\noptim:\n  <<: *b\n  lr: 0.2\nsampler: *b\n"
    assert load_yaml(text) == yaml.safe_load(text)
    assert load_yaml("") is None and load_yaml("# nothing\n") is None


@pytest.mark.parametrize("setting", ["run.seed=99999999999999999999", "run.seed=-1",
                                     "eval.seed=2147483648"])
def test_seeds_out_of_range_are_bad_input(setting):
    """A seed JAX cannot take (beyond a C long, where seeding raised OverflowError after the
    whole training) or a negative one is refused up front with its valid range."""
    from vmc.config import config_from_dict
    from vmc.errors import InputError
    with pytest.raises(InputError) as e:
        config_from_dict({"atoms": [{"symbol": "He", "position": [0, 0, 0]}]},
                         overrides=(setting,))
    assert str(e.value).startswith(setting.split("=")[0] + ":"), str(e.value)
    assert ("<= 2147483647" in str(e.value)) or (">= 0" in str(e.value)), str(e.value)
    assert config_from_dict({"atoms": [{"symbol": "He", "position": [0, 0, 0]}]},
                            overrides=("run.seed=2147483647",)).eval.seed == 2**31

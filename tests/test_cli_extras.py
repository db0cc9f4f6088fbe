"""Small things users notice: `vmc --version`, help text on every option, `vmc check` with
the geometry in bohr, E_nn, the Hartree–Fock energy and the network, an .xyz geometry; and
README tables that render (as many cells per row as the header)."""

import argparse
import pathlib
import re

import jax
import pytest

import vmc
from vmc.cli import _parser, main
from vmc.analyze import _parser as analyze_parser
from vmc.system import ANGSTROM_TO_BOHR

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _call(argv):
    before = jax.config.jax_enable_x64
    try:
        return main([str(a) for a in argv])
    finally:
        jax.config.update("jax_enable_x64", before)


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"vmc {vmc.__version__}"


def _options(parser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from ((f"{name} {o}", a) for o, a in _options(sub))
        elif not isinstance(action, argparse._HelpAction):
            yield "/".join(action.option_strings) or action.dest, action


def test_every_option_has_help():
    missing = [name for name, a in list(_options(_parser())) + list(_options(analyze_parser()))
               if not a.help]
    assert missing == []


def test_check_of_an_xyz_file(tmp_path, capsys):
    """H2 at 0.74 Å: positions ±0.37 Å = ±0.699189 bohr, E_nn = 1/(0.74 Å in bohr)."""
    xyz = tmp_path / "h2.xyz"
    xyz.write_text("2\nhydrogen molecule\nH 0 0 -0.37\nH 0 0 0.37\n")
    assert _call(["check", xyz, "--preset", "tiny"]) == 0
    out = capsys.readouterr().out
    z = 0.37 * ANGSTROM_TO_BOHR
    assert f"  1 H      0.000000     0.000000 {z:12.6f}" in out
    e_nn = float(re.search(r"nuclear repulsion E_nn: (\S+) Ha", out).group(1))
    assert e_nn == pytest.approx(1 / (0.74 * ANGSTROM_TO_BOHR), abs=1e-6)
    e_hf = float(re.search(r"hartree-fock: RHF/cc-pvdz energy (\S+) Ha", out).group(1))
    assert -1.13 < e_hf < -1.12   # RHF/cc-pVDZ of H2 at 0.74 Å: -1.1287 Ha
    assert "network: ferminet: one-electron widths [8, 8], two-electron [4, 4]" in out
    # charge and spin from the command line: H2+ has one electron
    assert _call(["check", xyz, "--preset", "tiny", "--charge", "1", "--spin", "1"]) == 0
    assert "n_electrons: 1  n_up: 1  n_down: 0" in capsys.readouterr().out


def test_bad_xyz_is_one_error_line(tmp_path, capsys):
    xyz = tmp_path / "bad.xyz"
    xyz.write_text("2\ncomment\nH 0 0 0\n")
    assert _call(["check", xyz]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "2 atoms but 1 atom lines" in err
    # a count too low would drop atoms: the line after them is named
    xyz.write_text("1\ncomment\nLi 0 0 0\nH 1.595 0 0\n\n")
    assert _call(["check", xyz, "--spin", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "line 4: 'H 1.595 0 0' after the 1 atoms" in err, err


def test_xyz_symbols_as_other_programs_write_them():
    from vmc.config_parse import read_xyz
    import pathlib
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        xyz = pathlib.Path(d) / "lih.xyz"
        xyz.write_text("3\nc\nli 0 0 0\nH 1.595 0 0\n1 0 0 -1.5\n")
        assert [a["symbol"] for a in read_xyz(xyz)["atoms"]] == ["Li", "H", "H"]


def _tables(text):
    """Markdown tables of a text: lists of consecutive lines that start with '|'."""
    block = []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            block.append(line)
        elif block:
            yield block
            block = []


def _cells(line):
    """Cells of a table row as GitHub renders it: every '|' splits unless escaped (\\|),
    inside `code` too."""
    out, cur, i = [], "", 0
    body = line.strip()
    while i < len(body):
        c = body[i]
        if c == "\\" and i + 1 < len(body) and body[i + 1] == "|":
            cur += "|"
            i += 2
            continue
        if c == "|":
            out.append(cur)
            cur = ""
        else:
            cur += c
        i += 1
    out.append(cur)
    return out[1:-1]   # the text before the first and after the last '|'


def test_readme_tables_have_as_many_cells_as_their_header():
    text = (ROOT / "README.md").read_text()
    tables = list(_tables(text))
    assert len(tables) >= 8
    bad = []
    for t in tables:
        head = len(_cells(t[0]))
        assert re.fullmatch(r"\|( *:?-+:? *\|)+", t[1].replace(" ", "")), t[1]
        for row in t[1:]:
            if len(_cells(row)) != head:
                bad.append(f"{head} header cells, {len(_cells(row))} in: {row[:80]}")
    assert bad == []


def test_cell_counter_sees_an_unescaped_bar():
    assert len(_cells("| a | target |error|, x | b |")) == 5
    assert len(_cells(r"| a | target \|error\|, x | b |")) == 3
    assert len(_cells("| `log|ψ|` | x |")) == 4   # GitHub splits inside code spans too

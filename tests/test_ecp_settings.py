"""The `hamiltonian.ecp` setting as users write it: name spelling, mappings, elements no
ECP covers, the pretraining basis, and the settings a resume or warm start must keep."""

import pathlib

import pytest

from vmc.config import config_from_dict, dump_yaml, load_config, reference_mismatch
from vmc.errors import InputError
from vmc.system import make_molecule

WATER = [{"symbol": "O", "position": [0.0, 0.0, 0.0]},
         {"symbol": "H", "position": [0.0, 0.0, 1.8]},
         {"symbol": "H", "position": [1.8, 0.0, 0.0]}]
SYSTEMS = pathlib.Path(__file__).resolve().parent.parent / "systems"


def _one(symbol):
    return [{"symbol": symbol, "position": [0.0, 0.0, 0.0]}]


def test_ecp_names_are_case_insensitive_and_meet_their_reference():
    """'ccECP' (the paper's spelling) is 'ccecp': the same Hamiltonian, so the run is
    compared with the ccECP reference instead of being told the reference is for another
    Hamiltonian."""
    assert make_molecule(_one("O"), spin=2, ecp="ccECP").ecp == ("ccecp",)
    assert make_molecule(WATER, ecp={"O": "CCECP"}).ecp == ("ccecp", None, None)
    for name in ("ccECP", "CCECP"):
        cfg = load_config(SYSTEMS / "O_ccecp.yaml", overrides=(f"hamiltonian.ecp={name}",))
        assert reference_mismatch(cfg) is None
    # the check can fail: another Hamiltonian is still reported
    assert reference_mismatch(load_config(SYSTEMS / "O_ccecp.yaml",
                                          overrides=("hamiltonian.ecp=null",))) is not None


@pytest.mark.parametrize("atoms,spin,ecp_set,words,absent", [
    # a typo of the element (S for Si, or an element not in the molecule) is not ignored
    (_one("Si"), 2, {"S": "ccecp"},
     ["hamiltonian.ecp.S: no S atom in the molecule; valid: its elements (Si)"], []),
    (WATER, 0, {"O": "ccecp", "N": "ccecp"}, ["hamiltonian.ecp.N", "(O, H)"], []),
    # beyond Kr without a ccECP: the advice names the ECPs PySCF has for it, not ccecp
    # (which it lacks) and not null (all-electron stops at Kr)
    (_one("Xe"), 0, None, ["molecule.atoms[0].symbol: Xe is beyond Kr",
                           "valid: hamiltonian.ecp: lanl2dz"], ["ccecp", "null"]),
    (_one("Xe"), 0, "ccecp", ["PySCF has no 'ccecp' ECP for Xe; valid: hamiltonian.ecp: "
                              "lanl2dz"], ["null"]),
    (_one("I"), 1, None, ["valid: hamiltonian.ecp: ccecp (or lanl2dz"], []),
    # an element at or below Kr without that ECP may stay all-electron
    (_one("O"), 2, {"O": "lanl2dz"}, ["no 'lanl2dz' ECP for O", "valid: hamiltonian.ecp: "
                                      "ccecp", "or null (all-electron)"], ["lanl2dz"]),
    # charge and spin count valence electrons with an ECP, and the message says so
    (_one("O"), 1, "ccecp", ["molecule.spin: 2S = 1 does not fit 6 electrons (valence: the "
                             "ECPs remove 2 core electrons)"], []),
])
def test_ecp_setting_errors_name_what_is_valid(atoms, spin, ecp_set, words, absent):
    with pytest.raises(InputError) as e:
        make_molecule(atoms, spin=spin, ecp=ecp_set)
    msg = str(e.value)
    assert "\n" not in msg and all(w in msg for w in words), msg
    valid = msg.split("valid:", 1)[1]
    assert not any(w in valid for w in absent), msg


def test_the_pretraining_basis_follows_the_ecp():
    """ccECP pairs with ccecp-cc-pvdz; another ECP with PySCF's basis of its own name (a
    lanl2dz Xe run asked for ccecp-cc-pvdz, which PySCF does not have for Xe)."""
    def basis(atoms, spin, ecp_set):
        return config_from_dict({"atoms": atoms, "spin": spin},
                                overrides=(f"hamiltonian.ecp={ecp_set}",)).pretrain.basis
    assert basis(_one("O"), 2, "ccecp") == "ccecp-cc-pvdz"
    assert basis(_one("Xe"), 0, "lanl2dz") == "lanl2dz"
    assert basis(WATER, 0, "sbkjc") == "sbkjc"
    assert basis(_one("O"), 2, "null") == "cc-pvdz"


def test_resume_refuses_an_ecp_name_changed_to_a_mapping(tmp_path):
    """A name and a mapping are different shapes of one setting: changing one to the other
    changes the Hamiltonian (here H gets its ccECP too), so a resume must refuse it like any
    other change of `hamiltonian.ecp` (it was compared key by key and slipped through)."""
    from vmc.precheck import check_resume_config
    run = tmp_path / "run"
    run.mkdir()
    stored = config_from_dict({"atoms": WATER}, preset="tiny",
                              overrides=("hamiltonian.ecp=ccecp",))
    (run / "config.yaml").write_text(dump_yaml(stored))
    assert check_resume_config(stored, run) == []
    for new in ("hamiltonian.ecp={O: ccecp, H: ccecp}", "hamiltonian.ecp={O: null}"):
        cfg = config_from_dict({"atoms": WATER}, preset="tiny", overrides=(new,))
        with pytest.raises(InputError) as e:
            check_resume_config(cfg, run)
        assert "hamiltonian.ecp: 'ccecp' there, {'O':" in str(e.value), str(e.value)


def test_a_warm_start_across_hamiltonians_names_the_ecp(tmp_path):
    """--init-from an all-electron run into a ccECP one fails on the envelope's shapes; the
    message names hamiltonian.ecp, the setting that differs."""
    from vmc.warmstart import _differences
    run = tmp_path / "src"
    run.mkdir()
    (run / "config.yaml").write_text(dump_yaml(config_from_dict(
        {"atoms": _one("O"), "spin": 2}, preset="tiny", overrides=("hamiltonian.ecp=ccecp",))))
    here = config_from_dict({"atoms": _one("O"), "spin": 2}, preset="tiny")
    msg = _differences(here, run, "shape mismatch")
    assert msg.startswith(": hamiltonian.ecp: ccecp there, all-electron here; valid:"), msg
    assert _differences(load_config(run / "config.yaml"), run, "x").endswith(
        "valid: a run of the same network settings, atoms, charge, spin and hamiltonian.ecp")

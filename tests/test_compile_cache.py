"""Where JAX's persistent compilation cache goes: environment variable, setting, default."""

import pathlib

from vmc.compile_cache import cache_dir


def test_environment_wins_then_setting_then_user_cache_folder(tmp_path):
    home = {"XDG_CACHE_HOME": str(tmp_path / "xdg")}
    assert cache_dir("auto", home) == tmp_path / "xdg" / "vmc" / "jax"
    assert cache_dir(str(tmp_path / "mine"), home) == tmp_path / "mine"
    assert cache_dir("off", home) is None
    env = {**home, "VMC_JAX_CACHE": str(tmp_path / "env")}
    assert cache_dir("off", env) == tmp_path / "env"          # the environment wins
    for off in ("off", "0", "none", "False", ""):
        assert cache_dir("auto", {**home, "VMC_JAX_CACHE": off}) is None
    assert cache_dir("auto", {}) == pathlib.Path.home() / ".cache" / "vmc" / "jax"

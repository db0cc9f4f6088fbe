"""Where JAX's persistent compilation cache goes: environment variable, setting, default."""

import pathlib

from vmc.compile_cache import MIN_COMPILE_SECONDS, cache_dir, min_compile_seconds


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


def test_write_threshold_from_the_environment_or_the_default():
    assert min_compile_seconds({}) == MIN_COMPILE_SECONDS == 0.5
    assert min_compile_seconds({"VMC_JAX_CACHE_MIN_SECONDS": "0"}) == 0.0
    assert min_compile_seconds({"VMC_JAX_CACHE_MIN_SECONDS": "2.5"}) == 2.5
    for bad in ("-1", "soon", ""):           # never fails a run: the default
        assert min_compile_seconds({"VMC_JAX_CACHE_MIN_SECONDS": bad}) == 0.5


def test_resumed_state_lowers_to_the_fresh_runs_program(tmp_path):
    """A state read back from a checkpoint must give the training step the same XLA program
    as a fresh start (else `--resume` misses the persistent cache and compiles again):
    restored leaves that were committed to a device lowered with sharding annotations."""
    import jax
    import jax.numpy as jnp

    from vmc import stages
    from vmc.config import load_config
    from vmc.loop import save_checkpoint
    from vmc.train import build, init_state, make_train_step

    cfg = load_config(pathlib.Path(__file__).parent.parent / "systems" / "H2.yaml",
                      preset="tiny", overrides=("optim.solver=adam", "pretrain.steps=0"))
    with jax.enable_x64(True):     # as the CLI: float64 available, the network in float32
        setup = build(cfg, hf=None)
        fresh = init_state(setup, jax.random.PRNGKey(0))
        save_checkpoint(tmp_path, fresh, 3, cfg, keep=1)
        restored, step, _ = stages.restore(setup, tmp_path, lambda line: None)
        assert step == 3
        fn = make_train_step(setup)
        key, zero = jax.random.PRNGKey(1), jnp.asarray(0, jnp.int32)
        assert (fn.lower(restored, key, 3, zero).as_text()
                == fn.lower(fresh, key, 0, zero).as_text())

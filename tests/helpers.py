"""Helpers shared by the test modules (imported as `helpers`; tests/ is on sys.path)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def random_params(ansatz, seed):
    """Float64 parameters drawn with numpy (no eager JAX init: it compiles op by op).

    Kernels ~ N(0, 1/fan_in) like flax's default; biases small; envelope π, σ and the Jastrow
    α near their initial 1 (σ of the full envelope near the identity), but all distinct.
    """
    shapes = jax.eval_shape(ansatz.init, jax.random.PRNGKey(0))
    rng = np.random.default_rng(seed)

    def leaf(path, s):
        name = jax.tree_util.keystr(path)
        if "kernel" in name:
            v = rng.normal(size=s.shape) / np.sqrt(s.shape[0])
        elif "bias" in name:
            v = 0.1 * rng.normal(size=s.shape)
        elif "sigma" in name and len(s.shape) == 4:
            v = np.eye(3)[None, :, :, None] + 0.2 * rng.normal(size=s.shape)
        else:
            v = 1.0 + 0.2 * rng.normal(size=s.shape)
        return jnp.asarray(v, jnp.float64)

    return jax.tree_util.tree_map_with_path(leaf, shapes)


def cut_back_copy(run_dir, out, step: int):
    """A copy of the finished run `run_dir` at `out` as a crash after checkpoint `step`
    leaves it: later checkpoints, summary.json and eval.h5 gone, train.h5's later rows kept
    (resume cuts them back)."""
    import pathlib
    import shutil

    from vmc import checkpoint as ckpt
    out = pathlib.Path(out)
    shutil.copytree(run_dir, out)
    for path in ckpt.list_checkpoints(out / "checkpoints"):
        if ckpt.read_attrs(path)["step"] > step:
            path.unlink()
    for name in ("summary.json", "eval.h5"):
        (out / name).unlink(missing_ok=True)
    return out


class TwoLayer(nn.Module):
    """Two Dense layers shared over the S = 3 rows of x, plus a non-Dense parameter α:
    log|ψ| = Σ_s c · Dense₂(tanh(Dense₁(x_s))) − α Σ x² (float64; KFAC's layer capture)."""
    n_up: int = 3
    n_down: int = 0

    @nn.compact
    def __call__(self, x):
        h = jnp.tanh(nn.Dense(4, name="hidden", param_dtype=jnp.float64)(x))
        y = nn.Dense(2, name="out", param_dtype=jnp.float64)(h)
        alpha = self.param("alpha", nn.initializers.ones, (), jnp.float64)
        return jnp.ones((), x.dtype), jnp.sum(y * jnp.array([1.0, -0.5])) - alpha * jnp.sum(x * x)


def toy_batch(module, n_w, n_e, seed=0, shift=0.0):
    """(log_psi, params, walkers (n_w, n_e, 3) (normal + shift), e_l (n_w,)) for a toy
    flax module (float64 must be on)."""
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=(n_w, n_e, 3)) + shift)
    params = jax.jit(module.init)(jax.random.PRNGKey(seed), x[0])
    return (lambda p, xx: module.apply(p, xx)), params, x, jnp.asarray(rng.normal(size=n_w))


HE_TRAINED = __import__("pathlib").Path(__file__).parent / "data" / "he_trained.h5"


def load_he_trained(setup, dtype=None, convert=True):
    """The trained He FermiNet of tests/data/he_trained.h5 (a checkpoint of schema 1, the
    old one-electron input order) as `setup`'s parameter pytree in `dtype` (None: as
    stored), converted to today's layout by `vmc.stages.current_layout` unless `convert`
    is False."""
    from vmc import checkpoint as ckpt
    from vmc.stages import current_layout
    raw = ckpt.read_tree_raw(HE_TRAINED, "params")
    tmpl = jax.eval_shape(setup.ansatz.init, jax.random.PRNGKey(0))
    params = jax.tree_util.tree_map_with_path(
        lambda p, _: jnp.asarray(raw["/".join(str(getattr(k, "key", k)) for k in p)], dtype),
        tmpl)
    if not convert:
        return params
    return current_layout(setup, params, ckpt.read_attrs(HE_TRAINED))[0]


def xla_env(drop: str = "", add: str = "") -> dict:
    """os.environ for a subprocess with the suite's XLA flags (conftest: optimization level,
    scheduler), less those starting with `drop`, plus `add`; the parent's fault injection
    is dropped."""
    import os

    flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
             if not (drop and f.startswith(drop))]
    env = {**os.environ, "XLA_FLAGS": " ".join(flags + add.split())}
    env.pop("VMC_FAULT_INJECT", None)
    return env


def host_devices_env(devices: int) -> dict:
    """`xla_env` for a `vmc` subprocess on `devices` forced CPU host devices, compiling as the
    suite does."""
    flag = "--xla_force_host_platform_device_count"
    return {**xla_env(flag, f"{flag}={devices}"), "JAX_PLATFORMS": "cpu"}

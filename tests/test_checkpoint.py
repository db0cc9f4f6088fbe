"""Checkpoints: bit-exact round trips, mismatch and corruption detection, faults, pruning."""

import os
import pathlib
import subprocess
import sys
import textwrap
from typing import NamedTuple

import flax.struct
import h5py
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import vmc
from vmc import checkpoint as ckpt
from vmc.checkpoint import CheckpointError, NonFiniteError

_REPO = pathlib.Path(__file__).resolve().parents[1]


@flax.struct.dataclass
class SamplerState:
    walkers: jax.Array
    width: jax.Array
    n_accept: jax.Array
    moves: int
    kind: str = flax.struct.field(pytree_node=False, default="gauss")


class Counters(NamedTuple):
    step: np.int64
    flag: np.bool_
    empty: None


def _state(seed=0):
    """Named trees covering the leaf kinds a run saves (needs float64 enabled).

    Values come from numpy so that building them compiles no JAX ops (fast tests).
    """
    rng = np.random.default_rng(seed)

    def arr(shape, dtype=np.float32):
        return jnp.asarray(rng.normal(size=shape).astype(dtype))

    params = {"ferminet": {f"layer_{i}": {"kernel": arr((4, 5)), "bias": arr((5,))}
                           for i in range(2)},
              "envelope": {"sigma": arr((2, 3), np.float64)}}
    adam, rest = optax.adam(1e-3).init(params)
    like = lambda t: jax.tree_util.tree_map(lambda x: arr(x.shape, x.dtype), t)  # noqa: E731
    opt_state = (adam._replace(count=jnp.int32(seed + 1), mu=like(adam.mu), nu=like(adam.nu)),
                 rest)
    walkers = arr((8, 3, 3), np.float64)
    sampler = SamplerState(walkers=arr((8, 3, 3)), width=jnp.float32(0.3 + seed),
                           n_accept=jnp.array([3, 4 + seed], jnp.uint32), moves=7)
    return {"params": params, "opt_state": opt_state, "walkers": walkers, "sampler": sampler,
            "key": jax.random.key(seed),
            "keys": jax.random.wrap_key_data(np.arange(8, dtype=np.uint32).reshape(4, 2) + seed),
            "raw_key": jax.random.PRNGKey(seed + 2),
            "counters": Counters(np.int64(12 + seed), np.bool_(seed % 2 == 0), None),
            "scalars": {"e": 1.5 + seed, "n": 3, "i32": jnp.int32(-2)}}


def _assert_bit_exact(a, b):
    la, ta = jax.tree_util.tree_flatten(a)
    lb, tb = jax.tree_util.tree_flatten(b)
    assert ta == tb
    for x, y in zip(la, lb):
        assert type(x) is type(y) or (isinstance(x, jax.Array) and isinstance(y, jax.Array))
        if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            assert y.dtype == x.dtype
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape
        assert x.tobytes() == y.tobytes()


def _save(d, step, tree, **attrs):
    p = ckpt.checkpoint_path(d, step)
    ckpt.save(p, tree, {"step": step, **attrs})
    return p


def test_round_trip_is_bit_exact(tmp_path, x64):
    state = _state()
    p = _save(tmp_path, 500, state, config="seed: 1\nlr: 0.001\n")
    assert p.name == "ckpt_000500.h5"
    template = _state(seed=9)  # same structure, other values
    trees, attrs = ckpt.restore(p, template)
    _assert_bit_exact(trees, state)
    assert trees["sampler"].kind == "gauss" and trees["scalars"]["n"] == 3
    assert attrs == {"step": 500, "schema_version": ckpt.SCHEMA_VERSION,
                     "code_version": vmc.__version__, "config": "seed: 1\nlr: 0.001\n"}
    assert ckpt.read_attrs(p) == attrs
    with h5py.File(p, "r") as f:  # one dataset per leaf, named by pytree path
        assert f["params/ferminet/layer_0/kernel"].dtype == np.float32
        assert f["opt_state/0/mu/envelope/sigma"].dtype == np.float64
        assert f["opt_state/0/count"].shape == ()
        assert f["key"].attrs["prng_impl"] == "threefry2x32"


def test_partial_restore_and_raw_read(tmp_path, x64):
    state = _state()
    p = _save(tmp_path, 3, state)
    trees, _ = ckpt.restore(p, {"params": state["params"]})
    _assert_bit_exact(trees["params"], state["params"])
    raw = ckpt.read_tree_raw(p, "params")
    assert sorted(raw) == ["envelope/sigma", "ferminet/layer_0/bias", "ferminet/layer_0/kernel",
                           "ferminet/layer_1/bias", "ferminet/layer_1/kernel"]
    sigma = np.asarray(state["params"]["envelope"]["sigma"])
    assert raw["envelope/sigma"].tobytes() == sigma.tobytes()
    assert list(ckpt.read_tree_raw(p, "walkers")) == [""]
    with pytest.raises(CheckpointError, match="no tree 'absent'"):
        ckpt.read_tree_raw(p, "absent")
    with pytest.raises(CheckpointError, match="absent"):
        ckpt.restore(p, {"absent": np.zeros(2)})


def test_template_mismatch_names_the_leaf(tmp_path, x64):
    state = _state()
    p = _save(tmp_path, 1, state)
    bad_shape = {**state, "walkers": jnp.zeros((8, 3, 2), jnp.float64)}
    with pytest.raises(CheckpointError, match="leaf 'walkers'.*float64\\[8, 3, 3\\]"):
        ckpt.restore(p, bad_shape)
    params32 = jax.tree_util.tree_map(lambda x: x.astype(jnp.float32), state["params"])
    with pytest.raises(CheckpointError, match="leaf 'params/envelope/sigma'"):
        ckpt.restore(p, {"params": params32})
    extra = {"params": {**state["params"], "new": jnp.zeros(2)}}
    with pytest.raises(CheckpointError, match="missing leaves \\['params/new'\\]"):
        ckpt.restore(p, extra)
    with pytest.raises(CheckpointError, match="leaf 'key'"):  # raw key vs typed key
        ckpt.restore(p, {"key": jax.random.PRNGKey(0)})


def _flip_bytes_in(path, dataset):
    with h5py.File(path, "r") as f:
        offset = f[dataset].id.get_offset() + f[dataset].id.get_storage_size() // 2
    with open(path, "r+b") as fh:
        fh.seek(offset)
        b = fh.read(4)
        fh.seek(offset)
        fh.write(bytes(x ^ 0xFF for x in b))


def test_corruption_detected_and_latest_valid_falls_back(tmp_path, x64):
    state = _state()
    p1, p2, p3 = (_save(tmp_path, s, state) for s in (1, 2, 3))
    _flip_bytes_in(p3, "walkers")
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        ckpt.restore(p3, state)
    data = p2.read_bytes()
    p2.write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(CheckpointError):
        ckpt.restore(p2, state)
    with pytest.warns(UserWarning) as rec:
        assert ckpt.latest_valid(tmp_path) == p1
    assert [p3.name in str(w.message) for w in rec] == [True, False]
    assert p2.name in str(rec[1].message)
    with pytest.warns(UserWarning):
        assert ckpt.latest_valid(tmp_path, {"params": state["params"]}) == p1
    with h5py.File(p1, "r+") as f:  # attributes are covered by the checksum too
        f.attrs["step"] = 7
    with pytest.warns(UserWarning):
        assert ckpt.latest_valid(tmp_path) is None


def test_abort_halfway_leaves_previous_checkpoint(tmp_path, x64, monkeypatch):
    state = _state()
    p1 = _save(tmp_path, 10, state)
    monkeypatch.setattr(ckpt, "_FAULT", "abort_halfway")
    with pytest.raises(RuntimeError, match="injected fault"):
        _save(tmp_path, 20, state)
    tmps = list(tmp_path.glob(".ckpt_000020.h5.*.tmp"))
    assert len(tmps) == 1 and tmps[0].stat().st_size > 0
    assert not ckpt.checkpoint_path(tmp_path, 20).exists()
    assert ckpt.list_checkpoints(tmp_path) == [p1]
    assert ckpt.latest_valid(tmp_path, state) == p1
    assert not list(tmp_path.glob(".*.tmp"))


def test_env_fault_exits_mid_write_in_subprocess(tmp_path):
    script = textwrap.dedent("""
        import sys
        sys.path.insert(0, sys.argv[2])
        import numpy as np
        from vmc import checkpoint as ckpt
        tree = {"a": {str(i): np.full(1000, float(i)) for i in range(10)}}
        step = int(sys.argv[3])
        ckpt.save(ckpt.checkpoint_path(sys.argv[1], step), tree, {"step": step})
    """)
    run = lambda step, **env: subprocess.run(  # noqa: E731
        [sys.executable, "-c", script, str(tmp_path), str(_REPO), str(step)],
        env={**os.environ, "JAX_PLATFORMS": "cpu", **env}, timeout=60)
    assert run(1).returncode == 0
    assert run(2, VMC_FAULT_INJECT="checkpoint_abort").returncode == 17
    assert len(list(tmp_path.glob(".ckpt_000002.h5.*.tmp"))) == 1
    assert ckpt.latest_valid(tmp_path) == ckpt.checkpoint_path(tmp_path, 1)
    assert not list(tmp_path.glob(".*.tmp"))


_SAVER = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, sys.argv[2])
    import numpy as np
    from vmc import checkpoint as ckpt
    tree = {"a": {str(i): np.full(1000, float(i)) for i in range(10)}}
    for step in range(1, int(sys.argv[3]) + 1):
        ckpt.save(ckpt.checkpoint_path(sys.argv[1], step), tree, {"step": step})
    if len(sys.argv) > 4:  # then hold a save's temp file open (a live writer)
        from vmc._tempfiles import locked_temp
        with locked_temp(ckpt.checkpoint_path(sys.argv[1], 99)) as tmp:
            print(tmp, flush=True)
            time.sleep(60)
""")


@pytest.mark.parametrize("point", ["checkpoint_data", "checkpoint_write"])
def test_kill_switch_sigkills_inside_the_nth_save(tmp_path, point):
    proc = subprocess.run([sys.executable, "-c", _SAVER, str(tmp_path), str(_REPO), "5"],
                          env={**os.environ, "JAX_PLATFORMS": "cpu",
                               "VMC_TEST_KILL": f"{point}@3"}, timeout=60)
    assert proc.returncode == -9
    tmps = list(tmp_path.glob(".ckpt_000003.h5.*.tmp"))
    assert len(tmps) == 1
    if point == "checkpoint_write":  # complete, fsync-ed, not renamed
        with h5py.File(tmps[0], "r") as f:
            assert f.attrs["step"] == 3 and len(f["a"]) == 10
    assert ckpt.list_checkpoints(tmp_path) == [ckpt.checkpoint_path(tmp_path, s) for s in (1, 2)]
    assert ckpt.latest_valid(tmp_path) == ckpt.checkpoint_path(tmp_path, 2)
    assert not list(tmp_path.glob(".*.tmp"))  # the dead writer's temp is removed


def test_latest_valid_keeps_a_live_writers_temp_file(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", _SAVER, str(tmp_path), str(_REPO), "1",
                             "hold"], stdout=subprocess.PIPE, text=True,
                            env={k: v for k, v in os.environ.items() if k != "VMC_TEST_KILL"})
    try:
        held = pathlib.Path(proc.stdout.readline().strip())
        assert ckpt.latest_valid(tmp_path) == ckpt.checkpoint_path(tmp_path, 1)
        assert held.exists()  # another process (here: on this host) is writing it
        proc.kill()
        proc.wait()
        ckpt.latest_valid(tmp_path)
        assert not held.exists()
    finally:
        proc.kill()
        proc.stdout.close()


def test_non_finite_values_are_refused(tmp_path, x64):
    state = _state()
    bad = {**state, "walkers": state["walkers"].at[2, 1, 0].set(jnp.nan)}
    with pytest.raises(NonFiniteError, match="'walkers'"):
        _save(tmp_path, 1, bad)
    params = jax.tree_util.tree_map(lambda x: x, state["params"])
    params["ferminet"]["layer_1"]["bias"] = params["ferminet"]["layer_1"]["bias"].at[0].set(jnp.inf)
    with pytest.raises(NonFiniteError, match="'params/ferminet/layer_1/bias'"):
        _save(tmp_path, 1, {"params": params})
    assert not list(tmp_path.iterdir())


def test_save_validates_names_and_attrs(tmp_path):
    tree = {"a": np.zeros(2)}
    with pytest.raises(ValueError, match="step"):
        ckpt.save(tmp_path / "x.h5", tree, {})
    with pytest.raises(ValueError, match="reserved"):
        ckpt.save(tmp_path / "x.h5", tree, {"step": 1, "checksum": "0"})
    with pytest.raises(ValueError, match="names"):
        ckpt.save(tmp_path / "x.h5", {"a/b": np.zeros(1)}, {"step": 1})
    assert not list(tmp_path.iterdir())


def test_paths_listing_and_prune_use_numeric_steps(tmp_path):
    assert ckpt.checkpoint_path(tmp_path, 1_234_567).name == "ckpt_1234567.h5"
    assert ckpt.list_checkpoints(tmp_path / "absent") == []
    assert ckpt.latest_valid(tmp_path) is None
    for s in (10000, 999, 5, 1000, 1_234_567):
        _save(tmp_path, s, {"w": np.full(3, float(s))})
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == [
        "ckpt_000005.h5", "ckpt_000999.h5", "ckpt_001000.h5", "ckpt_010000.h5", "ckpt_1234567.h5"]
    removed = ckpt.prune(tmp_path, keep=3)
    assert [p.name for p in removed] == ["ckpt_000005.h5", "ckpt_000999.h5"]
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == [
        "ckpt_001000.h5", "ckpt_010000.h5", "ckpt_1234567.h5"]
    assert ckpt.latest_valid(tmp_path).name == "ckpt_1234567.h5"
    with pytest.raises(ValueError, match="keep"):
        ckpt.prune(tmp_path, keep=0)

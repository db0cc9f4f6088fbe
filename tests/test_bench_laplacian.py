"""scripts/bench_laplacian.py on He with tiny settings: its JSON rows, keys and accuracy."""

import importlib.util
import json
import pathlib
import warnings

import jax.numpy as jnp

_PATH = pathlib.Path(__file__).resolve().parents[1] / "scripts" / "bench_laplacian.py"
_spec = importlib.util.spec_from_file_location("bench_laplacian", _PATH)
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)

REQUIRED = ("system", "ansatz", "method", "ms_per_batch", "compile_s", "peak_mb",
            "max_abs_dev_ha")


def test_bench_laplacian_json_on_helium(capsys):
    import jax
    before = {k: getattr(jax.config, k) for k in bench._JAX_SETTINGS}
    bench.main(["--systems", "He", "--ansatz", "ferminet", "--sizes", "default",
                "--methods", "forward", "hessian", "--walkers", "4", "--repeats", "1",
                "--json"])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["method"] for r in rows] == ["forward", "hessian"]
    for r in rows:
        assert set(REQUIRED) <= set(r)
        assert (r["system"], r["ansatz"], r["n_electrons"]) == ("He", "ferminet", 2)
        assert r["ms_per_batch"] > 0 and r["compile_s"] > 0
        assert r["peak_mb"] >= r["base_mb"] > 50          # a child's RSS, JAX imported
        # float32 E_L of a fresh network against the float64 Hessian: float32 rounding only
        assert 0 < r["max_abs_dev_ha"] < 1e-3
    assert [r["default"] for r in rows] == [True, False]  # auto: dense for 2 electrons
    # the caller's float64 setting and compilation cache are back (the suite's other tests
    # in this process wrote to the benchmark's deleted cache folder before)
    assert {k: getattr(jax.config, k) for k in bench._JAX_SETTINGS} == before
    with warnings.catch_warnings(record=True) as caught:   # and the cache writes there
        warnings.simplefilter("always")
        jax.jit(lambda v: jnp.sin(v) * 3.25 + 0.5)(jnp.arange(7.0)).block_until_ready()
    assert not [w for w in caught if "compilation cache" in str(w.message)]

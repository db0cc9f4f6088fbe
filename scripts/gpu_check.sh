#!/usr/bin/env bash
# One short check on a GPU machine (at most ~4 minutes; every section has its own time guard
# and says so when it runs out). Run from the repository root, with the project installed:
#     bash scripts/gpu_check.sh 2>&1 | tee gpu_check.txt
# Sections: devices; step time and peak device memory at the benchmark network
# ((128,16)x3, 8 determinants), 4096 walkers, solvers kfac, sample, spring, for Li, N and N2
# (scripts/profile_step.py --memory: a fresh process per solver, 3 steps, the last 2 timed);
# a short Laplacian table (folx dense, folx sparse and Hessian local energy, N, 4096 walkers;
# the CPU table is scripts/bench_laplacian.py's).
set -u
cd "$(dirname "$0")/.."
export VMC_JAX_CACHE="${VMC_JAX_CACHE:-$PWD/.jax_cache}"
PY="${PYTHON:-python}"

section() {   # section SECONDS TITLE COMMAND...
  local limit=$1 title=$2; shift 2
  echo "== $title (time guard ${limit} s)"
  local t0=$SECONDS
  timeout "$limit" "$@"
  local rc=$?
  if [ "$rc" -eq 124 ]; then
    echo "   SKIPPED the rest: ran out of its ${limit} s"
  elif [ "$rc" -ne 0 ]; then
    echo "   FAILED with exit code $rc"
  fi
  echo "   ($((SECONDS - t0)) s)"
}

section 30 "devices" "$PY" -c "import jax; print(jax.__version__, jax.devices())"
for sys in Li N N2; do
  section 65 "$sys benchmark network, 4096 walkers" "$PY" scripts/profile_step.py --memory \
    --system "$sys" --networks benchmark --solvers kfac sample spring --memory-walkers 4096
done
section 60 "Laplacian: N, benchmark network, 4096 walkers" "$PY" - <<'PY'
import sys, time
sys.path.insert(0, "scripts")
import profile_step as ps
import jax
from vmc.train import build, init_state
for lap in ("forward", "forward-sparse", "hessian"):
    cfg = ps.make_cfg("N", "benchmark", "kfac", (f"hamiltonian.laplacian={lap}",), 4096)
    setup = build(cfg)
    state = init_state(setup, jax.random.PRNGKey(0))
    fn = jax.jit(setup.batched_local_energy)
    first, med = ps.timed(fn, state.params, state.mcmc.walkers, repeats=3)
    print(f"   {lap:14s} E_L of 4096 walkers: {1e3 * med:8.1f} ms (compile {first:.1f} s)",
          flush=True)
PY

"""The process settings `vmc` runs JAX under on a CPU, for the CLI and for scripts that time it.

Call `configure_process()` before the first `import jax` (and before SciPy or PySCF load
their BLAS): environment variables read at library load time do nothing afterwards.

- `--xla_cpu_enable_concurrency_optimized_scheduler=false` in XLA_FLAGS: jaxlib 0.10.x's CPU
  LAPACK kernels (slogdet's LU, Cholesky) split batches over XLA's intra-op pool and block
  on it; when as many independent LAPACK calls as there are cores run at once (2 on a 2-core
  CPU), every pool thread waits and the step hangs (seen with a Psiformer on N2, and with
  N's `sample` step when its Jacobian was made independent of the local energy). XLA's
  other scheduler avoided it in every trial.
- OMP_NUM_THREADS=1 (unless set): one thread for OpenBLAS/OpenMP, whose LAPACK kernels XLA
  calls on CPU (Cholesky, triangular solves, LU) and which PySCF uses. Their own worker
  threads otherwise compete with XLA's for the same cores: Li's benchmark-network KFAC step
  (`scripts/profile_step.py --system Li --networks benchmark --solvers kfac`, 2 cores) took
  91.3 ms with the default thread count and 69.2 ms with one, its KFAC update 29.8 against
  24.1 ms.
"""

from __future__ import annotations

import os

DEADLOCK_FLAG = "--xla_cpu_enable_concurrency_optimized_scheduler=false"


def configure_process() -> None:
    """Set XLA_FLAGS' `DEADLOCK_FLAG` and OMP_NUM_THREADS=1 (an existing value is kept) in
    this process's environment; idempotent."""
    if DEADLOCK_FLAG not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " "
                                   + DEADLOCK_FLAG).strip()
    os.environ.setdefault("OMP_NUM_THREADS", "1")

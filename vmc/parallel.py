"""Devices and hosts: `jax.distributed` from SLURM, and walker sharding.

The jit-compiled step is the same on one device and on many: walkers carry a sharding along
their first axis (`walker_sharding`), parameters are replicated, and every mean inside the
step is global, so XLA inserts the cross-device reductions.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

_INITIALIZED = False


def setup_distributed() -> None:
    """Start JAX's distributed runtime when launched as several processes.

    Under SLURM (`srun`, SLURM_NTASKS > 1) `jax.distributed.initialize()` reads the
    coordinator, process count and id from SLURM's variables. Outside SLURM, set
    VMC_COORDINATOR=host:port, VMC_NUM_PROCESSES and VMC_PROCESS_ID. One process alone does
    nothing.
    """
    global _INITIALIZED
    if _INITIALIZED:
        return
    if os.environ.get("VMC_COORDINATOR"):
        jax.distributed.initialize(coordinator_address=os.environ["VMC_COORDINATOR"],
                                   num_processes=int(os.environ["VMC_NUM_PROCESSES"]),
                                   process_id=int(os.environ["VMC_PROCESS_ID"]))
    elif int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_JOB_ID" in os.environ:
        jax.distributed.initialize()
    _INITIALIZED = True


def walker_sharding() -> NamedSharding:
    """Sharding of arrays whose first axis is the walker axis, over all devices."""
    mesh = Mesh(np.asarray(jax.devices()), ("walkers",))
    return NamedSharding(mesh, PartitionSpec("walkers"))


def replicated() -> NamedSharding:
    """Sharding that replicates an array on every device."""
    mesh = Mesh(np.asarray(jax.devices()), ("walkers",))
    return NamedSharding(mesh, PartitionSpec())


def shard_walkers(walkers):
    """Place walkers (n_walkers, n_electrons, 3) split over all devices (global array).

    With several processes each holds the same full host array (built from the same key),
    and each device takes its slice.
    Raises:
      ValueError: n_walkers not divisible by the device count.
    """
    n_dev = jax.device_count()
    if walkers.shape[0] % n_dev:
        raise ValueError(f"sampler.walkers={walkers.shape[0]} is not divisible by the "
                         f"{n_dev} devices")
    if n_dev == 1:
        return walkers
    sharding = walker_sharding()
    host = np.asarray(jax.device_get(walkers)) if jax.process_count() == 1 else np.asarray(walkers)
    return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])

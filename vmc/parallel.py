"""Devices and processes: `jax.distributed` start-up, walker sharding, host-side agreement.

The jit-compiled step is the same on one device and on many, in one process or several
(JAX's multi-controller runtime): walkers carry a sharding along their first axis over a
`jax.sharding.Mesh` of all devices (`walker_sharding`), parameters are replicated, and every
mean inside the step is global, so XLA inserts the cross-device (and cross-process)
reductions. Random numbers come from one global key with partitionable threefry, so a run
does not depend on the device or process count beyond round-off.

Process 0 owns the run directory: `is_writer()` gates every file write (the gate wraps only
the write; every process joins every collective). Host-side decisions (a signal, a time
limit, a due checkpoint) are agreed by all processes with `any_processes`.
"""

from __future__ import annotations

import os
import sys
import threading
from typing import Any, Optional

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from vmc.errors import InputError

_INITIALIZED = False
DEFAULT_HEARTBEAT_S = 30     # a lost peer ends the others within about this (JAX's: 100 s)
DEFAULT_CONNECT_S = 60       # how long to wait for the coordinator and the other processes


class DistributedError(RuntimeError):
    """The distributed runtime could not start, or another process was lost."""


def _launch_settings(coordinator: Optional[str], num_processes: Optional[int],
                     process_id: Optional[int]) -> Optional[dict]:
    """Where the process group comes from: explicit arguments (the CLI's --coordinator,
    --num-processes, --process-id), else VMC_COORDINATOR / VMC_NUM_PROCESSES /
    VMC_PROCESS_ID, else SLURM (srun with SLURM_NTASKS > 1: JAX reads SLURM's variables).
    Returns initialize() keyword arguments, {} for SLURM auto-detection, or None for one
    process alone.

    Raises:
      InputError: an incomplete or invalid set of values (exit code 2).
    """
    env = os.environ
    if coordinator is None and num_processes is None and process_id is None:
        if env.get("VMC_COORDINATOR"):
            coordinator = env["VMC_COORDINATOR"]
            try:
                num_processes = int(env["VMC_NUM_PROCESSES"])
                process_id = int(env["VMC_PROCESS_ID"])
            except (KeyError, ValueError):
                raise InputError("VMC_COORDINATOR is set: VMC_NUM_PROCESSES and "
                                       "VMC_PROCESS_ID must be integers too") from None
        elif int(env.get("SLURM_NTASKS", "1") or 1) > 1 and "SLURM_JOB_ID" in env:
            return {}
        else:
            return None
    if coordinator is None or num_processes is None or process_id is None:
        raise InputError("--coordinator HOST:PORT, --num-processes N and --process-id I "
                               "go together")
    if ":" not in coordinator:
        raise InputError(f"--coordinator {coordinator!r}: expected HOST:PORT")
    if not (num_processes >= 1 and 0 <= process_id < num_processes):
        raise InputError(f"--process-id {process_id}: valid: 0 … {num_processes - 1} "
                               f"(--num-processes {num_processes})")
    if num_processes == 1:
        return None
    return {"coordinator_address": coordinator, "num_processes": num_processes,
            "process_id": process_id}


def launch_plan(coordinator: Optional[str] = None, num_processes: Optional[int] = None,
                process_id: Optional[int] = None) -> dict:
    """What `setup_distributed` would pass to `jax.distributed.initialize`, resolved from
    the same sources, without starting anything (`vmc launch-info`; a dry run of a batch
    script). Under SLURM the values are those JAX's SLURM detection computes.

    Returns:
      {"source": "single" | "arguments/VMC_*" | "slurm", "coordinator_address",
       "num_processes", "process_id"} (None values for a single process).
    Raises:
      InputError: as `_launch_settings`; DistributedError: SLURM variables incomplete.
    """
    kwargs = _launch_settings(coordinator, num_processes, process_id)
    if kwargs is None:
        return {"source": "single", "coordinator_address": None, "num_processes": 1,
                "process_id": 0}
    if kwargs:
        return {"source": "arguments/VMC_*", **kwargs}
    from jax._src.clusters import SlurmCluster
    if not SlurmCluster.is_env_present():
        raise DistributedError("SLURM_NTASKS > 1 but SLURM's step variables are missing: "
                               "start vmc with srun")
    return {"source": "slurm",
            "coordinator_address": SlurmCluster.get_coordinator_address(None, None),
            "num_processes": SlurmCluster.get_process_count(),
            "process_id": SlurmCluster.get_process_id()}


def setup_distributed(coordinator: Optional[str] = None, num_processes: Optional[int] = None,
                      process_id: Optional[int] = None, *,
                      heartbeat_s: int = DEFAULT_HEARTBEAT_S,
                      connect_s: int = DEFAULT_CONNECT_S) -> None:
    """Start JAX's distributed runtime when launched as several processes (idempotent).

    See `_launch_settings` for where the process group comes from. One process alone does
    nothing. `heartbeat_s` (VMC_HEARTBEAT_SECONDS overrides it) bounds how long the others
    wait for a process that stopped answering; `connect_s` (VMC_CONNECT_SECONDS) bounds the
    start-up.

    Raises:
      InputError: bad settings. DistributedError: the coordinator/peers not reached within
        connect_s (the message names the coordinator).
    """
    global _INITIALIZED
    if _INITIALIZED:
        return
    kwargs = _launch_settings(coordinator, num_processes, process_id)
    if kwargs is None:
        _INITIALIZED = True
        return
    heartbeat_s = int(os.environ.get("VMC_HEARTBEAT_SECONDS", heartbeat_s))
    connect_s = int(os.environ.get("VMC_CONNECT_SECONDS", connect_s))
    plan = launch_plan(coordinator, num_processes, process_id)
    what = (f"coordinator {plan['coordinator_address']} (process {plan['process_id']} of "
            f"{plan['num_processes']}, {plan['source']})")

    def give_up():
        # JAX aborts the process (no Python exception) when the coordinator or a peer never
        # answers; say why in one line first and exit 1
        sys.stderr.write(f"error: could not start the distributed runtime with {what} within "
                         f"{connect_s} s: is every process started, and the address reachable?\n")
        sys.stderr.flush()
        os._exit(1)
    timer = threading.Timer(connect_s, give_up)
    timer.daemon = True
    timer.start()
    try:
        jax.distributed.initialize(**kwargs, initialization_timeout=connect_s + 30,
                                   heartbeat_timeout_seconds=heartbeat_s)
    except Exception as err:   # noqa: BLE001 - JAX raises several types here
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise DistributedError(f"could not start the distributed runtime with {what}: "
                               f"{first}") from None
    finally:
        timer.cancel()
    _INITIALIZED = True


def is_writer() -> bool:
    """True on the process that owns the run directory (process 0)."""
    return jax.process_index() == 0


def any_processes(flags: list) -> list:
    """For each flag, True when it is True on any process: one tiny collective (free in one
    process). Every process must call it at the same point."""
    if jax.process_count() == 1:
        return [bool(f) for f in flags]
    from jax.experimental import multihost_utils
    gathered = multihost_utils.process_allgather(np.asarray([bool(f) for f in flags]))
    return [bool(v) for v in np.any(np.asarray(gathered).reshape(-1, len(flags)), axis=0)]


def barrier(name: str) -> None:
    """Wait until every process reaches this point (no-op in one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(name)


class NullStatsWriter:
    """The `vmc.h5io.StatsWriter` interface that writes nothing (processes other than 0)."""
    keys = None

    def __init__(self, *args, **kwargs):
        pass

    def append(self, row) -> None:
        pass

    def flush(self) -> None:
        pass

    def truncate(self, step: int) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass


def stats_writer(path, **kwargs):
    """`vmc.h5io.StatsWriter(path, ...)` on process 0, a `NullStatsWriter` elsewhere."""
    if is_writer():
        from vmc.h5io import StatsWriter
        return StatsWriter(path, **kwargs)
    return NullStatsWriter()


def broadcast_from_writer(value: Any) -> Any:
    """Process 0's value of a pytree of numpy arrays/scalars on every process (identity in
    one process). Every process must call it at the same point."""
    if jax.process_count() == 1:
        return value
    from jax.experimental import multihost_utils
    return multihost_utils.broadcast_one_to_all(value)


def to_host(tree: Any) -> Any:
    """Numpy copies of a pytree of (possibly global, sharded) arrays, on every process.

    A sharded array (walkers) is gathered from all processes; a replicated one is read from
    the local copy. In one process this is `jax.device_get`. A collective: every process
    must call it at the same point.
    """
    if jax.process_count() == 1:
        return jax.device_get(tree)
    from jax.experimental import multihost_utils

    def leaf(x):
        if not isinstance(x, jax.Array):
            return np.asarray(x)
        if x.is_fully_addressable:
            return np.asarray(x)
        if x.is_fully_replicated:
            return np.asarray(x.addressable_data(0))
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return jax.tree_util.tree_map(leaf, tree)


def cpu_devices_warning(platform: Optional[str] = None,
                        n_local: Optional[int] = None) -> Optional[str]:
    """The warning line for several CPU devices in one process (XLA_FLAGS
    --xla_force_host_platform_device_count), else None.

    jaxlib 0.10's CPU runtime can hang with them: the default FermiNet of C (8 full
    determinants) over 512 walkers on 2 forced devices stopped in its first Metropolis step
    with the machine idle, on 2 cores and on 1 (README "Known hang"). Such devices exist to
    test the multi-device code; one device per process already uses every core.

    Args:
      platform, n_local: JAX's default backend and local device count; None asks JAX.
    """
    if platform is None or n_local is None:
        platform, n_local = jax.default_backend(), jax.local_device_count()
    if platform != "cpu" or n_local < 2:
        return None
    return (f"warning: {n_local} CPU devices in this process (XLA_FLAGS "
            f"--xla_force_host_platform_device_count): jaxlib's CPU runtime can hang with "
            f"them on larger systems (README \"Known hang\"); use them to test layouts, and "
            f"one device per process for production runs on a CPU")


def _mesh() -> Mesh:
    return Mesh(np.asarray(jax.devices()), ("walkers",))


def walker_sharding() -> NamedSharding:
    """Sharding of arrays whose first axis is the walker axis, over all devices."""
    return NamedSharding(_mesh(), PartitionSpec("walkers"))


def replicated() -> NamedSharding:
    """Sharding that replicates an array on every device."""
    return NamedSharding(_mesh(), PartitionSpec())


def shard_walkers(walkers):
    """Place an array whose first axis is the walker axis ((n_walkers, n_electrons, 3) bohr,
    or (n_walkers,)) split over all devices of all processes (a global array).

    Every process holds the same full host array (built from the same key, or read from the
    same checkpoint) and each device takes its slice, so the layout never changes the values.
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
    if isinstance(walkers, jax.Array) and not walkers.is_fully_addressable:
        return jax.device_put(walkers, sharding)
    host = np.asarray(jax.device_get(walkers))
    return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])


def replicate(tree: Any) -> Any:
    """A pytree of host or local arrays as global arrays replicated on every device (the
    values must be equal on all processes; in one device, unchanged)."""
    if jax.device_count() == 1:
        return tree
    sharding = replicated()

    def leaf(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return x
        host = np.asarray(jax.device_get(x))
        if host.dtype == object:
            return x
        return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])
    return jax.tree_util.tree_map(leaf, tree)

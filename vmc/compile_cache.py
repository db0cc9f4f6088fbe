"""JAX's persistent compilation cache for `vmc` runs.

A second run of the same molecule and settings loads the compiled XLA programs from disk
instead of compiling them again (tracing and lowering to HLO still happen every time; only
XLA's compilation is cached). Where the cache lives, in order:

1. the environment variable ``VMC_JAX_CACHE``: a folder, or ``off`` (also ``0``, ``none``,
   ``false``) to disable it;
2. the setting ``run.compile_cache``: ``auto`` (default), ``off``, or a folder;
3. ``auto``: ``$XDG_CACHE_HOME/vmc/jax`` or ``~/.cache/vmc/jax``.

Programs that compile in under 0.5 s are not written (JAX's own threshold is 1 s); the
environment variable ``VMC_JAX_CACHE_MIN_SECONDS`` changes that threshold (the test suite sets
0: its many small programs then compile once per suite, not once per test).
"""

from __future__ import annotations

import os
import pathlib
from typing import Optional

OFF = ("off", "0", "none", "false", "")
MIN_COMPILE_SECONDS = 0.5


def min_compile_seconds(environ=None) -> float:
    """The compile time (s) below which a program is not written: ``VMC_JAX_CACHE_MIN_SECONDS``
    when it is a number >= 0, else `MIN_COMPILE_SECONDS` (a cache setting never fails a run)."""
    environ = os.environ if environ is None else environ
    try:
        value = float(environ.get("VMC_JAX_CACHE_MIN_SECONDS", MIN_COMPILE_SECONDS))
    except ValueError:
        return MIN_COMPILE_SECONDS
    return value if value >= 0 else MIN_COMPILE_SECONDS


def cache_dir(setting: str = "auto", environ=None) -> Optional[pathlib.Path]:
    """The cache folder to use, or None when the cache is off (see the module docstring)."""
    environ = os.environ if environ is None else environ
    value = environ.get("VMC_JAX_CACHE")
    if value is None:
        value = setting
    if value.strip().lower() in OFF:
        return None
    if value.strip().lower() == "auto":
        base = environ.get("XDG_CACHE_HOME") or str(pathlib.Path.home() / ".cache")
        return pathlib.Path(base) / "vmc" / "jax"
    return pathlib.Path(value).expanduser()


def enable(setting: str = "auto") -> Optional[pathlib.Path]:
    """Point JAX's persistent compilation cache at `cache_dir(setting)`; returns the folder
    (None: off). A folder that cannot be created leaves the cache off (a run never fails
    for its cache)."""
    import jax
    folder = cache_dir(setting)
    if folder is None:
        return None
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", min_compile_seconds())
    return folder

"""Optimizers picked by `optim.solver` from one registry.

Every optimizer is a `vmc.optim.sr.Optimizer`: `init(params)` and
`update(params, state, walkers, e_l, step) -> (params, state, OptStats)`.
"""

from __future__ import annotations

from typing import Callable

from vmc.errors import InputError
from vmc.optim.sr import Optimizer, OptStats


def _sample(cfg, log_psi):
    from vmc.optim.sr import make_direct_sr
    return make_direct_sr(cfg, log_psi, "sample")


def _dense(cfg, log_psi):
    from vmc.optim.sr import make_direct_sr
    return make_direct_sr(cfg, log_psi, "dense")


def _adam(cfg, log_psi):
    from vmc.optim.adam import make_adam
    return make_adam(cfg, log_psi)


def _cg(cfg, log_psi):
    from vmc.optim.cg import make_cg
    return make_cg(cfg, log_psi)


def _kfac(cfg, log_psi, module=None):
    from vmc.optim.kfac import make_kfac
    return make_kfac(cfg, log_psi, module, "kfac")


def _kfac_cg(cfg, log_psi, module=None):
    from vmc.optim.kfac import make_kfac
    return make_kfac(cfg, log_psi, module, "kfac-cg")


def _spring(cfg, log_psi):
    from vmc.optim.spring import make_spring
    return make_spring(cfg, log_psi)


def _nystrom_cg(cfg, log_psi):
    from vmc.optim.nystrom import make_nystrom_cg
    return make_nystrom_cg(cfg, log_psi)


REGISTRY: dict[str, Callable] = {"sample": _sample, "dense": _dense, "adam": _adam,
                                 "cg": _cg, "kfac": _kfac, "kfac-cg": _kfac_cg,
                                 "spring": _spring, "nystrom-cg": _nystrom_cg}


def make_optimizer(cfg, log_psi: Callable, **kwargs) -> Optimizer:
    """The optimizer named by `cfg.solver` (see REGISTRY).

    Raises:
      InputError: a solver that is not (yet) available.
    """
    if cfg.solver not in REGISTRY:
        raise InputError(f"optim.solver: {cfg.solver!r} is not available; valid: "
                         f"{', '.join(REGISTRY)}")
    return REGISTRY[cfg.solver](cfg, log_psi, **kwargs)


__all__ = ["make_optimizer", "Optimizer", "OptStats", "REGISTRY"]

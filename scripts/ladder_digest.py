"""A ladder run's config identity (`scripts/ladder.py`): one digest per resolved config,
so that runs whose configs differ only in the step counts share one training run.
"""
from __future__ import annotations

import hashlib
import json
import pathlib


def config_digest(data: dict) -> str:
    """12 hex digits of sha1 over a resolved config (config.yaml's mapping) less what does
    not change the training up to a step: optim.steps, run.keep_steps, molecule.reference."""
    d = json.loads(json.dumps(data))
    d.get("optim", {}).pop("steps", None)
    d.get("run", {}).pop("keep_steps", None)
    d.get("molecule", {}).pop("reference", None)
    return hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


def run_digest(run_dir) -> str | None:
    """`config_digest` of a run folder's config.yaml, or None when it has none. The file is
    read through `vmc.config.load_config`, so a setting added after the run was made counts
    with its default (the run's digest stays that of a run made today with it)."""
    import yaml
    from vmc.config import load_config, to_dict
    from vmc.errors import InputError
    path = pathlib.Path(run_dir) / "config.yaml"
    if not path.is_file():
        return None
    try:
        return config_digest(to_dict(load_config(path)))
    except InputError:              # a setting since removed or renamed: the file as it is
        return config_digest(yaml.safe_load(path.read_text()))

"""Atoll: the whole ML lifecycle — data, training, sweeps, registry, serving — on one Ray cluster.

The user's verbs and types, from Python (each is documented where it lives)::

    import atoll

    atoll.up()                                                  # cluster.yaml's local cluster
    run = atoll.fit("jobs/configs/train.yaml", overrides=["epochs=3"])   # what `atoll train` runs
    version = run["registered"]["version"]                      # e.g. 1, of model digits
    atoll.open_registry().set_alias("digits", version, "production")
    atoll.deploy("digits@production")                           # a Ray Serve app at /digits
    atoll.query("digits", {"inputs": [[0.0] * 64]})
    atoll.down()

Importing ``atoll`` has no side effects and stays light: it reads no environment, starts nothing and
imports the library (Ray, torch) only when one of these names is first used. Modules not listed here
(``atoll.cluster``, ``atoll.jobs``, ``atoll.registry``, ...) are importable too, for more control.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# name → "module:attribute", resolved on first use (PEP 562).
_EXPORTS = {
    # the lifecycle
    # (verbs never share a name with a submodule: `atoll.train` stays the module, `atoll.fit` trains)
    "up": "atoll.api:up", "down": "atoll.api:down", "cluster_status": "atoll.status:status",
    "submit": "atoll.jobs:submit", "fit": "atoll.api:fit", "sweep": "atoll.api:sweep",
    "open_registry": "atoll.api:open_registry", "deploy": "atoll.api:deploy", "query": "atoll.api:query",
    "undeploy": "atoll.api:undeploy", "predict": "atoll.api:predict",
    # the types a caller meets
    "ClusterInfo": "atoll.cluster:ClusterInfo", "ClusterSpec": "atoll.specs:ClusterSpec",
    "TrainSpec": "atoll.specs:TrainSpec", "Registry": "atoll.registry:Registry",
    "ModelVersion": "atoll.registry:ModelVersion", "Predictor": "atoll.serving.predictor:Predictor",
    "load_spec": "atoll.config:load_spec",
    # errors: every one a user can fix is an AtollError whose message says how
    "AtollError": "atoll.errors:AtollError", "ConfigError": "atoll.errors:ConfigError",
    "RegistryError": "atoll.errors:RegistryError", "ServingError": "atoll.errors:ServingError",
    "JobFailedError": "atoll.errors:JobFailedError", "ClusterNotUpError": "atoll.errors:ClusterNotUpError",
}

__all__ = [  # noqa: F822 - each name resolves through __getattr__ below
    "__version__", "up", "down", "cluster_status", "submit", "fit", "sweep", "open_registry", "deploy", "query",
    "predict",
    "undeploy", "ClusterInfo", "ClusterSpec", "TrainSpec", "Registry", "ModelVersion", "Predictor", "load_spec",
    "AtollError", "ConfigError", "RegistryError", "ServingError", "JobFailedError", "ClusterNotUpError",
]


def __getattr__(name: str) -> Any:
    target = _EXPORTS.get(name)
    if target is None:
        # `atoll.cluster` and friends: submodules load on attribute access too, as after `import atoll.cluster`.
        try:
            return importlib.import_module(f"atoll.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"atoll.{name}":
                raise
            raise AttributeError(f"module 'atoll' has no attribute {name!r}") from None
    module, _, attr = target.partition(":")
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value  # once resolved, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(__all__)

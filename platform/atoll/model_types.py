"""Which model types a registered version may name, decided without importing torch (a batch job's driver and
a deploy ask before any model is built): the built-in ones, and user code only where cluster.yaml's
``metadata.atoll.model_types`` allows it, since a version's manifest is what the storage holds and a replica
would import what it names. A checkpoint trained elsewhere is held to the same list before `atoll models
register` imports anything it names. The models themselves are in :mod:`atoll.models`.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from atoll.errors import ConfigError
from atoll.tasks.base import BUILTIN_MODELS

if TYPE_CHECKING:
    from atoll.specs import ClusterSpec


@dataclasses.dataclass(frozen=True)
class AllowList:
    """The user model types a registered version may name: cluster.yaml's ``metadata.atoll.model_types``.

    Entries: ``pkg.mod:build`` (that callable), ``pkg.mod:*`` (any callable of ``pkg.mod``), ``pkg.*``
    (``pkg`` and every module under it). ``source`` is where they were read, for the error message.
    """

    patterns: tuple[str, ...]
    source: str = "cluster.yaml"

    @classmethod
    def from_cluster(cls) -> AllowList:
        """The list in the cluster.yaml this process finds (as ``AppArgs.serve_settings`` does)."""
        from atoll import config

        return cls.from_spec(config.load_spec())

    @classmethod
    def from_spec(cls, spec: ClusterSpec) -> AllowList:
        """The list of a loaded cluster.yaml (``-c``'s, say), named by its file in the refusal."""
        return cls(tuple(spec.atoll.model_types), spec.source)

    def admits(self, model_type: str) -> bool:
        module, _, attr = model_type.partition(":")
        for entry in self.patterns:
            if entry.endswith(".*"):
                if module == entry[:-2] or module.startswith(entry[:-1]):
                    return True
            elif entry.partition(":")[0] == module and entry.partition(":")[2] in ("*", attr):
                return True
        return False

    def check(self, model_type: str, ref: str) -> None:
        """Nothing for a built-in type or one this list admits.

        Raises:
            ConfigError: :meth:`refusal`, before anything of ``model_type`` is imported.
        """
        if model_type not in BUILTIN_MODELS and not self.admits(model_type):
            raise self.refusal(model_type, ref)

    def refusal(self, model_type: str, ref: str) -> ConfigError:
        """One line: what was refused, why, and the exact entry to add to cluster.yaml."""
        if self.source.startswith("("):  # no file: the built-in defaults
            where = ("cluster.yaml (this process found none: run it from the project folder or set "
                     "ATOLL_CLUSTER_CONFIG)")
        else:
            where = self.source
        if self.patterns:
            fix = f'add "{model_type}" to metadata.atoll.model_types in {where} (it lists ' \
                  f'{", ".join(self.patterns)})'
        else:
            fix = f'add `model_types: ["{model_type}"]` under metadata.atoll in {where}'
        return ConfigError(f"{ref}: model.type {model_type!r} is not allowed: a registered version may name "
                           f"only a built-in model ({', '.join(BUILTIN_MODELS)}) or a type cluster.yaml allows, since "
                           f"its manifest is what the storage holds. If you trust that code, {fix}.")

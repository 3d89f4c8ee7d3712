"""The one home of every private Ray API Atoll uses, checked against the Ray it was written for.

Ray's public APIs cover almost everything; a few things Atoll needs are only reachable through Ray's internals
(``ray._private``, ``ray.serve._private``, ``ray.autoscaler._private``), which change between releases without
notice. Each is wrapped here, imported lazily, so that the next Ray upgrade is one file: read each function
against the new Ray's source, run the tests, then widen :data:`TESTED`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

#: The Ray releases (major, minor) whose internals these wrappers were read against and tested on.
TESTED = ((2, 60),)


def check_version() -> None:
    """Warn once when the installed Ray is not one :data:`TESTED` (pyproject pins it; a newer one may work)."""
    import ray

    release = tuple(int(part) for part in ray.__version__.split(".")[:2])
    if release not in TESTED and not getattr(check_version, "warned", False):
        check_version.warned = True  # type: ignore[attr-defined]
        logging.getLogger("atoll").warning(
            "Ray %s is not one Atoll's use of Ray internals was tested on (%s); see atoll/ray_compat.py.",
            ray.__version__, ", ".join(f"{a}.{b}" for a, b in TESTED))


def unshipped_files(folder: Path, files: list[Path], *, include_gitignore: bool) -> list[Path]:
    """Those of ``files`` (inside ``folder``) that Ray's working_dir upload leaves out because a ``.gitignore``
    (when ``include_gitignore``) or ``.rayignore`` on their way from ``folder`` matches them or a folder above
    them: Ray's own rule (``packaging._dir_travel``), applied to these paths alone instead of the whole tree."""
    check_version()
    from ray._private.runtime_env.packaging import get_excludes_from_ignore_files

    quiet = logging.getLogger("atoll.ray_compat.quiet")  # Ray logs every ignore file it reads at INFO
    quiet.setLevel(logging.WARNING)
    folder = folder.resolve()
    left_out = []
    for file in files:
        file = file.resolve()
        if not file.is_relative_to(folder) or file == folder:
            continue
        parts = file.relative_to(folder).parts
        chain = [folder.joinpath(*parts[:depth]) for depth in range(len(parts) + 1)]
        excludes: list[Any] = []
        for parent, child in zip(chain, chain[1:]):
            excludes += get_excludes_from_ignore_files(parent, include_gitignore=include_gitignore, logger=quiet)
            if any(exclude(child) for exclude in excludes):
                left_out.append(file)
                break
    return left_out


def upload_py_modules(client: Any, runtime_env: dict[str, Any]) -> None:
    """Upload a runtime_env's local ``py_modules`` to the cluster's package store, in place (each becomes a
    ``gcs://`` URI): what ``ray job submit`` does for a job, through the Jobs SDK's own (private) upload, for a
    Serve app, whose REST API takes no local folder."""
    check_version()
    client._upload_py_modules_if_needed(runtime_env)


def prepare_and_validate_cluster_config(config: dict[str, Any]) -> dict[str, Any]:
    """Ray's cluster launcher's own fill-in and validation of a cluster.yaml (``ray up`` runs the same two
    functions). Raises what they raise: jsonschema.ValidationError, ValueError, ..."""
    check_version()
    from ray.autoscaler._private.util import prepare_config, validate_config

    filled = prepare_config(config)
    validate_config(filled)
    return filled


async def serve_app_configs() -> dict[str, Any]:
    """Every Serve app's deployed config (name → config), from the Serve controller, read by an HTTP proxy's
    middleware (inside the cluster, where the controller is a named actor)."""
    check_version()
    import ray
    from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

    controller = ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
    return await controller.get_app_configs.remote()


def serve_details() -> dict[str, Any]:
    """Serve's details (apps with their route prefixes), from inside the cluster (a Serve replica)."""
    check_version()
    from ray.serve.context import _get_global_client

    return _get_global_client().get_serve_details()

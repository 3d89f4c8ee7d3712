"""What every job's driver does (``python -m atoll.train``, ``python -m atoll.tune``): read its command line,
connect to the cluster it runs on, record the job's lineage, and end on a user error with one line.
"""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
import tempfile
from collections.abc import Callable
from typing import Any

from atoll.errors import AtollError
from atoll.events import git_commit, report_error


def parser(module: str, description: str, default_spec: str, set_help: str) -> argparse.ArgumentParser:
    """The options every job takes: ``-c SPEC`` and ``--set KEY=VALUE`` (repeatable)."""
    parser = argparse.ArgumentParser(prog=f"python -m {module}", description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-c", "--config", default=default_spec,
                        help=f"the spec (YAML; default: {default_spec}); relative paths in it are "
                             f"relative to its folder")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=set_help)
    return parser


def run(body: Callable[[], int | None]) -> int:
    """The job's exit code: ``body``'s (0 when it returns None), or 2 with one ``error:`` line on an Atoll
    error."""
    work_from_a_private_copy()
    try:
        return body() or 0
    except AtollError as exc:
        return report_error(exc)
    finally:
        _disconnect()


def _disconnect() -> None:
    """Leave the cluster now, while the process is whole: Ray's own exit hook, run later among the interpreter's
    teardown, made a batch prediction's driver take ~1 s more to end (bench/batch_predict.py's exit_s)."""
    import sys

    if "ray" in sys.modules:
        import ray

        if ray.is_initialized():
            ray.shutdown()


def work_from_a_private_copy() -> None:
    """Run the job from its own copy of the working dir.

    A job starts inside its working_dir as Ray unpacked it under ``runtime_resources/``. Where several Ray nodes
    share one disk (nodes on one machine: `atoll up --simulate`, a shared volume), each node's runtime-env agent
    replaces that folder (delete, unpack) the first time it sets up the same package. The driver inside it then
    has no current directory any more, and Tune's experiment listing, which needs one, fails at the end of a
    sweep. A private copy (the project minus its excludes: small) keeps every relative path working.
    """
    here = os.getcwd()
    if f"{os.sep}runtime_resources{os.sep}" not in here:
        return  # not a Ray job's unpacked working_dir
    copy = tempfile.mkdtemp(prefix="atoll-job-")
    shutil.copytree(here, copy, symlinks=True, dirs_exist_ok=True)
    os.chdir(copy)
    atexit.register(shutil.rmtree, copy, ignore_errors=True)


def process_started() -> float:
    """When this process started (Unix seconds, from the OS: before the interpreter imported anything), so that
    a job's timings can count its imports too."""
    import psutil

    return psutil.Process().create_time()


def connect() -> None:
    """Join the Ray cluster this driver runs on (``$RAY_ADDRESS`` when set), with the workers' output."""
    import ray

    ray.init(address=os.environ.get("RAY_ADDRESS", "auto"), log_to_driver=True)


def lineage() -> dict[str, Any]:
    """The job id and the project's git commit, which `atoll train`/`tune` send along (else read here)."""
    return {"job_id": os.environ.get("ATOLL_JOB_ID"),
            "git_commit": os.environ.get("ATOLL_GIT_COMMIT") or git_commit()}

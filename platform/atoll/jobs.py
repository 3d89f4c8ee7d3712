"""Ray jobs through Ray's own Jobs API (``JobSubmissionClient``): submit, list, status, logs, stop.

There is no Atoll job queue: a job submitted here is a Ray job, visible to ``ray job list``, and a job
submitted with ``ray job submit`` is visible here.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import requests

from atoll import auth, filesystems, ray_compat
from atoll.cluster import ClusterInfo, current
from atoll.errors import ClusterError, ClusterNotUpError, ConfigError, JobNotFoundError, JobUnschedulableError
from atoll.events import git_commit, parse_events

if TYPE_CHECKING:
    from atoll.specs import ClusterSpec

TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")

# Never shipped with a job: environments, caches, data and build outputs (on top of .gitignore,
# which Ray's working_dir upload honours by itself).
DEFAULT_EXCLUDES = [".venv", "venv", ".git", "**/__pycache__", "*.pyc", ".pytest_cache", "data", "*.parquet",
                    "*.egg-info", "build", "dist", ".atoll", "node_modules", ".mypy_cache", ".ruff_cache"]

#: How long a request waits for a freshly started head's job agent before giving up.
AGENT_WAIT_S = 60



def _client(info: ClusterInfo):
    import logging

    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    # Ray's packaging chatter (uploads, default excludes) is noise to a user of the Jobs API.
    for name in list(logging.root.manager.loggerDict):
        if name.startswith(("ray.dashboard", "ray._private.runtime_env")):
            logging.getLogger(name).setLevel(logging.ERROR)

    try:
        return JobSubmissionClient(info.dashboard_url, headers=auth.headers())
    except AuthenticationError:  # the SDK looks for the token itself when we have none to send
        raise auth.missing_token(f"the Jobs API at {info.dashboard_url}") from None
    except (ConnectionError, requests.RequestException) as exc:
        raise ClusterNotUpError(f"cannot reach the Jobs API at {info.dashboard_url} ({_reason(exc)}). "
                                f"Is the cluster up? (`atoll status`)") from None


def upload_modules(paths: list[str], *, info: ClusterInfo | None = None) -> list[str]:
    """Local packages (folders) or ``.py`` modules uploaded into the cluster, as ``gcs://`` URIs a Serve app's
    ``runtime_env.py_modules`` can name: how a deploy ships a user model's code to its replicas (Serve's REST
    API, unlike a job, takes no local folder). The upload is the Jobs SDK's own (the dashboard's package
    store), with the same excludes as a job's working dir.

    Raises:
        ClusterNotUpError: no Jobs API to upload to.
    """
    renv: dict[str, Any] = {"py_modules": list(paths), "excludes": list(DEFAULT_EXCLUDES)}
    client = _client(info or current())
    try:
        ray_compat.upload_py_modules(client, renv)
    except (ConnectionError, requests.RequestException) as exc:
        raise ClusterNotUpError(f"cannot upload {', '.join(paths)} to the cluster ({_reason(exc)}).") from None
    return list(renv["py_modules"])


def _reason(exc: BaseException) -> str:
    """The first line of a connection error, without the library's nesting."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]


def _call(info: ClusterInfo, job_id: str | None, fn: Callable[[Any], Any]) -> Any:
    """Run ``fn(client)``, turning Ray's HTTP errors into Atoll errors."""
    client = _client(info)
    deadline = time.monotonic() + AGENT_WAIT_S
    while True:
        try:
            return fn(client)
        except RuntimeError as exc:
            text = str(exc)
            if "404" in text or "does not exist" in text:
                raise JobNotFoundError(f"no job {job_id!r} on the cluster at {info.dashboard_url}; "
                                       f"`atoll jobs list` shows the jobs it knows.") from None
            # A head that has just started answers 500 until its job agent registers (a few seconds).
            if "No available agent" in text and time.monotonic() < deadline:
                time.sleep(1)
                continue
            raise ClusterError(f"the Jobs API at {info.dashboard_url} refused the request: "
                               f"{text.removeprefix('Request failed with ')}") from None
        except (ConnectionError, requests.RequestException) as exc:
            # The Jobs SDK speaks `requests`: a head that dies mid-command raises its errors, not ours.
            raise ClusterNotUpError(f"lost the Jobs API at {info.dashboard_url} ({_reason(exc)}): the head stopped "
                                    f"answering. Check it with `atoll status`.") from None


def package_dir() -> Path:
    """The directory of the installed ``atoll`` package (shipped with every job as a py_module)."""
    return Path(__file__).resolve().parent


def cluster_env(spec: ClusterSpec | None = None) -> dict[str, str]:
    """What a job needs of the client's cluster.yaml, resolved by the client: the storage root, the store's
    (non-secret) settings and the model-type allow-list.

    Never a path of the client's machine: a remote head has no such file, and a spec outside the project
    ships no cluster.yaml, yet the job must write where the client reads. Never a secret either: a job's
    runtime_env is readable by anyone with the cluster token (Jobs API, dashboard).
    """
    from atoll import config

    spec = spec or config.load_spec()  # also points this process's AWS variables at cluster.yaml's store
    return {config.STORAGE_VAR: spec.atoll.storage, config.MODEL_TYPES_VAR: json.dumps(spec.atoll.model_types),
            **filesystems.forwarded_env()}


def runtime_env(working_dir: str | Path | None, env: dict[str, str] | None = None,
                keep: list[Path] | None = None) -> dict[str, Any]:
    """The job's runtime_env: the working dir (minus data/caches, but with the files in ``keep``) plus this
    very ``atoll`` package, so the cluster runs the same Atoll code as the client that submitted the job, and
    the client's resolved cluster settings (:func:`cluster_env`)."""
    env_vars = cluster_env()
    env_vars["HF_HUB_OFFLINE"] = "1"  # no job downloads weights: a mistyped hub id fails at once
    env_vars.update(env or {})
    renv: dict[str, Any] = {"py_modules": [str(package_dir())], "env_vars": env_vars}
    if working_dir is not None:
        renv["working_dir"] = str(Path(working_dir).resolve())
        renv["excludes"] = list(DEFAULT_EXCLUDES) + _kept(Path(working_dir).resolve(), keep or [])
    return renv


def _kept(folder: Path, files: list[Path]) -> list[str]:
    """Exclude patterns that put ``files`` (those inside ``folder``) back where the default excludes would
    drop them: a spec's own dataset in ``data/`` ships with its job, the rest of ``data/`` does not.

    Ray reads the excludes as one gitignore list (the last matching pattern wins, and ``!/a/b`` matches
    ``a/b`` alone) and never enters a folder it skips, hence the folders on the way too.
    """
    def escaped(parts: tuple[str, ...]) -> str:
        return "/".join(re.sub(r"([\[\]*?!#\\])", r"\\\1", part) for part in parts)

    folders, targets = set(), []
    for file in files:
        file = file.resolve()
        if not file.is_relative_to(folder) or file == folder:
            continue
        parts = file.relative_to(folder).parts
        folders.update(parts[:depth] for depth in range(1, len(parts)))
        targets += [f"!/{escaped(parts)}"] + ([f"!/{escaped(parts)}/**"] if file.is_dir() else [])
    return [f"!/{escaped(parts)}" for parts in sorted(folders, key=len)] + targets


def submit(entrypoint: list[str] | str, *, info: ClusterInfo | None = None,
           working_dir: str | Path | None = None, env: dict[str, str] | None = None,
           submission_id: str | None = None, metadata: dict[str, str] | None = None,
           entrypoint_num_cpus: float | None = None, keep: list[Path] | None = None) -> str:
    """Submit a job through the Jobs API; returns its submission id.

    Args:
        entrypoint: the command, as a list of arguments (quoted for the shell) or one string.
        working_dir: shipped to the cluster as the job's working directory (default: none).
        env: extra environment variables for the job.
        keep: files of ``working_dir`` to ship even where the default excludes (``data``, ``*.parquet``, ...)
            would leave them out.
    """
    info = info or current()
    command = entrypoint if isinstance(entrypoint, str) else shlex.join(entrypoint)
    if working_dir is not None and not Path(working_dir).is_dir():
        raise ConfigError(f"--working-dir {working_dir}: not a directory; pass an existing folder.")
    kwargs: dict[str, Any] = {}
    if entrypoint_num_cpus is not None:
        kwargs["entrypoint_num_cpus"] = entrypoint_num_cpus
    return _call(info, submission_id, lambda c: c.submit_job(
        entrypoint=command, runtime_env=runtime_env(working_dir, env, keep), submission_id=submission_id,
        metadata={"submitted_by": "atoll", **(metadata or {})}, **kwargs))


#: The jobs `atoll train` and `atoll tune` submit: kind → the module run as ``python -m MODULE -c SPEC``.
ENTRY_POINTS = {"train": "atoll.train", "tune": "atoll.tune"}


def job_folder(spec: str | Path) -> Path:
    """The folder a job of ``spec`` ships as its working dir: the project (the folder of cluster.yaml, else
    the current folder) when the spec is inside it, else the spec's own folder."""
    from atoll.config import project_root

    spec, root = Path(spec).expanduser().resolve(), project_root().resolve()
    return root if spec.is_relative_to(root) else spec.parent


def job_files(kind: str, spec: str | Path, overrides: list[str] | None, folder: Path) -> list[Path]:
    """The spec and the local files its job reads (a sweep's training spec, the dataset). Loading the spec
    checks it, and that no relative path in it leaves ``folder`` (the job could not read it)."""
    from atoll import config, specs

    spec = Path(spec).expanduser()
    if kind == "tune":
        from atoll import tune  # above this module: the sweep's own loader (`atoll tune` has imported it)

        sweep, train = tune.load_sweep(spec, overrides, shipped=folder)
        files = [spec, tune.training_spec_path(spec, sweep)]
    else:
        train = config.load_file(specs.TrainSpec, spec, overrides, context={specs.SHIPPED: str(folder)})
        files = [spec]
    return files + ([Path(train.dataset.path).expanduser()] if specs.is_local(train.dataset.path) else [])


#: Ray's switch for a working_dir upload that ignores .gitignore files (a .rayignore still applies).
IGNORE_GITIGNORE_VAR = "RAY_RUNTIME_ENV_IGNORE_GITIGNORE"


def check_shipped(folder: Path, files: list[Path]) -> None:
    """Refuse, before submitting, a job whose spec or data Ray would not ship: a git-ignored dataset (where
    teams keep data) is left out of the upload and the job would fail with "no such file".

    Raises:
        ConfigError: naming the first such file and the two ways to fix it.
    """
    include = os.environ.get(IGNORE_GITIGNORE_VAR, "0") != "1"
    left_out = ray_compat.unshipped_files(folder, files, include_gitignore=include)
    if left_out:
        raise ConfigError(f"{left_out[0]} is ignored by a .gitignore or .rayignore in {folder}, so Ray would not "
                          f"ship it with the job; put it in object storage (s3://...), or ship it anyway with "
                          f"{IGNORE_GITIGNORE_VAR}=1 (Ray then ignores every .gitignore).")


def submit_atoll_job(kind: str, config: str | Path, overrides: list[str] | None = None,
                     extra_args: list[str] | None = None, *, info: ClusterInfo | None = None) -> str:
    """Submit a training or sweep job, ``python -m atoll.<kind> -c CONFIG [--set K=V ...]``.

    It runs wherever Atoll is installed: the ``atoll`` package ships with the job, and the working dir is
    the user's project (:func:`job_folder`) with the spec and the files it reads, even those the default
    excludes leave out (a dataset in ``data/``). Relative paths in a spec are relative to its folder, on
    this machine and in the job alike; a file your .gitignore lists is not shipped (Ray honours it). The job
    id and git commit go along as lineage, Ray's log de-duplication is off so that no progress event of one
    trial/worker is folded into another's, and Ray Train's controller polls its workers often enough for
    short epochs.

    Raises:
        ConfigError: the spec is invalid, or a relative path in it leaves the shipped folder.
    """
    if kind not in ENTRY_POINTS:
        raise ValueError(f"unknown job kind {kind!r}; one of {', '.join(ENTRY_POINTS)}")
    folder = job_folder(config)
    files = job_files(kind, config, overrides, folder)
    check_shipped(folder, files)
    spec_arg = Path(config).expanduser().resolve().relative_to(folder).as_posix()
    cmd = ["python", "-m", ENTRY_POINTS[kind], "-c", spec_arg]
    for item in overrides or []:
        cmd += ["--set", item]
    submission_id = f"atoll-{kind}-{time.strftime('%Y%m%d-%H%M%S')}-{os.urandom(2).hex()}"
    env = {"ATOLL_JOB_ID": submission_id, "ATOLL_GIT_COMMIT": git_commit(folder) or "", "RAY_DEDUP_LOGS": "0",
           # Ray Train's controller collects one report per poll, every 2 s by default: an epoch shorter than
           # that waits for it in ray.train.report (measured: 0.4 s epochs took 2 s each).
           "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25",
           # Train V2 patches a worker's print() into its logger, and tees it to the stream Ray's worker set up:
           # every line (every progress event) reached the job's log twice.
           "RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}
    return submit(cmd + list(extra_args or []), info=info, working_dir=folder, env=env,
                  submission_id=submission_id, keep=files)


def _job_dict(job: Any) -> dict[str, Any]:
    data = job.model_dump() if hasattr(job, "model_dump") else dict(job)
    status = data.get("status")
    data["status"] = getattr(status, "value", status)
    data["id"] = data.get("submission_id") or data.get("job_id")
    return {k: data.get(k) for k in ("id", "type", "status", "entrypoint", "message", "start_time",
                                      "end_time", "job_id", "submission_id", "metadata", "driver_exit_code")}


def list_jobs(info: ClusterInfo | None = None, include_drivers: bool = False) -> list[dict[str, Any]]:
    """All jobs the Jobs API knows (submitted with Atoll or with ``ray job submit``), newest first."""
    info = info or current()
    jobs = [_job_dict(j) for j in _call(info, None, lambda c: c.list_jobs())]
    if not include_drivers:
        jobs = [j for j in jobs if str(j["type"]).upper().endswith("SUBMISSION")]
    return sorted(jobs, key=lambda j: j.get("start_time") or 0, reverse=True)


def status(job_id: str, info: ClusterInfo | None = None) -> dict[str, Any]:
    """One job's details (status, entrypoint, times, message)."""
    info = info or current()
    return _job_dict(_call(info, job_id, lambda c: c.get_job_info(job_id)))


def logs(job_id: str, info: ClusterInfo | None = None) -> str:
    """Everything the job has printed so far."""
    info = info or current()
    return _call(info, job_id, lambda c: c.get_job_logs(job_id))


def stop(job_id: str, info: ClusterInfo | None = None, wait_s: float = 30.0) -> str:
    """Stop a job and wait (up to ``wait_s``) until it has stopped; returns its final status."""
    info = info or current()
    _call(info, job_id, lambda c: c.stop_job(job_id))
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        state = status(job_id, info)["status"]
        if state in TERMINAL:
            return state
        time.sleep(0.5)
    return status(job_id, info)["status"]


#: Modes whose autoscaler may add cluster.yaml's worker types (a plain local head adds nothing).
AUTOSCALING_MODES = ("simulated", "remote")


def _addable_node_types(info: ClusterInfo) -> list | None:
    """The node types the cluster's autoscaler may add (None: it adds none)."""
    from atoll import config

    if info.mode not in AUTOSCALING_MODES:
        return None
    try:
        return list(config.load_spec(info.config_path).worker_types().values())
    except (ConfigError, OSError):
        return []


#: Seconds between checks that a followed job's pending work can fit some node.
FEASIBILITY_CHECK_S = 3.0


def unschedulable(job_id: str, info: ClusterInfo | None = None) -> str | None:
    """Why a running job can never finish (pending work that fits no node), or None."""
    from atoll import capacity

    info = info or current()
    details = status(job_id, info)
    if details["status"] not in ("PENDING", "RUNNING"):
        return None
    auth.enable_for_this_process()
    try:
        return capacity.unschedulable(info.dashboard_url, auth.headers(), details.get("job_id"),
                                      worker_types=_addable_node_types(info))
    except Exception:  # the state API is best effort (a restarting dashboard); the next check retries
        return None


#: How often a follower asks whether the job has ended: Ray's log stream closes 2-3 s after the driver exits
#: (its tail sleeps 1 s at each end of file, then 1 s more once the job is terminal), a status call answers at once.
STATUS_POLL_S = 0.5


def follow(job_id: str, on_text: Callable[[str], None], info: ClusterInfo | None = None) -> dict[str, Any]:
    """Stream the job's logs to ``on_text`` until it ends; return its final details. The end is read from the
    job's status, and what the stream had not delivered by then is read from the log once, so nothing is lost.

    Raises:
        JobUnschedulableError: the job waits for resources no node has or can get; it is stopped first.
    """
    info = info or current()
    client = _client(info)
    status(job_id, info)  # unknown id → JobNotFoundError before streaming
    delivered = 0  # characters of the log handed to on_text

    def deliver(text: str) -> None:
        nonlocal delivered
        on_text(text)
        delivered += len(text)

    async def tail() -> None:
        async for chunk in client.tail_job_logs(job_id):
            deliver(chunk)

    def watch_once(last_check: float) -> tuple[dict | None, str | None, float]:
        """(final details, unschedulable reason, time of the last feasibility check)."""
        details = status(job_id, info)
        if details["status"] in TERMINAL:
            return details, None, last_check
        if time.monotonic() - last_check > FEASIBILITY_CHECK_S:
            return None, unschedulable(job_id, info), time.monotonic()
        return None, None, last_check

    async def watch() -> tuple[dict | None, str | None]:
        last_check = time.monotonic()
        while True:
            await asyncio.sleep(STATUS_POLL_S)
            details, reason, last_check = await asyncio.to_thread(watch_once, last_check)
            if details or reason:
                return details, reason

    async def tail_until_ended() -> tuple[dict | None, str | None]:
        tasks = [asyncio.create_task(tail()), asyncio.create_task(watch())]
        done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        if tasks[0] in done:
            tasks[0].result()  # a stream that broke raises here; one that ended: the watcher says how
            return await tasks[1]
        tasks[0].cancel()
        return tasks[1].result()

    try:
        details, reason = asyncio.run(tail_until_ended())
    except Exception:  # the log stream can drop (e.g. the dashboard restarts): fall back to polling
        details, reason = None, None
        last_check = time.monotonic()
        while details is None and reason is None:
            time.sleep(STATUS_POLL_S)
            details, reason, last_check = watch_once(last_check)
    if details is not None:
        rest = logs(job_id, info)[delivered:]  # what the stream had not delivered when the job ended
        if rest:
            on_text(rest)
        return details
    state = stop(job_id, info)
    raise JobUnschedulableError(f"job {job_id} can never be scheduled: {reason} It was stopped ({state}).")


def follow_events(job_id: str, on_event: Callable[[dict[str, Any]], None] | None = None,
                  info: ClusterInfo | None = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Follow a job to its end as :func:`follow` does, reading its progress events (``atoll.events``) from the
    log: each is parsed once, however often Ray forwarded its line, and handed to ``on_event`` as it comes.

    Returns:
        The job's final details and its events, in order.

    Raises:
        As :func:`follow`.
    """
    events: list[dict[str, Any]] = []
    seen: set[str] = set()
    partial = [""]  # a line the last chunk cut short: it is read once its end arrives

    def read(text: str) -> None:
        text, cut = partial[0] + text, ""
        if text and not text.endswith("\n"):
            text, _, cut = text.rpartition("\n")
        partial[0] = cut
        for event in parse_events(text, seen):
            events.append(event)
            if on_event:
                on_event(event)

    details = follow(job_id, read, info)
    read("\n")  # the log's last line, if it had no newline
    return details, events


def last_event(events: list[dict[str, Any]], name: str) -> dict[str, Any] | None:
    """The latest of ``events`` called ``name`` (e.g. ``registered``), or None."""
    return next((e for e in reversed(events) if e["event"] == name), None)

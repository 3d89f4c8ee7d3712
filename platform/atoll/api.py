"""The lifecycle from Python: the verbs ``import atoll`` offers, each one documented call.

    import atoll

    atoll.up()                                          # the local cluster of ./cluster.yaml (or reuse it)
    run = atoll.fit("jobs/configs/train.yaml", overrides=["epochs=3"])      # `atoll train`
    best = atoll.sweep("jobs/configs/sweep.yaml", overrides=["num_samples=4"])  # `atoll tune`
    atoll.open_registry().set_alias("digits", best["registered"]["version"], "production")
    app = atoll.deploy("digits@production")
    atoll.query(app["app"], {"inputs": [[0.0] * 64]})
    atoll.predict("digits@production", "rows.parquet", "predictions.parquet")   # `atoll predict`
    atoll.down()

Training and sweeps run as Ray jobs through the Jobs API, exactly as `atoll train` / `atoll tune` run them;
these calls wait for the job and return what it registered. Everything else is the library module's own
function (``atoll.cluster``, ``atoll.serving.endpoints``, ``atoll.serving.client``, ``atoll.registry``), re-exported here.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from atoll import cluster, config, jobs
from atoll import registry as _registry
from atoll.cluster import ClusterInfo
from atoll.errors import ConfigError, JobFailedError
from atoll.serving import client, endpoints


def up(config_path: str | Path | None = None, **options: Any) -> ClusterInfo:
    """Start the cluster of cluster.yaml on this machine (or return the running one, ``already_up=True``);
    ``options`` as for :func:`atoll.cluster.up` (``num_cpus``, ``simulate``, ``idle_timeout_minutes``)."""
    return cluster.up(config.load_spec(config_path), **options)


def down() -> list[int] | None:
    """Stop the local cluster that :func:`up` started; the PIDs stopped (None when none was recorded)."""
    return cluster.down()


def open_registry(storage: str | None = None) -> _registry.Registry:
    """The model registry under ``storage`` (default: cluster.yaml's ``metadata.atoll.storage``)."""
    return _registry.Registry(storage or config.load_spec().atoll.storage)


def _follow(job_id: str, kind: str, on_event: Callable[[dict[str, Any]], None] | None) -> list[dict[str, Any]]:
    """The job's progress events, followed to its end (each handed to ``on_event`` as it comes).

    Raises:
        JobFailedError: the job did not succeed.
    """
    details, events = jobs.follow_events(job_id, on_event)
    if details["status"] != "SUCCEEDED":
        raise JobFailedError(f"{kind} job {job_id} {details['status']}: {details.get('message') or 'no message'}; "
                             f"its logs: `atoll jobs logs {job_id}`.")
    return events


def _run_job(kind: str, spec: str | Path, overrides: Sequence[str], extra: list[str], wait: bool,
             on_event: Callable[[dict[str, Any]], None] | None) -> dict[str, Any]:
    job_id = jobs.submit_atoll_job(kind, spec, list(overrides), extra)
    if not wait:
        return {"job": job_id}
    events = _follow(job_id, kind, on_event)
    return {"job": job_id, "status": "SUCCEEDED", "registered": jobs.last_event(events, "registered"),
            "finished": jobs.last_event(events, "finished"), "summary": jobs.last_event(events, "sweep_done"),
            "events": events}


def fit(spec: str | Path = "jobs/configs/train.yaml", *, overrides: Sequence[str] = (), name: str | None = None,
          resume: str | None = None, wait: bool = True,
          on_event: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Train on the cluster as `atoll train` does (a Ray job); wait and return what it registered.

    Args:
        spec: the training spec (YAML). ``overrides``: ``--set`` items such as ``"epochs=3"``.
        name / resume: name the run, or continue the run of that name from its checkpoint (a name is one
            folder under ``<storage>/runs``: see :data:`atoll.specs.NAME_RULE`).
        on_event: called with each progress event (``start``, ``epoch``, ``registered``, ...).

    Returns:
        ``{"job", "status", "registered", "finished", "events"}`` (only ``{"job"}`` with ``wait=False``).

    Raises:
        ConfigError: the spec or the run name is invalid (checked before anything is submitted).
        JobFailedError: the job failed.
    """
    from atoll import tasks
    from atoll.specs import TrainSpec, check_name

    for given in (name, resume):
        if given is not None:
            check_name(given, "run name")
    checked = config.load_file(TrainSpec, spec, list(overrides))
    tasks.get(checked.task).check_model(checked.model.type)
    extra = ["--resume", resume] if resume else (["--run-name", name] if name else [])
    return _run_job("train", spec, overrides, extra, wait, on_event)


def sweep(spec: str | Path = "jobs/configs/sweep.yaml", *, overrides: Sequence[str] = (), resume: bool = False,
         wait: bool = True, on_event: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Sweep as `atoll tune` does (Ray Tune + ASHA in a Ray job); wait and return the best registered version
    (``registered``) and the sweep's summary (``summary``). Raises as :func:`fit`."""
    from atoll.tune import load_sweep

    load_sweep(spec, list(overrides))
    return _run_job("tune", spec, overrides, ["--resume"] if resume else [], wait, on_event)


def predict(model: str, input: str, output: str, *, batch_size: int | None = None, overwrite: bool = False,
            runtime: str = "auto", any_order: bool = False, max_tokens: int | None = None, wait: bool = True,
            on_event: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Batch prediction as `atoll predict` does: a Ray job running the version over a dataset with Ray Data.

    ``input``: Parquet or CSV (file or folder, local or a URI); ``output``: the Parquet file to write (a local
    path is made absolute: the job runs on the cluster); ``runtime``: ``auto`` (the faster one for large
    batches: ONNX Runtime on CPU where the version has its ``model.onnx``, else torch), ``torch`` or ``onnx`` (the version's exported file); ``any_order``: rows as the actors finish them (by default the output follows the input's rows); ``max_tokens``: a
    language model's new tokens per completion (a ``completion`` column per prompt). Everything about the request is checked here first.

    Returns:
        ``{"job", "status", "predicted", "events"}`` (only ``{"job"}`` with ``wait=False``).

    Raises:
        RegistryError (unknown version), DataError (missing input or columns), ConfigError (the output
        exists): before anything is submitted. JobFailedError: the job failed.
    """
    from atoll import batch, registry
    from atoll.serving.predictor import RUNTIMES, choose_runtime

    if runtime not in RUNTIMES:
        raise ConfigError(f"--runtime {runtime}: choose {', '.join(RUNTIMES[:-1])} or {RUNTIMES[-1]}.")
    spec = cluster.load_spec()
    version = registry.Registry(spec.atoll.storage).get(model)
    source, target = batch.resolve_local(input), batch.resolve_local(output)
    batch.check(version.input_schema or {}, source, target, overwrite=overwrite)
    if runtime == "onnx":
        choose_runtime(runtime, version, "cpu")  # a version without its ONNX file: refused before submitting
    cmd = ["python", "-m", "atoll.batch", version.ref, "--input", source, "--output", target, "--runtime", runtime]
    cmd += (["--batch-size", str(batch_size)] if batch_size else []) + (["--overwrite"] if overwrite else [])
    cmd += ["--any-order"] if any_order else []
    cmd += ["--max-tokens", str(max_tokens)] if max_tokens else []
    job_id = jobs.submit(cmd, working_dir=config.project_root(spec), env={"RAY_DEDUP_LOGS": "0"},
                         submission_id=f"atoll-predict-{time.strftime('%Y%m%d-%H%M%S')}-{os.urandom(2).hex()}")
    if not wait:
        return {"job": job_id}
    events = _follow(job_id, "predict", on_event)
    return {"job": job_id, "status": "SUCCEEDED", "events": events,
            "predicted": jobs.last_event(events, "predicted")}


def evaluate(model: str, data: str, *, runtime: str = "auto", wait: bool = True,
             on_event: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Evaluate a version on labelled data as `atoll models evaluate` does: a Ray job predicting ``data`` with batch
    prediction's machinery, scoring it against the version's label column, and storing the record beside the
    version (:mod:`atoll.evaluation`).

    Returns:
        ``{"job", "status", "evaluation", "events"}``: ``evaluation`` is the stored record (only ``{"job"}`` with
        ``wait=False``).

    Raises:
        RegistryError (unknown version), EvaluationError (a language model), DataError (missing data, no label
        column, a column of the wrong type): before anything is submitted. JobFailedError: the job failed.
    """
    from atoll import batch, evaluation, registry
    from atoll.serving.predictor import RUNTIMES, choose_runtime

    if runtime not in RUNTIMES:
        raise ConfigError(f"--runtime {runtime}: choose {', '.join(RUNTIMES[:-1])} or {RUNTIMES[-1]}.")
    spec = cluster.load_spec()
    version = registry.Registry(spec.atoll.storage).get(model)
    source = batch.resolve_local(data)
    evaluation.check(version, source, shown=data)
    if runtime == "onnx":
        choose_runtime(runtime, version, "cpu")
    submission = f"atoll-evaluate-{time.strftime('%Y%m%d-%H%M%S')}-{os.urandom(2).hex()}"
    cmd = ["python", "-m", "atoll.evaluation", version.ref, "--data", source, "--as-given", data, "--runtime", runtime]
    job_id = jobs.submit(cmd, working_dir=config.project_root(spec), submission_id=submission,
                         env={"RAY_DEDUP_LOGS": "0", "ATOLL_JOB_ID": submission})
    if not wait:
        return {"job": job_id}
    events = _follow(job_id, "evaluate", on_event)
    done = jobs.last_event(events, "evaluated")
    return {"job": job_id, "status": "SUCCEEDED", "events": events, "evaluation": done["record"] if done else None}


deploy = endpoints.deploy
query = client.query
undeploy = endpoints.delete

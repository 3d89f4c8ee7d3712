"""Pydantic models for every config file a user writes.

One model per file (or per section), ``extra="forbid"`` and a description on every field: the same
class is the schema, the validator and the constructor. Loading goes through :mod:`atoll.config`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from atoll.errors import ConfigError
from atoll.tasks import DEFAULT_TASK, TASK_NAMES, unknown_task_message


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# Validation-context flags (``model_validate(data, context={...})``): checks that look beyond the file
# itself run only when a user's file is loaded (:func:`atoll.config.load_file`), not whenever a spec is
# rebuilt from a dict (trials, tests, manifests).
CHECK_FILES = "check_files"  # local data files exist
CHECK_CLUSTER = "check_cluster"  # a callable (cpus, gpus, needs_gpu) -> problem | None: workers fit a node
BASE_DIR = "base_dir"  # the spec file's folder: its relative local paths are relative to it (made absolute)
SHIPPED = "shipped"  # the folder a job ships: a relative local path must stay in it (or the job misses it)


def is_local(path: str) -> bool:
    """A file or folder on disk, not a remote URI (``s3://``, ``gs://``) or a built-in ``demo:`` dataset."""
    return "://" not in path and not path.startswith("demo:")


def resolve_local(path: str, base_dir: str | Path | None, shipped: str | Path | None = None) -> str:
    """``path`` made absolute against ``base_dir`` when it is a relative local path; absolute and ``~`` paths,
    URIs and ``demo:`` datasets stay as they are (as does everything without a ``base_dir``).

    Raises:
        ValueError: the relative path leaves ``shipped``, the folder a job ships.
    """
    if base_dir is None or not is_local(path) or path.startswith("~") or Path(path).is_absolute():
        return path
    resolved = os.path.normpath(Path(base_dir) / path)
    if shipped is not None and not Path(resolved).is_relative_to(shipped):
        raise ValueError(f"{resolved} is outside {shipped}, the folder shipped with the job, so the job "
                         f"could not read it; move it into that folder, or use an absolute path (read as is "
                         f"where the job runs) or an s3:// URI")
    return resolved


def _checking(info: ValidationInfo, flag: str) -> bool:
    return bool(info.context and info.context.get(flag))


# --------------------------------------------------------------------------------------------------
# cluster.yaml: Atoll's own part lives under metadata.atoll; Ray's part is checked by Ray's schema.


class LocalSettings(Strict):
    """How `atoll up` runs the embedded local cluster on this machine."""

    host: str = Field("127.0.0.1", description="Address the dashboard/Jobs API binds to. Keep loopback "
                      "unless other machines must reach it (they still need the token).")
    port: int = Field(6379, ge=1024, le=65535, description="GCS port of the local head.")
    dashboard_port: int = Field(8265, ge=1024, le=65535, description="Dashboard and Jobs API port.")
    num_cpus: int | None = Field(None, ge=1, description="Logical CPUs of the local head (default: all cores).")
    num_gpus: int | None = Field(None, ge=0, description="GPUs of the local head (default: detected).")
    object_store_memory_mb: int | None = Field(None, ge=64, description="Object store size in MiB "
                                               "(default: Ray's choice).")


class ServeSettings(Strict):
    """Defaults for every Serve deployment; `atoll serve deploy` options override them."""

    host: str = Field("127.0.0.1", description="Address the Serve HTTP proxy binds to.")
    port: int = Field(8000, ge=1024, le=65535, description="Serve HTTP port.")
    min_replicas: int = Field(1, ge=0, description="Autoscaling lower bound.")
    max_replicas: int = Field(2, ge=1, description="Autoscaling upper bound.")
    target_ongoing_requests: float = Field(4.0, gt=0, description="Autoscaling target per replica.")
    upscale_delay_s: float = Field(30.0, ge=0, description="How long the load must stay above the target before "
                                   "Serve adds a replica (Serve's default).")
    downscale_delay_s: float = Field(600.0, ge=0, description="How long the load must stay below the target "
                                     "before Serve removes a replica (Serve's default).")
    max_ongoing_requests: int = Field(64, ge=1, description="Requests a replica holds at once (also "
                                      "caps the batch size).")
    max_queued_requests: int = Field(256, ge=-1, description="Requests queued per caller before 503s "
                                     "(-1: unbounded).")
    retry_after_s: float = Field(1.0, ge=0, description="Retry-After (seconds) of those 503s.")
    max_batch_size: int = Field(32, ge=1, description="Largest batch @serve.batch gathers.")
    batch_wait_timeout_s: float = Field(0.005, ge=0, description="How long a batch waits to fill up while other "
                                        "requests are in flight (a lone request never waits).")
    max_rows: int = Field(1024, ge=1, description="Most rows accepted in one request.")
    max_body_bytes: int = Field(1_048_576, ge=1024, description="Largest request body accepted.")
    max_request_pixels: int = Field(4 * 4096 * 4096, ge=1, description="Most image pixels one request may hold, "
                                    "all its images together, counted from their headers before any is decoded "
                                    "(a 1 MB body holds 48 blank 4096×4096 PNGs: 805 MP).")
    api_key_env: str = Field("ATOLL_API_KEY", description="Environment variable holding the API key; "
                             "when it is set, every route but /healthz needs 'Authorization: Bearer KEY'.")
    #: Settings one app may override at deploy time (the rest is the proxy's or the client's).
    PER_APP: ClassVar[tuple[str, ...]] = (
        "min_replicas", "max_replicas", "target_ongoing_requests", "upscale_delay_s", "downscale_delay_s",
        "max_ongoing_requests", "max_queued_requests",
        "retry_after_s", "max_batch_size", "batch_wait_timeout_s", "max_rows", "max_body_bytes", "max_request_pixels",
        "num_cpus_per_replica", "num_gpus_per_replica", "runtime", "llm_engine", "log_requests",
        "log_retention_hours")

    ingress: Literal["auto", "haproxy", "proxy"] = Field(
        "auto", description="What takes the cluster's HTTP requests: haproxy (Ray's HAProxy, straight to each "
                            "replica; it binds its stats and metrics ports 8404 and 9101 on every interface), proxy "
                            "(Serve's Python proxy) or auto (haproxy on `ray up` and KubeRay clusters, whose "
                            "start commands must then set RAY_SERVE_ENABLE_HA_PROXY=1; proxy on the embedded local "
                            "cluster). See atoll.ingress.")
    num_cpus_per_replica: float = Field(1.0, ge=0, description="CPUs each replica holds.")
    runtime: Literal["auto", "torch", "onnx"] = Field(
        "auto", description="What runs the model: torch, onnx (ONNX Runtime on the version's model.onnx) or auto "
                            "(ONNX Runtime on CPU replicas when the version has it, else torch).")
    num_gpus_per_replica: float | None = Field(None, ge=0, description="GPUs per replica "
                                               "(default: 1 when the cluster has GPUs, else 0).")
    llm_engine: Literal["auto", "vllm", "transformers"] = Field(
        "auto", description="What generates for a language model: vllm (Ray Serve LLM's OpenAI app), transformers "
                            "(Transformers' generate, with the chat playground) or auto (vllm where the cluster has "
                            "GPUs and vLLM is installed, else transformers).")

    log_requests: float = Field(0.0, ge=0, le=1, description="Share of requests each replica keeps in the request "
                                "log (inputs, outputs, version, latency, status; never headers or keys), written "
                                "as Parquet under <storage>/request_logs/<app>/ (atoll.request_log); 0: off.")
    log_retention_hours: float = Field(168.0, gt=0, description="Hours the request log keeps an hour's files; older "
                                       "hour folders are deleted by the replicas that write the log.")

    @model_validator(mode="after")
    def _bounds(self) -> ServeSettings:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas must be <= max_replicas ({self.min_replicas} > {self.max_replicas})")
        if self.max_batch_size > self.max_ongoing_requests:
            raise ValueError(f"max_batch_size ({self.max_batch_size}) cannot exceed max_ongoing_requests "
                             f"({self.max_ongoing_requests}): Serve caps each batch at max_ongoing_requests")
        return self

    def autoscaling_config(self) -> dict[str, float]:
        """Serve's ``autoscaling_config`` for an app deployed with these settings (both kinds of replica)."""
        return {"min_replicas": self.min_replicas, "max_replicas": self.max_replicas,
                "target_ongoing_requests": self.target_ongoing_requests,
                "upscale_delay_s": self.upscale_delay_s, "downscale_delay_s": self.downscale_delay_s}


#: A Kubernetes resource quantity ("4", "500m", "16Gi", "60G"), as the API server's own pattern has it.
K8S_QUANTITY = r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"


class K8sSettings(Strict):
    """How `atoll k8s render` turns cluster.yaml into KubeRay manifests (the pod sizes come from
    `available_node_types.*.resources`; `node_config` is cloud-specific and not used on Kubernetes)."""

    image: str | None = Field(None, min_length=1, description="Image of every Ray pod (default: cluster.yaml's "
                              "`docker:` image, the one ./Dockerfile builds, else Ray's stock image). RayJob and "
                              "RayService need Atoll (and torch) installed in it.")
    gpu_image: str | None = Field(None, min_length=1, description="Image of GPU worker pods (default: image).")
    ray_version: str = Field("2.60.0", pattern=r"^\d+\.\d+\.\d+$", description="Ray version inside the image "
                             "(KubeRay needs it; token auth needs 2.52.0 or later).")
    auth_secret: str = Field("atoll-ray-token", max_length=253,
                             pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$",
                             description="Kubernetes Secret holding the Ray token under the key `auth_token`.")
    storage: str | None = Field(None, min_length=1, description="Storage root inside the pods (default: "
                                "`storage`); pods share no disk, so use s3:// or gs:// (or a shared volume).")
    project_dir: str = Field("/home/ray/atoll", pattern=r"^/", description="Where the image holds this project "
                             "(the training job's working directory).")
    head_cpus: int = Field(4, ge=1, description="CPUs of the head pod when the head type declares no CPUs "
                           "for Ray (CPU: 0 keeps work off the head; its processes still need CPU).")
    head_memory: str = Field("16Gi", pattern=K8S_QUANTITY, description="Memory of the head pod when the head "
                             "type declares none, as a Kubernetes quantity.")

    @model_validator(mode="after")
    def _token_auth_version(self) -> K8sSettings:
        if tuple(int(p) for p in self.ray_version.split(".")) < (2, 52, 0):
            raise ValueError(f"ray_version {self.ray_version} is too old: Ray token auth (which Atoll turns on) "
                             f"needs 2.52.0 or later")
        return self


class S3Settings(Strict):
    """An S3-compatible object store for the storage root (AWS S3, SeaweedFS, MinIO, Ceph, ...). Only where the
    credentials come from is configured here, never the credentials themselves."""

    endpoint: str | None = Field(None, description="The S3 API's URL, e.g. http://127.0.0.1:8333 (`atoll storage "
                                 "up`); unset: AWS S3 itself.")
    region: str = Field("us-east-1", min_length=1, description="The store's region.")
    credentials: Literal["env", "file"] = Field("env", description="env: each node's own AWS_ACCESS_KEY_ID / "
                                                "AWS_SECRET_ACCESS_KEY or instance role; file: an AWS shared-"
                                                "credentials file at credentials_file on every node.")
    credentials_file: str = Field("~/.aws/credentials", min_length=1, description="That file (credentials: "
                                  "file); only its path is passed to jobs and replicas.")

    @field_validator("endpoint")
    @classmethod
    def _endpoint_url(cls, endpoint: str | None) -> str | None:
        if endpoint is not None and not re.fullmatch(r"https?://[^/\s]+/?", endpoint):
            raise ValueError(f"{endpoint!r} is not the URL of an S3 API; write scheme, host and port, e.g. "
                             f"http://127.0.0.1:8333")
        return endpoint.rstrip("/") if endpoint else endpoint


_PY_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_PY_MODULE = rf"{_PY_NAME}(?:\.{_PY_NAME})*"
#: A user model type, ``package.module:callable`` (atoll.models refuses anything else before importing).
MODEL_TYPE_RE = re.compile(rf"(?P<module>{_PY_MODULE}):(?P<attr>{_PY_NAME})")
#: An entry of ``model_types``: ``pkg.mod:build`` (that callable), ``pkg.mod:*`` (any callable of that
#: module) or ``pkg.*`` (the package and every module under it).
MODEL_TYPE_ENTRY_RE = re.compile(rf"{_PY_MODULE}:(?:{_PY_NAME}|\*)|{_PY_MODULE}\.\*")


class AtollSettings(Strict):
    """The `metadata.atoll` section of cluster.yaml."""

    storage: str = Field("~/.atoll/storage", description="Root for checkpoints, sweeps and the model "
                         "registry: a local directory or an s3:// / gs:// URI. ATOLL_STORAGE overrides it.")
    s3: S3Settings | None = Field(None, description="The S3-compatible store an s3:// storage root lives in.")
    model_types: list[str] = Field(default_factory=list, description="User model types (a training spec's "
                                   "`model.type`) that a Serve replica may import for a registered version, "
                                   "besides the built-ins mlp and cnn: `pkg.mod:build` (that callable), "
                                   "`pkg.mod:*` (any callable of the module) or `pkg.*` (the package and its "
                                   "modules). A manifest names the type, so without this list write access to "
                                   "the storage alone would run code on the cluster.")
    local: LocalSettings = Field(default_factory=LocalSettings, description="The embedded local cluster.")
    serve: ServeSettings = Field(default_factory=ServeSettings, description="Ray Serve defaults.")
    k8s: K8sSettings = Field(default_factory=K8sSettings, description="Kubernetes (KubeRay) manifests.")

    @field_validator("model_types")
    @classmethod
    def _model_type_entries(cls, entries: list[str]) -> list[str]:
        for entry in entries:
            if not MODEL_TYPE_ENTRY_RE.fullmatch(entry):
                raise ValueError(f"{entry!r} is not an import path; use 'pkg.models:build' (that callable), "
                                 f"'pkg.models:*' (any callable of the module) or 'pkg.*' (the package and its "
                                 f"modules). The built-ins (mlp, cnn) need no entry")
        return entries


class NodeType(BaseModel):
    """One entry of `available_node_types` (Ray's schema is the authority; this is a typed view)."""

    model_config = ConfigDict(extra="allow")
    node_config: dict[str, Any] = Field(default_factory=dict)
    resources: dict[str, float] = Field(default_factory=dict)
    min_workers: int = 0
    max_workers: int | None = None


class ClusterSpec(BaseModel):
    """cluster.yaml as a whole: Ray's cluster-launcher config plus Atoll's settings."""

    model_config = ConfigDict(extra="allow")
    cluster_name: str
    provider: dict[str, Any]
    max_workers: int = 2
    upscaling_speed: float = 1.0
    idle_timeout_minutes: float = 5.0
    head_node_type: str
    available_node_types: dict[str, NodeType]
    atoll: AtollSettings = Field(default_factory=AtollSettings)
    source: str = Field("", description="Where the spec was read from.")

    def worker_types(self) -> dict[str, NodeType]:
        return {k: v for k, v in self.available_node_types.items() if k != self.head_node_type}

    @property
    def has_gpu_nodes(self) -> bool:
        return any(t.resources.get("GPU", 0) > 0 for t in self.available_node_types.values())


# --------------------------------------------------------------------------------------------------
# Training spec (jobs/configs/train.yaml)

#: A name that becomes one folder under the storage root (model, run, sweep): no '/', no '..', no absolute path.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
NAME_RULE = "1 to 64 letters, digits, '_', '.' or '-', starting with a letter or digit"


def check_name(value: str, what: str) -> str:
    """Refuse a user-given name that would not be one folder under the storage root (``../registry/x``, ``/abs``).

    The one check for run and sweep names wherever they enter (the CLI, :func:`atoll.fit`, the jobs);
    the specs' ``name`` fields hold the same :data:`NAME_PATTERN`.

    Args:
        value: The name as given.
        what: What it names, for the message, e.g. ``"run name"``.

    Returns:
        The name, unchanged.

    Raises:
        ConfigError: the name breaks :data:`NAME_RULE`.
    """
    if not isinstance(value, str) or not re.fullmatch(NAME_PATTERN, value):
        raise ConfigError(f"invalid {what} {value!r}: use {NAME_RULE}, e.g. digits-lr3.")
    return value


class DatasetSpec(Strict):
    path: str = Field(..., description="Parquet/CSV file or folder, local or s3:// / gs://; "
                      "`demo:digits` exports the built-in demo on first use.")
    format: Literal["auto", "parquet", "csv"] = Field("auto", description="File format (auto: by suffix).")
    features: list[str] | None = Field(None, description="Feature columns (default: every column but the label "
                                       "and those in exclude).")
    label: str = Field("label", description="Label column (classes are encoded as 0..K-1; rows without a label "
                       "are left out and counted).")
    categorical: list[str] = Field(default_factory=list, description="Tables: columns taken as categories whatever "
                                   "their type, e.g. integer codes (a zip code, a year). Words, booleans and "
                                   "categoricals are categories anyway.")
    numeric: list[str] = Field(default_factory=list, description="Tables: columns taken as numbers whatever their "
                               "type (booleans as 0/1; numbers written as text are read, other text is a gap).")
    exclude: list[str] = Field(default_factory=list, description="Tables: columns left out of the features (ids, "
                               "free text, dates).")
    validation_fraction: float = Field(0.2, gt=0, lt=1, description="Share of rows held out for validation.")
    cache: Literal["auto", True, False] = Field("auto", description="Keep preprocessed rows in the object "
                                                "store across epochs (auto: when they take < 512 MiB).")

    @model_validator(mode="after")
    def _column_choices(self) -> DatasetSpec:
        both = [c for c in self.categorical if c in self.numeric]
        if both:
            raise ValueError(f"{', '.join(both)} listed in both categorical and numeric; keep each column in one")
        for field in ("categorical", "numeric", "exclude"):
            if self.label in getattr(self, field):
                raise ValueError(f"{field} lists the label {self.label!r}; it names feature columns only")
        listed = [c for c in self.exclude if c in (self.features or [])]
        if listed:
            raise ValueError(f"{', '.join(listed)} both in features and in exclude; drop it from one of them")
        return self

    def overrides(self) -> dict[str, list[str]]:
        """The column choices as :func:`atoll.data.plan` takes them (unknown names are refused there, where the
        columns are known)."""
        return {"categorical": self.categorical, "numeric": self.numeric, "exclude": self.exclude}

    @field_validator("path")
    @classmethod
    def _exists(cls, path: str, info: ValidationInfo) -> str:
        # Remote URIs and demo datasets are resolved where the job runs; a local path must exist here.
        base_dir = (info.context or {}).get(BASE_DIR)
        path = resolve_local(path, base_dir, (info.context or {}).get(SHIPPED))
        if _checking(info, CHECK_FILES) and is_local(path) and not Path(path).expanduser().exists():
            where = f"relative to the spec's folder, {base_dir}" if base_dir else f"relative to {Path.cwd()}"
            raise ValueError(f"no such file or folder ({where}); fix the path, or use "
                             f"demo:digits for the built-in demo")
        return path


class ModelSpec(Strict):
    type: str = Field("mlp", description="`mlp`, `cnn`, `xgboost` (gradient-boosted trees, tables), or an import "
                      "path `mypkg.models:build`.")
    params: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments of the model "
                                   "(mlp: hidden, dropout; cnn: channels, image_shape, dropout; xgboost: TreeParams).")


class TreeParams(Strict):
    """``model.params`` of ``model.type: xgboost`` (XGBoost's own names; boosting rounds are the spec's ``epochs``).
    Used by :mod:`atoll.trees`; here so that a spec is checked whole before any work."""

    max_depth: int = Field(6, ge=1, le=32, description="Deepest a tree grows.")
    eta: float = Field(0.3, gt=0, le=1, description="Learning rate: the shrinkage of each round's trees.")
    min_child_weight: float = Field(1.0, ge=0, description="Least hessian sum in a leaf.")
    subsample: float = Field(1.0, gt=0, le=1, description="Share of rows each round samples.")
    colsample_bytree: float = Field(1.0, gt=0, le=1, description="Share of inputs each tree samples.")
    reg_lambda: float = Field(1.0, ge=0, description="L2 penalty on leaf weights (XGBoost's lambda).")
    reg_alpha: float = Field(0.0, ge=0, description="L1 penalty on leaf weights (XGBoost's alpha).")
    gamma: float = Field(0.0, ge=0, description="Least loss reduction to split.")
    max_bin: int = Field(256, ge=2, le=65_536, description="Histogram bins per input.")
    tree_method: Literal["hist", "approx"] = Field("hist", description="How splits are found.")
    early_stopping_rounds: int | None = Field(None, ge=1, description="Stop when the validation loss has not "
                                              "improved for this many rounds (None: run every round).")
    checkpoint_every: int = Field(10, ge=1, description="Rounds between checkpoints; a round that improves the "
                                  "task's objective and the last round are always checkpointed.")


def tree_params_problem(params: dict[str, Any] | None) -> str | None:
    """What is wrong with trees' ``model.params``, as one line naming the field and the fix; None if nothing."""
    import difflib

    import pydantic

    try:
        TreeParams.model_validate(params or {})
    except pydantic.ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            close = difflib.get_close_matches(key, list(TreeParams.model_fields), n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"known keys: {', '.join(TreeParams.model_fields)}"
            if key in ("num_boost_round", "n_estimators", "rounds"):
                hint = "boosting rounds are the spec's `epochs`"
            return f"model.params.{key}: unknown key for model.type xgboost; {hint}."
        return f"model.params.{key}: {err['input']!r}: {err['msg']}."
    return None


class OptimizerSpec(Strict):
    name: Literal["adam", "adamw", "sgd"] = Field("adamw", description="Optimizer.")
    lr: float = Field(3e-3, gt=0, description="Learning rate.")
    weight_decay: float = Field(0.0, ge=0, description="Weight decay.")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum.")


#: What `atoll models evaluate` computes per task (the names a promotion gate may name, ``val_`` prefix optional);
#: a task missing here is not evaluated yet (a language model).
_CLASSIFIER_METRICS = ("accuracy", "f1")
EVALUATED_METRICS: dict[str, tuple[str, ...]] = {
    "tabular-classification": _CLASSIFIER_METRICS, "text-classification": _CLASSIFIER_METRICS,
    "image-classification": _CLASSIFIER_METRICS, "tabular-regression": ("rmse", "mae", "r2")}


def gate_metric_problem(task: str, metric: str, where: str) -> str | None:
    """What is wrong with a metric a gate names for ``task`` (one line: the field, the fix); None if nothing."""
    import difflib

    known = EVALUATED_METRICS.get(task)
    if known is None:
        return f"{where}: a {task} model has no evaluation metrics yet, so no gate can judge it"
    if metric.removeprefix("val_") in known:
        return None
    close = difflib.get_close_matches(metric.removeprefix("val_"), known, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"{where}: unknown metric {metric!r} for a {task} model; {hint}choose {', '.join(known)}"


class GateSpec(Strict):
    """What `atoll models promote NAME:V ALIAS --gate` requires of V besides beating the alias's current version
    on the task's objective (the same data, the same metric, its direction): metric thresholds on V's evaluation,
    and how much worse than the current version V may be. The command line's ``--min``/``--max``/
    ``--max-regression`` add to it (and win for the same metric)."""

    min: dict[str, float] = Field(default_factory=dict, description="Lowest value V's evaluation may show, per "
                                  "metric: {f1: 0.9} (accuracy, f1 for classifiers; rmse, mae, r2 for regression).")
    max: dict[str, float] = Field(default_factory=dict, description="Highest value V's evaluation may show, per "
                                  "metric: {rmse: 60}.")
    max_regression: float | None = Field(None, ge=0, description="How much worse than the alias's current version "
                                         "V may be on the task's objective, in its units (0.01: one point of "
                                         "accuracy); by default V must be strictly better.")

    @field_validator("min", "max")
    @classmethod
    def _bare_names(cls, bounds: dict[str, float]) -> dict[str, float]:
        return {name.removeprefix("val_"): value for name, value in bounds.items()}


class TrainSpec(Strict):
    """A training run: data, model, optimiser, schedule, resources, and the registry name."""

    name: str = Field(..., pattern=NAME_PATTERN, description="Registry name of the trained model.")
    task: str = Field(DEFAULT_TASK, description="The kind of problem: " + ", ".join(TASK_NAMES) + ".")
    dataset: DatasetSpec
    model: ModelSpec = Field(default_factory=ModelSpec)
    optimizer: OptimizerSpec = Field(default_factory=OptimizerSpec)
    epochs: int = Field(10, ge=1, le=10_000, description="Passes over the training split.")
    batch_size: int = Field(64, ge=1, description="Batch size per worker.")
    num_workers: int = Field(2, ge=1, description="Data-parallel training workers.")
    cpus_per_worker: float = Field(1, gt=0, description="CPUs reserved per worker.")
    gpus_per_worker: float = Field(1, ge=0, description="GPUs per worker when training on GPU.")
    use_gpu: Literal["auto", True, False] = Field("auto", description="auto: on GPU when the cluster has GPUs.")
    strategy: Literal["ddp", "fsdp"] = Field("ddp", description="Data-parallel strategy.")
    placement: Literal["pack", "spread", "strict_spread"] = Field(
        "pack", description="Where the workers go: pack (as few nodes as possible: fastest collectives), "
        "spread (across nodes where it can: a node that dies takes fewer workers) or strict_spread (one worker "
        "per node, or the run waits).")
    keep_checkpoints: int = Field(2, ge=1, description="Best N checkpoints kept (by the task's objective: "
                                  "validation accuracy, or RMSE for regression).")
    max_failures: int = Field(1, ge=0, description="Worker-group restarts from the last checkpoint.")
    seed: int = Field(0, description="Seed for weights, shuffling and the split.")
    register_model: bool = Field(True, description="Register the best checkpoint in the model registry.")
    gate: GateSpec | None = Field(None, description="What `atoll models promote --gate` requires of the "
                                  "registered version (thresholds on its evaluation, the regression allowed).")

    @field_validator("task")
    @classmethod
    def _known_task(cls, task: str) -> str:
        if task not in TASK_NAMES:
            raise ValueError(unknown_task_message(task))
        return task

    @model_validator(mode="after")
    def _checks(self) -> TrainSpec:
        if self.dataset.features is not None and not self.dataset.features:
            raise ValueError("dataset.features: empty list; leave it out to use every column but the label")
        chosen = [f for f in ("categorical", "numeric", "exclude") if getattr(self.dataset, f)]
        if chosen and not self.task.startswith("tabular-"):
            raise ValueError(f"dataset.{chosen[0]}: column kinds are for tables; a {self.task} task reads one "
                             f"column (set dataset.features instead)")
        if self.model.type == "xgboost" and (problem := tree_params_problem(self.model.params)):
            raise ValueError(problem)  # gradient-boosted trees (atoll.trees): checked before any work
        if self.gate is not None:
            for side in ("min", "max"):
                for metric in getattr(self.gate, side):
                    if problem := gate_metric_problem(self.task, metric, f"gate.{side}.{metric}"):
                        raise ValueError(problem)
        return self

    @model_validator(mode="after")
    def _fits_a_node(self, info: ValidationInfo) -> TrainSpec:
        fit_problem = (info.context or {}).get(CHECK_CLUSTER)
        if callable(fit_problem):  # the loader's check against cluster.yaml's nodes (atoll.capacity)
            problem = fit_problem(self.cpus_per_worker, self.gpus_per_worker if self.use_gpu is not False else 0,
                                  self.use_gpu is True)
            if problem:
                raise ValueError(problem)
        return self



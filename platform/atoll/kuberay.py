"""cluster.yaml → KubeRay manifests: a RayCluster, a RayJob for the training job, a RayService for the demo model.

Pure functions from a :class:`~atoll.specs.ClusterSpec` to plain dicts (the manifests), and one function that
writes them as YAML files. Nothing here talks to Kubernetes; ``kubectl apply -f k8s/`` does that.

How cluster.yaml maps onto KubeRay's ``ray.io/v1`` API:

* ``head_node_type`` → ``headGroupSpec``; every other node type → one ``workerGroupSpec`` with
  ``minReplicas``/``maxReplicas`` from ``min_workers``/``max_workers`` (``replicas`` starts at ``minReplicas``).
* a node type's ``resources`` → the Ray container's requests/limits (``CPU`` → ``cpu``, ``memory`` → ``memory``,
  ``GPU`` → ``nvidia.com/gpu``) and ``rayStartParams`` (``num-cpus``, ``num-gpus``, custom resources), so Ray's
  autoscaler sees the same node types as ``ray up`` does. ``node_config`` is cloud-specific and unused here.
* ``idle_timeout_minutes`` → ``autoscalerOptions.idleTimeoutSeconds``; ``upscaling_speed`` → ``upscalingMode``.
* Ray token auth → ``authOptions: {mode: token, secretName}`` plus ``RAY_AUTH_MODE``/``RAY_AUTH_TOKEN`` (from the
  Secret) in every Ray container. The token itself is never written anywhere: the user creates the Secret.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from atoll.errors import ConfigError

if TYPE_CHECKING:  # annotations only: `atoll k8s` shows this module's defaults in its help, which starts fast
    from atoll.specs import ClusterSpec, NodeType

API_VERSION = "ray.io/v1"
#: The data key KubeRay reads the token from in ``authOptions.secretName``'s Secret.
TOKEN_KEY = "auth_token"
DEFAULT_MODEL = "digits@production"
TRAIN_CONFIG = "jobs/configs/train.yaml"
FILES = {"RayCluster": "raycluster.yaml", "RayJob": "rayjob-train.yaml", "RayService": "rayservice.yaml"}
#: KubeRay's defaults for the head's ports (its Services point at these container port names).
GCS_PORT, DASHBOARD_PORT, CLIENT_PORT = 6379, 8265, 10001
GPU_RESOURCE = "nvidia.com/gpu"
#: KubeRay's name limits: a RayCluster ≤ 53 characters, a RayJob or RayService ≤ 47 (it prefixes a cluster's).
MAX_CHILD_NAME = 47
MAX_BASE_NAME = MAX_CHILD_NAME - len("-train")
#: KubeRay offers two upscaling rates, Conservative (Ray's upscaling_speed 1) and Default (1000); an
#: upscaling_speed picks the nearer one on a log scale (the geometric mean, ~32, is the boundary).
AGGRESSIVE_FROM_SPEED = (1 * 1000) ** 0.5
_STANDARD = {"CPU", "GPU", "memory", "object_store_memory"}


# ------------------------------------------------------------------------------------------------
# Names and quantities


def k8s_name(text: str, what: str, max_len: int = 63) -> str:
    """A DNS-1035 label from ``text`` (lower case, '-' for anything else, starting with a letter)."""
    name = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    name = re.sub(r"-{2,}", "-", name)
    if name and not name[0].isalpha():
        name = f"ray-{name}"
    name = name[:max_len].rstrip("-")
    if not name:
        raise ConfigError(f"{what}: {text!r} gives no usable Kubernetes name; use letters, digits and '-'.")
    return name


def base_name(spec: ClusterSpec) -> str:
    """The RayCluster's name (the RayJob and RayService add ``-train`` / ``-serve``)."""
    return k8s_name(spec.cluster_name, "cluster_name", MAX_BASE_NAME)


def memory_quantity(n_bytes: float) -> str:
    """Bytes as a Kubernetes quantity: ``60000000000`` → ``60G``, ``17179869184`` → ``16Gi``."""
    n = round(n_bytes)
    for suffix, unit in (("Gi", 1024**3), ("G", 10**9), ("Mi", 1024**2), ("M", 10**6)):
        if n >= unit and n % unit == 0:
            return f"{n // unit}{suffix}"
    return str(n)


def _whole(value: float, where: str, why: str) -> int:
    if value != int(value):
        raise ConfigError(f"{where}: {value} is not a whole number; {why}")
    return int(value)


def upscaling_mode(upscaling_speed: float) -> str:
    """KubeRay's ``upscalingMode`` nearest to Ray's ``upscaling_speed`` (1 → Conservative, 1000 → Default)."""
    return "Default" if upscaling_speed >= AGGRESSIVE_FROM_SPEED else "Conservative"


# ------------------------------------------------------------------------------------------------
# Pods


def _storage(spec: ClusterSpec) -> str:
    return spec.atoll.k8s.storage or spec.atoll.storage


def token_env(spec: ClusterSpec) -> list[dict[str, Any]]:
    """RAY_AUTH_MODE=token and RAY_AUTH_TOKEN from the Secret: what every Ray process and client needs."""
    return [{"name": "RAY_AUTH_MODE", "value": "token"},
            {"name": "RAY_AUTH_TOKEN", "valueFrom": {"secretKeyRef": {
                "name": spec.atoll.k8s.auth_secret, "key": TOKEN_KEY}}}]


def _env(spec: ClusterSpec) -> list[dict[str, Any]]:
    from atoll import ingress
    from atoll.serving import proxy_auth

    # Serve's proxy on every pod refuses requests without a valid API key before a replica's queue.
    env = [*token_env(spec), {"name": proxy_auth.ENV_VAR, "value": proxy_auth.IMPORT_PATH}]
    # HAProxy as the ingress on a cluster (auto): every pod's `ray start` needs it in its environment.
    env += [{"name": k, "value": v} for k, v in ingress.ray_start_env(spec.atoll.serve.ingress, local=False).items()]
    if spec.atoll.k8s.storage:
        env.append({"name": "ATOLL_STORAGE", "value": spec.atoll.k8s.storage})
    return env


def _group(spec: ClusterSpec, type_name: str, node: NodeType, *, head: bool) -> tuple[dict[str, Any], dict[str, str]]:
    """Container resources and rayStartParams of one node type."""
    k8s = spec.atoll.k8s
    where = f"available_node_types.{type_name}.resources"
    res = dict(node.resources)
    params: dict[str, str] = {}
    requests: dict[str, str] = {}
    limits: dict[str, str] = {}

    cpus = res.get("CPU")
    if cpus is not None:
        params["num-cpus"] = str(_whole(cpus, f"{where}.CPU", "`ray start --num-cpus` takes whole CPUs; "
                                        "round it."))
    if head:
        # CPU: 0 keeps tasks off the head (Ray's logical CPUs); the pod still needs real CPU for the GCS,
        # dashboard, job drivers and the Serve proxy.
        container_cpus = int(cpus) if cpus else k8s.head_cpus
    else:
        if not cpus:
            raise ConfigError(f"{where}.CPU: missing or 0 for worker type {type_name!r}; KubeRay sizes each worker "
                              f"pod from it (on Kubernetes no instance type says how big a node is). Add it, e.g. "
                              f"resources: {{CPU: 8, memory: 32000000000}}.")
        container_cpus = int(cpus)
    requests["cpu"] = limits["cpu"] = str(container_cpus)

    memory = res.get("memory")
    if memory is not None:
        if memory <= 0:
            raise ConfigError(f"{where}.memory: must be > 0 bytes on Kubernetes (got {memory}); leave it out or "
                              f"give the pod's memory in bytes.")
        requests["memory"] = limits["memory"] = memory_quantity(memory)
    elif head:
        requests["memory"] = limits["memory"] = k8s.head_memory

    gpus = res.get("GPU")
    if gpus is not None:
        n_gpus = _whole(gpus, f"{where}.GPU", f"Kubernetes hands out whole GPUs ({GPU_RESOURCE}); use a whole "
                        f"number per node (fractions belong to tasks and Serve replicas, not nodes).")
        params["num-gpus"] = str(n_gpus)
        if n_gpus:
            limits[GPU_RESOURCE] = str(n_gpus)  # extended resources: the request defaults to the limit

    if res.get("object_store_memory"):
        params["object-store-memory"] = str(int(res["object_store_memory"]))
    custom = {}
    for key, value in sorted(res.items()):
        if key not in _STANDARD:
            custom[key] = _whole(value, f"{where}.{key}", "KubeRay's autoscaler reads custom resources as "
                                 "whole numbers.")
    if custom:
        # KubeRay's format: a JSON object, quoted and escaped for the shell it lands in.
        params["resources"] = '"' + json.dumps(custom).replace('"', '\\"') + '"'
    return {"requests": requests, "limits": limits}, params


def _container(name: str, image: str, resources: dict[str, Any], ports: list[dict[str, Any]],
               env: list[dict[str, Any]]) -> dict[str, Any]:
    return {"name": name, "image": image, "resources": resources, "ports": ports, "env": copy.deepcopy(env)}


def _serve_port(spec: ClusterSpec) -> dict[str, Any]:
    return {"name": "serve", "containerPort": spec.atoll.serve.port}


def check(spec: ClusterSpec) -> None:
    """What KubeRay cannot express, as a :class:`ConfigError` naming the field and the fix."""
    groups: dict[str, str] = {}
    for type_name, node in spec.worker_types().items():
        group = k8s_name(type_name, f"available_node_types.{type_name}")
        if group in groups:
            raise ConfigError(f"available_node_types: {groups[group]!r} and {type_name!r} both become worker group "
                              f"{group!r} on Kubernetes; rename one.")
        groups[group] = type_name
        _group(spec, type_name, node, head=False)
    head = spec.available_node_types[spec.head_node_type]
    _group(spec, spec.head_node_type, head, head=True)


def raycluster_spec(spec: ClusterSpec) -> dict[str, Any]:
    """The ``spec`` of the RayCluster; the RayJob and RayService embed the very same one.

    Raises:
        ConfigError: a node type Kubernetes cannot run as described (naming the field and the fix).
    """
    check(spec)
    k8s = spec.atoll.k8s
    env = _env(spec)
    head_type = spec.available_node_types[spec.head_node_type]
    head_resources, head_params = _group(spec, spec.head_node_type, head_type, head=True)
    # Atoll binds the dashboard to 127.0.0.1 on a laptop; in a pod, the KubeRay operator (job submission,
    # Serve config, status) and the autoscaler reach it through the head Service, so it listens on the pod's
    # interfaces. The token guards it; the Service is ClusterIP (not exposed outside the cluster).
    head_params = {"dashboard-host": "0.0.0.0", **head_params}
    head_ports = [{"name": "gcs-server", "containerPort": GCS_PORT},
                  {"name": "dashboard", "containerPort": DASHBOARD_PORT},
                  {"name": "client", "containerPort": CLIENT_PORT}, _serve_port(spec)]
    workers = []
    for type_name, node in spec.worker_types().items():
        resources, params = _group(spec, type_name, node, head=False)
        image = image_of(spec, type_name)
        low = node.min_workers
        high = node.max_workers if node.max_workers is not None else spec.max_workers
        workers.append({
            "groupName": k8s_name(type_name, f"available_node_types.{type_name}"),
            "replicas": low, "minReplicas": low, "maxReplicas": high,
            "rayStartParams": params,
            "template": {"spec": {"containers": [
                _container("ray-worker", image, resources, [_serve_port(spec)], env)]}},
        })
    return {
        "rayVersion": k8s.ray_version,
        "enableInTreeAutoscaling": True,
        "autoscalerOptions": {
            "upscalingMode": upscaling_mode(spec.upscaling_speed),
            "idleTimeoutSeconds": round(spec.idle_timeout_minutes * 60),
        },
        "authOptions": {"mode": "token", "secretName": k8s.auth_secret},
        "headGroupSpec": {
            "rayStartParams": head_params,
            "template": {"spec": {"containers": [
                _container("ray-head", image_of(spec), head_resources, head_ports, env)]}},
        },
        "workerGroupSpecs": workers,
    }


def _metadata(name: str, component: str) -> dict[str, Any]:
    return {"name": name, "labels": {"app.kubernetes.io/name": "atoll", "app.kubernetes.io/component": component}}


def raycluster(spec: ClusterSpec) -> dict[str, Any]:
    """A long-running, autoscaling RayCluster: the cluster.yaml cluster on Kubernetes."""
    return {"apiVersion": API_VERSION, "kind": "RayCluster", "metadata": _metadata(base_name(spec), "cluster"),
            "spec": raycluster_spec(spec)}


# ------------------------------------------------------------------------------------------------
# The training job and the model endpoint


def rayjob(spec: ClusterSpec, *, config: str = TRAIN_CONFIG, on_cluster: str | None = None) -> dict[str, Any]:
    """A RayJob running ``python -m atoll.train -c CONFIG``.

    By default it brings its own cluster (``rayClusterSpec``, the RayCluster's spec) and deletes it when the job
    ends: training is bursty and may want GPU nodes that should not stay up, a failed run cannot disturb the
    long-running cluster or the model endpoint, and the result outlives it in the registry (storage). With
    ``on_cluster=NAME`` it is submitted to that running RayCluster instead (``clusterSelector``), like ``atoll train``.
    """
    from atoll.jobs import DEFAULT_EXCLUDES

    k8s = spec.atoll.k8s
    env_vars = {"RAY_DEDUP_LOGS": "0"}  # as `atoll train`: no worker's progress line is folded into another's
    if k8s.storage:
        env_vars["ATOLL_STORAGE"] = k8s.storage
    # The project is in the image at project_dir; as with `atoll train`, it is the job's working dir.
    runtime_env = {"working_dir": k8s.project_dir, "excludes": list(DEFAULT_EXCLUDES), "env_vars": env_vars}
    job: dict[str, Any] = {
        "entrypoint": f"python -m atoll.train -c {config}",
        "runtimeEnvYAML": yaml.safe_dump(runtime_env, sort_keys=False),
        "submissionMode": "K8sJobMode",
    }
    if on_cluster:
        job["clusterSelector"] = {"ray.io/cluster": k8s_name(on_cluster, "--on-cluster")}
    else:
        # Ray Train retries inside the job (the spec's max_failures); a resubmission would start a new run.
        job.update({"shutdownAfterJobFinishes": True, "ttlSecondsAfterFinished": 600, "backoffLimit": 0,
                    "rayClusterSpec": raycluster_spec(spec)})
    return {"apiVersion": API_VERSION, "kind": "RayJob", "metadata": _metadata(f"{base_name(spec)}-train", "train"),
            "spec": job}


def pin(spec: ClusterSpec, model: str) -> tuple[str, str]:
    """What the RayService should serve for ``model``, and one line saying what was done.

    ``NAME`` and ``NAME@ALIAS`` are resolved to ``NAME:VERSION`` in the registry the cluster reads (k8s.storage,
    else storage) where this machine can read it, as ``atoll serve deploy`` does: the manifest then names one
    version, and a promote moves nothing under it until the next render. Where the registry has no such model
    yet (the RayJob has not trained it) or cannot be read from here, ``model`` goes as given, and Serve resolves
    it once when it builds the app (every replica of that deploy serves the same version).
    """
    from atoll import registry
    from atoll.errors import AtollError

    storage = _storage(spec)
    try:
        version = registry.Registry(storage).get(model)
    except (AtollError, OSError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return model, (f"{model} is not pinned ({first}): Serve resolves it once when it builds the app; render "
                       f"again after training to pin the version.")
    if version.ref == model:
        return model, f"serves {model}."
    return version.ref, f"serves {version.ref}: {model} at render time, in {storage} (render again to follow it)."


def serve_config(spec: ClusterSpec, *, model: str = DEFAULT_MODEL, app: str | None = None,
                 api_key_hash: str | None = None, requested: str | None = None) -> dict[str, Any]:
    """The Serve config of the model endpoint (and the gallery): the structure ``atoll serve deploy`` writes,
    for a pod.

    cluster.yaml's per-app Serve settings go along explicitly (a replica need not find cluster.yaml), and
    ``http_options.host`` is 0.0.0.0: inside the pod the proxy must listen on the pod's interfaces for the
    Kubernetes Service (``<name>-serve-svc``) to reach it; the Service, not the bind address, decides exposure.
    """
    from atoll.registry import parse_ref
    from atoll.serving import endpoints
    from atoll.specs import ServeSettings

    name = parse_ref(model)[0]
    app = app or name
    if not endpoints.APP_NAME.match(app):
        raise ConfigError(f"--app {app!r}: use letters, digits, '-' and '_' (it becomes the URL path /{app}).")
    serve = spec.atoll.serve
    settings = {k: getattr(serve, k) for k in ServeSettings.PER_APP if getattr(serve, k) is not None}
    model_app = endpoints.app_config(app, model, storage=_storage(spec), requested=requested or model,
                                     settings=settings, api_key_hash=api_key_hash,
                                     model_types=spec.atoll.model_types)
    # The model app first (the RayService is named after it), then the gallery at / as `atoll serve deploy` adds.
    config = endpoints.serve_config(spec, endpoints.with_gallery([model_app]))
    config["http_options"]["host"] = "0.0.0.0"
    return config


def rayservice(spec: ClusterSpec, *, model: str = DEFAULT_MODEL, app: str | None = None,
               api_key_hash: str | None = None, requested: str | None = None) -> dict[str, Any]:
    """A RayService serving ``model`` (``NAME:VERSION``, see :func:`pin`; ``requested``: what the user asked
    for, shown on the card) on a cluster like the RayCluster."""
    config = serve_config(spec, model=model, app=app, api_key_hash=api_key_hash, requested=requested)
    text = yaml.safe_dump(config, sort_keys=False)
    # Named after the app: KubeRay's Service for it is then <base>-<app>-serve-svc.
    name = k8s_name(f"{base_name(spec)}-{config['applications'][0]['name']}", "--app", MAX_CHILD_NAME)
    return {"apiVersion": API_VERSION, "kind": "RayService", "metadata": _metadata(name, "serve"),
            "spec": {"serveConfigV2": text, "rayClusterConfig": raycluster_spec(spec)}}


def render(spec: ClusterSpec, *, model: str = DEFAULT_MODEL, app: str | None = None,
           api_key_hash: str | None = None, requested: str | None = None,
           train_config: str = TRAIN_CONFIG, job_on_cluster: bool = False) -> dict[str, dict[str, Any]]:
    """All three manifests, by file name (see :data:`FILES`); ``model`` as :func:`pin` gives it."""
    return {FILES["RayCluster"]: raycluster(spec),
            FILES["RayJob"]: rayjob(spec, config=train_config,
                                    on_cluster=base_name(spec) if job_on_cluster else None),
            FILES["RayService"]: rayservice(spec, model=model, app=app, api_key_hash=api_key_hash,
                                            requested=requested)}


def as_list(manifests: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One ``kind: List`` document (``atoll k8s render --json | kubectl apply -f -`` works)."""
    return {"apiVersion": "v1", "kind": "List", "items": list(manifests.values())}


# ------------------------------------------------------------------------------------------------
# What the user must know, and the files


def secret_command(spec: ClusterSpec) -> str:
    """The ``kubectl create secret`` that holds the cluster token (this machine's, so the CLI keeps working)."""
    return (f"kubectl create secret generic {spec.atoll.k8s.auth_secret} "
            f"--from-file={TOKEN_KEY}=$HOME/.ray/auth_token")


#: Ray's own image for the pinned Ray (what ./Dockerfile builds FROM), when nothing names Atoll's.
STOCK_IMAGE = "rayproject/ray:2.60.0-py311"


def image_of(spec: ClusterSpec, node_type: str | None = None) -> str:
    """The image of the head's pods (``node_type`` None) or of a worker type's: metadata.atoll.k8s first
    (``gpu_image`` for GPU types, then ``image``), else what `ray up` runs from cluster.yaml's ``docker:``
    section (the type's own ``worker_image``, then ``worker_image`` / ``head_image``, then ``image``), else
    :data:`STOCK_IMAGE`."""
    k8s = spec.atoll.k8s
    docker = (spec.model_extra or {}).get("docker") or {}
    if node_type is None:
        return k8s.image or docker.get("head_image") or docker.get("image") or STOCK_IMAGE
    node = spec.available_node_types[node_type]
    if node.resources.get("GPU") and k8s.gpu_image:
        return k8s.gpu_image
    own = (node.model_extra or {}).get("docker") or {}
    return (k8s.image or own.get("worker_image") or docker.get("worker_image") or docker.get("image")
            or STOCK_IMAGE)


def warnings(spec: ClusterSpec) -> list[str]:
    """Things that render fine but will not work as the user may expect."""
    k8s = spec.atoll.k8s
    out = []
    storage = _storage(spec)
    if "://" not in storage:
        out.append(f"storage {storage!r} is a local path: pods share no disk, so checkpoints and the registry would "
                   f"stay in one pod. Set metadata.atoll.k8s.storage (or storage) to s3://… or gs://….")
    if image_of(spec).startswith("rayproject/"):
        out.append(f"image {image_of(spec)!r} is Ray's stock image without Atoll: the RayJob and RayService need "
                   f"an image with this project at {k8s.project_dir} and `pip install -e` of it (and torch): build "
                   f"./Dockerfile and name it in cluster.yaml's docker.image or metadata.atoll.k8s.image.")
    for type_name, node in spec.worker_types().items():
        if "memory" not in node.resources:
            out.append(f"available_node_types.{type_name}.resources.memory is not set: its pods get no memory "
                       f"request or limit, and Ray sees the whole Kubernetes node's memory.")
    total = sum(n.max_workers if n.max_workers is not None else spec.max_workers for n in spec.worker_types().values())
    if total > spec.max_workers:
        out.append(f"KubeRay has no cluster-wide max_workers: the worker groups may grow to {total} pods together "
                   f"(cluster.yaml's max_workers is {spec.max_workers}).")
    return out


HEADERS = {
    "RayCluster": """\
# The Atoll cluster on Kubernetes, rendered by `atoll k8s render` from {source}.
# Needs the KubeRay operator (1.6 or later: authOptions.secretName) and the token Secret:
#   {secret}
#   kubectl apply -f {file}
#   kubectl port-forward svc/{name}-head-svc 8265:8265   # then: ATOLL_ADDRESS=http://127.0.0.1:8265 atoll status
# Autoscaling: KubeRay's in-tree autoscaler, bounded by each worker group's minReplicas/maxReplicas.
# dashboard-host is 0.0.0.0, unlike Atoll's local 127.0.0.1: the operator and the autoscaler reach the
# dashboard through the head Service. The token (RAY_AUTH_MODE=token) guards it, as it guards the GCS.
""",
    "RayJob": """\
# The training job (python -m atoll.train) on its own cluster, rendered by `atoll k8s render` from {source}.
# The cluster is created for the job and deleted {ttl}after it ends; the model lands in the registry
# (storage), where the RayService finds it. Same Secret as the RayCluster:
#   {secret}
#   kubectl apply -f {file} && kubectl get rayjob {name} -w
""",
    "RayService": """\
# The model endpoint ({model}) as a RayService, rendered by `atoll k8s render` from {source}.
# serveConfigV2 is the Serve config `atoll serve deploy` writes, except http_options.host: 0.0.0.0, since
# inside the pod the proxy must listen on the pod's interfaces; the Service {name}-serve-svc (ClusterIP)
# is what exposes it. Same Secret as the RayCluster:
#   {secret}
#   kubectl apply -f {file}
#   kubectl port-forward svc/{name}-serve-svc {port}:{port}   # then: curl http://127.0.0.1:{port}/{app}/healthz
""",
}


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (serveConfigV2, runtimeEnvYAML) as readable `|` blocks."""


def _represent_str(dumper: yaml.SafeDumper, data: str) -> yaml.Node:
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style="|" if "\n" in data else None)


_Dumper.add_representer(str, _represent_str)


def to_yaml(data: Any) -> str:
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, width=110)


def document(spec: ClusterSpec, file_name: str, manifest: dict[str, Any]) -> str:
    """One manifest as YAML text, behind a comment that says how to use it (``file_name``: as shown there)."""
    kind = manifest["kind"]
    fields = {"source": spec.source or "cluster.yaml", "secret": secret_command(spec), "file": file_name,
              "name": manifest["metadata"]["name"], "ttl": "", "model": "", "app": "", "port": spec.atoll.serve.port}
    if kind == "RayJob":
        ttl = manifest["spec"].get("ttlSecondsAfterFinished")
        fields["ttl"] = f"{ttl} s " if ttl else ""
    if kind == "RayService":
        app = yaml.safe_load(manifest["spec"]["serveConfigV2"])["applications"][0]
        fields.update(model=app["args"]["requested"], app=app["name"])
    return HEADERS[kind].format(**fields) + to_yaml(manifest)


def rendered_model_args(out_dir: str | Path) -> dict[str, Any] | None:
    """The model app's args in the RayService an earlier render wrote to ``out_dir`` (its API key record is
    kept by the next render, see ``endpoints.key_record``), or None when there is none to read."""
    path = Path(out_dir).expanduser() / FILES["RayService"]
    try:
        manifest = yaml.safe_load(path.read_text())
        return yaml.safe_load(manifest["spec"]["serveConfigV2"])["applications"][0]["args"]
    except (OSError, yaml.YAMLError, KeyError, IndexError, TypeError):
        return None


def write(spec: ClusterSpec, manifests: dict[str, dict[str, Any]], out_dir: str | Path) -> list[Path]:
    """Write each manifest to ``out_dir/<file>`` (creating the folder); return the paths written."""
    out = Path(out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--output {out}: exists and is not a folder; pass a folder.")
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for file_name, manifest in manifests.items():
        path = out / file_name
        path.write_text(document(spec, str(Path(out_dir) / file_name), manifest))
        paths.append(path)
    return paths

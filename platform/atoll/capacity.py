"""What the cluster can hold: node shapes, the largest node, and work that no node will ever fit.

One home for the question, asked at three moments:

* before anything is submitted (a spec's workers must fit the largest node of cluster.yaml or this
  machine): :func:`largest_node`, :func:`fit_problem`;
* inside a job, on the connected cluster (how many CPUs/GPUs now, and at most with the autoscaler's node
  types): :func:`live_capacity`, :func:`largest_live_node`;
* while a job waits (a task, actor or placement group that fits no node, and no node type the autoscaler
  may add, would wait forever): :func:`infeasible`, :func:`unschedulable`.

Ray queues such work and says nothing; Atoll names the request and the nodes it compared it with. Nothing
here loads a file: callers pass cluster.yaml's parsed spec or its worker types.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable
from typing import Any

from atoll.specs import ClusterSpec, NodeType

_LIMIT = 1000


def _fmt(shape: dict[str, float]) -> str:
    return "{" + ", ".join(f"{k}: {v:g}" for k, v in sorted(shape.items())) + "}"


def request_shape(resources: dict[str, Any] | None) -> dict[str, float]:
    """A resource request without Ray's bookkeeping keys (node affinity, placement-group shares)."""
    return {k: float(v) for k, v in (resources or {}).items()
            if v and not k.startswith("node:") and "_group_" not in k and k != "bundle"}


# ------------------------------------------------------------------------------------------------
# Before submitting: cluster.yaml's node types (and this machine, which runs the local cluster)


def largest_node(spec: ClusterSpec) -> tuple[float, float] | None:
    """Most CPUs and most GPUs any one node can have: cluster.yaml's node types, or this machine (which
    `atoll up` runs the local cluster on). None when a type leaves its resources to Ray's detection."""
    types = spec.available_node_types.values()
    if any("CPU" not in t.resources for t in types):
        return None
    local = spec.atoll.local
    here_cpus = local.num_cpus or os.cpu_count() or 1
    here_gpus = local.num_gpus if local.num_gpus is not None else len(glob.glob("/dev/nvidia[0-9]*"))
    return (max([here_cpus, *(t.resources["CPU"] for t in types)]),
            max([here_gpus, *(t.resources.get("GPU", 0) for t in types)]))


def fit_problem(cpus: float, gpus: float, needs_gpu: bool, spec: ClusterSpec) -> str | None:
    """Why a worker of ``cpus``/``gpus`` fits no node cluster.yaml can have (it would wait forever, never
    fail), naming the field and the fix; None when it fits."""
    largest = largest_node(spec)
    if largest is None:
        return None
    node_cpus, node_gpus = largest
    where = f"the largest node of {spec.source} (or this machine)"
    if needs_gpu and node_gpus <= 0:
        return (f"use_gpu: true, but no node type of {spec.source} has a GPU (nor this machine); "
                f"set use_gpu: auto (or false), or add a GPU node type to cluster.yaml")
    if cpus > node_cpus:
        return (f"cpus_per_worker: {cpus:g} CPUs per worker, but {where} has {node_cpus:g}; "
                f"lower cpus_per_worker (e.g. 1) or add a bigger node type to cluster.yaml")
    if node_gpus > 0 and gpus > node_gpus:
        return (f"gpus_per_worker: {gpus:g} GPUs per worker, but {where} has {node_gpus:g}; "
                f"lower gpus_per_worker (e.g. 1) or add a node type with more GPUs")
    return None


# ------------------------------------------------------------------------------------------------
# Inside a job, on the connected cluster


def live_capacity(worker_types: Iterable[NodeType] = ()) -> tuple[float, float, float, float]:
    """CPUs and GPUs now, and at most: plus ``max_workers`` of each node type the autoscaler may add."""
    import ray

    res = ray.cluster_resources()
    cpus, gpus = res.get("CPU", 0.0), res.get("GPU", 0.0)
    max_cpus, max_gpus = cpus, gpus
    for t in worker_types:
        max_cpus += t.resources.get("CPU", 0) * (t.max_workers or 0)
        max_gpus += t.resources.get("GPU", 0) * (t.max_workers or 0)
    return cpus, gpus, max_cpus, max_gpus


def largest_live_node(worker_types: Iterable[NodeType] = ()) -> tuple[float | None, float | None]:
    """CPUs and GPUs of the largest node that is (or, of ``worker_types``, can be) in the cluster."""
    import ray

    sizes = [(n["Resources"].get("CPU", 0.0), n["Resources"].get("GPU", 0.0)) for n in ray.nodes() if n["Alive"]]
    sizes += [(t.resources.get("CPU", 0.0), t.resources.get("GPU", 0.0)) for t in worker_types]
    if not sizes:
        return None, None
    return max(c for c, _ in sizes), max(g for _, g in sizes)


# ------------------------------------------------------------------------------------------------
# While a job waits: work no node fits


def infeasible(demand: list[dict[str, Any]], node_shapes: list[dict[str, float]]) -> list[dict[str, Any]]:
    """Pending resource requests that no node (alive, or a type the autoscaler may add) could ever hold:
    work that would wait forever, e.g. ``{"GPU": 1}`` on a cluster without a GPU type."""
    def fits(shape: dict[str, float]) -> bool:
        return any(all(node.get(k, 0) >= v for k, v in shape.items()) for node in node_shapes)

    out = []
    for d in demand:
        shapes = d["bundles"] if d.get("shape") == "placement group" else [d["shape"]]
        bad = [s for s in shapes if isinstance(s, dict) and not fits(s)]
        if bad:
            out.append({**d, "fits_no_node": bad})
    return out


def state_api(dashboard_url: str, headers: dict[str, str]):
    """Ray's state API on the cluster's dashboard, with the token (its module functions send none)."""
    from ray.util.state.api import StateApiClient

    return StateApiClient(address=dashboard_url, headers={**headers, "Content-Type": "application/json"})


def list_state(client, resource: str, filters: list[tuple[str, str, str]]) -> list[Any]:
    from ray.util.state.common import ListApiOptions, StateResource

    return client.list(StateResource(resource), options=ListApiOptions(limit=_LIMIT, filters=filters, detail=True),
                       raise_on_missing_output=False)


def node_shapes(client, worker_types: Iterable[NodeType] = ()) -> list[dict[str, float]]:
    """The resources of every alive node, plus one shape per worker type the autoscaler may add."""
    shapes = [request_shape(n.resources_total) for n in list_state(client, "nodes", [("state", "=", "ALIVE")])]
    return shapes + [request_shape(t.resources) for t in worker_types if (t.max_workers or 0) > 0]


def pending_work(client, ray_job_id: str) -> list[dict[str, Any]]:
    """The job's work that waits for resources: placement groups, actors and tasks, with their shapes."""
    work = [{"what": f"placement group {pg.name or pg.placement_group_id[:8]}", "shape": "placement group",
             "bundles": [request_shape(b.get("unit_resources")) for b in pg.bundles or []]}
            for pg in list_state(client, "placement_groups", [("state", "=", "PENDING")])
            if pg.creator_job_id == ray_job_id]
    # Actors and tasks inside a placement group wait for the group, which is checked above.
    work += [{"what": f"actor {a.class_name}", "shape": request_shape(a.required_resources)}
             for a in list_state(client, "actors", [("state", "=", "PENDING_CREATION"), ("job_id", "=", ray_job_id)])
             if not a.placement_group_id]
    work += [{"what": f"task {t.func_or_class_name or t.name}", "shape": request_shape(t.required_resources)}
             for t in list_state(client, "tasks", [("state", "=", "PENDING_NODE_ASSIGNMENT"), ("job_id", "=", ray_job_id)])
             if not t.placement_group_id]
    return work


def unschedulable(dashboard_url: str, headers: dict[str, str], ray_job_id: str | None, *,
                  worker_types: list[NodeType] | None = None) -> str | None:
    """Why the job can never run to the end (a request no node fits), or None when all its work could fit.

    ``worker_types``: the node types an autoscaler may add (None: the cluster adds no nodes).
    """
    if not ray_job_id:
        return None  # the driver has not connected yet: nothing of it is pending
    client = state_api(dashboard_url, headers)
    work = pending_work(client, ray_job_id)
    if not work:
        return None
    shapes = node_shapes(client, worker_types or [])
    bad = infeasible(work, shapes)
    if not bad:
        return None
    first = bad[0]
    request = first["fits_no_node"][0]
    # Each node's amount of what was asked for (its memory and object store would only be noise).
    nodes = "; ".join(dict.fromkeys(_fmt({k: s.get(k, 0) for k in request}) for s in shapes)) or "none"
    where = "any node of this cluster or node type its autoscaler may add" if worker_types is not None \
        else "any node of this cluster (a local cluster adds no nodes)"
    return (f"its {first['what']} asks for {_fmt(request)}, more than {where} has "
            f"(nodes: {nodes}). Ask for less, or add a node type that fits to cluster.yaml.")

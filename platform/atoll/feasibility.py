"""Work that can never be scheduled: find it and say so, instead of letting a job wait forever.

Ray queues a task, actor or placement group whose resources no node has, and its autoscaler adds a node
of a type that could hold it. When no node type can, the work waits forever and nothing says why. Atoll
compares a job's pending work with the shapes of every node the cluster has, or may add (the worker
types of cluster.yaml, when an autoscaler runs), and names the request that fits none of them.
"""

from __future__ import annotations

from typing import Any

from atoll import auth
from atoll.cluster import ClusterInfo, infeasible, load_spec
from atoll.errors import ConfigError

# Modes whose autoscaler may add cluster.yaml's worker types (a plain local head adds nothing).
AUTOSCALING_MODES = ("simulated", "remote", "cloud")
_LIMIT = 1000


def _fmt(shape: dict[str, float]) -> str:
    return "{" + ", ".join(f"{k}: {v:g}" for k, v in sorted(shape.items())) + "}"


def _request(resources: dict[str, Any] | None) -> dict[str, float]:
    """A resource request without Ray's bookkeeping keys (node affinity, placement-group shares)."""
    return {k: float(v) for k, v in (resources or {}).items()
            if v and not k.startswith("node:") and "_group_" not in k and k != "bundle"}


def _state_api(info: ClusterInfo):
    """Ray's state API on the cluster's dashboard, with the token (its module functions send none)."""
    auth.enable_for_this_process()
    from ray.util.state.api import StateApiClient

    return StateApiClient(address=info.dashboard_url, headers={**auth.headers(), "Content-Type": "application/json"})


def _list(client, resource: str, filters: list[tuple[str, str, str]]) -> list[Any]:
    from ray.util.state.common import ListApiOptions, StateResource

    return client.list(StateResource(resource), options=ListApiOptions(limit=_LIMIT, filters=filters, detail=True),
                       raise_on_missing_output=False)


def node_shapes(info: ClusterInfo, client=None) -> list[dict[str, float]]:
    """The resources of every alive node, plus one shape per worker type the autoscaler may add."""
    client = client or _state_api(info)
    shapes = [_request(n.resources_total) for n in _list(client, "nodes", [("state", "=", "ALIVE")])]
    if info.mode in AUTOSCALING_MODES:
        try:
            types = load_spec(info.config_path).worker_types().values()
        except (ConfigError, OSError):
            types = []
        shapes += [_request(t.resources) for t in types if (t.max_workers or 0) > 0]
    return shapes


def pending_work(info: ClusterInfo, ray_job_id: str, client=None) -> list[dict[str, Any]]:
    """The job's work that waits for resources: placement groups, actors and tasks, with their shapes."""
    client = client or _state_api(info)
    work = [{"what": f"placement group {pg.name or pg.placement_group_id[:8]}", "shape": "placement group",
             "bundles": [_request(b.get("unit_resources")) for b in pg.bundles or []]}
            for pg in _list(client, "placement_groups", [("state", "=", "PENDING")])
            if pg.creator_job_id == ray_job_id]
    # Actors and tasks inside a placement group wait for the group, which is checked above.
    work += [{"what": f"actor {a.class_name}", "shape": _request(a.required_resources)}
             for a in _list(client, "actors", [("state", "=", "PENDING_CREATION"), ("job_id", "=", ray_job_id)])
             if not a.placement_group_id]
    work += [{"what": f"task {t.func_or_class_name or t.name}", "shape": _request(t.required_resources)}
             for t in _list(client, "tasks", [("state", "=", "PENDING_NODE_ASSIGNMENT"), ("job_id", "=", ray_job_id)])
             if not t.placement_group_id]
    return work


def unschedulable(info: ClusterInfo, ray_job_id: str | None) -> str | None:
    """Why the job can never run to the end (a request no node fits), or None when all its work could fit."""
    if not ray_job_id:
        return None  # the driver has not connected yet: nothing of it is pending
    client = _state_api(info)
    work = pending_work(info, ray_job_id, client)
    if not work:
        return None
    shapes = node_shapes(info, client)
    bad = infeasible(work, shapes)
    if not bad:
        return None
    first = bad[0]
    request = first["fits_no_node"][0]
    # Each node's amount of what was asked for (its memory and object store would only be noise).
    nodes = "; ".join(dict.fromkeys(_fmt({k: s.get(k, 0) for k in request}) for s in shapes)) or "none"
    where = "any node of this cluster or node type its autoscaler may add" if info.mode in AUTOSCALING_MODES \
        else "any node of this cluster (a local cluster adds no nodes)"
    return (f"its {first['what']} asks for {_fmt(request)}, more than {where} has "
            f"(nodes: {nodes}). Ask for less, or add a node type that fits to cluster.yaml.")

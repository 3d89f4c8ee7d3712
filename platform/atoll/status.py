"""What a running cluster is doing: nodes by type, resources, pending and infeasible demand, the
autoscaler's recent actions, running jobs and Serve apps (`atoll status`). Above atoll.cluster and
atoll.jobs: it reads both."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx

from atoll import auth, capacity, cluster, config, filesystems, jobs
from atoll.cluster import ClusterInfo
from atoll.errors import ClusterError, ClusterNotUpError, ConfigError


def status(info: ClusterInfo | None = None) -> dict[str, Any]:
    """Nodes, total vs available resources, pending demand, running jobs and Serve apps, as a dict."""
    info = info or cluster.current()
    result: dict[str, Any] = {"mode": info.mode, "dashboard_url": info.dashboard_url,
                              "session": info.session_name, "nodes": [], "resources": {},
                              "pending_demand": [], "jobs": [], "serve_apps": {}}
    if info.gcs_address:
        result.update(_autoscaler_status(info.gcs_address))
    else:  # a remote cluster behind ATOLL_ADDRESS: only its dashboard is reachable (the forwarded 8265)
        result["nodes"] = _nodes_from_state_api(info)
    result["jobs"] = [j for j in jobs.list_jobs(info) if j["status"] in ("PENDING", "RUNNING")]
    result["serve_apps"] = serve_applications(info)
    result["autoscaler_events"] = autoscaler_events(info)
    node_shapes = [{k: v["total"] for k, v in n["resources"].items()} for n in result["nodes"] if n["alive"]]
    if info.mode == "simulated":
        try:
            node_shapes += [dict(t.resources) for t in config.load_spec(info.config_path).worker_types().values()]
        except (ConfigError, OSError):
            pass
    result["infeasible_demand"] = capacity.infeasible(result["pending_demand"], node_shapes)
    try:
        storage = config.load_spec(info.config_path).atoll.storage
    except (ConfigError, OSError):
        storage = None
    result["warnings"] = [w for w in [storage_warning(result["nodes"], storage)] if w]
    result["ray_tools"] = cluster.ray_tools_hint(info)  # for --json readers
    return result


def _nodes_from_state_api(info: ClusterInfo) -> list[dict[str, Any]]:
    """Every node Ray's state API lists, with its type (the launcher's or KubeRay's node-group label) and
    total resources (what is in use is the autoscaler's to say, which answers only on the GCS port)."""
    client = capacity.state_api(info.dashboard_url, auth.headers())
    nodes = []
    for n in capacity.list_state(client, "nodes", []):
        labels = n.labels or {}
        alive = n.state == "ALIVE"
        node_type = labels.get("ray.io/node-group") or labels.get("ray.io/node-type") or \
            ("head" if n.is_head_node else "worker")
        nodes.append({"node_id": n.node_id, "type": node_type, "ip": n.node_ip, "status": n.state, "alive": alive,
                      "head": bool(n.is_head_node),
                      "resources": {k: {"total": v, "used": None} for k, v in (n.resources_total or {}).items()
                                    if not k.startswith("node:")} if alive else {}})
    return nodes


def placements(info: ClusterInfo, class_name: str) -> list[dict[str, Any]]:
    """Where Ray placed the actors of a class (alive or finished), from Ray's state API: ``[{actor_id, node_id,
    state, pid}]``. E.g. ``RayTrainWorker`` (training workers), ``ServeReplica:<app>:<deployment>`` (replicas)."""
    client = capacity.state_api(info.dashboard_url, auth.headers())
    return [{"actor_id": a.actor_id, "node_id": a.node_id, "state": a.state, "pid": a.pid}
            for a in capacity.list_state(client, "actors", [("class_name", "=", class_name)])]


def storage_warning(nodes: list[dict[str, Any]], storage: str | None) -> str | None:
    """A warning when several nodes would keep their state on a local disk each (they share none)."""
    alive = [n for n in nodes if n.get("alive")]
    if storage is None or len(alive) < 2 or filesystems.is_remote(storage):
        return None
    return (f"the storage root is a local folder ({storage}) on a cluster of {len(alive)} nodes; nodes share no "
            f"disk, so a checkpoint or version written on one is missing on the others. Put it in object "
            f"storage: metadata.atoll.storage: s3://bucket/prefix (or ATOLL_STORAGE; `atoll storage up` for a "
            f"local S3 server).")


def autoscaler_events(info: ClusterInfo, last: int = 6) -> list[str]:
    """The autoscaler's recent actions ("Adding 2 node(s) of type cpu.", "Removing 2 nodes of type cpu
    (idle).") from the session's event log, when this machine runs the head (local / simulated)."""
    if not info.session_dir:
        return []
    path = Path(info.session_dir) / "logs" / "events" / "event_AUTOSCALER.log"
    try:
        lines = path.read_text().splitlines()[-last * 3:]
    except OSError:
        return []
    events = []
    for line in lines:
        try:
            ev = json.loads(line)
            stamp = time.strftime("%H:%M:%S", time.localtime(int(ev["timestamp"])))
        except (ValueError, KeyError):
            continue
        events.append(f"{stamp} {ev.get('message', '').strip()}")
    return events[-last:]


def _autoscaler_status(gcs_address: str) -> dict[str, Any]:
    auth.enable_for_this_process()
    from ray.autoscaler.v2.sdk import get_cluster_status

    try:
        st = get_cluster_status(gcs_address)
    except Exception as exc:  # gRPC errors carry no stable type across Ray releases
        raise ClusterError(f"cannot read the cluster status from the GCS at {gcs_address}: {exc}") from None
    nodes = []
    for node in list(st.active_nodes) + list(st.idle_nodes):
        usage = {u.resource_name: {"total": u.total, "used": u.used}
                 for u in node.resource_usage.usage if not u.resource_name.startswith("node:")}
        is_head = any(u.resource_name == "node:__internal_head__" for u in node.resource_usage.usage)
        # A plain `ray start` node has no launcher type; Ray names it node_<id>.
        node_type = node.ray_node_type_name
        if not node_type or node_type.startswith("node_"):
            node_type = "head" if is_head else "worker"
        nodes.append({"node_id": node.node_id, "type": node_type,
                      "ip": node.ip_address, "status": node.node_status, "alive": True,
                      "head": is_head,
                      "resources": usage})
    for node in st.failed_nodes:
        nodes.append({"node_id": node.node_id, "type": node.ray_node_type_name, "ip": node.ip_address,
                      "status": "DEAD", "alive": False, "head": False, "resources": {}})
    resources = {u.resource_name: {"total": u.total, "available": u.total - u.used}
                 for u in st.cluster_resource_usage if not u.resource_name.startswith("node:")}
    demand = [{"shape": dict(d.bundles_by_count[0].bundle) if d.bundles_by_count else {},
               "count": sum(b.count for b in d.bundles_by_count)}
              for d in st.resource_demands.ray_task_actor_demand]
    demand += [{"shape": "placement group", "bundles": [dict(b.bundle) for b in d.bundles_by_count]}
               for d in st.resource_demands.placement_group_demand]
    pending = [{"type": p.ray_node_type_name, "count": p.count} for p in st.pending_launches]
    pending += [{"type": p.ray_node_type_name, "status": p.details} for p in st.pending_nodes]
    return {"nodes": nodes, "resources": resources, "pending_demand": demand, "pending_nodes": pending}


def serve_applications(info: ClusterInfo) -> dict[str, Any]:
    """Serve's applications on the cluster (status, route prefix), via the dashboard's REST API."""
    try:
        resp = httpx.get(f"{info.dashboard_url}/api/serve/applications/", headers=auth.headers(), timeout=10)
    except httpx.HTTPError as exc:
        raise ClusterNotUpError(f"cannot reach the dashboard at {info.dashboard_url}: {exc}") from None
    if resp.status_code != 200:
        return {}
    apps = resp.json().get("applications") or {}
    return {name: {"status": app.get("status"), "route_prefix": app.get("route_prefix"),
                   "message": app.get("message", "")} for name, app in apps.items()}

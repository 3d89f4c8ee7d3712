"""The logs of a Serve application's replicas, through the dashboard's log API (Ray's state API, the one
`ray logs` uses), so the same call works for a local cluster and a remote one behind ATOLL_ADDRESS.

Serve writes each replica's log (its own lines, its access log, and what the model code prints) to
``logs/serve/replica_<app>_<deployment>_<replica id>.log`` on the replica's node.
"""

from __future__ import annotations

from typing import Any

import httpx

from atoll import auth, cluster
from atoll.cluster import ClusterInfo
from atoll.errors import ClusterNotUpError, ServingError


def _get(info: ClusterInfo, path: str, params: dict[str, Any] | None = None) -> httpx.Response:
    try:
        resp = httpx.get(f"{info.dashboard_url}{path}", params=params, headers=auth.headers(), timeout=30)
    except httpx.HTTPError as exc:
        raise ClusterNotUpError(f"cannot reach the dashboard at {info.dashboard_url} ({exc}); is the cluster "
                                f"up? (`atoll status`)") from None
    if resp.status_code != 200:
        raise ServingError(f"the dashboard's {path} answered {resp.status_code}: {resp.text.strip()[:300]}")
    return resp


def _state(info: ClusterInfo, path: str, params: dict[str, Any]) -> Any:
    """The ``data.result`` of a state-API answer."""
    try:
        return _get(info, path, params).json()["data"]["result"]
    except (ValueError, KeyError, TypeError):
        raise ServingError(f"the dashboard at {info.dashboard_url} gave {path} an answer this Ray state API "
                           f"does not give; is ATOLL_ADDRESS a Ray 2.60 dashboard?") from None


def replica_logs(app: str, *, lines: int = 100, info: ClusterInfo | None = None) -> list[dict[str, Any]]:
    """The last ``lines`` lines of every replica log of ``app``, on every alive node.

    Returns:
        ``[{"node_id", "file", "text"}]``, one per replica log file (those of replicas that have gone
        included, while their node keeps them).

    Raises:
        ServingError: no such app (listing the apps there are).
    """
    info = info or cluster.current()
    apps = (_get(info, "/api/serve/applications/").json().get("applications") or {})
    if app not in apps:
        raise ServingError(f"no Serve app {app!r}; apps: {', '.join(sorted(apps)) or 'none'} "
                           f"(`atoll serve status`).")
    deployments = sorted(apps[app].get("deployments") or {})
    nodes = _state(info, "/api/v0/nodes", {"filter_keys": "state", "filter_predicates": "=",
                                          "filter_values": "ALIVE"})
    found = []
    for node in (nodes.get("result") if isinstance(nodes, dict) else nodes) or []:
        node_id = node["node_id"]
        for deployment in deployments:
            listed = _state(info, "/api/v0/logs", {"node_id": node_id,
                                                   "glob": f"serve/replica_{app}_{deployment}_*.log"})
            for name in sorted({f for files in listed.values() for f in files}):
                text = _get(info, "/api/v0/logs/file", {"node_id": node_id, "filename": name,
                                                       "lines": lines}).text
                found.append({"node_id": node_id, "file": name, "text": text})
    return found

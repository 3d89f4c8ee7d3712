"""Which HTTP ingress serves a cluster's apps: Ray's HAProxy, or Serve's Python proxy (issue 36).

``metadata.atoll.serve.ingress: auto | haproxy | proxy``. ``auto`` is HAProxy on clusters that run in a cluster's
network (`ray up` with cluster.yaml's start commands, the KubeRay manifests) and Serve's proxy on the embedded
local cluster. Ray 2.60's HAProxy mode (``RAY_SERVE_ENABLE_HA_PROXY=1`` in every node's ``ray start``
environment) sends requests straight to each replica's own HTTP server; it binds HAProxy's stats (8404) and
metrics (9101) ports on every interface with no setting for them, which is right inside a cluster's network
and wrong on a laptop: there only an explicit ``ingress: haproxy`` turns it on (for a network namespace or a
firewalled machine), and `atoll up` says which ports it opens. Notes on what Ray does: docs/design/haproxy-ingress.md.

The API key is checked before any queue on both paths: Atoll's middleware (atoll.serving.proxy_auth, named by
``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH``) wraps Serve's proxy, and on the HAProxy path Ray wraps each
ingress replica's direct-ingress server in the same middlewares, outside its queue and ongoing-request count.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

HAPROXY, PROXY, AUTO = "haproxy", "proxy", "auto"
CHOICES = (AUTO, HAPROXY, PROXY)
ENV_VAR = "RAY_SERVE_ENABLE_HA_PROXY"
#: Bound on every interface by Ray 2.60's HAProxy, whatever the Serve host: its stats and Prometheus ports.
OPEN_PORTS = (8404, 9101)


def resolve(setting: str, *, local: bool) -> str:
    """``haproxy`` or ``proxy`` for cluster.yaml's ``ingress`` setting on an embedded local cluster (``local``) or
    one in a cluster's network."""
    if setting == AUTO:
        return PROXY if local else HAPROXY
    return setting


def check_start_commands(raw: dict[str, Any], setting: str) -> str | None:
    """What is wrong (one line) when cluster.yaml's own ``ray start`` commands, which `ray up` runs, contradict
    its ``serve.ingress`` setting; None when they agree (or there are none)."""
    starts = [str(c) for key in ("head_start_ray_commands", "worker_start_ray_commands")
              for c in raw.get(key) or [] if "ray start" in str(c)]
    if not starts:
        return None
    flag = f"{ENV_VAR}=1"
    if resolve(setting, local=False) == HAPROXY:
        if not all(flag in c for c in starts):
            return (f"metadata.atoll.serve.ingress is {setting} (HAProxy on `ray up` clusters) but a `ray start` "
                    f"command lacks {flag}: add it to head_start_ray_commands and worker_start_ray_commands, or "
                    f"set ingress: proxy.")
    elif any(flag in c for c in starts):
        return f"metadata.atoll.serve.ingress is proxy but a `ray start` command sets {flag}: remove it, or set " \
               f"ingress: auto."
    return None


def ray_start_env(setting: str, *, local: bool) -> dict[str, str]:
    """What ``ray start`` needs in its environment (every node) for the ingress ``setting`` resolves to."""
    return {ENV_VAR: "1"} if resolve(setting, local=local) == HAPROXY else {}


#: The actor class Ray runs on each node in HAProxy mode (it starts and reloads haproxy).
HAPROXY_ACTOR = "HAProxyManager"


def serving(actor_classes: Iterable[str]) -> str:
    """The ingress that serves a running cluster, from the classes of its live actors (Ray's state API)."""
    return HAPROXY if HAPROXY_ACTOR in set(actor_classes) else PROXY


def here() -> str:
    """The ingress that brings this replica its requests (what its card says): HAProxy where this node's ``ray
    start`` had RAY_SERVE_ENABLE_HA_PROXY=1 (replicas inherit it), else Serve's proxy."""
    return HAPROXY if os.environ.get(ENV_VAR) == "1" else PROXY

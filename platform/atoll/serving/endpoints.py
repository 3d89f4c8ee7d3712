"""Model endpoints, from the client's side: deploy, list, delete and query Serve applications.

Deploys go through the dashboard's Serve REST API, the very one `serve deploy` and `serve status` use, so
the cluster's Serve config is one declarative document: Atoll reads it, adds or replaces one application
(``atoll.serving.replica:app`` with the model's arguments) and writes it back. Redeploying an application with a
new version makes Serve roll its replicas over; requests keep being answered meanwhile. The showcase gallery
(``atoll.serving.playground``, an app at route ``/``) is added with the first model app and removed with the last.

That API only takes the whole document, so two clients that read, change and write it at once would drop
each other's apps. Writes from this machine are serialised by a lock file; and every writer checks, after
the others have had time to write, that its own change is still there, and applies it again on top of what
it finds if not (a writer elsewhere that overwrote it), so concurrent deploys and deletes of different
apps all land.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx

from atoll import apikeys, auth, cluster, ingress, jobs, local_state, registry
from atoll.cluster import ClusterInfo
from atoll.config import load_model
from atoll.errors import AtollError, ClusterNotUpError, ConfigError, ServingError
from atoll.filesystems import forwarded_env, is_remote
from atoll.serving import canary, playground
from atoll.serving.canary import canary_app
from atoll.serving.names import DEPLOYMENT_NAME, MODEL_IMPORT_PATH, is_model_app
from atoll.specs import ClusterSpec, ServeSettings

IMPORT_PATH = MODEL_IMPORT_PATH
APP_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")


def _serve_api(info: ClusterInfo) -> str:
    return f"{info.dashboard_url}/api/serve/applications/"


def _request(method: str, info: ClusterInfo, **kwargs: Any) -> httpx.Response:
    try:
        return httpx.request(method, _serve_api(info), headers=auth.headers(), timeout=30, **kwargs)
    except httpx.HTTPError as exc:
        raise ClusterNotUpError(f"cannot reach the dashboard at {info.dashboard_url} ({exc}); is the cluster "
                                f"up? (`atoll status`)") from None


def _details(info: ClusterInfo) -> dict[str, Any]:
    resp = _request("GET", info)
    if resp.status_code != 200:
        raise ServingError(f"the Serve API at {_serve_api(info)} answered {resp.status_code}: {resp.text[:300]}")
    return resp.json()


def _put(info: ClusterInfo, config: dict[str, Any]) -> None:
    resp = _request("PUT", info, json=config)
    if resp.status_code != 200:
        text = resp.text.strip()
        if "imperative" in text.lower() or "serve.run" in text:
            raise ServingError("this cluster's Serve apps were deployed from Python (serve.run), which cannot "
                               "be mixed with declarative deploys; `serve shutdown` them or deploy with Ray.")
        raise ServingError(f"Serve refused the config ({resp.status_code}): {_last_line(text)[:500]}")


def _last_line(text: str) -> str:
    """What went wrong, from an answer that may be a whole Python traceback: its last line (the exception)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else text


def _apps(details: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return details.get("applications") or {}


def serve_config(spec: ClusterSpec, applications: list[dict[str, Any]], info: ClusterInfo | None = None
                 ) -> dict[str, Any]:
    """A whole Serve config (the format of ``serve deploy``): the proxy's address and the applications.

    On a cluster in a cluster's network (``info.mode`` remote) whose ingress is HAProxy, the host is 0.0.0.0: each
    node's HAProxy sends requests to replicas on the other nodes, whose own HTTP servers bind that host."""
    host = spec.atoll.serve.host
    if info is not None and info.mode == "remote" and \
            ingress.resolve(spec.atoll.serve.ingress, local=False) == ingress.HAPROXY:
        host = "0.0.0.0"
    return {"proxy_location": "EveryNode", "http_options": {"host": host, "port": spec.atoll.serve.port},
            "applications": applications}


def app_config(app: str, model: str, *, storage: str, requested: str | None = None,
               settings: dict[str, Any] | None = None, api_key_hash: str | None = None,
               model_types: list[str] | None = None) -> dict[str, Any]:
    """One model application: ``atoll.serving.replica:app`` at route ``/<app>`` with its arguments (the user model
    types cluster.yaml allows go along, so a replica that finds no cluster.yaml, e.g. on KubeRay, has them;
    ``api_key_hash`` is the key record of :func:`key_record`, a salted HMAC, never the key)."""
    args: dict[str, Any] = {"model": model, "storage": storage, "requested": requested or model,
                            "settings": dict(settings or {}), "model_types": list(model_types or [])}
    if api_key_hash:
        args["api_key_hash"] = api_key_hash
    return {"name": app, "route_prefix": f"/{app}", "import_path": IMPORT_PATH, "args": args}


#: What a (re)deploy did with an app's API key, as :func:`key_record` decides it.
KEY_NEW, KEY_KEPT, KEY_REMOVED, KEY_NONE = "new", "kept", "removed", "none"


def key_record(previous: dict[str, Any] | None, key: str | None, *, public: bool) -> tuple[str | None, str]:
    """The key record (salted HMAC) an app's new config gets, and which of ``KEY_*`` that is.

    A key in the environment is hashed anew; without one, the record of the app being replaced
    (``previous``: its args, from the cluster's Serve config or an earlier manifest) is kept, so a redeploy
    from a shell without the key never makes a keyed app public by accident. Only ``public`` drops it.

    Raises:
        ConfigError: ``public`` together with a key: it is unclear which the user meant.
    """
    if key and public:
        raise ConfigError("--public with an API key set: unset the key's variable to make the app public, or "
                          "drop --public to protect it with the key.")
    if key:
        return apikeys.hash_key(key), KEY_NEW
    kept = (previous or {}).get("api_key_hash")
    if kept and not public:
        return kept, KEY_KEPT
    return None, KEY_REMOVED if kept else KEY_NONE




def model_code(model_type: str, spec: ClusterSpec, ref: str) -> list[str]:
    """The project's own code a user model type needs in the replicas: the top-level package (folder) or
    module (``.py``) of ``model_type`` in the project folder (cluster.yaml's, which jobs ship too), or
    nothing for a built-in or for code the cluster has installed (its image). The allow-list is checked
    here first, so a refused type fails at deploy, before any upload.

    Raises:
        ConfigError: cluster.yaml's ``metadata.atoll.model_types`` does not allow ``model_type``.
    """
    from atoll import config
    from atoll.model_types import AllowList
    from atoll.tasks.base import BUILTIN_MODELS

    AllowList(tuple(spec.atoll.model_types), spec.source).check(model_type, ref)
    if model_type in BUILTIN_MODELS:
        return []
    top = model_type.partition(":")[0].split(".")[0]
    root = config.project_root(spec)
    return [str(path) for path in (root / top, root / f"{top}.py") if path.exists()][:1]


def with_gallery(apps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The model apps plus the gallery (whose list of apps opens with any model app's key), or nothing
    when no model app is left."""
    models = [a for a in apps if a.get("name") != playground.GALLERY_APP]
    if not [a for a in models if is_model_app(a["name"])]:
        return []
    hashes = [a["args"]["api_key_hash"] for a in models if (a.get("args") or {}).get("api_key_hash")]
    return [*models, playground.gallery_config(hashes)]


def parse_replicas(text: str) -> tuple[int, int]:
    """``2`` or ``1:4`` → (min, max)."""
    lo, sep, hi = text.partition(":")
    try:
        low, high = int(lo), int(hi) if sep else int(lo)
    except ValueError:
        raise ConfigError(f"--replicas {text!r}: expected MIN:MAX or N, e.g. --replicas 1:4.") from None
    if low < 0 or high < 1 or low > high:
        raise ConfigError(f"--replicas {text!r}: need 0 <= MIN <= MAX and MAX >= 1.")
    return low, high


def endpoint_url(spec: ClusterSpec, app: str) -> str:
    serve = spec.atoll.serve
    return f"http://{serve.host}:{serve.port}/{app}"


def api_key(settings: ServeSettings) -> str | None:
    """The API key from ``$<api_key_env>`` (checked for length), or None when it is not set."""
    key = os.environ.get(settings.api_key_env)
    return apikeys.check_key(key, f"${settings.api_key_env}") if key else None


def curl_auth(settings: ServeSettings, keyed: bool | None = None) -> str:
    """The header a printed curl example needs: `` -H "Authorization: Bearer $ATOLL_API_KEY"`` when the app is
    keyed (``keyed``; unset: when a key is set here), naming the variable, never the key; else nothing."""
    if not (os.environ.get(settings.api_key_env) if keyed is None else keyed):
        return ""
    return f' -H "Authorization: Bearer ${settings.api_key_env}"'


def _checked_settings(spec: ClusterSpec, settings: dict[str, Any] | None,
                      replicas: tuple[int, int] | None = None) -> tuple[dict[str, Any], ServeSettings]:
    """An app's overrides of cluster.yaml's Serve settings, and the settings they make: names and values checked
    before any cluster call, so a typo or a bad value gets its own error (not "no cluster is up")."""
    unknown = sorted(set(settings or {}) - set(ServeSettings.PER_APP))
    if unknown:
        raise ConfigError(f"--set {unknown[0]}: not a per-app Serve setting; choose from "
                          f"{', '.join(ServeSettings.PER_APP)}.")
    overrides = dict(settings or {})
    if replicas:
        overrides["min_replicas"], overrides["max_replicas"] = replicas
    return overrides, load_model(ServeSettings, {**spec.atoll.serve.model_dump(), **overrides}, "--set")


def _prepared_app(ref: str, *, app: str | None, overrides: dict[str, Any], merged: ServeSettings,
                  spec: ClusterSpec, info: ClusterInfo, public: bool) -> tuple[Any, str, dict[str, Any], str | None]:
    """A deploy's checks and its app config (the user model's code uploaded, the store's location forwarded): the
    version, the app name, the config without its key record, and the key from the environment. ``overrides`` and
    ``merged``: from :func:`_checked_settings`."""
    version = registry.Registry(spec.atoll.storage).get(ref)
    app = app or version.name
    if not APP_NAME.match(app):
        raise ConfigError(f"--app {app!r}: use letters, digits, '-' and '_' (it becomes the URL path /{app}).")
    key = api_key(merged)
    key_record(None, key, public=public)  # a contradiction fails before any upload
    new = app_config(app, version.ref, storage=spec.atoll.storage, requested=ref, settings=overrides,
                     model_types=spec.atoll.model_types)
    code = model_code(version.spec["model"]["type"], spec, version.ref)
    if code:  # the user model's package goes with the app (replicas import it from there)
        new["runtime_env"] = {"py_modules": jobs.upload_modules(code, info=info)}
    if is_remote(spec.atoll.storage) and (env := forwarded_env()):
        new.setdefault("runtime_env", {})["env_vars"] = env  # where the object store is, never a key
    return version, app, new, key


def deploy(ref: str, *, app: str | None = None, replicas: tuple[int, int] | None = None,
           settings: dict[str, Any] | None = None, spec: ClusterSpec | None = None,
           info: ClusterInfo | None = None, wait: bool = True, timeout: float = 300,
           public: bool = False) -> dict[str, Any]:
    """Deploy (or roll over) a registered version as the Serve application ``app`` (default: its name).

    The version is resolved now (``digits@production`` → ``digits:3``) and pinned, so the app serves exactly
    the version reported here. Other applications on the cluster are left as they are. The app's API key:
    the one in ``$<api_key_env>`` when set; else a redeployed app keeps the key it had, unless ``public``
    (see :func:`key_record`; the answer's ``api_key`` says which happened).

    Raises:
        ConfigError: a setting that is not one of ``ServeSettings.PER_APP``, or a bad app name.
        RegistryError: unknown model, version or alias (listing what exists).
        ServingError: Serve refused the app, or it failed to start (with Serve's reason); or the app has a
            canary (promote or roll it back first).
    """
    spec = spec or cluster.load_spec()
    overrides, merged = _checked_settings(spec, settings, replicas)
    info = info or cluster.current()
    version, app, new, key = _prepared_app(ref, app=app, overrides=overrides, merged=merged, spec=spec, info=info,
                                           public=public)
    written: dict[str, Any] = {}

    def replace(apps: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        # Decided under the config lock, from the app as the cluster has it now.
        if canary_app(app) in apps:
            raise ServingError(f"app {app!r} has a canary ({apps[canary_app(app)]['args']['model']}): move all "
                               f"traffic to it with `atoll serve promote {app}` or remove it with `atoll serve "
                               f"rollback {app}` first.")
        record, written["api_key"] = key_record((apps.get(app) or {}).get("args"), key, public=public)
        args = {k: v for k, v in new["args"].items() if k != "api_key_hash"}
        written["config"] = {**new, "args": {**args, "api_key_hash": record} if record else args}
        return {**apps, app: written["config"]}

    started = time.time()
    _change_apps(info, spec, replace,
                 landed=lambda apps: (apps.get(app) or {}).get("args") == written["config"]["args"])
    result = {"app": app, "model": version.name, "version": version.version, "requested": ref,
              "url": endpoint_url(spec, app), "playground": f"{endpoint_url(spec, app)}/ui",
              "gallery": playground.gallery_url(endpoint_url(spec, app)), "status": "DEPLOYING",
              "api_key": written["api_key"], "keyed": "api_key_hash" in written["config"]["args"]}
    if wait:
        result["status"] = _wait_running(info, app, started, timeout)
    return result


# ---- Canaries (the replica's side, and the rules of auto-rollback: atoll.serving.canary)

def canary_route(config: dict[str, Any] | None) -> dict[str, Any] | None:
    """The canary settings an app's config gives its live replicas (their ``user_config``), or None."""
    for deployment in (config or {}).get("deployments") or []:
        if deployment.get("name") == DEPLOYMENT_NAME:
            return ((deployment.get("user_config") or {}).get("canary")) or None
    return None


def _routed(config: dict[str, Any], route: dict[str, Any] | None) -> dict[str, Any]:
    """``config`` with its live replicas' canary settings set to ``route`` (a lightweight update: Serve calls
    their ``reconfigure``, restarting none)."""
    others = [d for d in config.get("deployments") or [] if d.get("name") != DEPLOYMENT_NAME]
    return {**config, "deployments": [*others, {"name": DEPLOYMENT_NAME, "user_config": {"canary": route}}]}


def _set_route(info: ClusterInfo, spec: ClusterSpec, app: str, route: dict[str, Any] | None, timeout: float) -> None:
    started = time.time()
    _change_apps(info, spec, lambda apps: {**apps, app: _routed(apps[app], route)},
                 landed=lambda apps: canary_route(apps.get(app)) == route)
    _wait_running(info, app, started, timeout)


def _live_and_canary(info: ClusterInfo, app: str) -> tuple[dict[str, Any], dict[str, Any]]:
    apps = _deployed(info)
    if app not in apps:
        listed = ", ".join(sorted(filter(is_model_app, apps))) or "none"
        raise ServingError(f"no Serve app {app!r}; apps: {listed}.")
    if canary_app(app) not in apps:
        raise ServingError(f"app {app!r} has no canary: start one with `atoll serve deploy NAME:VERSION --app {app} "
                           f"--canary 10`.")
    return apps[app], apps[canary_app(app)]


def deploy_canary(ref: str, *, app: str, percent: float, auto_rollback: bool = False,
                  settings: dict[str, Any] | None = None, spec: ClusterSpec | None = None,
                  info: ClusterInfo | None = None, timeout: float = 300) -> dict[str, Any]:
    """Run ``ref`` beside the version ``app`` serves and send it ``percent`` % of the app's model calls.

    The canary starts as the app ``APP.canary`` (no HTTP route, the live app's key), and only once it is RUNNING
    do the live replicas start sending it traffic (a lightweight update of their ``user_config``): no request
    waits for a canary that is still loading.

    Raises:
        ConfigError: ``percent`` outside (0, 100).
        ServingError: no such live app, or it serves ``ref`` already, or has a canary already.
    """
    if not 0 < percent < 100:
        raise ConfigError(f"--canary {percent:g}: give the share of requests for the new version, more than 0 and "
                          f"less than 100 (e.g. --canary 10); `atoll serve promote {app}` moves all of them.")
    spec = spec or cluster.load_spec()
    overrides, merged = _checked_settings(spec, settings)
    info = info or cluster.current()
    version, app, new, _ = _prepared_app(ref, app=app, overrides=overrides, merged=merged, spec=spec, info=info,
                                         public=False)
    apps = _deployed(info)
    live = apps.get(app)
    if live is None:
        raise ServingError(f"no live app {app!r} to run a canary beside: deploy it first, without --canary "
                           f"(`atoll serve deploy NAME --app {app}`).")
    if canary_app(app) in apps:
        raise ServingError(f"app {app!r} has a canary already ({apps[canary_app(app)]['args']['model']}): "
                           f"`atoll serve promote {app}` or `atoll serve rollback {app}` first.")
    if live["args"]["model"] == version.ref:
        raise ServingError(f"app {app!r} serves {version.ref} already: a canary is another version.")
    name = canary_app(app)
    args = {k: v for k, v in new["args"].items() if k != "api_key_hash"}
    if live["args"].get("api_key_hash"):  # the live app's key: the canary answers the same clients
        args["api_key_hash"] = live["args"]["api_key_hash"]
    config = {**new, "name": name, "route_prefix": None, "args": args}
    started = time.time()
    _change_apps(info, spec, lambda deployed: {**deployed, name: config},
                 landed=lambda deployed: (deployed.get(name) or {}).get("args") == args)
    _wait_running(info, name, started, timeout)
    canary.clear_verdict(spec.atoll.storage, app)
    route = {"app": name, "model": version.ref, "percent": float(percent), "auto_rollback": bool(auto_rollback)}
    _set_route(info, spec, app, route, timeout)
    return {"app": app, "live": live["args"]["model"], "canary": version.ref, "percent": float(percent),
            "auto_rollback": bool(auto_rollback), "url": endpoint_url(spec, app), "status": "RUNNING"}


def promote(app: str, *, spec: ClusterSpec | None = None, info: ClusterInfo | None = None,
            timeout: float = 300) -> dict[str, Any]:
    """Move all of ``app``'s traffic to its canary's version, with no failed request: every model call goes to the
    canary first (a lightweight update), then the live replicas roll over to its version (Serve's rolling update:
    the old ones keep forwarding until they stop), and only then does the canary's app go."""
    spec = spec or cluster.load_spec()
    info = info or cluster.current()
    live, can = _live_and_canary(info, app)
    route = {**(canary_route(live) or {"app": canary_app(app), "model": can["args"]["model"]}), "percent": 100.0,
             "auto_rollback": False}
    _set_route(info, spec, app, route, timeout)
    args = {**can["args"]}
    promoted = {k: v for k, v in {**can, "name": app, "route_prefix": live.get("route_prefix") or f"/{app}",
                                  "args": args}.items() if k != "deployments"}
    started = time.time()
    _change_apps(info, spec, lambda apps: {**apps, app: promoted},
                 landed=lambda apps: (apps.get(app) or {}).get("args") == args and canary_route(apps.get(app)) is None)
    _wait_running(info, app, started, timeout)
    _remove_canary(info, spec, app, timeout)
    return {"app": app, "live": args["model"], "previous": live["args"]["model"], "status": "RUNNING"}


def rollback(app: str, *, spec: ClusterSpec | None = None, info: ClusterInfo | None = None,
             timeout: float = 300) -> dict[str, Any]:
    """Remove ``app``'s canary, with no failed request: the live replicas stop sending it traffic first (a
    lightweight update; what it was answering, it finishes), then its app goes."""
    spec = spec or cluster.load_spec()
    info = info or cluster.current()
    live, can = _live_and_canary(info, app)
    _set_route(info, spec, app, None, timeout)
    _remove_canary(info, spec, app, timeout)
    return {"app": app, "live": live["args"]["model"], "removed": can["args"]["model"], "status": "RUNNING"}


def _remove_canary(info: ClusterInfo, spec: ClusterSpec, app: str, timeout: float) -> None:
    name = canary_app(app)
    _change_apps(info, spec, lambda apps: {k: v for k, v in apps.items() if k != name},
                 landed=lambda apps: name not in apps)
    _wait_gone(info, name, timeout)


#: How long a writer waits before checking that no concurrent writer dropped its change: longer than any
#: other client's read-change-write of the Serve config takes.
SETTLE_S = 1.5
ATTEMPTS = 5
#: Seconds between reads of an app's state while waiting for it to run or go: a deploy ends within this of Serve
#: saying RUNNING (one read of Serve's status costs the dashboard a few milliseconds).
POLL_S = 0.25


@contextlib.contextmanager
def _config_lock() -> Iterator[None]:
    """Serialise Serve-config writes from this machine (every `atoll` process of this user)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: the check-and-repair below still applies
        yield
        return
    path = local_state.home() / "serve-config.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _deployed(info: ClusterInfo) -> dict[str, dict[str, Any]]:
    """The declarative config of every app on the cluster, by name."""
    return {name: a["deployed_app_config"] for name, a in _apps(_details(info)).items()
            if a.get("deployed_app_config")}


def _change_apps(info: ClusterInfo, spec: ClusterSpec,
                 change: Callable[[dict[str, dict[str, Any]]], dict[str, dict[str, Any]]],
                 landed: Callable[[dict[str, dict[str, Any]]], bool]) -> None:
    """Apply ``change`` to the cluster's apps and write the whole config, until ``landed`` holds after the
    others had time to write too (see the module docstring)."""
    with _config_lock():
        for _ in range(ATTEMPTS):
            apps = change(_deployed(info))
            _put(info, serve_config(spec, with_gallery(list(apps.values())), info))
            time.sleep(SETTLE_S)
            if landed(_deployed(info)):
                return
    raise ServingError("another client keeps rewriting this cluster's Serve config; try again when its deploys "
                       "are done (`atoll serve status`).")


def _wait_running(info: ClusterInfo, app: str, since: float, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while True:
        state = _apps(_details(info)).get(app) or {}
        status = state.get("status")
        fresh = (state.get("last_deployed_time_s") or 0) >= since - 1
        if fresh and status == "RUNNING":
            return status
        if fresh and status == "DEPLOY_FAILED":
            message = (state.get("message") or "").strip().splitlines()
            reason = next((line for line in reversed(message) if line.strip()), "no reason given")
            raise ServingError(f"app {app!r} failed to deploy: {reason[:400]}\n"
                               f"  details: `atoll serve status` or Ray's logs in /tmp/ray/session_latest/logs/serve")
        if time.monotonic() > deadline:
            raise ServingError(f"app {app!r} is not RUNNING after {timeout:.0f} s (status {status}); the cluster "
                               f"may lack resources for its replicas: see `atoll status`.")
        time.sleep(POLL_S)


def status(info: ClusterInfo | None = None, spec: ClusterSpec | None = None) -> list[dict[str, Any]]:
    """Every Serve application: status, URL, the model version it serves, replicas by state, and its canary (the
    version, its share, and an auto-rollback's verdict) if it has one."""
    info = info or cluster.current()
    spec = spec or cluster.load_spec()
    details = _details(info)
    apps = _apps(details)
    serving = _ingress_serving(info) if apps else None
    rows = []
    for name, state in sorted(apps.items()):
        if not is_model_app(name):  # a page; a canary is in its app's row
            continue
        config = state.get("deployed_app_config") or {}
        args = config.get("args") or {}
        rows.append({"app": name, "status": state.get("status"), "route_prefix": state.get("route_prefix"),
                     "url": endpoint_url(spec, name), "model": args.get("model"), "requested": args.get("requested"),
                     "replicas": _replicas(state), "message": (state.get("message") or "").strip()[:300],
                     "ingress": serving, "canary": _canary_row(spec, name, config, apps.get(canary_app(name)))})
    return rows


def _ingress_serving(info: ClusterInfo) -> str | None:
    """HAProxy or Serve's proxy, from the cluster's live actors; None where the state API does not answer."""
    from atoll import capacity

    try:
        client = capacity.state_api(info.dashboard_url, auth.headers())
        actors = capacity.list_state(client, "actors", [("class_name", "=", ingress.HAPROXY_ACTOR),
                                                        ("state", "=", "ALIVE")])
    except Exception:  # noqa: BLE001 - a figure of the status table, not worth failing it for
        return None
    return ingress.serving(a.class_name for a in actors)


def _replicas(state: dict[str, Any]) -> dict[str, int]:
    deployment = (state.get("deployments") or {}).get(DEPLOYMENT_NAME) or {}
    replicas: dict[str, int] = {}
    for replica in deployment.get("replicas") or []:
        replicas[replica.get("state", "?")] = replicas.get(replica.get("state", "?"), 0) + 1
    return replicas


def _canary_row(spec: ClusterSpec, app: str, config: dict[str, Any], state: dict[str, Any] | None
                ) -> dict[str, Any] | None:
    if state is None:
        return None
    route = canary_route(config) or {}
    model = ((state.get("deployed_app_config") or {}).get("args") or {}).get("model")
    verdict = canary.read_verdict(spec.atoll.storage, app) if route.get("auto_rollback") else None
    return {"model": model, "status": state.get("status"), "percent": route.get("percent", 0.0),
            "auto_rollback": bool(route.get("auto_rollback")), "replicas": _replicas(state),
            "rolled_back": verdict.get("reason") if verdict and verdict.get("canary") == model else None}


def delete(app: str, *, info: ClusterInfo | None = None, spec: ClusterSpec | None = None,
           timeout: float = 120) -> None:
    """Remove one application (its replicas stop), and its canary if it has one; the others keep serving."""
    info = info or cluster.current()
    spec = spec or cluster.load_spec()
    apps = _apps(_details(info))
    if app not in apps:
        raise ServingError(f"no Serve app {app!r}; apps: {', '.join(sorted(apps)) or 'none'}.")
    gone = {app, canary_app(app)}
    _change_apps(info, spec, lambda deployed: {k: v for k, v in deployed.items() if k not in gone},
                 landed=lambda deployed: not gone & set(deployed))
    for name in gone:
        _wait_gone(info, name, timeout)


def _wait_gone(info: ClusterInfo, app: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while app in _apps(_details(info)):
        if time.monotonic() > deadline:
            raise ServingError(f"app {app!r} is still being deleted after {timeout:.0f} s; see `atoll serve status`.")
        time.sleep(POLL_S)


def apps_serving(reg: registry.Registry, name: str, version: int, *, info: ClusterInfo | None = None) -> list[str]:
    """The Serve apps on the cluster that serve ``name:version``: the cluster's Serve config is the record.

    An app deployed by Atoll names its version (``digits:3``); one deployed from a Serve config or a RayService
    by alias or bare name was pinned when it was built, to what that name resolves to now unless it moved
    since (an alias cannot move off a version an app serves without a redeploy being the way to follow it).

    Raises:
        ClusterNotUpError: no cluster answers (the caller decides whether that means "none").
    """
    info = info or cluster.current()
    serving = []
    for app, config in sorted(_deployed(info).items()):
        ref = (config.get("args") or {}).get("model")
        if not ref or registry.parse_ref(ref)[0] != name:
            continue
        try:
            if reg.get(ref).version == version:
                serving.append(app)
        except AtollError:  # its version is gone already, or it names another model's alias
            continue
    return serving

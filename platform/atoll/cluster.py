"""cluster.yaml → a running Ray cluster: up and down (local, simulated autoscaling, or Ray's cluster launcher),
and the cluster to talk to (:func:`current`). Loading cluster.yaml is atoll.config's (``load_spec`` is
importable from here too); what a running cluster is doing is atoll.status's.

The embedded default is a local Ray head on this machine (``ray start --head``), with token auth on and
everything it listens on bound to 127.0.0.1 (Ray's local-only mode: the dashboard and Jobs API, and Ray's
own gRPC servers). What ``up`` started is recorded in ``$ATOLL_HOME/cluster.json`` (PIDs with their start
times, and the Ray session) so that ``down`` stops those processes, their children and the processes of
that Ray session (Ray's own programs whose command line names its session directory, and every process
that carries the environment mark ``up`` gave ``ray start``), and nothing else: not a ``tail -f`` of one of
its logs, not another user's process. A cloud cluster is Ray's
cluster launcher on the same file (``ray up cluster.yaml``).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import yaml

from atoll import auth, ingress, local_state

# cluster.yaml is loaded by atoll.config; these names stay importable from here too, where users look first.
from atoll.config import DEFAULT_CONFIG, find_config, load_spec, project_root, validate_ray_config  # noqa: F401
from atoll.errors import ClusterError, ClusterNotUpError, ConfigError
from atoll.serving import proxy_auth
from atoll.specs import ClusterSpec

if TYPE_CHECKING:
    import psutil

# ------------------------------------------------------------------------------------------------
# Where things are: the state file and the addresses of a running cluster


def state_path() -> Path:
    return local_state.home() / "cluster.json"


@dataclasses.dataclass
class ClusterInfo:
    """A running cluster as Atoll knows it (what ``up`` recorded, or an address the user gave)."""

    mode: str  # "local" | "simulated" (both started by `atoll up`) | "remote" (ATOLL_ADDRESS)
    dashboard_url: str
    gcs_address: str | None = None
    session_name: str | None = None
    session_dir: str | None = None
    processes: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # pid + create_time
    mark: str | None = None  # the MARK_VAR value every process of this `ray start` inherits
    config_path: str | None = None
    started_at: float | None = None
    already_up: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _read_state() -> ClusterInfo | None:
    path = state_path()
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
        known = {f.name for f in dataclasses.fields(ClusterInfo)} - {"already_up"}
        return ClusterInfo(**{k: v for k, v in data.items() if k in known})  # a record from an older Atoll too
    except (json.JSONDecodeError, TypeError):
        return None


def _write_state(info: ClusterInfo) -> None:
    path = state_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(info.to_dict(), indent=2))
    os.replace(tmp, path)  # atomic: a reader never sees half a state file


def _ping(dashboard_url: str, timeout: float = 2.0) -> dict[str, Any] | None:
    """The dashboard's /api/version (with the token), or None when nothing answers."""
    try:
        resp = httpx.get(f"{dashboard_url}/api/version", headers=auth.headers(), timeout=timeout)
    except httpx.HTTPError:
        return None
    if resp.status_code in (401, 403):
        raise ClusterError(f"the cluster at {dashboard_url} refused Atoll's token ({resp.status_code}). "
                           f"Check {auth.token_path()} (or RAY_AUTH_TOKEN) holds this cluster's token.")
    if resp.status_code != 200:
        return None
    try:
        version = resp.json()
    except ValueError:
        version = None
    if not isinstance(version, dict) or "ray_version" not in version:
        raise ClusterNotUpError(f"{dashboard_url} answers, but not as a Ray dashboard (no Ray version at "
                                f"/api/version). Point ATOLL_ADDRESS at the head's dashboard, e.g. "
                                f"http://127.0.0.1:8265.")
    return version


def current(spec: ClusterSpec | None = None) -> ClusterInfo:
    """The cluster to talk to: ``$ATOLL_ADDRESS`` (a dashboard URL), else what ``atoll up`` recorded.

    Raises:
        ClusterNotUpError: when no cluster answers.
    """
    address = os.environ.get("ATOLL_ADDRESS") or os.environ.get("RAY_API_SERVER_ADDRESS")
    if address:
        address = address.rstrip("/")
        if not address.startswith("http"):
            address = f"http://{address}"
        info = ClusterInfo(mode="remote", dashboard_url=address)
        version = _ping(address)
        if version is None:
            raise ClusterNotUpError(f"no Ray cluster answers at {address} (from $ATOLL_ADDRESS). Start one "
                                    f"with `atoll up`, or fix the address (port-forward the head's 8265).")
        info.session_name = version.get("session_name")
        return info
    info = _read_state()
    if info is None:
        raise ClusterNotUpError("no cluster is up. Start one with `atoll up` (or set ATOLL_ADDRESS to a "
                                "running cluster's dashboard URL).")
    version = _ping(info.dashboard_url)
    if version is None or (info.session_name and version.get("session_name") != info.session_name):
        raise ClusterNotUpError(f"the cluster recorded in {state_path()} is not running any more "
                                f"(no answer at {info.dashboard_url}). Run `atoll down` to clear it, then `atoll up`.")
    return info


# ------------------------------------------------------------------------------------------------
# Local lifecycle


def _ray_executable() -> str:
    candidate = Path(sys.executable).parent / "ray"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("ray")
    if not found:
        raise ClusterError("the `ray` command is not installed; run `pip install -e .` in the Atoll repo.")
    return found


def ray_temp_dir(gcs_port: int) -> str:
    """Ray's temp dir (sessions, logs, sockets) of the local cluster whose GCS listens on ``gcs_port``.

    Ray's job agent connects each job's driver to "the latest cluster started on this machine", read from
    ``<temp dir>/ray_current_cluster``: two clusters sharing one temp dir would run one's jobs on the other.
    The default port keeps Ray's default, /tmp/ray, where Ray's own tools look; any other gets its own.
    """
    return "/tmp/ray" if gcs_port == 6379 else f"/tmp/ray-{gcs_port}"


def local_start_command(spec: ClusterSpec, num_cpus: int | None = None) -> list[str]:
    """The ``ray start --head`` command for the embedded local cluster."""
    local = spec.atoll.local
    cmd = [_ray_executable(), "start", "--head", f"--port={local.port}",
           f"--dashboard-host={local.host}", f"--dashboard-port={local.dashboard_port}",
           "--disable-usage-stats", "--include-dashboard=true",
           # The job agent's fixed default (52365) collides with any other Ray on the machine (a
           # `ray.init()` in a notebook): then no job can be submitted. Port 0 lets the agent bind a free
           # port itself and report it to the GCS (a port picked here could be taken before Ray binds it).
           "--dashboard-agent-listen-port=0"]
    cmd.append(f"--temp-dir={ray_temp_dir(local.port)}")
    cpus = num_cpus or local.num_cpus
    if cpus:
        cmd.append(f"--num-cpus={cpus}")
    if local.num_gpus is not None:
        cmd.append(f"--num-gpus={local.num_gpus}")
    if local.object_store_memory_mb:
        cmd.append(f"--object-store-memory={local.object_store_memory_mb * 1024 * 1024}")
    return cmd


def cloud_up_command(spec: ClusterSpec) -> list[str]:
    """What ``atoll up --cloud`` runs: Ray's cluster launcher on the same file. Makes the cluster token first:
    cluster.yaml's file_mounts sync it to every node."""
    if not spec.source or spec.source.startswith("("):
        raise ConfigError("`atoll up --cloud` needs a cluster.yaml with a cloud provider; pass -c FILE.")
    auth.ensure_token()
    return [_ray_executable(), "up", spec.source, "-y", "--no-config-cache"]


def cloud_down_command(spec: ClusterSpec) -> list[str]:
    """What ``atoll down --cloud`` runs."""
    return [_ray_executable(), "down", spec.source, "-y"]


def cloud_launch(cmd: list[str]) -> int:
    """Run a command of Ray's cluster launcher (:func:`cloud_up_command`, :func:`cloud_down_command`) in the
    foreground, its clients sending the token; its exit code."""
    return subprocess.call(cmd, env={**os.environ, **auth.client_env()})


def _ray_pids() -> set[int]:
    import psutil

    return {p.pid for p in psutil.process_iter(["cmdline"]) if is_ray_cmdline(p.info.get("cmdline"))}


# A file inside an installed ``ray`` package (any interpreter's), where raylet, gcs_server and Ray's Python
# entry points (default_worker.py, dashboard.py, log_monitor.py, the agents, the monitor) live.
_RAY_PACKAGE_FILE = re.compile(r"[/\\](site|dist)-packages[/\\]ray[/\\]")
_PYTHON_OPTIONS_WITH_VALUE = ("-X", "-W")


@functools.cache
def _ray_package_dirs() -> tuple[str, ...]:
    """This interpreter's Ray package folder (as found, and resolved), without importing Ray: an editable or
    vendored Ray outside site-packages too."""
    import importlib.util

    spec = importlib.util.find_spec("ray")
    found = list(spec.submodule_search_locations or []) if spec else []
    return tuple({form + os.sep for place in found for form in (os.path.abspath(place), os.path.realpath(place))})


def _is_ray_file(path: str) -> bool:
    return bool(_RAY_PACKAGE_FILE.search(path)) or path.startswith(_ray_package_dirs())


def is_ray_cmdline(cmdline: list[str] | None) -> bool:
    """Whether a command line is one of Ray's own processes, by the program it runs.

    Ray's programs are its executables (raylet, gcs_server: files of the ``ray`` package), Python running a
    file of that package (``default_worker.py``, ``dashboard.py``, ``log_monitor.py``, the agents) or
    ``-m ray...``, and the titles Ray's workers and dashboard modules give themselves (``ray::IDLE``,
    ``ray-dashboard-JobHead-0``). Any other program that merely names a Ray file or session in its arguments
    (``tail -f /tmp/ray/session_.../logs/raylet.out``, ``less .../ray/x.py``) is not.

    Args:
        cmdline: The process's arguments (``psutil.Process.cmdline()``; None when unreadable).
    """
    if not cmdline:
        return False
    program = cmdline[0]
    if program.startswith(("ray::", "ray-dashboard-")) or _is_ray_file(program):
        return True
    if not os.path.basename(program).startswith("python"):
        return False
    args = iter(cmdline[1:])
    for arg in args:  # the interpreter's options come first; the first other argument is what it runs
        if arg == "-m":
            return next(args, "").partition(".")[0] == "ray"
        if arg.startswith("-m"):
            return arg[2:].partition(".")[0] == "ray"
        if arg.startswith("-c"):  # a program given as text: not one of Ray's files
            return False
        if arg in _PYTHON_OPTIONS_WITH_VALUE:
            next(args, None)
        elif not arg.startswith("-"):
            return _is_ray_file(arg)
    return False


MARK_VAR = "ATOLL_CLUSTER_MARK"
LOCAL_ONLY_VAR = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # "0": Ray's single-machine, loopback-only mode


def ray_tools_hint(info: ClusterInfo) -> str | None:
    """The one line that lets Ray's own clients on this machine (``ray status``, ``ray.init()`` in a notebook)
    reach a loopback-only cluster, or None for a cluster elsewhere. Ray gives no way around it: a client not in
    local-only mode dials the machine's routable IP and waits on the GCS for minutes."""
    if info.mode == "remote":
        return None
    return f"export {LOCAL_ONLY_VAR}=0 RAY_AUTH_MODE=token   # then `ray status`, ray.init() reach this cluster"


def _is_loopback_host(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _new_ray_processes(before: set[int], mark: str) -> list[dict[str, Any]]:
    """Ray processes that appeared since ``before`` *and* carry our ``ray start``'s environment mark
    (``ray start`` also starts some, like the Ray client server, whose command line does not name the
    session; the mark keeps out any other Ray that started on this machine meanwhile)."""
    import psutil

    found = []
    for pid in _ray_pids() - before:
        try:
            proc = psutil.Process(pid)
            if _has_mark(proc, mark):
                found.append({"pid": pid, "create_time": proc.create_time()})
        except psutil.NoSuchProcess:
            pass
    return found


def _stop_marked(mark: str, within_s: float = 20.0) -> None:
    """Stop every process that carries this ``ray start``'s mark, again and again until none is left: a
    half-started head (Ctrl-C, a failure) may still be spawning workers while the first ones are stopped."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        marked = _session_processes(None, mark)
        if not marked:
            return
        _stop_processes(marked, None, grace_s=3.0)


def _has_mark(proc: psutil.Process, mark: str) -> bool:
    """Whether ``proc`` inherited this ``ray start``'s mark (False where its environment is unreadable:
    another user's process is never ours)."""
    import psutil

    try:
        return proc.environ().get(MARK_VAR) == mark
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False


def _session_processes(session_dir: str | None, mark: str | None = None) -> list[dict[str, Any]]:
    """The processes of one Ray session: Ray's own programs (:func:`is_ray_cmdline`) whose command line names
    the session directory, and every process carrying ``mark`` (what ``up`` gives ``ray start``)."""
    import psutil

    name = Path(session_dir).name if session_dir else None
    found = []
    for proc in psutil.process_iter(["pid", "cmdline", "create_time"]):
        if proc.pid == os.getpid():
            continue
        cmdline = proc.info.get("cmdline")
        of_session = bool(name) and is_ray_cmdline(cmdline) and name in " ".join(cmdline)
        if of_session or (mark is not None and _has_mark(proc, mark)):
            found.append({"pid": proc.info["pid"], "create_time": proc.info["create_time"]})
    return found


def _wait_for_dashboard(url: str, timeout_s: float, temp_dir: str = "/tmp/ray") -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            version = _ping(url)
        except ClusterNotUpError:  # a dashboard half up
            version = None
        if version is not None:
            # The Jobs API is served by a dashboard module that can come up a moment after /api/version.
            try:
                resp = httpx.get(f"{url}/api/jobs/", headers=auth.headers(), timeout=2)
                if resp.status_code == 200:
                    return version
            except httpx.HTTPError:
                pass
        time.sleep(0.5)
    raise ClusterError(f"the dashboard at {url} did not answer within {timeout_s:.0f} s; "
                       f"see the logs under {temp_dir}/session_latest/logs.")


SIMULATED_HEAD_TYPE = "ray.head.default"  # the fake provider tags its head node with this type


def simulation_config(spec: ClusterSpec, *, idle_timeout_minutes: float | None = None,
                      head_cpus: float | None = None) -> dict[str, Any]:
    """The complete autoscaler config that runs cluster.yaml's node types on Ray's ``fake_multinode``
    provider (Ray's wheel ships no example of it): same types, resources, min/max workers, overall
    ``max_workers``, ``upscaling_speed`` and ``idle_timeout_minutes``; each "node" is a raylet here.

    ``memory`` is left out of the simulated nodes' resources: the fake provider passes resources as custom
    resources, and Ray reserves that name.
    """
    head = spec.available_node_types[spec.head_node_type]
    head_resources = {k: v for k, v in head.resources.items() if k != "memory"}
    if head_cpus is not None:
        head_resources["CPU"] = head_cpus
    head_resources.setdefault("CPU", 1)
    types: dict[str, Any] = {SIMULATED_HEAD_TYPE: {"resources": head_resources, "node_config": {},
                                                   "max_workers": 0}}
    for name, node in spec.worker_types().items():
        types[name] = {"resources": {k: v for k, v in node.resources.items() if k != "memory"},
                       "node_config": {}, "min_workers": node.min_workers,
                       "max_workers": node.max_workers if node.max_workers is not None else spec.max_workers}
    empty: dict[str, Any] = {key: [] for key in (
        "initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands",
        "head_start_ray_commands", "worker_start_ray_commands", "cluster_synced_files", "rsync_exclude",
        "rsync_filter")}
    return {
        "cluster_name": f"{spec.cluster_name}-simulated",
        "max_workers": spec.max_workers,
        "upscaling_speed": spec.upscaling_speed,
        "idle_timeout_minutes": spec.idle_timeout_minutes if idle_timeout_minutes is None else idle_timeout_minutes,
        "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                     "disable_launch_config_check": True,
                     "gcs_address": f"127.0.0.1:{spec.atoll.local.port}"},
        "auth": {}, "docker": {}, "file_mounts": {}, "file_mounts_sync_continuously": False,
        "head_node_type": SIMULATED_HEAD_TYPE, "available_node_types": types, **empty,
    }


def up(spec: ClusterSpec, *, num_cpus: int | None = None, timeout_s: float = 90.0, simulate: bool = False,
       idle_timeout_minutes: float | None = None) -> ClusterInfo:
    """Start the embedded local cluster (or return the one already up, with ``already_up=True``).

    With ``simulate``, Ray's real autoscaler drives Ray's fake multi-node provider from cluster.yaml's
    node types: work the head cannot hold makes worker "nodes" (raylets on this machine) appear, idle ones
    go away after ``idle_timeout_minutes`` (default: cluster.yaml's).

    Raises:
        ClusterError: when Ray cannot start (the message carries Ray's own reason).
    """
    existing = _read_state()
    if existing is not None:
        try:
            version = _ping(existing.dashboard_url)
        except (ClusterError, ClusterNotUpError):  # not our cluster answering there: the record is stale
            version = None
        if version is not None and version.get("session_name") == existing.session_name:
            existing.already_up = True
            return existing
        _stop_processes(existing.processes, existing.session_dir, existing.mark)  # stale record: clear leftovers
        state_path().unlink(missing_ok=True)

    local = spec.atoll.local
    dashboard_url = f"http://{local.host}:{local.dashboard_port}"
    if _reachable(dashboard_url):
        raise ClusterError(f"something else already listens on {dashboard_url} (a Ray cluster not started by "
                           f"Atoll?). Stop it (`ray stop`) or set metadata.atoll.local.dashboard_port.")
    if _port_taken(local.host, local.port):
        raise ClusterError(f"port {local.port} (metadata.atoll.local.port, the GCS) is taken by another process on "
                           f"{local.host}; stop it or choose another port in cluster.yaml.")
    auth.ensure_token()
    # Jobs run `python ...` through the raylet's PATH: make that this interpreter (the venv Atoll
    # is installed in), not whichever `python` happens to come first.
    path = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])
    mark = os.urandom(8).hex()  # inherited by every process this `ray start` spawns: how we know ours
    env = {**os.environ, **auth.client_env(), "PATH": path, MARK_VAR: mark}
    cmd = local_start_command(spec, num_cpus)
    if simulate:
        config = simulation_config(spec, idle_timeout_minutes=idle_timeout_minutes, head_cpus=num_cpus)
        config_path = state_path().parent / "simulated-autoscaler.yaml"
        config_path.parent.mkdir(parents=True, exist_ok=True)
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        cmd = [c for c in cmd if not c.startswith("--num-cpus=")]
        cmd += [f"--num-cpus={config['available_node_types'][SIMULATED_HEAD_TYPE]['resources']['CPU']:g}",
                f"--autoscaling-config={config_path}"]
        # The provider refuses to run without RAY_FAKE_CLUSTER; a 1 s autoscaler loop makes scaling
        # visible in seconds. ATOLL_AUTOSCALING lets jobs count the node types they may scale to.
        env.update({"RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1", "ATOLL_AUTOSCALING": "1",
                    "ATOLL_CLUSTER_CONFIG": str(Path(spec.source).resolve()) if spec.source and
                    not spec.source.startswith("(") else ""})
    if _is_loopback_host(local.host):
        # Ray's local-only mode (its default on macOS/Windows) makes the node IP 127.0.0.1, and then every
        # gRPC server (GCS, raylet, object manager, workers, agents) binds loopback, not every interface.
        env[LOCAL_ONLY_VAR] = "0"
        # Gloo's connections between Train workers listen on this interface's address (the loopback one, on
        # Linux); torch's rendezvous store on rank 0 has no such setting and listens on every interface.
        if sys.platform.startswith("linux"):
            env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    env.update(serve_env(env))
    # The embedded cluster keeps Serve's proxy unless cluster.yaml asks for HAProxy (atoll.serving.ingress).
    env.update(ingress.ray_start_env(spec.atoll.serve.ingress, local=True))
    if env.get(ingress.ENV_VAR) == "1":
        env.update(ingress.private_files(mark))
        if wrapper := ingress.wrapper_path():  # loopback admin listeners, a private socket, no /-/routes
            env.setdefault(ingress.BINARY_VAR, wrapper)
    before = _ray_pids()
    try:
        # Its own session: a Ctrl-C meant for `atoll up` must not kill `ray start` half-way; we clean up below.
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, start_new_session=True)
        if proc.returncode != 0:
            raise ClusterError(_start_failure(proc, local.port))
        version = _wait_for_dashboard(dashboard_url, timeout_s, ray_temp_dir(local.port))
        session_name = version.get("session_name")
        session_dir = str(Path(ray_temp_dir(local.port)) / session_name) if session_name else None
        info = ClusterInfo(
            mode="simulated" if simulate else "local", dashboard_url=dashboard_url,
            gcs_address=f"127.0.0.1:{local.port}", session_name=session_name, session_dir=session_dir,
            processes=_merge(_new_ray_processes(before, mark), _session_processes(session_dir, mark)),
            config_path=spec.source, started_at=time.time(), mark=mark)
        _write_state(info)
    except BaseException:
        # Interrupted (Ctrl-C) or failed half-way: stop whatever this `ray start` left running, so that no
        # cluster is ever up without a record for `atoll down`.
        _stop_marked(mark)
        ingress.remove_files(mark)
        raise
    return info


def serve_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """What Serve needs in ``ray start``'s environment on a cluster `atoll up` starts (the benches start Ray with
    it too): the API-key middleware, and :data:`atoll.ingress.SERVE_TUNING` where ``environ`` does not set it."""
    environ = os.environ if environ is None else environ
    # Serve's HTTP proxies refuse requests without a valid API key before they reach a replica's queue.
    return {**{k: v for k, v in ingress.SERVE_TUNING.items() if k not in environ},
            proxy_auth.ENV_VAR: proxy_auth.IMPORT_PATH}


def _port_taken(host: str, port: int) -> bool:
    import socket

    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex((host, port)) == 0


def _start_failure(proc: subprocess.CompletedProcess[str], gcs_port: int) -> str:
    """One line for a failed ``ray start``: its most telling line, with its whole output kept in a file."""
    output = (proc.stderr or "") + (proc.stdout or "")
    log = local_state.home() / "ray-start.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(output)
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    telling = next((line for line in reversed(lines) if "rror" in line or "in use" in line), lines[-1] if lines else "")
    if "in use" in output or "Address already" in output:
        telling = f"a port it needs is taken (the GCS port is {gcs_port}): {telling}"
    return f"`ray start` failed (exit {proc.returncode}): {telling[:300]} (full output: {log})"


def _merge(*lists: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return list({e["pid"]: e for lst in lists for e in lst}.values())


def _reachable(url: str) -> bool:
    try:
        httpx.get(url, timeout=1)
        return True
    except httpx.HTTPError:
        return False


def _stop_processes(recorded: list[dict[str, Any]], session_dir: str | None, mark: str | None = None,
                    grace_s: float = 10.0) -> list[int]:
    """SIGTERM then SIGKILL the recorded processes, their descendants and the session's processes
    (:func:`_session_processes`); the PIDs signalled. What cannot be signalled (gone meanwhile, or another
    user's) is passed over: it never stops the rest, nor the removal of the record."""
    import psutil

    procs: dict[int, psutil.Process] = {}

    def add(proc: psutil.Process) -> None:
        if proc.pid != os.getpid():
            procs[proc.pid] = proc

    unsignallable = (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess)
    for entry in recorded + _session_processes(session_dir, mark):
        try:
            proc = psutil.Process(entry["pid"])
            # A recycled PID belongs to someone else: only stop the process we recorded.
            if abs(proc.create_time() - entry["create_time"]) > 1.0:
                continue
            add(proc)
            for child in proc.children(recursive=True):
                add(child)
        except unsignallable:
            continue
    signalled = []
    for proc in procs.values():
        try:
            proc.send_signal(signal.SIGTERM)
            signalled.append(proc)
        except unsignallable:
            pass
    _, alive = psutil.wait_procs(signalled, timeout=grace_s)
    for proc in alive:
        try:
            proc.kill()
        except unsignallable:
            pass
    psutil.wait_procs(alive, timeout=5)
    return sorted(p.pid for p in signalled)


def down() -> list[int] | None:
    """Stop the local cluster that ``up`` started, by PID; return the PIDs stopped (None if none was up)."""
    info = _read_state()
    if info is None:
        return None
    stopped = _stop_processes(info.processes, info.session_dir, info.mark)
    ingress.remove_files(info.mark)
    state_path().unlink(missing_ok=True)
    return stopped


def ray_processes_of(info: ClusterInfo) -> list[int]:
    """PIDs still alive that belong to ``info``'s cluster (for tests and `atoll down` checks)."""
    import psutil

    alive = []
    for entry in info.processes + _session_processes(info.session_dir, info.mark):
        try:
            proc = psutil.Process(entry["pid"])
            # A zombie has exited; it only waits for its parent to collect its exit status.
            if abs(proc.create_time() - entry["create_time"]) <= 1.0 and proc.status() != psutil.STATUS_ZOMBIE:
                alive.append(entry["pid"])
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return sorted(set(alive))

"""The HTTP ingress (issue 36): Ray's HAProxy on clusters, Serve's proxy on the embedded local cluster, the choice
in cluster.yaml and what each start path is given; Atoll's HAProxy wrapper; and HAProxy run for real inside a
network namespace this test makes (replicas' servers bind every interface there: reachable from nothing outside the
namespace), where a keyed app refuses keyless requests before any queue, even under a flood, and every serving
feature works through it."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from atoll import cluster, ingress, kuberay
from atoll.cluster import ClusterInfo
from atoll.errors import ConfigError
from atoll.serving import endpoints
from conftest import REPO, copy_version


@pytest.fixture()
def raw() -> dict:
    return yaml.safe_load((REPO / "cluster.yaml").read_text())


def _spec(tmp_path, raw: dict, ingress_setting: str | None = None, strip_flag: bool = False):
    data = copy.deepcopy(raw)
    if ingress_setting:
        data["metadata"]["atoll"]["serve"]["ingress"] = ingress_setting
    if strip_flag:
        for key in ("head_start_ray_commands", "worker_start_ray_commands"):
            data[key] = [c.replace(" RAY_SERVE_ENABLE_HA_PROXY=1", "") for c in data[key]]
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(data))
    return cluster.load_spec(path)


def test_auto_is_haproxy_on_clusters_and_the_proxy_on_the_embedded_one() -> None:
    assert ingress.resolve("auto", local=True) == "proxy" and ingress.resolve("auto", local=False) == "haproxy"
    assert ingress.resolve("haproxy", local=True) == "haproxy" and ingress.resolve("proxy", local=False) == "proxy"
    assert ingress.ray_start_env("auto", local=True) == {}
    assert ingress.ray_start_env("auto", local=False) == {"RAY_SERVE_ENABLE_HA_PROXY": "1"}
    assert ingress.ray_start_env("haproxy", local=True) == {"RAY_SERVE_ENABLE_HA_PROXY": "1"}
    assert ingress.serving(["ServeController", "HAProxyManager"]) == "haproxy"
    assert ingress.serving(["ServeController", "ProxyActor"]) == "proxy"


def test_the_repo_cluster_yaml_starts_ray_up_nodes_with_haproxy(raw, tmp_path) -> None:
    spec = cluster.load_spec(REPO / "cluster.yaml")
    assert spec.atoll.serve.ingress == "auto"
    for command in raw["head_start_ray_commands"][1:] + raw["worker_start_ray_commands"][1:]:
        assert "RAY_SERVE_ENABLE_HA_PROXY=1" in command and "proxy_auth:middlewares" in command
    assert _spec(tmp_path, raw, "proxy", strip_flag=True).atoll.serve.ingress == "proxy"


@pytest.mark.parametrize(("setting", "strip", "message"), [
    ("auto", True, "a `ray start` command lacks RAY_SERVE_ENABLE_HA_PROXY=1: add it to head_start_ray_commands"),
    ("proxy", False, "ingress is proxy but a `ray start` command sets RAY_SERVE_ENABLE_HA_PROXY=1: remove it"),
    ("nginx", False, "ingress"),
])
def test_an_ingress_the_start_commands_contradict_is_one_clear_line(raw, tmp_path, setting, strip, message) -> None:
    with pytest.raises(ConfigError) as err:
        _spec(tmp_path, raw, setting, strip_flag=strip)
    assert message in str(err.value) and "Traceback" not in str(err.value)


def test_kuberay_pods_start_with_haproxy_unless_the_proxy_is_asked_for(raw, tmp_path) -> None:
    def envs(spec) -> list[dict]:
        ray_cluster = kuberay.render(spec)["raycluster.yaml"]["spec"]
        groups = [ray_cluster["headGroupSpec"], *ray_cluster["workerGroupSpecs"]]
        return [{e["name"]: e.get("value") for e in c["env"]} for g in groups for c in g["template"]["spec"]["containers"]]

    assert all(env.get("RAY_SERVE_ENABLE_HA_PROXY") == "1" for env in envs(_spec(tmp_path, raw)))
    assert all("RAY_SERVE_ENABLE_HA_PROXY" not in env for env in envs(_spec(tmp_path, raw, "proxy", strip_flag=True)))


def test_serve_binds_every_interface_only_for_haproxy_in_a_clusters_network(raw, tmp_path) -> None:
    spec = _spec(tmp_path, raw)
    remote, local = ClusterInfo(mode="remote", dashboard_url="x"), ClusterInfo(mode="local", dashboard_url="x")
    assert endpoints.serve_config(spec, [], remote)["http_options"]["host"] == "0.0.0.0"  # replicas on other nodes
    assert endpoints.serve_config(spec, [], local)["http_options"]["host"] == "127.0.0.1"
    proxy = _spec(tmp_path, raw, "proxy", strip_flag=True)
    assert endpoints.serve_config(proxy, [], remote)["http_options"]["host"] == "127.0.0.1"


def test_atoll_up_gives_serve_its_tuning_unless_the_environment_says_otherwise() -> None:
    from atoll.serving import proxy_auth

    env = cluster.serve_env({})
    assert env == {**ingress.SERVE_TUNING, proxy_auth.ENV_VAR: proxy_auth.IMPORT_PATH}
    assert "RAY_SERVE_USE_GRPC_BY_DEFAULT" not in cluster.serve_env({"RAY_SERVE_USE_GRPC_BY_DEFAULT": "0"})


@pytest.mark.cluster
def test_the_session_clusters_serve_runs_with_the_tuning(ray_cluster) -> None:
    """Every process `ray start` spawned inherits it (the raylet, then Serve's proxy and replicas)."""
    import psutil

    environs = [psutil.Process(p["pid"]).environ() for p in ray_cluster.processes if psutil.pid_exists(p["pid"])]
    assert environs and all(e.get(k) == v for e in environs for k, v in ingress.SERVE_TUNING.items())


def test_the_wrapper_hardens_the_config_rays_own_template_renders(tmp_path) -> None:
    """Ray 2.60's HAProxy template, rendered: every rule of atoll.ingress.harden applies (a Ray whose template
    changes fails here, not silently on a cluster), and the result still routes and checks health."""
    import jinja2
    from ray.serve._private.haproxy_templates import HAPROXY_CONFIG_TEMPLATE

    env = jinja2.Environment()
    env.filters["haproxy_fmt"] = lambda text: text
    config = {"socket_path": "/s/admin.sock", "metrics_port": 9101, "stats_port": 8404, "frontend_host": "0.0.0.0",
              "frontend_port": 8000, "stats_uri": "/stats"}
    rendered = env.from_string(HAPROXY_CONFIG_TEMPLATE).render(config=config, route_info={
        "status": 200, "routes_content_type": "application/json", "routes_message": '{\\"/digits\\":\\"digits\\"}'})
    hardened, missing = ingress.harden(rendered)
    assert missing == []
    assert "stats socket /s/admin.sock mode 600 level admin" in hardened and "mode 666" not in hardened
    assert "bind 127.0.0.1:9101" in hardened and "bind 127.0.0.1:8404" in hardened
    assert "bind 0.0.0.0:8000" in hardened  # the frontend stays where Serve's host says
    assert "digits" not in hardened and "http-request return status 403" in hardened
    assert ingress.harden("global\n")[1] == ["admin socket mode", "Prometheus listener", "stats listener", "/-/routes"]
    assert ingress.harden(hardened) == (hardened, [])  # again (a restarted HAProxy): the same, nothing "missing"
    # Ray starts it with RAY_SERVE_HAPROXY_BINARY_PATH naming the wrapper itself: it must still become HAProxy,
    # having rewritten the config in place (whole, no temporary file left).
    wrapper, path = ingress.wrapper_path(), tmp_path / "haproxy.cfg"
    path.write_text(rendered + "\n")  # as Ray writes it
    ran = subprocess.run([wrapper, "-v", "-f", str(path)], capture_output=True, text=True, timeout=30,
                         env={**os.environ, ingress.BINARY_VAR: wrapper})
    assert ran.returncode == 0 and ran.stdout.startswith("HAProxy version"), ran.stdout + ran.stderr
    assert path.read_text() == hardened + "\n" and [p.name for p in tmp_path.iterdir()] == ["haproxy.cfg"]
    assert "atoll-haproxy" not in ran.stderr  # nothing reported missing


def test_the_local_clusters_haproxy_files_go_in_a_private_folder_short_enough_for_a_socket() -> None:
    mark = os.urandom(8).hex()
    env = ingress.private_files(mark)
    try:
        folder = ingress.files_dir(mark)
        assert oct(folder.stat().st_mode & 0o777) == "0o700"
        assert env["RAY_SERVE_HAPROXY_SOCKET_PATH"] == str(folder / "admin.sock")
        node_id = "f" * 56  # Ray puts each node's files under its id
        assert len(os.path.join(folder, node_id, "admin.sock")) < 108  # a unix socket's path limit
        with pytest.raises(FileExistsError):  # never one that exists already (another user's, planted)
            ingress.private_files(mark)
    finally:
        ingress.remove_files(mark)
    assert not ingress.files_dir(mark).exists()


# ---- HAProxy for real, inside a network namespace

KEY = "namespace-key-0123456789"
PORTS = (6390, 8275, 8010)  # GCS, dashboard, Serve


def _can_unshare() -> bool:
    return bool(shutil.which("unshare") and shutil.which("ip")) and \
        subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode == 0


@pytest.mark.cluster
@pytest.mark.skipif(not _can_unshare(), reason="no network namespaces here (`unshare -n` refused)")
def test_everything_serves_through_haproxy_in_a_namespace_and_keyless_requests_never_queue(
        trained_digits, trained_writer, tmp_path) -> None:
    """A cluster of its own (the session's runs on the host's loopback; this one on the namespace's), cluster.yaml's
    ingress set to haproxy; tests/haproxy_probe.py deploys the session's digits model with a key and its language
    model, and drives every feature through HAProxy (issue 36.2-3)."""
    from atoll import config as atoll_config
    from atoll import registry

    # Its own ports and Ray temp dir: Ray finds the session's cluster through /tmp/ray, which namespaces share
    config = atoll_config.write_local_variant(tmp_path / "cluster.yaml", port=PORTS[0], dashboard_port=PORTS[1],
                                              serve_port=PORTS[2], source=REPO / "cluster.yaml")
    raw = yaml.safe_load(config.read_text())
    raw["metadata"]["atoll"]["serve"]["ingress"] = "haproxy"
    config.write_text(yaml.safe_dump(raw))
    reg = registry.Registry(os.environ["ATOLL_STORAGE"])
    live = reg.get(f"digits:{trained_digits['registered']['version']}")
    following = copy_version(reg, live, tmp_path / "next").ref
    writer = f"{trained_writer['registered']['name']}:{trained_writer['registered']['version']}"
    home = str(tmp_path / "home")
    args = json.dumps({"port": PORTS[2], "key": KEY, "home": home, "live": live.ref, "next": following,
                       "writer": writer})
    atoll = os.path.join(os.path.dirname(sys.executable), "atoll")
    script = textwrap.dedent(f'''
        set -e
        ip link set lo up
        export ATOLL_HOME={home} ATOLL_CLUSTER_CONFIG={config} RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S=1
        trap '{atoll} down > /dev/null 2>&1' EXIT
        {atoll} up --num-cpus 4 > {tmp_path}/up.log 2>&1
        {sys.executable} {REPO}/tests/haproxy_probe.py '{args}'
        {atoll} serve status --json > {tmp_path}/status.json
    ''')
    done = subprocess.run(["unshare", "-n", "sh", "-c", script], capture_output=True, text=True, timeout=500,
                          env={k: v for k, v in os.environ.items() if k not in ("ATOLL_HOME", "RAY_ADDRESS")})
    up_log = (tmp_path / "up.log").read_text() if (tmp_path / "up.log").exists() else ""
    assert done.returncode == 0, (done.stdout + done.stderr + up_log)[-4000:]
    probe = json.loads(next(line for line in done.stdout.splitlines() if line.startswith("PROBE "))[6:])
    print(probe)  # shown with a failure, and with -s

    # 36.2: the key before any queue, even under a flood
    assert probe["keyless"] == [401, "proxy"]  # Atoll's middleware, outside the replica's queue
    assert probe["keyed"] == [200, live.ref] and probe["card"] == "haproxy"
    # Atoll's wrapper (atoll-haproxy): HAProxy's stats and metrics on loopback, not on every interface as Ray binds
    # them; its admin socket 0600 in a 0700 folder of the cluster's own; no app list without a key
    listening = probe["listeners"]
    assert {f"127.0.0.1:{PORTS[2]}", "127.0.0.1:8404", "127.0.0.1:9101"} <= set(listening), listening
    assert not [a for a in listening if a.rsplit(":", 1)[-1] in ("8404", "9101") and a.startswith(("0.0.0.0", "*"))]
    files = probe["haproxy_files"]
    assert files["config"].startswith(str(ingress.files_dir("x").parent / "atoll-haproxy-")), files
    assert (files["folder_mode"], files["socket_mode"]) == ("0o700", "0o600"), files
    assert not Path(files["config"]).parent.parent.exists()  # `atoll down` removed it
    assert probe["routes"] == [403, False]
    flood = probe["flood"]
    assert flood["refused"] > 100 and flood["ok"] / (flood["ok"] + flood["failed"]) >= 0.99, flood
    # 36.3: the pages, both protocols (OpenAI's streamed), batching, autoscaling, rollover, a replica's death
    assert probe["pages"] == {"gallery": [200, "text/html"], "apps": ["digits", "writer"], "playground": 200,
                              "redirect": "/digits/ui", "chat": 200}, probe["pages"]
    assert probe["v2"] == [200, ["predictions", "probabilities"]], probe["v2"]
    assert probe["stream_status"] == 200 and probe["stream"]["done"] and probe["stream"]["chunks"] >= 4, probe
    assert probe["load"]["failed"] == 0 and probe["mean_batch"] > 1.1, probe  # 16 clients share batches (1.4-1.7 here)
    assert probe["scaled_up_s"] < 120  # (the probe fails outright past 120 s)
    rollover = probe["rollover"]
    assert rollover["failed"] == 0 and (rollover["first"], rollover["last"]) == (live.ref, following), rollover
    kill = probe["kill"]
    assert kill["failed"] <= 0.01 * kill["answers"], kill
    status = json.loads((tmp_path / "status.json").read_text())
    assert {row["app"]: row["ingress"] for row in status} == {"digits": "haproxy", "writer": "haproxy"}, status

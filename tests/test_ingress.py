"""The HTTP ingress (issue 36): Ray's HAProxy on clusters, Serve's proxy on the embedded local cluster, the choice
in cluster.yaml and what each start path is given; and HAProxy run for real inside a network namespace this test
makes (its stats and metrics ports bind every interface: reachable from nothing outside the namespace), where a
keyed app refuses keyless requests before any queue, even under a flood."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import yaml
from atoll import cluster, ingress, kuberay
from atoll.cluster import ClusterInfo
from atoll.errors import ConfigError
from atoll.serving import endpoints
from conftest import REPO


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


# ---- HAProxy for real, inside a network namespace

KEY = "namespace-key-0123456789"
PORTS = (6390, 8275, 8010)  # GCS, dashboard, Serve
PROBE = textwrap.dedent('''
    import asyncio, json, subprocess, time, httpx
    url, key = "http://127.0.0.1:%d/digits", {"Authorization": "Bearer %s"}
    row = [0.0] * 64
    out = {}
    r = httpx.post(url + "/predict", json={"inputs": [row]}, timeout=30)
    out["keyless"] = [r.status_code, r.headers.get("x-atoll-refused-by")]
    r = httpx.post(url + "/predict", json={"inputs": [row]}, headers=key, timeout=30)
    out["keyed"] = [r.status_code, r.headers.get("x-atoll-version")]
    out["card"] = httpx.get(url + "/", headers=key, timeout=30).json().get("ingress")
    out["listeners"] = subprocess.run(["ss", "-ltnH"], capture_output=True, text=True).stdout.split()

    async def flood():
        counts = {"refused": 0, "ok": 0, "failed": 0}
        stop = time.monotonic() + 6
        async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=64)) as c:
            async def keyless():
                while time.monotonic() < stop:
                    r = await c.post(url + "/predict", json={"inputs": [row]})
                    counts["refused"] += r.status_code == 401
            async def keyed():
                while time.monotonic() < stop:
                    r = await c.post(url + "/predict", json={"inputs": [row]}, headers=key)
                    counts["ok" if r.status_code == 200 else "failed"] += 1
            await asyncio.gather(*[keyless() for _ in range(32)], *[keyed() for _ in range(2)])
        return counts
    out["flood"] = asyncio.run(flood())
    print("PROBE " + json.dumps(out))
''') % (PORTS[2], KEY)


def _can_unshare() -> bool:
    return bool(shutil.which("unshare") and shutil.which("ip")) and \
        subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode == 0


@pytest.mark.cluster
@pytest.mark.skipif(not _can_unshare(), reason="no network namespaces here (`unshare -n` refused)")
def test_haproxy_in_a_namespace_refuses_keyless_requests_before_any_queue_even_under_a_flood(
        trained_digits, tmp_path) -> None:
    """A cluster of its own (the session's runs on the host's loopback; this one on the namespace's), cluster.yaml's
    ingress set to haproxy, the session's digits version deployed with a key."""
    from atoll import config as atoll_config

    # Its own ports and Ray temp dir: Ray finds the session's cluster through /tmp/ray, which namespaces share
    config = atoll_config.write_local_variant(tmp_path / "cluster.yaml", port=PORTS[0], dashboard_port=PORTS[1],
                                              serve_port=PORTS[2], source=REPO / "cluster.yaml")
    raw = yaml.safe_load(config.read_text())
    raw["metadata"]["atoll"]["serve"]["ingress"] = "haproxy"
    config.write_text(yaml.safe_dump(raw))
    (tmp_path / "probe.py").write_text(PROBE)
    atoll = os.path.join(os.path.dirname(sys.executable), "atoll")
    ref = f"digits:{trained_digits['registered']['version']}"
    script = textwrap.dedent(f'''
        set -e
        ip link set lo up
        export ATOLL_HOME={tmp_path}/home ATOLL_CLUSTER_CONFIG={config} RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S=1
        trap '{atoll} down > /dev/null 2>&1' EXIT
        {atoll} up --num-cpus 2 > {tmp_path}/up.log 2>&1
        ATOLL_API_KEY={KEY} {atoll} serve deploy {ref} --replicas 1:1 --set num_cpus_per_replica=0.5 \\
            > {tmp_path}/deploy.log 2>&1
        {sys.executable} {tmp_path}/probe.py
        {atoll} serve status --json > {tmp_path}/status.json
    ''')
    done = subprocess.run(["unshare", "-n", "sh", "-c", script], capture_output=True, text=True, timeout=400,
                          env={k: v for k, v in os.environ.items() if k not in ("ATOLL_HOME", "RAY_ADDRESS")})
    logs = "".join((tmp_path / f).read_text() for f in ("up.log", "deploy.log") if (tmp_path / f).exists())
    assert done.returncode == 0, (done.stdout + done.stderr + logs)[-4000:]
    probe = json.loads(next(line for line in done.stdout.splitlines() if line.startswith("PROBE "))[6:])
    assert probe["keyless"] == [401, "proxy"]  # Atoll's middleware, outside the replica's queue
    assert probe["keyed"] == [200, ref] and probe["card"] == "haproxy"
    listening = " ".join(probe["listeners"])
    assert f"127.0.0.1:{PORTS[2]}" in listening and "0.0.0.0:8404" in listening  # HAProxy's, in the namespace only
    flood = probe["flood"]
    assert flood["refused"] > 100 and flood["ok"] / (flood["ok"] + flood["failed"]) >= 0.99, flood
    status = json.loads((tmp_path / "status.json").read_text())
    assert [row["ingress"] for row in status] == ["haproxy"], status

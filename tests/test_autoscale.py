"""Autoscaling from cluster.yaml, simulated on this machine: Ray's real autoscaler driving Ray's fake
multi-node provider (`atoll up --simulate`). Its own cluster (own ports, own ATOLL_HOME), beside the
session's shared one."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from atoll import capacity, cluster, config
from conftest import REPO, run_cli
from ray.autoscaler._private.util import validate_config

NEED_TWO_CPUS = '''
import time, ray
ray.init()

@ray.remote(num_cpus=1)
def hold(seconds):
    import os
    time.sleep(seconds)
    return os.environ.get("RAY_NODE_TYPE_NAME")

print("ran on", ray.get([hold.remote(4), hold.remote(4)]))
'''


def _small_cluster_yaml(path: Path) -> Path:
    """The repo's cluster.yaml with a 0-CPU head and a 1-CPU worker type (max 2), on private ports: bench/autoscale.py
    measures one like it."""
    node_types = {"head": {"node_config": {}, "resources": {"CPU": 0}, "max_workers": 0},
                  "cpu": {"node_config": {}, "resources": {"CPU": 1, "memory": 2_000_000_000}, "min_workers": 0,
                          "max_workers": 2}}
    return config.write_local_variant(path, port=6390, dashboard_port=8275, serve_port=8010, max_workers=2,
                                      source=REPO / "cluster.yaml", node_types=node_types)


def test_simulation_config_carries_cluster_yaml_node_types_and_passes_rays_validator():
    spec = cluster.load_spec(REPO / "cluster.yaml")
    config = cluster.simulation_config(spec, idle_timeout_minutes=0.5)
    validate_config(config)  # Ray's own schema: the config is complete
    types = config["available_node_types"]
    assert set(types) == {cluster.SIMULATED_HEAD_TYPE, "cpu", "gpu"}
    assert types["cpu"]["min_workers"] == 1 and types["cpu"]["max_workers"] == 8
    assert types["gpu"]["resources"] == {"CPU": 8, "GPU": 1}  # memory is Ray's reserved name: left out
    assert types[cluster.SIMULATED_HEAD_TYPE]["max_workers"] == 0
    assert config["provider"]["type"] == "fake_multinode"
    assert (config["max_workers"], config["upscaling_speed"], config["idle_timeout_minutes"]) == (10, 1.0, 0.5)
    assert cluster.simulation_config(spec)["idle_timeout_minutes"] == 5  # cluster.yaml's, when not overridden


def test_demand_no_node_type_can_hold_is_called_infeasible():
    nodes = [{"CPU": 0.0}, {"CPU": 1.0}]  # a CPU-only cluster
    demand = [{"shape": {"CPU": 1.0}, "count": 2}, {"shape": {"GPU": 1.0}, "count": 1},
              {"shape": "placement group", "bundles": [{"CPU": 1.0}, {"CPU": 4.0}]}]
    bad = capacity.infeasible(demand, nodes)
    assert [d["fits_no_node"] for d in bad] == [[{"GPU": 1.0}], [{"CPU": 4.0}]]


def _worker_nodes(env: dict[str, str]) -> list[dict]:
    result = run_cli("status", "--json", env=env)
    assert result.returncode == 0, result.stderr
    return [n for n in json.loads(result.stdout)["nodes"] if n["type"] == "cpu"]


@pytest.mark.slow
def test_work_scales_the_simulated_cluster_up_then_idle_nodes_go(tmp_path):
    home = tmp_path / "home"
    env = {"ATOLL_HOME": str(home), "ATOLL_STORAGE": str(tmp_path / "storage"),
           "ATOLL_CLUSTER_CONFIG": str(_small_cluster_yaml(tmp_path / "cluster.yaml"))}
    job_dir = tmp_path / "job"
    job_dir.mkdir()
    (job_dir / "need_two_cpus.py").write_text(NEED_TWO_CPUS)

    started = run_cli("up", "--simulate", "--idle-timeout", "0.2", "--json", env=env)
    assert started.returncode == 0, started.stderr
    info = cluster.ClusterInfo(**{k: v for k, v in json.loads(started.stdout).items() if k != "already_up"})
    try:
        assert info.mode == "simulated" and _worker_nodes(env) == []  # min_workers 0: only the head
        submitted = run_cli("submit", "--json", "--working-dir", str(job_dir), "--", "python", "need_two_cpus.py",
                            env=env)
        assert submitted.returncode == 0, submitted.stderr
        job_id = json.loads(submitted.stdout)["id"]

        t0, deadline = time.monotonic(), time.monotonic() + 90
        while len([n for n in _worker_nodes(env) if n["alive"]]) < 2:  # the head has no CPU: two must come
            assert time.monotonic() < deadline, "no scale-up to 2 worker nodes"
            time.sleep(1)
        scale_up_s = time.monotonic() - t0

        waited = run_cli("jobs", "logs", job_id, "--follow", env=env, timeout=120)
        assert "ran on ['cpu', 'cpu']" in waited.stdout, waited.stdout + waited.stderr
        status = json.loads(run_cli("status", "--json", env=env).stdout)
        assert any("Adding" in e and "type cpu" in e for e in status["autoscaler_events"])

        deadline = time.monotonic() + 12 + 60  # idle timeout + slack
        while any(n["alive"] for n in _worker_nodes(env)):
            assert time.monotonic() < deadline, "idle worker nodes were not removed"
            time.sleep(2)
        status = json.loads(run_cli("status", "--json", env=env).stdout)
        assert any("Removing" in e and "idle" in e for e in status["autoscaler_events"])
        print(f"scale-up to 2 nodes: {scale_up_s:.1f} s")
    finally:
        assert run_cli("down", env=env).returncode == 0
    assert cluster.ray_processes_of(info) == []
    assert not (home / "cluster.json").exists()
    assert os.environ.get("ATOLL_HOME") != str(home)  # the session's own cluster record is untouched

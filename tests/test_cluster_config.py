"""cluster.yaml: valid for Ray as it is; every kind of broken file gets its own clear message."""

from __future__ import annotations

import copy
import json

import pytest
import yaml
from atoll import cluster
from atoll.errors import ConfigError
from conftest import REPO, run_cli


@pytest.fixture()
def raw() -> dict:
    return yaml.safe_load((REPO / "cluster.yaml").read_text())


def write(tmp_path, data) -> str:
    path = tmp_path / "cluster.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return str(path)


def test_repo_cluster_yaml_passes_rays_own_validator(raw):
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(raw)))  # raises if Ray would refuse `ray up`
    spec = cluster.load_spec(REPO / "cluster.yaml")
    assert spec.head_node_type == "head"
    assert set(spec.worker_types()) == {"cpu", "gpu"}
    assert spec.has_gpu_nodes
    assert spec.available_node_types["gpu"].resources["GPU"] == 1
    assert spec.atoll.local.host == "127.0.0.1" and spec.atoll.serve.host == "127.0.0.1"


def test_storage_env_overrides_cluster_yaml(monkeypatch, tmp_path):
    monkeypatch.setenv("ATOLL_STORAGE", str(tmp_path / "s"))
    assert cluster.load_spec(REPO / "cluster.yaml").atoll.storage == str(tmp_path / "s")


def _break(raw, how):
    data = copy.deepcopy(raw)
    how(data)
    return data


BROKEN = {
    "missing head type": (lambda d: d.pop("head_node_type"), "head_node_type"),
    "head type not declared": (lambda d: d.update(head_node_type="haed"), "did you mean 'head'"),
    "negative max_workers": (lambda d: d["available_node_types"]["cpu"].update(max_workers=-1),
                             "available_node_types.cpu.max_workers: must be >= 0"),
    "min above max": (lambda d: d["available_node_types"]["gpu"].update(min_workers=4, max_workers=2),
                      "available_node_types.gpu.max_workers: must be >= min_workers (2 < 4)"),
    "unknown top-level key": (lambda d: d.update(idle_timeout_minute=3), "did you mean 'idle_timeout_minutes'"),
    "wrong type": (lambda d: d.update(max_workers="ten"), "max_workers"),
    "sum of min above global max": (lambda d: d.update(max_workers=0), "less than the sum of min_workers"),
    "unknown atoll key": (lambda d: d["metadata"]["atoll"].update(storge="/x"), "metadata.atoll.storge: unknown key; did you mean 'storage'"),
    "bad serve bounds": (lambda d: d["metadata"]["atoll"]["serve"].update(min_replicas=3, max_replicas=1),
                         "min_replicas must be <= max_replicas"),
    "missing provider": (lambda d: d.pop("provider"), "provider"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_cluster_yaml_names_the_field(raw, tmp_path, case):
    how, expected = BROKEN[case]
    path = write(tmp_path, _break(raw, how))
    with pytest.raises(ConfigError) as err:
        cluster.load_spec(path)
    assert expected in str(err.value)
    assert str(tmp_path) in str(err.value)  # says which file


def test_bad_yaml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match=r"invalid YAML at line \d+, column \d+"):
        cluster.load_spec(write(tmp_path, "cluster_name: x\nprovider: [unclosed\n"))
    with pytest.raises(ConfigError, match="file not found"):
        cluster.load_spec(tmp_path / "nope.yaml")


def test_cli_reports_a_broken_file_in_one_line_without_traceback(raw, tmp_path):
    path = write(tmp_path, _break(raw, lambda d: d["available_node_types"]["cpu"].update(max_workers=-1)))
    result = run_cli("up", "-c", path)
    assert result.returncode == 2
    assert "max_workers: must be >= 0" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_cloud_up_and_down_delegate_to_rays_cluster_launcher():
    result = run_cli("up", "--cloud", "--dry-run", "-c", str(REPO / "cluster.yaml"))
    assert result.returncode == 0, result.stderr
    assert f"ray up {REPO / 'cluster.yaml'} -y" in result.stdout
    result = run_cli("down", "--cloud", "--dry-run", "-c", str(REPO / "cluster.yaml"))
    assert f"ray down {REPO / 'cluster.yaml'} -y" in result.stdout


def test_commands_without_a_cluster_say_so(tmp_path):
    result = run_cli("status", env={"ATOLL_HOME": str(tmp_path)})
    assert result.returncode == 1
    assert "no cluster is up" in result.stderr and "atoll up" in result.stderr
    result = run_cli("jobs", "list", env={"ATOLL_HOME": str(tmp_path)})
    assert result.returncode == 1 and "no cluster is up" in result.stderr


def test_token_file_is_created_private(tmp_path, monkeypatch):
    from atoll import auth

    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "tok"))
    path = auth.ensure_token()
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    token = path.read_text()
    assert len(token) >= 32 and auth.ensure_token().read_text() == token  # never overwritten
    path.chmod(0o644)
    auth.ensure_token()
    assert oct(path.stat().st_mode & 0o777) == "0o600"


# Run in a fresh interpreter: pytest's collection has already imported most of atoll in this one.
IMPORT_EVERY_MODULE = """
import importlib, json, os, pkgutil, threading
import psutil
before = dict(os.environ)
import atoll
names = [m.name for m in pkgutil.walk_packages(atoll.__path__, "atoll.")]
for name in names:
    importlib.import_module(name)
import ray
print(json.dumps({
    "modules": names,
    "env": {k: os.environ.get(k) for k in set(before) | set(os.environ) if os.environ.get(k) != before.get(k)},
    "ray_initialized": ray.is_initialized(),
    "children": [p.pid for p in psutil.Process().children(recursive=True)],
    "threads": [t.name for t in threading.enumerate()],
}))
"""


def test_every_module_imports_without_side_effects(tmp_path):
    """Importing every atoll module changes no environment variable (but the one `import ray` itself sets),
    starts no Ray, no process and no thread, and creates no file (in the cwd, HOME, ATOLL_HOME or TMPDIR)."""
    import os
    import subprocess
    import sys

    dirs = {name: tmp_path / name for name in ("cwd", "home", "tmp")}
    for path in dirs.values():
        path.mkdir()
    env = {**os.environ, "HOME": str(dirs["home"]), "TMPDIR": str(dirs["tmp"]),
           "ATOLL_HOME": str(tmp_path / "atoll_home"), "ATOLL_STORAGE": str(tmp_path / "storage")}
    out = subprocess.run([sys.executable, "-c", IMPORT_EVERY_MODULE], cwd=dirs["cwd"], env=env, check=False,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert {"atoll.cli", "atoll.serving.replica", "atoll.train", "atoll.tune"} <= set(seen["modules"])
    assert seen["env"] in ({}, {"RAY_CLIENT_MODE": "0"}), seen["env"]  # `import ray` sets RAY_CLIENT_MODE=0
    assert not seen["ray_initialized"]
    assert seen["children"] == [] and seen["threads"] == ["MainThread"], seen
    created = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p not in dirs.values())
    assert created == [], created


def test_a_local_cluster_off_the_default_port_gets_a_ray_temp_dir_of_its_own():
    """Ray's job agent runs each job's driver on "the latest cluster started here", read from its temp dir: two
    local clusters (a test's second cluster beside the session's) must not share one."""
    from atoll import cluster

    default = cluster.local_start_command(cluster.load_spec(REPO / "cluster.yaml"))
    assert "--temp-dir=/tmp/ray" in default  # Ray's own tools find the default cluster where they look
    assert {cluster.ray_temp_dir(p) for p in (6379, 6390, 6391)} == {"/tmp/ray", "/tmp/ray-6390", "/tmp/ray-6391"}

"""The cluster's image (issue 20), checked without a Docker daemon: ./Dockerfile builds FROM Ray's image for
the very Ray this project pins, installs every dependency pinned (docker/requirements.lock, the tested
versions) and this project; cluster.yaml's `docker:` section and the rendered KubeRay manifests name the same
image."""

from __future__ import annotations

import importlib.metadata as md
import re
import tomllib

import yaml
from atoll import cluster, kuberay
from conftest import REPO
from packaging.requirements import Requirement


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _lock() -> dict[str, str]:
    lines = [ln for ln in (REPO / "docker" / "requirements.lock").read_text().splitlines() if ln and ln[0] != "#"]
    pins = dict(ln.split("==") for ln in lines)
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+==[0-9][A-Za-z0-9.]*", ln) for ln in lines), "a line is not name==version"
    return {_norm(k): v for k, v in pins.items()}


def test_the_image_builds_from_rays_image_for_the_pinned_ray():
    dockerfile = (REPO / "Dockerfile").read_text()
    base = re.search(r"^ARG BASE=(\S+)$", dockerfile, re.M).group(1)
    assert re.search(r"^FROM \$\{BASE\}$", dockerfile, re.M)
    ray = _lock()["ray"]
    assert ray == md.version("ray") == cluster.load_spec(REPO / "cluster.yaml").atoll.k8s.ray_version
    assert base == f"rayproject/ray:{ray}-py311" == kuberay.STOCK_IMAGE
    assert "-r /tmp/requirements.lock" in dockerfile and "--no-deps -e /home/ray/atoll" in dockerfile


def test_every_dependency_is_pinned_to_the_version_the_tests_ran_on():
    pins = _lock()
    declared = [Requirement(r) for r in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]]
    for req in declared:
        assert _norm(req.name) in pins, f"{req.name} is a dependency but not in docker/requirements.lock"
        assert req.specifier.contains(pins[_norm(req.name)], prereleases=True), (req, pins[_norm(req.name)])
    for name, version in pins.items():  # the lock is the environment the tests run in (regenerate: docker/lock.py)
        assert md.version(name).split("+")[0] == version, f"{name}: locked {version}, installed {md.version(name)}"


def test_cluster_yaml_and_the_kubernetes_manifests_name_the_same_image():
    raw = yaml.safe_load((REPO / "cluster.yaml").read_text())
    spec = cluster.load_spec(REPO / "cluster.yaml")
    rendered = kuberay.raycluster(spec)["spec"]
    head = rendered["headGroupSpec"]["template"]["spec"]["containers"][0]["image"]
    workers = {g["groupName"]: g["template"]["spec"]["containers"][0]["image"] for g in rendered["workerGroupSpecs"]}
    assert head == workers["cpu"] == raw["docker"]["image"]
    assert workers["gpu"] == raw["available_node_types"]["gpu"]["docker"]["worker_image"] == f"{head}-gpu"
    assert "docker build -t " + head in (REPO / "Dockerfile").read_text()

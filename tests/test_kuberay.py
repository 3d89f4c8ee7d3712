"""`atoll k8s render`: KubeRay manifests for the cluster.yaml cluster, checked against KubeRay's own CRD schemas
(tests/data/kuberay-crds, copied from ray-project/kuberay) and read back by Ray's own KubeRay autoscaler code.

No Kubernetes and no Ray cluster needed.
"""

from __future__ import annotations

import copy
import functools
import importlib.util
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import typer
import yaml
from atoll import apikeys, cluster, kuberay
from atoll.cli.k8s import k8s_app
from atoll.errors import ConfigError
from atoll.serving import endpoints, playground
from conftest import REPO
from typer.testing import CliRunner

CRD_DIR = Path(__file__).resolve().parent / "data" / "kuberay-crds"
CRD_FILES = {"RayCluster": "ray.io_rayclusters.yaml", "RayJob": "ray.io_rayjobs.yaml",
             "RayService": "ray.io_rayservices.yaml"}
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


# ------------------------------------------------------------------------------------------------
# KubeRay's CRD schemas as jsonschema validators
#
# A CRD's openAPIV3Schema is OpenAPI v3 plus Kubernetes extensions. What the API server does with them, and
# how it is reproduced here so that validation is real:
#   x-kubernetes-int-or-string: true   → anyOf integer/string (where the CRD does not already say so)
#   nullable: true                     → null allowed as well
#   unknown fields                     → rejected (kubectl's default strict field validation): every object
#                                        schema with `properties` gets additionalProperties: false
#   x-kubernetes-list-type: set / map  → items unique / unique by x-kubernetes-list-map-keys (with defaults)
#   format int32 / int64               → range checked
#   x-kubernetes-validations (CEL)     → not evaluated; instead the tests assert the manifests set none of
#                                        the fields that carry such rules (see cel_paths).


def _to_jsonschema(node: Any, path: tuple[str, ...], cel: list[tuple[str, ...]]) -> Any:
    if isinstance(node, list):
        return [_to_jsonschema(n, path, cel) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: v for k, v in node.items() if k != "description"}
    if "x-kubernetes-validations" in out:
        cel.append(path)
    if out.get("x-kubernetes-int-or-string") and "type" not in out and "anyOf" not in out:
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if out.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if ("properties" in out and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    if "properties" in out:
        out["properties"] = {k: _to_jsonschema(v, path + (k,), cel) for k, v in out["properties"].items()}
    if isinstance(out.get("items"), dict):
        out["items"] = _to_jsonschema(out["items"], path + ("*",), cel)
    if isinstance(out.get("additionalProperties"), dict):
        out["additionalProperties"] = _to_jsonschema(out["additionalProperties"], path + ("*",), cel)
    for key in ("anyOf", "allOf", "oneOf"):
        if key in out:
            out[key] = _to_jsonschema(out[key], path, cel)
    return out


def _list_type(validator, list_type, instance, schema):
    if not validator.is_type(instance, "array"):
        return
    if list_type == "set":
        seen = [json.dumps(i, sort_keys=True) for i in instance]
        if len(seen) != len(set(seen)):
            yield jsonschema.ValidationError(f"x-kubernetes-list-type set: duplicate items in {instance!r}")
    elif list_type == "map":
        keys = schema.get("x-kubernetes-list-map-keys", [])
        props = (schema.get("items") or {}).get("properties", {})
        seen = set()
        for item in instance:
            if not isinstance(item, dict):
                continue
            key = tuple(json.dumps(item.get(k, props.get(k, {}).get("default"))) for k in keys)
            if key in seen:
                yield jsonschema.ValidationError(f"x-kubernetes-list-type map: duplicate {dict(zip(keys, key))}")
            seen.add(key)


_formats = jsonschema.FormatChecker()
_formats.checks("int32")(lambda v: not isinstance(v, int) or -(2**31) <= v < 2**31)
_formats.checks("int64")(lambda v: not isinstance(v, int) or -(2**63) <= v < 2**63)
K8sValidator = jsonschema.validators.extend(jsonschema.Draft7Validator, {"x-kubernetes-list-type": _list_type})


@functools.cache
def crd(kind: str) -> tuple[Any, tuple[tuple[str, ...], ...]]:
    """(validator, paths of fields with CEL rules) for one of KubeRay's kinds, from its v1 schema."""
    doc = yaml.load((CRD_DIR / CRD_FILES[kind]).read_text(), Loader=_Loader)
    assert doc["spec"]["names"]["kind"] == kind
    (version,) = [v for v in doc["spec"]["versions"] if v["name"] == "v1"]
    cel: list[tuple[str, ...]] = []
    schema = _to_jsonschema(version["schema"]["openAPIV3Schema"], (), cel)
    return K8sValidator(schema, format_checker=_formats), tuple(cel)


def _present(doc: Any, path: tuple[str, ...]) -> bool:
    if not path:
        return True
    head, rest = path[0], path[1:]
    if head == "*":
        values = doc if isinstance(doc, list) else list(doc.values()) if isinstance(doc, dict) else []
        return any(_present(v, rest) for v in values)
    return isinstance(doc, dict) and head in doc and _present(doc[head], rest)


def validate(manifest: dict[str, Any]) -> None:
    """Validate like the API server would (what this file can reproduce; see the header)."""
    assert manifest["apiVersion"] == "ray.io/v1"
    validator, cel = crd(manifest["kind"])
    errors = sorted(validator.iter_errors(manifest), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in errors[:10])
    touched = [".".join(p) for p in cel if _present(manifest, p)]
    assert not touched, f"fields with CEL rules that this test cannot evaluate: {touched}"


def schema_errors(manifest: dict[str, Any]) -> list[str]:
    validator, _ = crd(manifest["kind"])
    return [e.message for e in validator.iter_errors(manifest)]


# ------------------------------------------------------------------------------------------------
# cluster.yaml variants


@pytest.fixture()
def raw() -> dict:
    return yaml.safe_load((REPO / "cluster.yaml").read_text())


def spec_of(tmp_path: Path, data: dict, name: str = "cluster.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return cluster.load_spec(path)


def no_gpu(raw: dict) -> dict:
    data = copy.deepcopy(raw)
    del data["available_node_types"]["gpu"]
    return data


def many_types(raw: dict) -> dict:
    data = copy.deepcopy(raw)
    types = data["available_node_types"]
    types["cpu_small"] = {"node_config": {"InstanceType": "m6i.xlarge"}, "min_workers": 2, "max_workers": 4,
                          "resources": {"CPU": 4, "memory": 16 * 1024**3, "spot": 1}}
    types["gpu4"] = {"node_config": {"InstanceType": "g5.12xlarge"}, "min_workers": 0, "max_workers": 1,
                     "resources": {"CPU": 48, "GPU": 4, "memory": 192 * 1024**3}}
    types["gpu"]["min_workers"] = 1
    data["max_workers"] = 16
    data["upscaling_speed"] = 100
    data["idle_timeout_minutes"] = 0.5
    data["metadata"]["atoll"]["k8s"] = {"image": "registry.example.com/atoll:0.1.0",
                                        "gpu_image": "registry.example.com/atoll:0.1.0-cuda",
                                        "storage": "s3://team/atoll", "auth_secret": "team-ray-token"}
    return data


VARIANTS = {"repo": lambda raw: raw, "no-gpu": no_gpu, "many-types": many_types}


@pytest.fixture(params=sorted(VARIANTS))
def variant(request, raw, tmp_path):
    return spec_of(tmp_path, VARIANTS[request.param](raw))


def containers(cluster_spec: dict) -> list[dict]:
    groups = [cluster_spec["headGroupSpec"], *cluster_spec["workerGroupSpecs"]]
    return [c for g in groups for c in g["template"]["spec"]["containers"]]


# ------------------------------------------------------------------------------------------------
# The manifests are valid KubeRay objects


def test_crd_validation_is_real():
    """The validator built from the CRDs rejects what the API server would: unknown fields, bad enums,
    malformed quantities, wrong types, duplicate list-map keys."""
    good = kuberay.raycluster(cluster.load_spec(REPO / "cluster.yaml"))
    validate(good)

    def broken(how) -> str:
        bad = copy.deepcopy(good)
        how(bad)
        return "\n".join(schema_errors(bad))

    def worker(m):
        return m["spec"]["workerGroupSpecs"][0]

    def ray_container(m):
        return worker(m)["template"]["spec"]["containers"][0]
    cases = [
        (lambda m: worker(m).update(minReplica=1), "'minReplica' was unexpected"),  # a typo: unknown field
        (lambda m: m["spec"]["autoscalerOptions"].update(upscalingMode="Fast"), "'Fast' is not one of"),
        (lambda m: ray_container(m)["resources"]["limits"].update(cpu="4 cores"), "'4 cores' does not match"),
        (lambda m: worker(m).update(maxReplicas="8"), "'8' is not of type 'integer'"),
        (lambda m: worker(m).update(maxReplicas=2**31), "is not a 'int32'"),
        (lambda m: worker(m).pop("groupName"), "'groupName' is a required property"),
        (lambda m: ray_container(m)["ports"].append({"name": "x", "containerPort": 8000}), "list-type map: duplicate"),
        (lambda m: m["spec"]["authOptions"].update(mode="password"), "'password' is not one of"),
        (lambda m: worker(m)["rayStartParams"].update({"num-cpus": 16}), "16 is not of type 'string'"),
    ]
    for how, expected in cases:
        assert expected in broken(how)


@pytest.mark.parametrize("kind", sorted(CRD_FILES))
def test_manifests_validate_against_kuberay_crds(variant, kind):
    manifests = {m["kind"]: m for m in kuberay.render(variant).values()}
    validate(manifests[kind])


def test_rayjob_on_an_existing_cluster_validates(raw, tmp_path):
    spec = spec_of(tmp_path, raw)
    job = kuberay.render(spec, job_on_cluster=True)[kuberay.FILES["RayJob"]]
    validate(job)
    assert job["spec"]["clusterSelector"] == {"ray.io/cluster": "atoll"}
    assert "rayClusterSpec" not in job["spec"] and "shutdownAfterJobFinishes" not in job["spec"]


def test_rays_kuberay_autoscaler_reads_the_cluster_yaml_node_types(variant):
    """Ray's own KubeRay autoscaler config code turns the RayCluster back into cluster.yaml's node types."""
    from ray.autoscaler._private.kuberay.autoscaling_config import _derive_autoscaling_config_from_ray_cr

    cr = kuberay.raycluster(variant)
    cr["metadata"]["namespace"] = "default"
    derived = _derive_autoscaling_config_from_ray_cr(cr)
    types = derived["available_node_types"]
    assert types["headgroup"]["resources"]["CPU"] == variant.available_node_types["head"].resources["CPU"] == 0
    expected_speed = 1000 if variant.upscaling_speed >= 32 else 1
    assert derived["upscaling_speed"] == expected_speed
    assert derived["idle_timeout_minutes"] == pytest.approx(variant.idle_timeout_minutes)
    for name, node in variant.worker_types().items():
        got = types[kuberay.k8s_name(name, name)]
        assert (got["min_workers"], got["max_workers"]) == (node.min_workers, node.max_workers)
        want = {k: int(v) for k, v in node.resources.items()}
        assert {k: v for k, v in got["resources"].items()} == want, name


# ------------------------------------------------------------------------------------------------
# What they say


def test_raycluster_content_for_the_repo_cluster_yaml(raw, tmp_path):
    spec = spec_of(tmp_path, raw)
    rc = kuberay.raycluster(spec)
    s = rc["spec"]
    assert rc["metadata"]["name"] == "atoll"
    assert s["enableInTreeAutoscaling"] is True
    assert s["autoscalerOptions"] == {"upscalingMode": "Conservative", "idleTimeoutSeconds": 300}
    assert s["rayVersion"] == spec.atoll.k8s.ray_version == "2.60.0"

    head = s["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"  # head: CPU 0 in cluster.yaml → no tasks on it
    assert head["rayStartParams"]["dashboard-host"] == "0.0.0.0"  # the operator must reach the dashboard
    (head_container,) = head["template"]["spec"]["containers"]
    assert head_container["image"] == raw["docker"]["image"] == "atoll:0.1.0-ray2.60.0"  # ./Dockerfile's, as `ray up`
    assert head_container["resources"]["requests"]["cpu"] == "4"  # real CPU for GCS/dashboard/drivers
    assert {p["name"] for p in head_container["ports"]} >= {"gcs-server", "dashboard", "client", "serve"}

    groups = {g["groupName"]: g for g in s["workerGroupSpecs"]}
    assert set(groups) == {"cpu", "gpu"}
    cpu, gpu = groups["cpu"], groups["gpu"]
    assert (cpu["minReplicas"], cpu["maxReplicas"], cpu["replicas"]) == (1, 8, 1)
    assert (gpu["minReplicas"], gpu["maxReplicas"], gpu["replicas"]) == (0, 2, 0)
    cpu_res = cpu["template"]["spec"]["containers"][0]["resources"]
    gpu_res = gpu["template"]["spec"]["containers"][0]["resources"]
    assert gpu["template"]["spec"]["containers"][0]["image"] == "atoll:0.1.0-ray2.60.0-gpu"  # its docker.worker_image
    assert cpu_res == {"requests": {"cpu": "16", "memory": "60G"}, "limits": {"cpu": "16", "memory": "60G"}}
    assert gpu_res["limits"] == {"cpu": "8", "memory": "28G", "nvidia.com/gpu": "1"}
    assert "nvidia.com/gpu" not in gpu_res["requests"]
    assert cpu["rayStartParams"] == {"num-cpus": "16"}
    assert gpu["rayStartParams"] == {"num-cpus": "8", "num-gpus": "1"}


def test_gpu_limit_only_on_gpu_groups(variant):
    s = kuberay.raycluster_spec(variant)
    for group in s["workerGroupSpecs"]:
        name = next(n for n in variant.worker_types() if kuberay.k8s_name(n, n) == group["groupName"])
        gpus = variant.available_node_types[name].resources.get("GPU", 0)
        res = group["template"]["spec"]["containers"][0]["resources"]
        assert res["limits"].get("nvidia.com/gpu") == (str(int(gpus)) if gpus else None), name
    head_res = s["headGroupSpec"]["template"]["spec"]["containers"][0]["resources"]
    assert "nvidia.com/gpu" not in head_res["limits"]


def test_one_worker_group_per_node_type(variant):
    s = kuberay.raycluster_spec(variant)
    assert [g["groupName"] for g in s["workerGroupSpecs"]] == \
        [kuberay.k8s_name(n, n) for n in variant.worker_types()]
    for group, node in zip(s["workerGroupSpecs"], variant.worker_types().values()):
        assert group["minReplicas"] == group["replicas"] == node.min_workers
        assert group["maxReplicas"] == node.max_workers


def test_many_types_variant(raw, tmp_path):
    spec = spec_of(tmp_path, many_types(raw))
    s = kuberay.raycluster_spec(spec)
    groups = {g["groupName"]: g for g in s["workerGroupSpecs"]}
    assert set(groups) == {"cpu", "gpu", "cpu-small", "gpu4"}  # cpu_small: a valid Kubernetes name
    assert s["autoscalerOptions"] == {"upscalingMode": "Default", "idleTimeoutSeconds": 30}
    small = groups["cpu-small"]
    assert small["rayStartParams"]["resources"] == '"{\\"spot\\": 1}"'  # KubeRay's quoted-JSON format
    assert small["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"] == "16Gi"
    assert groups["gpu4"]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "4"
    images = {g: groups[g]["template"]["spec"]["containers"][0]["image"] for g in groups}
    assert images == {"cpu": "registry.example.com/atoll:0.1.0", "cpu-small": "registry.example.com/atoll:0.1.0",
                      "gpu": "registry.example.com/atoll:0.1.0-cuda", "gpu4": "registry.example.com/atoll:0.1.0-cuda"}
    for c in containers(s):
        assert {"name": "ATOLL_STORAGE", "value": "s3://team/atoll"} in c["env"]
    assert s["authOptions"]["secretName"] == "team-ray-token"
    assert kuberay.warnings(spec) == []  # shared storage, own image, memory everywhere, max within bounds


def test_token_comes_from_a_secret_and_is_never_embedded(variant, monkeypatch):
    monkeypatch.setenv("RAY_AUTH_TOKEN", "sentinel-token-do-not-embed")
    manifests = kuberay.render(variant)
    text = json.dumps(manifests)
    assert "sentinel-token-do-not-embed" not in text
    secret = variant.atoll.k8s.auth_secret
    for manifest in manifests.values():
        s = manifest["spec"].get("rayClusterSpec") or manifest["spec"].get("rayClusterConfig") or manifest["spec"]
        assert s["authOptions"] == {"mode": "token", "secretName": secret}  # the operator's own client uses it
        for c in containers(s):
            env = {e["name"]: e for e in c["env"]}
            assert env["RAY_AUTH_MODE"] == {"name": "RAY_AUTH_MODE", "value": "token"}
            assert env["RAY_AUTH_TOKEN"] == {"name": "RAY_AUTH_TOKEN", "valueFrom": {
                "secretKeyRef": {"name": secret, "key": "auth_token"}}}
    assert kuberay.secret_command(variant).startswith(f"kubectl create secret generic {secret} --from-file=auth_token=")


def test_all_three_share_one_cluster_spec(variant):
    m = kuberay.render(variant)
    rc = m["raycluster.yaml"]["spec"]
    assert m["rayjob-train.yaml"]["spec"]["rayClusterSpec"] == rc
    assert m["rayservice.yaml"]["spec"]["rayClusterConfig"] == rc


def test_rayjob_runs_the_training_job(raw, tmp_path):
    spec = spec_of(tmp_path, raw)
    job = kuberay.rayjob(spec)
    assert job["metadata"]["name"] == "atoll-train"
    s = job["spec"]
    assert s["entrypoint"] == "python -m atoll.train -c jobs/configs/train.yaml"
    assert s["shutdownAfterJobFinishes"] is True and s["ttlSecondsAfterFinished"] > 0
    renv = yaml.safe_load(s["runtimeEnvYAML"])
    assert renv["working_dir"] == spec.atoll.k8s.project_dir == "/home/ray/atoll"
    assert renv["env_vars"]["RAY_DEDUP_LOGS"] == "0"
    assert importlib.util.find_spec("atoll.train") and (REPO / "jobs" / "configs" / "train.yaml").is_file()


def test_rayservice_serves_the_demo_app_with_the_serve_deploy_structure(raw, tmp_path):
    spec = spec_of(tmp_path, raw)
    svc = kuberay.rayservice(spec, api_key_hash=apikeys.hash_key("s3cret-key-0123456789"))
    config = yaml.safe_load(svc["spec"]["serveConfigV2"])
    assert svc["metadata"]["name"] == "atoll-digits"
    assert config["http_options"] == {"host": "0.0.0.0", "port": spec.atoll.serve.port}
    app, gallery = config["applications"]
    assert (gallery["name"], gallery["route_prefix"]) == (playground.GALLERY_APP, "/")
    assert app["import_path"] == "atoll.serving.replica:app" == endpoints.IMPORT_PATH
    assert (app["name"], app["route_prefix"]) == ("digits", "/digits")
    assert app["args"]["model"] == app["args"]["requested"] == "digits@production"
    assert "s3cret-key" not in svc["spec"]["serveConfigV2"]
    record = app["args"]["api_key_hash"]
    assert apikeys.key_matches("Bearer s3cret-key-0123456789", record)  # a salted HMAC of the key, not the key
    assert gallery["args"] == {"api_key_hashes": [record]}
    # The same document `atoll serve deploy` would PUT, bar the bind address (and the HMAC's random salt).
    model_app = endpoints.app_config("digits", "digits@production", storage=spec.atoll.storage,
                                     requested="digits@production", settings=app["args"]["settings"],
                                     model_types=spec.atoll.model_types)
    model_app["args"]["api_key_hash"] = record
    expected = endpoints.serve_config(spec, [model_app, playground.gallery_config([record])])
    expected["http_options"]["host"] = "0.0.0.0"
    assert config == expected
    # Serve settings go along explicitly and are valid for the app.
    from atoll.serving.replica import AppArgs

    assert AppArgs.model_validate(app["args"]).settings["max_batch_size"] == spec.atoll.serve.max_batch_size


def test_rayservice_other_model_and_app(raw, tmp_path):
    spec = spec_of(tmp_path, raw)
    svc = kuberay.rayservice(spec, model="digits:3", app="digits_v3")
    app, _gallery = yaml.safe_load(svc["spec"]["serveConfigV2"])["applications"]
    assert (app["name"], app["args"]["model"]) == ("digits_v3", "digits:3")
    assert svc["metadata"]["name"] == "atoll-digits-v3"
    validate(svc)


def test_warnings_for_the_repo_cluster_yaml(raw, tmp_path):
    notes = kuberay.warnings(spec_of(tmp_path, raw))
    assert any("local path" in n for n in notes)      # ~/.atoll/storage: pods share no disk
    assert not any("stock image" in n for n in notes)  # cluster.yaml's docker image: ./Dockerfile's, with Atoll
    del raw["docker"]
    assert any("stock image" in n for n in kuberay.warnings(spec_of(tmp_path, raw)))  # rayproject/ray has none


# ------------------------------------------------------------------------------------------------
# Bad input: a clear ConfigError naming the field and the fix


def _bad(raw, how):
    data = copy.deepcopy(raw)
    how(data)
    return data


def test_fractional_gpu_per_node_is_refused(raw, tmp_path):
    data = _bad(raw, lambda d: d["available_node_types"]["gpu"]["resources"].update(GPU=0.5))
    with pytest.raises(ConfigError, match=r"available_node_types\.gpu\.resources\.GPU: 0\.5 is not of type"):
        spec_of(tmp_path, data)  # Ray's own schema already says so for a file
    spec = cluster.load_spec(REPO / "cluster.yaml")  # a spec built in Python skips that schema
    spec.available_node_types["gpu"].resources["GPU"] = 0.5
    with pytest.raises(ConfigError, match=r"available_node_types\.gpu\.resources\.GPU: 0\.5 is not a whole "
                                          r"number; Kubernetes hands out whole GPUs"):
        kuberay.render(spec)


def test_worker_without_cpus_is_refused(raw, tmp_path):
    spec = spec_of(tmp_path, _bad(raw, lambda d: d["available_node_types"]["gpu"].update(resources={"GPU": 1})))
    with pytest.raises(ConfigError, match=r"available_node_types\.gpu\.resources\.CPU: missing or 0 .* Add it"):
        kuberay.raycluster(spec)


def test_min_above_max_is_refused_before_rendering(raw, tmp_path):
    data = _bad(raw, lambda d: d["available_node_types"]["cpu"].update(min_workers=9, max_workers=8))
    with pytest.raises(ConfigError, match=r"available_node_types\.cpu\.max_workers: must be >= min_workers"):
        spec_of(tmp_path, data)


def test_colliding_group_names_are_refused(raw, tmp_path):
    def add(d):
        d["available_node_types"]["CPU"] = copy.deepcopy(d["available_node_types"]["cpu"])
        d["available_node_types"]["CPU"]["min_workers"] = 0
    with pytest.raises(ConfigError, match="both become worker group 'cpu'"):
        kuberay.render(spec_of(tmp_path, _bad(raw, add)))


@pytest.mark.parametrize("k8s, expected", [
    ({"imag": "x"}, "metadata.atoll.k8s.imag: unknown key; did you mean 'image'"),
    ({"ray_version": "2.40.0"}, "Ray token auth (which Atoll turns on) needs 2.52.0"),
    ({"auth_secret": "Ray_Token"}, "metadata.atoll.k8s.auth_secret"),
    ({"head_memory": "16 GB"}, "metadata.atoll.k8s.head_memory"),
])
def test_bad_k8s_settings_name_the_field(raw, tmp_path, k8s, expected):
    data = _bad(raw, lambda d: d["metadata"]["atoll"].update(k8s=k8s))
    with pytest.raises(ConfigError) as err:
        spec_of(tmp_path, data)
    assert expected in str(err.value)


# ------------------------------------------------------------------------------------------------
# The command


@pytest.fixture()
def cli() -> typer.Typer:
    root = typer.Typer()
    root.add_typer(k8s_app, name="k8s")  # as atoll.cli wires it
    return root


def test_cli_render_writes_the_three_files(cli, raw, tmp_path):
    src = tmp_path / "cluster.yaml"
    src.write_text(yaml.safe_dump(raw))
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["k8s", "render", "-c", str(src), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == sorted(kuberay.FILES.values())
    expected = kuberay.render(cluster.load_spec(src))
    for name, manifest in expected.items():
        text = (out / name).read_text()
        assert text.startswith("# ")  # the comment that says how to use it
        assert yaml.safe_load(text) == manifest
        validate(yaml.safe_load(text))
    assert "kubectl create secret generic atoll-ray-token" in result.output
    assert "warning:" in result.output  # local storage


def test_cli_render_json_prints_a_kubectl_list(cli, raw, tmp_path):
    src = tmp_path / "cluster.yaml"
    src.write_text(yaml.safe_dump(raw))
    result = CliRunner().invoke(cli, ["k8s", "render", "-c", str(src), "--json", "-o", str(tmp_path / "none")])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["kind"] == "List" and [i["kind"] for i in doc["items"]] == ["RayCluster", "RayJob", "RayService"]
    assert not (tmp_path / "none").exists()  # --json writes nothing


def test_a_render_without_the_key_keeps_the_earlier_manifests_key_and_public_removes_it(tmp_path, monkeypatch):
    """Issue 32.1 for `atoll k8s render`: the RayService rendered earlier into the folder is the record; a
    render from a shell without the key keeps its key record, `--public` drops it, and each says so."""
    from atoll.cli import app as cli
    from typer.testing import CliRunner

    out = tmp_path / "k8s"

    def service_args(env: dict[str, str], *flags: str) -> tuple[dict, str]:
        monkeypatch.delenv("ATOLL_API_KEY", raising=False)
        result = CliRunner().invoke(cli, ["k8s", "render", "-o", str(out), *flags], env=env)
        assert result.exit_code == 0, result.output
        return kuberay.rendered_model_args(out), result.output

    keyed, said = service_args({"ATOLL_API_KEY": "s3cret-key-0123456789"})
    assert apikeys.key_matches("Bearer s3cret-key-0123456789", keyed["api_key_hash"])
    assert "API key: required (from $ATOLL_API_KEY)" in said
    kept, said = service_args({})
    assert kept["api_key_hash"] == keyed["api_key_hash"] and "key kept" in said
    public, said = service_args({}, "--public")
    assert "api_key_hash" not in public and "REMOVED (--public)" in said
    again, said = service_args({})
    assert "api_key_hash" not in again and "the app is public" in said


def test_an_app_built_from_an_alias_serves_the_version_it_pointed_at_then(tmp_path):
    """Issue 32.15: a Serve config or RayService naming `digits@production` is resolved once, when Serve builds
    the app, and every replica gets the pinned version: a promote cannot make one endpoint serve two."""
    import torch
    from atoll.registry import Registry
    from atoll.serving.replica import AppArgs

    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    torch.save(torch.nn.Linear(4, 3).state_dict(), ckpt / "model.pt")
    (ckpt / "atoll.json").write_text(json.dumps({"model": {"type": "mlp"}, "input_schema": {"features": 4}}))
    reg = Registry(str(tmp_path / "store"))
    for _ in range(2):
        reg.register("digits", str(ckpt), metrics={}, spec={})
    reg.set_alias("digits", 1, "production")
    args = AppArgs.model_validate({"model": "digits@production", "storage": reg.root})
    built = args.pinned()
    assert (built.model, built.requested) == ("digits:1", "digits@production")
    assert AppArgs.model_validate({"model": "digits", "storage": reg.root}).pinned().model == "digits:2"


def test_render_pins_the_alias_to_its_version_and_says_so(cli, raw, tmp_path, monkeypatch):
    """Issue 32.15: the RayService names the version the alias points at when it is rendered (as `atoll serve
    deploy` pins it), so a promote moves nothing under a live RayService; a model the registry does not hold yet
    (the RayJob has not trained it) goes as given, with a line that says so."""
    import torch
    from atoll.registry import Registry

    storage = tmp_path / "storage"
    raw["metadata"]["atoll"]["storage"] = str(storage)
    src = tmp_path / "cluster.yaml"
    src.write_text(yaml.safe_dump(raw))
    monkeypatch.delenv("ATOLL_STORAGE", raising=False)
    monkeypatch.delenv("ATOLL_API_KEY", raising=False)
    out = tmp_path / "k8s"

    def render() -> tuple[dict, str]:
        result = CliRunner().invoke(cli, ["k8s", "render", "-c", str(src), "-o", str(out)])
        assert result.exit_code == 0, result.output
        return kuberay.rendered_model_args(out), " ".join(result.output.split())

    args, said = render()  # nothing trained yet
    assert args["model"] == args["requested"] == "digits@production"
    assert "digits@production is not pinned" in said and "render again after training" in said

    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    torch.save(torch.nn.Linear(4, 3).state_dict(), ckpt / "model.pt")
    (ckpt / "atoll.json").write_text(json.dumps({"input_schema": {"features": 4, "dtype": "float32"},
                                                 "model": {"type": "linear"}, "spec": {"epochs": 1}}))
    reg = Registry(str(storage))
    first = reg.register("digits", str(ckpt), metrics={"val_accuracy": 0.9}, spec={"epochs": 1})
    second = reg.register("digits", str(ckpt), metrics={"val_accuracy": 0.95}, spec={"epochs": 1})
    reg.set_alias("digits", first.version, "production")

    args, said = render()
    assert (args["model"], args["requested"]) == (f"digits:{first.version}", "digits@production")
    assert f"serves digits:{first.version}: digits@production at render time" in said
    header = (out / kuberay.FILES["RayService"]).read_text().splitlines()[0]
    assert "digits@production" in header  # the comment still says what was asked for
    validate(yaml.safe_load((out / kuberay.FILES["RayService"]).read_text()))

    reg.set_alias("digits", second.version, "production")  # a promote: the manifest on disk is unchanged ...
    assert kuberay.rendered_model_args(out)["model"] == f"digits:{first.version}"
    args, _ = render()  # ... until the next render
    assert args["model"] == f"digits:{second.version}"

"""Model endpoints on the shared local cluster: a trained, registered digits model deployed with
`atoll serve deploy`, queried over real HTTP, fed bad input, protected by an API key, rolled over."""

from __future__ import annotations

import json
import os
import subprocess
import time

import httpx
import numpy as np
import pandas as pd
import pytest
import torch
from atoll import data, jobs, models, registry
from atoll.serving import endpoints
from conftest import APP_KEY as KEY
from conftest import ATOLL, copy_version, run_cli
from conftest import SMALL_APP as SMALL
from loop_client import LoopClient

pytestmark = pytest.mark.cluster

def _storage() -> str:
    return os.environ["ATOLL_STORAGE"]


@pytest.fixture(scope="module")
def deployed(public_app):
    """digits trained for real, promoted to production, deployed by alias (the session's shared app)."""
    return public_app


@pytest.fixture(scope="module")
def holdout() -> pd.DataFrame:
    return pd.read_parquet(data.prepare_demo(_storage())["holdout"])


def _in_process_predictions(ref: str, rows: np.ndarray) -> np.ndarray:
    """The registered model run directly with torch: what the endpoint must agree with."""
    reg = registry.Registry(_storage())
    mv = reg.get(ref)
    meta = json.loads(reg.read_file(mv, "atoll.json"))
    pre = data.Preprocessor.from_dict(meta["preprocess"])
    model = models.build(mv.spec["model"]["type"], pre.input_dim, pre.num_classes, mv.spec["model"]["params"])
    model.load_state_dict(reg.load_weights(mv))
    with torch.no_grad():
        logits = model.eval()(torch.from_numpy(pre.transform_features(rows)))
    return np.asarray(pre.classes)[logits.argmax(dim=1).numpy()]


def test_http_predictions_match_the_model_in_process(deployed, holdout):
    features = [c for c in holdout.columns if c != "label"]
    rows = holdout[features].to_numpy(dtype=np.float32)[:25]
    resp = httpx.post(f"{deployed['url']}/predict", json={"inputs": rows.tolist()}, timeout=30)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert (body["model"], body["version"]) == ("digits", deployed["version"])
    assert len(body["predictions"]) == 25 and np.asarray(body["probabilities"]).shape == (25, 10)
    assert np.allclose(np.asarray(body["probabilities"]).sum(axis=1), 1.0, atol=1e-4)
    expected = _in_process_predictions(f"digits:{deployed['version']}", rows)
    assert body["predictions"] == expected.tolist()
    # A model trained for 3 epochs reads held-out digits it never saw.
    assert (np.asarray(body["predictions"]) == holdout["label"].to_numpy()[:25]).mean() >= 0.8

    card = httpx.get(f"{deployed['url']}/", timeout=10).json()
    assert card["version"] == deployed["version"] and card["requested"] == "digits@production"
    assert card["input_schema"]["num_features"] == 64
    assert card["runtime"] == "onnx"  # auto on a CPU replica of a version with its model.onnx
    assert httpx.get(f"{deployed['url']}/healthz", timeout=10).json()["status"] == "ok"
    assert "/predict" in httpx.get(f"{deployed['url']}/openapi.json", timeout=10).json()["paths"]


def test_atoll_query_sends_json_and_csv_rows(deployed, holdout, tmp_path):
    features = [c for c in holdout.columns if c != "label"]
    one = holdout[features].iloc[:1]
    result = run_cli("query", "digits", "-d", json.dumps({"inputs": one.to_numpy().tolist()}))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["predictions"] == _in_process_predictions(
        f"digits:{deployed['version']}", one.to_numpy(dtype=np.float32)).tolist()

    csv_file = tmp_path / "rows.csv"
    holdout[features].iloc[:3].to_csv(csv_file, index=False)  # named features, by header
    result = run_cli("query", "digits", "--file", str(csv_file))
    assert result.returncode == 0, result.stderr
    assert len(json.loads(result.stdout)["predictions"]) == 3


ROW = [0.0] * 64


@pytest.mark.parametrize("body,status,message", [
    (b'{"inputs": [[1, 2,', 400, "not valid JSON"),
    (b"", 400, "empty body"),
    (json.dumps({"inputs": [[1.0, 2.0, 3.0]]}).encode(), 422, "inputs.0 has 3 values; this model takes 64"),
    (b'{"inputs": [[' + b", ".join([b"0"] * 63 + [b"NaN"]) + b"]]}", 422, "finite number"),
    (json.dumps({"inputs": [ROW[:63] + ["7"]]}).encode(), 422, "valid number"),
    (json.dumps({"inputs": [ROW] * 1025}).encode(), 413, "the limit is 1024 (max_rows)"),
    (json.dumps({"inputs": [{"px0": 1.0, "colour": 2.0}]}).encode(), 422, "unknown colour"),
    (json.dumps({"rows": [ROW]}).encode(), 422, "inputs: Field required"),
    (b" " * 1_100_000, 413, "max_body_bytes"),
])
def test_bad_requests_get_a_4xx_that_names_the_problem(deployed, body, status, message):
    resp = httpx.post(f"{deployed['url']}/predict", content=body,
                      headers={"Content-Type": "application/json"}, timeout=30)
    assert resp.status_code == status, resp.text
    assert message in resp.json()["error"]


def test_a_chunked_body_without_length_is_cut_off_at_the_limit(deployed):
    def chunks():  # 2 MB in 64 KiB chunks, no Content-Length: the replica must stop reading at 1 MiB
        for _ in range(32):
            yield b" " * 65536

    resp = httpx.post(f"{deployed['url']}/predict", content=chunks(), headers={"Content-Type": "application/json"},
                      timeout=30)
    assert resp.status_code == 413 and "max_body_bytes" in resp.json()["error"]


def test_the_app_stays_healthy_after_bad_requests(deployed):
    [app] = [a for a in endpoints.status() if a["app"] == "digits"]
    assert app["status"] == "RUNNING" and app["replicas"] == {"RUNNING": 1}
    assert httpx.post(f"{deployed['url']}/predict", json={"inputs": [ROW]}, timeout=30).status_code == 200


def test_unknown_versions_and_apps_are_one_clear_line(deployed):
    for args, message in ((("serve", "deploy", "digits:99"), "has no version 99; versions:"),
                          (("serve", "deploy", "nosuchmodel@production"), "nosuchmodel"),
                          (("query", "nosuchapp", "-d", '{"inputs": [[1]]}'), "no Serve app 'nosuchapp'")):
        result = run_cli(*args)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.returncode != 0 and "Traceback" not in result.stdout + result.stderr, result.stderr
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], (args, result.stderr)


@pytest.fixture(scope="module")
def two_more_apps(deployed):
    """`digits-b` and `digits-c` deployed by two `atoll serve deploy` at once (removed by the delete test)."""
    version = deployed["version"]
    procs = [subprocess.Popen([ATOLL, "serve", "deploy", f"digits:{version}", "--app", app, *SMALL, "--json"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for app in ("digits-b", "digits-c")]
    outs = [p.communicate(timeout=400) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    return {json.loads(out)["app"]: json.loads(out) for out, _ in outs}


def test_two_deploys_at_once_both_land_and_both_apps_serve(deployed, two_more_apps):
    for app in ("digits-b", "digits-c"):
        resp = httpx.post(f"{two_more_apps[app]['url']}/predict", json={"inputs": [ROW]}, timeout=30)
        assert resp.status_code == 200, (app, resp.text)
    assert {"digits", "digits-b", "digits-c"} <= {a["app"] for a in endpoints.status()}


def test_an_api_key_guards_every_route_but_healthz_and_the_gallery_list(keyed_app):
    url = keyed_app["url"]
    assert httpx.post(f"{url}/predict", json={"inputs": [ROW]}, timeout=30).status_code == 401
    wrong = {"Authorization": "Bearer nope-nope-nope-nope"}
    assert httpx.post(f"{url}/predict", json={"inputs": [ROW]}, headers=wrong, timeout=30).status_code == 401
    assert httpx.get(f"{url}/", timeout=30).status_code == 401
    assert httpx.get(f"{url}/healthz", timeout=30).status_code == 200
    good = {"Authorization": f"Bearer {KEY}"}
    assert httpx.post(f"{url}/predict", json={"inputs": [ROW]}, headers=good, timeout=30).status_code == 200
    # With a keyed app on the cluster, the gallery's list of apps opens with that key only.
    gallery = keyed_app["gallery"]
    assert httpx.get(f"{gallery}_gallery/apps", timeout=30).status_code == 401
    listed = httpx.get(f"{gallery}_gallery/apps", headers=good, timeout=30)
    assert listed.status_code == 200 and "digits-private" in {a["app"] for a in listed.json()["apps"]}
    key = {"ATOLL_API_KEY": KEY}
    assert run_cli("query", "digits-private", "-d", '{"inputs": [[0]]}', env=key).returncode != 0  # width
    ok = run_cli("query", "digits-private", "-d", json.dumps({"inputs": [ROW]}), env=key)
    assert ok.returncode == 0, ok.stderr
    short = run_cli("query", "digits-private", "-d", json.dumps({"inputs": [ROW]}), env={"ATOLL_API_KEY": "short"})
    assert short.returncode != 0 and "at least 16" in short.stderr and len(short.stderr.strip().splitlines()) == 1


def test_a_redeploy_from_a_shell_without_the_key_keeps_the_app_keyed(keyed_app):
    """Issue 32.1: a keyed app redeployed where ATOLL_API_KEY is unset (a CI job, another shell) stayed public
    before: its arguments were rebuilt from the environment. Now the running app's key record is kept."""
    assert "ATOLL_API_KEY" not in os.environ
    result = run_cli("serve", "deploy", keyed_app["requested"], "--app", "digits-private", *SMALL,
                     "--set", "runtime=torch", timeout=400)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "the running app's key kept" in result.stdout and "Bearer $ATOLL_API_KEY" in result.stdout
    url = keyed_app["url"]
    assert httpx.post(f"{url}/predict", json={"inputs": [ROW]}, timeout=30).status_code == 401
    good = {"Authorization": f"Bearer {KEY}"}
    assert httpx.post(f"{url}/predict", json={"inputs": [ROW]}, headers=good, timeout=30).status_code == 200
    both = run_cli("serve", "deploy", keyed_app["requested"], "--app", "digits-private", "--public",
                   env={"ATOLL_API_KEY": KEY})
    assert both.returncode != 0 and "--public with an API key set" in both.stderr and "Traceback" not in both.stderr


def test_the_api_key_reaches_no_job_no_serve_config_and_no_manifest(keyed_app, tmp_path):
    """A job submitted with the key in the shell's environment: the key is nowhere the cluster shows (job info,
    runtime env, the job's own environment, the Serve config) nor in the rendered KubeRay manifests."""
    from atoll import auth, cluster
    from atoll.cli import app as cli
    from typer.testing import CliRunner

    env = {"ATOLL_API_KEY": KEY}
    job = run_cli("submit", "--json", "--", "python", "-c", "import os, json; print(json.dumps(dict(os.environ)))",
                  env=env, timeout=180)
    assert job.returncode == 0, job.stderr
    job_id = json.loads(job.stdout)["id"]
    deadline = time.monotonic() + 120
    while jobs.status(job_id)["status"] not in jobs.TERMINAL and time.monotonic() < deadline:
        time.sleep(1)
    assert jobs.status(job_id)["status"] == "SUCCEEDED"
    base = cluster.current().dashboard_url
    info = httpx.get(f"{base}/api/jobs/{job_id}", headers=auth.headers(), timeout=30)
    assert info.status_code == 200 and "runtime_env" in info.text
    logs = httpx.get(f"{base}/api/jobs/{job_id}/logs", headers=auth.headers(), timeout=30)
    assert "ATOLL_STORAGE" in logs.text  # the job printed its environment ...
    serve_config = httpx.get(f"{base}/api/serve/applications/", headers=auth.headers(), timeout=30)
    assert "api_key_hash" in serve_config.text  # ... and the keyed app is in the Serve config
    rendered = CliRunner().invoke(cli, ["k8s", "render", "-o", str(tmp_path / "k8s")], env=env)
    assert rendered.exit_code == 0, rendered.output
    manifests = "".join(p.read_text() for p in (tmp_path / "k8s").iterdir())
    assert "api_key_hash" in manifests
    for where, text in {"job info": info.text, "job output": logs.text, "serve config": serve_config.text,
                        "manifests": manifests, "CLI output": job.stdout + job.stderr + rendered.output}.items():
        assert KEY not in text, where


def test_two_deletes_at_once_both_land_and_the_other_apps_keep_serving(deployed, two_more_apps):
    procs = [subprocess.Popen([ATOLL, "serve", "delete", app], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for app in two_more_apps]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    left = {a["app"] for a in endpoints.status()}
    assert "digits" in left and not left & set(two_more_apps)
    assert httpx.post(f"{deployed['url']}/predict", json={"inputs": [ROW]}, timeout=30).status_code == 200


def test_rolling_over_to_a_new_version_drops_no_request(deployed, tmp_path):
    reg = registry.Registry(_storage())
    old = reg.get(f"digits:{deployed['version']}")
    new = copy_version(reg, old, tmp_path / "copy")

    with LoopClient(deployed["url"]) as client:
        result = run_cli("serve", "deploy", f"digits:{new.version}", "--app", "digits", *SMALL, "--json",
                         timeout=400)
        assert result.returncode == 0, result.stderr
        client.wait_for(20)  # a few answers from the new replica
    assert client.failures == []
    seen = client.versions()
    assert seen[0] == old.ref and seen[-1] == new.ref
    assert [a["model"] for a in endpoints.status() if a["app"] == "digits"] == [f"digits:{new.version}"]
    # Issue 32.3: no alias points at the new version, but a live app pins it; deleting it would leave the next
    # replica start (autoscaling, a lost node) without its model.
    refused = run_cli("models", "delete", f"digits:{new.version}", "--yes")
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert f"cannot delete digits:{new.version}: Serve app 'digits' serves it" in refused.stderr
    assert reg.get(f"digits:{new.version}").version == new.version


def test_a_lone_request_never_waits_for_a_batch_and_concurrent_ones_wait_to_fill():
    """The replica's adaptive batch wait, on its own (no cluster): the timeout each request leaves for its batch."""
    import asyncio
    import types

    from atoll.serving import replica
    from atoll.specs import ServeSettings

    class Batch:  # what the replica asks of Serve's @serve.batch method
        def set_batch_wait_timeout_s(self, timeout: float) -> None:
            self.timeout = timeout

        async def __call__(self, rows):
            seen.append(self.timeout)
            await asyncio.sleep(0.01)  # the model at work: the others arrive meanwhile
            return [0] * len(rows), None

    server = types.SimpleNamespace(settings=ServeSettings(batch_wait_timeout_s=0.02), _in_flight=0,
                                   predict_batch=Batch(),
                                   predictor=types.SimpleNamespace(non_finite_rows=lambda predictions, probs: []))
    answer = replica.ModelServer.func_or_class._answer  # the replica's own method, on just what it reads
    seen: list[float] = []
    asyncio.run(answer(server, [1]))
    assert seen == [0.0]

    async def three_at_once():
        await asyncio.gather(*(answer(server, [1]) for _ in range(3)))

    seen.clear()
    asyncio.run(three_at_once())
    assert seen == [0.0, 0.02, 0.02] and server._in_flight == 0

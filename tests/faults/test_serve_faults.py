"""A Serve endpoint under faults and floods: a replica SIGKILLed under load, more requests than it can hold.

One app, 2 replicas of the digits model trained for real, with small queues so that a flood from one
test process overflows them, and an API key (every client here sends it).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import statistics
import threading
import time
from collections import Counter

import httpx
import numpy as np
import psutil
import pytest
from atoll.serving import endpoints
from conftest import run_cli

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

APP = "faults"
KEY = "faults-test-key-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
# 2 replicas x 4 requests each, 8 more queued per proxy: a flood of 64 concurrent requests overflows it.
SETTINGS = {"num_cpus_per_replica": 0.5, "max_ongoing_requests": 4, "max_batch_size": 4,
            "max_queued_requests": 8, "retry_after_s": 2}


@pytest.fixture(scope="module")
def app(trained_digits):
    version = trained_digits["registered"]["version"]
    sets = [arg for k, v in SETTINGS.items() for arg in ("--set", f"{k}={v}")]
    result = run_cli("serve", "deploy", f"digits:{version}", "--app", APP, "--replicas", "2:2", *sets, "--json",
                     env={"ATOLL_API_KEY": KEY}, timeout=400)
    assert result.returncode == 0, result.stdout + result.stderr
    info = json.loads(result.stdout)
    yield info
    endpoints.delete(APP)


def _rows(n: int = 4) -> list[list[float]]:
    rng = np.random.default_rng(0)
    return rng.integers(0, 17, size=(n, 64)).astype(float).tolist()


def _replicas() -> list[dict]:
    deployment = endpoints._apps(endpoints._details(endpoints.cluster.current()))[APP]["deployments"]
    return deployment[endpoints.DEPLOYMENT_NAME]["replicas"]


def _running_pids() -> set[int]:
    return {r["pid"] for r in _replicas() if r.get("state") == "RUNNING" and r.get("pid")}


def test_a_replica_killed_under_load_is_replaced_and_at_most_1_percent_of_requests_fail(app, reliability):
    """No client retries: the requests in flight on the killed replica may fail, at most 1% of the load."""
    pids = _running_pids()
    assert len(pids) == 2, _replicas()
    results: list[tuple[float, int]] = []  # (time, status); status 0 = no HTTP answer
    stop = threading.Event()

    def client() -> None:
        with httpx.Client(timeout=30, headers=AUTH) as http:
            for _ in range(5000):  # bounded in count and in time
                if stop.is_set():
                    return
                try:
                    code = http.post(f"{app['url']}/predict", json={"inputs": _rows()}).status_code
                except httpx.HTTPError:
                    code = 0
                results.append((time.monotonic(), code))

    threads = [threading.Thread(target=client, daemon=True) for _ in range(2)]
    for t in threads:
        t.start()
    time.sleep(2)
    victim = sorted(pids)[0]
    killed_at = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    recovered_at = None
    deadline = killed_at + 90
    while time.monotonic() < deadline:
        running = _running_pids()
        if len(running) == 2 and victim not in running:
            recovered_at = time.monotonic()
            break
        time.sleep(0.2)
    time.sleep(1)  # keep the load on the replaced replica a little
    stop.set()
    for t in threads:
        t.join(timeout=60)

    assert recovered_at is not None, f"Serve did not replace the killed replica in 90 s: {_replicas()}"
    failed = [code for _, code in results if code != 200]
    during = [code for at, code in results if at >= killed_at]
    rate = len(failed) / len(results)
    codes = ", ".join(f"{n} x {'no answer' if c == 0 else c}" for c, n in sorted(Counter(failed).items()))
    measured = (f"{len(failed)} of {len(results)} requests failed{f' ({codes})' if codes else ''} ({rate:.2%}, no "
                f"client retries; {len(during)} sent after the kill); "
                f"both replicas serving again {recovered_at - killed_at:.1f} s after the kill")
    print(measured)
    assert len(during) > 50, "the client loop stalled"
    assert rate <= 0.01, measured
    reliability("serve", "SIGKILL 1 of 2 replicas under a 2-client load", measured)


async def _flood(url: str, n: int, concurrency: int, headers: dict[str, str] = AUTH,
                 header: str = "retry-after") -> list[tuple[int, float, str | None]]:
    """``n`` requests, ``concurrency`` at a time: (status, latency, the response's ``header``) of each."""
    sem = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async with httpx.AsyncClient(timeout=30, headers=headers, limits=limits) as http:
        async def one() -> tuple[int, float, str | None]:
            async with sem:
                start = time.monotonic()
                try:
                    resp = await http.post(f"{url}/predict", json={"inputs": _rows(64)})
                    return resp.status_code, time.monotonic() - start, resp.headers.get(header)
                except httpx.HTTPError:
                    return 0, time.monotonic() - start, None

        return await asyncio.gather(*(one() for _ in range(n)))


def _replica_rss() -> int:
    return sum(psutil.Process(pid).memory_info().rss for pid in _running_pids())


def test_a_flood_gets_fast_503s_with_retry_after_and_the_app_recovers(app, reliability):
    rss_before = _replica_rss()
    started = time.monotonic()
    answers = asyncio.run(_flood(app["url"], n=600, concurrency=64))
    took = time.monotonic() - started
    rss_after = _replica_rss()
    codes = [code for code, _, _ in answers]
    shed = [(lat, retry) for code, lat, retry in answers if code == 503]
    assert 0 not in codes, "some requests got no answer at all"
    assert set(codes) <= {200, 503}, sorted(set(codes))
    assert shed, "the flood never overflowed the queues: nothing was shed"
    assert all(retry == "2" for _, retry in shed), "a 503 without the Retry-After header"
    shed_p50 = statistics.median(lat for lat, _ in shed)
    # Bounded queues: the shed requests are answered at once, not after waiting behind the flood.
    assert shed_p50 < 2.0, f"503s took {shed_p50:.2f} s (median): the queue is not bounded"
    growth_mb = (rss_after - rss_before) / 2**20
    assert growth_mb < 300, f"replica memory grew {growth_mb:.0f} MiB during the flood"

    # Once the flood stops, the app serves normally.
    with httpx.Client(timeout=30, headers=AUTH) as http:
        after = [http.post(f"{app['url']}/predict", json={"inputs": _rows()}).status_code for _ in range(20)]
    assert after == [200] * 20
    reliability("overload", "600 requests, 64 at a time, on queues for 16",
                f"{codes.count(200)} served, {len(shed)} shed with 503 + Retry-After (median {shed_p50 * 1000:.0f} ms), "
                f"0 hung; flood {took:.1f} s; replica RSS {rss_before / 2**20:.0f} → {rss_after / 2**20:.0f} MiB; "
                f"20/20 OK after")


def test_a_keyless_flood_is_refused_at_the_proxy_and_a_keyed_client_loses_no_request(app, reliability):
    """The API key is checked in Serve's HTTP proxy (atoll.serving.proxy_auth): keyless requests never take a slot of
    the replicas' queues (16 here), so a keyed client beside a flood of 64 at a time gets every answer."""
    keyed: list[int] = []
    stop = threading.Event()

    def client() -> None:
        with httpx.Client(timeout=30, headers=AUTH) as http:
            while not stop.is_set() and len(keyed) < 400:
                keyed.append(http.post(f"{app['url']}/predict", json={"inputs": _rows()}).status_code)

    thread = threading.Thread(target=client, daemon=True)
    thread.start()
    try:
        answers = asyncio.run(_flood(app["url"], n=600, concurrency=64, headers={}, header="x-atoll-refused-by"))
    finally:
        stop.set()
        thread.join(timeout=60)
    codes = Counter(code for code, _, _ in answers)
    by_proxy = sum(1 for code, _, where in answers if code == 401 and where == "proxy")
    assert codes == {401: 600}, codes
    assert by_proxy == 600, f"only {by_proxy} of 600 refusals came from the proxy"
    assert keyed and Counter(keyed) == {200: len(keyed)}, Counter(keyed)
    p50 = statistics.median(lat for _, lat, _ in answers) * 1000
    reliability("access", "600 requests without a key, 64 at a time, beside a keyed client (queues for 16)",
                f"600/600 refused 401 by the HTTP proxy (median {p50:.0f} ms), none reached a replica; keyed client "
                f"{len(keyed)}/{len(keyed)} answered 200")


# ------------------------------------------------------------------------------------------------
# Hostile input: zero 5xx, the app stays RUNNING, replica memory bounded


def _post_raw(url: str, body: bytes | object, headers: dict[str, str] | None = None) -> httpx.Response:
    with httpx.Client(timeout=60) as http:
        return http.post(f"{url}/predict", content=body, headers={**AUTH, **(headers or {})})


def _chunks(data: bytes, size: int = 65536):
    for i in range(0, len(data), size):
        yield data[i:i + size]


def _hand_made_cases() -> dict[str, tuple[object, dict[str, str]]]:
    big = b'{"inputs": [' + b",".join([b"[" + b",".join([b"1.0"] * 64) + b"]"] * 40_000) + b"]}"  # ~10 MB
    assert len(big) > 10_000_000
    deep = b'{"inputs": ' + b"[" * 10_000 + b"]" * 10_000 + b"}"
    row = ",".join(["1"] * 63)
    json_ct = {"Content-Type": "application/json"}
    return {
        "10 MB body with Content-Length": (big, json_ct),
        "10 MB chunked body (no Content-Length)": (_chunks(big), json_ct),
        "small chunked body": (_chunks(json.dumps({"inputs": _rows(2)}).encode(), 7), json_ct),
        "10,000-deep nesting": (deep, json_ct),
        "NaN literal": (f'{{"inputs": [[NaN,{row}]]}}'.encode(), json_ct),
        "Infinity literal": (f'{{"inputs": [[Infinity,{row}]]}}'.encode(), json_ct),
        "1e400 (overflows float64)": (f'{{"inputs": [[1e400,{row}]]}}'.encode(), json_ct),
        "1e300 (overflows float32)": (f'{{"inputs": [[1e300,{row}]]}}'.encode(), json_ct),
        "3e38 everywhere (finite, output may overflow)": (json.dumps({"inputs": [[3e38] * 64]}).encode(), json_ct),
        "3e38 in one feature (finite, the output stays finite)": (f'{{"inputs": [[3e38,{row}]]}}'.encode(), json_ct),
        "huge integer": (f'{{"inputs": [[{"9" * 5000},{row}]]}}'.encode(), json_ct),
        "string in a numeric field": (f'{{"inputs": [["7",{row}]]}}'.encode(), json_ct),
        "null in a numeric field": (f'{{"inputs": [[null,{row}]]}}'.encode(), json_ct),
        "boolean in a numeric field": (f'{{"inputs": [[true,{row}]]}}'.encode(), json_ct),
        "empty array": (b'{"inputs": []}', json_ct),
        "empty row": (b'{"inputs": [[]]}', json_ct),
        "too many rows": (json.dumps({"inputs": [[0.0] * 64] * 1025}).encode(), json_ct),
        "wrong content type": (json.dumps({"inputs": _rows(1)}).encode(), {"Content-Type": "text/plain"}),
        "form-encoded": (b"inputs=1&inputs=2", {"Content-Type": "application/x-www-form-urlencoded"}),
        "invalid UTF-8": (b'{"inputs": [["\xff\xfe"]]}', json_ct),
        "a pickle": (b"\x80\x04\x95\x05\x00\x00\x00\x00\x00\x00\x00K\x01.", {"Content-Type": "application/octet-stream"}),
        "empty body": (b"", json_ct),
        "JSON array at the top": (b"[[1, 2, 3]]", json_ct),
        "unknown top-level key": (b'{"inputs": [[1]], "extra": 1}', json_ct),
        "rows by name, unknown feature": (b'{"inputs": [{"nope": 1}]}', json_ct),
    }


def test_hand_made_hostile_requests_get_4xx_naming_the_problem(app, reliability):
    rss_before = _replica_rss()
    answers = {}
    for name, (body, headers) in _hand_made_cases().items():
        resp = _post_raw(app["url"], body, headers)
        answers[name] = resp.status_code
        assert resp.status_code < 500, f"{name}: {resp.status_code} {resp.text[:300]}"
        if resp.status_code >= 400:
            error = resp.json()["error"]
            assert error and "Traceback" not in error, f"{name}: {error}"
    # The cases a well-meaning client could send get a 2xx; everything hostile a 4xx.
    assert answers["small chunked body"] == 200 and answers["wrong content type"] == 200
    assert answers["10 MB body with Content-Length"] == answers["10 MB chunked body (no Content-Length)"] == 413
    rss_after = _replica_rss()
    assert endpoints.status()[[a["app"] for a in endpoints.status()].index(APP)]["status"] == "RUNNING"
    growth = (rss_after - rss_before) / 2**20
    assert growth < 200, f"replica memory grew {growth:.0f} MiB"
    reliability("hostile input", f"{len(answers)} hand-made bodies (10 MB with/without Content-Length, "
                "10,000-deep nesting, NaN/Infinity/1e400, strings/nulls, invalid UTF-8, a pickle, ...)",
                f"0 5xx ({sum(c >= 400 for c in answers.values())} 4xx, {sum(c < 400 for c in answers.values())} "
                f"2xx); app RUNNING; replica RSS {rss_before / 2**20:.0f} → {rss_after / 2**20:.0f} MiB")


def _from_schema(schema: dict, doc: dict):
    """A hypothesis strategy for the JSON Schema subset an OpenAPI document of FastAPI uses: objects,
    arrays, unions, numbers, strings, booleans, nulls and ``$ref`` — values valid for the schema, with
    boundary numbers (huge, tiny, negative zero) in the mix."""
    from hypothesis import strategies as st

    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return _from_schema(doc["components"]["schemas"][name], doc)
    if "anyOf" in schema or "oneOf" in schema:
        return st.one_of([_from_schema(s, doc) for s in schema.get("anyOf") or schema["oneOf"]])
    kind = schema.get("type")
    if kind == "object":
        props = {k: _from_schema(v, doc) for k, v in (schema.get("properties") or {}).items()}
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            return st.dictionaries(st.text(max_size=8), _from_schema(extra, doc), max_size=6)
        return st.fixed_dictionaries({k: v for k, v in props.items() if k in schema.get("required", [])},
                                     optional={k: v for k, v in props.items() if k not in schema.get("required", [])})
    if kind == "array":
        low = schema.get("minItems", 0)
        return st.lists(_from_schema(schema.get("items") or {}, doc), min_size=low,
                        max_size=min(schema.get("maxItems", low + 4), low + 4))
    if kind == "number":
        return st.floats(allow_nan=False, allow_infinity=False) | st.sampled_from([0.0, -0.0, 1e308, -1e308, 5e-324])
    if kind == "integer":
        return st.integers()
    if kind == "string":
        return st.text()
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    return st.none() | st.integers() | st.text()


def test_fuzzing_every_route_from_its_openapi_document_gives_no_5xx(app, reliability):
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    doc = httpx.get(f"{app['url']}/openapi.json", headers=AUTH, timeout=10).json()
    json_values = st.recursive(st.none() | st.booleans() | st.floats(allow_nan=False, allow_infinity=False) | st.integers() | st.text(),
                               lambda kids: st.lists(kids, max_size=5) | st.dictionaries(st.text(), kids, max_size=5),
                               max_leaves=30)
    statuses: dict[str, list[int]] = {}
    rss_before = _replica_rss()
    with httpx.Client(timeout=30, headers=AUTH) as http:
        for path, operations in doc["paths"].items():
            for method, op in operations.items():
                body_schema = ((op.get("requestBody") or {}).get("content") or {}).get("application/json", {})
                bodies = _from_schema(body_schema["schema"], doc) | json_values if body_schema else st.none()
                seen = statuses.setdefault(f"{method.upper()} {path}", [])

                def fuzz(method: str, path: str, seen: list[int], with_body: bool, bodies=bodies):
                    @settings(max_examples=200 if with_body else 5, deadline=None, database=None,
                              suppress_health_check=list(HealthCheck))
                    @given(body=bodies)
                    def call(body):
                        kwargs = {"json": body} if with_body else {}
                        resp = http.request(method.upper(), f"{app['url']}{path}", **kwargs)
                        seen.append(resp.status_code)
                        assert resp.status_code < 500, f"{method} {path} {body!r:.300}: {resp.status_code} {resp.text[:300]}"
                    return call

                fuzz(method, path, seen, bool(body_schema))()
    rss_after = _replica_rss()
    assert "POST /predict" in statuses and len(statuses["POST /predict"]) >= 150
    assert any(code == 200 for code in statuses["POST /predict"]), "no generated body was ever valid"
    total = sum(len(v) for v in statuses.values())
    reliability("hostile input", f"property-based fuzzing of {len(statuses)} routes from the app's OpenAPI "
                "document (hypothesis: bodies valid for the schema + arbitrary JSON)",
                f"{total} requests, 0 5xx; replica RSS {rss_before / 2**20:.0f} → {rss_after / 2**20:.0f} MiB")


def test_a_model_with_nan_output_gets_a_clean_error_not_an_encoder_500(trained_digits):
    """The broken-model branch, in process: NaN weights give a message that names the version."""
    import torch
    from atoll.serving import replica as serving

    version = trained_digits["registered"]["version"]
    predictor = serving.Predictor(os.environ["ATOLL_STORAGE"], f"digits:{version}")
    with torch.no_grad():
        next(predictor.model.parameters()).fill_(float("nan"))
    rows = np.asarray(_rows(3), dtype=np.float32)
    _, probabilities = predictor.predict(rows)
    assert not np.isfinite(probabilities).all()
    status, message = predictor.explain_non_finite(rows, [0, 1, 2])
    assert status == 500 and f"digits:{version}" in message and "NaN" in message and "inputs.0" in message
    json.dumps({"error": message})  # what the route sends encodes fine
    # Extreme (finite) inputs that make an ordinary model's output overflow are the request's fault: a 422.
    status, message = predictor.explain_non_finite(np.full((1, 64), 3e38, dtype=np.float32), [0])
    assert status == 422 and "far outside the training data" in message


# ------------------------------------------------------------------------------------------------
# Access


def test_every_route_but_healthz_and_the_page_shell_needs_the_api_key(app, reliability):
    doc = httpx.get(f"{app['url']}/openapi.json", headers=AUTH, timeout=10).json()
    routes = [(m.upper(), p) for p, ops in doc["paths"].items() for m in ops] + [("GET", "/openapi.json")]
    public = {("GET", "/healthz")} | {(m, p) for m, p in routes if p.startswith("/ui")}
    wrong = {"Authorization": "Bearer not-the-key"}
    with httpx.Client(timeout=10) as http:
        for method, path in routes:
            kwargs = {"json": {"inputs": _rows(1)}} if method == "POST" else {}
            for headers in ({}, wrong, {"Authorization": KEY}, {"Authorization": f"Basic {KEY}"}):
                resp = http.request(method, f"{app['url']}{path}", headers=headers, **kwargs)
                if (method, path) in public:
                    assert resp.status_code != 401, (method, path)
                else:
                    assert resp.status_code == 401, (method, path, headers, resp.status_code)
            if "{" not in path:  # a templated path (a static file's name) has no one right answer
                assert http.request(method, f"{app['url']}{path}", headers=AUTH, **kwargs).status_code == 200, path
        # FastAPI's own unprotected pages are off.
        assert http.get(f"{app['url']}/docs").status_code in (401, 404)

        # A wrong key and a missing one take the same path through the check: compare their latencies.
        def median_ms(headers: dict[str, str]) -> float:
            times = []
            for _ in range(60):
                start = time.perf_counter()
                http.get(f"{app['url']}/", headers=headers)
                times.append(time.perf_counter() - start)
            return statistics.median(times) * 1000

        missing_ms, wrong_ms = median_ms({}), median_ms(wrong)
    reliability("access", f"{len(routes)} routes of a Serve app with an API key, called with no key, a wrong "
                "key, a key without 'Bearer', 'Basic'",
                f"401 on all but /healthz and the /ui page shell; median latency missing {missing_ms:.2f} ms "
                f"vs wrong {wrong_ms:.2f} ms")


def _cluster_pids() -> set[int]:
    """Every process of the cluster: what `atoll up` started and all their descendants (workers, replicas)."""
    from atoll import cluster

    info = cluster.current()
    pids = set()
    for pid in cluster.ray_processes_of(info):
        try:
            pids |= {pid} | {child.pid for child in psutil.Process(pid).children(recursive=True)}
        except psutil.NoSuchProcess:
            continue
    return pids


def _is_loopback(ip: str) -> bool:
    import ipaddress

    address = ipaddress.ip_address(ip)
    return (getattr(address, "ipv4_mapped", None) or address).is_loopback


def _refuses_without_token(port: int) -> bool:
    """A call to a Serve replica's inter-deployment gRPC server without the cluster token is UNAUTHENTICATED."""
    import grpc
    from ray.serve.generated import serve_pb2, serve_pb2_grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            serve_pb2_grpc.ASGIServiceStub(channel).HandleRequest(serve_pb2.ASGIRequest(), timeout=10)
        except grpc.RpcError as exc:
            return exc.code() == grpc.StatusCode.UNAUTHENTICATED
    return False


def test_every_listener_of_the_local_cluster_binds_loopback_but_serves_hard_coded_replica_grpc(app, reliability):
    """Every socket the local cluster listens on (dashboard / Jobs API, Serve's HTTP proxy, and Ray's own gRPC
    servers: GCS, raylet, object manager, workers, agents) is bound to 127.0.0.1, through Ray's local-only
    mode; the GCS refuses a client without the token. The one exception is hard-coded in Ray 2.60: each Serve
    replica's inter-deployment gRPC server binds [::] (ray/serve/_private/replica.py, `"[::]:0"`); Ray puts
    its token interceptor on it, and a call without the token is refused."""
    import subprocess
    import sys
    from pathlib import Path

    from atoll import auth, cluster

    spec = cluster.load_spec()
    http_ports = {spec.atoll.local.dashboard_port: "dashboard + Jobs API", spec.atoll.serve.port: "Serve HTTP",
                  spec.atoll.local.port: "GCS"}
    listening = [c for c in psutil.net_connections(kind="inet")
                 if c.status == psutil.CONN_LISTEN and c.pid in _cluster_pids()]
    found = {c.laddr.port for c in listening} & set(http_ports)
    assert found == set(http_ports), f"not listening: {set(http_ports) - found}"
    assert len(listening) >= 10, listening  # the whole cluster was seen, not a part of it
    exposed = [c for c in listening if not _is_loopback(c.laddr.ip)]
    replica_grpc = [c for c in exposed if psutil.Process(c.pid).name().startswith("ray::ServeReplica")]
    others = sorted(f"{psutil.Process(c.pid).name()} {c.laddr.ip}:{c.laddr.port}" for c in exposed
                    if c not in replica_grpc)
    assert not others, f"listening beyond loopback: {others}"
    per_replica = Counter(c.pid for c in replica_grpc)
    assert all(n == 1 for n in per_replica.values()), per_replica  # one inter-deployment server each, no more
    assert all(_refuses_without_token(c.laddr.port) for c in replica_grpc)

    # Defence in depth: Ray's gRPC servers refuse a client without the token.
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    # Ray's CLI, like any client of a loopback-only cluster, needs local-only mode (it would dial the
    # machine's routable IP for 127.0.0.1 otherwise); and no token.
    env.update({"RAY_AUTH_TOKEN_PATH": "/nonexistent", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"})
    ray = str(Path(sys.executable).parent / "ray")
    out = subprocess.run([ray, "status", f"--address=127.0.0.1:{spec.atoll.local.port}"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "uthenticat" in out.stdout + out.stderr, out.stdout[-500:] + out.stderr[-500:]
    assert auth.read_token()
    names = sorted({psutil.Process(c.pid).name() for c in listening if c not in replica_grpc})
    reliability("access", "listening sockets of every process of the local cluster",
                f"{len(listening)} sockets; {len(listening) - len(replica_grpc)} on 127.0.0.1 (dashboard, Jobs API, "
                f"Serve HTTP and Ray-core gRPC: {', '.join(names)}); {len(replica_grpc)} on [::], one per Serve replica "
                f"(its inter-deployment gRPC server, hard-coded in Ray 2.60), each refusing a call without the token; "
                f"the GCS refuses a client without the token")

"""A Serve endpoint under faults and floods: a replica SIGKILLed under load, more requests than it can hold.

One app, 2 replicas of the digits model trained for real, with small queues so that a flood from one
test process overflows them, and an API key (every client here sends it).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import signal
import statistics
import struct
import threading
import time
import zlib
from collections import Counter
from collections.abc import Iterator

import httpx
import numpy as np
import psutil
import pytest
from atoll.serving import endpoints
from conftest import run_cli

from .sockets import cluster_pids, is_loopback

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


def _replicas(app: str = APP) -> list[dict]:
    deployment = endpoints._apps(endpoints._details(endpoints.cluster.current()))[app]["deployments"]
    return deployment[endpoints.DEPLOYMENT_NAME]["replicas"]


def _running_pids(app: str = APP) -> set[int]:
    return {r["pid"] for r in _replicas(app) if r.get("state") == "RUNNING" and r.get("pid")}


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
                 header: str = "retry-after", body: bytes | None = None) -> list[tuple[int, float, str | None]]:
    """``n`` requests, ``concurrency`` at a time: (status, latency, the response's ``header``) of each.
    Each sends ``body`` (JSON), or else 64 digits rows."""
    sem = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async with httpx.AsyncClient(timeout=30, headers=headers, limits=limits) as http:
        async def one() -> tuple[int, float, str | None]:
            async with sem:
                start = time.monotonic()
                try:
                    resp = await (http.post(f"{url}/predict", json={"inputs": _rows(64)}) if body is None else
                                  http.post(f"{url}/predict", content=body, headers={"Content-Type": "application/json"}))
                    return resp.status_code, time.monotonic() - start, resp.headers.get(header)
                except httpx.HTTPError:
                    return 0, time.monotonic() - start, None

        return await asyncio.gather(*(one() for _ in range(n)))


def _replica_rss(app: str = APP) -> int:
    return sum(psutil.Process(pid).memory_info().rss for pid in _running_pids(app))


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


@contextlib.contextmanager
def _keyed_client(url: str) -> Iterator[list[int]]:
    """A client with the key predicting in a loop (up to 400 requests) for as long as the block runs; yields
    the list its statuses land in."""
    keyed: list[int] = []
    stop = threading.Event()

    def client() -> None:
        with httpx.Client(timeout=30, headers=AUTH) as http:
            while not stop.is_set() and len(keyed) < 400:
                keyed.append(http.post(f"{url}/predict", json={"inputs": _rows()}).status_code)

    thread = threading.Thread(target=client, daemon=True)
    thread.start()
    try:
        yield keyed
    finally:
        stop.set()
        thread.join(timeout=60)


def test_a_keyless_flood_is_refused_at_the_proxy_and_a_keyed_client_loses_no_request(app, reliability):
    """The API key is checked in Serve's HTTP proxy (atoll.serving.proxy_auth): keyless requests never take a slot of
    the replicas' queues (16 here), so a keyed client beside a flood of 64 at a time gets every answer."""
    with _keyed_client(app["url"]) as keyed:
        answers = asyncio.run(_flood(app["url"], n=600, concurrency=64, headers={}, header="x-atoll-refused-by"))
    codes = Counter(code for code, _, _ in answers)
    by_proxy = sum(1 for code, _, where in answers if code == 401 and where == "proxy")
    assert codes == {401: 600}, codes
    assert by_proxy == 600, f"only {by_proxy} of 600 refusals came from the proxy"
    assert keyed and Counter(keyed) == {200: len(keyed)}, Counter(keyed)
    p50 = statistics.median(lat for _, lat, _ in answers) * 1000
    reliability("access", "600 requests without a key, 64 at a time, beside a keyed client (queues for 16)",
                f"600/600 refused 401 by the HTTP proxy (median {p50:.0f} ms), none reached a replica; keyed client "
                f"{len(keyed)}/{len(keyed)} answered 200")


def test_a_keyless_flood_of_a_keyed_apps_public_routes_takes_no_replica_slot(app, reliability):
    """Issue 32.7: /healthz, the page shell and its files need no key, yet a flood of them must not fill the
    replicas' queues or drive autoscaling either: the proxy answers them itself (header x-atoll-answered-by),
    naming no model or version; Serve's /-/routes, which names every app, needs a key."""
    async def flood(n: int, concurrency: int) -> list[tuple[int, str | None, str]]:
        sem = asyncio.Semaphore(concurrency)
        paths = ["healthz", "ui", "ui/static/playground.js"]
        async with httpx.AsyncClient(timeout=30) as http:
            async def one(i: int) -> tuple[int, str | None, str]:
                async with sem:
                    try:
                        resp = await http.get(f"{app['url']}/{paths[i % len(paths)]}")
                        return resp.status_code, resp.headers.get("x-atoll-answered-by"), resp.text[:200]
                    except httpx.HTTPError:
                        return 0, None, ""

            return await asyncio.gather(*(one(i) for i in range(n)))

    with _keyed_client(app["url"]) as keyed:
        answers = asyncio.run(flood(n=900, concurrency=64))
    codes = Counter(code for code, _, _ in answers)
    by_proxy = sum(1 for code, where, _ in answers if code == 200 and where == "proxy")
    assert codes == {200: 900} and by_proxy == 900, (codes, by_proxy)
    assert not any("digits" in text for _, _, text in answers[::3])  # /healthz names no model
    success = sum(code == 200 for code in keyed) / max(1, len(keyed))
    assert keyed and success >= 0.99, Counter(keyed)
    routes = httpx.get(app["url"].rsplit("/", 1)[0] + "/-/routes", timeout=30)
    assert routes.status_code == 401 and APP not in routes.text
    assert httpx.get(app["url"].rsplit("/", 1)[0] + "/-/routes", headers=AUTH, timeout=30).status_code == 200
    reliability("access", "900 keyless GETs of a keyed app's public routes (/healthz, /ui, its script), 64 at a "
                "time, beside a keyed client", f"900/900 answered 200 by the HTTP proxy itself, none reached a "
                f"replica; keyed client {sum(c == 200 for c in keyed)}/{len(keyed)} answered 200; /-/routes 401 "
                f"without a key")


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
    if "enum" in schema:  # e.g. an inference tensor's datatype
        return st.sampled_from(schema["enum"])
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
    if kind == "number" and ("minimum" in schema or "maximum" in schema):  # e.g. pixels 0–255
        low, high = schema.get("minimum"), schema.get("maximum")
        return st.floats(min_value=low, max_value=high) | st.sampled_from([v for v in (low, high) if v is not None])
    if kind == "number":
        return st.floats(allow_nan=False, allow_infinity=False) | st.sampled_from([0.0, -0.0, 1e308, -1e308, 5e-324])
    if kind == "integer":
        return st.integers(min_value=schema.get("minimum"), max_value=schema.get("maximum"))
    if kind == "string":
        return st.text(min_size=schema.get("minLength", 0))
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    return st.none() | st.integers() | st.text()


def _fuzz_routes(url: str, max_examples: int = 200) -> dict[str, list[int]]:
    """Every route of the app's OpenAPI document called with hypothesis-made bodies (valid for the route's
    schema, and arbitrary JSON): the statuses per route, asserting no 5xx."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    doc = httpx.get(f"{url}/openapi.json", headers=AUTH, timeout=10).json()
    json_values = st.recursive(st.none() | st.booleans() | st.floats(allow_nan=False, allow_infinity=False) | st.integers() | st.text(),
                               lambda kids: st.lists(kids, max_size=5) | st.dictionaries(st.text(), kids, max_size=5),
                               max_leaves=30)
    statuses: dict[str, list[int]] = {}
    app_name = url.rstrip("/").rsplit("/", 1)[-1]  # a model route's {name}: the app's name is one it answers to
    with httpx.Client(timeout=30, headers=AUTH) as http:
        for path, operations in doc["paths"].items():
            for method, op in operations.items():
                body_schema = ((op.get("requestBody") or {}).get("content") or {}).get("application/json", {})
                bodies = _from_schema(body_schema["schema"], doc) | json_values if body_schema else st.none()
                seen = statuses.setdefault(f"{method.upper()} {path}", [])

                def fuzz(method: str, path: str, seen: list[int], with_body: bool, bodies=bodies):
                    @settings(max_examples=max_examples if with_body else 5, deadline=None, database=None, derandomize=True,
                              suppress_health_check=list(HealthCheck))
                    @given(body=bodies)
                    def call(body):
                        kwargs = {"json": body} if with_body else {}
                        resp = http.request(method.upper(), f"{url}{path.replace('{name}', app_name)}", **kwargs)
                        seen.append(resp.status_code)
                        assert resp.status_code < 500, f"{method} {path} {body!r:.300}: {resp.status_code} {resp.text[:300]}"
                    return call

                fuzz(method, path, seen, bool(body_schema))()
    return statuses


def test_fuzzing_every_route_from_its_openapi_document_gives_no_5xx(app, reliability):
    rss_before = _replica_rss()
    statuses = _fuzz_routes(app["url"])
    rss_after = _replica_rss()
    assert "POST /predict" in statuses and len(statuses["POST /predict"]) >= 150
    assert any(code == 200 for code in statuses["POST /predict"]), "no generated body was ever valid"
    for route in ("POST /v2/models/{name}/infer", "POST /invocations"):  # their declared bodies, not one empty one
        assert len(statuses[route]) >= 150 and 404 not in statuses[route], (route, Counter(statuses[route]))
    total = sum(len(v) for v in statuses.values())
    reliability("hostile input", f"property-based fuzzing of {len(statuses)} routes from the app's OpenAPI "
                "document (hypothesis: bodies valid for the schema + arbitrary JSON)",
                f"{total} requests, 0 5xx; replica RSS {rss_before / 2**20:.0f} → {rss_after / 2**20:.0f} MiB")


def test_fuzzing_the_standard_protocols_with_their_real_body_shapes_gives_no_5xx(app, reliability):
    """Open Inference Protocol bodies (JSON tensors and Triton's binary ones) and MLflow bodies (data frames,
    instances, CSV) as their clients send them, from tests/test_protocol_fuzz.py's strategies: a valid one gets
    what /predict answers for the same rows, a hostile one a 4xx in the protocol's error shape, none a 5xx."""
    import tritonclient.http as triton
    from atoll.serving import protocols
    from hypothesis import HealthCheck, given, settings
    from test_protocol_fuzz import hostile_mlflow, hostile_oip, valid_digits_mlflow, valid_digits_oip

    fuzz = settings(max_examples=150, deadline=None, database=None, derandomize=True,
                    suppress_health_check=list(HealthCheck))
    statuses: dict[str, Counter] = {"infer": Counter(), "invocations": Counter()}
    rss_before = _replica_rss()
    with httpx.Client(timeout=30, headers=AUTH) as http:
        def predict(rows: list) -> httpx.Response:  # JSON by hand: rows beyond float32 are inf, "Infinity"
            return http.post(f"{app['url']}/predict", content=json.dumps({"inputs": rows}).encode(),
                             headers={"Content-Type": "application/json"})

        def infer(body: bytes, header: str | None) -> httpx.Response:
            headers: dict[str, str | bytes] = {"Content-Type": "application/json"}
            if header is not None:  # bytes: a hostile length need not be ASCII ("²"); what HTTP cannot carry, "x"
                raw = header.encode("utf-8")
                raw = raw if all(0x21 <= b <= 0x7e or b >= 0x80 for b in raw) else b"x"
                headers = {"Content-Type": "application/octet-stream", protocols.HEADER_LENGTH: raw}
            resp = http.post(f"{app['url']}/v2/models/digits/infer", content=body, headers=headers)
            statuses["infer"][resp.status_code] += 1
            assert resp.status_code < 500, f"infer {body[:200]!r} {header!r}: {resp.status_code} {resp.text[:300]}"
            if resp.status_code >= 400:
                assert resp.json()["error"], resp.text
            return resp

        def invocations(body: bytes, content_type: str) -> httpx.Response:
            resp = http.post(f"{app['url']}/invocations", content=body, headers={"Content-Type": content_type})
            statuses["invocations"][resp.status_code] += 1
            assert resp.status_code < 500, f"invocations {body[:200]!r}: {resp.status_code} {resp.text[:300]}"
            if resp.status_code >= 400:
                assert resp.json()["error_code"] and resp.json()["message"], resp.text
            return resp

        @fuzz
        @given(request=valid_digits_oip())
        def valid_tensors(request):
            body, header, rows = request
            got, expected = infer(body, header), predict(rows)
            assert got.status_code == expected.status_code, (got.text[:300], expected.text[:300])
            if expected.status_code == 200:
                length = got.headers.get(protocols.HEADER_LENGTH)
                result = triton.InferenceServerClient.parse_response_body(
                    got.content, header_length=int(length) if length else None)
                assert result.as_numpy("predictions").tolist() == expected.json()["predictions"]
                assert np.allclose(result.as_numpy("probabilities"), expected.json()["probabilities"], atol=1e-6)

        @fuzz
        @given(request=valid_digits_mlflow())
        def valid_frames(request):
            body, content_type, rows = request
            got, expected = invocations(body, content_type), predict(rows)
            assert got.status_code == expected.status_code, (got.text[:300], expected.text[:300])
            if expected.status_code == 200:
                assert got.json() == {"predictions": expected.json()["predictions"]}

        @fuzz
        @given(request=hostile_oip())
        def hostile_tensors(request):
            infer(*request)

        @fuzz
        @given(request=hostile_mlflow())
        def hostile_frames(request):
            invocations(*request)

        for run in (valid_tensors, valid_frames, hostile_tensors, hostile_frames):
            run()
    rss_after = _replica_rss()
    for route, seen in statuses.items():
        # Both kinds were reached: valid bodies answered as /predict answers them (the fixed examples: 104 and 75
        # answered 200), hostile ones refused.
        assert seen[200] >= 50 and sum(n for code, n in seen.items() if 400 <= code < 500) >= 100, (route, seen)
    summary = "; ".join(f"{route}: " + ", ".join(f"{n} × {code}" for code, n in sorted(seen.items()))
                        for route, seen in statuses.items())
    reliability("hostile input", "property-based fuzzing of /v2/models/{name}/infer and /invocations with their "
                "clients' body shapes (JSON and binary tensors; data frames, instances, CSV), valid ones compared "
                "with /predict", f"{summary}; 0 5xx; replica RSS {rss_before / 2**20:.0f} → "
                f"{rss_after / 2**20:.0f} MiB")


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
# The image and text apps: hostile bodies, a flood of the heaviest requests, fuzzing. Their bodies are
# decoded and tokenized off the replica's event loop, and a request's images are capped in pixels together.

#: kind → (the fixture that trains its version, the app deployed from it here)
MODALITY_APPS = {"images": ("trained_images", "faults-images"), "texts": ("trained_text", "faults-text")}


@pytest.fixture(scope="module", params=sorted(MODALITY_APPS))
def modality_app(request):
    """The image or the text version as its own keyed app (1 replica, the default queues and limits); one at a
    time: pytest runs every test of one kind before it deploys the other."""
    trained_fixture, name = MODALITY_APPS[request.param]
    trained = request.getfixturevalue(trained_fixture)
    ref = f"{trained['registered']['name']}:{trained['registered']['version']}"
    result = run_cli("serve", "deploy", ref, "--app", name, "--replicas", "1:1", "--set", "num_cpus_per_replica=0.1",
                     "--json", env={"ATOLL_API_KEY": KEY}, timeout=400)
    assert result.returncode == 0, result.stdout + result.stderr
    yield {**json.loads(result.stdout), "kind": request.param}
    endpoints.delete(name)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png(width: int, height: int, pixel_data: bytes | None = None) -> bytes:
    """A grey PNG of ``width × height`` black pixels, made a row at a time (zlib shrinks them ~1000×: a
    4096×4096 one is 16 KB); or the same header over ``pixel_data`` (garbage: sized without decoding, and
    decoding it fails)."""
    if pixel_data is None:
        pack, row = zlib.compressobj(9), b"\x00" * (width + 1)  # filter byte 0, then the row
        pixel_data = b"".join(pack.compress(row) for _ in range(height)) + pack.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", pixel_data)
            + _png_chunk(b"IEND", b""))


def _images_body(*pngs: bytes) -> bytes:
    return json.dumps({"inputs": [{"b64": base64.b64encode(png).decode()} for png in pngs]}).encode()


def _texts_body(texts: list[str]) -> bytes:
    return json.dumps({"inputs": texts}).encode()


def _common_hostile_cases() -> dict[str, tuple[bytes, int, str]]:
    big = b'{"inputs": [' + b",".join([b'"' + b"a" * 1000 + b'"'] * 11_000) + b"]}"  # ~11 MB
    return {"11 MB body": (big, 413, "max_body_bytes"),
            "10,000-deep nesting": (b'{"inputs": ' + b"[" * 10_000 + b"]" * 10_000 + b"}", 400, "nested too deeply"),
            "invalid UTF-8": (b'{"inputs": ["\xff\xfe"]}', 400, "not valid JSON"),
            "empty body": (b"", 400, "empty body"),
            "a pickle": (b"\x80\x04\x95\x05\x00\x00\x00\x00\x00\x00\x00K\x01.", 400, "not valid JSON"),
            "empty list": (b'{"inputs": []}', 422, "a non-empty list"),
            "unknown top-level key": (b'{"inputs": [], "extra": 1}', 422, "must be a JSON object like")}


def _hostile_image_cases() -> dict[str, tuple[bytes, int, str]]:
    """name → (body, the status it must get, a part of its answer: the error, or "predictions")."""
    side = 4096
    blank = _png(side, side)
    grey = np.zeros((8, 8), dtype=int).tolist()
    return {
        "one blank 4096×4096 PNG (the largest image allowed)": (_images_body(blank), 200, "predictions"),
        "four blank 4096×4096 PNGs (67 MP: the most pixels a request may hold)": (_images_body(*[blank] * 4), 200,
                                                                                 "predictions"),
        "five blank 4096×4096 PNGs in 110 KB (84 MP)": (_images_body(*[blank] * 5), 413, "(max_request_pixels)"),
        "40 blank 4096×4096 PNGs in 870 KB (671 MP: a decompression bomb)": (_images_body(*[blank] * 40), 413,
                                                                             "(max_request_pixels)"),
        "a 4097×4097 PNG header over garbage": (_images_body(_png(side + 1, side + 1, b"garbage")), 422,
                                                "inputs.0: 4097×4097 pixels is larger than"),
        "a 100000×100000 PNG header over garbage": (_images_body(_png(100_000, 100_000, b"garbage")), 422,
                                                    "is larger than"),
        "a 64×64 PNG header over garbage": (_images_body(_png(64, 64, b"garbage, not zlib")), 422,
                                            "inputs.0: the image data is truncated or corrupt"),
        "a PNG cut in half": (_images_body(_png(64, 64)[:40]), 422, "inputs.0: "),
        "invalid base64": (b'{"inputs": [{"b64": "%%% not base64"}]}', 422, "inputs.0: not valid base64"),
        "base64 with non-ASCII": ('{"inputs": ["\u00e9t\u00e9"]}'.encode(), 422, "inputs.0: not valid base64"),
        "base64 of text, not an image": (b'{"inputs": [{"b64": "bm90IGFuIGltYWdl"}]}', 422, "inputs.0: not an image"),
        "a data: URL without its comma": (b'{"inputs": ["data:image/png;base64"]}', 422, "inputs.0: not valid base64"),
        "b64 beside another key": (b'{"inputs": [{"b64": "AAAA", "x": 1}]}', 422, "inputs.0: an image is an array"),
        "1025 images": (json.dumps({"inputs": [grey] * 1025}).encode(), 413, "(max_rows)"),
        "a 1500×1500 pixel array (6.8 MB of JSON)": (json.dumps({"inputs": [[[0] * 1500] * 1500]}).encode(), 413,
                                                     "max_body_bytes"),
        "pixel values out of range": (b'{"inputs": [[[0, 300]]]}', 422, "pixel values must be numbers from 0 to 255"),
        "ragged rows": (b'{"inputs": [[[0, 1], [2]]]}', 422, "the rows are not all the same length"),
        "NaN pixels": (b'{"inputs": [[[NaN, 1]]]}', 422, "pixel values must be numbers"),
        "a 5-channel pixel array": (json.dumps({"inputs": [[[[0] * 5] * 2] * 2]}).encode(), 422,
                                    "an array image is height × width"),
        **_common_hostile_cases(),
    }


def _hostile_text_cases() -> dict[str, tuple[bytes, int, str]]:
    """name → (body, the status it must get, a part of its answer: the error, or "predictions")."""
    return {
        "a 1 MB text": (_texts_body(["word " * 209_000]), 200, "predictions"),
        "a 500,000-letter word": (_texts_body(["a" * 500_000]), 200, "predictions"),
        "1024 texts of 1000 characters (the most rows, near the most bytes)": (_texts_body(["spam " * 200] * 1024), 200,
                                                                                "predictions"),
        "1025 texts": (_texts_body(["hi"] * 1025), 413, "(max_rows)"),
        "a lone surrogate escape": (b'{"inputs": ["ok \\ud800 then"]}', 422, "inputs.0: the text holds a lone surrogate"),
        "NUL and control characters": (_texts_body(["\x00\x01\x1b[31m red \x7f"]), 200, "predictions"),
        "right-to-left override, combining marks, emoji": (_texts_body(["\u202egnaps \u0301\u0301 😀 win"]), 200,
                                                           "predictions"),
        "only whitespace": (_texts_body([" \n\t "]), 422, "inputs.0: the text is empty"),
        "a number": (b'{"inputs": [7]}', 422, "inputs.0: expected a text"),
        "a nested list": (b'{"inputs": [["a"]]}', 422, "inputs.0: expected a text"),
        "null": (b'{"inputs": [null]}', 422, "inputs.0: expected a text"),
        "a string, not a list": (b'{"inputs": "hello"}', 422, "a non-empty list of texts"),
        **_common_hostile_cases(),
    }


def test_hostile_image_and_text_bodies_get_4xx_naming_the_problem_and_the_replica_stays_healthy(modality_app,
                                                                                                  reliability):
    url, kind = modality_app["url"], modality_app["kind"]
    cases = _hostile_image_cases() if kind == "images" else _hostile_text_cases()
    rss_before = _replica_rss(modality_app["app"])
    wrong = {}
    for name, (body, status, expected) in cases.items():
        resp = _post_raw(url, body, {"Content-Type": "application/json"})
        text = resp.text
        if resp.status_code != status or expected not in text or "Traceback" in text:
            wrong[name] = f"{resp.status_code} {text[:300]}"
    rss_after = _replica_rss(modality_app["app"])
    assert not wrong, "\n".join(f"{name}: {answer}" for name, answer in wrong.items())
    with httpx.Client(timeout=10) as http:
        assert http.get(f"{url}/healthz").json()["status"] == "ok"
    statuses = {a["app"]: a["status"] for a in endpoints.status()}
    assert statuses[modality_app["app"]] == "RUNNING", statuses
    growth = (rss_after - rss_before) / 2**20
    assert growth < 300, f"replica memory grew {growth:.0f} MiB"
    codes = Counter(status for _, status, _ in cases.values())
    reliability("hostile input", f"{len(cases)} hand-made bodies for the {kind} app ("
                + ("decompression bombs, 4097² and 100000² PNG headers, garbage pixel data, invalid base64, "
                   "1025 images, ..." if kind == "images" else
                   "a 1 MB text, a 500,000-letter word, 1024 long texts, a lone surrogate, control characters, ...")
                + ")", f"each the status it must get ({', '.join(f'{n} x {c}' for c, n in sorted(codes.items()))}), "
                f"0 5xx; app RUNNING; replica RSS {rss_before / 2**20:.0f} → {rss_after / 2**20:.0f} MiB")


def _heaviest_body(kind: str) -> bytes:
    """The heaviest request the default limits allow: four 4096×4096 images (67 MP, decoded and resized), or
    1024 texts of 1000 characters (tokenized)."""
    if kind == "images":
        return _images_body(*[_png(4096, 4096)] * 4)
    return _texts_body(["spam " * 200] * 1024)


def test_a_flood_of_the_heaviest_image_or_text_requests_leaves_healthz_answering_at_once(modality_app, reliability):
    """While 16 clients keep the replica parsing, /healthz is answered by its event loop at once: decoding and
    tokenizing run beside the loop, not on it."""
    url, kind = modality_app["url"], modality_app["kind"]
    body = _heaviest_body(kind)
    health: list[tuple[int, float]] = []
    stop = threading.Event()

    def poll_health() -> None:
        with httpx.Client(timeout=30) as http:
            while not stop.is_set():
                start = time.monotonic()
                try:
                    code = http.get(f"{url}/healthz").status_code
                except httpx.HTTPError:
                    code = 0
                health.append((code, time.monotonic() - start))
                time.sleep(0.05)

    rss_before = _replica_rss(modality_app["app"])
    poller = threading.Thread(target=poll_health, daemon=True)
    poller.start()
    started = time.monotonic()
    try:
        answers = asyncio.run(_flood(url, n=32, concurrency=16, body=body))  # two rounds of 16
    finally:
        stop.set()
        poller.join(timeout=60)
    took = time.monotonic() - started
    rss_after = _replica_rss(modality_app["app"])
    codes = Counter(code for code, _, _ in answers)
    assert set(codes) <= {200, 503} and codes[200] > 0, codes
    assert len(health) >= 10 and {code for code, _ in health} == {200}, Counter(code for code, _ in health)
    health_p50 = statistics.median(lat for _, lat in health)
    health_max = max(lat for _, lat in health)
    work_p50 = statistics.median(lat for code, lat, _ in answers if code == 200)
    # On the loop, one heavy parse after another would hold /healthz for a queue of them (seconds).
    assert health_p50 < 0.3, f"/healthz took {health_p50:.2f} s (median) during the flood"
    growth = (rss_after - rss_before) / 2**20
    assert growth < 600, f"replica memory grew {growth:.0f} MiB during the flood"
    with httpx.Client(timeout=60, headers=AUTH) as http:
        after = [http.post(f"{url}/predict", content=body, headers={"Content-Type": "application/json"}).status_code
                 for _ in range(3)]
    assert after == [200] * 3
    reliability("overload", f"{len(answers)} of the heaviest {kind} requests ({len(body) / 1e3:.0f} KB: "
                + ("4 × 4096² PNGs" if kind == "images" else "1024 texts × 1000 chars") + "), 16 at a time, "
                "/healthz polled meanwhile",
                f"{codes[200]} served (median {work_p50:.2f} s), {codes[503]} shed, 0 5xx; /healthz {len(health)}/"
                f"{len(health)} OK, median {health_p50 * 1000:.0f} ms, max {health_max * 1000:.0f} ms; flood {took:.1f} s; "
                f"replica RSS {rss_before / 2**20:.0f} → {rss_after / 2**20:.0f} MiB; 3/3 OK after")


def test_fuzzing_the_image_and_text_apps_from_their_openapi_documents_gives_no_5xx(modality_app, reliability):
    rss_before = _replica_rss(modality_app["app"])
    statuses = _fuzz_routes(modality_app["url"], max_examples=150)
    rss_after = _replica_rss(modality_app["app"])
    assert "POST /predict" in statuses and len(statuses["POST /predict"]) >= 100
    assert any(code == 200 for code in statuses["POST /predict"]), "no generated body was ever valid"
    total = sum(len(v) for v in statuses.values())
    reliability("hostile input", f"property-based fuzzing of the {modality_app['kind']} app's {len(statuses)} routes "
                "from its OpenAPI document (hypothesis: bodies valid for the schema + arbitrary JSON)",
                f"{total} requests, 0 5xx; replica RSS {rss_before / 2**20:.0f} → {rss_after / 2**20:.0f} MiB")


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
                 if c.status == psutil.CONN_LISTEN and c.pid in cluster_pids()]
    found = {c.laddr.port for c in listening} & set(http_ports)
    assert found == set(http_ports), f"not listening: {set(http_ports) - found}"
    assert len(listening) >= 10, listening  # the whole cluster was seen, not a part of it
    exposed = [c for c in listening if not is_loopback(c.laddr.ip)]
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

"""Serving metrics (issue 35.1-2): the metric definitions and the replica's recording, Prometheus's config and the
status table's math (no cluster); a real Prometheus scraping a stand-in metrics endpoint (no cluster); and on the
session's cluster, a keyed app's traffic read back from a real Prometheus started by `atoll metrics up`."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import psutil
import pytest
import yaml
from atoll import prometheus
from atoll.serving import metrics

#: CI installs Debian's Prometheus and sets this: the tests that need it fail there rather than skip.
REQUIRED = bool(os.environ.get("ATOLL_REQUIRE_PROMETHEUS"))


def _need_prometheus() -> None:
    try:
        prometheus.binary()
    except prometheus.PrometheusError as exc:
        if REQUIRED:
            pytest.fail(f"{exc} (ATOLL_REQUIRE_PROMETHEUS is set: the metrics tests must run)")
        pytest.skip(str(exc))


def wait_for(condition, timeout: float, what: str, every: float = 0.5):
    """``condition()``'s first truthy value, polled; fails with ``what`` and the last value after ``timeout``."""
    deadline, last = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        last = condition()
        if last:
            return last
        time.sleep(every)
    pytest.fail(f"{what} not within {timeout:.0f} s; last: {last!r}")


def wait_for_value(fetch, want, timeout: float, what: str, every: float = 1):
    """Polls ``fetch()`` until it equals ``want``; fails naming the values it saw (and when) after ``timeout``."""
    start, seen = time.monotonic(), []
    while True:
        value = fetch()
        if value == want:
            print(f"{what}: {want!r} at {time.monotonic() - start:.1f} s after {seen!r}")  # shown with -s or on failure
            return value
        if not seen or seen[-1][1] != value:
            seen.append((round(time.monotonic() - start, 1), value))
        if time.monotonic() - start > timeout:
            pytest.fail(f"{what} != {want!r} within {timeout:.0f} s; seen (s, value): {seen!r}")
        time.sleep(every)


# ------------------------------------------------------------------------------------------------
# No cluster: definitions, recording, config, math


def test_status_classes_keep_401_and_503_apart():
    assert [metrics.status_class(c) for c in (200, 204, 307, 400, 401, 404, 413, 422, 500, 503, 504)] == \
        ["2xx", "2xx", "2xx", "4xx", "401", "4xx", "4xx", "4xx", "5xx", "503", "5xx"]
    assert set(metrics.STATUS_CLASSES) == {metrics.status_class(c) for c in (200, 400, 401, 500, 503)}


def test_route_labels_are_templates_and_unknown_paths_are_other():
    assert metrics.route_label("/predict") == "/predict"
    assert metrics.route_label("") == "/"
    assert metrics.route_label("/v2/models/digits/infer") == "/v2/models/{name}/infer"
    assert metrics.route_label("/v2/models/digits") == "/v2/models/{name}"
    assert metrics.route_label("/ui/static/playground.js") == "/ui/static/{name}"
    assert {metrics.route_label(p) for p in ("/wp-admin.php", "/a/b/c", "/predict/x")} == {"other"}


class _Fake:
    """Stands in for one of Ray's metric objects: keeps what was recorded."""

    def __init__(self) -> None:
        self.seen: list[tuple[float, dict]] = []

    def inc(self, value, tags):
        self.seen.append((value, dict(tags)))

    observe = inc


def _fake_recorder() -> metrics.Recorder:
    rec = metrics.Recorder()
    rec._requests, rec._latency, rec._model, rec._batch, rec._wait = (_Fake() for _ in range(5))
    return rec.set_app("digits", "digits:3")


def test_the_replica_middleware_counts_each_request_by_route_template_and_status(monkeypatch):
    from fastapi import FastAPI

    rec = _fake_recorder()
    monkeypatch.setattr(metrics, "_recorder", rec)
    api = FastAPI()
    api.add_middleware(metrics.RequestMetrics)

    @api.post("/v2/models/{name}/infer")
    def infer(name: str):
        return {"name": name}

    @api.get("/boom")
    def boom():
        raise RuntimeError("a bug")

    async def drive():
        transport = httpx.ASGITransport(app=api, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://replica") as client:
            assert (await client.post("/v2/models/digits/infer")).status_code == 200
            assert (await client.get("/nowhere")).status_code == 404
            assert (await client.get("/boom")).status_code == 500

    asyncio.run(drive())
    tags = [t for _, t in rec._requests.seen]
    assert tags == [{"application": "digits", "model": "digits:3", "route": "/v2/models/{name}/infer", "status": "2xx"},
                    {"application": "digits", "model": "digits:3", "route": "other", "status": "4xx"},
                    {"application": "digits", "model": "digits:3", "route": "/boom", "status": "5xx"}]
    assert [t for _, t in rec._latency.seen] == tags and all(ms > 0 for ms, _ in rec._latency.seen)


def test_a_batch_records_its_size_each_wait_and_the_model_call():
    rec = _fake_recorder()
    items = [[1], [2, 3], [4]]
    for item in items:
        rec.queued(item)
    time.sleep(0.01)
    started = rec.batch_started(items[:2])  # the third waits for the next batch
    rec.batch_done(started)
    assert [v for v, _ in rec._batch.seen] == [2]
    assert len(rec._wait.seen) == 2 and all(ms >= 10 for ms, _ in rec._wait.seen)
    assert rec._wait.seen[0][1] == {"application": "digits", "model": "digits:3"}
    assert len(rec._model.seen) == 1
    rec.unqueued(items[2])  # its request was cancelled: nothing left behind
    assert rec._queued == {}


def test_the_prometheus_config_scrapes_rays_service_discovery_file(tmp_path):
    sd = prometheus.sd_file_of("/tmp/ray-6390/session_2026-01-01_00-00-00_1")
    assert sd == Path("/tmp/ray-6390/prom_metrics_service_discovery.json")
    text = prometheus.config_text(sd, 1.5)
    conf = yaml.safe_load(text)
    assert conf["global"]["scrape_interval"] == "1500ms"
    job = conf["scrape_configs"][0]
    assert job["job_name"] == "ray" and job["file_sd_configs"][0]["files"] == [str(sd)]
    promtool = shutil.which("promtool")
    if promtool:  # Debian's package ships it: Prometheus's own check of the file
        path = tmp_path / "prometheus.yml"
        path.write_text(text)
        check = subprocess.run([promtool, "check", "config", str(path)], capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr


def test_a_missing_prometheus_is_one_line_with_the_apt_command(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    with pytest.raises(prometheus.PrometheusError, match="apt-get install -y prometheus"):
        prometheus.binary()


def test_a_taken_port_is_refused_and_the_default_is_9090_or_a_free_one():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        taken = s.getsockname()[1]
        with pytest.raises(prometheus.PrometheusError, match="--port"):
            prometheus.choose_port(taken)
    port = prometheus.choose_port(None)
    assert port == prometheus.DEFAULT_PORT or prometheus.port_free(port)


def _vector(name_values: dict[tuple[str, str], float]) -> list[dict]:
    return [{"metric": {"application": a, "model": m}, "value": v} for (a, m), v in name_values.items()]


def test_the_status_figures_are_rates_and_shares_per_app_and_version():
    results = {
        "rps": _vector({("digits", "digits:3"): 10.0, ("digits", "digits:2"): 0.5, ("idle", "x:1"): 0.0}),
        "errors": _vector({("digits", "digits:3"): 2.5, ("digits", "digits:2"): 0.0, ("idle", "x:1"): 0.0}),
        "server_errors": _vector({("digits", "digits:3"): 0.5}),
        "p50_ms": _vector({("digits", "digits:3"): 4.0, ("idle", "x:1"): float("nan")}),
        "p99_ms": _vector({("digits", "digits:3"): 40.0}),
        "total": _vector({("digits", "digits:3"): 1200.0}),
    }
    figures = prometheus.figures_from(results)
    live = figures[("digits", "digits:3")]
    assert (live["rps"], live["error_rate"], live["server_error_rate"]) == (10.0, 0.25, 0.05)
    assert (live["p50_ms"], live["p99_ms"], live["total"]) == (4.0, 40.0, 1200.0)
    idle = figures[("idle", "x:1")]
    assert idle["p50_ms"] is None and idle["error_rate"] is None  # no traffic: no share, not 0%

    rows = [{"app": "digits", "model": "digits:3"}, {"app": "new", "model": "new:1"}]
    joined = prometheus.with_traffic(rows, figures)
    assert joined[0]["traffic"] is live and list(joined[0]["other_versions"]) == ["digits:2"]  # a rollover's old one
    assert joined[1]["traffic"]["rps"] is None  # Prometheus runs, this app had no traffic yet
    assert all(r["traffic"] is None for r in prometheus.with_traffic(rows, None))  # no Prometheus


def test_serve_status_renders_the_figures_and_says_when_there_are_none():
    from atoll.cli import serve as serve_cli
    from rich.console import Console

    row = {"app": "digits", "status": "RUNNING", "model": "digits:3", "requested": "digits@production",
           "replicas": {"RUNNING": 1}, "url": "http://127.0.0.1:8000/digits", "message": ""}
    figures = {("digits", "digits:3"): {"rps": 12.5, "p50_ms": 3.2, "p99_ms": 41.0, "error_rate": 0.125}}
    out = Console(width=200, record=True)
    out.print(serve_cli._status_view(prometheus.with_traffic([row], figures), None))
    text = out.export_text()
    assert "12.50" in text and "3.2" in text and "41.0" in text and "12.5%" in text and "p99 ms" in text
    out = Console(width=200, record=True)
    out.print(serve_cli._status_view(prometheus.with_traffic([row], None), "no req/s: Prometheus is not running"))
    assert "Prometheus is not running" in out.export_text()


def test_the_grafana_dashboard_is_valid_json_and_queries_atolls_metrics():
    path = Path(metrics.__file__).with_name("grafana") / "atoll_dashboard.json"
    dash = json.loads(path.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    assert len(dash["panels"]) >= 8 and all(exprs)
    names = set(metrics.EXPORTED.values()) | {metrics.SERVE_REPLICAS}
    assert all(any(n in e for n in names) for e in exprs)
    for name in metrics.EXPORTED.values():  # every metric is on the dashboard
        assert any(name in e for e in exprs), name


# ------------------------------------------------------------------------------------------------
# A real Prometheus, no cluster: it scrapes a stand-in node through a service-discovery file


STAND_IN = """# TYPE ray_atoll_requests_total counter
ray_atoll_requests_total{application="digits",model="digits:3",route="/predict",status="2xx",WorkerId="a"} %d
ray_atoll_requests_total{application="digits",model="digits:3",route="/predict",status="4xx",WorkerId="a"} 0
ray_atoll_requests_total{application="digits",model="digits:3",route="/predict",status="401",WorkerId="a"} %d
"""


@pytest.fixture
def stand_in_node(tmp_path):
    """A metrics endpoint on loopback whose counters grow by 10 (2xx) and 5 (401) per second, listed in a
    service-discovery file laid out as Ray's (``<temp dir>/prom_metrics_service_discovery.json``)."""
    start = time.monotonic()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            seconds = int((time.monotonic() - start) * 10) / 10
            body = (STAND_IN % (int(seconds * 10), int(seconds * 5))).encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    temp = tmp_path / "ray"
    (temp / "session_x").mkdir(parents=True)
    (temp / prometheus.SD_FILE).write_text(json.dumps([{"labels": {"job": "ray"},
                                                        "targets": [f"127.0.0.1:{server.server_port}"]}]))
    yield str(temp / "session_x")
    server.shutdown()


def test_a_real_prometheus_scrapes_through_the_discovery_file_and_stops_by_pid(stand_in_node, tmp_path,
                                                                                 monkeypatch):
    _need_prometheus()
    monkeypatch.setenv("ATOLL_HOME", str(tmp_path / "home"))
    info = prometheus.up(stand_in_node, scrape_interval_s=0.5)
    try:
        assert info.url.startswith("http://127.0.0.1:") and prometheus.current().pid == info.pid
        home = prometheus.home()
        assert home.stat().st_mode & 0o777 == 0o700
        assert all(Path(p).stat().st_mode & 0o777 == 0o600 for p in (info.config_file, home / "state.json"))
        conns = [c for c in psutil.Process(info.pid).net_connections() if c.status == psutil.CONN_LISTEN]
        assert conns and all(c.laddr.ip == "127.0.0.1" for c in conns)  # loopback only
        assert prometheus.up(stand_in_node).already_up
        targets = wait_for(lambda: [t for t in prometheus.status().targets if t["health"] == "up"], 30,
                           "the stand-in node scraped")
        assert len(targets) == 1
        # 10 + 5 per second, once a few scrapes are in the window
        figures = wait_for(lambda: (f := prometheus.serve_figures(info.url, "5s").get(("digits", "digits:3")))
                           and 12 < (f["rps"] or 0) < 18 and f, 30, "15 req/s from the real Prometheus")
        assert figures["error_rate"] == pytest.approx(1 / 3, abs=0.1)
        assert figures["server_error_rate"] == 0.0 and figures["p50_ms"] is None  # no histogram here
    finally:
        stopped = prometheus.down()
    assert stopped is not None and stopped.pid == info.pid
    assert not psutil.pid_exists(info.pid) or psutil.Process(info.pid).status() == psutil.STATUS_ZOMBIE
    assert prometheus.current() is None and prometheus.down() is None


# ------------------------------------------------------------------------------------------------
# On the session's cluster: a keyed app's traffic, read back from a real Prometheus (`atoll metrics up`)

APP = "digits-metrics"


@pytest.fixture(scope="module")
def metrics_up(ray_cluster):
    """`atoll metrics up` on a free port, scraping every second; `atoll metrics down` at the end (PID gone)."""
    from conftest import run_cli

    _need_prometheus()
    result = run_cli("metrics", "up", "--port", str(prometheus.choose_port(None)), "--scrape-interval", "1",
                     "--json", timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    info = json.loads(result.stdout)
    yield info
    down = run_cli("metrics", "down")
    assert down.returncode == 0 and f"pid {info['pid']}" in down.stdout, down.stdout + down.stderr
    assert not psutil.pid_exists(info["pid"]) or psutil.Process(info["pid"]).status() == psutil.STATUS_ZOMBIE
    assert "not running" in run_cli("metrics", "status").stdout


@pytest.fixture(scope="module")
def metrics_app(trained_digits):
    """The session's digits version as a keyed app of its own (its counts are this module's alone)."""
    from atoll.serving import endpoints
    from conftest import APP_KEY, SMALL_APP, run_cli

    version = trained_digits["registered"]["version"]
    result = run_cli("serve", "deploy", f"digits:{version}", "--app", APP, *SMALL_APP, "--json",
                     env={"ATOLL_API_KEY": APP_KEY}, timeout=400)
    assert result.returncode == 0, result.stdout + result.stderr
    yield {**json.loads(result.stdout), "key": APP_KEY}
    endpoints.delete(APP)


def _send(app: dict, good: int, bad: int, keyless: int) -> list[float]:
    """``good`` predictions, ``bad`` 422s and ``keyless`` 401s to /predict; the good ones' client-side seconds."""
    auth = {"Authorization": f"Bearer {app['key']}"}
    seconds = []
    with httpx.Client(timeout=30) as client:
        for _ in range(good):
            start = time.perf_counter()
            resp = client.post(f"{app['url']}/predict", json={"inputs": [[0.0] * 64] * 2}, headers=auth)
            seconds.append(time.perf_counter() - start)
            assert resp.status_code == 200, resp.text
        for _ in range(bad):
            assert client.post(f"{app['url']}/predict", json={"inputs": [[1.0, 2.0]]}, headers=auth).status_code == 422
        for _ in range(keyless):
            assert client.post(f"{app['url']}/predict", json={"inputs": [[0.0] * 64]}).status_code == 401
    return seconds


def _counts(url: str) -> dict[str, float]:
    found = prometheus.query(url, f'sum by (status) ({metrics.EXPORTED[metrics.REQUESTS]}'
                                  f'{{application="{APP}", route="/predict"}})')
    return {r["metric"]["status"]: r["value"] for r in found}


@pytest.mark.cluster
def test_traffic_is_counted_per_status_and_timed_in_a_real_prometheus(metrics_up, metrics_app):
    from conftest import run_cli

    url, model = metrics_up["url"], f"digits:{metrics_app['version']}"
    status = wait_for(lambda: (s := prometheus.status()) and any(t["health"] == "up" for t in s.targets) and s, 60,
                      "a scraped node")
    assert status.url == url
    shown = run_cli("metrics", "status")
    assert shown.returncode == 0 and url in shown.stdout and "targets up" in shown.stdout, shown.stdout

    # Ray's counters are born at their first value, and rate() counts no increase before a series' first scrape:
    # a first round makes every series, the second is what the status table's req/s sees.
    seconds = _send(metrics_app, good=12, bad=3, keyless=5)
    want = {"2xx": 12.0, "4xx": 3.0, "401": 5.0}  # the 401s are the proxy's, the rest the replica's
    wait_for_value(lambda: _counts(url), want, 150, "counts in Prometheus")  # ~7 s here; CI once ran past 90

    latency, model_call = metrics.EXPORTED[metrics.REQUEST_LATENCY], metrics.EXPORTED[metrics.MODEL_LATENCY]
    select = f'application="{APP}", route="/predict", status="2xx"'
    count = prometheus.query(url, f"sum({latency}_count{{{select}}})")
    assert count[0]["value"] == 12 and count[0]["metric"] == {}
    p50 = prometheus.query(url, f"histogram_quantile(0.5, sum by (le) ({latency}_bucket{{{select}}}))")[0]["value"]
    assert 0 < p50 <= max(seconds) * 1000  # the replica's view of a request is within the client's

    def batch_figures():
        found = [prometheus.query(url, f'sum({metrics.EXPORTED[name]}_{part}{{application="{APP}"}})')
                 for name, part in ((metrics.BATCH_SIZE, "sum"), (metrics.BATCH_SIZE, "count"),
                                    (metrics.BATCH_WAIT, "count"), (metrics.MODEL_LATENCY, "count"))]
        return [f[0]["value"] if f else None for f in found]

    # Every good request went through a batch (and waited for it), no bad one did; one model call per batch.
    # (They are reported on the replica's own schedule: waited on too.)
    # One client, one request at a time: 12 batches of one (whose sizes' sum Ray exports exact, see BATCH_BUCKETS).
    wait_for_value(batch_figures, [12, 12, 12, 12], 60, "12 batches of one")
    calls = prometheus.query(url, f'sum by (model) ({model_call}_count{{application="{APP}"}})')
    assert calls[0]["metric"]["model"] == model

    _send(metrics_app, good=12, bad=3, keyless=5)
    doubled = {k: 2 * v for k, v in want.items()}
    wait_for_value(lambda: _counts(url), doubled, 90, "counts after the second round")
    result = run_cli("serve", "status", "--json")
    assert result.returncode == 0, result.stderr
    row = next(r for r in json.loads(result.stdout) if r["app"] == APP)
    traffic = row["traffic"]
    assert traffic["rps"] > 0 and traffic["p50_ms"] > 0 and traffic["p99_ms"] >= traffic["p50_ms"]
    assert traffic["error_rate"] == pytest.approx(8 / 20, abs=0.1)  # (3 + 5) of every 20
    assert traffic["server_error_rate"] == 0
    table = run_cli("serve", "status", env={"COLUMNS": "220"})
    assert table.returncode == 0, table.stderr
    line = next(li for li in table.stdout.splitlines() if APP in li)
    assert "%" in line and "p99 ms" in table.stdout and "not running" not in table.stdout, table.stdout


def test_the_proxy_counts_its_401s_and_serves_503s_by_app_and_version(monkeypatch):
    from atoll import apikeys
    from atoll.serving import proxy_auth
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    rec = _fake_recorder()
    monkeypatch.setattr(metrics, "_proxy", rec)
    configs = {"keyed": {"route_prefix": "/keyed", "import_path": "atoll.serving.replica:app",
                         "args": {"model": "digits:3", "api_key_hash": apikeys.hash_key("k" * 20)}},
               "open": {"route_prefix": "/open", "import_path": "atoll.serving.replica:app", "args": {"model": "m:1"}}}
    table = proxy_auth.KeyTable()
    table.guards, table.apps = proxy_auth.guards_from_configs(configs), proxy_auth.model_apps_from_configs(configs)
    table.read_at = time.monotonic() + 3600
    behind = FastAPI()

    @behind.api_route("/{path:path}", methods=["GET", "POST"])
    def serve_answers(path: str):  # Serve's proxy behind the middleware: a full queue on /open
        return JSONResponse({"error": "busy"}, status_code=503 if path.startswith("open") else 200)

    async def drive():
        transport = httpx.ASGITransport(app=proxy_auth.APIKeyMiddleware(behind, table))
        async with httpx.AsyncClient(transport=transport, base_url="http://proxy") as client:
            assert (await client.post("/keyed/predict")).status_code == 401
            assert (await client.post("/keyed/v2/models/digits/infer")).status_code == 401
            assert (await client.post("/open/predict")).status_code == 503
            assert (await client.get("/elsewhere")).status_code == 200  # not an Atoll app: not counted

    asyncio.run(drive())
    assert [t for _, t in rec._requests.seen] == [
        {"application": "keyed", "model": "digits:3", "route": "/predict", "status": "401"},
        {"application": "keyed", "model": "digits:3", "route": "/v2/models/{name}/infer", "status": "401"},
        {"application": "open", "model": "m:1", "route": "/predict", "status": "503"}]

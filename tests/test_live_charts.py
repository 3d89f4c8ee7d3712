"""The live traffic charts (issue 35.2): the range queries and their shaping from a recorded Prometheus answer, the
answer without Prometheus, the gallery's per-key filter (no cluster); a real Prometheus (`atoll metrics up`) read back
through an app's ``GET /<app>/traffic`` and the gallery's ``GET /_gallery/traffic`` on the session's cluster."""

from __future__ import annotations

import json
import time

import httpx
import pytest
from atoll import apikeys, prometheus
from atoll.serving import playground

# `atoll metrics up` for the module; it fails, not skips, where ATOLL_REQUIRE_PROMETHEUS is set
from test_metrics import metrics_up, wait_for  # noqa: F401

NOW = 1_767_225_605.0  # 2026-01-01 00:00:05 UTC: the grid ends at ...:00, on the 10 s step
END = 1_767_225_600
START = END - prometheus.CHART_WINDOW_S


def _matrix(series: list[tuple[dict, list[tuple[float, str]]]]) -> dict:
    """A query_range answer as Prometheus's HTTP API writes it (values are strings; NaN as "NaN")."""
    return {"status": "success", "data": {"resultType": "matrix", "result": [
        {"metric": metric, "values": [[t, v] for t, v in values]} for metric, values in series]}}


V3 = {"application": "digits", "model": "digits:3"}
V2 = {"application": "digits", "model": "digits:2"}
#: Recorded answers for app `digits` during a rollover: version 2 fading out, version 3 taking over.
RECORDED = {
    "rps": _matrix([(V3, [(END - 20, "4.5"), (END - 10, "5"), (END, "5.5")]), (V2, [(END - 20, "0.5")])]),
    "p50_ms": _matrix([(V3, [(END - 20, "3.1"), (END - 10, "NaN"), (END, "3.3")])]),
    "p99_ms": _matrix([(V3, [(END - 20, "40"), (END - 10, "+Inf"), (END, "44")])]),
}


class _Answer:
    def __init__(self, body: dict) -> None:
        self.status_code, self.headers, self._body, self.text = 200, {"content-type": "application/json"}, body, ""

    def json(self) -> dict:
        return self._body


@pytest.fixture
def recorded_prometheus(monkeypatch):
    """A Prometheus that answers each chart query with its recorded answer; the queries asked, kept."""
    monkeypatch.setattr(prometheus, "chart_url", lambda: "http://127.0.0.1:9")
    queries = prometheus.chart_queries("digits")
    asked: list[dict] = []

    def get(url, params, timeout):
        asked.append({"url": url, **params, "timeout": timeout})
        name = next(n for n, q in queries.items() if q == params["query"])
        return _Answer(RECORDED[name])

    monkeypatch.setattr(httpx, "get", get)
    return asked


def test_the_chart_is_each_versions_rps_and_latency_on_a_10_s_grid_of_10_minutes(recorded_prometheus):
    body = prometheus.live_traffic("digits", now=NOW)
    assert (body["available"], body["why"], body["window_s"], body["step_s"]) == (True, None, 600, 10)
    assert (body["start"], body["end"]) == (START, END)
    assert {a["url"] for a in recorded_prometheus} == {"http://127.0.0.1:9/api/v1/query_range"}
    assert {(a["start"], a["end"], a["step"]) for a in recorded_prometheus} == {(f"{START}.000", f"{END}.000", "10")}
    assert all(a["timeout"] <= 5 for a in recorded_prometheus)  # a slow Prometheus cannot hold a page for long

    series = body["series"]
    assert set(series) == {"digits:3", "digits:2"}
    v3, v2 = series["digits:3"], series["digits:2"]
    assert all(len(v) == 61 for figures in series.values() for v in figures.values())  # 0, 10, ... 600 s
    assert v3["rps"][-3:] == [4.5, 5.0, 5.5] and v3["rps"][:-3] == [None] * 58  # no sample: a gap, not a zero
    assert v3["p50_ms"][-3:] == [3.1, None, 3.3]  # NaN (no request in the window) is no latency
    assert v3["p99_ms"][-3:] == [40.0, None, 44.0]
    assert v2["rps"][-3] == 0.5 and v2["p99_ms"] == [None] * 61  # every version has every figure
    json.dumps(body, allow_nan=False)  # what the route answers is plain JSON


def test_the_queries_read_atolls_own_metrics_of_the_model_routes_per_version():
    queries = prometheus.chart_queries('my"app')
    assert queries["rps"].startswith("sum by (application, model) (rate(ray_atoll_requests_total{")
    assert 'application="my\\"app"' in queries["rps"]  # quoted: a name cannot break out of its label matcher
    assert "/predict|" in queries["rps"] and "/v1/chat/completions" in queries["rps"]  # not /traffic, not the card
    assert queries["p99_ms"].startswith("histogram_quantile(0.99, sum by (application, model, le) "
                                        "(rate(ray_atoll_request_latency_ms_bucket{")
    assert "application" not in prometheus.chart_queries(None)["rps"].split("{")[1].split("}")[0]  # every app


def test_without_prometheus_the_answer_says_so_with_the_fix(monkeypatch, tmp_path):
    monkeypatch.setenv("ATOLL_HOME", str(tmp_path))
    monkeypatch.delenv("RAY_PROMETHEUS_HOST", raising=False)
    body = prometheus.live_traffic("digits", now=NOW)
    assert body["available"] is False and body["series"] == {}
    assert "`atoll metrics up`" in body["why"] and "\n" not in body["why"]

    # One that is known but does not answer, or answers nonsense: still an answer, never an exception.
    monkeypatch.setenv("RAY_PROMETHEUS_HOST", "http://127.0.0.1:9/")
    assert prometheus.chart_url() == "http://127.0.0.1:9"
    monkeypatch.setattr(httpx, "get", lambda *a, **k: (_ for _ in ()).throw(httpx.ConnectError("refused")))
    body = prometheus.live_traffic("digits", now=NOW)
    assert body["available"] is False and "does not answer" in body["why"]
    monkeypatch.setattr(httpx, "get", lambda *a, **k: _Answer({"status": "success", "data": {"result": [{}]}}))
    body = prometheus.live_traffic("digits", now=NOW)
    assert body["available"] is False and "unreadable" in body["why"]


def test_the_gallery_shows_each_app_only_to_a_key_that_opens_it(monkeypatch):
    key = "k" * 24
    series = {"open": {"open:1": {}}, "keyed": {"keyed:1": {}}, "gone": {"gone:1": {}}}
    monkeypatch.setattr(prometheus, "live_traffic", lambda app=None: {"available": True, "why": None,
                                                                      "series": series})
    monkeypatch.setattr(playground, "_serve_apps", lambda: {
        "open": {"deployed_app_config": {"args": {"model": "open:1"}}},
        "keyed": {"deployed_app_config": {"args": {"model": "keyed:1", "api_key_hash": apikeys.hash_key(key)}}}})
    assert set(playground.gallery_traffic(None)["series"]) == {"open"}
    assert set(playground.gallery_traffic("Bearer " + "x" * 24)["series"]) == {"open"}
    assert set(playground.gallery_traffic(f"Bearer {key}")["series"]) == {"open", "keyed"}
    monkeypatch.setattr(playground, "_serve_apps", dict)  # whose is whose unknown: nothing shown, and why
    body = playground.gallery_traffic(f"Bearer {key}")
    assert body["available"] is False and body["series"] == {} and body["why"]


# ------------------------------------------------------------------------------------------------
# On the session's cluster: traffic to the public app, read back through its /traffic from `atoll metrics up`


@pytest.mark.cluster
@pytest.mark.usefixtures("metrics_up")
def test_an_apps_traffic_route_reads_its_req_s_back_from_a_real_prometheus(public_app):
    from conftest import APP_KEY

    url, app = public_app["url"], public_app["app"]
    model = f"digits:{public_app['version']}"  # the version that answers: its line on the chart
    row = [0.0] * 64

    def traffic() -> dict | None:
        with httpx.Client(timeout=30) as client:
            for _ in range(10):  # a steady trickle: rate() needs the series to grow between scrapes
                assert client.post(f"{url}/predict", json={"inputs": [row]}).status_code == 200
        body = httpx.get(f"{url}/traffic", timeout=30).json()
        assert body["available"], body["why"]
        figures = body["series"].get(model)
        return body if figures and any(v and v > 0 for v in figures["rps"][-3:]) else None

    started = time.monotonic()
    body = wait_for(traffic, 120, f"req/s of {app} from GET /{app}/traffic", every=1)
    assert (body["window_s"], body["step_s"]) == (600, 10) and body["end"] - body["start"] == 600
    figures = body["series"][model]
    assert len(figures["rps"]) == 61 and any(v and v > 0 for v in figures["p99_ms"])
    print(f"req/s read back after {time.monotonic() - started:.0f} s")

    gallery = httpx.get(public_app["gallery"] + "_gallery/traffic", headers={"Authorization": f"Bearer {APP_KEY}"},
                        timeout=30)
    assert gallery.status_code == 200 and gallery.json()["available"]
    assert app in gallery.json()["series"]  # the public app: every caller may see it

"""A real Prometheus server for the cluster's metrics (`atoll metrics up|down|status`), and the queries that
read Atoll's serving figures back from it (`atoll serve status`).

The server is the machine's own ``prometheus`` binary (Debian: ``apt-get install prometheus``; any install on
PATH), never downloaded. It runs on the head's machine, listens on 127.0.0.1 only, and scrapes every node of
the cluster through the service-discovery file Ray keeps up to date (``prom_metrics_service_discovery.json`` in
the cluster's temp dir: each node's metrics endpoint, the autoscaler's and the dashboard's), so nodes that join
later are scraped too, and so is the cluster after an ``atoll down``/``up``. Its config, data and log live in
``$ATOLL_HOME/prometheus/`` (0700; files 0600); ``down`` stops it by its PID (checked against its start time)
and keeps the data. The port is 9090 when free (where Ray's dashboard looks for Prometheus by default, so its
own metrics charts light up too), else a free one; ``--port`` picks one.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from atoll import local_state
from atoll.errors import AtollError
from atoll.serving import metrics

DEFAULT_PORT = 9090
SCRAPE_INTERVAL_S = 5.0
#: The status table's window: long enough for a few of Ray's reports (every ~10 s) to land in it.
WINDOW = "2m"
SD_FILE = "prom_metrics_service_discovery.json"
INSTALL_HINT = "sudo apt-get install -y prometheus"


class PrometheusError(AtollError):
    """Prometheus is missing, could not start, or does not answer."""


@dataclass
class PrometheusInfo:
    """A running Prometheus started by ``atoll metrics up``."""

    url: str
    pid: int
    create_time: float
    config_file: str
    data_dir: str
    sd_file: str
    scrape_interval_s: float
    already_up: bool = False
    targets: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def home() -> Path:
    """Where Prometheus keeps its config, data, log and state: ``$ATOLL_HOME/prometheus``."""
    return local_state.home() / "prometheus"


def binary() -> str:
    """The ``prometheus`` on PATH, else Debian's /usr/bin/prometheus.

    Raises:
        PrometheusError: none is installed (with the command that installs Debian's).
    """
    found = shutil.which("prometheus") or ("/usr/bin/prometheus" if os.access("/usr/bin/prometheus", os.X_OK) else None)
    if not found:
        raise PrometheusError(f"Prometheus is not installed: install Debian's with `{INSTALL_HINT}` (or put any "
                              f"`prometheus` binary on PATH); Atoll never downloads it.")
    return found


def sd_file_of(session_dir: str) -> Path:
    """Ray's service-discovery file for the cluster whose session is ``session_dir``: the copy in the temp dir
    (Ray keeps it pointing at the latest session), so a restarted cluster is scraped without a new config."""
    return Path(session_dir).parent / SD_FILE


def config_text(sd_file: str | Path, scrape_interval_s: float = SCRAPE_INTERVAL_S) -> str:
    """prometheus.yml: one job, ``ray``, whose targets are Ray's service-discovery file (re-read every few
    seconds: nodes come and go)."""
    interval = f"{round(scrape_interval_s * 1000)}ms"  # Prometheus takes no fractions: "1.5s" is refused
    return (f"# Written by `atoll metrics up`; rewritten at every start.\n"
            f"global:\n  scrape_interval: {interval}\n  evaluation_interval: {interval}\n"
            f"scrape_configs:\n"
            f"  - job_name: ray\n"
            f"    file_sd_configs:\n"
            f"      - files: [{json.dumps(str(sd_file))}]\n"
            f"        refresh_interval: 5s\n")


def port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def choose_port(requested: int | None) -> int:
    """``requested`` (which must be free), else 9090 when free, else a free port the kernel picks.

    Raises:
        PrometheusError: the requested port is taken.
    """
    if requested is not None:
        if not port_free(requested):
            raise PrometheusError(f"port {requested} on 127.0.0.1 is taken; choose another with --port.")
        return requested
    if port_free(DEFAULT_PORT):
        return DEFAULT_PORT
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _alive(pid: int, create_time: float) -> bool:
    import psutil

    try:
        proc = psutil.Process(pid)
        return abs(proc.create_time() - create_time) <= 1.0 and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def current() -> PrometheusInfo | None:
    """The recorded server, if its process still runs (the same process: PID and start time)."""
    try:
        info = PrometheusInfo(**json.loads((home() / "state.json").read_text()))
    except (OSError, ValueError, TypeError):
        return None
    return info if _alive(info.pid, info.create_time) else None


def up(session_dir: str | None, *, port: int | None = None, scrape_interval_s: float = SCRAPE_INTERVAL_S,
       timeout: float = 30.0) -> PrometheusInfo:
    """Start Prometheus on 127.0.0.1 scraping the cluster of ``session_dir`` (or return the running one).

    Raises:
        PrometheusError: no binary, no cluster session on this machine, a taken port, or it did not start.
    """
    running = current()
    if running is not None:
        running.already_up = True
        return running
    exe = binary()
    if not session_dir:
        raise PrometheusError("`atoll metrics up` runs beside the cluster's head (it reads Ray's service-discovery "
                              "file there); for a remote cluster, point a Prometheus on its head at "
                              f"<ray temp dir>/{SD_FILE} (see the README, \"Metrics\").")
    folder = local_state.private_dir(home())
    data = local_state.private_dir(folder / "data")
    sd_file = sd_file_of(session_dir)
    config = folder / "prometheus.yml"
    local_state.private_file(config, config_text(sd_file, scrape_interval_s))
    chosen = choose_port(port)
    log = folder / "prometheus.log"
    if not log.exists():
        local_state.private_file(log, "")
    cmd = [exe, f"--config.file={config}", f"--storage.tsdb.path={data}",
           f"--web.listen-address=127.0.0.1:{chosen}", "--storage.tsdb.retention.time=15d"]
    with open(log, "ab") as out:
        process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True)
    import psutil

    info = PrometheusInfo(url=f"http://127.0.0.1:{chosen}", pid=process.pid,
                          create_time=psutil.Process(process.pid).create_time(), config_file=str(config),
                          data_dir=str(data), sd_file=str(sd_file), scrape_interval_s=scrape_interval_s)
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-3:]
            raise PrometheusError(f"Prometheus exited with code {process.returncode} while starting: "
                                  f"{' / '.join(tail) or 'no output'} (log: {log}).")
        try:
            if httpx.get(f"{info.url}/-/ready", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            _stop(process.pid)
            raise PrometheusError(f"Prometheus did not answer on {info.url} within {timeout:.0f} s; see {log}.")
        time.sleep(0.2)
    local_state.private_file(folder / "state.json", json.dumps(info.to_dict()))
    return info


def _stop(pid: int, grace_s: float = 10.0) -> None:
    """SIGTERM (Prometheus flushes its head block), then SIGKILL after ``grace_s``."""
    import psutil

    try:
        proc = psutil.Process(pid)
        proc.send_signal(signal.SIGTERM)
        proc.wait(grace_s)
    except psutil.TimeoutExpired:
        proc.kill()
        proc.wait(5)
    except psutil.NoSuchProcess:
        pass


def down() -> PrometheusInfo | None:
    """Stop the recorded server by its PID (its data stays); None when none runs."""
    info = current()
    if info is not None:
        _stop(info.pid)
    (home() / "state.json").unlink(missing_ok=True)
    return info


def targets(url: str) -> list[dict[str, Any]]:
    """The scrape targets and their health (``up``/``down``/``unknown``, the last error)."""
    resp = _get(url, "/api/v1/targets", {"state": "active"})
    return [{"url": t.get("scrapeUrl"), "health": t.get("health"), "last_error": t.get("lastError") or "",
             "last_scrape": t.get("lastScrape")} for t in resp.get("activeTargets", [])]


def status() -> PrometheusInfo | None:
    """The running server with its targets' health, or None."""
    info = current()
    if info is not None:
        try:
            info.targets = targets(info.url)
        except PrometheusError:
            info.targets = []
    return info


def _get(url: str, path: str, params: dict[str, str], timeout: float = 10.0) -> dict[str, Any]:
    try:
        resp = httpx.get(f"{url}{path}", params=params, timeout=timeout)
    except httpx.HTTPError as exc:
        raise PrometheusError(f"Prometheus at {url} does not answer ({exc}).") from None
    body = resp.json() if resp.headers.get("content-type", "").startswith("application/json") else {}
    if resp.status_code != 200 or body.get("status") != "success":
        raise PrometheusError(f"Prometheus refused {path} ({resp.status_code}): {body.get('error') or resp.text[:200]}")
    return body["data"]


def query(url: str, promql: str) -> list[dict[str, Any]]:
    """An instant query: ``[{"metric": {label: value}, "value": float}]`` (NaN as ``nan``)."""
    data = _get(url, "/api/v1/query", {"query": promql})
    return [{"metric": r["metric"], "value": float(r["value"][1])} for r in data.get("result", [])]


# ------------------------------------------------------------------------------------------------
# Atoll's serving figures


def figure_queries(window: str = WINDOW) -> dict[str, str]:
    """The PromQL behind each column of the status table, per app and version."""
    requests, latency = metrics.EXPORTED[metrics.REQUESTS], metrics.EXPORTED[metrics.REQUEST_LATENCY]
    by = "application, model"
    predict = "|".join(r.replace("{name}", ".+") for r in metrics.PREDICT_ROUTES)  # no braces in a regex
    quantile = (f"sum by ({by}, le) (rate({latency}_bucket{{route=~\"{predict}\"}}[{window}]))")
    return {
        "rps": f"sum by ({by}) (rate({requests}[{window}]))",
        "errors": f"sum by ({by}) (rate({requests}{{status!=\"2xx\"}}[{window}]))",
        "server_errors": f"sum by ({by}) (rate({requests}{{status=~\"5xx|503\"}}[{window}]))",
        "p50_ms": f"histogram_quantile(0.5, {quantile})",
        "p99_ms": f"histogram_quantile(0.99, {quantile})",
        "total": f"sum by ({by}) ({requests})",
    }


def figures_from(results: dict[str, list[dict[str, Any]]]) -> dict[tuple[str, str], dict[str, float | None]]:
    """Query results (name → instant vector) as figures per (app, version): req/s, p50/p99 in ms, the error
    rate (share of answers that were not 2xx) and the server-error rate (5xx and 503), and the requests counted
    since the replicas started. A figure with no data (NaN: no traffic in the window) is None."""
    out: dict[tuple[str, str], dict[str, float | None]] = {}
    for name, series in results.items():
        for s in series:
            key = (s["metric"].get("application", ""), s["metric"].get("model", ""))
            value = s["value"]
            out.setdefault(key, {})[name] = None if math.isnan(value) or math.isinf(value) else value
    for row in out.values():
        rps = row.get("rps")
        for share, count in (("error_rate", "errors"), ("server_error_rate", "server_errors")):
            row[share] = (row.get(count) or 0.0) / rps if rps else None
        for name in ("rps", "errors", "server_errors", "p50_ms", "p99_ms", "total"):
            row.setdefault(name, None)
    return out


def serve_figures(url: str, window: str = WINDOW) -> dict[tuple[str, str], dict[str, float | None]]:
    """Each app's and version's figures over the last ``window``, from the Prometheus at ``url``."""
    return figures_from({name: query(url, q) for name, q in figure_queries(window).items()})


def traffic(window: str = WINDOW) -> tuple[dict[tuple[str, str], dict[str, float | None]] | None, str | None]:
    """The serving figures from ``atoll metrics up``'s Prometheus, or None and a line saying why there are none."""
    info = current()
    if info is None:
        return None, "no req/s, latency or errors: Prometheus is not running (start it with `atoll metrics up`)."
    try:
        return serve_figures(info.url, window), None
    except PrometheusError as exc:
        return None, f"no req/s, latency or errors: {exc}"


def with_traffic(rows: list[dict[str, Any]], figures: dict[tuple[str, str], dict[str, float | None]] | None
                 ) -> list[dict[str, Any]]:
    """``atoll serve status``'s rows (atoll.serving.endpoints.status) with their figures: ``traffic`` (the app's
    live version's, or None without Prometheus) and ``other_versions`` (other versions of the app that answered
    in the window: a rollover's old one)."""
    out = []
    for row in rows:
        mine = {model: f for (app, model), f in (figures or {}).items() if app == row["app"]}
        live = mine.pop(row.get("model") or "", None)
        if figures is not None and live is None:
            live = {name: None for name in ("rps", "p50_ms", "p99_ms", "error_rate", "server_error_rate", "total")}
        out.append({**row, "traffic": live, "other_versions": {m: f for m, f in mine.items() if f.get("rps")}})
    return out


# ------------------------------------------------------------------------------------------------
# The playground's and the gallery's live chart: req/s and latency over the last minutes, per version

#: The chart's span and resolution: 60 points, about one per report Ray forwards (every ~10 s).
CHART_WINDOW_S = 600
CHART_STEP_S = 10
#: Each point's rate window: several of Ray's reports, so a point is not a single jump of a counter.
CHART_RATE = "1m"
#: One Prometheus answer serves every page that asks within this many seconds (open tabs poll every ~10 s).
CHART_CACHE_S = 5.0
#: What a page says when it has no chart, and the fix.
NO_PROMETHEUS = ("no live traffic: no Prometheus is known here (start one with `atoll metrics up` beside the "
                 "head; elsewhere set RAY_PROMETHEUS_HOST on the nodes).")
CHART_FIGURES = ("rps", "p50_ms", "p99_ms")


def chart_url() -> str | None:
    """The Prometheus a replica reads its chart from: ``atoll metrics up``'s on this machine (its state file under
    ``$ATOLL_HOME``, which Ray's workers inherit from ``atoll up``), else ``RAY_PROMETHEUS_HOST`` (where Ray's own
    dashboard looks), else None."""
    info = current()
    if info is not None:
        return info.url
    return os.environ.get("RAY_PROMETHEUS_HOST", "").rstrip("/") or None


def chart_queries(app: str | None = None, rate: str = CHART_RATE) -> dict[str, str]:
    """The PromQL of the chart per app and version: requests/s and p50/p99 latency of the routes that ask the model
    (``/predict``, the protocols', OpenAI's: a page's own polling and card reads are no traffic), all statuses.
    ``app``: one app's (None: every app's)."""
    requests, latency = metrics.EXPORTED[metrics.REQUESTS], metrics.EXPORTED[metrics.REQUEST_LATENCY]
    predict = "|".join(r.replace("{name}", ".+") for r in metrics.PREDICT_ROUTES)
    select = f'route=~"{predict}"' + (f", application={json.dumps(app)}" if app is not None else "")
    by = "application, model"
    quantile = f"sum by ({by}, le) (rate({latency}_bucket{{{select}}}[{rate}]))"
    return {"rps": f"sum by ({by}) (rate({requests}{{{select}}}[{rate}]))",
            "p50_ms": f"histogram_quantile(0.5, {quantile})",
            "p99_ms": f"histogram_quantile(0.99, {quantile})"}


def query_range(url: str, promql: str, start: float, end: float, step_s: float, timeout: float = 10.0
                ) -> list[dict[str, Any]]:
    """A range query: ``[{"metric": {label: value}, "values": [[unix seconds, float], ...]}]``."""
    data = _get(url, "/api/v1/query_range", {"query": promql, "start": f"{start:.3f}", "end": f"{end:.3f}",
                                             "step": f"{step_s:g}"}, timeout)
    return [{"metric": r["metric"], "values": [[float(t), float(v)] for t, v in r.get("values", [])]}
            for r in data.get("result", [])]


def chart_series(results: dict[str, list[dict[str, Any]]], start: float, step_s: float, points: int
                 ) -> dict[str, dict[str, dict[str, list[float | None]]]]:
    """Range-query results (figure → matrix) on the chart's grid: ``{app: {version: {figure: [value or None] *
    points}}}``, point ``i`` at ``start + i * step_s``. A missing sample, NaN (no request in the rate window: no
    latency) and ±Inf are None; every version has every figure."""
    out: dict[str, dict[str, dict[str, list[float | None]]]] = {}
    for name, matrix in results.items():
        for series in matrix:
            app, model = series["metric"].get("application", ""), series["metric"].get("model", "")
            figures = out.setdefault(app, {}).setdefault(model, {})
            values = figures.setdefault(name, [None] * points)
            for t, v in series["values"]:
                i = round((t - start) / step_s)
                if 0 <= i < points:
                    values[i] = None if math.isnan(v) or math.isinf(v) else v
    for versions in out.values():
        for figures in versions.values():
            for name in CHART_FIGURES:
                figures.setdefault(name, [None] * points)
    return out


_chart_cache: dict[str | None, tuple[float, dict[str, Any]]] = {}


def live_traffic(app: str | None = None, *, window_s: int = CHART_WINDOW_S, step_s: int = CHART_STEP_S,
                 now: float | None = None) -> dict[str, Any]:
    """What a playground's (``app``) or the gallery's (None: every app) live chart shows, from the Prometheus of
    :func:`chart_url`: ``{"available", "why", "window_s", "step_s", "start", "end", "series"}`` where ``series`` is
    ``{version: {"rps", "p50_ms", "p99_ms"}}`` for an app and ``{app: {version: ...}}`` for every app, each a list
    of values on the grid ``start, start + step_s, ... end`` (None: no data). Never raises: without Prometheus, or
    when it fails, ``available`` is False and ``why`` is one line with the fix. Answers are cached for a few seconds
    (per process), so many open pages make one query."""
    cached = _chart_cache.get(app) if now is None else None
    if cached is not None and time.monotonic() - cached[0] < CHART_CACHE_S:
        return cached[1]
    body = _live_traffic(app, window_s, step_s, time.time() if now is None else now)
    if now is None:
        _chart_cache[app] = (time.monotonic(), body)
    return body


def _live_traffic(app: str | None, window_s: int, step_s: int, now: float) -> dict[str, Any]:
    end = math.floor(now / step_s) * step_s  # on the step: each point is the same instant in every answer
    start = end - window_s
    points = window_s // step_s + 1
    body: dict[str, Any] = {"available": False, "why": None, "window_s": window_s, "step_s": step_s,
                            "start": start, "end": end, "series": {}}
    url = chart_url()
    if url is None:
        return {**body, "why": NO_PROMETHEUS}
    try:
        results = {name: query_range(url, q, start, end, step_s, timeout=3.0)
                   for name, q in chart_queries(app).items()}
        by_app = chart_series(results, start, step_s, points)
    except PrometheusError as exc:
        return {**body, "why": f"no live traffic: {exc}"}
    except Exception as exc:  # noqa: BLE001 - a chart never fails its page: say what happened instead
        return {**body, "why": f"no live traffic: Prometheus's answer was unreadable ({type(exc).__name__}: {exc})."}
    return {**body, "available": True, "series": by_app.get(app, {}) if app is not None else by_app}

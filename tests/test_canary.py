"""Canary rollouts (issue 35.7): a second version beside the live one in the same app, a weighted share of the
model calls, promote and rollback with no failed request, and auto-rollback of a canary that fails."""

from __future__ import annotations

import json
import os
import time

import httpx
import pytest
from atoll import registry
from atoll.serving import canary
from conftest import SMALL_APP, copy_version, run_cli
from loop_client import LoopClient
from test_metrics import metrics_up  # noqa: F401 - the module's real Prometheus

APP = "canaried"


# ---- The judge, without a cluster

def test_the_judge_waits_for_enough_canary_answers_then_names_what_is_worse() -> None:
    judge = canary.Judge()
    for i in range(40):
        judge.record("live", True, 10.0, now=i)
    for i in range(canary.MIN_REQUESTS - 1):
        judge.record("canary", False, 10.0, now=40 + i)
    assert judge.verdict() is None  # too few to judge
    judge.record("canary", False, 10.0, now=60)
    assert judge.verdict().startswith("error rate 100.0% over its last 20 requests vs 0.0%")

    slow = canary.Judge()
    for i in range(40):
        slow.record("live", True, 10.0, now=i)
        slow.record("canary", True, 60.0, now=i)  # 1.5 x 10 + 50 = 65 ms: within the margin
    assert slow.verdict() is None
    slow.record("canary", True, 500.0, now=41)
    assert slow.verdict().startswith("p99 500 ms")


def test_the_judge_forgets_answers_older_than_its_window() -> None:
    judge = canary.Judge(window_s=60)
    for i in range(30):
        judge.record("canary", False, 10.0, now=i)
    for i in range(30):
        judge.record("canary", True, 10.0, now=100 + i)
    assert judge.verdict() is None  # the failures were more than a minute ago


def test_a_bad_canary_command_is_one_line_before_any_cluster_call() -> None:
    no_canary = run_cli("serve", "deploy", "digits:1", "--app", APP, "--auto-rollback")
    assert no_canary.returncode != 0 and "--auto-rollback watches a canary: add --canary" in no_canary.stderr
    no_app = run_cli("serve", "deploy", "digits:1", "--canary", "10")
    assert no_app.returncode != 0 and "--canary needs --app" in no_app.stderr
    assert "Traceback" not in no_canary.stderr + no_app.stderr


# ---- On the cluster

def _wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"no {what} after {timeout:.0f} s"
        time.sleep(0.25)


def _status() -> dict:
    rows = json.loads(run_cli("serve", "status", "--json").stdout)
    return next(r for r in rows if r["app"] == APP)


def _polled_status() -> dict:
    """What `atoll serve status --json` says of the app, read in this process: a poll loop that started the CLI
    every time kept a core busy starting Python."""
    from atoll import prometheus
    from atoll.serving import endpoints

    rows = endpoints.status()
    return next(r for r in prometheus.with_traffic(rows, prometheus.traffic("2m")[0]) if r["app"] == APP)


@pytest.mark.cluster
@pytest.mark.usefixtures("metrics_up")
def test_a_canary_shares_traffic_rolls_back_promotes_and_rolls_back_by_itself(trained_digits, tmp_path) -> None:
    reg = registry.Registry(os.environ["ATOLL_STORAGE"])
    live = reg.get(f"digits:{trained_digits['registered']['version']}")
    deployed = run_cli("serve", "deploy", live.ref, "--app", APP, *SMALL_APP, "--json", timeout=400)
    assert deployed.returncode == 0, deployed.stderr
    url = json.loads(deployed.stdout)["url"]
    better = copy_version(reg, live, tmp_path / "better").ref
    broken = copy_version(reg, live, tmp_path / "broken", broken=True).ref
    try:
        with LoopClient(url) as client:
            client.wait_for(5)
            assert client.since(0) == {live.ref: client.mark()}  # every answer names its version

            # 1. A canary at 50%: both versions answer, and nothing fails while it starts
            started = run_cli("serve", "deploy", better, "--app", APP, "--canary", "50", *SMALL_APP[2:], timeout=400)
            assert started.returncode == 0, started.stderr
            assert f"{better} takes 50% of requests" in started.stdout
            mark = client.mark()
            client.wait_for(60)
            shares = client.since(mark)
            assert set(shares) == {live.ref, better} and min(shares.values()) >= 10, shares
            row = _status()
            assert row["model"] == live.ref and row["canary"]["model"] == better
            # The embedded cluster's ingress (issue 36): Serve's proxy, as the status and the card say
            assert row["ingress"] == "proxy" and httpx.get(f"{url}/", timeout=30).json()["ingress"] == "proxy"
            assert row["canary"]["percent"] == 50 and row["canary"]["rolled_back"] is None
            # Metrics per version, read back from the real Prometheus: the canary's under the app it serves
            _wait_until(lambda: (_polled_status()["other_versions"].get(better) or {}).get("rps"), 120, "canary req/s")
            row = _status()
            assert row["traffic"]["rps"] > 0 and row["other_versions"][better]["rps"] > 0, row
            shown = run_cli("serve", "status", env={"COLUMNS": "200"}).stdout  # wide: no cell wraps
            assert f"└ {better} (canary, 50%)" in shown, shown

            # 2. Rollback: the live version alone again, no request lost
            assert run_cli("serve", "rollback", APP, timeout=400).returncode == 0
            mark = client.mark()
            client.wait_for(20)
            assert client.since(mark) == {live.ref: client.mark() - mark}
            assert _status()["canary"] is None
            assert client.failures == []

            # 3. A broken canary with --auto-rollback: its answers fail until the live replica stops sending it any
            failed_before = len(client.failures)
            started = run_cli("serve", "deploy", broken, "--app", APP, "--canary", "50", "--auto-rollback",
                              *SMALL_APP[2:], "--set", "runtime=torch", timeout=400)
            assert started.returncode == 0, started.stderr
            _wait_until(lambda: (_polled_status()["canary"] or {}).get("rolled_back"), 60, "verdict")
            assert len(client.failures) - failed_before >= canary.MIN_REQUESTS  # what it took to judge it
            time.sleep(0.2)  # an answer on its way back as the verdict fell
            mark = client.mark()
            client.wait_for(40)
            assert client.since(mark) == {live.ref: client.mark() - mark}  # rolled back: none goes to it now
            assert all(version == broken for version, *_ in client.failures[failed_before:]), client.failures[-3:]
            row = _status()
            assert row["canary"]["model"] == broken and row["canary"]["rolled_back"].startswith("error rate 100.0%")
            shown = run_cli("serve", "status")
            assert f"canary {broken} rolled back automatically" in " ".join(shown.stdout.split())
            assert run_cli("serve", "rollback", APP, timeout=400).returncode == 0
            del client.failures[failed_before:]

            # 4. A canary promoted under load: every request answered, then all by the new version
            started = run_cli("serve", "deploy", better, "--app", APP, "--canary", "10", *SMALL_APP[2:], timeout=400)
            assert started.returncode == 0, started.stderr
            promoted = run_cli("serve", "promote", APP, "--json", timeout=400)
            assert promoted.returncode == 0, promoted.stderr
            assert json.loads(promoted.stdout)["live"] == better
            mark = client.mark()
            client.wait_for(20)
            assert client.since(mark) == {better: client.mark() - mark}
            assert client.failures == []
        row = _status()
        assert row["model"] == better and row["canary"] is None
        refused = run_cli("serve", "rollback", APP)
        assert refused.returncode == 1 and f"app {APP!r} has no canary" in refused.stderr
    finally:
        run_cli("serve", "delete", APP, timeout=200)

"""End to end: `atoll quickstart --fast --down` as a newcomer runs it, on a clean storage root.

It reuses the session's cluster (as the quickstart reuses a running one) and ends by stopping it, so it
is ordered last (conftest.py)."""

from __future__ import annotations

import json

import pytest

from atoll import cluster, registry
from conftest import run_cli

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.quickstart]


def test_quickstart_fast_runs_the_whole_lifecycle_and_cleans_up(ray_cluster, tmp_path):
    storage = tmp_path / "fresh-storage"
    result = run_cli("quickstart", "--fast", "--down", "--json", env={"ATOLL_STORAGE": str(storage)}, timeout=900)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    out = json.loads(result.stdout)

    # Each step's outcome, checked at its source.
    reg = registry.Registry(str(storage))
    trained, swept = out["trained"], out["sweep"]
    assert {trained["version"], out["production"]["version"]} <= {v.version for v in reg.list_versions("digits")}
    assert reg.aliases("digits")["production"] == out["production"]["version"]
    assert swept["trials"] == 4 and (storage / "sweeps").is_dir()
    assert out["deployed"]["status"] == "RUNNING" and out["deployed"]["app"] == "digits"
    assert out["holdout_accuracy"] >= 0.9
    assert "Endpoint accuracy on the 180 held-out images" in result.stderr  # the display

    # --down stopped the cluster, and nothing of it is left running.
    assert cluster.ray_processes_of(ray_cluster) == []
    assert run_cli("status").returncode != 0

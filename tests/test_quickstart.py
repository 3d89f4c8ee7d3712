"""End to end: `atoll quickstart --fast --down` as a newcomer runs it, on a clean storage root.

It reuses the session's cluster (as the quickstart reuses a running one), which --down must leave running;
a second run on a cluster of its own fails at a step and must stop that cluster all the same."""

from __future__ import annotations

import json

import pytest
from atoll import registry
from conftest import private_cluster_config, processes_with_home, run_cli

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
    assert "Endpoint accuracy on the 180 held-out examples" in result.stderr  # the display

    # --down stops only a cluster the quickstart started: this one was up before, so it stays.
    assert out["cluster"] == {"reused": True, "stopped": False}
    assert "--down left it running" in result.stderr
    assert run_cli("status").returncode == 0


def test_quickstart_down_stops_the_cluster_it_started_even_when_a_step_fails(ray_cluster, tmp_path):
    """A project folder without jobs/configs: the training step fails; the cluster it started is stopped."""
    config, env = private_cluster_config(tmp_path, 6393, 8293)
    result = run_cli("quickstart", "--fast", "--down", "-c", str(config), cwd=tmp_path, timeout=300,
                     env={**env, "ATOLL_STORAGE": str(tmp_path / "storage")})
    assert result.returncode != 0 and "Traceback" not in result.stdout + result.stderr
    assert "train.yaml" in result.stderr.strip().splitlines()[-1]
    assert processes_with_home(env["ATOLL_HOME"]) == []
    assert run_cli("status").returncode == 0  # the session's cluster was not touched

"""Sweeps on the shared local cluster: `atoll tune` as a user runs it (Ray Tune + successive halving over
Atoll's training loop), the best model registered with the sweep as lineage. (A killed sweep driver and
the resume: tests/faults/test_sweep_faults.py.)"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest
from atoll import registry
from conftest import run_cli

pytestmark = pytest.mark.cluster

# 4 trials of up to 4 epochs: the rungs (reduction_factor 3) are at epochs 1 and 3.
SMALL = ["--set", "num_samples=4", "--set", "overrides.epochs=4"]


def _storage() -> Path:
    return Path(os.environ["ATOLL_STORAGE"])


def test_sweep_stops_weak_trials_early_and_registers_the_best(ray_cluster):
    # The demo's successive halving over 4 trials of 4 epochs, rungs at 1 and 3 (reduction_factor 3): all 4 run
    # one epoch and pause; the best 2 (4/3 rounded up) go on to epoch 3 and pause; the best of them runs to 4.
    # Trial-epochs 4*1 + 2*2 + 1*1 = 9, whichever trial gets a CPU first (ASHA's figure depends on that).
    result = run_cli("tune", "--set", "name=t-sweep", *SMALL, "--json", timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = json.loads(result.stdout)
    summary = out["summary"]
    assert summary["trials"] == 4 and summary["errors"] == 0
    assert summary["stopped_early"] == 3 and summary["trial_epochs"] == 9, summary
    # The results table and the picture sit next to the experiment.
    sweep_dir = _storage() / "sweeps" / "t-sweep"
    table = pd.read_csv(sweep_dir / "results.csv")
    assert len(table) == 4 and set(table["status"]) <= {"completed", "stopped early"}
    assert sorted(table["epochs"]) == [1, 1, 3, 4]
    assert (sweep_dir / "sweep.png").stat().st_size > 1000

    # The winner is registered, its lineage names the sweep and trial, and its metric is the sweep's best.
    reg = out["registered"]
    version = registry.Registry(str(_storage())).get(f"{reg['name']}:{reg['version']}")
    lineage = version.manifest["lineage"]
    assert lineage["sweep"] == "t-sweep" and lineage["trial_id"] == summary["best"]["trial_id"]
    assert version.manifest["metrics"]["val_accuracy"] == pytest.approx(summary["best_metric"])
    assert summary["best_metric"] == table["best_val_accuracy"].max()


def test_bad_sweep_spec_is_refused_before_submitting(ray_cluster):
    result = run_cli("tune", "--set", "search_space.optimizer.lrr={loguniform: [0.001, 0.1]}")
    assert result.returncode == 2
    assert "optimizer.lrr" in result.stderr + result.stdout
    assert "Traceback" not in result.stderr + result.stdout

"""Distributed training on the shared local cluster: real Ray Data, real Ray Train, 2 workers.
(Killed workers and drivers: tests/faults/test_train_faults.py.)"""

from __future__ import annotations

import json
import os

import pytest
from atoll import registry
from conftest import TRAINED_EPOCHS, run_cli

pytestmark = pytest.mark.cluster


def _history(name: str, version: int) -> list[dict]:
    reg = registry.Registry(os.environ["ATOLL_STORAGE"])
    mv = reg.get(f"{name}:{version}")
    return json.loads(reg.read_file(mv, "atoll.json"))["history"]


def test_train_registers_a_version_with_its_history_and_lineage(trained_digits):
    """(Resuming a run, and refusing its name without --resume: tests/faults/test_train_faults.py.)"""
    version = trained_digits["registered"]["version"]
    history = _history("digits", version)
    assert [h["epoch"] for h in history] == list(range(TRAINED_EPOCHS))
    assert history[-1]["train_loss"] < history[0]["train_loss"]  # it learns
    show = json.loads(run_cli("models", "show", f"digits:{version}", "--json").stdout)
    lineage = show["manifest"]["lineage"] if "manifest" in show else show["lineage"]
    assert lineage["run_name"] == "t-digits" and lineage["job_id"].startswith("atoll-train-")
    assert lineage["dataset_fingerprint"].startswith("sha256:") and lineage["num_workers"] == 2
    # Exported beside the weights by the job, each checked on the version's held-out examples.
    for fmt, file in (("onnx", "model.onnx"), ("pt2", "model.pt2")):
        parity = show["exports"][fmt]
        assert parity["file"] == file and file in show["files"] and parity["max_abs_diff"] <= 1e-4, parity
        assert parity["examples"] >= 10
    # Issue 32.11: the version holds no training state (the optimiser's pickle stays with the run).
    assert "optim.pt" not in show["files"] and "model.safetensors" in show["files"]
    # Issue 32.16: each progress event appears once in the job's own log (Train's print patch wrote a copy).
    from atoll import events, jobs

    logged = events.parse_events(jobs.logs(trained_digits["job"]["id"]))
    ids = [e["id"] for e in logged]
    assert len(ids) == len(set(ids)) and sum(e["event"] == "epoch" for e in logged) == TRAINED_EPOCHS


@pytest.mark.parametrize("override,message", [
    ("dataset.label=species", "label column 'species' does not exist"),
    ("model.type=nopkg.models:build", "cannot import 'nopkg.models'"),
])
def test_bad_input_fails_before_workers_start(ray_cluster, override, message):
    result = run_cli("train", "--set", override)
    assert result.returncode != 0
    assert message in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr

"""Distributed training on the shared local cluster: real Ray Data, real Ray Train, 2 workers."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import psutil
import pytest

from atoll import jobs, registry, train
from conftest import run_cli

pytestmark = pytest.mark.cluster


def _registered(result) -> dict:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = json.loads(result.stdout)
    assert out["registered"], out
    return out


def _history(name: str, version: int) -> list[dict]:
    reg = registry.Registry(os.environ["ATOLL_STORAGE"])
    mv = reg.get(f"{name}:{version}")
    return json.loads(reg.read_file(mv, "atoll.json"))["history"]


def test_train_registers_then_resume_continues(trained_digits):
    version = trained_digits["registered"]["version"]
    history = _history("digits", version)
    assert [h["epoch"] for h in history] == [0, 1, 2]
    assert history[-1]["train_loss"] < history[0]["train_loss"]  # it learns
    show = json.loads(run_cli("models", "show", f"digits:{version}", "--json").stdout)
    lineage = show["manifest"]["lineage"] if "manifest" in show else show["lineage"]
    assert lineage["run_name"] == "t-resume" and lineage["job_id"].startswith("atoll-train-")
    assert lineage["dataset_fingerprint"].startswith("sha256:") and lineage["num_workers"] == 2

    # Same run name without --resume is refused; with --resume it continues from epoch 3.
    refused = run_cli("train", "--set", "epochs=4", "--run-name", "t-resume")
    assert refused.returncode != 0 and "--resume t-resume" in refused.stdout + refused.stderr
    resumed = _registered(run_cli("train", "--set", "epochs=4", "--resume", "t-resume", "--json"))
    logs = jobs.logs(resumed["job"]["id"])
    assert [e for e in train.parse_events(logs) if e["event"] == "resumed"][0]["epoch"] == 3
    # (Ray may echo a worker's line twice in the job log: compare the set of epochs run.)
    assert {e["epoch"] for e in train.parse_events(logs) if e["event"] == "epoch"} == {3}
    assert [h["epoch"] for h in _history("digits", resumed["registered"]["version"])] == [0, 1, 2, 3]


def _train_workers() -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if "RayTrainWorker" in " ".join(proc.info.get("cmdline") or []):
            found.append(proc)
    return found


def _registered_checkpoints(run_name: str) -> int:
    """Checkpoints Ray Train's controller has registered (it polls workers every ~2 s; a report
    still sitting on a worker that dies is lost, so a kill test must wait for registration)."""
    snapshot = Path(train.runs_root(os.environ["ATOLL_STORAGE"])) / run_name / "checkpoint_manager_snapshot.json"
    try:
        return len(json.loads(snapshot.read_text()).get("checkpoint_results") or [])
    except (OSError, ValueError):
        return 0


def test_a_killed_worker_restarts_from_checkpoint_and_finishes(ray_cluster):
    epochs = 12
    submitted = run_cli("train", "--no-wait", "--json", "--set", f"epochs={epochs}", "--run-name", "t-kill")
    job_id = json.loads(submitted.stdout)["id"]
    deadline = time.time() + 240
    while not _registered_checkpoints("t-kill"):
        assert time.time() < deadline, jobs.logs(job_id)[-3000:]
        assert jobs.status(job_id)["status"] in ("PENDING", "RUNNING"), jobs.logs(job_id)[-3000:]
        time.sleep(0.2)
    victims = _train_workers()
    assert len(victims) == 2
    os.kill(victims[0].pid, signal.SIGKILL)
    details = jobs.follow(job_id, lambda _: None)
    logs = jobs.logs(job_id)
    assert details["status"] == "SUCCEEDED", logs[-3000:]
    events = train.parse_events(logs)
    assert any(e["event"] == "resumed" for e in events), "the worker group did not restart from a checkpoint"
    assert sorted({e["epoch"] for e in events if e["event"] == "epoch"}) == list(range(epochs))
    registered = [e for e in events if e["event"] == "registered"][0]
    # The registered version is the best kept checkpoint; its history continues seamlessly
    # across the restart (no epoch lost or repeated).
    history = [h["epoch"] for h in _history("digits", registered["version"])]
    assert history == list(range(len(history))) and len(history) >= 2


@pytest.mark.parametrize("override,message", [
    ("dataset.label=species", "label column 'species' does not exist"),
    ("num_workers=64", "num_workers: 64 workers x 1 CPU need 64 CPUs"),
    ("model.type=nopkg.models:build", "cannot import 'nopkg.models'"),
])
def test_bad_input_fails_before_workers_start(ray_cluster, override, message):
    result = run_cli("train", "--set", override)
    assert result.returncode != 0
    assert message in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr

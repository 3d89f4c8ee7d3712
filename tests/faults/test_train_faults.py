"""Training under faults: the job's driver SIGKILLed mid-run, then `atoll train --resume`.

One run of the session's digits spec (same seed, same epochs) goes through the fault; its final validation
accuracy is compared with the uninterrupted run of the `trained_digits` fixture. (A dead worker, with its whole
node: tests/faults/test_multinode.py.)
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import psutil
import pytest
from atoll import jobs, registry, train
from atoll.events import parse_events
from conftest import TRAINED_EPOCHS, run_cli

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

RUN = "t-faults"
# Streamed from Ray Data every epoch (~8 s each here: the pipeline runs again per epoch) rather than held in memory
# (0.02 s): epochs long enough for the kill to land while the run is under way. It also keeps the streaming path
# under a fault test.
STREAMED = ["--set", "dataset.cache=false"]


def _storage() -> str:
    return os.environ["ATOLL_STORAGE"]


def _processes(marker: str) -> list[psutil.Process]:
    return [p for p in psutil.process_iter(["cmdline"]) if marker in " ".join(p.info.get("cmdline") or [])]


def _checkpoints(run_name: str) -> list[dict]:
    """Checkpoints Ray Train's controller has registered (it polls its workers; a report still sitting
    on a worker that dies is lost, so a kill must wait for registration)."""
    snapshot = Path(train.runs_root(_storage())) / run_name / "checkpoint_manager_snapshot.json"
    try:
        return json.loads(snapshot.read_text()).get("checkpoint_results") or []
    except (OSError, ValueError):
        return []


def _wait(condition, job_id: str, what: str, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, f"timed out waiting for {what}: " + jobs.logs(job_id)[-3000:]
        assert jobs.status(job_id)["status"] in ("PENDING", "RUNNING"), jobs.logs(job_id)[-3000:]
        time.sleep(0.2)


def _checkpoint_dirs(run_name: str) -> list[Path]:
    return sorted(p for p in (Path(train.runs_root(_storage())) / run_name).glob("checkpoint_*") if p.is_dir())


def _assert_listeners_while_training(reliability) -> None:
    """Issue 32.18, while a 2-worker gloo run is under way: every listener of the cluster is on loopback but
    torch's rendezvous store, one on rank 0, which torch binds to every interface with no setting to change
    (the README's security section says so); Gloo's own connections listen on loopback (GLOO_SOCKET_IFNAME=lo,
    which `atoll up` sets), and a Serve replica's gRPC server is Ray's (tests/faults/test_serve_faults.py)."""
    from .sockets import is_loopback, listeners

    found = listeners()
    workers = [(name, ip, port) for name, ip, port in found if name.startswith("ray::RayTrainWorker")]
    assert workers, f"no Train worker listens: {found}"  # the run's process group is up
    exposed = [(name, ip, port) for name, ip, port in found
               if not is_loopback(ip) and not name.startswith("ray::ServeReplica")]
    assert len(exposed) <= 1 and all(name.startswith("ray::RayTrainWorker") for name, _, _ in exposed), exposed
    reliability("access", "listening sockets while a 2-worker gloo run trains",
                f"{len(workers)} Train worker listeners, {len(workers) - len(exposed)} on 127.0.0.1 (Gloo's "
                f"connections); {len(exposed)} on every interface: torch's rendezvous store on rank 0 "
                f"(no bind setting in torch)")


def test_a_killed_driver_loses_no_epoch_and_the_resume_redoes_at_most_one(trained_digits, reliability):
    submitted = run_cli("train", "--no-wait", "--json", "--set", f"epochs={TRAINED_EPOCHS}", *STREAMED, "--run-name", RUN)
    job_id = json.loads(submitted.stdout)["id"]

    # 1. SIGKILL the job's driver once Ray Train's controller has registered a checkpoint.
    _wait(lambda: len(_checkpoints(RUN)) >= 1, job_id, "a first checkpoint")
    _assert_listeners_while_training(reliability)
    epochs_before = {e["epoch"] for e in parse_events(jobs.logs(job_id)) if e["event"] == "epoch"}
    assert len(epochs_before) < TRAINED_EPOCHS, "the run finished before its driver could be killed"
    # (The job runs its entrypoint through `sh -c`: the driver is the python process under it.)
    drivers = [p for p in _processes("-m atoll.train") if RUN in " ".join(p.info["cmdline"]) and p.name() != "sh"]
    assert len(drivers) == 1, drivers
    os.kill(drivers[0].pid, signal.SIGKILL)
    deadline = time.time() + 60
    while (state := jobs.status(job_id)["status"]) in ("PENDING", "RUNNING"):
        assert time.time() < deadline, "the job still says RUNNING a minute after its driver died"
        time.sleep(0.5)
    listed = {j["id"]: j["status"] for j in json.loads(run_cli("jobs", "list", "--json").stdout)}
    assert state == listed[job_id] == "FAILED", (state, listed.get(job_id))

    # Every checkpoint on disk is whole (written, then published): each has its weights and metadata.
    for ckpt in _checkpoint_dirs(RUN):
        assert (ckpt / "model.safetensors").stat().st_size > 0 and json.loads((ckpt / "atoll.json").read_text())

    # 2. The same run name without --resume is refused; --resume continues from the latest checkpoint.
    refused = run_cli("train", "--set", f"epochs={TRAINED_EPOCHS}", *STREAMED, "--run-name", RUN)
    assert refused.returncode != 0 and f"--resume {RUN}" in refused.stdout + refused.stderr
    assert "Traceback" not in refused.stdout + refused.stderr
    # The resume holds its rows in memory (dataset.cache, the session run's setting): the same rows and epochs, and
    # ~8 s less per epoch here than streaming them again (the killed run kept the streaming path under the fault).
    result = run_cli("train", "--set", f"epochs={TRAINED_EPOCHS}", "--resume", RUN, "--json", timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = json.loads(result.stdout)
    events = parse_events(jobs.logs(out["job"]["id"]))
    resumed_epoch = [e for e in events if e["event"] == "resumed"][0]["epoch"]
    epochs_after = {e["epoch"] for e in events if e["event"] == "epoch"}
    assert resumed_epoch >= 1 and epochs_before | epochs_after == set(range(TRAINED_EPOCHS))
    redone = len(epochs_before & epochs_after)
    assert redone <= 1, f"the resume redid epochs {sorted(epochs_before & epochs_after)}"

    # The registered model's history runs through every epoch once, and it is as good as the uninterrupted run.
    reg = registry.Registry(_storage())
    version = reg.get(f"digits:{out['registered']['version']}")
    history = json.loads(reg.read_file(version, "atoll.json"))["history"]
    assert [h["epoch"] for h in history] == list(range(len(history)))
    faulted = version.manifest["metrics"]["val_accuracy"]
    baseline = trained_digits["registered"]["metrics"]["val_accuracy"]
    assert abs(faulted - baseline) <= 0.02, (faulted, baseline)
    reliability("driver", "SIGKILL the training job's driver, then `atoll train --resume`",
                f"job reported FAILED; resumed at epoch {resumed_epoch}, {redone} epoch redone; "
                f"val_accuracy {faulted:.4f} vs {baseline:.4f} uninterrupted (Δ {faulted - baseline:+.4f})")

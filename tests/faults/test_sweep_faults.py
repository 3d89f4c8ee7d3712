"""A sweep whose driver is SIGKILLed mid-run: re-running it with --resume (Tuner.restore) redoes no
finished trial and continues the unfinished ones from their checkpoints."""

from __future__ import annotations

import json
import os
import signal
import time

import psutil
import pytest

from atoll import jobs, train
from conftest import run_cli

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

NAME = "t-sweep-kill"
# 3 trials of 20 short epochs, 2 at a time, none stopped early (FIFO): the kill always cuts a trial short,
# and that trial must go on after the resume.
TRIALS, EPOCHS = 3, 20
SMALL = ["--set", f"name={NAME}", "--set", f"num_samples={TRIALS}", "--set", f"overrides.epochs={EPOCHS}",
         "--set", "scheduler.type=fifo"]


def _trial_events(job_id: str) -> list[dict]:
    return [e for e in train.parse_events(jobs.logs(job_id)) if e["event"] == "trial"]


def test_a_killed_sweep_driver_resumes_without_redoing_finished_trials(ray_cluster, reliability):
    submitted = run_cli("tune", *SMALL, "--no-wait", "--json")
    assert submitted.returncode == 0, submitted.stderr
    job_id = json.loads(submitted.stdout)["id"]
    def finished_and_running(events: list[dict]) -> bool:
        """A trial has finished and another has started but has most of its epochs ahead (the kill cuts it)."""
        done = {e["trial"] for e in events if e["status"] == "finished"}
        running = {e["trial"] for e in events} - done
        return bool(done) and any(max(e["epoch"] for e in events if e["trial"] == t) <= EPOCHS // 2 for t in running)

    deadline = time.time() + 300
    while not finished_and_running(_trial_events(job_id)):
        assert time.time() < deadline, jobs.logs(job_id)[-3000:]
        assert jobs.status(job_id)["status"] in ("PENDING", "RUNNING"), jobs.logs(job_id)[-3000:]
        time.sleep(0.5)
    time.sleep(1.5)  # Tune saves the experiment's state every second (TUNE_GLOBAL_CHECKPOINT_S, set by Atoll)
    before = _trial_events(job_id)
    finished = {e["trial"] for e in before if e["status"] == "finished"}
    started = {e["trial"] for e in before} - finished
    # (The job runs its entrypoint through `sh -c`: the driver is the python process under it.)
    drivers = [p for p in psutil.process_iter(["cmdline", "name"]) if p.info["name"] != "sh"
               and "jobs/tune.py" in " ".join(p.info["cmdline"] or []) and NAME in " ".join(p.info["cmdline"])]
    assert len(drivers) == 1, drivers
    os.kill(drivers[0].pid, signal.SIGKILL)
    deadline = time.time() + 60
    while jobs.status(job_id)["status"] in ("PENDING", "RUNNING"):
        assert time.time() < deadline, "the sweep job still says RUNNING a minute after its driver died"
        time.sleep(0.5)
    assert jobs.status(job_id)["status"] == "FAILED"

    # The same name without --resume is refused: it would silently mix two sweeps.
    again = run_cli("tune", *SMALL)
    assert again.returncode != 0 and "--resume" in again.stdout + again.stderr

    resumed = run_cli("tune", *SMALL, "--resume", "--json", timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    out = json.loads(resumed.stdout)
    assert out["summary"]["trials"] == TRIALS and out["summary"]["errors"] == 0
    assert out["registered"] is not None
    after = _trial_events(out["job"]["id"])
    redone = finished & {e["trial"] for e in after}
    assert not redone, f"finished trials ran again after the resume: {sorted(redone)}"
    # An unfinished trial goes on from its checkpoint: its first epoch after the resume is not epoch 0. (A trial
    # that reported a single epoch in the last second before the kill may not have it in Tune's saved state.)
    first_after = {t: min(e["epoch"] for e in after if e["trial"] == t) for t in started & {e["trial"] for e in after}}
    epochs_before = {t: len({e["epoch"] for e in before if e["trial"] == t}) for t in first_after}
    from_scratch = sorted(t for t, epoch in first_after.items() if epoch == 0 and epochs_before[t] >= 2)
    assert not from_scratch, f"trials restarted from scratch: {from_scratch}"
    # Every trial the kill cut short went on after the resume and completed.
    statuses = out["summary"]["statuses"]
    assert started and started <= set(first_after), f"trials that never continued: {started - set(first_after)}"
    assert all(statuses[t] == "completed" for t in started), statuses
    reliability("sweep", "SIGKILL the sweep's driver after a trial finished, then `atoll tune --resume`",
                f"job reported FAILED; {len(finished)} finished trial(s) not redone; {len(started)} cut short "
                f"continued from epoch {', '.join(map(str, sorted(first_after.values())))} and completed; "
                f"{TRIALS}/{TRIALS} trials, 0 errors")

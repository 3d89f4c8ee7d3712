"""A sweep whose driver is SIGKILLed mid-run: re-running it with --resume (Tuner.restore) redoes no
finished trial and continues the unfinished ones from their checkpoints."""

from __future__ import annotations

import json
import os
import signal
import time

import psutil
import pytest
from atoll import events, jobs
from conftest import run_cli

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

NAME = "t-sweep-kill"
# 3 trials of 40 short epochs, 2 at a time, none stopped early (FIFO): the kill always cuts a trial short,
# and that trial must go on after the resume. Batches of 8 make an epoch long enough (~0.2 s with its report)
# for a trial to be seen under way: the data is held in memory, so an epoch of 64-row batches takes 0.02 s.
TRIALS, EPOCHS = 3, 40
SAVED_S = 1.5
SMALL = ["--set", f"name={NAME}", "--set", f"num_samples={TRIALS}", "--set", f"overrides.epochs={EPOCHS}",
         "--set", "scheduler.type=fifo", "--set", "search_space.batch_size={choice: [8]}"]


def _trial_events(job_id: str) -> list[dict]:
    return [e for e in events.parse_events(jobs.logs(job_id)) if e["event"] == "trial"]


def test_a_killed_sweep_driver_resumes_without_redoing_finished_trials(ray_cluster, reliability):
    submitted = run_cli("tune", *SMALL, "--no-wait", "--json")
    assert submitted.returncode == 0, submitted.stderr
    job_id = json.loads(submitted.stdout)["id"]
    # Kill once a trial has finished more than SAVED_S ago (Tune saves the experiment's state every second:
    # TUNE_GLOBAL_CHECKPOINT_S, set by Atoll, so that finish is on disk) while another trial is under way.
    # Epochs take ~0.2 s here: the kill follows the check at once, and a trial under way has at least 4
    # epochs ahead of it.
    finished_since: dict[str, float] = {}
    reporting_since: dict[str, float] = {}  # a trial's first epoch seen: its checkpoints are in Tune's state SAVED_S on
    deadline = time.time() + 300
    while True:
        assert time.time() < deadline, jobs.logs(job_id)[-3000:]
        assert jobs.status(job_id)["status"] in ("PENDING", "RUNNING"), jobs.logs(job_id)[-3000:]
        events = _trial_events(job_id)
        for e in events:
            reporting_since.setdefault(e["trial"], time.monotonic())
            if e["status"] == "finished":
                finished_since.setdefault(e["trial"], time.monotonic())
        saved = {t for t, at in finished_since.items() if time.monotonic() - at >= SAVED_S}
        # Under way: not finished, checkpoints for SAVED_S already (so the state names one), epochs still ahead.
        under_way = [t for t in {e["trial"] for e in events} - set(finished_since)
                     if time.monotonic() - reporting_since[t] >= SAVED_S
                     and max(e["epoch"] for e in events if e["trial"] == t) < EPOCHS - 4]
        if saved and under_way:
            break
        time.sleep(0.2)
    # (The job runs its entrypoint through `sh -c`: the driver is the python process under it.)
    drivers = [p for p in psutil.process_iter(["cmdline", "name"]) if p.info["name"] != "sh"
               and "-m atoll.tune" in " ".join(p.info["cmdline"] or []) and NAME in " ".join(p.info["cmdline"])]
    assert len(drivers) == 1, drivers
    os.kill(drivers[0].pid, signal.SIGKILL)
    before = _trial_events(job_id)  # everything the dead driver printed
    finished = saved
    started = {e["trial"] for e in before if e["status"] != "finished"} - {e["trial"] for e in before
                                                                           if e["status"] == "finished"}
    deadline = time.time() + 60
    while jobs.status(job_id)["status"] in ("PENDING", "RUNNING"):
        assert time.time() < deadline, "the sweep job still says RUNNING a minute after its driver died"
        time.sleep(0.5)
    assert jobs.status(job_id)["status"] == "FAILED"

    # The same name without --resume is refused: it would silently mix two sweeps.
    again = run_cli("tune", *SMALL)
    assert again.returncode != 0 and "--resume" in again.stdout + again.stderr

    resumed = run_cli("tune", *SMALL, "--resume", NAME, "--json", timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    out = json.loads(resumed.stdout)
    assert out["summary"]["trials"] == TRIALS and out["summary"]["errors"] == 0
    assert out["registered"] is not None
    after = _trial_events(out["job"]["id"])
    redone = finished & {e["trial"] for e in after}
    assert not redone, f"finished trials ran again after the resume: {sorted(redone)}"
    # An unfinished trial goes on from its last saved checkpoint, not from scratch.
    first_after = {t: min(e["epoch"] for e in after if e["trial"] == t) for t in started & {e["trial"] for e in after}}
    assert any(epoch > 0 for epoch in first_after.values()), f"every trial restarted from scratch: {first_after}"
    # Every trial the kill cut short went on after the resume and completed.
    statuses = out["summary"]["statuses"]
    assert started and started <= set(first_after), f"trials that never continued: {started - set(first_after)}"
    assert all(statuses[t] == "completed" for t in started), statuses
    reliability("sweep", "SIGKILL the sweep's driver after a trial finished, then `atoll tune --resume`",
                f"job reported FAILED; {len(finished)} finished trial(s) not redone; {len(started)} cut short "
                f"continued from epoch {', '.join(map(str, sorted(first_after.values())))} and completed; "
                f"{TRIALS}/{TRIALS} trials, 0 errors")

"""Jobs through Ray's Jobs API on a real local cluster, driven through the real `atoll` CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from conftest import run_cli

pytestmark = pytest.mark.cluster


def test_status_shows_the_head_node(ray_cluster):
    result = run_cli("status", "--json")
    assert result.returncode == 0, result.stderr
    st = json.loads(result.stdout)
    heads = [n for n in st["nodes"] if n["head"]]
    assert len(heads) == 1 and heads[0]["alive"] and heads[0]["type"] == "head"
    assert st["resources"]["CPU"]["total"] == 4
    assert st["dashboard_url"] == "http://127.0.0.1:8265"


def test_status_of_a_remote_cluster_lists_its_nodes_from_the_dashboard_alone(ray_cluster, tmp_path):
    """ATOLL_ADDRESS and nothing recorded (a cloud head behind a forwarded 8265): nodes come from Ray's state API."""
    env = {"ATOLL_ADDRESS": ray_cluster.dashboard_url, "ATOLL_HOME": str(tmp_path / "elsewhere")}
    result = run_cli("status", "--json", env=env)
    assert result.returncode == 0, result.stderr
    st = json.loads(result.stdout)
    assert st["mode"] == "remote" and st["warnings"] == []  # one node: a local storage root is fine
    (head,) = st["nodes"]
    assert head["head"] and head["alive"] and head["resources"]["CPU"]["total"] == 4
    shown = run_cli("status", env=env)
    assert shown.returncode == 0 and head["node_id"][:8] in shown.stdout and "CPU ?/4" in shown.stdout


def test_up_again_says_already_up(ray_cluster):
    result = run_cli("up")
    assert result.returncode == 0
    assert "already up" in result.stdout


def test_submit_wait_success_and_logs(ray_cluster):
    result = run_cli("submit", "--wait", "--", "python", "-c", "print('hello from a job')")
    assert result.returncode == 0, result.stderr
    assert "hello from a job" in result.stdout
    job_id = result.stderr.split("Submitted job ")[1].split()[0]
    logs = run_cli("jobs", "logs", job_id)
    assert "hello from a job" in logs.stdout
    st = json.loads(run_cli("jobs", "status", job_id, "--json").stdout)
    assert st["status"] == "SUCCEEDED"


def test_following_hands_over_every_line_once_even_those_printed_as_the_job_exits(ray_cluster):
    # The follower ends on the job's status, before Ray's log stream closes, and reads the rest from the log.
    code = "import time; time.sleep(1.5); [print(f'line {i}', flush=True) for i in range(300)]"
    result = run_cli("submit", "--wait", "--", "python", "-c", code)
    assert result.returncode == 0, result.stderr
    assert [line for line in result.stdout.splitlines() if line.startswith("line ")] == [f"line {i}" for i in range(300)]


def test_submit_wait_failure_exits_nonzero(ray_cluster):
    result = run_cli("submit", "--wait", "--", "python", "-c", "import sys; print('bye'); sys.exit(1)")
    assert result.returncode != 0
    assert "FAILED" in result.stderr


def test_job_gets_the_project_and_env(ray_cluster):
    code = "import os, pathlib; print('cfg', pathlib.Path('cluster.yaml').exists(), os.environ['GREETING'])"
    result = run_cli("submit", "--wait", "--env", "GREETING=hi", "--", "python", "-c", code)
    assert result.returncode == 0, result.stderr
    assert "cfg True hi" in result.stdout


def test_stop_a_long_job(ray_cluster):
    result = run_cli("submit", "--json", "--", "python", "-c", "import time; time.sleep(600)")
    job_id = json.loads(result.stdout)["id"]
    deadline = time.time() + 60
    while json.loads(run_cli("jobs", "status", job_id, "--json").stdout)["status"] != "RUNNING":
        assert time.time() < deadline, "job never started"
        time.sleep(0.5)
    stopped = run_cli("jobs", "stop", job_id)
    assert stopped.returncode == 0 and "STOPPED" in stopped.stdout


def test_a_job_that_can_never_be_scheduled_is_stopped_with_the_reason(ray_cluster):
    """A GPU task on a cluster without GPUs (a local head adds no nodes): the job would wait forever."""
    code = "import ray; ray.init(); print('asking'); ray.get(ray.remote(num_gpus=1)(lambda: 1).remote())"
    job_id = f"t-unschedulable-{os.getpid()}"
    started = time.monotonic()
    result = run_cli("submit", "--wait", "--id", job_id, "--", "python", "-c", code, timeout=180)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert f"job {job_id} can never be scheduled" in result.stderr, result.stderr
    assert "GPU: 1" in result.stderr and "Ask for less" in result.stderr
    assert time.monotonic() - started < 120
    status = json.loads(run_cli("jobs", "status", job_id, "--json").stdout)
    assert status["status"] == "STOPPED"


def test_unknown_job_id_is_one_clear_line(ray_cluster):
    result = run_cli("jobs", "status", "raysubmit_nope")
    assert result.returncode == 1
    assert "no job 'raysubmit_nope'" in result.stderr and "Traceback" not in result.stderr


def test_jobs_from_rays_own_cli_are_listed(ray_cluster):
    ray = str(Path(sys.executable).parent / "ray")
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_ADDRESS": ray_cluster.dashboard_url}
    out = subprocess.run([ray, "job", "submit", "--submission-id", "from-ray-cli", "--no-wait", "--",
                          "python", "-c", "print(1)"], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    listed = json.loads(run_cli("jobs", "list", "--json").stdout)
    assert "from-ray-cli" in [j["id"] for j in listed]
    # …and Atoll's jobs show up in Ray's own listing: one Jobs API.
    ray_list = subprocess.run([ray, "job", "list"], env=env, capture_output=True, text=True, timeout=120)
    assert "submitted_by" in ray_list.stdout and "atoll" in ray_list.stdout


def test_jobs_api_refuses_requests_without_the_token(ray_cluster):
    url = f"{ray_cluster.dashboard_url}/api/jobs/"
    assert httpx.get(url, timeout=10).status_code == 401
    assert httpx.get(url, headers={"Authorization": "Bearer wrong"}, timeout=10).status_code in (401, 403)
    from atoll import auth

    assert httpx.get(url, headers=auth.headers(), timeout=10).status_code == 200


def test_progress_events_are_not_lost_when_the_log_stream_breaks(ray_cluster, monkeypatch):
    """Ray's log stream delivers one chunk and then drops (as when the dashboard restarts): `follow` falls back
    to polling and then hands over, from the job's logs, every line the stream did not deliver."""
    from atoll import jobs
    from atoll.events import parse_events

    real_client = jobs._client

    class DroppingStream:
        def __init__(self, client):
            self._client = client

        def __getattr__(self, name):
            return getattr(self._client, name)

        async def tail_job_logs(self, job_id):
            async for chunk in self._client.tail_job_logs(job_id):
                yield chunk
                dropped.append(chunk)
                raise ConnectionResetError("the log stream dropped")

    dropped: list[str] = []
    monkeypatch.setattr(jobs, "_client", lambda info: DroppingStream(real_client(info)))
    code = ("import time; from atoll.events import emit\n"
            "for i in range(3): emit('epoch', epoch=i); time.sleep(1)\n"
            "emit('registered', name='m', version=7)")
    job_id = jobs.submit(["python", "-c", code])
    seen: list[str] = []
    details = jobs.follow(job_id, seen.append)
    assert details["status"] == "SUCCEEDED"
    assert dropped, "the stream never delivered a chunk, so the drop was not exercised"
    events = parse_events("".join(seen))
    assert [e["event"] for e in events] == ["epoch"] * 3 + ["registered"]
    assert events[-1]["version"] == 7

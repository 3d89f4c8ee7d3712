"""Faults a user meets, through the real `atoll` command: each ends in one line and a non-zero exit, never a
traceback. The network faults are real sockets on 127.0.0.1: a server that is not a Ray dashboard, and a
head that answers its version and then drops every connection (what a head dying mid-command looks like)."""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest
from conftest import ATOLL, private_cluster_config, processes_with_home, run_cli


def _one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr, result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


@contextmanager
def _server(handler: type[http.server.BaseHTTPRequestHandler]) -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class _HTML(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        body = b"<!doctype html><html><body>a router's login page</body></html>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


class _DyingHead(_HTML):
    """Answers /api/version like Ray's dashboard, then drops every other request without an answer."""

    def do_GET(self) -> None:  # noqa: N802
        import ray

        if self.path.startswith("/api/version"):
            body = json.dumps({"version": "4", "ray_version": ray.__version__, "ray_commit": ray.__commit__,
                               "session_name": "session_gone"}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        self.connection.shutdown(socket.SHUT_RDWR)  # the head is gone mid-request

    do_POST = do_GET


def test_an_address_that_is_not_a_ray_dashboard_is_one_line():
    with _server(_HTML) as url:
        line = _one_line_error(run_cli("jobs", "list", env={"ATOLL_ADDRESS": url}))
    assert "not as a Ray dashboard" in line and "ATOLL_ADDRESS" in line


def test_a_head_that_dies_mid_command_is_one_line(tmp_path):
    token = tmp_path / "auth_token"  # a token of its own: the machine's may not exist yet
    token.write_text("a" * 64)
    with _server(_DyingHead) as url:
        for args in (["jobs", "list"], ["jobs", "status", "raysubmit_x"], ["submit", "--", "python", "-c", "1"]):
            line = _one_line_error(run_cli(*args, env={"ATOLL_ADDRESS": url, "RAY_AUTH_TOKEN_PATH": str(token)}))
            assert "Jobs API" in line and url in line and "stopped answering" in line, (args, line)


def test_a_machine_without_the_cluster_token_is_told_where_to_put_it(tmp_path):
    missing = tmp_path / "no_token"
    with _server(_DyingHead) as url:
        line = _one_line_error(run_cli("jobs", "list", env={"ATOLL_ADDRESS": url, "RAY_AUTH_TOKEN_PATH": str(missing),
                                                            "RAY_AUTH_TOKEN": ""}))
    assert f"{missing} does not exist" in line and "RAY_AUTH_TOKEN" in line and url in line, line


def test_two_exports_of_the_demo_dataset_at_once_both_succeed(tmp_path):
    code = "import sys; from atoll import data; print(data.prepare_demo(sys.argv[1])['train'])"
    procs = [subprocess.Popen(["python", "-c", code, str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    import pandas as pd

    assert len(pd.read_parquet(outs[0][0].strip())) == 1797 - 180
    assert not list(tmp_path.rglob("*.tmp"))


# ------------------------------------------------------------------------------------------------
# `atoll up` on a second, private cluster (its own ATOLL_HOME and ports): interrupted, or a port taken


@pytest.mark.cluster
def test_an_interrupted_atoll_up_leaves_no_cluster_running(tmp_path):
    config, env = private_cluster_config(tmp_path, 6391, 8291)
    proc = subprocess.Popen([ATOLL, "up", "-c", str(config)], env={**os.environ, **env}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 60
        # Ctrl-C once Ray's own processes run (the GCS is among the first).
        while time.monotonic() < deadline and not any("gcs_server" in " ".join(psutil.Process(p).cmdline())
                                                       for p in processes_with_home(env["ATOLL_HOME"])
                                                       if psutil.pid_exists(p)):
            assert proc.poll() is None, proc.communicate()  # e.g. the port was taken: say so
            time.sleep(0.2)
        assert time.monotonic() < deadline, "the head never started"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 130, (out, err)
        assert "Traceback" not in out + err and "interrupted" in (out + err).lower(), (out, err)
        deadline = time.monotonic() + 30
        while processes_with_home(env["ATOLL_HOME"]) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert processes_with_home(env["ATOLL_HOME"]) == []
        assert not (Path(env["ATOLL_HOME"]) / "cluster.json").exists()
    finally:  # whatever failed above, leave no cluster behind on the private ports for later tests
        proc.kill()
        run_cli("down", "-c", str(config), env=env, cwd=tmp_path, timeout=120)
        for pid in processes_with_home(env["ATOLL_HOME"]):
            with contextlib.suppress(psutil.Error):
                psutil.Process(pid).kill()


@pytest.mark.cluster
def test_atoll_up_on_a_taken_port_is_one_line_naming_it(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config, env = private_cluster_config(tmp_path, port, 8292)
        line = _one_line_error(run_cli("up", "-c", str(config), env=env, cwd=tmp_path, timeout=120))
    assert str(port) in line, line
    assert processes_with_home(env["ATOLL_HOME"]) == []


@pytest.mark.parametrize("content, message", [
    ("px0,px1,px2\n1,2,3\n4,5\n", "line 3 has 2 values but the header names 3 columns"),
    ("px0,px1\n1,2,3\n", "line 2 has 3 values"),
    ("px0,px1\n1,seven\n", "line 2, column 'px1': 'seven' is not a number"),
    ("", "empty; its first line must name the features"),
])
def test_a_bad_row_in_a_query_csv_is_one_line_naming_its_line(tmp_path, content, message):
    rows = tmp_path / "rows.csv"
    rows.write_text(content)
    line = _one_line_error(run_cli("query", "digits", "--file", str(rows)))
    assert message in line, line


# ------------------------------------------------------------------------------------------------
# Text from outside (a job's entrypoint, message and log) is printed as it is, never read as rich markup

#: What a job may carry: a closing tag with no opening one (rich's MarkupError) and a style tag.
MARKUP = "[/x] [bold]not bold"
_JOB = {"type": "SUBMISSION", "job_id": "02000000", "submission_id": "raysubmit_markup", "status": "FAILED",
        "entrypoint": f"echo '{MARKUP}'", "message": f"Job entrypoint command failed with exit code 1: {MARKUP}",
        "start_time": 1767268800000, "end_time": 1767268801000, "metadata": {}, "runtime_env": {},
        "driver_info": None, "error_type": None, "driver_agent_http_address": None, "driver_node_id": None,
        "driver_exit_code": 1}


class _JobsAPI(_HTML):
    """Ray's Jobs API as `atoll jobs` reads it (version, list, one job, its logs), holding one job whose
    entrypoint, message and output are full of brackets."""

    def do_GET(self) -> None:  # noqa: N802
        import ray

        answers = {"/api/version": {"version": "4", "ray_version": ray.__version__, "ray_commit": ray.__commit__,
                                    "session_name": "session_markup"},
                   "/api/jobs/": [_JOB], f"/api/jobs/{_JOB['submission_id']}": _JOB,
                   f"/api/jobs/{_JOB['submission_id']}/logs": {"logs": f"line 1\n{MARKUP}\n"}}
        body = json.dumps(answers.get(self.path.split("?")[0])).encode()
        self.send_response(200 if self.path.split("?")[0] in answers else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def test_a_jobs_brackets_are_printed_as_they_are(tmp_path):
    """`atoll submit -- echo '[/x]'` then `atoll jobs status ID` was "internal error" (rich's MarkupError)."""
    token = tmp_path / "auth_token"
    token.write_text("a" * 64)
    with _server(_JobsAPI) as url:
        env = {"ATOLL_ADDRESS": url, "RAY_AUTH_TOKEN_PATH": str(token)}
        shown = run_cli("jobs", "status", _JOB["submission_id"], env=env)
        listed = run_cli("jobs", "list", env=env)
        logs = run_cli("jobs", "logs", _JOB["submission_id"], "--tail", "1", env=env)
    for result in (shown, listed, logs):
        assert result.returncode == 0 and "Traceback" not in result.stderr, result.stdout + result.stderr
    assert f"echo '{MARKUP}'" in shown.stdout and _JOB["message"] in shown.stdout
    assert f"echo '{MARKUP}'" in listed.stdout
    assert logs.stdout == f"{MARKUP}\n"


def test_a_failed_jobs_log_tail_is_printed_as_it_is(tmp_path):
    """What `atoll train`/`tune`/`predict` print when their job fails: its log's tail (in a process of its own:
    the token path it is given must not stay in this one's Ray clients)."""
    token = tmp_path / "auth_token"
    token.write_text("a" * 64)
    code = f"from atoll import progress; progress.job_failed_hint({_JOB['submission_id']!r})"
    with _server(_JobsAPI) as url:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False,
                             env={**os.environ, "ATOLL_ADDRESS": url, "RAY_AUTH_TOKEN_PATH": str(token)})
    assert out.returncode == 0 and MARKUP in out.stderr, out.stderr

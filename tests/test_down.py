"""What `atoll down` stops: Ray's own programs of the recorded session and the processes `atoll up` marked,
never a user's `tail -f` of a session log (its command line names the session too), and never a crash on
another user's process. Real processes on this machine, matched and signalled by the real code; no cluster."""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from atoll import cluster

SESSION = "session_2026-01-01_12-00-00_000000_4242"


@pytest.fixture()
def started() -> Iterator[list[subprocess.Popen]]:
    """Processes a test starts; whatever is left of them is killed afterwards."""
    procs: list[subprocess.Popen] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


def _session(root: Path) -> Path:
    logs = root / "ray" / SESSION / "logs"
    logs.mkdir(parents=True)
    (logs / "raylet.out").write_text("raylet started\n")
    return logs.parent


def _start(started: list[subprocess.Popen], *cmd: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    proc = subprocess.Popen(list(cmd), env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    started.append(proc)
    deadline = time.monotonic() + 10
    while psutil.Process(proc.pid).cmdline() != list(cmd):  # until exec: before it, the child is pytest's copy
        assert time.monotonic() < deadline, f"{cmd} never showed its command line"
        time.sleep(0.05)
    return proc


def _a_ray_program(root: Path) -> Path:
    """A file where Ray keeps log_monitor.py in an installed package (it only sleeps: no Ray runs)."""
    script = root / "lib" / "python3.11" / "site-packages" / "ray" / "_private" / "log_monitor.py"
    script.parent.mkdir(parents=True)
    script.write_text("import time\ntime.sleep(600)\n")
    return script


def _record(home: Path, session_dir: Path, mark: str, processes: list[subprocess.Popen]) -> Path:
    """The state file `atoll up` would have written for this session."""
    info = cluster.ClusterInfo(mode="local", dashboard_url="http://127.0.0.1:1", session_name=SESSION,
                               session_dir=str(session_dir), mark=mark,
                               processes=[{"pid": p.pid, "create_time": psutil.Process(p.pid).create_time()}
                                          for p in processes])
    state = home / "cluster.json"
    state.write_text(json.dumps(info.to_dict()))
    return state


def test_the_session_is_rays_programs_naming_it_and_the_marked_processes(tmp_path, started) -> None:
    session_dir = _session(tmp_path)
    log = str(session_dir / "logs" / "raylet.out")
    ray_program = _start(started, sys.executable, "-u", str(_a_ray_program(tmp_path)),
                         f"--session-dir={session_dir}")
    marked = _start(started, "sleep", "600", env={cluster.MARK_VAR: "mark-1"})
    tail = _start(started, "tail", "-f", log)
    python_naming_it = _start(started, sys.executable, "-c", "import time; time.sleep(600)", log)
    _start(started, "sleep", "600", env={cluster.MARK_VAR: "another-up"})  # another `atoll up`'s

    found = {e["pid"] for e in cluster._session_processes(str(session_dir), "mark-1")}
    assert found == {ray_program.pid, marked.pid}
    assert tail.pid not in found and python_naming_it.pid not in found
    assert not cluster.is_ray_cmdline(["less", "/x/site-packages/ray/_private/log_monitor.py"])
    assert cluster.is_ray_cmdline(["ray::IDLE"]) and cluster.is_ray_cmdline([sys.executable, "-m", "ray.util.client.server"])


def test_down_leaves_a_tail_of_a_session_log_running_and_removes_the_record(tmp_path, monkeypatch, started) -> None:
    monkeypatch.setenv("ATOLL_HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    session_dir = _session(tmp_path)
    head = _start(started, "sleep", "600", env={cluster.MARK_VAR: "mark-1"})  # what `up` recorded
    worker = _start(started, "sleep", "601", env={cluster.MARK_VAR: "mark-1"})  # a marked one it did not
    tail = _start(started, "tail", "-f", str(session_dir / "logs" / "raylet.out"))
    state = _record(tmp_path / "home", session_dir, "mark-1", [head])

    stopped = cluster.down()

    assert stopped is not None and {head.pid, worker.pid} <= set(stopped) and tail.pid not in stopped
    assert head.wait(timeout=15) is not None and worker.wait(timeout=15) is not None
    assert tail.poll() is None, "`atoll down` killed the user's tail -f"
    assert not state.exists()


def _other_user() -> pwd.struct_passwd | None:
    try:
        return pwd.getpwnam("nobody")
    except KeyError:
        return None


def _down_as(user: pwd.struct_passwd, home: str) -> dict:
    """`cluster.down()` in a forked child running as ``user``: the processes this test started are then
    another user's, which it may not signal (root may signal anything)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop to the user, stop, report, and leave without pytest's teardown
        os.close(read)
        try:
            os.setgid(user.pw_gid)
            os.setuid(user.pw_uid)
            os.environ["ATOLL_HOME"] = home
            result = {"stopped": cluster.down()}
        except BaseException as exc:  # noqa: BLE001 - reported to the parent, which fails the test
            result = {"error": f"{type(exc).__name__}: {exc}"}
        os.write(write, json.dumps(result).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        out = pipe.read()
    os.waitpid(pid, 0)
    return json.loads(out)


@pytest.mark.skipif(os.geteuid() != 0 or _other_user() is None,
                    reason="needs root, to start processes as one user and run `atoll down` as another")
def test_down_passes_over_another_users_processes_and_still_removes_the_record(tmp_path, started) -> None:
    home = tempfile.mkdtemp(prefix="atoll-down-home-")  # the other user must reach it: not under tmp_path
    os.chmod(home, 0o777)
    try:
        session_dir = _session(tmp_path)
        recorded = _start(started, "sleep", "600", env={cluster.MARK_VAR: "mark-1"})  # root's: not signallable
        tail = _start(started, "tail", "-f", str(session_dir / "logs" / "raylet.out"))
        state = _record(Path(home), session_dir, "mark-1", [recorded])
        os.chmod(state, 0o666)

        result = _down_as(_other_user(), home)

        assert result == {"stopped": []}, result  # before the fix: "AccessDenied: ..." and the record left
        assert not state.exists()
        assert recorded.poll() is None and tail.poll() is None
    finally:
        for leftover in Path(home).iterdir():
            leftover.unlink()
        os.rmdir(home)

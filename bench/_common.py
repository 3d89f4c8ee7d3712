"""What the benchmarks share: a watcher for contention from another Ray cluster, and JSON helpers.

Each benchmark runs as ``python bench/NAME.py``, so this folder is on ``sys.path`` and they import
``from _common import ...``.
"""

from __future__ import annotations

import os
import statistics
from typing import Any


class ForeignRay:
    """Watches (every 2 s, in a thread) for raylets that are not this bench's own: another Ray cluster
    on the machine competes for the same cores, so its presence is reported next to the figures."""

    def __init__(self):
        import threading

        self.own_session: str | None = None
        self.paused = False  # while our own ray.init runs (its raylet's session is not known yet)
        self.seen: set[int] = set()
        self.since_mark: set[int] = set()
        self.polls = self.hits = 0  # since the last mark
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def foreign_raylets(self) -> set[int]:
        import psutil

        found = set()
        for proc in psutil.process_iter(["pid", "name", "cmdline"]):
            try:
                cmd = " ".join(proc.info["cmdline"] or [])
            except (psutil.Error, TypeError):
                continue
            is_raylet = "raylet" in (proc.info["name"] or "") or "/raylet/raylet" in cmd
            if is_raylet and not (self.own_session and self.own_session in cmd):
                found.add(proc.info["pid"])
        return found

    def _run(self):
        while not self._stop.wait(2.0):
            if not self.paused:
                self._look()

    def _look(self):
        found = self.foreign_raylets()
        self.seen |= found
        self.since_mark |= found
        self.polls += 1
        self.hits += bool(found)

    def mark(self) -> float:
        """Share of the 2-s polls since the last mark (one side of one round) that saw another cluster."""
        if not self.paused:
            self._look()
        share = self.hits / self.polls if self.polls else 0.0
        self.since_mark, self.polls, self.hits = set(), 0, 0
        return round(share, 2)

    def __enter__(self):
        self._look()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=5)

    def note(self) -> str:
        return (f"another Ray cluster ran during the bench (raylet pids {sorted(self.seen)}): contention"
                if self.seen else "no other Ray cluster seen during the bench")


def own_session() -> str | None:
    """This process's Ray session name (its raylet is not "another cluster")."""
    try:
        import ray

        return os.path.basename(ray._private.worker._global_node.get_session_dir_path())
    except Exception:  # noqa: BLE001 - best effort: without it every raylet counts as foreign
        return None


def median(values: list[Any]) -> Any:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def machine() -> str:
    """This machine in words, for the figures' record: cores, memory, GPU."""
    gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    try:
        import torch

        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    except Exception:  # noqa: BLE001 - a machine without torch still gets its cores and memory recorded
        gpu = "GPU unknown"
    return f"{os.cpu_count()} cores, {gib:.0f} GiB, {gpu}"


def commit() -> str:
    """The code measured: the short commit, with ``+changes`` when tracked files differ from it (the saved
    results themselves excepted: appending one run's line must not mark the next run's code as changed)."""
    import subprocess

    here = os.path.dirname(os.path.abspath(__file__))
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ":(top)",
                                ":(top,exclude)bench/results"], cwd=here, capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+changes" if dirty else "")


def result_line(result: dict[str, Any]) -> str:
    """A benchmark's JSON line (rounded), stamped with the commit, the machine and the time, so that
    ``bench/report.py`` can publish it as it was measured."""
    import json
    import time

    stamp = {"commit": commit(), "machine": machine(), "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    return json.dumps({**rounded(result), **stamp}, default=str)


def rounded(value: Any) -> Any:
    """Floats rounded to 4 places, recursively: the JSON line stays readable."""
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [rounded(v) for v in value]
    return value


def print_table(title: str, columns: list[str], rows: list[list[str]], left: int = 1) -> None:
    """A rich table: the first ``left`` columns left-aligned (names), the others right-aligned (figures)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for i, col in enumerate(columns):
        table.add_column(col, justify="left" if i < left else "right")
    for row in rows:
        table.add_row(*row)
    Console().print(table)


# ------------------------------------------------------------------------------------------------
# Benches that drive the `atoll` CLI against a cluster and storage of their own


def atoll_cli(*args: str, timeout: float = 1800) -> str:
    """``atoll ARGS`` as a user runs it (this environment's console script, from the repo); its stdout.

    Raises:
        RuntimeError: the command failed (its output tail is printed first).
    """
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.run([str(Path(sys.executable).parent / "atoll"), *args], cwd=repo, capture_output=True,
                          text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
        raise RuntimeError(f"`atoll {' '.join(args)}` failed (exit {proc.returncode})")
    return proc.stdout


def own_cluster(prefix: str):
    """A context: a temporary ATOLL_HOME and storage, `atoll up` on entry and `atoll down` on exit; yields
    the storage root and the work folder."""
    import contextlib
    import tempfile
    from pathlib import Path

    @contextlib.contextmanager
    def scope():
        work = Path(tempfile.mkdtemp(prefix=prefix))
        storage = str(work / "storage")
        os.environ.update({"ATOLL_HOME": str(work / "home"), "ATOLL_STORAGE": storage,
                           "ATOLL_CLUSTER_CONFIG": str(Path(__file__).resolve().parents[1] / "cluster.yaml")})
        atoll_cli("up")
        try:
            yield storage, work
        finally:
            atoll_cli("down")

    return scope()

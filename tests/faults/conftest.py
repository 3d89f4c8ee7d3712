"""Fault-injection and hostile-input tests (issue 9): each records what it measured for docs/reliability.md.

A test calls ``reliability(group, fault, measured, result)``. The rows wait on the test item until its
teardown, then land (a test that records none still leaves its outcome), with the test's real outcome (passed / failed / error / skipped), in
``.reliability/<run>/<test id>.json`` at the repository root (ignored by git). Every file carries the run
(one per pytest session), its start time and the git commit it ran on. ``python tests/faults/report.py``
turns the latest run's files into the table of ``docs/reliability.md``: a test that records and then
fails shows FAIL, and rows from earlier runs (or of renamed tests) are not published.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RECORDS = REPO / ".reliability"
ROWS = pytest.StashKey[list]()
OUTCOME = pytest.StashKey[str]()
_run: dict | None = None


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], check=False, cwd=REPO, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def run_info() -> dict:
    """This pytest session's run: an id, its start time and the commit (plus whether the tree was dirty)."""
    global _run
    if _run is None:  # this conftest is imported once per session: one run id per session
        started = datetime.now(UTC)
        status = _git("status", "--porcelain")
        _run = {"run": f"{started:%Y%m%dT%H%M%S%fZ}-{os.getpid()}", "started": started.isoformat(timespec="seconds"),
                "commit": _git("rev-parse", "HEAD") or "unknown", "dirty": bool(status) if status is not None else None}
    return _run


@pytest.fixture
def reliability(request: pytest.FixtureRequest) -> Callable[..., None]:
    """Record one row of the reliability table: ``reliability(group, fault, measured, result)``.
    ``result`` is what a pass means ("pass" unless said); a test that fails is published as FAIL."""
    rows = request.node.stash.setdefault(ROWS, [])

    def record(group: str, fault: str, measured: str, result: str = "pass") -> None:
        rows.append({"group": group, "fault": fault, "measured": measured, "result": result})

    return record


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """Write the item's rows after its teardown, with the outcome of all three phases: for every test under
    tests/faults, so a fault test that fails before recording anything (or records nothing) still appears."""
    report = yield
    outcome = item.stash.get(OUTCOME, "passed")
    if report.failed:
        outcome = "failed" if report.when == "call" else "error"
    elif report.skipped and outcome == "passed":
        outcome = "skipped"
    item.stash[OUTCOME] = outcome
    if report.when == "teardown":
        write_record(item.nodeid, outcome, item.stash.get(ROWS, []))
    return report


def write_record(test: str, outcome: str, rows: list[dict], records: Path = RECORDS) -> Path:
    """One file per test and run; a test that fails before recording a row still leaves its outcome."""
    info = run_info()
    folder = records / info["run"]
    folder.mkdir(parents=True, exist_ok=True)
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", test)[-150:]
    path = folder / f"{slug}.json"
    path.write_text(json.dumps({**info, "test": test, "outcome": outcome, "rows": rows}, indent=1))
    return path

"""Fault-injection and hostile-input tests (issue 9): each records what it measured for docs/reliability.md.

A test calls ``reliability(group, fault, measured, result)``; the record lands in
``.reliability/<test id>.json`` at the repository root (ignored by git). ``python tests/faults/report.py``
turns every record there into the table of ``docs/reliability.md``, so the published figures are the
tests' own output.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest

RECORDS = Path(__file__).resolve().parents[2] / ".reliability"


@pytest.fixture
def reliability(request: pytest.FixtureRequest) -> Callable[..., None]:
    """Record one row of the reliability table: ``reliability(group, fault, measured, result)``."""
    count = 0

    def record(group: str, fault: str, measured: str, result: str = "pass") -> None:
        nonlocal count
        count += 1
        RECORDS.mkdir(exist_ok=True)
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.nodeid)[-150:]
        row = {"test": request.node.nodeid, "group": group, "fault": fault, "measured": measured,
               "result": result}
        (RECORDS / f"{slug}.{count}.json").write_text(json.dumps(row, indent=1))

    return record

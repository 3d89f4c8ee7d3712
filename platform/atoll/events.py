"""Progress events: one JSON line per event in a job's output, read back by the CLI from the job's logs.

Lives apart from atoll.train so that the CLI can follow a job without importing torch.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

EVENT_PREFIX = "ATOLL_EVENT "


def emit(event: str, **fields: Any) -> None:
    """Print one machine-readable progress line; the CLI reads these from the job's logs."""
    print(EVENT_PREFIX + json.dumps({"event": event, **fields}, default=str), flush=True)


def parse_events(text: str) -> list[dict[str, Any]]:
    """Every progress event in a chunk of job logs (Ray prefixes worker lines; we look inside)."""
    events = []
    for line in text.splitlines():
        at = line.find(EVENT_PREFIX)
        if at >= 0:
            try:
                events.append(json.loads(line[at + len(EVENT_PREFIX):]))
            except json.JSONDecodeError:
                continue
    return events


def git_commit(path: str | Path = ".") -> str | None:
    """The commit of the project, when it is a git checkout (recorded as a job's lineage)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=path, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def report_error(exc: Exception) -> int:
    """How an entry point on the cluster ends on a user error: an ``error`` event (the CLI shows it),
    the message on stderr, exit code 2."""
    emit("error", message=str(exc))
    print(f"error: {exc}", file=sys.stderr, flush=True)
    return 2

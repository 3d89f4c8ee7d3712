"""Progress events: one JSON line per event in a job's output, read back by the CLI from the job's logs.

Lives apart from atoll.train so that the CLI can follow a job without importing torch.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

EVENT_PREFIX = "ATOLL_EVENT "


def emit(event: str, **fields: Any) -> None:
    """Print one machine-readable progress line; the CLI reads these from the job's logs.

    Each line carries ``t`` (when it was printed, Unix seconds: readers time a job's steps from the log) and an
    ``id`` of its own, by which a reader that meets a line twice (reading overlapping chunks of a log) drops the
    copy. Atoll's jobs turn off Ray Train's print patch (``RAY_TRAIN_ENABLE_PRINT_PATCH=0``), which wrote each
    of a worker's lines to the job's log a second time.
    """
    print(EVENT_PREFIX + json.dumps({"event": event, **fields, "id": os.urandom(6).hex(), "t": round(time.time(), 3)}, default=str), flush=True)


def parse_events(text: str, seen: set[str] | None = None) -> list[dict[str, Any]]:
    """Every progress event in a chunk of job logs (Ray prefixes worker lines; we look inside). With ``seen``
    (the ids read so far, updated here), an event already read in an earlier line or chunk is left out."""
    events = []
    for line in text.splitlines():
        at = line.find(EVENT_PREFIX)
        if at >= 0:
            try:
                event = json.loads(line[at + len(EVENT_PREFIX):])
            except json.JSONDecodeError:
                continue
            if seen is not None and "id" in event:
                if event["id"] in seen:
                    continue
                seen.add(event["id"])
            events.append(event)
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

"""Who writes a registration and whether they still live: the ``writer`` a PENDING manifest records (host,
pid, started_at), the check that reports a PENDING registration whose process is gone as FAILED ("writer
died"), and ``STALE_STAGING_S``, the time without a write after which a staging folder counts as abandoned.
The two sides of that record sit together so the fields written and the fields judged cannot drift apart."""

from __future__ import annotations

import os
import socket
from typing import Any

from atoll.registry.manifest import _now

STALE_STAGING_S = 3600.0


def _this_writer() -> dict[str, Any]:
    """The ``writer`` of a registration this process starts."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "started_at": _now()}


def _pid_alive(pid: int) -> bool:
    """Whether a process of this host runs with that pid (True when it cannot tell)."""
    if os.name != "posix" or pid <= 0:  # on Windows os.kill(pid, 0) would terminate the process
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    try:  # a killed process its parent has not reaped yet is a zombie: it writes nothing any more
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _writer_died(writer: dict[str, Any]) -> bool:
    pid = writer.get("pid")
    return writer.get("host") == socket.gethostname() and isinstance(pid, int) and not _pid_alive(pid)

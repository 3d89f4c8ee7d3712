"""Atoll's state on this machine: the folder ``$ATOLL_HOME`` (``~/.atoll``) and the private files in it.

The cluster's record, the object store's credentials and Prometheus's files all live here; what holds a secret or
a process's address is created readable by its owner only (never wider for a moment).
"""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    """Atoll's local state directory (``$ATOLL_HOME`` or ``~/.atoll``)."""
    return Path(os.environ.get("ATOLL_HOME") or "~/.atoll").expanduser()


def private_dir(path: Path) -> Path:
    """``path`` made (with its parents) and kept 0700, whatever the umask or an earlier mode."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)
    return path


def private_file(path: Path, text: str) -> None:
    """Write ``text`` to a file only its owner can read: created 0600 (``O_EXCL`` after removing an old one, so
    never a file someone else made, nor one that was wider for a moment)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)

"""Ray's token authentication, made sure of.

``ray start --head`` turns token auth on only when a token file already exists, and a Ray client
sends the token only when ``RAY_AUTH_MODE=token`` is set in its environment. Atoll creates the token
(private, mode 0600) before it starts a head, and passes it explicitly to every client it makes.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

from atoll.errors import ClusterError


def token_path() -> Path:
    """Where Ray looks for the token: ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``."""
    return Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or "~/.ray/auth_token").expanduser()


def ensure_token() -> Path:
    """Create the cluster token if there is none, and make sure only its owner can read it."""
    path = token_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        # O_EXCL: two concurrent `atoll up` never overwrite each other's token.
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32))
    if stat.S_IMODE(path.stat().st_mode) != 0o600:
        path.chmod(0o600)
    return path


def read_token() -> str | None:
    """The token, from ``RAY_AUTH_TOKEN`` or the token file; None when there is none."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return os.environ["RAY_AUTH_TOKEN"].strip()
    path = token_path()
    if not path.exists():
        return None
    try:
        return path.read_text().strip() or None
    except OSError as exc:
        raise ClusterError(f"cannot read the cluster token {path}: {exc.strerror}. Check its permissions.") from None


def missing_token(where: str) -> ClusterError:
    """The one line for a client that must send the token and finds none on this machine."""
    return ClusterError(f"{where} needs the cluster's token and this machine has none: {token_path()} does not "
                        f"exist and RAY_AUTH_TOKEN is not set. `atoll up` makes one for a cluster it starts; for "
                        f"another cluster, copy its head's token there (mode 600) or set RAY_AUTH_TOKEN.")


def headers() -> dict[str, str]:
    """HTTP headers that authenticate to the dashboard / Jobs API."""
    token = read_token()
    return {"Authorization": f"Bearer {token}"} if token else {}


def client_env() -> dict[str, str]:
    """Environment that makes Ray's own clients (ray CLI, gRPC to the GCS) send the token."""
    env = {"RAY_AUTH_MODE": "token"}
    if not os.environ.get("RAY_AUTH_TOKEN"):
        env["RAY_AUTH_TOKEN_PATH"] = str(token_path())
    return env


def enable_for_this_process() -> None:
    """Make in-process Ray clients (GCS gRPC, state API) authenticate; called when connecting."""
    os.environ.update(client_env())

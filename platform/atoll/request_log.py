"""The request log: a sample of a model app's requests and answers, kept as Parquet in the storage root.

``atoll serve deploy NAME --log-requests 0.1`` makes every replica of the app keep one request in ten (the
``log_requests`` Serve setting; ``log_retention_hours`` says how long it is kept). A sampled request's record:
``time`` (UTC), ``app``, ``model`` and ``version`` (the version that answered), ``route`` (its template),
``status``, ``latency_ms`` (as the replica saw it), ``inputs`` and ``outputs`` (JSON text: the rows or texts as
the replica parsed them, whatever protocol they came in, and the predictions or completion). Never a header, a
key or the raw body.

Off the request path: a sampled request only appends a tuple to a list (:meth:`RequestLog.record`, a few
microseconds; an unsampled one costs one ``random()``, and with logging off a replica does one ``is None``).
A background thread turns the records into JSON and Parquet and writes them every :data:`FLUSH_S` seconds or
:data:`FLUSH_RECORDS` records, and once more when the replica shuts down:
``<storage>/request_logs/<app>/<YYYY-MM-DD>/<HH>/<replica>-<seq>.parquet`` (UTC hours). Each file is written
whole: on a disk under a temporary name beginning with ``.`` then renamed (``os.replace``); on an object store
by one upload, which becomes visible only once complete. A replica killed mid-batch loses at most its unflushed
records, never leaves a half-written file; :func:`read` reads only finished files. The writer deletes hour
folders older than the retention now and then (every :data:`PRUNE_EVERY_S`).

This module runs in replicas (no client-side imports) and is the reader too (:func:`read`).
"""

from __future__ import annotations

import io
import json
import logging
import math
import posixpath
import random
import re
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from atoll import filesystems
from atoll.errors import ConfigError

log = logging.getLogger("ray.serve")

LOG_DIR = "request_logs"
#: Seconds between flushes, and records that wake the writer early.
FLUSH_S = 5.0
FLUSH_RECORDS = 1000
#: Records held at most while the store is slow or refuses writes: past it a replica counts and drops new ones
#: (memory stays bounded however long the store hangs).
MAX_BUFFERED = 100_000
#: Seconds between the writer's sweeps of hour folders past the retention.
PRUNE_EVERY_S = 600.0
COLUMNS = ("time", "app", "model", "version", "route", "status", "latency_ms", "inputs", "outputs")
_APP = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")
_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_HOUR = re.compile(r"^\d{2}$")


def app_dir(storage: str, app: str) -> str:
    """``<storage>/request_logs/<app>`` (the app name checked: it becomes one folder).

    Raises:
        ConfigError: ``app`` is not an app name.
    """
    if not isinstance(app, str) or not _APP.match(app):
        raise ConfigError(f"app {app!r}: an app name is letters, digits, '-' and '_' (see `atoll serve status`).")
    return filesystems.join(storage, LOG_DIR, app)


# ------------------------------------------------------------------------------------------------
# JSON of what a replica parsed and answered (numpy arrays, NaN gaps)


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        if value.dtype.kind == "f":
            return np.where(np.isnan(value), None, value.astype(object)).tolist()
        if value.dtype.kind == "O":
            return [_jsonable(v) for v in value.tolist()]
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def to_json(value: Any) -> str | None:
    """``value`` as JSON text (None stays None); arrays as lists, NaN and inf as null."""
    if value is None:
        return None
    return json.dumps(_jsonable(value), separators=(",", ":"), default=str)


# ------------------------------------------------------------------------------------------------
# The writer, in a replica


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", text)[:40] or "replica"


class RequestLog:
    """One replica's sampled records, buffered in memory and written by a background thread.

    Args:
        storage: The storage root (a folder or an object-store URI).
        app: The Serve app (already a checked name: it came from Serve).
        model: The version's name; ``version``: its number.
        replica: This replica's id (the file names' prefix; a short random part is added).
        fraction: Share of requests kept, 0 < fraction <= 1.
        retention_hours: Hour folders older than this are deleted by the writer.
    """

    def __init__(self, storage: str, app: str, model: str, version: int, replica: str, fraction: float,
                 retention_hours: float, *, flush_s: float = FLUSH_S, flush_records: int = FLUSH_RECORDS,
                 max_buffered: int = MAX_BUFFERED) -> None:
        self.root = app_dir(storage, app)
        self.app, self.model, self.version, self.fraction = app, model, int(version), float(fraction)
        self.retention_s = float(retention_hours) * 3600.0
        self.replica = f"{_safe(replica)}-{uuid.uuid4().hex[:6]}"
        self.flush_s, self.flush_records, self.max_buffered = flush_s, flush_records, max_buffered
        self.dropped = 0  # records not kept because the buffer was full (the writer warns of them)
        self._warned_dropped = 0
        self.fs, self.base = filesystems.resolve(self.root)
        self._records: list[tuple[Any, ...]] = []
        self._seq = 0
        self._lock = threading.Lock()  # one flush at a time (the thread's and close()'s)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._pruned = 0.0
        self.written: list[str] = []  # the files this writer wrote (for tests and logs)
        self._thread = threading.Thread(target=self._run, name="atoll-request-log", daemon=True)
        self._thread.start()

    # -- the request path

    def sampled(self) -> bool:
        """Whether to keep this request (decide before timing it)."""
        return self.fraction >= 1.0 or random.random() < self.fraction

    def record(self, route: str, status: int, latency_ms: float, inputs: Any, outputs: Any) -> None:
        """Keep one request: an append (the JSON and the Parquet are made by the writer's thread); dropped and
        counted when ``max_buffered`` are waiting already (the store is slow or down)."""
        if len(self._records) >= self.max_buffered:
            self.dropped += 1
            return
        self._records.append((time.time(), route, status, latency_ms, inputs, outputs))
        if len(self._records) >= self.flush_records:
            self._wake.set()

    # -- the writer's thread

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.flush_s)
            self._wake.clear()
            try:
                self.flush()
                if time.monotonic() - self._pruned > PRUNE_EVERY_S:
                    self._pruned = time.monotonic()
                    self.prune()
            except Exception as exc:  # noqa: BLE001 - the log must never take the replica down
                log.warning("request log: could not write to %s: %s", self.root, exc)
            if self.dropped > self._warned_dropped:
                log.warning("request log: %d records dropped so far: %d were waiting for %s", self.dropped,
                            self.max_buffered, self.root)
                self._warned_dropped = self.dropped

    def flush(self) -> list[str]:
        """Write the records kept so far, one file per UTC hour they fall in. Returns the files written."""
        with self._lock:
            records, self._records = self._records, []  # (an append meanwhile lands in the new list)
            if not records:
                return []
            by_hour: dict[str, list[tuple[Any, ...]]] = {}
            for r in records:
                by_hour.setdefault(time.strftime("%Y-%m-%d/%H", time.gmtime(r[0])), []).append(r)
            written, hours = [], list(by_hour)
            try:
                while hours:
                    written.append(self._write(hours[0], by_hour[hours[0]]))
                    hours.pop(0)
            except BaseException:  # the hours not written are tried again at the next flush
                left = [r for h in hours for r in by_hour[h]]
                room = max(self.max_buffered - len(self._records), 0)
                kept = left[len(left) - room:] if room else []  # the newest of them, as many as fit
                self.dropped += len(left) - len(kept)
                self._records[:0] = kept
                raise
            finally:
                self.written += written
            return written

    def _table(self, rows: list[tuple[Any, ...]]):
        import pyarrow as pa

        return pa.table({
            "time": pa.array([int(r[0] * 1000) for r in rows], pa.timestamp("ms", tz="UTC")),
            "app": pa.array([self.app] * len(rows), pa.string()),
            "model": pa.array([self.model] * len(rows), pa.string()),
            "version": pa.array([self.version] * len(rows), pa.int64()),
            "route": pa.array([r[1] for r in rows], pa.string()),
            "status": pa.array([int(r[2]) for r in rows], pa.int32()),
            "latency_ms": pa.array([float(r[3]) for r in rows], pa.float64()),
            "inputs": pa.array([to_json(r[4]) for r in rows], pa.string()),
            "outputs": pa.array([to_json(r[5]) for r in rows], pa.string())})

    def _write(self, hour: str, rows: list[tuple[Any, ...]]) -> str:
        import pyarrow.parquet as pq

        buffer = io.BytesIO()
        pq.write_table(self._table(rows), buffer, compression="zstd")
        self._seq += 1
        name = f"{self.replica}-{self._seq:06d}.parquet"
        folder = posixpath.join(self.base, *hour.split("/"))
        path = posixpath.join(folder, name)
        filesystems.write_whole(self.fs, path, buffer.getvalue())  # never half a file under the real name
        return path

    def prune(self, now: float | None = None) -> list[str]:
        """Delete the hour folders that ended more than the retention ago (and emptied day folders)."""
        import pyarrow.fs as pafs

        cutoff = (now or time.time()) - self.retention_s
        removed = []
        for day in _folders(self.fs, self.base):
            if not _DAY.match(day.base_name):
                continue
            hours = [h for h in _folders(self.fs, day.path) if _HOUR.match(h.base_name)]
            for hour in hours:
                end = _hour_start(day.base_name, hour.base_name) + 3600
                if end < cutoff:
                    try:
                        self.fs.delete_dir(hour.path)
                        removed.append(hour.path)
                    except (FileNotFoundError, OSError):  # another replica's sweep got there first
                        continue
            if hours and len(removed) and all(h.path in removed for h in hours):
                try:
                    if self.fs.get_file_info(day.path).type == pafs.FileType.Directory:
                        self.fs.delete_dir(day.path)
                except (FileNotFoundError, OSError):
                    pass
        return removed

    def close(self) -> None:
        """Stop the thread and write what is left (the replica is shutting down)."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=10)
        try:
            self.flush()
        except Exception as exc:  # noqa: BLE001 - shutting down: say so, do not raise from __del__
            log.warning("request log: the last records could not be written to %s: %s", self.root, exc)


def start(storage: str, app: str, model: str, version: int, replica: str, fraction: float | None,
          retention_hours: float) -> RequestLog | None:
    """A replica's request log, or None when logging is off (``fraction`` 0 or unset) or the replica has no app
    (built outside Serve)."""
    if not fraction or not app:
        return None
    return RequestLog(storage, app, model, version, replica, fraction, retention_hours)


# ------------------------------------------------------------------------------------------------
# Reading


def _folders(fs, path: str) -> list:
    import pyarrow.fs as pafs

    try:
        found = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    except FileNotFoundError:
        return []
    return sorted((i for i in found if i.type == pafs.FileType.Directory), key=lambda i: i.base_name)


def _hour_start(day: str, hour: str) -> float:
    return datetime.strptime(f"{day} {hour}", "%Y-%m-%d %H").replace(tzinfo=UTC).timestamp()


def is_log_file(name: str) -> bool:
    """A finished log file: ``*.parquet``, not a writer's temporary (``.NAME...tmp``)."""
    return name.endswith(".parquet") and not name.startswith((".", "_"))


def _since(since: datetime | timedelta | float | None) -> float | None:
    if since is None:
        return None
    if isinstance(since, datetime):
        return (since if since.tzinfo else since.replace(tzinfo=UTC)).timestamp()
    if isinstance(since, timedelta):
        return time.time() - since.total_seconds()
    return time.time() - float(since) * 3600.0


def files(storage: str, app: str, since: datetime | timedelta | float | None = None) -> list[str]:
    """The finished log files of ``app`` (paths in the storage's filesystem), oldest hour first; with ``since``,
    only the hours that end after it."""
    import pyarrow.fs as pafs

    fs, base = filesystems.resolve(app_dir(storage, app))
    start_ts = _since(since)
    found = []
    for day in _folders(fs, base):
        if not _DAY.match(day.base_name):
            continue
        for hour in _folders(fs, day.path):
            if not _HOUR.match(hour.base_name):
                continue
            if start_ts is not None and _hour_start(day.base_name, hour.base_name) + 3600 <= start_ts:
                continue
            entries = fs.get_file_info(pafs.FileSelector(hour.path, allow_not_found=True))
            found += sorted(e.path for e in entries if e.type == pafs.FileType.File and is_log_file(e.base_name))
    return found


def read(storage: str, app: str, since: datetime | timedelta | float | None = None):
    """The logged requests of ``app`` as a pandas DataFrame (columns :data:`COLUMNS`, ``time`` in UTC), oldest
    first; ``since``: a datetime, a timedelta back from now, or hours back from now (a number).

    Raises:
        ConfigError: ``app`` is not an app name.
    """
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    fs, _ = filesystems.resolve(app_dir(storage, app))
    tables = []
    with filesystems.store_errors(storage):
        for path in files(storage, app, since):
            try:
                with fs.open_input_file(path) as fh:
                    tables.append(pq.read_table(fh))
            except FileNotFoundError:  # pruned meanwhile
                continue
    if not tables:
        return pd.DataFrame({c: pd.Series(dtype="object") for c in COLUMNS})
    frame = pa.concat_tables(tables, promote_options="default").to_pandas()
    start_ts = _since(since)
    if start_ts is not None:
        frame = frame[frame["time"] >= pd.Timestamp(start_ts, unit="s", tz="UTC")]
    return frame.sort_values("time", kind="stable").reset_index(drop=True)

"""Calling a model endpoint over HTTP, as a client does: ``atoll query``, :func:`atoll.query` and the quickstart.

A request body from a file (JSON or CSV rows), the POST to ``/<app>/<path>`` with the API key when one is set,
and retries of a lost replica or a shed request (a prediction is idempotent). Deploying and listing apps is
:mod:`atoll.serving.endpoints`' work; this module only speaks to what it deployed.
"""

from __future__ import annotations

import os
import time
from typing import Any

import httpx

from atoll import cluster
from atoll.errors import ConfigError, ServingError
from atoll.serving.endpoints import api_key, endpoint_url
from atoll.specs import ClusterSpec


def read_rows_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A request body from a file: JSON (``{"inputs": ...}`` or a bare list of rows) or CSV with a header
    (rows sent by feature name).

    Raises:
        ConfigError: no such file, not JSON, or a CSV row that is short, long or not numbers (with its line).
    """
    import csv
    import json
    from pathlib import Path

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--file {path}: no such file.")
    if path.suffix.lower() != ".csv":
        try:
            data = json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError) as exc:
            raise ConfigError(f"--file {path}: not valid JSON ({exc}).") from None
        return data if isinstance(data, dict) else {"inputs": data}
    with path.open(newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if not header:
            raise ConfigError(f"--file {path}: empty; its first line must name the features.")
        rows = []
        for line, values in enumerate(reader, start=2):
            if not values:  # a blank line
                continue
            if len(values) != len(header):
                raise ConfigError(f"--file {path}: line {line} has {len(values)} values but the header names "
                                  f"{len(header)} columns; give every row one value per column.")
            row = {}
            for name, value in zip(header, values):
                try:
                    row[name] = float(value)
                except ValueError:
                    raise ConfigError(f"--file {path}: line {line}, column {name!r}: {value!r} is not a number; "
                                      f"every CSV value must be one.") from None
            rows.append(row)
    return {"inputs": rows}


#: Answers worth one more try: the proxy lost the replica (it is being replaced) or shed the request.
RETRY_STATUS = (502, 503, 504)
RETRIES = 2


def _post_with_retries(url: str, payload: dict[str, Any], headers: dict[str, str], timeout: float) -> httpx.Response:
    """POST, retrying a lost replica or a shed request (a prediction is idempotent: asking twice is safe),
    after the server's Retry-After (at most 2 s)."""
    for attempt in range(RETRIES + 1):
        last = attempt == RETRIES
        try:
            resp = httpx.post(url, json=payload, headers=headers, timeout=timeout)
        except (httpx.RemoteProtocolError, httpx.ReadError):  # the connection died under the request
            if last:
                raise
            time.sleep(0.5)
            continue
        if resp.status_code not in RETRY_STATUS or last:
            return resp
        retry_after = resp.headers.get("retry-after", "")
        time.sleep(min(float(retry_after), 2.0) if retry_after.isdigit() else 0.5)
    return resp


def query(app: str, payload: dict[str, Any], *, spec: ClusterSpec | None = None, path: str = "predict",
          timeout: float = 30) -> dict[str, Any]:
    """POST ``payload`` to ``/<app>/<path>`` (with the API key when one is set) and return the JSON answer.

    Raises:
        ServingError: no proxy listening, no such app, or a refused request (with the endpoint's message).
    """
    spec = spec or cluster.load_spec()
    url = f"{endpoint_url(spec, app)}/{path}"
    headers = {}
    if key := api_key(spec.atoll.serve):
        headers["Authorization"] = f"Bearer {key}"
    try:
        resp = _post_with_retries(url, payload, headers, timeout)
    except httpx.ConnectError:
        raise ServingError(f"nothing listens on {endpoint_url(spec, '')}: no model is deployed (or the cluster "
                           f"is down). Deploy one with `atoll serve deploy NAME`.") from None
    except httpx.HTTPError as exc:
        raise ServingError(f"{url}: {exc}") from None
    if resp.status_code == 404:
        raise ServingError(f"no Serve app {app!r} at {url}; `atoll serve status` lists the apps.")
    try:
        body = resp.json()
    except ValueError:
        body = {"error": resp.text.strip()[:300]}
    if resp.status_code >= 400:
        raise ServingError(f"{app} refused the request ({resp.status_code}): {body.get('error') or body}")
    return body

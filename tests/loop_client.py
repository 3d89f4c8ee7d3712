"""A client that sends predictions back to back in a thread while a test changes the app under it (a rollover, a
canary, a replica killed): which version answered each request (its ``x-atoll-version`` header) and every failure.
Shared by the canary test and the HAProxy probe (which runs in a network namespace, outside pytest)."""

from __future__ import annotations

import collections
import threading
import time

import httpx

ROW = [0.0] * 64  # one digits row


class LoopClient:
    """``with LoopClient(url) as client:`` POSTs ``{"inputs": [ROW]}`` to ``url/predict`` until the block ends.

    ``answers``: (version, status) of each HTTP answer; ``failures``: each answer other than 200, and each request
    with no HTTP answer (its exception)."""

    def __init__(self, url: str, headers: dict[str, str] | None = None) -> None:
        self.url, self.headers = url, headers or {}
        self.answers: list[tuple[str | None, int]] = []
        self.failures: list = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        with httpx.Client(timeout=30, headers=self.headers) as http:
            while not self.stop.is_set():
                try:
                    resp = http.post(f"{self.url}/predict", json={"inputs": [ROW]})
                except httpx.HTTPError as exc:
                    self.failures.append(repr(exc))
                    continue
                version = resp.headers.get("x-atoll-version")
                self.answers.append((version, resp.status_code))
                if resp.status_code != 200:
                    self.failures.append((version, resp.status_code, resp.text[:200]))

    def mark(self) -> int:
        return len(self.answers)

    def sent(self) -> int:
        """Requests finished so far, answered or not."""
        return len(self.answers) + sum(isinstance(f, str) for f in self.failures)

    def wait_for(self, count: int, timeout: float = 60) -> None:
        """Until ``count`` more answers have come (or the loop died); AssertionError past ``timeout``."""
        start, deadline = len(self.answers), time.monotonic() + timeout
        while len(self.answers) < start + count and self.thread.is_alive():
            assert time.monotonic() < deadline, f"no {count} answers after {timeout:.0f} s"
            time.sleep(0.05)

    def since(self, mark: int) -> collections.Counter:
        """How many answers each version gave since ``mark``."""
        return collections.Counter(version for version, _ in self.answers[mark:])

    def versions(self) -> list[str | None]:
        """The version of each successful answer, in order."""
        return [version for version, status in self.answers if status == 200]

    def __enter__(self) -> LoopClient:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()

"""Where a server process's CPU goes: py-spy samples of running processes, sorted into named parts.

``sample(pids, seconds)`` records each process with ``py-spy record --format raw`` (collapsed stacks; py-spy
comes with ``ray[default]``) while the caller keeps the load on; ``breakdown(stacks, PARTS)`` gives each
part's share of the busy samples. A sample belongs to the part of the innermost frame that names one (a
frame matching several takes the first in ``PARTS`` order), so time counts where it is spent, not where it
was called from: the model's computation counts as the model although Serve's batching called it, a
metrics call as metrics although the router made it, the standard library's JSON as whoever called it.
Samples with no such frame (the event loop itself, idle-looking threads) are "the rest". The shares of one
process add up to 1.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

#: (part, substrings of a frame "function (file)"); for a frame that matches several, the first wins.
SERVE_PARTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("the model (torch, Atoll's predictor)", ("atoll/serving/predictor.py", "torch/")),
    ("Atoll's request parsing and answer", ("atoll/",)),
    ("Ray metrics, tracing and logging", ("ray/util/metrics.py", "tracing_helper.py", "tracing_utils.py",
                                          "logging/", "ray/serve/_private/logging_utils.py",
                                          "ray/serve/_private/metrics_utils.py")),
    ("Ray actor calls (proxy <-> replica, ASGI receive, result streams)",
     ("ray/actor.py", "object_ref_generator.py", "ray/_private/worker.py", "ray/_raylet", "serialization.py")),
    ("FastAPI / Starlette app", ("fastapi/", "starlette/", "pydantic")),
    ("HTTP parsing (uvicorn)", ("uvicorn/", "httptools", "h11")),
    ("Serve's router, proxy and replica bookkeeping", ("ray/serve/",)),
)
REST = "asyncio event loop and the rest"


def py_spy() -> str | None:
    return shutil.which("py-spy")


def sample(pids: dict[str, int], seconds: float, rate: int = 200) -> dict[str, list[tuple[list[str], int]]]:
    """Collapsed stacks of each named process over ``seconds`` (all recorded at once, non-blocking)."""
    out_dir = Path(tempfile.mkdtemp(prefix="atoll_profile_"))
    try:
        procs = {name: subprocess.Popen([py_spy(), "record", "--pid", str(pid), "--duration", str(int(seconds)),
                                         "--rate", str(rate), "--format", "raw", "--nonblocking",
                                         "-o", str(out_dir / f"{name}.txt")],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                 for name, pid in pids.items()}
        for proc in procs.values():
            proc.wait(timeout=seconds + 60)
        return {name: _read(out_dir / f"{name}.txt") for name in pids}
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)


def _read(path: Path) -> list[tuple[list[str], int]]:
    stacks = []
    for line in path.read_text().splitlines() if path.exists() else []:
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks.append((stack.split(";"), int(count)))
    return stacks


def breakdown(stacks: list[tuple[list[str], int]], parts=SERVE_PARTS) -> dict[str, float]:
    """Each part's share of the samples (parts with none are left out); empty when nothing was sampled."""
    counts = dict.fromkeys([name for name, _ in parts] + [REST], 0)
    for frames, n in stacks:
        counts[next((name for frame in reversed(frames) for name, patterns in parts
                     if any(p in frame for p in patterns)), REST)] += n
    total = sum(counts.values())
    return {name: round(c / total, 3) for name, c in counts.items() if c} if total else {}

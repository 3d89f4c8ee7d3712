"""Run inside the network namespace of tests/test_ingress.py, beside a cluster whose ingress is HAProxy: deploys
the apps with the `atoll` CLI as a user does, drives each feature of issue 36.3 through HAProxy's port, and prints
one line ``PROBE {json}`` of what it saw (the test asserts on it). Not a test module: it needs the namespace.

Arguments: a JSON object with ``port``, ``key``, ``home`` (the namespace cluster's ATOLL_HOME), ``live`` and
``next`` (two versions of the digits model) and ``writer`` (a language model's version)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import psutil
from loop_client import ROW, LoopClient

ARGS = json.loads(sys.argv[1])
BASE = f"http://127.0.0.1:{ARGS['port']}"
KEY = {"Authorization": f"Bearer {ARGS['key']}"}
ATOLL = str(Path(sys.executable).with_name("atoll"))
#: Each replica takes half a CPU; up to 2 (autoscaled with a short delay, so the test sees it happen).
DIGITS = ["--set", "num_cpus_per_replica=0.5", "--set", "target_ongoing_requests=1", "--set", "upscale_delay_s=1",
          "--set", "max_batch_size=16"]
out: dict = {}


def atoll(*args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([ATOLL, *args], capture_output=True, text=True, timeout=400,
                          env={**os.environ, "ATOLL_API_KEY": ARGS["key"]})
    if done.returncode:
        print(f"PROBE-FAILED atoll {' '.join(args)}: {done.stdout[-2000:]}{done.stderr[-2000:]}")
        sys.exit(1)
    return done


def replicas(app: str) -> int:
    """``app``'s RUNNING replicas (its replicas by state kept in ``out``: a failed wait shows them)."""
    rows = json.loads(atoll("serve", "status", "--json").stdout)
    out[f"{app}_replicas"] = next(r for r in rows if r["app"] == app)["replicas"]
    return out[f"{app}_replicas"].get("RUNNING", 0)


def replica_pids(app: str) -> list[int]:
    """This cluster's replicas of ``app`` (the session's cluster outside the namespace has its own)."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            if " ".join(proc.info["cmdline"] or []).startswith(f"ray::ServeReplica:{app}:") and \
                    proc.environ().get("ATOLL_HOME") == ARGS["home"]:
                found.append(proc.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def haproxy_files() -> dict[str, str]:
    """Where this cluster's HAProxy keeps its config and admin socket, and their modes (from its command line)."""
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        try:
            if "-f" in cmdline and "haproxy" in cmdline[0] and proc.environ().get("ATOLL_HOME") == ARGS["home"]:
                config = Path(cmdline[cmdline.index("-f") + 1])
                top = config.parent.parent  # <folder>/<node id>/haproxy.cfg
                return {"config": str(config), "folder_mode": oct(top.stat().st_mode & 0o777),
                        "socket_mode": oct((config.parent / "admin.sock").stat().st_mode & 0o777)}
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return {}


def wait_for(condition, timeout: float, what: str) -> float:
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            print(f"PROBE-FAILED timed out after {timeout} s waiting for {what}: {json.dumps(out)}")
            sys.exit(1)
        time.sleep(0.2)
    return time.monotonic() - start


async def flood(seconds: float, keyless: int, keyed: int, halt: threading.Event | None = None,
                counts: dict[str, int] | None = None) -> dict[str, int]:
    """``keyless`` and ``keyed`` clients back to back for ``seconds`` (or until ``halt``): what each got (counted
    into ``counts`` as they come, when given)."""
    counts = counts if counts is not None else {}
    counts.update({"refused": 0, "ok": 0, "failed": 0})
    stop = time.monotonic() + seconds
    halt = halt or threading.Event()
    body = {"inputs": [ROW]}
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=64)) as http:
        async def loop(headers: dict[str, str]) -> None:
            while time.monotonic() < stop and not halt.is_set():
                try:
                    r = await http.post(f"{BASE}/digits/predict", json=body, headers=headers)
                    code = r.status_code
                except httpx.HTTPError:
                    code = 0
                if not headers:
                    counts["refused"] += code == 401
                else:
                    counts["ok" if code == 200 else "failed"] += 1
        await asyncio.gather(*[loop({}) for _ in range(keyless)], *[loop(KEY) for _ in range(keyed)])
    return counts


def batch_sizes() -> tuple[float, float]:
    """(batches, rows) of the digits replicas so far, from Ray's metrics endpoints (the service-discovery file)."""
    from atoll import cluster, prometheus

    targets = json.loads(prometheus.sd_file_of(cluster.current().session_dir).read_text())
    batches = rows = 0.0
    for group in targets:
        for target in group["targets"]:
            text = httpx.get(f"http://{target}/metrics", timeout=10).text
            for line in text.splitlines():
                if line.startswith("ray_atoll_batch_size_") and 'application="digits"' in line:
                    value = float(line.rsplit(" ", 1)[1])
                    if line.startswith("ray_atoll_batch_size_count"):
                        batches += value
                    elif line.startswith("ray_atoll_batch_size_sum"):
                        rows += value
    return batches, rows


def main() -> None:
    atoll("serve", "deploy", ARGS["live"], "--app", "digits", "--replicas", "1:2", *DIGITS)
    atoll("serve", "deploy", ARGS["writer"], "--app", "writer", "--replicas", "1:1",
          "--set", "num_cpus_per_replica=0.5")

    # The key, before any queue: Atoll's middleware answers a keyless request in the replica's HTTP server.
    r = httpx.post(f"{BASE}/digits/predict", json={"inputs": [ROW]}, timeout=30)
    out["keyless"] = [r.status_code, r.headers.get("x-atoll-refused-by")]
    r = httpx.post(f"{BASE}/digits/predict", json={"inputs": [ROW]}, headers=KEY, timeout=30)
    out["keyed"] = [r.status_code, r.headers.get("x-atoll-version")]
    out["card"] = httpx.get(f"{BASE}/digits/", headers=KEY, timeout=30).json().get("ingress")
    listening = subprocess.run(["ss", "-ltnH"], capture_output=True, text=True).stdout.splitlines()
    out["listeners"] = [line.split()[3] for line in listening if line.strip()]  # the local address:port
    routes = httpx.get(f"{BASE}/-/routes", timeout=30)
    out["routes"] = [routes.status_code, "digits" in routes.text]
    out["haproxy_files"] = haproxy_files()

    # The pages: the gallery (its list of apps behind the key), each model's playground.
    gallery = httpx.get(f"{BASE}/", timeout=30)
    apps = httpx.get(f"{BASE}/_gallery/apps", headers=KEY, timeout=30)
    out["pages"] = {"gallery": [gallery.status_code, gallery.headers.get("content-type", "").split(";")[0]],
                    "apps": sorted(a["app"] for a in apps.json()["apps"]) if apps.status_code == 200 else apps.text,
                    "playground": httpx.get(f"{BASE}/digits/ui", timeout=30).status_code,
                    # the redirect names the app's prefix: the replica sees its root_path through HAProxy too
                    "redirect": httpx.get(f"{BASE}/digits/ui/", timeout=30).headers.get("location"),
                    "chat": httpx.get(f"{BASE}/writer/ui/chat", timeout=30).status_code}

    # The standard protocols: Open Inference Protocol (KServe v2) and OpenAI's, streamed.
    v2 = httpx.post(f"{BASE}/digits/v2/models/digits/infer", headers=KEY, timeout=30, json={
        "inputs": [{"name": "inputs", "shape": [1, 64], "datatype": "FP32", "data": ROW}]})
    out["v2"] = [v2.status_code, [o["name"] for o in v2.json().get("outputs", [])] if v2.status_code == 200 else v2.text]
    model = httpx.get(f"{BASE}/writer/v1/models", headers=KEY, timeout=30).json()["data"][0]["id"]
    chunks, arrivals = [], []
    with httpx.stream("POST", f"{BASE}/writer/v1/chat/completions", headers=KEY, timeout=60, json={
            "model": model, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 12,
            "temperature": 0, "stream": True}) as stream:
        out["stream_status"] = stream.status_code
        for line in stream.iter_lines():
            if line.startswith("data: "):
                chunks.append(line[6:])
                arrivals.append(time.monotonic())
    out["stream"] = {"chunks": len(chunks), "done": chunks[-1:] == ["[DONE]"],
                     "spread_ms": round(1000 * (arrivals[-1] - arrivals[0]), 1) if arrivals else 0}

    # A keyless flood against the keyed app: keyed clients keep being answered.
    out["flood"] = asyncio.run(flood(4, keyless=32, keyed=2))

    # Batching and autoscaling: 16 keyed clients at once; Serve adds the second replica (the target is 1 request
    # in flight per replica, after 1 s), and the replicas' batches hold several requests.
    before = batch_sizes()
    halt = threading.Event()
    out["load"] = {}  # counted as the clients go: a failed wait shows whether the load was there
    load = threading.Thread(target=lambda: asyncio.run(flood(150, 0, 16, halt, out["load"])), daemon=True)
    load.start()
    # ~11 s here (Serve's metrics, the 1 s delay, a replica's start); CI once ran past 60 s
    out["scaled_up_s"] = round(wait_for(lambda: replicas("digits") >= 2, 120, "a second replica"), 1)
    time.sleep(2)  # both replicas under load
    halt.set()
    load.join()
    wait_for(lambda: batch_sizes()[0] > before[0], 30, "Ray's metrics to report the batches")
    after = batch_sizes()
    out["mean_batch"] = round((after[1] - before[1]) / max(after[0] - before[0], 1.0), 2)

    # Zero-downtime rollover to the next version, under a client loop (now on 2 fixed replicas).
    with LoopClient(f"{BASE}/digits", KEY) as client:
        client.wait_for(20, 30)
        atoll("serve", "deploy", ARGS["next"], "--app", "digits", "--replicas", "2:2", *DIGITS)
        client.wait_for(20, 60)
    versions = client.versions()
    out["rollover"] = {"answers": client.sent(), "failures": client.failures[:5], "failed": len(client.failures),
                       "first": versions[0], "last": versions[-1]}

    # A replica SIGKILLed under load: Serve starts another; HAProxy stops sending to the dead one.
    wait_for(lambda: len(replica_pids("digits")) == 2, 60, "2 replica processes")
    with LoopClient(f"{BASE}/digits", KEY) as client:
        client.wait_for(50, 30)
        victim = sorted(replica_pids("digits"))[0]
        os.kill(victim, signal.SIGKILL)
        out["replaced_s"] = round(wait_for(
            lambda: len(pids := replica_pids("digits")) == 2 and victim not in pids and replicas("digits") == 2,
            120, "a replacement replica"), 1)
        client.wait_for(50, 30)
    out["kill"] = {"answers": client.sent(), "failed": len(client.failures), "failures": client.failures[:5]}
    print("PROBE " + json.dumps(out))


if __name__ == "__main__":
    main()

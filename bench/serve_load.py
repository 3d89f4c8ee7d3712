"""Serving under load: Atoll's Serve endpoint vs a plain FastAPI + uvicorn app, same model, same requests.

    python bench/serve_load.py            # 3 alternating rounds of 10 s at 32 clients, + variants
    python bench/serve_load.py --quick    # 1 round of 5 s per side (< 3 min on 2 cores)

The model: the digits demo's MLP from jobs/configs/train.yaml (64 features px0..px63, 10 classes), trained
here for 3 epochs with plain torch on the demo Parquet (``atoll.data.prepare_demo``), written as a checkpoint
(model.safetensors + atoll.json with the Preprocessor and input schema) and registered as ``digits:1`` in a
temporary ``atoll.registry.Registry``. Both servers load it with ``atoll.serving.predictor.Predictor``.

Ours: ``atoll.serving.replica.app`` (the ``ModelServer`` deployment: request validation, ``@serve.batch``) deployed
with ``serve.run`` on an in-process local Ray (``ray.init(address="local", num_cpus=2)``), Serve's proxy on
127.0.0.1:8123, route ``/bench``; 1 replica of 1 CPU, max_batch_size 32, max_ongoing_requests 64,
batch_wait_timeout_s 0.005 (cluster.yaml's defaults; the replica waits only while other requests are in flight,
so a lone client's request never waits). Never ports 8000/8265/6379, never ``ray start``.

Baseline: this very file run as ``--baseline-server``: a uvicorn process on 127.0.0.1:8124 with a FastAPI app
whose ``POST /predict`` parses the body with the same ``atoll.serving.replica.parse_request`` and calls the same
``Predictor.predict`` per request (no batching), torch on 1 thread like the 1-CPU replica. Both servers keep
their default access logs, to files: Serve's proxy and replica write one line per request each under the Ray
session's logs/serve/; uvicorn, at its default log level (info), one line per request to the bench's uvicorn.log.

Load: asyncio + httpx in this process, N concurrent workers (N = 32), each with its own keep-alive connection,
each sending ``{"inputs": [[64 floats]]}`` (one held-out digit) back to back; a warm-up first, then a fixed
duration; requests/s = completed 200s / time to the last completion. Sides alternate (baseline, ours, ...);
the uvicorn process stays up (idle) while Serve is measured and vice versa.

Added latency (1 client): p50 of sequential HTTP requests to the endpoint minus p50 of
``Predictor.predict`` on the same row in-process. The plain app's figure is reported next to it (HTTP +
JSON alone).

The text case (skip with --no-text): the text demo's small BERT (jobs/configs/text.yaml: 2 layers, hidden 64,
64 tokens; its WordPiece tokenizer fitted on the SMS training texts; weights as initialised, since the compute
per request is what matters here) deployed in place of the MLP with the same settings, against its own plain
FastAPI process; each request one held-out SMS text. Alternating rounds at 32 clients, then 1 client; its own
JSON line (``case: text``).

Variants: 2 replicas, and Serve's access log off, at 32 clients (full
run only); ``RAY_SERVE_THROUGHPUT_OPTIMIZED=1`` (a fresh Ray in a child process, with the direct-ingress
draining period cut to 1 s so that it shuts down quickly; skip with --no-throughput-optimized), compared with
the plain app measured again once no Ray runs at all. In that mode each replica also opens its own HTTP port
(direct ingress, on 127.0.0.1): the child measures requests sent straight there too, for the MLP and the text
model, which is Serve without its Python proxy (what Ray's HAProxy ingress routes to). The text model's direct
figure is compared with its plain app as measured earlier, while Ray was up. Ray's HAProxy ingress
(``RAY_SERVE_ENABLE_HA_PROXY=1`` with Atoll's key middleware, as cluster.yaml's ``ray up`` commands start it; skip
with --no-haproxy): the same child inside a network namespace the bench makes (``unshare -n``, its own loopback),
since HAProxy binds its stats and metrics ports on every interface; requests through HAProxy's frontend, for the
MLP and the text model (cases ``mlp, haproxy`` and ``text, haproxy``, against the same run's plain apps).

Where Serve's CPU goes (skip with --no-profile): one more round of Atoll Serve at 32 clients while py-spy
samples Serve's proxy and the replica (``bench/_profile.py``: each sample counted in the part of its
innermost frame that names one: the model, Atoll's parsing, Ray's metrics/tracing/logging, Ray's actor
calls between proxy and replica, FastAPI, uvicorn's HTTP parsing, Serve's own bookkeeping, the rest).

The load generator shares the 2 cores with the servers: each measurement reports the CPU (cores) used by the
load generator, Serve's proxy, replica and controller, and uvicorn (server CPU ms per request follows), the
machine's busy fraction, and whether another Ray cluster's raylet was up (``phases_with_foreign_ray``).
"""

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _profile
import numpy as np
from _common import median as _median
from _common import print_table, result_line

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "jobs" / "configs" / "train.yaml"
SERVE_PORT, BASELINE_PORT = 8123, 8124
HOST = "127.0.0.1"
APP_NAME, ROUTE = "bench", "/bench"
MODEL_NAME = "digits"
CLIENTS = 32
TRAIN_EPOCHS = 3
SETTINGS = {"min_replicas": 1, "max_replicas": 1, "max_batch_size": 32, "max_ongoing_requests": 64,
            "batch_wait_timeout_s": 0.005, "num_cpus_per_replica": 1.0, "num_gpus_per_replica": 0.0}


# ------------------------------------------------------------------------------------------------
# The model: a digits-shaped version in a temporary registry


def make_model(storage: str) -> dict[str, Any]:
    """Train the demo MLP briefly with plain torch, register it; return the ref and one held-out row."""
    import pandas as pd
    import torch
    import torch.nn.functional as F
    from atoll import config, data, models, registry, train
    from atoll.specs import TrainSpec

    spec = config.load_file(TrainSpec, CONFIG, [f"epochs={TRAIN_EPOCHS}", "num_workers=1"])
    paths = data.prepare_demo(storage)
    frame = pd.read_parquet(paths["train"])
    features = [f"px{i}" for i in range(64)]
    x = frame[features].to_numpy(np.float64)
    std = x.std(0)
    std[std < 1e-8] = 1.0
    classes = sorted(int(c) for c in frame["label"].unique())
    pre = data.Preprocessor(features=features, label="label", mean=x.mean(0).tolist(), std=std.tolist(),
                            classes=classes)
    torch.manual_seed(spec.seed)
    model = models.build(spec.model.type, pre.input_dim, pre.num_classes, spec.model.params)
    xt = torch.from_numpy(pre.transform_features(frame[features].to_numpy()))
    yt = torch.from_numpy(pre.encode_labels(frame["label"].to_numpy()))
    opt = torch.optim.AdamW(model.parameters(), lr=spec.optimizer.lr, weight_decay=spec.optimizer.weight_decay)
    gen = torch.Generator().manual_seed(spec.seed)
    model.train()
    for _ in range(spec.epochs):
        perm = torch.randperm(len(yt), generator=gen)
        for start in range(0, len(perm), spec.batch_size):
            idx = perm[start:start + spec.batch_size]
            loss = F.cross_entropy(model(xt[idx]), yt[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    model.eval()
    holdout = pd.read_parquet(paths["holdout"])
    with torch.inference_mode():
        xh = torch.from_numpy(pre.transform_features(holdout[features].to_numpy()))
        acc = float((model(xh).argmax(1).numpy() == pre.encode_labels(holdout["label"].to_numpy())).mean())
    with tempfile.TemporaryDirectory() as ckpt:
        from safetensors.torch import save_file

        save_file({k: v.detach().cpu() for k, v in model.state_dict().items()}, Path(ckpt) / train.MODEL_FILE)
        meta = {"epoch": spec.epochs - 1, "history": [], "spec": spec.model_dump(mode="json"),
                "preprocess": pre.to_dict(), "input_schema": train.input_schema(spec, pre)}
        (Path(ckpt) / train.META_FILE).write_text(json.dumps(meta))
        version = registry.Registry(storage).register(
            MODEL_NAME, ckpt, metrics={"holdout_accuracy": acc}, spec=spec.model_dump(mode="json"),
            lineage={"bench": "serve_load", "trained": f"{spec.epochs} epochs, plain torch"})
    row = [float(v) for v in holdout[features].iloc[0].to_numpy()]
    return {"ref": version.ref, "row": row, "label": int(holdout["label"].iloc[0]), "holdout_accuracy": acc}


TEXT_CONFIG = REPO / "jobs" / "configs" / "text.yaml"
TEXT_MODEL_NAME = "sms-spam"


def make_text_model(storage: str) -> dict[str, Any]:
    """The text demo's small BERT (jobs/configs/text.yaml) with its WordPiece tokenizer fitted on the SMS
    training texts, weights as initialised (seed 0): the compute per request is a trained model's, which is
    what this case measures; registered as ``sms-spam:1``. Returns the ref and one held-out text."""
    import pandas as pd
    import torch
    from atoll import config, data, models, registry, tasks, train
    from atoll.specs import TrainSpec
    from atoll.tasks import text
    from tokenizers import Tokenizer

    spec = config.load_file(TrainSpec, TEXT_CONFIG, ["num_workers=1"])
    paths = data.prepare_demo(storage, "sms_spam")
    frame, params = pd.read_parquet(paths["train"]), spec.model.params
    tokenizer = text.train_tokenizer(frame["text"].tolist(), int(params["vocab_size"]))
    state = text.TextState(features=["text"], label="label", classes=sorted(frame["label"].unique().tolist()),
                           tokenizer=tokenizer, max_length=int(params["max_length"]),
                           vocab_size=Tokenizer.from_str(tokenizer).get_vocab_size())
    task = tasks.get(spec.task)
    torch.manual_seed(spec.seed)
    model = models.build(spec.model.type, state.input_dim, task.out_dim(state), task.model_params(state, params))
    with tempfile.TemporaryDirectory() as ckpt:
        from safetensors.torch import save_file

        save_file({k: v.detach().contiguous().clone() for k, v in model.state_dict().items()},
                  Path(ckpt) / train.MODEL_FILE)
        meta = {"epoch": 0, "history": [], "spec": spec.model_dump(mode="json"), "preprocess": state.to_dict(),
                "input_schema": train.input_schema(spec, state)}
        (Path(ckpt) / train.META_FILE).write_text(json.dumps(meta))
        version = registry.Registry(storage).register(
            TEXT_MODEL_NAME, ckpt, metrics={}, spec=spec.model_dump(mode="json"),
            lineage={"bench": "serve_load", "trained": "no: initialised weights (seed 0)"})
    holdout = pd.read_parquet(paths["holdout"])
    return {"ref": version.ref, "input": str(holdout["text"].iloc[0])}


# ------------------------------------------------------------------------------------------------
# The baseline server (this file, run as a subprocess)


def baseline_app(storage: str, ref: str):
    # (no `from __future__ import annotations` in this file: FastAPI must see `Request` itself, not a string)
    import torch
    from atoll.serving.predictor import Predictor
    from atoll.serving.replica import RequestError, parse_request
    from atoll.specs import ServeSettings
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

    torch.set_num_threads(1)  # as the 1-CPU Serve replica (Ray sets OMP_NUM_THREADS=1 there)
    predictor = Predictor(storage, ref, device="cpu")
    limits = ServeSettings()
    app = FastAPI(title="plain FastAPI baseline")

    @app.post("/predict")
    async def predict(request: Request):
        try:
            rows = parse_request(await request.body(), predictor.schema, max_rows=limits.max_rows,
                              max_body_bytes=limits.max_body_bytes)
        except RequestError as exc:
            return JSONResponse({"error": exc.message}, status_code=exc.status)
        predictions, probabilities = predictor.predict(rows)
        v = predictor.version
        return {"predictions": predictions, "probabilities": probabilities, "model": v.name, "version": v.version}

    @app.get("/healthz")
    def healthz():
        return {"status": "ok"}

    return app


def serve_baseline(storage: str, ref: str, port: int) -> int:
    import uvicorn

    # uvicorn's defaults (log level info, access log on), as Serve keeps its own access log on.
    uvicorn.run(baseline_app(storage, ref), host=HOST, port=port, log_level="info", access_log=True)
    return 0


def start_baseline(storage: str, ref: str, work: Path, port: int = BASELINE_PORT) -> subprocess.Popen:
    log = open(work / f"uvicorn-{port}.log", "w")  # noqa: SIM115 - closed with the process
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.Popen([sys.executable, __file__, "--baseline-server", "--storage", storage, "--model", ref,
                             "--port", str(port)], stdout=log, stderr=subprocess.STDOUT, env=env,
                            cwd=REPO, start_new_session=True)
    proc.log = log  # type: ignore[attr-defined]
    return proc


def stop_process(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def wait_http(url: str, timeout: float, proc: subprocess.Popen | None = None) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the server exited (code {proc.returncode}) before answering {url}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        time.sleep(0.3)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f} s")


# ------------------------------------------------------------------------------------------------
# Load generation


def _cpu_busy() -> tuple[float, float]:
    import psutil

    t = psutil.cpu_times()
    return t.idle + getattr(t, "iowait", 0.0), sum(t)


async def _closed_loop(url: str, body: bytes, clients: int, warmup_s: float, duration_s: float) -> dict[str, Any]:
    import httpx

    # One AsyncClient (one keep-alive connection) per worker: a single client's pool of 32 connections costs
    # httpx ~3x more CPU per request on this machine, and the load generator shares the cores with the server.
    headers = {"content-type": "application/json"}
    pool = [httpx.AsyncClient(limits=httpx.Limits(max_connections=1, max_keepalive_connections=1), timeout=30,
                              headers=headers) for _ in range(clients)]
    try:

        async def worker(client, deadline: float, lat: list[float], errors: list[str]) -> None:
            while time.perf_counter() < deadline:
                t = time.perf_counter()
                try:
                    resp = await client.post(url, content=body)
                    status = resp.status_code
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                done = time.perf_counter()
                if status == 200:
                    lat.append(done - t)
                else:
                    errors.append(str(status))

        warm_lat: list[float] = []
        warm_err: list[str] = []
        end = time.perf_counter() + warmup_s
        await asyncio.gather(*(worker(c, end, warm_lat, warm_err) for c in pool))

        lat: list[float] = []
        errors: list[str] = []
        idle0, total0 = _cpu_busy()
        cpu0 = time.process_time()
        start = time.perf_counter()
        await asyncio.gather(*(worker(c, start + duration_s, lat, errors) for c in pool))
        elapsed = time.perf_counter() - start
        cpu = time.process_time() - cpu0
        idle1, total1 = _cpu_busy()
    finally:
        for c in pool:
            await c.aclose()
    ms = np.asarray(lat) * 1e3
    return {"clients": clients, "requests": len(lat), "errors": len(errors),
            "error_kinds": sorted(set(errors))[:5], "seconds": elapsed,
            "rps": len(lat) / elapsed if elapsed else None,
            "p50_ms": float(np.percentile(ms, 50)) if len(ms) else None,
            "p90_ms": float(np.percentile(ms, 90)) if len(ms) else None,
            "p99_ms": float(np.percentile(ms, 99)) if len(ms) else None,
            "loadgen_cpu_cores": cpu / elapsed if elapsed else None,
            "machine_busy_fraction": 1 - (idle1 - idle0) / (total1 - total0) if total1 > total0 else None,
            "warmup_requests": len(warm_lat), "warmup_errors": len(warm_err)}


def closed_loop(url: str, body: bytes, clients: int, warmup_s: float, duration_s: float) -> dict[str, Any]:
    return asyncio.run(_closed_loop(url, body, clients, warmup_s, duration_s))


def sequential(url: str, body: bytes, n: int, warmup: int) -> dict[str, Any]:
    """One client, one request at a time, on one keep-alive connection."""
    import httpx

    lat = []
    with httpx.Client(timeout=30, headers={"content-type": "application/json"}) as client:
        for i in range(warmup + n):
            if i == warmup:
                idle0, total0 = _cpu_busy()
            t = time.perf_counter()
            resp = client.post(url, content=body)
            dt = time.perf_counter() - t
            if resp.status_code != 200:
                raise RuntimeError(f"{url} answered {resp.status_code}: {resp.text[:300]}")
            if i >= warmup:
                lat.append(dt)
    idle1, total1 = _cpu_busy()
    ms = np.asarray(lat) * 1e3
    return {"requests": n, "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "mean_ms": float(ms.mean()),
            "machine_busy_fraction": 1 - (idle1 - idle0) / (total1 - total0) if total1 > total0 else None}


def idle_busy(seconds: float = 3.0) -> float:
    """Busy fraction of the machine's CPUs while this bench sends nothing (idle servers, other processes)."""
    idle0, total0 = _cpu_busy()
    time.sleep(seconds)
    idle1, total1 = _cpu_busy()
    return 1 - (idle1 - idle0) / (total1 - total0) if total1 > total0 else 0.0


_CPU_GROUPS = (("serve_proxy", "ProxyActor"), ("serve_replica", "ServeReplica"),
               ("serve_controller", "ServeController"), ("raylet_gcs", "/raylet/raylet"),
               ("raylet_gcs", "gcs_server"), ("baseline_uvicorn", "--baseline-server"),
               ("other_ray", "ray::"), ("other_ray", "site-packages/ray/"))


def process_cpu() -> dict[str, float]:
    """CPU seconds so far of the processes that matter here, by role (this process: load generator)."""
    import psutil

    me = os.getpid()
    out: dict[str, float] = {}
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            cmd = " ".join(proc.info["cmdline"] or [])
            t = proc.cpu_times()
        except (psutil.Error, TypeError):
            continue
        role = "load_generator" if proc.info["pid"] == me else next(
            (name for name, pattern in _CPU_GROUPS if pattern in cmd), None)
        if role:
            out[role] = out.get(role, 0.0) + t.user + t.system
    return out


def phase(watcher, fn, *args) -> dict[str, Any]:
    """Run one measurement; note whether another Ray cluster's raylet was up at its start or end, and the
    CPU (in cores, warm-up included) each role used meanwhile."""
    before = bool(watcher.foreign_raylets()) if not watcher.paused else None
    cpu0, t0 = process_cpu(), time.perf_counter()
    out = fn(*args)
    cpu1, wall = process_cpu(), time.perf_counter() - t0
    after = bool(watcher.foreign_raylets()) if not watcher.paused else None
    out["foreign_ray"] = bool(before or after)
    out["cpu_cores_by_role"] = {k: round((v - cpu0.get(k, 0.0)) / wall, 3) for k, v in sorted(cpu1.items())
                                if v - cpu0.get(k, 0.0) > 0.01 * wall}
    return out


def profile_serve(url: str, body: bytes, warmup_s: float, duration_s: float) -> dict[str, dict[str, float]]:
    """Shares of Serve's proxy and replica CPU by part (``_profile.SERVE_PARTS``) under the 32-client load."""
    import threading

    import psutil

    sampled = [(role, pattern) for role, pattern in _CPU_GROUPS if role in ("serve_proxy", "serve_replica")]
    pids = {}
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        pids.update({role: proc.info["pid"] for role, pattern in sampled if pattern in cmd})
    stacks: dict[str, Any] = {}

    def record() -> None:
        time.sleep(warmup_s)
        stacks.update(_profile.sample(pids, max(1.0, duration_s - 1)))

    sampler = threading.Thread(target=record)
    sampler.start()
    closed_loop(url, body, CLIENTS, warmup_s, duration_s)
    sampler.join()
    return {role: _profile.breakdown(found) for role, found in stacks.items()}


def in_process(predictor, rows: Any, n: int) -> dict[str, Any]:
    """p50/p99 of ``predictor.predict(rows)`` (one request's parsed inputs) in this process."""
    for _ in range(50):
        predictor.predict(rows)
    lat = []
    for _ in range(n):
        t = time.perf_counter()
        predictor.predict(rows)
        lat.append(time.perf_counter() - t)
    ms = np.asarray(lat) * 1e3
    return {"calls": n, "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))}


def check_answer(url: str, body: bytes, expected: list[Any]) -> None:
    import httpx

    resp = httpx.post(url, content=body, headers={"content-type": "application/json"}, timeout=30)
    if resp.status_code != 200 or resp.json().get("predictions") != expected:
        raise RuntimeError(f"{url} answered {resp.status_code} {resp.text[:300]}; expected predictions {expected}")


# ------------------------------------------------------------------------------------------------
# Atoll's side: Ray + Serve in this process


def start_ray() -> None:
    import ray
    from atoll import cluster
    from ray import serve

    os.environ.update(cluster.serve_env())  # Serve as `atoll up` starts it: the key middleware, Serve's tuning
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    serve.start(http_options={"host": HOST, "port": SERVE_PORT})


def deploy(storage: str, ref: str, settings: dict[str, Any], timeout: float = 180,
           logging_config: dict[str, Any] | None = None) -> float:
    """serve.run Atoll's app builder; return seconds until it answers /healthz."""
    import atoll.serving.replica
    from ray import serve

    t = time.perf_counter()
    serve.run(atoll.serving.replica.app({"model": ref, "storage": storage, "requested": ref, "settings": settings}),
              name=APP_NAME, route_prefix=ROUTE, blocking=False, logging_config=logging_config)
    wait_http(f"http://{HOST}:{SERVE_PORT}{ROUTE}/healthz", timeout)
    _wait_replicas(settings["min_replicas"], timeout)
    return time.perf_counter() - t


def _wait_replicas(n: int, timeout: float) -> None:
    from ray import serve

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = serve.status().applications.get(APP_NAME)
        if status is not None:
            deps = list(status.deployments.values())
            running = sum(count for d in deps for state, count in d.replica_states.items()
                          if getattr(state, "value", state) == "RUNNING")
            if getattr(status.status, "value", status.status) == "RUNNING" and running >= n:
                return
        time.sleep(0.5)
    raise RuntimeError(f"app {APP_NAME!r} has not {n} RUNNING replicas after {timeout:.0f} s")


def stop_ray() -> None:
    import ray
    from ray import serve

    if ray.is_initialized():
        with contextlib.suppress(Exception):
            serve.shutdown()
        ray.shutdown()


def throughput_optimized_child(args) -> int:
    """Run in a fresh process with RAY_SERVE_THROUGHPUT_OPTIMIZED=1: deploy, measure, print one JSON line."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _common import ForeignRay
    from _common import own_session as _own_session

    body = Path(args.body).read_bytes()
    expected = json.loads(args.expected)
    out: dict[str, Any] = {}
    watcher = ForeignRay().__enter__()
    watcher.paused = True
    try:
        t = time.perf_counter()
        start_ray()
        out["ray_and_serve_start_s"] = time.perf_counter() - t
        watcher.own_session, watcher.paused = _own_session(), False
        out["deploy_s"] = deploy(args.storage, args.model, SETTINGS)
        from ray.serve._private import constants

        out["flags"] = {k: getattr(constants, k, None) for k in (
            "RAY_SERVE_THROUGHPUT_OPTIMIZED", "RAY_SERVE_ENABLE_DIRECT_INGRESS", "RAY_SERVE_USE_GRPC_BY_DEFAULT",
            "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD", "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP")}
        url = f"http://{HOST}:{SERVE_PORT}{ROUTE}/predict"
        check_answer(url, body, expected)
        out["idle_busy_fraction"] = idle_busy()
        out["load"] = phase(watcher, closed_loop, url, body, CLIENTS, args.warmup, args.duration)
        out["single"] = phase(watcher, sequential, url, body, args.single, 30)
        out["direct"] = measure_direct(watcher, body, expected, args)
        if args.text_model:  # the small BERT in place of the MLP: through the proxy, then straight to the replica
            text_body = Path(args.text_body).read_bytes()
            text_expected = json.loads(args.text_expected)
            deploy(args.storage, args.text_model, SETTINGS)
            check_answer(url, text_body, text_expected)
            out["text"] = {"load": phase(watcher, closed_loop, url, text_body, CLIENTS, args.warmup, args.duration),
                           "single": phase(watcher, sequential, url, text_body, args.single, 30),
                           "direct": measure_direct(watcher, text_body, text_expected, args)}
    finally:
        t = time.perf_counter()
        stop_ray()
        out["shutdown_s"] = time.perf_counter() - t
        watcher.__exit__(None, None, None)
    out["contention"] = watcher.note()
    print("RESULT " + json.dumps(out), flush=True)
    return 0


def direct_ingress() -> dict[str, Any] | None:
    """The bench app's replica under direct ingress: the HTTP port it opens itself (in Serve's
    RAY_SERVE_DIRECT_INGRESS_{MIN,MAX}_HTTP_PORT range) and the address it binds, or None."""
    import psutil
    from ray.serve._private import constants

    low, high = constants.RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT, constants.RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT
    for proc in psutil.process_iter(["cmdline"]):
        if f"ServeReplica:{APP_NAME}:" not in " ".join(proc.info["cmdline"] or []):
            continue
        with contextlib.suppress(psutil.Error):
            for conn in proc.net_connections(kind="tcp"):
                if conn.status == psutil.CONN_LISTEN and low <= conn.laddr.port <= high:
                    return {"port": conn.laddr.port, "bind": conn.laddr.ip}
    return None


def measure_direct(watcher, body: bytes, expected: list[Any], args) -> dict[str, Any]:
    """Requests straight to the replica's own port (direct ingress: Serve's Python proxy skipped), as Ray's
    HAProxy ingress would send them; 32 clients, then 1 client."""
    found = direct_ingress()
    if found is None:
        return {"error": "no replica listens in Serve's direct-ingress port range"}
    url = f"http://{HOST}:{found['port']}{ROUTE}/predict"
    check_answer(url, body, expected)
    return {**found, "load": phase(watcher, closed_loop, url, body, CLIENTS, args.warmup, args.duration),
            "single": phase(watcher, sequential, url, body, args.single, 30)}


def can_unshare() -> bool:
    """Whether this machine lets the bench make a network namespace (`unshare -n`, with `ip` to raise its lo)."""
    return bool(shutil.which("unshare") and shutil.which("ip")) and \
        subprocess.run(["unshare", "-n", "true"], capture_output=True, check=False).returncode == 0


def run_throughput_optimized(storage: str, ref: str, body: bytes, expected: list[Any], work: Path,
                             warmup: float, duration: float, single: int,
                             text: dict[str, Any] | None = None, haproxy: bool = False) -> dict[str, Any]:
    """The child (a fresh Ray) under RAY_SERVE_THROUGHPUT_OPTIMIZED=1, or with ``haproxy`` under Ray's HAProxy
    ingress (RAY_SERVE_ENABLE_HA_PROXY=1, Atoll's key middleware as `atoll up` names it) inside a network namespace
    of its own: HAProxy binds its stats and metrics ports on every interface, reachable from nothing outside it."""
    (work / "body.json").write_bytes(body)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    if haproxy:  # as `atoll up` starts it with `ingress: haproxy` (start_ray adds the key middleware and tuning)
        from atoll import ingress

        mark = os.urandom(8).hex()  # HAProxy's files in a private folder of their own, as `atoll up` keeps them
        env.update({ingress.ENV_VAR: "1", ingress.BINARY_VAR: ingress.wrapper_path() or "",
                    **ingress.private_files(mark)})
    else:
        env["RAY_SERVE_THROUGHPUT_OPTIMIZED"] = "1"
    # Direct ingress keeps a draining replica for >= 30 s at shutdown: shorten it for the bench only.
    env.setdefault("RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", "1")
    cmd = [sys.executable, __file__, "--throughput-optimized-child", "--storage", storage, "--model", ref,
           "--body", str(work / "body.json"), "--expected", json.dumps(expected), "--warmup", str(warmup),
           "--duration", str(duration), "--single", str(single)]
    if text:
        (work / "text_body.json").write_bytes(text["body"])
        cmd += ["--text-model", text["ref"], "--text-body", str(work / "text_body.json"),
                "--text-expected", json.dumps(text["expected"])]
    if haproxy:
        cmd = ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *cmd]
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=420,
                              check=False)
    finally:
        if haproxy:
            ingress.remove_files(mark)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        (work / "to_child.log").write_text(proc.stdout + proc.stderr)
        tail = (proc.stdout + proc.stderr)[-3000:]
        return {"error": f"child exited {proc.returncode}", "log_tail": tail}
    return json.loads(lines[-1][len("RESULT "):])


# ------------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1 round of 5 s per side, no 2-replica "
                        "variant (< 3 min)")
    parser.add_argument("--rounds", type=int, help="alternating rounds per side (default 3, quick 1)")
    parser.add_argument("--duration", type=float, help="seconds measured per round (default 10, quick 5)")
    parser.add_argument("--no-throughput-optimized", action="store_true",
                        help="skip the RAY_SERVE_THROUGHPUT_OPTIMIZED=1 variant")
    parser.add_argument("--no-text", action="store_true", help="skip the text model's case (the small BERT)")
    parser.add_argument("--no-haproxy", action="store_true", help="skip Ray's HAProxy ingress (run inside a "
                        "network namespace the bench makes with `unshare -n`)")
    parser.add_argument("--no-profile", action="store_true",
                        help="skip the round profiled with py-spy (where Serve's CPU goes)")
    # internal modes
    parser.add_argument("--baseline-server", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--throughput-optimized-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--storage", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=BASELINE_PORT, help=argparse.SUPPRESS)
    parser.add_argument("--body", help=argparse.SUPPRESS)
    parser.add_argument("--expected", help=argparse.SUPPRESS)
    parser.add_argument("--text-model", help=argparse.SUPPRESS)
    parser.add_argument("--text-body", help=argparse.SUPPRESS)
    parser.add_argument("--text-expected", help=argparse.SUPPRESS)
    parser.add_argument("--warmup", type=float, default=2.0, help=argparse.SUPPRESS)
    parser.add_argument("--single", type=int, default=300, help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.pop("RAY_ADDRESS", None)  # never attach to someone else's cluster
    if args.baseline_server:
        return serve_baseline(args.storage, args.model, args.port)
    if args.throughput_optimized_child:
        args.duration = args.duration or 5.0
        return throughput_optimized_child(args)

    rounds = args.rounds or (1 if args.quick else 3)
    duration = args.duration or (5.0 if args.quick else 10.0)
    warmup = 2.0
    single_n = 200 if args.quick else 500
    variants = not args.quick

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import torch
    from _common import ForeignRay
    from _common import own_session as _own_session

    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="atoll_bench_serve_"))
    storage = str(work / "storage")
    baseline_proc = None
    watcher = ForeignRay().__enter__()
    res: dict[str, Any] = {"ours": [], "baseline": []}
    try:
        t = time.perf_counter()
        model = make_model(storage)
        res["model_s"] = time.perf_counter() - t
        ref = model["ref"]
        body = json.dumps({"inputs": [model["row"]]}).encode()
        from atoll.serving.predictor import Predictor

        predictor = Predictor(storage, ref, device="cpu")
        expected = predictor.predict(np.asarray([model["row"]], dtype=np.float32))[0]
        print(f"model {ref}: digits MLP {TRAIN_EPOCHS} epochs plain torch, holdout accuracy "
              f"{model['holdout_accuracy']:.3f}; body {len(body)} bytes", flush=True)

        baseline_proc = start_baseline(storage, ref, work)
        base_url = f"http://{HOST}:{BASELINE_PORT}/predict"
        wait_http(f"http://{HOST}:{BASELINE_PORT}/healthz", 60, baseline_proc)
        check_answer(base_url, body, expected)

        res["idle_busy_fraction_no_ray"] = idle_busy()
        print("starting Ray + Serve ...", flush=True)
        watcher.paused = True
        t = time.perf_counter()
        start_ray()
        res["ray_and_serve_start_s"] = time.perf_counter() - t
        watcher.own_session, watcher.paused = _own_session(), False
        res["deploy_s"] = deploy(storage, ref, SETTINGS)
        ours_url = f"http://{HOST}:{SERVE_PORT}{ROUTE}/predict"
        check_answer(ours_url, body, expected)
        res["idle_busy_fraction_ray_up"] = idle_busy()

        for r in range(rounds):
            print(f"round {r + 1}/{rounds}: plain FastAPI, {CLIENTS} clients, {duration:.0f} s ...", flush=True)
            res["baseline"].append(phase(watcher, closed_loop, base_url, body, CLIENTS, warmup, duration))
            print(f"round {r + 1}/{rounds}: Atoll Serve, {CLIENTS} clients, {duration:.0f} s ...", flush=True)
            res["ours"].append(phase(watcher, closed_loop, ours_url, body, CLIENTS, warmup, duration))

        if not args.no_profile and _profile.py_spy():
            print(f"where Serve's CPU goes: Atoll Serve, {CLIENTS} clients, sampled by py-spy ...", flush=True)
            res["profile"] = profile_serve(ours_url, body, warmup, duration)

        print(f"1 client: in-process predict, plain FastAPI, Atoll Serve ({single_n} requests each) ...",
              flush=True)
        res["in_process"] = in_process(predictor, np.asarray([model["row"]], dtype=np.float32), 2000)
        res["single_baseline"] = phase(watcher, sequential, base_url, body, single_n, 30)
        res["single_ours"] = phase(watcher, sequential, ours_url, body, single_n, 30)

        if variants:
            print(f"variant: 2 replicas, {CLIENTS} clients ...", flush=True)
            res["deploy_2_s"] = deploy(storage, ref, {**SETTINGS, "min_replicas": 2, "max_replicas": 2})
            res["ours_2_replicas"] = phase(watcher, closed_loop, ours_url, body, CLIENTS, warmup, duration)
            print(f"variant: 1 replica, Serve access log off, {CLIENTS} clients ...", flush=True)
            res["deploy_nolog_s"] = deploy(storage, ref, SETTINGS, logging_config={"enable_access_log": False})
            res["ours_no_access_log"] = phase(watcher, closed_loop, ours_url, body, CLIENTS, warmup, duration)
        if not args.no_text:
            print(f"text model: Atoll Serve vs plain FastAPI, {CLIENTS} clients and 1 client ...", flush=True)
            res["text"] = measure_text(storage, work, watcher, rounds, warmup, duration, single_n)
        watcher.paused = True
        stop_ray()

        if not args.no_throughput_optimized:
            print("variant: RAY_SERVE_THROUGHPUT_OPTIMIZED=1 (fresh Ray in a child process) ...", flush=True)
            res["throughput_optimized"] = run_throughput_optimized(storage, ref, body, expected, work, warmup,
                                                                   duration, single_n,
                                                                   (res.get("text") or {}).get("request"))
            watcher.own_session, watcher.paused = None, False  # no Ray of ours now: every raylet is foreign
            # the plain app once more, now that no Ray runs at all (what the fresh Ray is compared with)
            res["baseline_no_ray"] = phase(watcher, closed_loop, base_url, body, CLIENTS, warmup, duration)
        if not args.no_haproxy and can_unshare():
            print("variant: Ray's HAProxy ingress (fresh Ray in a child process, in its own network namespace) ...",
                  flush=True)
            res["haproxy"] = run_throughput_optimized(storage, ref, body, expected, work, warmup, duration, single_n,
                                                      (res.get("text") or {}).get("request"), haproxy=True)
    finally:
        stop_ray()
        stop_process(baseline_proc)
        watcher.__exit__(None, None, None)
        shutil.rmtree(work, ignore_errors=True)
    report(res, model, rounds, duration, watcher.note(), args.quick)
    print_haproxy_lines(res, args.quick)
    if res.get("text"):
        report_text(res["text"], rounds, watcher.note(), args.quick,
                    (res.get("throughput_optimized") or {}).get("text"))
    return 0


def measure_text(storage: str, work: Path, watcher, rounds: int, warmup: float, duration: float,
                 single_n: int) -> dict[str, Any]:
    """The text case on the Ray and Serve already up: the small BERT deployed in place of the MLP (same
    settings), its own plain FastAPI process, alternating rounds at 32 clients, then 1 client."""
    from atoll.serving.predictor import Predictor
    from atoll.serving.replica import parse_request
    from atoll.specs import ServeSettings

    model = make_text_model(storage)
    body = json.dumps({"inputs": [model["input"]]}).encode()
    predictor = Predictor(storage, model["ref"], device="cpu")
    limits = ServeSettings()
    rows = parse_request(body, predictor.schema, max_rows=limits.max_rows, max_body_bytes=limits.max_body_bytes)
    expected = predictor.predict(rows)[0]
    port = BASELINE_PORT + 1
    proc = start_baseline(storage, model["ref"], work, port)
    out: dict[str, Any] = {"model": model, "ours": [], "baseline": [],
                           "request": {"ref": model["ref"], "body": body, "expected": expected}}
    try:
        base_url = f"http://{HOST}:{port}/predict"
        wait_http(f"http://{HOST}:{port}/healthz", 60, proc)
        check_answer(base_url, body, expected)
        out["deploy_s"] = deploy(storage, model["ref"], SETTINGS)
        ours_url = f"http://{HOST}:{SERVE_PORT}{ROUTE}/predict"
        check_answer(ours_url, body, expected)
        for _ in range(rounds):
            out["baseline"].append(phase(watcher, closed_loop, base_url, body, CLIENTS, warmup, duration))
            out["ours"].append(phase(watcher, closed_loop, ours_url, body, CLIENTS, warmup, duration))
        out["in_process"] = in_process(predictor, rows, 300)
        out["single_baseline"] = phase(watcher, sequential, base_url, body, single_n, 30)
        out["single_ours"] = phase(watcher, sequential, ours_url, body, single_n, 30)
    finally:
        stop_process(proc)
    return out


def _direct_rows(direct: dict[str, Any] | None, inproc: float) -> list[tuple[str, str]]:
    """Table rows (figure, Atoll Serve cell) for direct ingress: straight to the replica, the proxy skipped."""
    if not direct or "load" not in direct:
        return [("direct ingress (proxy skipped)", (direct or {}).get("error", "not measured"))]
    load, single = direct["load"], direct["single"]
    return [(f"direct ingress, straight to the replica ({direct['bind']}:{direct['port']}): requests/s, p50 / p99 ms",
             f"{load['rps']:,.0f}, {load['p50_ms']:.1f} / {load['p99_ms']:.1f}"),
            ("direct ingress: 1-client p50 ms (added over in-process)",
             f"{single['p50_ms']:.3f} ({single['p50_ms'] - inproc:+.2f})")]


def _direct_json(direct: dict[str, Any] | None, inproc: float, base: float | None) -> dict[str, Any] | None:
    if not direct or "load" not in direct:
        return direct
    return {"bind": direct["bind"], "port": direct["port"], "rps": direct["load"]["rps"],
            "p50_ms": direct["load"]["p50_ms"], "p99_ms": direct["load"]["p99_ms"], "errors": direct["load"]["errors"],
            "ratio": direct["load"]["rps"] / base if base else None,
            "single_client_p50_ms": direct["single"]["p50_ms"],
            "added_latency_ms": direct["single"]["p50_ms"] - inproc,
            "cpu_cores_by_role": direct["load"].get("cpu_cores_by_role"),
            "env": "RAY_SERVE_THROUGHPUT_OPTIMIZED=1 (direct ingress), requests to the replica's own port"}


def report_text(res: dict[str, Any], rounds: int, contention: str, quick: bool,
                to: dict[str, Any] | None = None) -> None:
    """The text case's table and JSON line (``case: text``); ``to``: the THROUGHPUT_OPTIMIZED child's text figures."""
    med = {side: {k: _median(r[k] for r in res[side]) for k in ("rps", "p50_ms", "p99_ms")}
           for side in ("ours", "baseline")}
    ours, base = med["ours"]["rps"], med["baseline"]["rps"]
    inproc = res["in_process"]["p50_ms"]
    added = {side: res[f"single_{side}"]["p50_ms"] - inproc for side in ("ours", "baseline")}
    errors = {side: sum(r["errors"] for r in res[side]) for side in ("ours", "baseline")}
    rows = [(f"requests/s, {CLIENTS} clients (median of {rounds})", f"{ours:,.0f}", f"{base:,.0f}"),
            ("  p50 / p99 latency ms", f"{med['ours']['p50_ms']:.1f} / {med['ours']['p99_ms']:.1f}",
             f"{med['baseline']['p50_ms']:.1f} / {med['baseline']['p99_ms']:.1f}"),
            ("  errors (all rounds)", str(errors["ours"]), str(errors["baseline"])),
            ("1 client: p50 ms", f"{res['single_ours']['p50_ms']:.2f}", f"{res['single_baseline']['p50_ms']:.2f}"),
            ("added latency ms (1-client p50 - in-process p50)", f"{added['ours']:.2f}", f"{added['baseline']:.2f}")]
    if to and "load" in to:
        tl = to["load"]
        rows.append(("THROUGHPUT_OPTIMIZED=1 via the proxy: requests/s, p50 / p99 ms",
                     f"{tl['rps']:,.0f}, {tl['p50_ms']:.1f} / {tl['p99_ms']:.1f}", "-"))
        rows += [(name, cell, "-") for name, cell in _direct_rows(to.get("direct"), inproc)]
    print_table(f"Serving {res['model']['ref']} (small BERT, 1 text per request): Atoll Serve (1 replica, batch<=32) "
                f"vs plain FastAPI+uvicorn (1 request per model call); in-process predict p50 {inproc:.2f} ms",
                ["figure", "Atoll Serve", "plain FastAPI"], rows)
    print(f"text: ratio (ours/baseline requests/s at {CLIENTS} clients) {ours / base:.3f};  added latency "
          f"{added['ours']:.2f} ms;  {contention}.")
    print(result_line({"bench": "serve_load", "case": "text", "ours": ours, "baseline": base, "unit": "requests/s",
                       "ratio": ours / base if ours and base else None, "better": "higher", "quick": quick,
                       "clients": CLIENTS, "rounds": rounds,
                       "p50_ms": {s: med[s]["p50_ms"] for s in med}, "p99_ms": {s: med[s]["p99_ms"] for s in med},
                       "errors": errors, "in_process_p50_ms": inproc, "added_latency_ms": added["ours"],
                       "added_latency_ms_plain_fastapi": added["baseline"],
                       "single_client_p50_ms": {s: res[f"single_{s}"]["p50_ms"] for s in ("ours", "baseline")},
                       "per_round_rps": {s: [r["rps"] for r in res[s]] for s in ("ours", "baseline")},
                       "settings": {**SETTINGS, "replicas": 1}, "model": {"ref": res["model"]["ref"],
                       "weights": "initialised (seed 0), not trained"}, "deploy_s": res.get("deploy_s"),
                       **({"throughput_optimized": {"rps": to["load"]["rps"], "p50_ms": to["load"]["p50_ms"],
                                                    "single_client_p50_ms": to["single"]["p50_ms"]},
                           "direct_ingress": _direct_json(to.get("direct"), inproc, base)}
                          if to and "load" in to else {}),
                       "contention": contention}))
    if to and "load" in to:
        print_direct_line("text", _direct_json(to.get("direct"), inproc, base), quick)


def report(res: dict[str, Any], model: dict[str, Any], rounds: int, duration: float, contention: str,
           quick: bool) -> None:
    med = {side: {k: _median(r[k] for r in res[side]) for k in ("rps", "p50_ms", "p99_ms", "loadgen_cpu_cores",
                                                                 "machine_busy_fraction")}
           for side in ("ours", "baseline")}
    ours, base = med["ours"]["rps"], med["baseline"]["rps"]
    ratio = ours / base if ours and base else None
    inproc = res["in_process"]["p50_ms"]
    added = res["single_ours"]["p50_ms"] - inproc
    added_base = res["single_baseline"]["p50_ms"] - inproc
    to = res.get("throughput_optimized") or {}
    to_ok = "load" in to
    srv_cores = {side: _median(_server_cores(r) for r in res[side]) for side in ("ours", "baseline")}
    srv_ms = {side: srv_cores[side] / med[side]["rps"] * 1e3 if srv_cores[side] and med[side]["rps"] else None
              for side in ("ours", "baseline")}

    def f(v, fmt="{:.2f}"):
        return "-" if v is None else fmt.format(v)

    rows = [
        (f"requests/s, {CLIENTS} clients (median of {rounds})", f(ours, "{:,.0f}"), f(base, "{:,.0f}")),
        ("  p50 latency ms", f(med["ours"]["p50_ms"]), f(med["baseline"]["p50_ms"])),
        ("  p99 latency ms", f(med["ours"]["p99_ms"]), f(med["baseline"]["p99_ms"])),
        ("  errors (all rounds)", str(sum(r["errors"] for r in res["ours"])),
         str(sum(r["errors"] for r in res["baseline"]))),
        ("  load generator CPU (cores)", f(med["ours"]["loadgen_cpu_cores"]),
         f(med["baseline"]["loadgen_cpu_cores"])),
        ("  machine busy fraction", f(med["ours"]["machine_busy_fraction"]),
         f(med["baseline"]["machine_busy_fraction"])),
        ("  server CPU cores (proxy+replica+controller / uvicorn)", f(srv_cores["ours"]), f(srv_cores["baseline"])),
        ("  server CPU ms per request", f(srv_ms["ours"]), f(srv_ms["baseline"])),
        ("1 client: p50 ms", f(res["single_ours"]["p50_ms"], "{:.3f}"),
         f(res["single_baseline"]["p50_ms"], "{:.3f}")),
        ("1 client: p99 ms", f(res["single_ours"]["p99_ms"], "{:.3f}"),
         f(res["single_baseline"]["p99_ms"], "{:.3f}")),
        ("added latency ms (1-client p50 - in-process p50)", f(added, "{:.3f}"), f(added_base, "{:.3f}")),
    ]
    rows.append(("machine busy, nothing sent (Ray+Serve up / no Ray yet)",
                 f(res.get("idle_busy_fraction_ray_up")), f(res.get("idle_busy_fraction_no_ray"))))
    if "ours_2_replicas" in res:
        r2 = res["ours_2_replicas"]
        rows.append(("2 replicas: requests/s, p50 / p99 ms",
                     f"{r2['rps']:,.0f}, {r2['p50_ms']:.1f} / {r2['p99_ms']:.1f}", "-"))
    if "ours_no_access_log" in res:
        rn = res["ours_no_access_log"]
        rows.append(("access log off: requests/s, p50 / p99 ms",
                     f"{rn['rps']:,.0f}, {rn['p50_ms']:.1f} / {rn['p99_ms']:.1f}", "-"))
    if to_ok:
        tl = to["load"]
        bl = res.get("baseline_no_ray") or {}
        rows.append(("THROUGHPUT_OPTIMIZED=1: requests/s, p50 / p99 ms",
                     f"{tl['rps']:,.0f}, {tl['p50_ms']:.1f} / {tl['p99_ms']:.1f}",
                     f"{bl['rps']:,.0f}, {bl['p50_ms']:.1f} / {bl['p99_ms']:.1f} (no Ray up)" if bl else "-"))
        rows.append(("THROUGHPUT_OPTIMIZED=1: 1-client p50 ms", f(to["single"]["p50_ms"], "{:.3f}"), "-"))
        bl_rps = (res.get("baseline_no_ray") or {}).get("rps")
        rows += [(name, cell, f"{bl_rps:,.0f} (no Ray up)" if bl_rps and "requests/s" in name else "-")
                 for name, cell in _direct_rows(to.get("direct"), inproc)]
    title = (f"Serving {model['ref']} (digits MLP, 1 row x 64 floats per request): Atoll Serve (1 replica, "
             f"batch<=32) vs plain FastAPI+uvicorn; in-process predict p50 {inproc:.3f} ms")
    print_table(title, ["figure", "Atoll Serve", "plain FastAPI"], rows)
    if res.get("profile"):
        shares = res["profile"]
        parts = [name for name, _ in _profile.SERVE_PARTS] + [_profile.REST]
        print_table(f"Where Serve's CPU goes at {CLIENTS} clients (share of each process's samples, py-spy)",
                    ["part", "proxy", "replica"],
                    [[part] + [f"{shares.get(role, {}).get(part, 0.0):.0%}" for role in ("serve_proxy", "serve_replica")]
                     for part in parts])
    if to and not to_ok:
        print(f"THROUGHPUT_OPTIMIZED variant failed: {to.get('error')}\n{to.get('log_tail', '')[-1500:]}")
    contended = _contended_phases(res)
    print(f"ratio (ours/baseline requests/s at {CLIENTS} clients): {f(ratio, '{:.3f}')};  added latency "
          f"{added:.2f} ms (plain FastAPI adds {added_base:.2f} ms);  {contention}"
          + (f" (during: {', '.join(contended)})" if contended else "") + ".")

    out = {"bench": "serve_load", "case": "mlp", "ours": ours, "baseline": base, "unit": "requests/s", "ratio": ratio,
           "better": "higher", "quick": quick, "clients": CLIENTS, "rounds": rounds, "duration_s": duration,
           "p50_ms": {"ours": med["ours"]["p50_ms"], "baseline": med["baseline"]["p50_ms"]},
           "p99_ms": {"ours": med["ours"]["p99_ms"], "baseline": med["baseline"]["p99_ms"]},
           "added_latency_ms": added, "added_latency_ms_plain_fastapi": added_base,
           "in_process_p50_ms": inproc,
           "single_client_p50_ms": {"ours": res["single_ours"]["p50_ms"],
                                    "baseline": res["single_baseline"]["p50_ms"]},
           "single_client_p99_ms": {"ours": res["single_ours"]["p99_ms"],
                                    "baseline": res["single_baseline"]["p99_ms"]},
           "per_round_rps": {"ours": [r["rps"] for r in res["ours"]],
                             "baseline": [r["rps"] for r in res["baseline"]]},
           "errors": {"ours": sum(r["errors"] for r in res["ours"]),
                      "baseline": sum(r["errors"] for r in res["baseline"])},
           "loadgen_cpu_cores": {"ours": med["ours"]["loadgen_cpu_cores"],
                                 "baseline": med["baseline"]["loadgen_cpu_cores"]},
           "settings": {**SETTINGS, "replicas": 1},
           "model": {"ref": model["ref"], "weights": f"trained {TRAIN_EPOCHS} epochs, plain torch",
                     "holdout_accuracy": model["holdout_accuracy"]},
           "startup_s": {"ray_and_serve": res.get("ray_and_serve_start_s"), "deploy": res.get("deploy_s")}}
    if "ours_no_access_log" in res:
        rn = res["ours_no_access_log"]
        out["no_access_log"] = {"rps": rn["rps"], "p50_ms": rn["p50_ms"], "p99_ms": rn["p99_ms"],
                                "ratio": rn["rps"] / base if base else None,
                                "setting": 'serve.run(logging_config={"enable_access_log": False})'}
    if "ours_2_replicas" in res:
        r2 = res["ours_2_replicas"]
        out["two_replicas"] = {"rps": r2["rps"], "p50_ms": r2["p50_ms"], "p99_ms": r2["p99_ms"],
                               "ratio": r2["rps"] / base if base else None}
    if to:
        out["throughput_optimized"] = (
            {"env": "RAY_SERVE_THROUGHPUT_OPTIMIZED=1", "rps": to["load"]["rps"], "p50_ms": to["load"]["p50_ms"],
             "p99_ms": to["load"]["p99_ms"], "errors": to["load"]["errors"],
             "single_client_p50_ms": to["single"]["p50_ms"],
             "added_latency_ms": to["single"]["p50_ms"] - inproc,
             "baseline_rps_no_ray": (res.get("baseline_no_ray") or {}).get("rps"),
             "ratio": to["load"]["rps"] / base if base else None, "flags": to.get("flags"),
             "idle_busy_fraction": to.get("idle_busy_fraction"),
             "cpu_cores_by_role": to["load"].get("cpu_cores_by_role"),
             "contention": to.get("contention")}
            if to_ok else {"error": to.get("error")})
        if to_ok:
            out["direct_ingress"] = _direct_json(to.get("direct"), inproc,
                                                 (res.get("baseline_no_ray") or {}).get("rps") or base)
    out["server_cpu_ms_per_request"] = srv_ms
    if res.get("profile"):
        out["cpu_share_by_part"] = res["profile"]
    out["cpu_cores_by_role"] = {"ours": res["ours"][0].get("cpu_cores_by_role"),
                                "baseline": res["baseline"][0].get("cpu_cores_by_role")}
    if "single_ours" in res:
        out["cpu_cores_by_role"]["ours_1_client"] = res["single_ours"].get("cpu_cores_by_role")
    out["idle_busy_fraction"] = {"no_ray": res.get("idle_busy_fraction_no_ray"),
                                 "ray_serve_idle": res.get("idle_busy_fraction_ray_up")}
    out["contention"] = contention
    out["phases_with_foreign_ray"] = contended
    print(result_line(out))
    print_direct_line("mlp", out.get("direct_ingress"), quick)


def print_direct_line(case: str, direct: dict[str, Any] | None, quick: bool) -> None:
    """Direct ingress as a case of its own (``<case>, direct ingress``): the same replica without Serve's proxy."""
    if direct and direct.get("ratio"):
        print(result_line({"bench": "serve_load", "case": f"{case}, direct ingress", "ours": direct["rps"],
                           "baseline": direct["rps"] / direct["ratio"], "unit": "requests/s", "ratio": direct["ratio"],
                           "better": "higher", "quick": quick, "clients": CLIENTS,
                           "added_latency_ms": direct["added_latency_ms"],
                           "single_client_p50_ms": direct["single_client_p50_ms"], "bind": direct["bind"],
                           "path": direct["env"]}))


def print_haproxy_lines(res: dict[str, Any], quick: bool) -> None:
    """Ray's HAProxy ingress as cases of their own (``<case>, haproxy``): requests/s through HAProxy's frontend at
    32 clients against the same run's plain FastAPI (the MLP's measured with no Ray up; the text model's the
    median of its rounds), and the 1-client p50 added over in-process predict."""
    hp = res.get("haproxy")
    if not hp:
        return
    if "load" not in hp:
        print(result_line({"bench": "serve_load", "case": "mlp, haproxy", "error": hp.get("error"), "quick": quick}))
        return
    cases = [("mlp", hp, (res.get("baseline_no_ray") or {}).get("rps") or _median(r["rps"] for r in res["baseline"]),
              res["in_process"]["p50_ms"])]
    if hp.get("text") and res.get("text"):
        cases.append(("text", hp["text"], _median(r["rps"] for r in res["text"]["baseline"]),
                      res["text"]["in_process"]["p50_ms"]))
    for case, measured, base, inproc in cases:
        ours = measured["load"]["rps"]
        print(result_line({"bench": "serve_load", "case": f"{case}, haproxy", "ours": ours, "baseline": base,
                           "unit": "requests/s", "ratio": ours / base if base else None, "better": "higher",
                           "quick": quick, "clients": CLIENTS, "p50_ms": measured["load"]["p50_ms"],
                           "p99_ms": measured["load"]["p99_ms"], "errors": measured["load"]["errors"],
                           "single_client_p50_ms": measured["single"]["p50_ms"],
                           "added_latency_ms": measured["single"]["p50_ms"] - inproc,
                           "path": "RAY_SERVE_ENABLE_HA_PROXY=1, Atoll's key middleware, in a network namespace",
                           "contention": hp.get("contention")}))


_SERVER_ROLES = ("serve_proxy", "serve_replica", "serve_controller", "baseline_uvicorn")


def _server_cores(result: dict[str, Any]) -> float | None:
    """CPU cores the serving processes used in one measurement: Serve's proxy, replica(s) and controller, or
    the uvicorn process (raylet/GCS and other Ray processes are left out: another cluster's look the same)."""
    roles = result.get("cpu_cores_by_role")
    if not roles:
        return None
    return sum(v for k, v in roles.items() if k in _SERVER_ROLES)


def _contended_phases(res: dict[str, Any]) -> list[str]:
    """Names of the measurements during which another Ray cluster's raylet was seen."""
    names = []
    for side in ("baseline", "ours"):
        names += [f"{side} round {i + 1}" for i, r in enumerate(res.get(side) or []) if r.get("foreign_ray")]
    for key in ("single_baseline", "single_ours", "ours_2_replicas", "baseline_no_ray"):
        if (res.get(key) or {}).get("foreign_ray"):
            names.append(key)
    to = res.get("throughput_optimized") or {}
    names += [f"throughput_optimized {k}" for k in ("load", "single") if (to.get(k) or {}).get("foreign_ray")]
    return names


if __name__ == "__main__":
    sys.exit(main())

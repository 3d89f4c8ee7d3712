"""Shared fixtures: one real local Ray cluster per test session, started the way a user starts it.

The cluster, its state file and the storage root live in a temporary ATOLL_HOME / ATOLL_STORAGE, so
the tests never touch a developer's own cluster records or registry. Subprocesses (the `atoll` CLI,
Ray jobs) inherit these variables.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parent.parent
ATOLL = str(Path(sys.executable).parent / "atoll")

# A suite started in the background without job control (`pytest &` in a script) ignores SIGINT, and every
# `atoll` it starts inherits that: the Ctrl-C tests would interrupt nothing. Children get the default back.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@contextlib.contextmanager
def environ(values: dict[str, str]) -> Iterator[dict[str, str]]:
    """These variables set in os.environ (so every child process inherits them), as they were afterwards."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield values
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="session", autouse=True)
def atoll_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    home = tmp_path_factory.mktemp("atoll_home")
    os.environ.pop("ATOLL_ADDRESS", None)
    with environ({"ATOLL_HOME": str(home), "ATOLL_STORAGE": str(home / "storage"),
                  "ATOLL_CLUSTER_CONFIG": str(REPO / "cluster.yaml")}) as env:
        yield env


@pytest.fixture(scope="session")
def ray_cluster(atoll_env):
    """A real local cluster started by `atoll.cluster.up` (4 logical CPUs), stopped by PID at the end."""
    from atoll import cluster

    spec = cluster.load_spec()
    info = cluster.up(spec, num_cpus=4)
    assert not info.already_up, "a cluster from an earlier run is still recorded; run `atoll down`"
    yield info
    cluster.down()
    leftover = cluster.ray_processes_of(info)
    assert leftover == [], f"`atoll down` left Ray processes running: {leftover}"


@pytest.fixture
def storage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty storage root of this test's own (the session's cluster.yaml, this root)."""
    root = tmp_path / "storage"
    monkeypatch.setenv("ATOLL_STORAGE", str(root))
    return root


def invoke(*args: str, **kw):
    """The CLI run in this process by typer's test runner (no subprocess: for tests that need no cluster)."""
    from atoll.cli import app
    from typer.testing import CliRunner

    return CliRunner().invoke(app, list(args), **kw)


def run_cli(*args: str, timeout: float = 300, cwd: Path = REPO, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess[str]:
    """Run the real `atoll` console script as a user would (its seconds are kept for the run's summary)."""
    start = time.monotonic()
    try:
        return subprocess.run([ATOLL, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, **(env or {})})
    finally:
        test = os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" (", 1)[0]
        CLI_SECONDS.append((time.monotonic() - start, " ".join(args[:3]), test))


#: (seconds, the command's first words, the test running it) of every `run_cli`: where a slow test's time goes.
CLI_SECONDS: list[tuple[float, str, str]] = []


#: Epochs of the session's digits run; the fault tests train the same spec and compare with it.
TRAINED_EPOCHS = 6


@pytest.fixture(scope="session")
def trained_digits(ray_cluster) -> dict:
    """The digits demo trained for real by `atoll train` (TRAINED_EPOCHS epochs, 2 workers, run `t-digits`),
    once per session: the training tests check it, the Serve and browser tests deploy it, the fault tests compare an
    interrupted run of the same spec with it. Returns the CLI's JSON answer."""
    result = run_cli("train", "--set", f"epochs={TRAINED_EPOCHS}", "--run-name", "t-digits", "--json", timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = json.loads(result.stdout)
    assert out["registered"], out
    return out


#: One replica on a tenth of a CPU: five session apps (and a rollover's old and new replicas side by side) then
#: hold under one of the 4 logical CPUs, so a 2-worker training run never waits behind them for resources.
SMALL_APP = ["--replicas", "1:1", "--set", "num_cpus_per_replica=0.1"]
APP_KEY = "shared-app-key-0123456789abc"  # the keyed app's API key (long enough for the key check)


@pytest.fixture(scope="session")
def public_app(trained_digits) -> dict:
    """The session's digits version promoted to `production` and deployed by alias as app `digits` with
    `atoll serve deploy`, once for every module that queries it (Serve, browser, CLI). Every app left is
    removed at the end, and the gallery goes with the last one. Returns the CLI's JSON answer."""
    import httpx
    from atoll.serving import endpoints

    version = trained_digits["registered"]["version"]
    promoted = run_cli("models", "promote", f"digits:{version}", "production")
    assert promoted.returncode == 0, promoted.stderr
    result = run_cli("serve", "deploy", "digits@production", *SMALL_APP, "--json", timeout=400)
    assert result.returncode == 0, result.stdout + result.stderr
    info = json.loads(result.stdout)
    assert (info["app"], info["version"], info["status"]) == ("digits", version, "RUNNING")
    yield info
    for app in endpoints.status():
        endpoints.delete(app["app"])
    assert httpx.get(info["gallery"], timeout=10).status_code == 404


@pytest.fixture(scope="session")
def keyed_app(public_app) -> dict:
    """The same version as app `digits-private` behind the API key APP_KEY, deployed by `atoll serve deploy`
    with the key in its environment and run by torch (the public app runs ONNX Runtime); ``output`` is what
    the command printed for a person."""
    result = run_cli("serve", "deploy", f"digits:{public_app['version']}", "--app", "digits-private",
                     *SMALL_APP, "--set", "runtime=torch", env={"ATOLL_API_KEY": APP_KEY}, timeout=400)
    assert result.returncode == 0, result.stdout + result.stderr
    url = public_app["url"].rsplit("/", 1)[0] + "/digits-private"
    return {**public_app, "app": "digits-private", "url": url, "playground": f"{url}/ui",
            "requested": f"digits:{public_app['version']}", "output": result.stdout}


def _train(spec: str, run_name: str, *overrides: str) -> dict:
    """`atoll train SPEC` run for real; the CLI's JSON answer, with a registered version."""
    sets = [arg for item in overrides for arg in ("--set", item)]
    result = run_cli("train", spec, *sets, "--run-name", run_name, "--json", timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = json.loads(result.stdout)
    assert out["registered"], out
    return out


def _deployed(trained: dict, app: str):
    """The version deployed as ``app`` with `atoll serve deploy`; removed at the end."""
    from atoll.serving import endpoints

    ref = f"{trained['registered']['name']}:{trained['registered']['version']}"
    result = run_cli("serve", "deploy", ref, "--app", app, *SMALL_APP, "--json", timeout=400)
    assert result.returncode == 0, result.stdout + result.stderr
    yield json.loads(result.stdout)
    if app in {a["app"] for a in endpoints.status()}:  # public_app's teardown removes every app, if it ran first
        endpoints.delete(app)


@pytest.fixture(scope="session")
def trained_diabetes(ray_cluster) -> dict:
    """The regression demo (jobs/configs/regression.yaml, 2 workers, run `t-diabetes`), once per session."""
    return _train("jobs/configs/regression.yaml", "t-diabetes")


@pytest.fixture(scope="session")
def diabetes_app(trained_diabetes):
    """That version deployed as app `diabetes` (for the regression and browser tests)."""
    yield from _deployed(trained_diabetes, "diabetes")


@pytest.fixture(scope="session")
def trained_text(ray_cluster) -> dict:
    """The text demo (jobs/configs/text.yaml: a small BERT on the SMS Spam Collection, 2 workers, 2 epochs,
    run `t-text`), once per session."""
    return _train("jobs/configs/text.yaml", "t-text", "epochs=2")


@pytest.fixture(scope="session")
def text_app(trained_text):
    """That version deployed as app `sms-spam` (for the text and browser tests)."""
    yield from _deployed(trained_text, "sms-spam")


@pytest.fixture(scope="session")
def trained_images(ray_cluster) -> dict:
    """The image demo (jobs/configs/image.yaml: a small CNN on the digits as PNGs, 2 workers, run `t-images`),
    once per session."""
    return _train("jobs/configs/image.yaml", "t-images")


@pytest.fixture(scope="session")
def image_app(trained_images):
    """That version deployed as app `digit-images` (for the image and browser tests)."""
    yield from _deployed(trained_images, "digit-images")


@pytest.fixture(scope="session")
def trained_mixed(ray_cluster) -> dict:
    """A table with words and gaps: the penguins demo (jobs/configs/penguins.yaml: island and sex as words, sex and
    the measurements with gaps, the year as a category), kept small: 2 epochs on 1 worker, run `t-penguins`, once
    per session (for the mixed playground and the per-column protocol tests)."""
    return _train("jobs/configs/penguins.yaml", "t-penguins", "epochs=2", "num_workers=1")


@pytest.fixture(scope="session")
def mixed_app(trained_mixed):
    """That version deployed as app `penguins`."""
    yield from _deployed(trained_mixed, "penguins")


@pytest.fixture(scope="session")
def trained_writer(ray_cluster) -> dict:
    """The generation demo (jobs/configs/generate.yaml: a small Llama-style language model on the SMS corpus as
    chats), kept small: 1 epoch of a 1-layer model on 2 workers, run `t-writer`, once per session."""
    return _train("jobs/configs/generate.yaml", "t-writer", "epochs=1", "model.params.layers=1",
                  "model.params.hidden=64", "model.params.vocab_size=800", "model.params.context_length=64")


@pytest.fixture(scope="module")
def writer_app(trained_writer):
    """That version deployed as app `writer` (OpenAI's API, the chat playground), for one module: a language
    model's replica is not left running beside the rest of the session."""
    yield from _deployed(trained_writer, "writer")


@pytest.fixture(scope="session")
def s3_store(atoll_env):
    """A real S3-compatible server for the session: SeaweedFS started by `atoll storage up` (as a developer
    starts it) on a free loopback port, with bucket ``atoll-test``. Its AWS variables (endpoint, region, the
    credentials file's path: no key) are set here, so clients, children and jobs reach it; stopped by PID."""
    from atoll import objectstore

    result = run_cli("storage", "up", "--port", str(objectstore.free_port()), "--bucket", "atoll-test", "--json",
                     timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    info = objectstore.current()
    assert info is not None and json.loads(result.stdout)["pid"] == info.pid
    with environ(info.environment()):
        yield info
    assert run_cli("storage", "down").returncode == 0
    assert objectstore.current() is None and not objectstore.process_alive(info.pid)


def private_cluster_config(tmp_path: Path, port: int, dashboard_port: int) -> tuple[Path, dict[str, str]]:
    """A cluster.yaml for a second, private local cluster (its own ports) and the env that keeps its records
    apart from the session's (its own ATOLL_HOME)."""
    from atoll.config import write_local_variant

    path = write_local_variant(tmp_path / "cluster.yaml", port=port, dashboard_port=dashboard_port, num_cpus=1,
                               source=REPO / "cluster.yaml")
    return path, {"ATOLL_HOME": str(tmp_path / "home"), "ATOLL_CLUSTER_CONFIG": str(path)}


def copy_version(reg, source, folder: Path, *, broken: bool = False):
    """A new version of ``source``'s model without a second training run, for rollovers and canaries
    (``broken``: weights all NaN, so every answer of its torch runtime is an error)."""
    import torch
    from safetensors.torch import load_file, save_file

    local = Path(reg.local_copy(source, folder))
    (local / "manifest.json").unlink()  # the registry writes its own
    if broken:
        weights = load_file(local / "model.safetensors")
        save_file({k: torch.full_like(v, float("nan")) for k, v in weights.items()}, local / "model.safetensors")
    return reg.register(source.name, local, metrics=source.metrics, spec=source.spec, input_schema=source.input_schema,
                        lineage={"copied_from": source.ref, "broken": broken}, files_from_checkpoint=False)


def processes_with_home(home: str) -> list[int]:
    """Processes that inherited this ATOLL_HOME: everything an `atoll up` with it started."""
    found = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if proc.environ().get("ATOLL_HOME") == home and proc.pid != os.getpid():
                found.append(proc.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def _needs_a_cluster(item: pytest.Item) -> bool:
    return bool(item.get_closest_marker("cluster") or item.get_closest_marker("slow")
                or "ray_cluster" in getattr(item, "fixturenames", ()))


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects: a test that takes the cluster through a fixture is marked
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Fail fast: the tests that need no cluster run first (in a few seconds each), then those on the shared
    cluster, and the end-to-end quickstart last. The sort is stable: modules stay in order within a group. A test
    that needs the cluster only through a fixture gets the ``cluster`` mark, so ``-m "not cluster"`` leaves it out."""
    for item in items:
        if _needs_a_cluster(item) and not item.get_closest_marker("cluster"):
            item.add_marker(pytest.mark.cluster)
    items.sort(key=lambda item: 2 if item.get_closest_marker("quickstart") else int(_needs_a_cluster(item)))


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    """Seconds per test file (setup, call and teardown together), the largest first: where CI's time goes,
    file by file, so trimming starts from a measurement (the 30-minute budget, README)."""
    per_file: dict[str, float] = {}
    for reports in terminalreporter.stats.values():
        for report in reports:
            if isinstance(report, pytest.TestReport):
                path = report.nodeid.split("::", 1)[0]
                per_file[path] = per_file.get(path, 0.0) + report.duration
    if len(per_file) > 1:
        terminalreporter.write_sep("=", "seconds per test file (largest 20)")
        for path, seconds in sorted(per_file.items(), key=lambda kv: -kv[1])[:20]:
            terminalreporter.write_line(f"{seconds:8.1f}s  {path}")
    if len(CLI_SECONDS) > 1:
        terminalreporter.write_sep("=", f"slowest atoll commands ({min(20, len(CLI_SECONDS))} of {len(CLI_SECONDS)}, "
                                        f"{sum(c[0] for c in CLI_SECONDS):.0f} s in all)")
        for seconds, command, test in sorted(CLI_SECONDS, reverse=True)[:20]:
            terminalreporter.write_line(f"{seconds:8.1f}s  atoll {command}  ({test[:100]})")

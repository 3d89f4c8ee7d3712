"""The request log (a sample of a model app's traffic as Parquet in the storage root) and drift against the
version's training profile: units without Ray, then one app on the session's cluster with a shifted feature."""

from __future__ import annotations

import json
import os
import re
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from atoll import profiles, request_log
from atoll.specs import ServeSettings
from conftest import SMALL_APP, invoke, run_cli

FILE = re.compile(r"request_logs/(?P<app>[^/]+)/\d{4}-\d{2}-\d{2}/\d{2}/[A-Za-z0-9_-]+-\d{6}\.parquet$")


def _log(storage: Path, **kw) -> request_log.RequestLog:
    return request_log.RequestLog(str(storage), "demo", "digits", 3, "replica-1", 1.0, 168, flush_s=3600, **kw)


# ------------------------------------------------------------------------------------------------
# The writer and the reader


def test_records_are_written_whole_per_hour_and_read_back(tmp_path):
    log = _log(tmp_path)
    try:
        rows = np.asarray([[1.0, np.nan], [2.0, 3.0]], dtype=np.float32)
        log.record("/predict", 200, 1.5, rows, {"predictions": [1, 2], "probabilities": None})
        log.record("/invocations", 422, 0.7, None, {"error": "inputs.0 has 3 values"})
        written = log.flush()
    finally:
        log.close()
    assert len(written) == 1 and FILE.search(written[0]), written
    table = pq.read_table(written[0])
    assert table.column_names == list(request_log.COLUMNS)
    frame = request_log.read(str(tmp_path), "demo")
    assert list(frame["route"]) == ["/predict", "/invocations"] and list(frame["status"]) == [200, 422]
    assert json.loads(frame["inputs"][0]) == [[1.0, None], [2.0, 3.0]]  # a NaN gap is null
    assert pd.isna(frame["inputs"][1]) and frame["model"][0] == "digits" and frame["version"][0] == 3
    assert str(frame["time"].dt.tz) == "UTC"
    assert request_log.read(str(tmp_path), "demo", since=0.0001).shape[0] == 2  # hours back
    assert request_log.read(str(tmp_path), "other").empty
    with pytest.raises(request_log.ConfigError, match="app name"):
        request_log.read(str(tmp_path), "../registry")


def test_a_writer_killed_between_write_and_rename_leaves_no_file_a_reader_takes(tmp_path, monkeypatch):
    """The file is written under a temporary name (``.NAME.parquet.X.tmp``) and renamed whole: a writer stopped in
    between leaves only the temporary, which readers skip; its records stay buffered for the next flush."""
    log = _log(tmp_path)
    log.record("/predict", 200, 1.0, [[1.0]], {"predictions": [0]})
    log.flush()

    class DiesBeforeTheRename:
        """The log's filesystem, but the process dies right after writing the temporary file."""

        def __init__(self, fs):
            self.fs = fs

        def __getattr__(self, name):
            return getattr(self.fs, name)

        def move(self, src, dst):
            raise KeyboardInterrupt

    monkeypatch.setattr(log, "fs", DiesBeforeTheRename(log.fs))
    log.record("/predict", 200, 1.0, [[2.0]], {"predictions": [1]})
    with pytest.raises(KeyboardInterrupt):
        log.flush()
    monkeypatch.undo()
    temps = [p for p in tmp_path.rglob("*") if p.is_file() and p.name.endswith(".tmp")]
    assert len(temps) == 1 and temps[0].name.startswith(".")
    temps[0].write_bytes(temps[0].read_bytes()[:20])  # and half of it, for good measure
    assert len(request_log.files(str(tmp_path), "demo")) == 1
    assert json.loads(request_log.read(str(tmp_path), "demo")["inputs"][0]) == [[1.0]]
    log.close()  # the kept record is written now
    assert sorted(json.loads(x)[0][0] for x in request_log.read(str(tmp_path), "demo")["inputs"]) == [1.0, 2.0]


def test_hour_folders_past_the_retention_are_deleted(tmp_path):
    log = _log(tmp_path)
    log.close()
    base = Path(request_log.app_dir(str(tmp_path), "demo"))
    now = time.time()
    old, recent = time.gmtime(now - 10 * 3600), time.gmtime(now - 3600)
    for t in (old, recent):
        folder = base / time.strftime("%Y-%m-%d", t) / time.strftime("%H", t)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "r-000001.parquet").write_bytes(b"x")
    log.retention_s = 5 * 3600
    removed = log.prune(now)
    assert len(removed) == 1 and time.strftime("%H", old) == Path(removed[0]).name
    left = [p.relative_to(base).parts[:2] for p in base.rglob("*.parquet")]
    assert left == [(time.strftime("%Y-%m-%d", recent), time.strftime("%H", recent))]


def test_logging_off_is_no_log_and_a_record_stays_in_memory_until_the_flush(tmp_path):
    assert request_log.start(str(tmp_path), "demo", "digits", 1, "r", 0.0, 168) is None
    assert request_log.start(str(tmp_path), "", "digits", 1, "r", 1.0, 168) is None  # a replica outside Serve
    log = _log(tmp_path)
    try:
        rows = np.zeros((1, 64), np.float32)
        n = 2_000
        for _ in range(n):
            if log.sampled():
                log.record("/predict", 200, 1.0, rows, {"predictions": [0]})
        # The request path only appends: nothing touches the storage root before the background flush
        assert len(log._records) == n and not list(tmp_path.rglob("*.parquet"))
        sampled = request_log.RequestLog(str(tmp_path), "demo", "d", 1, "r", 0.1, 168, flush_s=3600)
        kept = sum(sampled.sampled() for _ in range(20_000))
        sampled.close()
        assert 1500 < kept < 2500
    finally:
        log._records.clear()
        log.close()


def test_a_hanging_store_keeps_the_buffer_bounded_and_counts_what_it_drops(tmp_path, monkeypatch):
    log = _log(tmp_path, flush_records=5, max_buffered=20)
    release, writing = threading.Event(), threading.Event()
    real_write = log._write

    def hanging_write(hour, rows):  # the store takes the upload and never answers, until released
        writing.set()
        release.wait(30)
        raise OSError("the store timed out")

    monkeypatch.setattr(log, "_write", hanging_write)
    try:
        for _ in range(5):
            log.record("/predict", 200, 1.0, [[0.0]], {"predictions": [0]})
        assert writing.wait(10)  # the writer's thread holds those 5 in a write that hangs
        for _ in range(100):
            log.record("/predict", 200, 1.0, [[0.0]], {"predictions": [0]})
        assert len(log._records) == 20 and log.dropped == 80
        release.set()  # the write fails: of its 5, none fit beside the 20 waiting
        deadline = time.monotonic() + 10
        while log.dropped < 85 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert log.dropped == 85 and len(log._records) <= 20
    finally:
        release.set()
        monkeypatch.setattr(log, "_write", real_write)
        log.close()
    assert sum(len(pq.read_table(f)) for f in log.written) == 20  # the store back: what was kept is written


def test_the_settings_are_per_app_and_checked():
    assert {"log_requests", "log_retention_hours"} <= set(ServeSettings.PER_APP)
    assert ServeSettings().log_requests == 0
    with pytest.raises(ValueError):
        ServeSettings(log_requests=1.5)
    result = invoke("serve", "deploy", "digits", "--log-requests", "0")
    assert result.exit_code == 1 and "--log-requests 0: give the share" in str(result.exception)


# ------------------------------------------------------------------------------------------------
# Profiles and their comparison


def _table(n: int, rng: np.random.Generator, shift: float = 0.0) -> pd.DataFrame:
    return pd.DataFrame({"a": rng.normal(0, 1, n) + shift, "b": rng.integers(0, 17, n).astype(float),
                         "c": rng.choice(["x", "y", "z"], n, p=[0.5, 0.3, 0.2])})


def test_psi_and_the_chi_square_test():
    same = [100, 200, 300]
    assert profiles.psi(same, [10, 20, 30]) == pytest.approx(0, abs=1e-9)
    assert profiles.psi([50, 50], [90, 10]) == pytest.approx(0.4 * np.log(9), rel=1e-6)
    assert profiles.chi_square(same, [10, 20, 30])[1] == pytest.approx(1.0)
    assert profiles.chi_square([500, 500], [90, 10])[1] < 1e-6
    assert profiles.psi([1, 0], [0, 0]) == 0.0 and profiles.chi_square([5, 0], [0, 0]) == (0.0, 1.0)


def test_a_shifted_feature_is_flagged_and_the_others_are_not():
    rng = np.random.default_rng(0)
    profile = {"input_kind": "table", "features": profiles.table_profile(
        _table(20_000, rng), ["a", "b", "c"], {"a": "numeric", "b": "numeric", "c": "categorical"})}
    a = profile["features"][0]
    assert a["kind"] == "numeric" and len(a["edges"]) == 9 and sum(a["counts"]) == 20_000
    assert set(profile["features"][2]["levels"]) == {"x", "y", "z"}
    live = _table(400, rng, shift=1.5)
    live.loc[:5, "c"] = None
    schema = {"features": ["a", "b", "c"]}
    inputs = [json.dumps(live.iloc[i:i + 10].astype(object).where(live.iloc[i:i + 10].notna(), None).values.tolist())
              for i in range(0, 400, 10)]
    rows = profiles.compare(profile, profiles.live_values(profile, schema, inputs))
    by = {r["feature"]: r for r in rows}
    assert [r["feature"] for r in rows if r["flagged"]] == ["a"], {k: r["psi"] for k, r in by.items()}
    assert by["a"]["psi"] > 1 and by["a"]["p_value"] < 1e-6 and by["b"]["psi"] < 0.1 and by["c"]["psi"] < 0.2
    assert by["c"]["bins"][-1] == "missing" and by["c"]["live_share"][-1] == pytest.approx(6 / 400)
    unshifted = _table(400, rng)
    inputs = [json.dumps(unshifted.values.tolist())]
    assert not any(r["flagged"] for r in profiles.compare(profile, profiles.live_values(profile, schema, inputs)))


def test_a_text_profile_measures_length_and_vocabulary_coverage():
    texts = ["free entry to win a prize now", "are we still on for lunch", "call me when you get home"] * 200
    profile = {"input_kind": "text", "features": profiles.text_profile(texts)}
    assert [f["name"] for f in profile["features"]] == ["length_words", "vocabulary"]
    same = profiles.compare(profile, profiles.live_values(profile, {}, [json.dumps(texts[:30])]))
    assert not any(r["flagged"] for r in same)
    foreign = ["le chat noir mange une souris grise dans la cuisine ce soir tard"] * 30
    shifted = {r["feature"]: r for r in profiles.compare(profile, profiles.live_values(profile, {}, [json.dumps(foreign)]))}
    assert shifted["vocabulary"]["flagged"] and shifted["length_words"]["flagged"]


def test_a_profile_that_cannot_be_made_never_fails_a_registration(tmp_path):
    spec = {"task": "tabular-classification", "dataset": {"path": str(tmp_path / "gone.parquet")}}
    assert profiles.write_profile(tmp_path, spec, {"input_kind": "table", "features": ["a"]}, str(tmp_path)) is False
    assert profiles.write_profile(tmp_path, {"task": "text-generation", "dataset": {"path": "x"}},
                               {"input_kind": "text"}, str(tmp_path)) is False
    assert not (tmp_path / profiles.PROFILE_FILE).exists()


def test_a_profile_of_a_table_file_reads_the_training_split(tmp_path):
    rng = np.random.default_rng(1)
    frame = _table(3000, rng).assign(label=rng.integers(0, 2, 3000))
    frame.to_parquet(tmp_path / "t.parquet")
    spec = {"task": "tabular-classification", "seed": 0,
            "dataset": {"path": str(tmp_path / "t.parquet"), "validation_fraction": 0.2}}
    schema = {"input_kind": "table", "features": ["a", "b", "c"], "label": "label",
              "columns": [{"name": "a", "kind": "numeric"}, {"name": "b", "kind": "numeric"},
                          {"name": "c", "kind": "categorical"}]}
    assert profiles.write_profile(tmp_path, spec, schema, str(tmp_path))
    profile = json.loads((tmp_path / profiles.PROFILE_FILE).read_text())
    assert 2200 < profile["rows"] < 2600 and not profile["sampled"]  # the training split: ~80%
    assert [f["kind"] for f in profile["features"]] == ["numeric", "numeric", "categorical"]


# ------------------------------------------------------------------------------------------------
# On the cluster: an app that logs every request, a shifted pixel, `atoll serve drift`

SHIFTED = "px20"
APP = "digits-logged"


def _holdout() -> pd.DataFrame:
    from atoll import data
    from sklearn import datasets

    digits = datasets.load_digits()
    frame = pd.DataFrame(digits.data.astype("float32"), columns=[f"px{i}" for i in range(64)])
    frame["label"] = digits.target.astype("int64")
    return data.SplitFilter([*frame.columns], 0.2, "validation", 0)(frame)


@pytest.mark.cluster
def test_a_logged_app_writes_its_traffic_and_drift_flags_the_shifted_pixel(trained_digits, tmp_path):
    import httpx

    version = trained_digits["registered"]["version"]
    deployed = run_cli("serve", "deploy", f"digits:{version}", "--app", APP, *SMALL_APP, "--log-requests", "1",
                       "--set", "log_retention_hours=24", "--json", timeout=400)
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    url = json.loads(deployed.stdout)["url"]
    storage = os.environ["ATOLL_STORAGE"]
    try:
        rows = _holdout().drop(columns="label")
        rows[SHIFTED] = rows[SHIFTED] + 8.0
        secret = "Bearer not-a-real-key-0123456789"
        requests = 0
        with httpx.Client(timeout=30) as client:
            for start in range(0, len(rows), 12):
                answer = client.post(f"{url}/predict", json={"inputs": rows.iloc[start:start + 12].values.tolist()},
                                     headers={"Authorization": secret, "X-Private": "header-value-42"})
                assert answer.status_code == 200, answer.text
                requests += 1
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            frame = request_log.read(storage, APP)
            if len(frame) >= requests:
                break
            time.sleep(1)
        assert len(frame) == requests, (len(frame), requests)
        found = request_log.files(storage, APP)
        assert found and all(FILE.search(p) for p in found), found
        assert list(pq.read_table(found[0]).column_names) == list(request_log.COLUMNS)
        raw = b"".join(Path(p).read_bytes() for p in found)
        assert b"not-a-real-key" not in raw and b"header-value-42" not in raw
        assert set(frame["route"]) == {"/predict"} and set(frame["status"]) == {200}
        assert (frame["version"] == version).all() and (frame["latency_ms"] > 0).all()
        first = json.loads(frame["inputs"][0])
        assert len(first) == 12 and len(first[0]) == 64
        assert len(json.loads(frame["outputs"][0])["predictions"]) == 12

        plot = tmp_path / "profiles.png"
        result = run_cli("serve", "drift", APP, "--json", "--plot", str(plot), timeout=120)
        assert result.returncode == 0, result.stdout + result.stderr
        report = json.loads(result.stdout)
        assert report["flagged"] == [SHIFTED], sorted((f["psi"], f["feature"]) for f in report["features"])[-3:]
        assert report["rows"] == len(rows) and len(report["features"]) == 64
        assert plot.stat().st_size > 10_000
        table = run_cli("serve", "drift", APP, "--since", "1", timeout=120)
        assert table.returncode == 0 and SHIFTED in table.stdout and "FLAGGED" in table.stdout, table.stdout

        missing = run_cli("serve", "drift", "no-such-app", timeout=120)
        assert missing.returncode == 1 and "no Serve app 'no-such-app'" in missing.stderr
    finally:
        from atoll.serving import endpoints

        endpoints.delete(APP)
    assert request_log.files(storage, APP) == found  # the replica's last flush at shutdown wrote nothing new

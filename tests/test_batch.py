"""Batch prediction (`atoll predict`): the checks made before any work (no cluster), then real jobs on the
shared cluster over Parquet (the digits) and CSV (the text demo), against the registry's own predictions."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from atoll import api, batch, data
from atoll.errors import ConfigError, DataError
from atoll.serving.predictor import Predictor
from conftest import run_cli

SCHEMA = {"task": "tabular-classification", "input_kind": "table", "features": ["a", "b"], "num_features": 2,
          "classes": [0, 1]}


def test_a_request_is_checked_before_any_work_and_the_pool_follows_the_cluster(tmp_path):
    frame = pd.DataFrame({"id": [1, 2], "a": [0.5, 1.5], "b": [2.0, 3.0], "name": ["x", "y"]})
    frame.to_parquet(tmp_path / "in.parquet")
    out = str(tmp_path / "out.parquet")
    assert batch.check(SCHEMA, str(tmp_path / "in.parquet"), out)["keys"] == ["id", "name"]
    with pytest.raises(DataError, match=r"no column c; this model reads a, b, c \(3 columns\)"):
        batch.check({**SCHEMA, "features": ["a", "b", "c"]}, str(tmp_path / "in.parquet"), out)
    with pytest.raises(DataError, match=r"column\(s\) name \(large_string\) must be numeric"):
        batch.check({**SCHEMA, "features": ["a", "name"]}, str(tmp_path / "in.parquet"), out)
    with pytest.raises(DataError, match=r"--input .*missing.parquet: not found; name a Parquet or CSV file"):
        batch.check(SCHEMA, str(tmp_path / "missing.parquet"), out)
    with pytest.raises(ConfigError, match=r"--output .*out.csv: name a Parquet file"):
        batch.check(SCHEMA, str(tmp_path / "in.parquet"), str(tmp_path / "out.csv"))
    (tmp_path / "out.parquet").write_bytes(b"old")
    with pytest.raises(ConfigError, match="exists; choose a new name or pass --overwrite"):
        batch.check(SCHEMA, str(tmp_path / "in.parquet"), out)
    assert batch.check(SCHEMA, str(tmp_path / "in.parquet"), out, overwrite=True)["rows"] == 2
    folder = tmp_path / "parts"  # every file of a folder is checked, not only the one whose schema is read
    folder.mkdir()
    frame.to_parquet(folder / "a.parquet")
    frame.drop(columns=["b"]).to_parquet(folder / "b.parquet")
    with pytest.raises(DataError, match=r"parts/b.parquet has no column b; every file of the input must hold"):
        batch.check(SCHEMA, str(folder), out, overwrite=True)
    (folder / "b.parquet").write_bytes(b"not parquet")
    with pytest.raises(DataError, match=r"parts: cannot read it as parquet: .*parts/b.parquet"):
        batch.check(SCHEMA, str(folder), out, overwrite=True)
    assert batch.pool_size(2, 0) == (1, False) and batch.pool_size(16, 0) == (15, False)
    assert batch.pool_size(2, 0, read_here=True) == (2, False)  # no read tasks to leave a CPU for
    assert batch.pool_size(16, 4) == (4, True)
    # A Parquet input's pieces: whole row groups when there are two per actor, else runs of whole batches.
    assert batch.pieces([("f", 0, 1000), ("f", 1, 1000), ("g", 0, 1000), ("g", 1, 10)], 100, 2) == [
        {"file": "f", "row_group": 0, "first": 0, "count": 10}, {"file": "f", "row_group": 1, "first": 0, "count": 10},
        {"file": "g", "row_group": 0, "first": 0, "count": 10}, {"file": "g", "row_group": 1, "first": 0, "count": 1}]
    cut = batch.pieces([("f", 0, 1_000_000)], 65_536, 2)
    assert [(p["first"], p["count"]) for p in cut] == [(0, 4), (4, 4), (8, 4), (12, 4)]  # 16 batches, 4 pieces
    assert batch.pieces([("f", 0, 3)], 65_536, 8) == [{"file": "f", "row_group": 0, "first": 0, "count": 1}]
    texts = batch.pieces([("t", 0, 50_000)], 4096, 2)  # 13 batches: even runs, no short last piece to wait for
    assert [(p["first"], p["count"]) for p in texts] == [(0, 4), (4, 3), (7, 3), (10, 3)]
    with pytest.raises(ConfigError, match="--runtime gpu: choose auto, torch or onnx"):
        api.predict("digits:1", str(tmp_path / "in.parquet"), out, runtime="gpu")


@pytest.mark.cluster
def test_atoll_predict_writes_keys_predictions_and_probabilities_of_a_parquet_dataset(trained_digits, tmp_path):
    version = f"digits:{trained_digits['registered']['version']}"
    holdout = pd.read_parquet(data.prepare_demo(os.environ["ATOLL_STORAGE"], "digits")["holdout"])
    frame = pd.concat([holdout] * 20, ignore_index=True)  # 3,600 rows, in several batches
    frame.insert(0, "row_id", np.arange(len(frame)))
    # A long first row group and short ones after it: the actors that take the short pieces finish first, and
    # their rows must still come after the first piece's (issue 32.2: the output follows the input's order).
    table = pa.Table.from_pandas(frame, preserve_index=False)
    with pq.ParquetWriter(tmp_path / "rows.parquet", table.schema) as writer:
        writer.write_table(table.slice(0, 2400))
        for start in range(2400, len(frame), 200):
            writer.write_table(table.slice(start, 200))
    assert pq.ParquetFile(tmp_path / "rows.parquet").metadata.num_row_groups == 7
    out = tmp_path / "predictions" / "digits.parquet"
    result = run_cli("predict", version, "--input", str(tmp_path / "rows.parquet"), "--output", str(out),
                     "--batch-size", "500", "--json", timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    predicted = json.loads(result.stdout)["predicted"]
    assert predicted["rows"] == len(frame) and predicted["keys"] == ["row_id", "label"] and predicted["actors"] >= 1
    written = pq.read_table(out).to_pandas()  # as written: no sorting by the key
    assert list(written.columns) == ["row_id", "label", "prediction", "probabilities"]
    assert written["row_id"].tolist() == list(range(len(frame)))
    features = [c for c in holdout.columns if c != "label"]
    assert predicted["runtime"] == "onnx"  # auto: a table runs on the version's exported file, no model code
    expected, probs = Predictor(os.environ["ATOLL_STORAGE"], version, runtime="onnx").predict(
        frame[features].to_numpy(dtype=np.float32))
    assert written["prediction"].tolist() == expected
    assert np.allclose(np.stack(written["probabilities"].to_numpy()), probs, atol=1e-6)
    assert not [p for p in out.parent.iterdir() if p.name != out.name]  # no temporary file left

    again = run_cli("predict", version, "--input", str(tmp_path / "rows.parquet"), "--output", str(out))
    assert again.returncode != 0 and "exists; choose a new name or pass --overwrite" in again.stderr
    for args, message in ((["digits:999"], "model 'digits' has no version 999"),
                          ([version, "--input", str(tmp_path / "nope.parquet")], "nope.parquet"),):
        bad = run_cli("predict", *args, *(["--input", str(tmp_path / "rows.parquet")] if len(args) == 1 else []),
                      "--output", str(tmp_path / "x.parquet"))
        assert bad.returncode != 0 and message in bad.stderr and "Traceback" not in bad.stderr, bad.stderr
        assert bad.stderr.count("\n") <= 2 and "Submitted" not in bad.stderr  # refused before any job


@pytest.mark.cluster
def test_atoll_predict_reads_a_csv_of_texts(trained_text, tmp_path):
    version = f"sms-spam:{trained_text['registered']['version']}"
    texts = pd.DataFrame({"message_id": ["a", "b", "c"], "text": [
        "WINNER!! You have won a free prize, call 09061701461 to claim now", "Are we still on for lunch?",
        "ok see you there"]})
    texts.to_csv(tmp_path / "texts.csv", index=False)
    out = tmp_path / "spam.parquet"
    result = run_cli("predict", version, "-i", str(tmp_path / "texts.csv"), "-o", str(out), "--json", timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert json.loads(result.stdout)["predicted"]["runtime"] == "onnx"  # auto on CPU: no torch in the actors
    written = pq.read_table(out).to_pandas()
    expected, _ = Predictor(os.environ["ATOLL_STORAGE"], version).predict(texts["text"].tolist())
    assert written["message_id"].tolist() == ["a", "b", "c"] and written["prediction"].tolist() == expected
    assert expected[0] == "spam"


def test_a_large_batch_of_texts_runs_by_length_and_answers_as_one_call_at_full_length(trained_text):
    version = f"sms-spam:{trained_text['registered']['version']}"
    words = "free prize call now to claim your reward we are still on for lunch see you there".split()
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(words, size=int(n))) for n in rng.integers(1, 80, size=600)]  # some cut to fit
    for runtime in ("torch", "onnx"):
        predictor = Predictor(os.environ["ATOLL_STORAGE"], version, runtime=runtime)
        assert len(texts) > predictor.BUCKET_ROWS
        ids = predictor.task.encode(texts, predictor.pre)
        bucketed, whole = predictor.outputs(texts), predictor._run(ids)
        assert bucketed.shape == whole.shape == (600, 2)
        np.testing.assert_allclose(bucketed, whole, atol=1e-4)

"""Real tables: words, yes/no columns and gaps, from the column kinds through the Preprocessor, requests, the
profile and the demo table (no cluster), then one end-to-end run on the session's cluster: train a small MLP on
a generated mixed table, register, serve, query by feature name with a word, a null and an unseen level, and
`atoll predict` a raw CSV with words and gaps."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest
from atoll import data, tables, tasks
from atoll.config import load_file
from atoll.errors import DataError, RequestError
from atoll.serving import protocols
from atoll.serving.replica import parse_payload
from atoll.specs import TrainSpec
from conftest import REPO, invoke, run_cli

CITIES = ["Lisbon", "Porto", "Faro", "Braga"]


def mixed_frame(n: int = 400, seed: int = 0) -> pd.DataFrame:
    """A customers-like table: a city (words, with gaps and one rare city), a plan (words), a yes/no column, an
    age (gaps), a balance in cents with a large offset, a zip code (integers meant as categories), a label
    that depends on them, a few rows without a label."""
    rng = np.random.default_rng(seed)
    city = rng.choice(CITIES, n, p=[0.4, 0.3, 0.2, 0.1]).astype(object)
    city[::17] = None
    city[5] = "Évora"  # one row: too rare to learn, pooled into "other"
    plan = rng.choice(["gold plan", "basic", "self-employed"], n)
    member = rng.random(n) < 0.5
    age = rng.normal(45, 12, n)
    age[::9] = np.nan
    balance = 1_700_000_000 + rng.normal(0, 50, n)  # cents, offset far beyond its spread
    zip_code = rng.choice([1000, 4000, 8000], n)
    score = (city == "Lisbon") * 1.5 + (plan == "gold plan") * 1.0 + member * 0.8 + np.nan_to_num(age - 45) / 12
    label = np.where(score > 1.2, "churn", "stay").astype(object)
    label[::23] = None
    return pd.DataFrame({"customer_id": np.arange(n), "city": city, "plan": plan, "member": member, "age": age,
                         "balance": balance, "zip": zip_code, "label": label})


class FakeDs:
    """A Ray Dataset's two calls the fitting uses (map_batches, take_all), over pandas batches of 100 rows."""

    def __init__(self, frame: pd.DataFrame, rows: int = 100):
        self.frame, self.rows = frame, rows

    def map_batches(self, fn, batch_format):
        self.parts = [fn(self.frame.iloc[i:i + self.rows]) for i in range(0, len(self.frame), self.rows)]
        return self

    def take_all(self):
        return [p.iloc[0].to_dict() for p in self.parts]


@pytest.fixture
def table(tmp_path):
    frame = mixed_frame()
    frame.to_parquet(tmp_path / "t.parquet")
    return tmp_path / "t.parquet", frame


@pytest.fixture
def fitted(table):
    path, frame = table
    plan = data.plan(str(path), "auto", None, "label", categorical=["zip"], exclude=["customer_id"])
    return plan, data.fit_preprocessor(FakeDs(frame), plan), frame


# ------------------------------------------------------------------------------------------------
# 1. Column kinds


def test_kinds_are_inferred_from_the_columns_types_and_overridden_by_the_spec(tmp_path, table):
    path, frame = table
    plan = data.plan(str(path), "auto", None, "label")
    assert plan.kinds == {"customer_id": "numeric", "city": "categorical", "plan": "categorical",
                          "member": "categorical", "age": "numeric", "balance": "numeric", "zip": "numeric"}
    forced = data.plan(str(path), "auto", None, "label", categorical=["zip"], numeric=["member"],
                       exclude=["customer_id"])
    assert "customer_id" not in forced.features
    assert (forced.kinds["zip"], forced.kinds["member"]) == ("categorical", "numeric")
    # pandas categoricals (Arrow dictionaries) are categories too; a CSV's NA in a word column is a gap
    frame.assign(plan=frame["plan"].astype("category")).to_parquet(tmp_path / "cat.parquet")
    assert data.plan(str(tmp_path / "cat.parquet"), "auto", None, "label").kinds["plan"] == "categorical"
    frame.to_csv(tmp_path / "t.csv", index=False, na_rep="NA")
    csv = data.plan(str(tmp_path / "t.csv"), "auto", None, "label")
    assert csv.kinds["city"] == "categorical" and csv.kinds["age"] == "numeric"
    assert data.profile_path(str(tmp_path / "t.csv"), "label")["columns"][1]["missing"] == pytest.approx(
        frame["city"].isna().mean(), abs=1e-4)
    with pytest.raises(DataError, match=r"dataset.exclude names column\(s\) custmer_id that do not exist "
                                        r"\(did you mean 'customer_id'\?\)"):
        data.plan(str(path), "auto", None, "label", exclude=["custmer_id"])
    pd.DataFrame({"when": pd.to_datetime(["2024-01-01"] * 3), "label": [1, 2, 3]}).to_parquet(tmp_path / "d.parquet")
    with pytest.raises(DataError, match=r"when \(timestamp\[.*\]\) is neither numbers nor words; leave it out with "
                                        r"dataset.exclude: \[when\]"):
        data.plan(str(tmp_path / "d.parquet"), "auto", None, "label")


@pytest.mark.parametrize("dataset,message", [
    ({"categorical": ["a"], "numeric": ["a"]}, "a listed in both categorical and numeric"),
    ({"exclude": ["label"]}, "exclude lists the label 'label'"),
    ({"features": ["a", "b"], "exclude": ["b"]}, "b both in features and in exclude"),
    ({"categorical": "a"}, "categorical"),
])
def test_the_spec_refuses_contradictory_column_choices_in_one_line(tmp_path, dataset, message):
    spec = {"name": "t", "dataset": {"path": "demo:penguins", **dataset}}
    with pytest.raises(Exception, match=message):
        TrainSpec.model_validate(spec)
    with pytest.raises(Exception, match=r"dataset.categorical: column kinds are for tables"):
        TrainSpec.model_validate({"name": "t", "task": "text-classification",
                                  "dataset": {"path": "demo:sms_spam", "categorical": ["x"]}})


# ------------------------------------------------------------------------------------------------
# 2-3. Gaps, levels, the encoding


def test_large_offsets_are_standardised_stably_where_the_naive_formula_cancels():
    rng = np.random.default_rng(1)
    x = 1_700_000_000.0 + rng.normal(0, 1.0, 100_000)  # epoch seconds, spread 1 s
    moments = {"n": 0}
    for i in range(0, len(x), 1000):
        moments = tables.merge_moments(moments, tables._moments(x[i:i + 1000]))
    assert moments["n"] == len(x)
    assert np.sqrt(moments["m2"] / moments["n"]) == pytest.approx(x.std(), rel=1e-9)
    assert moments["mean"] == pytest.approx(x.mean(), rel=1e-15)
    naive = np.sqrt(max((x * x).mean() - x.mean() ** 2, 0.0))  # what Atoll did before: off by far more than 1%
    assert abs(naive - x.std()) / x.std() > 0.05


def test_the_preprocessor_encodes_words_gaps_and_rare_levels_into_one_float_vector(fitted):
    plan, pre, frame = fitted
    columns = {c["name"]: c for c in pre.columns}
    assert columns["city"]["levels"] == ["Lisbon", "Porto", "Faro", "Braga"]  # Évora (1 row) pooled
    assert columns["city"]["pooled"] == 1 and not columns["city"]["hashed"]
    assert columns["member"]["levels"] == ["false", "true"] or columns["member"]["levels"] == ["true", "false"]
    assert columns["zip"]["levels"] and set(columns["zip"]["levels"]) == {"1000", "4000", "8000"}
    assert columns["age"]["indicator"] and not columns["balance"]["indicator"]  # an indicator where training had gaps
    # the width: city 4+2, plan 3+2, member 2+2, age 1+1, balance 1, zip 3+2
    assert pre.input_dim == 6 + 5 + 4 + 2 + 1 + 5 == len(pre.encoded_names())
    assert pre.report["unlabelled_rows"] == frame["label"].isna().sum()
    out = pre(frame)
    labelled = frame[frame["label"].notna()]
    assert out["x"].shape == (len(labelled), pre.input_dim) and out["x"].dtype == np.float32
    assert np.isfinite(out["x"]).all()
    names = pre.encoded_names()
    x = pd.DataFrame(out["x"], columns=names)
    assert (x.filter(like="city").sum(axis=1) == 1).all()  # exactly one input per category is on
    assert x["city:missing"].sum() == labelled["city"].isna().sum()
    assert x["city:other"].sum() == (labelled["city"] == "Évora").sum()
    assert x["age:missing"].sum() == labelled["age"].isna().sum()
    assert abs(x["balance"].mean()) < 0.1 and 0.8 < x["balance"].std() < 1.2  # standardised despite the offset
    assert data.Preprocessor.from_dict(json.loads(json.dumps(pre.to_dict()))) == pre
    # an unseen level and a gap at serve time: "other" and "missing", never an error
    encoded, unseen = pre.transform_with_unseen(pd.DataFrame(
        [{"city": "Berlin", "plan": None, "member": "True", "age": None, "balance": 1.7e9, "zip": 1000}])[pre.features])
    row = dict(zip(names, encoded[0], strict=True))
    assert (row["city:other"], row["plan:missing"], row["member=true"], row["age:missing"], row["zip=1000"]) == (1, 1, 1, 1, 1)
    assert row["age"] == 0.0  # the gap takes the mean: 0 once standardised
    assert unseen[0].tolist() == [f == "city" for f in pre.features]


def test_many_levels_are_hashed_into_a_fixed_number_of_inputs():
    n = 6 * 50
    frame = pd.DataFrame({"shop": [f"shop-{i % 50}" for i in range(n)], "x": np.arange(n, dtype=float),
                          "label": [i % 2 for i in range(n)]})
    plan = data.DatasetPlan("x", "parquet", ["shop", "x"], "label", n, "fp", kinds={"shop": "categorical", "x": "numeric"})
    pre = data.fit_preprocessor(FakeDs(frame), plan)
    shop = pre.columns[0]
    assert len(shop["levels"]) == 50 > tables.MAX_ONE_HOT and shop["hashed"]
    assert pre.input_dim == tables.HASH_BUCKETS + 2 + 1
    x = pre.transform_features(frame[["shop", "x"]])
    first = x[:, :tables.HASH_BUCKETS + 2]
    assert (first.sum(axis=1) == 1).all() and first[:, tables.HASH_BUCKETS:].sum() == 0  # every shop in a bucket
    assert np.flatnonzero(first[0])[0] == tables.bucket("shop-0")  # CRC-32: the same in any process


def test_rows_without_a_label_and_a_class_only_in_validation_are_left_out_and_counted():
    frame = pd.DataFrame({"a": np.arange(40, dtype=float), "label": ["x", "y"] * 19 + ["solo", None]})
    plan = data.DatasetPlan("x", "parquet", ["a"], "label", 40, "fp", kinds={"a": "numeric"})
    pre = data.fit_preprocessor(FakeDs(frame), plan)
    assert pre.classes == ["solo", "x", "y"]  # a class with one row is a class
    assert pre.report["unlabelled_rows"] == 1
    solo = [e for e in pre.report["profile"] if e["column"] == "label"][0]
    assert any("class under 5 rows: solo (1)" in w for w in solo["warnings"])
    val = pd.DataFrame({"a": [1.0, 2.0, 3.0, 4.0], "label": ["x", "new", "new", None]})
    found = data.check_validation(FakeDs(val), pre)
    assert found == {"validation_rows": 4, "validation_unlabelled_rows": 1, "validation_only_classes": {"new": 2}}
    out = pre(val)  # no error: the rows the model cannot score are left out
    assert out["y"].tolist() == [pre.classes.index("x")] and pre.report["validation_only_classes"] == {"new": 2}


def test_a_numeric_only_table_encodes_as_before_and_takes_nulls():
    frame = pd.DataFrame({"a": [1.0, 2.0, 3.0, 4.0], "b": [10.0, 10.0, 10.0, 10.0], "label": [0, 1, 0, 1]})
    plan = data.DatasetPlan("x", "parquet", ["a", "b"], "label", 4, "fp")
    pre = data.fit_preprocessor(FakeDs(frame), plan)
    assert pre.plain and pre.input_dim == 2 and pre.std[1] == 1.0
    legacy = data.Preprocessor(["a", "b"], "label", pre.mean, pre.std, pre.classes)  # a version from before
    assert np.array_equal(legacy.transform_features(frame[["a", "b"]].to_numpy()),
                          pre.transform_features(frame[["a", "b"]].to_numpy()))
    task = tasks.get("tabular-classification")
    schema = task.input_schema(legacy, {"type": "mlp"})
    rows = task.parse_inputs({"inputs": [[1.0, None], {"a": 2, "b": 3}.values() and [2, 3]]}, schema)
    assert rows.dtype == np.float32 and np.isnan(rows[0, 1]) and rows[1].tolist() == [2.0, 3.0]
    assert task.encode(rows, legacy)[0, 1] == 0.0  # a gap takes the mean
    with pytest.raises(RequestError, match=r"inputs.0.1: Input should be a valid number"):
        task.parse_inputs({"inputs": [[1.0, "7"]]}, schema)


# ------------------------------------------------------------------------------------------------
# 4. Requests


def test_a_request_holds_words_and_nulls_and_says_which_levels_were_unseen(fitted):
    _, pre, _ = fitted
    task = tasks.get("tabular-classification")
    schema = task.input_schema(pre, {"type": "mlp"})
    assert schema["dtype"] == "mixed" and schema["num_features"] == 6 and schema["input_dim"] == pre.input_dim
    city = schema["columns"][pre.features.index("city")]
    assert (city["kind"], city["levels"][0], city["nullable"]) == ("categorical", "Lisbon", True)
    assert schema["columns"][pre.features.index("age")]["missing_indicator"] is True
    named = {"city": "Berlin", "plan": "basic", "member": True, "age": None, "balance": 1.7e9, "zip": 4000}
    positional = [named[f] for f in pre.features]
    rows = task.parse_inputs({"inputs": [named, {**named, "city": "Lisbon", "plan": "unheard-of"}]}, schema)
    assert rows.dtype == object and np.isnan(rows[0, pre.features.index("age")])
    encoded, notes = task.encode_with_notes(rows, pre)
    assert encoded.shape == (2, pre.input_dim)
    assert notes == {"unseen": {"0": ["city"], "1": ["plan"]}}
    again, _ = task.encode_with_notes(task.parse_inputs({"inputs": [positional]}, schema), pre)
    assert np.array_equal(again[0], encoded[0])  # positional and by name: one encoding
    for row, message in (({**named, "age": "old"}, r'inputs.0.age: "old" is not a valid number; age is a numeric'),
                         ({**named, "balance": True}, r"inputs.0.balance: true is not a valid number"),
                         ({**named, "age": 1e39}, r"inputs.0.age: 1e\+39 is out of range"),
                         ({k: v for k, v in named.items() if k != "zip"}, r"inputs.0: missing zip"),
                         ({**named, "city": ["x"]}, r"inputs.0.city: must be a number, a word or null")):
        with pytest.raises(RequestError, match=message) as caught:
            task.parse_inputs({"inputs": [row]}, schema)
        assert caught.value.status == 422
    body = task.request_schema(schema, 10)["properties"]["inputs"]["items"]["anyOf"][1]["properties"]
    assert body["age"] == {"type": ["number", "null"], "title": "age"}
    assert body["city"]["anyOf"][0] == {"type": "string", "enum": ["Lisbon", "Porto", "Faro", "Braga"]}
    assert {"type": "null"} in body["city"]["anyOf"]


def test_the_standard_protocols_carry_words_and_blanks(fitted):
    _, pre, _ = fitted
    schema = tasks.get("tabular-classification").input_schema(pre, {"type": "mlp"})
    split = {"dataframe_split": {"columns": pre.features,
                                 "data": [["Porto", "basic", False, None, 1.7e9, 8000]]}}
    rows = parse_payload(protocols.mlflow_request(json.dumps(split).encode(), "application/json", schema), schema,
                         max_rows=10)
    assert rows[0, 0] == "Porto" and np.isnan(rows[0, pre.features.index("age")])
    csv = ",".join(pre.features) + "\nFaro,gold plan,true,,1700000000,1000\n"
    rows = parse_payload(protocols.mlflow_request(csv.encode(), "text/csv", schema), schema, max_rows=10)
    encoded = pre.transform_features(rows)
    names = pre.encoded_names()
    assert encoded[0, names.index("city=Faro")] == 1 and encoded[0, names.index("age:missing")] == 1
    assert encoded[0, names.index("zip=1000")] == 1 and encoded[0, names.index("member=true")] == 1


def test_batch_prediction_encodes_a_raw_frame_as_training_did(fitted, tmp_path):
    from atoll import batch

    _, pre, frame = fitted
    task = tasks.get("tabular-classification")
    schema = task.input_schema(pre, {"type": "mlp"})
    labelled = frame[frame["label"].notna()]
    inputs = task.frame_inputs(labelled[pre.features], schema)
    assert np.array_equal(task.encode(inputs, pre), pre(labelled)["x"])
    frame.to_csv(tmp_path / "raw.csv", index=False)
    checked = batch.check(schema, str(tmp_path / "raw.csv"), str(tmp_path / "out.parquet"))
    assert checked["keys"] == ["customer_id", "label"]


# ------------------------------------------------------------------------------------------------
# 5. The profile


def test_the_profile_flags_constant_id_like_columns_and_small_classes(tmp_path):
    frame = mixed_frame(200).assign(country="PT", label=["a"] * 197 + ["b"] * 3)
    frame.to_parquet(tmp_path / "p.parquet")
    found = data.profile_path(str(tmp_path / "p.parquet"), "label")
    by = {e["column"]: e for e in found["columns"]}
    assert found["rows"] == 200 and list(by)[-1] == "label"
    assert "constant" in by["country"]["warnings"]
    assert any(w.startswith("id-like") for w in by["customer_id"]["warnings"])
    assert not by["zip"]["warnings"] and by["zip"]["kind"] == "numeric"
    assert by["city"]["missing"] == pytest.approx(frame["city"].isna().mean(), abs=1e-4) and by["city"]["levels"] == 5
    assert by["label"]["warnings"] == ["class under 5 rows: b (3)"]
    text = tables.format_profile(found["columns"])
    assert "city" in text and "[constant]" in text
    result = invoke("data", "profile", str(tmp_path / "p.parquet"), "--exclude", "customer_id", "--json")
    assert result.exit_code == 0, result.output
    printed = json.loads(result.output)
    assert [e["column"] for e in printed["columns"]][:2] == ["city", "plan"]
    table = invoke("data", "profile", str(tmp_path / "p.parquet"))
    assert table.exit_code == 0 and "id-like" in table.output and "categorical" in table.output
    missing = invoke("data", "profile", str(tmp_path / "p.parquet"), "--exclude", "nope")
    assert isinstance(missing.exception, DataError) and "--exclude names column(s) nope" in str(missing.exception)


# ------------------------------------------------------------------------------------------------
# 6. The demo table


def test_the_penguins_demo_ships_with_words_and_gaps_and_its_spec_loads(tmp_path):
    paths = data.prepare_demo(str(tmp_path), "penguins")
    train, held = pd.read_parquet(paths["train"]), pd.read_parquet(paths["holdout"])
    assert len(train) + len(held) == 344 and len(held) == 34
    both = pd.concat([train, held])
    assert both["sex"].isna().sum() == 11 and both["body_mass_g"].isna().sum() == 2
    spec = load_file(TrainSpec, REPO / "jobs" / "configs" / "penguins.yaml")
    assert (spec.dataset.label, spec.dataset.categorical) == ("species", ["year"])
    plan = data.plan(paths["train"], "auto", None, "species", **spec.dataset.overrides())
    assert plan.kinds == {"island": "categorical", "bill_length_mm": "numeric", "bill_depth_mm": "numeric",
                          "flipper_length_mm": "numeric", "body_mass_g": "numeric", "sex": "categorical",
                          "year": "categorical"}
    pre = data.fit_preprocessor(FakeDs(train), plan)
    assert pre.input_dim == 5 + 4 * 2 + 4 + 5 and sorted(pre.classes) == ["Adelie", "Chinstrap", "Gentoo"]


# ------------------------------------------------------------------------------------------------
# End to end, on the session's cluster


#: The model section and rounds/epochs of each model type the mixed table is trained with.
MODELS = {"mlp": "model: {type: mlp, params: {hidden: [16]}}\nepochs: 2\nbatch_size: 32\n",
          "xgboost": "model: {type: xgboost, params: {max_depth: 3}}\nepochs: 10\n"}


@pytest.mark.cluster
@pytest.mark.parametrize("model", sorted(MODELS))
def test_a_mixed_table_trains_serves_by_name_and_batch_predicts_a_raw_csv(ray_cluster, tmp_path, model):
    import httpx
    from atoll.serving import endpoints

    frame = mixed_frame(600, seed=3)
    frame.to_csv(tmp_path / "customers.csv", index=False)  # gaps as empty cells
    (tmp_path / "churn.yaml").write_text(
        f"name: churn\ndataset:\n  path: {tmp_path / 'customers.csv'}\n  label: label\n  categorical: [zip]\n"
        f"  exclude: [customer_id]\n{MODELS[model]}num_workers: 1\n")
    trained = run_cli("train", str(tmp_path / "churn.yaml"), "--run-name", f"t-churn-{model}", "--json",
                      timeout=600)
    assert trained.returncode == 0, trained.stdout[-3000:] + trained.stderr[-3000:]
    out = json.loads(trained.stdout)
    version = out["registered"]["version"]
    ref = f"churn:{version}"
    from atoll import registry

    mv = registry.Registry(os.environ["ATOLL_STORAGE"]).get(ref)
    schema = mv.input_schema
    assert schema["dtype"] == "mixed" and [c["kind"] for c in schema["columns"]] == [
        "categorical", "categorical", "categorical", "numeric", "numeric", "categorical"]
    assert schema["data"]["unlabelled_rows"] + schema["data"]["validation_unlabelled_rows"] == frame["label"].isna().sum()
    assert mv.lineage["unlabelled_rows_dropped"] == frame["label"].isna().sum()
    assert {e["column"] for e in schema["data"]["profile"]} >= {"city", "age", "label"}
    onnx = mv.exports["onnx"]  # the encoded vector goes in; checked on held-out rows with words and gaps
    assert onnx.get("file") == "model.onnx" and onnx["examples"] > 0 and onnx["max_abs_diff"] < 1e-4

    app = f"churn-{model}"
    deployed = run_cli("serve", "deploy", ref, "--app", app, "--replicas", "1:1", "--set",
                       "num_cpus_per_replica=0.1", "--json", timeout=400)
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    url = json.loads(deployed.stdout)["url"]
    try:
        row = {"city": "Lisbon", "plan": "gold plan", "member": True, "age": None, "balance": 1.7e9, "zip": 1000}
        answer = httpx.post(f"{url}/predict", json={"inputs": [row, {**row, "city": "Atlantis", "member": None}]},
                            timeout=30)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert len(body["predictions"]) == 2 and set(body["predictions"]) <= {"churn", "stay"}
        assert body["unseen"] == {"1": ["city"]}
        bad = httpx.post(f"{url}/predict", json={"inputs": [{**row, "age": "forty"}]}, timeout=30)
        assert bad.status_code == 422 and "inputs.0.age" in bad.text
        split = {"dataframe_split": {"columns": list(row), "data": [list(row.values())]}}
        mlflow = httpx.post(f"{url}/invocations", json=split, timeout=30)
        assert mlflow.status_code == 200 and mlflow.json()["predictions"] == body["predictions"][:1]
        openapi = httpx.get(f"{url}/openapi.json", timeout=30).text
        assert "gold plan" in openapi  # the levels in the request's schema
    finally:
        endpoints.delete(app)

    raw = frame.drop(columns=["label"]).iloc[:200]
    raw.to_csv(tmp_path / "raw.csv", index=False)
    predicted = tmp_path / "predicted.parquet"
    result = run_cli("predict", ref, "--input", str(tmp_path / "raw.csv"), "--output", str(predicted), "--json",
                     timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    written = pd.read_parquet(predicted)
    assert written["customer_id"].tolist() == raw["customer_id"].tolist()  # the input's order, its keys kept
    assert set(written["prediction"]) <= {"churn", "stay"} and len(written) == 200

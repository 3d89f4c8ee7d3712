"""The standard protocols beside /predict: the Open Inference Protocol v2 (driven by Triton's own unmodified
`tritonclient.http`, which sends binary tensors by default) and MLflow's scoring protocol (plain HTTP, the
bodies MLflow documents). Units translate bodies without a cluster; the rest talk to the session's apps."""

from __future__ import annotations

import io
import json
import os

import httpx
import numpy as np
import pandas as pd
import pytest
import tritonclient.http as triton
from atoll import data
from atoll.errors import RequestError
from atoll.serving import protocols
from atoll.serving.replica import parse_payload

TABLE = {"task": "tabular-classification", "input_kind": "table", "output_kind": "labels",
         "features": ["a", "b", "c"], "num_features": 3, "classes": [0, 1], "label": "y"}
TEXT = {"task": "text-classification", "input_kind": "text", "output_kind": "labels", "features": ["text"],
        "num_features": 1, "classes": ["ham", "spam"], "label": "label", "max_length": 8}
IMAGE = {"task": "image-classification", "input_kind": "image", "output_kind": "labels", "features": ["image"],
         "image_shape": [1, 8, 8], "classes": list(range(10)), "label": "label"}
VALUE = {**TABLE, "task": "tabular-regression", "output_kind": "number", "classes": []}
#: a table with words (a penguins-like schema): one tensor per feature column
MIXED = {"task": "tabular-classification", "input_kind": "table", "output_kind": "labels", "dtype": "mixed",
         "features": ["island", "mass", "year"], "num_features": 3, "classes": ["Adelie", "Gentoo"], "label": "species",
         "columns": [{"name": "island", "kind": "categorical", "nullable": True, "levels": ["Biscoe", "Dream"]},
                     {"name": "mass", "kind": "numeric", "nullable": True, "range": [2700.0, 6300.0]},
                     {"name": "year", "kind": "categorical", "nullable": True, "levels": ["2007", "2008"]}]}


def _triton_body(*inputs, outputs=None):
    body, json_size = triton.InferenceServerClient.generate_request_body(list(inputs), outputs=outputs)
    return body, None if json_size is None else str(json_size)


def test_triton_binary_and_json_tensors_become_the_tasks_request_and_the_answer_reads_back():
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    rows = triton.InferInput("inputs", [2, 3], "FP32")
    rows.set_data_from_numpy(x)  # binary by default, as the client sends it
    body, header = _triton_body(rows)
    assert header is not None  # the binary extension
    payload, wanted, _ = protocols.oip_request(body, header, TABLE)
    assert payload == {"inputs": x.tolist()} and wanted.names is None and wanted.binary_default
    as_json = triton.InferInput("inputs", [2, 3], "FP32")
    as_json.set_data_from_numpy(x, binary_data=False)
    assert protocols.oip_request(*_triton_body(as_json), TABLE)[0] == payload

    texts = triton.InferInput("inputs", [2], "BYTES")
    texts.set_data_from_numpy(np.array(["free prize", "see you soon"], dtype=object))
    assert protocols.oip_request(*_triton_body(texts), TEXT)[0] == {"inputs": ["free prize", "see you soon"]}
    pixels = triton.InferInput("inputs", [1, 8, 8], "UINT8")
    pixels.set_data_from_numpy(np.full((1, 8, 8), 200, dtype=np.uint8))
    assert protocols.oip_request(*_triton_body(pixels), IMAGE)[0] == {"inputs": [[[200] * 8] * 8]}

    wanted = protocols.Outputs(names=None, binary_default=True)
    answer, headers = protocols.oip_response([1, 0], [[0.25, 0.75], [0.9, 0.1]], name="m", version=3, schema=TABLE,
                                             wanted=wanted, request_id="r1")
    result = triton.InferenceServerClient.parse_response_body(answer, header_length=int(headers[protocols.HEADER_LENGTH]))
    assert result.as_numpy("predictions").tolist() == [1, 0] and result.get_response()["id"] == "r1"
    assert np.allclose(result.as_numpy("probabilities"), [[0.25, 0.75], [0.9, 0.1]])
    labels, headers = protocols.oip_response(["spam"], [[0.2, 0.8]], name="t", version=1, schema=TEXT,
                                             wanted=protocols.Outputs(names=["predictions"], binary={"predictions": True}),
                                             request_id=None)
    parsed = triton.InferenceServerClient.parse_response_body(labels, header_length=int(headers[protocols.HEADER_LENGTH]))
    assert parsed.as_numpy("predictions").tolist() == [b"spam"] and parsed.as_numpy("probabilities") is None
    plain, headers = protocols.oip_response([12.5], None, name="r", version=1, schema=VALUE, wanted=protocols.Outputs(),
                                            request_id=None)
    assert headers["content-type"] == "application/json"
    assert json.loads(plain)["outputs"] == [{"name": "predictions", "datatype": "FP32", "shape": [1], "data": [12.5]}]
    meta = protocols.metadata("digits", 4, IMAGE)
    assert meta["inputs"] == [{"name": "inputs", "datatype": "UINT8", "shape": [-1, 8, 8]}]
    assert [o["name"] for o in meta["outputs"]] == ["predictions", "probabilities"]
    assert protocols.metadata("r", 1, VALUE)["outputs"] == [{"name": "predictions", "datatype": "FP32", "shape": [-1]}]


def _columns(*columns: tuple[str, str, np.ndarray], binary: bool = True):
    tensors = []
    for name, datatype, values in columns:
        tensor = triton.InferInput(name, list(values.shape), datatype)
        tensor.set_data_from_numpy(values, binary_data=binary)
        tensors.append(tensor)
    return _triton_body(*tensors)


def test_a_mixed_table_takes_one_tensor_per_column_with_words_and_gaps():
    meta = protocols.metadata("penguins", 2, MIXED)
    assert [(i["name"], i["datatype"], i["shape"]) for i in meta["inputs"]] == [
        ("island", "BYTES", [-1]), ("mass", "FP32", [-1]), ("year", "BYTES", [-1])]
    assert meta["inputs"][0]["parameters"] == {"kind": "categorical", "levels": ["Biscoe", "Dream"], "nullable": True}
    assert meta["inputs"][1]["parameters"]["range"] == [2700.0, 6300.0]
    expected = [{"island": "Dream", "mass": 4100.0, "year": 2007}, {"island": None, "mass": None, "year": 2008},
                {"island": "Atlantis", "mass": 3650.5, "year": 2009}]
    for binary in (True, False):  # Triton's client: binary tensors by default, JSON on request
        body, header = _columns(("island", "BYTES", np.array(["Dream", "", "Atlantis"], dtype=object)),  # "": a gap
                                ("mass", "FP32", np.array([4100, np.nan, 3650.5], dtype=np.float32)),  # NaN: a gap
                                ("year", "INT64", np.array([[2007], [2008], [2009]])), binary=binary)  # [n, 1]
        payload = protocols.oip_request(body, header, MIXED)[0]
        assert payload == {"inputs": expected}, binary
    rows = parse_payload(payload, MIXED, max_rows=10)
    assert rows[0].tolist()[0] == "Dream" and rows[1, 0] is None and np.isnan(rows[1, 1])
    # plain JSON, in any order, with nulls; the words of a column of integer-coded levels
    body = {"inputs": [{"name": "year", "shape": [2], "datatype": "BYTES", "data": ["2008", None]},
                       {"name": "mass", "shape": [2], "datatype": "FP64", "data": [None, 5000]},
                       {"name": "island", "shape": [2, 1], "datatype": "BYTES", "data": [["Biscoe"], [None]]}]}
    assert protocols.oip_request(json.dumps(body).encode(), None, MIXED)[0] == {"inputs": [
        {"island": "Biscoe", "mass": None, "year": "2008"}, {"island": None, "mass": 5000, "year": None}]}
    # a numeric table keeps its one FP32 tensor, and takes its columns by name too
    assert protocols.metadata("t", 1, TABLE)["inputs"] == [{"name": "inputs", "datatype": "FP32", "shape": [-1, 3]}]
    by_name = _columns(*((n, "FP32", np.array([i, np.nan], dtype=np.float32)) for i, n in enumerate(TABLE["features"])))
    assert protocols.oip_request(*by_name, TABLE)[0] == {"inputs": [{"a": 0.0, "b": 1.0, "c": 2.0},
                                                                    {"a": None, "b": None, "c": None}]}


def _column(name, datatype, data, shape=None):
    return {"name": name, "datatype": datatype, "shape": shape or [len(data)], "data": data}


@pytest.mark.parametrize(("inputs", "message"), [
    ([_column("inputs", "FP32", [1, 2, 3], [1, 3])], "inputs.0.name: 'inputs'; a table with categorical features "
                                                     "takes one tensor per feature column (island BYTES, mass FP32"),
    ([_column("islnd", "BYTES", ["Dream"])], "inputs.0.name: 'islnd' is not a feature of this model (did you mean "
                                              "'island'?)"),
    ([_column("island", "BYTES", ["Dream"]), _column("island", "BYTES", ["Dream"])], "'island' appears twice"),
    ([_column("island", "BYTES", ["Dream"])], "inputs: no tensor for mass, year"),
    ([_column("mass", "BYTES", ["heavy"])], "inputs.0.datatype: BYTES; mass is a numeric feature: send FP32"),
    ([_column("mass", "BOOL", [True])], "mass is a numeric feature"),
    ([_column("mass", "FP32", ["4100"])], 'inputs.0.data: "4100" is not a number; a FP32 column holds numbers'),
    ([_column("island", "BYTES", [1.5])], "inputs.0.data: 1 strings (or nulls) for shape [1]"),
    ([_column("year", "INT64", [2007.5])], "not all INT64 numbers (integers within its range, or nulls)"),
    ([_column("island", "BYTES", ["Dream"] * 4, [2, 2])], "inputs.0.shape: [2, 2]; a feature column is [n] (or [n, 1])"),
    ([_column("island", "BYTES", ["Dream", "Biscoe"]), _column("mass", "FP32", [1.0]), _column("year", "BYTES", ["2007"])],
     "the feature columns hold different numbers of rows (island 2, mass 1, year 1)"),
    ([_column("island", "BYTES", ["\ud800"])], "inputs.0: an element is not valid UTF-8"),
    ([_column("mass", "FP32", [1e39]), _column("island", "BYTES", ["Dream"]), _column("year", "BYTES", ["2007"])],
     "inputs.0.mass: 1e+39 is out of range"),
    ([_column("mass", "FP32", ["x"]) | {"shape": [-1]}], "inputs.0.shape: a list of 1 to 8 sizes of at least 1"),
    ([3], "inputs.0: a tensor is an object with name (a feature)"),
    ([], "inputs: this model takes one tensor per feature column"),
])
def test_bad_feature_columns_get_422_naming_the_tensor(inputs, message):
    body = json.dumps({"inputs": inputs}).encode()
    with pytest.raises(RequestError) as caught:
        parse_payload(protocols.oip_request(body, None, MIXED)[0], MIXED, max_rows=10)
    assert caught.value.status == 422 and message in caught.value.message, caught.value.message
    assert "\n" not in caught.value.message


@pytest.mark.parametrize(("body", "header", "status", "message"), [
    (b"{not json", None, 400, "not valid JSON"),
    (b'{"inputs": []}', None, 422, "this model takes one input tensor (FP32, shape [-1, 3])"),
    (b'{"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP99", "data": [1, 2, 3]}]}', None, 422, "datatype"),
    (b'{"inputs": [{"name": "x", "shape": [2, 3], "datatype": "FP32", "data": [1, 2, 3]}]}', None, 422,
     "3 values for shape [2, 3]"),
    # Found by the fuzzing of the image and text apps: no values, but a dimension of 10^9 that the FP path walked.
    (b'{"inputs": [{"name": "", "shape": [963437058, 0, 0, 0, 0], "datatype": "FP32", "data": []}]}', None, 422,
     "sizes of at least 1"),
    (b'{"inputs": [{"name": "", "shape": [0, 17251, 3239588, 165038653], "datatype": "BOOL", "data": []}]}', None,
     422, "sizes of at least 1"),
    (b'{"inputs": [{"name": "x", "shape": [1, 3], "datatype": "INT64", "data": [1, 2.5, 3]}]}', None, 422,
     "not all INT64 numbers"),
    (b'{"inputs": [{"name": "x", "shape": [-1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}', None, 422, "shape"),
    (b'{"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "parameters": {"binary_data_size": 12}}]}',
     "whole", 400, "binary_data_size: 12 bytes are not in the body"),
    (b'{"inputs": []}', "999", 400, "is not a length within the body"),
    (b'{"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES", "data": ["hi"]}]}', None, 422,
     "BYTES is for texts and encoded images"),
])
def test_hostile_inference_requests_get_4xx_naming_the_problem(body, header, status, message):
    header = str(len(body)) if header == "whole" else header  # all JSON, and no binary after it
    with pytest.raises(RequestError) as caught:
        protocols.oip_request(body, header, TABLE)
    assert caught.value.status == status and message in caught.value.message


def test_mlflow_bodies_become_the_tasks_request():
    split = {"dataframe_split": {"columns": ["b", "a", "c"], "data": [[2.0, 1.0, 3.0]]}}
    rows = parse_payload(protocols.mlflow_request(json.dumps(split).encode(), "application/json", TABLE), TABLE,
                         max_rows=10)
    assert rows.tolist() == [[1.0, 2.0, 3.0]]  # by column name, in the model's order
    records = {"dataframe_records": [{"a": 1, "b": 2, "c": 3}]}
    assert protocols.mlflow_request(json.dumps(records).encode(), "application/json", TABLE) == {
        "inputs": [{"a": 1, "b": 2, "c": 3}]}
    for key in ("instances", "inputs"):
        assert protocols.mlflow_request(json.dumps({key: [[1, 2, 3]]}).encode(), "application/json", TABLE) == {
            "inputs": [[1, 2, 3]]}
    assert protocols.mlflow_request(b"b,a,c\n2,1,3\n", "text/csv; charset=utf-8", TABLE) == {
        "inputs": [{"b": 2.0, "a": 1.0, "c": 3.0}]}
    texts = {"dataframe_split": {"columns": ["text"], "data": [["free prize"], ["hello"]]}}
    assert protocols.mlflow_request(json.dumps(texts).encode(), "application/json", TEXT) == {
        "inputs": ["free prize", "hello"]}
    for body, ctype, status, message in (
            (b"{", "application/json", 400, "not valid JSON"),
            (b"x", "application/xml", 415, "send application/json"),
            (b'{"instances": [], "inputs": []}', "application/json", 422, "exactly one of"),
            (b'{"dataframe_split": {"columns": ["a"]}}', "application/json", 422, "an object with columns and data"),
            (b'{"dataframe_split": {"columns": ["a", "b"], "data": [[1]]}}', "application/json", 422,
             "one value per column (2)"),
            (b'{"dataframe_split": {"columns": ["x", "y"], "data": [["a", "b"]]}}', "application/json", 422,
             "the text column 'text'")):
        with pytest.raises(RequestError) as caught:
            protocols.mlflow_request(body, ctype, TEXT if b"text" in body or b'"x"' in body else TABLE)
        assert (caught.value.status, message in caught.value.message) == (status, True), caught.value.message


# ------------------------------------------------------------------------------------------------
# On the session's cluster: the digits app (public) and the keyed one


@pytest.fixture(scope="module")
def holdout() -> pd.DataFrame:
    return pd.read_parquet(data.prepare_demo(os.environ["ATOLL_STORAGE"], "digits")["holdout"]).iloc[:20]


def _client(app: dict, **kw) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(app["url"].removeprefix("http://"), **kw)  # host:port/<app>


@pytest.mark.cluster
def test_tritons_own_client_gets_the_same_predictions_as_predict(public_app, holdout):
    features = [c for c in holdout.columns if c != "label"]
    x = holdout[features].to_numpy(dtype=np.float32)
    expected = httpx.post(f"{public_app['url']}/predict", json={"inputs": x.tolist()}, timeout=30).json()
    client = _client(public_app)
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("digits")
    meta = client.get_model_metadata("digits")
    assert meta["inputs"] == [{"name": "inputs", "datatype": "FP32", "shape": [-1, 64]}]
    rows = triton.InferInput("inputs", list(x.shape), "FP32")
    rows.set_data_from_numpy(x)
    result = client.infer("digits", [rows])  # defaults: binary tensors both ways
    assert result.as_numpy("predictions").tolist() == expected["predictions"]
    assert np.allclose(result.as_numpy("probabilities"), expected["probabilities"], atol=1e-6)
    with pytest.raises(triton.InferenceServerException, match="no model 'other' here"):
        client.get_model_metadata("other")
    bad = triton.InferInput("inputs", [1, 3], "FP32")
    bad.set_data_from_numpy(np.ones((1, 3), dtype=np.float32))
    with pytest.raises(triton.InferenceServerException, match="inputs.0 has 3 values; this model takes 64"):
        client.infer("digits", [bad])


@pytest.mark.cluster
def test_mlflow_scoring_bodies_get_the_same_predictions_and_hostile_ones_4xx(public_app, holdout):
    url = public_app["url"]
    features = [c for c in holdout.columns if c != "label"]
    expected = httpx.post(f"{url}/predict", json={"inputs": holdout[features].to_numpy().tolist()},
                          timeout=30).json()["predictions"]
    assert httpx.get(f"{url}/ping", timeout=10).status_code == 200
    frame = holdout[features[::-1]]  # columns in any order: matched by name
    split = json.loads(frame.to_json(orient="split", index=False))
    for body in ({"dataframe_split": split}, {"dataframe_records": json.loads(frame.to_json(orient="records"))},
                 {"instances": holdout[features].to_numpy().tolist()}):
        answer = httpx.post(f"{url}/invocations", json=body, timeout=30)
        assert answer.status_code == 200 and answer.json() == {"predictions": expected}, answer.text
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False)
    csv = httpx.post(f"{url}/invocations", content=buffer.getvalue(), headers={"Content-Type": "text/csv"}, timeout=30)
    assert csv.json() == {"predictions": expected}
    for content, ctype in ((b"{", "application/json"), (b'{"dataframe_split": {"columns": ["px0"], "data": [[1]]}}',
                                                        "application/json"), (b"\x00\xff", "text/csv"),
                           (b"[1, 2]", "application/json"), (b'{"instances": [[1e39] * 64]}', "application/json")):
        refused = httpx.post(f"{url}/invocations", content=content, headers={"Content-Type": ctype}, timeout=30)
        assert 400 <= refused.status_code < 500 and refused.json()["error_code"], (content, refused.text)


@pytest.mark.cluster
def test_the_protocols_sit_behind_the_apps_key(keyed_app):
    from conftest import APP_KEY

    with pytest.raises(triton.InferenceServerException, match="401|API key"):
        _client(keyed_app).get_model_metadata("digits")
    key = {"Authorization": f"Bearer {APP_KEY}"}
    assert _client(keyed_app).get_model_metadata("digits", headers=key)["name"] == "digits"
    assert httpx.get(f"{keyed_app['url']}/", headers=key, timeout=10).json()["runtime"] == "torch"  # as deployed
    assert httpx.post(f"{keyed_app['url']}/invocations", json={"instances": [[0] * 64]}, timeout=10).status_code == 401


@pytest.mark.cluster
def test_tritons_client_sends_a_mixed_table_one_tensor_per_column(mixed_app):
    """The penguins app (words, gaps): BYTES and FP32 columns from Triton's own client, binary and JSON, answer as
    /predict answers the same rows by name; the metadata lists the columns."""
    url, name = mixed_app["url"], mixed_app["app"]
    client = _client(mixed_app)
    meta = client.get_model_metadata(name)
    schema = httpx.get(f"{url}/", timeout=10).json()["input_schema"]
    assert [i["name"] for i in meta["inputs"]] == schema["features"]
    types = {i["name"]: i["datatype"] for i in meta["inputs"]}
    assert types["island"] == "BYTES" and types["body_mass_g"] == "FP32" and types["year"] == "BYTES"
    rows = [{"island": "Biscoe", "bill_length_mm": 47.5, "bill_depth_mm": 15.0, "flipper_length_mm": 218.0,
             "body_mass_g": None, "sex": "female", "year": "2009"},
            {"island": "Torgersen", "bill_length_mm": 39.5, "bill_depth_mm": 17.5, "flipper_length_mm": 186.0,
             "body_mass_g": 3800.0, "sex": None, "year": "2007"}]
    expected = httpx.post(f"{url}/predict", json={"inputs": rows}, timeout=30).json()
    for binary in (True, False):
        tensors = []
        for feature in schema["features"]:
            values = [r[feature] for r in rows]
            if types[feature] == "BYTES":  # an empty string is a gap in a BYTES column
                array = np.array(["" if v is None else v for v in values], dtype=object)
            else:  # NaN is a gap in a float column
                array = np.array([np.nan if v is None else v for v in values], dtype=np.float32)
            tensor = triton.InferInput(feature, [len(rows)], types[feature])
            tensor.set_data_from_numpy(array, binary_data=binary)
            tensors.append(tensor)
        result = client.infer(name, tensors)
        assert [p.decode() for p in result.as_numpy("predictions").tolist()] == expected["predictions"], binary
        assert np.allclose(result.as_numpy("probabilities"), expected["probabilities"], atol=1e-5)
    # plain JSON with nulls and one word the model never saw
    body = {"inputs": [{"name": f, "shape": [1], "datatype": types[f], "data": [rows[0][f]]} for f in schema["features"]]}
    body["inputs"][0]["data"] = ["Atlantis"]
    answer = httpx.post(f"{url}/v2/models/{name}/infer", json=body, timeout=30)
    assert answer.status_code == 200, answer.text
    assert answer.json()["outputs"][0]["data"][0] in schema["classes"]
    assert json.loads(answer.json()["parameters"]["unseen"]) == {"0": ["island"]}  # as /predict says it
    body["inputs"][1] = {"name": "bill_length_mm", "shape": [1], "datatype": "BYTES", "data": ["long"]}
    refused = httpx.post(f"{url}/v2/models/{name}/infer", json=body, timeout=30)
    assert refused.status_code == 422 and "bill_length_mm is a numeric feature" in refused.json()["error"]

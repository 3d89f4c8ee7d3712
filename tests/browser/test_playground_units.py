"""The showcase without a cluster: the input-panel decision, held-out examples at registration, the
static assets, and the tabular form in a real (headless) Chromium against mocked API routes."""

from __future__ import annotations

import json
import os
import shutil

import pandas as pd
import pytest
from atoll import config, data, specs
from atoll.serving import playground
from atoll.train import examples as held_out
from conftest import REPO

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update"]


def test_the_panel_is_a_grid_for_images_and_a_form_otherwise():
    pixels = {"features": [f"px{i}" for i in range(64)], "num_features": 64, "classes": list(range(10))}
    assert playground.panel({**pixels, "image": [8, 8], "value_range": [0, 16]}, [])["shape"] == [8, 8]
    assert playground.panel(pixels, [], {"dataset": {"path": "demo:digits"}})["range"] == [0.0, 16.0]
    assert playground.panel(pixels, [{"inputs": [0.5] * 64}])["range"] == [0.0, 0.5]
    assert playground.panel({**pixels, "image_shape": [1, 8, 8]}, [])["kind"] == "image"
    tabular = {"features": ["age", "income", "score", "rooms"], "num_features": 4}
    assert playground.panel(tabular, [])["kind"] == "form"
    named = {"features": [f"f{i}" for i in range(64)], "num_features": 64}  # square, but not pixels
    assert playground.panel(named, [])["kind"] == "form"


def test_static_assets_are_served_by_bare_name_only():
    assert playground.static_asset("playground.js")[1].startswith("text/javascript")
    for bad in ("../serving.py", "..%2Fserving.py", ".hidden.js", "playground.html", "x/../playground.css"):
        assert playground.static_asset(bad) is None
    for name in ("playground.html", "gallery.html", "playground.js", "gallery.js", "playground.css"):
        text = (playground.UI_DIR / name).read_text()
        assert "http://" not in text and "https://" not in text and "innerHTML" not in text, name


def test_registration_stores_held_out_validation_examples(tmp_path):
    storage = str(tmp_path / "storage")
    spec = config.load_file(specs.TrainSpec, REPO / "jobs" / "configs" / "train.yaml", []).model_dump(mode="json")
    schema = {"features": [f"px{i}" for i in range(64)], "num_features": 64, "dtype": "float32",
              "image_shape": None, "classes": list(range(10)), "label": "label"}
    version_dir = tmp_path / "version"
    version_dir.mkdir()
    out = held_out.add_examples(version_dir, {"spec": spec, "input_schema": schema}, storage)
    assert out["image"] == [8, 8] and out["value_range"] == [0.0, 16.0]
    stored = json.loads((version_dir / playground.EXAMPLES_FILE).read_text())
    examples = stored["examples"]
    assert len(examples) == 10 and sorted(e["label"] for e in examples) == list(range(10))  # one per digit
    frame = pd.read_parquet(data.demo_paths(storage)["train"])
    val = data.SplitFilter(schema["features"] + ["label"], 0.2, "validation", 0)(frame)
    rows = {tuple(r) + (y,) for r, y in zip(val[schema["features"]].to_numpy().tolist(), val["label"])}
    assert all(tuple(e["inputs"]) + (e["label"],) in rows for e in examples)  # never a training row

    # A dataset that cannot be read: registration goes on, without examples.
    broken = {**spec, "dataset": {**spec["dataset"], "path": str(tmp_path / "missing.parquet")}}
    other = tmp_path / "other"
    other.mkdir()
    assert held_out.add_examples(other, {"spec": broken, "input_schema": schema}, storage) == schema
    assert not (other / playground.EXAMPLES_FILE).exists()


def test_the_tabular_form_and_csv_row_in_a_browser():
    executable = shutil.which("chromium")
    if executable is None:
        if os.environ.get("CI") or os.environ.get("ATOLL_REQUIRE_BROWSER"):
            pytest.fail("Chromium is not installed, and CI/ATOLL_REQUIRE_BROWSER is set")
        pytest.skip("Chromium is not installed (Debian: apt-get install chromium); browser tests skipped")
    from playwright.sync_api import expect, sync_playwright

    features = ["age", "income", "rooms"]
    card = {"model": "houses", "version": 2, "input_schema": {"features": features, "num_features": 3},
            "metrics": {"val_accuracy": 0.9}, "lineage": {}, "aliases": [], "spec_summary": {}, "has_curve": False}
    examples = {"panel": playground.panel({"features": features, "num_features": 3, "classes": ["no", "yes"]}, []),
                "examples": [{"inputs": [41, 52000, 3], "label": "yes"}]}
    sent = []

    def handle(route):
        path = route.request.url.split("127.0.0.1:8000", 1)[1]
        if path == "/houses/ui" or path.startswith("/houses/ui/static/"):
            name = "playground.html" if path == "/houses/ui" else path.rsplit("/", 1)[1]
            body, kind = (playground.UI_DIR / name).read_bytes(), "text/html"
            kind = playground.STATIC_TYPES.get("." + name.rsplit(".", 1)[1], kind)
            return route.fulfill(body=body, content_type=kind)
        if path == "/houses/":
            return route.fulfill(json=card)
        if path == "/houses/examples":
            return route.fulfill(json=examples)
        if path == "/houses/predict":
            sent.append(route.request.post_data_json)
            row = sent[-1]["inputs"][0]
            if not isinstance(row, dict) or any(not isinstance(v, (int, float)) for v in row.values()):
                return route.fulfill(status=422, json={"error": "inputs.0.rooms: Input should be a valid number"})
            return route.fulfill(json={"predictions": ["yes"], "probabilities": [[0.25, 0.75]]})
        return route.fulfill(status=404, json={"error": "not found"})

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.route("http://127.0.0.1:8000/**", handle)
        page.goto("http://127.0.0.1:8000/houses/ui")
        page.wait_for_selector("#layout:not([hidden])")
        assert page.is_hidden("#grid") and page.locator("#form-input input").count() == 3
        assert page.is_hidden("#curve-figure")  # no curve: no picture, no error
        page.click("#examples button >> nth=0")
        assert page.input_value("#f-1") == "52000"
        page.click("#predict")
        page.wait_for_selector("#result:not([hidden])")
        assert sent[-1] == {"inputs": [{"age": 41, "income": 52000, "rooms": 3}]}  # by feature name
        assert page.text_content("#predicted") == "yes" and "true label yes" in page.text_content("#truth")
        assert page.locator(".bar-label").all_text_contents() == ["no", "yes"]

        page.fill("#csv", "30, 41000, 2")
        page.click("#csv-predict")
        expect(page.locator("#f-0")).to_have_value("30")
        assert sent[-1] == {"inputs": [{"age": 30, "income": 41000, "rooms": 2}]}
        page.fill("#f-2", "two")
        page.click("#predict")
        page.wait_for_selector("#error:not([hidden])")
        assert "422" in page.text_content("#error") and "valid number" in page.text_content("#error")
        assert sent[-1]["inputs"][0]["rooms"] == "two"  # sent as typed: the API is the judge
        browser.close()

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


PENGUINS = {"features": ["island", "bill_length_mm", "body_mass_g", "sex", "year"], "num_features": 5,
            "dtype": "mixed", "classes": ["Adelie", "Chinstrap", "Gentoo"], "label": "species", "input_kind": "table",
            "columns": [
                {"name": "island", "kind": "categorical", "nullable": True, "levels": ["Biscoe", "Dream", "Torgersen"]},
                {"name": "bill_length_mm", "kind": "numeric", "nullable": True, "range": [32.1, 59.6]},
                {"name": "body_mass_g", "kind": "numeric", "nullable": True, "range": [2700.0, 6300.0]},
                {"name": "sex", "kind": "categorical", "nullable": True, "levels": ["female", "male"]},
                {"name": "year", "kind": "categorical", "nullable": True, "levels": ["2009", "2007", "2008"]}]}


def test_a_mixed_tables_panel_describes_each_column_and_a_numeric_one_stays_plain():
    out = playground.panel(PENGUINS, [])
    assert out["kind"] == "form" and out["mixed"] is True
    assert out["columns"][0] == {"name": "island", "kind": "categorical", "nullable": True,
                                 "levels": ["Biscoe", "Dream", "Torgersen"], "dropdown": True}
    assert out["columns"][1] == {"name": "bill_length_mm", "kind": "numeric", "nullable": True, "range": [32.1, 59.6]}
    many = {**PENGUINS, "columns": [{**PENGUINS["columns"][0], "levels": [f"shop-{i}" for i in range(500)]},
                                    *PENGUINS["columns"][1:]]}
    assert playground.panel(many, [])["columns"][0]["dropdown"] is False  # a text box with suggestions
    plain = {"features": ["a", "b"], "num_features": 2}  # a version from before column kinds
    assert "columns" not in playground.panel(plain, []) and "mixed" not in playground.panel(plain, [])
    numeric = {**plain, "columns": [{"name": "a", "kind": "numeric", "nullable": True, "range": [0, 1]},
                                    {"name": "b", "kind": "numeric", "nullable": True, "range": None}]}
    assert playground.panel(numeric, [])["mixed"] is False


def test_a_mixed_tables_examples_keep_their_words_and_gaps(tmp_path):
    """Registration-time examples of a table with words, yes/no and gaps: JSON values a request takes as they are."""
    n = 200  # distinct rows (the split hashes each row): a gap in every Gentoo row's island and bill
    frame = pd.DataFrame({"island": ["Biscoe", None, "Dream", "Torgersen"] * (n // 4),
                          "bill_length_mm": [None if i % 4 == 1 else 35 + i / 8 for i in range(n)],
                          "member": [True, False, None, True] * (n // 4), "year": [2007 + i % 3 for i in range(n)],
                          "species": ["Adelie", "Gentoo", "Chinstrap", "Adelie"] * (n // 4)})
    frame.to_csv(tmp_path / "p.csv", index=False)
    spec = {"dataset": {"path": str(tmp_path / "p.csv"), "validation_fraction": 0.5}, "seed": 0}
    schema = {"features": ["island", "bill_length_mm", "member", "year"], "num_features": 4, "label": "species",
              "input_kind": "table", "classes": ["Adelie", "Chinstrap", "Gentoo"], "dtype": "mixed",
              "columns": [{"name": "island", "kind": "categorical"}, {"name": "bill_length_mm", "kind": "numeric"},
                          {"name": "member", "kind": "categorical"}, {"name": "year", "kind": "categorical"}]}
    picked, _ = held_out.pick_examples(spec, schema, str(tmp_path))
    assert {e["label"] for e in picked} == {"Adelie", "Chinstrap", "Gentoo"}
    again = json.loads(json.dumps(picked))  # as examples.json stores them
    assert again == picked
    rows = {e["label"]: e["inputs"] for e in again}
    assert rows["Gentoo"][:2] == [None, None]  # gaps (an empty CSV cell) are null, not NaN or ""
    assert rows["Adelie"][0] in ("Biscoe", "Torgersen") and isinstance(rows["Adelie"][1], float)
    assert all(isinstance(e["inputs"][3], int) for e in again)  # a category of integers stays a number


def _serve_mocked(page, app: str, card: dict, examples: dict, answer) -> list:
    """Route the page's calls to fixed answers: the page's own files, the card, the examples, and ``answer(row)``
    for /predict (a (status, body) pair). Returns the list the sent /predict bodies go to."""
    sent: list = []

    def handle(route):
        path = route.request.url.split("127.0.0.1:8000", 1)[1]
        if path == f"/{app}/ui" or path.startswith(f"/{app}/ui/static/"):
            name = "playground.html" if path == f"/{app}/ui" else path.rsplit("/", 1)[1]
            kind = playground.STATIC_TYPES.get("." + name.rsplit(".", 1)[1], "text/html")
            return route.fulfill(body=(playground.UI_DIR / name).read_bytes(), content_type=kind)
        if path == f"/{app}/":
            return route.fulfill(json=card)
        if path == f"/{app}/examples":
            return route.fulfill(json=examples)
        if path == f"/{app}/predict":
            sent.append(route.request.post_data_json)
            status, body = answer(sent[-1]["inputs"][0])
            return route.fulfill(status=status, json=body)
        return route.fulfill(status=404, json={"error": "not found"})

    page.route("http://127.0.0.1:8000/**", handle)
    return sent


def test_the_mixed_form_dropdowns_blanks_and_csv_words_in_a_browser():
    executable = shutil.which("chromium")
    if executable is None:
        if os.environ.get("CI") or os.environ.get("ATOLL_REQUIRE_BROWSER"):
            pytest.fail("Chromium is not installed, and CI/ATOLL_REQUIRE_BROWSER is set")
        pytest.skip("Chromium is not installed (Debian: apt-get install chromium); browser tests skipped")
    from playwright.sync_api import expect, sync_playwright

    card = {"model": "penguins", "version": 1, "input_schema": PENGUINS, "metrics": {}, "lineage": {}, "aliases": [],
            "spec_summary": {}, "has_curve": False}
    example = {"inputs": ["Dream", 46.5, None, "female", 2008], "label": "Chinstrap"}
    examples = {"panel": playground.panel(PENGUINS, [example]), "examples": [example]}

    def answer(row):
        if isinstance(row, dict) and isinstance(row.get("body_mass_g"), str):
            return 422, {"error": f'inputs.0.body_mass_g: "{row["body_mass_g"]}" is not a valid number'}
        unseen = {"unseen": {"0": ["island"]}} if isinstance(row, dict) and row.get("island") == "Atlantis" else {}
        return 200, {"predictions": ["Gentoo"], "probabilities": [[0.1, 0.2, 0.7]], **unseen}

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        sent = _serve_mocked(page, "penguins", card, examples, answer)
        page.goto("http://127.0.0.1:8000/penguins/ui")
        page.wait_for_selector("#layout:not([hidden])")
        assert page.locator("#form-input select").count() == 3 and page.locator("#form-input input").count() == 2
        assert page.locator("#f-0 option").all_text_contents() == ["missing", "Biscoe", "Dream", "Torgersen"]
        assert page.get_attribute("#f-1", "placeholder") == "32.1 – 59.6"
        assert "leave empty for missing" in page.get_attribute("#f-1", "title")

        # Untouched: every dropdown "missing", every number empty, all sent as null.
        page.click("#predict")
        page.wait_for_selector("#result:not([hidden])")
        assert sent[-1] == {"inputs": [dict.fromkeys(PENGUINS["features"])]}
        assert page.is_hidden("#unseen")

        # An example round-trips exactly: its words, its gap, its integer year.
        page.click("#examples button >> nth=0")
        assert page.input_value("#f-0") == "Dream" and page.input_value("#f-2") == "" and page.input_value("#f-4") == "2008"
        with page.expect_response("**/penguins/predict"):
            page.click("#predict")
        expect(page.locator("#truth")).to_contain_text("true label Chinstrap")
        assert sent[-1] == {"inputs": [dict(zip(PENGUINS["features"], example["inputs"], strict=True))]}

        # A level picked by hand goes as its word; a changed number as a number; an emptied one as null.
        page.select_option("#f-0", "Biscoe")
        page.select_option("#f-3", label="missing")
        page.fill("#f-1", "")
        page.fill("#f-2", "4100")
        with page.expect_response("**/penguins/predict"):
            page.click("#predict")
        expect(page.locator("#truth")).to_have_text("")
        assert sent[-1]["inputs"][0] == {"island": "Biscoe", "bill_length_mm": None, "body_mass_g": 4100,
                                         "sex": None, "year": 2008}

        # A pasted CSV row with words, a quoted word with a comma, and blanks; an unseen level is shown.
        page.fill("#csv", 'Atlantis, 39.5,  , "male", NA')
        with page.expect_response("**/penguins/predict"):
            page.click("#csv-predict")
        expect(page.locator("#unseen")).to_contain_text("island")
        assert sent[-1] == {"inputs": [{"island": "Atlantis", "bill_length_mm": 39.5, "body_mass_g": None,
                                        "sex": "male", "year": None}]}
        assert page.input_value("#f-0") == "Atlantis" and page.input_value("#f-4") == ""
        assert "not a known level" in page.text_content("#f-0 option:checked")
        page.fill("#csv", "Biscoe, 39.5, heavy, male, 2009")
        page.click("#csv-predict")
        page.wait_for_selector("#error:not([hidden])")
        assert "body_mass_g" in page.text_content("#error") and page.is_hidden("#result")
        assert errors == []
        browser.close()

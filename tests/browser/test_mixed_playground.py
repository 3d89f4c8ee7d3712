"""The playground of a table with words and gaps in a real browser: the penguins demo trained small on the
session's cluster (`trained_mixed`) and deployed with `atoll serve deploy`, driven by Debian's Chromium through
Playwright, as tests/browser/test_playground.py drives the digits app (its browser and artefact fixtures)."""

from __future__ import annotations

import httpx
import pytest
from test_playground import Recorder, _open, artifacts, browser, expect  # noqa: F401 - the module's fixtures

pytestmark = [pytest.mark.cluster, pytest.mark.browser]

APP = "penguins"


@pytest.fixture(scope="module")
def mixed_page(browser, mixed_app):  # noqa: F811 - the fixture imported above
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    recorder = Recorder(page)
    _open(page, mixed_app["playground"])
    yield page, recorder
    context.close()


def _predicted(page, click: str):
    with page.expect_response(lambda r: r.url.endswith(f"/{APP}/predict")) as answer:
        page.click(click)
    return answer.value


def test_the_form_has_a_dropdown_per_word_column_and_a_blank_number_is_missing(mixed_app, mixed_page, artifacts):  # noqa: F811
    page, rec = mixed_page
    schema = httpx.get(f"{mixed_app['url']}/", timeout=10).json()["input_schema"]
    features = schema["features"]
    kinds = {c["name"]: c for c in schema["columns"]}
    words = [f for f in features if kinds[f]["kind"] == "categorical"]
    assert words == ["island", "sex", "year"]
    assert page.locator("#form-input select").count() == len(words)
    island = features.index("island")
    options = page.locator(f"#f-{island} option").all_text_contents()
    assert options == ["missing", *kinds["island"]["levels"]]
    mass = features.index("body_mass_g")
    low, high = kinds["body_mass_g"]["range"]
    assert page.get_attribute(f"#f-{mass}", "placeholder") == f"{low:g} – {high:g}"

    # Pick a level, type some numbers, leave the body mass (and the sex) empty: they go as null.
    page.select_option(f"#f-{island}", "Dream")
    page.select_option(f"#f-{features.index('year')}", "2008")
    for name, value in (("bill_length_mm", "49.5"), ("bill_depth_mm", "18.6"), ("flipper_length_mm", "196")):
        page.fill(f"#f-{features.index(name)}", value)
    answer = _predicted(page, "#predict")
    assert answer.status == 200, answer.text()
    sent = answer.request.post_data_json["inputs"][0]
    assert sent == {"island": "Dream", "bill_length_mm": 49.5, "bill_depth_mm": 18.6, "flipper_length_mm": 196,
                    "body_mass_g": None, "sex": None, "year": "2008"}
    page.wait_for_selector("#result:not([hidden])")
    api = httpx.post(f"{mixed_app['url']}/predict", json={"inputs": [sent]}, timeout=30).json()
    assert page.text_content("#predicted") == api["predictions"][0] in schema["classes"]
    assert page.locator("#bars .bar-track").count() == len(schema["classes"])
    assert page.is_hidden("#unseen")
    page.screenshot(path=str(artifacts / "playground-mixed.png"))
    assert rec.errors == [] and all("127.0.0.1" in u for u in rec.requests)


def test_an_example_with_words_and_gaps_round_trips_and_an_unseen_level_is_shown(mixed_app, mixed_page):
    page, rec = mixed_page
    features = httpx.get(f"{mixed_app['url']}/", timeout=10).json()["input_schema"]["features"]
    examples = httpx.get(f"{mixed_app['url']}/examples", timeout=10).json()["examples"]
    assert examples and all(isinstance(e["inputs"][features.index("island")], str) for e in examples)
    gappy = next((i for i, e in enumerate(examples) if None in e["inputs"]), 0)
    page.click(f"#examples button >> nth={gappy}")
    answer = _predicted(page, "#predict")
    assert answer.status == 200
    assert answer.request.post_data_json == {"inputs": [dict(zip(features, examples[gappy]["inputs"], strict=True))]}
    expect(page.locator("#truth")).to_contain_text(f"true label {examples[gappy]['label']}")

    # A pasted CSV row: words, a blank and NA (missing), and an island the model never saw.
    page.fill("#csv", "Atlantis, 39.1, 18.7, 181, , male, NA")
    answer = _predicted(page, "#csv-predict")
    assert answer.status == 200
    assert answer.request.post_data_json["inputs"][0] == {
        "island": "Atlantis", "bill_length_mm": 39.1, "bill_depth_mm": 18.7, "flipper_length_mm": 181,
        "body_mass_g": None, "sex": "male", "year": None}
    assert answer.json()["unseen"] == {"0": ["island"]}
    expect(page.locator("#unseen")).to_contain_text("island")
    assert page.input_value(f"#f-{features.index('island')}") == "Atlantis"

    # A word in a number column: the API's one line, naming the field.
    page.fill("#csv", "Biscoe, 39.1, 18.7, 181, heavy, male, 2009")
    assert _predicted(page, "#csv-predict").status == 422
    expect(page.locator("#error")).to_contain_text("body_mass_g")
    rec.errors.clear()  # Chromium logs every 4xx response as a console error

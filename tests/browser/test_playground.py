"""The showcase in a real browser: Debian's Chromium, headless, driven by Playwright, against the digits
model trained for real and deployed on the shared cluster with `atoll serve deploy`.

One browser for the module, and the session's two shared apps (one public, one behind an API key); a screenshot of every
test goes to the artefact folder (``$ATOLL_TEST_ARTIFACTS``, else the session's temporary folder), and with
``ATOLL_UPDATE_SCREENSHOT=1`` the playground's screenshot also replaces ``docs/playground.png``.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlparse

import httpx
import pytest
from atoll import prometheus
from atoll.serving import playground
from conftest import APP_KEY as KEY
from conftest import REPO

pytestmark = [pytest.mark.cluster, pytest.mark.browser]

APP, PRIVATE = "digits", "digits-private"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update"]
REQUIRED = bool(os.environ.get("CI") or os.environ.get("ATOLL_REQUIRE_BROWSER"))


def _unavailable(reason: str):
    if REQUIRED:  # CI installs Chromium and Playwright: missing there is a failure, never a skip
        pytest.fail(f"{reason} (CI/ATOLL_REQUIRE_BROWSER is set: browser tests must run)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser():
    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        _unavailable("Chromium is not installed (Debian: apt-get install chromium); browser tests skipped")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("the playwright package is missing (pip install -e '.[test]')")
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> Path:
    folder = Path(os.environ.get("ATOLL_TEST_ARTIFACTS") or tmp_path_factory.getbasetemp() / "browser-artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def digits_app(public_app):
    """The session's digits version deployed as app `digits` (shared with the Serve and CLI tests)."""
    info = public_app
    assert info["playground"] == f"{info['url']}/ui" and info["gallery"] == info["url"].rsplit("/", 1)[0] + "/"
    return info


@pytest.fixture(scope="module")
def private_app(keyed_app):
    """The same version as `digits-private`, behind the API key KEY (shared too)."""
    assert f"playground: {keyed_app['playground']}" in keyed_app["output"]  # `atoll serve deploy` prints it
    return keyed_app


class Recorder:
    """A page's requests, console errors and uncaught exceptions."""

    def __init__(self, page) -> None:
        self.requests: list[str] = []
        self.errors: list[str] = []
        page.on("request", lambda r: self.requests.append(r.url))
        page.on("console", lambda m: m.type == "error" and self.errors.append(f"console: {m.text}"))
        page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))

    def foreign(self) -> list[str]:
        """Requests to any host but 127.0.0.1 (blob: URLs of this origin included in the check)."""
        hosts = [(u, urlparse(u.removeprefix("blob:")).hostname) for u in self.requests]
        return [u for u, host in hosts if host != "127.0.0.1"]


@pytest.fixture(scope="module")
def session(browser):
    """One page for the keyless tests (same tab, like a person trying things one after another)."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    recorder = Recorder(page)
    yield page, recorder
    context.close()


@pytest.fixture(autouse=True)
def screenshot_each_test(request, artifacts):
    yield
    if "session" in request.fixturenames:
        page, _ = request.getfixturevalue("session")
        page.screenshot(path=str(artifacts / f"{request.node.name}.png"))


def expect(locator):
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(locator)


def _open(page, url: str) -> None:
    page.goto(url)
    page.wait_for_selector("#layout:not([hidden])", timeout=20_000)


def test_the_page_loads_with_the_model_card_and_nothing_from_elsewhere(digits_app, session):
    page, rec = session
    shell = httpx.get(digits_app["playground"], timeout=10)
    assert shell.status_code == 200 and "default-src 'none'" in shell.headers["content-security-policy"]
    assert shell.text == (playground.UI_DIR / "playground.html").read_text()  # no model data in the shell
    assert httpx.get(f"{digits_app['playground']}/", follow_redirects=True, timeout=10).url.path == f"/{APP}/ui"
    card = httpx.get(f"{digits_app['url']}/", timeout=10).json()
    assert card["playground"] == f"/{APP}/ui" and card["num_examples"] == 10 and card["has_curve"]

    _open(page, digits_app["playground"])
    assert page.text_content("#card-title") == "digits"
    assert f"version {digits_app['version']}" in page.text_content("#badges")
    assert "val_accuracy" in page.text_content("#metrics")
    lineage = page.text_content("#lineage")
    assert card["lineage"]["dataset_fingerprint"] in lineage and card["lineage"]["run_name"] in lineage
    assert "mlp" in page.text_content("#spec")
    expect(page.locator("#curve-figure")).to_be_visible()  # the training curve, fetched with the key if any
    assert page.locator("#curve").evaluate("img => img.decode().then(() => img.naturalWidth)") > 0
    assert page.locator("#examples button").count() == 10
    assert page.is_visible("#grid")  # 64 pixel features: the 8x8 drawing grid, not a form
    # The live traffic chart (req/s and p99 from Prometheus), or without one the line that says how to start it.
    page.wait_for_selector("#traffic :is(svg.traffic-chart, .traffic-note)")
    if page.locator("#traffic .traffic-note").count():  # (a replica may answer from its 5 s cache: ask, not guess)
        assert prometheus.current() is None, page.text_content("#traffic")
        expect(page.locator("#traffic .traffic-note")).to_contain_text("atoll metrics up")
    else:
        expect(page.locator("#traffic svg.traffic-chart")).to_have_count(2)
    assert rec.errors == []
    assert rec.foreign() == [], rec.foreign()


def test_an_example_and_predict_show_the_class_the_api_returns(digits_app, session, artifacts):
    page, rec = session
    examples = httpx.get(f"{digits_app['url']}/examples", timeout=10).json()["examples"]
    example = examples[3]
    page.click("#examples button >> nth=3")
    with page.expect_response(lambda r: r.url.endswith(f"/{APP}/predict")) as answer:
        page.click("#predict")
    assert answer.value.status == 200
    page.wait_for_selector("#result:not([hidden])")
    api = httpx.post(f"{digits_app['url']}/predict", json={"inputs": [example["inputs"]]}, timeout=30).json()
    assert page.text_content("#predicted") == str(api["predictions"][0])
    assert answer.value.request.post_data_json == {"inputs": [example["inputs"]]}
    assert page.locator("#bars .bar-track").count() == 10
    assert f"true label {example['label']}" in page.text_content("#truth")
    assert page.text_content("#latency").endswith(" ms")

    # The curl command is exactly this request: run it, get the same answer.
    curl = page.text_content("#curl")
    assert curl.startswith(f"curl -s {digits_app['url']}/predict")
    ran = subprocess.run(shlex.split(curl), capture_output=True, text=True, timeout=30, check=True)
    assert json.loads(ran.stdout)["predictions"] == api["predictions"]

    page.screenshot(path=str(artifacts / "playground.png"))
    if os.environ.get("ATOLL_UPDATE_SCREENSHOT") == "1":
        shutil.copyfile(artifacts / "playground.png", REPO / "docs" / "playground.png")
    assert rec.errors == [] and rec.foreign() == []


def test_drawing_on_the_grid_sends_a_valid_request(digits_app, session):
    page, rec = session
    page.click("#clear")
    box = page.locator("#grid").bounding_box()
    x, y, w, h = box["x"], box["y"], box["width"], box["height"]
    page.mouse.move(x + w * 0.35, y + h * 0.15)
    page.mouse.down()
    for fx, fy in [(0.65, 0.15), (0.65, 0.5), (0.4, 0.85)]:  # a seven
        page.mouse.move(x + w * fx, y + h * fy, steps=8)
    page.mouse.up()
    with page.expect_response(lambda r: r.url.endswith(f"/{APP}/predict")) as answer:
        page.click("#predict")
    assert answer.value.status == 200
    row = answer.value.request.post_data_json["inputs"][0]
    assert len(row) == 64 and all(isinstance(v, (int, float)) and 0 <= v <= 16 for v in row)
    assert sum(v > 0 for v in row) >= 6
    page.wait_for_selector("#result:not([hidden])")
    assert page.text_content("#predicted") == str(answer.value.json()["predictions"][0])
    assert page.text_content("#truth") == ""  # drawn, not an example: no true label
    assert rec.errors == [] and rec.foreign() == []


def test_a_bad_input_shows_the_api_reason(digits_app, session):
    page, rec = session
    page.fill("#csv", "1, 2, 3")
    with page.expect_response(lambda r: r.url.endswith(f"/{APP}/predict")) as answer:
        page.click("#csv-predict")
    assert answer.value.status == 422
    page.wait_for_selector("#error:not([hidden])")
    error = page.text_content("#error")
    assert "422" in error and "inputs.0 has 3 values; this model takes 64" in error
    assert page.is_hidden("#result")
    page.fill("#csv", ", ".join(["1"] * 63 + ["lots"]))
    page.click("#csv-predict")
    expect(page.locator("#error")).to_contain_text("valid number")
    assert rec.foreign() == []
    rec.errors.clear()  # Chromium logs every 4xx response as a console error


def test_with_an_api_key_the_page_asks_for_it_and_gets_401_without_it(private_app, browser, artifacts):
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    rec = Recorder(page)
    seen_auth: list[str | None] = []
    page.on("request", lambda r: r.url.endswith("/predict") and seen_auth.append(r.headers.get("authorization")))
    try:
        page.goto(private_app["playground"])
        page.wait_for_selector("#key-panel:not([hidden])")
        assert "API key" in page.text_content("#key-reason")
        assert page.is_hidden("#layout")

        page.fill("#key-input", "wrong-key")
        page.click("#key-submit")
        expect(page.locator("#key-reason")).to_contain_text("refused")

        page.fill("#key-input", KEY)
        page.click("#key-submit")
        page.wait_for_selector("#layout:not([hidden])")
        assert page.text_content("#card-title") == "digits"
        page.click("#examples button >> nth=0")
        page.click("#predict")
        page.wait_for_selector("#result:not([hidden])")
        assert seen_auth[-1] == f"Bearer {KEY}"
        assert "$ATOLL_API_KEY" in page.text_content("#curl") and KEY not in page.text_content("#curl")
        assert KEY not in httpx.get(f"{private_app['url']}/ui", timeout=10).text
        assert page.evaluate("() => sessionStorage.getItem('atoll-api-key')") == KEY
        page.screenshot(path=str(artifacts / "playground-with-key.png"))

        # Without the key, /predict answers 401 and the page asks again.
        page.evaluate("() => sessionStorage.removeItem('atoll-api-key')")
        with page.expect_response(lambda r: r.url.endswith("/predict")) as answer:
            page.click("#predict")
        assert answer.value.status == 401 and seen_auth[-1] is None
        page.wait_for_selector("#key-panel:not([hidden])")
        assert "401" in page.text_content("#error") or "API key" in page.text_content("#key-reason")
        assert rec.foreign() == []
    finally:
        context.close()


def test_the_gallery_lists_the_live_apps(digits_app, private_app, session, artifacts):
    page, rec = session
    rec.errors.clear()
    page.goto(digits_app["gallery"])
    # A keyed app is on the cluster: the list of apps opens only with a key.
    page.wait_for_selector("#key-form:not([hidden])")
    assert page.locator("article").count() == 0
    page.fill("#key-input", KEY)
    page.click("#key-submit")
    page.wait_for_selector(f"article[data-app='{APP}']")
    page.wait_for_selector(f"article[data-app='{PRIVATE}']")
    for app in (APP, PRIVATE):  # with the key, the keyed app's card loads too
        card = page.locator(f"article[data-app='{app}']")
        card.locator("text=version").wait_for()
        assert f"version {digits_app['version']}" in card.text_content()
        assert "val_accuracy" in card.text_content()
    assert page.locator(f"article[data-app='{APP}'] a").get_attribute("href") == f"/{APP}/ui"
    page.wait_for_selector(f"article[data-app='{APP}'] .traffic :is(.traffic-chart, .traffic-note)")  # its live chart
    page.screenshot(path=str(artifacts / "gallery.png"))
    page.click(f"article[data-app='{APP}'] a")
    page.wait_for_selector("#layout:not([hidden])")
    assert all("401" in e for e in rec.errors), rec.errors  # only the list of apps, before the key
    assert rec.foreign() == []


def test_a_regressor_page_shows_a_form_and_the_predicted_value(diabetes_app, session):
    """The same page for a tabular-regression version: a form of its 10 measurements, and a value, not bars."""
    page, rec = session
    seen_errors, seen_requests = len(rec.errors), len(rec.requests)  # the shared page's earlier visits aside
    _open(page, diabetes_app["playground"])
    assert page.text_content("#card-title") == "diabetes"
    assert "val_rmse" in page.text_content("#metrics")
    expect(page.locator("#form-input")).to_be_visible()
    assert page.locator("#form-input input").count() == 10
    example = httpx.get(f"{diabetes_app['url']}/examples", timeout=10).json()["examples"][0]
    page.click("#examples button >> nth=0")
    with page.expect_response(lambda r: r.url.endswith("/diabetes/predict")) as answer:
        page.click("#predict")
    assert answer.value.status == 200
    page.wait_for_selector("#result:not([hidden])")
    api = httpx.post(f"{diabetes_app['url']}/predict", json={"inputs": [example["inputs"]]}, timeout=30).json()
    assert float(page.text_content("#predicted")) == pytest.approx(api["predictions"][0], rel=1e-3)
    assert page.locator("#bars .bar-track").count() == 0
    assert f"true value {example['label']:g}" in page.text_content("#truth")
    assert rec.errors[seen_errors:] == []
    assert all(urlparse(u.removeprefix("blob:")).hostname == "127.0.0.1" for u in rec.requests[seen_requests:])


def test_a_text_model_page_takes_typed_text_and_shows_class_bars(text_app, session):
    """A text-classification version: a text box (no form, no CSV row), examples that fill it, class bars."""
    page, rec = session
    seen_errors = len(rec.errors)
    _open(page, text_app["playground"])
    expect(page.locator("#text-input")).to_be_visible()
    assert page.locator("#form-input").is_hidden() and page.locator("#csv-box").is_hidden()
    page.click("#examples button >> nth=0")
    example = httpx.get(f"{text_app['url']}/examples", timeout=10).json()["examples"][0]
    assert page.input_value("#text") == example["inputs"]
    page.fill("#text", "Free entry! Text WIN to 80086 to claim your prize now")
    with page.expect_response(lambda r: r.url.endswith("/sms-spam/predict")) as answer:
        page.click("#predict")
    assert answer.value.status == 200
    assert answer.value.request.post_data_json == {"inputs": ["Free entry! Text WIN to 80086 to claim your prize now"]}
    page.wait_for_selector("#result:not([hidden])")
    assert page.text_content("#predicted") == answer.value.json()["predictions"][0]
    assert page.locator("#bars .bar-track").count() == 2
    assert rec.errors[seen_errors:] == []


def test_an_image_model_page_draws_pixel_rows_and_takes_an_uploaded_file(image_app, session, tmp_path):
    """An image-classification version: the drawing grid sends pixel rows (0–255), an example fills the grid,
    and an uploaded PNG goes as a base64 data URL; class bars for each."""
    import numpy as np
    from PIL import Image

    page, rec = session
    seen_errors = len(rec.errors)
    _open(page, image_app["playground"])
    expect(page.locator("#image-input")).to_be_visible()
    assert page.locator("#form-input").is_hidden() and page.locator("#csv-box").is_hidden()
    page.click("#examples button >> nth=0")
    example = httpx.get(f"{image_app['url']}/examples", timeout=10).json()["examples"][0]
    with page.expect_response(lambda r: r.url.endswith("/digit-images/predict")) as answer:
        page.click("#predict")
    assert answer.value.status == 200
    rows = answer.value.request.post_data_json["inputs"][0]
    assert rows == example["inputs"] and len(rows) == 8 and all(len(r) == 8 for r in rows)
    page.wait_for_selector("#result:not([hidden])")
    assert page.text_content("#predicted") == str(answer.value.json()["predictions"][0])
    assert page.locator("#bars .bar-track").count() == 10

    drawn = np.zeros((32, 32), dtype=np.uint8)
    drawn[4:28, 14:18] = 255  # a one, four times the model's size
    path = tmp_path / "one.png"
    Image.fromarray(drawn).save(path)
    with page.expect_response(lambda r: r.url.endswith("/digit-images/predict")) as uploaded:
        page.set_input_files("#image-file", str(path))
    assert uploaded.value.status == 200
    assert uploaded.value.request.post_data_json["inputs"][0].startswith("data:image/png;base64,")
    expect(page.locator("#upload-preview")).to_be_visible()
    page.wait_for_selector("#result:not([hidden])")
    assert page.text_content("#predicted") == str(uploaded.value.json()["predictions"][0])
    assert rec.errors[seen_errors:] == []

"""The node's dashboard against a live dev stack: its JSON state and headers over HTTP, then the
page itself in Debian's headless Chromium (installed by `make browser-tools`; those tests are
skipped where it is missing): adapters and receipts render, an on-chain dataset named like HTML is
shown as text and runs nothing, and a screenshot is not blank."""

from __future__ import annotations

import shutil
import urllib.error
import urllib.request

import pytest

from live_stack import ACCT, HOSTILE_NAME, KEY, live_stack
from node.devup import get_json, wait_for

@pytest.fixture(scope="module")
def live(tmp_path_factory):
    from node.client import LoraNodeClient

    with live_stack(tmp_path_factory.mktemp("dash-stack")) as s:
        client = LoraNodeClient(s.url, KEY["payer"])
        for prompt in ("Ahoy", "Hello there"):
            client.chat(f"adapter-{s.adapter_id}", [{"role": "user", "content": prompt}], max_tokens=4)
        client.chat("HuggingFaceTB/SmolLM2-135M-Instruct", [{"role": "user", "content": "Hi"}], max_tokens=4)
        # the dev node commits a partial batch after 5 s: wait for one committed receipt
        wait_for(lambda: any(r["status"] == "committed" for r in get_json(s.url + "/dashboard/api/state")["receipts"]),
                 90, "a committed receipt batch")
        yield s


def _get(url):
    try:
        with urllib.request.urlopen(urllib.request.Request(url), timeout=30) as r:  # noqa: S310
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def test_state_json_and_security_headers(live):
    status, headers, body = _get(live.url + "/dashboard")
    assert status == 200 and b"<script src=\"/dashboard/app.js\"" in body
    csp = headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp and "unsafe-inline" not in csp
    assert headers["X-Content-Type-Options"] == "nosniff"
    state = get_json(live.url + "/dashboard/api/state")
    (ad,) = [a for a in state["adapters"] if a["id"] == live.adapter_id]
    assert ad["state"] == "loaded" and ad["requests"] == 2 and ad["price_per_1k"] == "2000000000000000"
    assert int(ad["revenue"]) > 0 and isinstance(ad["revenue"], str)
    assert len(state["receipts"]) == 3 and {r["status"] for r in state["receipts"]} <= {"pending", "batched", "committed"}
    r = state["receipts"][0]
    assert r["verify_url"] == f"/v1/receipts/{r['request_id']}" and get_json(live.url + r["verify_url"])["receipt"]
    assert state["batches"] and state["batches"][0]["status"] == "committed"
    assert int(state["earnings"]["compute_signed"]) == sum(
        int(get_json(live.url + x["verify_url"])["receipt"]["computeCost"]) for x in state["receipts"])
    (ds,) = [d for d in state["datasets"] if d["id"] == live.dataset_id]
    assert ds["name"] == HOSTILE_NAME and ds["contributions"][0]["status"] == "accepted"
    assert set(state["settlement"]) >= {"pending_receipts", "lag_seconds", "outbox", "background"}
    assert state["node"]["address"] == ACCT["node"].address


def test_root_redirects_and_the_dashboard_can_be_turned_off(live):
    req = urllib.request.Request(live.url + "/")
    opener = urllib.request.build_opener(type("NoRedirect", (urllib.request.HTTPRedirectHandler,),
                                              {"redirect_request": lambda *a, **k: None}))
    with pytest.raises(urllib.error.HTTPError) as e:
        opener.open(req, timeout=10)
    assert e.value.code == 302 and e.value.headers["Location"] == "/dashboard"
    from node.api import init_app
    from node.config import load_config

    off = init_app(load_config(live.stack.config_path, dashboard_enabled=False))
    paths = {getattr(r.resource, "canonical", "") for r in off.router.routes()}
    assert "/v1/models" in paths and not any(p.startswith("/dashboard") or p == "/" for p in paths)


def _chromium():
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        pytest.skip("chromium / chromium-driver not installed: run `make browser-tools`")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1280,1400"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=opts, service=Service(driver))


@pytest.fixture(scope="module")
def browser():
    b = _chromium()
    yield b
    b.quit()


def test_page_renders_adapters_receipts_and_hostile_names_as_text(live, browser, tmp_path):
    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(live.url + "/")  # the redirect lands on the dashboard
    WebDriverWait(browser, 30).until(lambda b: f"adapter-{live.adapter_id}" in b.find_element(By.ID, "adapters").text)
    assert browser.current_url.endswith("/dashboard")
    adapters = browser.find_element(By.ID, "adapters").text
    assert "loaded" in adapters and "2000000000000000" in adapters
    rows = browser.find_elements(By.CSS_SELECTOR, "#receipts tr")
    assert len(rows) == 1 + 3  # header + the three answers
    links = browser.find_elements(By.CSS_SELECTOR, "#receipts a")
    assert links and all("/v1/receipts/0x" in a.get_attribute("href") for a in links)
    assert "committed" in browser.find_element(By.ID, "receipts").text
    # the dataset's on-chain name is HTML: shown verbatim, no element created, nothing run
    names = [e.text for e in browser.find_elements(By.CSS_SELECTOR, ".dataset-name")]
    assert HOSTILE_NAME in names
    assert browser.execute_script("return document.querySelectorAll('img').length") == 0
    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert.text
    # the CSP really is enforced: an inline script injected into the page does not run
    browser.execute_script("const s = document.createElement('script'); s.textContent = 'window.__ran = 1';"
                           "document.body.appendChild(s);")
    assert browser.execute_script("return window.__ran === undefined")
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE" and "Content Security Policy" not in e["message"]]
    assert not errors, errors
    shot = tmp_path / "dashboard.png"
    assert browser.save_screenshot(str(shot))
    _assert_not_blank(shot)


def test_live_updates_show_a_new_receipt(live, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from node.client import LoraNodeClient

    browser.get(live.url + "/dashboard")
    WebDriverWait(browser, 30).until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#receipts tr")) == 4)
    _fund(live, "carol")
    LoraNodeClient(live.url, KEY["carol"]).chat("HuggingFaceTB/SmolLM2-135M-Instruct",
                                                 [{"role": "user", "content": "Hi"}], max_tokens=2)
    WebDriverWait(browser, 30).until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#receipts tr")) == 5)


def _fund(live, role) -> None:
    c = live.contracts
    c.token.approve(ACCT[role], c.escrow.address, 10**18)
    c.escrow.deposit(ACCT[role], ACCT["node"].address, 10**18)


def _assert_not_blank(path):
    """A real render: many distinct colours, and the page's text areas are not one flat colour."""
    from PIL import Image

    img = Image.open(path).convert("RGB")
    w, h = img.size
    assert w >= 800 and h >= 600
    colours = img.getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 50, f"only {len(colours or [])} colours"
    most = max(n for n, _ in colours)
    assert most < 0.9 * w * h, "one colour covers 90% of the screenshot"
    dark_header = img.crop((0, 0, w, 40)).getcolors(maxcolors=1 << 20)
    assert dark_header and max(dark_header)[1] != (255, 255, 255)

"""The node's dashboard against a live dev stack: its JSON state and headers over HTTP, then the
page itself in Debian's headless Chromium (installed by `make browser-tools`; those tests are
skipped where it is missing): adapters and receipts render, an on-chain dataset named like HTML is
shown as text and runs nothing, and a screenshot is not blank."""

from __future__ import annotations

import shutil
import urllib.error
import urllib.request

import pytest

from inference.embedded_model import EMBEDDED_MODEL_ID
from live_stack import ACCT, HOSTILE_NAME, KEY, fund_escrow
from node.dev.stack import get_json, wait_for

BASE = EMBEDDED_MODEL_ID


@pytest.fixture(scope="module")
def answered(live):
    """Three answers paid by this module's own payer (owner2), then one committed batch holding them;
    returns what the dashboard showed before them and their request ids."""
    from node.client.payer import LoraNodeClient

    fund_escrow(live, "owner2")
    before = get_json(live.url + "/dashboard/api/state")
    client = LoraNodeClient(live.url, KEY["owner2"])
    for prompt in ("Ahoy", "Hello there"):
        client.chat(f"adapter-{live.adapter_id}", [{"role": "user", "content": prompt}], max_tokens=4)
    client.chat(BASE, [{"role": "user", "content": "Hi"}], max_tokens=4)
    ids = ["0x" + r.receipt.request_id.hex() for r in client.receipts]
    # the dev node commits a partial batch after 5 s: wait until ours are committed
    wait_for(
        lambda: all(
            r["status"] == "committed" for r in get_json(live.url + "/dashboard/api/state")["receipts"] if r["request_id"] in ids
        ),
        90,
        "the receipt batch to commit",
    )
    return before, ids


def _get(url):
    try:
        with urllib.request.urlopen(urllib.request.Request(url), timeout=30) as r:  # noqa: S310 - the test's own loopback node
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def test_state_json_and_security_headers(live, answered):
    before, ids = answered
    status, headers, body = _get(live.url + "/dashboard")
    assert status == 200 and b"<script src=\"/dashboard/app.js\"" in body
    csp = headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp and "unsafe-inline" not in csp
    assert headers["X-Content-Type-Options"] == "nosniff"
    state = get_json(live.url + "/dashboard/api/state")
    (ad,) = [a for a in state["adapters"] if a["id"] == live.adapter_id]
    (ad0,) = [a for a in before["adapters"] if a["id"] == live.adapter_id]
    assert ad["state"] == "loaded" and ad["requests"] == ad0["requests"] + 2 and ad["price_per_1k"] == "2000000000000000"
    assert int(ad["revenue"]) > int(ad0["revenue"]) and isinstance(ad["revenue"], str)
    ours = {r["request_id"]: r for r in state["receipts"] if r["request_id"] in ids}
    assert set(ours) == set(ids) and {r["status"] for r in ours.values()} == {"committed"}
    r = ours[ids[0]]
    assert r["verify_url"] == f"/v1/receipts/{r['request_id']}" and get_json(live.url + r["verify_url"])["receipt"]
    assert state["batches"] and any(b["status"] == "committed" for b in state["batches"])
    signed = sum(int(get_json(live.url + f"/v1/receipts/{i}")["receipt"]["computeCost"]) for i in ids)
    assert int(state["earnings"]["compute_signed"]) - int(before["earnings"]["compute_signed"]) == signed
    (ds,) = [d for d in state["datasets"] if d["id"] == live.dataset_id]
    assert ds["name"] == HOSTILE_NAME and ds["contributions"][0]["status"] == "accepted"
    assert set(state["settlement"]) >= {"pending_receipts", "lag_seconds", "outbox", "background"}
    assert state["node"]["address"] == ACCT["node"].address


def test_root_redirects_and_the_dashboard_can_be_turned_off(live):
    req = urllib.request.Request(live.url + "/")  # noqa: S310 - the test's own loopback node
    opener = urllib.request.build_opener(
        type("NoRedirect", (urllib.request.HTTPRedirectHandler,), {"redirect_request": lambda *a, **k: None})
    )
    with pytest.raises(urllib.error.HTTPError) as e:
        opener.open(req, timeout=10)
    assert e.value.code == 302 and e.value.headers["Location"] == "/dashboard"
    from node.daemon.root import build_app
    from node.config import load_config

    off = build_app(load_config(live.stack.config_path, dashboard_enabled=False))
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


def test_page_renders_adapters_receipts_and_hostile_names_as_text(live, answered, browser, tmp_path):
    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(live.url + "/")  # the redirect lands on the dashboard
    WebDriverWait(browser, 30).until(lambda b: f"adapter-{live.adapter_id}" in b.find_element(By.ID, "adapters").text)
    assert browser.current_url.endswith("/dashboard")
    adapters = browser.find_element(By.ID, "adapters").text
    assert "loaded" in adapters and "2000000000000000" in adapters
    links = [a.get_attribute("href") for a in browser.find_elements(By.CSS_SELECTOR, "#receipts a")]
    assert all(any(h.endswith(f"/v1/receipts/{i}") for h in links) for i in answered[1])  # each answer, with its link
    assert all("/v1/receipts/0x" in h for h in links)
    assert "committed" in browser.find_element(By.ID, "receipts").text
    # the dataset's on-chain name is HTML: shown verbatim, no element created, nothing run
    names = [e.text for e in browser.find_elements(By.CSS_SELECTOR, ".dataset-name")]
    assert HOSTILE_NAME in names
    assert browser.execute_script("return document.querySelectorAll('img').length") == 0
    with pytest.raises(NoAlertPresentException):
        _ = browser.switch_to.alert.text  # read for its exception: no alert was opened
    # the CSP really is enforced: an inline script injected into the page does not run
    browser.execute_script(
        "const s = document.createElement('script'); s.textContent = 'window.__ran = 1';document.body.appendChild(s);"
    )
    assert browser.execute_script("return window.__ran === undefined")
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE" and "Content Security Policy" not in e["message"]]
    assert not errors, errors
    shot = tmp_path / "dashboard.png"
    assert browser.save_screenshot(str(shot))
    _assert_not_blank(shot)


def test_live_updates_show_a_new_receipt(live, answered, browser):
    from selenium.webdriver.common.by import By
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    from node.client.payer import LoraNodeClient

    browser.get(live.url + "/dashboard")
    WebDriverWait(browser, 30).until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#receipts a")) >= 3)
    fresh = LoraNodeClient(live.url, KEY["curator"])
    fund_escrow(live, "curator", 10**18)
    fresh.chat(BASE, [{"role": "user", "content": "Hi"}], max_tokens=2)
    new_id = "0x" + fresh.receipts[-1].receipt.request_id.hex()
    # the table is re-rendered on every poll: an element read between two renders goes stale
    WebDriverWait(browser, 30, ignored_exceptions=(StaleElementReferenceException,)).until(
        lambda b: any(a.get_attribute("href").endswith(new_id) for a in b.find_elements(By.CSS_SELECTOR, "#receipts a"))
    )


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

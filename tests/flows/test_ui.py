"""The Prefect UI path of DESIGN.md: open the deployment served by ``vegan serve``, start a
custom run with a changed parameter in the form, watch it complete.

Headless Chromium driven by Selenium against a real ``prefect server``. The screenshot of
the completed run is kept in the test's tmp dir; with ``VEGAN_UPDATE_SCREENSHOTS=1`` it
also replaces docs/img/prefect-ui-run.png (so plain test runs leave the tree clean).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest
from prefect_server import ROOT, prefect_server, served_flows  # noqa: F401

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
SCREENSHOT = ROOT / "docs" / "img" / "prefect-ui-run.png"

if not CHROMIUM.exists():
    pytest.skip(
        "Chromium not installed (/usr/bin/chromium): apt-get install chromium chromium-driver, or `make system`",
        allow_module_level=True,
    )


@pytest.fixture(scope="module")
def serve_code():
    """Only the pipeline deployment: the form to drive is the full pipeline's."""
    code = (
        "from flows.deploy import TARGETS, build_deployments; from prefect import serve; "
        "serve(*build_deployments('tiny', targets=TARGETS[:1]))"
    )
    return code, ["aeot-pipeline/tiny"]


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1400,1000",
        f"--user-data-dir={tmp_path / 'chromium'}",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.implicitly_wait(0)
    try:
        yield driver
    finally:
        driver.quit()


def _wait(driver, find, timeout: float = 60, what: str = "element"):
    """Poll ``find(driver)`` until it returns something truthy (the UI renders asynchronously)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            found = find(driver)
        except Exception:  # noqa: BLE001 - stale or not yet rendered: try again
            found = None
        if found:
            return found
        time.sleep(0.5)
    raise AssertionError(f"{what} not found in the UI after {timeout}s at {driver.current_url}")


def _field(driver, label: str):
    """The input of the first form property labelled ``label`` (e.g. "Steps (Optional)")."""
    from selenium.webdriver.common.by import By

    return driver.find_element(
        By.XPATH,
        f"//span[contains(@class,'schema-form-property__label') and normalize-space()='{label}']"
        "/ancestor::div[contains(concat(' ', @class, ' '), ' schema-form-property ')][1]"
        "//*[self::input or self::textarea]",
    )


def _set(field, value: str) -> None:
    from selenium.webdriver.common.keys import Keys

    field.send_keys(Keys.CONTROL, "a")
    field.send_keys(Keys.DELETE)
    field.send_keys(value)


def _click_text(driver, text: str, tags: str = "button|a") -> None:
    from selenium.webdriver.common.by import By

    candidates = [
        e
        for e in driver.find_elements(By.CSS_SELECTOR, ", ".join(tags.split("|")))
        if e.text.strip() == text and e.is_displayed()
    ]
    if not candidates:
        raise LookupError(text)
    candidates[0].click()
    return True


def test_custom_run_from_the_ui(served_flows, browser, tmp_path):  # noqa: F811
    from selenium.webdriver.common.by import By

    server, _ = served_flows
    run_dir = tmp_path / "ui-run"

    browser.get(f"{server.url}/deployments")
    link = _wait(
        browser,
        lambda d: d.find_element(
            By.XPATH, "//tr[.//*[normalize-space()='aeot-pipeline']]//a[normalize-space()='tiny']"
        ),
        what="deployment aeot-pipeline/tiny",
    )
    link.click()
    _wait(browser, lambda d: _click_text(d, "Run"), what="Run button")
    _wait(browser, lambda d: _click_text(d, "Custom run"), what="Custom run menu item")

    steps = _wait(browser, lambda d: _field(d, "Steps (Optional)"), what="config.ae.steps field")
    assert steps.get_attribute("value") == "150"  # the tiny preset's default
    _set(steps, "60")
    _set(_field(browser, "storage (Optional)"), str(run_dir))
    _click_text(browser, "Submit")

    # Back on the deployment page: the new run is listed under Runs (and in a toast).
    run_link = _wait(
        browser,
        lambda d: [a for a in d.find_elements(By.CSS_SELECTOR, "a[href*='/runs/flow-run/']") if a.is_displayed()],
        what="link to the new flow run",
    )[0]
    run_link.click()
    _wait(browser, lambda d: "/runs/flow-run/" in d.current_url, what="flow run page")
    _wait(
        browser,
        lambda d: any(
            e.text.strip() == "Completed" for e in d.find_elements(By.CSS_SELECTOR, ".state-badge, .p-tag, span")
        ),
        timeout=600,
        what="state Completed",
    )
    time.sleep(2)  # let the graph and logs finish rendering for the screenshot
    shot = tmp_path / "prefect-ui-run.png"
    assert browser.save_screenshot(str(shot))
    if os.environ.get("VEGAN_UPDATE_SCREENSHOTS") == "1":
        shutil.copyfile(shot, SCREENSHOT)

    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["config"]["ae"]["steps"] == 60

"""The report in a real browser: Debian's headless chromium opens both pages (published results
and a tiny sweep); no console errors, every image decodes; a screenshot is kept for the docs.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from test_report import FAST, build_sweep_storage

from taskonomy_ray import report

pytestmark = pytest.mark.browser

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "images" / "report.png"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--window-size=1280,1500")
BROKEN_IMAGES = ("return Array.from(document.images)"
                 ".filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src);")


@pytest.fixture(scope="module")
def browser():
    """One headless chromium for the module, with its console log captured."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        pytest.skip(f"{', '.join(missing)} not found: install them with "
                    "`apt-get install -y chromium chromium-driver` (Debian)")
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    profile = tempfile.TemporaryDirectory(prefix="chromium-profile-")
    for flag in (*FLAGS, f"--user-data-dir={profile.name}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=webdriver.ChromeService(str(CHROMEDRIVER)), options=options)
    yield driver
    driver.quit()
    profile.cleanup()


def open_and_check(driver, index: Path) -> int:
    """Load the page; fail on console errors or undecodable images; returns the image count."""
    driver.get(index.resolve().as_uri())
    driver.execute_async_script(  # wait until every image has loaded or failed
        "const done = arguments[arguments.length - 1];"
        "Promise.all(Array.from(document.images).map(i => i.complete ? null :"
        " new Promise(r => { i.onload = r; i.onerror = r; }))).then(done);")
    errors = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
    assert errors == [], errors
    assert driver.execute_script(BROKEN_IMAGES) == []
    return int(driver.execute_script("return document.images.length;"))


def test_published_report_loads_in_chromium_without_errors(browser, published_csv: Path,
                                                           tmp_path: Path) -> None:
    source = os.path.relpath(published_csv)  # the page shows it: keep the screenshot portable
    index = report.write_report(source, tmp_path, published=True,
                                **{**FAST, "orders": (1, 4), "drawn": (3, 8)})
    # matrix, tree, curve, 2 x 2 taxonomies, the novel tasks' grid
    assert open_and_check(browser, index) == 3 + 4 + 1
    assert "Taskonomy report" in browser.title
    # The docs' screenshot is refreshed on request only, so a test run leaves the tree clean.
    shot = SCREENSHOT if os.environ.get("UPDATE_SCREENSHOTS") else tmp_path / "report.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(shot))


def test_sweep_report_loads_in_chromium_without_errors(browser, tmp_path: Path) -> None:
    storage, _ = build_sweep_storage(tmp_path)
    index = report.write_report(storage.uri, **FAST)
    images = open_and_check(browser, index)
    assert images >= 3 + 3 + 3  # matrix, tree, curve; taxonomies; a sample sheet per gold task
    assert browser.find_element("id", "run").text == "Run facts"

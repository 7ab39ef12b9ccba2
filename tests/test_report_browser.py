"""`regbench report` in a real browser: a report of real (tiny) runs of two tasks, opened in headless
Chromium at a laptop's 1366 x 768, must render without console errors, load every image, and never
make the page scroll sideways, with every collapsed section open too. The test keeps a screenshot
(report.png beside the report in its tmp folder).

Debian's chromium and chromium-driver packages are what it drives (through Selenium). Where they are
missing the test is skipped, unless REGBENCH_REQUIRE_BROWSER=1 (which .ci/run sets after installing
them): then it fails."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from regbench.compare import compare
from regbench.report import write_report

pytestmark = pytest.mark.integration
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
REQUIRED = os.environ.get("REGBENCH_REQUIRE_BROWSER") == "1"
LAPTOP = (1366, 768)


@pytest.fixture
def browser():
    if not (CHROMIUM and CHROMEDRIVER):
        if REQUIRED:
            pytest.fail("REGBENCH_REQUIRE_BROWSER=1 but chromium / chromedriver are not installed "
                        "(apt-get install chromium chromium-driver)")
        pytest.skip("no chromium / chromedriver (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-extensions", f"--window-size={LAPTOP[0]},{LAPTOP[1]}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def page_overflow(driver) -> int:
    """How many pixels the page is wider than the window (0: it never scrolls sideways)."""
    return int(driver.execute_script(
        "return Math.max(document.documentElement.scrollWidth, document.body.scrollWidth) - window.innerWidth"))


def test_a_report_renders_loads_every_image_and_fits_a_laptop_screen(small_run, tmp_path, browser):
    for seed in (0, 1):
        for regularizer in ("none", "bn_dropout"):
            small_run("cifar10", f"regularizer={regularizer}", f"seed={seed}", name=f"sweep/c-{regularizer}-{seed}")
            small_run("movielens", f"regularizer={regularizer}", f"seed={seed}", "trainer.max_epochs=2",
                      name=f"sweep/m-{regularizer}-{seed}")
    report = write_report(compare([tmp_path / "sweep"]), tmp_path / "report.html")
    browser.get(Path(report).resolve().as_uri())
    assert browser.execute_script("return document.readyState") == "complete"
    errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert not errors, errors
    images = browser.execute_script(
        "return Array.from(document.images).map(i => [i.alt, i.complete && i.naturalWidth > 0])")
    assert len(images) >= 5 and all(ok for _, ok in images), images  # metric, cost, curves, 2 gradient flows
    assert page_overflow(browser) <= 0
    browser.execute_script("document.querySelectorAll('details').forEach(d => d.open = true)")
    assert page_overflow(browser) <= 0  # the wide tables scroll inside their own boxes
    text = browser.find_element("tag name", "body").text
    assert "${" not in text and "Resolved config of cifar10" in text  # interpolations resolved
    browser.set_window_size(*LAPTOP)
    browser.execute_script("window.scrollTo(0, 0); document.querySelectorAll('details').forEach(d => d.open = false)")
    assert browser.save_screenshot(str(tmp_path / "report.png"))

"""The studio in a real browser: headless Chromium (Debian's ``chromium`` + ``chromium-driver``)
driven by Selenium against ``mmopt app`` started as a user would start it.

Types a prompt on the offline preset, runs two iterations, checks that images, scores
and the best prompt appear and that the run is in the store, reopens it from the run
browser and saves a screenshot (``studio.png`` in the test's tmp folder, and in
``$MMOPT_SCREENSHOT_DIR`` when set). Skipped when Chromium, its driver or Selenium
is missing, except under ``MMOPT_REQUIRE_BROWSER=1`` (``.ci/run`` sets it, and installs them),
where a missing browser fails the test.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
DRIVER = "/usr/bin/chromedriver"
PROMPT = "a red circle to the left of a blue square"

REQUIRED = os.environ.get("MMOPT_REQUIRE_BROWSER") == "1"
pytestmark = pytest.mark.skipif(
    not REQUIRED and not (os.path.exists(CHROMIUM) and os.path.exists(DRIVER)),
    reason="needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def studio_server(tmp_path_factory):
    import httpx

    out = tmp_path_factory.mktemp("studio-browser")
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    log = open(out / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "mmopt.cli", "app", "--out", str(out / "runs"), "--port",
                             str(port)], stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(url + "api/v1/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"the studio did not start: {(out / 'server.log').read_text()[-2000:]}")
        time.sleep(0.5)
    yield url, out / "runs"
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


@pytest.fixture(scope="module")
def browser():
    if REQUIRED:
        from selenium import webdriver
    else:
        webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,2200"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    yield driver
    driver.quit()


def _wait_text(driver, css: str, needle: str, timeout: float) -> str:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By

    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        try:
            text = driver.find_element(By.CSS_SELECTOR, css).text
        except (StaleElementReferenceException, Exception):  # noqa: BLE001 - the page re-renders
            text = ""
        if needle in text:
            return text
        time.sleep(0.5)
    raise AssertionError(f"{css!r} never showed {needle!r}; last text: {text[:500]!r}")


def _set(driver, css: str, value: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    el = driver.find_element(By.CSS_SELECTOR, css)
    el.click()
    el.send_keys(Keys.CONTROL, "a")
    el.send_keys(Keys.BACKSPACE)
    el.send_keys(value)


def test_studio_runs_and_reopens_in_chromium(studio_server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    from mmopt.store import Store

    url, out = studio_server
    browser.get(url)
    WebDriverWait(browser, 60).until(EC.presence_of_element_located((By.CSS_SELECTOR, "#prompt textarea")))
    # the page's load event hands out the workspace: from then on the page is live
    WebDriverWait(browser, 60).until(
        lambda d: d.find_element(By.CSS_SELECTOR, "#workspace textarea").get_attribute("value").strip())
    # 1. type a prompt, two iterations of two candidates on two seeds, the rule-based proposer
    _set(browser, "#prompt textarea", PROMPT)
    _set(browser, "#iterations input", "2")
    _set(browser, "#candidates input", "2")
    _set(browser, "#seeds input", "2")
    browser.find_element(By.XPATH, "//*[@id='proposer']//label[contains(., 'rules')]").click()
    browser.find_element(By.CSS_SELECTOR, "#run-btn").click()
    # 2. it streams and finishes: images, scores and the best prompt are on the page
    _wait_text(browser, "#status", "run", timeout=120)  # it started
    status = _wait_text(browser, "#status", "finished", timeout=480)
    assert "best objective" in status
    imgs = browser.find_elements(By.CSS_SELECTOR, "#gallery img")
    assert len(imgs) >= 6, f"expected the images of 3 candidates x 2 seeds, found {len(imgs)}"
    table = browser.find_element(By.CSS_SELECTOR, "#candidates-table").text
    assert PROMPT in table and "offline:dsg" in table
    best = browser.find_element(By.CSS_SELECTOR, "#best-prompt textarea").get_attribute("value")
    assert best.strip()
    run_id = browser.find_element(By.CSS_SELECTOR, "#run-id textarea").get_attribute("value")
    # 3. the run is in the store, finished, with its candidates
    store = Store(out, readonly=True)
    runs = {r["run_id"]: r for r in store.list_runs()}
    assert run_id in runs and runs[run_id]["status"] == "finished" and runs[run_id]["trials"] >= 2
    assert runs[run_id]["summary"]["best_prompt"] == best
    # 4. reopen it from the run browser
    browser.find_element(By.CSS_SELECTOR, "#refresh-btn").click()
    _wait_text(browser, "#runs-table", run_id, timeout=30)
    box = browser.find_element(By.CSS_SELECTOR, "#open-id input")
    box.click()
    box.send_keys(run_id)
    box.send_keys(Keys.ENTER)
    time.sleep(0.5)
    browser.find_element(By.CSS_SELECTOR, "#open-run").click()
    status = _wait_text(browser, "#status", "reopened", timeout=30)
    assert run_id in status and "finished" in status
    assert len(browser.find_elements(By.CSS_SELECTOR, "#gallery img")) >= 6
    # 5. a screenshot of the finished, reopened run
    shot = tmp_path / "studio.png"
    browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000
    if os.environ.get("MMOPT_SCREENSHOT_DIR"):
        Path(os.environ["MMOPT_SCREENSHOT_DIR"]).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(os.environ["MMOPT_SCREENSHOT_DIR"]) / "studio.png")

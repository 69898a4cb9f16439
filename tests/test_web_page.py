"""The web page in headless Chromium: list jobs, submit a pipeline, see a job's detail.

Needs Debian's chromium and chromium-driver (``apt-get install chromium chromium-driver``);
the test fails, naming that command, when they are missing.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from esap_dask.testing.service import ServiceProcess, write_tokens

pytestmark = pytest.mark.slow
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1200,900",
]


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    root = tmp_path_factory.mktemp("web")
    tokens = write_tokens(root / "tokens", {"tok-dana": "dana", "tok-eve": "eve"})
    with ServiceProcess(root / "data", tokens) as svc:
        yield svc


@pytest.fixture
def browser() -> Iterator[object]:
    """Headless Chromium through selenium, sending dana's bearer token with every request."""
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.fail("Chromium is missing: run `apt-get install -y chromium chromium-driver`")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="esap-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in [*FLAGS, f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    drv = webdriver.Chrome(service=Service(driver), options=options)
    drv.execute_cdp_cmd("Network.enable", {})
    drv.execute_cdp_cmd(
        "Network.setExtraHTTPHeaders", {"headers": {"Authorization": "Bearer tok-dana"}}
    )
    try:
        yield drv
    finally:
        drv.quit()
        shutil.rmtree(profile, ignore_errors=True)


def test_submit_and_follow_a_job_in_the_browser(service: ServiceProcess, browser: object) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import Select, WebDriverWait

    drv = browser
    eve = requests.post(
        f"{service.url}/uws/jobs",
        headers={"Authorization": "Bearer tok-eve"},
        data={"pipeline": "helloworld", "observations": "7..8"},
    )
    assert eve.status_code == 200
    drv.get(f"{service.url}/")  # type: ignore[attr-defined]
    assert "signed in as dana" in drv.find_element(By.TAG_NAME, "body").text  # type: ignore[attr-defined]
    assert "no jobs yet" in drv.page_source  # type: ignore[attr-defined]
    form = drv.find_element(By.ID, "submit")  # type: ignore[attr-defined]
    Select(form.find_element(By.NAME, "pipeline")).select_by_value("helloworld")
    Select(form.find_element(By.NAME, "facility")).select_by_value("local")
    form.find_element(By.NAME, "observations").send_keys("1..4")
    form.find_element(By.NAME, "RUNID").send_keys("from-the-browser")
    form.find_element(By.NAME, "params").send_keys("message=Servus")
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    WebDriverWait(drv, 20).until(ec.presence_of_element_located((By.ID, "phase")))
    deadline = time.monotonic() + 60
    while drv.find_element(By.ID, "phase").text not in ("COMPLETED", "ERROR"):  # type: ignore[attr-defined]
        assert time.monotonic() < deadline, "the job did not finish in the page"
        time.sleep(1)
        drv.refresh()  # type: ignore[attr-defined]
    assert drv.find_element(By.ID, "phase").text == "COMPLETED"  # type: ignore[attr-defined]
    params = drv.find_element(By.ID, "parameters").text  # type: ignore[attr-defined]
    assert "Servus" in params and "1..4" in params
    results = drv.find_element(By.ID, "results").text  # type: ignore[attr-defined]
    for rid in ("store", "provenance", "log", "ledger"):
        assert rid in results
    drv.get(f"{service.url}/")  # type: ignore[attr-defined]
    table = drv.find_element(By.ID, "jobs").text  # type: ignore[attr-defined]
    assert "from-the-browser" in table and "COMPLETED" in table
    assert "7..8" not in drv.page_source  # type: ignore[attr-defined]
    ARTIFACTS.mkdir(exist_ok=True)
    assert drv.save_screenshot(str(ARTIFACTS / "web-job-list.png"))  # type: ignore[attr-defined]
    drv.find_element(By.LINK_TEXT, "from-the-browser").click()  # type: ignore[attr-defined]
    WebDriverWait(drv, 20).until(ec.presence_of_element_located((By.ID, "delete")))
    assert drv.save_screenshot(str(ARTIFACTS / "web-job-detail.png"))  # type: ignore[attr-defined]
    drv.find_element(By.ID, "delete").click()  # type: ignore[attr-defined]
    WebDriverWait(drv, 20).until(ec.presence_of_element_located((By.ID, "submit")))
    assert "no jobs yet" in drv.find_element(By.ID, "jobs").text  # type: ignore[attr-defined]


def test_form_errors_are_shown(service: ServiceProcess, browser: object) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import Select, WebDriverWait

    drv = browser
    drv.get(f"{service.url}/")  # type: ignore[attr-defined]
    form = drv.find_element(By.ID, "submit")  # type: ignore[attr-defined]
    Select(form.find_element(By.NAME, "pipeline")).select_by_value("helloworld")
    form.find_element(By.NAME, "observations").send_keys("1..2")
    form.find_element(By.NAME, "params").send_keys("sleep=-5")
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    found = WebDriverWait(drv, 20).until(ec.presence_of_element_located((By.ID, "error")))
    error = found.text
    assert "'sleep'" in error and "minimum" in error


def test_the_page_needs_a_token(service: ServiceProcess) -> None:
    resp = requests.get(f"{service.url}/")
    assert resp.status_code == 401
    assert "Basic" in resp.headers["WWW-Authenticate"]
    other = requests.get(f"{service.url}/", auth=("eve", "tok-eve"))
    assert other.status_code == 200 and "signed in as <b>eve</b>" in other.text

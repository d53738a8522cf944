"""The review surface: a real `mlflow server` on 127.0.0.1 over a real smoke search, driven in
Debian's headless Chromium through Selenium and chromedriver."""
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tuner.tracking import PARENT_TAG

WAIT_S = 90


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(smoke_search, tmp_path):
    port = _free_port()
    log = open(tmp_path / "mlflow-server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", smoke_search.uri,
                             "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                            stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + WAIT_S
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"mlflow server did not come up; see {tmp_path / 'mlflow-server.log'}")
        time.sleep(0.5)
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


@pytest.fixture
def chromium():
    browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not browser or not driver:
        msg = "Debian's chromium and chromium-driver are needed (apt-get install chromium chromium-driver)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1600,1000"):
        options.add_argument(arg)
    d = webdriver.Chrome(service=Service(driver), options=options)
    yield d
    d.quit()


def _wait(d, condition, what: str):
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(d, WAIT_S, poll_frequency=0.5).until(lambda _: condition())
    except TimeoutException:
        pytest.fail(f"the MLflow UI never showed {what}")


def _page_text(d) -> str:
    return d.find_element("tag name", "body").text


def _shoot(d, path: Path) -> None:
    d.save_screenshot(str(path))
    if os.environ.get("SFKD_SCREENSHOTS"):  # how docs/ gets its picture
        shutil.copy(path, Path(os.environ["SFKD_SCREENSHOTS"]) / path.name)


def _close_assistant(d) -> None:
    from selenium.webdriver.common.by import By

    for button in d.find_elements(By.XPATH, "//button[@aria-label='Close']"):
        try:
            button.click()
        except Exception:  # noqa: BLE001 - a panel that is not there or not clickable is fine
            pass


@pytest.mark.slow
def test_the_mlflow_ui_lists_the_search_and_its_trials_and_opens_the_report_and_heatmaps(
        smoke_search, mlflow_server, chromium, tmp_path):
    from selenium.webdriver.common.by import By

    client = MlflowClient(smoke_search.uri)
    exp = client.get_experiment_by_name(smoke_search.experiment)
    parent = client.search_runs([exp.experiment_id], "tags.`sfkd.kind` = 'search'")[0]
    children = client.search_runs([exp.experiment_id], f"tags.`{PARENT_TAG}` = '{parent.info.run_id}'")
    d = chromium

    d.get(f"{mlflow_server}/#/experiments/{exp.experiment_id}/runs")
    # Wait on the parent's own link in the runs grid, not on its name in the page text: the run name
    # ("e2e") is a substring of the experiment's ("smoke-e2e"), which MLflow 3.18's sidebar and
    # breadcrumb show before the grid has loaded.
    name_cell = f"//a[contains(@href, '/runs/{parent.info.run_id}')]/ancestor::*[@role='gridcell'][1]"
    _wait(d, lambda: d.find_elements(By.XPATH, name_cell), f"the search run {parent.info.run_name} in the runs grid")
    _close_assistant(d)
    # Child runs sit collapsed under their parent; the expander is the button in the parent's name cell.
    row = _wait(d, lambda: d.find_elements(By.XPATH, name_cell), "the search run after closing the assistant")[0]
    row.find_element(By.TAG_NAME, "button").click()
    names = [c.info.run_name for c in children]
    _wait(d, lambda: all(n in _page_text(d) for n in names), f"all {len(names)} trial runs")
    _shoot(d, tmp_path / "mlflow-trials.png")

    d.get(f"{mlflow_server}/#/experiments/{exp.experiment_id}/runs/{parent.info.run_id}/artifacts/report/report.html")
    frame = _wait(d, lambda: d.find_elements(By.TAG_NAME, "iframe"), "the report's HTML view")[0]
    d.switch_to.frame(frame)
    _wait(d, lambda: "Search report" in _page_text(d) and "Top 5 configs" in _page_text(d), "the report page")
    assert _wait(d, lambda: d.execute_script(
        "return [...document.images].filter(i => i.complete && i.naturalWidth > 300).length >= 3"), "the report figures")
    d.switch_to.default_content()
    _shoot(d, tmp_path / "mlflow-report.png")

    best = next(c for c in children if c.data.tags["sfkd.trial_id"] == parent.data.tags["sfkd.best_trial"])
    d.get(f"{mlflow_server}/#/experiments/{exp.experiment_id}/runs/{best.info.run_id}"
          "/artifacts/figures/attention_heatmaps.png")
    _wait(d, lambda: d.execute_script(
        "return [...document.images].some(i => i.complete && i.naturalWidth >= 1000)"), "the heatmap PNG")
    _shoot(d, tmp_path / "mlflow-heatmaps.png")
    for name in ("mlflow-trials.png", "mlflow-report.png", "mlflow-heatmaps.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"

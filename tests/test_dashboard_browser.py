"""The dashboard in a real headless Chromium (Debian's chromium and chromedriver, driven by selenium): log in,
find the flagged study, open it, see the key image, confirm the review. The screenshot is kept in test-artifacts/."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait
from sqlmodel import select

from plvi.db import make_engine, session_scope, upgrade_database
from plvi.models import AuditEvent, Review
from reports.web.auth import create_user
from tests.http_server import serve_http
from tests.seed_results import seed_cohort, seed_phantom_study

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


@pytest.fixture
def browser(tmp_path: Path):  # type: ignore[no-untyped-def]
    if not (Path(CHROMIUM).exists() and shutil.which(CHROMEDRIVER)):
        pytest.fail("Debian's chromium and chromium-driver are needed: `make system-deps` installs them")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1400,1000", f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def test_reader_logs_in_opens_a_flagged_phantom_study_sees_the_key_image_and_confirms(browser, settings):
    upgrade_database(settings.effective_database_url)
    engine = make_engine(settings.effective_database_url)
    seed_cohort(settings, engine, 4)
    # Phantoms with a PLVI of 0.5 analysed by the real pipeline: it flags them, whatever else it says
    phantoms = {p.study_uid: p for p in (seed_phantom_study(settings, engine, seed, 0.5) for seed in (12, 22, 31))}
    create_user(engine, "reader1", "correct horse battery", "Dr Reader One")
    wait = WebDriverWait(browser, 30)

    with serve_http(settings, engine) as base_url:
        browser.get(f"{base_url}/")
        wait.until(expected_conditions.presence_of_element_located((By.ID, "username")))
        assert "/login" in browser.current_url
        browser.find_element(By.ID, "username").send_keys("reader1")
        browser.find_element(By.ID, "password").send_keys("correct horse battery")
        browser.find_element(By.ID, "login").click()

        wait.until(expected_conditions.presence_of_element_located((By.CSS_SELECTOR, "#worklist tbody tr")))
        flagged_phantoms = [row for row in browser.find_elements(By.CSS_SELECTOR, "#worklist tbody tr.flagged")
                            if row.get_attribute("data-study") in phantoms]
        assert flagged_phantoms, "no phantom study is flagged low psoas mass on the worklist"
        row = flagged_phantoms[0]
        study_uid = row.get_attribute("data-study")
        assert "LOW PSOAS MASS" in row.text and phantoms[study_uid].accession in row.text
        row.find_element(By.CSS_SELECTOR, "td:nth-child(2) a").click()

        image = wait.until(expected_conditions.presence_of_element_located((By.ID, "key-image")))
        wait.until(lambda driver: driver.execute_script(
            "const img = arguments[0]; return img.complete && img.naturalWidth > 0;", image))
        assert browser.execute_script("return arguments[0].naturalWidth;", image) == 512
        assert f"{phantoms[study_uid].plvi:.3f}" in browser.find_element(By.ID, "plvi").text
        assert browser.find_element(By.ID, "no-review").is_displayed()

        browser.find_element(By.ID, "confirm").click()
        wait.until(expected_conditions.text_to_be_present_in_element((By.ID, "review"), "confirmed by reader1"))
        ARTIFACTS.mkdir(exist_ok=True)
        browser.set_window_size(1400, 2400)  # the whole page: key image, numbers, review, checks
        screenshot = ARTIFACTS / "dashboard_study_confirmed.png"
        assert browser.save_screenshot(str(screenshot)) and screenshot.stat().st_size > 10_000

    with session_scope(engine) as session:
        [review] = session.exec(select(Review)).all()
        actions = [e.action for e in session.exec(select(AuditEvent).order_by(AuditEvent.id)).all()]
    assert (review.study_instance_uid, review.decision, review.reviewer) == (study_uid, "confirmed", "reader1")
    assert actions == ["login", "view_worklist", "view_study", "review", "view_study"]
    engine.dispose()

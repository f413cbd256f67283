"""The HTTP API, pages, metrics and health against a real uvicorn server on loopback and a real database."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from PIL import Image
from pydantic import SecretStr
from sqlalchemy.engine import Engine
from sqlmodel import select

from plvi.db import make_engine, session_scope, upgrade_database
from plvi.models import Analysis, OutboxMessage, Study, User, utcnow
from plvi.settings import Settings
from reports.export.run import run_export
from reports.hl7 import sync_worklist_flags
from reports.overlay import OUTLINE_COLOURS
from reports.web.api import api_router
from reports.web.auth import authenticate_password, create_user, issue_token, user_for_token
from reports.web.server import start_api
from tests.conftest import free_port
from tests.http_server import serve_http
from tests.seed_results import seed_cohort, seed_phantom_study, seed_study

USER, PASSWORD = "reader1", "correct horse battery"
PLVI = str(Path(sys.executable).parent / "plvi")


@pytest.fixture
def api_settings(settings: Settings, database_url: str) -> Settings:
    return settings.model_copy(update={"database_url": database_url})


@pytest.fixture
def engine(engine: Engine) -> Engine:
    """The suite's engine (on api_settings' database), with the reader the tests log in as."""
    create_user(engine, USER, PASSWORD, "Dr Reader One")
    return engine


@pytest.fixture
def base_url(api_settings: Settings, engine) -> str:  # type: ignore[no-untyped-def]
    with serve_http(api_settings, engine) as url:
        yield url


@pytest.fixture
def client(base_url: str) -> httpx.Client:
    with httpx.Client(base_url=base_url, auth=(USER, PASSWORD), timeout=30) as client:
        yield client


def _api_operations(base_url: str) -> list[tuple[str, str]]:
    schema = httpx.get(f"{base_url}/openapi.json").json()
    return [(method.upper(), path) for path, item in schema["paths"].items() if path.startswith("/api/")
            for method in item]


def test_every_api_route_answers_401_without_or_with_bad_credentials(base_url, api_settings, engine):
    uid = seed_study(api_settings, engine, index=1, psoas_radius=10).study_uid
    operations = _api_operations(base_url)
    assert len(operations) >= 7
    for method, path in operations:
        url = base_url + path.replace("{study_uid}", uid)
        for auth in (None, (USER, "wrong password"), ("nobody", PASSWORD)):
            response = httpx.request(method, url, auth=auth, json={"decision": "confirmed", "name": "x"})
            assert response.status_code == 401, (method, path, auth)
            assert "Basic" in response.headers["www-authenticate"]
            assert "credentials" in response.json()["detail"]
        bogus = httpx.request(method, url, headers={"Authorization": "Bearer not-a-token"})
        assert bogus.status_code == 401, (method, path)
        assert httpx.request(method, url, cookies={"plvi_session": "forged"}).status_code == 401


def test_openapi_schema_matches_the_routes_and_the_answers(base_url, client, api_settings, engine):
    seed_cohort(api_settings, engine, 3)
    schema = client.get("/openapi.json").json()
    served = {(route.path, method.lower()) for route in api_router().routes for method in route.methods}
    documented = {(path, method) for path, item in schema["paths"].items() if path.startswith("/api/")
                  for method in item}
    assert served == documented
    for path, method in documented:
        operation = schema["paths"][path][method]
        assert {"HTTPBasic", "HTTPBearer", "APIKeyCookie"} <= {k for s in operation["security"] for k in s}
        assert "401" in operation["responses"]
    components = schema["components"]["schemas"]
    item = client.get("/api/studies").json()["items"][0]
    assert set(item) == set(components["WorklistItem"]["properties"])
    detail = client.get(f"/api/studies/{item['study_instance_uid']}").json()
    assert set(detail) == set(components["StudyDetail"]["properties"])


def test_bad_parameters_give_4xx_with_a_message(client, api_settings, engine):
    uid = seed_study(api_settings, engine, index=2, psoas_radius=10).study_uid
    cases = [
        ("GET", "/api/studies?flag=maybe", None, 422, "flag"),
        ("GET", "/api/studies?status=great", None, 422, "status"),
        ("GET", "/api/studies?limit=0", None, 422, "limit"),
        ("GET", "/api/studies?received_from=2024-13-01", None, 422, "received_from"),
        ("GET", "/api/studies?received_from=2024-05-02&received_to=2024-05-01", None, 400, "after"),
        ("GET", "/api/studies/not-a-uid", None, 422, "study_uid"),
        ("GET", "/api/studies/1.2.3.4", None, 404, "no study"),
        ("GET", "/api/studies/1.2.3.4/key-image.png", None, 404, "no measured slice"),
        ("POST", f"/api/studies/{uid}/review", {"decision": "maybe"}, 422, "decision"),
        ("POST", f"/api/studies/{uid}/review", {"decision": "rejected"}, 400, "needs a reason"),
        ("POST", f"/api/studies/{uid}/review", {"decision": "confirmed", "reason": "x" * 501}, 422, "reason"),
        ("POST", "/api/tokens", {"name": ""}, 422, "name"),
        ("GET", "/api/audit?limit=5000", None, 422, "limit"),
    ]
    for method, path, body, status, words in cases:
        response = client.request(method, path, json=body)
        assert response.status_code == status, (path, response.text)
        assert words in str(response.json()["detail"]), (path, response.text)


def test_review_of_a_study_not_yet_analysed_is_a_conflict(client, engine):
    with session_scope(engine) as session:
        session.add(Study(study_instance_uid="1.2.826.0.1.99", patient_id="X", accession_number="A1"))
    response = client.post("/api/studies/1.2.826.0.1.99/review", json={"decision": "confirmed"})
    assert response.status_code == 409 and "no finished analysis" in response.json()["detail"]


def test_worklist_puts_low_psoas_mass_first_and_filters(client, api_settings, engine):
    studies = seed_cohort(api_settings, engine, 10)
    listing = client.get("/api/studies").json()
    assert listing["total"] == 10
    flags = [item["low_psoas_mass"] for item in listing["items"]]
    first_unflagged = flags.index(next(f for f in flags if f is not True))
    assert all(flags[:first_unflagged]) and True not in flags[first_unflagged:]

    flagged = client.get("/api/studies", params={"flag": "true"}).json()["items"]
    assert {i["study_instance_uid"] for i in flagged} == {s.study_uid for s in studies if s.plvi is not None
                                                          and s.plvi < api_settings.cutoff}
    review = client.get("/api/studies", params=[("status", "needs_review"), ("status", "not_measurable")]).json()
    assert {i["status"] for i in review["items"]} == {"needs_review", "not_measurable"}
    assert review["total"] == sum(s.status != "ok" for s in studies)
    assert client.get("/api/studies", params={"received_to": "2000-01-01"}).json()["total"] == 0
    assert client.get("/api/studies", params={"limit": 3, "offset": 9}).json()["items"].__len__() == 1


def test_study_shows_numbers_checks_series_level_and_key_image(client, api_settings, engine):
    study = seed_study(api_settings, engine, index=3, psoas_radius=10)
    detail = client.get(f"/api/studies/{study.study_uid}").json()
    result = detail["analysis"]["result"]
    assert detail["analysis"]["plvi"] == pytest.approx(study.plvi)
    assert result["qc"]["checks"]["slice_to_endplate_mm"]["value"] == 3.1
    assert result["level"]["lumbar_vertebrae_counted"] == 5
    assert detail["series"][0]["used_for"] == "measurement (axial)"
    assert detail["series"][0]["classified_as"] == "axial, T2"

    png = client.get(f"/api/studies/{study.study_uid}/key-image.png")
    assert png.headers["content-type"] == "image/png"
    image = np.asarray(Image.open(io.BytesIO(png.content)).convert("RGB"))
    assert image.shape == (512, 512, 3)
    scale = 4  # 128 px slice shown at 512 px
    for name, (row, col, radius) in {"psoas_left": (68, 98, 10), "psoas_right": (68, 30, 10),
                                     "vertebra": (60, 64, 18)}.items():
        colour = np.array(OUTLINE_COLOURS[name])
        edge = image[row * scale - 4: row * scale + 4, (col + radius) * scale - 4: (col + radius + 1) * scale + 4]
        inside = image[row * scale - 8: row * scale + 8, col * scale - 8: col * scale + 8]
        assert (edge == colour).all(axis=2).any(), name  # outlined at the disc's rightmost edge
        assert not (inside == colour).all(axis=2).any(), name  # not filled


def test_review_records_who_and_when_and_the_audit_log_shows_views(client, api_settings, engine):
    study = seed_study(api_settings, engine, index=4, psoas_radius=10)
    client.get(f"/api/studies/{study.study_uid}")
    created = client.post(f"/api/studies/{study.study_uid}/review", json={"decision": "remeasure",
                                                                          "reason": "slice looks too low"})
    assert created.status_code == 201
    assert created.json()["reviewer"] == USER and created.json()["decision"] == "remeasure"
    client.post(f"/api/studies/{study.study_uid}/review", json={"decision": "confirmed"})
    detail = client.get(f"/api/studies/{study.study_uid}").json()
    assert [r["decision"] for r in detail["reviews"]] == ["confirmed", "remeasure"]
    assert client.get("/api/studies").json()["items"][0]["review"]["decision"] == "confirmed"
    events = client.get("/api/audit", params={"study_uid": study.study_uid}).json()
    assert [e["action"] for e in events] == ["view_study", "review", "review", "view_study"]
    assert {e["username"] for e in events} == {USER}


def test_tokens_and_sessions_log_in_and_pages_need_a_login(base_url, client, api_settings, engine):
    study = seed_study(api_settings, engine, index=5, psoas_radius=9)
    token = client.post("/api/tokens", json={"name": "notebook"}).json()["token"]
    me = httpx.get(f"{base_url}/api/me", headers={"Authorization": f"Bearer {token}"})
    assert me.json() == {"username": USER, "full_name": "Dr Reader One"}

    with httpx.Client(base_url=base_url, timeout=30) as browser:
        page = browser.get(f"/studies/{study.study_uid}")
        assert page.status_code == 303 and page.headers["location"].startswith("/login?next=/studies/")
        wrong = browser.post("/login", data={"username": USER, "password": "nope", "next": "/"})
        assert wrong.status_code == 401 and "wrong password" in wrong.text
        login = browser.post("/login", data={"username": USER, "password": PASSWORD, "next": "//evil.example/"})
        assert login.status_code == 303 and login.headers["location"] == "/"
        assert "httponly" in login.headers["set-cookie"].lower()
        worklist = browser.get("/")
        assert worklist.status_code == 200 and "LOW PSOAS MASS" in worklist.text and study.accession in worklist.text
        assert browser.get("/api/me").json()["username"] == USER  # the session cookie works for the API too
        audit_page = browser.get("/audit").text
        assert "login_failed" in audit_page and "token_created" in audit_page and "view_worklist" in audit_page
        reviewed = browser.post(f"/studies/{study.study_uid}/review", data={"decision": "rejected", "reason": ""})
        assert reviewed.status_code == 400 and "needs a reason" in reviewed.text
        browser.post("/logout")
        assert browser.get("/api/me").status_code == 401


def test_metrics_count_from_the_database_and_health_reports_the_database(base_url, api_settings, engine):
    studies = seed_cohort(api_settings, engine, 7)
    with session_scope(engine) as session:
        session.add(OutboxMessage(key="analyze_study:x:y", kind="analyze_study"))
        session.add(OutboxMessage(key="store:1:A@h:1", kind="store", state="done", attempts=3))
        session.add(OutboxMessage(key="store:2:A@h:1", kind="store", state="failed", attempts=5))
        session.add(Analysis(study_instance_uid=studies[0].study_uid, instance_set_hash="old", status="ok",
                             superseded=True, result={"timings_ms": {"total": 3500.0}}))
    text = httpx.get(f"{base_url}/metrics").text
    measured = [s for s in studies if s.plvi is not None]
    flagged = sum(s.plvi < api_settings.cutoff for s in measured)
    assert "plvi_instances_received_total 7.0" in text
    assert f'plvi_current_results{{status="ok"}} {sum(s.status == "ok" for s in studies)}.0' in text
    assert f'plvi_studies_analysed_total{{status="ok"}} {sum(s.status == "ok" for s in studies) + 1}.0' in text
    assert f"plvi_low_psoas_mass_current {flagged}.0" in text
    assert 'plvi_queue_depth{kind="analyze_study"} 1.0' in text
    assert 'plvi_analysis_seconds_bucket{le="1.0"} 7.0' in text and "plvi_analysis_seconds_count 8.0" in text
    assert 'plvi_send_failures_total{channel="hl7"} 0.0' in text
    assert 'plvi_send_failures_total{channel="dicom"} 7.0' in text
    assert 'plvi_outbox_failed{kind="store"} 1.0' in text
    assert httpx.get(f"{base_url}/health").json() == {"status": "ok", "checks": {"database": "ok"}}


def test_health_fails_when_the_database_is_unreachable(api_settings):
    dead = make_engine(f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/none")
    with serve_http(api_settings, dead) as url:
        response = httpx.get(f"{url}/health", timeout=30)
    assert response.status_code == 503 and response.json()["checks"]["database"].startswith("failing")


def test_plvi_user_add_creates_a_user_who_can_log_in(api_settings, engine, base_url):
    env = {**os.environ, "PLVI_DATA_DIR": str(api_settings.data_dir),
           "PLVI_DATABASE_URL": api_settings.effective_database_url}
    added = subprocess.run([PLVI, "user-add", "radiologist2", "--full-name", "Dr Two", "--password-stdin"],
                           input="a long enough secret\n", env=env, capture_output=True, text=True, check=False, timeout=60)
    assert added.returncode == 0, added.stderr
    assert httpx.get(f"{base_url}/api/me", auth=("radiologist2", "a long enough secret")).status_code == 200
    short = subprocess.run([PLVI, "user-add", "x", "--password-stdin"], input="short\n", env=env,
                           capture_output=True, text=True, check=False, timeout=60)
    assert short.returncode == 2 and "at least 8 characters" in short.stderr


def test_study_page_shows_failed_checks_first_the_series_seen_and_the_level_evidence(base_url, api_settings, engine):
    study = seed_study(api_settings, engine, index=6, psoas_radius=10, status="needs_review")
    with httpx.Client(base_url=base_url, timeout=30) as browser:
        browser.post("/login", data={"username": USER, "password": PASSWORD})
        page = browser.get(f"/studies/{study.study_uid}").text
    checks = page[page.index('id="qc"'):page.index('id="level"')]
    assert checks.index("level_confidence") < checks.index("slice_to_endplate_mm")  # the failed check first
    assert "FAIL" in checks and checks.count("pass") == 3
    assert "axial, T2" in page and "measurement (axial)" in page
    assert "explanation of level_uncertain" in page and "3.1 mm below the endplate" in page
    assert "discs_found" in page and f"{study.plvi:.3f}" in page


def test_a_phantom_study_analysed_by_the_real_pipeline_is_shown_exported_and_flagged(settings, tmp_path):
    """Whatever the pipeline concludes about the phantom, its result object fits the dashboard, the export and
    the HL7 message: the shapes agreed in DESIGN.md hold end to end."""
    upgrade_database(settings.effective_database_url)
    engine = make_engine(settings.effective_database_url)
    create_user(engine, USER, PASSWORD)
    phantom = seed_phantom_study(settings, engine, seed=12, target_plvi=0.5)
    with serve_http(settings, engine) as url, \
            httpx.Client(base_url=url, auth=(USER, PASSWORD), timeout=60) as client:
        detail = client.get(f"/api/studies/{phantom.study_uid}")
        assert detail.status_code == 200
        assert detail.json()["analysis"]["status"] == phantom.status
        measured_slice = detail.json()["analysis"]["result"]["slice"]
        image = client.get(f"/api/studies/{phantom.study_uid}/key-image.png")
        assert image.status_code == (200 if measured_slice else 404)
        client.post("/login", data={"username": USER, "password": PASSWORD})
        page = client.get(f"/studies/{phantom.study_uid}")
        assert page.status_code == 200 and phantom.accession in page.text
    export_settings = settings.model_copy(update={"export_key": SecretStr("phantom-key-0123456789")})
    exported = pd.read_csv(run_export(export_settings, engine, tmp_path / "export").files["csv"])
    assert list(exported["status"]) == [phantom.status]
    assert phantom.patient_id not in exported.to_csv() and "Phantom" not in exported.to_csv()
    hl7_settings = settings.model_copy(update={"hl7_host": "127.0.0.1"})
    assert sync_worklist_flags(hl7_settings, engine) == 1
    engine.dispose()


def test_the_http_server_says_so_when_its_port_is_taken(api_settings, engine):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(RuntimeError, match="PLVI_HTTP_PORT"):
            start_api(api_settings, engine, host="127.0.0.1", port=taken.getsockname()[1])


def test_a_session_expires_and_a_deactivated_user_is_refused(api_settings, engine):
    with session_scope(engine) as session:
        user = session.exec(select(User).where(User.username == USER)).one()
        token = issue_token(session, user, kind="session", lifetime=timedelta(hours=1))
    with session_scope(engine) as session:
        assert user_for_token(session, token) is not None
        assert user_for_token(session, token, now=utcnow() + timedelta(hours=2)) is None
        session.get(User, user.id).is_active = False
    with session_scope(engine) as session:
        assert user_for_token(session, token) is None
        assert authenticate_password(session, USER, PASSWORD) is None

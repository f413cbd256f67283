"""The cohort export: files a researcher can read, with no patient identity in them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image
from pydantic import SecretStr
from sqlmodel import select

from plvi.db import session_scope
from plvi.models import AuditEvent, ExportRun
from plvi.settings import Settings
from reports.export.cohort import COLUMN_NAMES
from reports.export.pseudonym import age_band, age_in_years, pseudonym, year_of
from reports.export.run import run_export
from reports.export.schedule import TASK_NAME
from reports.export.statistics import compare_outcomes
from tests.seed_results import seed_cohort, seed_study

KEY = "test-export-key-0123456789abcdef"
PLVI = str(Path(sys.executable).parent / "plvi")


@pytest.fixture
def export_settings(settings: Settings, database_url: str) -> Settings:
    return settings.model_copy(update={"database_url": database_url, "export_key": SecretStr(KEY)})


def _all_text(out_dir: Path) -> str:
    """Every byte the export wrote that could carry text: the tables, the dictionary, the summaries, Parquet."""
    texts = []
    for path in out_dir.iterdir():
        if path.suffix in {".csv", ".json", ".md"}:
            texts.append(path.read_text())
    texts.append(pq.read_table(out_dir / "cohort.parquet").to_pandas().to_csv())
    texts.append((out_dir / "cohort.parquet").read_bytes().decode("latin-1"))
    return "\n".join(texts)


def test_export_files_read_back_and_carry_no_patient_identity(export_settings, engine, tmp_path):
    studies = seed_cohort(export_settings, engine, 12)

    result = run_export(export_settings, engine, tmp_path / "export")

    csv = pd.read_csv(result.files["csv"])
    parquet = pq.read_table(result.files["parquet"]).to_pandas()
    assert list(csv.columns) == COLUMN_NAMES == list(parquet.columns)
    assert len(csv) == len(parquet) == 12
    assert set(csv["pseudonym"]) == {pseudonym(s.patient_id, KEY) for s in studies}
    assert sorted(parquet["plvi"].dropna().round(4)) == sorted(round(s.plvi, 4) for s in studies if s.plvi)
    assert set(csv["study_year"]) == {2024} and csv["age_years"].between(55, 94).all()
    assert set(csv["sex"]) == {"F", "M"}
    dictionary = pd.read_csv(result.files["dictionary"])
    assert list(dictionary["column"]) == COLUMN_NAMES
    text = _all_text(result.out_dir)
    for study in studies:
        assert study.patient_id not in text
        assert study.patient_name.split("^")[1] not in text and "Testpatient" not in text
        assert study.study_uid not in text and study.accession not in text
    assert "20240315" not in text  # full dates are reduced to the year


def test_pseudonym_is_stable_with_one_key_and_changes_with_another(export_settings, engine, tmp_path):
    seed_cohort(export_settings, engine, 4)
    first = pd.read_csv(run_export(export_settings, engine, tmp_path / "a").files["csv"])
    second = pd.read_csv(run_export(export_settings, engine, tmp_path / "b").files["csv"])
    other_key = export_settings.model_copy(update={"export_key": SecretStr("another-key-fedcba9876543210")})
    third = pd.read_csv(run_export(other_key, engine, tmp_path / "c").files["csv"])

    assert list(first["pseudonym"]) == list(second["pseudonym"])
    assert set(first["pseudonym"]).isdisjoint(third["pseudonym"])
    assert list(first["plvi"].fillna(-1)) == list(third["plvi"].fillna(-1))


def test_summary_and_plots_describe_the_cohort(export_settings, engine, tmp_path):
    studies = seed_cohort(export_settings, engine, 14)
    result = run_export(export_settings, engine, tmp_path / "export")

    measured = [s.plvi for s in studies if s.plvi is not None]
    summary = result.summary
    assert summary["n_studies"] == 14 and summary["n_measured"] == len(measured)
    assert summary["plvi"]["median"] == pytest.approx(pd.Series(measured).median(), abs=1e-4)
    assert summary["n_flagged"] == sum(p < export_settings.cutoff for p in measured) > 0
    assert set(summary["plvi_by_sex"]) == {"F", "M"}
    bands = list(summary["plvi_by_age_band"])
    assert bands == sorted(bands, key=["<50", "50-59", "60-69", "70-79", "80-89", "90+"].index)
    assert summary["cutoffs"] == [export_settings.cutoff]
    assert "PLVI: n=" in result.files["summary_md"].read_text()
    for name in ("histogram", "against_age"):
        with Image.open(result.files[name]) as image:
            assert image.format == "PNG" and image.size == (600, 400)


def test_nightly_export_takes_only_what_changed_since_the_last_one(export_settings, engine, tmp_path):
    seed_cohort(export_settings, engine, 3)
    assert run_export(export_settings, engine, tmp_path / "first", since_last=True).rows == 3
    assert run_export(export_settings, engine, tmp_path / "empty", since_last=True).rows == 0
    seed_study(export_settings, engine, index=50, psoas_radius=10, analysed_at=datetime.now(UTC))

    later = run_export(export_settings, engine, tmp_path / "later", since_last=True)
    assert later.rows == 1
    with session_scope(engine) as session:
        runs = session.exec(select(ExportRun).order_by(ExportRun.id)).all()
        audited = session.exec(select(AuditEvent).where(AuditEvent.action == "export")).all()
    assert [r.rows for r in runs] == [3, 0, 1] and {r.state for r in runs} == {"done"}
    assert [e.detail["rows"] for e in audited] == [3, 0, 1]
    assert pd.read_csv(later.files["csv"])["age_years"].notna().all()


def test_export_without_a_key_refuses_and_says_how_to_fix(export_settings, engine, tmp_path):
    no_key = export_settings.model_copy(update={"export_key": SecretStr("")})
    with pytest.raises(ValueError, match="PLVI_EXPORT_KEY"):
        run_export(no_key, engine, tmp_path / "export")


def test_outcome_comparison_uses_median_split_fisher_and_rank_sum(export_settings, engine, tmp_path):
    studies = seed_cohort(export_settings, engine, 20)
    measured = [s for s in studies if s.plvi is not None]
    median = pd.Series([s.plvi for s in measured]).median()
    outcomes = pd.DataFrame({
        "pseudonym": [pseudonym(s.patient_id, KEY) for s in measured],
        # refracture strongly tied to low PLVI; pain score higher in the low group
        "refracture": [int(s.plvi < median) for s in measured],
        "pain_vas_6m": [(8.0 if s.plvi < median else 2.0) + i * 0.01 for i, s in enumerate(measured)],
    })
    outcomes_csv = tmp_path / "outcomes.csv"
    outcomes.to_csv(outcomes_csv, index=False)

    result = run_export(export_settings, engine, tmp_path / "export", outcomes_csv=outcomes_csv)

    comparison = pd.read_csv(result.files["outcomes"]).set_index("outcome")
    assert comparison.loc["refracture", "test"] == "fisher_exact"
    assert comparison.loc["pain_vas_6m", "test"] == "wilcoxon_rank_sum"
    assert comparison.loc["refracture", "p_value"] < 0.01
    assert comparison.loc["pain_vas_6m", "p_value"] < 0.01
    assert comparison.loc["refracture", "median_plvi_split"] == pytest.approx(median, abs=1e-6)
    assert comparison.loc["refracture", "high_group"].startswith("0/")  # an empty cell: odds ratio infinite
    assert pd.isna(comparison.loc["refracture", "statistic"])
    def refuse(constant: str) -> None:
        raise AssertionError(f"summary.json holds {constant}, which strict JSON readers refuse")

    json.loads(result.files["summary_json"].read_text(), parse_constant=refuse)
    assert "Outcomes by median PLVI split" in result.files["summary_md"].read_text()


def test_outcome_without_association_is_not_significant():
    cohort = pd.DataFrame({"pseudonym": [f"P{i}" for i in range(20)], "plvi": [0.5 + i * 0.02 for i in range(20)],
                           "analysis_year": 2026, "study_year": 2024})
    outcomes = pd.DataFrame({"pseudonym": [f"P{i}" for i in range(20)], "event": [i % 2 for i in range(20)]})
    comparison = compare_outcomes(cohort, outcomes)
    assert comparison.loc[0, "p_value"] > 0.5


def test_dates_and_ages_are_coarsened():
    assert year_of("20240315") == 2024 and year_of("") is None
    assert age_in_years("067Y", "", "") == 67
    assert age_in_years("", "19500620", "20240315") == 73
    assert age_in_years("097Y", "", "") == 90
    assert [age_band(a) for a in (None, 45, 50, 79, 90)] == ["unknown", "<50", "50-59", "70-79", "90+"]


def test_plvi_export_command_writes_the_files_and_refuses_without_a_key(export_settings, engine, tmp_path):
    seed_cohort(export_settings, engine, 5)
    env = {**os.environ, "PLVI_DATA_DIR": str(export_settings.data_dir),
           "PLVI_DATABASE_URL": export_settings.effective_database_url, "PLVI_EXPORT_KEY": KEY}
    done = subprocess.run([PLVI, "export", "--out", str(tmp_path / "cli")],
                          env=env, capture_output=True, text=True, check=False, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "5 studies exported" in done.stderr
    assert len(pd.read_parquet(tmp_path / "cli" / "cohort.parquet")) == 5

    refused = subprocess.run([PLVI, "export", "--out", str(tmp_path / "nokey")],
                             env={**env, "PLVI_EXPORT_KEY": ""}, capture_output=True, text=True, check=False, timeout=120,
                             cwd=tmp_path)
    assert refused.returncode == 2 and "PLVI_EXPORT_KEY" in refused.stderr


def test_nightly_export_is_a_celery_beat_entry_at_the_configured_time(export_settings, engine):
    from celery import Celery

    from reports.export.schedule import BEAT_ENTRY, TASK_NAME, install_nightly_export

    nightly = export_settings.model_copy(update={"export_cron": "15 3 * * 1-5"})
    app = Celery("export-test", broker="memory://")
    app.plvi_settings, app.plvi_engine = nightly, engine  # what workers/celery_app.PlviCelery carries
    install_nightly_export(app, nightly)
    entry = app.conf.beat_schedule[BEAT_ENTRY]
    assert entry["task"] == TASK_NAME
    assert entry["schedule"].minute == {15} and entry["schedule"].hour == {3}
    assert entry["schedule"].day_of_week == {1, 2, 3, 4, 5}

    seed_cohort(nightly, engine, 2)
    assert app.tasks[TASK_NAME].apply().get() == 2
    assert app.tasks[TASK_NAME].apply().get() == 0  # nothing new since the last export
    assert len(list(nightly.effective_export_dir.glob("cohort-*/cohort.parquet"))) >= 1


def test_a_real_worker_runs_the_nightly_export_task_from_the_queue(export_settings, engine):
    from workers.celery_app import make_celery

    seed_cohort(export_settings, engine, 2)
    make_celery(export_settings).send_task(TASK_NAME)
    env = {**os.environ, "PLVI_DATA_DIR": str(export_settings.data_dir),
           "PLVI_DATABASE_URL": export_settings.effective_database_url, "PLVI_EXPORT_KEY": KEY}
    worker = subprocess.Popen([PLVI, "worker", "--concurrency", "1"], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 90
        runs: list[ExportRun] = []
        while time.monotonic() < deadline and not runs:
            with session_scope(engine) as session:
                runs = list(session.exec(select(ExportRun).where(ExportRun.state == "done")).all())
            time.sleep(0.5)
    finally:
        worker.terminate()
        _, stderr = worker.communicate(timeout=60)
    assert [run.rows for run in runs] == [2], stderr[-3000:]
    assert (Path(runs[0].out_dir) / "cohort.parquet").is_file()

"""One cohort export run: collect, write every file, and book the run so the next nightly export starts after it."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pandas as pd
from sqlalchemy.engine import Engine
from sqlmodel import select

from plvi.db import session_scope
from plvi.logs import kv
from plvi.models import AuditEvent, ExportRun, utcnow
from plvi.settings import Settings
from reports.export.cohort import COLUMNS, collect_cohort
from reports.export.plots import plot_histogram, plot_plvi_against_age
from reports.export.statistics import compare_outcomes, summarise

log = logging.getLogger(__name__)

FILES = {
    "csv": "cohort.csv",
    "parquet": "cohort.parquet",
    "dictionary": "data_dictionary.csv",
    "summary_json": "summary.json",
    "summary_md": "summary.md",
    "histogram": "plvi_histogram.png",
    "against_age": "plvi_vs_age.png",
    "outcomes": "outcome_comparison.csv",
}


@dataclass(frozen=True)
class ExportResult:
    out_dir: Path
    rows: int
    since: datetime | None
    until: datetime
    summary: dict[str, object]
    files: dict[str, Path]


def run_export(
    settings: Settings,
    engine: Engine,
    out_dir: Path | None = None,
    *,
    since_last: bool = False,
    outcomes_csv: Path | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ExportResult:
    """Export every current measurement (or, with `since_last`, those analysed or reviewed since the last
    successful export) into `out_dir` (default: a new folder under PLVI_EXPORT_DIR)."""
    key = settings.export_key.get_secret_value()
    if not key:
        raise ValueError(
            "PLVI_EXPORT_KEY is not set: the export pseudonymises patient IDs with it. Set it to a long random"
            " secret (e.g. `openssl rand -hex 32`) and keep it: the same key gives the same pseudonyms next time."
        )
    outcomes = _read_outcomes(outcomes_csv) if outcomes_csv else None
    until = utcnow()
    out_dir = out_dir or settings.effective_export_dir / f"cohort-{until:%Y%m%dT%H%M%SZ}"
    out_dir.mkdir(parents=True, exist_ok=True)
    with session_scope(engine) as session:
        since = _last_export_until(session) if since_last else None
        run = ExportRun(out_dir=str(out_dir), since=since, until=until, started_at=until)
        session.add(run)
    log.info(kv("export_started", run=run.id, out_dir=out_dir, since=since or "all"))
    try:
        with session_scope(engine) as session:
            cohort = collect_cohort(session, settings.data_dir, key, since=since, until=until, progress=progress)
        summary, files = write_export(cohort, out_dir, outcomes)
    except Exception as error:
        with session_scope(engine) as session:
            failed = session.get(ExportRun, run.id)
            assert failed is not None
            failed.state, failed.error, failed.finished_at = "failed", str(error)[:2000], utcnow()
        log.error(kv("export_failed", run=run.id, error=str(error)))
        raise
    with session_scope(engine) as session:
        done = session.get(ExportRun, run.id)
        assert done is not None
        done.state, done.rows, done.finished_at = "done", len(cohort), utcnow()
        session.add(AuditEvent(username="export", action="export",
                               detail={"run": run.id, "rows": len(cohort), "out_dir": str(out_dir)}))
    log.info(kv("export_done", run=run.id, rows=len(cohort), out_dir=out_dir))
    return ExportResult(out_dir, len(cohort), since, until, summary, files)


def nightly_export(settings: Settings, engine: Engine) -> int:
    """The scheduled export: what changed since the last one, into a new folder; returns the number of rows."""
    return run_export(settings, engine, since_last=True).rows


def _last_export_until(session) -> datetime | None:  # type: ignore[no-untyped-def]
    return session.exec(
        select(ExportRun.until).where(ExportRun.state == "done").order_by(ExportRun.until.desc())  # type: ignore[union-attr]
    ).first()


def _read_outcomes(path: Path) -> pd.DataFrame:
    outcomes = pd.read_csv(path)
    if "pseudonym" not in outcomes.columns:
        raise ValueError(f"{path}: the outcome CSV needs a 'pseudonym' column with the export's pseudonyms")
    return outcomes


def write_export(
    cohort: pd.DataFrame, out_dir: Path, outcomes: pd.DataFrame | None = None
) -> tuple[dict[str, object], dict[str, Path]]:
    """Write the table, its dictionary, the summary and the plots; return the summary and the files written."""
    files = {name: out_dir / filename for name, filename in FILES.items()}
    cohort.to_csv(files["csv"], index=False)
    cohort.to_parquet(files["parquet"], index=False, engine="pyarrow")
    pd.DataFrame(
        [{"column": c.name, "type": c.dtype, "unit": c.unit, "description": c.description} for c in COLUMNS]
    ).to_csv(files["dictionary"], index=False)
    summary = summarise(cohort)
    comparison = None
    if outcomes is not None:
        comparison = compare_outcomes(cohort, outcomes)
        comparison.to_csv(files["outcomes"], index=False)
        # None, not NaN, where a test gave no number: summary.json stays strict JSON
        summary["outcome_comparison"] = comparison.astype(object).where(comparison.notna(), None).to_dict(
            orient="records"
        )
    else:
        del files["outcomes"]
    files["summary_json"].write_text(json.dumps(summary, indent=2, default=str) + "\n")
    files["summary_md"].write_text(_summary_markdown(summary, comparison))
    cutoffs = [float(c) for c in summary["cutoffs"]]  # type: ignore[union-attr]
    plot_histogram(cohort, cutoffs, files["histogram"])
    plot_plvi_against_age(cohort, cutoffs, files["against_age"])
    return summary, files


def _iqr(description: dict[str, object]) -> str:
    if not description["n"]:
        return "n=0"
    return f"n={description['n']}, median {description['median']} (IQR {description['q1']}-{description['q3']})"


def _summary_markdown(summary: dict[str, object], comparison: pd.DataFrame | None) -> str:
    lines = [
        "# PLVI cohort summary",
        "",
        f"- studies: {summary['n_studies']} ({summary['n_patients']} patients), measured: {summary['n_measured']}",
        f"- status: {', '.join(f'{k} {v}' for k, v in summary['status_counts'].items())}",  # type: ignore[union-attr]
        f"- cut-off: {', '.join(str(c) for c in summary['cutoffs'])}",  # type: ignore[union-attr]
        f"- flagged low psoas mass: {summary['n_flagged']} (share {summary['share_flagged']})",
        f"- PLVI: {_iqr(summary['plvi'])}",  # type: ignore[arg-type]
        "",
        "| group | PLVI |",
        "|---|---|",
    ]
    for label, key in (("sex", "plvi_by_sex"), ("age", "plvi_by_age_band")):
        for group, description in summary[key].items():  # type: ignore[union-attr]
            lines.append(f"| {label} {group} | {_iqr(description)} |")
    if comparison is not None:
        columns = list(comparison.columns)
        lines += ["", "## Outcomes by median PLVI split", "", "| " + " | ".join(columns) + " |",
                  "|" + "---|" * len(columns)]
        for record in comparison.to_dict(orient="records"):
            lines.append("| " + " | ".join("" if pd.isna(record[c]) else str(record[c]) for c in columns) + " |")
    return "\n".join(lines) + "\n"

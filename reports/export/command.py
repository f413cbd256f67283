"""`plvi export`: the cohort export on demand, with a progress bar and the summary printed at the end."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from plvi.db import make_engine, upgrade_database
from plvi.settings import Settings
from reports.export.run import run_export


def export_command(settings: Settings, *, out: Path | None, since_last: bool, outcomes_csv: Path | None) -> int:
    """Run one export; exit code 0 on success, 2 when the operator must fix something first."""
    console = Console(stderr=True)
    upgrade_database(settings.effective_database_url)
    engine = make_engine(settings.effective_database_url)
    columns = (TextColumn("studies"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    try:
        with Progress(*columns, console=console, transient=True) as progress:
            task = progress.add_task("export", total=None)
            result = run_export(
                settings, engine, out, since_last=since_last, outcomes_csv=outcomes_csv,
                progress=lambda done, total: progress.update(task, completed=done, total=total),
            )
    except ValueError as error:
        console.print(f"[red]export refused:[/red] {error}")
        return 2
    finally:
        engine.dispose()
    console.print(f"{result.rows} studies exported to {result.out_dir}")
    console.print(result.files["summary_md"].read_text(), markup=False)
    return 0

"""The `plvi` command line. Each command reads the settings once and hands them to the service it starts."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from plvi.logs import configure_logging
from plvi.settings import load_settings

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)


@app.command()
def serve() -> None:
    """Listener, worker and scheduler in one process tree, with embedded defaults (no Redis, no PostgreSQL)."""
    from plvi.service import run_service

    configure_logging()
    run_service(load_settings())


@app.command()
def worker(concurrency: Annotated[int, typer.Option(help="worker processes")] = 2) -> None:
    """A Celery worker for production (PLVI_BROKER_URL); run any number of them on any number of hosts."""
    from workers.celery_app import run_worker

    configure_logging()
    run_worker(load_settings(), concurrency=concurrency)


@app.command()
def analyze(
    paths: Annotated[list[Path], typer.Argument(help="DICOM files or folders of one study")],
    json_output: Annotated[bool, typer.Option("--json", help="print only the result object as JSON")] = False,
    out: Annotated[Path | None, typer.Option(help="also write result.json, overlay.png, masks.npz here")] = None,
) -> None:
    """Measure PLVI on one study from files, with no server."""
    from workers.analyze_cli import analyze_command

    configure_logging("WARNING" if json_output else "INFO")
    raise typer.Exit(analyze_command(paths, load_settings(), json_output=json_output, out=out))


@app.command()
def export(
    out: Annotated[Path | None, typer.Option(help="folder to write; default: a new folder in PLVI_EXPORT_DIR")] = None,
    since_last: Annotated[
        bool, typer.Option("--since-last", help="only studies analysed or reviewed since the last export")
    ] = False,
    outcomes: Annotated[
        Path | None, typer.Option(help="CSV keyed by 'pseudonym' whose other columns are outcomes to compare")
    ] = None,
) -> None:
    """The pseudonymised cohort export on demand: CSV, Parquet, data dictionary, summary and plots."""
    from reports.export.command import export_command

    configure_logging("WARNING")
    raise typer.Exit(export_command(load_settings(), out=out, since_last=since_last, outcomes_csv=outcomes))


@app.command()
def api() -> None:
    """The HTTP API and dashboard as their own process, on PLVI_HTTP_HOST:PLVI_HTTP_PORT."""
    from reports.web.api import run_api

    configure_logging()
    run_api(load_settings())


@app.command("user-add")
def user_add(
    username: Annotated[str, typer.Argument(help="login name")],
    full_name: Annotated[str, typer.Option(help="shown in the dashboard and on reviews")] = "",
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="read the password from standard input instead of a prompt")
    ] = False,
) -> None:
    """Add a dashboard and API user, or set a new password for an existing one."""
    import sys

    from reports.web.auth import user_add_command

    configure_logging("WARNING")
    password = (
        sys.stdin.readline().rstrip("\n")
        if password_stdin
        else typer.prompt("password", hide_input=True, confirmation_prompt=True)
    )
    raise typer.Exit(user_add_command(load_settings(), username, password, full_name))


@app.command()
def beat() -> None:
    """Celery beat: starts the nightly cohort export at PLVI_EXPORT_CRON on the workers. Run exactly one."""
    from workers.celery_app import make_celery

    configure_logging()
    make_celery(load_settings()).start(["beat", "--loglevel=INFO"])


@app.command("db-upgrade")
def db_upgrade() -> None:
    """Create or migrate the database schema (every service also does this at start)."""
    from plvi.db import upgrade_database

    configure_logging()
    settings = load_settings()
    upgrade_database(settings.effective_database_url)
    typer.echo(f"database at the newest schema: {settings.effective_database_url.split('@')[-1]}")

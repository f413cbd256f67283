"""Server-rendered dashboard pages: login, worklist, study. A browser session (cookie) carries the login; a page
asked for without one sends the browser to /login."""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path
from typing import Annotated
from urllib.parse import quote, urlencode

from fastapi import APIRouter, FastAPI, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from plvi.db import session_scope
from plvi.models import User
from reports.overlay import OUTLINE_COLOURS
from reports.web.auth import (
    SESSION_COOKIE,
    authenticate_password,
    issue_token,
    revoke_token,
    user_from_request,
)
from reports.web.review import submit_review
from reports.web.worklist import (
    STATUSES,
    WorklistFilter,
    audit,
    audit_events,
    day_start,
    quality_checks,
    study_detail,
    worklist,
)

templates = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))
router = APIRouter(include_in_schema=False)
PAGE_SIZE = 50


class LoginRequired(Exception):
    """Raised by page routes without a session; answered with a redirect to the login page."""


def _page_user(request: Request) -> User:
    user = user_from_request(request, request.app.state.engine)
    if user is None:
        raise LoginRequired()
    return user


def install(app: FastAPI) -> None:
    app.include_router(router)

    @app.exception_handler(LoginRequired)
    def _to_login(request: Request, _: LoginRequired) -> Response:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/login?next={quote(target)}", status_code=303)


def _safe_next(target: str) -> str:
    """Only paths on this site, so the login page cannot be used to send users elsewhere."""
    return target if target.startswith("/") and not target.startswith("//") else "/"


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request, next: str = "/") -> Response:
    return templates.TemplateResponse(request, "login.html", {"next": _safe_next(next), "error": None})


@router.post("/login", response_class=HTMLResponse)
def login(
    request: Request,
    username: Annotated[str, Form()],
    password: Annotated[str, Form()],
    next: Annotated[str, Form()] = "/",
) -> Response:
    settings, engine = request.app.state.settings, request.app.state.engine
    with session_scope(engine) as session:
        user = authenticate_password(session, username, password)
        if user is None:
            audit(session, username[:64], "login_failed")
            token = None
        else:
            token = issue_token(session, user, kind="session", lifetime=timedelta(hours=settings.session_hours))
            audit(session, user.username, "login")
    if token is None:
        return templates.TemplateResponse(
            request, "login.html", {"next": _safe_next(next), "error": "Unknown user or wrong password."},
            status_code=401,
        )
    response = RedirectResponse(_safe_next(next), status_code=303)
    response.set_cookie(SESSION_COOKIE, token, max_age=int(settings.session_hours * 3600), httponly=True,
                        samesite="strict", secure=request.url.scheme == "https")
    return response


@router.post("/logout")
def logout(request: Request) -> Response:
    token = request.cookies.get(SESSION_COOKIE)
    if token:
        with session_scope(request.app.state.engine) as session:
            revoke_token(session, token)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE)
    return response


def _parse_filter(request: Request) -> tuple[WorklistFilter, dict[str, str], str | None]:
    """The worklist form's fields (all optional strings) as a filter; a message instead of a 4xx for a typo."""
    params = request.query_params
    form = {key: params.get(key, "") for key in ("flag", "status", "received_from", "received_to", "page")}
    try:
        received_from = date.fromisoformat(form["received_from"]) if form["received_from"] else None
        received_to = date.fromisoformat(form["received_to"]) if form["received_to"] else None
        page = max(1, int(form["page"] or 1))
    except ValueError:
        return WorklistFilter(limit=PAGE_SIZE), form, "Dates are written YYYY-MM-DD; the filter was not applied."
    flt = WorklistFilter(
        low_psoas_mass={"low": True, "normal": False}.get(form["flag"]),
        statuses=(form["status"],) if form["status"] in STATUSES else (),
        received_from=day_start(received_from) if received_from else None,
        received_before=day_start(received_to) + timedelta(days=1) if received_to else None,
        limit=PAGE_SIZE,
        offset=(page - 1) * PAGE_SIZE,
    )
    return flt, form, None


@router.get("/", response_class=HTMLResponse)
def worklist_page(request: Request) -> Response:
    user = _page_user(request)
    flt, form, error = _parse_filter(request)
    with session_scope(request.app.state.engine) as session:
        total, rows = worklist(session, flt)
        audit(session, user.username, "view_worklist", rows=len(rows), via="page")
    page = flt.offset // PAGE_SIZE + 1
    more = {key: value for key, value in form.items() if value and key != "page"}
    return templates.TemplateResponse(request, "worklist.html", {
        "user": user, "rows": rows, "total": total, "form": form, "error": error, "statuses": STATUSES,
        "page": page, "pages": max(1, -(-total // PAGE_SIZE)),
        "prev_query": urlencode(more | {"page": page - 1}), "next_query": urlencode(more | {"page": page + 1}),
    })


def _study_page(request: Request, user: User, study_uid: str, *, error: str | None = None,
                status_code: int = 200) -> Response:
    with session_scope(request.app.state.engine) as session:
        detail = study_detail(session, study_uid)
        if detail is None:
            raise HTTPException(404, detail=f"no study {study_uid} has been received")
        audit(session, user.username, "view_study", study_uid, via="page")
        events = audit_events(session, study_uid, 20)
    return templates.TemplateResponse(request, "study.html", {
        "user": user, "study": detail, "analysis": detail["analysis"], "error": error, "events": events,
        "checks": quality_checks(detail["analysis"]["result"]) if detail["analysis"] else [],
        "colours": {name: "#{:02x}{:02x}{:02x}".format(*rgb) for name, rgb in OUTLINE_COLOURS.items()},
    }, status_code=status_code)


@router.get("/studies/{study_uid}", response_class=HTMLResponse)
def study_page(request: Request, study_uid: str) -> Response:
    return _study_page(request, _page_user(request), study_uid)


@router.get("/audit", response_class=HTMLResponse)
def audit_page(request: Request) -> Response:
    user = _page_user(request)
    with session_scope(request.app.state.engine) as session:
        events = audit_events(session, None, 500)
    return templates.TemplateResponse(request, "audit.html", {"user": user, "events": events})


@router.post("/studies/{study_uid}/review", response_class=HTMLResponse)
def review_form(
    request: Request, study_uid: str, decision: Annotated[str, Form()], reason: Annotated[str, Form()] = ""
) -> Response:
    user = _page_user(request)
    try:
        submit_review(request.app.state.engine, study_uid, decision, reason, user, via="page")
    except HTTPException as error:
        if error.status_code == 404:
            raise
        return _study_page(request, user, study_uid, error=str(error.detail), status_code=error.status_code)
    return RedirectResponse(f"/studies/{study_uid}", status_code=303)

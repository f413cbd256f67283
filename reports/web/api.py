"""The FastAPI application: JSON API under /api/ (authentication required on every route), dashboard pages,
/metrics for Prometheus and /health for load balancers and monitors."""

from __future__ import annotations

import logging
from datetime import date, timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Path, Query, Request, Response
from fastapi.responses import JSONResponse
from sqlalchemy import text
from sqlalchemy.engine import Engine

from plvi.db import make_engine, session_scope, upgrade_database
from plvi.logs import kv
from plvi.models import User
from plvi.settings import Settings
from reports.metrics import metrics_response
from reports.web import pages
from reports.web.auth import issue_token, require_user
from reports.web.keyimage import key_image_png
from reports.web.review import submit_review
from reports.web.schemas import (
    AuditOut,
    Health,
    Me,
    Problem,
    ReviewIn,
    ReviewOut,
    Status,
    StudyDetail,
    TokenIn,
    TokenOut,
    Worklist,
)
from reports.web.worklist import (
    WorklistFilter,
    audit,
    audit_events,
    current_analysis,
    day_start,
    study_detail,
    worklist,
)

log = logging.getLogger(__name__)

StudyUID = Annotated[str, Path(pattern=r"^[0-9]+(\.[0-9]+)*$", max_length=64, description="Study Instance UID")]
CurrentUser = Annotated[User, Depends(require_user)]


def worklist_filter(
    flag: Annotated[bool | None, Query(description="true: low psoas mass only; false: not flagged only")] = None,
    status: Annotated[list[Status] | None, Query(description="any of these statuses (repeat the parameter)")] = None,
    received_from: Annotated[date | None, Query(description="arrived on or after this day (UTC)")] = None,
    received_to: Annotated[date | None, Query(description="arrived on or before this day (UTC)")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> WorklistFilter:
    if received_from and received_to and received_from > received_to:
        raise HTTPException(400, detail=f"received_from ({received_from}) is after received_to ({received_to})")
    return WorklistFilter(
        low_psoas_mass=flag,
        statuses=tuple(status or ()),
        received_from=day_start(received_from) if received_from else None,
        received_before=day_start(received_to) + timedelta(days=1) if received_to else None,
        limit=limit,
        offset=offset,
    )


def api_router() -> APIRouter:
    router = APIRouter(
        prefix="/api",
        dependencies=[Depends(require_user)],
        responses={401: {"model": Problem, "description": "no credentials, or credentials that are not valid"},
                   422: {"model": Problem, "description": "a parameter is not valid; the detail says which"}},
    )

    @router.get("/me", response_model=Me)
    def me(user: CurrentUser) -> Me:
        return Me(username=user.username, full_name=user.full_name)

    @router.post("/tokens", response_model=TokenOut, status_code=201)
    def create_token(body: TokenIn, user: CurrentUser, request: Request) -> TokenOut:
        with session_scope(request.app.state.engine) as session:
            token = issue_token(session, user, kind="api", name=body.name)
            audit(session, user.username, "token_created", name=body.name)
        return TokenOut(name=body.name, token=token)

    @router.get("/studies", response_model=Worklist)
    def list_studies(
        user: CurrentUser, request: Request, flt: Annotated[WorklistFilter, Depends(worklist_filter)]
    ) -> Worklist:
        with session_scope(request.app.state.engine) as session:
            total, rows = worklist(session, flt)
            audit(session, user.username, "view_worklist", rows=len(rows))
        return Worklist.model_validate({"total": total, "limit": flt.limit, "offset": flt.offset, "items": rows})

    @router.get("/studies/{study_uid}", response_model=StudyDetail, responses={404: {"description": "unknown"}})
    def get_study(study_uid: StudyUID, user: CurrentUser, request: Request) -> StudyDetail:
        with session_scope(request.app.state.engine) as session:
            detail = study_detail(session, study_uid)
            if detail is None:
                raise HTTPException(404, detail=f"no study {study_uid} has been received")
            audit(session, user.username, "view_study", study_uid, via="api")
        return StudyDetail.model_validate(detail)

    @router.get(
        "/studies/{study_uid}/key-image.png",
        response_class=Response,
        responses={200: {"content": {"image/png": {}}}, 404: {"description": "no measured slice"}},
    )
    def get_key_image(study_uid: StudyUID, request: Request) -> Response:
        with session_scope(request.app.state.engine) as session:
            analysis = current_analysis(session, study_uid)
            png = key_image_png(request.app.state.settings, session, analysis) if analysis else None
        if png is None:
            raise HTTPException(404, detail=f"study {study_uid} has no measured slice to show")
        return Response(png, media_type="image/png", headers={"Cache-Control": "private, no-store"})

    @router.post(
        "/studies/{study_uid}/review", response_model=ReviewOut, status_code=201,
        responses={400: {"description": "bad decision"}, 404: {"description": "unknown"},
                   409: {"description": "nothing to review yet"}},
    )
    def post_review(study_uid: StudyUID, body: ReviewIn, user: CurrentUser, request: Request) -> ReviewOut:
        return ReviewOut.model_validate(
            submit_review(request.app.state.engine, study_uid, body.decision, body.reason, user, via="api")
        )

    @router.get("/audit", response_model=list[AuditOut])
    def get_audit(
        request: Request,
        study_uid: Annotated[str | None, Query(pattern=r"^[0-9]+(\.[0-9]+)*$", max_length=64)] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> list[AuditOut]:
        with session_scope(request.app.state.engine) as session:
            events = audit_events(session, study_uid, limit)
            return [AuditOut.model_validate(e, from_attributes=True) for e in events]

    return router


def create_app(settings: Settings, engine: Engine) -> FastAPI:
    """The whole HTTP side on one engine; `plvi api` and `plvi serve` mount the same app."""
    app = FastAPI(
        title="PLVI screening service",
        version="0.1.0",
        description="Worklist, study results and reviews of the psoas to L4 vertebral index screening. "
        "Every /api/ route needs HTTP Basic, a bearer token or a dashboard session.",
    )
    app.state.settings, app.state.engine = settings, engine
    app.include_router(api_router())
    pages.install(app)

    @app.get("/health", response_model=Health, tags=["operations"])
    def health() -> JSONResponse:
        checks = {"database": "ok"}
        try:
            with engine.connect() as connection:
                connection.execute(text("SELECT 1"))
        except Exception as error:  # noqa: BLE001  any database failure is unhealthy; say which
            checks["database"] = f"failing: {type(error).__name__}"
        failing = any(value != "ok" for value in checks.values())
        return JSONResponse({"status": "failing" if failing else "ok", "checks": checks},
                            status_code=503 if failing else 200)

    @app.get("/metrics", response_class=Response, tags=["operations"],
             responses={200: {"content": {"text/plain": {}}}})
    def metrics() -> Response:
        body, content_type = metrics_response(engine)
        return Response(body, media_type=content_type)

    return app


def run_api(settings: Settings) -> None:
    """`plvi api`: the API and dashboard as their own process on PLVI_HTTP_HOST:PLVI_HTTP_PORT, until SIGTERM."""
    import uvicorn

    upgrade_database(settings.effective_database_url)
    engine = make_engine(settings.effective_database_url)
    log.info(kv("http_listening", host=settings.http_host, port=settings.http_port))
    uvicorn.run(create_app(settings, engine), host=settings.http_host, port=settings.http_port,
                log_level="warning", access_log=False)
    engine.dispose()

"""/healthz, /readyz, /metrics."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Depends, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from coordinator.core import Services, get_services
from coordinator.db.migrate import current_revision, head_revision
from coordinator.observability import REGISTRY

router = APIRouter(tags=["health"])
logging.getLogger("alembic.runtime.migration").setLevel(logging.WARNING)  # readyz asks every probe


@router.get("/healthz", summary="Liveness", description="200 while the process serves requests.",
            responses={200: {"content": {"application/json": {"example": {"status": "ok"}}}}})
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


def _readiness(services: Services) -> tuple[bool, dict[str, str | None]]:
    head = head_revision()
    try:
        with services.db.engine.connect() as conn:
            current = current_revision(conn)
    except Exception as exc:  # a readiness probe reports, never raises
        return False, {"status": "database unreachable", "error": type(exc).__name__}
    ok = current == head
    return ok, {"status": "ready" if ok else "schema not at head", "schema": current, "head": head}


@router.get("/readyz", summary="Readiness",
            description="200 when the database answers and its schema is at the migrations' head, else 503.",
            responses={200: {"content": {"application/json": {"example": {"status": "ready", "schema": "0001",
                                                                          "head": "0001"}}}},
                       503: {"description": "Not ready."}})
async def readyz(services: Services = Depends(get_services)) -> JSONResponse:
    ok, body = await run_in_threadpool(_readiness, services)
    return JSONResponse(body, status_code=200 if ok else 503)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response,
            description="Rounds opened/closed/failed, updates by outcome, update bytes, aggregation seconds.",
            responses={200: {"content": {CONTENT_TYPE_LATEST: {
                "example": "mfcpl_updates_total{outcome=\"accepted\"} 12.0"}}}})
async def metrics() -> Response:
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

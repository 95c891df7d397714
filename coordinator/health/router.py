"""/healthz, /readyz, /metrics."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from coordinator.core import Services, get_services
from coordinator.health.service import readiness
from coordinator.observability import metrics_registry

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness", description="200 while the process serves requests.",
            responses={200: {"content": {"application/json": {"example": {"status": "ok"}}}}})
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="Readiness",
            description="200 when the database answers, its schema is at the migrations' head and the blob store "
            "can be written (a small temporary file where uploads are spooled), else 503 with the reason: "
            "`database unreachable` (`database`: `unavailable` or `busy`), `schema not at head`, or "
            "`storage not writable` (`storage`: the error, e.g. `ENOSPC`, `EROFS`).",
            responses={200: {"content": {"application/json": {"example": {"status": "ready", "schema": "0001",
                                                                          "head": "0001", "storage": "writable"}}}},
                       503: {"description": "Not ready.", "content": {"application/json": {"example": {
                           "status": "storage not writable", "schema": "0001", "head": "0001",
                           "storage": "ENOSPC"}}}}})
async def readyz(services: Services = Depends(get_services)) -> JSONResponse:
    ok, body = await run_in_threadpool(readiness, services)
    return JSONResponse(body, status_code=200 if ok else 503)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response,
            description="Events summed over every worker of this replica (updates by outcome, refusals by code, "
            "update bytes, round transitions, aggregation and round durations, HTTP requests by route template), "
            "state read from the database at scrape time (federations by status, rounds by state, current round, "
            "live and trainable clients per federation), process metrics of the answering worker, build info "
            "(docs/operations.md, \"Observability\").",
            responses={200: {"content": {CONTENT_TYPE_LATEST: {
                "example": "mfcpl_updates_total{outcome=\"accepted\"} 12.0"}}}})
async def metrics(services: Services = Depends(get_services)) -> Response:
    body = await run_in_threadpool(lambda: generate_latest(metrics_registry(services)))
    return Response(body, media_type=CONTENT_TYPE_LATEST)

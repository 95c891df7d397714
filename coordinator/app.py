"""The FastAPI application factory: ``uvicorn coordinator.app:create_app --factory``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi_offline import FastAPIOffline

from coordinator.clients.router import router as clients_router
from coordinator.core import Services
from coordinator.db.engine import database_fault
from coordinator.db.migrate import upgrade
from coordinator.events.router import router as events_router
from coordinator.federations.router import router as federations_router
from coordinator.health.router import router as health_router
from coordinator.metrics.router import router as metrics_router
from coordinator.model_versions.router import router as models_router
from coordinator.observability import HttpMetricsMiddleware
from coordinator.openapi import install_openapi, install_redoc
from coordinator.problems import BodySizeLimitMiddleware, RequestGuardMiddleware, install_problem_handlers
from coordinator.retention import run_periodically as collect_garbage_periodically
from coordinator.rounds.router import router as rounds_router
from coordinator.rounds.router import tasks_router
from coordinator.rounds.timer import tick
from coordinator.settings import Settings, ensure_admin_token
from coordinator.ui import install_ui
from coordinator.updates.router import router as updates_router
from coordinator.viewers.router import router as viewers_router
from mfcpl import __version__
from mfcpl.wire.constants import API_PREFIX

log = logging.getLogger("mfcpl.app")

DESCRIPTION = """
Runs federated learning for multimodal data with missing modalities (MFCPL and baselines).

An operator creates a **federation**, uploads **model version 0** and enrols **clients** (each gets a bearer
token once). Clients report their modalities, then poll **tasks/next**: `train` round r from model version v
(and the complete **prototypes**), post an **update** (safetensors) before the deadline, repeat. A round closes
when every sampled participant reported, or at the deadline with a quorum; the coordinator averages weights
(FedAvg by samples, or FedOpt) and class prototypes into the next model version. Watch it live on **events**
(server-sent events) and **metrics**.

Errors are `application/problem+json` (RFC 9457) with a stable `code`. Auth: `Authorization: Bearer <token>`.
"""

TAGS = [
    {"name": "federations", "description": "Create and steer federations (operator)."},
    {"name": "clients", "description": "Enrol, list and revoke clients; a client's own profile."},
    {"name": "tasks", "description": "What a client should do next (pull-based)."},
    {"name": "rounds", "description": "Round state machine: participants, deadline, quorum, received updates."},
    {"name": "updates", "description": "Clients' results for a round (safetensors)."},
    {"name": "models", "description": "Immutable model versions and complete prototypes (ETag = sha256)."},
    {"name": "metrics", "description": "Per-round training metrics and evaluations."},
    {"name": "events", "description": "Server-sent events of round transitions."},
    {"name": "viewer tokens", "description": "Read-only tokens for dashboards (operator)."},
    {"name": "health", "description": "Liveness, readiness, Prometheus metrics."},
]


async def _round_timer(services: Services) -> None:
    while True:
        try:
            await asyncio.to_thread(tick, services)
        except Exception as exc:  # the timer must survive a bad tick (database blip, ...)
            fault = database_fault(exc)
            if fault is None:
                log.exception("round timer tick failed")
            else:  # a known fault, answered 503 to requests meanwhile: no traceback every tick
                log.warning("round timer tick failed: database %s (%s)", fault, getattr(exc, "orig", exc))
        await asyncio.sleep(services.settings.tick_s)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    ensure_admin_token(settings)
    services = Services.build(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.auto_migrate:
            await asyncio.to_thread(upgrade, services.db.engine)
        tasks = [asyncio.create_task(_round_timer(services))]
        if settings.gc_interval_s > 0:  # blob retention (coordinator/retention.py); safe on every replica
            tasks.append(asyncio.create_task(collect_garbage_periodically(services)))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            services.db.dispose()

    # redirect_slashes=False: a trailing slash is a 404, never a redirect built from the request's Host header.
    # /docs and /redoc serve Swagger UI and ReDoc from the assets installed with fastapi-offline (under
    # /docs-assets; ReDoc without Google fonts): nothing is fetched from a CDN. Authorize persists in the page.
    app = FastAPIOffline(title="mfcpl coordinator", version=__version__, description=DESCRIPTION, openapi_tags=TAGS,
                         lifespan=lifespan, redirect_slashes=False, static_url="/docs-assets",
                         swagger_ui_parameters={"persistAuthorization": True}, redoc_url=None)
    install_redoc(app, "/docs-assets")
    app.state.services = services
    install_problem_handlers(app)
    install_openapi(app)
    app.add_middleware(BodySizeLimitMiddleware, max_json_bytes=settings.max_json_bytes,
                       max_tensor_bytes=settings.max_update_bytes)
    app.add_middleware(RequestGuardMiddleware, body_read_timeout_s=settings.body_read_timeout_s,
                       drain_max_bytes=settings.max_update_bytes)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["*"],
                           allow_headers=["*"], expose_headers=["ETag"])
    app.add_middleware(HttpMetricsMiddleware)  # outermost: Prometheus HTTP metrics of every answer (observability)
    for router in (federations_router, clients_router, tasks_router, rounds_router, updates_router, models_router,
                   metrics_router, events_router, viewers_router):
        app.include_router(router, prefix=API_PREFIX)
    app.include_router(health_router)
    install_ui(app)  # the dashboard at /ui/ (coordinator/ui/), with its own Content-Security-Policy
    return app

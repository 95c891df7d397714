"""/v1/federations/{fid}/events: server-sent events read from the events table (any replica can serve them)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from coordinator.auth import Principal, require_reader
from coordinator.core import Services, get_services
from coordinator.events.service import events_after
from coordinator.federations import service as federations
from coordinator.openapi import problems
from coordinator.problems import ProblemError
from mfcpl.wire.errors import ErrorCode
from mfcpl.wire.schemas import Event

router = APIRouter(prefix="/federations/{fid}", tags=["events"])

HEARTBEAT_S = 15.0


def format_event(event: Event) -> str:
    return f"id: {event.id}\nevent: {event.type}\ndata: {event.model_dump_json()}\n\n"


def _poll(services: Services, fid: str, after: int) -> tuple[list[Event], bool]:
    with services.db.read() as session:
        events = events_after(session, fid, after)
        terminal = federations.get_row(session, fid).status in federations.TERMINAL
    return events, terminal


@router.get(
    "/events", summary="Stream federation events (SSE)", response_class=StreamingResponse,
    description="A `text/event-stream` of `round.opened`, `update.received`, `round.closed`, `round.failed` and "
    "`federation.status` events, each with an increasing `id`. Reconnect with `Last-Event-ID` (or `?after=`) to "
    "resume without gaps. The stream ends once the federation is completed or cancelled and every event was "
    "sent; `follow=false` sends the backlog and ends at once.",
    responses={200: {"description": "Event stream.", "content": {"text/event-stream": {"example": (
        'id: 7\nevent: round.closed\ndata: {"id":7,"federation_id":"fed_3f2a9c1d4b5e6f70","type":"round.closed",'
        '"round":3,"data":{"received":10,"output_model_version":3},"created_at":"2026-01-01T12:00:00Z"}\n\n')}}},
               **problems(401, 403, 404)},
)
async def stream_events(
    fid: str, request: Request,
    after: Annotated[int | None, Query(ge=0, description="Send events with id greater than this.")] = None,
    follow: Annotated[bool, Query(description="Keep the stream open for new events.")] = True,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
    _: Principal = Depends(require_reader), services: Services = Depends(get_services),
) -> StreamingResponse:
    start = after or 0
    if last_event_id is not None:
        if not last_event_id.strip().isdigit():
            raise ProblemError(400, ErrorCode.BAD_REQUEST, "Last-Event-ID must be an event id (an integer)")
        start = max(start, int(last_event_id))
    await run_in_threadpool(_poll, services, fid, start)  # 404 before the stream starts
    interval = min(0.5, services.settings.tick_s)

    async def generate() -> AsyncIterator[str]:
        last = start
        last_sent = time.monotonic()
        yield "retry: 2000\n\n"
        while True:
            events, terminal = await run_in_threadpool(_poll, services, fid, last)
            for event in events:
                last = event.id
                yield format_event(event)
                last_sent = time.monotonic()
            if events:
                continue
            if not follow or terminal or await request.is_disconnected():
                return
            if time.monotonic() - last_sent > HEARTBEAT_S:
                yield ": keep-alive\n\n"
                last_sent = time.monotonic()
            await asyncio.sleep(interval)

    return StreamingResponse(generate(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
